"""Mapped training step against the plain training step of the same target, same batch, same run: time and peak
memory ratios, for ResNet50 (LWT, budget 2,048) and CNN2 (SLVT, budget 2,048), per mapping operator.

    python bench/step_overhead.py                                   # both targets (~10 minutes on 2 CPU cores)
    python bench/step_overhead.py --targets cnn2 --operators dense structured --out bench/results/step_overhead.md

A step is forward, cross-entropy, backward and an Adam update of what trains (every weight for the plain
target; the latents for the mapped one), on one fixed random batch (ResNet50: ``--resnet-batch`` images of
3 x ``--resnet-size``²; CNN2: 64 MNIST-shaped images). Each case runs in a fresh subprocess: its peak RSS above
its post-import RSS is its own. Step time is the median of ``--steps`` steps after 2 warm-up steps.
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

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import mapscale  # noqa: E402
from mapscale.mapping.contract import held_bytes  # noqa: E402
from mapscale.mapping.operators import OPERATORS  # noqa: E402
from mapscale.targets import build_target  # noqa: E402

MIB = 2**20
TARGETS = {  # name -> (builder args, grouping, budget)
    "resnet50": (("torchvision:resnet50", {"num_classes": 2}), "lwt", 2048),
    "cnn2": (("cnn2", {}), "slvt", 2048),
}


def rss_mib() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * resource.getpagesize() / MIB


def operator_bytes(model) -> int:
    """Bytes of the mapping operators (each storage once); ``model.fixed_bytes()`` would add ``theta_0`` (these
    cases use ``offset="init"``) and the per-tensor constants."""
    operators = model.generator.operators
    return held_bytes(operators, [t for op in operators for t in [*op.buffers(), *op.parameters()]])


def run_case(target_name: str, operator: str, steps: int, resnet_batch: int, resnet_size: int, device: str = "cpu") -> dict:
    base = rss_mib()
    model, build_s = case_model(target_name, operator, device)
    params = [p for p in model.parameters() if p.requires_grad]
    batch = case_batch(target_name, resnet_batch, resnet_size, device)
    gpu = device.startswith("cuda")
    if gpu:
        torch.cuda.reset_peak_memory_stats()
    times, loss = timed_steps(model, batch, steps + 2, device, lr=1e-3 if operator == "plain" else 1e-2)
    held = operator_bytes(model) / MIB if operator != "plain" else 0.0
    # peak above the start: RSS on the CPU, allocated memory on a GPU
    peak = torch.cuda.max_memory_allocated() / MIB if gpu else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base
    return {"target": target_name, "operator": operator, "step_s": statistics.median(times[2:]), "peak_mib": peak, "mapping_mib": held,
            "trainable": sum(p.numel() for p in params), "build_s": build_s, "loss": loss}


def case_model(target_name: str, operator: str, device: str) -> tuple[torch.nn.Module, float]:
    """The case's target (seed 0), mapped with ``operator`` (LWT or SLVT at its budget, around its init) unless
    ``operator="plain"``, on ``device``; and the seconds the mapping took to build (with the move to ``device``)."""
    (name, args), grouping, budget = TARGETS[target_name]
    torch.manual_seed(0)
    model = build_target(name, args)
    start = time.perf_counter()
    if operator != "plain":
        model = mapscale.map_model(model, grouping, budget, seed=0, operator=operator, offset="init", device=device)
    return model.to(device), time.perf_counter() - start


def case_batch(target_name: str, resnet_batch: int, resnet_size: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The fixed random batch of a case: ResNet50 ``resnet_batch`` x 3 x ``resnet_size``², 2 classes; CNN2 64 MNIST-shaped images, 10 classes."""
    generator = torch.Generator().manual_seed(1)
    if target_name == "resnet50":
        x = torch.randn(resnet_batch, 3, resnet_size, resnet_size, generator=generator)
        y = torch.randint(0, 2, (resnet_batch,), generator=generator)
    else:
        x, y = torch.randn(64, 1, 28, 28, generator=generator), torch.randint(0, 10, (64,), generator=generator)
    return x.to(device), y.to(device)


