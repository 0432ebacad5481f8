"""``MultimodalNet``: per-modality encoders, attention fusion over all tokens, MLP classifier.

The FedMultimodal-style architecture of the FedAPM code (ALGORITHMS.md §1.8): each modality
is encoded into a sequence of ``hidden``-wide tokens, the sequences are concatenated along
time and pooled by a multi-head attention (``tanh(W1 x) -> W2 -> masked softmax over time``,
one weighted sum of tokens per head), and an MLP classifies the ``heads x hidden`` features.

Module names are what the personalization presets use: ``encoders.<modality>`` (with
``conv`` and ``gru`` submodules for sequences, ``conv`` and ``proj`` for images, ``mlp`` for
vectors), ``fusion`` and ``classifier``. The model has no buffers (no batch norm), so its
state dict is exactly its parameters.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
from torch import nn

from tasks.multimodal.layout import Layout, Modality


@dataclass(frozen=True)
class NetConfig:
    """Sizes of a ``MultimodalNet``; defaults are small enough for CPU training.

    ``conv_channels`` are the Conv1d widths of ``conv-gru`` encoders (each layer: conv with
    ``kernel``, ReLU, max-pool 2, dropout); every encoder emits ``hidden``-wide tokens.
    """

    hidden: int = 64
    conv_channels: tuple[int, ...] = (16, 32, 64)
    kernel: int = 5
    attention_hidden: int = 128
    heads: int = 6
    classifier_hidden: int = 64
    dropout: float = 0.1

    def __post_init__(self) -> None:
        if self.kernel % 2 == 0:
            raise ValueError(f"kernel={self.kernel}: must be odd (same-length convolutions)")


def step_mask(lengths: torch.Tensor, steps: int) -> torch.Tensor:
    """``B x steps`` boolean mask, True where the step index is below the sample's length."""
    return torch.arange(steps, device=lengths.device)[None, :] < lengths[:, None]


