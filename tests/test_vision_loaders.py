"""The torchvision-backed loaders on miniatures written in the real on-disk formats.

Nothing is downloaded: every test writes a few images as FashionMNIST idx files, CIFAR-10
batches or CIFAR-100 pickles under tmp_path. CIFAR's md5 table is overridden by a test-only
subclass of the torchvision dataset; the production classes keep the official checksums.
"""

from __future__ import annotations

import gzip
import hashlib
import pickle
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from numpy.typing import NDArray
from torchvision import datasets

from tasks import vision
from tasks.base import DataOptions
from tasks.data import DataUnavailableError
from tasks.federation import build_federation, federation_spec
from tasks.registry import get_task
from tasks.vision import (
    CIFAR10Task,
    CIFAR100Task,
    FashionMNISTTask,
    TorchvisionTask,
)

# ---------------------------------------------------------------- miniature writers


def _images(seed: int, n: int, channels: int, side: int) -> NDArray[np.uint8]:
    return np.random.default_rng(seed).integers(0, 256, (n, channels, side, side), dtype=np.uint8)


def _write_idx_images(path: Path, images: NDArray[np.uint8]) -> None:
    n, h, w = images.shape
    path.write_bytes(struct.pack(">IIII", 0x00000803, n, h, w) + images.tobytes())


def _write_idx_labels(path: Path, labels: NDArray[np.int64]) -> None:
    path.write_bytes(
        struct.pack(">II", 0x00000801, len(labels)) + labels.astype(np.uint8).tobytes()
    )


FASHION = {
    "train": (_images(1, 12, 1, 28)[:, 0], np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 3, 7])),
    "t10k": (_images(2, 6, 1, 28)[:, 0], np.array([9, 8, 7, 1, 0, 2])),
}


def _fashion_files(directory: Path, compress: bool = False) -> None:
    """The four idx files (``.gz`` if ``compress``, as the Debian package ships them)."""
    directory.mkdir(parents=True, exist_ok=True)
    for split, (images, labels) in FASHION.items():
        _write_idx_images(directory / f"{split}-images-idx3-ubyte", images)
        _write_idx_labels(directory / f"{split}-labels-idx1-ubyte", labels)
    if compress:
        for path in list(directory.iterdir()):
            (directory / f"{path.name}.gz").write_bytes(gzip.compress(path.read_bytes()))
            path.unlink()


def _cifar_dump(path: Path, images: NDArray[np.uint8], labels: dict[str, Any]) -> None:
    # data: uint8 N x 3072, the R plane then G then B (row-major 32x32 each)
    entry = {"batch_label": path.name, "data": images.reshape(len(images), 3072), **labels}
    with path.open("wb") as f:
        pickle.dump(entry, f, protocol=2)


CIFAR10_TRAIN = _images(3, 10, 3, 32)
CIFAR10_TRAIN_Y = np.array([3, 1, 4, 1, 5, 9, 2, 6, 5, 3])
CIFAR10_TEST = _images(4, 6, 3, 32)
CIFAR10_TEST_Y = np.array([0, 9, 8, 7, 6, 5])
# image 0 of the training pool: constant R, G and B planes, to check the channel order
CIFAR10_TRAIN[0, 0], CIFAR10_TRAIN[0, 1], CIFAR10_TRAIN[0, 2] = 200, 100, 0


def _write_cifar10(root: Path) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for b in range(5):
        rows = slice(2 * b, 2 * b + 2)
        _cifar_dump(
            folder / f"data_batch_{b + 1}",
            CIFAR10_TRAIN[rows],
            {"labels": CIFAR10_TRAIN_Y[rows].tolist()},
        )
    _cifar_dump(folder / "test_batch", CIFAR10_TEST, {"labels": CIFAR10_TEST_Y.tolist()})
    with (folder / "batches.meta").open("wb") as f:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)], "num_vis": 3072}, f)
    return folder


CIFAR100_TRAIN = _images(5, 8, 3, 32)
CIFAR100_TRAIN_Y = np.array([99, 0, 42, 17, 42, 63, 5, 88])
CIFAR100_TEST = _images(6, 6, 3, 32)
CIFAR100_TEST_Y = np.array([1, 98, 50, 50, 7, 0])


