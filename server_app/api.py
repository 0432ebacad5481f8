"""The Python API for in-process runs: a federation without an engine, from a notebook or a
sweep script, with hooks to observe or alter messages. Kept stable (benchmarks and tests use it).

    from server_app.api import run_in_process
    result = run_in_process({"algorithm": "fedavg", "num-server-rounds": 5}, num_nodes=10)
    result.rows[-1]["global-accuracy"]

The same ServerApp and ClientApp code as ``flwr run``, over ``InProcessGrid`` (every node a
``Context`` served synchronously; messages deep-copied both ways, as a transport would).
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flwr.app import Message

from server_app.inprocess import InProcessGrid, NodeConfig, Tamper

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def default_run_config() -> dict[str, Any]:
    """The app's run-config defaults (``[tool.flwr.app.config]`` of pyproject.toml)."""
    with PYPROJECT.open("rb") as fh:
        return dict(tomllib.load(fh)["tool"]["flwr"]["app"]["config"])


@dataclass(frozen=True)
class InProcessResult:
    """A finished in-process run: its directory, its metrics rows and the grid (every message
    sent and received is in ``grid.sent`` / ``grid.received``).
    """

    run_dir: Path
    rows: list[dict[str, Any]]
    grid: InProcessGrid


def run_in_process(
    overrides: Mapping[str, Any],
    num_nodes: int,
    *,
    tamper: Tamper | None = None,
    on_deliver: Callable[[Message], None] | None = None,
    node_config: Callable[[int], NodeConfig] | None = None,
) -> InProcessResult:
    """Run a federation of ``num_nodes`` in this process with the defaults plus ``overrides``.

    ``tamper(reply) -> reply`` may alter every client reply before the server sees it;
    ``on_deliver(message)`` sees every server message before its node does; ``node_config(i)``
    gives node ``i`` its node config (default: ``partition-id=i``, ``num-partitions``).
    Raises ``server_app.config.ConfigError`` for a bad config, before anything is sent.
    """
    from client_app.app import app as client_app
    from server_app.app import run_federation

    grid = InProcessGrid(
        client_app, num_nodes, node_config=node_config, tamper=tamper, on_deliver=on_deliver
    )
    run_dir = run_federation(grid, {**default_run_config(), **overrides})
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return InProcessResult(run_dir, [json.loads(line) for line in lines], grid)
