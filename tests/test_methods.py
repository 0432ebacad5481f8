"""The Method design (issue 10): pairing checked when a method is built, one declaration per
key (schema, pyproject, README), presets that set values, refusal of keys a method does not use,
and the import direction between the two sides.
"""

from __future__ import annotations

import ast
import json
import tomllib
from pathlib import Path
from typing import Any

import pytest

from client_app.solvers import SOLVERS
from methods.hyper import FedAvgHyper
from methods.registry import METHODS, Method, MethodError
from protocol.params import AUTO
from server_app.config import ORIGINS, ConfigError, resolve, schema, validate_run_config
from strategies.admm import ConsensusADMMStrategy
from strategies.mean import MeanStrategy
from strategies.scaffold import ScaffoldStrategy
from tests.conftest import ROOT, default_config, read_metrics, run_local


def test_rule_paired_with_a_solver_that_replies_other_records_is_refused() -> None:
    with pytest.raises(MethodError, match=r"solver 'admm' returns records \['z'\].*MeanStrategy"):
        Method("bad", MeanStrategy, SOLVERS["admm"], FedAvgHyper, ("none",), "mean + admm")
    with pytest.raises(MethodError, match="returns records.*ConsensusADMMStrategy expects"):
        Method("bad", ConsensusADMMStrategy, SOLVERS["sgd"], FedAvgHyper, ("none",), "")


def test_solver_needing_a_record_the_rule_never_sends_is_refused() -> None:
    class NoControl(ScaffoldStrategy):
        sends = ()

    with pytest.raises(MethodError, match=r"needs records \['control'\].*never sends"):
        Method("bad", NoControl, SOLVERS["scaffold"], FedAvgHyper, ("none",), "")


def test_preset_of_a_key_the_method_does_not_declare_is_refused() -> None:
    with pytest.raises(MethodError, match=r"presets \['rho'\]"):
        Method("bad", MeanStrategy, SOLVERS["sgd"], FedAvgHyper, ("none",), "", {"rho": 1.0})


def test_every_method_pairs_a_registered_solver() -> None:
    for method in METHODS.values():
        assert SOLVERS[method.solver.name] is method.solver
        assert set(method.solver.returns) == set(method.rule.reply_records)


def test_key_the_method_does_not_use_is_refused_naming_it() -> None:
    cfg = default_config() | {"algorithm": "fedavg", "proximal-mu": 0.5}
    with pytest.raises(ConfigError, match=r"proximal-mu=0.5 is not a hyper-parameter of.*fedavg"):
        validate_run_config(cfg)
    with pytest.raises(ConfigError, match="client-weighting='examples' is not a hyper-parameter"):
        validate_run_config(default_config() | {"algorithm": "scaffold", "client-weighting": "examples"})
    validate_run_config(default_config() | {"algorithm": "fedprox", "proximal-mu": 0.5})


def test_undeclared_key_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"unknown run-config key\(s\) feddyn-beta"):
        validate_run_config(default_config() | {"feddyn-beta": 0.1})


def test_presets_set_values_and_a_user_value_wins() -> None:
    alt = validate_run_config(default_config() | {"algorithm": "fedalt"})
    rep = validate_run_config(default_config() | {"algorithm": "fedrep"})
    assert (alt["personal-epochs"], alt["shared-epochs"]) == (0, 0)
    assert (rep["personal-epochs"], rep["shared-epochs"]) == (5, 1)
    own = validate_run_config(default_config() | {"algorithm": "fedrep", "personal-epochs": 2})
    assert own["personal-epochs"] == 2
    assert validate_run_config(default_config() | {"algorithm": "fedavg"})["client-weighting"] == (
        "examples"
    )


def test_pyproject_holds_every_declared_key_at_its_default_or_auto() -> None:
    with (ROOT / "pyproject.toml").open("rb") as fh:
        table = tomllib.load(fh)["tool"]["flwr"]["app"]["config"]
    keys = schema()
    assert list(table) == list(keys) or set(table) == set(keys)
    preset = {k for m in METHODS.values() for k in m.presets} | {"personalization"}
    for key, spec in keys.items():
        if key in preset and any(m.value(key, spec.default) != spec.default for m in METHODS.values()):
            assert table[key] == AUTO, f"{key}: a preset differs from the default, so it must be 'auto'"
        else:
            assert table[key] in (AUTO, spec.default), key


def test_readme_key_table_lists_every_key() -> None:
    readme = (ROOT / "README.md").read_text()
    missing = [key for key in schema() if f"`{key}`" not in readme]
    assert not missing, f"README key table lacks {missing}"


def test_readme_algorithm_table_lists_every_method() -> None:
    readme = (ROOT / "README.md").read_text()
    assert [name for name in METHODS if f"| `{name}`" not in readme] == []


def _imports(package: str) -> set[str]:
    found: set[str] = set()
    for path in (ROOT / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                found.add(node.module.split(".")[0])
            elif isinstance(node, ast.Import):
                found.update(alias.name.split(".")[0] for alias in node.names)
    return found


def test_client_and_server_sides_never_import_each_other() -> None:
    assert "strategies" not in _imports("client_app")
    assert "methods" not in _imports("client_app")
    assert "client_app" not in _imports("strategies")
    assert not {"client_app", "strategies", "server_app", "methods"} & _imports("protocol")


def test_client_weighting_is_honoured_by_the_mean_rule(tmp_path: Path) -> None:
    base = default_config() | {
        "algorithm": "fedavg",
        "output-dir": str(tmp_path),
        "num-server-rounds": 1,
        "partitioner": "dirichlet",
        "dirichlet-alpha": 0.3,
        "fraction-evaluate": 0.0,
    }
    rows = {}
    for weighting in ("examples", "uniform"):
        run_dir, _ = run_local(base | {"client-weighting": weighting, "run-name": weighting}, 3)
        rows[weighting] = read_metrics(run_dir)[-1]["global-accuracy"]
        origins = json.loads((run_dir / "config.json").read_text())[ORIGINS]
        assert origins["client-weighting"] == ("user" if weighting == "examples" else "default")
    assert rows["examples"] != rows["uniform"]


def test_origins_say_where_each_value_came_from() -> None:
    raw: dict[str, Any] = default_config() | {"algorithm": "fedrep", "lr": 0.05}
    _, origins = resolve(raw)
    assert origins["lr"] == "user"
    assert origins["personal-epochs"] == "method"
    assert origins["momentum"] == "default"


def test_in_process_api_runs_and_hooks_see_and_alter_messages(tmp_path: Path) -> None:
    from server_app.api import run_in_process

    seen: list[str] = []

    def drop_first_reply(reply: Any) -> Any:
        if reply.metadata.message_type == "train" and "tampered" not in seen:
            seen.append("tampered")
            del reply.content["metrics"]
        return reply

    result = run_in_process(
        {"algorithm": "fedavg", "num-server-rounds": 1, "output-dir": str(tmp_path)},
        3,
        tamper=drop_first_reply,
        on_deliver=lambda m: seen.append(m.metadata.message_type),
    )
    assert [r["round"] for r in result.rows] == [0, 1]
    assert result.rows[-1]["dropped-replies"] == 1.0
    assert "train" in seen and len(result.grid.sent) == len(seen) - seen.count("tampered")
