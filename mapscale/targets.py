"""Builders for target networks. Each returns a freshly initialised ``nn.Module``; seed the global RNG before
calling one for a reproducible default init (the mapping calibrates against it)."""

from __future__ import annotations

from torch import nn


def small_mnist_cnn(channels: tuple[int, int] = (8, 16), hidden: int = 32, classes: int = 10) -> nn.Sequential:
    """A small LeNet-like CNN for 1x28x28 digits (14,410 parameters at the defaults).

    conv 1->c1 3x3 -> ReLU -> maxpool 2 (13x13); conv c1->c2 3x3 -> ReLU -> maxpool 2 (5x5);
    flatten c2*25 -> FC hidden -> ReLU -> FC classes. The quick-start and test target.
    """
    c1, c2 = channels
    return nn.Sequential(
        nn.Conv2d(1, c1, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(c1, c2, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(c2 * 25, hidden), nn.ReLU(), nn.Linear(hidden, classes),
    )
