"""Image tasks read through torchvision from local files: Fashion-MNIST, CIFAR-10, CIFAR-100.

Every loader reads only ``data-dir`` (torchvision's own on-disk layout) unless the run config
sets ``download=true``; Fashion-MNIST can also come from the Debian package
``dataset-fashion-mnist``. Images become float32 ``N x C x H x W`` arrays, scaled to [0, 1]
and normalised per channel with fixed constants, so every process computes the same arrays.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import pickle
import shutil
import tempfile
from abc import abstractmethod
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from numpy.typing import NDArray
from torch import nn
from torchvision import datasets

from tasks.base import DataOptions, Task
from tasks.data import ArrayData, DataUnavailableError, TaskData
from tasks.models import SmallCNN

DEBIAN_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
"""Where ``apt-get install dataset-fashion-mnist`` puts the four idx ``.gz`` files."""

FASHION_MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
"""The uncompressed idx files torchvision reads from ``<root>/FashionMNIST/raw/``."""

# What torchvision raises on missing, truncated or malformed files (it uses asserts, pickle
# and plain RuntimeErrors); all of them become a DataUnavailableError with a fix.
_READ_ERRORS = (
    RuntimeError,
    AssertionError,
    OSError,
    ValueError,
    TypeError,
    KeyError,
    IndexError,
    EOFError,
    pickle.UnpicklingError,
)


def cache_root() -> Path:
    """Per-user cache for data unpacked on the fly (``$XDG_CACHE_HOME/dualflower/datasets``)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "dualflower" / "datasets"


def normalize_images(
    images: NDArray[np.uint8], mean: tuple[float, ...], std: tuple[float, ...]
) -> NDArray[np.float32]:
    """uint8 ``N x C x H x W`` images -> float32 ``(x/255 - mean[c]) / std[c]`` (one copy)."""
    x = np.ascontiguousarray(images, dtype=np.float32)
    scale = (1.0 / (255.0 * np.asarray(std, dtype=np.float64))).astype(np.float32)
    shift = (np.asarray(mean, dtype=np.float64) / np.asarray(std, dtype=np.float64)).astype(
        np.float32
    )
    x *= scale[None, :, None, None]
    x -= shift[None, :, None, None]
    return x


class TorchvisionTask(Task):
    """Shared loader and model for a torchvision image dataset with an official test split.

    The training split is the pool that is partitioned; the official test split is the server
    test set. ``dataset_class`` is the torchvision class used to read the files; pass another
    (e.g. a subclass with a different checksum table) to the constructor to read other data.
    """

    title: ClassVar[str] = ""
    num_classes: ClassVar[int] = 0
    in_channels: ClassVar[int] = 0
    side: ClassVar[int] = 0
    mean: ClassVar[tuple[float, ...]] = ()
    std: ClassVar[tuple[float, ...]] = ()
    dataset_class: ClassVar[Any] = None

    def __init__(self, dataset_class: Any = None) -> None:
        """Use ``dataset_class`` instead of the class's torchvision dataset (for tests)."""
        self.dataset = dataset_class if dataset_class is not None else type(self).dataset_class

    def load(self, options: DataOptions) -> TaskData:
        """Read both splits from ``options.data_dir`` (downloading only if asked)."""
        root = self.prepare_root(options)
        try:
            train = self.dataset(root=str(root), train=True, download=options.download)
            test = self.dataset(root=str(root), train=False, download=options.download)
            pool, server_test = self.to_arrays(train), self.to_arrays(test)
        except _READ_ERRORS as err:
            raise DataUnavailableError(
                f"{self.title}: could not read the dataset under {str(root)!r} "
                f"({type(err).__name__}: {err}). {self.fix_hint(root)}"
            ) from err
        return TaskData(pool=pool, server_test=server_test, num_classes=self.num_classes)

    def build_model(self, personalization: str) -> nn.Module:
        """SmallCNN sized for this dataset's images and classes."""
        return SmallCNN(self.in_channels, self.side, self.num_classes)

    def prepare_root(self, options: DataOptions) -> Path:
        """The directory handed to torchvision as ``root``; fails early if none is set."""
        if not options.data_dir:
            raise DataUnavailableError(
                f"{self.title}: the run-config key data-dir must be set (it is empty), e.g. "
                "flwr run . --run-config \"data-dir='/path/to/data'\". "
                f"{self.fix_hint(Path('<data-dir>'))}"
            )
        return Path(options.data_dir).expanduser()

    @abstractmethod
    def layout(self, root: Path) -> str:
        """The files torchvision expects under ``root``, for error messages."""

    def fix_hint(self, root: Path) -> str:
        """How to make the dataset available under ``root``."""
        return (
            f"Fix: put {self.layout(root)}, or set download=true in the run config to let "
            f"torchvision fetch it into data-dir (needs internet)."
        )

    def to_arrays(self, dataset: Any) -> ArrayData:
        """A torchvision dataset's ``.data``/``.targets`` as normalised float32 NCHW arrays."""
        images = np.asarray(dataset.data)
        if images.ndim == 3:  # N x H x W (grayscale, MNIST-style)
            images = images[:, None]
        elif images.ndim == 4:  # N x H x W x C (CIFAR-style)
            images = images.transpose(0, 3, 1, 2)
        expected = (self.in_channels, self.side, self.side)
        if images.dtype != np.uint8 or images.shape[1:] != expected:
            raise ValueError(
                f"images are {images.dtype} {images.shape[1:]}, expected uint8 {expected}"
            )
        labels = np.asarray(dataset.targets, dtype=np.int64).reshape(-1)
        if len(labels) != len(images):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        if len(labels) and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise ValueError(f"labels outside 0..{self.num_classes - 1}")
        return ArrayData(normalize_images(images, self.mean, self.std), labels)


