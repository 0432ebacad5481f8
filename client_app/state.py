"""Per-client persistent state (personal block, multipliers, ...) across rounds and restarts.

Kept in ``context.state`` (Flower ships it with every message) together with the round its
groups belong to. With a ``state-dir``, every train handler of round ``r`` also writes all
groups as one file ``<state-dir>/<state-scope>/partition-<id>/round-<r>.pt`` (write a temp
file, then rename; the last ``KEEP`` files stay). The scope is sent by the server (the run
name of the original run, kept by a resumed run), so a restarted SuperNode or a resumed run
finds the files of its partition whatever Flower's run and node ids are.

A train message of round ``r`` uses the newest state from a round ``< r``; an evaluate message
the newest from a round ``<= r``. When ``context.state`` does not hold such a state (a fresh
SuperNode process, a new run after a server resume) it is loaded from disk and the restore is
appended to ``restores.jsonl`` in that directory.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping
from logging import INFO
from pathlib import Path
from typing import cast

import torch
from flwr.app import ConfigRecord, Context
from flwr.common import log

from protocol.records import to_record

Groups = dict[str, dict[str, torch.Tensor]]
"""State groups: group name -> array name -> tensor."""

META = "dualflower-state"
"""ConfigRecord in ``context.state``: ``round`` = the round the groups belong to."""
KEEP = 2
"""Round files kept per partition."""
RESTORES = "restores.jsonl"
"""One JSON line per restore from disk, next to the round files."""
_ROUND_FILE = re.compile(r"round-(\d+)\.pt")


def state_digest(groups: Mapping[str, Mapping[str, torch.Tensor]]) -> str:
    """sha256 over the sorted group and array names, each tensor's dtype, shape and raw bytes.

    Applies to ``torch.load(<round file>)`` as well as to the groups a client restored.
    """
    digest = hashlib.sha256()
    for group in sorted(groups):
        for name in sorted(groups[group]):
            tensor = groups[group][name].detach().cpu().contiguous()
            digest.update(f"{group}/{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def round_files(directory: Path) -> dict[int, Path]:
    """The complete round files in ``directory``, by round."""
    if not directory.is_dir():
        return {}
    found = (_ROUND_FILE.fullmatch(p.name) for p in directory.iterdir())
    return {int(m.group(1)): directory / m.group(0) for m in found if m}


def state_path(state_dir: str | Path, scope: str, partition_id: int) -> Path:
    """``<state-dir>/<scope>/partition-<id>``: where one partition's round files live."""
    return Path(state_dir) / scope / f"partition-{partition_id}"


class ClientState:
    """Named tensor groups of one client, stored in ``context.state`` (+ optional mirror).

    ``server_round`` is the round of the message being handled (None: accept whatever
    ``context.state`` holds); a ``training`` message may use state from rounds before it, an
    evaluation message also the state of its own round.
    """

    def __init__(
        self,
        context: Context,
        partition_id: int,
        state_dir: str,
        scope: str = "",
        server_round: int | None = None,
        training: bool = True,
    ) -> None:
        self.context = context
        self.dir = (
            state_path(state_dir, scope or f"run-{context.run_id}", partition_id)
            if state_dir
            else None
        )
        self.server_round = server_round
        self.max_round = None if server_round is None else server_round - int(training)
        self._synced = False

    @property
    def round(self) -> int | None:
        """The round the groups in ``context.state`` belong to (None: never stored)."""
        meta = self.context.state.config_records.get(META)
        return None if meta is None else int(cast(int, meta["round"]))

    def _sync(self) -> None:
        """Make ``context.state`` hold the newest state this message may use."""
        if self._synced:
            return
        self._synced = True
        held = self.round
        if held is not None and (self.max_round is None or held <= self.max_round):
            return
        for key in list(self.context.state.array_records):
            del self.context.state[key]
        if META in self.context.state:
            del self.context.state[META]
        if self.dir is not None:
            self._restore(self.dir)

    def _restore(self, directory: Path) -> None:
        files = {
            r: p
            for r, p in round_files(directory).items()
            if self.max_round is None or r <= self.max_round
        }
        if not files:
            return
        restored = max(files)
        groups: Groups = torch.load(files[restored], map_location="cpu", weights_only=True)
        for key, tensors in groups.items():
            self.context.state[key] = to_record(tensors)
        self.context.state[META] = ConfigRecord({"round": restored})
        entry = {
            "round": restored if self.server_round is None else self.server_round,
            "restored-round": restored,
            "file": files[restored].name,
            "digest": state_digest(groups),
        }
        with (directory / RESTORES).open("a") as fh:
            fh.write(json.dumps(entry) + "\n")
        log(
            INFO,
            "client state of %s restored from %s (round %d)",
            directory.name,
            files[restored],
            restored,
        )

    def get(self, key: str, device: torch.device) -> dict[str, torch.Tensor] | None:
        """The group ``key``, or None if this client never stored it."""
        self._sync()
        if key not in self.context.state.array_records:
            return None
        record = self.context.state.array_records[key]
        return {k: torch.as_tensor(v.numpy(), device=device) for k, v in record.items()}

    def put(self, key: str, tensors: dict[str, torch.Tensor]) -> None:
        """Store the group ``key`` (replacing the previous one) in ``context.state``."""
        self._sync()
        self.context.state[key] = to_record(tensors)

    def commit(self, server_round: int) -> None:
        """Mark the groups as round ``server_round``'s and, with a state dir, write them as
        ``round-<r>.pt`` atomically, keeping the newest ``KEEP`` files.
        """
        self._sync()
        self.context.state[META] = ConfigRecord({"round": server_round})
        if self.dir is None:
            return
        groups = {
            key: {k: torch.from_numpy(v.numpy().copy()) for k, v in record.items()}
            for key, record in self.context.state.array_records.items()
        }
        self.dir.mkdir(parents=True, exist_ok=True)
        target = self.dir / f"round-{server_round}.pt"
        tmp = self.dir / f".round-{server_round}.pt.{os.getpid()}.tmp"
        torch.save(groups, tmp)
        tmp.replace(target)
        files = round_files(self.dir)
        for old in sorted(files)[:-KEEP]:
            files[old].unlink(missing_ok=True)
