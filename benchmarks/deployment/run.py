"""Per-round time of dualflower in deployment (SuperLink + SuperNodes) vs simulation (issue 14).

    nice -n 10 python -m benchmarks.deployment.run [--rounds 5 --repeat 2 --timeout 600]

One machine, loopback only, **insecure** (no TLS, no node auth: TLS adds handshakes on
connection setup, not per-poll latency; see FLOWER_NOTES.md §4.7). The same job runs as:

(sim)         ``dualflower-run --num-supernodes 3``: private simulation SuperLink, Ray engine.
(dep-flower)  ``flower-superlink`` + 3 ``flower-supernode`` in subprocess isolation, with the
              arguments of ``deploy.cluster`` on free loopback ports, each its own
              ``FLWR_HOME``, data and state directory and session; the run submitted with
              ``dualflower-deploy submit --insecure``. Flower's polls: the SuperNode's
              hard-coded 3 s idle sleep, the SuperExec's 1 s task poll.
(dep)         the same with the SuperNodes as the compose cluster starts them:
              ``deploy.cluster.SUPERNODE`` (idle sleep capped) and ``SHARED_HOST_ENV`` (both
              polls 0.1 s). Both deployment variants use one torch thread per ClientApp.

Both deployment variants run with Flower's DEBUG logs (``FLWR_LOG_LEVEL=DEBUG``), whose
timestamped lines mark each message's phases (``MARKS``, ``phases``); ClientApp processes are
sampled from ``/proc``. Per variant: round times from the run's ``metrics.jsonl``
(``wall-time``), the per-round phase breakdown, the run command's wall time, the wall time
including cluster start and stop, and the final accuracy (the same seed and partitions
everywhere, so it must match). Also the cold start of a Python process that imports the
ClientApp (deployment starts one per message). Every wait has a time limit and every process
started here is stopped (SuperNodes first). Writes ``<out>/deployment.md``,
``<out>/deployment.json`` and the logs under ``<out>/logs``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import platform
import re
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import flwr

from benchmarks.timing import RoundTimes
from client_app.runtime import HANDLER_STARTED
from deploy.cli import CONNECTION
from deploy.cluster import (
    POLL_ENV,
    SHARED_HOST_ENV,
    SUPERNODE,
    Layout,
    superlink_command,
    supernode_command,
)
from server_app.launch import wait_healthy

ROOT = Path(__file__).resolve().parents[2]
RESULTS = Path(__file__).resolve().parent / "results"
CLIENTS = 3
JOB = {
    "algorithm": "'fedavg'",
    "task": "'digits'",
    "local-epochs": "1",
    "fraction-evaluate": "1.0",
    "seed": "0",
}
VARIANTS = {
    "sim": "simulation engine (dualflower-run)",
    "dep-flower": "deployment, Flower's flower-supernode (idle sleep 3 s, SuperExec poll 1 s)",
    "dep": "deployment, dualflower-deploy's SuperNode (both polls 0.1 s)",
}
ONE_THREAD = {"OMP_NUM_THREADS": "1"}
"""Both deployment variants: one torch thread per ClientApp (3 SuperNodes share the machine, as
``SHARED_HOST_ENV`` and the simulation's one-CPU actors do), so they differ only in the polls."""
DEBUG_ENV = {"FLWR_LOG_LEVEL": "DEBUG"}
"""Flower's DEBUG logs on the SuperLink and SuperNodes (inherited by their app processes): the
phase markers of the breakdown. Both deployment variants run with them."""


@dataclass
class Outcome(RoundTimes):
    """One variant's run: round wall times (rounds 1..N) and command timings."""

    key: str
    rep: int
    rounds: int
    status: str = "not run"
    round_times: list[float] = field(default_factory=list)
    command_s: float | None = None
    total_s: float | None = None
    final_accuracy: float | None = None
    notes: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- processes
def base_env(home: Path) -> dict[str, str]:
    """This environment with ``FLWR_HOME=home``, passive OpenMP waits, Flower's default poll."""
    env = {**os.environ, "FLWR_HOME": str(home), "OMP_WAIT_POLICY": "PASSIVE"}
    for name in POLL_ENV:
        env.pop(name, None)
    return env


def start(argv: list[str], env: dict[str, str], log: Path, cwd: Path) -> subprocess.Popen[bytes]:
    """Start ``argv`` in its own session (so its group can be stopped alone); every output line
    goes to ``log`` prefixed with the wall-clock time (s) at which it arrived here.
    """
    cwd.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        argv,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )

    def copy(source: Any) -> None:
        with log.open("wb") as out:
            for line in iter(source.readline, b""):
                out.write(f"{time.time():.3f} ".encode() + line)
                out.flush()

    threading.Thread(target=copy, args=(proc.stdout,), daemon=True).start()
    return proc


