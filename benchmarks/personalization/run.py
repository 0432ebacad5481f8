"""FedAPM against the (personalized) baselines on the same runner and partitions.

Every algorithm runs the real ServerApp and ClientApp code on the in-process grid
(`server_app.inprocess`), with the same seeds, partitions and local work. Prints a markdown
table (mean ± std over seeds of final and best-round personalized accuracy, both
example-weighted (the ServerApp's metric) and as the unweighted mean over the evaluated clients
(the FedAPM authors' protocol), macro-F1, AUC, rounds to a target accuracy, bytes per round)
and writes a PNG of the mean curves. Every finished run's rows are kept in
``<out>/runs/<scenario>/<algorithm>-<seed>.json``; ``--from-runs`` rebuilds the tables from
them (whatever seeds finished) without running anything, and a run already there is reused
unless ``--rerun``. A run the ServerApp stops early (no usable update for
``max-failed-rounds`` rounds) counts with its last row; the table names its last round.

    python -m benchmarks.personalization.run [--rounds 30 --seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import re
import statistics
import tempfile
import time
import tomllib
from pathlib import Path
from typing import Any

import numpy as np

import strategies.base
from client_app.app import app as client_app
from server_app.app import run_federation
from server_app.inprocess import InProcessGrid
from tasks import registry
from tasks.base import DataOptions
from tasks.data import ArrayData, TaskData
from tasks.vision import FashionMNISTTask

ROOT = Path(__file__).resolve().parents[2]
ALGORITHMS: dict[str, dict[str, Any]] = {
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
DEFAULT_ALGORITHMS = list(ALGORITHMS)
LR_VARIANT = re.compile(r"^(?P<base>[a-z-]+?)-lr(?P<lr>[0-9.e-]+)$")
"""``<algorithm>-lr<value>``: that algorithm's entry with ``lr`` set (the lr grid)."""


def resolve(name: str) -> dict[str, Any]:
    """The run keys of an ``--algorithms`` entry: a name of ``ALGORITHMS``, or
    ``<name>-lr<value>`` for that algorithm at another ``lr`` (labelled with the full name).
    """
    if name in ALGORITHMS:
        return ALGORITHMS[name]
    match = LR_VARIANT.match(name)
    if match is None or match["base"] not in ALGORITHMS:
        raise SystemExit(f"unknown algorithm {name!r}: one of {sorted(ALGORITHMS)}[-lr<value>]")
    return ALGORITHMS[match["base"]] | {"lr": float(match["lr"]), "label": name}


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
    "fmnist-dir0.1": {
        "task": "bench-fashion-mnist-20pct",
        "data-dir": "/usr/share/datasets/fashion-mnist",  # apt-get install dataset-fashion-mnist
        "partitioner": "dirichlet",
        "dirichlet-alpha": 0.1,
        "fraction-train": 0.5,
        "clients": 20,
        "target": 0.9,
    },
}
SUBSET = 0.2
"""Share of Fashion-MNIST's train and test images the fmnist scenario uses (time on 2 cores)."""


def _subset(data: ArrayData, share: float, seed: int) -> ArrayData:
    """A seeded random ``share`` of ``data`` (the same images for every run seed)."""
    rng = np.random.default_rng([seed, 20])
    keep = np.sort(rng.choice(len(data), size=round(share * len(data)), replace=False))
    return ArrayData(data.x[keep], data.y[keep])


class FashionMNISTSubsetTask(FashionMNISTTask):
    """Fashion-MNIST (``data-dir``, e.g. the Debian package's directory) reduced to a fixed
    random ``SUBSET`` of its training pool and of its test set, with the task's SmallCNN.
    """

    name = "bench-fashion-mnist-20pct"
    title = "Fashion-MNIST (20 % subset)"

    def load(self, options: DataOptions) -> TaskData:
        """The full dataset, then the fixed subsets (seed 0 for every run)."""
        full = super().load(options)
        assert full.server_test is not None
        return TaskData(
            _subset(full.pool, SUBSET, 0), _subset(full.server_test, SUBSET, 1), full.num_classes
        )


registry.TASKS[FashionMNISTSubsetTask.name] = FashionMNISTSubsetTask

METRICS = ("personal-accuracy", "personal-macro-f1", "personal-auc")
CLIENT_MEAN = "personal-cm-"
"""Prefix of the unweighted mean over the evaluated clients of each personalized metric."""

_weighted_means = strategies.base.weighted_means


def _with_client_means(replies: list[strategies.base.Reply], prefix: str = "") -> dict[str, float]:
    """``weighted_means``, plus (for the personalized evaluation) the plain mean over clients
    of each metric under ``personal-cm-<metric>``: the FedAPM authors' code averages the
    clients' local test accuracies without weights.
    """
    out = _weighted_means(replies, prefix)
    if prefix == "personal-":
        for key in [k.removeprefix(prefix) for k in out]:
            values = [r.metrics[key] for r in replies if math.isfinite(r.metrics[key])]
            out[CLIENT_MEAN + key] = statistics.fmean(values) if values else math.nan
    return out


strategies.base.weighted_means = _with_client_means  # this benchmark's process only


@functools.cache
def defaults() -> dict[str, Any]:
    """The run-config defaults of pyproject.toml, read once (a consistent snapshot)."""
    with (ROOT / "pyproject.toml").open("rb") as fh:
        return dict(tomllib.load(fh)["tool"]["flwr"]["app"]["config"])


