"""What every source shares: the splits it returns (`DataSplits`), its one error type (`DataError`), and the steps
applied alike to every source: the seeded, stratified train/test split (`split_indices`), capping, the
validation hold-out, the class filter, and image normalisation."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, TensorDataset

if TYPE_CHECKING:
    from mapscale.data.section import DataSection

TASKS = ("classification", "regression", "segmentation", "language_modeling")
IGNORE_INDEX = 255
"""Mask value of pixels left out of the loss and the metrics (as ``mapscale.metrics.IGNORE_INDEX``)."""
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class DataError(ValueError):
    """Data that cannot be found, read or used for the task; the message says what was looked for and how to
    fix it."""


@dataclass(frozen=True)
class Split:
    """Tensors of one supervised split: ``inputs`` (N, ...) and integer ``targets`` (N,)."""

    inputs: Tensor
    targets: Tensor

    def __len__(self) -> int:
        return len(self.targets)


@dataclass(frozen=True)
class DataSplits:
    """What ``build_datasets`` returns.

    ``train`` and ``test`` are map-style datasets whose item ``i`` is ``(input, target)``: ``input`` a float32
    tensor of shape ``input_shape``; ``target`` an int64 scalar for classification, a float32 vector for
    regression (shape ``(1,)`` for one target column, so a batch is ``(B, 1)`` like a one-output head's), an
    int64 ``(H, W)`` mask of class ids for segmentation (255: ignored pixel).
    """

    train: Dataset
    test: Dataset
    num_classes: int | None
    """Classification and segmentation: number of classes (targets lie in ``[0, num_classes)``, masks may also
    hold 255); language modelling: the vocabulary size (as ``vocab_size``); regression: None."""
    input_shape: tuple[int, ...]
    """Shape of one input tensor, e.g. ``(1, 28, 28)`` or ``(n_features,)``."""
    validation: Dataset | None = None
    """Examples held out of the training split (``data.validation_size``), or None."""
    vocab_size: int | None = None
    """Language modelling: the number of token ids (256 for bytes, else the tokenizer's, `text_tokenizer`), which a
    target's vocabulary must hold; other tasks: None."""
    note: str | None = None
    """One line the trainer prints about where the data came from (the embedded deepfake set), or None."""



# -- held-out and filtered splits ---------------------------------------------------------------------------------


def hold_out_validation(splits: DataSplits, validation_size: float, seed: int) -> DataSplits:
    """``data.validation_size``: a seeded random share of the training split becomes the validation split."""
    n = len(splits.train)
    count = test_count(n, validation_size)
    if count >= n:
        raise DataError(f"data.validation_size {validation_size} holds out {count} of the {n} training examples, leaving none to train on")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 1)).tolist()
    train, validation = (subset(splits.train, order[a:b]) for a, b in ((count, n), (0, count)))
    return replace(splits, train=train, validation=validation)


def subset(dataset: Dataset, indices: list[int]) -> Dataset:
    """The examples ``indices`` of ``dataset``: tensors indexed (a `TensorDataset` stays one), else a `Subset`."""
    if isinstance(dataset, TensorDataset):
        index = torch.tensor(indices, dtype=torch.int64)
        return TensorDataset(*(t[index] for t in dataset.tensors))
    return torch.utils.data.Subset(dataset, indices)


def class_labels(dataset: Dataset) -> Tensor:
    """``(N,)``: the class id of every example (a tensor dataset's second tensor, ``targets``, else each item's)."""
    labels = dataset.tensors[1] if isinstance(dataset, TensorDataset) else getattr(dataset, "targets", None)
    if labels is None:
        labels = [int(dataset[i][1]) for i in range(len(dataset))]
    return torch.as_tensor(labels)


def keep_training(splits: DataSplits, count: int, seed: int, task: str) -> DataSplits:
    """``data.train_examples``: ``count`` examples of the training split (after the validation hold-out), drawn by
    ``seed``, each class its share for classification (`split_indices`); validation and test are unchanged."""
    n = len(splits.train)
    if count > n:
        raise DataError(f"data.train_examples {count} asks for more than the {n} training examples there are (after the validation hold-out)")
    if count == n:
        return splits
    labels = class_labels(splits.train).numpy() if task == "classification" else None
    kept, _ = split_indices(n, n - count, seed + 2, labels)
    return replace(splits, train=subset(splits.train, sorted(kept.tolist())))


