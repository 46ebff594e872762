"""The benchmark scripts run end to end in a reduced mode (their full runs are for notes, not tests)."""

import json
import re
import subprocess
import sys
from pathlib import Path
import pytest

pytestmark = pytest.mark.slow  # bench smoke tests: `pytest -m slow`

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


def test_paper_table_bench_trains_rows_reads_finished_runs_back_and_writes_the_table(tmp_path):
    args = ["bench/paper_table.py", "--rows", "cnn2-full", "cnn2-lv-wmap-1024", "--epochs", "1", "--max-steps", "2", "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "table.md")]
    out = run(*args)
    assert "cnn2-full: training" in out and "cnn2-lv-wmap-1024: training" in out
    table = (tmp_path / "table.md").read_text()
    assert "| CNN2 | full training |" in table and "| 108,618 | 1.0x |" in table and "| 1.00x |" in table
    assert "T7 LV+WMAP 2,048" in table and "| 2,048 |" in table  # latent 1,024 + modulation vector 1,024
    assert (tmp_path / "table.png").stat().st_size > 0
    again = run(*args)  # finished rows are read back, not trained again
    assert "finished run" in again and "training" not in again.split("|")[0].split("threads")[1]


def test_operators_bench_measures_every_operator_and_the_dense_bandwidth(tmp_path):
    out = run("bench/operators.py", "--sizes", "20000", "--dims", "16", "--repeats", "1", "--out", str(tmp_path / "ops.md"))
    table = (tmp_path / "ops.md").read_text()
    for operator in ("| dense | 20,000 | 16 |", "| seeded | 20,000 | 16 |", "| structured | 20,000 | 16 |"):
        assert operator in table, out
    dense_row = next(line for line in table.splitlines() if line.startswith("| dense"))
    assert dense_row.count("%") == 2  # fraction of copy bandwidth, forward and forward+backward


def test_step_overhead_bench_compares_mapped_and_plain_steps(tmp_path):
    out = run("bench/step_overhead.py", "--targets", "cnn2", "--operators", "structured", "--steps", "1", "--out", str(tmp_path / "steps.md"))
    table = (tmp_path / "steps.md").read_text()
    assert "| cnn2 | plain (full training) | 108,618 |" in table and "| cnn2 | mapped, structured | 2,048 |" in table, out
    assert "| 1.00x |" in table


def test_peers_bench_runs_every_method_and_reads_finished_runs_back(tmp_path):
    args = ["bench/peers.py", "--budgets", "512", "--finetune-budgets", "1024", "--seeds", "0", "--epochs", "1", "--max-steps", "2",
            "--max-examples", "256", "--no-sweep", "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "peers.md")]
    run(*args)
    table = (tmp_path / "peers.md").read_text()
    for name in ("full training", "mapscale SLVT + Mapping Loss", "mapscale LWT + Mapping Loss", "random subspace (Li et al.)",
                 "RPG ring (Wang et al.)", "mapscale fine-tune (L=1)", "LoRA (peft)", "VeRA (peft)", "linear probe (head only)"):
        assert f"| {name} |" in table, name
    assert "| RPG ring (Wang et al.) | 512 | 512 |" in table and "| LoRA (peft) | 1,024 | 1,066 |" in table  # rank 1 is LoRA's nearest
    assert "| linear probe (head only) | – | 1,290 |" in table
    assert (tmp_path / "peers.png").stat().st_size > 0
    again = run(*args)
    assert not re.search(r"^  \S+: test ", again, re.M)  # every run finished: read back, none trained again


def test_frontier_bench_tunes_every_method_alike_and_reports_the_reduction_at_parity(tmp_path):
    args = ["bench/frontier.py", "--targets", "cnn2", "--budgets", "512", "2048", "--groupings", "slvt", "--methods", "mapping-sparse",
            "--epochs", "1", "--seeds", "2", "--lr-factors", "1", "--tune-budgets", "1", "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "f.md")]
    out = run(*args)
    assert "4 runs to do" in out  # sweep: one mapping rate at the middle anchor, one full-training rate
    table = (tmp_path / "f.md").read_text()
    assert "| cnn2 | slvt | mapping-sparse |" in table and "## Rate sweep" in table
    assert "| cnn2 | slvt | 512 | mapping-sparse |" in table and "| cnn2 | - | - | full |" in table
    assert (tmp_path / "f.png").stat().st_size > 0
    again = run(*args)
    assert "runs to do" not in again  # every run finished: read back, none trained again


def test_frontier_crossing_interpolates_on_the_log_axis_and_bounds_the_ends():
    sys.path.insert(0, str(ROOT / "bench"))
    from frontier import crossing

    at, kind = crossing([(100, 0.90), (10_000, 0.98)], 0.94, higher=True)
    assert kind == "exact" and at == pytest.approx(1000.0)  # halfway in score: halfway on the log axis
    assert crossing([(100, 0.95), (1000, 0.99)], 0.94, higher=True) == (100.0, "bound")
    assert crossing([(100, 0.90), (1000, 0.92)], 0.94, higher=True) == (None, "never")
    at, kind = crossing([(100, 30.0), (10_000, 10.0)], 20.0, higher=False)  # perplexity: lower is better
    assert kind == "exact" and at == pytest.approx(1000.0)


def test_scarce_bench_tunes_both_methods_alike_per_size_and_says_where_the_curves_cross(tmp_path):
    args = ["bench/scarce.py", "--datasets", "mnist", "--sizes", "100", "200", "--steps", "5", "--seeds", "1", "--lr-factors", "1",
            "--decays", "0", "--shifts", "0", "2", "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "s.md")]
    out = run(*args)
    assert "8 runs to do" in out  # 2 sizes x 2 methods x 2 shifts, one rate each; the finals are seed 0's sweep runs
    table = (tmp_path / "s.md").read_text()
    assert "| mnist | 100 | mapping-sparse | 2,048 |" in table and "| mnist | 200 | full | 108,618 |" in table
    assert "- mnist: 100: " in table and "## Sweep" in table and (tmp_path / "s.png").stat().st_size > 0
    records = [json.loads(line) for line in (tmp_path / "runs" / "runs.jsonl").read_text().splitlines()]
    assert {r["size"] for r in records} == {100, 200} and all("data.train_examples=%d" % r["size"] in r["extra"] for r in records)


def test_frontier_anchor_budgets_fix_the_sweep_when_a_budget_is_added():
    """--anchor-budgets keeps a curve's sweep where it was when a budget is added between (its runs reused);
    without it --tune-budgets spreads the anchors over the new list, and a budget off the curve is refused."""
    import argparse

    sys.path.insert(0, str(ROOT / "bench"))
    from frontier import tune_anchors

    five = [2048, 16384, 65536, 131072, 1048576]
    assert tune_anchors(five, argparse.Namespace(anchor_budgets=[], tune_budgets=3)) == [2048, 65536, 1048576]
    assert tune_anchors(five, argparse.Namespace(anchor_budgets=[1048576, 2048, 131072], tune_budgets=3)) == [2048, 131072, 1048576]
    with pytest.raises(SystemExit, match="names none of"):
        tune_anchors(five, argparse.Namespace(anchor_budgets=[4096], tune_budgets=3))


def test_scarce_crossing_is_interpolated_on_the_log_size_axis():
    sys.path.insert(0, str(ROOT / "bench"))
    from scarce import crossings

    assert crossings([100, 10_000], [2.0, -2.0]).startswith("near 1,000 examples")
    assert "full training ahead at every size" in crossings([100, 1000], [-1.0, -0.5])


def test_finetune_memory_bench_measures_each_method_in_its_own_process(tmp_path):
    out = run("bench/finetune_memory.py", "--layers", "2", "--width", "64", "--steps", "1", "--operators", "sparse", "--methods", "lora",
              "--work", str(tmp_path), "--out", str(tmp_path / "m.md"))
    table = (tmp_path / "m.md").read_text()
    assert "| model-only | 0 |" in table and "| finetune-sparse | 16,384 |" in table, out
    lora = next(line for line in table.splitlines() if line.startswith("| lora |"))
    assert "refused" not in lora and float(lora.split("|")[4].replace(",", "")) > 0  # a peak was measured


def test_finetune_frontier_bench_runs_each_method_once_per_count(tmp_path):
    args = ["bench/finetune_frontier.py", "--budgets", "4096", "16384", "--methods", "finetune", "lora", "--steps", "2", "--pretrain-steps", "2",
            "--seeds", "1", "--rates", "1", "--max-examples", "64", "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "ff.md")]
    out = run(*args)
    assert "3 runs to do" in out  # finetune at both budgets; LoRA's rank 1 is 16,384 on these layers: one run, not two
    table = (tmp_path / "ff.md").read_text()
    assert "| 4096 | finetune | 4,096 |" in table and "| 16384 | lora | 16,384 |" in table and "| 4096 | lora |" not in table
    assert "- 16,384: finetune" in table and "lora" in table.split("- 16,384: finetune")[1]


def test_finetune_frontier_bench_counts_finetune_bias_biases_in_the_budget(tmp_path):
    """finetune-bias trains the 16 tuned layers' 9,216 biases directly: 16,384 in all at a 16,384 budget, and at a
    budget below the biases one latent per block (4) more than them."""
    args = ["bench/finetune_frontier.py", "--budgets", "4096", "16384", "--methods", "finetune-bias", "--steps", "2", "--pretrain-steps", "2",
            "--seeds", "1", "--rates", "1", "--max-examples", "64", "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "ff.md")]
    out = run(*args)
    assert "2 runs to do" in out
    table = (tmp_path / "ff.md").read_text()
    assert "| 16384 | finetune-bias | 16,384 |" in table and "| 4096 | finetune-bias | 9,220 |" in table
    records = {r["key"]: r for r in map(json.loads, (tmp_path / "runs" / "runs.jsonl").read_text().splitlines())}
    assert records["b16384/finetune-bias_lr1_seed0"]["trainable"] == 16_384
    mapping = json.loads((tmp_path / "runs" / "b16384" / "finetune-bias_lr1_seed0" / "recipe.json").read_text())["mapping"]
    assert mapping["budget"] == 16_384 - 9_216 and mapping["trainable_lr"] == 1e-3  # BIAS_LR x the run's rate 1
    assert sorted(mapping["trainable"]) == sorted(["*.attn.c_attn.bias", "*.attn.c_proj.bias", "*.mlp.c_fc.bias", "*.mlp.c_proj.bias"])


def test_large_options_bench_runs_full_training_per_schedule_and_each_option(tmp_path):
    out = run("bench/large_options.py", "--epochs", "1", "--budgets", "2048", "--schedule", "1", "--options", "plain", "direct", "--max-steps", "2",
              "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "o.md"))
    table = (tmp_path / "o.md").read_text()
    assert "| full | - | 11,181,642 | 1.0 | 1 |" in table, out
    assert "| plain | 2048 | 2,048 |" in table and "| direct | 2048 | 26,186 |" in table  # 24,138 direct values counted
