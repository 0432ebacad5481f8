"""Per-client persistent state (personal block, multipliers, ...) across rounds and restarts.

Kept in ``context.state`` (Flower ships it with every message) together with the round its
groups belong to. With a ``state-dir``, every train handler of round ``r`` also writes all
groups as one file ``<state-dir>/<state-scope>/<run-id>/partition-<id>/round-<r>.pt`` (write a
temp file, then rename; the last ``KEEP`` files stay). Scope (the original run's name) and run
id (generated once by the server, kept by a resumed run) are sent by the server, so a restarted
SuperNode or a resumed run finds the files of its partition whatever Flower's run and node ids
are, and two runs of the same name never share or prune each other's files.

A round file records whose state it is (``StateIdentity``: run id, partition id, algorithm),
its round and the ``state_digest`` of its groups. On load a file that is not readable, of
another run, partition, algorithm or round, whose digest does not match or that holds
non-finite values is refused (logged with the file and the reason) and the newest intact
earlier file is used instead; if none is left the client starts clean (logged too).

A train message of round ``r`` uses the newest state from a round ``< r``; an evaluate message
the newest from a round ``<= r``; neither one from a round after the client's last reply the
server accepted (sent in every message): a client whose reply was dropped goes back to the
state the server's view matches, as if it had not taken part in that round. So the newest
state and the state it was computed from are kept, in memory and on disk.

When ``context.state`` does not hold such a state (a fresh SuperNode process, a new run after
a server resume) it is loaded from disk and the restore (or the clean start, with every
refused file and its reason) is appended to ``restores.jsonl`` in that directory.

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
from logging import INFO, WARNING
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
KEEP = 3
"""Round files kept per partition at least (besides any newer than the base of the newest):
the newest state, its base, and the one a resume from the server's newest checkpoint needs
(with ``evaluate-mode='fused'`` that checkpoint trails the clients by one more round)."""
FORMAT = 1
"""Layout version of a round file (``write_state_file``)."""
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


def state_path(state_dir: str | Path, scope: str, partition_id: int, run_id: str = "") -> Path:
    """``<state-dir>/<scope>/<run-id>/partition-<id>``: where one partition's round files live
    (``<state-dir>/<scope>/partition-<id>`` without a run id).
    """
    return Path(state_dir) / scope / run_id / f"partition-{partition_id}"


@dataclass(frozen=True)
class StateIdentity:
    """Whose state a round file holds: the server's run id (kept by a resumed run), the
    partition and the algorithm.
    """

    run_id: str
    partition_id: int
    algorithm: str


class StateFileError(ValueError):
    """A round file that must not be restored from (the message says why)."""


def write_state_file(
    path: Path, identity: StateIdentity, server_round: int, groups: Groups
) -> None:
    """Write ``groups`` as round ``server_round``'s file at ``path``, with identity and digest."""
    torch.save(
        {
            "format": FORMAT,
            "run-id": identity.run_id,
            "partition-id": identity.partition_id,
            "algorithm": identity.algorithm,
            "round": server_round,
            "digest": state_digest(groups),
            "groups": groups,
        },
        path,
    )


def _load(path: Path) -> dict[str, object]:
    """The raw content of a round file; StateFileError if it is not a readable torch dict."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated / empty / garbage: torch and pickle raise many types
        raise StateFileError(
            f"is not a readable state file ({type(err).__name__}: {str(err)[:160]})"
        ) from None
    if not isinstance(saved, dict):
        raise StateFileError(f"holds a {type(saved).__name__}, not a state file's dict")
    return saved


def _groups(raw: object) -> Groups:
    """``raw`` as state groups (dict of dicts of tensors); StateFileError otherwise."""
    if not isinstance(raw, dict):
        raise StateFileError(f"field 'groups' is a {type(raw).__name__}, not a dict")
    for group, tensors in raw.items():
        if not isinstance(group, str) or not isinstance(tensors, dict):
            raise StateFileError(f"group {group!r} is not a named dict of tensors")
        for name, tensor in tensors.items():
            if not isinstance(name, str) or not isinstance(tensor, torch.Tensor):
                raise StateFileError(f"entry {group}/{name} is not a named tensor")
    return cast(Groups, raw)


def read_state_file(path: Path, identity: StateIdentity, server_round: int) -> Groups:
    """The groups of round ``server_round``'s file at ``path`` if it is ``identity``'s and
    intact (format, run id, partition id, algorithm, round, digest, finite values);
    StateFileError saying what is wrong otherwise.
    """
    saved = _load(path)
    expected: dict[str, object] = {
        "format": FORMAT,
        "run-id": identity.run_id,
        "partition-id": identity.partition_id,
        "algorithm": identity.algorithm,
        "round": server_round,
    }
    for key, want in expected.items():
        got = saved.get(key)
        if type(got) is not type(want) or got != want:
            whose = (
                " (not this client's state)"
                if key in ("run-id", "partition-id", "algorithm")
                else ""
            )
            raise StateFileError(f"field {key!r} is {got!r}, expected {want!r}{whose}")
    groups = _groups(saved.get("groups"))
    try:
        digest = state_digest(groups)
    except (RuntimeError, TypeError, ValueError) as err:  # sparse or exotic tensor layouts
        raise StateFileError(f"has tensors that cannot be hashed ({err})") from None
    if saved.get("digest") != digest:
        raise StateFileError(
            f"field 'digest' is {saved.get('digest')!r}, but its tensors hash to {digest!r}"
        )
    for group, tensors in groups.items():
        for name, tensor in tensors.items():
            if tensor.is_floating_point() or tensor.is_complex():
                bad = int(tensor.numel() - torch.isfinite(tensor).sum())
                if bad:
                    raise StateFileError(f"tensor {group}/{name} holds {bad} non-finite value(s)")
    return groups


class StateStore(Protocol):
    """Where one client's state groups live, by round."""

    def load(self, max_round: int | None) -> tuple[int, Groups] | None:
        """The newest stored ``(round, groups)`` with round ``<= max_round`` (None: any)."""
        ...

    def store(self, server_round: int, groups: Groups, base_round: int | None = None) -> None:
        """Keep ``groups`` as round ``server_round``'s state, computed from the state of
        ``base_round`` (None: from a clean start), which stays available too.
        """
        ...


