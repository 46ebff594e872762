"""Fine-tuning a pretrained Hugging Face model (issue 19): mapscale's fine-tune mode against peft's LoRA and VeRA
at matched trainable counts, full fine-tuning and the untuned model for reference.

    python bench/hf_finetune.py --out bench/results/hf_finetune.md        # ~45 minutes on 2 cores

1. **Pretraining.** A GPT-2 (Hugging Face's ``GPT2LMHeadModel``, ``hf:gpt2``) of 4 layers x 256 (bytes, 128
   positions) is trained from scratch, fully, on the first half (2 MB) of `bench/defaults.py`'s corpus (the
   standard library's ``.py`` files, sorted) and exported with ``mapscale export --format hf``: a local
   pretrained folder, nothing downloaded.
2. **Fine-tuning** on text of another kind: the docstrings of the standard library's modules, classes and
   functions (English prose; `docstrings`), next-byte prediction, ``target.name=hf:<that folder>``. Every method
   tunes the same tensors, the weights of the 16 linear (``Conv1D``) layers of the 4 blocks, at the same
   trainable count (``--budget``, 16,384 by default: LoRA rank 1 exactly; VeRA's rank and the fine-tune mode's
   latent size matched to it). Each method's learning rate is chosen on the validation split (seed 0, rates of
   ``--lrs``; full fine-tuning ``--full-lrs``), then 3 seeds at the chosen rate give the test perplexity.

Every run is an ordinary mapscale run, appended to ``<runs>/runs.jsonl`` as it finishes (an interrupted bench
resumes); runs go to ``--workers`` processes of one thread each.
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from defaults import corpus, fmt, run_all, run_log, stdlib_sources  # noqa: E402  (bench/, this script's folder, is on sys.path)

RECIPE = ROOT / "recipes" / "gpt2_small_lwt.py"
GPT = {"n_layer": 4, "n_embd": 256, "n_head": 4, "vocab_size": 256, "n_positions": 128}
TUNED = ["*.attn.c_attn.weight", "*.attn.c_proj.weight", "*.mlp.c_fc.weight", "*.mlp.c_proj.weight"]
METHODS = ("finetune", "lora", "vera", "full")
FINETUNE_MODES = ("finetune", "finetune-bias", "finetune-gate")  # the fine-tune mode and its variants (below)
# Variants of the fine-tune mode measured on the frontier (issue 29): finetune-bias, the tuned layers' biases
# trained directly as BitFit trains them (Ben Zaken et al. 2022), the latents the rest of the budget, the biases'
# rate BIAS_LR x the latents' relative rate so that one swept rate tunes both (at the latents' centre 1: full
# fine-tuning's chosen 1e-3); finetune-gate, the multiplicative form w (1 + alpha o) instead of w + alpha sigma o.
BIASES = [name.replace(".weight", ".bias") for name in TUNED]
TUNED_BIASES = GPT["n_layer"] * 9 * GPT["n_embd"]  # c_attn 3n + attn c_proj n + c_fc 4n + mlp c_proj n per block
BIAS_LR = 1e-3


def docstrings(folder: Path, limit: int = 600_000) -> Path:
    """The docstrings of the standard library's modules, classes and functions (files sorted by path), up to ``limit`` bytes."""
    path = folder / "stdlib_docstrings.txt"
    if not path.exists():
        chunks, size = [], 0
        for file in stdlib_sources():
            if size >= limit:
                break
            try:
                tree = ast.parse(file.read_bytes())
            except (SyntaxError, ValueError):
                continue
            for node in ast.walk(tree):
                if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                    text = ast.get_docstring(node)
                    if text:
                        chunks.append(text.encode() + b"\n\n")
                        size += len(chunks[-1])
        path.write_bytes(b"".join(chunks)[:limit])
    return path


def common(runs: Path, text: Path, name: str) -> list[str]:
    return [
        f"data.path={text}", "data.window=128", "data.test_size=0.1", "data.validation_size=0.1", "data.max_examples=1600",
        "optim.batch_size=16", "optim.epochs=1000", "output.eval_every=0", "output.progress=false", "output.log_every=50",
        f"output.root={runs}", f"output.run_name={name}",
    ]


