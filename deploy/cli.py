r"""``dualflower-deploy``: run dualflower on SuperLink + SuperNodes on separate machines.

    dualflower-deploy certs --out certs --keys keys --nodes 3 --name IP:10.0.0.5
    dualflower-deploy superlink --certs certs                          # on the server
    dualflower-deploy register --superlink 127.0.0.1:8000 --ca certs/ca.crt --keys keys --nodes 3
    dualflower-deploy supernode --index 1 --num-partitions 3 --superlink 10.0.0.5 \\
        --certs certs --keys keys --data /data --state /var/lib/dualflower   # on each client
    dualflower-deploy submit --superlink 127.0.0.1:8000 --ca certs/ca.crt -c "num-server-rounds=5"
    dualflower-deploy compose --out docker                             # regenerate compose files

TLS and SuperNode authentication are on unless ``--insecure`` is given (local experiments).
The component commands come from ``deploy.cluster``, as do the compose files.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from deploy.certs import make_node_key, make_tls
from deploy.cluster import (
    APP_PORT,
    CONTROL_PORT,
    FLEET_PORT,
    POLL_ENV,
    POLL_INTERVAL,
    SUPERNODE,
    Layout,
    node_name,
    superlink_command,
    supernode_command,
)
from deploy.compose import write_compose_files
from deploy.supernode_entry import check_interval

CONNECTION = "dualflower"
STARTED = re.compile(r"Successfully started run (\d+)")


def write_connection(home: Path, address: str, ca: str | None) -> dict[str, str]:
    """Point the ``flwr`` CLI's connection ``CONNECTION`` at a SuperLink's HTTP port; return
    the environment that selects this ``FLWR_HOME``.
    """
    home.mkdir(parents=True, exist_ok=True)
    security = f'root-certificates = "{Path(ca).resolve()}"' if ca else "insecure = true"
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
        f'address = "{address}"\n{security}\n'
    )
    return {**os.environ, "FLWR_HOME": str(home.resolve())}


def register_keys(env: dict[str, str], keys: Path, num_nodes: int, wait: float) -> list[str]:
    """Register ``supernode-1.pub`` .. ``supernode-N.pub``; a key already registered counts as
    done. Retries while the SuperLink is still starting (up to ``wait`` seconds).
    """
    done = []
    deadline = time.monotonic() + wait
    for index in range(1, num_nodes + 1):
        public = keys / f"{node_name(index)}.pub"
        if not public.exists():
            raise FileNotFoundError(f"{public} not found: run `dualflower-deploy certs` first")
        while True:
            out = subprocess.run(
                ["flwr", "supernode", "register", str(public), CONNECTION, "--format", "json"],
                env=env,
                capture_output=True,
                text=True,
                check=False,
            ).stdout
            reply = json.loads(out[out.index("{") :]) if "{" in out else {}
            message = str(reply.get("error-message", out.strip()))
            if reply.get("success") or "already in use" in message:
                done.append(node_name(index))
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"could not register {public}: {message}")
            time.sleep(1.0)
    return done


def run_status(env: dict[str, str], run_id: int) -> str:
    """Status of run ``run_id`` (e.g. ``finished:completed``); '' when the SuperLink does not
    answer.
    """
    out = subprocess.run(
        ["flwr", "ls", CONNECTION, "--run-id", str(run_id), "--format", "json"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    reply = json.loads(out[out.index("{") :]) if "{" in out else {}
    runs = reply.get("runs", [])
    if not runs:
        return ""
    return f"{runs[0]['status']} {runs[0].get('status-details', '')}".strip()


def submit_run(env: dict[str, str], command: list[str], wait: float) -> str:
    """Run ``flwr run --stream`` (its output passed through) and return the final status of
    the run it started ('' when none started). A log stream that breaks while the run goes on
    is re-attached (``flwr log``); the run counts as lost once the SuperLink has not answered
    for ``wait`` seconds.
    """
    run_id = None
    with subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            print(line, end="", flush=True)
            started = STARTED.search(line)
            run_id = int(started.group(1)) if started and run_id is None else run_id
    if run_id is None:
        return ""
    silent_since = None
    while not (status := run_status(env, run_id)).startswith("finished"):
        if status:
            silent_since = None
            subprocess.run(["flwr", "log", str(run_id), CONNECTION], env=env, check=False)
            time.sleep(1.0)
            continue
        silent_since = silent_since or time.monotonic()
        if time.monotonic() - silent_since > wait:
            return f"unknown: the SuperLink did not answer for {wait:.0f} s"
        time.sleep(2.0)
    return status


def _layout(args: argparse.Namespace, **extra: Any) -> Layout:
    secure = not args.insecure
    return Layout(
        tls=secure,
        auth=secure and not getattr(args, "no_auth", False),
        certs=str(Path(args.certs).resolve()) if getattr(args, "certs", None) else "",
        keys=str(Path(args.keys).resolve()) if getattr(args, "keys", None) else "",
        isolation=args.isolation,
        **extra,
    )


def _exec(program: str, argv: list[str], env: dict[str, str] | None = None) -> int:
    print(f"dualflower-deploy: {program} {' '.join(argv)}", flush=True)
    os.execvpe(program, [program, *argv], env or dict(os.environ))


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the sub-command and run it; return the process exit code."""
    parser = argparse.ArgumentParser(prog="dualflower-deploy", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    certs = sub.add_parser("certs", help="CA, SuperLink certificate, SuperNode keys")
    certs.add_argument("--out", required=True, help="directory for ca.crt, server.pem/.key")
    certs.add_argument("--keys", default="", help="directory for SuperNode key pairs")
    certs.add_argument("--nodes", type=int, default=0, help="number of SuperNode key pairs")
    certs.add_argument(
        "--name", action="append", default=[], help="SAN entry: DNS:<host> or IP:<address>"
    )
    certs.add_argument("--ca-dir", default="", help="directory for ca.key (default: --out)")
    certs.add_argument(
        "--node-key-dirs",
        nargs="*",
        default=[],
        help="one directory per SuperNode for its private key (default: --keys)",
    )

    def security(p: argparse.ArgumentParser) -> None:
        p.add_argument("--insecure", action="store_true", help="no TLS (local use only)")
        p.add_argument("--isolation", default="subprocess", choices=("subprocess", "process"))
        p.add_argument("--certs", default="", help="directory made by `certs`")

    link = sub.add_parser("superlink", help="start the SuperLink (TLS + node auth by default)")
    security(link)
    link.add_argument("--no-auth", action="store_true", help="TLS without node authentication")
    link.add_argument("--listen", default="127.0.0.1", help="interface of the HTTP port 8000")
    link.add_argument("--database", default="", help="SuperLink state file (default: memory)")
    link.add_argument("--port", type=int, default=CONTROL_PORT, help="HTTP port (CLI, ServerApp)")
    link.add_argument("--fleet-port", type=int, default=FLEET_PORT, help="gRPC Fleet port")

    node = sub.add_parser("supernode", help="start one SuperNode for one partition")
    security(node)
    node.add_argument("--no-auth", action="store_true", help="TLS without node authentication")
    node.add_argument("--index", type=int, required=True, help="1-based: partition index-1")
    node.add_argument("--num-partitions", type=int, required=True)
    node.add_argument("--superlink", required=True, help="SuperLink host name or address")
    node.add_argument("--keys", default="", help="directory with supernode-<index>")
    node.add_argument("--data", required=True, help="data directory (partition cache too)")
    node.add_argument("--state", required=True, help="client state directory")
    node.add_argument("--app-port", type=int, default=APP_PORT, help="local ClientApp API port")
    node.add_argument("--fleet-port", type=int, default=FLEET_PORT, help="SuperLink gRPC port")
    node.add_argument(
        "--poll-interval",
        type=float,
        default=POLL_INTERVAL,
        help="seconds between the node's idle pulls and SuperExec task polls (Flower: 3 and 1)",
    )
    node.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch threads per ClientApp (OMP_NUM_THREADS; default: torch's, all cores); "
        "use 1 when several SuperNodes share a machine",
    )

    reg = sub.add_parser("register", help="register SuperNode public keys with the SuperLink")
    reg.add_argument("--superlink", required=True, help="host:port of the SuperLink HTTP API")
    reg.add_argument("--ca", required=True, help="CA certificate (ca.crt)")
    reg.add_argument("--keys", required=True)
    reg.add_argument("--nodes", type=int, required=True)
    reg.add_argument("--wait", type=float, default=60.0, help="seconds to wait for the SuperLink")
    reg.add_argument("--flwr-home", default=".flwr-deploy")

    submit = sub.add_parser("submit", help="submit a run and wait; exit 0 iff it completed")
    submit.add_argument("app", nargs="?", default=".")
    submit.add_argument("--superlink", required=True, help="host:port of the SuperLink HTTP API")
    submit.add_argument("--ca", default="", help="CA certificate (omit only with --insecure)")
    submit.add_argument("--insecure", action="store_true")
    submit.add_argument("--run-config", "-c", default="")
    submit.add_argument("--flwr-home", default="", help="default: <app>/.flwr-deploy")
    submit.add_argument(
        "--wait", type=float, default=60.0, help="seconds to wait for an unreachable SuperLink"
    )

    compose = sub.add_parser("compose", help="regenerate the docker compose files")
    compose.add_argument("--out", default="docker")
    compose.add_argument("--nodes", type=int, default=3)

    args = parser.parse_args(argv)
    if args.command == "certs":
        paths = make_tls(Path(args.out), args.name, ca_dir=Path(args.ca_dir or args.out))
        keys = Path(args.keys or args.out)
        if args.node_key_dirs and len(args.node_key_dirs) != args.nodes:
            parser.error(f"--node-key-dirs needs {args.nodes} directories (one per SuperNode)")
        for index in range(1, args.nodes + 1):
            private = Path(args.node_key_dirs[index - 1]) if args.node_key_dirs else keys
            make_node_key(private, node_name(index), public_dir=keys)
        print(f"dualflower-deploy: CA {paths['ca']}, SuperLink certificate {paths['cert']}")
        return 0
    if args.command == "superlink":
        layout = _layout(
            args, listen=args.listen, control_port=args.port, fleet_port=args.fleet_port
        )
        extra = ["--database", args.database] if args.database else []
        if args.database:
            Path(args.database).parent.mkdir(parents=True, exist_ok=True)
        return _exec("flower-superlink", [*superlink_command(layout), *extra])
    if args.command == "supernode":
        layout = _layout(
            args,
            superlink=args.superlink,
            data=str(Path(args.data).resolve()),
            state=str(Path(args.state).resolve()),
            fleet_port=args.fleet_port,
        )
        command = supernode_command(layout, args.index, args.num_partitions, args.app_port)
        try:
            check_interval(args.poll_interval, "--poll-interval")
        except ValueError as err:
            parser.error(str(err))
        if args.threads < 0:
            parser.error(f"--threads={args.threads}: use 1 or more (0: torch's default)")
        env = {**os.environ, **{name: str(args.poll_interval) for name in POLL_ENV}}
        if args.threads:
            env["OMP_NUM_THREADS"] = str(args.threads)
        return _exec(sys.executable, [*SUPERNODE[1:], *command], env)
    if args.command == "register":
        env = write_connection(Path(args.flwr_home), args.superlink, args.ca)
        names = register_keys(env, Path(args.keys), args.nodes, args.wait)
        print(f"dualflower-deploy: registered {', '.join(names)}")
        return 0
    if args.command == "submit":
        if not args.ca and not args.insecure:
            parser.error("submit needs --ca <ca.crt> (or --insecure for a local SuperLink)")
        app = Path(args.app).resolve()
        from server_app.config import ConfigError, check_overrides  # torch: only to submit

        try:
            check_overrides(app, args.run_config, local=False)
        except ConfigError as err:
            print(f"dualflower-deploy: {err}", file=sys.stderr)
            return 2
        home = Path(args.flwr_home) if args.flwr_home else app / ".flwr-deploy"
        env = write_connection(home, args.superlink, args.ca or None)
        cmd = ["flwr", "run", str(app), CONNECTION, "--stream"]
        if args.run_config:
            cmd += ["--run-config", args.run_config]
        status = submit_run(env, cmd, args.wait)
        if not status:
            print("dualflower-deploy: submission failed (no run was started)")
            return 1
        print(f"dualflower-deploy: run status {status}")
        return 0 if status.startswith("finished:completed") else 1
    written = write_compose_files(Path(args.out), args.nodes)
    print("dualflower-deploy: wrote " + ", ".join(str(p) for p in written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
