"""The fine-tune frontier (issue 29, item 3): `hf_finetune.py`'s setting at several trainable budgets. The
pretrained GPT-2 4 x 256 tuned on the standard library's docstrings by mapscale's fine-tune mode (sparse
operator, ``L = 1``, one latent per block), peft LoRA and VeRA (rank matched to the budget) and full
fine-tuning, each budget's rates chosen on validation with the same number of rates per method, 3 seeds.
``finetune-bias`` is the fine-tune mode with the tuned layers' 9,216 biases trained directly (BitFit's), counted
in the budget: its latents are the budget less the biases (at a budget below them: one latent per block, reported at its count);
``finetune-gate`` the fine-tune mode's multiplicative form (a gate ``w (1 + alpha o)``).

    python bench/finetune_frontier.py --out bench/results/finetune_frontier.md          # ~40 minutes on 2 cores
    python bench/finetune_frontier.py --budgets 4096 --steps 2 --pretrain-steps 2 --seeds 1 --rates 1 --max-examples 64 --out /tmp/ff.md

**Rates.** Each method gets ``--rates`` rates spaced by sqrt(10) around its centre (``--centres``: the best rate
of each method in `hf_finetune.py`'s 4-rate sweep at 16,384, ``bench/results/hf_finetune.md``), the same count
for every method at every budget; the chosen rate is the best on validation (seed 0), and seeds 0-2 train at it.

**Budgets.** An adapter cannot train fewer values than its rank 1 (LoRA on these 16 layers: 16,384; VeRA:
9,232): a budget below it is run at rank 1 once and reported at its own count, not repeated. VeRA runs up to
``--vera-max-budget`` (16,384, rank 448): its shared random projections are ``rank x width``, so every token of
every tuned layer costs ``2 x rank x width`` more multiply-adds; at 65,536 (rank 3,520) that is about 50 times the
layer's own work here, hours of this 2-core machine for one sweep.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import hf_finetune  # noqa: E402  (bench/, this script's folder, is on sys.path)
from defaults import fmt, run_all, run_log, score  # noqa: E402

CENTRES = {"finetune": 1.0, "finetune-bias": 1.0, "finetune-gate": 1.0, "lora": 1e-2, "vera": 1e-1, "full": 1e-3}


def run_one(job: tuple) -> dict:
    """`hf_finetune.run_one` at the job's budget, in a run folder of its own."""
    method, budget, lr, seed, settings = job
    record = hf_finetune.run_one((method, lr, seed, {**settings, "budget": budget, "runs": str(Path(settings["runs"]) / f"b{budget}")}))
    return {**record, "key": job_key((method, budget, lr, seed)), "budget": budget}


def job_key(job: tuple) -> str:
    method, budget, lr, seed = job
    return f"b{budget}/{method}_lr{lr:g}_seed{seed}"


def rates(method: str, args) -> list[float]:
    centre = args.centres.get(method, CENTRES[method])
    return [float(f"{centre * 10 ** ((k - (args.rates - 1) / 2) / 2):.3g}") for k in range(args.rates)]


def gap(records: list[dict]) -> str:
    """test - train perplexity, or "-" where the training split was not evaluated."""
    pairs = [(r["test"], r["train"]) for r in records if r.get("train") is not None and math.isfinite(r["train"])]
    return fmt([t - tr for t, tr in pairs], 1) if pairs else "-"


