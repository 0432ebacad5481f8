"""Client state files carry their identity and are checked on load (issue 11, items 3-5).

A round file records run id, partition id, algorithm, round and digest; a file of another run,
partition or algorithm, or a damaged one, is refused with a log line naming the file and the
reason, and the newest intact earlier file is used (or a clean start, logged). Two runs of the
same name share no files, and a run resumed without ``state-dir`` restores its clients' state
from the run directory: its metrics equal an uninterrupted run's.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from flwr.app import Context, Message, RecordDict

from client_app.app import app as client_app
from client_app.state import (
    RESTORES,
    ClientState,
    read_state_file,
    round_files,
    state_digest,
    state_path,
    write_state_file,
)
from client_app.state import StateIdentity as Identity
from server_app.app import run_federation
from server_app.checkpoint import CLIENT_STATE_DIR, CheckpointError, read_checkpoint
from server_app.inprocess import InProcessGrid
from tests.conftest import default_config, read_metrics

CPU = torch.device("cpu")
RUN, ALGORITHM, PID = "run-a", "fedadmm", 3


def context() -> Context:
    """An empty ``context.state`` (a fresh SuperNode process)."""
    return Context(run_id=1, node_id=5, node_config={}, state=RecordDict(), run_config={})


def client(
    root: Path, rnd: int, training: bool = True, run_id: str = RUN, pid: int = PID
) -> ClientState:
    return ClientState(
        context(), pid, str(root), "scope", rnd, training, run_id=run_id, algorithm=ALGORITHM
    )


def write_rounds(root: Path, rounds: range, run_id: str = RUN, pid: int = PID) -> Path:
    """Train rounds ``rounds`` (value = round) in one process; the partition's directory."""
    ctx = context()
    for rnd in rounds:
        state = ClientState(
            ctx, pid, str(root), "scope", rnd, True, run_id=run_id, algorithm=ALGORITHM
        )
        state.put("pi", {"w": torch.full((3,), float(rnd))})
        state.commit(rnd)
    return state_path(root, "scope", pid, run_id)


def restores(directory: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (directory / RESTORES).read_text().splitlines()]


def restored_value(root: Path, rnd: int) -> float | None:
    pi = client(root, rnd).get("pi", CPU)
    return None if pi is None else float(pi["w"][0])


def test_round_file_records_its_identity(tmp_path: Path) -> None:
    directory = write_rounds(tmp_path, range(1, 3))
    assert directory == tmp_path / "scope" / RUN / f"partition-{PID}"
    saved = torch.load(directory / "round-2.pt", weights_only=True)
    assert {k: saved[k] for k in ("run-id", "partition-id", "algorithm", "round")} == {
        "run-id": RUN,
        "partition-id": PID,
        "algorithm": ALGORITHM,
        "round": 2,
    }
    assert saved["digest"] == state_digest(saved["groups"])
    groups = read_state_file(directory / "round-2.pt", Identity(RUN, PID, ALGORITHM), 2)
    assert float(groups["pi"]["w"][0]) == 2.0


def copy_foreign(tmp_path: Path, foreign: Identity) -> Path:
    """Rounds 1-2 of partition PID of RUN, plus a round-3 file of ``foreign`` copied in."""
    directory = write_rounds(tmp_path / "own", range(1, 3))
    other = tmp_path / "other"
    ctx = context()
    state = ClientState(
        ctx,
        foreign.partition_id,
        str(other),
        "scope",
        3,
        True,
        run_id=foreign.run_id,
        algorithm=foreign.algorithm,
    )
    state.put("pi", {"w": torch.full((3,), 99.0)})
    state.commit(3)
    source = state_path(other, "scope", foreign.partition_id, foreign.run_id) / "round-3.pt"
    shutil.copy(source, directory / "round-3.pt")
    return directory


@pytest.mark.parametrize(
    ("foreign", "field"),
    [
        (Identity(RUN, PID + 1, ALGORITHM), "partition-id"),
        (Identity("run-b", PID, ALGORITHM), "run-id"),
        (Identity(RUN, PID, "scaffold"), "algorithm"),
    ],
    ids=["other-partition", "other-run", "other-algorithm"],
)
def test_foreign_file_is_refused_and_the_older_own_file_used(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, foreign: Identity, field: str
) -> None:
    directory = copy_foreign(tmp_path, foreign)
    caplog.set_level(logging.INFO)
    assert restored_value(tmp_path / "own", 4) == 2.0
    assert f"client state file {directory / 'round-3.pt'} refused: field '{field}'" in caplog.text
    (entry,) = restores(directory)
    assert (entry["restored-round"], entry["file"]) == (2, "round-2.pt")
    assert [r["file"] for r in entry["refused"]] == ["round-3.pt"]
    assert f"field '{field}'" in entry["refused"][0]["reason"]
    assert (directory / "round-3.pt").exists()  # refused, not deleted


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def empty(path: Path) -> None:
    path.write_bytes(b"")


