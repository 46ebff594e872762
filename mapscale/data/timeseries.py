"""Windowed time series (``data.name=timeseries``): a CSV file, one row per time step, cut into windows that
predict a target column some rows on, split chronologically."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import TensorDataset

from mapscale.data.splits import DataError, DataSplits, test_count

if TYPE_CHECKING:
    from mapscale.data.section import DataSection


def build_timeseries(section: DataSection, task: str, cache_dir=None) -> DataSplits:
    """``data.name=timeseries``: `timeseries_windows` of the CSV file ``data.path``."""
    if task != "regression" or section.path is None or section.window is None or section.target_column is None:
        raise DataError("data.name=timeseries needs task=regression, data.path (a CSV file), data.window and data.target_column")
    return timeseries_windows(
        section.path, section.target_column, section.window, section.horizon, section.test_size,
        section.feature_columns, section.standardise_target,
    )


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
    n_test = test_count(steps, test_size)
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

