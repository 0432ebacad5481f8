"""Fault tolerance of the round loop: a node that stops answering, rejoins with a new node id,
and too few nodes (in-process federation)."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from flwr.app import Message

from client_app.app import app as client_app
from client_app.state import META, state_digest, state_path
from server_app.app import run_federation
from server_app.checkpoint import read_checkpoint
from server_app.inprocess import InProcessGrid
from strategies.base import FederationError
from strategies.checkpointing import unpack_partitions
from tests.conftest import default_config, read_metrics

NODES = 3


def config(tmp_path: Path, **extra: Any) -> dict[str, Any]:
    return default_config() | {
        "algorithm": "fedapm",
        "output-dir": str(tmp_path / "outputs"),
        "run-name": "faults",
        "num-server-rounds": 4,
        "local-epochs": 1,
        "round-timeout": 1.0,
        **extra,
    }


def grid_with_state(state_dir: Path) -> InProcessGrid:
    return InProcessGrid(
        client_app,
        NODES,
        node_config=lambda i: {
            "partition-id": i,
            "num-partitions": NODES,
            "state-dir": str(state_dir),
        },
    )


def test_node_silent_in_round_2_rejoins_with_new_id(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    grid = grid_with_state(state_dir)
    dead = grid.node_ids[1]
    run_dir = tmp_path / "outputs" / "faults"
    checkpoints: dict[int, Any] = {}

    def on_deliver(msg: Message) -> None:
        group, kind = msg.metadata.group_id, msg.metadata.message_type
        if group == "2" and kind == "train" and not grid.silent:
            grid.silent.add(dead)  # the SuperNode dies: listed, never answers
            partition_dir = state_path(state_dir, "faults", 1, read_checkpoint(run_dir).run_id)
            shutil.copy(partition_dir / "round-1.pt", tmp_path / "persisted.pt")
        if group == "2" and kind == "evaluate" and msg.metadata.dst_node_id == dead:
            grid.restart_node(dead)  # comes back with a new node id and empty state
        if group == "3" and not checkpoints:
            checkpoints.update(
                {k: read_checkpoint(run_dir / f"checkpoint/round-{k}") for k in (1, 2)}
            )

    grid.on_deliver = on_deliver
    # separate evaluation: the node dies at round 2's training and returns at its evaluation
    extra = {"state-dir": str(state_dir), "evaluate-mode": "separate"}
    run_federation(grid, config(tmp_path, **extra))

    rows = {r["round"]: r for r in read_metrics(run_dir)}  # personalized: no round-0 row
    assert sorted(rows) == [1, 2, 3, 4]
    assert (rows[2]["clients"], rows[2]["dropped-replies"]) == (2, 2)  # train + evaluate
    assert all(rows[k]["clients"] == NODES and rows[k]["dropped-replies"] == 0 for k in (1, 3, 4))
    z1, z2 = (unpack_partitions("z", checkpoints[k].rule_state) for k in (1, 2))
    for name in z1[1]:  # the dead node's stale z_i stayed; the others moved
        np.testing.assert_array_equal(z1[1][name], z2[1][name])
    assert any(not np.array_equal(z1[0][k], z2[0][k]) for k in z1[0])

    run_id = read_checkpoint(run_dir).run_id
    partition_dir = state_path(state_dir, "faults", 1, run_id)
    new = grid.node_ids[1]
    assert new != dead and int(grid.contexts[new].state[META]["round"]) == 4  # type: ignore[call-overload]
    restores = [json.loads(x) for x in (partition_dir / "restores.jsonl").read_text().splitlines()]
    assert [(e["round"], e["restored-round"], e["file"]) for e in restores] == [
        (3, 1, "round-1.pt")
    ]
    persisted = torch.load(tmp_path / "persisted.pt", weights_only=True)["groups"]
    assert restores[0]["digest"] == state_digest(persisted)
    for pid in (0, 2):
        assert not (state_path(state_dir, "faults", pid, run_id) / "restores.jsonl").exists()


def test_claim_on_a_partition_of_a_connected_node_is_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    grid = InProcessGrid(client_app, NODES)

    def on_deliver(msg: Message) -> None:
        if msg.metadata.group_id == "2" and len(grid.node_ids) == NODES:
            impostor = 5000
            grid.contexts[impostor] = grid._context(
                impostor, {"partition-id": 0, "num-partitions": NODES}
            )
            grid.node_ids.append(impostor)

    grid.on_deliver = on_deliver
    caplog.set_level(logging.WARNING)
    run_federation(grid, config(tmp_path, **{"num-server-rounds": 3}))
    rows = read_metrics(tmp_path / "outputs" / "faults")
    assert len(rows) == 3 and all(r["clients"] == NODES for r in rows)
    assert "claims partition-id=0, still held by connected node 1000" in caplog.text
    assert not any(
        m.metadata.dst_node_id == 5000 for m in grid.sent if "train" in m.metadata.message_type
    )


def test_too_few_nodes_stop_the_run_with_a_clear_error(tmp_path: Path) -> None:
    grid = InProcessGrid(client_app, NODES)
    with pytest.raises(FederationError, match=r"only 3 node\(s\) connected.*min-available-nodes=4"):
        run_federation(grid, config(tmp_path, **{"min-available-nodes": 4}))
