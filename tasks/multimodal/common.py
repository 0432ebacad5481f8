"""What every multimodal task shares: the model factory, data-dir checks, error messages,
and turning per-modality arrays into the standardised, packed ``TaskData``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import ClassVar, TypeVar

import numpy as np
from numpy.typing import NDArray

from tasks.base import DataOptions, Task
from tasks.data import ArrayData, DataUnavailableError, TaskData, stratified_holdout
from tasks.multimodal.features import standardize
from tasks.multimodal.layout import Layout
from tasks.multimodal.model import MultimodalNet, NetConfig

SERVER_TEST_FRACTION = 0.2
"""Share of every class held out as the server test set when a dataset has no test split."""

READ_ERRORS = (OSError, ValueError, IndexError, KeyError, EOFError)
"""What reading a malformed or missing file raises (numpy, scipy, PIL, csv)."""

T = TypeVar("T")


class MultimodalTask(Task):
    """A task whose model is a ``MultimodalNet`` over ``layout``, read from local files.

    Subclasses set the class attributes and ``load``; ``expected`` describes the on-disk
    layout for error messages; ``paper_preset`` is the FedAPM code's personal block.
    """

    title: ClassVar[str] = ""
    num_classes: ClassVar[int] = 0
    layout: ClassVar[Layout]
    net: ClassVar[NetConfig] = NetConfig()
    paper_preset: ClassVar[tuple[str, ...] | None] = None
    expected: ClassVar[str] = ""

    def build_model(self, personalization: str) -> MultimodalNet:
        """A ``MultimodalNet`` for this task's layout and classes (presets on the instance)."""
        return MultimodalNet(self.layout, self.num_classes, self.net, self.paper_preset)

    def unavailable(self, where: Path | str, problem: str) -> DataUnavailableError:
        """An error naming the dataset, the place searched, the problem and the layout."""
        return DataUnavailableError(
            f"{self.title}: {problem} (searched {str(where)!r}). Expected: {self.expected}"
        )

    def data_root(self, options: DataOptions) -> Path:
        """``data-dir`` as a directory; fails with the expected layout if unset or missing."""
        if not options.data_dir:
            raise self.unavailable(
                "<data-dir>",
                "the run-config key data-dir must be set (it is empty), e.g. "
                "--run-config \"data-dir='/path/to/dataset'\"",
            )
        root = Path(options.data_dir).expanduser()
        if not root.is_dir():
            raise self.unavailable(root, "data-dir is not a directory")
        return root

    def read(self, path: Path, reader: Callable[[Path], T]) -> T:
        """``reader(path)``, with any read or parse error turned into a DataUnavailableError."""
        try:
            return reader(path)
        except READ_ERRORS as err:
            raise self.unavailable(
                path, f"could not read {path.name!r} ({type(err).__name__}: {err})"
            ) from err


def read_table(path: Path, columns: int, header: bool = False) -> NDArray[np.float64]:
    """A non-empty comma-separated numeric table of ``columns`` columns (header row skipped)."""
    table = np.loadtxt(path, delimiter=",", skiprows=int(header), ndmin=2, dtype=np.float64)
    if table.shape[0] == 0 or table.shape[1] != columns:
        raise ValueError(f"{table.shape[0]} rows of {table.shape[1]} columns, expected {columns}")
    return table


def assemble(
    layout: Layout,
    values: Mapping[str, NDArray[np.float32]],
    lengths: Mapping[str, NDArray[np.int64]],
    y: NDArray[np.int64],
    num_classes: int,
    seed: int,
    *,
    standardized: Iterable[str] = (),
    test: NDArray[np.bool_] | None = None,
    groups: NDArray[np.int64] | None = None,
) -> TaskData:
    """Split off the server test set, standardise, pack into ``TaskData``.

    ``test`` marks the rows of an official test split; without it a stratified
    ``SERVER_TEST_FRACTION`` of every class is held out (seeded). The ``standardized``
    modalities are standardised per feature with pool statistics. ``groups`` (natural client
    of every row) are renumbered 0..G-1 over the pool.
    """
    if test is None:
        keep, held = stratified_holdout(y, SERVER_TEST_FRACTION, seed)
    else:
        keep, held = np.flatnonzero(~test), np.flatnonzero(test)
    scaled = dict(values)
    for name in standardized:
        scaled[name] = standardize(values[name], lengths.get(name), keep)
    x = layout.pack(scaled, lengths)
    pool_groups = None
    if groups is not None:
        pool_groups = np.unique(groups[keep], return_inverse=True)[1].astype(np.int64)
    return TaskData(
        pool=ArrayData(x[keep], y[keep]),
        server_test=ArrayData(x[held], y[held]),
        num_classes=num_classes,
        groups=pool_groups,
    )
