"""``dualflower-run``: ``flwr run`` on a private simulation SuperLink, with an honest exit code.

Why not bare ``flwr run .``: its managed SuperLink installs the app's dependencies with
``uv sync`` at run time (a different torch, and a download), outlives the command, and
``flwr run --stream`` exits 0 even when the run failed. This command starts its own
``flower-superlink --simulation --disable-runtime-dependency-installation`` on a free
loopback port under a private ``FLWR_HOME``, streams the run, checks its final status with
``flwr ls``, stops the SuperLink, and exits non-zero unless the run completed.

Simulation resources: each ClientApp actor gets ``client-resources-num-cpus=1`` unless
``--federation-config`` says otherwise (Flower's default, 2, runs one actor with two torch
threads on a 2-core box; one CPU per actor runs one actor per core, each with one torch thread,
see ``client_app.runtime.torch_threads``). ``check_resources`` refuses CPU and GPU requests
Flower would reject late or obscurely.
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

from flwr.common.config import parse_config_args

CONNECTION = "dualflower-sim"
SIMULATION_DEFAULTS = {"client-resources-num-cpus": 1}
"""Federation options ``dualflower-run`` adds unless ``--federation-config`` sets them."""


class ResourceError(ValueError):
    """A simulation resource option Flower's engine cannot satisfy."""


def check_resources(options: dict[str, Any], cpus: int, gpus: int) -> None:
    """Refuse, naming the key and what is allowed, ``client-resources-num-cpus`` that is not an
    integer in [1, ``cpus``] and ``client-resources-num-gpus`` that is not 0, a fraction in
    (0, 1] (clients sharing one GPU) or a whole number of GPUs, or more than ``gpus``.
    """
    num_cpus = options.get(
        "client-resources-num-cpus", SIMULATION_DEFAULTS["client-resources-num-cpus"]
    )
    if isinstance(num_cpus, bool) or not isinstance(num_cpus, int) or not 1 <= num_cpus <= cpus:
        raise ResourceError(
            f"client-resources-num-cpus={num_cpus!r}: use an integer from 1 to {cpus} "
            "(the CPUs of this machine; Flower refuses fractions)"
        )
    num_gpus = options.get("client-resources-num-gpus", 0)
    if isinstance(num_gpus, bool) or not isinstance(num_gpus, int | float):
        raise ResourceError(f"client-resources-num-gpus={num_gpus!r}: use a number")
    if num_gpus == 0:
        return
    if not (0 < num_gpus <= 1 or (float(num_gpus).is_integer() and num_gpus >= 1)):
        raise ResourceError(
            f"client-resources-num-gpus={num_gpus!r}: use 0 (no GPU), a fraction in (0, 1] "
            "(the GPU share of one client) or a whole number >= 1 (GPUs per client)"
        )
    if num_gpus > gpus:
        raise ResourceError(
            f"client-resources-num-gpus={num_gpus!r}: this machine has {gpus} CUDA GPU(s); "
            "use 0 without a GPU"
        )


def cuda_devices() -> int:
    """Number of CUDA devices torch sees (imports torch: call only when GPUs are asked for)."""
    import torch

    return int(torch.cuda.device_count()) if torch.cuda.is_available() else 0


def federation_config(num_supernodes: int, extra: str) -> str:
    """The ``--federation-config`` string: ``num-supernodes``, ``SIMULATION_DEFAULTS`` for keys
    ``extra`` does not set, then ``extra``; checked by ``check_resources``.
    """
    options = parse_config_args([extra])
    gpus = cuda_devices() if options.get("client-resources-num-gpus") else 0
    check_resources(options, os.cpu_count() or 1, gpus)
    defaults = [f"{k}={v}" for k, v in SIMULATION_DEFAULTS.items() if k not in options]
    return " ".join([f"num-supernodes={num_supernodes}", *defaults, extra]).strip()


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
    parser.add_argument(
        "--federation-config",
        default="",
        help="simulation options, e.g. 'client-resources-num-gpus=0.5' "
        "(client-resources-num-cpus=1 unless set)",
    )
    parser.add_argument("--flwr-home", default="", help="FLWR_HOME to use (default: <app>/.flwr)")
    parser.add_argument("--startup-timeout", type=float, default=60.0)
    args = parser.parse_args(argv)
    try:
        fed = federation_config(args.num_supernodes, args.federation_config)
    except ValueError as err:  # ResourceError, or options Flower's parser cannot read
        parser.error(f"--federation-config: {err}")

    app = Path(args.app).resolve()
    from server_app.config import ConfigError, check_overrides  # methods and torch: late

    try:
        check_overrides(app, args.run_config)
    except ConfigError as err:
        print(f"dualflower-run: {err}", file=sys.stderr)
        return 2
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
        wait_healthy(f"http://127.0.0.1:{port}/health", superlink, log_path, args.startup_timeout)
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