def timed_steps(model, batch, steps: int, device: str, *, lr: float, after_step=None) -> tuple[list[float], float]:
    """Seconds of each of ``steps`` training steps on ``batch`` (forward, cross-entropy, backward, an Adam update of
    what trains at ``lr``), the device synchronised around each, and the last step's loss; ``after_step()`` runs
    after each, untimed."""
    x, y = batch
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    times = []
    for _ in range(steps):
        sync()
        begin = time.perf_counter()
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        sync()
        times.append(time.perf_counter() - begin)
        if after_step is not None:
            after_step()
    return times, loss.item()


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return f"{torch.get_num_threads()} CPU threads"


def table(results: list[dict], batch_note: dict[str, str]) -> str:
    header = ["target", "generation", "trainable", "batch", "mapping MiB", "step s", "step time / plain", "peak MiB", "peak memory / plain", "build s"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * (len(header) - 2)) + "|"]
    plain = {r["target"]: r for r in results if r["operator"] == "plain"}
    for r in results:
        ref = plain.get(r["target"])
        lines.append("| " + " | ".join([
            r["target"], "plain (full training)" if r["operator"] == "plain" else f"mapped, {r['operator']}", f"{r['trainable']:,}", batch_note[r["target"]],
            f"{r['mapping_mib']:,.1f}", f"{r['step_s']:.3f}", f"{r['step_s'] / ref['step_s']:.2f}x" if ref else "–",
            f"{r['peak_mib']:,.0f}", f"{r['peak_mib'] / ref['peak_mib']:.2f}x" if ref else "–", f"{r['build_s']:.1f}",
        ]) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", nargs="*", default=list(TARGETS), choices=list(TARGETS))
    parser.add_argument("--operators", nargs="*", default=list(OPERATORS), choices=list(OPERATORS))
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--resnet-batch", type=int, default=16)
    parser.add_argument("--resnet-size", type=int, default=112)
    parser.add_argument("--skip", nargs="*", default=["resnet50:seeded"], help="target:operator cases left out (seeded ResNet50 draws 1.7e9 integers per pass)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (GPU peak memory: torch.cuda.max_memory_allocated)")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--case", nargs=2, metavar=("TARGET", "OPERATOR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case[0], args.case[1], args.steps, args.resnet_batch, args.resnet_size, args.device)))
        return
    batch_note = {"resnet50": f"{args.resnet_batch} x 3 x {args.resnet_size}²", "cnn2": "64 x 1 x 28²"}
    results = []
    for target in args.targets:
        for operator in ["plain", *args.operators]:
            if f"{target}:{operator}" in args.skip:
                continue
            done = subprocess.run(
                [sys.executable, __file__, "--case", target, operator, "--steps", str(args.steps),
                 "--resnet-batch", str(args.resnet_batch), "--resnet-size", str(args.resnet_size), "--device", args.device],
                capture_output=True, text=True, check=False,
            )
            if done.returncode:
                raise SystemExit(f"case {target} {operator} failed:\n{done.stderr[-2000:]}")
            results.append(json.loads(done.stdout.strip().splitlines()[-1]))
            r = results[-1]
            print(f"{target:>9} {operator:>10}: step {r['step_s']:.3f} s, peak {r['peak_mib']:,.0f} MiB, mapping {r['mapping_mib']:,.1f} MiB, build {r['build_s']:.1f} s", flush=True)
    text = table(results, batch_note)
    print(text)
    if args.out is not None:
        header = (
            f"# Mapped vs plain training step\n\n`python bench/step_overhead.py {' '.join(sys.argv[1:])}` on {device_name(args.device)}, "
            f"torch {torch.__version__}; median of {args.steps} steps after 2 warm-up steps, each case in its own process.\n\n"
        )
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(header + text)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
