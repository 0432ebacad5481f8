"""The docker-compose cluster for real, through the README's Docker commands on this machine's
Docker engine (``.ci/run`` installs and starts one): insecure FedAvg equals the simulation
engine, a SuperNode killed with ``kill -9`` mid-run is restarted and restores its state, and with
TLS + node auth a FedAPM run survives a SuperLink crash (database on a volume, nodes keep their
registered keys) and ``resume-from`` finishes it with the metrics of an uninterrupted run (the
simulation engine's, simulated in the background while the images build).

No registry and no package index reach the containers here, so the images are built offline
with the Dockerfile's build arguments: Flower's base image is replaced by a stand-in
(``docker/standin.Dockerfile`` on a ``debootstrap --variant=minbase`` Debian bookworm with
Python 3.11, imported with ``docker import``), and pip installs from a wheelhouse that
``pip wheel`` makes on the host (from pip's own indexes and cache, at the host's versions) and
that is served on loopback to builds on the host network. torch is the CPU build pip reaches
here (``DUALFLOWER_TEST_TORCH``, default 2.13.0+cpu: PyPI's 2.14.1 is the CUDA build, 5.5 GB with
its nvidia wheels; digits metrics are bitwise the same). The stand-in, the wheelhouse and the
image layers stay cached (the daemon; ``~/.cache/dualflower/docker``) keyed on their recipes,
the Dockerfile and pyproject.toml; untagged leftovers are pruned.

The cluster runs from a copy of the repository (a consistent snapshot; its own bind-mount
folders) as compose project ``dualflower-test``.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.compose_files import compose_binary
from tests.conftest import ROOT, read_metrics


def _engine_ready() -> bool:
    if shutil.which("docker") is None:
        return False
    return subprocess.run(["docker", "info"], capture_output=True, check=False).returncode == 0


pytestmark = [
    pytest.mark.engine,
    pytest.mark.skipif(os.geteuid() != 0, reason="kills container processes: needs root"),
    pytest.mark.skipif(not _engine_ready(), reason="no Docker engine (.ci/run starts one)"),
]

PROJECT = "dualflower-test"
STANDIN = "dualflower-standin/supernode:1.39.0-py3.11"
ROOTFS = "dualflower-standin/rootfs:bookworm"
DEBIAN = os.environ.get("DUALFLOWER_DEBIAN_MIRROR", "http://deb.debian.org/debian")
TORCH = os.environ.get("DUALFLOWER_TEST_TORCH", "2.13.0+cpu 0.28.0").split()
WHEEL_PORT = 38471
"""Fixed, so that the build arguments (and with them the layer cache) stay the same."""
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "dualflower" / "docker"
LABEL = "dualflower.recipe"
SNAPSHOT_IGNORE = shutil.ignore_patterns(
    ".git",
    "__pycache__",
    "*.egg-info",
    ".*_cache",
    ".flwr*",
    ".docker-config",
    "outputs",
    "data",
    "certs",
    "keys",
)
TRAIN = "local-epochs=1 batch-size=32 min-available-nodes=3"


def sh(*argv: str, timeout: float = 600, **kw: Any) -> str:
    """Run ``argv``; fail the test with its output unless it exits 0; return stdout."""
    result = subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, check=False, **kw
    )
    assert result.returncode == 0, f"{argv}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


def prune() -> list[str]:
    """Remove untagged leftovers of the app and stand-in images; return what is left."""
    left = []
    for label in ("dualflower.image", LABEL):
        sh("docker", "image", "prune", "-f", "--filter", f"label={label}")
        left += sh("docker", "images", "-q", "-f", "dangling=true", "-f", f"label={label}").split()
    return left


def digest(*parts: bytes | str) -> str:
    """A short content key."""
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode() if isinstance(part, str) else part)
        h.update(b"\0")
    return h.hexdigest()[:16]


def image_label(image: str) -> str:
    """The recipe label of ``image``, or '' when the daemon does not have it."""
    fmt = '{{index .Config.Labels "' + LABEL + '"}}'
    out = subprocess.run(
        ["docker", "image", "inspect", "-f", fmt, image], capture_output=True, text=True
    )
    return out.stdout.strip() if out.returncode == 0 else ""


def wheelhouse() -> Path:
    """Wheels for the image, at the versions installed here (cached by content)."""
    reqs = [
        *sh(
            sys.executable,
            str(ROOT / "docker" / "requirements.py"),
            str(ROOT / "pyproject.toml"),
            "torch",
            *TORCH,
        ).split(),
        *sh(
            sys.executable,
            str(ROOT / "docker" / "requirements.py"),
            str(ROOT / "pyproject.toml"),
            "rest",
        ).split(),
        "hatchling",
    ]
    frozen = sh(sys.executable, "-m", "pip", "freeze", "--exclude-editable").splitlines()
    pins = [
        line
        for line in frozen
        if "==" in line and not line.lower().startswith(("torch", "nvidia", "triton"))
    ]
    key = digest(*reqs, *pins)
    target = CACHE / f"wheelhouse-{key}"
    if not target.is_dir():
        work = CACHE / f"wheelhouse-{key}.tmp"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        (work / "constraints.txt").write_text("\n".join(pins) + "\n")
        sh(
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "-w",
            str(work),
            "-c",
            str(work / "constraints.txt"),
            *reqs,
            timeout=900,
        )
        work.rename(target)
    return target


@dataclass
class Cluster:
    """The repository snapshot and the environment its README commands run with."""

    app: Path
    env: dict[str, str]
    timings: dict[str, float]
    simulated: Future[dict[str, list[dict[str, Any]]]]
    files: tuple[str, ...] = ()

    @property
    def docker(self) -> Path:
        """The snapshot's docker/ folder (the README's working directory)."""
        return self.app / "docker"

    def compose(self, *args: str, files: tuple[str, ...], timeout: float = 900) -> str:
        """``docker compose -f <files> <args>`` in docker/."""
        flags = [a for f in files for a in ("-f", f)]
        return sh(
            "docker", "compose", *flags, *args, cwd=self.docker, env=self.env, timeout=timeout
        )

    def up(self, files: tuple[str, ...]) -> None:
        """The README's ``up -d --build --wait`` (unless ``files`` are up already), then prune
        untagged leftovers.
        """
        if files == self.files:
            return
        self.files = files
        start = time.monotonic()
        self.compose("up", "-d", "--build", "--wait", files=files)
        self.timings[f"up {'+'.join(files)}"] = time.monotonic() - start
        prune()

    def submit(self, run_config: str, tls: bool) -> subprocess.Popen[str]:
        """The README's ``dualflower-deploy submit .. --superlink 127.0.0.1:8000 ...``."""
        security = ["--ca", "certs/ca.crt"] if tls else ["--insecure"]
        argv = [
            shutil.which("dualflower-deploy") or "dualflower-deploy",
            "submit",
            "..",
            "--superlink",
            "127.0.0.1:8000",
            *security,
            "-c",
            f"{run_config} output-dir='/app/outputs'",
        ]
        return subprocess.Popen(
            argv,
            cwd=self.docker,
            env=self.env,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )

    def container(self, service: str) -> dict[str, Any]:
        """``docker inspect`` of the service's container."""
        cid = sh(
            "docker",
            "ps",
            "-aq",
            "--filter",
            f"label=com.docker.compose.project={PROJECT}",
            "--filter",
            f"label=com.docker.compose.service={service}",
        ).split()
        assert len(cid) == 1, (service, cid)
        state: dict[str, Any] = json.loads(sh("docker", "inspect", cid[0]))[0]
        return state

    def crash(self, service: str) -> int:
        """``kill -9`` the main process of ``service`` (a crash, unlike ``docker kill``);
        return its restart count before.
        """
        state = self.container(service)
        os.kill(int(state["State"]["Pid"]), signal.SIGKILL)
        return int(state["RestartCount"])

    def wait_restarted(self, service: str, before: int, healthy: bool, limit: float) -> None:
        """Until the restart policy has brought ``service`` back (and healthy)."""
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            state = self.container(service)
            running = state["RestartCount"] > before and state["State"]["Running"]
            health = state["State"].get("Health", {}).get("Status", "healthy")
            if running and (health == "healthy" or not healthy):
                return
            time.sleep(0.5)
        pytest.fail(f"{service} was not restarted: {state['State']}")

    def outputs(self, run: str) -> Path:
        """The run directory on the host (bind-mounted ./outputs)."""
        return self.docker / "outputs" / run


