"""The benchmark scripts run end to end in a reduced mode (their full runs are for notes, not tests)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(*args: str) -> str:
    done = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_mapping_loss_ablation_completes_and_logs_every_term():
    out = run("bench/mapping_loss.py", "--quick")
    for arm in ("[task only] epoch 1/1", "[full Mapping Loss] epoch 1/1"):
        assert arm in out
    full_line = next(line for line in out.splitlines() if line.startswith("[full Mapping Loss]"))
    for term in ("task=", "stability=", "smoothness=", "alignment=", "λ stability=", "stability s="):
        assert term in full_line, term
    assert "step time vs task only" in out


def test_mnist_core_bench_runs_full_and_mapped_rows():
    out = run("bench/mnist_core.py", "--epochs", "1", "--rows", "full training", "LWT multiplicative")
    assert "full training" in out and "LWT multiplicative" in out and "time vs full" in out
