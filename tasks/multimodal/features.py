"""Feature extraction without pretrained networks: log-mel audio, thumbnails, hashed text.

Everything here is deterministic numpy/scipy/PIL/scikit-learn code, so every process that
loads a task computes identical arrays. Video decoding uses PyAV (``pip install av``) only
when a loader asks for it.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def hz_to_mel(f: NDArray[np.float64]) -> NDArray[np.float64]:
    """HTK mel scale ``2595 log10(1 + f / 700)``."""
    return 2595.0 * np.log10(1.0 + f / 700.0)


def mel_filterbank(n_mels: int, n_fft: int, sample_rate: int) -> NDArray[np.float64]:
    """``n_mels x (n_fft // 2 + 1)`` triangular filters, equally spaced on the HTK mel scale."""
    edges_mel = np.linspace(0.0, hz_to_mel(np.array(sample_rate / 2.0)), n_mels + 2)
    edges = 700.0 * (10.0 ** (edges_mel / 2595.0) - 1.0)
    freqs = np.fft.rfftfreq(n_fft, 1.0 / sample_rate)
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (freqs[None, :] - lower) / (centre - lower)
    falling = (upper - freqs[None, :]) / (upper - centre)
    return np.maximum(0.0, np.minimum(rising, falling))


def log_mel(
    signal: NDArray[np.float64], sample_rate: int, n_mels: int, window_s: float, hop_s: float
) -> NDArray[np.float32]:
    """``frames x n_mels`` log mel energies of a mono signal (Hann window, power spectrum).

    A signal shorter than one window is zero-padded to one frame.
    """
    window = round(window_s * sample_rate)
    hop = round(hop_s * sample_rate)
    n_fft = 1 << (window - 1).bit_length()
    if len(signal) < window:
        signal = np.pad(signal, (0, window - len(signal)))
    frames = np.lib.stride_tricks.sliding_window_view(signal, window)[::hop]
    power = np.abs(np.fft.rfft(frames * np.hanning(window), n_fft)) ** 2
    energies = power @ mel_filterbank(n_mels, n_fft, sample_rate).T
    return np.log(energies + 1e-10).astype(np.float32)


def read_wav(path: Path, sample_rate: int) -> NDArray[np.float64]:
    """A WAV file as a mono float signal in [-1, 1], resampled to ``sample_rate`` if needed."""
    from scipy.io import wavfile
    from scipy.signal import resample_poly

    rate, data = wavfile.read(path)
    if data.dtype.kind in "iu":
        info = np.iinfo(data.dtype)
        half = (int(info.max) - int(info.min) + 1) / 2
        signal = (data.astype(np.float64) - (int(info.min) + half)) / half
    else:
        signal = data.astype(np.float64)
    if signal.ndim == 2:
        signal = signal.mean(axis=1)
    if rate != sample_rate:
        common = math.gcd(rate, sample_rate)
        signal = resample_poly(signal, sample_rate // common, rate // common)
    return np.asarray(signal, dtype=np.float64)


def fit_steps(
    sequence: NDArray[np.float32], steps: int, subsample: bool = False
) -> tuple[NDArray[np.float32], int]:
    """(``steps x D`` zero-padded sequence, valid length) of a ``T x D`` sequence.

    A longer sequence is truncated, or with ``subsample`` thinned to ``steps`` evenly
    spaced rows covering the whole of it.
    """
    if len(sequence) > steps:
        rows = np.linspace(0, len(sequence) - 1, steps).round().astype(np.int64)
        sequence = sequence[rows] if subsample else sequence[:steps]
    out = np.zeros((steps, sequence.shape[1]), dtype=np.float32)
    out[: len(sequence)] = sequence
    return out, len(sequence)


def standardize(
    values: NDArray[np.float32], lengths: NDArray[np.int64] | None, rows: NDArray[np.int64]
) -> NDArray[np.float32]:
    """Standardise every feature (last axis) with the mean and std of the valid steps of ``rows``.

    ``values`` is ``N x D`` (static) or ``N x T x D`` with per-sample ``lengths``; padding steps
    stay zero. Statistics come from ``rows`` only (the training pool), never the test set.
    """
    seq = values[:, None, :] if values.ndim == 2 else values
    steps = np.ones(len(seq), dtype=np.int64) if lengths is None else lengths
    valid = np.arange(seq.shape[1])[None, :] < steps[:, None]
    fit = seq[rows][valid[rows]].astype(np.float64)
    mean, std = fit.mean(axis=0), fit.std(axis=0) + 1e-8
    out: NDArray[np.float32] = ((seq - mean) / std * valid[:, :, None]).astype(np.float32)
    return out.reshape(values.shape)


def hashed_text(texts: Sequence[str], features: int) -> NDArray[np.float32]:
    """L2-normalised counts of word unigrams and bigrams, hashed into ``features`` columns.

    A stateless HashingVectorizer: nothing is fitted, so clients and server agree.
    """
    from sklearn.feature_extraction.text import HashingVectorizer

    vectorizer = HashingVectorizer(n_features=features, ngram_range=(1, 2), alternate_sign=False)
    return np.asarray(vectorizer.transform(texts).toarray(), dtype=np.float32)


def image_thumbnail(path: Path, side: int) -> NDArray[np.uint8]:
    """``3 x side x side`` RGB thumbnail of an image file (the JPEG decoder scales down early)."""
    from PIL import Image

    with Image.open(path) as img:
        img.draft("RGB", (2 * side, 2 * side))
        rgb = img.convert("RGB").resize((side, side), Image.Resampling.BILINEAR)
    return np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1)


def normalize_rgb(images: NDArray[np.uint8]) -> NDArray[np.float32]:
    """uint8 ``N x 3 x H x W`` -> float32 ``(x / 255 - mean) / std`` with ImageNet statistics."""
    mean = np.asarray(IMAGENET_MEAN, dtype=np.float32)[None, :, None, None]
    std = np.asarray(IMAGENET_STD, dtype=np.float32)[None, :, None, None]
    return ((images.astype(np.float32) / 255.0 - mean) / std).astype(np.float32)


def pyav_available() -> bool:
    """True when PyAV (``import av``, ffmpeg bundled) can be imported to decode video."""
    return importlib.util.find_spec("av") is not None


def video_thumbnails(path: Path, count: int, height: int, width: int) -> NDArray[np.float32]:
    """Up to ``count`` evenly spaced frames of a video as grey ``height x width`` thumbnails.

    Returns ``frames x (height * width)`` values in [0, 1]; PyAV must be installed.
    """
    import av
    from PIL import Image

    with av.open(str(path)) as container:
        frames = list(container.decode(video=0))
    if len(frames) > count:
        frames = [frames[i] for i in np.linspace(0, len(frames) - 1, count).round().astype(int)]
    thumbs = [
        np.asarray(
            Image.fromarray(f.to_ndarray(format="gray")).resize(
                (width, height), Image.Resampling.BILINEAR
            )
        )
        for f in frames
    ]
    return np.asarray(thumbs, dtype=np.float32).reshape(len(thumbs), height * width) / 255.0
