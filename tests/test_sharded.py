"""Sharded generation on 2 gloo processes against the single-process generator (invariants 1, 4, 5)."""

import pytest
import torch
from conftest import LSTMRegressor, SmallCNN, TiedLM
from distributed_helpers import run_ranks
from tolerance import assert_close

import mapscale
from mapscale.distributed import ShardPlan, World, part_of, shard

pytestmark = pytest.mark.distributed  # several local processes (gloo): `pytest -m distributed`

FACTORIES = {"cnn": SmallCNN, "lstm": LSTMRegressor, "tied": TiedLM}


def build(factory: str, grouping: str, world=None, units=None, per_unit=False, **options):
    torch.manual_seed(0)
    target = FACTORIES[factory]()
    if world is None:
        return mapscale.map_model(target, grouping, 96, seed=3, **options)
    plans = []

    def part(layout):
        plans.append(ShardPlan.from_layout(layout, world.size, units))
        return part_of(plans[-1], layout, world)

    model = mapscale.map_model(target, grouping, 96, seed=3, part=part, **options)
    return shard(model, plans[-1], world, per_unit=per_unit)


def set_gains(model) -> None:
    """Give the per-tensor gains (``gain=True``) distinct values: they start at 0, where a part could skip them."""
    with torch.no_grad():
        for gains in model.generator.gains:
            gains.copy_(torch.linspace(-0.5, 0.5, gains.numel()))


def generate_on_rank(rank, world_size, factory, grouping, units, options):
    model = build(factory, grouping, World.from_env(), units, **options)
    set_gains(model)
    out = {name: t.detach() for name, t in model.generated_tensors().items()}
    row_means = [model.generator.modulated_row_means(i).detach() for i in range(len(model.layout.groups))]
    jacobian = [model.generator.jacobian_sq_norm(i) for i in range(len(model.layout.groups))]
    jacobian = [None if j is None else j.detach() for j in jacobian]
    return out, row_means, jacobian, model.fixed_bytes()


CASES = [
    ("cnn", "slvt", None, {}),
    ("cnn", "lwt", None, {}),
    ("cnn", "lwt", ["conv2", "bn2"], {"activation": "tanh"}),
    ("lstm", "lwt", None, {"offset": "init", "latent_init_std": 0.5}),
    ("tied", "slvt", ["mix"], {"modulation": "additive"}),
    ("cnn", "lwt", None, {"operator": "structured"}),
    ("cnn", "slvt", ["conv2", "fc"], {"operator": "sparse", "activation": "tanh"}),
    ("lstm", "lwt", None, {"operator": "sparse", "offset": "init", "latent_init_std": 0.5}),
    ("cnn", "slvt", ["conv2"], {"operator": "seeded", "offset": "init"}),
    ("cnn", "lwt", ["conv2", "fc"], {"operator": "sparse", "offset": "init", "latent_init_std": 0.5, "gain": True}),
]


@pytest.mark.parametrize("factory,grouping,units,options", CASES)
def test_two_ranks_generate_the_single_process_weights(factory, grouping, units, options):
    single = build(factory, grouping, **options)
    set_gains(single)
    expected = {name: t.detach() for name, t in single.generator().items()}
    results = run_ranks(generate_on_rank, 2, factory, grouping, units, options)
    for out, row_means, jacobian, _ in results:
        assert out.keys() == expected.keys()
        for name in expected:
            assert_close(out[name], expected[name], rtol=1e-5, atol=1e-6, what=name)
        for i, means in enumerate(row_means):
            assert_close(means, single.generator.modulated_row_means(i).detach(), rtol=1e-5, atol=1e-7, what=f"row means {i}")
        if options.get("activation", "identity") == "identity":
            for i, norm in enumerate(jacobian):
                reference = single.generator.jacobian_sq_norm(i)
                assert (norm is None) == (reference is None)  # None: the operator has no exact norm (Hutchinson)
                if reference is not None:
                    assert_close(norm, reference, rtol=1e-5, what=f"jacobian {i}")
    held = [r[3] for r in results]
    if options.get("operator", "dense") != "dense":
        assert max(held) <= single.fixed_bytes()  # what a never-stored operator keeps is not split by rows
        return
    # Invariant 5: each rank holds its half of the mapping (measured from the tensors it allocated); only the
    # per-tensor calibration constants (4 fp32 and an int64 element count a tensor) are on every rank.
    constants = sum((4 * 4 + 8) * len(group.tensors) for group in single.layout.groups)
    assert sum(held) == single.fixed_bytes() + constants
    assert max(held) <= 0.5 * single.fixed_bytes() * 1.3


