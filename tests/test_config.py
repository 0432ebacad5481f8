"""Every run-config validation path stops the run before round 1 with a precise message."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from server_app.config import ConfigError, schema, validate_run_config
from tests.conftest import default_config, run_local

BAD: list[tuple[str, Any]] = [(key, bad) for key, spec in schema().items() for bad in spec.bad]
"""Every declared key with every value its declaration says must be refused."""


def test_defaults_are_valid() -> None:
    cfg = validate_run_config(default_config())
    assert cfg["algorithm"] == "fedapm"
    assert cfg["personalization"] == "output"  # 'auto' resolved to the FedAPM preset's mode
    assert isinstance(cfg["lr"], float)


def test_every_key_has_bad_values_except_free_text() -> None:
    free = {k for k, spec in schema().items() if not spec.bad}
    assert free <= {"algorithm", "data-dir", "run-name", "state-dir"}, free


@pytest.mark.parametrize(("key", "value"), BAD, ids=[f"{k}={v!r}" for k, v in BAD])
def test_bad_value_names_key_value_and_allowed(key: str, value: Any) -> None:
    cfg = default_config()
    cfg[key] = value
    with pytest.raises(ConfigError) as err:
        validate_run_config(cfg)
    msg = str(err.value)
    assert f"{key}={value!r}" in msg
    assert schema()[key].allowed in msg


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_numbers_rejected(value: float) -> None:
    cfg = default_config() | {"lr": value}
    with pytest.raises(ConfigError, match="lr="):
        validate_run_config(cfg)


def test_unknown_key_is_listed() -> None:
    with pytest.raises(ConfigError, match=r"unknown run-config key\(s\) learning-rate"):
        validate_run_config(default_config() | {"learning-rate": 0.1})


def test_missing_key_is_listed() -> None:
    cfg = default_config()
    del cfg["rho"]
    with pytest.raises(ConfigError, match="lacks key.*rho"):
        validate_run_config(cfg)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("local-epochs", "3"),
        ("num-server-rounds", 2.5),
        ("seed", True),
        ("download", 1),
        ("lr", "0.1"),
    ],
)
def test_wrong_type(key: str, value: Any) -> None:
    with pytest.raises(ConfigError, match=f"{key}=.*has type"):
        validate_run_config(default_config() | {key: value})


def test_int_accepted_for_float_key() -> None:
    assert validate_run_config(default_config() | {"lr": 1})["lr"] == 1.0


def test_auto_personalization_follows_the_preset() -> None:
    assert validate_run_config(default_config() | {"algorithm": "fedper"})["personalization"] == (
        "output"
    )


def test_personalization_not_defined_for_algorithm() -> None:
    cfg = default_config() | {"algorithm": "fedper", "personalization": "none"}
    with pytest.raises(ConfigError, match="personalization='none' is not defined for algorithm"):
        validate_run_config(cfg)


def test_personalization_not_defined_for_model() -> None:
    cfg = default_config() | {"personalization": "split-input"}
    with pytest.raises(ConfigError, match="not defined for model SmallCNN.*allowed.*input, output"):
        validate_run_config(cfg)


def test_natural_partitioner_needs_natural_clients() -> None:
    cfg = default_config() | {"partitioner": "natural"}
    with pytest.raises(ConfigError, match="partitioner='natural'.*task='digits' has none"):
        validate_run_config(cfg)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_requested_without_cuda() -> None:
    with pytest.raises(ConfigError, match="device='cuda'.*not available"):
        validate_run_config(default_config() | {"device": "cuda"})


def test_invalid_config_sends_nothing(tmp_path: Any) -> None:
    cfg = default_config() | {"output-dir": str(tmp_path), "rho": -1.0}
    from client_app.app import app as client_app
    from server_app.app import run_federation
    from server_app.inprocess import InProcessGrid

    grid = InProcessGrid(client_app, 3)
    with pytest.raises(ConfigError, match="rho=-1.0"):
        run_federation(grid, cfg)
    assert grid.sent == []
    assert not any(tmp_path.iterdir())


def test_missing_dataset_stops_before_round_one(tmp_path: Any) -> None:
    cfg = default_config() | {
        "output-dir": str(tmp_path / "o"),
        "task": "cifar10",
        "data-dir": str(tmp_path / "nowhere"),
    }
    with pytest.raises(Exception, match="nowhere") as err:
        run_local(cfg, 2)
    assert "download" in str(err.value) or "cifar" in str(err.value).lower()
    assert not (tmp_path / "o").exists()


def test_resume_from_must_exist(tmp_path: Any) -> None:
    cfg = default_config() | {"resume-from": str(tmp_path / "no-such-run")}
    with pytest.raises(ConfigError, match="resume-from=.*no-such-run.*existing run directory"):
        validate_run_config(cfg)


@pytest.mark.parametrize(
    ("command", "override", "named"),
    [
        (["dualflower-run"], "no-such-key=1", "unknown run-config key(s) no-such-key"),
        (["dualflower-run"], "lr=-3", "lr=-3 is not allowed; expected a number in (0.0, inf)"),
        (
            ["dualflower-deploy", "submit", "--superlink", "127.0.0.1:9", "--insecure"],
            "num-server-rounds=0",
            "num-server-rounds=0 is not allowed; expected an integer in [1,",
        ),
    ],
)
def test_console_names_a_refused_key_before_anything_starts(
    command: list[str], override: str, named: str, tmp_path: Any
) -> None:
    """The launchers check the run config first: exit 2, the key, value and range on stderr,
    no SuperLink started (a bare ``flwr run`` prints only "Invalid run configuration")."""
    import subprocess
    from pathlib import Path

    app = str(Path(__file__).resolve().parents[1])
    argv = [*command[:1], *command[1:2], app, *command[2:], "-c", override]
    if command[0] == "dualflower-run":
        argv += ["--flwr-home", str(tmp_path / "home")]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 2, out.stdout + out.stderr
    assert named in out.stderr
    assert "SuperLink pid" not in out.stdout
    assert not (tmp_path / "home").exists()


def test_unused_as_auto_lets_one_protocol_cover_methods_with_other_keys() -> None:
    """A shared protocol (here client weighting and FOOF damping) is refused for a method that
    does not take those keys, and resolves once ``unused_as_auto`` has reset them."""
    from server_app.config import unused_as_auto

    raw = default_config() | {"algorithm": "scaffold", "client-weighting": "examples", "damping": 0.1}
    with pytest.raises(ConfigError, match="client-weighting='examples' is not a hyper-parameter"):
        validate_run_config(raw)
    cleaned = unused_as_auto(raw)
    assert cleaned["client-weighting"] == cleaned["damping"] == "auto"
    assert cleaned["batch-size"] == raw["batch-size"] and cleaned["seed"] == raw["seed"]
    resolved = validate_run_config(cleaned)
    assert resolved["client-weighting"] == "uniform" and resolved["lr"] == 0.05


def test_check_overrides_leaves_other_flower_apps_to_their_own_serverapp(tmp_path: Path) -> None:
    """``dualflower-run`` also launches other Flower apps (the overhead benchmark's stock
    FedAvg): their run config is not dualflower's, so the console check skips them."""
    from server_app.config import check_overrides

    (tmp_path / "pyproject.toml").write_text(
        '[tool.flwr.app.components]\nserverapp = "stock:server_app"\nclientapp = "stock:client_app"\n'
        '[tool.flwr.app.config]\nbench-file = ""\n'
    )
    assert check_overrides(tmp_path, "bench-file='x.json'") is None
    ours = (tmp_path / "pyproject.toml").read_text().replace("stock:server_app", "server_app.app:app")
    (tmp_path / "pyproject.toml").write_text(ours)
    with pytest.raises(ConfigError, match="unknown run-config key"):
        check_overrides(tmp_path, "bench-file='x.json'")


