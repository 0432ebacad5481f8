"""FedAPM against the (personalized) baselines on the same runner and partitions.

Every algorithm runs the real ServerApp and ClientApp code on the in-process grid
(`server_app.inprocess`), with the same seeds, partitions and local work. Prints a markdown
table (mean ± std over seeds of final and best personalized accuracy, macro-F1, AUC, rounds to
a target accuracy, bytes per round) and writes a PNG of the mean curves.

    python -m benchmarks.personalization.run [--rounds 30 --seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import statistics
import tempfile
import time
import tomllib
from pathlib import Path
from typing import Any

from client_app.app import app as client_app
from server_app.app import run_federation
from server_app.inprocess import InProcessGrid

ROOT = Path(__file__).resolve().parents[2]
ALGORITHMS = {
    "fedapm": {"algorithm": "fedapm", "personalization": "output"},
    "fedavg": {"algorithm": "fedavg"},
    "fedprox": {"algorithm": "fedprox", "proximal-mu": 0.01},
    "fedadmm": {"algorithm": "fedadmm"},
    "fedper": {"algorithm": "fedper", "personalization": "output"},
    "fedrep": {"algorithm": "fedrep", "personalization": "output"},
    "fedalt": {"algorithm": "fedalt", "personalization": "output"},
    "ditto": {"algorithm": "ditto"},
    "feddyn": {"algorithm": "feddyn"},
}
SCENARIOS: dict[str, dict[str, Any]] = {
    "digits-dir0.1": {
        "task": "digits",
        "partitioner": "dirichlet",
        "dirichlet-alpha": 0.1,
        "fraction-train": 0.5,
        "clients": 20,
        "target": 0.9,
    },
    "mfeat": {
        "task": "mfeat",
        "partitioner": "dirichlet",
        "dirichlet-alpha": 0.5,
        "fraction-train": 0.5,
        "clients": 20,
        "target": 0.9,
    },
}
METRICS = ("personal-accuracy", "personal-macro-f1", "personal-auc")


@functools.cache
def defaults() -> dict[str, Any]:
    """The run-config defaults of pyproject.toml, read once (a consistent snapshot)."""
    with (ROOT / "pyproject.toml").open("rb") as fh:
        return dict(tomllib.load(fh)["tool"]["flwr"]["app"]["config"])


def run_one(
    scenario: dict[str, Any], algo: dict[str, Any], seed: int, rounds: int, out: Path
) -> list[dict[str, Any]]:
    """One run; returns its metrics.jsonl rows."""
    cfg = dict(defaults()) | {k: v for k, v in scenario.items() if k not in ("clients", "target")}
    cfg |= algo | {
        "seed": seed,
        "num-server-rounds": rounds,
        "output-dir": str(out),
        "run-name": f"{algo['algorithm']}-{algo.get('personalization', 'none')}-{seed}",
    }
    run_dir = run_federation(InProcessGrid(client_app, scenario["clients"]), cfg)
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def summarize(runs: list[list[dict[str, Any]]], target: float) -> dict[str, str]:
    """Mean ± std over seeds of the table's columns."""

    def stat(values: list[float]) -> str:
        values = [v for v in values if v is not None and math.isfinite(v)]
        if not values:
            return "n/a"
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{statistics.mean(values):.3f} ± {sd:.3f}"

    row: dict[str, str] = {}
    for key in METRICS:
        short = key.removeprefix("personal-")
        row[f"final {short}"] = stat([r[-1].get(key) for r in runs])
        row[f"best {short}"] = stat([max((x.get(key) or 0.0) for x in r[1:]) for r in runs])
    reach = [
        next((x["round"] for x in r[1:] if (x.get("personal-accuracy") or 0) >= target), None)
        for r in runs
    ]
    hit = [x for x in reach if x is not None]
    row[f"rounds to {target:.0%}"] = (
        f"{statistics.mean(hit):.1f} ({len(hit)}/{len(runs)})" if hit else f"— (0/{len(runs)})"
    )
    row["MB/round"] = (
        f"{statistics.mean(x['bytes-up'] + x['bytes-down'] for r in runs for x in r[1:]) / 1e6:.2f}"
    )
    return row


def plot(curves: dict[str, dict[str, list[list[dict[str, Any]]]]], path: Path) -> None:
    """Mean personalized accuracy per round, one panel per scenario."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(curves), figsize=(6 * len(curves), 4), squeeze=False)
    for ax, (scenario, by_algo) in zip(axes[0], curves.items(), strict=True):
        for algo, runs in by_algo.items():
            rounds = [x["round"] for x in runs[0][1:]]
            mean = [
                statistics.mean(r[i]["personal-accuracy"] or 0 for r in runs)
                for i in range(1, len(runs[0]))
            ]
            ax.plot(rounds, mean, label=algo, lw=2 if algo == "fedapm" else 1)
        ax.set_title(f"{scenario}: personalized accuracy (mean over seeds)")
        ax.set_xlabel("round")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    """Run every scenario × algorithm × seed, print the tables, write the plot and json."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--scenarios", nargs="+", default=list(SCENARIOS))
    parser.add_argument("--algorithms", nargs="+", default=list(ALGORITHMS))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/personalization/results")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    curves: dict[str, dict[str, list[list[dict[str, Any]]]]] = {}
    lines: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.scenarios:
            scenario = SCENARIOS[name]
            curves[name] = {}
            table: list[tuple[str, dict[str, str]]] = []
            for algo in args.algorithms:
                t0 = time.time()
                runs = [
                    run_one(scenario, ALGORITHMS[algo], s, args.rounds, Path(tmp) / name)
                    for s in args.seeds
                ]
                curves[name][algo] = runs
                table.append((algo, summarize(runs, scenario["target"])))
                print(f"{name} {algo}: {time.time() - t0:.0f}s", flush=True)
            cols = list(table[0][1])
            lines += [
                f"\n### {name} ({scenario['clients']} clients, {args.rounds} rounds, "
                f"seeds {args.seeds})\n",
                "| algorithm | " + " | ".join(cols) + " |",
                "|---" * (len(cols) + 1) + "|",
            ]
            lines += [f"| {a} | " + " | ".join(r[c] for c in cols) + " |" for a, r in table]
            (args.out / "table.md").write_text("\n".join(lines) + "\n")  # progress so far
    text = "\n".join(lines)
    print(text)
    (args.out / "table.md").write_text(text + "\n")
    (args.out / "curves.json").write_text(json.dumps(curves))
    plot(curves, args.out / "curves.png")
    print(f"wrote {args.out / 'table.md'} and {args.out / 'curves.png'}")


if __name__ == "__main__":
    main()
