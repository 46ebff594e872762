"""The peers behind the recipe interface: random subspace, RPG, LoRA/VeRA adapters, linear probe."""

import json

import pytest
import torch

from mapscale.mapping.adapters import adapter_model, matching_rank
from mapscale.mapping.operators import SparseOperator
from mapscale.mapping.peers import ring_assignment
from mapscale.recipe import FullMethod, LoraMethod, Recipe, RecipeError, RpgMethod, SubspaceMethod, TargetSection, VeraMethod, apply_overrides, load_recipe
from mapscale.targets import cnn2
from mapscale.train import build_model, load_run, train, write_run_files

X = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))
CNN2_SHAPES = {n: tuple(p.shape) for n, p in cnn2().named_parameters()}


def _peer(generator: str, grouping: str = "slvt", budget: int = 1024, **mapping) -> Recipe:
    section = {"subspace": SubspaceMethod, "rpg": RpgMethod}[generator]
    return Recipe(target=TargetSection(name="cnn2"), mapping=section(grouping=grouping, budget=budget, **mapping))


def _trainable(model) -> dict[str, int]:
    return {n: p.numel() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("generator", ["subspace", "rpg"])
@pytest.mark.parametrize("grouping", ["slvt", "lwt"])
def test_peers_train_only_their_budget_and_generate_the_target_shapes(generator, grouping):
    model = build_model(_peer(generator, grouping, 1024))
    trainable = _trainable(model)
    assert all(n.startswith("generator.latents.") for n in trainable), trainable
    assert sum(trainable.values()) == model.num_trainable() == 1024
    assert len(trainable) == (1 if grouping == "slvt" else 4)  # CNN2 has 4 modules owning weights
    generated = model.generated_tensors()
    assert {n: tuple(t.shape) for n, t in generated.items()} == CNN2_SHAPES
    # subspace: the sparse projection's O(d + 512) tables and theta0 (fp32); rpg: int64 ring positions, fp32 scales
    # and shifts
    sparse = lambda g: SparseOperator.storage_bytes(g.latent_dim, g.numel) + 4 * g.numel  # noqa: E731
    per_weight = {"subspace": sparse, "rpg": lambda g: 16 * g.numel}[generator]
    assert model.fixed_bytes() == sum(per_weight(g) for g in model.layout.groups)
    assert build_model(_peer(generator, grouping, 1024), "meta").fixed_bytes() == model.fixed_bytes()  # what `mapscale inspect` reports
    model(X).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters() if p.requires_grad)


def test_subspace_starts_at_theta0_and_moves_by_exactly_the_latent_norm():
    recipe = _peer("subspace", budget=512, scale="none", operator="dense")  # Li et al.'s form
    model = build_model(recipe)
    torch.manual_seed(recipe.seed)
    theta0 = cnn2().state_dict()  # the target's seeded default init, as build_model draws it
    start = model.generated_tensors()
    assert all(torch.equal(start[n], theta0[n]) for n in CNN2_SHAPES)
    with torch.no_grad():
        model.generator.latents[0].copy_(torch.randn(512, generator=torch.Generator().manual_seed(1)))
    moved = model.generated_tensors()
    delta = torch.cat([(moved[n] - theta0[n]).reshape(-1) for n in CNN2_SHAPES])
    # theta - theta0 = P z with orthonormal columns: ||P z|| = ||z|| (Li et al.'s unit-norm columns, orthogonal).
    torch.testing.assert_close(delta.norm(), model.generator.latents[0].norm(), rtol=1e-4, atol=0)


def test_rpg_assignment_is_a_pure_balanced_function_of_the_seed():
    index, sign = ring_assignment(0, "all", 100, 1234)
    again, sign_again = ring_assignment(0, "all", 100, 1234)
    assert torch.equal(index, again) and torch.equal(sign, sign_again)
    other, other_sign = ring_assignment(1, "all", 100, 1234)
    assert not torch.equal(index, other) and not torch.equal(sign, other_sign)
    counts = torch.bincount(index, minlength=100)
    assert counts.min() == 12 and counts.max() == 13 and counts.sum() == 1234  # floor/ceil of 1234/100
    assert set(sign.tolist()) == {-1, 1}
    # Two builds of one recipe generate identical weights; another seed does not.
    first, second = build_model(_peer("rpg", budget=256)), build_model(_peer("rpg", budget=256))
    third = build_model(_peer("rpg", budget=256, seed=1))
    a, b, c = (m.generated_tensors()["7.weight"] for m in (first, second, third))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_rpg_weights_are_signed_ring_entries_with_the_init_statistics():
    model = build_model(_peer("rpg", budget=512))
    ring = model.generator.latents[0].detach()
    generated = model.generated_tensors()
    torch.manual_seed(0)
    theta0 = cnn2().state_dict()
    for name in ("3.weight", "7.weight"):
        scaled = (generated[name] - theta0[name].mean()) / theta0[name].std(unbiased=False)
        values = set(torch.round(scaled.abs().reshape(-1), decimals=4).tolist())
        assert values <= set(torch.round(ring.abs(), decimals=4).tolist())  # every weight is +- a ring entry
        assert abs(generated[name].std().item() / theta0[name].std().item() - 1) < 0.1


