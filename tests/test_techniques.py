"""Issue 18's techniques, each a recipe option: it trains (the loss falls in a few steps) and its trainable
entries are counted (``num_trainable``, the CLI's trainable count). Their measured effect is in
``bench/results/techniques_cnn2.md`` (``bench/techniques.py``), not here."""

from __future__ import annotations

import json

import pytest
import torch

from mapscale.mapping.layout import ParamLayout, power_budget_split, power_rule, sqrt_budget_split
from mapscale.mapping.mapped import map_model
from mapscale.recipe import load_recipe
from mapscale.targets import build_target

SHORT = ["optim.max_steps=12", "data.max_examples=768", "output.log_every=1", "output.progress=false"]


def _train(tmp_path, overrides: list[str]):
    """Train recipes/mnist_cnn2.py 12 steps with ``overrides``: (its per-step training losses, the prepared run)."""
    from mapscale.distributed.world import World
    from mapscale.train import prepare, train, write_run_files

    recipe = load_recipe("recipes/mnist_cnn2.py", [*SHORT, *overrides])
    write_run_files(tmp_path, recipe, None, [*SHORT, *overrides])
    prepared = prepare(recipe, World(), "cpu")
    train(recipe, tmp_path, prepared=prepared)
    losses = [r["task"] for r in map(json.loads, (tmp_path / "metrics.jsonl").read_text().splitlines()) if r["split"] == "train"]
    assert len(losses) == 12 and sum(losses[-3:]) < sum(losses[:3]), losses
    return losses, prepared


def _cnn2(**options):
    torch.manual_seed(0)
    return map_model(build_target("cnn2", {}, None), "lwt", 2048, operator="sparse", offset="init", **options)


# -- gain ------------------------------------------------------------------------------------------------------


def test_gain_starts_at_the_generated_tensors_and_scales_each_tensor():
    plain, gained = _cnn2(), _cnn2(gain=True)
    tensors = sum(len(g.tensors) for g in plain.layout.groups)
    assert gained.num_trainable() == plain.num_trainable() + tensors  # one entry per generated tensor, counted
    start, base = gained.generated_tensors(), plain.generated_tensors()
    assert all(torch.equal(start[n], base[n]) for n in base)  # g = 0: exactly the plain generation
    with torch.no_grad():
        for latent in gained.generator.latents:
            latent.normal_()
        plain.generator.start_from([z.detach() for z in gained.generator.latents])
        gained.generator.gains[1][0] = 0.5  # the second group's first tensor
    name = gained.layout.groups[1].tensors[0].name
    grown, reference = gained.generated_tensors(), plain.generated_tensors()
    torch.testing.assert_close(grown[name], 1.5 * reference[name])
    assert all(torch.equal(grown[n], reference[n]) for n in reference if n != name)


def test_gain_gets_gradients_and_the_smoothness_norm_counts_it():
    mapped = _cnn2(gain=True)
    mapped(torch.randn(4, 1, 28, 28)).square().sum().backward()
    assert all(g.grad is not None and g.grad.abs().sum() > 0 for g in mapped.generator.gains)
    # ||d theta / d z||² with the gain: the autograd Jacobian of the generated vector, for one group
    generator, index = mapped.generator, 3
    with torch.no_grad():
        generator.gains[index].fill_(0.7)
    z = generator.latents[index].detach().clone()

    offset = sum(g.numel for g in mapped.layout.groups[:index])
    jacobian = torch.autograd.functional.jacobian(lambda v: generator.generate(offset, offset + mapped.layout.groups[index].numel, [v if i == index else w for i, w in enumerate(generator.latents)]), z)
    torch.testing.assert_close(generator.jacobian_sq_norm(index), jacobian.square().sum(), rtol=1e-4, atol=0)


def test_gain_trains_through_a_recipe(tmp_path):
    _, prepared = _train(tmp_path, ["mapping.gain=true", "mapping.budget=2040"])
    assert sum(p.numel() for p in prepared.params) == 2048  # 2,040 latents + CNN2's 8 gains: the budget
    assert any(g.abs().sum() > 0 for g in prepared.model.generator.gains)


# -- directly trained tensors at their own rate ----------------------------------------------------------------