def stop(proc: subprocess.Popen[bytes], grace: float = 15.0) -> str:
    """Stop ``proc``'s process group: SIGTERM, SIGTERM again (a SuperNode once stayed in its
    reconnect loop after the first, FLOWER_NOTES.md §4.2), then SIGKILL. Returns the signals used.
    """
    sent: list[str] = []
    for sig in (signal.SIGTERM, signal.SIGTERM, signal.SIGKILL):
        if proc.poll() is not None:
            break
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        sent.append(sig.name)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            continue
    with contextlib.suppress(ProcessLookupError):  # stragglers once the leader is gone
        os.killpg(proc.pid, signal.SIGKILL)
    return "+".join(sent) or "already exited"


def run_timed(
    argv: list[str], env: dict[str, str], log: Path, cwd: Path, timeout: float
) -> tuple[int | None, float]:
    """Run ``argv`` to completion (``None`` exit code on timeout); return (code, wall s)."""
    t0 = time.monotonic()
    proc = start(argv, env, log, cwd)
    try:
        code: int | None = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        code = None
    finally:
        stop(proc)
    return code, time.monotonic() - t0


class ProcessWatch(threading.Thread):
    """Samples ``/proc`` every ``period`` s for processes whose command line contains
    ``needle``; ``seen[pid] = [command line, first seen, last seen]`` (wall-clock s).
    """

    def __init__(self, needle: str, period: float = 0.02) -> None:
        super().__init__(daemon=True)
        self.needle, self.period = needle.encode(), period
        self.seen: dict[int, list[Any]] = {}
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            now = time.time()
            for entry in Path("/proc").iterdir():
                if not entry.name.isdigit():
                    continue
                pid = int(entry.name)
                if pid in self.seen:
                    self.seen[pid][2] = now
                    continue
                try:
                    cmd = (entry / "cmdline").read_bytes()
                except OSError:
                    continue
                if self.needle in cmd and b"python -m benchmarks" not in cmd:
                    self.seen[pid] = [cmd.replace(b"\0", b" ").decode(), now, now]
            time.sleep(self.period)


def free_ports(n: int) -> list[int]:
    """``n`` distinct loopback ports that nothing listens on right now."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def other_superlinks() -> list[str]:
    """Command lines of ``flower-superlink`` processes already running (other sessions)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
        except OSError:
            continue
        if "flower-superlink" in cmd and "python -m benchmarks" not in cmd:
            found.append(f"{entry.name}: {cmd}")
    return found


def with_value(args: list[str], flag: str, value: str) -> list[str]:
    """``args`` with the value after ``flag`` replaced."""
    out = list(args)
    out[out.index(flag) + 1] = value
    return out


def wait_for_text(
    logs: list[Path], procs: list[subprocess.Popen[bytes]], text: str, limit: float
) -> None:
    """Wait until every log contains ``text``; raise if a process exits or ``limit`` passes."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        for log, proc in zip(logs, procs, strict=True):
            if proc.poll() is not None:
                raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}; see {log}")
        if all(text in log.read_text(errors="replace") for log in logs):
            return
        time.sleep(0.2)
    raise RuntimeError(f"{text!r} not in all of {[str(p) for p in logs]} within {limit}s")


# --------------------------------------------------------------------------- variants
def run_config(rounds: int, output_dir: Path) -> str:
    """The job's ``--run-config`` string."""
    cfg = {**JOB, "num-server-rounds": str(rounds), "output-dir": f"'{output_dir}'"}
    return " ".join(f"{k}={v}" for k, v in cfg.items())


