"""Targets whose dense mapping would not fit train through the operators that never store it."""

import json

import pytest
import torch
from torch import nn

import mapscale
from mapscale.mapping.operators import DenseOperator
from mapscale.recipe import DataSection, LossSection, MappingMethod, OptimSection, OutputSection, Recipe, TargetSection
from mapscale.train import train, write_run_files

GIB = 2**30


def test_a_target_needing_a_22_gib_dense_mapping_trains_in_megabytes_with_the_structured_operator():
    torch.manual_seed(0)
    target = nn.Sequential(nn.Linear(512, 2048), nn.ReLU(), nn.Linear(2048, 768), nn.ReLU(), nn.Linear(768, 10))
    params = sum(p.numel() for p in target.parameters())
    dense_bytes = DenseOperator.storage_bytes(2048, params)
    assert dense_bytes > 20 * GIB  # 2,628,362 x 2,048 x 4 B = 20.05 GiB
    model = mapscale.map_model(target, "slvt", 2048, seed=0, operator="structured", offset="init")
    assert model.fixed_bytes() < 2 * GIB and model.fixed_bytes() < 0.01 * dense_bytes
    x, y = torch.randn(64, 512), torch.randint(0, 10, (64,))
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(4):
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]


@pytest.mark.parametrize("operator", ["seeded", "structured", "sparse"])
def test_the_trainer_runs_every_mapping_loss_term_through_a_never_stored_operator(operator, tmp_path):
    class Tiny(Recipe):
        target = TargetSection(name="small_mnist_cnn")
        mapping = MappingMethod(grouping="lwt", budget=64, operator=operator, offset="mean")  # alignment needs a non-zero start
        loss = LossSection(stability=0.1, smoothness=0.1, alignment=0.1)
        data = DataSection(name="shipped_mnist", test_size=0.5, max_examples=256)
        optim = OptimSection(epochs=1, batch_size=64)
        output = OutputSection(progress=False)

    recipe = Tiny()
    write_run_files(tmp_path, recipe, None, [])
    result = train(recipe, tmp_path, device="cpu")
    assert result.step == result.total_steps > 0
    logged = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in logged if r["split"] == "train"][-1]
    for term in ("task", "stability", "smoothness", "alignment"):
        assert torch.isfinite(torch.tensor(last[term])), term


# dense builds an 890 MB mapping and seeded redraws it every pass: 13 s each here, so they run in the slow tier
@pytest.mark.parametrize("operator", [pytest.param("dense", marks=pytest.mark.slow), pytest.param("seeded", marks=pytest.mark.slow), "structured", "sparse"])
def test_the_main_recipe_learns_in_two_steps_under_every_operator(operator):
    """recipes/mnist_cnn2.py (CNN2 SLVT 2,048) at its own learning rate: the loss on a fixed batch falls after 2 steps on it."""
    from pathlib import Path

    from mapscale.distributed.world import World
    from mapscale.recipe import load_recipe
    from mapscale.train import model_loss, prepare, train_step

    recipe = load_recipe(Path(__file__).parents[1] / "recipes" / "mnist_cnn2.py", [
        f"mapping.operator={operator}", "optim.schedule=constant", "data.max_examples=64", "output.progress=false",
    ])
    run = prepare(recipe, World(), "cpu")
    inputs, targets = next(iter(torch.utils.data.DataLoader(run.data.train, batch_size=64)))

    def loss() -> float:
        run.model.eval()
        with torch.no_grad():
            return model_loss(run.model, run.loss_fn, inputs, targets, 0).values["task"].item()

    before = loss()
    for step in range(2):
        train_step(run, [(inputs, targets)], len(targets), step)
    assert loss() < before
