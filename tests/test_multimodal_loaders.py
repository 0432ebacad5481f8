"""KU-HAR, CREMA-D and CrisisMMD loaders on miniatures written in the real on-disk formats.

Nothing is downloaded: each test writes a few recordings, WAV clips, feature arrays, FLV
videos (when PyAV is installed), TSV splits and JPEGs under tmp_path, with the datasets'
own file names and column layouts, and runs the production loader on them.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray
from PIL import Image
from scipy.io import wavfile

from client_app.runtime import PERSONAL
from tasks import multimodal
from tasks.base import DataOptions, Task
from tasks.data import DataUnavailableError, TaskData, stratified_holdout
from tasks.federation import build_federation, federation_spec
from tasks.multimodal import cremad
from tasks.multimodal.cremad import AUDIO_STEPS, N_MELS, VIDEO_DIM, VIDEO_STEPS, CremaDTask
from tasks.multimodal.crisismmd import COLUMNS, LABELS, TEXT_FEATURES, CrisisMMDTask
from tasks.multimodal.features import hashed_text
from tasks.multimodal.kuhar import (
    SUBSAMPLES_FILE,
    TRIMMED_DIR,
    WINDOW,
    KUHARSubsamplesTask,
    KUHARTask,
)
from tasks.registry import get_task
from tests.conftest import read_metrics, run_local


def _options(data_dir: Path | str, seed: int = 0) -> DataOptions:
    return DataOptions(str(data_dir), False, seed=seed, num_partitions=2)


def _columns(data: TaskData, task: Task) -> list[tuple[str, NDArray[np.float32], Any]]:
    """Split both pool and test rows back into (name, values, lengths) per modality."""
    import torch

    assert data.server_test is not None
    x = np.concatenate([data.pool.x, data.server_test.x])
    layout = task.layout  # type: ignore[attr-defined]
    return [
        (m.name, v.numpy(), None if n is None else n.numpy())
        for m, (v, n) in zip(layout.modalities, layout.unpack(torch.as_tensor(x)), strict=True)
    ]


# ---------------------------------------------------------------- KU-HAR


def _recording(steps: int, seed: int) -> NDArray[np.float64]:
    """8 columns at 100 Hz: acc time ms, ax, ay, az, gyro time ms, gx, gy, gz."""
    rng = np.random.default_rng(seed)
    t = np.arange(steps) * 10.0
    acc, gyro = rng.normal(0, 3, (steps, 3)), rng.normal(0, 0.5, (steps, 3))
    return np.column_stack([t, acc, t, gyro])


# (class folder, file, steps): windows of 300; a tail of >= 100 steps is kept, padded
KUHAR_FILES = [
    ("0.Stand", "1001_A_1.csv", 650),  # 300, 300 (tail 50 dropped)
    ("0.Stand", "1002_A_1.csv", 300),  # 300
    ("11.Walk", "1001_L_1.csv", 420),  # 300, 120
    ("11.Walk", "1003_L_2.csv", 300),  # 300
    ("14.Run", "1002_O_1.csv", 80),  # nothing: shorter than 1 s
]
KUHAR_WINDOWS = [  # (file index, start, length, class, user), in loader order
    (0, 0, 300, 0, 1001),
    (0, 300, 300, 0, 1001),
    (1, 0, 300, 0, 1002),
    (2, 0, 300, 11, 1001),
    (2, 300, 120, 11, 1001),
    (3, 0, 300, 11, 1003),
]


def _write_trimmed(root: Path) -> list[NDArray[np.float64]]:
    recordings = []
    for i, (folder, name, steps) in enumerate(KUHAR_FILES):
        (root / TRIMMED_DIR / folder).mkdir(parents=True, exist_ok=True)
        rec = _recording(steps, i)
        np.savetxt(root / TRIMMED_DIR / folder / name, rec, delimiter=",", fmt="%.6f")
        recordings.append(rec)
    (root / TRIMMED_DIR / "README.txt").write_text("not a class folder")
    return recordings


def _standardized(raw: list[NDArray[np.float64]], lengths: list[int], pool: list[int]) -> Any:
    """Per-channel standardisation of ``raw`` windows with the valid steps of ``pool`` rows."""
    fit = np.concatenate([raw[i][: lengths[i]] for i in pool])
    mean, std = fit.mean(axis=0), fit.std(axis=0)
    return [(w[:n] - mean) / std for w, n in zip(raw, lengths, strict=True)]


def test_ku_har_windows_trimmed_recordings_by_user(tmp_path: Path) -> None:
    recordings = _write_trimmed(tmp_path)
    task = KUHARTask()
    data = task.load(_options(tmp_path))

    y = np.array([w[3] for w in KUHAR_WINDOWS])
    keep, held = stratified_holdout(y, 0.2, 0)
    assert data.server_test is not None
    np.testing.assert_array_equal(data.pool.y, y[keep])
    np.testing.assert_array_equal(data.server_test.y, y[held])
    assert data.num_classes == 18 and data.pool.x.shape[1] == 2 * WINDOW * 3 + 2
    # natural clients: users of the pool rows, renumbered 0..G-1 in user-id order
    users = np.array([w[4] for w in KUHAR_WINDOWS])[keep]
    assert data.groups is not None
    np.testing.assert_array_equal(data.groups, np.unique(users, return_inverse=True)[1])

    raw = [recordings[f][s : s + WINDOW, [1, 2, 3, 5, 6, 7]] for f, s, *_ in KUHAR_WINDOWS]
    lengths = [w[2] for w in KUHAR_WINDOWS]
    expected = _standardized(raw, lengths, list(keep))
    order = np.concatenate([keep, held])  # pool rows first, then the server test rows
    (acc, acc_x, acc_n), (gyro, gyro_x, gyro_n) = _columns(data, task)
    assert (acc, gyro) == ("acc", "gyro")
    np.testing.assert_array_equal(acc_n, np.array(lengths)[order])
    np.testing.assert_array_equal(gyro_n, acc_n)
    for row, i in enumerate(order):
        n = lengths[i]
        np.testing.assert_allclose(acc_x[row, :n], expected[i][:, :3], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(gyro_x[row, :n], expected[i][:, 3:], rtol=1e-4, atol=1e-5)
        assert not acc_x[row, n:].any() and not gyro_x[row, n:].any()  # zero padding


def test_ku_har_natural_partition_gives_one_user_per_client(tmp_path: Path) -> None:
    _write_trimmed(tmp_path)
    config = {
        "seed": 0,
        "task": "ku-har",
        "data-dir": str(tmp_path),
        "download": False,
        "partitioner": "natural",
        "dirichlet-alpha": 0.5,
        "classes-per-client": 2,
        "local-test-fraction": 0.0,
    }
    data = KUHARTask().load(_options(tmp_path))
    assert data.groups is not None
    try:
        federation = build_federation(federation_spec(config, int(data.groups.max()) + 1))
    finally:
        build_federation.cache_clear()
    sizes = [len(c.train) for c in federation.clients]
    assert sizes == np.bincount(data.groups).tolist()
    for client, user in zip(federation.clients, range(len(sizes)), strict=True):
        rows = np.flatnonzero(data.groups == user)
        np.testing.assert_array_equal(client.train.x, data.pool.x[rows])


def test_ku_har_paper_mode_end_to_end_keeps_conv_stacks_local(
    tmp_path: Path, config: dict[str, Any]
) -> None:
    """FedPer with the FedAPM code's KU-HAR split: only the GRUs, fusion and head travel."""
    _write_trimmed(tmp_path / "data")
    config.update(
        {
            "task": "ku-har",
            "data-dir": str(tmp_path / "data"),
            "algorithm": "fedper",
            "personalization": "paper",
            "partitioner": "natural",
            "local-epochs": 1,
            "batch-size": 2,
            "local-test-fraction": 0.0,
        }
    )
    run_dir, grid = run_local(config, 3)  # the pool holds windows of users 1001, 1002, 1003

    assert len(read_metrics(run_dir)) == 2
    travelled = {
        k
        for msg in grid.sent + grid.received
        for rec in msg.content.array_records.values()
        for k in rec
    }
    assert travelled and not any(".conv." in k for k in travelled)
    assert any(k.startswith("encoders.acc.gru.") for k in travelled)
    for nid in grid.node_ids:
        personal = list(grid.contexts[nid].state[PERSONAL].keys())
        assert personal and all(k.split(".")[2] == "conv" for k in personal)


