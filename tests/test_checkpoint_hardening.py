"""Damaged or edited checkpoints and unsafe names are refused before round 1, with a message
naming the file and the field, and nothing is deleted or rewritten (issue 11: items 6, 7, 11,
the checkpoint parts of 13). In-process runs: FedADMM on breast-cancer, 3 nodes, 2 rounds.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from server_app.api import run_in_process
from server_app.checkpoint import ARRAYS_FILE, STATE_FILE, CheckpointError, round_dirs
from server_app.config import ConfigError
from strategies.base import FederationError
from tests.conftest import read_metrics

NODES, ROUNDS = 3, 2
UNCHANGED = "nothing was deleted or changed"


def overrides(out: Path, **extra: Any) -> dict[str, Any]:
    return {
        "algorithm": "fedadmm",
        "task": "breast-cancer",
        "local-epochs": 1,
        "num-server-rounds": ROUNDS,
        "output-dir": str(out),
        **extra,
    }


def node_config(state_dir: Path) -> Callable[[int], dict[str, Any]]:
    return lambda i: {"partition-id": i, "num-partitions": NODES, "state-dir": str(state_dir)}


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 2-round run (checkpoints round-1, round-2) with client state in ``state``."""
    root = tmp_path_factory.mktemp("base")
    run = run_in_process(
        overrides(root / "outputs", **{"run-name": "base"}),
        NODES,
        node_config=node_config(root / "state"),
    )
    assert sorted(round_dirs(run.run_dir / "checkpoint")) == [1, 2]
    return root


@pytest.fixture
def run_dir(base: Path, tmp_path: Path) -> Path:
    """A copy of the base run (outputs and client state) to damage."""
    shutil.copytree(base, tmp_path, dirs_exist_ok=True)
    return tmp_path / "outputs" / "base"


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (run outputs, client state), by relative path."""
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def resume(run_dir: Path, **extra: Any) -> Path:
    """Resume ``run_dir`` (or ``extra``'s ``resume-from``) to round 3 with its settings."""
    root = run_dir.parent.parent
    cfg = overrides(root / "outputs", **{"resume-from": str(run_dir), "num-server-rounds": 3})
    return run_in_process(cfg | extra, NODES, node_config=node_config(root / "state")).run_dir


def refused(run_dir: Path, match: str, file: Path, **extra: Any) -> str:
    """Resume, expect a CheckpointError matching ``match`` that names ``file``, and that no
    file under the run's root (checkpoints, metrics.jsonl, summary, client state) changed.
    """
    root = run_dir.parent.parent
    before = snapshot(root)
    with pytest.raises(CheckpointError, match=match) as err:
        resume(run_dir, **extra)
    message = str(err.value)
    assert str(file.resolve()) in message and UNCHANGED in message and "resume-from=" in message
    assert snapshot(root) == before
    return message


def newest(run_dir: Path) -> Path:
    return run_dir / "checkpoint" / "round-2"


def edit_state(run_dir: Path, edit: Callable[[dict[str, Any]], None]) -> Path:
    file = newest(run_dir) / STATE_FILE
    meta = json.loads(file.read_text())
    edit(meta)
    file.write_text(json.dumps(meta))
    return file


def edit_arrays(run_dir: Path, edit: Callable[[dict[str, np.ndarray]], None]) -> Path:
    file = newest(run_dir) / ARRAYS_FILE
    with np.load(file) as npz:
        arrays = {k: npz[k] for k in npz.files}
    edit(arrays)
    with file.open("wb") as fh:
        np.savez(fh, **arrays)  # type: ignore[arg-type]
    return file


# --------------------------------------------------------------------------- round (item 6)
@pytest.mark.parametrize("value", [-5, 1, 0, "2", True])
def test_round_must_be_that_of_its_directory(run_dir: Path, value: Any) -> None:
    """round=-5 used to delete every checkpoint and empty metrics.jsonl; round=1 inside
    round-2/ deleted the directory just loaded."""
    file = edit_state(run_dir, lambda m: m.update(round=value))
    message = refused(run_dir, r"field 'round' is .*round-2", file)
    assert f"resume-from='{run_dir.resolve() / 'checkpoint' / 'round-1'}'" in message


def test_round_1_directory_resumes_after_its_round(run_dir: Path) -> None:
    """The advice works: the intact round-1 checkpoint resumes (and rewrites round 2)."""
    edit_state(run_dir, lambda m: m.update(round=1))
    resume(run_dir, **{"resume-from": str(run_dir / "checkpoint" / "round-1")})
    assert [r["round"] for r in read_metrics(run_dir)] == [0, 1, 2, 3]
    assert sorted(round_dirs(run_dir / "checkpoint")) == [2, 3]


# --------------------------------------------------------------------------- files (item 13)
def truncate(file: Path) -> None:
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])