def garbage(path: Path) -> None:
    path.write_bytes(b"not a torch file, " * 20)


def nan(path: Path) -> None:
    """NaN in the state, digest recomputed: only the finiteness check can catch it."""
    groups = read_state_file(path, Identity(RUN, PID, ALGORITHM), 3)
    groups["pi"]["w"][1] = float("nan")
    write_state_file(path, Identity(RUN, PID, ALGORITHM), 3, groups)


def edited(path: Path) -> None:
    """A value changed behind the digest's back."""
    saved = torch.load(path, weights_only=True)
    saved["groups"]["pi"]["w"][0] = 7.0
    torch.save(saved, path)


CORRUPTIONS: dict[str, tuple[Callable[[Path], None], str]] = {
    "truncated": (truncate, "is not a readable state file"),
    "empty": (empty, "is not a readable state file"),
    "garbage": (garbage, "is not a readable state file"),
    "nan": (nan, "tensor pi/w holds 1 non-finite value(s)"),
    "digest": (edited, "field 'digest'"),
}


@pytest.mark.parametrize("kind", sorted(CORRUPTIONS))
def test_corrupt_newest_file_falls_back_to_the_older_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, kind: str
) -> None:
    directory = write_rounds(tmp_path, range(1, 4))
    damage, reason = CORRUPTIONS[kind]
    damage(directory / "round-3.pt")
    caplog.set_level(logging.INFO)
    assert restored_value(tmp_path, 4) == 2.0
    assert f"client state file {directory / 'round-3.pt'} refused: {reason}" in caplog.text
    (entry,) = restores(directory)
    assert entry["restored-round"] == 2 and entry["refused"][0]["file"] == "round-3.pt"
    assert entry["refused"][0]["reason"].startswith(reason)
    assert sorted(round_files(directory)) == [1, 2, 3]  # nothing deleted


def test_no_intact_file_left_is_a_logged_clean_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    directory = write_rounds(tmp_path, range(1, 4))
    empty(directory / "round-3.pt")
    garbage(directory / "round-2.pt")
    truncate(directory / "round-1.pt")
    caplog.set_level(logging.INFO)
    assert restored_value(tmp_path, 4) is None
    assert "clean start" in caplog.text
    (entry,) = restores(directory)
    assert entry["restored-round"] is None and entry["file"] is None
    assert [r["file"] for r in entry["refused"]] == ["round-3.pt", "round-2.pt", "round-1.pt"]


# ------------------------------------------------------------------ in-process runs
NODES, ROUNDS = 3, 4


class ServerKilledError(Exception):
    """The simulated kill of the ServerApp process."""


def strip(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k != "wall-time"} for r in rows]


def base_config(out: Path, **extra: Any) -> dict[str, Any]:
    return default_config() | {
        "output-dir": str(out),
        "num-server-rounds": ROUNDS,
        "local-epochs": 1,
        **extra,
    }


def grid(state_dir: Path | None = None, **kwargs: Any) -> InProcessGrid:
    """Node i holds partition ``NODES-1-i``; a node-config ``state-dir`` if given."""
    extra = {} if state_dir is None else {"state-dir": str(state_dir)}
    return InProcessGrid(
        client_app,
        NODES,
        node_config=lambda i: {"partition-id": NODES - 1 - i, "num-partitions": NODES, **extra},
        **kwargs,
    )


def test_two_runs_of_the_same_name_share_no_files(tmp_path: Path) -> None:
    state = tmp_path / "state"
    cfg = base_config(tmp_path, algorithm="fedadmm", **{"num-server-rounds": 2, "run-name": "same"})
    first = run_federation(grid(state), cfg | {"output-dir": str(tmp_path / "a")})
    before = {p: p.read_bytes() for p in state.rglob("round-*.pt")}
    second = run_federation(
        grid(state, first_node_id=5000), cfg | {"output-dir": str(tmp_path / "b")}
    )
    ids = [read_checkpoint(d).run_id for d in (first, second)]
    assert first.name == second.name == "same" and ids[0] != ids[1]
    assert sorted(p.name for p in (state / "same").iterdir()) == sorted(ids)
    for run_id in ids:
        for pid in range(NODES):
            directory = state_path(state, "same", pid, run_id)
            assert sorted(round_files(directory)) == [1, 2]
            assert not (directory / RESTORES).exists()
            saved = torch.load(directory / "round-2.pt", weights_only=True)
            assert (saved["run-id"], saved["partition-id"]) == (run_id, pid)
    assert all(p.read_bytes() == data for p, data in before.items())  # untouched, unpruned


