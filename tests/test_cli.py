"""The CLI end to end on tiny runs: train, interrupt and resume, eval, inspect, export, errors."""

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from mapscale.cli import app
from mapscale.targets import small_mnist_cnn

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()

TINY = '''"""A tiny recipe for the CLI tests."""
from mapscale.recipe import DataSection, MappingMethod, OptimSection, OutputSection, Recipe


class Tiny(Recipe):
    mapping = MappingMethod(grouping="lwt", budget=64)
    data = DataSection(name="shipped_mnist", max_examples=192)
    optim = OptimSection(lr=5e-2, epochs=2, batch_size=32)
    output = OutputSection(root="{root}", run_name="tiny", log_every=1, progress=False)
'''


class Ran:
    """A CLI invocation's exit code and its output with line wrapping undone (rich wraps at 80 columns)."""

    def __init__(self, result) -> None:
        self.exit_code, self.raw = result.exit_code, result.output
        self.output = " ".join(result.output.split())


def invoke(*args: str) -> Ran:
    return Ran(runner.invoke(app, [str(a) for a in args]))


def losses(run_dir: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["task"] for r in records if r["split"] == "train"}


@pytest.fixture
def tiny(tmp_path):
    path = tmp_path / "tiny.py"
    path.write_text(TINY.format(root=tmp_path / "runs"))
    return path


def test_train_resume_continues_exactly_and_eval_export_agree(tiny, tmp_path):
    straight = invoke("train", tiny, "output.run_name=straight")
    assert straight.exit_code == 0, straight.output
    straight_dir = tmp_path / "runs" / "straight"
    assert {"recipe.json", "recipe_source.py", "overrides.json", "environment.json", "metrics.jsonl", "checkpoint.pt"} <= {p.name for p in straight_dir.iterdir()}
    assert "trainable parameters" in straight.output and "reduction" in straight.output
    first_record = json.loads((straight_dir / "metrics.jsonl").read_text().splitlines()[0])
    assert {"task", "lr", "samples_per_s"} <= first_record.keys()
    assert not any(k.startswith("seconds_") for k in first_record), "per-term timing is off by default"

    stopped = invoke("train", tiny, "output.run_name=resumed", "--stop-after", "5")
    assert stopped.exit_code == 0 and "stopped at step 5/" in stopped.output, stopped.output  # planned: success
    resumed_dir = tmp_path / "runs" / "resumed"
    assert torch.load(resumed_dir / "checkpoint.pt", weights_only=False)["step"] == 5
    resumed = invoke("train", resumed_dir, "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert "resumed" in resumed.output and "at step 5/12" in resumed.output
    expected, got = losses(straight_dir), losses(resumed_dir)
    assert sorted(got) == sorted(expected) == list(range(1, 13))
    assert got == expected, "a resumed run must continue with exactly the losses of an uninterrupted one"

    evaluated = invoke("eval", resumed_dir)
    assert evaluated.exit_code == 0, evaluated.output
    metrics = json.loads(evaluated.raw.strip().splitlines()[-1])
    final = [json.loads(line) for line in (straight_dir / "metrics.jsonl").read_text().splitlines() if '"test"' in line][-1]
    assert metrics["step"] == 12 and metrics["accuracy"] == final["accuracy"]

    out = tmp_path / "model.safetensors"
    exported = invoke("export", resumed_dir, "--out", out)
    assert exported.exit_code == 0, exported.output
    from safetensors.torch import load_file

    plain = small_mnist_cnn()
    plain.load_state_dict(load_file(str(out)), strict=True)
    from mapscale.train import load_run

    _, mapped, _ = load_run(resumed_dir)
    x = torch.randn(4, 1, 28, 28)
    mapped.eval()
    plain.eval()
    with torch.no_grad():
        assert torch.equal(plain(x), mapped(x))


def test_reproduce_from_recipe_json_and_print_config(tiny, tmp_path):
    first = invoke("train", tiny, "optim.max_steps=2", "output.run_name=first")
    assert first.exit_code == 0, first.output
    again = invoke("train", tmp_path / "runs" / "first" / "recipe.json", "output.run_name=again")
    assert again.exit_code == 0, again.output
    assert losses(tmp_path / "runs" / "first") == losses(tmp_path / "runs" / "again")
    shown = invoke("train", tiny, "optim.lr=0.003", "--print-config")
    assert shown.exit_code == 0 and json.loads(shown.raw)["optim"]["lr"] == 0.003
    assert not (tmp_path / "runs" / "tiny").exists(), "--print-config writes nothing"


def test_inspect_and_dry_run_show_the_layout(tiny):
    shown = invoke("inspect", ROOT / "recipes" / "resnet50_deepfake.py", "--world-size", "8")
    assert shown.exit_code == 0, shown.output
    assert "23,512,130" in shown.output  # resnet50 with a 2-class head: 25,557,032 - 2,049,000 + 4,098
    assert "world size 8" in shown.output and "trainable parameters" in shown.output
    # The plan: one row per stage unit; each rank's fixed state from its generator, built on meta. Under the
    # default sparse operator it is the rank's share of theta_0 (23.5M x 4 B / 8); under the dense operator the
    # heaviest rank's 0.879 GiB is what ShardPlan's row count gave before (the dense mapping rows it owns).
    assert "sharding plan over 8 ranks" in shown.output and "layer4" in shown.output
    assert "fixed state on the heaviest rank, world size 8 │ 0.011 GiB" in shown.output
    dense = invoke("inspect", ROOT / "recipes" / "resnet50_deepfake.py", "mapping.operator=dense", "mapping.offset=mean", "--world-size", "8")
    assert "fixed state on the heaviest rank, world size 8 │ 0.879 GiB" in dense.output
    dry = invoke("train", tiny, "--dry-run")
    assert dry.exit_code == 0 and "groups" in dry.output
    # Invariant 2: the printed trainable count is what the optimiser updates (+2 learned loss weights here).
    assert "trainable parameters │ 64 │" in dry.output
    with_loss = invoke("inspect", tiny, "mapping.offset=mean", "loss.stability=0.5", "loss.alignment=0.5")
    assert "trainable parameters │ 66 │" in with_loss.output
    from mapscale.recipe import load_recipe
    from mapscale.train import build_loss, build_model, build_optimizer, trainable_parameters

    recipe = load_recipe(tiny, ["mapping.offset=mean", "loss.stability=0.5", "loss.alignment=0.5"])
    optimizer, _ = build_optimizer(recipe, trainable_parameters(build_model(recipe), build_loss(recipe)), 10)
    assert sum(p.numel() for group in optimizer.param_groups for p in group["params"]) == 66


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "missing_recipe.py"], "does not exist"),
        (["train", "{tiny}", "optim.lrr=1"], "Did you mean 'lr'"),
        (["train", "{tiny}", "optim.lr=fast"], "valid number"),
        (["train", "{tiny}", "--resume"], "needs a run directory with a checkpoint"),
        (["eval", "{tmp}"], "no checkpoint"),
    ],
)
def test_errors_are_clear_and_exit_2(args, message, tiny, tmp_path):
    result = invoke(*[a.format(tiny=tiny, tmp=tmp_path) for a in args])
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_every_command_has_useful_help():
    import click
    import typer.main

    group = typer.main.get_command(app)
    for name, command in group.commands.items():
        result = invoke(name, "--help")
        assert result.exit_code == 0, name
        text = " ".join(result.output.split())
        for param in command.params:  # every option is listed, and documented
            if isinstance(param, click.Option):
                assert param.opts[0] in text and param.help, (name, param.opts)
        assert command.help and command.help.split(".")[0][:40] in text, name


