"""Simulation resources: dualflower-run gives each ClientApp actor one CPU by default, refuses
CPU/GPU requests the engine cannot satisfy (naming the key), and the ClientApp sets torch's
threads from the CPUs it was given."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from client_app.runtime import cpu_budget
from server_app import launch
from server_app.launch import ResourceError, check_resources, federation_config


def test_one_cpu_per_actor_unless_the_user_says_otherwise() -> None:
    assert federation_config(20, "") == "num-supernodes=20 client-resources-num-cpus=1"
    mine = federation_config(3, 'client-resources-num-cpus=2 init-args-logging-level="ERROR"')
    assert mine.count("client-resources-num-cpus") == 1 and "num-cpus=2" in mine


@pytest.mark.parametrize(
    "options",
    [
        {"client-resources-num-gpus": 0},
        {"client-resources-num-gpus": 0.25},
        {"client-resources-num-gpus": 1},
        {"client-resources-num-gpus": 2.0},
        {"client-resources-num-cpus": 2, "client-resources-num-gpus": 0.5},
    ],
)
def test_valid_resources_pass(options: dict[str, object]) -> None:
    check_resources(options, cpus=2, gpus=2)


@pytest.mark.parametrize(
    ("options", "gpus", "message"),
    [
        ({"client-resources-num-cpus": 0.5}, 2, r"client-resources-num-cpus=0\.5: .*integer"),
        ({"client-resources-num-cpus": 0}, 2, "client-resources-num-cpus=0"),
        ({"client-resources-num-cpus": 3}, 2, "from 1 to 2"),
        ({"client-resources-num-gpus": -0.5}, 2, r"num-gpus=-0\.5: use 0 .*fraction in \(0, 1\]"),
        ({"client-resources-num-gpus": 1.5}, 2, r"num-gpus=1\.5: .*whole number"),
        ({"client-resources-num-gpus": "half"}, 2, "num-gpus='half': use a number"),
        ({"client-resources-num-gpus": 3}, 2, "has 2 CUDA GPU"),
        ({"client-resources-num-gpus": 0.5}, 0, "has 0 CUDA GPU"),
    ],
)
def test_bad_resources_are_refused_naming_the_key(
    options: dict[str, object], gpus: int, message: str
) -> None:
    with pytest.raises(ResourceError, match=message):
        check_resources(options, cpus=2, gpus=gpus)


def test_launcher_refuses_before_starting_anything(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(launch, "cuda_devices", lambda: 0)
    monkeypatch.setattr(launch.subprocess, "Popen", None)  # would fail if reached
    with pytest.raises(SystemExit) as done:
        launch.main([".", "--federation-config", "client-resources-num-gpus=0.5"])
    assert done.value.code == 2
    assert "client-resources-num-gpus=0.5" in capsys.readouterr().err


def test_cpu_budget_follows_omp_num_threads_capped_by_affinity(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cpus = len(os.sched_getaffinity(0))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert cpu_budget() == 1
    monkeypatch.setenv("OMP_NUM_THREADS", str(cpus + 7))
    assert cpu_budget() == cpus


@pytest.mark.parametrize("omp", ["1", ""])
def test_clientapp_process_sets_torch_threads(omp: str) -> None:
    code = (
        "import torch; from client_app.runtime import torch_threads; "
        "n = torch_threads(); print(n, torch.get_num_threads())"
    )
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    env.update({"OMP_NUM_THREADS": omp} if omp else {})
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout.split()
    expected = 1 if omp else min(len(os.sched_getaffinity(0)), int(out[1]))
    assert out == [str(expected), str(expected)]


def test_shared_host_supernodes_use_one_thread_like_simulation_actors(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from deploy import cli
    from tests.compose_files import merged

    services = merged(("compose.yaml", "with-process.yaml"))["services"]
    for name in ("supernode-1", "superexec-clientapp-1"):  # where the ClientApps run
        assert services[name]["environment"]["OMP_NUM_THREADS"] == "1", name
    calls: list[dict[str, str]] = []
    monkeypatch.setattr(cli.os, "execvpe", lambda _p, _a, env: calls.append(env))
    node = ["supernode", "--insecure", "--index", "1", "--num-partitions", "2"]
    node += ["--superlink", "x", "--data", "d", "--state", "s"]
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    cli.main(node)
    cli.main([*node, "--threads", "1"])
    assert "OMP_NUM_THREADS" not in calls[0] and calls[1]["OMP_NUM_THREADS"] == "1"
