"""Small PyTorch models used by the study, the gradient store and the serving prototypes."""

from __future__ import annotations

import torch
from torch import nn


def build_mlp(in_features: int, n_classes: int, hidden: tuple[int, ...] = (128,), seed: int = 0) -> nn.Sequential:
    """A ReLU MLP; seeded so the same call always builds the same weights."""
    if in_features < 1 or n_classes < 2:
        raise ValueError(f"build_mlp: need in_features >= 1 and n_classes >= 2, got {in_features}, {n_classes}")
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    width = in_features
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    layers.append(nn.Linear(width, n_classes))
    return nn.Sequential(*layers)


def build_cnn(n_classes: int = 10, in_channels: int = 3, width: int = 32, seed: int = 0) -> nn.Sequential:
    """A small CNN for 32x32 images: three conv blocks then a linear head.

    ``width`` scales every layer, so ``width=16`` gives the "narrow" serving variant.
    """
    if width < 1:
        raise ValueError(f"build_cnn: width must be >= 1, got {width}")
    torch.manual_seed(seed)
    w = width
    return nn.Sequential(
        nn.Conv2d(in_channels, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(w, 2 * w, 3, padding=1), nn.BatchNorm2d(2 * w), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(2 * w, 4 * w, 3, padding=1), nn.BatchNorm2d(4 * w), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        nn.Flatten(), nn.Linear(4 * w, n_classes),
    )