def test_trainable_lr_puts_the_direct_tensors_in_their_own_group_and_trains(tmp_path):
    _, prepared = _train(tmp_path, ['mapping.trainable=["*.bias"]', "mapping.trainable_lr=0.003", "mapping.budget=1862"])
    assert sum(p.numel() for p in prepared.params) == 2048  # 1,862 latents + CNN2's 186 biases
    latents, direct = prepared.updater.optimizer.param_groups
    assert {id(p) for p in direct["params"]} == {id(p) for n, p in prepared.model.target.named_parameters() if n.endswith(".bias")}
    assert sum(p.numel() for p in latents["params"]) == 1862  # the latents (and the loss's empty coefficient vector)
    # one schedule, two peaks: after 12 one-cycle steps both groups sit at the same fraction of their own peak
    assert latents["max_lr"] == 0.3 and direct["max_lr"] == 0.003
    assert latents["lr"] < 0.1 * 0.3 and direct["lr"] == pytest.approx(latents["lr"] / 100, rel=1e-9)


def test_without_trainable_lr_every_tensor_shares_optim_lr(tmp_path):
    _, prepared = _train(tmp_path, ['mapping.trainable=["*.bias"]'])
    (group,) = prepared.updater.optimizer.param_groups
    assert group["max_lr"] == 0.3


def test_trainable_lr_without_trainable_tensors_is_refused():
    with pytest.raises(ValueError, match="mapping.trainable selects none"):
        load_recipe("recipes/mnist_cnn2.py", ["mapping.trainable_lr=0.003"])


# -- budget power --------------------------------------------------------------------------------------------


def test_power_split_is_sqrt_at_one_half_equal_at_zero_and_proportional_at_one():
    sizes = [416, 12_832, 401_536, 1_290]
    assert power_budget_split(sizes, 2048, 0.5) == sqrt_budget_split(sizes, 2048)
    assert power_budget_split(sizes, 2048, 0) == [416, 544, 544, 544]  # equal shares, the first capped at its size
    proportional = power_budget_split(sizes, 2048, 1)
    assert sum(proportional) == 2048 and proportional[2] > 0.95 * 2048 and min(proportional) >= 1
    for power in (0, 0.25, 0.5, 0.75, 1):
        assert sum(power_budget_split(sizes, 1000, power)) == 1000
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        power_rule(1.5)


def test_budget_power_sets_the_layout_and_trains(tmp_path):
    _, prepared = _train(tmp_path, ["mapping.grouping=lwt", "mapping.budget_power=0"])
    dims = [g.latent_dim for g in prepared.model.layout.groups]
    torch.manual_seed(0)
    expected = ParamLayout.from_module(build_target("cnn2", {}, None), "lwt", 2048, budget_rule=power_rule(0))
    assert dims == [g.latent_dim for g in expected.groups] and sum(dims) == 2048
    assert max(dims) - min(dims) <= 1 or min(dims) == min(g.numel for g in expected.groups)  # equal, or capped at a size
    with pytest.raises(ValueError, match="less than or equal to 1"):
        load_recipe("recipes/mnist_cnn2.py", ["mapping.budget_power=2"])


# -- latent weight decay ---------------------------------------------------------------------------------------


def test_latent_weight_decay_trains_and_pulls_the_latents_towards_the_init(tmp_path):
    """``optim.optimizer=adamw`` with ``optim.weight_decay``: decoupled decay of every trainable tensor, here the
    latents, which start at 0 (``offset=init``), so the decay pulls the weights back towards the target's init."""
    _, decayed = _train(tmp_path / "decay", ["optim.optimizer=adamw", "optim.weight_decay=0.5"])
    _, plain = _train(tmp_path / "plain", ["optim.optimizer=adamw", "optim.weight_decay=0"])
    assert [g["weight_decay"] for g in decayed.updater.optimizer.param_groups] == [0.5]
    assert sum(p.numel() for p in decayed.params) == 2048  # the decay adds no trainable entry
    norm = lambda run: torch.linalg.vector_norm(run.model.generator.latents[0].detach())  # noqa: E731
    assert norm(decayed) < norm(plain)