def _write_subsamples(root: Path, lengths: list[int], classes: list[int]) -> NDArray[np.float64]:
    n = len(lengths)
    signal = np.random.default_rng(5).normal(size=(n, 6, WINDOW))
    for i, k in enumerate(lengths):
        signal[i, :, k:] = 0.0
    serial = np.arange(1, n + 1)
    table = np.column_stack([signal.reshape(n, 6 * WINDOW), classes, lengths, serial])
    (root / SUBSAMPLES_FILE).parent.mkdir(parents=True, exist_ok=True)
    np.savetxt(root / SUBSAMPLES_FILE, table, delimiter=",", fmt="%.6g")
    return signal.transpose(0, 2, 1)


def test_ku_har_subsamples_file_without_users(tmp_path: Path) -> None:
    lengths = [300, 300, 150, 300, 300, 300, 300, 211, 300, 300]
    classes = [0, 0, 0, 0, 0, 17, 17, 17, 17, 17]
    raw = _write_subsamples(tmp_path, lengths, classes)
    task = get_task("ku-har-subsamples")
    assert isinstance(task, KUHARSubsamplesTask) and not task.natural_clients
    data = task.load(_options(tmp_path))

    keep, held = stratified_holdout(np.array(classes), 0.2, 0)
    assert data.groups is None and data.server_test is not None
    np.testing.assert_array_equal(data.pool.y, np.array(classes)[keep])
    expected = _standardized(list(raw), lengths, list(keep))
    order = np.concatenate([keep, held])
    (_, acc_x, acc_n), (_, gyro_x, _) = _columns(data, task)
    np.testing.assert_array_equal(acc_n, np.array(lengths)[order])
    for row, i in enumerate(order):
        n = lengths[i]
        np.testing.assert_allclose(acc_x[row, :n], expected[i][:, :3], rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(gyro_x[row, :n], expected[i][:, 3:], rtol=1e-4, atol=1e-4)
        assert not acc_x[row, n:].any()


def test_ku_har_without_trimmed_data_points_to_subsamples_task(tmp_path: Path) -> None:
    _write_subsamples(tmp_path, [300, 300], [1, 2])
    with pytest.raises(DataUnavailableError, match="task='ku-har-subsamples'") as info:
        KUHARTask().load(_options(tmp_path))
    assert str(tmp_path / TRIMMED_DIR) in str(info.value)


@pytest.mark.parametrize(
    ("lengths", "classes", "match"),
    [
        ([300, 0], [1, 2], "length column"),
        ([300, 301], [1, 2], "length column"),
        ([300, 300], [1, 18], "class ids"),
    ],
)
def test_ku_har_subsamples_bad_values(
    tmp_path: Path, lengths: list[int], classes: list[int], match: str
) -> None:
    path = tmp_path / SUBSAMPLES_FILE
    path.parent.mkdir(parents=True)
    table = np.zeros((2, 6 * WINDOW + 3))
    table[:, -3], table[:, -2] = classes, lengths
    np.savetxt(path, table, delimiter=",", fmt="%g")
    with pytest.raises(DataUnavailableError, match=match):
        KUHARSubsamplesTask().load(_options(tmp_path))


def test_ku_har_malformed_recording_names_the_file(tmp_path: Path) -> None:
    _write_trimmed(tmp_path)
    bad = tmp_path / TRIMMED_DIR / "11.Walk" / "1003_L_2.csv"
    bad.write_text("1,2,3\n4,5,6\n")
    with pytest.raises(DataUnavailableError, match="1003_L_2") as info:
        KUHARTask().load(_options(tmp_path))
    assert "expected 8" in str(info.value)


# ---------------------------------------------------------------- CREMA-D

# (clip, seconds, video frames or None): 16 kHz mono int16, as in AudioWAV/
CREMA_CLIPS = [
    ("1001_DFA_ANG_XX", 0.5, 3),
    ("1001_IEO_HAP_LO", 0.6, 20),
    ("1001_IEO_NEU_XX", 4.5, 8),
    ("1001_TIE_SAD_MD", 0.5, 5),
    ("1002_DFA_ANG_XX", 0.7, 9),
    ("1002_IEO_HAP_HI", 0.5, None),  # no video file: its video length is 0
    ("1002_IEO_NEU_XX", 0.5, 4),
    ("1002_TIE_SAD_MD", 0.5, 6),
    ("1003_DFA_ANG_XX", 0.5, 7),
    ("1003_IEO_HAP_LO", 0.5, 2),
    ("1003_IEO_NEU_XX", 0.5, 1),
    ("1003_TIE_SAD_MD", 0.5, 12),
    ("1003_DFA_DIS_XX", 0.5, 4),  # disgust: not one of the four classes, skipped
]
CLASS_OF = {"NEU": 0, "HAP": 1, "SAD": 2, "ANG": 3}


def _write_audio(root: Path) -> None:
    (root / "AudioWAV").mkdir(parents=True)
    for i, (clip, seconds, _) in enumerate(CREMA_CLIPS):
        t = np.arange(round(seconds * 16_000)) / 16_000
        tone = 0.3 * np.sin(2 * np.pi * (200 + 50 * i) * t)
        wavfile.write(root / "AudioWAV" / f"{clip}.wav", 16_000, (tone * 32767).astype(np.int16))


def _video_features(frames: int, seed: int) -> NDArray[np.float32]:
    rng = np.random.default_rng(seed)
    ramp = np.arange(frames, dtype=np.float32)[:, None]  # feature j of frame r: r * a_j + b_j
    return ramp * rng.normal(size=(1, VIDEO_DIM)).astype(np.float32) + rng.normal(size=VIDEO_DIM)


def _write_features(root: Path) -> None:
    (root / "features" / "video").mkdir(parents=True)
    for i, (clip, _, frames) in enumerate(CREMA_CLIPS):
        if frames is not None:
            np.save(root / "features" / "video" / f"{clip}.npy", _video_features(frames, i))


def _crema_expected() -> tuple[list[tuple[str, float, int | None]], NDArray[np.int64]]:
    clips = sorted((c for c in CREMA_CLIPS if "_DIS_" not in c[0]), key=lambda c: c[0])
    return clips, np.array([CLASS_OF[c[0].split("_")[2]] for c in clips])


def test_crema_d_reads_wav_and_feature_arrays(tmp_path: Path) -> None:
    _write_audio(tmp_path)
    _write_features(tmp_path)
    task = get_task("crema-d")
    assert task.natural_clients
    data = task.load(_options(tmp_path))

    clips, y = _crema_expected()
    keep, held = stratified_holdout(y, 0.2, 0)
    assert data.server_test is not None and data.num_classes == 4
    np.testing.assert_array_equal(data.pool.y, y[keep])
    np.testing.assert_array_equal(data.server_test.y, y[held])
    actors = np.array([int(c[0][:4]) for c in clips])[keep]
    assert data.groups is not None
    np.testing.assert_array_equal(data.groups, np.unique(actors, return_inverse=True)[1])

    order = np.concatenate([keep, held])
    (_, audio, audio_n), (_, video, video_n) = _columns(data, task)
    assert audio.shape[1:] == (AUDIO_STEPS, N_MELS) and video.shape[1:] == (VIDEO_STEPS, VIDEO_DIM)
    # 50 ms windows every 40 ms at 16 kHz: 1 + (samples - 800) // 640 frames, at most 100
    frames = [min(AUDIO_STEPS, 1 + (round(s * 16_000) - 800) // 640) for _, s, _ in clips]
    np.testing.assert_array_equal(audio_n, np.array(frames)[order])
    video_frames = [min(VIDEO_STEPS, f or 0) for _, _, f in clips]
    np.testing.assert_array_equal(video_n, np.array(video_frames)[order])
    for row, i in enumerate(order):
        assert not audio[row, frames[i] :].any() and not video[row, video_frames[i] :].any()
    # pool audio is standardised per mel bin over the valid frames
    pool_frames = np.concatenate([audio[r, : audio_n[r]] for r in range(len(keep))])
    np.testing.assert_allclose(pool_frames.mean(axis=0), 0.0, atol=1e-4)
    # the 20-frame clip is thinned to frames 0, 3, 5, 8, 11, 14, 16, 19 (evenly spaced);
    # standardisation is affine per feature, so ratios of differences survive it
    row = int(np.flatnonzero(order == clips.index(next(c for c in clips if c[2] == 20)))[0])
    picked = np.array([0, 3, 5, 8, 11, 14, 16, 19], dtype=np.float64)
    rel = (video[row, :, :5] - video[row, :1, :5]) / (video[row, 1:2, :5] - video[row, :1, :5])
    np.testing.assert_allclose(rel, np.tile((picked / 3)[:, None], (1, 5)), rtol=1e-3)


def test_crema_d_decodes_flv_with_pyav(tmp_path: Path) -> None:
    av = pytest.importorskip("av")
    _write_audio(tmp_path)
    (tmp_path / "VideoFlash").mkdir()
    for clip, _, frames in CREMA_CLIPS[:4]:
        with av.open(str(tmp_path / "VideoFlash" / f"{clip}.flv"), "w", format="flv") as out:
            stream = out.add_stream("flv", rate=30)
            stream.width, stream.height, stream.pix_fmt = 96, 72, "yuv420p"
            for k in range(frames):
                level = np.full((72, 96, 3), 20 + 10 * k, dtype=np.uint8)
                out.mux(stream.encode(av.VideoFrame.from_ndarray(level, format="rgb24")))
            out.mux(stream.encode())

    thumbs = cremad.read_thumbnails(tmp_path / "VideoFlash" / f"{CREMA_CLIPS[1][0]}.flv")
    assert thumbs.shape == (VIDEO_STEPS, VIDEO_DIM)  # 20 frames thinned to 8
    grey = 20 + 10 * np.array([0, 3, 5, 8, 11, 14, 16, 19])
    np.testing.assert_allclose(thumbs.mean(axis=1) * 255, grey, atol=6)  # lossy codec

    data = CremaDTask().load(_options(tmp_path))
    clips, _ = _crema_expected()
    with_video = {c for c, _, _ in CREMA_CLIPS[:4]}
    (_, _, _), (_, _, video_n) = _columns(data, CremaDTask())
    expected = sorted(min(VIDEO_STEPS, f or 0) if c in with_video else 0 for c, _, f in clips)
    assert sorted(video_n.tolist()) == expected


def test_crema_d_without_video_names_both_sources(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _write_audio(tmp_path)
    with pytest.raises(DataUnavailableError, match="features/video") as info:
        CremaDTask().load(_options(tmp_path))
    assert "VideoFlash" in str(info.value) and "pip install av" in str(info.value)

    (tmp_path / "VideoFlash").mkdir()
    monkeypatch.setattr(cremad, "pyav_available", lambda: False)
    with pytest.raises(DataUnavailableError, match="PyAV is not installed"):
        CremaDTask().load(_options(tmp_path))


def test_crema_d_rejects_bad_feature_arrays_and_missing_clips(tmp_path: Path) -> None:
    (tmp_path / "AudioWAV").mkdir()
    (tmp_path / "AudioWAV" / "1001_DFA_DIS_XX.wav").write_bytes(b"")
    with pytest.raises(DataUnavailableError, match="no WAV clip of emotions NEU, HAP, SAD, ANG"):
        CremaDTask().load(_options(tmp_path))

    _write_audio(tmp_path / "d")
    _write_features(tmp_path / "d")
    np.save(tmp_path / "d" / "features" / "video" / "1002_IEO_NEU_XX.npy", np.zeros((4, 512)))
    with pytest.raises(DataUnavailableError, match="1002_IEO_NEU_XX") as info:
        CremaDTask().load(_options(tmp_path / "d"))
    assert "1280" in str(info.value)


# ---------------------------------------------------------------- CrisisMMD

# (split, event, tweet id, text, label, colour of the image)
TWEETS = [
    (
        "train",
        "hurricane_harvey",
        "901646074527535105",
        "Flooded homes in Houston",
        LABELS[1],
        (200, 10, 10),
    ),
    (
        "train",
        "hurricane_harvey",
        "901646074527535106",
        "Volunteers bring water",
        LABELS[4],
        (10, 200, 10),
    ),
    ("train", "iraq_iran_earthquake", "931866074527535107", "fire fire", LABELS[7], (10, 10, 200)),
    ("dev", "california_wildfires", "917791044158185473", "Evacuate now", LABELS[0], (90, 90, 90)),
    (
        "test",
        "mexico_earthquake",
        "909592442325168128",
        "Bridge collapsed",
        LABELS[1],
        (250, 250, 0),
    ),
    (
        "test",
        "srilanka_floods",
        "870813568217370624",
        "Missing child found",
        LABELS[3],
        (0, 250, 250),
    ),
]


def _write_crisismmd(root: Path) -> None:
    folder = root / "crismmd_datasplit_all"
    folder.mkdir(parents=True)
    for split in ("train", "dev", "test"):
        with (folder / f"task_humanitarian_text_img_{split}.tsv").open("w", newline="") as fh:
            writer = csv.writer(fh, delimiter="\t", lineterminator="\n")
            writer.writerow(COLUMNS)
            for s, event, tweet, text, label, colour in TWEETS:
                if s != split:
                    continue
                image = f"data_image/{event}/{10 + len(tweet) % 3}_9_2017/{tweet}_0.jpg"
                (root / image).parent.mkdir(parents=True, exist_ok=True)
                Image.new("RGB", (64, 48), colour).save(root / image, quality=95)
                writer.writerow(
                    [event, tweet, f"{tweet}_0", text, image, label, label, label, "Positive"]
                )


def test_crisismmd_reads_splits_images_and_text(tmp_path: Path) -> None:
    _write_crisismmd(tmp_path)
    task = get_task("crisismmd")
    assert not task.natural_clients
    data = task.load(_options(tmp_path))

    assert data.num_classes == 8 and data.groups is None and data.server_test is not None
    pool = [t for t in TWEETS if t[0] != "test"]
    test = [t for t in TWEETS if t[0] == "test"]
    np.testing.assert_array_equal(data.pool.y, [LABELS.index(t[4]) for t in pool])
    np.testing.assert_array_equal(data.server_test.y, [LABELS.index(t[4]) for t in test])
    (_, image, none_i), (_, text, none_t) = _columns(data, task)
    assert none_i is None and none_t is None
    assert image.shape[1:] == (3, 32, 32) and text.shape[1:] == (TEXT_FEATURES,)
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    for row, tweet in enumerate(pool + test):
        expected = (np.array(tweet[5]) / 255 - mean) / std
        np.testing.assert_allclose(image[row].mean(axis=(1, 2)), expected, atol=0.05)
    np.testing.assert_array_equal(text, hashed_text([t[3] for t in pool + test], TEXT_FEATURES))


@pytest.mark.parametrize(
    ("damage", "match"),
    [
        ("label", "unknown labels"),
        ("image", "FileNotFoundError"),
        ("header", "header"),
        ("split", "split file not found"),
    ],
)
def test_crisismmd_malformed_inputs(tmp_path: Path, damage: str, match: str) -> None:
    _write_crisismmd(tmp_path)
    dev = tmp_path / "crismmd_datasplit_all" / "task_humanitarian_text_img_dev.tsv"
    lines = dev.read_text().splitlines()
    if damage == "label":
        dev.write_text(lines[0] + "\n" + lines[1].replace(LABELS[0], "sympathy") + "\n")
    elif damage == "image":
        next((tmp_path / "data_image" / "california_wildfires").rglob("*.jpg")).unlink()
    elif damage == "header":
        dev.write_text(lines[0].replace("tweet_text", "text") + "\n" + lines[1] + "\n")
    else:
        dev.unlink()
    with pytest.raises(DataUnavailableError, match=match) as info:
        CrisisMMDTask().load(_options(tmp_path))
    assert "CrisisMMD" in str(info.value)


# ---------------------------------------------------------------- common to all


DISK_TASKS = ["ku-har", "ku-har-subsamples", "crema-d", "crisismmd"]


@pytest.mark.parametrize("name", DISK_TASKS)
def test_missing_data_dir_names_dataset_directory_and_layout(name: str, tmp_path: Path) -> None:
    task = get_task(name)
    missing = tmp_path / "nowhere"
    with pytest.raises(DataUnavailableError) as info:
        task.load(_options(missing))
    message = str(info.value)
    assert task.title in message and str(missing) in message  # type: ignore[attr-defined]
    assert task.expected in message  # type: ignore[attr-defined]

    with pytest.raises(DataUnavailableError, match="data-dir must be set"):
        task.load(_options(""))


@pytest.mark.parametrize(
    ("name", "layout_part"),
    [
        ("ku-har", TRIMMED_DIR),
        ("ku-har-subsamples", SUBSAMPLES_FILE),
        ("crema-d", "AudioWAV"),
        ("crisismmd", "task_humanitarian_text_img_train.tsv"),
    ],
)
def test_empty_data_dir_names_the_expected_files(
    name: str, layout_part: str, tmp_path: Path
) -> None:
    with pytest.raises(DataUnavailableError, match=layout_part.replace(".", r"\.")):
        get_task(name).load(_options(tmp_path))


@pytest.mark.parametrize(
    ("name", "classes"),
    [("mfeat", 10), ("ku-har", 18), ("ku-har-subsamples", 18), ("crema-d", 4), ("crisismmd", 8)],
)
def test_registry_builds_every_multimodal_model(name: str, classes: int) -> None:
    import torch

    task = get_task(name)
    assert task.name == name and name in multimodal.MULTIMODAL_TASKS
    torch.manual_seed(0)
    model = task.build_model("none")
    width = model.layout.width  # type: ignore[union-attr]
    x = torch.zeros(2, width)
    x[:, -1] = 1.0  # a length column (or a feature) set: every sample has a valid token
    x[:, -2] = 1.0
    assert model(x).shape == (2, classes)