def read_metrics(o: Outcome, outputs: Path) -> None:
    """Round wall times and final accuracy from the run's ``metrics.jsonl``."""
    found = sorted(outputs.glob("*/metrics.jsonl"))
    if not found:
        return
    rows = [json.loads(line) for line in found[0].read_text().splitlines() if line.strip()]
    trained = sorted((r for r in rows if int(r["round"]) > 0), key=lambda r: int(r["round"]))
    o.round_times = [float(r["wall-time"]) for r in trained]
    if trained:
        last = trained[-1]
        acc = last.get("global-accuracy", last.get("accuracy"))
        o.final_accuracy = None if acc is None else float(acc)
        o.notes["final-train-loss"] = last.get("train-loss")


def settle(o: Outcome, code: int | None, outputs: Path) -> None:
    """Status from the exit code and the number of rounds written."""
    o.status = "ok" if code == 0 else ("timeout" if code is None else f"failed (exit {code})")
    read_metrics(o, outputs)
    if o.status == "ok" and len(o.round_times) != o.rounds:
        o.status = f"incomplete ({len(o.round_times)}/{o.rounds} rounds)"


def simulation(o: Outcome, scratch: Path, logs: Path, timeout: float) -> None:
    """(sim): ``dualflower-run --num-supernodes 3`` on its private simulation SuperLink."""
    outputs = scratch / "outputs"
    argv = [sys.executable, "-m", "server_app.launch", str(ROOT)]
    argv += ["--num-supernodes", str(CLIENTS), "--flwr-home", str(scratch / "flwr-home")]
    argv += ["--run-config", run_config(o.rounds, outputs)]
    env = base_env(scratch / "flwr-home")
    code, wall = run_timed(argv, env, logs / f"{o.key}-{o.rep}.log", ROOT, timeout)
    o.command_s = o.total_s = wall
    settle(o, code, outputs)


def deployment(
    o: Outcome,
    scratch: Path,
    logs: Path,
    timeout: float,
    program: list[str],
    node_env: dict[str, str],
) -> None:
    """(dep-*): SuperLink + 3 SuperNodes (``program``, environment ``node_env``) on loopback,
    ``dualflower-deploy submit``, stop; ClientApp processes watched in ``/proc``.
    """
    control, fleet, *app_ports = free_ports(2 + CLIENTS)
    o.notes["ports"] = {"control": control, "fleet": fleet, "app": app_ports}
    others = other_superlinks()
    if others:
        o.notes["other-superlinks"] = others
    outputs, homes = scratch / "outputs", scratch / "homes"
    layout = Layout(superlink="127.0.0.1", tls=False, auth=False, listen="127.0.0.1")
    prefix = f"{o.key}-{o.rep}"
    started: list[tuple[str, subprocess.Popen[bytes]]] = []
    t0 = time.monotonic()
    try:
        link_args = with_value(superlink_command(layout), "--port", str(control))
        link_args = with_value(link_args, "--fleet-api-address", f"127.0.0.1:{fleet}")
        link_log = logs / f"{prefix}-superlink.log"
        link = start(
            ["flower-superlink", *link_args],
            {**base_env(homes / "superlink"), **DEBUG_ENV},
            link_log,
            homes / "superlink",
        )
        started.append(("superlink", link))
        wait_healthy(f"http://127.0.0.1:{control}/health", link, link_log, 60.0)
        o.notes["superlink-ready-s"] = round(time.monotonic() - t0, 2)
        node_logs, nodes = [], []
        for index, port in enumerate(app_ports, start=1):
            name = f"supernode-{index}"
            mine = dataclasses.replace(
                layout, data=str(scratch / "data" / name), state=str(scratch / "state" / name)
            )
            args = supernode_command(mine, index, CLIENTS, port)
            args = with_value(args, "--superlink", f"127.0.0.1:{fleet}")
            node_logs.append(logs / f"{prefix}-{name}.log")
            env = {**base_env(homes / name), **node_env, **DEBUG_ENV}
            nodes.append(start([*program, *args], env, node_logs[-1], homes / name))
            started.insert(0, (name, nodes[-1]))
        wait_for_text(node_logs, nodes, "SuperNode ID:", 60.0)
        o.notes["nodes-ready-s"] = round(time.monotonic() - t0, 2)
        argv = [sys.executable, "-m", "deploy", "submit", str(ROOT), "--insecure"]
        argv += ["--superlink", f"127.0.0.1:{control}", "--flwr-home", str(homes / "cli")]
        argv += ["--run-config", run_config(o.rounds, outputs)]
        cli_env = base_env(homes / "cli")
        watch = ProcessWatch("flwr-clientapp")
        watch.start()
        try:
            code, o.command_s = run_timed(
                argv, cli_env, logs / f"{prefix}-submit.log", ROOT, timeout
            )
        finally:
            watch.done.set()
            watch.join()
        o.notes["flwr-ls"] = flwr_ls(cli_env)
        settle(o, code, outputs)
        o.notes["phases"] = phases(node_logs, link_log, watch.seen, app_ports, o.rounds)
    except (RuntimeError, subprocess.TimeoutExpired) as err:
        o.status = f"failed: {err}"
    finally:
        o.notes["stopped-with"] = {name: stop(proc) for name, proc in started}
        o.total_s = time.monotonic() - t0


