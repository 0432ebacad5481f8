"""The work that every variant of the overhead benchmark does, and the two in-process variants.

"The same work" as dualflower's FedAvg: the run config resolved by ``validate_run_config``
from the pyproject defaults plus the benchmark's overrides; client data from
``build_federation(federation_spec(cfg, m))``; the model from ``build_skeleton``; each
client runs ``local-epochs`` of minibatch SGD with the batch order drawn from the same seeded
generator as ``client_app.app.train``; the server takes the example-weighted mean (float64)
and evaluates the global model on the server test set once per round.

Run as ``python -m benchmarks.overhead.workload {plain,inprocess} <bench.json>``: the
benchmark starts each variant in a fresh interpreter so that warm-up costs are comparable.
"""

from __future__ import annotations

import json
import sys
import time
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from server_app.config import validate_run_config
from tasks.base import Task
from tasks.federation import build_federation, federation_spec
from tasks.materialize import Tensors, as_tensors, build_skeleton
from tasks.registry import get_task

ROOT = Path(__file__).resolve().parents[2]
CPU = torch.device("cpu")
Row = dict[str, float]


def default_run_config() -> dict[str, Any]:
    """``[tool.flwr.app.config]`` of the dualflower pyproject.toml."""
    with (ROOT / "pyproject.toml").open("rb") as fh:
        return dict(tomllib.load(fh)["tool"]["flwr"]["app"]["config"])


def resolved_config(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """The config dualflower's ServerApp would resolve for these run-config overrides."""
    return dict(validate_run_config({**default_run_config(), **overrides}))


def batch_generator(
    cfg: Mapping[str, Any], server_round: int, partition_id: int
) -> torch.Generator:
    """The batch-order generator of ``client_app.app.train`` (same seed formula)."""
    seed = int(cfg["seed"]) * 1_000_003 + server_round * 1_009 + partition_id
    return torch.Generator().manual_seed(seed)


def local_steps(
    task: Task, model: nn.Module, data: Tensors, cfg: Mapping[str, Any], gen: torch.Generator
) -> float:
    """``local-epochs`` of minibatch SGD on ``data`` (plain torch); returns last-epoch loss."""
    opt = torch.optim.SGD(
        model.parameters(),
        lr=float(cfg["lr"]),
        momentum=float(cfg["momentum"]),
        weight_decay=float(cfg["weight-decay"]),
    )
    model.train()
    last = 0.0
    for _ in range(int(cfg["local-epochs"])):
        total, count = 0.0, 0
        for idx in torch.split(torch.randperm(len(data), generator=gen), int(cfg["batch-size"])):
            opt.zero_grad(set_to_none=True)
            loss = task.objective(model, data.x[idx], data.y[idx])
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
            total += float(loss.detach()) * len(idx)
            count += len(idx)
        last = total / max(count, 1)
    return last


def weighted_mean(
    states: list[dict[str, torch.Tensor]], weights: list[int]
) -> dict[str, torch.Tensor]:
    """Example-weighted mean of state dicts, accumulated in float64 (as ``strategies.mean``)."""
    total = float(sum(weights))
    out = {}
    for key, first in states[0].items():
        acc = torch.zeros_like(first, dtype=torch.float64)
        for state, w in zip(states, weights, strict=True):
            acc += w * state[key].double()
        out[key] = (acc / total).to(first.dtype)
    return out


def client_train_data(cfg: Mapping[str, Any], num_clients: int) -> list[Tensors]:
    """Every client's training tensors (CPU, float32)."""
    fed = build_federation(federation_spec(cfg, num_clients))
    return [as_tensors(c.train, CPU, torch.float32) for c in fed.clients]


def global_evaluator(
    cfg: Mapping[str, Any], num_clients: int, model: nn.Module
) -> Callable[[], dict[str, float]]:
    """Scores ``model`` on the server test set, as dualflower's global evaluation does."""
    task = get_task(str(cfg["task"]))
    test = build_federation(federation_spec(cfg, num_clients)).server_test
    if test is None:
        return dict
    data = as_tensors(test, CPU, torch.float32)

    def evaluate() -> dict[str, float]:
        return {f"global-{k}": v for k, v in task.evaluate(model, data.x, data.y).items()}

    return evaluate


def run_plain(cfg: Mapping[str, Any], num_clients: int, rounds: int) -> list[Row]:
    """Variant (c): the federated loop in plain PyTorch, one row per round (0 = initial eval)."""
    task = get_task(str(cfg["task"]))
    sk = build_skeleton(task, str(cfg["personalization"]), int(cfg["seed"]))
    data = client_train_data(cfg, num_clients)
    model = sk.model
    evaluate = global_evaluator(cfg, num_clients, model)
    global_state = {k: v.clone() for k, v in sk.init.items()}
    rows: list[Row] = [{"round": 0, "wall-time": 0.0, **evaluate()}]
    for rnd in range(1, rounds + 1):
        t0 = time.monotonic()
        states, sizes, losses = [], [], []
        for pid, d in enumerate(data):
            model.load_state_dict(global_state)
            losses.append(local_steps(task, model, d, cfg, batch_generator(cfg, rnd, pid)))
            states.append({k: v.detach().clone() for k, v in model.state_dict().items()})
            sizes.append(len(d))
        global_state = weighted_mean(states, sizes)
        t_eval = time.monotonic()
        model.load_state_dict(global_state)
        scores = evaluate()
        end = time.monotonic()
        loss = sum(v * n for v, n in zip(losses, sizes, strict=True)) / sum(sizes)
        rows.append(
            {"round": rnd, "wall-time": end - t0, "eval-time": end - t_eval, "train-loss": loss}
            | scores
        )
    return rows


def run_inprocess(raw_config: Mapping[str, Any], num_clients: int) -> list[Row]:
    """Variant (a0): dualflower's ServerApp and ClientApp code on the Ray-free in-process grid."""
    from client_app.app import app as client_app
    from server_app.app import run_federation
    from server_app.inprocess import InProcessGrid

    run_dir = run_federation(InProcessGrid(client_app, num_clients), raw_config)
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def main(argv: list[str]) -> int:
    """``{plain,inprocess} <bench.json>``: run one variant, write its rows to ``bench["rows"]``."""
    kind, bench_path = argv
    bench = json.loads(Path(bench_path).read_text())
    n, rounds = int(bench["num-clients"]), int(bench["rounds"])
    t0 = time.monotonic()
    if kind == "plain":
        rows = run_plain(bench["config"], n, rounds)
    elif kind == "inprocess":
        rows = run_inprocess(bench["raw-config"], n)
    else:
        raise SystemExit(f"unknown variant {kind!r}")
    info = {"total-in-process": time.monotonic() - t0, "torch-threads": torch.get_num_threads()}
    Path(bench["rows"]).write_text(json.dumps({"rows": rows, **info}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
