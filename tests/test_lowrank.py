"""LRD: rank-r factors generated instead of full weights (the paper's Table 8 add-on)."""

from pathlib import Path

import pytest
import torch

from mapscale.mapping.lowrank import low_rank_model
from mapscale.targets import cnn2


def build(rank=32, factored=("7.weight",), **options):
    torch.manual_seed(0)
    return low_rank_model(cnn2(), rank, factored, "slvt", 256, seed=1, **options)


def test_cnn2_with_its_first_dense_weight_at_rank_32_generates_the_papers_35914_values():
    model = build()
    assert model.layout.num_generated == 160 + 4_640 + 32 * (128 + 800) + 128 + 1_290 == 35_914
    assert model.num_target_params() == 108_618 and model.num_trainable() == 256
    full = low_rank_model(cnn2(), 32, ["7.weight", "3.weight"], "slvt", 256)  # a conv kernel too: (32, 16*3*3)
    assert full.layout.num_generated == 35_914 - 4_608 + 32 * (32 + 144)


def test_products_have_the_targets_shapes_rank_and_spread_and_only_latents_learn():
    model = build(offset="mean")
    weights = model.generator()
    plain = cnn2()
    assert {n: tuple(t.shape) for n, t in weights.items()} == {n: tuple(p.shape) for n, p in plain.named_parameters()}
    assert torch.linalg.matrix_rank(weights["7.weight"].detach()) <= 32
    init_std = plain.get_parameter("7.weight").std().item()
    assert 0.5 * init_std < weights["7.weight"].std().item() < 2 * init_std
    model(torch.randn(3, 1, 28, 28)).sum().backward()
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["generator.latents.0"]
    assert model.generator.latents[0].grad.abs().sum() > 0
    state = model.materialize()
    cnn2().load_state_dict(state, strict=True)  # the products load into the plain class


def test_default_factors_every_weight_that_gets_smaller_and_bad_input_is_refused():
    torch.manual_seed(0)
    model = low_rank_model(cnn2(), 4, budget=64)
    factored = set(model.generator.assembly.factored)
    assert factored == {"0.weight", "3.weight", "7.weight", "9.weight"}  # 16x9 at rank 4: 100 < 144
    with pytest.raises(ValueError, match="rank must be an int >= 1"):
        low_rank_model(cnn2(), 0)
    with pytest.raises(ValueError, match="only weights with 2\\+ dimensions"):
        low_rank_model(cnn2(), 4, ["7.bias"])
    with pytest.raises(ValueError, match="no weight of Sequential gets smaller at rank 200"):
        low_rank_model(cnn2(), 200)


def test_a_recipe_trains_with_low_rank_factors(tmp_path):
    from mapscale.recipe import load_recipe
    from mapscale.train import train

    mnist_cnn2 = Path(__file__).resolve().parents[1] / "recipes" / "mnist_cnn2.py"
    recipe = load_recipe(
        mnist_cnn2,
        ["mapping.low_rank=32", 'mapping.low_rank_tensors=["7.weight"]', "data.max_examples=200", "optim.max_steps=2",
         f"output.root={tmp_path}", "output.progress=false", "mapping.budget=128"],
    )
    (tmp_path / "run").mkdir()
    result = train(recipe, tmp_path / "run")
    assert result.step == 2 and result.trainable == 128 and result.target_params == 108_618
    with pytest.raises(ValueError, match="needs mapping.low_rank"):
        load_recipe(mnist_cnn2, ['mapping.low_rank_tensors=["7.weight"]'])
