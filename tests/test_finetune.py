"""Fine-tuning mode (the paper's eq. 25): starts at the pretrained model, trains only latents, counts as documented."""

import copy
import fnmatch
import json
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import SmallCNN

from mapscale.loss import MappingLoss, hutchinson_jacobian_sq_norm
from mapscale.mapping import MappedModel, finetune_model, load_pretrained
from mapscale.recipe import apply_overrides, load_recipe
from mapscale.targets import cnn2
from mapscale.train import build_model, load_run, model_loss, train, write_run_files

X = torch.randn(6, 1, 28, 28, generator=torch.Generator().manual_seed(1))


def pretrained(seed: int = 0) -> SmallCNN:
    torch.manual_seed(seed)
    net = SmallCNN()
    with torch.no_grad():  # non-trivial running statistics, as a pretrained net has
        net.bn1.running_mean.uniform_(-0.5, 0.5)
        net.bn2.running_var.uniform_(0.5, 2.0)
    return net.eval()


def elements(net, tuned, block_size) -> int:
    return sum(math.ceil(p.numel() / block_size) for n, p in net.named_parameters() if any(fnmatch.fnmatchcase(n, t) for t in tuned))


@pytest.mark.parametrize("form", ["additive", "multiplicative"])
def test_starts_exactly_at_pretrained_and_only_latents_learn(form):
    reference = pretrained()
    model = finetune_model(copy.deepcopy(reference), ["conv2.*", "fc.*"], block_size=7, form=form, scale=0.5, budget=32).eval()
    assert isinstance(model, MappedModel)
    with torch.no_grad():
        assert torch.equal(model(X), reference(X)), "step 0 must be the pretrained model, bit for bit"
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {"generator.latents.0"}
    state = model.state_dict()
    assert "generator.latents.0" in state and not any("pretrained" in k for k in state)
    # The elements start at 0 around nothing: no (E,) zero base is held (offset="zero").
    assert not any(n.startswith("generator.base_") for n, _ in model.named_buffers())

    frozen_before = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    buffers_before = {n: b.clone() for n, b in model.named_buffers()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    for _ in range(3):
        optimizer.zero_grad()
        F.cross_entropy(model(X), torch.arange(6) % 10).backward()
        optimizer.step()
    for name, value in [*model.named_parameters(), *model.named_buffers()]:
        before = frozen_before.get(name, buffers_before.get(name))
        if before is not None:
            assert torch.equal(value, before), f"{name} changed"
    final = model.generated_tensors()
    assert sorted(final) == ["conv2.bias", "conv2.weight", "fc.bias", "fc.weight"]
    for name, tensor in final.items():
        assert not torch.equal(tensor, reference.get_parameter(name)), f"tuned {name} did not move"
    with torch.no_grad():
        assert not torch.equal(model(X), reference(X))


def test_each_element_modulates_block_size_consecutive_weights():
    reference = pretrained()
    model = finetune_model(copy.deepcopy(reference), ["fc.weight"], block_size=7, form="additive", scale=1.0, budget=8)
    with torch.no_grad():
        model.generator.latents[0].normal_()
    delta = (model.generated_tensors()["fc.weight"] - reference.fc.weight).detach().reshape(-1)  # (4000,)
    blocks = torch.nn.functional.pad(delta, (0, 7 * math.ceil(4000 / 7) - 4000), value=float("nan")).view(-1, 7)
    spread = (blocks - blocks[:, :1]).nan_to_num(0).abs().max()
    assert spread < 1e-6 * delta.abs().max(), "weights in one block must move together"
    # A unit-variance latent moves elements by about one: weights by about alpha pretrained stds.
    assert 0.3 < (delta.std() / reference.fc.weight.std()).item() < 3


@pytest.mark.parametrize("tuned", [["conv1.*"], ["conv1.*", "fc.bias"]])
@pytest.mark.parametrize("block_size", [1, 25])
def test_trainable_count_is_the_budget_capped_at_the_element_count(tuned, block_size):
    count = elements(SmallCNN(), tuned, block_size)  # sum_t ceil(numel_t / L): 80 or 90 for L = 1, 4 or 5 for 25
    assert count == {(1, 1): 80, (2, 1): 90, (1, 25): 4, (2, 25): 5}[len(tuned), block_size]
    small = finetune_model(pretrained(), tuned, block_size=block_size, budget=3)
    assert small.num_trainable() == 3 and small.layout.num_generated == count
    capped = finetune_model(pretrained(), tuned, block_size=block_size, budget=10**6)
    assert capped.num_trainable() == count
    lwt = finetune_model(pretrained(), tuned, block_size=block_size, grouping="lwt", budget=10**6)
    assert lwt.num_trainable() == count and len(lwt.layout.groups) == len(tuned)
    assert small.num_target_params() == sum(p.numel() for p in SmallCNN().parameters())
    kept = finetune_model(pretrained(), tuned, block_size=block_size, budget=3, trainable=["bn*"])
    assert kept.num_trainable() == 3 + 2 * (8 + 16)


def test_materialize_loads_into_the_plain_class_and_losses_run():
    model = finetune_model(pretrained(), ["conv1.*", "fc.bias"], block_size=3, form="multiplicative", budget=12).eval()
    loss_fn = MappingLoss(F.cross_entropy, stability=0.1, smoothness=0.1)
    out = model_loss(model, loss_fn, X, torch.arange(6) % 10, 0)
    out.total.backward()
    assert all(torch.isfinite(v) for v in out.values.values()) and out.values["stability"] > 0
    assert model.generator.latents[0].grad.abs().sum() > 0
    # The smoothness term estimates ||d w / d z||_F² of the final (tuned) weights.
    z = model.generator.latents[0].detach()
    final = lambda v: torch.cat([t.reshape(-1) for t in model.generator([v]).values()])  # noqa: E731 (one group: SLVT)
    exact = torch.autograd.functional.jacobian(final, z).square().sum()
    estimate = hutchinson_jacobian_sq_norm(model, 400, torch.Generator().manual_seed(0))
    assert estimate.item() == pytest.approx(exact.item(), rel=0.1)
    with torch.no_grad():
        model.generator.latents[0].normal_()
    plain = SmallCNN().eval()
    plain.load_state_dict(model.materialize(), strict=True)
    with torch.no_grad():
        assert torch.equal(plain(X), model(X))
        with model.cached_weights():
            assert torch.equal(model(X), plain(X))


def test_load_pretrained_keeps_a_tuned_head_of_another_shape():
    source = pretrained().state_dict()
    torch.manual_seed(3)
    net = SmallCNN()
    net.fc = torch.nn.Linear(400, 2)  # a 2-class head for a 10-class checkpoint
    head = net.fc.weight.detach().clone()
    assert sorted(load_pretrained(net, source, ["fc.*"])) == ["fc.bias", "fc.weight"]
    assert torch.equal(net.fc.weight, head) and torch.equal(net.conv1.weight, source["conv1.weight"])
    with pytest.raises(ValueError, match=r"pretrained 'fc.weight' has shape \(10, 400\), the target \(2, 400\); only tuned"):
        load_pretrained(net, source, ["conv2.*"])
    with pytest.raises(ValueError, match="missing"):
        load_pretrained(net, {k: v for k, v in source.items() if k != "conv1.bias"})


def test_recipe_validation_and_the_missing_weights_message():
    recipe = load_recipe("recipes/resnet50_deepfake_finetune.py")
    assert recipe.mapping.method == "finetune" and recipe.mapping.block_size == 250
    meta = build_model(recipe, "meta")  # what `mapscale inspect` builds
    assert meta.num_trainable() == 1024 and meta.layout.num_generated == 59_902
    with pytest.raises(ValueError, match="target.weights=/path/resnet50.pth"):
        build_model(recipe)
    from mapscale.recipe import RecipeError

    with pytest.raises(RecipeError, match="loss.alignment is undefined at the zero latent"):  # refused before anything is built
        apply_overrides(recipe, ["loss.alignment=0.1"])
    with pytest.raises(RecipeError, match=r"unknown key 'mapping.offset': mapping \(method 'finetune'\) has no 'offset'"):
        apply_overrides(recipe, ["mapping.offset=mean"])
    with pytest.raises(RecipeError, match="mapping.block_size: Input should be greater than or equal to 1"):
        apply_overrides(recipe, ["mapping.block_size=0"])


def test_train_two_steps_on_mnist_starts_at_pretrained_and_resumes(tmp_path):
    torch.manual_seed(5)
    weights = tmp_path / "cnn2.pt"
    torch.save(cnn2().state_dict(), weights)
    recipe = apply_overrides(load_recipe("recipes/mnist_cnn2.py"), [
        "mapping.method=finetune", "mapping.tuned=[\"3.*\", \"7.*\", \"9.*\"]", "mapping.block_size=25",
        "mapping.budget=64", f"target.weights={weights}", "data.max_examples=64", "optim.batch_size=32",
        "optim.max_steps=2", "optim.schedule=constant", f"output.root={tmp_path}", "output.log_every=1", "output.progress=false",
    ])
    model = build_model(recipe).eval()
    plain = cnn2().eval()
    plain.load_state_dict(torch.load(weights), strict=True)
    with torch.no_grad():
        assert torch.equal(model(X), plain(X))

    for run in ("straight", "resumed"):
        write_run_files(tmp_path / run, recipe, None, [])
    train(recipe, tmp_path / "straight", device="cpu")
    train(recipe, tmp_path / "resumed", device="cpu", stop_after=1)
    train(recipe, tmp_path / "resumed", device="cpu", resume=True)

    def losses(run):
        records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        return {r["step"]: r["task"] for r in records if r["split"] == "train"}

    assert sorted(losses(tmp_path / "straight")) == [1, 2]
    assert losses(tmp_path / "resumed") == losses(tmp_path / "straight")
    checkpoint = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=False)["model"]
    assert "generator.latents.0" in checkpoint
    assert not any(k.startswith("target.") and k.endswith(("weight", "bias")) for k in checkpoint), "pretrained weights are re-read, never checkpointed"
    _, loaded, _ = load_run(tmp_path / "straight")
    assert loaded.generator.latents[0].abs().sum() > 0


