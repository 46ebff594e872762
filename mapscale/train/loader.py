"""The input pipeline: ``DataLoader`` settings for training and evaluation (`make_loader`), and the training
batches' sampler (`StepBatches`), whose index lists the loop sets per epoch, so one loader, and its worker
processes, serves the whole run.

What a batch holds is decided by the indices alone (`mapscale.train.loop.batches`): datasets read an item the
same way in any process, and augmentation is drawn from (seed, epoch, example) after loading, so the batches,
and so the losses, are identical whatever ``data.workers`` is, and a resumed run's are an uninterrupted one's.
"""

from __future__ import annotations

import os

import torch
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

AUTO_WORKERS = 4
"""At most this many workers when ``data.workers`` is not set (and at most the cores of this rank).
``bench/results/loader.md`` (2 cores): CNN2 on the embedded image folder trains 1.78x faster with 2 workers
than with none, where 1 worker is 0.88x (it only moves the decoding off a core that then waits); ResNet50 at
64² is bound by its compute (2 workers 0.98x)."""
PREFETCH = 4
"""Batches each worker keeps ready (``prefetch_factor``)."""


def _unwrapped(dataset: Dataset) -> tuple[Dataset, list[int] | range]:
    """``(base, indices)``: the dataset under any `Subset`s of ``dataset``, and the base's index of each item."""
    indices: list[int] | range = range(len(dataset))
    while isinstance(dataset, Subset):
        indices, dataset = [dataset.indices[i] for i in indices], dataset.dataset
    return dataset, indices


def in_memory(dataset: Dataset) -> bool:
    """Whether ``dataset``'s items are slices of tensors held in memory (nothing to decode: workers would only
    copy them between processes)."""
    return isinstance(_unwrapped(dataset)[0], TensorDataset)


def data_workers(recipe, dataset: Dataset) -> int:
    """``data.workers``, else 0 for in-memory tensors and, for datasets that decode per item (image folders,
    segmentation pairs, hub images), ``min(AUTO_WORKERS, cores per local rank)``, at least 1."""
    if recipe.data.workers is not None:
        return recipe.data.workers
    if in_memory(dataset):
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    per_rank = cores // max(int(os.environ.get("LOCAL_WORLD_SIZE", "1")), 1)
    return max(1, min(AUTO_WORKERS, per_rank))


def make_loader(dataset: Dataset, recipe, device, *, batch_size: int | None = None, batch_sampler=None, persistent: bool = False) -> DataLoader:
    """A loader of ``dataset`` by ``batch_size`` (in order) or ``batch_sampler``: `data_workers` processes with
    `PREFETCH` batches each (kept for the loader's life when ``persistent``), and pinned memory on CUDA so that
    the copies to the device do not block (`mapscale.train.evaluate.model_inputs`)."""
    workers = data_workers(recipe, dataset)
    options = {"num_workers": workers, "prefetch_factor": PREFETCH, "persistent_workers": persistent} if workers else {}
    device = torch.device(device)
    images = _pixels_of(dataset)
    source = dataset if images is None else images
    options |= {"pin_memory": device.type == "cuda"}
    loader = DataLoader(source, batch_sampler=batch_sampler, **options) if batch_sampler is not None else DataLoader(source, batch_size=batch_size, **options)
    return loader if images is None else PixelLoader(loader, images.base, device)


class PixelLoader:
    """Batches of uint8 pixels from a loader over `_Pixels`, copied to ``device`` and normalised there: a quarter of
    the bytes through the workers' shared memory and the host-to-device copy, and the same values as the items'."""

    def __init__(self, loader: DataLoader, images, device: torch.device) -> None:
        self.loader, self.images, self.device = loader, images, device

    def __iter__(self):
        for inputs, targets in self.loader:
            yield self.images.finish_batch(inputs.to(self.device, non_blocking=True)), targets

    def __len__(self) -> int:
        return len(self.loader)


class _Pixels(Dataset):
    """The items of an `ImageDataset` (through any `Subset`s of it) as uint8 pixels (`ImageDataset.pixels_item`)."""

    def __init__(self, base, indices: list[int]) -> None:
        self.base, self.indices = base, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int):
        return self.base.pixels_item(self.indices[index])


def _pixels_of(dataset: Dataset) -> _Pixels | None:
    from mapscale.data.images import ImageDataset

    base, indices = _unwrapped(dataset)
    if not (isinstance(base, ImageDataset) and base.loads_pixels):
        return None
    return _Pixels(base, list(indices))


class StepBatches:
    """A batch sampler whose index lists are set before each pass (`set`): one persistent loader for every epoch."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []

    def set(self, batches: list[list[int]]) -> None:
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)