def _write_cifar100(root: Path) -> Path:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    for name, images, fine in [
        ("train", CIFAR100_TRAIN, CIFAR100_TRAIN_Y),
        ("test", CIFAR100_TEST, CIFAR100_TEST_Y),
    ]:
        labels = {"fine_labels": fine.tolist(), "coarse_labels": (fine // 5).tolist()}
        _cifar_dump(folder / name, images, labels)
    with (folder / "meta").open("wb") as f:
        pickle.dump(
            {
                "fine_label_names": [f"f{i}" for i in range(100)],
                "coarse_label_names": [f"c{i}" for i in range(20)],
            },
            f,
        )
    return folder


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _checksummed(base: type[datasets.CIFAR10], root: Path) -> type[datasets.CIFAR10]:
    """A test-only subclass of ``base`` whose md5 table is the miniature's own."""
    folder = root / base.base_folder
    return type(
        f"Mini{base.__name__}",
        (base,),
        {
            "train_list": [[name, _md5(folder / name)] for name, _ in base.train_list],
            "test_list": [[name, _md5(folder / name)] for name, _ in base.test_list],
            "meta": {**base.meta, "md5": _md5(folder / base.meta["filename"])},
        },
    )


def _options(data_dir: Path | str, download: bool = False) -> DataOptions:
    return DataOptions(str(data_dir), download, seed=0, num_partitions=2)


def _normalised(task: TorchvisionTask, value: int, channel: int) -> float:
    return (value / 255.0 - task.mean[channel]) / task.std[channel]


@pytest.fixture(autouse=True)
def _no_system_data(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Hide any installed Debian package and the user's cache from every test."""
    monkeypatch.setattr(vision, "DEBIAN_FASHION_MNIST_DIR", tmp_path / "no-debian")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


# ---------------------------------------------------------------- reading the miniatures


def test_fashion_mnist_reads_raw_idx_files(tmp_path: Path) -> None:
    _fashion_files(tmp_path / "FashionMNIST" / "raw")
    task = FashionMNISTTask()
    data = task.load(_options(tmp_path))

    assert data.num_classes == 10
    assert data.server_test is not None
    assert data.pool.x.shape == (12, 1, 28, 28)
    assert data.server_test.x.shape == (6, 1, 28, 28)
    assert data.pool.x.dtype == np.float32 and data.server_test.x.dtype == np.float32
    assert data.pool.y.dtype == np.int64
    np.testing.assert_array_equal(data.pool.y, FASHION["train"][1])
    np.testing.assert_array_equal(data.server_test.y, FASHION["t10k"][1])

    train_images, test_images = FASHION["train"][0], FASHION["t10k"][0]
    raw = int(train_images[5, 17, 3])
    assert data.pool.x[5, 0, 17, 3] == pytest.approx(_normalised(task, raw, 0), abs=1e-5)
    expected_test = (test_images / 255.0 - task.mean[0]) / task.std[0]
    np.testing.assert_allclose(data.server_test.x[:, 0], expected_test, atol=1e-5)


def test_cifar10_reads_python_batches(tmp_path: Path) -> None:
    _write_cifar10(tmp_path)
    task = CIFAR10Task(dataset_class=_checksummed(datasets.CIFAR10, tmp_path))
    data = task.load(_options(tmp_path))

    assert data.num_classes == 10
    assert data.server_test is not None
    assert data.pool.x.shape == (10, 3, 32, 32)
    assert data.server_test.x.shape == (6, 3, 32, 32)
    assert data.pool.x.dtype == np.float32
    np.testing.assert_array_equal(data.pool.y, CIFAR10_TRAIN_Y)  # batches 1..5 in order
    np.testing.assert_array_equal(data.server_test.y, CIFAR10_TEST_Y)

    # channel order R, G, B survives the HWC round trip through torchvision
    for channel, value in enumerate((200, 100, 0)):
        assert data.pool.x[0, channel] == pytest.approx(
            np.full((32, 32), _normalised(task, value, channel)), abs=1e-5
        )
    raw = int(CIFAR10_TRAIN[7, 1, 30, 2])
    assert data.pool.x[7, 1, 30, 2] == pytest.approx(_normalised(task, raw, 1), abs=1e-5)
    mean = np.asarray(task.mean)[None, :, None, None]
    std = np.asarray(task.std)[None, :, None, None]
    np.testing.assert_allclose(data.server_test.x, (CIFAR10_TEST / 255.0 - mean) / std, atol=1e-5)


def test_cifar100_reads_fine_labels(tmp_path: Path) -> None:
    _write_cifar100(tmp_path)
    task = CIFAR100Task(dataset_class=_checksummed(datasets.CIFAR100, tmp_path))
    data = task.load(_options(tmp_path))

    assert data.num_classes == 100
    assert data.server_test is not None
    assert data.pool.x.shape == (8, 3, 32, 32)
    assert data.server_test.x.shape == (6, 3, 32, 32)
    assert data.server_test.x.dtype == np.float32
    np.testing.assert_array_equal(data.pool.y, CIFAR100_TRAIN_Y)
    np.testing.assert_array_equal(data.server_test.y, CIFAR100_TEST_Y)
    raw = int(CIFAR100_TEST[3, 2, 0, 31])
    assert data.server_test.x[3, 2, 0, 31] == pytest.approx(_normalised(task, raw, 2), abs=1e-5)


# ---------------------------------------------------------------- missing and corrupt data


@pytest.mark.parametrize(
    ("task", "fix"),
    [
        (FashionMNISTTask(), "apt-get install dataset-fashion-mnist"),
        (CIFAR10Task(), "cifar-10-batches-py"),
        (CIFAR100Task(), "cifar-100-python"),
    ],
    ids=["fashion-mnist", "cifar10", "cifar100"],
)
def test_missing_directory_names_directory_and_fix(
    task: TorchvisionTask, fix: str, tmp_path: Path
) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(DataUnavailableError) as info:
        task.load(_options(missing))
    message = str(info.value)
    assert task.title in message
    assert str(missing) in message
    assert fix in message
    assert "download=true" in message


@pytest.mark.parametrize("task", [FashionMNISTTask(), CIFAR10Task(), CIFAR100Task()])
def test_empty_data_dir_asks_for_data_dir(task: TorchvisionTask) -> None:
    with pytest.raises(DataUnavailableError, match="data-dir must be set"):
        task.load(_options(""))


def test_fashion_mnist_layout_hint_names_raw_folder(tmp_path: Path) -> None:
    with pytest.raises(DataUnavailableError) as info:
        FashionMNISTTask().load(_options(tmp_path))
    assert str(tmp_path / "FashionMNIST" / "raw") in str(info.value)
    assert "train-images-idx3-ubyte" in str(info.value)


def test_fashion_mnist_bad_idx_header_is_rejected(tmp_path: Path) -> None:
    raw = tmp_path / "FashionMNIST" / "raw"
    _fashion_files(raw)
    path = raw / "train-images-idx3-ubyte"
    path.write_bytes(struct.pack(">I", 0x00000801) + path.read_bytes()[4:])  # labels' magic
    with pytest.raises(DataUnavailableError, match="Fashion-MNIST"):
        FashionMNISTTask().load(_options(tmp_path))


@pytest.mark.parametrize(
    ("task", "write"),
    [(CIFAR10Task(), _write_cifar10), (CIFAR100Task(), _write_cifar100)],
    ids=["cifar10", "cifar100"],
)
def test_production_checksums_reject_foreign_files(
    task: TorchvisionTask, write: Any, tmp_path: Path
) -> None:
    """The shipped loader keeps torchvision's official md5 table: the miniature fails it."""
    write(tmp_path)
    with pytest.raises(DataUnavailableError, match="corrupted") as info:
        task.load(_options(tmp_path))
    assert "md5" in str(info.value)


def test_cifar10_corrupted_file_fails_checksum(tmp_path: Path) -> None:
    folder = _write_cifar10(tmp_path)
    dataset_class = _checksummed(datasets.CIFAR10, tmp_path)
    blob = bytearray((folder / "data_batch_3").read_bytes())
    blob[-100] ^= 0xFF  # one flipped pixel byte: still unpickles, but the md5 differs
    (folder / "data_batch_3").write_bytes(bytes(blob))
    with pytest.raises(DataUnavailableError, match="corrupted"):
        CIFAR10Task(dataset_class=dataset_class).load(_options(tmp_path))


# ---------------------------------------------------------------- Debian package fallback


def test_fashion_mnist_unpacks_debian_package(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    debian = tmp_path / "usr-share-datasets-fashion-mnist"
    _fashion_files(debian, compress=True)
    monkeypatch.setattr(vision, "DEBIAN_FASHION_MNIST_DIR", debian)
    data_dir = tmp_path / "data"

    data = FashionMNISTTask().load(_options(data_dir))

    raw = data_dir / "FashionMNIST" / "raw"
    assert sorted(p.name for p in raw.iterdir()) == sorted(vision.FASHION_MNIST_FILES)
    assert data.server_test is not None
    np.testing.assert_array_equal(data.pool.y, FASHION["train"][1])
    np.testing.assert_array_equal(data.server_test.y, FASHION["t10k"][1])
    assert data.pool.x.shape == (12, 1, 28, 28)


def test_fashion_mnist_debian_package_without_data_dir_uses_cache(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    debian = tmp_path / "deb"
    _fashion_files(debian, compress=True)
    monkeypatch.setattr(vision, "DEBIAN_FASHION_MNIST_DIR", debian)

    data = FashionMNISTTask().load(_options(""))

    raw = tmp_path / "cache" / "dualflower" / "datasets" / "FashionMNIST" / "raw"
    assert (raw / "t10k-labels-idx1-ubyte").is_file()
    assert data.server_test is not None
    np.testing.assert_array_equal(data.server_test.y, FASHION["t10k"][1])


# ---------------------------------------------------------------- models and federation


@pytest.mark.parametrize(
    ("name", "shape", "classes"),
    [
        ("fashion-mnist", (1, 28, 28), 10),
        ("cifar10", (3, 32, 32), 10),
        ("cifar100", (3, 32, 32), 100),
    ],
)
def test_registry_builds_model_of_right_size(
    name: str, shape: tuple[int, ...], classes: int
) -> None:
    task = get_task(name)
    assert task.name == name
    torch.manual_seed(0)
    model = task.build_model("none")
    assert model(torch.zeros(2, *shape)).shape == (2, classes)


def test_build_federation_on_cifar10_miniature(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The registry path: ``task="cifar10"`` through ``federation_spec``/``build_federation``."""
    _write_cifar10(tmp_path)

    class MiniCIFAR10Task(CIFAR10Task):
        dataset_class = _checksummed(datasets.CIFAR10, tmp_path)

    monkeypatch.setitem(vision.VISION_TASKS, "cifar10", MiniCIFAR10Task)
    config = {
        "seed": 3,
        "task": "cifar10",
        "data-dir": str(tmp_path),
        "download": False,
        "partitioner": "iid",
        "dirichlet-alpha": 0.5,
        "classes-per-client": 2,
        "local-test-fraction": 0.2,
    }
    try:
        federation = build_federation(federation_spec(config, num_partitions=2))
    finally:
        build_federation.cache_clear()

    assert federation.num_classes == 10
    assert len(federation.clients) == 2
    assert federation.server_test is not None
    np.testing.assert_array_equal(federation.server_test.y, CIFAR10_TEST_Y)
    labels = np.concatenate([np.concatenate([c.train.y, c.test.y]) for c in federation.clients])
    np.testing.assert_array_equal(np.sort(labels), np.sort(CIFAR10_TRAIN_Y))
    for client in federation.clients:
        assert len(client.train) >= 1 and len(client.test) >= 1
        assert client.train.x.shape[1:] == (3, 32, 32)
        assert client.train.x.dtype == np.float32
