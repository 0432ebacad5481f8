"""deploy/supernode_entry.py: the SuperNode's hard-coded 3 s idle sleep is capped, and the pinned
Flower still has that sleep where the entry point patches it."""

from __future__ import annotations

import hashlib
import inspect
import subprocess
import sys
import time
from importlib.metadata import entry_points, version

import pytest

from deploy import supernode_entry as entry

LOOP_SHA256 = "bb3df95a5f63b9849fef3ba5fac74c1d01677207e268c37d6895fb6d14399eff"
"""sha256 of the source of flwr 1.39.0's ``start_client_internal``: a change of Flower's loop
(even one the bytecode check misses) fails here, so the patch is re-read before a Flower bump."""


def test_pinned_flower_loop_sleeps_three_seconds_through_module_time() -> None:
    assert version("flwr") == "1.39.0"
    module = entry.loop_module()
    assert module.__dict__["time"] is time  # `import time`, not `from time import sleep`
    assert entry.idle_sleep_is_patchable(module)
    source = inspect.getsource(module.start_client_internal)
    assert source.count("time.sleep(3)") == 1
    assert hashlib.sha256(source.encode()).hexdigest() == LOOP_SHA256


def test_flower_supernode_script_runs_the_patched_loop() -> None:
    (script,) = entry_points(group="console_scripts", name=entry.SCRIPT)
    assert script.value == "flwr.supernode.cli:flower_supernode"
    runner = inspect.getsource(script.load())
    assert "start_client_internal(" in runner


def test_install_caps_only_that_modules_sleep(monkeypatch: pytest.MonkeyPatch) -> None:
    module = entry.loop_module()
    monkeypatch.setattr(module, "time", time)
    assert entry.install(0.02)
    start = time.monotonic()
    module.time.sleep(3)
    assert time.monotonic() - start < 1.0
    assert module.time.monotonic is time.monotonic  # everything else is the real module
    assert time.sleep is not module.time.sleep and sys.modules["time"] is time
    assert entry.idle_sleep_is_patchable(module)  # a second install still recognises it


def test_interval_setting_default_and_bounds() -> None:
    assert entry.interval_from_env({}) == entry.DEFAULT_INTERVAL == 0.1
    assert entry.interval_from_env({entry.ENV: "0.5"}) == 0.5
    for bad in ("0", "5", "abc", "nan"):
        with pytest.raises(ValueError, match=entry.ENV):
            entry.interval_from_env({entry.ENV: bad})


def test_main_patches_then_runs_flowers_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    module = entry.loop_module()
    monkeypatch.setattr(module, "time", time)
    monkeypatch.setenv(entry.ENV, "0.25")
    monkeypatch.setattr(sys, "argv", ["x", "--insecure"])
    seen: list[float] = []
    entry.main(lambda: seen.append(module.time.interval))
    assert seen == [0.25] and sys.argv[0] == "flower-supernode"


def test_module_runs_flowers_argument_parser() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "deploy.supernode_entry", "--help"],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert out.returncode == 0 and "--superlink" in out.stdout


def test_cli_refuses_interval_out_of_range(capsys: pytest.CaptureFixture[str]) -> None:
    from deploy import cli

    with pytest.raises(SystemExit):
        cli.main(
            [
                "supernode",
                "--insecure",
                "--index",
                "1",
                "--num-partitions",
                "1",
                "--superlink",
                "x",
                "--data",
                "d",
                "--state",
                "s",
                "--poll-interval",
                "10",
            ]
        )
    assert "--poll-interval=10.0" in capsys.readouterr().err
