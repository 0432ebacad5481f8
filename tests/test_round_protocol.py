"""The round protocol: fused evaluation (one exchange per round), rollback of a client whose
reply was dropped, bounded updates, and how missing / error replies are counted.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import Error, Message

from client_app.app import app as client_app
from protocol.records import EVALUATION, SHARED, Z
from server_app.app import run_federation
from server_app.checkpoint import read_checkpoint
from server_app.inprocess import InProcessGrid
from strategies.base import RunFailedError
from tests.conftest import default_config, read_metrics

NODES = 3
TIMING = ("wall-time", "bytes-down")
"""Row keys that differ between the two protocols by design (time, and ``u`` sent once)."""


def cfg(tmp_path: Path, name: str, **extra: Any) -> dict[str, Any]:
    return default_config() | {
        "output-dir": str(tmp_path / "outputs"),
        "run-name": name,
        "num-server-rounds": 4,
        "local-epochs": 1,
        **extra,
    }


def values(rows: list[dict[str, Any]], skip: tuple[str, ...] = TIMING) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k not in skip} for r in rows]


def final_arrays(run_dir: Path) -> dict[str, np.ndarray]:
    return read_checkpoint(run_dir).arrays


# ------------------------------------------------------------------------- fused evaluation
@pytest.mark.parametrize(
    ("algorithm", "extra"),
    [
        ("fedavg", {}),
        ("fedapm", {"fraction-train": 0.67, "fraction-evaluate": 0.67}),
        ("ditto", {"fraction-evaluate": 0.34}),
    ],
)
def test_fused_evaluation_equals_the_two_phase_protocol(
    tmp_path: Path, algorithm: str, extra: dict[str, Any]
) -> None:
    """Same rows and values (wall time and bytes sent aside), same final model; the fused
    run sends fewer bytes and one exchange per round plus one after the last."""
    runs = {}
    for mode in ("separate", "fused"):
        grid = InProcessGrid(client_app, NODES)
        config = cfg(tmp_path, mode, algorithm=algorithm, **{"evaluate-mode": mode}, **extra)
        runs[mode] = (run_federation(grid, config), grid)
    (sep_dir, sep_grid), (fused_dir, fused_grid) = runs["separate"], runs["fused"]
    sep, fused = read_metrics(sep_dir), read_metrics(fused_dir)
    assert any("personal-accuracy" in r for r in fused)
    assert values(fused) == values(sep)
    for key, array in final_arrays(sep_dir).items():
        assert np.array_equal(final_arrays(fused_dir)[key], array)
    assert sum(r.get("bytes-down", 0) for r in fused) < sum(r.get("bytes-down", 0) for r in sep)
    groups = {(m.metadata.group_id, m.metadata.message_type) for m in fused_grid.sent}
    evaluate_groups = {g for g, kind in groups if kind == "evaluate"}
    assert len({m.metadata.message_type for m in sep_grid.sent}) >= 2
    flagged = [m for m in fused_grid.received if EVALUATION in m.content.metric_records]
    assert flagged, "train replies carry the evaluation of what they received"
    # evaluate messages only where an evaluating partition does not train, and after round 4
    assert "4" in evaluate_groups
    if algorithm == "fedavg":
        assert evaluate_groups == {"4"}


# ------------------------------------------------------------------------- rollback
def is_train_reply(reply: Message, grid: InProcessGrid, round_: str, node_index: int) -> bool:
    """Whether ``reply`` is node ``node_index``'s train reply of ``round_``."""
    return (
        reply.metadata.group_id == round_
        and reply.metadata.message_type == "train"
        and reply.metadata.src_node_id == grid.node_ids[node_index]
    )


def unavailable(reply: Message) -> Message:
    """The error reply the SuperLink sends in place of ``reply`` for an unavailable node."""
    error = Message(Error(code=3, reason="Node Unavailable"), reply_to=reply)
    error.metadata.__dict__["_reply_to_message_id"] = reply.metadata.reply_to_message_id
    return error


def drop_in_round(round_: str, node_index: int) -> Any:
    """A tamper that makes node ``node_index``'s train reply of ``round_`` unusable (NaN)."""

    def tamper(reply: Message) -> Message:
        grid = tamper.grid  # type: ignore[attr-defined]
        if is_train_reply(reply, grid, round_, node_index) and not reply.has_error():
            for record in reply.content.array_records.values():
                for key in list(record.keys()):
                    arr = record[key].numpy().copy()
                    arr.flat[0] = np.nan
                    record[key] = type(record[key]).from_numpy_ndarray(arr)
        return reply

    return tamper