class FashionMNISTTask(TorchvisionTask):
    """Fashion-MNIST: 60k/10k 28x28 grayscale images, 10 classes.

    Reads ``<data-dir>/FashionMNIST/raw/``. ``data-dir`` may also be a directory in the
    Debian package's layout (the four idx ``.gz`` files directly in it, e.g.
    ``DEBIAN_FASHION_MNIST_DIR`` itself): they are unpacked into the user cache, in a folder
    keyed by that directory's path, and never into it. Otherwise, if
    ``<data-dir>/FashionMNIST/raw/`` is incomplete and the Debian package's files are in
    ``DEBIAN_FASHION_MNIST_DIR``, they are unpacked there first (or into the user cache when
    data-dir is empty or read-only).
    """

    name = "fashion-mnist"
    title = "Fashion-MNIST"
    num_classes = 10
    in_channels = 1
    side = 28
    mean = (0.2860,)
    std = (0.3530,)
    dataset_class = datasets.FashionMNIST

    def prepare_root(self, options: DataOptions) -> Path:
        """``data-dir``, after filling ``FashionMNIST/raw/`` from the Debian package if needed."""
        data_dir = Path(options.data_dir).expanduser() if options.data_dir else None
        if data_dir is not None and _has_fashion_layout(data_dir):
            return data_dir
        if data_dir is not None and _has_debian_layout(data_dir):
            debian = data_dir
            key = hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:16]
            candidates = [cache_root() / "debian-layout" / key]
        else:
            debian = Path(DEBIAN_FASHION_MNIST_DIR)
            if not _has_debian_layout(debian):
                return super().prepare_root(options)
            candidates = [data_dir, cache_root()] if data_dir is not None else [cache_root()]
        target = next((c for c in candidates if _writable_raw_dir(c)), None)
        if target is None:
            raise DataUnavailableError(
                f"{self.title}: found the Debian package files in {str(debian)!r} but cannot "
                f"unpack them: none of {[str(c) for c in candidates]} is writable. "
                "Fix: set data-dir to a writable directory (or XDG_CACHE_HOME, when data-dir "
                "is the directory of .gz files)."
            )
        try:
            _unpack_fashion(debian, target)
        except OSError as err:
            raise DataUnavailableError(
                f"{self.title}: could not unpack the Debian package files from "
                f"{str(debian)!r} into {str(target / 'FashionMNIST' / 'raw')!r} "
                f"({type(err).__name__}: {err}). Fix: "
                "`apt-get install --reinstall dataset-fashion-mnist`, or free disk space."
            ) from err
        return target

    def layout(self, root: Path) -> str:
        """The four uncompressed idx files under ``FashionMNIST/raw/``."""
        raw = root / "FashionMNIST" / "raw"
        return (
            f"the uncompressed idx files {', '.join(FASHION_MNIST_FILES)} in {str(raw)!r}"
            f" (or run `apt-get install dataset-fashion-mnist`, which provides them as .gz in "
            f"{str(DEBIAN_FASHION_MNIST_DIR)!r}; they are unpacked automatically)"
        )


