"""Run a command with a time limit while sampling its whole process tree from ``/proc``.

Sampled: the tree's total RSS (and optionally PSS, which counts shared pages once) at its
peak, split by role (SuperLink, simulation, Ray workers, ...), and the CPU time that
processes *outside* the tree used meanwhile, so a measurement taken on a busy machine says so.
Linux only; psutil is not needed.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

PAGE = os.sysconf("SC_PAGE_SIZE")
TICKS = os.sysconf("SC_CLK_TCK")
MB = 1024.0 * 1024.0

ROLES: tuple[tuple[str, str], ...] = (
    ("ray::ClientAppActor", "ClientApp actors (Ray)"),
    ("flwr-simulation", "flwr-simulation (ServerApp + engine)"),
    ("flwr-serverapp", "flwr-serverapp"),
    ("flower-superlink", "flower-superlink"),
    ("flower-superexec", "flower-superexec"),
    ("flwr run", "flwr CLI"),
    ("benchmarks.overhead.workload", "benchmark worker"),
    ("server_app.launch", "dualflower-run"),
    ("/ray/", "Ray services and idle workers"),
    ("ray::", "Ray services and idle workers"),
)


@dataclass(frozen=True)
class ProcInfo:
    """One process as read from ``/proc/<pid>/stat``."""

    pid: int
    ppid: int
    start: int
    cpu_s: float
    rss: int


@dataclass
class TreeStats:
    """What the sampler saw during one command."""

    peak_rss_mb: float = 0.0
    peak_pss_mb: float | None = None
    peak_processes: int = 0
    peak_roles_mb: dict[str, float] = field(default_factory=dict)
    tree_cpu_s: float = 0.0
    foreign_cpu_s: float = 0.0
    duration_s: float = 0.0
    samples: int = 0
    foreign_top: dict[str, float] = field(default_factory=dict)


def read_proc(pid: int) -> ProcInfo | None:
    """``/proc/<pid>/stat`` of one process, or None if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    rest = raw[raw.rfind(")") + 2 :].split()
    cpu = (int(rest[11]) + int(rest[12])) / TICKS
    return ProcInfo(pid, int(rest[1]), int(rest[19]), cpu, int(rest[21]) * PAGE)


def all_procs() -> dict[int, ProcInfo]:
    """Every process currently visible in ``/proc``."""
    out: dict[int, ProcInfo] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            info = read_proc(int(entry))
            if info is not None:
                out[info.pid] = info
    return out


def descendants(root: int, procs: Mapping[int, ProcInfo]) -> set[int]:
    """``root`` and every process below it (by parent pid)."""
    children: dict[int, list[int]] = {}
    for p in procs.values():
        children.setdefault(p.ppid, []).append(p.pid)
    tree, todo = set(), [root]
    while todo:
        pid = todo.pop()
        if pid in procs and pid not in tree:
            tree.add(pid)
            todo.extend(children.get(pid, []))
    return tree


