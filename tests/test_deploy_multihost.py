"""SuperLink and 3 SuperNodes on separate (namespace) hosts with TLS and node auth, running
the commands of docker/compose.yaml + with-tls.yaml: FedAPM equals the simulation engine, only
the gRPC Fleet link crosses hosts, a killed SuperNode comes back with its persisted state, and
an unregistered key is refused.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from client_app.runtime import PERSONAL
from client_app.solvers.admm import PI
from client_app.state import RESTORES, round_files, state_digest, state_path
from deploy.certs import make_node_key
from deploy.cluster import CONTROL_PORT, FLEET_PORT
from server_app.checkpoint import read_checkpoint, round_dirs
from tests.compose_files import merged
from tests.conftest import ROOT, read_metrics
from tests.netlab import NetLab, Socket

pytestmark = [
    pytest.mark.engine,
    pytest.mark.skipif(os.geteuid() != 0, reason="the multi-host lab needs root (ip netns)"),
]

NODES = [f"supernode-{i}" for i in (1, 2, 3)]
RUN = (
    "algorithm='fedapm' num-server-rounds=3 local-epochs=1 batch-size=32 "
    "fraction-evaluate=1.0"
)


@dataclass
class Cluster:
    """The running lab: hosts, the merged compose model and where its volumes live."""

    lab: NetLab
    model: dict[str, Any]
    volumes: Path
    logs: Path
    procs: dict[str, subprocess.Popen[bytes]]
    submitted: int = 0

    def argv(self, service: str) -> list[str]:
        """The service's entrypoint + command with container paths mapped to its volumes."""
        svc = self.model["services"][service]
        mounts = sorted(
            (
                (v["target"], self.volumes / Path(v["source"]).name)
                for v in svc.get("volumes", [])
            ),
            key=lambda m: -len(m[0]),
        )
        out = []
        for arg in [*svc["entrypoint"], *svc["command"]]:
            for target, local in mounts:
                arg = arg.replace(target, str(local))
            if not self.lab.isolated:  # loopback fallback: one address, distinct app ports
                arg = arg.replace("superlink:", "127.0.0.1:")
            out.append(arg)
        if not self.lab.isolated and service in NODES and "--port" in out:
            out[out.index("--port") + 1] = str(9094 + NODES.index(service))
        return out

    def home(self, service: str) -> Path:
        """The service's working directory and FLWR_HOME (a container's /app)."""
        home = self.volumes / "homes" / service
        home.mkdir(parents=True, exist_ok=True)
        return home

    def env(self, service: str) -> dict[str, str]:
        """This machine's environment plus the service's, with a per-host FLWR_HOME."""
        svc = self.model["services"][service]
        env = {k: str(v) for k, v in (svc.get("environment") or {}).items()}
        return {**os.environ, **env, "FLWR_HOME": str(self.home(service))}

    def host(self, service: str) -> str:
        """Lab host of a service: one-shot helpers run on the SuperLink's host."""
        return service if service in NODES else "superlink"

    def start(self, service: str) -> subprocess.Popen[bytes]:
        """Start a long-running service on its host."""
        proc = self.lab.popen(
            self.host(service),
            self.argv(service),
            self.env(service),
            self.logs / f"{service}.log",
            self.home(service),
        )
        self.procs[service] = proc
        return proc

    def once(self, service: str, argv: list[str] | None = None, timeout: float = 120) -> str:
        """Run a one-shot service (or ``argv`` on its host) and return its output."""
        result = self.lab.run(
            self.host(service),
            argv or self.argv(service),
            self.env(service),
            self.home(service),
            timeout,
        )
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        return result.stdout + result.stderr

    def submit(self, run_config: str) -> subprocess.Popen[bytes]:
        """``dualflower-deploy submit`` from the SuperLink host (CLI on loopback, TLS)."""
        argv = [
            *(sys.executable, "-m", "deploy", "submit", str(ROOT)),
            *("--superlink", f"127.0.0.1:{CONTROL_PORT}"),
            *("--ca", str(self.volumes / "certs" / "ca.crt")),
            *("--flwr-home", str(self.home("cli")), "-c", run_config),
        ]
        self.submitted += 1
        log = self.logs / f"submit-{self.submitted}.log"
        return self.lab.popen("superlink", argv, dict(os.environ), log, self.home("cli"))

    def keep_running(self, service: str, run: subprocess.Popen[bytes], limit: float) -> None:
        """Restart ``service`` whenever it exits, for ``limit`` seconds (compose's
        ``restart: unless-stopped``): flwr 1.39 refuses to re-activate a registered node until
        the SuperLink's heartbeat timeout (2 x 30 s) has marked its dead predecessor offline.
        Stops when ``run`` ends.
        """
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline and run.poll() is None:
            if self.procs[service].poll() is not None:
                self.start(service)
            time.sleep(2.0)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("multihost")
    model = merged(("compose.yaml", "with-tls.yaml"))
    lab = NetLab(["superlink", *NODES])
    (root / "logs").mkdir()
    c = Cluster(lab, model, root / "volumes", root / "logs", {})
    try:
        c.once("certs")
        c.start("superlink")
        c.once("register")
        for node in NODES:
            c.start(node)
        yield c
    finally:
        lab.close()


def wait_for(proc: subprocess.Popen[bytes], limit: float) -> int:
    try:
        return proc.wait(timeout=limit)
    except subprocess.TimeoutExpired:
        NetLab.kill(proc)
        return -1


def strip(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k != "wall-time"} for r in rows]