class CIFAR10Task(TorchvisionTask):
    """CIFAR-10: 50k/10k 32x32 RGB images, 10 classes (torchvision checks every file's md5)."""

    name = "cifar10"
    title = "CIFAR-10"
    num_classes = 10
    in_channels = 3
    side = 32
    mean = (0.4914, 0.4822, 0.4465)
    std = (0.2470, 0.2435, 0.2616)
    dataset_class = datasets.CIFAR10

    def layout(self, root: Path) -> str:
        """The python-pickle batches extracted from ``cifar-10-python.tar.gz``."""
        return (
            f"the unpacked cifar-10-python.tar.gz so that {str(root / 'cifar-10-batches-py')!r} "
            "holds data_batch_1..data_batch_5, test_batch and batches.meta (the original, "
            "unmodified files: their md5 sums are checked)"
        )


class CIFAR100Task(TorchvisionTask):
    """CIFAR-100: 50k/10k 32x32 RGB images, 100 fine classes (md5-checked like CIFAR-10)."""

    name = "cifar100"
    title = "CIFAR-100"
    num_classes = 100
    in_channels = 3
    side = 32
    mean = (0.5071, 0.4865, 0.4409)
    std = (0.2673, 0.2564, 0.2762)
    dataset_class = datasets.CIFAR100

    def layout(self, root: Path) -> str:
        """The python-pickle files extracted from ``cifar-100-python.tar.gz``."""
        return (
            f"the unpacked cifar-100-python.tar.gz so that {str(root / 'cifar-100-python')!r} "
            "holds train, test and meta (the original, unmodified files: their md5 sums are "
            "checked)"
        )


def _has_debian_layout(directory: Path) -> bool:
    """The four idx ``.gz`` files directly in ``directory`` (``dataset-fashion-mnist``)."""
    return all((directory / f"{name}.gz").is_file() for name in FASHION_MNIST_FILES)


def _has_fashion_layout(root: Path) -> bool:
    raw = root / "FashionMNIST" / "raw"
    return all((raw / name).is_file() for name in FASHION_MNIST_FILES)


def _writable_raw_dir(root: Path) -> bool:
    raw = root / "FashionMNIST" / "raw"
    try:
        raw.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(raw, os.W_OK | os.X_OK)


def _unpack_fashion(source: Path, root: Path) -> None:
    """Gunzip the missing idx files from ``source`` into ``root/FashionMNIST/raw/``.

    Each file is written to a temporary name and renamed, so processes loading at the same
    time never see half-written files.
    """
    raw = root / "FashionMNIST" / "raw"
    for name in FASHION_MNIST_FILES:
        if (raw / name).is_file():
            continue
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", dir=raw)
        try:
            with os.fdopen(fd, "wb") as out, gzip.open(source / f"{name}.gz", "rb") as src:
                shutil.copyfileobj(src, out, 1 << 20)
            os.replace(tmp, raw / name)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


VISION_TASKS: dict[str, type[Task]] = {
    "fashion-mnist": FashionMNISTTask,
    "cifar10": CIFAR10Task,
    "cifar100": CIFAR100Task,
}
"""Task name -> task class, looked up lazily by ``tasks.registry``."""
