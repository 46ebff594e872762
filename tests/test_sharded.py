"""Sharded generation on 2 gloo processes against the single-process generator (invariants 1, 4, 5)."""

import pytest
import torch
from conftest import LSTMRegressor, SmallCNN, TiedLM
from distributed_helpers import run_ranks

import mapscale
from mapscale.distributed import World, sharding

FACTORIES = {"cnn": SmallCNN, "lstm": LSTMRegressor, "tied": TiedLM}


def build(factory: str, grouping: str, world=None, units=None, **options):
    torch.manual_seed(0)
    target = FACTORIES[factory]()
    shard = None if world is None else sharding(world, units)
    return mapscale.map_model(target, grouping, 96, seed=3, shard=shard, **options)


def generate_on_rank(rank, world_size, factory, grouping, units, options):
    model = build(factory, grouping, World.from_env(), units, **options)
    out = {name: t.detach() for name, t in model.generator().items()}
    row_means = [model.generator.modulated_row_means(i).detach() for i in range(len(model.layout.groups))]
    jacobian = [model.generator.jacobian_sq_norm(i) for i in range(len(model.layout.groups))]
    jacobian = [None if j is None else j.detach() for j in jacobian]
    return out, row_means, jacobian, model.mapping_bytes()


CASES = [
    ("cnn", "slvt", None, {}),
    ("cnn", "lwt", None, {}),
    ("cnn", "lwt", ["conv2", "bn2"], {"activation": "tanh"}),
    ("lstm", "lwt", None, {"offset": "init", "latent_init_std": 0.5}),
    ("tied", "slvt", ["mix"], {"modulation": "additive"}),
]


@pytest.mark.parametrize("factory,grouping,units,options", CASES)
def test_two_ranks_generate_the_single_process_weights(factory, grouping, units, options):
    single = build(factory, grouping, **options)
    expected = {name: t.detach() for name, t in single.generator().items()}
    results = run_ranks(generate_on_rank, 2, factory, grouping, units, options)
    for out, row_means, jacobian, _ in results:
        assert out.keys() == expected.keys()
        for name in expected:
            torch.testing.assert_close(out[name], expected[name], rtol=1e-5, atol=1e-6, msg=name)
        for i, means in enumerate(row_means):
            torch.testing.assert_close(means, single.generator.modulated_row_means(i).detach(), rtol=1e-5, atol=1e-7)
        if options.get("activation", "identity") == "identity":
            for i, norm in enumerate(jacobian):
                torch.testing.assert_close(norm, single.generator.jacobian_sq_norm(i), rtol=1e-5, atol=0)
    # Invariant 5: each rank holds its half of the mapping (measured from the tensors it allocated).
    held = [r[3] for r in results]
    assert sum(held) == single.mapping_bytes()
    assert max(held) <= 0.5 * single.mapping_bytes() * 1.3


def test_full_dnn_variants_refuse_sharding():
    with pytest.raises(ValueError, match="cannot be sharded"):
        build("cnn", "slvt", World(rank=0, size=1), variant="full-dnn")
