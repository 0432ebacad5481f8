"""Run outputs: resolved config, one metrics line per round, a summary, one console line."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from logging import INFO
from pathlib import Path
from typing import Any

from flwr.common import log

from server_app.checkpoint import checkpoint_error

HIGHER_IS_BETTER = ("accuracy", "macro-f1", "auc")


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of a ``metrics.jsonl`` (a torn last line, from a kill mid-write, is skipped)."""
    rows = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def _resumed_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of a resumed run's ``metrics.jsonl``; each must have an integer ``round``."""
    rows = read_rows(path)
    bad = [r for r in rows if not isinstance(r, dict) or not _is_round(r.get("round"))]
    if bad:
        raise checkpoint_error(
            path,
            f"{len(bad)} row(s)",
            f"have no integer 'round' (first: {str(bad[0])[:80]})",
            "Repair or remove those lines, or start a new run (resume-from='')",
        )
    return rows


def _is_round(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _resumes(path: Path) -> list[int]:
    """``resumed-after-round`` of a resumed run's ``config.json`` (empty before its first)."""
    try:
        old = json.loads(path.read_text())
        resumes = old.get("resumed-after-round", []) if isinstance(old, dict) else None
    except (OSError, ValueError) as err:
        raise checkpoint_error(
            path,
            "the file",
            f"is not readable JSON ({err})",
            "Restore it (the run directory's config.json), or start a new run (resume-from='')",
        ) from None
    if not isinstance(resumes, list) or not all(_is_round(r) for r in resumes):
        raise checkpoint_error(
            path,
            "field 'resumed-after-round'",
            f"is {resumes!r}; expected a list of rounds",
            "Restore it (the run directory's config.json), or start a new run (resume-from='')",
        )
    return resumes


def resolve_run_dir(config: Mapping[str, Any]) -> Path:
    """``<output-dir>/<run-name>`` as an absolute path; the name defaults to
    ``<algorithm>-<task>-seed<seed>-<time>`` and gets a numeric suffix if taken.
    """
    base = Path(str(config["output-dir"])).expanduser().resolve()
    name = str(config["run-name"]) or (
        f"{config['algorithm']}-{config['task']}-seed{config['seed']}-"
        + time.strftime("%Y%m%d-%H%M%S")
    )
    path, k = base / name, 1
    while path.exists():
        k += 1
        path = base / f"{name}-{k}"
    return path


class RunRecorder:
    """Writes ``config.json``, ``metrics.jsonl`` (one line per round) and ``summary.json``.

    With ``resume_round = k`` the run dir exists: ``metrics.jsonl`` keeps its rows of rounds
    ``<= k`` (later rows were written after the checkpoint) and new rows are appended;
    ``config.json`` gets the resumed run's config and ``resumed-after-round: [..., k]``. Both
    are read before either is rewritten (CheckpointError naming the file if one is unusable).
    """

    def __init__(
        self,
        run_dir: Path,
        config: Mapping[str, Any],
        extra: Mapping[str, Any],
        resume_round: int | None = None,
    ) -> None:
        self.dir = run_dir
        self.dir.mkdir(parents=True, exist_ok=resume_round is not None)
        self.num_rounds = int(config["num-server-rounds"])
        self.metrics_path = self.dir / "metrics.jsonl"
        self.rows: list[dict[str, Any]] = []
        resumes: list[int] = []
        if resume_round is not None:
            self.rows = [r for r in _resumed_rows(self.metrics_path) if r["round"] <= resume_round]
            resumes = [*_resumes(self.dir / "config.json"), resume_round]
        info = {"run-config": dict(config), **extra}
        if resumes:
            info["resumed-after-round"] = resumes
        _write_atomic(self.dir / "config.json", json.dumps(info, indent=2, sort_keys=True))
        _write_atomic(self.metrics_path, "".join(json.dumps(r) + "\n" for r in self.rows))
        log(INFO, "Writing results to %s", self.dir)

    def record(self, server_round: int, row: Mapping[str, float]) -> None:
        """Append one round's metrics and print its console line."""
        full = {"round": server_round, **{k: _clean(v) for k, v in sorted(row.items())}}
        self.rows.append(full)
        with self.metrics_path.open("a") as fh:
            fh.write(json.dumps(full) + "\n")
        log(INFO, "%s", self.console_line(full))

    def console_line(self, row: Mapping[str, Any]) -> str:
        """``round  3/15  1.2s  train-loss 0.532  global acc 91.2%  personal acc 90.5% ...``."""
        parts = [f"round {row['round']:>3}/{self.num_rounds}", f"{row.get('wall-time') or 0:6.2f}s"]
        if row.get("train-loss") is not None:
            parts.append(f"train-loss {row['train-loss']:.4f}")
        for scope in ("global", "personal"):
            if row.get(f"{scope}-accuracy") is not None:
                parts.append(
                    f"{scope} acc {100 * row[f'{scope}-accuracy']:5.1f}% "
                    f"f1 {100 * (row.get(f'{scope}-macro-f1') or 0):5.1f}%"
                )
        if row.get("dual-norm-mean") is not None:
            parts.append(f"|pi| {row['dual-norm-mean']:.3g}/{row['dual-norm-max']:.3g}")
        if row.get("bytes-up") is not None:
            parts.append(f"up {row['bytes-up'] / 1e6:.2f}MB down {row['bytes-down'] / 1e6:.2f}MB")
        if row.get("dropped-replies"):
            parts.append(f"dropped {int(row['dropped-replies'])}")
        return "  ".join(parts)

    def finish(self) -> dict[str, Any]:
        """Write ``summary.json``: final and best value of every metric, totals, wall time."""
        trained = [r for r in self.rows if r["round"] > 0]
        summary: dict[str, Any] = {"rounds": len(trained)}
        if trained:
            summary["wall-time"] = sum(r.get("wall-time") or 0.0 for r in trained)
            summary["bytes-up"] = sum(r.get("bytes-up") or 0.0 for r in trained)
            summary["bytes-down"] = sum(r.get("bytes-down") or 0.0 for r in trained)
            for key in sorted({k for r in trained for k in r}):
                if key.endswith(HIGHER_IS_BETTER):
                    values = [r[key] for r in trained if r.get(key) is not None]
                    if values:
                        summary[f"final-{key}"] = trained[-1].get(key)
                        summary[f"best-{key}"] = max(values)
            summary["final-train-loss"] = trained[-1].get("train-loss")
        (self.dir / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True))
        return summary
