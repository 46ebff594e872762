import pytest
import torch
from conftest import LSTMRegressor, SmallCNN, mlp

from mapscale.mapping.generator import GeneratorConfig, MappingGenerator
from mapscale.mapping.layout import ParamLayout


def make_generator(net, grouping="slvt", budget=32, **options):
    layout = ParamLayout.from_module(net, grouping, budget)
    init = {t.name: net.get_parameter(t.name).detach().clone() for t in layout.generated_tensors()}
    return MappingGenerator(layout, init, GeneratorConfig(**options)), init


def test_additive_modulation_is_eq_20_as_printed(seeded):
    gen, _ = make_generator(seeded(mlp), modulation="additive", modulation_scale=0.3)
    z, weight = gen.latents[0].detach(), gen.operators[0].weight
    modulated = weight + 0.3 * z[:, None]  # w_ij <- w_ij + alpha z_i, every j
    expected = modulated.T @ z
    torch.testing.assert_close(gen.raw_piece(0).detach(), expected, rtol=1e-5, atol=1e-4)
    # ... which is W^T z + alpha ||z||^2 on every output: one scalar offset.
    torch.testing.assert_close(expected, weight.T @ z + 0.3 * z.dot(z), rtol=1e-5, atol=1e-4)


def test_multiplicative_modulation_scales_each_latent_row(seeded):
    gen, _ = make_generator(seeded(mlp), modulation="multiplicative", modulation_scale=0.3)
    z, weight = gen.latents[0].detach(), gen.operators[0].weight
    modulated = weight * (1 + 0.3 * z[:, None])  # w_ij <- w_ij (1 + alpha z_i)
    torch.testing.assert_close(gen.raw_piece(0).detach(), modulated.T @ z, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gen.raw_piece(0).detach(), weight.T @ (z + 0.3 * z**2), rtol=1e-5, atol=1e-5)


def test_no_modulation_is_plain_projection(seeded):
    gen, _ = make_generator(seeded(mlp), modulation="none")
    z, weight = gen.latents[0].detach(), gen.operators[0].weight
    torch.testing.assert_close(gen.raw_piece(0).detach(), weight.T @ z)


def init_std_ratios(net_factory, seeded, **options):
    net = seeded(net_factory)
    reference = {n: p.detach().clone() for n, p in net.named_parameters()}
    gen, _ = make_generator(net, **options)
    with torch.no_grad():
        generated = gen()
    ratios = {}
    for name, tensor in generated.items():
        ref = reference[name]
        if ref.numel() == 1:  # no spread to match: it starts at its init value
            torch.testing.assert_close(tensor, ref)
        elif ref.std(unbiased=False) > 0:
            ratios[name] = (tensor.std(unbiased=False) / ref.std(unbiased=False)).item()
        else:  # constant default init (norm weights, zero biases): same mean, the floor spread
            torch.testing.assert_close(tensor.mean(), ref.mean(), atol=1e-5, rtol=0)
            assert tensor.std(unbiased=False).item() == pytest.approx(0.02, rel=1e-3)
        assert tensor.shape == ref.shape and tensor.dtype == ref.dtype
    return ratios


@pytest.mark.parametrize("factory", [mlp, SmallCNN, LSTMRegressor], ids=["mlp", "cnn-bn", "lstm"])
@pytest.mark.parametrize("grouping", ["slvt", "lwt"])
@pytest.mark.parametrize("activation", ["identity", "tanh"])
def test_generated_std_at_init_matches_the_default_init(factory, grouping, activation, seeded):
    ratios = init_std_ratios(factory, seeded, grouping=grouping, budget=48, activation=activation)
    assert ratios and all(0.8 <= r <= 1.2 for r in ratios.values()), ratios


