"""The method registry and the generator contract: one section per method, one builder each, every generator
implementing the contract, the method package free of distribution, and no method-name comparisons outside
the registry and the builders."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from mapscale.cli import app
from mapscale.mapping.contract import Generator, generate_tensors
from mapscale.methods import METHODS
from pydantic import ValidationError

from mapscale.recipe import Recipe, RecipeError, _format_error, load_recipe
from mapscale.targets import cnn2
from mapscale.train import build_model

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "mnist_cnn2.py"
X = torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    path = tmp_path_factory.mktemp("pretrained") / "cnn2.pt"
    torch.manual_seed(7)
    torch.save(cnn2().state_dict(), path)
    return path


def method_overrides(method: str, weights: Path) -> list[str]:
    pretrained = [f"target.weights={weights}", 'mapping.tuned=["7.*","9.*"]']
    return {
        "mapping": ["mapping.budget=128"],
        "subspace": ["mapping.method=subspace", "mapping.budget=128"],
        "rpg": ["mapping.method=rpg", "mapping.budget=128", "mapping.grouping=lwt"],
        "finetune": ["mapping.method=finetune", "mapping.budget=64", *pretrained],
        "lora": ["mapping.method=lora", "mapping.rank=1", *pretrained],
        "vera": ["mapping.method=vera", "mapping.rank=2", *pretrained],
        "full": ["mapping.method=full"],
    }[method]


def test_every_registered_method_has_a_test_case(weights):
    assert set(METHODS) == {"mapping", "subspace", "rpg", "finetune", "lora", "vera", "full"}
    for name, method in METHODS.items():
        assert method.section.model_fields["method"].default == name
        method_overrides(name, weights)  # a KeyError names a method without a case here


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_builds_a_generator_implementing_the_contract(method, weights):
    recipe = load_recipe(RECIPE, method_overrides(method, weights))
    assert type(recipe.mapping) is METHODS[method].section
    model = build_model(recipe)
    generator = model.generator
    assert isinstance(generator, Generator)
    assert generator.part.whole and len(generator.latents) == len(generator.layout.groups)
    tensors = generate_tensors(generator)
    assert {n for spec in generator.outputs for n in spec.names} == set(tensors)
    assert generator.fixed_bytes() >= 0 and build_model(recipe, "meta").fixed_bytes() == generator.fixed_bytes()
    expected = {"mapping": 128, "subspace": 128, "rpg": 128, "finetune": 64}.get(method)
    if expected is not None:  # the generating methods: every trainable value is a latent
        assert model.num_trainable() == sum(z.numel() for z in generator.latents) == expected
        start = generator.layout.groups[0].numel // 3
        flat = generator.generate(start, start + 5)  # any range of the flat vector
        assert flat.shape == (5,)
    else:
        assert generator.layout.groups == () and tensors == {}
    assert model(X).shape == (2, 10)


def test_a_field_the_method_does_not_read_is_an_unknown_key_with_one_line_and_exit_2():
    result = CliRunner().invoke(app, ["train", str(RECIPE), "mapping.method=rpg", "mapping.modulation=none", "--dry-run"])
    assert result.exit_code == 2, result.output
    assert result.output.count("\n") == 1 and "Traceback" not in result.output
    assert "unknown key 'mapping.modulation': mapping (method 'rpg') has no 'modulation'" in result.output
    with pytest.raises(ValidationError) as error:  # a recipe.json or a recipe file: the same message
        Recipe.model_validate({"mapping": {"method": "mapping", "tuned": ["fc.*"]}})
    assert _format_error(error.value).startswith("unknown key 'mapping.tuned' in MappingMethod (mapping.method='mapping'). Valid keys: activation")
    with pytest.raises(ValidationError) as error:
        Recipe.model_validate({"mapping": {"method": "nonsense"}})
    assert _format_error(error.value).startswith("mapping: Input tag 'nonsense' found using 'method' does not match any of the expected tags")
    with pytest.raises(RecipeError, match=r"unknown mapping.method 'lroa'. Did you mean 'lora'\?"):
        load_recipe(RECIPE, ["mapping.method=lroa"])


def test_switching_method_keeps_the_fields_the_new_method_reads():
    recipe = load_recipe(RECIPE, ["mapping.method=subspace", "mapping.operator=structured"])
    assert (recipe.mapping.method, recipe.mapping.grouping, recipe.mapping.budget, recipe.mapping.operator) == ("subspace", "slvt", 2048, "structured")
    back = load_recipe(RECIPE, ["mapping.method=mapping"])
    assert back.mapping.offset == "init"  # switching to the method it already has changes nothing


def test_every_recipe_file_loads():
    files = sorted((ROOT / "recipes").glob("*.py"))
    assert len(files) >= 12
    for path in files:
        recipe = load_recipe(path)
        assert type(recipe.mapping) is METHODS[recipe.mapping.method].section, path


def test_the_method_package_never_imports_the_distributed_layer():
    package = ROOT / "mapscale" / "mapping"
    for path in package.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not any(n.startswith(("mapscale.distributed", "torch.distributed")) for n in names), (path.name, names)
    code = "import sys, mapscale.mapping; print(sorted(m for m in sys.modules if m.startswith('mapscale.')))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "mapscale.mapping.generator" in loaded and "mapscale.distributed" not in loaded


METHOD_WORDS = {*METHODS, "generate"}


def _compares_a_method(node: ast.AST) -> bool:
    """A comparison with a method's name or a ``.method`` / ``.mode`` / ``.generator`` attribute."""
    if not isinstance(node, ast.Compare):
        return False
    sides = [node.left, *node.comparators]
    for side in sides:
        if isinstance(side, ast.Attribute) and side.attr in ("method", "mode", "generator"):
            return True
        items = side.elts if isinstance(side, (ast.Tuple, ast.List, ast.Set)) else [side]
        if any(isinstance(i, ast.Constant) and i.value in METHOD_WORDS for i in items):
            return True
    return False


OUTSIDE_THE_REGISTRY = ["cli.py", "report.py", "space.py", "export.py", "loss.py", "recipe.py", *(f"train/{p.name}" for p in sorted((ROOT / "mapscale" / "train").glob("*.py")))]


@pytest.mark.parametrize("name", OUTSIDE_THE_REGISTRY)
def test_no_code_outside_the_registry_compares_method_names(name):
    tree = ast.parse((ROOT / "mapscale" / name).read_text())
    found = [ast.unparse(node) for node in ast.walk(tree) if _compares_a_method(node)]
    assert found == [], found
    # the check itself: it sees the comparisons the old code made
    assert _compares_a_method(ast.parse('m.mode == "full"').body[0].value)
    assert _compares_a_method(ast.parse('m.generator != "mapping"').body[0].value)
    assert _compares_a_method(ast.parse('kind in ("lora", "vera")').body[0].value)
