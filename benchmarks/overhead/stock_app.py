"""Variant (b): Flower's stock ``FedAvg`` with a minimal ClientApp doing the same local work.

The benchmark writes a tiny app directory whose pyproject points its components at
``server_app`` / ``client_app`` below and whose run config names a ``bench-file`` (JSON: the
resolved dualflower config, the number of clients and rounds, where to write the rows).
``/work/main`` reaches the app processes through ``PYTHONPATH``.

Round ``r``'s wall time is the time between the ends of the global evaluations of rounds
``r-1`` and ``r`` (``FedAvg.start`` calls ``evaluate_fn`` once before round 1 and once after
each round), i.e. train + aggregate + evaluate, as dualflower's ``wall-time`` column.
"""

from __future__ import annotations

import json
import time
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg
from torch import nn

from benchmarks.overhead.workload import (
    batch_generator,
    client_train_data,
    global_evaluator,
    local_steps,
)
from tasks.base import Task
from tasks.materialize import Tensors, build_skeleton
from tasks.registry import get_task

Metrics = dict[str, int | float | list[int] | list[float]]
server_app = ServerApp()
client_app = ClientApp()


@lru_cache(maxsize=1)
def _model(task_name: str, personalization: str, seed: int) -> tuple[Task, nn.Module]:
    """The task and one model instance per process (its weights come with every message)."""
    task = get_task(task_name)
    return task, build_skeleton(task, personalization, seed).model


@lru_cache(maxsize=4)
def _data(config_json: str, num_clients: int) -> list[Tensors]:
    """All clients' training tensors, built once per process."""
    return client_train_data(json.loads(config_json), num_clients)


@client_app.train()
def train(msg: Message, context: Context) -> Message:
    """Load the global weights, run the local SGD steps, reply weights and ``num-examples``."""
    cfg: dict[str, Any] = dict(msg.content["config"])
    pid = int(context.node_config["partition-id"])
    num = int(context.node_config["num-partitions"])
    task, model = _model(str(cfg["task"]), str(cfg["personalization"]), int(cfg["seed"]))
    base = {k: v for k, v in cfg.items() if k != "server-round"}
    data = _data(json.dumps(base, sort_keys=True), num)[pid]
    model.load_state_dict(msg.content.array_records["arrays"].to_torch_state_dict())
    gen = batch_generator(cfg, int(cfg["server-round"]), pid)
    loss = local_steps(task, model, data, cfg, gen)
    metrics: Metrics = {
        "num-examples": len(data),
        "train-loss": loss,
        "torch-threads": torch.get_num_threads(),
    }
    return Message(
        RecordDict({"arrays": ArrayRecord(model.state_dict()), "metrics": MetricRecord(metrics)}),
        reply_to=msg,
    )


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    """Run stock FedAvg over every node for ``rounds`` rounds; write per-round rows."""
    bench = json.loads(Path(str(context.run_config["bench-file"])).read_text())
    cfg, n, rounds = bench["config"], int(bench["num-clients"]), int(bench["rounds"])
    task = get_task(str(cfg["task"]))
    sk = build_skeleton(task, str(cfg["personalization"]), int(cfg["seed"]))
    evaluate = global_evaluator(cfg, n, sk.model)
    marks: list[float] = []
    scores: list[dict[str, float]] = []

    def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        sk.model.load_state_dict(arrays.to_torch_state_dict())
        scores.append(evaluate())
        marks.append(time.monotonic())
        return MetricRecord(Metrics(scores[-1]))

    strategy = FedAvg(
        fraction_train=float(cfg["fraction-train"]),
        fraction_evaluate=0.0,
        min_train_nodes=n,
        min_available_nodes=n,
    )
    result = strategy.start(
        grid,
        ArrayRecord(sk.model.state_dict()),
        num_rounds=rounds,
        timeout=float(cfg["round-timeout"]),
        train_config=ConfigRecord(cfg),
        evaluate_fn=evaluate_fn,
    )
    rows = [{"round": 0, "wall-time": 0.0, **scores[0]}]
    for rnd in range(1, rounds + 1):
        train = result.train_metrics_clientapp.get(rnd)
        extra = {k: float(v) for k, v in train.items()} if train is not None else {}  # type: ignore[arg-type]
        rows.append(
            {"round": rnd, "wall-time": marks[rnd] - marks[rnd - 1], **extra, **scores[rnd]}
        )
    Path(bench["rows"]).write_text(json.dumps({"rows": rows}))