@pytest.mark.parametrize("grouping", ["slvt", "lwt"])
def test_init_offset_starts_exactly_at_the_targets_weights(grouping, seeded):
    net = seeded(SmallCNN)
    gen, init = make_generator(net, grouping, 48, offset="init")
    assert all(not z.any() for z in gen.latents)
    with torch.no_grad():
        generated = gen()
    for name, tensor in generated.items():
        assert torch.equal(tensor, init[name]), name
    # Moving the latent moves the weights: the generated subspace is not degenerate.
    with torch.no_grad():
        gen.latents[0].add_(1.0)
        assert not torch.equal(gen()["fc.weight" if grouping == "slvt" else "conv1.weight"], init["conv1.weight"])


@pytest.mark.parametrize("operator", ["dense", "sparse"])
@pytest.mark.parametrize("grouping", ["slvt", "lwt"])
def test_zero_offset_is_the_init_offset_around_zeros_without_the_base(operator, grouping, seeded):
    """offset="zero" generates exactly what offset="init" does around all-zero init tensors, holding no base."""
    net = seeded(SmallCNN)
    layout = ParamLayout.from_module(net, grouping, 48)
    zeros = {t.name: torch.zeros(t.shape) for t in layout.generated_tensors()}
    around = MappingGenerator(layout, zeros, GeneratorConfig(offset="init", operator=operator, latent_init_std=0.0))
    zero = MappingGenerator(layout, {}, GeneratorConfig(offset="zero", operator=operator, latent_init_std=0.0))
    assert any(n.startswith("base_") for n, _ in around.named_buffers())
    assert not any(n.startswith("base_") for n, _ in zero.named_buffers())
    assert zero.fixed_bytes() < around.fixed_bytes()
    with torch.no_grad():
        for z, a in zip(zero.latents, around.latents):
            a.copy_(z.normal_())
        ours, theirs = zero(), around()
    assert sorted(ours) == sorted(theirs)
    for name in ours:
        assert torch.equal(ours[name], theirs[name]), name
        assert ours[name].abs().max() > 0, name


@pytest.mark.parametrize(
    ("variant", "trainable"),
    [
        ("mapping", {"latents.0"}),
        ("full-dnn", {"operators.0.weight"}),
        ("lv-wmap", {"latents.0", "modulators.0"}),
        ("lv-full-dnn", {"latents.0", "operators.0.weight"}),
    ],
)
def test_variants_train_what_the_paper_says(variant, trainable, seeded):
    gen, _ = make_generator(seeded(mlp), variant=variant)
    assert {n for n, p in gen.named_parameters() if p.requires_grad} == trainable
    # A separate modulator starts equal to the latent: at init every variant generates the same weights.
    reference, _ = make_generator(seeded(mlp))
    with torch.no_grad():
        for name, tensor in gen().items():
            torch.testing.assert_close(tensor, reference()[name])
    gen().__getitem__("0.weight").sum().backward()
    for name, p in gen.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_generation_is_a_pure_function_of_seed(seeded):
    a, _ = make_generator(seeded(mlp), seed=5)
    b, _ = make_generator(seeded(mlp), seed=5)
    c, _ = make_generator(seeded(mlp), seed=6)
    with torch.no_grad():
        ga, gb, gc = a(), b(), c()
    assert all(torch.equal(ga[n], gb[n]) for n in ga)
    assert not torch.equal(ga["0.weight"], gc["0.weight"])


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"modulation_scale": 0.0}, "modulation_scale .alpha. must be a positive number, got 0.0"),
        ({"modulation_scale": -1.0}, "must be a positive number"),
        ({"modulation": "mult"}, "unknown modulation 'mult'"),
        ({"activation": "relu"}, "unknown activation 'relu'"),
        ({"variant": "lora"}, "unknown variant 'lora'"),
        ({"operator": "fastfood"}, "unknown operator 'fastfood'"),
        ({"offset": "nothing"}, "unknown offset 'nothing'"),
        ({"variant": "lv-wmap", "modulation": "none"}, "nothing to modulate"),
        ({"latent_init_std": -1.0}, "latent_init_std must be >= 0"),
    ],
)
def test_bad_config_gets_a_clear_error(options, message):
    with pytest.raises(ValueError, match=message):
        GeneratorConfig(**options)
