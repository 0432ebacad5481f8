"""Shared fixtures: the pyproject run-config defaults and an in-process federation runner."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # idle OpenMP threads must not spin on 2 cores

import json
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from client_app.app import app as client_app
from server_app.app import run_federation
from server_app.inprocess import InProcessGrid, Tamper

ROOT = Path(__file__).resolve().parents[1]


def default_config() -> dict[str, Any]:
    """The run-config defaults declared in pyproject.toml."""
    with (ROOT / "pyproject.toml").open("rb") as fh:
        return dict(tomllib.load(fh)["tool"]["flwr"]["app"]["config"])


@pytest.fixture
def config(tmp_path: Path) -> dict[str, Any]:
    """Defaults with output under tmp_path, and a short run."""
    cfg = default_config()
    cfg.update({"output-dir": str(tmp_path / "outputs"), "num-server-rounds": 2})
    return cfg


def run_local(
    cfg: dict[str, Any], num_nodes: int, tamper: Tamper | None = None
) -> tuple[Path, InProcessGrid]:
    """Run the real ServerApp logic against ``num_nodes`` in-process ClientApps."""
    grid = InProcessGrid(client_app, num_nodes, tamper=tamper)
    return run_federation(grid, cfg), grid


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """metrics.jsonl as a list of rows."""
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture
def local_runner() -> Callable[..., tuple[Path, InProcessGrid]]:
    """``run_local`` as a fixture."""
    return run_local