def run_one(
    scenario: dict[str, Any], algo: dict[str, Any], seed: int, rounds: int, out: Path
) -> list[dict[str, Any]]:
    """One run; returns its metrics.jsonl rows. A run the ServerApp stops (``RunFailedError``,
    e.g. every reply non-finite for ``max-failed-rounds`` rounds) returns the rows it wrote,
    the last one with ``"failed": <reason>``.
    """
    cfg = dict(defaults()) | {k: v for k, v in scenario.items() if k not in ("clients", "target")}
    name = f"{algo['algorithm']}-{algo.get('personalization', 'none')}-{seed}"
    out = out / f"{algo.get('label', algo['algorithm'])}-{seed}"
    cfg |= {k: v for k, v in algo.items() if k != "label"} | {
        "seed": seed,
        "num-server-rounds": rounds,
        "output-dir": str(out),
        "run-name": name,
    }
    try:
        run_dir = run_federation(InProcessGrid(client_app, scenario["clients"]), cfg)
    except strategies.base.RunFailedError as err:
        (run_dir,) = [p.parent for p in out.glob("*/metrics.jsonl")]
        rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
        rows[-1]["failed"] = str(err)
        return rows
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def summarize(runs: list[list[dict[str, Any]]], target: float) -> dict[str, str]:
    """Mean ± std over seeds of the table's columns."""

    def stat(values: list[float | None]) -> str:
        finite = [v for v in values if v is not None and math.isfinite(v)]
        if not finite:
            return "n/a"
        sd = statistics.stdev(finite) if len(finite) > 1 else 0.0
        return f"{statistics.mean(finite):.3f} ± {sd:.3f}"

    # rounds 1..T only: methods with a global model also have a round-0 row, the others not
    runs = [[x for x in r if x["round"] >= 1] for r in runs]
    row: dict[str, str] = {}
    cm_acc = CLIENT_MEAN + "accuracy"
    for key, short in (
        [(k, k.removeprefix("personal-")) for k in METRICS[:1]]
        + [(cm_acc, "accuracy (client mean)")]
        + [(k, k.removeprefix("personal-")) for k in METRICS[1:]]
    ):
        row[f"final {short}"] = stat([r[-1].get(key) for r in runs])
        row[f"best {short}"] = stat([max((x.get(key) or 0.0) for x in r) for r in runs])
    reach = [
        next((x["round"] for x in r if (x.get("personal-accuracy") or 0) >= target), None)
        for r in runs
    ]
    hit = [x for x in reach if x is not None]
    failed = [r[-1]["round"] for r in runs if "failed" in r[-1]]
    row["stopped (round)"] = ", ".join(str(x) for x in failed) if failed else "—"
    row[f"rounds to {target:.0%}"] = (
        f"{statistics.mean(hit):.1f} ({len(hit)}/{len(runs)})" if hit else f"— (0/{len(runs)})"
    )
    row["MB/round"] = (
        f"{statistics.mean(x['bytes-up'] + x['bytes-down'] for r in runs for x in r) / 1e6:.2f}"
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
            trained = [[x for x in r if x["round"] >= 1] for r in runs]
            longest = max(trained, key=len)  # a stopped run ends early: mean over those left
            rounds = [x["round"] for x in longest]
            mean = [
                statistics.mean(r[i].get("personal-accuracy") or 0 for r in trained if len(r) > i)
                for i in range(len(longest))
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
    parser.add_argument("--algorithms", nargs="+", default=DEFAULT_ALGORITHMS)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/personalization/results")
    parser.add_argument("--data-dir", help="data-dir for the fashion-mnist scenario")
    parser.add_argument(
        "--from-runs", action="store_true", help="only rebuild the tables from <out>/runs"
    )
    parser.add_argument(
        "--rerun", action="store_true", help="run again even where <out>/runs has the run"
    )
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.data_dir:
        SCENARIOS["fmnist-dir0.1"]["data-dir"] = args.data_dir
    curves: dict[str, dict[str, list[list[dict[str, Any]]]]] = {}
    lines: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.scenarios:
            scenario = SCENARIOS[name]
            curves[name] = {}
            table: list[tuple[str, dict[str, str]]] = []
            for algo in args.algorithms:
                t0 = time.time()
                runs = []
                for seed in args.seeds:
                    saved = args.out / "runs" / name / f"{algo}-{seed}.json"
                    if saved.is_file() and not args.rerun:  # finished earlier: reuse it
                        runs.append(json.loads(saved.read_text()))
                        continue
                    if args.from_runs:
                        continue
                    rows = run_one(scenario, resolve(algo), seed, args.rounds, Path(tmp) / name)
                    saved.parent.mkdir(parents=True, exist_ok=True)
                    saved.write_text(json.dumps(rows))
                    runs.append(rows)
                    print(f"{name} {algo} seed {seed}: {time.time() - t0:.0f}s", flush=True)
                if not runs:
                    continue
                curves[name][algo] = runs
                table.append((algo, summarize(runs, scenario["target"])))
                print(f"{name} {algo}: {time.time() - t0:.0f}s", flush=True)
            if not table:
                continue
            cols = ["seeds", *table[0][1]]
            for algo, r in table:
                r["seeds"] = str(len(curves[name][algo]))
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
    plot({k: v for k, v in curves.items() if v}, args.out / "curves.png")
    print(f"wrote {args.out / 'table.md'} and {args.out / 'curves.png'}")


if __name__ == "__main__":
    main()
