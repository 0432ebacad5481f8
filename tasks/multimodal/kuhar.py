"""KU-HAR (Mendeley 45f952y38r): smartphone accelerometer + gyroscope, 18 activities, 100 Hz.

Two modalities, each a ``300 x 3`` sequence (3 s windows; x, y, z per step) encoded by Conv1d
layers and a GRU. Two tasks read the two public layouts under ``data-dir``:

* ``ku-har`` reads ``2.Trimmed_interpolated_data/<k>.<Name>/<user>_<letter>_<serial>.csv``
  (no header; acc time ms, ax, ay, az, gyro time ms, gx, gy, gz; class ``k`` from the folder
  name) and cuts every recording into non-overlapping 300-step windows; a final partial window
  of at least ``MIN_TAIL`` steps is kept, zero-padded, with its length. The user id of the file
  name is the natural client (``partitioner='natural'``, one client per user).
* ``ku-har-subsamples`` reads ``KU-HAR_time_domain_subsamples_20750x300.csv`` in
  ``3.Time_domain_subsamples/`` (no header; ax, ay, az, gx, gy, gz in blocks of 300 columns,
  then class, length, serial). That file has no user column, so this task has no
  natural clients: use ``dirichlet`` (as the FedAPM code does) or ``iid``/``pathological``.

Channels are standardised with training-pool statistics; a stratified 20 % of the windows is
the server test set. The ``paper`` preset makes both Conv1d stacks personal and shares the
GRUs, fusion and classifier (the FedAPM code's choice, ALGORITHMS.md §1.8).
"""

from __future__ import annotations

import re
from functools import partial
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from tasks.base import DataOptions
from tasks.data import TaskData
from tasks.multimodal.common import MultimodalTask, assemble, read_table
from tasks.multimodal.layout import Layout, Modality

TRIMMED_DIR = "2.Trimmed_interpolated_data"
SUBSAMPLES_FILE = "3.Time_domain_subsamples/KU-HAR_time_domain_subsamples_20750x300.csv"
WINDOW = 300
"""Steps per window: 3 s at 100 Hz."""
MIN_TAIL = 100
"""Shortest final partial window kept (1 s)."""
CLASSES = 18
SENSORS = ("acc", "gyro")

_CLASS_FOLDER = re.compile(r"^(\d+)\.")
_RECORDING = re.compile(r"^(\d+)_[A-Za-z]+_(\d+)\.csv$")


class _KUHARTask(MultimodalTask):
    """The model and the packing shared by both KU-HAR layouts."""

    num_classes = CLASSES
    layout = Layout(tuple(Modality(s, "conv-gru", (WINDOW, 3)) for s in SENSORS))
    paper_preset = tuple(f"encoders.{s}.conv" for s in SENSORS)

    def finish(
        self,
        windows: NDArray[np.float32],
        lengths: NDArray[np.int64],
        y: NDArray[np.int64],
        seed: int,
        source: Path,
        groups: NDArray[np.int64] | None = None,
    ) -> TaskData:
        """``N x 300 x 6`` windows (acc xyz, gyro xyz) read from ``source`` -> TaskData."""
        if y.min() < 0 or y.max() >= CLASSES:
            raise self.unavailable(source, f"class ids outside 0..{CLASSES - 1}")
        values = {"acc": windows[:, :, :3], "gyro": windows[:, :, 3:]}
        steps = {"acc": lengths, "gyro": lengths}
        return assemble(
            self.layout, values, steps, y, CLASSES, seed, standardized=SENSORS, groups=groups
        )


class KUHARTask(_KUHARTask):
    """KU-HAR from the trimmed recordings: 3 s windows, one natural client per user."""

    name = "ku-har"
    title = "KU-HAR"
    natural_clients = True
    default_partitioner = "natural"
    expected = (
        f"<data-dir>/{TRIMMED_DIR}/<k>.<Name>/<user>_<letter>_<serial>.csv (8 columns, no "
        "header: acc time, ax, ay, az, gyro time, gx, gy, gz at 100 Hz), as in the unpacked "
        "KU-HAR archive (Mendeley Data 45f952y38r)"
    )

    def load(self, options: DataOptions) -> TaskData:
        """Window every recording; the user id in the file name gives the natural client."""
        root = self.data_root(options)
        trimmed = root / TRIMMED_DIR
        recordings = [
            (int(folder_match[1]), int(file_match[1]), path)
            for folder in sorted(trimmed.iterdir() if trimmed.is_dir() else [])
            if (folder_match := _CLASS_FOLDER.match(folder.name)) and folder.is_dir()
            for path in sorted(folder.iterdir())
            if (file_match := _RECORDING.match(path.name))
        ]
        if not recordings:
            hint = ""
            if (root / SUBSAMPLES_FILE).is_file():
                hint = f"; {SUBSAMPLES_FILE} exists: use task='ku-har-subsamples' (no users)"
            raise self.unavailable(trimmed, f"no recordings found{hint}")
        windows, lengths, labels, users = [], [], [], []
        for label, user, path in recordings:
            signal = self.read(path, partial(read_table, columns=8))[:, [1, 2, 3, 5, 6, 7]]
            for start in range(0, len(signal), WINDOW):
                chunk = signal[start : start + WINDOW]
                if len(chunk) < MIN_TAIL:
                    continue
                padded = np.zeros((WINDOW, 6), dtype=np.float32)
                padded[: len(chunk)] = chunk
                windows.append(padded)
                lengths.append(len(chunk))
                labels.append(label)
                users.append(user)
        if not windows:
            raise self.unavailable(trimmed, f"every recording is shorter than {MIN_TAIL} steps")
        return self.finish(
            np.stack(windows),
            np.asarray(lengths, dtype=np.int64),
            np.asarray(labels, dtype=np.int64),
            options.seed,
            trimmed,
            groups=np.asarray(users, dtype=np.int64),
        )


class KUHARSubsamplesTask(_KUHARTask):
    """KU-HAR from the published 3 s subsamples file (no user ids, so no natural clients)."""

    name = "ku-har-subsamples"
    title = "KU-HAR (time-domain subsamples)"
    default_partitioner = "dirichlet"
    expected = (
        f"<data-dir>/{SUBSAMPLES_FILE} (no header, 1803 columns: ax, ay, az, gx, gy, gz in "
        "blocks of 300, then class 0-17, length, serial), as in the unpacked KU-HAR archive"
    )

    def load(self, options: DataOptions) -> TaskData:
        """Read the subsample matrix; the length column marks the valid steps."""
        path = self.data_root(options) / SUBSAMPLES_FILE
        if not path.is_file():
            raise self.unavailable(path, "file not found")
        table = self.read(path, partial(read_table, columns=6 * WINDOW + 3))
        windows = table[:, : 6 * WINDOW].reshape(-1, 6, WINDOW).transpose(0, 2, 1)
        lengths = table[:, 6 * WINDOW + 1].astype(np.int64)
        if np.any((lengths < 1) | (lengths > WINDOW)):
            raise self.unavailable(path, f"length column outside 1..{WINDOW}")
        valid = np.arange(WINDOW)[None, :] < lengths[:, None]
        return self.finish(
            (windows * valid[:, :, None]).astype(np.float32),
            lengths,
            table[:, 6 * WINDOW].astype(np.int64),
            options.seed,
            path,
        )