def test_a_bf16_checkpoint_stays_bf16_under_bf16_precision(tmp_path):
    """Pretrained weights that cannot be regenerated are held in the checkpoint's own dtype, not fp32, where the
    run autocasts to bf16 (issue 27): half the bytes of the frozen target, and nothing else changes: autocast
    rounds an upcast copy to the same bf16 values, so the run logs the losses of one holding them upcast."""
    torch.manual_seed(5)
    weights = tmp_path / "cnn2_bf16.pt"
    torch.save({k: v.to(torch.bfloat16) for k, v in cnn2().state_dict().items()}, weights)
    upcast = tmp_path / "cnn2_upcast.pt"
    torch.save({k: v.float() for k, v in torch.load(weights).items()}, upcast)  # the same values, in fp32
    common = [
        "mapping.method=finetune", "mapping.tuned=[\"7.*\", \"9.*\"]", "mapping.block_size=25", "mapping.budget=64", "optim.precision=bf16",
        "data.max_examples=640", "optim.batch_size=64", "optim.max_steps=6", "output.log_every=1", "output.progress=false", f"output.root={tmp_path}",
        "optim.schedule=constant", "optim.lr=0.3",
    ]
    half = build_model(load_recipe("recipes/mnist_cnn2.py", [*common, f"target.weights={weights}"]))
    full = build_model(load_recipe("recipes/mnist_cnn2.py", [*common, f"target.weights={upcast}"]))

    def frozen_bytes(model):
        tensors = [*model.target.parameters(), *model.generator.assembly.buffers()]
        return sum(t.numel() * t.element_size() for t in tensors), {t.dtype for t in tensors}

    (half_bytes, half_dtypes), (full_bytes, full_dtypes) = frozen_bytes(half), frozen_bytes(full)
    assert half_dtypes == {torch.bfloat16} and full_dtypes == {torch.float32}
    assert half_bytes * 2 == full_bytes
    assert all(p.dtype == torch.float32 for p in half.parameters() if p.requires_grad)  # the latents train in fp32
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(half(X), full(X))

    def losses(name, path):
        recipe = load_recipe("recipes/mnist_cnn2.py", [*common, f"target.weights={path}"])
        write_run_files(tmp_path / name, recipe, None, [])
        train(recipe, tmp_path / name, device="cpu")
        return [r["task"] for r in map(json.loads, (tmp_path / name / "metrics.jsonl").read_text().splitlines()) if r["split"] == "train"]

    kept, upcast_losses = losses("bf16", weights), losses("upcast", upcast)
    assert len(kept) == 6 and len(set(kept)) > 1 and all(math.isfinite(v) for v in kept)
    assert kept == upcast_losses