def test_full_dnn_variants_refuse_sharding():
    with pytest.raises(ValueError, match="cannot be split into parts"):
        build("cnn", "slvt", World(rank=0, size=1), variant="full-dnn")


def train_steps_on_rank(rank, world_size, just_in_time):
    """Two SGD steps of SmallCNN (BatchNorm included) on this rank's half of a fixed batch; returns the
    losses, final latents, BatchNorm statistics and the peak bytes of gathered tensors alive at once."""
    from mapscale.distributed.sharded import track_gathered_units

    model = build("cnn", "lwt", World.from_env(), ["conv1", "bn1", "conv2", "bn2", "fc"], per_unit=just_in_time)
    optimizer = torch.optim.SGD(model.generator.latents, lr=0.5)
    inputs = torch.randn(8, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    targets = torch.arange(8) % 10
    losses = []
    with track_gathered_units() as generated:
        for _ in range(2):
            loss = torch.nn.functional.cross_entropy(model(inputs[rank::world_size]), targets[rank::world_size])
            loss.backward()
            for z in model.generator.latents:
                torch.distributed.all_reduce(z.grad)
                z.grad /= world_size
            optimizer.step()
            optimizer.zero_grad()
            losses.append(loss.item())
    buffers = {n: b.clone() for n, b in model.target.named_buffers() if b.numel()}
    return losses, [z.detach().clone() for z in model.generator.latents], buffers, generated.peak


def test_per_unit_gather_matches_whole_gather_with_lower_peak_memory():
    whole = run_ranks(train_steps_on_rank, 2, False)
    per_unit = run_ranks(train_steps_on_rank, 2, True)
    for (losses_w, latents_w, buffers_w, peak_w), (losses_u, latents_u, buffers_u, peak_u) in zip(whole, per_unit):
        assert_close(losses_u, losses_w, rtol=1e-5, what="losses")
        for i, (a, b) in enumerate(zip(latents_u, latents_w)):
            assert_close(a, b, rtol=1e-5, atol=1e-7, what=f"latent {i}")
        for name in buffers_w:  # BatchNorm statistics updated once per step, not again by recomputation
            assert_close(buffers_u[name], buffers_w[name], rtol=1e-5, atol=1e-7, what=name)
        # Whole gather holds every unit at once; per-unit holds one at a time: at peak the largest, fc
        # (4,010 of the 5,306 values), in forward and again when backward regenerates it.
        units = {name: sum(p.numel() for p in module.parameters()) for name, module in SmallCNN().named_children()}
        assert peak_w == 4 * sum(units.values())
        assert peak_u == 4 * max(units.values()) == 4 * units["fc"]


def test_per_unit_gathering_in_one_process_equals_the_plain_model():
    """A shard of size 1 needs no process group: per-unit generation with recomputation, same gradients."""
    plain = build("cnn", "lwt")
    per_unit = build("cnn", "lwt", World(), ["conv1", "bn1", "conv2", "bn2", "fc"], per_unit=True)
    inputs = torch.randn(6, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    for model in (plain, per_unit):
        model.train()
        torch.nn.functional.cross_entropy(model(inputs), torch.arange(6)).backward()
    for a, b in zip(plain.generator.latents, per_unit.generator.latents, strict=True):
        assert_close(b.grad, a.grad, rtol=1e-5, atol=1e-8, what="latent gradient")
    for (name, a), (_, b) in zip(plain.target.named_buffers(), per_unit.target.named_buffers()):
        torch.testing.assert_close(b, a, msg=name)  # BatchNorm statistics updated once