def absent_in_round(round_: str, node_index: int) -> Any:
    """An ``on_deliver`` that keeps node ``node_index`` from ever seeing its train message
    of ``round_`` (it does not take part: no reply, nothing trained)."""

    def on_deliver(msg: Message) -> None:
        grid = on_deliver.grid  # type: ignore[attr-defined]
        target = grid.node_ids[node_index]
        kind = (msg.metadata.group_id, msg.metadata.message_type, msg.metadata.dst_node_id)
        if kind == (round_, "train", target):
            grid.silent.add(target)
            return
        grid.silent.discard(target)

    return on_deliver


@pytest.mark.parametrize("algorithm", ["fedadmm", "scaffold", "fedapm"])
def test_a_dropped_reply_rolls_the_client_back(tmp_path: Path, algorithm: str) -> None:
    """Dropping node 1's round-2 reply gives exactly the iterates of a run in which node 1
    did not take part in round 2: the client goes back to its round-1 state (π_i, c_i,
    personal block), in step with the server's stale view of it."""
    # separate evaluation: an absent node's lost train message must not also lose a fused
    # evaluation (the fused protocol is tested on its own above)
    extra = {"algorithm": algorithm, "round-timeout": 2.0, "evaluate-mode": "separate"}
    tamper = drop_in_round("2", 1)
    dropped_grid = InProcessGrid(client_app, NODES, tamper=tamper)
    tamper.grid = dropped_grid  # type: ignore[attr-defined]
    dropped = run_federation(dropped_grid, cfg(tmp_path, "dropped", **extra))
    on_deliver = absent_in_round("2", 1)
    absent_grid = InProcessGrid(client_app, NODES, on_deliver=on_deliver)
    on_deliver.grid = absent_grid  # type: ignore[attr-defined]
    absent = run_federation(absent_grid, cfg(tmp_path, "absent", **extra))
    rows_dropped, rows_absent = read_metrics(dropped), read_metrics(absent)
    by_round = {r["round"]: r for r in rows_dropped}, {r["round"]: r for r in rows_absent}
    assert by_round[0][2]["dropped-replies"] == by_round[1][2]["dropped-replies"] == 1
    skip = (*TIMING, "bytes-up", "bytes-up-per-client")
    assert values(rows_dropped, skip) == values(rows_absent, skip)
    for key, array in final_arrays(absent).items():
        assert np.array_equal(final_arrays(dropped)[key], array)
    assert read_checkpoint(dropped).accepted[1] == 4
    # the dropped client did train in round 2 (its reply arrived): only the rollback hides it
    trained = [
        m
        for m in dropped_grid.received
        if m.metadata.group_id == "2" and m.metadata.src_node_id == dropped_grid.node_ids[1]
    ]
    assert trained and any(
        SHARED in m.content.array_records or Z in m.content.array_records for m in trained
    )


# ------------------------------------------------------------------------- bounded updates
def amplify(node_index: int, factor: float) -> Any:
    """A tamper scaling node ``node_index``'s whole reply model by ``factor``."""

    def tamper(reply: Message) -> Message:
        grid = tamper.grid  # type: ignore[attr-defined]
        ours = reply.metadata.src_node_id == grid.node_ids[node_index]
        if reply.metadata.message_type == "train" and not reply.has_error() and ours:
            record = reply.content.array_records[SHARED]
            for key in list(record.keys()):
                arr = record[key].numpy() * np.float32(factor)
                record[key] = type(record[key]).from_numpy_ndarray(arr)
        return reply

    return tamper