def pretrain(runs: Path, steps: int, extra: list[str] = ()) -> Path:
    """Train the GPT-2 from scratch on the first half of the corpus and export it; the exported folder (``extra``:
    overrides last, e.g. a reduced check's ``data.max_examples``)."""
    folder = runs / "pretrained-hf"
    if (folder / "model.safetensors").exists():
        return folder
    half, text = runs / "pretrain_corpus.txt", corpus(runs).read_bytes()
    half.write_bytes(text[: len(text) // 2])
    overrides = [*common(runs, half, "pretrain"), "target.name=hf:gpt2", f"target.args={json.dumps(GPT)}", "mapping.method=full",
                 "optim.lr=3e-4", f"optim.max_steps={steps}", "data.max_examples=100000", "output.eval_train=false", *extra]
    for argv in (["train", str(RECIPE), *overrides], ["export", str(runs / "pretrain"), "--format", "hf", "--out", str(folder)]):
        done = subprocess.run([sys.executable, "-m", "mapscale.cli", *argv], capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(done.stdout[-2000:] + done.stderr[-2000:])
    return folder


def method_overrides(method: str, folder: Path, budget: int, lr: float = 1.0) -> list[str]:
    """A method's overrides at a trainable ``budget``; ``lr`` (the run's ``optim.lr``) sets ``finetune-bias``'s
    bias rate."""
    base = [f"target.name=hf:{folder}", "target.args={}"]
    if method == "full":
        return [*base, "mapping.method=full"]
    tuned = json.dumps(TUNED)
    if method in FINETUNE_MODES:
        # the sparse operator: a dense one over these 3.1M elements would hold 16,384 x 3.1M values
        latents = max(budget - TUNED_BIASES, GPT["n_layer"]) if method == "finetune-bias" else budget  # blocks: a latent each at least
        out = [*base, "mapping.method=finetune", f"mapping.tuned={tuned}", "mapping.grouping=blocks", f"mapping.budget={latents}", "mapping.operator=sparse"]
        if method == "finetune-bias":  # BitFit's biases trained directly, counted in the budget, at BIAS_LR x the latents' rate
            out += [f"mapping.trainable={json.dumps(BIASES)}", f"mapping.trainable_lr={BIAS_LR * lr:.3g}"]
        return out + (["mapping.form=multiplicative"] if method == "finetune-gate" else [])
    return [*base, f"mapping.method={method}", f"mapping.tuned={tuned}", f"mapping.budget={budget}"]


def run_name(job: tuple) -> str:
    """The run directory and record key of a ``(method, lr, seed)`` job."""
    method, lr, seed = job
    return f"{method}_lr{lr:g}_seed{seed}"


def run_one(job: tuple) -> dict:
    import torch

    from mapscale.recipe import load_recipe
    from mapscale.train import train, write_run_files

    method, lr, seed, settings = job
    torch.set_num_threads(1)
    runs, name = Path(settings["runs"]), run_name((method, lr, seed))
    overrides = [*common(runs, Path(settings["text"]), name), *method_overrides(method, Path(settings["folder"]), settings["budget"], lr),
                 f"optim.lr={lr}", f"seed={seed}", f"optim.max_steps={settings['steps']}", *settings.get("extra", [])]
    if method != "full":
        overrides.append(f"mapping.seed={seed}")
    recipe = load_recipe(RECIPE, overrides)
    write_run_files(runs / name, recipe, None, overrides)
    started = time.perf_counter()
    try:
        result = train(recipe, runs / name)
        scores = {"validation": result.final_validation.get("perplexity", math.nan), "test": result.final.get("perplexity", math.nan),
                  "train": result.final_train.get("perplexity", math.nan), "trainable": result.trainable}
    except Exception as err:  # a diverged run is a result (NaN), not the end of the bench
        scores = {"validation": math.nan, "test": math.nan, "train": math.nan, "error": f"{type(err).__name__}: {err}"[:300]}
    return {"key": name, "method": method, "lr": lr, "seed": seed, **scores, "seconds": time.perf_counter() - started}


def trainable_counts(settings: dict, methods=METHODS) -> dict[str, int]:
    """Each method's trainable count (the optimiser's), from one build."""
    from mapscale.recipe import load_recipe
    from mapscale.train import build_loss, build_model, trainable_parameters

    counts = {}
    for method in methods:
        recipe = load_recipe(RECIPE, [*common(Path(settings["runs"]), Path(settings["text"]), "count"),
                                      *method_overrides(method, Path(settings["folder"]), settings["budget"])])
        counts[method] = sum(p.numel() for p in trainable_parameters(build_model(recipe), build_loss(recipe)))
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", type=int, default=16384)
    parser.add_argument("--pretrain-steps", type=int, default=600)
    parser.add_argument("--steps", type=int, default=100, help="fine-tuning steps")
    parser.add_argument("--lrs", nargs="+", type=float, default=[1e-3, 1e-2, 1e-1, 1.0])
    parser.add_argument("--full-lrs", nargs="+", type=float, default=[1e-4, 3e-4, 1e-3, 3e-3])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--runs", default="/tmp/mapscale-hf-finetune")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    runs = Path(args.runs)
    runs.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    folder = pretrain(runs, args.pretrain_steps)
    settings = {"runs": str(runs), "text": str(docstrings(runs)), "folder": str(folder), "budget": args.budget, "steps": args.steps}
    log, done = run_log(runs)
    rates = {m: args.full_lrs if m == "full" else args.lrs for m in METHODS}
    run_all([(m, lr, 0) for m in METHODS for lr in rates[m]], done, log, settings, args.workers, run_one, run_name)
    score = lambda r: r["validation"] if r["validation"] is not None and math.isfinite(r["validation"]) else math.inf  # noqa: E731
    best = {m: min(rates[m], key=lambda lr: score(done[run_name((m, lr, 0))])) for m in METHODS}
    seeds = range(args.seeds)
    run_all([(m, best[m], s) for m in METHODS for s in seeds], done, log, settings, args.workers, run_one, run_name)
    counts = trainable_counts(settings)
    untuned = evaluate_untuned(settings)
    lines = [
        "# Fine-tuning a pretrained Hugging Face GPT-2: mapscale's fine-tune mode, LoRA, VeRA", "",
        f"`python bench/hf_finetune.py {' '.join(sys.argv[1:])}` ({(time.perf_counter() - started) / 60:.0f} min of this invocation). "
        f"GPT-2 4 x 256 (`hf:gpt2`, bytes) pretrained {args.pretrain_steps} steps on 2 MB of the standard library's code, then tuned "
        f"{args.steps} steps (batch 16 x 128 bytes) on its docstrings; every method tunes the 16 linear layers' weights of the blocks at "
        f"about {args.budget:,} trainable values. Rates chosen on the validation split (seed 0), perplexity (lower is better), seeds "
        f"0-{args.seeds - 1} at the chosen rate.", "",
        "## Rate sweep (validation perplexity, seed 0)", "",
        "| method | " + " | ".join(f"lr {lr:g}" for lr in args.lrs) + " |", "|---|" + "---:|" * len(args.lrs),
    ]
    for m in METHODS:
        cells = [fmt([done[run_name((m, lr, 0))]["validation"]], 1) + (" *" if lr == best[m] else "") for lr in rates[m]]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    lines += ["", f"Full fine-tuning's rates, in the same columns: {', '.join(f'{lr:g}' for lr in args.full_lrs)}.", "",
              "## At the chosen rate", "", "| method | lr | trainable | validation | test | test - train |", "|---|---:|---:|---:|---:|---:|",
              f"| untuned (the pretrained model) | - | 0 | {untuned['validation']:.2f} | {untuned['test']:.2f} | - |"]
    for m in METHODS:
        rs = [done[run_name((m, best[m], s))] for s in seeds]
        lines.append(f"| {m} | {best[m]:g} | {counts[m]:,} | {fmt([r['validation'] for r in rs], 1)} | {fmt([r['test'] for r in rs], 1)} | "
                     f"{fmt([r['test'] - r['train'] for r in rs], 1)} |")
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def evaluate_untuned(settings: dict) -> dict[str, float]:
    """The pretrained model's perplexity on the tuning text's validation and test splits (no step taken)."""
    import torch

    from mapscale.distributed.world import World
    from mapscale.recipe import load_recipe
    from mapscale.train import prepare
    from mapscale.train.evaluate import evaluate

    recipe = load_recipe(RECIPE, [*common(Path(settings["runs"]), Path(settings["text"]), "untuned"), *method_overrides("full", Path(settings["folder"]), 0),
                                  *settings.get("extra", [])])
    run = prepare(recipe, World(), "cpu")
    with torch.no_grad():
        return {split: evaluate(run.model, getattr(run.data, split), recipe, run.data.num_classes, "cpu")["perplexity"] for split in ("validation", "test")}


if __name__ == "__main__":
    main()