def finish(proc: subprocess.Popen[str], limit: float = 400) -> tuple[int, str]:
    """Exit code and output of a submission."""
    try:
        out, _ = proc.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        return -1, out
    return proc.returncode, out


def wait_rounds(cluster: Cluster, run: str, rounds: int, proc: subprocess.Popen[str]) -> None:
    """Until ``rounds`` rows of the run's metrics.jsonl are written."""
    metrics = cluster.outputs(run) / "metrics.jsonl"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= rounds:
            return
        time.sleep(0.2)
    pytest.fail(f"{run}: round {rounds} not recorded\n{finish(proc, 5)[1][-3000:]}")


def round_time(rows: list[dict[str, Any]]) -> float:
    """Mean wall time of the training rounds."""
    times = [r["wall-time"] for r in rows if r["round"] > 0]
    return sum(times) / len(times)


def strip(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k != "wall-time"} for r in rows]


def standin_key() -> str:
    """The stand-in's recipe key (its image label)."""
    return digest((ROOT / "docker" / "standin.Dockerfile").read_bytes(), DEBIAN)


def make_rootfs(work: Path) -> Path | None:
    """A Debian bookworm root file system with Python 3.11 as a tar archive (``debootstrap
    --variant=minbase``), or None when the daemon has the stand-in for this recipe already.
    """
    if image_label(STANDIN) == standin_key():
        return None
    rootfs = work / "rootfs"
    sh(
        "debootstrap",
        "--variant=minbase",
        "--include=python3,python3-venv,ca-certificates",
        "bookworm",
        str(rootfs),
        DEBIAN,
        timeout=900,
    )
    skip = (
        "./var/cache/apt/archives/",
        "./usr/share/doc/",
        "./usr/share/man/",
        "./usr/share/locale/",
    )
    archive = work / "rootfs.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(rootfs, arcname=".", filter=lambda t: None if t.name.startswith(skip) else t)
    shutil.rmtree(rootfs)
    return archive