def test_max_update_norm_bounds_an_outlier(tmp_path: Path) -> None:
    """FedAvg with one client sending 1e4 x its model: unbounded the global model is ruined
    (its accuracy stays low, or every reply turns non-finite and the ServerApp stops the run);
    with ``max-update-norm`` every such update is clipped (counted) and the run learns. A
    bound no honest update reaches changes nothing (bit for bit)."""
    results, stopped = {}, {}
    for name, bound in (("open", 0.0), ("clipped", 1.0)):
        tamper = amplify(0, 1e4)
        grid = InProcessGrid(client_app, NODES, tamper=tamper)
        tamper.grid = grid  # type: ignore[attr-defined]
        config = cfg(tmp_path, name, algorithm="fedavg", **{"max-update-norm": bound})
        try:
            run_federation(grid, config)
            stopped[name] = False
        except RunFailedError:
            stopped[name] = True
        (metrics,) = (tmp_path / "outputs").glob(f"{name}*/metrics.jsonl")
        results[name] = read_metrics(metrics.parent)
    open_rows, clipped_rows = results["open"], results["clipped"]
    assert stopped["open"] or open_rows[-1]["global-accuracy"] < 0.5
    assert not stopped["clipped"] and clipped_rows[-1]["global-accuracy"] > 0.5
    assert all(r["clipped-updates"] >= 1 for r in clipped_rows[1:])
    assert "clipped-updates" not in open_rows[1]
    honest = {}
    for name, bound in (("honest", 0.0), ("wide", 1e12)):
        config = cfg(tmp_path, name, algorithm="fedavg", **{"max-update-norm": bound})
        honest[name] = read_metrics(run_federation(InProcessGrid(client_app, NODES), config))
    assert all(r["clipped-updates"] == 0 for r in honest["wide"][1:])
    assert values(honest["wide"], (*TIMING, "clipped-updates")) == values(honest["honest"])
    assert honest["honest"][-1]["global-accuracy"] > 0.5


def test_update_clipping_is_relative_to_what_was_sent() -> None:
    """``clip_update``: ``u + Δ·C/‖Δ‖`` over all arrays of the reply model; a reply within
    the bound is left as it came."""
    from strategies.mean import MeanStrategy

    strategy = MeanStrategy(default_config() | {"max-update-norm": 5.0}, "sgd")
    strategy._sent = {"a": np.ones(2, np.float32), "b": np.zeros(1, np.float32)}
    model = {"a": np.array([7.0, 1.0], np.float32), "b": np.array([8.0], np.float32)}
    assert strategy.clip_update(model)  # Δ = (6, 0, 8), norm 10 -> (3, 0, 4)
    assert model["a"].tolist() == [4.0, 1.0] and model["b"].tolist() == [4.0]
    assert model["a"].dtype == np.float32
    inside = {"a": np.array([4.0, 1.0], np.float32), "b": np.array([4.0], np.float32)}
    assert not strategy.clip_update(inside)  # norm exactly 5
    assert inside["a"].tolist() == [4.0, 1.0]


# ------------------------------------------------------------------------- error replies
def error_in_round(round_: str, node_index: int) -> Any:
    """A tamper replacing node ``node_index``'s train reply of ``round_`` by an error reply
    (what the SuperLink sends for a node that became unavailable)."""

    def tamper(reply: Message) -> Message:
        grid = tamper.grid  # type: ignore[attr-defined]
        return unavailable(reply) if is_train_reply(reply, grid, round_, node_index) else reply

    return tamper


def test_an_error_reply_is_one_dropped_reply_with_its_reason(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    tamper = error_in_round("2", 1)
    grid = InProcessGrid(client_app, NODES, tamper=tamper)
    tamper.grid = grid  # type: ignore[attr-defined]
    caplog.set_level(logging.WARNING)
    rows = read_metrics(run_federation(grid, cfg(tmp_path, "err", algorithm="fedavg")))
    # once in round 2 (its training) and once in round 1 (the fused evaluation it carried)
    assert [r.get("dropped-replies") for r in rows[1:]] == [1, 1, 0, 0]
    assert rows[2]["clients"] == NODES - 1
    assert f"dropped train reply of node {grid.node_ids[1]}" in caplog.text
    assert "Node Unavailable" in caplog.text
    assert "no train reply" not in caplog.text


def test_discovery_asks_again_after_an_error_reply(tmp_path: Path) -> None:
    """One 'Node Unavailable' answer to the partition query does not end the run."""
    seen: list[int] = []

    def tamper(reply: Message) -> Message:
        if reply.metadata.message_type == "query.info" and not seen:
            seen.append(reply.metadata.src_node_id)
            return unavailable(reply)
        return reply

    grid = InProcessGrid(client_app, NODES, tamper=tamper)
    rows = read_metrics(run_federation(grid, cfg(tmp_path, "disc", **{"num-server-rounds": 1})))
    assert seen and rows[-1]["clients"] == NODES