def test_peer_recipes_refuse_the_methods_own_fields():
    recipe = load_recipe("recipes/mnist_cnn2.py")
    with pytest.raises(RecipeError, match=r"unknown key 'mapping.modulation': mapping \(method 'rpg'\) has no 'modulation'"):
        apply_overrides(recipe, ["mapping.method=rpg", "mapping.modulation=additive"])
    with pytest.raises(RecipeError, match="trains on the task loss alone"):
        apply_overrides(recipe, ["mapping.method=subspace", "loss.stability=0.1"])
    with pytest.raises(RecipeError, match=r"unknown key 'mapping.rank': mapping \(method 'mapping'\) has no 'rank'"):
        apply_overrides(recipe, ["mapping.rank=2"])
    switched = apply_overrides(recipe, ["mapping.method=rpg"])  # the recipe's grouping and budget carry over, offset does not
    assert (switched.mapping.method, switched.mapping.grouping, switched.mapping.budget) == ("rpg", "slvt", 2048)


@pytest.mark.parametrize("method", ["lora", "vera"])
def test_adapters_match_the_budget_start_at_pretrained_and_export_merged(method, tmp_path):
    torch.manual_seed(3)
    pretrained = cnn2()
    weights = tmp_path / "cnn2.pt"
    torch.save(pretrained.state_dict(), weights)
    recipe = Recipe(
        target=TargetSection(name="cnn2", weights=weights),
        mapping={"lora": LoraMethod, "vera": VeraMethod}[method](budget=2048, tuned=["7.*", "9.*"]),
    )
    model = build_model(recipe).eval()
    rank, count = matching_rank(cnn2(), method, 2048, ["7.*", "9.*"])
    assert (rank, count) == ({"lora": (2, 2 * (928 + 138)), "vera": (955, 2 * 955 + 128 + 10)}[method])
    trainable = _trainable(model)
    assert sum(trainable.values()) == count == model.num_trainable()
    assert all((".lora_" in n) or (".vera_lambda_" in n) for n in trainable), trainable
    assert model.num_target_params() == 108_618
    with torch.no_grad():
        assert torch.equal(model(X), pretrained.eval()(X))  # adapters start as the identity update
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
        moved = model(X)
        plain = cnn2().eval()
        plain.load_state_dict(model.materialize(), strict=True)  # adapters merged: the plain target's state
        torch.testing.assert_close(plain(X), moved, rtol=1e-5, atol=1e-5)
        assert not torch.equal(moved, pretrained(X))


def test_adapters_refuse_layers_they_cannot_adapt():
    with pytest.raises(ValueError, match=r"vera adapts \['Linear'\] layers only; the tuned tensors belong to \['0 \(Conv2d\)'\]"):
        adapter_model(cnn2(), "vera", 4, ["0.*"])


def test_linear_probe_is_full_mode_with_everything_but_the_head_frozen():
    recipe = Recipe(target=TargetSection(name="cnn2"), mapping=FullMethod(frozen=["0.*", "3.*", "7.*"]))
    model = build_model(recipe)
    assert _trainable(model) == {"target.9.weight": 1280, "target.9.bias": 10}


def test_peers_and_adapters_train_checkpoint_and_reload_through_the_trainer(tmp_path):
    torch.manual_seed(5)
    weights = tmp_path / "cnn2.pt"
    torch.save(cnn2().state_dict(), weights)
    base = ["data.max_examples=64", "optim.batch_size=32", "optim.max_steps=2", "optim.schedule=constant",
            f"output.root={tmp_path}", "output.log_every=1", "output.progress=false"]
    runs = {
        "subspace": ["mapping.method=subspace", "mapping.budget=256"],
        "rpg": ["mapping.method=rpg", "mapping.budget=256", "mapping.grouping=lwt"],
        "lora": ["mapping.method=lora", "mapping.rank=1", "mapping.tuned=[\"7.*\", \"9.*\"]", f"target.weights={weights}"],
    }
    for name, overrides in runs.items():
        recipe = apply_overrides(load_recipe("recipes/mnist_cnn2.py"), overrides + base)
        write_run_files(tmp_path / name, recipe, None, [])
        train(recipe, tmp_path / name, device="cpu")
        records = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        losses = [r["task"] for r in records if r["split"] == "train"]
        assert len(losses) == 2 and all(map(lambda v: v == v, losses)), (name, losses)
        state = torch.load(tmp_path / name / "checkpoint.pt", weights_only=False)["model"]
        assert sum(v.numel() for k, v in state.items() if not k.endswith(("vera_A.default", "vera_B.default"))) < 3000, name
        _, loaded, _ = load_run(tmp_path / name)
        trained = [p for p in loaded.parameters() if p.requires_grad]
        assert trained and all(p.abs().sum() > 0 for p in trained)


def test_alignment_is_refused_where_the_latents_start_at_zero():
    recipe = load_recipe("recipes/mnist_cnn2.py")  # offset="init": latents start at exactly 0
    with pytest.raises(RecipeError, match="no direction at the zero latent"):
        apply_overrides(recipe, ["loss.alignment=0.01"])
    apply_overrides(recipe, ["loss.alignment=0.01", "mapping.offset=mean"])
    apply_overrides(recipe, ["loss.alignment=0.01", "mapping.latent_init_std=0.5"])
    with pytest.raises(RecipeError, match=r"unknown key 'mapping.latent_seed': mapping \(method 'subspace'\)"):
        apply_overrides(recipe, ["mapping.method=subspace", "mapping.latent_seed=3"])
