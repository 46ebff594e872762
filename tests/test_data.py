"""The data layer: shipped MNIST, image folders, tabular files and the errors users see. All data is made in
tmp_path; nothing is downloaded."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from mapscale import data
from mapscale.data import tables  # the hub probe lives with the sources read through `datasets`
from mapscale.data import DataError, DataSplits, Split, build_datasets, shipped_mnist
from mapscale.recipe import DataSection


def build(tmp_path, task: str = "classification", **fields) -> DataSplits:
    return build_datasets(DataSection(**fields), task, cache_dir=tmp_path / "hf-cache")


def labels_of(split) -> list[int]:
    return [int(split[i][1]) for i in range(len(split))]


# -- shipped MNIST ----------------------------------------------------------------------------------------------


def test_shipped_mnist_function_keeps_its_tensor_splits():
    train, test = shipped_mnist()
    assert isinstance(train, Split) and isinstance(test, Split)
    assert (len(train), len(test)) == (4000, 1000)
    assert train.inputs.shape == (4000, 1, 28, 28) and train.inputs.dtype == torch.float32
    assert test.targets.dtype == torch.long


@pytest.fixture(scope="module")
def mnist() -> DataSplits:
    return build_datasets(DataSection(), "classification")


def test_shipped_mnist_default_split_is_4000_train_1000_test(mnist):
    assert (len(mnist.train), len(mnist.test)) == (4000, 1000)
    assert mnist.num_classes == 10 and mnist.input_shape == (1, 28, 28)
    x, y = mnist.train[0]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32
    assert y.dtype == torch.int64 and y.ndim == 0
    # stratified: the subset has 500 per digit, so the test split has 100 per digit
    assert torch.bincount(mnist.test.tensors[1], minlength=10).tolist() == [100] * 10


def test_shipped_mnist_is_normalised(mnist):
    inputs = mnist.train.tensors[0]
    assert abs(inputs.mean().item()) < 0.05
    assert abs(inputs.std().item() - 1) < 0.05


def test_shipped_mnist_split_is_deterministic_per_seed(mnist):
    again = build_datasets(DataSection(split_seed=0), "classification")
    for a, b in zip(mnist.test.tensors, again.test.tensors):
        assert torch.equal(a, b)
    other = build_datasets(DataSection(split_seed=1), "classification")
    assert not torch.equal(mnist.test.tensors[0], other.test.tensors[0])
    assert (len(other.train), len(other.test)) == (4000, 1000)


def test_shipped_mnist_train_and_test_do_not_overlap(mnist):
    flat = lambda t: {row.numpy().tobytes() for row in t.flatten(1)}  # noqa: E731
    assert not flat(mnist.train.tensors[0]) & flat(mnist.test.tensors[0])


def test_max_examples_takes_the_first_examples_of_each_split(mnist):
    capped = build_datasets(DataSection(max_examples=50), "classification")
    assert (len(capped.train), len(capped.test)) == (50, 50)
    assert torch.equal(capped.train.tensors[0], mnist.train.tensors[0][:50])
    assert torch.equal(capped.test.tensors[1], mnist.test.tensors[1][:50])


def test_train_examples_caps_only_the_training_split_each_class_its_share(mnist):
    whole = build_datasets(DataSection(validation_size=500), "classification")
    scarce = build_datasets(DataSection(validation_size=500, train_examples=250), "classification")
    assert (len(scarce.train), len(scarce.validation), len(scarce.test)) == (250, 500, len(mnist.test))
    assert torch.equal(scarce.validation.tensors[0], whole.validation.tensors[0])  # held out first, unchanged
    assert torch.equal(scarce.test.tensors[0], whole.test.tensors[0])
    kept = {row.numpy().tobytes() for row in scarce.train.tensors[0].flatten(1)}
    assert kept <= {row.numpy().tobytes() for row in whole.train.tensors[0].flatten(1)}  # a subset of the training split
    share = torch.bincount(whole.train.tensors[1], minlength=10) * (250 / len(whole.train))  # each class's share of 250
    assert (torch.bincount(scarce.train.tensors[1], minlength=10) - share).abs().max() < 1
    again = build_datasets(DataSection(validation_size=500, train_examples=250), "classification")
    assert torch.equal(again.train.tensors[0], scarce.train.tensors[0])  # a function of split_seed alone
    other = build_datasets(DataSection(validation_size=500, train_examples=250, split_seed=1), "classification")
    assert not torch.equal(other.train.tensors[0], scarce.train.tensors[0])
    with pytest.raises(DataError, match="train_examples 4000 asks for more than the 3500"):
        build_datasets(DataSection(validation_size=500, train_examples=4000), "classification")


def test_shipped_mnist_resized_to_three_channels(mnist):
    splits = build_datasets(DataSection(channels=3, image_size=32, max_examples=20), "classification")
    assert splits.input_shape == (3, 32, 32)
    x, _ = splits.train[0]
    assert x.shape == (3, 32, 32)
    assert torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])  # the grey channel, repeated


def test_shipped_mnist_custom_normalisation():
    splits = build_datasets(DataSection(mean=[0.0], std=[1.0], max_examples=10), "classification")
    inputs = splits.train.tensors[0]
    assert inputs.min() >= 0 and inputs.max() <= 1


def test_shipped_mnist_is_a_named_hugging_face_dataset():
    ds = data.shipped_mnist_dataset()
    assert len(ds) == 5000 and ds.info.dataset_name == "shipped_mnist"
    assert ds.features["label"].num_classes == 10


def test_shipped_mnist_refuses_regression_and_a_path(tmp_path):
    with pytest.raises(DataError, match="shipped_mnist is a classification dataset"):
        build_datasets(DataSection(), "regression")
    with pytest.raises(ValueError, match=r"data.name='shipped_mnist' does not read data.path; leave it unset"):  # when the recipe is read
        DataSection(path=tmp_path)


# -- image folders ----------------------------------------------------------------------------------------------


def make_image_folder(root, per_class: int = 6, classes=("fake", "real")):
    rng = np.random.default_rng(0)
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            size = (10 + 3 * i, 12 + 2 * c)  # sizes differ, so resizing is needed to batch them
            pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
            image = Image.fromarray(pixels)
            if i == 0:
                image = image.convert("L")  # a grey image among RGB ones still gives 3 channels
            image.save(root / name / f"{i}.png")
    return root


def test_image_folder_items_labels_and_split_sizes(tmp_path):
    folder = make_image_folder(tmp_path / "images")
    splits = build(tmp_path, name="imagefolder", path=folder, image_size=16, test_size=0.25)
    assert (len(splits.train), len(splits.test)) == (9, 3)
    assert splits.num_classes == 2 and splits.input_shape == (3, 16, 16)
    x, y = splits.train[0]
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert set(labels_of(splits.train)) | set(labels_of(splits.test)) == {0, 1}
    inputs, targets = next(iter(DataLoader(splits.train, batch_size=4)))
    assert inputs.shape == (4, 3, 16, 16) and targets.shape == (4,)


def test_image_folder_split_by_count_is_stratified_and_seeded(tmp_path):
    folder = make_image_folder(tmp_path / "images")
    splits = build(tmp_path, name="imagefolder", path=folder, image_size=16, test_size=4)
    assert (len(splits.train), len(splits.test)) == (8, 4)
    assert sorted(labels_of(splits.test)) == [0, 0, 1, 1]
    again = build(tmp_path, name="imagefolder", path=folder, image_size=16, test_size=4)
    assert all(torch.equal(splits.test[i][0], again.test[i][0]) for i in range(4))


def test_image_folder_grey(tmp_path):
    folder = make_image_folder(tmp_path / "images")
    splits = build(tmp_path, name="imagefolder", path=folder, image_size=8, channels=1, max_examples=3)
    assert splits.input_shape == (1, 8, 8) and splits.train[0][0].shape == (1, 8, 8)
    assert (len(splits.train), len(splits.test)) == (3, 2)  # 20% of 12 rounds to 2 test images


def test_image_folder_uses_its_own_test_split(tmp_path):
    make_image_folder(tmp_path / "images" / "train", per_class=4)
    make_image_folder(tmp_path / "images" / "test", per_class=2)
    splits = build(tmp_path, name="imagefolder", path=tmp_path / "images", image_size=8, test_size=0.5)
    assert (len(splits.train), len(splits.test)) == (8, 4)
    assert sorted(labels_of(splits.test)) == [0, 0, 1, 1]


def test_image_folder_without_class_folders(tmp_path):
    (tmp_path / "flat").mkdir()
    for i in range(3):
        Image.new("RGB", (8, 8)).save(tmp_path / "flat" / f"{i}.png")
    with pytest.raises(DataError, match="no class labels.*one sub-folder per class"):
        build(tmp_path, name="imagefolder", path=tmp_path / "flat")


def test_image_folder_labels_do_not_serve_regression(tmp_path):
    folder = make_image_folder(tmp_path / "images", per_class=2)
    with pytest.raises(DataError, match="holds class names.*regression needs a numeric target"):
        build(tmp_path, "regression", name="imagefolder", path=folder)


# -- tables ---------------------------------------------------------------------------------------------------


def write_table(path, n: int = 20, label=None):
    rng = np.random.default_rng(1)
    lines = ["x1,x2,x3,y,label"]
    for i in range(n):
        x = rng.normal(size=3)
        cls = label(i) if label else i % 3
        lines.append(f"{x[0]:.4f},{x[1]:.4f},{x[2]:.4f},{x.sum():.4f},{cls}")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_csv_regression(tmp_path):
    csv = write_table(tmp_path / "table.csv")
    splits = build(tmp_path, "regression", name="csv", path=csv, target_column="y", feature_columns=["x1", "x2", "x3"])
    assert splits.num_classes is None and splits.input_shape == (3,)
    assert (len(splits.train), len(splits.test)) == (16, 4)
    x, y = splits.train[0]
    assert x.dtype == torch.float32 and x.shape == (3,)
    assert y.dtype == torch.float32 and y.shape == (1,)
    assert torch.allclose(x.sum(), y[0], atol=1e-3)  # the row's own target


def test_csv_feature_columns_select_the_inputs(tmp_path):
    csv = write_table(tmp_path / "table.csv")
    picked = dict(name="csv", path=csv, target_column="y", test_size=5)
    splits = build(tmp_path, "regression", feature_columns=["x3", "x1"], **picked)
    assert splits.input_shape == (2,) and (len(splits.train), len(splits.test)) == (15, 5)
    default = build(tmp_path, "regression", **picked)
    assert default.input_shape == (4,)  # every column but the target: x1, x2, x3, label
    assert torch.equal(splits.train[0][0], default.train[0][0][[2, 0]])


def test_csv_classification_integer_labels(tmp_path):
    csv = write_table(tmp_path / "table.csv")
    splits = build(tmp_path, name="csv", path=csv, feature_columns=["x1", "x2", "x3"])
    assert splits.num_classes == 3 and splits.input_shape == (3,)
    x, y = splits.train[0]
    assert x.dtype == torch.float32 and y.dtype == torch.int64 and y.ndim == 0
    assert set(labels_of(splits.train)) == {0, 1, 2}


def test_csv_classification_string_labels_are_numbered_in_sorted_order(tmp_path):
    csv = write_table(tmp_path / "table.csv", label=lambda i: ["dog", "cat"][i % 2])
    splits = build(tmp_path, name="csv", path=csv, feature_columns=["x1", "x2"], test_size=0.5)
    assert splits.num_classes == 2
    assert sorted(labels_of(splits.test)) == [0] * 5 + [1] * 5


def test_folder_of_csv_files_with_train_and_test(tmp_path):
    folder = tmp_path / "tables"
    folder.mkdir()
    write_table(folder / "train.csv", n=12)
    write_table(folder / "test.csv", n=5)
    (folder / "notes.txt").write_text("not data")
    splits = build(tmp_path, name="csv", path=folder, feature_columns=["x1", "x2", "x3"])
    assert (len(splits.train), len(splits.test)) == (12, 5)


@pytest.mark.parametrize("fmt", ["json", "parquet"])
def test_json_and_parquet(tmp_path, fmt):
    import pandas as pd

    frame = pd.DataFrame({"a": np.arange(10.0), "b": np.arange(10) * 2, "label": np.arange(10) % 2})
    path = tmp_path / f"table.{'jsonl' if fmt == 'json' else fmt}"
    frame.to_json(path, orient="records", lines=True) if fmt == "json" else frame.to_parquet(path)
    splits = build(tmp_path, name=fmt, path=path, test_size=2)
    assert (len(splits.train), len(splits.test)) == (8, 2)
    assert splits.num_classes == 2 and splits.input_shape == (2,)
    x, y = splits.test[0]
    assert x[1] == 2 * x[0] and y == int(x[0]) % 2


def test_table_problems_are_named(tmp_path):
    csv = tmp_path / "t.csv"
    csv.write_text("a,b,name,label\n1,,x,0\n2,3,y,1.5\n3,4,z,1\n")
    with pytest.raises(DataError, match=r"'name' \(.*\) do not; choose numeric columns with data.feature_columns"):
        build(tmp_path, name="csv", path=csv)
    with pytest.raises(DataError, match="column 'b' .* has missing values"):
        build(tmp_path, "regression", name="csv", path=csv, feature_columns=["a", "b"])
    with pytest.raises(DataError, match="non-integer numbers.*task=regression"):
        build(tmp_path, name="csv", path=csv, feature_columns=["a"])
    with pytest.raises(DataError, match="no target column 'y'"):
        build(tmp_path, name="csv", path=csv, target_column="y")
    with pytest.raises(DataError, match=r"data.feature_columns names 'c'"):
        build(tmp_path, name="csv", path=csv, feature_columns=["a", "c"])
    with pytest.raises(DataError, match="data.image_size apply to images"):
        build(tmp_path, "regression", name="csv", path=csv, feature_columns=["a"], image_size=8)


# -- errors ---------------------------------------------------------------------------------------------------


def test_missing_path(tmp_path):
    missing = tmp_path / "nowhere"
    expected = r"data.path .*nowhere does not exist: imagefolder expects a folder with one sub-folder per class"
    with pytest.raises(DataError, match=expected):
        build(tmp_path, name="imagefolder", path=missing)
    with pytest.raises(DataError, match=r"does not exist: csv expects a .csv file"):
        build(tmp_path, name="csv", path=missing)


def test_path_not_set(tmp_path):
    expected = "data.path is not set: data.name=imagefolder reads local files; set data.path to a folder"
    with pytest.raises(DataError, match=expected):
        build(tmp_path, name="imagefolder")


def test_folder_without_matching_files(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"holds no .parquet files"):
        build(tmp_path, name="parquet", path=tmp_path / "empty")
    with pytest.raises(DataError, match="holds no files imagefolder can read"):
        build(tmp_path, name="imagefolder", path=tmp_path / "empty")


def test_unknown_dataset_name_fails_fast(tmp_path):
    start = time.perf_counter()
    # Offline, the quick probe of the hub fails; online, the hub answers "not found". Either way: fast.
    expected = (
        r"'mapscale-tests/no-such-dataset' is neither a built-in data source \(shipped_mnist, imagefolder, deepfake, segfolder, timeseries, "
        r"csv, parquet, json\) nor a dataset reachable on the Hugging Face hub.*data.name to imagefolder"
    )
    with pytest.raises(DataError, match=expected):
        build(tmp_path, name="mapscale-tests/no-such-dataset")
    assert time.perf_counter() - start < 10


def test_name_that_is_no_hub_id(tmp_path):
    with pytest.raises(DataError, match="neither a built-in data source.*not a valid hub id"):
        build(tmp_path, name="my data!")


def test_unreachable_hub_is_reported_without_trying_to_load(tmp_path, monkeypatch):
    import datasets
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # with it set, load_dataset reads the cache instead
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(tables, "_proxy_configured", lambda: False)
    monkeypatch.setattr(tables, "_hub_reachable", lambda endpoint: False)
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: pytest.fail("load_dataset must not run"))
    with pytest.raises(DataError, match="cannot be reached from this machine.*HF_HUB_OFFLINE=1"):
        build(tmp_path, name="mnist")


def test_hub_dataset_not_found_is_a_data_error(tmp_path, monkeypatch):
    import datasets

    def not_found(*args, **kwargs):
        raise datasets.exceptions.DatasetNotFoundError("Dataset 'nobody/nothing' doesn't exist on the Hub")

    monkeypatch.setattr(tables, "_hub_reachable", lambda endpoint: True)
    monkeypatch.setattr(datasets, "load_dataset", not_found)
    with pytest.raises(DataError, match="neither a built-in data source.*doesn't exist on the Hub"):
        build(tmp_path, name="nobody/nothing")


def test_segmentation_is_read_from_segfolder_only(tmp_path):
    with pytest.raises(DataError, match="segmentation data .* is read from data.name=segfolder only"):
        build(tmp_path, "segmentation")


def test_test_size_and_normalisation_problems(tmp_path):
    with pytest.raises(DataError, match="holds out 5000 of 5000 examples"):
        build(tmp_path, test_size=5000)
    with pytest.raises(DataError, match="counts examples and must be a whole number"):
        build(tmp_path, test_size=10.5)
    with pytest.raises(DataError, match="data.mean is set but data.std is not"):
        build(tmp_path, mean=[0.5])
    with pytest.raises(DataError, match="data.mean has 2 values for 3-channel images"):
        build(tmp_path, channels=3, mean=[0.5, 0.5], std=[0.2])


# -- segmentation folders ---------------------------------------------------------------------------------------


def make_segfolder(root, count: int = 5, size=(12, 10)):
    """``count`` RGB images of ``size`` (width, height) with masks: left half class 0, right half class 2, the
    top-left pixel 255 (ignored)."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    width, height = size
    for i in range(count):
        pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / "images" / f"{i}.png")
        mask = np.zeros((height, width), dtype=np.uint8)
        mask[:, width // 2:] = 2
        mask[0, 0] = 255
        Image.fromarray(mask).save(root / "masks" / f"{i}.png")
    return root


def test_segfolder_items_masks_and_classes(tmp_path):
    folder = make_segfolder(tmp_path / "seg")
    splits = build(tmp_path, "segmentation", name="segfolder", path=folder, test_size=0.2)
    assert (len(splits.train), len(splits.test)) == (4, 1)
    assert splits.num_classes == 3 and splits.input_shape == (3, 10, 12)  # largest id 2 (255 left out) + 1
    x, y = splits.train[0]
    assert x.shape == (3, 10, 12) and x.dtype == torch.float32
    assert y.shape == (10, 12) and y.dtype == torch.int64
    assert y[0, 0] == 255 and (y[1:, :6] == 0).all() and (y[:, 6:] == 2).all()


def test_segfolder_resizes_masks_by_nearest_neighbour(tmp_path):
    folder = make_segfolder(tmp_path / "seg")
    splits = build(tmp_path, "segmentation", name="segfolder", path=folder, image_size=8, channels=1, max_examples=2)
    assert (len(splits.train), len(splits.test)) == (2, 1) and splits.input_shape == (1, 8, 8)
    inputs, masks = next(iter(DataLoader(splits.train, batch_size=2)))
    assert inputs.shape == (2, 1, 8, 8) and masks.shape == (2, 8, 8)
    assert set(masks.unique().tolist()) <= {0, 2, 255}  # no blended ids
    assert (masks[:, :, :4] != 2).all() and (masks[:, :, 4:] == 2).all()


def test_segfolder_problems_are_named(tmp_path):
    folder = make_segfolder(tmp_path / "seg", count=3)
    (folder / "masks" / "1.png").unlink()
    with pytest.raises(DataError, match=r"1 of 3 images .* have no mask .*missing: 1.png"):
        build(tmp_path, "segmentation", name="segfolder", path=folder)
    with pytest.raises(DataError, match="has no images/ folder"):
        build(tmp_path, "segmentation", name="segfolder", path=tmp_path / "seg" / "images")
    with pytest.raises(DataError, match="serves task=segmentation, not classification"):
        build(tmp_path, name="segfolder", path=folder)
    with pytest.raises(DataError, match="data.path is not set"):
        build(tmp_path, "segmentation", name="segfolder")


def test_segfolder_mask_of_another_size_needs_image_size(tmp_path):
    folder = make_segfolder(tmp_path / "seg", count=2)
    Image.fromarray(np.ones((4, 4), dtype=np.uint8)).save(folder / "masks" / "0.png")
    splits = build(tmp_path, "segmentation", name="segfolder", path=folder, test_size=1)
    bad = splits.train if splits.train.masks[0].name == "0.png" else splits.test
    with pytest.raises(DataError, match=r"is \(4, 4\) but its image is \(10, 12\)"):
        bad[0]


# -- windowed time series ---------------------------------------------------------------------------------------


def linear_series(steps: int = 20) -> "pd.DataFrame":
    import pandas as pd

    t = np.arange(steps, dtype=np.float64)
    return pd.DataFrame({"date": [f"day {i}" for i in range(steps)], "level": 3 * t + 1, "other": t % 2})


def test_timeseries_window_shapes_and_chronological_split():
    # 20 rows, the last 5 held out: train rows 0-14, test rows 15-19; window 3, horizon 2 -> span 5
    splits = data.timeseries_windows(linear_series(), "level", window=3, horizon=2, test_size=5)
    assert (len(splits.train), len(splits.test)) == (15 - 5 + 1, 5 - 5 + 1)
    assert splits.input_shape == (3, 2) and splits.num_classes is None  # numeric columns level, other
    x, y = splits.train[0]
    assert x.shape == (3, 2) and x.dtype == torch.float32 and y.shape == (1,)
    # targets in their own units, in time order: train window i predicts row i + 4; the test window row 19
    assert splits.train.tensors[1].flatten().tolist() == [3 * (i + 4) + 1 for i in range(11)]
    assert splits.test.tensors[1].flatten().tolist() == [3 * 19 + 1]


def test_timeseries_standardises_with_the_training_part():
    splits = data.timeseries_windows(linear_series(), "level", window=3, horizon=1, test_size=0.25)
    level_train = 3 * np.arange(15) + 1.0  # the training part: rows 0-14
    mean, std = level_train.mean(), level_train.std()
    train_inputs, test_inputs = splits.train.tensors[0], splits.test.tensors[0]
    # every training row appears as the first step of some window except the last three
    first_steps = train_inputs[:, 0, 0].double()
    assert torch.allclose(first_steps, torch.from_numpy((level_train[:12] - mean) / std), atol=1e-6)
    assert test_inputs[0, 0, 0].item() == pytest.approx((3 * 15 + 1 - mean) / std, rel=1e-6)  # train stats


def test_timeseries_last_value_baseline_has_the_known_error(tmp_path):
    # On y = 3t + 1 predicting the last seen value misses by 3 * horizon: MSE 9 h^2 (targets in raw units).
    path = tmp_path / "series.csv"
    linear_series(30).to_csv(path, index=False)
    for horizon in (1, 2):
        splits = data.timeseries_windows(path, "level", window=4, horizon=horizon, test_size=0.3)
        inputs, targets = splits.test.tensors
        std, mean = np.std(3 * np.arange(21) + 1.0), np.mean(3 * np.arange(21) + 1.0)
        last_value = inputs[:, -1, 0:1].double() * std + mean  # undo the standardisation of "level"
        mse = torch.nn.functional.mse_loss(last_value, targets.double()).item()
        assert mse == pytest.approx(9 * horizon**2, rel=1e-5)


def test_timeseries_standardised_target_and_problems(tmp_path):
    splits = data.timeseries_windows(
        linear_series(), "level", window=2, standardise_target=True, feature_columns=["other"]
    )
    assert splits.input_shape == (2, 1)
    assert abs(splits.train.tensors[1].mean().item()) < 0.3
    with pytest.raises(DataError, match="each part needs at least window \\+ horizon = 6 rows"):
        data.timeseries_windows(linear_series(), "level", window=5, test_size=4)
    with pytest.raises(DataError, match="no target column 'pm25'"):
        data.timeseries_windows(linear_series(), "pm25", window=2)
    with pytest.raises(DataError, match="does not exist"):
        data.timeseries_windows(tmp_path / "none.csv", "level", window=2)


def test_timeseries_through_the_recipe_section(tmp_path):
    import pandas as pd

    from mapscale.recipe import DataSection

    t = np.arange(50, dtype=np.float64)
    pd.DataFrame({"x": np.sin(t), "y": 3 * t + 1}).to_csv(tmp_path / "series.csv", index=False)
    section = DataSection(name="timeseries", path=tmp_path / "series.csv", target_column="y", window=6, horizon=2, test_size=0.2)
    splits = build_datasets(section, "regression")
    inputs, target = splits.train[0]
    assert tuple(inputs.shape) == (6, 2) and tuple(target.shape) == (1,)
    assert len(splits.train) == 40 - 6 - 2 + 1 and len(splits.test) == 10 - 6 - 2 + 1
    with pytest.raises(DataError, match="needs task=regression"):
        build_datasets(section, "classification")


def test_validation_split_is_carved_from_training_and_reported(tmp_path):
    from mapscale.recipe import load_recipe
    from mapscale.train import train, write_run_files

    plain = build_datasets(DataSection(name="shipped_mnist", test_size=1000), "classification")
    held = build_datasets(DataSection(name="shipped_mnist", test_size=1000, validation_size=0.125), "classification")
    assert (len(held.train), len(held.validation), len(held.test)) == (3500, 500, 1000)
    assert torch.equal(held.test.tensors[0], plain.test.tensors[0])  # the test split is untouched
    rows = lambda ds: {hash(x.numpy().tobytes()) for x in ds.tensors[0]}  # noqa: E731
    trained, validation, test = rows(held.train), rows(held.validation), rows(held.test)
    assert not trained & validation and not validation & test and trained | validation == rows(plain.train)
    with pytest.raises(DataError, match="leaving none to train on"):
        build_datasets(DataSection(name="shipped_mnist", test_size=1000, validation_size=4000), "classification")

    overrides = ["data.validation_size=500", "optim.max_steps=3", "mapping.operator=structured"]
    recipe = load_recipe("recipes/mnist_cnn2.py", overrides)
    write_run_files(tmp_path, recipe, None, overrides)
    result = train(recipe, tmp_path)
    assert set(result.final_validation) == set(result.final) and 0 <= result.final_validation["accuracy"] <= 1
    assert result.final_validation != result.final


def test_shifted_images_move_each_example_by_its_own_keyed_shift_with_zero_fill():
    from mapscale.data import shifted_images

    images = torch.arange(1, 1 + 40 * 36, dtype=torch.float32).view(40, 1, 6, 6)
    indices = torch.arange(100, 140)
    moved = shifted_images(images, indices, 2, key=7)
    assert torch.equal(moved, shifted_images(images, indices, 2, key=7))  # a pure function of (key, index)
    assert not torch.equal(moved, shifted_images(images, indices, 2, key=8))
    shifts = set()
    for image, out in zip(images[:, 0], moved[:, 0]):
        # the one shift (dy, dx) in [-2, 2]² that maps this image onto its output, zeros where it moved in
        found = [
            (dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)
            if torch.equal(out, torch.nn.functional.pad(image, [2, 2, 2, 2])[2 - dy : 8 - dy, 2 - dx : 8 - dx])
        ]
        assert len(found) == 1
        shifts.add(found[0])
    assert len(shifts) >= 10  # 40 examples spread over the 25 shifts
    with pytest.raises(DataError, match="moves images"):
        shifted_images(torch.zeros(4, 10), torch.arange(4), 2, key=0)


def test_augment_shift_trains_and_refuses_non_images(tmp_path):
    from mapscale.distributed.world import World
    from mapscale.recipe import load_recipe
    from mapscale.train import prepare, train, write_run_files

    overrides = ["data.augment_shift=2", "optim.max_steps=12", "data.max_examples=768", "output.log_every=1", "output.progress=false"]
    recipe = load_recipe("recipes/mnist_cnn2.py", overrides)
    write_run_files(tmp_path, recipe, None, overrides)
    train(recipe, tmp_path)
    losses = [r["task"] for r in map(json.loads, (tmp_path / "metrics.jsonl").read_text().splitlines()) if r["split"] == "train"]
    assert len(losses) == 12 and sum(losses[-3:]) < sum(losses[:3])
    text = tmp_path / "text.txt"
    text.write_text("mapscale " * 2000)
    gpt = load_recipe("recipes/gpt2_small_lwt.py", [f"data.path={text}", "data.augment_shift=2", 'target.args={"vocab": 256, "positions": 32, "width": 16, "layers": 1, "heads": 2}', "data.window=32"])
    with pytest.raises(DataError, match="moves images"):
        prepare(gpt, World(), "cpu")
