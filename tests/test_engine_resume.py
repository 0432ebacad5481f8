"""Kill the ServerApp of a real simulation run after round 2, resume it from its checkpoint:
the final metrics equal an uninterrupted run's (``dualflower-run``, private SuperLink)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from client_app.state import state_path
from server_app.checkpoint import read_checkpoint, round_dirs
from tests.conftest import ROOT, read_metrics
from tests.test_engine import launch

pytestmark = pytest.mark.engine

NODES = 3


def run_config(out: Path, state: Path, name: str) -> str:
    return (
        f"algorithm='fedapm' num-server-rounds=4 local-epochs=1 fraction-train=0.67 "
        f"output-dir='{out}' state-dir='{state}' run-name='{name}'"
    )


def strip(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k != "wall-time"} for r in rows]


def descendants(root: int) -> list[int]:
    """Every process below ``root`` in the process tree."""
    out = subprocess.run(["ps", "-eo", "pid=,ppid="], capture_output=True, text=True).stdout
    children: dict[int, list[int]] = {}
    for line in out.splitlines():
        pid, ppid = map(int, line.split())
        children.setdefault(ppid, []).append(pid)
    found, todo = [], [root]
    while todo:
        kids = children.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


def zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z")
    except OSError:
        return True


def start_and_kill_after_round_2(tmp_path: Path, cfg: str, run_dir: Path) -> None:
    """Start ``dualflower-run``; once round 2's checkpoint exists, SIGKILL the SuperLink's
    process group (SuperLink, its SuperExec and the ServerApp) and the launcher.
    """
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "server_app.launch",
            str(ROOT),
            "--num-supernodes",
            str(NODES),
            "--flwr-home",
            str(tmp_path / "flwr-home-killed"),
            "-c",
            cfg,
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    assert proc.stdout is not None
    first = proc.stdout.readline()
    match = re.search(r"SuperLink pid (\d+)", first)
    assert match, first
    superlink = int(match.group(1))
    deadline = time.monotonic() + 300
    while 2 not in round_dirs(run_dir / "checkpoint"):
        assert proc.poll() is None and time.monotonic() < deadline, "run ended before round 2"
        time.sleep(0.2)
    tree = descendants(superlink)  # the ServerApp runs in its own session: kill the tree
    for pid in [superlink, *tree]:
        os.kill(pid, signal.SIGKILL)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    deadline = time.monotonic() + 20  # killed processes leave once their parent reaps them
    while alive := [p for p in tree if Path(f"/proc/{p}").exists() and not zombie(p)]:
        assert time.monotonic() < deadline, f"processes {alive} of the killed run remain"
        time.sleep(0.5)


def test_killed_server_resumes_with_uninterrupted_metrics(tmp_path: Path) -> None:
    out, state = tmp_path / "outputs", tmp_path / "state"
    full = launch(tmp_path, run_config(out, state, "full"), nodes=NODES)
    assert full.returncode == 0, full.stderr[-3000:]

    run_dir = out / "cut"
    start_and_kill_after_round_2(tmp_path, run_config(out, state, "cut"), run_dir)
    assert not (run_dir / "summary.json").exists()
    assert max(r["round"] for r in read_metrics(run_dir)) <= 3

    resumed = launch(
        tmp_path,
        run_config(out, state, "other") + f" resume-from='{run_dir}'",
        nodes=NODES,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert not (out / "other").exists()
    assert strip(read_metrics(run_dir)) == strip(read_metrics(out / "full"))
    assert [r["round"] for r in read_metrics(run_dir)] == [1, 2, 3, 4]
    restores = []
    run_id = read_checkpoint(run_dir).run_id  # kept by the resume
    for pid in range(NODES):
        log = state_path(state, "cut", pid, run_id) / "restores.jsonl"
        restores += [json.loads(x) for x in log.read_text().splitlines()] if log.exists() else []
    assert restores and all(e["restored-round"] <= 2 for e in restores)
