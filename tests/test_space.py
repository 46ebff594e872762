"""The space of trained models on tiny runs: shared-mapping check, interpolation, ensemble, warm-started search."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from mapscale.cli import app
from mapscale.data import build_datasets
from mapscale.recipe import DataSection, MappingMethod, OptimSection, OutputSection, Recipe, TargetSection, apply_overrides
from mapscale.space import Space, read_points, save_latents
from mapscale.train import build_model, fingerprint, load_run, train, write_run_files

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def tiny(root: Path, *overrides: str) -> Recipe:
    recipe = Recipe(
        name="tiny-space",
        target=TargetSection(name="small_mnist_cnn"),
        mapping=MappingMethod(grouping="slvt", budget=64, latent_init_std=0.5),
        data=DataSection(name="shipped_mnist", test_size=200, max_examples=400, classes=[0, 1, 2, 3, 4]),
        optim=OptimSection(lr=5e-2, epochs=2, max_steps=12, batch_size=32),
        output=OutputSection(root=root, log_every=4, progress=False),
    )
    return apply_overrides(recipe, list(overrides))


def trained(root: Path, name: str, *overrides: str) -> Path:
    recipe = tiny(root, *overrides)
    run_dir = root / name
    write_run_files(run_dir, recipe, None, list(overrides))
    train(recipe, run_dir, device="cpu")
    return run_dir


def invoke(*args) -> tuple[int, str]:
    result = runner.invoke(app, [str(a) for a in args])
    return result.exit_code, " ".join(result.output.split())


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two runs sharing a mapping (different latent seeds) and one with another mapping seed."""
    root = tmp_path_factory.mktemp("space")
    return {
        "a": trained(root, "a", "mapping.latent_seed=1"),
        "b": trained(root, "b", "mapping.latent_seed=2"),
        "other": trained(root, "other", "mapping.seed=7"),
    }


def test_latent_seed_moves_the_start_not_the_mapping():
    base = tiny(Path("unused"))
    one, two = (build_model(apply_overrides(base, [f"mapping.latent_seed={s}"])) for s in (1, 2))
    plain = build_model(base)
    assert fingerprint(one, base) == fingerprint(two, apply_overrides(base, ["mapping.latent_seed=2"])) == fingerprint(plain, base)
    z1, z2 = one.generator.latents[0].detach().clone(), two.generator.latents[0].detach().clone()
    assert not torch.equal(z1, z2) and not torch.equal(z1, plain.generator.latents[0])
    with torch.no_grad():  # the same latent generates the same weights: one mapping
        two.generator.latents[0].copy_(z1)
    for name, tensor in one.materialize().items():
        assert torch.equal(tensor, two.materialize()[name]), name


def test_runs_sharing_a_mapping_pass_the_check_and_other_seeds_are_refused_with_the_reason(runs):
    points = read_points([runs["a"], runs["b"]])
    assert points[0].fingerprint == points[1].fingerprint
    code, out = invoke("space", runs["a"], runs["b"], "--check")
    assert code == 0 and "2 runs share mapping" in out, out
    code, out = invoke("space", runs["a"], runs["b"])
    assert code == 0 and "latent distances" in out, out
    code, out = invoke("space", runs["a"], runs["other"], "--check")
    assert code == 2, out
    assert "do not share a mapping" in out and "mapping.seed: 0 vs 7" in out, out


def test_interpolation_endpoints_reproduce_each_runs_own_metrics_exactly(runs, tmp_path):
    space = Space.open([runs["a"], runs["b"]])
    result = space.interpolate(0, 1, steps=3)
    assert result.ts == [0.0, 0.5, 1.0]
    assert result.recorded_a is not None and result.recorded_b is not None
    assert result.latent[0] == result.recorded_a and result.latent[-1] == result.recorded_b  # exact, not approximate
    assert result.weight[0] == result.recorded_a and result.weight[-1] == result.recorded_b
    assert result.barrier("latent") >= 0 and result.barrier("weight") >= 0
    code, out = invoke("interpolate", runs["a"], runs["b"], "--steps", 3, "--out", tmp_path / "interp")
    assert code == 0 and "barrier" in out, out
    assert "| 0.500 |" in (tmp_path / "interp" / "interpolation.md").read_text()
    assert (tmp_path / "interp" / "interpolation.png").stat().st_size > 0
    code, out = invoke("interpolate", runs["a"], runs["other"], "--out", tmp_path / "refused")
    assert code == 2 and "mapping.seed: 0 vs 7" in out, out


