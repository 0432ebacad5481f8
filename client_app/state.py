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

The pieces: ``StateStore`` (where state lives: ``ContextStore`` in ``context.state``,
``MirroredStore`` in ``context.state`` mirrored to a ``DiskMirror``), ``RoundGate`` (which
rounds a message may use), ``RestoreLog`` (restores from disk) and ``ClientState``, the
handler's view that ties them together. Solvers never see any of them: they get the groups
and return new ones (``client_app.solvers.base``).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from logging import INFO
from pathlib import Path
from typing import Protocol, cast

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


class StateStore(Protocol):
    """Where one client's state groups live, by round."""

    def load(self, max_round: int | None) -> tuple[int, Groups] | None:
        """The newest stored ``(round, groups)`` with round ``<= max_round`` (None: any)."""
        ...

    def store(self, server_round: int, groups: Groups) -> None:
        """Keep ``groups`` as round ``server_round``'s state."""
        ...


@dataclass(frozen=True)
class RoundGate:
    """A train message of round ``r`` may use state from rounds ``< r``, an evaluate message
    from rounds ``<= r`` (None: whatever is held).
    """

    server_round: int | None
    training: bool

    @property
    def max_round(self) -> int | None:
        """The newest round this message may use."""
        return None if self.server_round is None else self.server_round - int(self.training)


class ContextStore:
    """State in ``context.state`` (Flower keeps it with the node between messages)."""

    def __init__(self, context: Context) -> None:
        self.context = context

    def load(self, max_round: int | None) -> tuple[int, Groups] | None:
        """The groups held, if their round is allowed."""
        meta = self.context.state.config_records.get(META)
        if meta is None:
            return None
        held = int(cast(int, meta["round"]))
        if max_round is not None and held > max_round:
            return None
        groups = {
            key: {k: torch.from_numpy(v.numpy().copy()) for k, v in record.items()}
            for key, record in self.context.state.array_records.items()
        }
        return held, groups

    def store(self, server_round: int, groups: Groups) -> None:
        """Replace every group in ``context.state``."""
        for key in list(self.context.state.array_records):
            del self.context.state[key]
        for key, tensors in groups.items():
            self.context.state[key] = to_record(tensors)
        self.context.state[META] = ConfigRecord({"round": server_round})


class RestoreLog:
    """``restores.jsonl`` next to the round files: one line per restore from disk."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / RESTORES

    def append(self, server_round: int | None, restored: int, file: Path, groups: Groups) -> None:
        """Record that round ``restored``'s file was loaded for a message of ``server_round``."""
        entry = {
            "round": restored if server_round is None else server_round,
            "restored-round": restored,
            "file": file.name,
            "digest": state_digest(groups),
        }
        with self.path.open("a") as fh:
            fh.write(json.dumps(entry) + "\n")


class DiskMirror:
    """Round files ``round-<r>.pt`` of one partition (atomic writes, newest ``KEEP`` kept)."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory

    def load(self, max_round: int | None) -> tuple[int, Groups] | None:
        """The newest allowed round file's groups."""
        files = {
            r: p for r, p in round_files(self.dir).items() if max_round is None or r <= max_round
        }
        if not files:
            return None
        restored = max(files)
        groups: Groups = torch.load(files[restored], map_location="cpu", weights_only=True)
        return restored, groups

    def file(self, server_round: int) -> Path:
        """The path of round ``server_round``'s file."""
        return self.dir / f"round-{server_round}.pt"

    def store(self, server_round: int, groups: Groups) -> None:
        """Write the round file atomically and prune older ones."""
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.dir / f".round-{server_round}.pt.{os.getpid()}.tmp"
        torch.save(groups, tmp)
        tmp.replace(self.file(server_round))
        files = round_files(self.dir)
        for old in sorted(files)[:-KEEP]:
            files[old].unlink(missing_ok=True)


class MirroredStore:
    """``context.state`` first; the disk mirror when it holds nothing usable (logged)."""

    def __init__(self, memory: ContextStore, mirror: DiskMirror, server_round: int | None) -> None:
        self.memory, self.mirror, self.server_round = memory, mirror, server_round
        self.log = RestoreLog(mirror.dir)

    def load(self, max_round: int | None) -> tuple[int, Groups] | None:
        """From memory, else from disk (then kept in memory and logged)."""
        held = self.memory.load(max_round)
        if held is not None:
            return held
        found = self.mirror.load(max_round)
        if found is None:
            return None
        restored, groups = found
        self.memory.store(restored, groups)
        self.log.append(self.server_round, restored, self.mirror.file(restored), groups)
        log(
            INFO,
            "client state of %s restored from %s (round %d)",
            self.mirror.dir.name,
            self.mirror.file(restored),
            restored,
        )
        return found

    def store(self, server_round: int, groups: Groups) -> None:
        """In memory and on disk."""
        self.memory.store(server_round, groups)
        self.mirror.store(server_round, groups)


class ClientState:
    """The handler's view of one client's state groups for one message.

    ``server_round`` is the round of the message being handled (None: accept whatever
    ``context.state`` holds); a ``training`` message may use state from rounds before it, an
    evaluation message also the state of its own round. ``groups`` are loaded once; ``put``
    stages changes that ``commit`` stores.
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
        memory = ContextStore(context)
        self.store: StateStore = (
            MirroredStore(
                memory,
                DiskMirror(state_path(state_dir, scope or f"run-{context.run_id}", partition_id)),
                server_round,
            )
            if state_dir
            else memory
        )
        self.gate = RoundGate(server_round, training)
        self._groups: Groups | None = None

    @property
    def groups(self) -> Groups:
        """Every group this message may use (empty for a client that never stored any)."""
        if self._groups is None:
            found = self.store.load(self.gate.max_round)
            self._groups = found[1] if found is not None else {}
        return self._groups

    def get(self, key: str, device: torch.device) -> dict[str, torch.Tensor] | None:
        """The group ``key`` on ``device``, or None if this client never stored it."""
        group = self.groups.get(key)
        return None if group is None else {k: v.to(device) for k, v in group.items()}

    def put(self, key: str, tensors: dict[str, torch.Tensor]) -> None:
        """Stage group ``key`` (replacing the previous one)."""
        self.groups[key] = {k: v.detach().cpu().clone() for k, v in tensors.items()}

    def replace(self, groups: Groups) -> None:
        """Stage exactly ``groups`` as the new state (groups not named are dropped)."""
        self._groups = {}
        for key, tensors in groups.items():
            self.put(key, tensors)

    def commit(self, server_round: int) -> None:
        """Store the staged groups as round ``server_round``'s state."""
        self.store.store(server_round, self.groups)