def kill_in_round_3(msg: Message) -> None:
    """Raise ``ServerKilledError`` at the second train message of round 3."""
    if msg.metadata.group_id == "3" and msg.metadata.message_type == "train":
        kill_in_round_3.seen += 1  # type: ignore[attr-defined]
        if kill_in_round_3.seen > 1:  # type: ignore[attr-defined]
            raise ServerKilledError("round 3")


IVON = {"eval-samples": 2, "lr": 0.002, "hess-init": 0.5, "fraction-train": 0.67}
STATEFUL: dict[str, dict[str, Any]] = {
    "fedadmm": {},
    "fedapm": {},
    "bayes-admm": {},
    "fedrep": {},
    "scaffold": {},
    "feddyn": {},
    "ditto": {},
    "ivon-admm": IVON,
}


@pytest.mark.parametrize("algorithm", sorted(STATEFUL))
def test_resume_without_state_dir_equals_uninterrupted(tmp_path: Path, algorithm: str) -> None:
    extra = STATEFUL[algorithm] | {"state-dir": ""}
    cfg = base_config(tmp_path / "outputs", algorithm=algorithm, **extra)
    full = run_federation(grid(), cfg | {"run-name": "full"})
    assert all(not r.get("dropped-replies") for r in read_metrics(full))

    kill_in_round_3.seen = 0  # type: ignore[attr-defined]
    with pytest.raises(ServerKilledError):
        run_federation(grid(on_deliver=kill_in_round_3), cfg | {"run-name": "cut"})
    run_dir = tmp_path / "outputs" / "cut"
    ckpt = read_checkpoint(run_dir)  # round 1: fused, round 2's row waits for round 3
    run_id = ckpt.run_id
    resumed = run_federation(
        grid(first_node_id=7000), cfg | {"resume-from": str(run_dir), "run-name": "x"}
    )
    assert resumed == run_dir and read_checkpoint(run_dir).run_id == run_id
    assert strip(read_metrics(run_dir)) == strip(read_metrics(full))
    found = []
    for pid in range(NODES):
        log = state_path(run_dir / CLIENT_STATE_DIR, "cut", pid, run_id) / RESTORES
        entries = restores(log.parent) if log.exists() else []
        assert all(e["restored-round"] == ckpt.accepted[pid] for e in entries)
        found += entries
    assert found and all(e["round"] > ckpt.round for e in found)
    assert all(not e["refused"] for e in found)


def test_resume_refuses_nodes_that_lost_their_state(tmp_path: Path) -> None:
    """A resumed FedADMM run whose SuperNodes kept their state only in memory (here: each
    node looks in an empty state-dir, as on a machine without the run directory) is refused
    before round 1, naming state-dir; nothing in the run directory changes."""
    cfg = base_config(tmp_path / "outputs", algorithm="fedadmm", **{"state-dir": ""})
    kill_in_round_3.seen = 0  # type: ignore[attr-defined]
    with pytest.raises(ServerKilledError):
        run_federation(grid(on_deliver=kill_in_round_3), cfg | {"run-name": "cut"})
    run_dir = tmp_path / "outputs" / "cut"
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    elsewhere = tmp_path / "other-machine"
    with pytest.raises(CheckpointError, match="state-dir") as err:
        run_federation(grid(elsewhere), cfg | {"resume-from": str(run_dir)})
    assert "it holds no client state of this run" in str(err.value)
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before
    # the same nodes pointed at the run directory's mirror resume exactly
    resumed = run_federation(grid(run_dir / CLIENT_STATE_DIR), cfg | {"resume-from": str(run_dir)})
    assert resumed == run_dir


@pytest.mark.parametrize("algorithm", sorted(STATEFUL))
def test_resume_with_state_dir_equals_uninterrupted(tmp_path: Path, algorithm: str) -> None:
    """The same with each node's own ``state-dir`` (as on separate machines)."""
    state = tmp_path / "state"
    cfg = base_config(tmp_path / "outputs", algorithm=algorithm, **STATEFUL[algorithm])
    full = run_federation(grid(tmp_path / "full-state"), cfg | {"run-name": "full"})
    kill_in_round_3.seen = 0  # type: ignore[attr-defined]
    with pytest.raises(ServerKilledError):
        run_federation(grid(state, on_deliver=kill_in_round_3), cfg | {"run-name": "cut"})
    run_dir = tmp_path / "outputs" / "cut"
    resumed = run_federation(
        grid(state, first_node_id=7000), cfg | {"resume-from": str(run_dir), "run-name": "x"}
    )
    assert resumed == run_dir
    assert strip(read_metrics(run_dir)) == strip(read_metrics(full))
    assert not (run_dir / CLIENT_STATE_DIR).exists()  # every node used its own state-dir