def build_standin(archive: Path, find_links: str) -> None:
    """Flower's base image, offline: ``docker import`` of the root file system, then the
    stand-in Dockerfile (flwr from the wheelhouse), labelled with its recipe key.
    """
    sh("docker", "import", str(archive), ROOTFS)
    archive.unlink()
    empty = archive.parent / "context"
    empty.mkdir()
    sh(
        "docker",
        "build",
        "-q",
        "--network",
        "host",
        "--label",
        f"{LABEL}={standin_key()}",
        "--build-arg",
        f"ROOTFS={ROOTFS}",
        "--build-arg",
        "PIP_NO_INDEX=1",
        "--build-arg",
        f"PIP_FIND_LINKS={find_links}",
        "-f",
        str(ROOT / "docker" / "standin.Dockerfile"),
        "-t",
        STANDIN,
        str(empty),
    )
    prune()


def wait_port(port: int, limit: float = 20) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 1).close()
            return
        except OSError:
            time.sleep(0.1)
    pytest.fail(f"nothing listens on 127.0.0.1:{port}")


SIMULATED = {
    "fedavg": f"algorithm='fedavg' num-server-rounds=2 {TRAIN}",
    "fedapm": f"algorithm='fedapm' num-server-rounds=2 {TRAIN}",
}
"""The runs compared with the simulation engine (simulated in the background meanwhile)."""


