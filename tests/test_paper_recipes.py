"""The paper's segmentation and time-series recipes train end to end on tiny generated data (2 steps)."""

import json
from pathlib import Path

import numpy as np
from PIL import Image

from mapscale.recipe import load_recipe
from mapscale.train import train, write_run_files

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def reevaluated(run_dir: Path) -> dict[str, float]:
    """The test metrics of the run's checkpoint, rebuilt from its recipe.json alone."""
    from mapscale.data import build_datasets
    from mapscale.train import evaluate, load_run

    recipe, model, _ = load_run(run_dir)
    data = build_datasets(recipe.data, recipe.task)
    return evaluate(model, data.test, recipe, data.num_classes, "cpu")


def quick(tmp_path: Path, name: str) -> list[str]:
    return [f"output.root={tmp_path}", f"output.run_name={name}", "optim.max_steps=2", "output.progress=false", "mapping.budget=64"]


def test_cityscapes_cnn3_recipe_trains_on_a_generated_segfolder(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "seg" / "images").mkdir(parents=True)
    (tmp_path / "seg" / "masks").mkdir()
    for i in range(10):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(tmp_path / "seg" / "images" / f"{i}.png")
        mask = rng.integers(0, 19, (32, 32), dtype=np.uint8)
        mask[:4] = 255  # ignored pixels
        Image.fromarray(mask).save(tmp_path / "seg" / "masks" / f"{i}.png")
    recipe = load_recipe(RECIPES / "cityscapes_cnn3_slvt.py", [*quick(tmp_path, "seg-run"), f"data.path={tmp_path / 'seg'}", "data.image_size=32", "optim.batch_size=4"])
    (tmp_path / "seg-run").mkdir()
    result = train(recipe, tmp_path / "seg-run")
    assert result.step == 2 and result.final == reevaluated(tmp_path / "seg-run")  # the checkpoint is the final model
    assert all(np.isfinite(r["task"]) for r in records(tmp_path / "seg-run") if r["split"] == "train")
    # The final model on the training split too (the train-test gap of the paper's tables).
    assert records(tmp_path / "seg-run")[-1]["split"] == "train-eval" and result.final_train.keys() == result.final.keys()


def test_airpollution_lstm_recipe_trains_on_a_generated_series(tmp_path):
    import pandas as pd

    t = np.arange(300, dtype=np.float64)
    frame = pd.DataFrame({"pollution": np.sin(t / 10) + 2, "dew": np.cos(t / 7), "temp": t / 300})
    frame.to_csv(tmp_path / "series.csv", index=False)
    recipe = load_recipe(RECIPES / "airpollution_lstm_slvt.py", [*quick(tmp_path, "ts-run"), f"data.path={tmp_path / 'series.csv'}", 'target.args={"inputs": 3}'])
    (tmp_path / "ts-run").mkdir()
    result = train(recipe, tmp_path / "ts-run")
    assert result.step == 2 and result.final == reevaluated(tmp_path / "ts-run")  # the checkpoint is the final model


def test_full_training_baseline_trains_every_parameter_through_the_same_trainer(tmp_path):
    import pytest
    import torch

    from mapscale.recipe import RecipeError
    from mapscale.report import summarize
    from mapscale.targets import build_target

    overrides = [f"output.root={tmp_path}", "output.run_name=full", "optim.max_steps=3", "output.progress=false", "mapping.method=full", "optim.lr=1e-3", "data.max_examples=300"]
    recipe = load_recipe(RECIPES / "mnist_cnn2.py", overrides)
    write_run_files(tmp_path / "full", recipe, None, overrides)
    result = train(recipe, tmp_path / "full")
    assert result.trainable == result.target_params == 108_618
    assert summarize(tmp_path / "full").strategy == "full training"
    # The target's own parameters moved (nothing is generated): compare with its seeded init.
    torch.manual_seed(recipe.seed)
    init = build_target("cnn2", {}, None).state_dict()
    trained = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=False)["model"]
    assert trained.keys() == {f"target.{name}" for name in init}
    assert all(not torch.equal(trained[f"target.{name}"], value) for name, value in init.items())
    for bad, match in [("loss.stability=0.1", "act on latents"), ("mapping.variant=lv-wmap", r"unknown key 'mapping.variant': mapping \(method 'full'\) has no 'variant'")]:
        with pytest.raises(RecipeError, match=match):
            load_recipe(RECIPES / "mnist_cnn2.py", [*overrides, bad])
