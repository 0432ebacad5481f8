"""Models used by the tasks, each declaring its personalization presets (ALGORITHMS.md §1.8)."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn


class SmallCNN(nn.Module):
    """Two conv layers and a two-layer head, for small images (8x8 digits, 28x28, 32x32).

    Input personalization makes the first conv layer personal; output personalization the
    classifier layer (FedPer-style head).
    """

    personal_presets: ClassVar[dict[str, tuple[str, ...]]] = {
        "input": ("conv1",),
        "output": ("fc2",),
    }

    def __init__(self, in_channels: int, side: int, num_classes: int, width: int = 16) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1)
        pooled = side // 2 if side <= 8 else side // 4
        self.pool_twice = side > 8
        self.fc1 = nn.Linear(2 * width * pooled * pooled, 64)
        self.fc2 = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits."""
        x = torch.relu(self.conv1(x))
        if self.pool_twice:
            x = nn.functional.max_pool2d(x, 2)
        x = nn.functional.max_pool2d(torch.relu(self.conv2(x)), 2)
        x = torch.relu(self.fc1(x.flatten(1)))
        out: torch.Tensor = self.fc2(x)
        return out


class LogisticRegression(nn.Module):
    """Multinomial logistic regression ``softmax(W x + b)``: the convex model.

    Split-input personalization gives each client a personal linear map on the last
    ``personal_features`` input features, added to the shared map of the others (§1.8).
    """

    def __init__(self, in_features: int, num_classes: int, personal_features: int = 0) -> None:
        super().__init__()
        self.shared_features = in_features - personal_features
        self.linear = nn.Linear(self.shared_features, num_classes)
        self.personal_presets: dict[str, tuple[str, ...]] = {}
        if personal_features:
            self.linear_p = nn.Linear(personal_features, num_classes, bias=False)
            nn.init.zeros_(self.linear_p.weight)
            self.personal_presets["split-input"] = ("linear_p",)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits."""
        x = x.flatten(1)  # images (digits' convex model) as feature vectors
        out: torch.Tensor = self.linear(x[:, : self.shared_features])
        if hasattr(self, "linear_p"):
            out = out + self.linear_p(x[:, self.shared_features :])
        return out
