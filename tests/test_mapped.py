import copy
import subprocess
import sys

import pytest
import torch
import torchvision
from conftest import LSTMRegressor, SmallCNN, TiedLM, mlp
from torch import nn

import mapscale

INPUTS = {
    "mlp": (mlp, lambda: torch.randn(4, 20)),
    "cnn-bn": (SmallCNN, lambda: torch.randn(4, 1, 28, 28)),
    "lstm": (LSTMRegressor, lambda: torch.randn(4, 7, 6)),
    "tied-lm": (TiedLM, lambda: torch.randint(0, 50, (4, 9))),
}


def trainable_names(model):
    return {n for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("name", INPUTS)
def test_only_latents_require_grad_and_a_step_changes_only_them(name, seeded):
    factory, make_input = INPUTS[name]
    mapped = mapscale.map_model(seeded(factory), "lwt", 64)
    groups = len(mapped.layout.groups)
    assert trainable_names(mapped) == {f"generator.latents.{i}" for i in range(groups)}
    assert mapped.num_trainable() == 64 == sum(p.numel() for p in mapped.parameters() if p.requires_grad)

    mapped.eval()  # BatchNorm running stats stay put, so every other tensor must be bitwise unchanged
    before = {k: v.clone() for k, v in [*mapped.named_parameters(), *mapped.named_buffers()]}
    optimizer = torch.optim.SGD([p for p in mapped.parameters() if p.requires_grad], lr=0.1)
    out = mapped(make_input())
    out.float().pow(2).mean().backward()
    for i, latent in enumerate(mapped.generator.latents):
        assert latent.grad is not None and latent.grad.abs().sum() > 0, f"no gradient reached latent {i}"
    optimizer.step()
    for key, value in [*mapped.named_parameters(), *mapped.named_buffers()]:
        changed = not torch.equal(value, before[key])
        assert changed == key.startswith("generator.latents."), key


def test_directly_trainable_and_frozen_tensors(seeded):
    net = seeded(SmallCNN)
    frozen_bias = net.fc.bias.detach().clone()
    mapped = mapscale.map_model(net, "slvt", 128, trainable=[nn.BatchNorm2d], frozen=["fc.bias"])
    assert trainable_names(mapped) == {"generator.latents.0", "target.bn1.weight", "target.bn1.bias", "target.bn2.weight", "target.bn2.bias"}
    assert mapped.num_trainable() == 128 + 2 * (8 + 16)
    assert mapped.num_target_params() == sum(p.numel() for p in SmallCNN().parameters())
    optimizer = torch.optim.Adam([p for p in mapped.parameters() if p.requires_grad], lr=0.1)
    mapped(torch.randn(4, 1, 28, 28)).logsumexp(1).mean().backward()
    optimizer.step()
    assert not torch.equal(mapped.target.bn1.weight, torch.ones(8))
    assert torch.equal(mapped.target.fc.bias, frozen_bias)


def test_batchnorm_buffers_update_in_train_and_are_used_in_eval(seeded):
    mapped = mapscale.map_model(seeded(SmallCNN), "slvt", 64)
    x = torch.randn(16, 1, 28, 28) * 3 + 1
    mapped.train()
    mapped(x)
    assert mapped.target.bn1.num_batches_tracked.item() == 1
    assert not torch.equal(mapped.target.bn1.running_mean, torch.zeros(8))
    mapped.eval()
    with torch.no_grad():
        a, b = mapped(x[:2]), mapped(x[:2])
    assert torch.equal(a, b) and mapped.target.bn1.num_batches_tracked.item() == 1
    # eval uses the running statistics: a batch of one gives the same row as inside a batch
    torch.testing.assert_close(mapped(x[:1]), a[:1])


@pytest.mark.parametrize("name", INPUTS)
def test_materialize_round_trips_into_the_plain_target(name, seeded):
    factory, make_input = INPUTS[name]
    mapped = mapscale.map_model(seeded(factory), "slvt", 40)
    with torch.no_grad():
        for z in mapped.generator.latents:
            z.add_(torch.randn_like(z))  # away from init: the export must follow the latents
    mapped.eval()
    plain = seeded(factory, seed=123)
    plain.load_state_dict(mapped.materialize(), strict=True)
    plain.eval()
    x = make_input()
    with torch.no_grad():
        torch.testing.assert_close(plain(x), mapped(x))
    if name == "tied-lm":  # the tie survives the export
        assert torch.equal(plain.head.weight, plain.embed.weight)


def test_generated_weights_are_bitwise_identical_across_fresh_processes():
    code = (
        "import hashlib, torch, mapscale; from conftest import SmallCNN;"
        "torch.manual_seed(0); m = mapscale.map_model(SmallCNN(), 'lwt', 96, seed={seed});"
        "sd = m.materialize(); h = hashlib.sha256();"
        "[h.update(sd[k].numpy().tobytes()) for k in sorted(sd)]; print(h.hexdigest())"
    )
    run = lambda seed: subprocess.run(  # noqa: E731
        [sys.executable, "-c", code.format(seed=seed)], capture_output=True, text=True, check=True, cwd="tests"
    ).stdout
    first, second, other = run(3), run(3), run(4)
    assert first == second
    assert first != other


def test_cached_weights_give_the_same_outputs_and_end_with_the_block(seeded):
    mapped = mapscale.map_model(seeded(mlp), "slvt", 32).eval()
    x = torch.randn(3, 20)
    expected = mapped(x).detach()
    with mapped.cached_weights():
        torch.testing.assert_close(mapped(x), expected)
        assert mapped._cached is not None
    assert mapped._cached is None


def test_repr_and_counts(seeded):
    mapped = mapscale.map_model(seeded(SmallCNN), "lwt", 100)
    text = repr(mapped)
    assert "trainable=100" in text and "Conv2d(1, 8" in text
    # the dense fp32 mapping, and per tensor its 4 calibration constants (fp32) and element count (int64)
    constants = sum((4 * 4 + 8) * len(group.tensors) for group in mapped.layout.groups)
    assert mapped.fixed_bytes() == mapped.layout.mapping_numel * 4 + constants


def test_unknown_option_is_named():
    with pytest.raises(TypeError, match="unknown map_model options \\['alpha'\\]"):
        mapscale.map_model(mlp(), alpha=0.1)


@pytest.mark.parametrize(("grouping", "budget", "groups"), [("slvt", 64, 1), ("lwt", 2048, 107)])
def test_resnet50_shapes_and_counts(grouping, budget, groups):
    with torch.device("meta"):
        net = torchvision.models.resnet50()
    shapes = {n: p.shape for n, p in net.named_parameters()}
    mapped = mapscale.map_model(net, grouping, budget, device="meta")
    assert len(mapped.layout.groups) == groups
    assert mapped.num_trainable() == budget
    assert mapped.num_target_params() == sum(s.numel() for s in shapes.values()) == 25_557_032
    generated = mapped.generated_tensors()
    assert {n: t.shape for n, t in generated.items()} == shapes
    assert mapped(torch.empty(2, 3, 224, 224, device="meta")).shape == (2, 1000)


def test_map_model_takes_ownership_of_the_target(seeded):
    net = seeded(SmallCNN)
    reference = copy.deepcopy(net)
    mapscale.map_model(net, "slvt", 16)
    assert "conv1.weight" not in dict(net.named_parameters())
    assert "conv1.weight" in dict(reference.named_parameters())