ANSI = re.compile(r"\x1b\[[0-9;]*m")
STAMP = re.compile(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3})")
ROUND = re.compile(r"\[RUN \d+, ROUND ([^\]]+)\]")
MARKS = {
    "Receiving: ": "R",  # the SuperNode pulled the message (SuperNode)
    "Received successfully": "Rs",  # ... and its arrays (SuperNode)
    "Start `ClientApp` Loading.": "L",  # flwr-clientapp is up, imports the app (ClientApp)
    HANDLER_STARTED: "H",  # the handler runs: app imported (ClientApp, client_app.runtime)
    "Runtime.PushMessages": "PM",  # the ClientApp hands over its reply (SuperNode API)
    "Sending: ": "S",  # the SuperNode pushes the reply to the SuperLink
}
COLUMNS = {
    "idle pull": "ServerApp push -> the SuperNode has the message and its arrays",
    "process start": "-> handler runs: SuperExec task poll, flwr-clientapp start, app imports",
    "of which imports": "flwr-clientapp up -> handler runs (import client_app.app, torch)",
    "compute": "handler -> reply handed to the SuperNode",
    "reply": "-> the SuperNode pushes it (reply poll: Flower 0.5 s, capped like the idle sleep)",
    "server wait": "last reply pushed -> the ServerApp pushes the next phase",
}


def _events(log: Path) -> list[tuple[float, str]]:
    """(time, line) of a log written by ``start``: Flower's own timestamp when the line has one
    (DEBUG logging), else the arrival time.
    """
    out = []
    for raw in log.read_text(errors="replace").splitlines():
        arrived, _, line = ANSI.sub("", raw).partition(" ")
        found = STAMP.search(line)
        t = float(arrived)
        if found:
            t = time.mktime(time.strptime(found.group(1), "%Y-%m-%d %H:%M:%S"))
            t += int(found.group(2)) / 1000
        out.append((t, line))
    return out


def _messages(log: Path) -> list[dict[str, Any]]:
    """The messages one SuperNode handled (discovery left out): round label, type and the
    time of each of ``MARKS``.
    """
    label, found = "", []
    for t, line in _events(log):
        if m := ROUND.search(line):
            label = m.group(1)
            continue
        for text, mark in MARKS.items():
            if text not in line:
                continue
            if mark == "R":
                kind = line.split("Receiving: ", 1)[1].split(" ", 1)[0]
                found.append({"round": label, "type": kind, "R": t})
            elif found and mark not in found[-1]:
                found[-1][mark] = t
    return [m for m in found if m["round"] != "discovery" and "S" in m]


