"""The real Flower simulation engine, through ``dualflower-run`` (private SuperLink)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from server_app.plot import main as plot_main
from tests.conftest import ROOT, read_metrics

pytestmark = pytest.mark.engine


def launch(tmp_path: Path, run_config: str, nodes: int = 4) -> subprocess.CompletedProcess[str]:
    """Run ``python -m server_app.launch`` with an isolated FLWR_HOME under tmp_path."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "server_app.launch",
            str(ROOT),
            "--num-supernodes",
            str(nodes),
            "--flwr-home",
            str(tmp_path / "flwr-home"),
            "-c",
            run_config,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=400,
        check=False,
    )


def leftover_processes(result: subprocess.CompletedProcess[str]) -> list[str]:
    """Processes still alive in the process group of the SuperLink the launcher started."""
    match = re.search(r"SuperLink pid (\d+)", result.stdout)
    assert match, result.stdout[-2000:]
    out = subprocess.run(
        ["pgrep", "-g", match.group(1)], capture_output=True, text=True, check=False
    ).stdout
    return out.split()


def test_simulation_runs_twice_identically_and_plots(tmp_path: Path) -> None:
    out = tmp_path / "outputs"
    cfg = (
        f"algorithm='fedadmm' num-server-rounds=2 local-epochs=1 fraction-train=0.5 "
        f"output-dir='{out}'"
    )
    first = launch(tmp_path, cfg + " run-name='a'")
    assert first.returncode == 0, first.stderr[-3000:]
    second = launch(tmp_path, cfg + " run-name='b'")
    assert second.returncode == 0, second.stderr[-3000:]
    assert "run completed" in first.stdout
    rows_a, rows_b = read_metrics(out / "a"), read_metrics(out / "b")
    assert [r["round"] for r in rows_a] == [0, 1, 2]
    strip = [{k: v for k, v in r.items() if k != "wall-time"} for r in rows_a]
    assert strip == [{k: v for k, v in r.items() if k != "wall-time"} for r in rows_b]
    assert json.loads((out / "a" / "config.json").read_text())["num-clients"] == 4
    assert rows_a[2]["dual-norm-mean"] > 0
    assert leftover_processes(first) == [] and leftover_processes(second) == []
    png = tmp_path / "curves.png"
    assert plot_main([str(out / "a"), str(out / "b"), "-o", str(png)]) == 0
    assert png.stat().st_size > 10_000


def test_refused_config_exits_2_before_anything_starts(tmp_path: Path) -> None:
    result = launch(tmp_path, f"rho=-1.0 output-dir='{tmp_path / 'o'}'", nodes=2)
    assert result.returncode == 2
    assert "rho=-1.0 is not allowed" in result.stderr
    assert "SuperLink pid" not in result.stdout and not (tmp_path / "o").exists()


def test_failed_run_exits_nonzero(tmp_path: Path) -> None:
    """A run that fails inside the ServerApp (no usable reply) exits 1 and leaves no process."""
    result = launch(
        tmp_path,
        f"lr=1e300 max-failed-rounds=1 num-server-rounds=3 output-dir='{tmp_path / 'o'}'",
        nodes=2,
    )
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-2000:]
    assert "max-failed-rounds=1" in result.stderr + result.stdout
    assert leftover_processes(result) == []


def test_plot_reports_missing_run(tmp_path: Path) -> None:
    assert plot_main([str(tmp_path / "nope"), "-o", str(tmp_path / "x.png")]) == 2


def test_fedapm_every_personalization_mode_on_multimodal_task(tmp_path: Path) -> None:
    """Issue 3: input, output and split-input FedAPM train on `mfeat` through the engine."""
    out = tmp_path / "outputs"
    for mode in ("input", "output", "split-input"):
        result = launch(
            tmp_path,
            f"algorithm='fedapm' task='mfeat' personalization='{mode}' num-server-rounds=2 "
            f"local-epochs=1 fraction-evaluate=1.0 output-dir='{out}' run-name='{mode}'",
            nodes=3,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        rows = read_metrics(out / mode)
        assert rows[-1]["personal-accuracy"] > 0.1 and rows[-1]["dual-norm-mean"] > 0
        config = json.loads((out / mode / "config.json").read_text())
        assert config["personal-parameters"] and config["shared-parameters"]
        assert leftover_processes(result) == []