def counts(settings: dict, budgets: list[int], methods: list[str]) -> dict[tuple[str, int], int]:
    """``{(method, budget): trainable}`` from one build each (full fine-tuning once, at budget 0)."""
    out = {("full", 0): hf_finetune.trainable_counts({**settings, "budget": 0}, ["full"])["full"]} if "full" in methods else {}
    budgeted = [m for m in methods if m != "full"]
    for budget in budgets if budgeted else []:
        for method, count in hf_finetune.trainable_counts({**settings, "budget": budget}, budgeted).items():
            out[method, budget] = count
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budgets", nargs="+", type=int, default=[2**12, 2**14, 2**16, 2**18])
    parser.add_argument("--methods", nargs="+", default=list(CENTRES), choices=list(CENTRES))
    parser.add_argument("--vera-max-budget", type=int, default=2**14, help="VeRA's largest budget (its cost grows with its rank)")
    parser.add_argument("--rates", type=int, default=3, help="rates per method and budget")
    parser.add_argument("--centres", nargs="*", default=[], help="method=rate overrides of the rate grids' centres")
    parser.add_argument("--pretrain-steps", type=int, default=600)
    parser.add_argument("--steps", type=int, default=100, help="fine-tuning steps")
    parser.add_argument("--max-examples", type=int, help="cap every split (a reduced check, not a result)")
    parser.add_argument("--no-train-eval", action="store_true", help="skip evaluating the training split at the end (no test - train column)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--runs", default="/tmp/mapscale-finetune-frontier")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    args.centres = {k: float(v) for k, v in (item.split("=", 1) for item in args.centres)}
    runs = Path(args.runs)
    runs.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    extra = [f"data.max_examples={args.max_examples}"] if args.max_examples else []
    extra += ["output.eval_train=false"] if args.no_train_eval else []
    folder = hf_finetune.pretrain(runs, args.pretrain_steps, extra)
    settings = {"runs": str(runs), "text": str(hf_finetune.docstrings(runs)), "folder": str(folder), "steps": args.steps, "extra": extra}
    trainable = counts(settings, args.budgets, args.methods)
    # one case per (method, budget) whose trainable count is new: an adapter at rank 1 below its minimum runs once
    # (the budget nearest its count on the log axis keeps it)
    cases = []
    for method in args.methods:
        budgets = [0] if method == "full" else [b for b in args.budgets if method != "vera" or b <= args.vera_max_budget]
        for count in sorted({trainable[method, b] for b in budgets}):
            cases.append((method, min((b for b in budgets if trainable[method, b] == count), key=lambda b: abs(math.log(max(b, 1) / count)))))
    log, done = run_log(runs)
    sweep = [(m, b, lr, 0) for m, b in cases for lr in rates(m, args)]
    run_all(sweep, done, log, settings, args.workers, run_one, job_key)
    best = {(m, b): max(rates(m, args), key=lambda lr: (score(done[job_key((m, b, lr, 0))], "gpt"), -lr)) for m, b in cases}
    seeds = range(args.seeds)
    run_all([(m, b, best[m, b], s) for m, b in cases for s in seeds], done, log, settings, args.workers, run_one, job_key)
    untuned = hf_finetune.evaluate_untuned(settings)

    lines = [
        "# The fine-tune frontier: GPT-2 4 x 256 tuned at several budgets", "",
        f"`python bench/finetune_frontier.py {' '.join(sys.argv[1:])}` ({(time.perf_counter() - started) / 60:.0f} min of this invocation; "
        f"{len(done)} runs in `{runs}/runs.jsonl`). `bench/hf_finetune.py`'s setting: GPT-2 4 x 256 (bytes) pretrained {args.pretrain_steps} "
        f"steps on the standard library's code, tuned {args.steps} steps (batch 16 x 128) on its docstrings, the blocks' 16 linear weights "
        f"tuned. {args.rates} rates per method and budget, sqrt(10) apart around {', '.join(f'{m} {rates(m, args)[args.rates // 2]:g}' for m in args.methods)}; "
        f"the best on validation (seed 0), then seeds 0-{args.seeds - 1}. Perplexity: lower is better. The untuned model: validation "
        f"{untuned['validation']:.2f}, test {untuned['test']:.2f}.", "",
        "| budget | method | trainable | lr | validation | test | test - train | rates: validation (seed 0) |",
        "|---:|---|---:|---:|---:|---:|---:|---|",
    ]
    table = {}
    for m, b in sorted(cases, key=lambda c: (c[1], list(CENTRES).index(c[0]))):
        rs = [done[job_key((m, b, best[m, b], s))] for s in seeds]
        table[m, b] = [r["test"] for r in rs]
        sweep_cells = ", ".join(f"{lr:g}: {fmt([done[job_key((m, b, lr, 0))]['validation']], 1)}" for lr in rates(m, args))
        lines.append(f"| {b or '-'} | {m} | {trainable[m, b]:,} | {best[m, b]:g} | {fmt([r['validation'] for r in rs], 1)} | "
                     f"{fmt([r['test'] for r in rs], 1)} | {gap(rs)} | {sweep_cells} |")
    lines += ["", "## The fine-tune mode against each adapter at the same count (test means; an adapter within a factor sqrt(2))", ""]
    for b in args.budgets:
        for mode in hf_finetune.FINETUNE_MODES:
            if (mode, b) not in table:
                continue
            ours, count = statistics.mean(table[mode, b]), trainable[mode, b]
            peers = [f"{m} {statistics.mean(table[m, b]):.2f} at {trainable[m, b]:,} ({mode} {ours - statistics.mean(table[m, b]):+.2f})"
                     for m in ("lora", "vera") if (m, b) in table and abs(math.log(trainable[m, b] / count)) <= math.log(2) / 2]
            lines.append(f"- {b:,}: {mode} {ours:.2f} at {count:,}; " + ("; ".join(peers) if peers else "no adapter trains within a factor sqrt(2) of this count") + ".")
    lines.append("")
    plot(table, trainable, Path(args.out).with_suffix(".png"))
    lines += [f"![test perplexity against trainable values]({Path(args.out).with_suffix('.png').name})", ""]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def plot(table: dict, trainable: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(5.6, 4.2))
    for method in CENTRES:
        points = sorted((trainable[m, b], table[m, b]) for m, b in table if m == method)
        if not points:
            continue
        means = [statistics.mean(v) for _, v in points]
        spreads = [statistics.pstdev(v) if len(v) > 1 else 0.0 for _, v in points]
        if method == "full":
            axis.axhline(means[0], color="black", label=f"full fine-tuning ({points[0][0]:,})")
            continue
        axis.errorbar([t for t, _ in points], means, spreads, marker="o", capsize=3, label=method)
    axis.set_xscale("log")
    axis.set_xlabel("trainable values")
    axis.set_ylabel("test perplexity")
    axis.set_title("GPT-2 4 x 256 fine-tuned on docstrings")
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