def make_image_folder(root: Path, per_class: int = 6) -> Path:
    from PIL import Image

    generator = torch.Generator().manual_seed(0)
    for label, base in (("real", 60), ("fake", 190)):
        (root / label).mkdir(parents=True)
        for i in range(per_class):
            pixels = (torch.rand(40, 48, 3, generator=generator) * 60 + base).to(torch.uint8).numpy()
            Image.fromarray(pixels).save(root / label / f"{i}.png")
    return root


def test_resnet50_deepfake_trains_two_steps_on_an_image_folder(tmp_path):
    folder = make_image_folder(tmp_path / "frames")
    recipe = ROOT / "recipes" / "resnet50_deepfake.py"
    result = invoke(
        "train", recipe, f"data.path={folder}", "data.image_size=32", "optim.max_steps=2", "optim.batch_size=4",
        "mapping.budget=128", f"output.root={tmp_path / 'runs'}", "output.run_name=r50", "output.progress=false",
    )
    assert result.exit_code == 0, result.output
    run = tmp_path / "runs" / "r50"
    assert set(losses(run)) == {2}  # logged every 10 steps and at the last one
    assert torch.load(run / "checkpoint.pt", weights_only=False)["step"] == 2


def test_resnet50_deepfake_without_data_trains_on_the_embedded_set(tmp_path):
    import os
    result = invoke(
        "train", ROOT / "recipes" / "resnet50_deepfake.py", "data.image_size=16", "optim.max_steps=2", "optim.batch_size=4",
        "mapping.budget=128", f"output.root={tmp_path / 'runs'}", "output.run_name=r50", "output.progress=false", "output.eval_train=false",
    )
    assert result.exit_code == 0, result.output
    assert "embedded real-versus-generated set: 800 images at 16x16" in " ".join(result.output.split())
    assert (Path(os.environ["MAPSCALE_CACHE"]) / "deepfake-16px-seed0-v1" / "MANIFEST.json").is_file()  # conftest's cache
    assert json.loads((tmp_path / "runs" / "r50" / "result.json").read_text())["final"]["accuracy"] >= 0