@dataclass(frozen=True)
class RoundGate:
    """A train message of round ``r`` may use state from rounds ``< r``, an evaluate message
    from rounds ``<= r`` (None: whatever is held); neither from a round after ``accepted``,
    the round of this client's last reply the server accepted (negative: not limited). A
    client whose reply was dropped so continues from the state the server's view matches
    (ALGORITHMS.md §1: its ``π_i`` / ``c_i`` stay in step with the server's ``z_i``).
    """

    server_round: int | None
    training: bool
    accepted: int = -1

    @property
    def max_round(self) -> int | None:
        """The newest round this message may use."""
        if self.server_round is None:
            return None
        newest = self.server_round - int(self.training)
        return newest if self.accepted < 0 else min(newest, self.accepted)


class ContextStore:
    """State in ``context.state`` (Flower keeps it with the node between messages): the newest
    groups and the groups they were computed from (``base/<group>``), so that a client whose
    newest reply was dropped can go back one step.
    """

    BASE = "base/"
    """Prefix of the base groups' records."""

    def __init__(self, context: Context) -> None:
        self.context = context

    def _rounds(self) -> dict[int, str]:
        """The held rounds, each with the prefix of its records ('' the newest, ``BASE``)."""
        meta = self.context.state.config_records.get(META)
        if meta is None:
            return {}
        base = int(cast(int, meta.get("base", -1)))
        return {int(cast(int, meta["round"])): "", **({base: self.BASE} if base >= 0 else {})}

    def _groups(self, prefix: str) -> Groups:
        """A copy of the groups held under ``prefix`` (only that slot's records are read)."""
        return {
            key[len(prefix) :]: {k: torch.from_numpy(v.numpy().copy()) for k, v in rec.items()}
            for key, rec in self.context.state.array_records.items()
            if key.startswith(self.BASE) == bool(prefix)
        }

    def load(self, max_round: int | None) -> tuple[int, Groups] | None:
        """The newest held groups whose round is allowed."""
        rounds = self._rounds()
        allowed = [r for r in rounds if max_round is None or r <= max_round]
        if not allowed:
            return None
        newest = max(allowed)
        return newest, self._groups(rounds[newest])

    def store(self, server_round: int, groups: Groups, base_round: int | None = None) -> None:
        """Replace the held state by ``groups`` (round ``server_round``), keeping the held
        groups of ``base_round`` (the round they were computed from) as the base.
        """
        rounds = self._rounds()
        base = self._groups(rounds[base_round]) if base_round in rounds else None
        for key in list(self.context.state.array_records):
            del self.context.state[key]
        for key, tensors in groups.items():
            self.context.state[key] = to_record(tensors)
        kept = -1
        if base is not None and base_round is not None and base_round != server_round:
            kept = base_round
            for key, tensors in base.items():
                self.context.state[self.BASE + key] = to_record(tensors)
        self.context.state[META] = ConfigRecord({"round": server_round, "base": kept})


Refusal = tuple[Path, str]
"""A round file that was not restored from, and why."""


