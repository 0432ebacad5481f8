"""Server checkpoints and ``resume-from``: a run killed after round 2 and resumed finishes with
the metrics of an uninterrupted run (in-process federation, fresh client contexts and node ids).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import Message

import server_app.app as server_app_module
from client_app.app import app as client_app
from client_app.state import state_path
from server_app.app import run_federation
from server_app.checkpoint import find_checkpoint, read_checkpoint, round_dirs
from server_app.config import ConfigError
from server_app.inprocess import InProcessGrid
from strategies.checkpointing import pack_partitions, unpack_partitions
from tests.conftest import default_config, read_metrics, run_local

NODES, ROUNDS = 3, 4


class Killed(Exception):
    """The simulated kill of the ServerApp process."""


def strip(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k != "wall-time"} for r in rows]


def base_config(tmp_path: Path, **extra: Any) -> dict[str, Any]:
    return default_config() | {
        "output-dir": str(tmp_path / "outputs"),
        "num-server-rounds": ROUNDS,
        "local-epochs": 1,
        **extra,
    }


def grid_for(state_dir: Path, **kwargs: Any) -> InProcessGrid:
    """Fresh ClientApp contexts; node i holds partition ``NODES-1-i`` (ids differ per run)."""
    return InProcessGrid(
        client_app,
        NODES,
        node_config=lambda i: {
            "partition-id": NODES - 1 - i,
            "num-partitions": NODES,
            "state-dir": str(state_dir),
        },
        **kwargs,
    )


def kill_in(round_: int, kind: str, after: int) -> Callable[[Message], None]:
    """Raise ``Killed`` when the ``after+1``-th ``kind`` message of ``round_`` is delivered."""
    seen = [0]

    def on_deliver(msg: Message) -> None:
        if msg.metadata.group_id == str(round_) and msg.metadata.message_type == kind:
            seen[0] += 1
            if seen[0] > after:
                raise Killed(f"{kind} message {seen[0]} of round {round_}")

    return on_deliver


IVON = {"eval-samples": 2, "lr": 0.002, "hess-init": 0.5, "fraction-train": 0.67}
CASES = {
    # algorithm, extra config, where the server dies in round 3, the checkpoints left
    # (fused evaluation: round 2's row and checkpoint wait for round 3's exchange)
    "fedapm-output-mid-train": ("fedapm", {"personalization": "output"}, "train", [1]),
    "fedadmm-partial-mid-evaluate": (
        "fedadmm",
        {"fraction-train": 0.67, "evaluate-mode": "separate"},
        "evaluate",
        [1, 2],
    ),
    "ivon-admm-partial-before-checkpoint": ("ivon-admm", IVON, "checkpoint", [1, 2]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_resumed_run_equals_uninterrupted(
    case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    algorithm, extra, kill, kept = CASES[case]
    cfg = base_config(tmp_path, algorithm=algorithm, **extra)
    full, _ = run_local(cfg | {"run-name": "full"}, NODES)
    assert all(not r.get("dropped-replies") for r in read_metrics(full))  # it really trains

    state_dir = tmp_path / "state"
    cut = cfg | {"run-name": "cut"}
    if kill == "checkpoint":  # round 3's metrics line is written, its checkpoint is not
        write = server_app_module.write_checkpoint

        def failing_write(run_dir: Path, ckpt: Any) -> Path:
            if ckpt.round == 3:
                raise Killed("while writing the round-3 checkpoint")
            return write(run_dir, ckpt)

        monkeypatch.setattr(server_app_module, "write_checkpoint", failing_write)
        with pytest.raises(Killed):
            run_federation(grid_for(state_dir), cut)
        assert [r["round"] for r in read_metrics(tmp_path / "outputs" / "cut")] == [0, 1, 2, 3]
        monkeypatch.undo()
    else:
        with pytest.raises(Killed):
            run_federation(grid_for(state_dir, on_deliver=kill_in(3, kill, after=1)), cut)
    run_dir = tmp_path / "outputs" / "cut"
    assert sorted(round_dirs(run_dir / "checkpoint")) == kept

    resumed = run_federation(
        grid_for(state_dir, first_node_id=7000),
        cfg | {"resume-from": str(run_dir), "run-name": "elsewhere"},
    )
    assert resumed == run_dir
    assert strip(read_metrics(run_dir)) == strip(read_metrics(full))
    summary = json.loads((run_dir / "summary.json").read_text())
    expected = json.loads((full / "summary.json").read_text())
    assert {k: v for k, v in summary.items() if k != "wall-time"} == {
        k: v for k, v in expected.items() if k != "wall-time"
    }
    assert json.loads((run_dir / "config.json").read_text())["resumed-after-round"] == [max(kept)]
    assert sorted(round_dirs(run_dir / "checkpoint")) == [3, 4]
    restored = []
    run_id = read_checkpoint(run_dir).run_id  # kept by the resume
    for pid in range(NODES):
        log = state_path(state_dir, "cut", pid, run_id) / "restores.jsonl"  # none: never trained
        restored += [json.loads(x) for x in log.read_text().splitlines()] if log.exists() else []
    after = max(kept)
    assert restored and all(e["round"] > after and e["restored-round"] <= after for e in restored)


def test_checkpoint_is_partition_keyed_and_complete(tmp_path: Path) -> None:
    cfg = base_config(tmp_path, algorithm="ivon-admm", **IVON, **{"num-server-rounds": 2})
    run_dir, _ = run_local(cfg | {"run-name": "r"}, NODES)
    ckpt = read_checkpoint(run_dir)
    assert ckpt.path == find_checkpoint(run_dir / "checkpoint") == run_dir / "checkpoint/round-2"
    assert ckpt.round == 2 and ckpt.scope == "r" and ckpt.num_clients == NODES
    assert ckpt.rule == "DiagonalBayesADMM" and ckpt.config["algorithm"] == "ivon-admm"
    sites = unpack_partitions("site", ckpt.rule_state)
    assert sorted(sites) == list(range(NODES))
    assert set(sites[0]) == {"eta", "precision", "dual_mean", "dual_precision"}
    assert all(a.dtype == np.float64 for s in sites.values() for a in s.values())
    assert not bool(ckpt.rule_state["at-prior"])
    assert set(ckpt.rng) == {"python", "numpy", "torch"}
    state = pack_partitions("z", {1: {"w": np.ones(2)}})
    assert list(state) == ["z/1/w"] and unpack_partitions("z", state)[1]["w"].tolist() == [1, 1]


def test_resume_refuses_a_changed_math_key(tmp_path: Path) -> None:
    cfg = base_config(tmp_path, algorithm="fedadmm", **{"num-server-rounds": 1})
    run_dir, _ = run_local(cfg | {"run-name": "r"}, NODES)
    with pytest.raises(ConfigError, match=r"resume-from=.*rho=0\.5 differs .* rho=0\.01"):
        run_local(cfg | {"resume-from": str(run_dir), "rho": 0.5, "num-server-rounds": 2}, NODES)
    with pytest.raises(ConfigError, match="already at round 1"):
        run_local(cfg | {"resume-from": str(run_dir)}, NODES)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match="holds no checkpoint"):
        run_local(cfg | {"resume-from": str(empty), "num-server-rounds": 2}, NODES)
