"""Everything read through Hugging Face ``datasets``: local files (``imagefolder``: one sub-folder per class;
``csv``, ``parquet``, ``json``: tables) and hub datasets (any other ``data.name``). Their splits become torch
datasets here (`from_hf_splits`): an image column one decoded image per item (`mapscale.data.images`), numeric
columns a float vector."""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import numpy as np
import torch
from torch.utils.data import TensorDataset

from mapscale.data.columns import column_matrix, encode_targets, numeric_type
from mapscale.data.images import ImageDataset, ImageTransform
from mapscale.data.splits import IMAGENET_MEAN, IMAGENET_STD, MNIST_MEAN, MNIST_STD, DataError, DataSplits, cap, normalisation, split_indices

if TYPE_CHECKING:
    import datasets

    from mapscale.data.section import DataSection

TABULAR_EXTENSIONS = {"csv": (".csv",), "parquet": (".parquet",), "json": (".json", ".jsonl")}
_EXPECTS = {
    "imagefolder": "a folder with one sub-folder per class, such as real/ and fake/ "
    "(optionally inside train/ and test/ folders)",
    "csv": "a .csv file, or a folder of .csv files (files named train*.csv and test*.csv give the splits)",
    "parquet": "a .parquet file, or a folder of .parquet files (train*.parquet and test*.parquet give the splits)",
    "json": "a .json/.jsonl file, or a folder of them (train*.jsonl and test*.jsonl give the splits)",
}
_HUB_PROBE_TIMEOUT_S = 3.0


def build_files(section: DataSection, task: str, cache_dir: str | Path | None = None) -> DataSplits:
    """``imagefolder``, ``csv``, ``parquet``, ``json``: the files under ``data.path``, loaded by ``datasets``."""
    return from_hf_splits(*load_files(section, cache_dir), section, task)


def build_hub(section: DataSection, task: str, cache_dir: str | Path | None = None, *, suggested: tuple[str, ...] = ()) -> DataSplits:
    """Any ``data.name`` that is no registered source: a Hugging Face hub dataset id. ``suggested``: the registered
    sources a failure names as the local alternatives (`mapscale.data.sources`)."""
    return from_hf_splits(*load_hub(section, cache_dir, suggested), section, task)


# -- loading local files and hub datasets ---------------------------------------------------------------------


def load_files(section: DataSection, cache_dir: str | Path | None) -> tuple[dict[str, Any], str]:
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
        extensions = TABULAR_EXTENSIONS[name]
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


def load_hub(section: DataSection, cache_dir: str | Path | None, suggested: tuple[str, ...]) -> tuple[dict[str, Any], str]:
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
            raise DataError(_not_found(name, "it is not a valid hub id (name or owner/name)", suggested)) from None
        # Unreachable hubs cost `load_dataset` ~25 s of retries before it gives up; a short probe fails fast.
        offline = constants.HF_HUB_OFFLINE or datasets.config.HF_HUB_OFFLINE
        if not offline and not _proxy_configured() and not _hub_reachable(constants.ENDPOINT):
            raise DataError(
                _not_found(
                    name,
                    f"the hub ({constants.ENDPOINT}) cannot be reached from this machine (a copy cached "
                    "earlier is used with HF_HUB_OFFLINE=1)",
                    suggested,
                )
            )
    try:
        loaded = datasets.load_dataset(name, cache_dir=_str_or_none(cache_dir))
    except (datasets.exceptions.DatasetNotFoundError, ConnectionError) as err:
        raise DataError(_not_found(name, str(err), suggested)) from err
    except (OSError, ValueError, datasets.exceptions.DatasetsError) as err:
        raise DataError(f"could not load hub dataset {name!r}: {err}") from err
    return dict(loaded), f"hub dataset {name!r}"


def _not_found(name: str, reason: str, suggested: tuple[str, ...]) -> str:
    return (
        f"data.name {name!r} is neither a built-in data source ({', '.join(suggested)}) nor a dataset "
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


def from_hf_splits(splits: dict[str, Any], source: str, section: DataSection, task: str) -> DataSplits:
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
    encoded, num_classes = encode_targets(full, target, task, source)
    if test_full is None:
        stratify = encoded[0] if task == "classification" else None
        train_idx, test_idx = split_indices(len(train_full), section.test_size, section.split_seed, stratify)
        test_full, test_targets = train_full, encoded[0]
    else:
        train_idx, test_idx = np.arange(len(train_full)), np.arange(len(test_full))
        test_targets = encoded[1]
    train_idx, test_idx = cap(train_idx, section.max_examples), cap(test_idx, section.max_examples)

    if kind == "image":
        column = columns[0]
        channels = section.channels or 3
        defaults = ([MNIST_MEAN], [MNIST_STD]) if channels == 1 else (list(IMAGENET_MEAN), list(IMAGENET_STD))
        mean, std = normalisation(section, channels, *defaults)
        transform = ImageTransform(channels, section.image_size, mean, std)

        def images(ds: datasets.Dataset, idx: np.ndarray, targets: np.ndarray) -> ImageDataset:
            subset = ds.select_columns([column]).select(idx)  # only the image column is decoded per item
            return ImageDataset(subset, column, torch.from_numpy(targets[idx]), transform)

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
        inputs = column_matrix(ds.select(idx), columns, source, "data.feature_columns")
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
    not_numeric = [c for c in columns if not numeric_type(schema.field(c).type)]
    if not_numeric:
        described = ", ".join(f"{c!r} ({features[c]})" for c in not_numeric)
        raise DataError(
            f"{source}: input columns must hold numbers (or fixed-length lists of numbers), but {described} do not; "
            f"choose numeric columns with data.feature_columns"
        )
    return "table", columns