def test_an_image_folder_without_data_path_says_what_to_give(tmp_path):
    result = invoke("train", ROOT / "recipes" / "resnet50_deepfake.py", "data.name=imagefolder", f"output.root={tmp_path}")
    assert result.exit_code == 2
    assert "data.path" in result.output
    assert not any(tmp_path.iterdir()), "a run that never started leaves no run directory"


def test_sigterm_stops_with_a_checkpoint_and_the_run_resumes(tiny, tmp_path):
    """A scheduler preempting the job: SIGTERM mid-run stops after the current step, nothing is lost."""
    import signal
    import subprocess
    import sys
    import time

    command = [sys.executable, "-m", "mapscale.cli", "train", str(tiny), "output.run_name=preempted", "optim.epochs=30"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log = tmp_path / "runs" / "preempted" / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not (log.exists() and len(log.read_text().splitlines()) >= 3) and time.monotonic() < deadline:
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 130, output
    state = torch.load(tmp_path / "runs" / "preempted" / "checkpoint.pt", weights_only=False)
    assert 3 <= state["step"] < 180 and "stopped at step" in output
    logged = max(losses(tmp_path / "runs" / "preempted"))
    assert logged == state["step"], "the checkpoint holds every logged step"
    resumed = invoke("train", tmp_path / "runs" / "preempted", "--resume", "--stop-after", "2")
    assert resumed.exit_code == 0 and f"at step {state['step']}/180" in resumed.output


def test_resume_auto_continues_the_named_run_and_refuses_another_recipe(tiny, tmp_path):
    """output.resume=auto: the same command run again continues its run directory from the last checkpoint (as a
    restarted torchrun job does) with the losses of an uninterrupted run; never a second directory or an overwrite."""
    straight = invoke("train", tiny, "output.run_name=straight")
    assert straight.exit_code == 0, straight.output
    first = invoke("train", tiny, "output.run_name=auto", "output.resume=auto", "--stop-after", "5")
    assert first.exit_code == 0 and "continuing" not in first.output, first.output
    again = invoke("train", tiny, "output.run_name=auto", "output.resume=auto")
    assert again.exit_code == 0, again.output
    assert "output.resume='auto': continuing" in again.output and "at step 5/12" in again.output
    assert losses(tmp_path / "runs" / "auto") == losses(tmp_path / "runs" / "straight")
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["auto", "straight"]
    finished = invoke("train", tiny, "output.run_name=auto", "output.resume=auto")  # nothing left to do
    assert finished.exit_code == 0 and "nothing to continue" in finished.output, finished.output
    assert losses(tmp_path / "runs" / "auto") == losses(tmp_path / "runs" / "straight")

    other = invoke("train", tiny, "output.run_name=auto", "output.resume=auto", "optim.lr=0.01")
    assert other.exit_code == 2 and "holds another recipe (optim.lr: 0.05 there, 0.01 here)" in other.output, other.output
    assert losses(tmp_path / "runs" / "auto") == losses(tmp_path / "runs" / "straight")  # untouched
    default = invoke("train", tiny, "output.run_name=auto")  # output.resume=never: a new directory, as before
    assert default.exit_code == 0 and (tmp_path / "runs" / "auto-2").is_dir()


def test_resume_auto_restarts_a_run_that_died_before_its_first_checkpoint(tiny, tmp_path):
    run_dir = tmp_path / "runs" / "early"
    first = invoke("train", tiny, "output.run_name=early", "output.resume=auto", "--stop-after", "3")
    assert first.exit_code == 0
    (run_dir / "checkpoint.pt").unlink()  # as if killed before any checkpoint: metrics of steps 1-3 only
    again = invoke("train", tiny, "output.run_name=early", "output.resume=auto")
    assert again.exit_code == 0 and "from step 0 (it has no checkpoint yet)" in again.output, again.output
    assert sorted(losses(run_dir)) == list(range(1, 13))  # the partial log replaced, not appended to
