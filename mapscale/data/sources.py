"""The data sources a recipe's ``data.name`` picks: one literal registry (`SOURCES`) and the one builder that reads
it (`build_datasets`). A source is a module of its own with a builder ``(section, task, cache_dir) -> DataSplits``;
adding one touches that module and its line here (what it reads, whether it needs ``data.path``), nothing else.
Any ``data.name`` not registered is a Hugging Face hub dataset id (`HUB`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from mapscale.data.deepfake import build_deepfake
from mapscale.data.images import build_segfolder
from mapscale.data.shipped import build_shipped_mnist
from mapscale.data.splits import TASKS, DataError, DataSplits, hold_out_validation, keep_classes, keep_training
from mapscale.data.tables import build_files, build_hub
from mapscale.data.text import build_text
from mapscale.data.timeseries import build_timeseries

if TYPE_CHECKING:
    from mapscale.data.section import DataSection


@dataclass(frozen=True)
class Source:
    """A registry entry: the builder, and what `DataSection` checks when a recipe is read."""

    build: Callable[[DataSection, str, str | Path | None], DataSplits]
    needs_path: bool = False
    """It reads local files (``data.path``); recipes may leave the path to the command line."""
    ignores: frozenset[str] = frozenset()
    """`DataSection` fields it never reads: a recipe setting one is refused (the value would be ignored)."""
    sole_task: str | None = None
    """A task no other source serves, and that this source alone serves."""
    wrong_task: tuple[str, str] = ("", "")
    """With ``sole_task``: the messages for ``sole_task`` asked of another source, and another task asked of this
    one (``{name}``: the recipe's ``data.name``, ``{task}``: its task)."""
    suggested: bool = True
    """Named as a local alternative when a hub dataset cannot be found."""


_IMAGE = {"image_size", "channels", "mean", "std"}
_SERIES = {"window", "horizon", "standardise_target"}
_TEXT = {"tokenizer"}
_TABLE = frozenset(_SERIES | _TEXT)

SOURCES: dict[str, Source] = {
    "shipped_mnist": Source(build_shipped_mnist, ignores=frozenset({"path", "input_column", "target_column", "feature_columns", *_SERIES, *_TEXT})),
    "imagefolder": Source(build_files, needs_path=True, ignores=frozenset({"feature_columns", *_SERIES, *_TEXT})),
    "deepfake": Source(build_deepfake, ignores=frozenset({"feature_columns", *_SERIES, *_TEXT})),
    "segfolder": Source(
        build_segfolder, needs_path=True, ignores=frozenset({"input_column", "target_column", "feature_columns", "classes", *_SERIES, *_TEXT}),
        sole_task="segmentation", wrong_task=(
            "segmentation data (images with per-pixel masks) is read from data.name=segfolder only, not {name!r}: set "
            "data.name=segfolder and data.path to a folder holding images/ and masks/",
            "data.name=segfolder holds images with per-pixel masks; it serves task=segmentation, not {task}",
        ),
    ),
    "timeseries": Source(build_timeseries, needs_path=True, ignores=frozenset({"split_seed", "input_column", "max_examples", "classes", *_IMAGE, *_TEXT})),
    "text": Source(
        build_text, needs_path=True, suggested=False,
        ignores=frozenset({"split_seed", "input_column", "target_column", "feature_columns", "classes", "horizon", "standardise_target", *_IMAGE}),
        sole_task="language_modeling", wrong_task=("data.name=text (a text file as tokens) and task=language_modeling go together; got data.name={name!r} with task={task}",) * 2,
    ),
    "csv": Source(build_files, needs_path=True, ignores=_TABLE),
    "parquet": Source(build_files, needs_path=True, ignores=_TABLE),
    "json": Source(build_files, needs_path=True, ignores=_TABLE),
}

HUB = Source(partial(build_hub, suggested=tuple(n for n, s in SOURCES.items() if s.suggested)), ignores=frozenset({"path", *_SERIES, *_TEXT}))
"""Every other ``data.name``: a Hugging Face hub dataset id (needs the network, or a cached copy and HF_HUB_OFFLINE=1)."""


def source_of(name: str) -> Source:
    return SOURCES.get(name, HUB)


def build_datasets(section: DataSection, task: str, *, cache_dir: str | Path | None = None) -> DataSplits:
    """The train and test splits described by ``section`` for ``task`` (one of `TASKS`).

    ``cache_dir`` is where Hugging Face ``datasets`` keeps the Arrow files it builds from local files or
    downloads (default: its own cache, ``~/.cache/huggingface/datasets``). Raises ``DataError`` for any
    problem with the data asked for. What every source shares happens here: the validation hold-out
    (``data.validation_size``), the training cap (``data.train_examples``), the class filter (``data.classes``) and the tasks only one source serves.
    """
    if task not in TASKS:
        raise DataError(f"unknown task {task!r}: expected one of {', '.join(TASKS)}")
    if section.train_examples is not None:  # after the validation hold-out: validation and test stay whole
        splits = build_datasets(section.model_copy(update={"train_examples": None}), task, cache_dir=cache_dir)
        return keep_training(splits, section.train_examples, section.split_seed, task)
    if section.validation_size is not None:
        splits = build_datasets(section.model_copy(update={"validation_size": None}), task, cache_dir=cache_dir)
        return hold_out_validation(splits, section.validation_size, section.split_seed)
    if section.classes is not None:
        return keep_classes(build_datasets(section.model_copy(update={"classes": None}), task, cache_dir=cache_dir), section.classes, task)
    for name, source in SOURCES.items():
        if source.sole_task is not None and (task == source.sole_task) != (section.name == name):
            # e.g. image + mask pairs need their own folder layout: refusing beats training on class labels under a per-pixel loss
            message = source.wrong_task[0 if task == source.sole_task else 1]
            raise DataError(message.format(name=section.name, task=task))
    return source_of(section.name).build(section, task, cache_dir)