@pytest.mark.parametrize(
    "damage",
    [
        truncate,
        lambda f: f.write_bytes(b""),
        lambda f: f.write_bytes(b"garbage, not an archive" * 20),
        lambda f: f.write_bytes(b"\x93NUMPY" + b"\x00" * 50),
    ],
    ids=["truncated", "empty", "garbage", "npy-magic"],
)
def test_unreadable_arrays_npz(run_dir: Path, damage: Callable[[Path], None]) -> None:
    file = newest(run_dir) / ARRAYS_FILE
    damage(file)
    refused(run_dir, "the file is not a readable .npz archive", file)


def test_missing_arrays_npz(run_dir: Path) -> None:
    """resume-from naming a round directory whose arrays.npz is gone."""
    file = newest(run_dir) / ARRAYS_FILE
    file.unlink()
    refused(
        run_dir,
        "arrays.npz: the file is not a readable .npz archive",
        file,
        **{"resume-from": str(newest(run_dir))},
    )


@pytest.mark.parametrize(
    "text", ["", "{not json", "[1, 2]", "\udcff"], ids=["empty", "torn", "list", "binary"]
)
def test_unreadable_state_json(run_dir: Path, text: str) -> None:
    file = newest(run_dir) / STATE_FILE
    file.write_bytes(text.encode("utf-8", "surrogateescape"))
    refused(run_dir, "state.json: the file (is not readable JSON|holds)", file)


def test_missing_and_unlisted_entries(run_dir: Path) -> None:
    file = edit_arrays(run_dir, lambda a: a.pop("global/linear.bias"))
    refused(run_dir, "entry 'global/linear.bias' is missing", file)
    edit_arrays(run_dir, lambda a: a.update({"global/linear.bias": np.zeros(2, np.float32)}))
    edit_arrays(run_dir, lambda a: a.update({"rule/z/7/linear.bias": np.zeros(2, np.float32)}))
    refused(run_dir, "entry 'rule/z/7/linear.bias' is not listed in state.json", file)


# --------------------------------------------------------------------------- arrays (item 7)
def set_global(value: Callable[[np.ndarray], np.ndarray]) -> Callable[[dict[str, Any]], None]:
    def edit(arrays: dict[str, np.ndarray]) -> None:
        arrays["global/linear.weight"] = value(arrays["global/linear.weight"])

    return edit


GLOBAL_CASES: dict[str, tuple[Callable[[dict[str, np.ndarray]], None], str]] = {
    "nan": (
        set_global(lambda w: np.where(np.arange(w.size).reshape(w.shape) == 3, np.nan, w)),
        r"array 'global/linear.weight' holds 1 non-finite value\(s\)",
    ),
    "inf": (
        set_global(lambda w: np.full_like(w, np.inf)),
        r"array 'global/linear.weight' holds 60 non-finite value\(s\)",
    ),
    "float64": (
        set_global(lambda w: w.astype(np.float64)),
        r"'global/linear.weight' has shape \(2, 30\) and dtype float64; the model's shared "
        r"block has \(2, 30\) and float32",
    ),
    "times-1e30": (
        set_global(lambda w: (w * 1e30).astype(np.float32)),
        r"'global/linear.weight' has squared norm .*e\+\d\d, beyond the largest float32",
    ),
    "wrong-shape": (
        set_global(lambda w: w[:, :29]),
        r"'global/linear.weight' has shape \(2, 29\) and dtype float32; the model's",
    ),
    "one-element": (
        set_global(lambda w: w[:1, :1]),
        r"'global/linear.weight' has shape \(1, 1\)",
    ),
    "complex": (
        set_global(lambda w: w.astype(np.complex64)),
        "has dtype complex64; expected real numbers",
    ),
}


@pytest.mark.parametrize("case", sorted(GLOBAL_CASES))
def test_bad_global_arrays(run_dir: Path, case: str) -> None:
    edit, match = GLOBAL_CASES[case]
    refused(run_dir, match, edit_arrays(run_dir, edit))


