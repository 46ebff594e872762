"""The input pipeline and evaluation: worker processes that change nothing, bounded periodic evaluation, the
evaluation batch size, and the embedded real-versus-generated image set."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mapscale.data import build_datasets
from mapscale.data.deepfake import CROPS, MANIFEST, embedded_deepfake_folder
from mapscale.recipe import apply_overrides, load_recipe
from mapscale.train import train
from mapscale.train.build import prepare
from mapscale.train.evaluate import eval_batch_size, eval_sample, evaluate
from mapscale.train.loader import data_workers
from mapscale.distributed.world import World

ROOT = Path(__file__).resolve().parents[1]
CNN2 = ROOT / "recipes" / "deepfake_cnn2_lwt.py"
SMALL = ["data.max_examples=96", "mapping.budget=64", "optim.batch_size=16", "output.progress=false", "output.log_every=1"]


@pytest.fixture
def cache():
    """The session's cache (`conftest`): the embedded set is built once for every test that reads it."""
    return Path(os.environ["MAPSCALE_CACHE"])


def recipe_of(path: Path, *overrides: str):
    return apply_overrides(load_recipe(path), list(overrides))


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def train_losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["task"] for r in records(run_dir) if r["split"] == "train"}


def test_workers_change_no_batch_and_no_loss(cache, tmp_path):
    """CNN2 on the embedded image folder (decoded per item): 0 and 2 worker processes give bit-identical losses
    and evaluations, with the shift augmentation on."""
    runs = {}
    for workers in (0, 2):
        recipe = recipe_of(CNN2, *SMALL, "optim.max_steps=8", "data.augment_shift=2", f"data.workers={workers}", f"output.root={tmp_path}", f"output.run_name=w{workers}")
        (tmp_path / f"w{workers}").mkdir()
        runs[workers] = train(recipe, tmp_path / f"w{workers}")
    assert train_losses(tmp_path / "w0") == train_losses(tmp_path / "w2") and len(train_losses(tmp_path / "w0")) == 8
    assert runs[0].final == runs[2].final and runs[0].final_train == runs[2].final_train


def test_auto_workers_decode_in_workers_and_leave_tensors_in_process(cache):
    images, mnist = recipe_of(CNN2, *SMALL), recipe_of(ROOT / "recipes" / "mnist_cnn2.py", "data.max_examples=64")
    decoded = build_datasets(images.data, images.task).train
    assert data_workers(images, decoded) >= 1
    assert data_workers(mnist, build_datasets(mnist.data, mnist.task).train) == 0
    assert data_workers(recipe_of(CNN2, "data.workers=3"), decoded) == 3