class RestoreLog:
    """``restores.jsonl`` next to the round files: one line per restore from disk (or clean
    start after refused files), listing the files refused on the way.
    """

    def __init__(self, directory: Path) -> None:
        self.path = directory / RESTORES

    def append(
        self,
        server_round: int | None,
        restored: int | None,
        file: Path | None,
        groups: Groups,
        refused: list[Refusal],
    ) -> None:
        """Record that round ``restored``'s file was loaded for a message of ``server_round``
        (``restored`` None: a clean start), after refusing ``refused``.
        """
        entry = {
            "round": restored if server_round is None else server_round,
            "restored-round": restored,
            "file": None if file is None else file.name,
            "digest": None if file is None else state_digest(groups),
            "refused": [{"file": p.name, "reason": reason} for p, reason in refused],
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as fh:
            fh.write(json.dumps(entry) + "\n")


class DiskMirror:
    """Round files ``round-<r>.pt`` of one partition (atomic writes; files older than the
    one the newest state was computed from are pruned).
    """

    def __init__(self, directory: Path, identity: StateIdentity) -> None:
        self.dir, self.identity = directory, identity
        self.refused: list[Refusal] = []
        """The files the last ``load`` refused, newest first, with the reason."""

    def load(self, max_round: int | None) -> tuple[int, Groups] | None:
        """The newest allowed round file that is this identity's and intact; each refused
        one is logged with its reason and kept in ``refused``.
        """
        self.refused = []
        files = round_files(self.dir)
        for rnd in sorted((r for r in files if max_round is None or r <= max_round), reverse=True):
            try:
                return rnd, read_state_file(files[rnd], self.identity, rnd)
            except StateFileError as err:
                self.refused.append((files[rnd], str(err)))
                log(WARNING, "client state file %s refused: %s", files[rnd], err)
        return None

    def file(self, server_round: int) -> Path:
        """The path of round ``server_round``'s file."""
        return self.dir / f"round-{server_round}.pt"

    def store(self, server_round: int, groups: Groups, base_round: int | None = None) -> None:
        """Write the round file atomically; prune the files of rounds before ``base_round``
        (the state ``groups`` were computed from, kept for a rollback) and before the newest
        ``KEEP`` files.
        """
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.dir / f".round-{server_round}.pt.{os.getpid()}.tmp"
        write_state_file(tmp, self.identity, server_round, groups)
        tmp.replace(self.file(server_round))
        files = round_files(self.dir)
        oldest_kept = min(sorted(files)[-KEEP:] + ([base_round] if base_round is not None else []))
        for old in sorted(files):
            if old < oldest_kept:
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
        refused = self.mirror.refused
        if found is None:
            if refused:
                self.log.append(self.server_round, None, None, {}, refused)
                log(
                    WARNING,
                    "client state of %s: no intact round file left in %s (%d refused); clean start",
                    self.mirror.dir.name,
                    self.mirror.dir,
                    len(refused),
                )
            return None
        restored, groups = found
        self.memory.store(restored, groups)
        self.log.append(self.server_round, restored, self.mirror.file(restored), groups, refused)
        log(
            INFO,
            "client state of %s restored from %s (round %d)",
            self.mirror.dir.name,
            self.mirror.file(restored),
            restored,
        )
        return found

    def store(self, server_round: int, groups: Groups, base_round: int | None = None) -> None:
        """In memory and on disk."""
        self.memory.store(server_round, groups, base_round)
        self.mirror.store(server_round, groups, base_round)


class ClientState:
    """The handler's view of one client's state groups for one message.

    ``server_round`` is the round of the message being handled (None: accept whatever
    ``context.state`` holds); a ``training`` message may use state from rounds before it, an
    evaluation message also the state of its own round, and neither a round after
    ``accepted`` (the round of the client's last accepted reply). ``run_id`` and
    ``algorithm`` (with the partition) are the identity its round files must carry.
    ``groups`` are loaded once; ``put`` stages changes that ``commit`` stores.
    """

    def __init__(
        self,
        context: Context,
        partition_id: int,
        state_dir: str,
        scope: str = "",
        server_round: int | None = None,
        training: bool = True,
        *,
        run_id: str = "",
        algorithm: str = "",
        accepted: int = -1,
    ) -> None:
        memory = ContextStore(context)
        where = state_path(state_dir, scope or f"run-{context.run_id}", partition_id, run_id)
        identity = StateIdentity(run_id, partition_id, algorithm)
        self.store: StateStore = (
            MirroredStore(memory, DiskMirror(where, identity), server_round)
            if state_dir
            else memory
        )
        self.gate = RoundGate(server_round, training, accepted)
        self._groups: Groups | None = None
        self._loaded: int | None = None
        """The round of the groups loaded (None: a clean start)."""

    @property
    def groups(self) -> Groups:
        """Every group this message may use (empty for a client that never stored any)."""
        if self._groups is None:
            found = self.store.load(self.gate.max_round)
            self._loaded, self._groups = found if found is not None else (None, {})
        return self._groups

    def available_round(self) -> int | None:
        """The round of the state a message of this round would use, found without loading
        it into memory or logging a restore (a resumed server's ``query.state``; None: none).
        """
        store = self.store
        memory = store.memory if isinstance(store, MirroredStore) else store
        held = memory.load(self.gate.max_round)
        if held is None and isinstance(store, MirroredStore):
            held = store.mirror.load(self.gate.max_round)
        return None if held is None else held[0]

    @property
    def loaded_round(self) -> int | None:
        """The round of the state this message uses (None: a clean start)."""
        _ = self.groups
        return self._loaded

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
        """Store the staged groups as round ``server_round``'s state, keeping the state they
        were computed from for a rollback (``RoundGate``).
        """
        self.store.store(server_round, self.groups, self.loaded_round)
