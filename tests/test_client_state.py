"""Client state versioned by round, mirrored to disk and restored after restarts."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
import torch
from flwr.app import Context, RecordDict

from client_app.app import state_dir
from client_app.runtime import PERSONAL
from client_app.solvers.admm import PI
from client_app.state import META, ClientState, ContextStore, round_files, state_digest, state_path
from protocol.round import RoundValues
from server_app.checkpoint import read_checkpoint
from tests.conftest import run_local

CPU = torch.device("cpu")


def context(run_id: int = 1) -> Context:
    return Context(run_id=run_id, node_id=5, node_config={}, state=RecordDict(), run_config={})


def train_round(ctx: Context, state_dir: Path, rnd: int, value: float) -> None:
    state = ClientState(ctx, 3, str(state_dir), "scope", rnd, training=True)
    state.put("pi", {"w": torch.full((2, 2), value)})
    state.put("xi", {"value": torch.tensor([value], dtype=torch.float64)})
    state.commit(rnd)


def test_round_files_are_atomic_and_only_the_last_three_stay(tmp_path: Path) -> None:
    ctx = context()
    for rnd in (1, 2, 3, 4):
        train_round(ctx, tmp_path, rnd, float(rnd))
    directory = state_path(tmp_path, "scope", 3)
    assert sorted(p.name for p in directory.iterdir()) == ["round-2.pt", "round-3.pt", "round-4.pt"]
    train_round(ctx, tmp_path, 3, 3.0)  # back to round 3 (from disk): nothing newer goes
    assert sorted(round_files(directory)) == [2, 3, 4]
    assert int(ctx.state[META]["round"]) == 3  # type: ignore[call-overload]
    saved = torch.load(directory / "round-3.pt", weights_only=True)["groups"]
    assert set(saved) == {"pi", "xi"}
    in_memory = {
        k: {n: torch.from_numpy(a.numpy()) for n, a in ctx.state.array_records[k].items()}
        for k in ("pi", "xi")
    }
    assert state_digest(saved) == state_digest(in_memory)
    older = torch.load(directory / "round-2.pt", weights_only=True)["groups"]
    assert state_digest(saved) != state_digest(older)


def test_train_uses_earlier_rounds_evaluate_its_own(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ctx = context()
    for rnd in (1, 2, 3):
        train_round(ctx, tmp_path, rnd, float(rnd))
    directory = state_path(tmp_path, "scope", 3)
    # same process, state of round 3 in memory: evaluate(3) and train(4) use it as is
    same = ClientState(ctx, 3, str(tmp_path), "scope", 3, False).get("pi", CPU)
    assert same is not None and float(same["w"][0, 0]) == 3.0
    assert not (directory / "restores.jsonl").exists()
    # a resumed server re-sends round 3: the round-3 state is too new; its base, round 2,
    # is still held in memory (every group of it)
    caplog.set_level(logging.INFO)
    again = ClientState(ctx, 3, str(tmp_path), "scope", 3, True)
    pi, xi2 = again.get("pi", CPU), again.get("xi", CPU)
    assert pi is not None and float(pi["w"][0, 0]) == 2.0
    assert xi2 is not None and float(xi2["value"][0]) == 2.0
    assert again.loaded_round == 2
    assert not (directory / "restores.jsonl").exists()
    # one round further back is only on disk: restored from there
    pi1 = ClientState(ctx, 3, str(tmp_path), "scope", 2, True).get("pi", CPU)
    assert pi1 is not None and float(pi1["w"][0, 0]) == 1.0
    # a fresh SuperNode (empty context.state) evaluating round 3 restores round 3
    fresh = context(run_id=99)
    xi = ClientState(fresh, 3, str(tmp_path), "scope", 3, False).get("xi", CPU)
    assert xi is not None and float(xi["value"][0]) == 3.0
    lines = [json.loads(x) for x in (directory / "restores.jsonl").read_text().splitlines()]
    assert [(e["round"], e["restored-round"], e["file"]) for e in lines] == [
        (2, 1, "round-1.pt"),
        (3, 3, "round-3.pt"),
    ]
    saved = torch.load(directory / "round-3.pt", weights_only=True)["groups"]
    assert lines[1]["digest"] == state_digest(saved)
    assert "restored" in caplog.text


def test_nothing_on_disk_means_a_fresh_client(tmp_path: Path) -> None:
    ctx = context()
    assert ClientState(ctx, 0, str(tmp_path), "scope", 1, True).get("pi", CPU) is None
    assert ClientState(ctx, 0, "", "", 4, True).get("pi", CPU) is None
    assert round_files(tmp_path / "missing") == {}


def test_in_process_run_mirrors_every_partition(config: dict[str, Any], tmp_path: Path) -> None:
    """FedAPM (output personalization): the newest file is exactly the state in memory."""
    config.update(
        {
            "algorithm": "fedapm",
            "num-server-rounds": 3,
            "local-epochs": 1,
            "run-name": "mirror",
            "state-dir": str(tmp_path / "state"),
        }
    )
    run_dir, grid = run_local(config, 3)
    run_id = read_checkpoint(run_dir).run_id
    for pid, nid in enumerate(grid.node_ids):
        directory = state_path(tmp_path / "state", run_dir.name, pid, run_id)
        assert sorted(round_files(directory)) == [1, 2, 3]
        saved = torch.load(directory / "round-3.pt", weights_only=True)["groups"]
        assert {PI, PERSONAL} <= set(saved)
        ctx = grid.contexts[nid]
        in_memory = {
            k: {n: torch.from_numpy(a.numpy()) for n, a in rec.items()}
            for k, rec in ctx.state.array_records.items()
            if not k.startswith(ContextStore.BASE)
        }
        assert state_digest(saved) == state_digest(in_memory)


def test_state_dir_node_config_then_run_config_then_reachable_default(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    rnd = RoundValues(1, "sgd", 0.1, run_id="r", default_state_dir=str(run_dir / "client-state"))
    ctx = Context(
        run_id=1, node_id=5, node_config={"state-dir": "node"}, state=RecordDict(), run_config={}
    )
    assert state_dir(ctx, {"state-dir": "run-config"}, rnd) == "node"
    assert state_dir(context(), {"state-dir": "run-config"}, rnd) == "run-config"
    assert state_dir(context(), {"state-dir": ""}, rnd) == ""  # run dir not on this machine
    run_dir.mkdir()
    assert state_dir(context(), {"state-dir": ""}, rnd) == str(run_dir / "client-state")


def test_files_of_one_scope_are_kept_apart_by_run_id(tmp_path: Path) -> None:
    for run_id, value in (("first", 1.0), ("second", 2.0)):
        for rnd in (1, 2, 3, 4):
            state = ClientState(context(), 0, str(tmp_path), "same", rnd, run_id=run_id)
            state.put("pi", {"w": torch.full((2,), value)})
            state.commit(rnd)
    for run_id, value in (("first", 1.0), ("second", 2.0)):
        assert sorted(round_files(state_path(tmp_path, "same", 0, run_id))) == [2, 3, 4]
        pi = ClientState(context(), 0, str(tmp_path), "same", 5, run_id=run_id).get("pi", CPU)
        assert pi is not None and float(pi["w"][0]) == value
