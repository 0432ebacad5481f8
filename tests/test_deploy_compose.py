"""docker/: compose files are current, valid for Compose v2, and run the app's real commands."""

from __future__ import annotations

import argparse
import shlex

import pytest

from deploy.cli import main as deploy_main
from deploy.compose import FILES, render
from tests.compose_files import DOCKER, compose, merged

OVERLAYS = [
    (),
    ("with-tls.yaml",),
    ("with-gpu.yaml",),
    ("with-process.yaml",),
    ("with-tls.yaml", "with-gpu.yaml"),
]


def test_committed_compose_files_are_generated_from_deploy() -> None:
    for name in FILES:
        assert (DOCKER / name).read_text() == render(name, 3), (
            f"docker/{name} is stale: run `dualflower-deploy compose --out docker`"
        )


@pytest.mark.parametrize("overlays", OVERLAYS, ids=lambda o: "+".join(o) or "base")
def test_docker_compose_config_quiet_passes(overlays: tuple[str, ...]) -> None:
    result = compose("config", "-q", files=("compose.yaml", *overlays))
    assert result.returncode == 0, result.stderr


def test_broken_compose_file_is_rejected() -> None:
    (DOCKER / ".broken-test.yaml").write_text("services:\n  superlink:\n    ports: 8000\n")
    try:
        result = compose("config", "-q", files=("compose.yaml", ".broken-test.yaml"))
    finally:
        (DOCKER / ".broken-test.yaml").unlink()
    assert result.returncode != 0


def test_only_the_fleet_port_is_published_beyond_loopback() -> None:
    model = merged(("compose.yaml", "with-tls.yaml"))
    published = {
        (p.get("host_ip", ""), int(p["published"]))
        for svc in model["services"].values()
        for p in svc.get("ports", [])
    }
    assert published == {("127.0.0.1", 8000), ("", 9092)}


def test_service_commands_parse_with_flowers_own_parsers() -> None:
    from flwr.superlink.cli.flower_superlink import _parse_args_run_superlink
    from flwr.supernode.cli.flower_supernode import _parse_args_run_supernode

    parsers: dict[str, argparse.ArgumentParser] = {
        "flower-superlink": _parse_args_run_superlink(),
        "flower-supernode": _parse_args_run_supernode(),
    }
    for files in [("compose.yaml",), ("compose.yaml", "with-tls.yaml")]:
        for name, svc in merged(files)["services"].items():
            program = svc["entrypoint"][0]
            if program in parsers:
                args = parsers[program].parse_args(svc["command"])
                if program == "flower-supernode":
                    assert args.superlink == "superlink:9092", name
                    assert "partition-id=" in args.node_config
                else:
                    assert args.fleet_api_address == "0.0.0.0:9092"
            else:
                assert svc["entrypoint"] == ["python", "-m", "deploy"], name
                with pytest.raises(SystemExit) as done:
                    deploy_main([*svc["command"], "--help"])
                assert done.value.code == 0, shlex.join(svc["command"])


def test_tls_overlay_turns_on_tls_and_auth_everywhere() -> None:
    services = merged(("compose.yaml", "with-tls.yaml"))["services"]
    assert "--insecure" not in services["superlink"]["command"]
    assert "--enable-supernode-auth" in services["superlink"]["command"]
    for i in (1, 2, 3):
        cmd = services[f"supernode-{i}"]["command"]
        assert "--insecure" not in cmd
        assert cmd[cmd.index("--auth-supernode-private-key") + 1] == f"/app/keys/supernode-{i}"