@pytest.mark.slow  # 22 s: two runs in subprocesses
def test_kill_9_mid_run_with_workers_resumes_to_the_uninterrupted_losses(cache, tmp_path):
    """SIGKILL (nothing flushed, workers orphaned) after a few checkpoints, then --resume: every logged loss equals
    an uninterrupted run's, workers=2 both times."""
    common = ["-m", "mapscale.cli", "train", str(CNN2), *SMALL, "optim.max_steps=40", "data.workers=2",
              "output.checkpoint_every=2", f"output.root={tmp_path}"]
    env = {"MAPSCALE_CACHE": str(cache), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    straight = subprocess.run([sys.executable, *common, "output.run_name=straight"], capture_output=True, text=True, timeout=600, env=env)
    assert straight.returncode == 0, straight.stdout[-2000:] + straight.stderr[-2000:]
    killed = subprocess.Popen([sys.executable, *common, "output.run_name=killed"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    log, deadline = tmp_path / "killed" / "metrics.jsonl", time.monotonic() + 300
    while not (log.exists() and len(log.read_text().splitlines()) >= 9) and time.monotonic() < deadline:
        assert killed.poll() is None, "the run ended before the kill"
        time.sleep(0.05)
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=60)
    at = torch.load(tmp_path / "killed" / "checkpoint.pt", weights_only=False)["step"]
    assert 2 <= at < 40
    resumed = subprocess.run([sys.executable, "-m", "mapscale.cli", "train", str(tmp_path / "killed"), "--resume"], capture_output=True, text=True, timeout=600, env=env)
    assert resumed.returncode == 0 and f"at step {at}/40" in " ".join(resumed.stdout.split()), resumed.stdout[-2000:] + resumed.stderr[-2000:]
    assert train_losses(tmp_path / "killed") == train_losses(tmp_path / "straight")


def test_periodic_evaluations_see_one_fixed_sample_and_the_last_one_the_whole_split(tmp_path):
    recipe = recipe_of(ROOT / "recipes" / "mnist_cnn2.py", "data.max_examples=192", "mapping.budget=64", "optim.max_steps=6",
                       "output.eval_every=2", "output.eval_batches=3", "output.eval_batch_size=8", "output.progress=false")
    (tmp_path / "run").mkdir()
    result = train(recipe, tmp_path / "run")
    tests = [r for r in records(tmp_path / "run") if r["split"] == "test"]
    assert [r["step"] for r in tests] == [2, 4, 6]
    assert [r.get("examples") for r in tests] == [24, 24, None]  # the last one: all 192
    assert "examples" not in result.final_train  # final evaluations are whole (output.final_eval=full)
    sample = eval_sample(192, 8, recipe)
    assert sample == eval_sample(192, 8, recipe) and len(sample) == 24 == len(set(sample))
    run = prepare(recipe, World(), "cpu")
    twice = [evaluate(run.model, run.data.test, recipe, run.data.num_classes, "cpu", sample=True) for _ in range(2)]
    by_hand = evaluate(run.model, torch.utils.data.Subset(run.data.test, sample), recipe, run.data.num_classes, "cpu")
    assert twice[0] == twice[1] == {**by_hand, "examples": 24}
    whole = evaluate(run.model, run.data.test, recipe, run.data.num_classes, "cpu")
    assert "examples" not in whole and whole != by_hand
    assert eval_sample(192, 8, recipe.model_copy(update={"output": recipe.output.model_copy(update={"eval_batches": None})})) is None
    assert eval_sample(192, 64, recipe) is None  # 3 batches of 64 cover the split: no sample


def test_evaluation_batch_size_follows_the_outputs_memory():
    lm = recipe_of(ROOT / "recipes" / "gpt2_small_lwt.py")
    windows = torch.utils.data.TensorDataset(torch.zeros(10, 128, dtype=torch.long), torch.zeros(10, 128, dtype=torch.long))
    assert eval_batch_size(lm, windows, 50_257) == 5  # 128 MiB of 128 x 50,257 float32 logits
    assert eval_batch_size(lm, windows, 256) == 256  # bytes: capped at 256
    digits = recipe_of(ROOT / "recipes" / "mnist_cnn2.py")
    labels = torch.utils.data.TensorDataset(torch.zeros(10, 1, 28, 28), torch.zeros(10, dtype=torch.long))
    assert eval_batch_size(digits, labels, 10) == 256
    assert eval_batch_size(apply_overrides(digits, ["output.eval_batch_size=7"]), labels, 10) == 7


def test_embedded_set_is_deterministic_offline_and_complete(tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("the embedded set must be built without network access")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    first, built = embedded_deepfake_folder(16, 0, tmp_path / "a")
    second, _ = embedded_deepfake_folder(16, 0, tmp_path / "b")
    assert built
    files = sorted(p.relative_to(first).as_posix() for p in first.rglob("*.jpg"))
    assert len(files) == 2 * CROPS and {f.split("/")[0] for f in files} == {"real", "fake"}
    assert all((first / f).read_bytes() == (second / f).read_bytes() for f in files)
    other, _ = embedded_deepfake_folder(16, 1, tmp_path / "a")
    assert (other / files[0]).read_bytes() != (first / files[0]).read_bytes()
    assert embedded_deepfake_folder(16, 0, tmp_path / "a") == (first, False)  # complete: read, not rebuilt


def test_a_truncated_or_unfinished_embedded_set_is_rebuilt(tmp_path):
    folder, _ = embedded_deepfake_folder(16, 0, tmp_path)
    victim = folder / "fake" / "0007.jpg"
    whole = victim.read_bytes()
    victim.write_bytes(whole[: len(whole) // 2])  # a truncated file
    assert embedded_deepfake_folder(16, 0, tmp_path) == (folder, True)
    assert victim.read_bytes() == whole
    (folder / MANIFEST).unlink()  # a build killed before its manifest
    assert embedded_deepfake_folder(16, 0, tmp_path) == (folder, True)
    assert not list(tmp_path.glob("*.building-*")), "no staging folder left behind"