def simulate(app: Path, out: Path, timings: dict[str, float]) -> dict[str, list[dict[str, Any]]]:
    """The ``SIMULATED`` runs on Flower's simulation engine (3 simulated SuperNodes), via the
    README's ``dualflower-run``, one after the other (they share the app's FLWR_HOME).
    """
    rows = {}
    for name, run_config in SIMULATED.items():
        start = time.monotonic()
        sh(
            shutil.which("dualflower-run") or "dualflower-run",
            str(app),
            "--num-supernodes",
            "3",
            "-c",
            f"{run_config} output-dir='{out}' run-name='{name}'",
            cwd=app,
            timeout=600,
        )
        timings[f"simulation {name}"] = time.monotonic() - start
        rows[name] = read_metrics(out / name)
    return rows


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    CACHE.mkdir(parents=True, exist_ok=True)
    with (CACHE / "lock").open("w") as lock:  # one cluster per daemon: fixed ports and names
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield from run_cluster(tmp_path_factory.mktemp("docker"))


def run_cluster(work: Path) -> Iterator[Cluster]:
    """Snapshot, images, wheelhouse server and background simulations; the stack is taken
    down afterwards.
    """
    app = work / "app"
    shutil.copytree(ROOT, app, ignore=SNAPSHOT_IGNORE)
    plugins = app / "docker" / ".docker-config" / "cli-plugins"
    plugins.mkdir(parents=True, exist_ok=True)
    (plugins / "docker-compose").symlink_to(compose_binary())
    timings: dict[str, float] = {}
    pool = ThreadPoolExecutor(2)
    simulated = pool.submit(simulate, app, work / "simulated", timings)
    start = time.monotonic()
    rootfs = pool.submit(make_rootfs, work)  # downloads while the wheelhouse is made
    wheels = wheelhouse()
    timings["wheelhouse"] = time.monotonic() - start
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "http.server",
            str(WHEEL_PORT),
            "--bind",
            "127.0.0.1",
            "--directory",
            str(CACHE),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    find_links = f"http://127.0.0.1:{WHEEL_PORT}/{wheels.name}/"
    env = {
        **os.environ,
        "DOCKER_CONFIG": str(app / "docker" / ".docker-config"),
        "COMPOSE_PROJECT_NAME": PROJECT,
        "FLWR_BASE_IMAGE": STANDIN,
        "PIP_NO_INDEX": "1",
        "PIP_FIND_LINKS": find_links,
        "TORCH_VERSION": TORCH[0],
        "TORCHVISION_VERSION": TORCH[1],
        "DUALFLOWER_BUILD_NETWORK": "host",
    }
    c = Cluster(app, env, timings, simulated)
    every = ("compose.yaml", "with-tls.yaml")
    down = ["docker", "compose", *("-f", every[0], "-f", every[1]), "down", "-v", "-t", "3"]
    try:
        sh(*down, cwd=c.docker, env=env, timeout=120)  # leftovers of an interrupted run
        wait_port(WHEEL_PORT)
        archive = rootfs.result()
        if archive is not None:
            build_standin(archive, find_links)
        timings["stand-in"] = time.monotonic() - start
        yield c
    finally:
        subprocess.run(
            down,
            cwd=c.docker,
            env=env,
            capture_output=True,
            check=False,
            timeout=120,
        )
        server.terminate()
        server.wait()
        pool.shutdown(cancel_futures=True)
        sizes = sh("docker", "images", "--format", "{{.Repository}}:{{.Tag}} {{.Size}}")
        print(f"\ndocker cluster timings (s): { {k: round(v, 1) for k, v in c.timings.items()} }")
        print("images:", ", ".join(s for s in sizes.splitlines() if "dualflower" in s))


