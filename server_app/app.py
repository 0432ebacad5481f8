"""The ServerApp: validate the run config, build task and strategy, run, write results."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import flwr
import numpy as np
import torch
from flwr.app import ArrayRecord, Context
from flwr.serverapp import Grid, ServerApp

from methods.registry import METHODS
from protocol.records import record_to_numpy, to_record
from server_app.checkpoint import (
    CLIENT_STATE_DIR,
    check_client_state,
    check_restorable,
    drop_after,
    load_resume,
    make_checkpoint,
    restore_rng,
    write_checkpoint,
)
from server_app.config import ORIGINS, resolve
from server_app.results import RunRecorder, resolve_run_dir
from server_app.suboptimality import subopt_fn
from strategies.base import EvaluateFn, FederationError, GlobalSampler, ResumePoint
from tasks.federation import build_federation, federation_spec
from tasks.materialize import as_tensors, build_skeleton, resolve_device
from tasks.metrics import probabilistic_metrics
from tasks.registry import task_of

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Entry point of ``flwr run``: see ``run_federation``."""
    run_federation(grid, context.run_config)


def run_federation(grid: Grid, run_config: Mapping[str, Any]) -> Path:
    """Validate ``run_config`` (before anything is sent), run every round, return the run dir."""
    cfg, origins = resolve(run_config)
    ckpt = load_resume(cfg) if cfg["resume-from"] else None
    task = task_of(cfg)
    skeleton = build_skeleton(task, str(cfg["personalization"]), int(cfg["seed"]))
    initial = to_record({k: skeleton.init[k] for k in skeleton.shared})
    method = METHODS[str(cfg["algorithm"])]
    strategy = method.rule(cfg, method.solver.name)
    nodes = strategy.discover(grid)
    if ckpt is not None and ckpt.num_clients != len(nodes):
        raise FederationError(
            f"the checkpoint {ckpt.path} is of a federation of {ckpt.num_clients} partitions "
            f"(state.json, field 'num-clients'); {len(nodes)} connected: resume with the "
            "original federation's SuperNodes; nothing was deleted or changed"
        )
    if ckpt is not None:  # every check before any output is changed
        check_restorable(ckpt, initial, strategy)
        strategy.state_scope, strategy.run_id = ckpt.scope, ckpt.run_id
        # clients without a state-dir mirror their state inside the original run dir
        kept = str(ckpt.config.get("state-dir", ""))
        strategy.default_state_dir = kept or str(ckpt.run_dir / CLIENT_STATE_DIR)
        strategy.accepted = dict(ckpt.accepted)
        if method.solver.keeps or skeleton.personal:
            check_client_state(ckpt, strategy.state_rounds(grid, ckpt.round + 1))
    federation = build_federation(federation_spec(cfg, len(nodes)))
    evaluate_fn = (
        _global_evaluation(cfg, federation.server_test, skeleton, strategy.global_sampler())
        if not skeleton.personal
        else None
    )
    if task.convex and not skeleton.personal:  # convergence to the optimum (issue 5)
        spec = federation_spec(cfg, len(nodes))
        evaluate_fn = _with_subopt(evaluate_fn, subopt_fn(cfg, spec))
    recorder = RunRecorder(
        ckpt.run_dir if ckpt is not None else resolve_run_dir(cfg),
        cfg,
        {
            "num-clients": len(nodes),
            "shared-parameters": skeleton.shared,
            "personal-parameters": skeleton.personal,
            ORIGINS: origins,
            "flwr": flwr.__version__,
            "torch": torch.__version__,
        },
        resume_round=ckpt.round if ckpt is not None else None,
    )
    if ckpt is None:  # clients without a state-dir mirror their state inside the run dir
        strategy.state_scope, strategy.run_id = recorder.dir.name, uuid.uuid4().hex
        strategy.default_state_dir = str(recorder.dir / CLIENT_STATE_DIR)
    resume = None
    if ckpt is not None:
        drop_after(ckpt.run_dir, ckpt.round)
        restore_rng(ckpt.rng)
        resume = ResumePoint(ckpt.round, ckpt.global_record(), ckpt.rule_state, ckpt.accepted)

    def checkpoint(server_round: int, arrays: ArrayRecord) -> None:
        write_checkpoint(recorder.dir, make_checkpoint(server_round, arrays, strategy, cfg))

    strategy.run(
        grid,
        initial,
        evaluate_fn=evaluate_fn,
        on_round=recorder.record,
        on_checkpoint=checkpoint,
        resume=resume,
    )
    recorder.finish()
    return recorder.dir


def _with_subopt(
    evaluate: EvaluateFn | None, subopt: Callable[[Mapping[str, Any]], float]
) -> EvaluateFn:
    """``evaluate`` plus ``subopt = f(θ_t) − f*`` of the global model (convex tasks)."""

    def evaluate_with_subopt(server_round: int, arrays: Any) -> dict[str, float]:
        out = (evaluate(server_round, arrays) if evaluate is not None else None) or {}
        return {**out, "subopt": subopt(record_to_numpy(arrays))}

    return evaluate_with_subopt


def _global_evaluation(
    cfg: Mapping[str, Any], test: Any, skeleton: Any, sampler: GlobalSampler | None = None
) -> EvaluateFn | None:
    """Evaluate the global model (only defined without a personal block) on the server test set.

    Classifiers also get the mean prediction's ``global-nll`` and ``global-ece``; a rule with a
    global distribution (``sampler``) also gets its posterior predictive, the average of the
    predicted probabilities over ``eval-samples`` draws: ``global-bayes-accuracy``,
    ``global-bayes-nll``, ``global-bayes-ece`` (ALGORITHMS.md §2.5.5).
    """
    if test is None:
        return None
    device = resolve_device(str(cfg["device"]))
    model = skeleton.model.to(device)
    dtype = next(model.parameters()).dtype
    data = as_tensors(test, device, dtype)
    task = task_of(cfg)

    labels = data.y.cpu().numpy()
    draws = int(cfg["eval-samples"])

    def load(values: Mapping[str, Any]) -> None:
        model.load_state_dict({k: torch.as_tensor(v, device=device) for k, v in values.items()})

    def evaluate(server_round: int, arrays: Any) -> dict[str, float]:
        load(record_to_numpy(arrays))
        out = {f"global-{k}": v for k, v in task.evaluate(model, data.x, data.y).items()}
        probs = task.predict_proba(model, data.x)
        if probs is None:
            return out
        mean_pred = probabilistic_metrics(labels, probs)
        out.update({"global-nll": mean_pred["nll"], "global-ece": mean_pred["ece"]})
        if sampler is not None and draws > 0:
            total = np.zeros_like(probs)
            for theta in sampler(arrays, draws, int(cfg["seed"]) * 7919 + server_round):
                load(theta)
                total += task.predict_proba(model, data.x)  # type: ignore[arg-type]
            bayes = probabilistic_metrics(labels, total / draws)
            out.update({f"global-bayes-{k}": v for k, v in bayes.items()})
        return out

    return evaluate
