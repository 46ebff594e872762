"""Fine-tuning memory (issue 29, item 3): the peak resident memory of building and stepping each fine-tuning
method on a 12-layer GPT-2 shape, every method in a fresh process, measured side by side in one invocation.

    python bench/finetune_memory.py --out bench/results/finetune_memory.md              # ~5 minutes on 2 cores
    python bench/finetune_memory.py --layers 2 --width 128 --steps 1 --out /tmp/m.md   # a quick check

The target is Hugging Face's ``GPT2LMHeadModel`` (``hf:gpt2``) at ``--layers`` x ``--width`` (12 x 768 is GPT-2
small's shape; vocabulary ``--vocab``, 128 positions) with random weights saved once as its ``target.weights``
(nothing downloaded). Every method tunes the weights of the blocks' 4 linear layers (`hf_finetune.TUNED`) at
``--budget`` trainable values through the ordinary recipe path (`mapscale.train.build_model`): mapscale's
fine-tune mode (``L = 1``, one latent per block) with each of ``--operators``, peft LoRA and VeRA at the
matched rank, and full fine-tuning. Each process builds the model, then takes ``--steps`` Adam steps on a
``--batch`` x 128 batch of random tokens; it reports the resident set after the build (``build``) and the
process's peak (``ru_maxrss``, ``peak``), with the pretrained model alone (``model only``) as the floor, and the
median step time. A method whose build asks for more than the machine holds is reported as refused.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hf_finetune import TUNED  # noqa: E402  (bench/, this script's folder, is on sys.path)

RECIPE = ROOT / "recipes" / "gpt2_small_lwt.py"


def rss_mb() -> float:
    """This process's resident set now (Linux ``/proc/self/statm``), in MiB."""
    import os

    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def overrides(method: str, args, weights: Path) -> list[str]:
    shape = {"n_layer": args.layers, "n_embd": args.width, "n_head": max(1, args.width // 64), "vocab_size": args.vocab, "n_positions": 128}
    base = ["target.name=hf:gpt2", f"target.args={json.dumps(shape)}", f"target.weights={weights}"]
    tuned = json.dumps(TUNED)
    if method == "full":
        return [*base, "mapping.method=full"]
    if method.startswith("finetune-"):
        return [*base, "mapping.method=finetune", f"mapping.tuned={tuned}", "mapping.grouping=blocks", f"mapping.budget={args.budget}",
                f"mapping.operator={method.split('-', 1)[1]}"]
    return [*base, f"mapping.method={method}", f"mapping.tuned={tuned}", f"mapping.budget={args.budget}"]


def measure(method: str, args, weights: Path) -> dict:
    """In this (fresh) process: build ``method``, step it; memory and time."""
    import torch

    from mapscale.recipe import load_recipe
    from mapscale.train import build_loss, build_model, trainable_parameters

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if method == "model-only":
        from mapscale.targets import build_target

        recipe = load_recipe(RECIPE, overrides("full", args, weights))
        model = build_target(recipe.target.name, recipe.target.args, recipe.target.weights, recipe.task)
        return {"method": method, "build_mb": rss_mb(), "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "trainable": 0, "step_s": None}
    recipe = load_recipe(RECIPE, overrides(method, args, weights))
    started = time.perf_counter()
    try:
        model = build_model(recipe)
    except (RuntimeError, MemoryError) as err:  # e.g. a dense mapping larger than the machine
        return {"method": method, "refused": f"{type(err).__name__}: {str(err).splitlines()[0][:160]}"}
    build_s, build_mb = time.perf_counter() - started, rss_mb()
    loss_fn = build_loss(recipe)
    params = trainable_parameters(model, loss_fn)
    optimizer = torch.optim.Adam(params, lr=1e-4)
    tokens = torch.randint(0, args.vocab, (args.batch, 129), generator=torch.Generator().manual_seed(0))
    times = []
    for step in range(args.steps):
        started = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(tokens[:, :-1]), tokens[:, 1:], model, step=step).total
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - started)
    return {"method": method, "build_mb": build_mb, "build_s": build_s, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "trainable": sum(p.numel() for p in params), "step_s": statistics.median(times), "loss": float(loss)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--width", type=int, default=768)
    parser.add_argument("--vocab", type=int, default=256, help="bytes: the embeddings stay small, the blocks are GPT-2 small's")
    parser.add_argument("--budget", type=int, default=16384)
    parser.add_argument("--operators", nargs="+", default=["sparse", "dense"])
    parser.add_argument("--methods", nargs="+", default=["lora", "vera", "full"])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--timeout", type=int, default=300, help="seconds a method may take to build and step")
    parser.add_argument("--work", default="/tmp/mapscale-finetune-memory")
    parser.add_argument("--measure", help=argparse.SUPPRESS)  # internal: one method in this process
    parser.add_argument("--out")
    args = parser.parse_args()
    work = Path(args.work)
    weights = work / f"gpt2_{args.layers}x{args.width}_v{args.vocab}.pt"
    if args.measure:
        print(json.dumps(measure(args.measure, args, weights)))
        return
    if not args.out:
        parser.error("--out is required")
    if not weights.exists():  # the "pretrained" weights: a seeded random init of the shape, saved once
        import torch

        from mapscale.recipe import load_recipe
        from mapscale.targets import build_target

        work.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(0)
        recipe = load_recipe(RECIPE, overrides("full", args, weights))
        torch.save(build_target(recipe.target.name, recipe.target.args, None, recipe.task).state_dict(), weights)
    rows = []
    for method in ["model-only", *(f"finetune-{o}" for o in args.operators), *args.methods]:
        argv = [sys.executable, __file__, "--measure", method, *sys.argv[1:]]
        argv = [a for i, a in enumerate(argv) if not (a == "--out" or (i and argv[i - 1] == "--out"))]
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=args.timeout)
        except subprocess.TimeoutExpired:  # e.g. a dense mapping's orthonormalisation over millions of columns
            rows.append({"method": method, "refused": f"not done in {args.timeout} s"})
            print(rows[-1], flush=True)
            continue
        if done.returncode:  # killed (out of memory) or failed: a result too
            rows.append({"method": method, "refused": f"exit {done.returncode}: {(done.stderr.strip().splitlines() or [''])[-1][:160]}"})
        else:
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    lines = report(rows, args)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def report(rows: list[dict], args) -> list[str]:
    floor = next(r["peak_mb"] for r in rows if r["method"] == "model-only")
    lines = [
        "# Fine-tuning memory: peak resident memory per method", "",
        f"`python bench/finetune_memory.py {' '.join(sys.argv[1:])}`: GPT-2 {args.layers} x {args.width} (vocabulary {args.vocab}), the blocks' "
        f"linear weights tuned at {args.budget:,} trainable values, {args.steps} Adam steps of {args.batch} x 128 tokens, {args.threads} threads, "
        "one fresh process per method. `build`: resident set after the build; `peak`: the process's maximum; `over the model`: peak minus the "
        "pretrained model's own peak.", "",
        "| method | trainable | build (MiB) | peak (MiB) | over the model (MiB) | step (s) |", "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if "refused" in r:
            lines.append(f"| {r['method']} | - | refused: {r['refused']} | | | |")
            continue
        step = f"{r['step_s']:.2f}" if r.get("step_s") is not None else "-"
        lines.append(f"| {r['method']} | {r['trainable']:,} | {r['build_mb']:,.0f} | {r['peak_mb']:,.0f} | {r['peak_mb'] - floor:,.0f} | {step} |")
    return [*lines, ""]


if __name__ == "__main__":
    main()