def test_insecure_fedavg_equals_the_simulation_engine(cluster: Cluster) -> None:
    cluster.up(("compose.yaml",))
    assert not prune(), "untagged leftovers"
    start = time.monotonic()
    code, out = finish(cluster.submit(f"{SIMULATED['fedavg']} run-name='avg'", tls=False))
    cluster.timings["fedavg 2 rounds"] = time.monotonic() - start
    assert code == 0, out[-4000:]
    deployed = read_metrics(cluster.outputs("avg"))
    assert deployed[-1]["round"] == 2
    assert all(r.get("clients", 3) == 3 for r in deployed)
    simulated = cluster.simulated.result()["fedavg"]
    cluster.timings["round: compose"] = round_time(deployed)
    cluster.timings["round: simulation"] = round_time(simulated)
    assert strip(deployed) == strip(simulated)


def test_supernode_killed_mid_run_is_restarted_and_restores_its_state(cluster: Cluster) -> None:
    cluster.up(("compose.yaml",))
    # six rounds: a restarted node is refused until its predecessor's heartbeat expires
    # (about 60 s) and fused rounds are faster than that; it must be back by the last round
    rounds = 6
    run = (
        f"algorithm='fedapm' num-server-rounds={rounds} {TRAIN} round-timeout=120.0 "
        "run-name='kill'"
    )
    proc = cluster.submit(run, tls=False)
    wait_rounds(cluster, "kill", 1, proc)
    time.sleep(1.0)  # round 2 under way
    before = cluster.crash("supernode-2")
    cluster.wait_restarted("supernode-2", before, healthy=False, limit=60)
    code, out = finish(proc)
    assert code == 0, out[-4000:]
    rows = read_metrics(cluster.outputs("kill"))
    assert [r["round"] for r in rows] == list(range(1, rounds + 1))
    assert rows[-1]["clients"] == 3, rows[-1]  # back by the last round
    restores = sh(  # <state-dir>/<run-name>/[<run-id>/]partition-<id>/restores.jsonl
        *("docker", "compose", "exec", "-T", "supernode-2", "find", "/app/state/kill"),
        *("-path", "*partition-1/restores.jsonl", "-exec", "cat", "{}", "+"),
        cwd=cluster.docker,
        env=cluster.env,
    )
    entries = [e for e in map(json.loads, restores.splitlines()) if e.get("file")]
    assert entries, f"the restarted SuperNode restored nothing: {restores}"
    assert all(e["restored-round"] < e["round"] and e["digest"] for e in entries), entries


def test_tls_fedapm_survives_a_superlink_crash_and_resumes_to_the_uninterrupted_metrics(
    cluster: Cluster,
) -> None:
    cluster.up(("compose.yaml", "with-tls.yaml"))
    run = SIMULATED["fedapm"]
    start = time.monotonic()
    proc = cluster.submit(f"{run} run-name='crash'", tls=True)
    wait_rounds(cluster, "crash", 1, proc)
    before = cluster.crash("superlink")
    cluster.wait_restarted("superlink", before, healthy=True, limit=90)
    resume = f"{run} run-name='crash' resume-from='/app/outputs/crash'"
    code, out = finish(cluster.submit(resume, tls=True))
    cluster.timings["fedapm tls: round 1, crash, resume, round 2"] = time.monotonic() - start
    assert code == 0, out[-4000:]
    code, out = finish(proc, 120)  # the first submission follows its run to its end
    assert code != 0 and "finished:completed" not in out, out[-3000:]
    for i in (1, 2, 3):  # the nodes kept their registered keys: none had to restart
        assert cluster.container(f"supernode-{i}")["RestartCount"] == 0
    resumed = read_metrics(cluster.outputs("crash"))
    assert [r["round"] for r in resumed] == [1, 2]  # personalized: no round-0 global row
    assert strip(resumed) == strip(cluster.simulated.result()["fedapm"])
