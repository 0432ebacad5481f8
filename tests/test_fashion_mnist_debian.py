"""Fashion-MNIST from a directory in the Debian package's layout, given as ``data-dir``.

``apt-get install dataset-fashion-mnist`` puts the four idx files, gzipped, directly in
``/usr/share/datasets/fashion-mnist/`` (``train-images-idx3-ubyte.gz``, ...), not in
torchvision's ``FashionMNIST/raw/``. These tests write a miniature in exactly that layout
under tmp_path (nothing is downloaded, the installed package is hidden) and pass the
directory itself as ``data-dir``.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray

from tasks import vision
from tasks.base import DataOptions
from tasks.data import DataUnavailableError
from tasks.vision import FASHION_MNIST_FILES, FashionMNISTTask

TRAIN_Y = np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 3, 7], dtype=np.int64)
TEST_Y = np.array([9, 8, 7, 1, 0, 2], dtype=np.int64)


def _images(seed: int, n: int) -> NDArray[np.uint8]:
    return np.random.default_rng(seed).integers(0, 256, (n, 28, 28), dtype=np.uint8)


TRAIN_X, TEST_X = _images(1, len(TRAIN_Y)), _images(2, len(TEST_Y))


def _write_debian_layout(directory: Path) -> None:
    """The four ``*-idx?-ubyte.gz`` files directly in ``directory``, as the package has them."""
    directory.mkdir(parents=True, exist_ok=True)
    for split, images, labels in (("train", TRAIN_X, TRAIN_Y), ("t10k", TEST_X, TEST_Y)):
        n, h, w = images.shape
        (directory / f"{split}-images-idx3-ubyte.gz").write_bytes(
            gzip.compress(struct.pack(">IIII", 0x00000803, n, h, w) + images.tobytes())
        )
        (directory / f"{split}-labels-idx1-ubyte.gz").write_bytes(
            gzip.compress(struct.pack(">II", 0x00000801, n) + labels.astype(np.uint8).tobytes())
        )


def _options(data_dir: Path | str) -> DataOptions:
    return DataOptions(str(data_dir), False, seed=0, num_partitions=2)


@pytest.fixture(autouse=True)
def _no_system_data(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Hide an installed package and the user's cache."""
    monkeypatch.setattr(vision, "DEBIAN_FASHION_MNIST_DIR", tmp_path / "no-debian")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def test_data_dir_in_debian_layout_is_read(tmp_path: Path) -> None:
    debian = tmp_path / "usr" / "share" / "datasets" / "fashion-mnist"
    _write_debian_layout(debian)
    before = sorted(p.name for p in debian.iterdir())

    data = FashionMNISTTask().load(_options(debian))

    assert data.server_test is not None
    np.testing.assert_array_equal(data.pool.y, TRAIN_Y)
    np.testing.assert_array_equal(data.server_test.y, TEST_Y)
    assert data.pool.x.shape == (len(TRAIN_Y), 1, 28, 28)
    task = FashionMNISTTask()
    expected = (TRAIN_X[3, 5, 7] / 255.0 - task.mean[0]) / task.std[0]
    assert data.pool.x[3, 0, 5, 7] == pytest.approx(expected, abs=1e-6)
    # the package's directory is left as installed; the idx files went to the user cache
    assert sorted(p.name for p in debian.iterdir()) == before
    raws = list((tmp_path / "cache").rglob("FashionMNIST/raw"))
    assert len(raws) == 1
    assert sorted(p.name for p in raws[0].iterdir()) == sorted(FASHION_MNIST_FILES)


def test_second_load_reuses_the_unpacked_files(tmp_path: Path) -> None:
    debian = tmp_path / "deb"
    _write_debian_layout(debian)
    FashionMNISTTask().load(_options(debian))
    (raw,) = (tmp_path / "cache").rglob("FashionMNIST/raw")
    stamp = {p.name: p.stat().st_mtime_ns for p in raw.iterdir()}

    data = FashionMNISTTask().load(_options(debian))

    assert {p.name: p.stat().st_mtime_ns for p in raw.iterdir()} == stamp
    np.testing.assert_array_equal(data.pool.y, TRAIN_Y)


def test_two_debian_directories_do_not_share_a_cache(tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    _write_debian_layout(first)
    _write_debian_layout(second)
    labels = TEST_Y[::-1].copy()
    (second / "t10k-labels-idx1-ubyte.gz").write_bytes(
        gzip.compress(
            struct.pack(">II", 0x00000801, len(labels)) + labels.astype(np.uint8).tobytes()
        )
    )

    a = FashionMNISTTask().load(_options(first))
    b = FashionMNISTTask().load(_options(second))

    assert a.server_test is not None and b.server_test is not None
    np.testing.assert_array_equal(a.server_test.y, TEST_Y)
    np.testing.assert_array_equal(b.server_test.y, labels)


def test_incomplete_debian_directory_names_the_layout(tmp_path: Path) -> None:
    debian = tmp_path / "deb"
    _write_debian_layout(debian)
    (debian / "t10k-labels-idx1-ubyte.gz").unlink()

    with pytest.raises(DataUnavailableError, match="FashionMNIST"):
        FashionMNISTTask().load(_options(debian))
