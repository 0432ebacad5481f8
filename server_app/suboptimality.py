"""``subopt = f(θ_t) − f*`` for convex tasks (ALGORITHMS.md §3, issue 5).

``f(θ) = Σ_i w_i f_i(θ)`` is the federation's global objective: each client's mean loss ``f_i``
(with the task's L2 term) on its training split, ``w_i = 1/N`` (``client-weighting='uniform'``)
or ``n_i/n`` (``'examples'``: the pooled-data loss). ``f*`` comes from a centralized float64
Newton solve with backtracking on the pooled training data, computed once per federation and
weighting (``lru_cache``; the Newton solve is exact up to ``‖∇f‖ ≤ 1e-12``).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Mapping
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from torch.func import grad, hessian

from tasks.federation import FederationSpec, build_federation
from tasks.functional import flat_objective, flatten
from tasks.materialize import as_tensors, build_skeleton
from tasks.registry import get_task

Objective = Callable[[torch.Tensor], torch.Tensor]


def global_objective(
    spec: FederationSpec, weighting: str, seed: int, model: str = ""
) -> tuple[Objective, Any]:
    """``θ ↦ f(θ)`` (float64, flat shared layout) and the float64 layout ``{name: shape}`` of
    the task's ``model`` (``''``: its default).
    """
    task = get_task(spec.task, model)
    skeleton = build_skeleton(task, "none", seed)
    net = copy.deepcopy(skeleton.model).to(torch.float64)
    shapes = {k: tuple(v.shape) for k, v in net.named_parameters()}
    clients = [c.train for c in build_federation(spec).clients if len(c.train)]
    total = sum(len(c) for c in clients)
    parts = []
    for data in clients:
        tensors = as_tensors(data, torch.device("cpu"), torch.float64)
        weight = len(data) / total if weighting == "examples" else 1.0 / len(clients)
        parts.append(flat_objective(task, net, tensors.x, tensors.y, shapes, weight))

    def f(theta: torch.Tensor) -> torch.Tensor:
        return torch.stack([part(theta) for part in parts]).sum()

    return f, shapes


def damped_newton(
    f: Objective, theta: torch.Tensor, steps: int = 200
) -> Iterator[tuple[torch.Tensor, float]]:
    """Each iterate ``(θ, f(θ))`` of centralized damped Newton from ``theta`` (float64, Armijo
    backtracking), the start included; stops at a zero gradient or when no decrease is
    representable in float64. The yardstick FedPM's rounds are compared with.
    """
    value = f(theta)
    yield theta, float(value)
    for _ in range(steps):
        g = grad(f)(theta)
        if float(g.norm()) <= 1e-12:
            return
        h = hessian(f)(theta)
        step = torch.linalg.solve(0.5 * (h + h.T), g)
        t = 1.0
        while True:  # Armijo backtracking
            cand = theta - t * step
            new = f(cand)
            if float(new) <= float(value) - 1e-4 * t * float(g @ step):
                break
            t *= 0.5
            if t < 1e-12:  # at the optimum
                return
        theta, value = cand, new
        yield theta, float(value)


def initial_theta(
    spec: FederationSpec, seed: int, shapes: Mapping[str, Any], model: str = ""
) -> torch.Tensor:
    """The ``model``'s initial shared weights, flat in ``shapes``' layout."""
    skeleton = build_skeleton(get_task(spec.task, model), "none", seed)
    return flatten({k: skeleton.init[k] for k in shapes})


@lru_cache(maxsize=8)
def optimum(
    spec: FederationSpec, weighting: str, seed: int, model: str = ""
) -> tuple[torch.Tensor, float]:
    """``(θ*, f*)`` of the global objective of ``model`` by damped Newton in float64 (cached)."""
    f, shapes = global_objective(spec, weighting, seed, model)
    *_, last = damped_newton(f, initial_theta(spec, seed, shapes, model))
    return last


def subopt_fn(cfg: Mapping[str, Any], spec: FederationSpec) -> Callable[[Mapping[str, Any]], float]:
    """``arrays ↦ f(θ) − f*`` for the run's global model (``arrays``: name -> numpy array)."""
    weighting, seed, model = str(cfg["client-weighting"]), int(cfg["seed"]), str(cfg["model"])
    f, shapes = global_objective(spec, weighting, seed, model)
    _, f_star = optimum(spec, weighting, seed, model)

    def subopt(arrays: Mapping[str, Any]) -> float:
        theta = flatten({k: torch.as_tensor(np.asarray(arrays[k])) for k in shapes})
        return float(f(theta)) - f_star

    return subopt
