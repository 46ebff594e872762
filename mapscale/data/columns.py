"""Arrow columns as numbers: which columns hold numbers (`numeric_type`), a float matrix of chosen columns
(`column_matrix`), and targets encoded once over every split (`encode_targets`). Used by the shipped MNIST subset
and by every source read through Hugging Face ``datasets`` (`mapscale.data.tables`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from mapscale.data.splits import DataError

if TYPE_CHECKING:
    import datasets
    import pyarrow as pa


def numeric_type(arrow_type: pa.DataType, allow_list: bool = True) -> bool:
    import pyarrow as pa

    if pa.types.is_integer(arrow_type) or pa.types.is_floating(arrow_type) or pa.types.is_boolean(arrow_type):
        return True
    return allow_list and is_list(arrow_type) and numeric_type(arrow_type.value_type, allow_list=False)


def is_list(arrow_type: pa.DataType) -> bool:
    import pyarrow as pa

    return pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type) or pa.types.is_fixed_size_list(arrow_type)


def column_matrix(ds: datasets.Dataset, columns: list[str], source: str, setting: str) -> np.ndarray:
    """Float32 ``(N, width)``: scalar columns give one value each, list columns their (equal-length) values."""
    import pyarrow.compute as pc

    table = ds.select_columns(columns).with_format("arrow")[:]
    parts = []
    for name in columns:
        column = table.column(name).combine_chunks()
        if is_list(column.type):
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


def encode_targets(
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
        if not numeric_type(kind):
            raise DataError(
                f"the target column {column!r} of {source} holds {feature}, not numbers; regression needs numeric "
                "targets: set data.target_column to a numeric column"
            )
        return [column_matrix(ds, [column], source, "data.target_column") for ds in splits], None

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