def test_global_array_names_must_be_the_models(run_dir: Path) -> None:
    def rename(arrays: dict[str, np.ndarray]) -> None:
        arrays["global/other.weight"] = arrays.pop("global/linear.weight")

    edit_arrays(run_dir, rename)
    file = edit_state(
        run_dir, lambda m: m.update({"global-arrays": ["other.weight", "linear.bias"]})
    )
    refused(run_dir, r"field 'global-arrays' is \['other.weight', 'linear.bias'\]", file)


# --------------------------------------------------------------------------- rule state
RULE_CASES: dict[str, tuple[Callable[[dict[str, np.ndarray]], None], str]] = {
    "z-one-element": (
        lambda a: a.update({"rule/z/1/linear.weight": np.zeros(1, np.float32)}),
        r"array 'rule/z/1/linear.weight' has shape \(1,\) and dtype float32; "
        r"ConsensusADMMStrategy keeps \(2, 30\)",
    ),
    "z-float64": (
        lambda a: a.update({"rule/z/1/linear.bias": np.zeros(2, np.float64)}),
        r"'rule/z/1/linear.bias' has shape \(2,\) and dtype float64",
    ),
    "z-nan": (
        lambda a: a.update({"rule/z/0/linear.bias": np.full(2, np.nan, np.float32)}),
        r"array 'rule/z/0/linear.bias' holds 2 non-finite",
    ),
}


@pytest.mark.parametrize("case", sorted(RULE_CASES))
def test_bad_rule_state(run_dir: Path, case: str) -> None:
    edit, match = RULE_CASES[case]
    refused(run_dir, match, edit_arrays(run_dir, edit))


def test_rule_state_of_other_partitions(run_dir: Path) -> None:
    """z_i of a partition 7 that this federation lacks (and none of partition 2)."""

    def move(arrays: dict[str, np.ndarray]) -> None:
        for name in ("linear.weight", "linear.bias"):
            arrays[f"rule/z/7/{name}"] = arrays.pop(f"rule/z/2/{name}")

    edit_arrays(run_dir, move)
    file = edit_state(
        run_dir,
        lambda m: m.update({"rule-arrays": [a.replace("z/2/", "z/7/") for a in m["rule-arrays"]]}),
    )
    refused(run_dir, r"field 'rule-arrays' lacks \['z/2/linear.bias', .*unknown \['z/7/", file)


def test_rule_of_another_algorithm(run_dir: Path) -> None:
    file = edit_state(run_dir, lambda m: m.update(rule="FedAvgStrategy"))
    refused(run_dir, "field 'rule' is 'FedAvgStrategy'; this run's algorithm uses Consensus", file)


# --------------------------------------------------------------------------- run config (13)
CONFIG_CASES: dict[str, tuple[Callable[[dict[str, Any]], None], str]] = {
    "not-an-object": (lambda m: m.update({"run-config": ["rho", 0.01]}), "field 'run-config' is"),
    "missing": (lambda m: m.pop("run-config"), "field 'run-config' is None"),
    "list-value": (
        lambda m: m["run-config"].update(rho=[0.01]),
        r"field 'run-config.rho' is \[0.01\]; expected a scalar",
    ),
    "changed-value": (
        lambda m: m["run-config"].update(rho=0.5),
        r"rho=0.01 differs from the checkpoint's rho=0.5 .*state.json, field 'run-config'",
    ),
    "num-clients": (lambda m: m.update({"num-clients": "3"}), "field 'num-clients' is '3'"),
    "format": (lambda m: m.update(format=2), "field 'format' is 2; this version reads 1"),
}


@pytest.mark.parametrize("case", sorted(CONFIG_CASES))
def test_edited_run_config(run_dir: Path, case: str) -> None:
    edit, match = CONFIG_CASES[case]
    refused(run_dir, match, edit_state(run_dir, edit))


# --------------------------------------------------------------------------- RNG state (13)
def python_rng(edit: Callable[[list[Any]], None]) -> Callable[[dict[str, Any]], None]:
    return lambda m: edit(m["rng"]["python"])


def numpy_rng(edit: Callable[[list[Any]], None]) -> Callable[[dict[str, Any]], None]:
    return lambda m: edit(m["rng"]["numpy"])