def phases(
    node_logs: list[Path],
    link_log: Path,
    processes: dict[int, list[Any]],
    app_ports: list[int],
    rounds: int,
) -> dict[str, Any]:
    """Per-round breakdown (``COLUMNS``; seconds, mean over the nodes, summed over the round's
    phases) from the Flower DEBUG logs of the SuperLink (``Runtime.PushMessages``: the ServerApp
    pushes a phase) and the SuperNodes (``MARKS``), and the ClientApp processes seen in /proc.
    """
    pushes = sorted(t for t, line in _events(link_log) if "Runtime.PushMessages" in line)
    by_phase: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for log, port in zip(node_logs, app_ports, strict=True):
        spawns = sorted(first for cmd, first, _ in processes.values() if f":{port}" in cmd)
        for m in _messages(log):
            m["spawn"] = next((t for t in spawns if m["R"] <= t <= m["S"]), None)
            by_phase.setdefault((m["round"], m["type"]), []).append(m)
    ordered = sorted(by_phase.items(), key=lambda kv: min(m["R"] for m in kv[1]))
    starts = [
        max((p for p in pushes if p <= min(m["R"] for m in ms)), default=None) for _, ms in ordered
    ]
    table: dict[str, dict[str, float]] = {}
    for k, ((label, _), ms) in enumerate(ordered):
        push = starts[k]
        if push is None or any(key not in m for m in ms for key in ("Rs", "H", "PM", "L")):
            continue
        row = table.setdefault(label, {c: 0.0 for c in COLUMNS} | {"phases": 0.0})
        mean = statistics.fmean
        row["idle pull"] += mean(m["Rs"] - push for m in ms)
        row["process start"] += mean(m["H"] - m["Rs"] for m in ms)
        row["of which imports"] += mean(m["H"] - m["L"] for m in ms)
        row["compute"] += mean(m["PM"] - m["H"] for m in ms)
        row["reply"] += mean(m["S"] - m["PM"] for m in ms)
        nxt = starts[k + 1] if k + 1 < len(starts) else None
        row["server wait"] += (nxt - max(m["S"] for m in ms)) if nxt else math.nan
        row["phases"] += 1
        launches = [m["spawn"] - m["R"] for m in ms if m["spawn"] is not None]
        row.setdefault("superexec launch", 0.0)
        row["superexec launch"] += mean(launches) if launches else math.nan
    return {"rounds": {k: {c: round(v, 3) for c, v in r.items()} for k, r in table.items()}}