def keep_classes(splits: DataSplits, classes: list[int], task: str) -> DataSplits:
    """``data.classes``: each split reduced to the examples whose class is in ``classes`` (ids unchanged)."""
    if task != "classification":
        raise DataError(f"data.classes selects classification labels; task is {task}")
    wrong = sorted({c for c in classes if not 0 <= c < (splits.num_classes or 0)})
    if not classes or wrong or len(set(classes)) != len(classes):
        raise DataError(f"data.classes {classes} must be distinct class ids in [0, {splits.num_classes}) (out of range: {wrong})")

    def keep(dataset: Dataset) -> Dataset:
        labels = class_labels(dataset)  # (N,)
        kept = torch.isin(labels, torch.tensor(classes)).nonzero().flatten()  # (kept,)
        return subset(dataset, kept.tolist())

    train, test = keep(splits.train), keep(splits.test)
    if not len(train) or not len(test):
        raise DataError(f"data.classes {classes} leaves {len(train)} training and {len(test)} test examples")
    return replace(splits, train=train, test=test, validation=None)



# -- splitting ------------------------------------------------------------------------------------------------


def test_count(n: int, test_size: float) -> int:
    if test_size <= 0:
        raise DataError(f"data.test_size must be positive, got {test_size}")
    if test_size < 1:
        count = max(1, math.floor(test_size * n + 0.5))
    elif test_size != int(test_size):
        raise DataError(
            f"data.test_size {test_size} is >= 1, so it counts examples and must be a whole number; "
            "give a fraction below 1 for a share"
        )
    else:
        count = int(test_size)
    if count >= n:
        raise DataError(
            f"data.test_size {test_size} holds out {count} of {n} examples, leaving none to train on; "
            "give a smaller fraction or count"
        )
    return count


def split_indices(n: int, test_size: float, seed: int, labels: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """``(train, test)`` indices into ``n`` examples, a function of ``seed`` alone.

    With ``labels``, each class gives its share of the test split (largest remainders settle the rounding),
    so small or unbalanced data keeps every class on both sides where it can. Both index lists come out
    shuffled, so a ``max_examples`` prefix mixes the classes.
    """
    n_test = test_count(n, test_size)
    generator = torch.Generator().manual_seed(seed)
    if labels is None:
        order = torch.randperm(n, generator=generator).numpy()
        return order[n_test:], order[:n_test]
    _, inverse = np.unique(labels, return_inverse=True)
    counts = np.bincount(inverse.reshape(-1))
    quota = counts * (n_test / n)
    take = np.floor(quota).astype(np.int64)
    # Stable sort: ties go to the lower class, so the result depends on nothing but the data and the seed.
    by_remainder = np.argsort(-(quota - take), kind="stable")
    take[by_remainder[: n_test - int(take.sum())]] += 1
    train_parts, test_parts = [], []
    for k, count in enumerate(take):
        members = np.flatnonzero(inverse == k)
        members = members[torch.randperm(len(members), generator=generator).numpy()]
        test_parts.append(members[:count])
        train_parts.append(members[count:])
    train, test = np.concatenate(train_parts), np.concatenate(test_parts)
    train = train[torch.randperm(len(train), generator=generator).numpy()]
    test = test[torch.randperm(len(test), generator=generator).numpy()]
    return train, test


def cap(indices: np.ndarray, max_examples: int | None) -> np.ndarray:
    return indices if max_examples is None else indices[:max_examples]



# -- image normalisation --------------------------------------------------------------------------------------


def normalisation(
    section: DataSection, channels: int, default_mean: list[float], default_std: list[float]
) -> tuple[Tensor, Tensor]:
    """Per-channel ``(mean, std)`` shaped ``(channels, 1, 1)``; one value given applies to every channel."""
    if (section.mean is None) != (section.std is None):
        given, missing = ("data.mean", "data.std") if section.std is None else ("data.std", "data.mean")
        raise DataError(f"{given} is set but {missing} is not; give both (one value, or one per channel)")
    mean = default_mean if section.mean is None else section.mean
    std = default_std if section.std is None else section.std
    for label, values in (("data.mean", mean), ("data.std", std)):
        if len(values) not in (1, channels):
            raise DataError(f"{label} has {len(values)} values for {channels}-channel images; give 1 or {channels}")
    if min(std) <= 0:
        raise DataError(f"data.std must be positive, got {std}")
    shape = (channels, 1, 1)
    return (
        torch.tensor(mean, dtype=torch.float32).expand(channels).reshape(shape).clone(),
        torch.tensor(std, dtype=torch.float32).expand(channels).reshape(shape).clone(),
    )

