"""Compiled training step (``optim.compile``): the mapped step with the sparse operator, eager and compiled, against
the plain (unmapped) step eager and compiled the same way, side by side in one run; compile time apart.

    python bench/compile_step.py --out bench/results/compile_step.md          # CNN2 SLVT 2,048 and ResNet50 LWT 2,048
    python bench/compile_step.py --targets cnn2 --device cuda

The step is `bench/step_overhead.py`'s (forward, cross-entropy, backward, Adam; CNN2 on 64 x 1 x 28², ResNet50 on
``--resnet-batch`` x 3 x ``--resnet-size``²), each case in its own process. ``compile`` is what is compiled
(`mapscale.train.compiled.compile_model`): ``model``, the mapped forward (generation and target, with its backward);
``generation``, the generation alone; for the plain target, ``model`` is ``torch.compile`` of the target. Step time
is the median of ``--steps`` steps after 2 warm-up steps; compile time is what dynamo and inductor report
(`mapscale.train.compiled.compile_seconds`), cold (inductor's caches off), and the first step's time is shown apart.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from mapscale.train.compiled import compile_model, compile_seconds, graphs_compiled  # noqa: E402
from step_overhead import TARGETS, case_batch, case_model, device_name, timed_steps  # noqa: E402

# (generation, compile scope): plain eager, plain compiled, then the mapped step
CASES = [("plain", "off"), ("plain", "model"), ("sparse", "off"), ("sparse", "generation"), ("sparse", "model")]


def run_case(target_name: str, operator: str, scope: str, steps: int, resnet_batch: int, resnet_size: int, device: str) -> dict:
    model, _ = case_model(target_name, operator, device)
    if scope != "off":
        compile_model(model, scope) if operator != "plain" else model.compile(dynamic=False)
    graphs: list[int] = []
    batch = case_batch(target_name, resnet_batch, resnet_size, device)
    times, loss = timed_steps(model, batch, steps + 2, device, lr=1e-3 if operator == "plain" else 1e-2, after_step=lambda: graphs.append(graphs_compiled()))
    return {"target": target_name, "operator": operator, "scope": scope, "step_s": statistics.median(times[2:]), "first_s": times[0],
            "compile_s": compile_seconds(), "graphs": graphs[-1], "recompiled": graphs[-1] - graphs[0], "loss": loss}


def table(results: list[dict], batch_note: dict[str, str]) -> str:
    header = ["target", "step", "compiled", "batch", "step s", "/ plain eager", "/ plain compiled alike", "first step s", "compile s", "graphs", "recompiles after warm-up"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * 3 + ["---:"] * (len(header) - 3)) + "|"]
    plain = {(r["target"], r["scope"]): r for r in results if r["operator"] == "plain"}
    for r in results:
        eager, alike = plain.get((r["target"], "off")), plain.get((r["target"], "off" if r["scope"] == "off" else "model"))
        lines.append("| " + " | ".join([
            r["target"], "plain" if r["operator"] == "plain" else f"mapped, {r['operator']}", r["scope"], batch_note[r["target"]], f"{r['step_s']:.4f}",
            f"{r['step_s'] / eager['step_s']:.2f}x" if eager else "–", f"{r['step_s'] / alike['step_s']:.2f}x" if alike else "–",
            f"{r['first_s']:.2f}", f"{r['compile_s']:.1f}", str(r["graphs"]), str(r["recompiled"]),
        ]) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", nargs="*", default=list(TARGETS), choices=list(TARGETS))
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--resnet-batch", type=int, default=16)
    parser.add_argument("--resnet-size", type=int, default=112)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--skip", nargs="*", default=[], help="target:operator:scope cases left out")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--case", nargs=3, metavar=("TARGET", "OPERATOR", "SCOPE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(*args.case, args.steps, args.resnet_batch, args.resnet_size, args.device)))
        return
    batch_note = {"resnet50": f"{args.resnet_batch} x 3 x {args.resnet_size}²", "cnn2": "64 x 1 x 28²"}
    results = []
    for target in args.targets:
        for operator, scope in CASES:
            if f"{target}:{operator}:{scope}" in args.skip:
                continue
            done = subprocess.run(
                [sys.executable, __file__, "--case", target, operator, scope, "--steps", str(args.steps), "--resnet-batch", str(args.resnet_batch),
                 "--resnet-size", str(args.resnet_size), "--device", args.device],
                capture_output=True, text=True, check=False, env={**os.environ, "TORCHINDUCTOR_FORCE_DISABLE_CACHES": "1"},  # a cold compile
            )
            if done.returncode:
                raise SystemExit(f"case {target} {operator} {scope} failed:\n{done.stderr[-3000:]}")
            r = json.loads(done.stdout.strip().splitlines()[-1])
            results.append(r)
            print(f"{target:>9} {operator:>6} {scope:>10}: step {r['step_s']:.4f} s, first {r['first_s']:.2f} s, compile {r['compile_s']:.1f} s, "
                  f"{r['graphs']} graphs, {r['recompiled']} recompiles", flush=True)
    text = table(results, batch_note)
    print(text)
    if args.out is not None:
        header = (
            f"# Compiled vs eager training step\n\n`python bench/compile_step.py {' '.join(sys.argv[1:])}` on {device_name(args.device)}, "
            f"torch {torch.__version__}, inductor; median of {args.steps} steps after 2 warm-up steps, each case in its own process. "
            "\"/ plain compiled alike\": against the plain target compiled the same way (eager against eager).\n\n"
        )
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(header + text)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
