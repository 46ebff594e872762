"""The data registry (`mapscale.data.sources.SOURCES`): a new source is its own module and one registry line. The
example source here (not shipped) is written as a module, registered, validated as a recipe's data section, and
read through `build_datasets` and a recipe's run."""

import sys

import torch

from mapscale.data import SOURCES, DataSplits, Source, build_datasets
from mapscale.recipe import load_recipe

EXAMPLE = '''
"""An example source: seeded noise images with a bright pixel row per class (no files)."""
import torch
from torch.utils.data import TensorDataset

from mapscale.data.splits import DataError, DataSplits, cap, split_indices


def build_blobs(section, task, cache_dir=None):
    if task != "classification":
        raise DataError(f"blobs are a classification dataset, not {task}")
    generator = torch.Generator().manual_seed(section.split_seed)
    labels = torch.arange(300) % 10
    inputs = torch.randn(300, 1, 28, 28, generator=generator)
    inputs[torch.arange(300), 0, 2 * labels + 4] += 3.0  # class k: row 2k + 4
    train, test = (cap(i, section.max_examples) for i in split_indices(300, section.test_size, section.split_seed, labels.numpy()))
    as_set = lambda idx: TensorDataset(inputs[torch.as_tensor(idx)], labels[torch.as_tensor(idx)])
    return DataSplits(as_set(train), as_set(test), num_classes=10, input_shape=(1, 28, 28))
'''


def test_a_new_source_is_its_module_and_one_registry_line(tmp_path, monkeypatch):
    (tmp_path / "blobs_source.py").write_text(EXAMPLE)
    monkeypatch.syspath_prepend(str(tmp_path))
    import blobs_source

    monkeypatch.setitem(SOURCES, "blobs", Source(blobs_source.build_blobs, ignores=frozenset({"path", "tokenizer"})))  # the line

    recipe_file = tmp_path / "blobs_recipe.py"
    recipe_file.write_text(
        "from mapscale.recipe import DataSection, MappingMethod, OptimSection, OutputSection, Recipe, TargetSection\n"
        "class Blobs(Recipe):\n"
        "    target = TargetSection(name='small_mnist_cnn')\n"
        "    mapping = MappingMethod(budget=32)\n"
        "    data = DataSection(name='blobs', test_size=60)\n"
        "    optim = OptimSection(epochs=1, batch_size=32)\n"
        f"    output = OutputSection(root={str(tmp_path / 'runs')!r}, progress=False)\n"
    )
    recipe = load_recipe(recipe_file)
    splits = build_datasets(recipe.data, recipe.task)
    assert isinstance(splits, DataSplits) and (len(splits.train), len(splits.test)) == (240, 60)
    assert splits.input_shape == (1, 28, 28) and splits.num_classes == 10
    x, y = splits.train[0]
    assert x.shape == (1, 28, 28) and 0 <= int(y) < 10

    # what the registry line declares is checked when a recipe is read, as for the shipped sources
    import pytest

    from mapscale.recipe import RecipeError

    with pytest.raises(RecipeError, match=r"data.name='blobs' does not read data.tokenizer"):
        load_recipe(recipe_file, ["data.tokenizer=bpe:300"])

    from mapscale.train import train

    (tmp_path / "runs" / "blobs").mkdir(parents=True)
    result = train(recipe, tmp_path / "runs" / "blobs")
    assert result.step == result.total_steps == 8 and "accuracy" in result.final
    assert "blobs_source" in sys.modules and torch.is_tensor(x)
