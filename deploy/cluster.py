"""The commands that start each component of a deployment: one source of truth for the
``dualflower-deploy`` CLI, the generated ``docker/*.yaml`` compose files and the multi-host test.

Ports (flwr 1.39, FLOWER_NOTES.md §4.1): the SuperNodes reach the SuperLink's Fleet API over
**gRPC** on ``FLEET_PORT``; the ``flwr`` CLI and the ServerApp use the SuperLink's HTTP port
``CONTROL_PORT``; each ClientApp talks HTTP to its own SuperNode on ``APP_PORT`` over loopback.
With subprocess isolation (the default) the apps are children of the SuperLink / SuperNode, so
the only hop between machines that carries model data is the gRPC Fleet link.
"""

from __future__ import annotations

from dataclasses import dataclass

from deploy.certs import CA_CERT, SERVER_CERT, SERVER_KEY

FLEET_PORT = 9092
CONTROL_PORT = 8000
APP_PORT = 9094
POLL_INTERVAL = 0.1
"""Default of both node-side polls (``dualflower-deploy supernode --poll-interval``)."""
POLL_ENV = {
    "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": str(POLL_INTERVAL),
    "DUALFLOWER_SUPERNODE_POLL_INTERVAL": str(POLL_INTERVAL),
}
"""Node-side polls: the SuperExec task poll (Flower's knob, default 1 s) and the SuperNode's
idle pull (hard-coded 3 s in flwr 1.39, capped by ``SUPERNODE``'s entry point)."""
SHARED_HOST_ENV = {**POLL_ENV, "OMP_NUM_THREADS": "1"}
"""Environment of SuperNodes that share one host (the compose cluster): the polls, and one torch
thread per ClientApp process, as ``dualflower-run`` gives each simulation actor one CPU. Torch's
CPU results depend on its thread count in the last bits, so equal thread counts also keep a
deployed run bit-identical to the simulated one."""
SUPERNODE = ["python", "-m", "deploy.supernode_entry"]
"""How a SuperNode starts: Flower's ``flower-supernode`` behind ``deploy/supernode_entry.py``
(same arguments), which shortens its hard-coded idle sleep."""


@dataclass(frozen=True)
class Layout:
    """Where one deployment keeps things and how its components find each other.

    The compose files use the container paths below; on real machines the CLI passes host
    paths. ``superlink`` is the name or address SuperNodes dial (it must be in the SuperLink
    certificate's SAN list when ``tls`` is on).
    """

    superlink: str = "superlink"
    certs: str = "/app/certificates"
    keys: str = "/app/keys"
    data: str = "/app/data"
    state: str = "/app/state"
    tls: bool = True
    auth: bool = True
    isolation: str = "subprocess"
    listen: str = "0.0.0.0"
    """Interface of the SuperLink's HTTP port (0.0.0.0 in containers so the host CLI can reach
    it through the published loopback port; 127.0.0.1 on a bare machine)."""
    control_port: int = CONTROL_PORT
    fleet_port: int = FLEET_PORT

    def __post_init__(self) -> None:
        if self.auth and not self.tls:
            raise ValueError("SuperNode authentication needs TLS: drop --insecure or auth")
        if self.isolation not in ("subprocess", "process"):
            raise ValueError(f"isolation={self.isolation!r}: use 'subprocess' or 'process'")


def node_name(index: int) -> str:
    """Service / key name of the ``index``-th SuperNode (1-based)."""
    return f"supernode-{index}"


def superlink_command(layout: Layout) -> list[str]:
    """``flower-superlink`` arguments: Fleet API (gRPC) on all interfaces, HTTP API on
    ``layout.listen``, TLS + node auth unless insecure, no runtime dependency install.
    """
    args = [
        "--isolation",
        layout.isolation,
        "--host",
        layout.listen,
        "--port",
        str(layout.control_port),
        "--fleet-api-address",
        f"0.0.0.0:{layout.fleet_port}",
        "--fleet-api-type",
        "grpc-rere",
        "--disable-runtime-dependency-installation",
    ]
    if not layout.tls:
        return ["--insecure", *args]
    args += [
        "--ssl-ca-certfile",
        f"{layout.certs}/{CA_CERT}",
        "--ssl-certfile",
        f"{layout.certs}/{SERVER_CERT}",
        "--ssl-keyfile",
        f"{layout.certs}/{SERVER_KEY}",
    ]
    return [*args, "--enable-supernode-auth"] if layout.auth else args


def link_command(layout: Layout, database: str) -> list[str]:
    """``dualflower-deploy superlink`` arguments (the compose SuperLink's entrypoint, which
    execs ``superlink_command``): state in ``database`` (its folder is created), HTTP port on
    ``layout.listen``, certificates from ``layout.certs`` unless insecure.
    """
    args = ["--listen", layout.listen, "--database", database]
    if layout.isolation != "subprocess":
        args += ["--isolation", layout.isolation]
    if not layout.tls:
        return ["--insecure", *args]
    args += ["--certs", layout.certs]
    return args if layout.auth else [*args, "--no-auth"]


def supernode_command(
    layout: Layout, index: int, num_partitions: int, app_port: int = APP_PORT
) -> list[str]:
    """``flower-supernode`` arguments for partition ``index - 1`` of ``num_partitions``: gRPC
    to the SuperLink's Fleet port, its ClientApp API on loopback (``app_port``: give each
    SuperNode on one machine its own), data and state directories in the node config (read by
    the ClientApp), TLS root + auth key unless insecure.
    """
    node_config = (
        f"partition-id={index - 1} num-partitions={num_partitions} "
        f'data-dir="{layout.data}" state-dir="{layout.state}"'
    )
    args = [
        "--superlink",
        f"{layout.superlink}:{layout.fleet_port}",
        "--grpc-rere",
        "--isolation",
        layout.isolation,
        "--host",
        "127.0.0.1" if layout.isolation == "subprocess" else "0.0.0.0",
        "--port",
        str(app_port),
        "--node-config",
        node_config,
    ]
    if not layout.tls:
        return ["--insecure", *args]
    args += ["--root-certificates", f"{layout.certs}/{CA_CERT}"]
    if layout.auth:
        args += ["--auth-supernode-private-key", f"{layout.keys}/{node_name(index)}"]
    return args


def superexec_command(layout: Layout, runtime_api: str) -> list[str]:
    """``flower-superexec`` arguments (process isolation): run the apps of ``runtime_api``."""
    return ["--insecure", "--runtime-api-address", runtime_api]


def certs_command(
    layout: Layout, num_nodes: int, names: list[str], ca_dir: str, node_dirs: list[str]
) -> list[str]:
    """``python -m deploy`` arguments that make the CA (its key in ``ca_dir``), the SuperLink
    certificate for ``names`` and one authentication key pair per SuperNode (private key in
    ``node_dirs[i]``, public key in ``layout.keys``); idempotent.
    """
    args = ["certs", "--out", layout.certs, "--ca-dir", ca_dir, "--keys", layout.keys]
    args += ["--nodes", str(num_nodes)]
    for name in names:
        args += ["--name", name]
    return [*args, "--node-key-dirs", *node_dirs]


def register_command(layout: Layout, num_nodes: int) -> list[str]:
    """``python -m deploy`` arguments that register every SuperNode's public key with the
    SuperLink (idempotent: an already registered key is fine).
    """
    return [
        "register",
        "--superlink",
        f"{layout.superlink}:{layout.control_port}",
        "--ca",
        f"{layout.certs}/{CA_CERT}",
        "--keys",
        layout.keys,
        "--nodes",
        str(num_nodes),
    ]
