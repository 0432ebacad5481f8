"""The ServerApp: validate the run config, build task and strategy, run, write results."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import flwr
import torch
from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from server_app.config import validate_run_config
from server_app.results import RunRecorder, resolve_run_dir
from strategies.base import EvaluateFn
from strategies.messages import config_record, record_to_numpy, to_record
from strategies.registry import ALGORITHMS
from tasks.federation import build_federation, federation_spec
from tasks.materialize import as_tensors, build_skeleton, resolve_device
from tasks.registry import get_task

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Entry point of ``flwr run``: see ``run_federation``."""
    run_federation(grid, context.run_config)


def run_federation(grid: Grid, run_config: Mapping[str, Any]) -> Path:
    """Validate ``run_config`` (before anything is sent), run every round, return the run dir."""
    cfg = validate_run_config(run_config)
    task = get_task(str(cfg["task"]))
    skeleton = build_skeleton(task, str(cfg["personalization"]), int(cfg["seed"]))
    initial = to_record({k: skeleton.init[k] for k in skeleton.shared})
    strategy = ALGORITHMS[str(cfg["algorithm"])].aggregation(cfg)
    strategy.timeout = float(cfg["round-timeout"])
    nodes = strategy.discover(grid)
    federation = build_federation(federation_spec(cfg, len(nodes)))
    evaluate_fn = (
        _global_evaluation(cfg, federation.server_test, skeleton) if not skeleton.personal else None
    )
    recorder = RunRecorder(
        resolve_run_dir(cfg),
        cfg,
        {
            "num-clients": len(nodes),
            "shared-parameters": skeleton.shared,
            "personal-parameters": skeleton.personal,
            "flwr": flwr.__version__,
            "torch": torch.__version__,
        },
    )
    strategy.start(
        grid,
        initial,
        num_rounds=int(cfg["num-server-rounds"]),
        timeout=float(cfg["round-timeout"]),
        train_config=config_record(cfg),
        evaluate_config=config_record(cfg),
        evaluate_fn=evaluate_fn,
        on_round=recorder.record,
    )
    recorder.finish()
    return recorder.dir


def _global_evaluation(cfg: Mapping[str, Any], test: Any, skeleton: Any) -> EvaluateFn | None:
    """Evaluate the global model (only defined without a personal block) on the server test set."""
    if test is None:
        return None
    device = resolve_device(str(cfg["device"]))
    model = skeleton.model.to(device)
    dtype = next(model.parameters()).dtype
    data = as_tensors(test, device, dtype)
    task = get_task(str(cfg["task"]))

    def evaluate(server_round: int, arrays: Any) -> dict[str, float]:
        values = {k: torch.as_tensor(v, device=device) for k, v in record_to_numpy(arrays).items()}
        model.load_state_dict(values)
        return {f"global-{k}": v for k, v in task.evaluate(model, data.x, data.y).items()}

    return evaluate
