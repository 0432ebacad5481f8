"""Per-client persistent state (personal block, multipliers, ...) across rounds.

Kept in ``context.state`` (Flower ships it with every message) and, when a ``state-dir`` is
configured, mirrored to ``<state-dir>/run-<run id>/partition-<id>/<key>.pt`` so that a
restarted SuperNode picks up where it stopped.
"""

from __future__ import annotations

from pathlib import Path

import torch
from flwr.app import Context

from strategies.messages import to_record


class ClientState:
    """Named tensor groups of one client, stored in ``context.state`` (+ optional mirror)."""

    def __init__(self, context: Context, partition_id: int, state_dir: str) -> None:
        self.context = context
        self.dir = (
            Path(state_dir) / f"run-{context.run_id}" / f"partition-{partition_id}"
            if state_dir
            else None
        )

    def get(self, key: str, device: torch.device) -> dict[str, torch.Tensor] | None:
        """The group ``key``, or None if this client never stored it."""
        if key in self.context.state.array_records:
            record = self.context.state.array_records[key]
            return {k: torch.as_tensor(v.numpy(), device=device) for k, v in record.items()}
        if self.dir is not None and (self.dir / f"{key}.pt").exists():
            loaded: dict[str, torch.Tensor] = torch.load(
                self.dir / f"{key}.pt", map_location=device
            )
            return loaded
        return None

    def put(self, key: str, tensors: dict[str, torch.Tensor]) -> None:
        """Store the group ``key`` (replacing the previous one)."""
        self.context.state[key] = to_record(tensors)
        if self.dir is not None:
            self.dir.mkdir(parents=True, exist_ok=True)
            tmp = self.dir / f"{key}.pt.tmp"
            torch.save({k: v.detach().cpu() for k, v in tensors.items()}, tmp)
            tmp.replace(self.dir / f"{key}.pt")