def test_ensemble_lists_members_averaged_latent_and_output_ensemble(runs, tmp_path):
    result = Space.open([runs["a"], runs["b"]]).ensemble()
    assert result.members["a"] == read_points([runs["a"]])[0].recorded()
    for row in (result.averaged_latent, result.output_ensemble):
        assert 0.0 <= row["accuracy"] <= 1.0 and row["loss"] > 0
    code, out = invoke("ensemble", runs["a"], runs["b"], "--out", tmp_path / "ens")
    assert code == 0 and "averaged latent" in out and "output ensemble" in out, out
    assert "| output ensemble (mean softmax) |" in (tmp_path / "ens" / "ensemble.md").read_text()


def test_data_classes_keeps_those_labels_with_their_ids():
    splits = build_datasets(DataSection(name="shipped_mnist", test_size=200, classes=[5, 7]), "classification")
    assert splits.num_classes == 10
    assert set(splits.train.tensors[1].tolist()) == {5, 7} == set(splits.test.tensors[1].tolist())
    assert len(splits.test) == 40 and len(splits.train) == 960  # stratified: 20 of each digit held out, 480 kept


def test_search_warm_starts_from_the_sources_and_refuses_another_mapping(runs, tmp_path):
    recipe_file = tmp_path / "new_task.json"
    recipe_file.write_text(tiny(tmp_path / "unused", "data.classes=[5,6,7,8,9]", "optim.max_steps=6").model_dump_json())
    out = tmp_path / "search"
    code, text = invoke("search", recipe_file, "--from", runs["a"], "--from", runs["b"], "--init", "mean",
                        "--eval-every", 3, "--target", 0.5, "--out", out)
    assert code == 0, text
    table = (out / "search.md").read_text()
    assert "| warm |" in table and "| fresh |" in table and "mean of 2 runs" in table
    assert (out / "search.png").stat().st_size > 0
    # The warm run starts from the mean latent: its checkpointed recipe points at the file, its fingerprint is the sources'.
    _, model, state = load_run(out / "warm")
    assert state["fingerprint"] == read_points([runs["a"]])[0].fingerprint
    steps = [json.loads(line)["step"] for line in (out / "warm" / "metrics.jsonl").read_text().splitlines() if '"test"' in line]
    assert steps == [3, 6]
    # Latents of another mapping are refused, by search and by the trainer itself.
    code, text = invoke("search", recipe_file, "mapping.seed=7", "--from", runs["a"], "--out", tmp_path / "refused")
    assert code == 2 and "mapping.seed: 0 vs 7" in text, text
    alien = save_latents(tmp_path / "alien.pt", [torch.zeros(64)], "0123456789abcdef")
    recipe = tiny(tmp_path / "runs", f"mapping.latent_from={alien}")
    with pytest.raises(ValueError, match="not of this recipe's"):
        train(recipe, tmp_path / "alien-run", device="cpu")


@pytest.mark.slow  # a bench smoke test
def test_space_bench_runs_in_its_reduced_mode(tmp_path):
    out = tmp_path / "space.md"
    done = subprocess.run([sys.executable, "bench/space.py", "--quick", "--runs", str(tmp_path / "runs"), "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    text = out.read_text()
    for part in ("## Interpolation", "| 1 - 2 |", "| averaged latent |", "| output ensemble (mean softmax) |", "### init = best", "### init = mean", "| speed-up"):
        assert part in text, part
    assert out.with_suffix(".png").stat().st_size > 0