def pss_bytes(pid: int) -> int:
    """Proportional set size of ``pid`` (0 if unreadable)."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def role(pid: int) -> str:
    """A short name for what process ``pid`` is (from its command line)."""
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return "other"
    for needle, name in ROLES:
        if needle in cmd:
            return name
    return "other"


class TreeSampler(threading.Thread):
    """Samples the tree under ``root`` every ``interval`` seconds until ``stop()``."""

    def __init__(self, root: int, interval: float, with_pss: bool) -> None:
        super().__init__(daemon=True)
        self.root, self.interval, self.with_pss = root, interval, with_pss
        self.stats = TreeStats(peak_pss_mb=0.0 if with_pss else None)
        self._halt = threading.Event()
        self._tree_cpu: dict[tuple[int, int], float] = {}
        self._ever_tree: set[tuple[int, int]] = set()
        self._foreign_first: dict[tuple[int, int], float] = {}
        self._foreign_last: dict[tuple[int, int], float] = {}
        self._t0 = time.monotonic()
        self._boot = _boot_ticks()

    def run(self) -> None:
        """Sample until stopped (one last sample after the stop request)."""
        while not self._halt.is_set():
            self._sample()
            self._halt.wait(self.interval)
        self._sample()

    def stop(self) -> TreeStats:
        """Stop sampling and return the statistics."""
        self._halt.set()
        self.join()
        self.stats.duration_s = time.monotonic() - self._t0
        self.stats.tree_cpu_s = sum(self._tree_cpu.values())
        used = {
            key: last - self._foreign_first[key]
            for key, last in self._foreign_last.items()
            if key not in self._ever_tree
        }
        self.stats.foreign_cpu_s = sum(used.values())
        top = sorted(used.items(), key=lambda kv: -kv[1])[:3]
        self.stats.foreign_top = {
            f"{pid}:{_short_cmd(pid)}": round(cpu, 1) for (pid, _), cpu in top if cpu >= 0.5
        }
        return self.stats

    def _sample(self) -> None:
        procs = all_procs()
        tree = descendants(self.root, procs)
        # A process seen in the tree stays ours after its parent exits (reparented to init).
        for pid in [pid for pid, p in procs.items() if (pid, p.start) in self._ever_tree]:
            tree |= descendants(pid, procs)
        me = os.getpid()
        for pid, p in procs.items():
            key = (pid, p.start)
            if pid in tree:
                self._ever_tree.add(key)
                self._tree_cpu[key] = p.cpu_s
            elif pid != me:
                born_during = p.start > self._boot
                self._foreign_first.setdefault(key, 0.0 if born_during else p.cpu_s)
                self._foreign_last[key] = p.cpu_s
        self.stats.samples += 1
        rss = sum(procs[pid].rss for pid in tree)
        if rss / MB > self.stats.peak_rss_mb:
            self.stats.peak_rss_mb = rss / MB
            self.stats.peak_processes = len(tree)
            roles: dict[str, float] = {}
            for pid in tree:
                name = role(pid)
                roles[name] = roles.get(name, 0.0) + procs[pid].rss / MB
            self.stats.peak_roles_mb = roles
        if self.with_pss and self.stats.peak_pss_mb is not None:
            pss = sum(pss_bytes(pid) for pid in tree) / MB
            self.stats.peak_pss_mb = max(self.stats.peak_pss_mb, pss)


def _short_cmd(pid: int) -> str:
    """The first words of ``pid``'s command line (program names without their paths)."""
    try:
        words = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "(exited)"
    return " ".join(Path(w.decode(errors="replace")).name for w in words[:4] if w)[:60]


def _boot_ticks() -> int:
    """Clock ticks since boot now (``/proc/<pid>/stat`` start times use the same unit)."""
    uptime = float(Path("/proc/uptime").read_text().split()[0])
    return int(uptime * TICKS)


def kill_tree(root: int) -> None:
    """SIGTERM, then SIGKILL, ``root`` and every process below it (by pid, children first)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        tree = descendants(root, all_procs())
        for pid in sorted(tree, reverse=True):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and descendants(root, all_procs()) - {root}:
            time.sleep(0.2)


@dataclass
class CommandResult:
    """Exit code (None on timeout), wall time and the sampler's statistics."""

    returncode: int | None
    wall_s: float
    stats: TreeStats


def run_sampled(
    cmd: list[str],
    *,
    cwd: Path,
    env: Mapping[str, str],
    log: Path,
    timeout: float,
    interval: float = 0.5,
    with_pss: bool = False,
) -> CommandResult:
    """Run ``cmd`` (output to ``log``), sample its tree, kill it after ``timeout`` seconds."""
    with log.open("wb") as fh:
        t0 = time.monotonic()
        proc = subprocess.Popen(cmd, cwd=cwd, env=dict(env), stdout=fh, stderr=subprocess.STDOUT)
        sampler = TreeSampler(proc.pid, interval, with_pss)
        sampler.start()
        try:
            code: int | None = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_tree(proc.pid)
            proc.wait()
            code = None
        except BaseException:
            kill_tree(proc.pid)
            sampler.stop()
            raise
        wall = time.monotonic() - t0
        stats = sampler.stop()
    return CommandResult(code, wall, stats)


def busy_fraction(seconds: float) -> float:
    """Share of all CPUs that were busy over the next ``seconds`` (from ``/proc/stat``)."""

    def snapshot() -> tuple[int, int]:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
        idle = fields[3] + fields[4]
        return sum(fields) - idle, sum(fields)

    busy0, total0 = snapshot()
    time.sleep(seconds)
    busy1, total1 = snapshot()
    return (busy1 - busy0) / max(total1 - total0, 1)
