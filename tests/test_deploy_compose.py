"""docker/: compose files are current, valid for Compose v2, and run the app's real commands."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path
from typing import Any

import pytest

from deploy import cli
from deploy.cli import main as deploy_main
from deploy.cluster import SUPERNODE
from deploy.compose import DATABASE, FILES, IMAGE, TLS_DATABASE, render
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


def _flower_argv(svc: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """What a ``python -m deploy superlink`` entrypoint execs (``flower-superlink ...``)."""
    calls: list[list[str]] = []
    monkeypatch.setattr(cli.os, "execvpe", lambda _p, argv, _e: calls.append(argv))
    monkeypatch.setattr(cli.Path, "mkdir", lambda *_a, **_k: None)  # --database's folder
    deploy_main([*svc["entrypoint"][3:], *svc["command"]])
    return calls[0]


def test_service_commands_parse_with_flowers_own_parsers(monkeypatch: pytest.MonkeyPatch) -> None:
    from flwr.superlink.cli.flower_superlink import _parse_args_run_superlink
    from flwr.supernode.cli.flower_supernode import _parse_args_run_supernode

    parsers: dict[str, argparse.ArgumentParser] = {
        "flower-superlink": _parse_args_run_superlink(),
        "flower-supernode": _parse_args_run_supernode(),
    }
    for files in [("compose.yaml",), ("compose.yaml", "with-tls.yaml")]:
        for name, svc in merged(files)["services"].items():
            program = svc["entrypoint"][0]
            if svc["entrypoint"] == ["python", "-m", "deploy", "superlink"]:
                argv = _flower_argv(svc, monkeypatch)
                args = parsers[argv[0]].parse_args(argv[1:])
                assert args.fleet_api_address == "0.0.0.0:9092"
                assert args.database == (TLS_DATABASE if "with-tls.yaml" in files else DATABASE)
            elif svc["entrypoint"] == SUPERNODE:  # flower-supernode behind a short idle poll
                args = parsers["flower-supernode"].parse_args(svc["command"])
                assert args.superlink == "superlink:9092", name
                assert "partition-id=" in args.node_config
            elif program == "sh":
                assert name == "init" and svc["user"] == "0:0"
            else:
                assert svc["entrypoint"] == ["python", "-m", "deploy"], name
                with pytest.raises(SystemExit) as done:
                    deploy_main([*svc["command"], "--help"])
                assert done.value.code == 0, shlex.join(svc["command"])


@pytest.mark.parametrize("overlays", OVERLAYS, ids=lambda o: "+".join(o) or "base")
def test_one_image_built_once_and_never_pulled(overlays: tuple[str, ...]) -> None:
    services = merged(("compose.yaml", *overlays))["services"]
    builders = [name for name, svc in services.items() if "build" in svc]
    assert builders == (
        ["superlink", "supernode-1"] if "with-gpu.yaml" in overlays else ["superlink"]
    )
    for name, svc in services.items():
        assert svc["image"].startswith(IMAGE), name
        assert "build" in svc or svc["pull_policy"] == "never", name


def test_bind_mounts_are_handed_to_flowers_user_before_any_service_starts() -> None:
    services = merged(("compose.yaml", "with-tls.yaml"))["services"]
    init = services.pop("init")
    script = init["command"][-1]
    owned = {v["target"]: v["source"] for v in init["volumes"]}
    assert all(f"{t}" in script for t in owned), script
    for name, svc in services.items():
        for volume in svc.get("volumes", []):
            if volume["type"] == "bind" or volume["source"] in ("ca", "key-1"):
                assert volume["source"] in owned.values(), (name, volume)
        waits: set[str] = set(svc.get("depends_on", {}))
        while waits and "init" not in waits:  # transitively after init
            waits = {d for w in waits for d in services[w].get("depends_on", {})}
        assert "init" in waits, name


def test_each_supernode_mounts_only_its_own_key_and_ca_key_stays_with_certs() -> None:
    services = merged(("compose.yaml", "with-tls.yaml"))["services"]
    for i in (1, 2, 3):
        mounts = {v["target"]: v["source"] for v in services[f"supernode-{i}"]["volumes"]}
        assert mounts["/app/keys"] == f"key-{i}"
        assert not any(s.startswith("key-") and s != f"key-{i}" for s in mounts.values())
    holders = {
        name
        for name, svc in services.items()
        for v in svc.get("volumes", [])
        if v["source"] == "ca" or (v["source"].endswith("/keys") and not v.get("read_only"))
    }
    assert holders == {"init", "certs"}
    certs = services["certs"]["command"]
    assert certs[certs.index("--ca-dir") + 1] == "/app/ca"


def test_superlink_is_healthchecked_keeps_its_state_and_everything_restarts_after_a_crash() -> None:
    for files in [("compose.yaml",), ("compose.yaml", "with-tls.yaml")]:
        services = merged(files)["services"]
        link = services["superlink"]
        assert "socket.create_connection" in " ".join(link["healthcheck"]["test"])
        volumes = {v["target"]: v for v in link["volumes"]}
        assert volumes[str(Path(DATABASE).parent)]["type"] == "volume"
        for name, svc in services.items():
            if name.startswith("supernode-"):
                assert svc["depends_on"]["superlink"]["condition"] == "service_healthy"
            if name in ("init", "certs", "register"):
                assert "restart" not in svc, name
            else:
                assert svc["restart"] == "unless-stopped", name


def test_build_arguments_default_to_the_public_indexes_and_follow_the_environment() -> None:
    offline = {"FLWR_BASE_IMAGE": "stand-in:1", "PIP_NO_INDEX": "1", "TORCH_VERSION": "2.13.0+cpu"}
    cleared = {k: "" for k in ("FLWR_BASE_IMAGE", "TORCH_INDEX_URL", "DUALFLOWER_BUILD_NETWORK")}
    online = merged(("compose.yaml",), env=cleared)["services"]["superlink"]["build"]
    assert online["args"]["BASE_IMAGE"] == "flwr/supernode:1.39.0-py3.11-ubuntu24.04"
    assert online["args"]["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"
    assert online["args"]["PIP_NO_INDEX"] == "" and online["network"] == "default"
    built = merged(("compose.yaml",), env=offline)["services"]["superlink"]["build"]["args"]
    assert built["BASE_IMAGE"] == "stand-in:1" and built["PIP_NO_INDEX"] == "1"
    assert built["TORCH_VERSION"] == "2.13.0+cpu"


def test_tls_overlay_turns_on_tls_and_auth_everywhere(monkeypatch: pytest.MonkeyPatch) -> None:
    services = merged(("compose.yaml", "with-tls.yaml"))["services"]
    link = _flower_argv(services["superlink"], monkeypatch)
    assert "--insecure" not in link and "--enable-supernode-auth" in link
    for i in (1, 2, 3):
        cmd = services[f"supernode-{i}"]["command"]
        assert "--insecure" not in cmd
        assert cmd[cmd.index("--auth-supernode-private-key") + 1] == f"/app/keys/supernode-{i}"
