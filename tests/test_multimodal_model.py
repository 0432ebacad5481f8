"""MultimodalNet and its packed-row layout: round trips, masking, presets (ALGORITHMS.md §1.8)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from numpy.typing import NDArray

from tasks.multimodal.cremad import CremaDTask
from tasks.multimodal.crisismmd import CrisisMMDTask
from tasks.multimodal.kuhar import KUHARSubsamplesTask, KUHARTask
from tasks.multimodal.layout import Layout, Modality
from tasks.multimodal.mfeat import MultipleFeaturesTask
from tasks.multimodal.model import MultimodalNet, NetConfig
from tasks.personalization import (
    PersonalizationError,
    is_personal,
    personal_prefixes,
    split_names,
)

SMALL = NetConfig(hidden=8, conv_channels=(4, 6), attention_hidden=10, heads=3)


def _layout(steps: int = 20) -> Layout:
    return Layout(
        (
            Modality("imu", "conv-gru", (steps, 3)),
            Modality("frames", "gru", (steps // 2, 5)),
            Modality("tags", "mlp", (7,)),
            Modality("photo", "cnn", (3, 8, 8)),
        )
    )


def _sample(
    layout: Layout, n: int, lengths: dict[str, list[int]], seed: int = 0
) -> tuple[dict[str, NDArray[np.float32]], dict[str, NDArray[np.int64]]]:
    rng = np.random.default_rng(seed)
    values = {m.name: rng.normal(size=(n, *m.shape)).astype(np.float32) for m in layout.modalities}
    steps = {name: np.asarray(v, dtype=np.int64) for name, v in lengths.items()}
    for name, length in steps.items():  # zero padding past each length, as loaders write it
        for i, k in enumerate(length):
            values[name][i, k:] = 0.0
    return values, steps


def _net(layout: Layout, seed: int = 0, paper: tuple[str, ...] | None = None) -> MultimodalNet:
    torch.manual_seed(seed)
    return MultimodalNet(layout, 5, SMALL, paper).eval()


# ---------------------------------------------------------------- layout


def test_pack_unpack_round_trip() -> None:
    layout = _layout()
    values, lengths = _sample(layout, 4, {"imu": [20, 13, 1, 0], "frames": [10, 3, 7, 1]})
    x = layout.pack(values, lengths)

    assert x.dtype == np.float32
    assert x.shape == (4, 20 * 3 + 10 * 5 + 7 + 3 * 8 * 8 + 2) == (4, layout.width)
    np.testing.assert_array_equal(x[:, -2], [20, 13, 1, 0])  # length columns last, in order
    np.testing.assert_array_equal(x[:, :60], values["imu"].reshape(4, 60))
    for modality, (block, steps) in zip(
        layout.modalities, layout.unpack(torch.as_tensor(x)), strict=True
    ):
        np.testing.assert_array_equal(block.numpy(), values[modality.name])
        if modality.sequential:
            assert steps is not None
            np.testing.assert_array_equal(steps.numpy(), lengths[modality.name])
        else:
            assert steps is None


def test_pack_rejects_wrong_shapes_and_lengths() -> None:
    layout = _layout()
    values, lengths = _sample(layout, 2, {"imu": [5, 5], "frames": [2, 2]})
    with pytest.raises(ValueError, match="'tags'"):
        layout.pack({**values, "tags": values["tags"][:, :6]}, lengths)
    with pytest.raises(ValueError, match="lengths given"):
        layout.pack(values, {**lengths, "tags": np.ones(2, dtype=np.int64)})
    with pytest.raises(ValueError, match=r"0\.\.T"):
        layout.pack(values, {**lengths, "imu": np.array([5, 21])})
    with pytest.raises(ValueError, match="columns"):
        layout.unpack(torch.zeros(2, layout.width + 1))


@pytest.mark.parametrize(
    ("name", "encoder", "shape", "match"),
    [
        ("a.b", "mlp", (3,), "identifier"),
        ("a", "transformer", (3,), "unknown"),
        ("a", "conv-gru", (3,), "rank 2"),
        ("a", "cnn", (3, 0, 4), "positive"),
    ],
)
def test_modality_validation(name: str, encoder: str, shape: tuple[int, ...], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Modality(name, encoder, shape)


def test_net_config_and_image_size_validation() -> None:
    with pytest.raises(ValueError, match="odd"):
        NetConfig(kernel=4)
    with pytest.raises(ValueError, match="at least 4"):
        MultimodalNet(Layout((Modality("tiny", "cnn", (3, 2, 8)),)), 2, SMALL)


# ---------------------------------------------------------------- forward and masking


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_forward_shapes_and_every_parameter_gets_a_gradient(dtype: torch.dtype) -> None:
    layout = _layout()
    net = _net(layout).to(dtype).train()
    values, lengths = _sample(layout, 6, {"imu": [20, 9, 1, 4, 17, 2], "frames": [10] * 6})
    logits = net(torch.as_tensor(layout.pack(values, lengths), dtype=dtype))
    assert logits.shape == (6, 5) and logits.dtype == dtype
    logits.sum().backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.any()]
    assert missing == []
    assert list(net.state_dict()) == [n for n, _ in net.named_parameters()]  # no buffers


def test_values_past_the_length_are_ignored() -> None:
    """Garbage in the padding steps: masked at the input, so the logits do not move."""
    layout = _layout()
    net = _net(layout)
    values, lengths = _sample(layout, 3, {"imu": [7, 20, 1], "frames": [4, 10, 0]})
    clean = net(torch.as_tensor(layout.pack(values, lengths)))
    noisy = {k: v.copy() for k, v in values.items()}
    rng = np.random.default_rng(9)
    noisy["imu"][0, 7:] = rng.normal(size=(13, 3))
    noisy["imu"][2, 1:] = 1e3
    noisy["frames"][2] = rng.normal(size=(10, 5))  # length 0: the modality is missing
    torch.testing.assert_close(net(torch.as_tensor(layout.pack(noisy, lengths))), clean)
    # the valid steps do matter
    noisy["imu"][0, 6] += 1.0
    assert not torch.allclose(net(torch.as_tensor(layout.pack(noisy, lengths))), clean)


@pytest.mark.parametrize("longer", [21, 33, 64])
def test_extra_zero_padding_does_not_change_the_output(longer: int) -> None:
    """Same sample, same weights, padded to 20 or to ``longer`` steps: same logits."""
    short, long = _layout(20), _layout(longer)
    net_short = _net(short)
    net_long = MultimodalNet(long, 5, SMALL).eval()
    net_long.load_state_dict(net_short.state_dict())  # no weight depends on the step count
    values, lengths = _sample(short, 3, {"imu": [13, 20, 1], "frames": [5, 10, 2]})
    padded = {
        "imu": np.pad(values["imu"], ((0, 0), (0, longer - 20), (0, 0))),
        "frames": np.pad(values["frames"], ((0, 0), (0, longer // 2 - 10), (0, 0))),
        "tags": values["tags"],
        "photo": values["photo"],
    }
    torch.testing.assert_close(
        net_long(torch.as_tensor(long.pack(padded, lengths))),
        net_short(torch.as_tensor(short.pack(values, lengths))),
    )


# ---------------------------------------------------------------- personalization presets


def _personal(net: MultimodalNet, mode: str) -> list[str]:
    prefixes = net.personal_presets[mode]
    return [n for n, _ in net.named_parameters() if is_personal(n, prefixes)]


def test_presets_select_encoders_classifier_and_first_half() -> None:
    net = _net(_layout())
    names = [n for n, _ in net.named_parameters()]
    encoders = [n for n in names if n.startswith("encoders.")]
    assert _personal(net, "input") == encoders
    assert _personal(net, "output") == [n for n in names if n.startswith("classifier.")]
    assert _personal(net, "split-input") == [
        n for n in names if n.startswith(("encoders.imu.", "encoders.frames."))
    ]
    assert "paper" not in net.personal_presets
    for mode in ("input", "output", "split-input"):
        shared, personal = split_names(net, mode)
        assert personal == _personal(net, mode)
        assert shared == [n for n in names if n not in personal]
        assert any(n.startswith("fusion.") for n in shared)
        assert personal_prefixes(net, mode) == net.personal_presets[mode]


def test_single_modality_has_no_split_input() -> None:
    net = MultimodalNet(Layout((Modality("only", "mlp", (4,)),)), 3, SMALL)
    assert set(net.personal_presets) == {"input", "output"}


def test_mfeat_split_input_is_first_three_views() -> None:
    net = MultipleFeaturesTask().build_model("split-input")
    assert net.personal_presets["split-input"] == (
        "encoders.fou",
        "encoders.fac",
        "encoders.kar",
    )
    assert "paper" not in net.personal_presets


@pytest.mark.parametrize("task", [KUHARTask(), KUHARSubsamplesTask()])
def test_ku_har_paper_preset_is_both_conv_stacks(task: KUHARTask) -> None:
    """FedAPM code, KU-HAR: both Conv1d encoders personal; GRUs, fusion, classifier shared."""
    net = task.build_model("paper")
    personal = _personal(net, "paper")
    assert personal and all(
        n.startswith(("encoders.acc.conv.", "encoders.gyro.conv.")) for n in personal
    )
    assert {n.split(".")[1] for n in personal} == {"acc", "gyro"}
    shared = [n for n, _ in net.named_parameters() if n not in personal]
    assert any(n.startswith("encoders.acc.gru.") for n in shared)
    assert any(n.startswith("encoders.gyro.gru.") for n in shared)
    assert net.personal_presets["split-input"] == ("encoders.acc",)


@pytest.mark.parametrize(
    ("task", "encoders"),
    [
        (CremaDTask(), ("encoders.audio", "encoders.video")),
        (CrisisMMDTask(), ("encoders.image", "encoders.text")),
    ],
)
def test_crema_d_and_crisismmd_paper_preset_is_every_encoder(
    task: CremaDTask | CrisisMMDTask, encoders: tuple[str, ...]
) -> None:
    net = task.build_model("paper")
    assert net.personal_presets["paper"] == encoders == net.personal_presets["input"]
    assert _personal(net, "paper") == [
        n for n, _ in net.named_parameters() if n.startswith("encoders.")
    ]


def test_paper_mode_resolves_through_personal_prefixes() -> None:
    net = KUHARTask().build_model("paper")
    assert personal_prefixes(net, "paper") == ("encoders.acc.conv", "encoders.gyro.conv")
    shared, personal = split_names(net, "paper")
    assert personal == _personal(net, "paper") and "fusion.score.0.weight" in shared
    with pytest.raises(PersonalizationError, match="not defined for model MultimodalNet"):
        personal_prefixes(MultipleFeaturesTask().build_model("paper"), "paper")


def test_paper_preset_must_name_modules() -> None:
    with pytest.raises(ValueError, match="unknown modules"):
        MultimodalNet(_layout(), 5, SMALL, paper_preset=("encoders.imu.lstm",))
