"""ClientApp cold start: a message that finds its partition cached imports neither scikit-learn
nor pandas (nor scipy), and the NumPy metrics equal scikit-learn's to the last bit."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tasks.metrics import binary_auc, classification_metrics, macro_f1

CONFIG = {
    "task": "digits",
    "download": False,
    "seed": 0,
    "partitioner": "dirichlet",
    "dirichlet-alpha": 0.5,
    "classes-per-client": 2,
    "local-test-fraction": 0.2,
}

MESSAGE_PATH = """
import json, sys
import numpy as np, torch
import client_app.app
from client_app import runtime
from flwr.app import Context, RecordDict
from tasks.metrics import classification_metrics
from tasks.registry import get_task

config = json.loads(sys.argv[1])
ctx = Context(run_id=1, node_id=1, node_config={"partition-id": 1, "num-partitions": 3,
              "data-dir": config["data-dir"]}, state=RecordDict(), run_config={})
before = {m for m in ("sklearn", "pandas", "scipy") if m in sys.modules}
train, test = runtime.client_data(config, ctx, torch.device("cpu"), torch.float32)
model = runtime._skeleton("digits", "", "none", 0, torch.device("cpu")).model
probs = torch.softmax(model(test.x), 1).detach().double().numpy()
classification_metrics(test.y.numpy(), probs, 0.0)
after = sorted(m for m in ("sklearn", "pandas", "scipy") if m in sys.modules)
print(json.dumps({"before": sorted(before), "after": after, "n": len(train.y)}))
"""


def _message(config: dict[str, object]) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, "-c", MESSAGE_PATH, json.dumps(config)],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def test_cached_partition_path_imports_no_sklearn_pandas_scipy(tmp_path: Path) -> None:
    config = {**CONFIG, "data-dir": str(tmp_path)}
    first = _message(config)  # cache miss: loads digits with scikit-learn, writes the cache
    assert "sklearn" in first["after"]
    assert list(tmp_path.glob(".dualflower-cache/*/partition-1-of-3.npz"))
    hit = _message(config)
    assert hit == {"before": [], "after": [], "n": first["n"]}


def test_partition_cache_is_keyed_by_loader_source_and_data_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A loader edited under the same task name, or replaced data files, never reuse a cached
    partition (the benchmark's subset task once silently reused a 1 % subset's cache)."""
    from client_app import runtime
    from tasks import registry
    from tasks.digits import DigitsTask

    (tmp_path / "data.bin").write_bytes(b"one")
    first = runtime.source_fingerprint("digits", tmp_path)
    assert runtime.source_fingerprint("digits", tmp_path) == first
    (tmp_path / runtime.CACHE).mkdir()  # the cache itself does not count
    assert runtime.source_fingerprint("digits", tmp_path) == first

    class EditedDigits(DigitsTask):
        """digits under its own name, from another loader."""

    monkeypatch.setitem(registry.TASKS, "digits", EditedDigits)
    assert runtime.source_fingerprint("digits", tmp_path) != first
    monkeypatch.undo()
    (tmp_path / "data.bin").write_bytes(b"two!")
    assert runtime.source_fingerprint("digits", tmp_path) != first


def _cases() -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(0)
    cases = []
    for k in range(300):
        n, c = int(rng.integers(2, 60)), int(rng.integers(2, 11))
        y = rng.integers(0, c, n)
        logits = rng.normal(size=(n, c))
        if k % 3 == 0:  # ties: coarse scores
            logits = np.round(logits, 0)
        probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
        if k % 7 == 0:
            probs[rng.integers(0, n)] = np.nan  # a diverged row
        cases.append((y, probs))
    return cases


@pytest.mark.parametrize("chunk", range(3))
def test_numpy_metrics_equal_sklearn_bit_for_bit(chunk: int) -> None:
    from sklearn.metrics import f1_score, roc_auc_score

    for y, probs in _cases()[chunk::3]:
        finite = np.isfinite(probs).all(axis=1)
        y_pred = np.where(finite, np.nan_to_num(probs).argmax(axis=1), -1)
        assert macro_f1(y, y_pred) == f1_score(y, y_pred, average="macro", zero_division=0)
        for c in range(probs.shape[1]):
            pos = y[finite] == c
            if 0 < pos.sum() < len(pos):
                score = probs[finite][:, c]
                assert binary_auc(pos, score) == roc_auc_score(pos, score)
        assert classification_metrics(y, probs, 0.5)["macro-f1"] == macro_f1(y, y_pred)


def test_metrics_of_an_empty_split() -> None:
    m = classification_metrics(np.zeros(0, np.int64), np.zeros((0, 3)), 0.0)
    assert np.isnan(m["macro-f1"]) and np.isnan(m["accuracy"]) and np.isnan(m["auc"])


@pytest.mark.parametrize(("momentum", "weight_decay"), [(0.0, 0.0), (0.9, 0.0), (0.9, 1e-3)])
def test_sgd_step_equals_torch_sgd_bit_for_bit(momentum: float, weight_decay: float) -> None:
    """``SGDStep`` (no ``torch._dynamo`` import) is ``torch.optim.SGD``'s update op for op."""
    import torch

    from client_app.solvers.base import SGDStep

    gen = torch.Generator().manual_seed(0)
    ours = [torch.nn.Parameter(torch.randn(shape, generator=gen)) for shape in ((7, 3), (3,))]
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    step = SGDStep(ours, momentum, weight_decay)
    reference = torch.optim.SGD(theirs, lr=0.1, momentum=momentum, weight_decay=weight_decay)
    for k in range(12):
        for a, b in zip(ours, theirs, strict=True):
            grad = torch.randn(a.shape, generator=gen)
            a.grad, b.grad = grad.clone(), (None if k == 5 and a.ndim == 1 else grad.clone())
            if b.grad is None:
                a.grad = None  # a parameter without a gradient is left alone by both
        step.step(0.1 / (1 + k))
        reference.param_groups[0]["lr"] = 0.1 / (1 + k)
        reference.step()
        for a, b in zip(ours, theirs, strict=True):
            assert torch.equal(a, b)
