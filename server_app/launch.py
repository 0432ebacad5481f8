"""``dualflower-run``: ``flwr run`` on a private simulation SuperLink, with an honest exit code.

Why not bare ``flwr run .``: its managed SuperLink installs the app's dependencies with
``uv sync`` at run time (a different torch, and a download), outlives the command, and
``flwr run --stream`` exits 0 even when the run failed. This command starts its own
``flower-superlink --simulation --disable-runtime-dependency-installation`` on a free
loopback port under a private ``FLWR_HOME``, streams the run, checks its final status with
``flwr ls``, stops the SuperLink, and exits non-zero unless the run completed.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

CONNECTION = "dualflower-sim"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_healthy(
    url: str, proc: subprocess.Popen[bytes], log_path: Path, limit: float, context: Any = None
) -> None:
    """Wait until ``url`` (a SuperLink's ``/health``) answers 200; raise if ``proc`` exits or
    ``limit`` seconds pass. ``context`` is an ``ssl.SSLContext`` for a TLS SuperLink.
    """
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"flower-superlink exited with code {proc.returncode}; see {log_path}"
            )
        try:
            with urllib.request.urlopen(url, timeout=1, context=context) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"flower-superlink did not become healthy within {limit}s; see {log_path}")


def run_status(env: dict[str, str], connection: str = CONNECTION) -> str:
    """Status of the newest run on ``connection`` (e.g. ``finished:completed``)."""
    out = subprocess.run(
        ["flwr", "ls", connection, "--format", "json"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    runs = json.loads(out[out.index("{") :]).get("runs", []) if "{" in out else []
    if not runs:
        return "no run"
    newest = max(runs, key=lambda r: r.get("pending-at", ""))
    return f"{newest['status']} {newest.get('status-details', '')}".strip()


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run the app on a private simulation SuperLink, return 0 iff completed."""
    parser = argparse.ArgumentParser(prog="dualflower-run", description=__doc__.split("\n")[0])
    parser.add_argument("app", nargs="?", default=".", help="app directory (default: .)")
    parser.add_argument(
        "--run-config", "-c", default="", help="overrides, e.g. \"algorithm='fedprox'\""
    )
    parser.add_argument("--num-supernodes", type=int, default=20, help="simulated clients (20)")
    parser.add_argument("--federation-config", default="", help="extra simulation options")
    parser.add_argument("--flwr-home", default="", help="FLWR_HOME to use (default: <app>/.flwr)")
    parser.add_argument("--startup-timeout", type=float, default=60.0)
    args = parser.parse_args(argv)

    app = Path(args.app).resolve()
    home = Path(args.flwr_home).resolve() if args.flwr_home else app / ".flwr"
    home.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
        f'address = "127.0.0.1:{port}"\ninsecure = true\n'
    )
    env = {
        **os.environ,
        "FLWR_HOME": str(home),
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    }
    log_path = home / "superlink.log"
    with log_path.open("wb") as log_file:
        superlink = subprocess.Popen(
            [
                "flower-superlink",
                "--insecure",
                "--simulation",
                "--isolation",
                "subprocess",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--disable-runtime-dependency-installation",
            ],
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    print(
        f"dualflower-run: SuperLink pid {superlink.pid} on 127.0.0.1:{port}, log {log_path}",
        flush=True,
    )
    try:
        wait_healthy(
            f"http://127.0.0.1:{port}/health", superlink, log_path, args.startup_timeout
        )
        fed = f"num-supernodes={args.num_supernodes} {args.federation_config}".strip()
        cmd = ["flwr", "run", str(app), CONNECTION, "--stream", "--federation-config", fed]
        if args.run_config:
            cmd += ["--run-config", args.run_config]
        submitted = subprocess.run(cmd, env=env, check=False).returncode
        status = run_status(env)
    finally:
        os.killpg(superlink.pid, signal.SIGTERM)
        try:
            superlink.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(superlink.pid, signal.SIGKILL)
            superlink.wait()
    if submitted != 0 or not status.startswith("finished:completed"):
        print(
            f"dualflower-run: the run did not complete (status: {status}); "
            f"SuperLink log: {log_path}",
            file=sys.stderr,
        )
        return 1
    print(f"dualflower-run: run completed ({status})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