def test_model_preset_and_refusals() -> None:
    """``model='auto'``: the method's model kind where the task offers it (newton-admm and
    fednl: digits' convex model, origin ``method``), else the task's first; a model the task
    does not offer is refused, naming what it offers."""
    from server_app.config import resolve

    base = default_config()
    cfg, origins = resolve(base | {"algorithm": "fednl"})
    assert (cfg["model"], origins["model"]) == ("convex", "method")
    cfg, origins = resolve(base | {"algorithm": "fedavg"})
    assert (cfg["model"], origins["model"]) == ("deep", "default")
    cfg, _ = resolve(base | {"algorithm": "fedavg", "task": "breast-cancer"})
    assert cfg["model"] == "convex"
    cfg, origins = resolve(base | {"algorithm": "fedavg", "model": "convex"})
    assert (cfg["model"], origins["model"]) == ("convex", "user")
    with pytest.raises(ConfigError, match="has no model='convex'; it offers: 'deep'"):
        resolve(base | {"task": "mfeat", "model": "convex"})
    with pytest.raises(ConfigError, match="at most 1024 shared parameters.*model='convex'"):
        resolve(base | {"algorithm": "newton-admm", "model": "deep"})
    with pytest.raises(ConfigError, match="model='convex' where the task offers one"):
        resolve(base | {"algorithm": "fednl", "model": "deep"})
    with pytest.raises(ConfigError, match="personalization"):  # no personal head on it
        resolve(base | {"algorithm": "fedper", "model": "convex", "personalization": "output"})


def test_digits_convex_model() -> None:
    """digits' convex model: logistic regression on the 64 pixels with the L2 term; the CNN
    has none, and the convex model's split-input makes 16 pixels' weights personal."""
    from tasks.personalization import split_names
    from tasks.registry import get_task

    cnn, convex = get_task("digits"), get_task("digits", "convex")
    assert (cnn.convex, cnn.l2, convex.convex, convex.l2) == (False, 0.0, True, 1e-3)
    model = convex.build_model("none")
    assert sum(p.numel() for p in model.parameters()) == 64 * 10 + 10
    assert model(torch.zeros(3, 1, 8, 8)).shape == (3, 10)
    split = convex.build_model("split-input")
    shared, personal = split_names(split, "split-input")
    assert personal == ["linear_p.weight"] and split.linear_p.weight.shape == (10, 16)
    assert sorted(shared) == ["linear.bias", "linear.weight"]
    assert split.linear.weight.shape == (10, 48)
