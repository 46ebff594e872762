"""`mapscale report`: the results table's numbers, the PNG plots, and the error for a folder that is not a run.

One tiny real run guards the run-directory format the report reads; the others are written by hand (a
regression run, whose gap has the other sign, and a fine-tuning run, whose strategy names its block size).
"""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mapscale.cli import app
from mapscale.recipe import load_recipe
from mapscale.report import markdown_table, plot_curves, plot_metric_vs_trainable, summarize
from mapscale.train import new_run_dir, train, write_run_files

ROOT = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

TINY = '''"""A tiny recipe for the report tests."""
from mapscale.recipe import DataSection, MappingMethod, OptimSection, OutputSection, Recipe


class Tiny(Recipe):
    mapping = MappingMethod(grouping="lwt", budget=64)
    data = DataSection(name="shipped_mnist", max_examples=96)
    optim = OptimSection(lr=5e-2, epochs=1, batch_size=32, max_steps=2)
    output = OutputSection(root="{root}", run_name="tiny", log_every=1, eval_every=1, progress=False)
'''


def fake_run(run_dir: Path, recipe_file: Path, overrides: list[str], records: list[dict]) -> Path:
    """A run directory as the trainer leaves it, without training: recipe.json and metrics.jsonl."""
    run_dir.mkdir(parents=True)
    recipe = load_recipe(recipe_file, overrides)
    (run_dir / "recipe.json").write_text(json.dumps(recipe.model_dump(mode="json")))
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return run_dir


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("report")
    (root / "tiny.py").write_text(TINY.format(root=root / "runs"))
    recipe = load_recipe(root / "tiny.py", [])
    tiny = new_run_dir(recipe)
    write_run_files(tiny, recipe, root / "tiny.py", [])
    train(recipe, tiny, device="cpu")
    lstm = fake_run(root / "runs" / "lstm", ROOT / "recipes" / "airpollution_lstm_slvt.py", [], [
        {"step": 10, "split": "train", "task": 0.9, "lr": 1e-3, "epoch": 0},
        {"step": 10, "split": "test", "mse": 0.30},
        {"step": 20, "split": "train", "task": 0.5, "lr": 1e-3, "epoch": 1},
        {"step": 20, "split": "test", "mse": 0.25},
        {"step": 20, "split": "train-eval", "mse": 0.20},
    ])
    finetune = fake_run(root / "runs" / "ft", ROOT / "recipes" / "resnet50_deepfake_finetune.py", [], [
        {"step": 5, "split": "train", "task": 0.7, "lr": 1e-3, "epoch": 0},
        {"step": 5, "split": "test", "accuracy": 0.80, "loss": 0.5},
        {"step": 10, "split": "train", "task": 0.6, "lr": 1e-3, "epoch": 0},
        {"step": 10, "split": "test", "accuracy": 0.75, "loss": 0.6},  # no train-eval yet: no gap
    ])
    return {"tiny": tiny, "lstm": lstm, "ft": finetune, "root": root}


def test_summary_of_a_real_run_matches_its_log(runs):
    s = summarize(runs["tiny"])
    records = [json.loads(line) for line in (runs["tiny"] / "metrics.jsonl").read_text().splitlines()]
    tests = [r for r in records if r["split"] == "test"]
    (train_eval,) = [r for r in records if r["split"] == "train-eval"]
    assert (s.run, s.recipe, s.target, s.strategy, s.task, s.metric) == ("tiny", "Tiny", "small_mnist_cnn", "lwt", "classification", "accuracy")
    assert s.trainable == 64 and s.target_params > 64 * 100  # lwt budget 64, no learned loss coefficients
    assert s.reduction == s.target_params / 64
    assert s.steps == 2 and [step for step, _ in s.train_loss] == [1, 2]
    assert s.test == tests[-1]["accuracy"] and s.train == train_eval["accuracy"]
    assert s.gap == pytest.approx(train_eval["accuracy"] - tests[-1]["accuracy"])
    assert s.best == max(r["accuracy"] for r in tests)


def test_regression_gap_is_test_minus_train_and_finetune_names_its_block_size(runs):
    lstm, ft = summarize(runs["lstm"]), summarize(runs["ft"])
    assert (lstm.metric, lstm.strategy, lstm.test, lstm.train) == ("mse", "slvt", 0.25, 0.20)
    assert lstm.gap == pytest.approx(0.05)  # worse on test is positive, whatever the metric's direction
    assert (lstm.best, lstm.best_step) == (0.25, 20)  # lower is better
    assert ft.strategy == "finetune (L=250)" and ft.gap is None
    assert (ft.best, ft.best_step, ft.test) == (0.80, 5, 0.75)


def test_table_has_the_columns_and_numbers(runs):
    summaries = [summarize(runs[name]) for name in ("tiny", "lstm", "ft")]
    lines = markdown_table(summaries).splitlines()
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    assert header[:7] == ["run", "target", "strategy", "trainable params", "target params", "reduction", "metric"]
    assert header[9].startswith("gap (train − test; for mse test − train")
    rows = {cells[0]: cells for cells in ([c.strip() for c in line.strip("|").split("|")] for line in lines[2:])}
    lstm = summaries[1]
    assert rows["lstm"][3] == f"{lstm.trainable:,}" and rows["lstm"][5] == f"{lstm.target_params / lstm.trainable:,.1f}x"
    assert rows["lstm"][6:10] == ["mse", "0.2500", "0.2000", "+0.0500"]
    assert rows["ft"][2] == "finetune (L=250)" and rows["ft"][9] == "–" and rows["ft"][10] == "0.8000 (5)"
    assert rows["tiny"][3] == "64"


def test_plots_are_png_files(runs, tmp_path):
    summaries = [summarize(runs[name]) for name in ("tiny", "lstm", "ft")]
    for path in (plot_curves(summaries, tmp_path / "c.png"), plot_metric_vs_trainable(summaries, tmp_path / "s.png")):
        data = path.read_bytes()
        assert len(data) > 1000 and data.startswith(PNG_MAGIC)


def test_cli_prints_the_table_and_writes_the_report(runs, tmp_path):
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["report", str(runs["tiny"]), str(runs["lstm"]), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "| tiny | small_mnist_cnn | lwt | 64 |" in result.output
    assert {"report.md", "curves.png", "metric_vs_trainable.png"} <= {p.name for p in out.iterdir()}
    assert "| lstm |" in (out / "report.md").read_text()
    assert (out / "curves.png").read_bytes().startswith(PNG_MAGIC)


def test_a_folder_that_is_not_a_run_is_named(runs, tmp_path):
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "recipe.json").write_text((runs["tiny"] / "recipe.json").read_text())
    result = CliRunner().invoke(app, ["report", str(runs["tiny"]), str(tmp_path / "half"), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    message = " ".join(result.output.split())  # rich wraps long paths; compare without the wrapping
    assert "is not a run directory: no metrics.jsonl" in message
    assert str(tmp_path / "half") in "".join(result.output.split())
    assert not (tmp_path / "out").exists(), "nothing is written when a run cannot be read"
