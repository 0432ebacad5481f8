"""``crema-d``: CREMA-D acted emotions, audio + video, one natural client per actor.

Reads ``<data-dir>/AudioWAV/<actor>_<sentence>_<emotion>_<level>.wav`` (actors 1001-1091,
emotions ANG DIS FEA HAP NEU SAD, levels LO MD HI XX). As in FedMultimodal, four emotions
are used by default, ``emotions = (NEU, HAP, SAD, ANG)`` -> classes 0..3; a subclass may
set other codes (and ``num_classes``); clips of other emotions are skipped.

* Audio: ``AUDIO_STEPS`` frames of ``N_MELS`` log-mel energies (50 ms Hann windows every
  40 ms, at 16 kHz), computed with numpy/scipy; longer clips are truncated (4 s). Encoded by
  Conv1d layers and a GRU.
* Video: ``VIDEO_STEPS`` frames of ``VIDEO_DIM`` features, evenly spaced over the clip,
  encoded by a GRU. Two sources, first found wins:
  1. pre-extracted ``<data-dir>/features/video/<clip>.npy`` arrays (``frames x 1280``, e.g.
     the MobileNetV2 per-frame features FedMultimodal uses);
  2. ``<data-dir>/VideoFlash/<clip>.flv`` decoded with PyAV (``pip install av``): every frame
     becomes a 32 x 40 grey thumbnail (1280 values), a pixel descriptor, not a learned one.
  A clip without video keeps its audio; its video length is 0 (all its video tokens masked).

Both modalities are standardised per feature with training-pool statistics; a stratified
20 % of the clips is the server test set. ``paper`` = both encoders personal (the FedAPM code
personalizes the audio Conv1d + GRU and the video GRU, ALGORITHMS.md §1.8).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import ClassVar

import numpy as np
from numpy.typing import NDArray

from tasks.base import DataOptions
from tasks.data import TaskData
from tasks.multimodal.common import MultimodalTask, assemble
from tasks.multimodal.features import (
    fit_steps,
    log_mel,
    pyav_available,
    read_wav,
    video_thumbnails,
)
from tasks.multimodal.layout import Layout, Modality
from tasks.multimodal.model import NetConfig

AUDIO_DIR = "AudioWAV"
VIDEO_DIR = "VideoFlash"
FEATURES_DIR = "features/video"
SAMPLE_RATE = 16_000
N_MELS = 80
WINDOW_S = 0.05
HOP_S = 0.04
AUDIO_STEPS = 100
VIDEO_STEPS = 8
VIDEO_DIM = 1280
THUMBNAIL = (32, 40)
"""(height, width) of the decoded grey thumbnails: 32 * 40 = ``VIDEO_DIM`` values."""

_CLIP = re.compile(r"^(\d+)_([A-Z]+)_([A-Z]+)_([A-Z]+)\.wav$")


class CremaDTask(MultimodalTask):
    """CREMA-D, 4 emotions, log-mel audio + per-frame video features; clients = actors."""

    name = "crema-d"
    title = "CREMA-D"
    emotions: ClassVar[tuple[str, ...]] = ("NEU", "HAP", "SAD", "ANG")
    num_classes = 4
    natural_clients = True
    default_partitioner = "natural"
    layout = Layout(
        (
            Modality("audio", "conv-gru", (AUDIO_STEPS, N_MELS)),
            Modality("video", "gru", (VIDEO_STEPS, VIDEO_DIM)),
        )
    )
    net = NetConfig(conv_channels=(32, 64))
    paper_preset = ("encoders.audio", "encoders.video")
    expected = (
        f"<data-dir>/{AUDIO_DIR}/<actor>_<sentence>_<emotion>_<level>.wav (16 kHz mono) and, "
        f"for video, either <data-dir>/{FEATURES_DIR}/<clip>.npy (frames x {VIDEO_DIM} "
        f"float arrays) or <data-dir>/{VIDEO_DIR}/<clip>.flv with PyAV installed "
        "(pip install av)"
    )

    def load(self, options: DataOptions) -> TaskData:
        """Features of every clip of the chosen emotions; the actor is the natural client."""
        root = self.data_root(options)
        clips = [
            (path, match)
            for path in sorted((root / AUDIO_DIR).glob("*.wav"))
            if (match := _CLIP.match(path.name)) and match[3] in self.emotions
        ]
        if not clips:
            raise self.unavailable(
                root / AUDIO_DIR, f"no WAV clip of emotions {', '.join(self.emotions)}"
            )
        video_dir, suffix, read_video = self.video_source(root)
        n = len(clips)
        audio = np.zeros((n, AUDIO_STEPS, N_MELS), dtype=np.float32)
        frames = np.zeros((n, VIDEO_STEPS, VIDEO_DIM), dtype=np.float32)
        lengths = {"audio": np.zeros(n, dtype=np.int64), "video": np.zeros(n, dtype=np.int64)}
        for i, (path, _) in enumerate(clips):
            signal = self.read(path, partial(read_wav, sample_rate=SAMPLE_RATE))
            mel = log_mel(signal, SAMPLE_RATE, N_MELS, WINDOW_S, HOP_S)
            audio[i], lengths["audio"][i] = fit_steps(mel, AUDIO_STEPS)
            video_path = video_dir / f"{path.stem}{suffix}"
            if video_path.is_file():
                features = self.read(video_path, read_video)
                frames[i], lengths["video"][i] = fit_steps(features, VIDEO_STEPS, subsample=True)
        if not lengths["video"].any():
            raise self.unavailable(root, "no clip has video")
        y = np.asarray([self.emotions.index(m[3]) for _, m in clips], dtype=np.int64)
        actors = np.asarray([int(m[1]) for _, m in clips], dtype=np.int64)
        return assemble(
            self.layout,
            {"audio": audio, "video": frames},
            lengths,
            y,
            self.num_classes,
            options.seed,
            standardized=("audio", "video"),
            groups=actors,
        )

    def video_source(self, root: Path) -> tuple[Path, str, Callable[[Path], NDArray[np.float32]]]:
        """(directory, file suffix, reader) of the video features; fails if there is none."""
        features = root / FEATURES_DIR
        if features.is_dir():
            return features, ".npy", read_features
        flv = root / VIDEO_DIR
        if flv.is_dir() and pyav_available():
            return flv, ".flv", read_thumbnails
        problem = (
            f"{VIDEO_DIR}/ exists but PyAV is not installed (pip install av), and"
            if flv.is_dir()
            else f"neither {VIDEO_DIR}/*.flv nor"
        )
        raise self.unavailable(root, f"no video source: {problem} {FEATURES_DIR}/*.npy")


def read_features(path: Path) -> NDArray[np.float32]:
    """A pre-extracted ``frames x VIDEO_DIM`` array of finite values."""
    array = np.load(path, allow_pickle=False)
    if array.ndim != 2 or array.shape[1] != VIDEO_DIM or not np.isfinite(array).all():
        raise ValueError(f"array of shape {array.shape}, expected finite frames x {VIDEO_DIM}")
    return np.asarray(array, dtype=np.float32)


def read_thumbnails(path: Path) -> NDArray[np.float32]:
    """``VIDEO_STEPS`` evenly spaced decoded frames as grey thumbnails (PyAV)."""
    return video_thumbnails(path, VIDEO_STEPS, *THUMBNAIL)
