import json
from pathlib import Path

import pytest

from mapscale.recipe import FullMethod, MappingMethod, Recipe, RecipeError, apply_overrides, load_recipe

RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*.py"))


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


BASE = """
from mapscale.recipe import Recipe, MappingMethod, OptimSection

class Base(Recipe):
    '''A base recipe.'''
    mapping = MappingMethod(grouping="lwt", budget=512)
    optim = OptimSection(lr=1e-2, epochs=2)
"""


def test_a_recipe_file_defines_one_subclass_and_subclasses_override_sections(tmp_path):
    base = load_recipe(write(tmp_path, "base.py", BASE))
    assert base.name == "Base" and base.mapping.budget == 512 and base.optim.epochs == 2
    assert base.data.name == "shipped_mnist"  # untouched sections keep their defaults
    child = write(tmp_path, "child.py", "from base import Base\nfrom mapscale.recipe import MappingMethod\n\n"
                  "class Bigger(Base):\n    mapping = MappingMethod(grouping='slvt', budget=4096)\n")
    bigger = load_recipe(child)  # imports its neighbour, and only Bigger is defined here
    assert bigger.name == "Bigger" and bigger.mapping.budget == 4096 and bigger.optim.lr == 1e-2


def test_module_level_recipe_instance_or_class_wins(tmp_path):
    text = BASE + "\nclass Other(Base):\n    pass\n\nrecipe = Other(seed=7)\n"
    assert load_recipe(write(tmp_path, "pick.py", text)).seed == 7


def test_overrides_are_validated_with_clear_messages():
    recipe = Recipe()
    changed = apply_overrides(recipe, ["optim.lr=3e-3", "mapping.budget=4096", "mapping.grouping=lwt", "target.args={\"classes\": 2}"])
    assert changed.optim.lr == 3e-3 and changed.mapping.budget == 4096 and changed.mapping.grouping == "lwt"
    assert changed.target.args == {"classes": 2} and recipe.optim.lr is None  # the original is untouched
    assert recipe.lr == MappingMethod.default_lr and apply_overrides(recipe, ["mapping.method=full"]).lr == FullMethod.default_lr
    with pytest.raises(RecipeError, match=r"unknown key 'mapping.budgt': mapping \(method 'mapping'\) has no 'budgt'. Did you mean 'budget'\? Valid keys: activation, budget"):
        apply_overrides(recipe, ["mapping.budgt=4"])
    with pytest.raises(RecipeError, match=r"optim.lr: Input should be a valid number.*got 'fast'"):
        apply_overrides(recipe, ["optim.lr=fast"])
    with pytest.raises(RecipeError, match=r"optim.lr: Input should be greater than 0"):
        apply_overrides(recipe, ["optim.lr=-1"])
    with pytest.raises(RecipeError, match="not key=value"):
        apply_overrides(recipe, ["optim.lr"])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("x = 1\n", "defines no Recipe subclass"),
        (BASE + "\nclass Two(Base):\n    pass\n", r"several recipes \(Base, Two\)"),
        (BASE + "\nclass Typo(Base):\n    optim = OptimSection(lr=1e-2, epoch=3)\n", "unknown key 'epoch' in OptimSection. Did you mean 'epochs'"),
        ("from mapscale.recipe import Recipe\nclass Bad(Recipe):\n    seed = 'many'\n", "seed: Input should be a valid integer"),
    ],
)
def test_bad_recipe_files_get_clear_messages(tmp_path, text, message):
    with pytest.raises(RecipeError, match=message):
        load_recipe(write(tmp_path, "bad.py", text))


def test_missing_or_odd_files(tmp_path):
    with pytest.raises(RecipeError, match="does not exist"):
        load_recipe(tmp_path / "nope.py")
    with pytest.raises(RecipeError, match="without recipe.json"):
        load_recipe(tmp_path)
    with pytest.raises(RecipeError, match="a recipe is a .py file"):
        load_recipe(write(tmp_path, "recipe.yaml", "a: 1"))


def test_resolved_json_round_trips(tmp_path):
    recipe = apply_overrides(load_recipe(write(tmp_path, "base.py", BASE)), ["optim.lr=0.02"])
    path = tmp_path / "run" / "recipe.json"
    path.parent.mkdir()
    path.write_text(recipe.model_dump_json())
    assert load_recipe(path) == Recipe.model_validate(json.loads(path.read_text()))
    assert load_recipe(path.parent).optim.lr == 0.02 and load_recipe(path.parent).name == "Base"


def test_every_field_is_documented():
    from mapscale.recipe import Section

    sections = [Recipe, *{f.annotation for f in Recipe.model_fields.values() if isinstance(f.annotation, type) and issubclass(f.annotation, Section)}]
    for section in sections:
        for name, info in section.model_fields.items():
            if section is Recipe and name in {"target", "mapping", "loss", "data", "optim", "distributed", "output"}:
                continue  # the sections carry their own docstrings
            assert info.description, f"{section.__name__}.{name} has no docstring"


@pytest.mark.parametrize("path", RECIPES, ids=[p.name for p in RECIPES])
def test_every_shipped_recipe_validates(path):
    recipe = load_recipe(path)  # found and loaded exactly as `mapscale train` does
    assert isinstance(recipe, Recipe) and recipe.name
    assert path.read_text().lstrip().startswith('"""'), "a recipe file starts with a docstring saying what it reproduces"
