import math

import pytest
import torch
import torch.nn.functional as F
from conftest import SmallCNN, mlp
from torch import nn

import mapscale
from mapscale.loss import MappingLoss, hutchinson_jacobian_sq_norm
from mapscale.mapping.contract import group_offsets
from mapscale.train import model_loss

ONLY = {"stability": {"smoothness": None, "alignment": None},
        "smoothness": {"stability": None, "alignment": None},
        "alignment": {"stability": None, "smoothness": None}}


def batch(n=8):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g)


class Dropped(nn.Module):
    """BatchNorm and dropout: the perturbed forward must replay the clean one's randomness and statistics."""

    def __init__(self):
        super().__init__()
        self.body = SmallCNN()
        self.drop = nn.Dropout(0.5)

    def forward(self, x):
        return self.drop(self.body(x))


def test_stability_is_zero_at_eps_zero_and_leaves_running_stats_to_the_clean_pass(seeded):
    mapped = mapscale.map_model(seeded(Dropped), "lwt", 64).train()
    loss = MappingLoss(F.cross_entropy, stability_eps=0.0, **ONLY["stability"])
    x, y = batch()
    out = model_loss(mapped, loss, x, y, 0)
    assert out.values["stability"].item() == 0.0
    assert mapped.target.body.bn1.num_batches_tracked.item() == 1
    reference = mapscale.map_model(seeded(Dropped), "lwt", 64).train()
    torch.manual_seed(0)
    reference(x)
    torch.manual_seed(0)
    model_loss(mapped, loss, x, y, 0)
    assert torch.equal(mapped.target.body.bn1.running_mean, _second_update(reference, x))
    positive = model_loss(mapped, MappingLoss(F.cross_entropy, stability_eps=0.05, **ONLY["stability"]), x, y, 0)
    assert positive.values["stability"].item() > 0


def _second_update(model, x):
    model(x)
    return model.target.body.bn1.running_mean


def single_tensor_model(seeded, **options):
    return mapscale.map_model(seeded(lambda: nn.Linear(12, 9, bias=False)), "slvt", 10, **options)


def test_smoothness_matches_the_analytic_value_for_one_tensor(seeded):
    alpha = 0.3
    mapped = single_tensor_model(seeded, modulation="multiplicative", modulation_scale=alpha)
    generator = mapped.generator
    in_scale, _, out_scale, _ = generator.affine_0[:, 0]
    z = generator.latents[0].detach()
    expected = ((1 + 2 * alpha * z) ** 2).sum() * (out_scale * in_scale) ** 2
    torch.testing.assert_close(generator.jacobian_sq_norm(0).detach(), expected, rtol=1e-5, atol=0)


@pytest.mark.parametrize(
    ("modulation", "variant"),
    [("multiplicative", "mapping"), ("additive", "mapping"), ("none", "mapping"), ("multiplicative", "lv-wmap"), ("additive", "lv-wmap")],
)
@pytest.mark.parametrize("activation", ["identity", "tanh"])
def test_exact_smoothness_equals_the_autograd_jacobian(modulation, activation, variant, seeded):
    mapped = mapscale.map_model(seeded(lambda: nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3))), "lwt", 7,
                                modulation=modulation, modulation_scale=0.2, activation=activation, variant=variant)
    generator = mapped.generator
    with torch.no_grad():  # move the modulator away from z so lv-wmap differs from mapping
        for v in generator.modulators:
            v.mul_(-0.5)
    for i, z in enumerate(generator.latents):
        jacobian = torch.autograd.functional.jacobian(lambda latent: group_flat(generator, i, latent), z.detach())
        torch.testing.assert_close(generator.jacobian_sq_norm(i).detach(), jacobian.square().sum(), rtol=1e-4, atol=1e-6)


def group_flat(generator, index, latent):
    """``(P_g,)``: group ``index``'s part of the flat vector, generated from ``latent``."""
    start = group_offsets(generator.layout)[index]
    latents = [latent if j == index else z for j, z in enumerate(generator.latents)]
    return generator.generate(start, start + generator.layout.groups[index].numel, latents)


def test_hutchinson_agrees_with_exact_in_expectation(seeded):
    mapped = mapscale.map_model(seeded(mlp), "lwt", 24, activation="tanh")
    exact = sum(mapped.generator.jacobian_sq_norm(i) for i in range(3)).item()
    noise = torch.Generator().manual_seed(0)
    samples = torch.stack([hutchinson_jacobian_sq_norm(mapped, 1, noise).detach() for _ in range(400)])
    mean, standard_error = samples.mean().item(), (samples.std() / math.sqrt(len(samples))).item()
    assert standard_error > 0, "the estimate should be random"
    assert abs(mean - exact) < 4 * standard_error, (mean, exact, standard_error)


def test_alignment_is_zero_when_aligned_and_two_when_opposed(seeded):
    mapped = mapscale.map_model(seeded(mlp), "slvt", 16, modulation="none")
    loss = MappingLoss(F.cross_entropy, **ONLY["alignment"])
    x, y = torch.randn(4, 20), torch.randint(0, 5, (4,))
    row_means = mapped.generator.operators[0].row_means()
    with torch.no_grad():
        mapped.generator.latents[0].copy_(3.0 * row_means / row_means.norm())
    assert model_loss(mapped, loss, x, y, 0).values["alignment"].item() == pytest.approx(0.0, abs=1e-6)
    with torch.no_grad():
        mapped.generator.latents[0].mul_(-1)
    assert model_loss(mapped, loss, x, y, 0).values["alignment"].item() == pytest.approx(2.0, abs=1e-6)