def flwr_ls(env: dict[str, str]) -> Any:
    """``flwr ls --format json`` of the deployment (run status, ClientApp/ServerApp seconds)."""
    out = subprocess.run(
        ["flwr", "ls", CONNECTION, "--format", "json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    ).stdout
    return json.loads(out[out.index("{") :]) if "{" in out else out.strip()


def cold_start(code: str, reps: int = 3) -> float:
    """Median wall time of ``python -c code`` in a fresh interpreter."""
    env = base_env(ROOT / ".flwr")
    times = []
    for _ in range(reps):
        t0 = time.monotonic()
        subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, check=True, timeout=120)
        times.append(time.monotonic() - t0)
    return statistics.median(times)


# --------------------------------------------------------------------------- report
def _f(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def report(outcomes: list[Outcome], starts: dict[str, float], command: str) -> list[str]:
    """The markdown report: table, accuracy check, cold starts."""
    sims = [o.steady for o in outcomes if o.key == "sim" and o.steady is not None]
    sim = statistics.median(sims) if sims else None
    lines = [
        f"`{command}`; flwr {flwr.__version__}, Python {platform.python_version()}, "
        f"{os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d %H:%M')}.",
        "",
        "| variant | rep | status | round 1 (s) | median s/round, rounds 2..N | run command (s) "
        "| total incl. cluster start/stop (s) | final global acc | ratio to simulation |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for o in outcomes:
        acc = "-" if o.final_accuracy is None else f"{100 * o.final_accuracy:.2f}%"
        ratio = "-" if sim is None or o.steady is None else f"{o.steady / sim:.1f}"
        lines.append(
            f"| {VARIANTS[o.key]} | {o.rep} | {o.status} | {_f(o.round1)} | {_f(o.steady)} "
            f"| {_f(o.command_s, 1)} | {_f(o.total_s, 1)} | {acc} | {ratio} |"
        )
    accs = {o.final_accuracy for o in outcomes if o.final_accuracy is not None}
    same = "identical in every run" if len(accs) == 1 else f"DIFFERENT: {sorted(accs)}"
    lines += ["", f"Final global accuracy: {same}.", ""]
    lines += breakdown(outcomes)
    lines += [f'- cold start, `python -c "{code}"`: {s:.2f} s' for code, s in starts.items()]
    for o in outcomes:
        keep = {k: v for k, v in o.notes.items() if k not in ("flwr-ls", "phases")}
        lines.append(f"- {o.key} rep {o.rep}: round times {_f_list(o.round_times)}; {keep}")
    return lines


def breakdown(outcomes: list[Outcome]) -> list[str]:
    """Per-round phase tables of the deployment runs (``phases``), then their column legend."""
    names = [*COLUMNS, "superexec launch", "phases"]
    lines = []
    for o in outcomes:
        table = (o.notes.get("phases") or {}).get("rounds", {})
        if not table:
            continue
        lines += [
            f"Where the rounds of {VARIANTS[o.key]} (rep {o.rep}) went, s (mean over nodes, "
            "summed over the round's phases):",
            "",
            "| round | wall | " + " | ".join(names) + " |",
            "|---|---|" + "---|" * len(names),
        ]
        walls = dict(enumerate(o.round_times, start=1))
        for label, row in table.items():
            wall = walls.get(int(label)) if label.isdigit() else None
            cells = " | ".join(_f(row.get(c)) for c in names)
            lines.append(f"| {label} | {_f(wall)} | {cells} |")
        lines.append("")
    if lines:
        lines += [f"- *{c}*: {text}" for c, text in COLUMNS.items()]
        lines += [
            "- *superexec launch*: the node starts receiving the message -> its ClientApp "
            "process appears in /proc (sampled every 20 ms; Flower creates the task before the "
            "arrays arrive, so this overlaps *idle pull* and *process start*)",
            "- *wall*: the round's `wall-time` in metrics.jsonl; *phases*: messages per node",
            "",
        ]
    return lines


def _f_list(values: list[float]) -> str:
    return "[" + ", ".join(f"{v:.2f}" for v in values) + "]"


def main(argv: list[str] | None = None) -> int:
    """Run every variant ``--repeat`` times (interleaved) and write the report."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=600.0, help="per run command (s)")
    parser.add_argument("--only", default=",".join(VARIANTS), help="comma-separated variants")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    keys = [k for k in args.only.split(",") if k]
    unknown = set(keys) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variants {sorted(unknown)}; choose from {list(VARIANTS)}")
    out = args.out.resolve()
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    command = "python -m benchmarks.deployment.run " + " ".join(argv or sys.argv[1:])
    starts = {code: cold_start(code) for code in ("pass", "import client_app.app")}
    outcomes = []
    for rep in range(1, args.repeat + 1):
        for key in keys:
            o = Outcome(key, rep, args.rounds)
            o.notes["load-before"] = os.getloadavg()[0]
            scratch = out / "work" / f"{stamp}-{key}-{rep}"
            print(f"[{key} rep {rep}] {VARIANTS[key]}", flush=True)
            if key == "sim":
                simulation(o, scratch, logs, args.timeout)
            elif key == "dep-flower":
                deployment(o, scratch, logs, args.timeout, ["flower-supernode"], ONE_THREAD)
            else:
                ours = [sys.executable, *SUPERNODE[1:]]
                deployment(o, scratch, logs, args.timeout, ours, dict(SHARED_HOST_ENV))
            o.notes["load-after"] = os.getloadavg()[0]
            print(f"  {o.status}: rounds {_f_list(o.round_times)}, total {_f(o.total_s)} s")
            outcomes.append(o)
    lines = report(outcomes, starts, command.strip())
    (out / "deployment.md").write_text("\n".join(lines) + "\n")
    dump: dict[str, Any] = {"command": command, "cold-starts": starts}
    dump["outcomes"] = [dataclasses.asdict(o) for o in outcomes]
    (out / "deployment.json").write_text(json.dumps(dump, indent=1, default=str))
    print("\n".join(lines))
    return 0 if all(o.status == "ok" for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
