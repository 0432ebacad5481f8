"""Feature extraction for the multimodal loaders, checked against hand-derived values."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy.io import wavfile

from tasks.multimodal.features import (
    fit_steps,
    hashed_text,
    hz_to_mel,
    image_thumbnail,
    log_mel,
    mel_filterbank,
    normalize_rgb,
    read_wav,
    standardize,
)


def _tone(freq: float, seconds: float, rate: int) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    return 0.5 * np.sin(2 * np.pi * freq * t)


def test_mel_filterbank_is_triangles_between_htk_mel_edges() -> None:
    bank = mel_filterbank(10, 512, 16_000)
    assert bank.shape == (10, 257)
    assert bank.min() == 0.0 and bank.max() <= 1.0
    # filter k peaks at the k+1-th of 12 edges equally spaced in mel from 0 to 8 kHz
    edges = np.linspace(0, float(hz_to_mel(np.array(8000.0))), 12)
    centre_hz = 700 * (10 ** (edges[1:-1] / 2595) - 1)
    bin_hz = np.fft.rfftfreq(512, 1 / 16_000)
    peaks = bin_hz[bank.argmax(axis=1)]
    assert np.all(np.abs(peaks - centre_hz) <= 16_000 / 512)  # within one FFT bin


def test_log_mel_frames_and_tone_peak() -> None:
    rate = 16_000
    mel = log_mel(_tone(1000.0, 0.5, rate), rate, n_mels=80, window_s=0.05, hop_s=0.04)
    # 800-sample windows every 640 samples over 8000 samples: 1 + (8000 - 800) // 640 frames
    assert mel.shape == (12, 80) and mel.dtype == np.float32
    bank = mel_filterbank(80, 1024, rate)
    expected_bin = int(bank[:, round(1000 / (rate / 1024))].argmax())
    assert set(mel.argmax(axis=1)) == {expected_bin}
    # a signal shorter than one window still gives one frame
    assert log_mel(_tone(440.0, 0.01, rate), rate, 80, 0.05, 0.04).shape == (1, 80)


def test_read_wav_scales_int16_and_resamples(tmp_path: Path) -> None:
    samples = np.array([0, 16384, -32768, 32767], dtype=np.int16)
    wavfile.write(tmp_path / "a.wav", 16_000, samples)
    np.testing.assert_allclose(read_wav(tmp_path / "a.wav", 16_000), [0, 0.5, -1, 32767 / 32768])

    stereo = (np.stack([_tone(500, 0.2, 8000)] * 2, axis=1) * 32767).astype(np.int16)
    wavfile.write(tmp_path / "b.wav", 8000, stereo)
    signal = read_wav(tmp_path / "b.wav", 16_000)
    assert len(signal) == 2 * len(stereo)
    spectrum = np.abs(np.fft.rfft(signal))
    assert np.fft.rfftfreq(len(signal), 1 / 16_000)[spectrum.argmax()] == pytest.approx(500, abs=10)


def test_fit_steps_pads_truncates_and_subsamples() -> None:
    seq = np.arange(20, dtype=np.float32).reshape(10, 2)
    padded, n = fit_steps(seq[:3], 5)
    assert n == 3
    np.testing.assert_array_equal(padded, np.vstack([seq[:3], np.zeros((2, 2))]))
    cut, n = fit_steps(seq, 4)
    assert n == 4
    np.testing.assert_array_equal(cut, seq[:4])
    thinned, n = fit_steps(seq, 4, subsample=True)
    assert n == 4
    np.testing.assert_array_equal(thinned, seq[[0, 3, 6, 9]])  # linspace(0, 9, 4) rounded


def test_standardize_uses_valid_steps_of_the_given_rows_only() -> None:
    values = np.zeros((3, 4, 1), dtype=np.float32)
    values[0, :2, 0] = [1.0, 3.0]  # length 2
    values[1, :4, 0] = [5.0, 7.0, 9.0, 11.0]  # length 4
    values[2, :1, 0] = [1000.0]  # a held-out row: must not enter the statistics
    lengths = np.array([2, 4, 1])
    out = standardize(values, lengths, np.array([0, 1]))
    pool = np.array([1.0, 3.0, 5.0, 7.0, 9.0, 11.0])
    expected = (values[..., 0] - pool.mean()) / pool.std() * (np.arange(4) < lengths[:, None])
    np.testing.assert_allclose(out[..., 0], expected, rtol=1e-6)
    # static vectors: plain column standardisation over the given rows
    flat = standardize(
        np.array([[1.0, 2.0], [3.0, 2.0], [9.0, 9.0]], np.float32), None, np.arange(2)
    )
    np.testing.assert_allclose(flat[:2], [[-1.0, 0.0], [1.0, 0.0]], atol=1e-6)


def test_hashed_text_is_stateless_and_normalised() -> None:
    a = hashed_text(["Fire near the school", "fire fire"], 256)
    b = hashed_text(["fire fire", "Fire near the school"], 256)
    np.testing.assert_array_equal(a[::-1], b)  # no fitting: a row depends on its text only
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, rtol=1e-6)
    assert np.count_nonzero(a[1]) == 2  # unigram "fire" and bigram "fire fire"
    assert np.count_nonzero(a[0]) == 7  # 4 unigrams + 3 bigrams (barring collisions)


def test_image_thumbnail_and_normalisation(tmp_path: Path) -> None:
    from PIL import Image

    Image.new("RGB", (90, 60), (200, 100, 0)).save(tmp_path / "x.jpg", quality=95)
    thumb = image_thumbnail(tmp_path / "x.jpg", 8)
    assert thumb.shape == (3, 8, 8) and thumb.dtype == np.uint8
    np.testing.assert_allclose(thumb.reshape(3, -1).mean(axis=1), [200, 100, 0], atol=3)
    x = normalize_rgb(thumb[None])
    assert x[0, 0, 0, 0] == pytest.approx((thumb[0, 0, 0] / 255 - 0.485) / 0.229, rel=1e-5)