@pytest.mark.parametrize("term", ["stability", "smoothness", "alignment"])
@pytest.mark.parametrize("estimator", ["auto", "hutchinson"])
def test_every_term_sends_gradients_to_latents_and_coefficients(term, estimator, seeded):
    mapped = mapscale.map_model(seeded(SmallCNN), "lwt", 64, variant="lv-wmap")
    loss = MappingLoss(F.cross_entropy, smoothness_estimator=estimator, **ONLY[term])
    x, y = batch()
    out = model_loss(mapped, loss, x, y, 0)
    (out.total - out.values["task"]).backward()  # this term only (plus its coefficient's log)
    for i, z in enumerate(mapped.generator.latents):
        assert z.grad is not None and z.grad.abs().sum() > 0, f"{term} sends no gradient to latent {i}"
    assert loss.raw_coefficients.grad.abs().item() > 0


def test_learned_coefficients_stay_bounded_and_balance_at_one_over_twice_the_term():
    loss = MappingLoss(F.mse_loss, coefficient_bounds=(1e-3, 1e3))
    for extreme in (-1e4, 1e4):
        with torch.no_grad():
            loss.raw_coefficients.fill_(extreme)
        values = loss.coefficient_values()
        assert torch.all(values >= 1e-3) and torch.all(values <= 1e3)
    # For a fixed term value L the coefficient's optimum is 1 / (2 L): the gradient vanishes there.
    term_value = 0.2
    with torch.no_grad():
        loss.raw_coefficients.fill_(loss._to_raw(1 / (2 * term_value)))
    lam = loss.coefficient_values()[0]
    (lam * term_value - 0.5 * torch.log(lam)).backward()
    assert abs(loss.raw_coefficients.grad[0].item()) < 1e-5
    # A term at 0 pushes its weight up, but only to the bound.
    optimizer = torch.optim.SGD([loss.raw_coefficients], lr=10.0)
    for _ in range(200):
        optimizer.zero_grad()
        lam = loss.coefficient_values()[0]
        (lam * 0.0 - 0.5 * torch.log(lam)).backward()
        optimizer.step()
    assert 1e-3 <= loss.coefficient_values()[0].item() <= 1e3


def test_fixed_coefficients_and_switching_terms_off(seeded):
    mapped = mapscale.map_model(seeded(SmallCNN), "slvt", 64)
    x, y = batch()
    fixed = MappingLoss(F.cross_entropy, stability=0.5, smoothness=None, alignment=2.0, coefficients="fixed")
    assert not list(fixed.parameters()) and fixed.terms == ["stability", "alignment"]
    out = model_loss(mapped, fixed, x, y, 0)
    expected = out.values["task"] + 0.5 * out.values["stability"] + 2.0 * out.values["alignment"]
    torch.testing.assert_close(out.total.detach(), expected)
    assert set(out.values) == {"task", "stability", "alignment"} and out.seconds == {}  # timing is off by default
    timed = MappingLoss(F.cross_entropy, stability=0.5, smoothness=None, alignment=2.0, coefficients="fixed", time_terms=True)
    assert set(model_loss(mapped, timed, x, y, 0).seconds) == set(out.values)
    task_only = MappingLoss(F.cross_entropy, stability=None, smoothness=0, alignment=None)
    out = model_loss(mapped, task_only, x, y, 0)
    assert task_only.terms == [] and out.values.keys() == {"task"}
    torch.testing.assert_close(out.total, F.cross_entropy(mapped(x), y))


def test_the_optimiser_step_keys_the_noise_and_nothing_else_is_checkpointed(seeded):
    mapped = mapscale.map_model(seeded(SmallCNN), "slvt", 64)
    x, y = batch()
    loss = MappingLoss(F.cross_entropy, **ONLY["stability"])
    values = [model_loss(mapped, loss, x, y, step).values["stability"] for step in (0, 1, 0)]
    assert values[0] != values[1] and torch.equal(values[0], values[2])  # a resumed run at step 0 draws the same
    assert set(loss.state_dict()) == {"raw_coefficients"}  # the trainer owns the step count


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"stability": -1.0}, "coefficient of stability must be positive"),
        ({"coefficients": "free"}, "unknown coefficients 'free'"),
        ({"smoothness_estimator": "jvp"}, "unknown smoothness_estimator 'jvp'"),
        ({"stability_eps": -0.1}, "stability_eps must be >= 0"),
        ({"coefficient_bounds": (1.0, 0.1)}, "0 < low < high"),
        ({"alignment": 1e9}, "outside the bounds"),
    ],
)
def test_bad_loss_config_gets_a_clear_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MappingLoss(F.cross_entropy, **kwargs)


def test_the_loss_noise_is_keyed_on_optimiser_steps_under_accumulation(tmp_path, monkeypatch):
    """Every micro-batch of an optimiser step draws the step's perturbation (as the whole batch would)."""
    from pathlib import Path

    from mapscale.recipe import load_recipe
    from mapscale.train import train

    seen = []
    original = MappingLoss._noise
    monkeypatch.setattr(MappingLoss, "_noise", lambda self, step, purpose: (seen.append(step), original(self, step, purpose))[1])
    recipe = load_recipe(Path(__file__).parents[1] / "recipes" / "mnist_cnn2.py", [
        "data.max_examples=128", "optim.batch_size=32", "optim.max_steps=3", "optim.accumulation_steps=2",
        "mapping.budget=64", "mapping.offset=mean", "loss.stability=0.1", "output.progress=false",
    ])
    train(recipe, tmp_path)
    assert seen == [0, 0, 1, 1, 2, 2]