class VectorEncoder(nn.Module):
    """A static feature vector -> one token (a 1-step sequence), through a 2-layer MLP."""

    def __init__(self, features: int, config: NetConfig) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(features, config.hidden),
            nn.ReLU(),
            nn.Dropout(config.dropout),
            nn.Linear(config.hidden, config.hidden),
        )

    def forward(
        self, x: torch.Tensor, lengths: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(``B x 1 x hidden`` token, ``B x 1`` all-True mask)."""
        return _single_token(self.mlp(x))


class MaskedConv1d(nn.Module):
    """Conv1d layers (``same`` padding, ReLU, max-pool 2, dropout) that ignore padding steps.

    Activations past each sample's length are zeroed after every layer, so a step's output
    depends only on valid steps: extra padding never changes the result.
    """

    def __init__(self, in_channels: int, config: NetConfig) -> None:
        super().__init__()
        widths = (in_channels, *config.conv_channels)
        self.layers = nn.ModuleList(
            nn.Conv1d(a, b, config.kernel, padding=config.kernel // 2)
            for a, b in itertools.pairwise(widths)
        )
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``B x T x D`` -> (``B x T' x C`` with ``T' = ceil(T / 2^layers)``, new lengths)."""
        h = x.transpose(1, 2) * step_mask(lengths, x.shape[1])[:, None, :]
        for conv in self.layers:
            h = torch.relu(conv(h)) * step_mask(lengths, h.shape[2])[:, None, :]
            h = nn.functional.max_pool1d(h, 2, ceil_mode=True)
            lengths = (lengths + 1) // 2
            h = self.dropout(h)
        return h.transpose(1, 2), lengths


class SequenceEncoder(nn.Module):
    """A ``T x D`` sequence -> one token per (pooled) step: optional masked Conv1d, then a GRU.

    The GRU runs forward in time, so its outputs at valid steps never see the padding.
    """

    def __init__(self, features: int, config: NetConfig, conv: bool) -> None:
        super().__init__()
        self.conv = MaskedConv1d(features, config) if conv else None
        gru_in = config.conv_channels[-1] if conv else features
        self.gru = nn.GRU(gru_in, config.hidden, batch_first=True)

    def forward(
        self, x: torch.Tensor, lengths: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(``B x T' x hidden`` tokens, ``B x T'`` mask of the valid ones)."""
        assert lengths is not None  # a sequence modality always has a length column
        if self.conv is not None:
            x, lengths = self.conv(x, lengths)
        else:
            x = x * step_mask(lengths, x.shape[1])[:, :, None]
        tokens: torch.Tensor = self.gru(x)[0]
        return tokens, step_mask(lengths, tokens.shape[1])


class ImageEncoder(nn.Module):
    """A ``C x H x W`` image -> one token: two conv/ReLU/max-pool layers and a projection."""

    def __init__(self, shape: tuple[int, ...], config: NetConfig) -> None:
        super().__init__()
        channels, height, width = shape
        if min(height, width) < 4:
            raise ValueError(f"image shape {shape}: height and width must be at least 4")
        self.conv = nn.Sequential(
            nn.Conv2d(channels, 16, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.proj = nn.Linear(32 * (height // 4) * (width // 4), config.hidden)

    def forward(
        self, x: torch.Tensor, lengths: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(``B x 1 x hidden`` token, ``B x 1`` all-True mask)."""
        return _single_token(self.proj(self.conv(x).flatten(1)))


class AttentionFusion(nn.Module):
    """Multi-head attention pooling over time: ``softmax_t(W2 tanh(W1 x_t))``-weighted sums.

    Masked (padding) tokens get zero weight; the heads' pooled tokens are concatenated.
    """

    def __init__(self, config: NetConfig) -> None:
        super().__init__()
        self.score = nn.Sequential(
            nn.Linear(config.hidden, config.attention_hidden),
            nn.Tanh(),
            nn.Linear(config.attention_hidden, config.heads),
        )

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``B x T x hidden`` tokens, ``B x T`` validity mask -> ``B x (heads * hidden)``."""
        scores = self.score(tokens).masked_fill(~mask[:, :, None], float("-inf"))
        weights = torch.softmax(scores, dim=1)
        return torch.einsum("bth,btd->bhd", weights, tokens).flatten(1)


def _single_token(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mask = torch.ones(features.shape[0], 1, dtype=torch.bool, device=features.device)
    return features[:, None, :], mask


def _encoder(modality: Modality, config: NetConfig) -> nn.Module:
    if modality.encoder == "mlp":
        return VectorEncoder(modality.shape[0], config)
    if modality.encoder == "cnn":
        return ImageEncoder(modality.shape, config)
    return SequenceEncoder(modality.shape[1], config, conv=modality.encoder == "conv-gru")


class MultimodalNet(nn.Module):
    """Encoders per modality, attention fusion, MLP classifier; reads rows packed by ``layout``.

    Personalization presets (ALGORITHMS.md §1.8): ``input`` = every modality encoder (what the
    FedAPM code personalizes); ``output`` = the classifier; ``split-input`` (two or more
    modalities) = the encoders of the first half of the modalities, the rest shared; ``paper``
    = the prefixes given as ``paper_preset`` (the FedAPM code's per-dataset choice), when set.
    A sample must have at least one valid token (a static or image modality, or a length > 0).
    """

    def __init__(
        self,
        layout: Layout,
        num_classes: int,
        config: NetConfig | None = None,
        paper_preset: tuple[str, ...] | None = None,
    ) -> None:
        super().__init__()
        self.layout = layout
        config = config or NetConfig()
        self.encoders = nn.ModuleDict({m.name: _encoder(m, config) for m in layout.modalities})
        self.fusion = AttentionFusion(config)
        self.classifier = nn.Sequential(
            nn.Linear(config.heads * config.hidden, config.classifier_hidden),
            nn.ReLU(),
            nn.Dropout(config.dropout),
            nn.Linear(config.classifier_hidden, num_classes),
        )
        encoders = tuple(f"encoders.{m.name}" for m in layout.modalities)
        self.personal_presets: dict[str, tuple[str, ...]] = {
            "input": encoders,
            "output": ("classifier",),
        }
        if len(encoders) >= 2:
            self.personal_presets["split-input"] = encoders[: len(encoders) // 2]
        if paper_preset is not None:
            modules = dict(self.named_modules())
            unknown = [p for p in paper_preset if p not in modules]
            if unknown:
                raise ValueError(f"paper preset names unknown modules {unknown}")
            self.personal_presets["paper"] = paper_preset

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits of ``B x layout.width`` packed rows."""
        tokens: list[torch.Tensor] = []
        masks: list[torch.Tensor] = []
        for modality, (values, lengths) in zip(
            self.layout.modalities, self.layout.unpack(x), strict=True
        ):
            out, mask = self.encoders[modality.name](values, lengths)
            tokens.append(out)
            masks.append(mask)
        pooled = self.fusion(torch.cat(tokens, dim=1), torch.cat(masks, dim=1))
        logits: torch.Tensor = self.classifier(pooled)
        return logits