RNG_CASES: dict[str, tuple[Callable[[dict[str, Any]], None], str]] = {
    "python-short": (python_rng(lambda s: s.__setitem__(1, s[1][:10])), "'rng.python'"),
    "python-word": (python_rng(lambda s: s[1].__setitem__(5, 2**40)), "'rng.python'"),
    "python-position": (python_rng(lambda s: s[1].__setitem__(624, 700)), "'rng.python'"),
    "python-gauss": (python_rng(lambda s: s.__setitem__(2, "x")), "'rng.python'"),
    "numpy-kind": (numpy_rng(lambda s: s.__setitem__(0, "PCG64")), "'rng.numpy'"),
    "numpy-word": (numpy_rng(lambda s: s[1].__setitem__(0, -1)), "'rng.numpy'"),
    "numpy-position": (numpy_rng(lambda s: s.__setitem__(2, 700)), "'rng.numpy'"),
    "numpy-float-position": (numpy_rng(lambda s: s.__setitem__(2, 3.5)), "'rng.numpy'"),
    "dropped": (lambda m: m["rng"].pop("numpy"), "'rng.numpy' is not a numpy RNG state"),
    "not-an-object": (lambda m: m.update(rng=[1, 2]), "field 'rng' is"),
}


@pytest.mark.parametrize("case", sorted(RNG_CASES))
def test_edited_rng_state(run_dir: Path, case: str) -> None:
    edit, match = RNG_CASES[case]
    refused(run_dir, match, edit_state(run_dir, edit))


@pytest.mark.parametrize(
    "value",
    [np.zeros(10, np.uint8), np.zeros(5056, np.int64), np.zeros((2, 2528), np.uint8)],
    ids=["short", "int64", "2d"],
)
def test_edited_torch_rng_state(run_dir: Path, value: np.ndarray) -> None:
    file = edit_arrays(run_dir, lambda a: a.update({"rng/torch": value}))
    refused(run_dir, "entry 'rng/torch' (is refused by the torch generator|has dtype)", file)


# --------------------------------------------------------------------------- paths (item 11)
@pytest.mark.parametrize("scope", ["../../escaped", "..", ".", "/tmp/escaped", "a/b", "", "a\nb"])
def test_state_scope_must_be_one_directory_name(run_dir: Path, scope: str) -> None:
    file = edit_state(run_dir, lambda m: m.update({"state-scope": scope}))
    refused(run_dir, "field 'state-scope' is .*; expected one directory name", file)
    assert not (run_dir.parents[2] / "escaped").exists()


@pytest.mark.parametrize("name", ["../../escaped", "a/../../escaped", "..", "absolute"])
def test_run_name_is_one_path_component(tmp_path: Path, name: str) -> None:
    """Refused before round 1 (before anything is written), naming the key."""
    name = str(tmp_path / "escaped") if name == "absolute" else name
    with pytest.raises(ConfigError, match="one directory name") as err:
        run_in_process(overrides(tmp_path / "deep" / "outputs", **{"run-name": name}), NODES)
    assert f"run-name={name!r} is not allowed" in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_federation_of_another_size(run_dir: Path) -> None:
    root = run_dir.parent.parent
    before = snapshot(root)
    cfg = overrides(root / "outputs", **{"resume-from": str(run_dir), "num-server-rounds": 3})
    with pytest.raises(FederationError, match=r"state.json, field 'num-clients'\); 2 connected"):
        run_in_process(cfg, 2, node_config=lambda i: {"partition-id": i, "num-partitions": 2})
    assert snapshot(root) == before


# --------------------------------------------------------------------------- run dir files
def test_unreadable_run_config_json(run_dir: Path) -> None:
    file = run_dir / "config.json"
    file.write_text("{torn")
    refused(run_dir, "config.json: the file is not readable JSON", file)


def test_metrics_row_without_round(run_dir: Path) -> None:
    file = run_dir / "metrics.jsonl"
    file.write_text(file.read_text() + json.dumps({"rnd": 7}) + "\n")
    refused(run_dir, r"metrics.jsonl: 1 row\(s\) have no integer 'round'", file)


# --------------------------------------------------------------------------- valid resume
def test_valid_resume_equals_uninterrupted(run_dir: Path) -> None:
    """The checks accept a real checkpoint: resumed after round 2 = 3 rounds in one go."""
    root = run_dir.parent.parent
    full = run_in_process(
        overrides(root / "outputs", **{"run-name": "full", "num-server-rounds": 3}),
        NODES,
        node_config=node_config(root / "state"),
    )
    assert resume(run_dir) == run_dir

    def strip(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        # bytes-down too: round 2 was the last round of the 2-round run, so its evaluation
        # had an exchange of its own; in the 3-round run it travels with round 3's messages
        return [{k: v for k, v in r.items() if k not in ("wall-time", "bytes-down")} for r in rows]

    assert strip(read_metrics(run_dir)) == strip(full.rows)
    assert sorted(round_dirs(run_dir / "checkpoint")) == [2, 3]