def simulate(tmp: Path, run_config: str) -> list[dict[str, Any]]:
    result = subprocess.run(
        [
            *(sys.executable, "-m", "server_app.launch", str(ROOT), "--num-supernodes", "3"),
            *("--flwr-home", str(tmp / "sim-home"), "-c", run_config),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=400,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return read_metrics(Path(run_config.split("output-dir='")[1].split("'")[0]) / "sim")


def cross_host(sockets: list[Socket]) -> list[Socket]:
    """Established connections whose other end is not this host's loopback."""
    return [
        s
        for s in sockets
        if s.state == "ESTAB" and not s.peer_host.startswith("127.") and s.peer_host != "::1"
    ]


def test_fedapm_over_grpc_with_tls_and_auth_equals_simulation(
    cluster: Cluster, tmp_path: Path
) -> None:
    out = tmp_path / "outputs"
    run = cluster.submit(f"{RUN} round-timeout=60.0 output-dir='{out}' run-name='deploy'")
    seen: dict[str, list[Socket]] = {}
    deadline = time.monotonic() + 400
    while run.poll() is None and time.monotonic() < deadline:
        rows = read_metrics(out / "deploy") if (out / "deploy" / "metrics.jsonl").exists() else []
        if rows and not seen:  # round 1 done: every node has trained once
            seen = {h: cluster.lab.sockets(h) for h in ["superlink", *NODES]}
        time.sleep(0.2)
    assert wait_for(run, 5) == 0, (cluster.logs / "submit-1.log").read_text()[-4000:]
    deployed = read_metrics(out / "deploy")
    assert [r["round"] for r in deployed] == [1, 2, 3]  # personalized: no round-0 global row
    assert all(r.get("clients", 3) == 3 for r in deployed[1:])

    simulated = simulate(tmp_path, f"{RUN} round-timeout=60.0 output-dir='{out}' run-name='sim'")
    assert strip(deployed) == strip(simulated)

    assert seen, "the run finished before the sockets were inspected"
    if cluster.lab.isolated:
        for node in NODES:
            remote = cross_host(seen[node])
            assert remote, f"{node} has no connection to the SuperLink"
            link = f"{cluster.lab.hub_ip[node]}:{FLEET_PORT}"
            assert {s.peer for s in remote} == {link}, remote
            assert all("flower-superno" in s.process or "python" in s.process for s in remote)
            listening = [s for s in seen[node] if s.state == "LISTEN"]
            assert all(s.local.startswith("127.0.0.1:") for s in listening), listening
        inbound = cross_host(seen["superlink"])
        assert len(inbound) >= len(NODES)
        assert {s.local_port for s in inbound} == {FLEET_PORT}, inbound
    else:
        print("multi-host check skipped: no network namespaces, hosts were loopback processes")


def test_supernode_killed_in_round_2_comes_back_with_its_persisted_state(
    cluster: Cluster, tmp_path: Path
) -> None:
    out = tmp_path / "outputs"
    # six rounds: a restarted node is refused until its predecessor's heartbeat expires
    # (about 60 s), and rounds are faster than that now; it must be back by the last round
    rounds = 6
    six = RUN.replace("num-server-rounds=3", f"num-server-rounds={rounds}")
    run = cluster.submit(
        f"{six} round-timeout=90.0 min-available-nodes=3 output-dir='{out}' run-name='faulty'"
    )
    victim, pid = "supernode-2", 1
    metrics, checkpoints = out / "faulty" / "metrics.jsonl", out / "faulty" / "checkpoint"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and run.poll() is None:
        if metrics.exists() and metrics.read_text().strip() and round_dirs(checkpoints):
            break  # round 1 recorded and checkpointed (after round 2's exchange: fused)
        time.sleep(0.1)
    time.sleep(1.0)
    NetLab.kill(cluster.procs[victim])
    run_id = read_checkpoint(out / "faulty").run_id  # round 1's checkpoint names the run
    state_dir = state_path(cluster.volumes / "state-2", "faulty", pid, run_id)
    saved = tmp_path / "saved"
    shutil.copytree(state_dir, saved)
    assert round_files(saved), "the killed node had persisted no state"
    cluster.start(victim)
    cluster.keep_running(victim, run, limit=300)
    log = cluster.logs / f"submit-{cluster.submitted}.log"
    assert wait_for(run, 400) == 0, log.read_text()[-4000:]

    rows = read_metrics(out / "faulty")
    assert [r["round"] for r in rows] == list(range(1, rounds + 1))
    assert any(r["dropped-replies"] >= 1 for r in rows[1:])  # the killed node's reply(s)
    assert rows[-1]["clients"] == 3  # back by the last round
    restores = [json.loads(x) for x in (state_dir / RESTORES).read_text().splitlines()]
    assert restores, "the restarted node did not restore its state from disk"
    first = restores[0]
    groups = torch.load(saved / first["file"], weights_only=True)["groups"]
    assert first["digest"] == state_digest(groups)
    assert {PI, PERSONAL} <= set(groups), set(groups)  # multiplier and personal block


def test_supernode_with_unregistered_key_is_refused(cluster: Cluster) -> None:
    argv = cluster.argv("supernode-3")
    rogue, _ = make_node_key(cluster.volumes / "rogue", "rogue")
    argv[argv.index("--auth-supernode-private-key") + 1] = str(rogue)
    argv[argv.index("--port") + 1] = "9199"
    log = cluster.logs / "rogue.log"
    env, home = cluster.env("supernode-3"), cluster.home("rogue")
    proc = cluster.lab.popen("superlink", argv, env, log, home)
    code = wait_for(proc, 60)  # the SuperNode exits; its SuperExec child is then killed
    NetLab.kill(proc)
    assert code not in (0, -1), log.read_text()[-3000:]
    assert "Failed to activate SuperNode" in log.read_text()
