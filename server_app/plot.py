"""``dualflower-plot``: curves of one or several runs' metrics.jsonl, to one PNG."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

DEFAULT_METRICS = ("global-accuracy", "personal-accuracy", "train-loss")


def load_rows(run_dir: Path) -> list[dict[str, float | None]]:
    """Rows of ``<run_dir>/metrics.jsonl``; FileNotFoundError names the missing file."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: pass a run directory written by a run")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_runs(run_dirs: list[Path], metrics: list[str], out: Path) -> Path:
    """One panel per metric, one line per run (labelled by run name); writes ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = {d.name: load_rows(d) for d in run_dirs}
    fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 3.6), squeeze=False)
    for ax, metric in zip(axes[0], metrics, strict=True):
        for name, rows in runs.items():
            points = [(r["round"], r[metric]) for r in rows if r.get(metric) is not None]
            if points:
                ax.plot(*zip(*points, strict=True), marker=".", label=name)
        ax.set_xlabel("round")
        ax.set_title(metric)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(prog="dualflower-plot", description=__doc__)
    parser.add_argument("runs", nargs="+", type=Path, help="run directories")
    parser.add_argument("--metric", "-m", action="append", help="metric(s) to plot")
    parser.add_argument("--out", "-o", type=Path, default=Path("curves.png"))
    args = parser.parse_args(argv)
    try:
        path = plot_runs(args.runs, args.metric or list(DEFAULT_METRICS), args.out)
    except FileNotFoundError as err:
        print(f"dualflower-plot: {err}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
