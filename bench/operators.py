"""Mapping operators side by side: generation forward+backward time and memory over a (P, d) sweep, and the dense
operator's achieved bandwidth as a fraction of this machine's tensor-copy bandwidth, measured in the same run.

    python bench/operators.py                                   # P = 1e5 .. 25e6 at d = 64 (~10 minutes on 2 cores)
    python bench/operators.py --sizes 100000 1000000 --dims 256 --out bench/results/operators.md

Each (operator, P, d) case runs in a fresh subprocess, so its peak resident memory is its own: "peak MiB" is
the peak RSS above the process's RSS right after imports, for building the operator and `--repeats`
forward+backward passes of ``c -> Wᵀ c`` with ``loss = (Wᵀ c) · g``. "held MiB" is what the operator keeps
between steps (its buffers). Dense cases whose matrix exceeds ``--max-dense-gib`` are skipped.

Bandwidth: the dense forward reads ``W`` once (``d P 4`` bytes) and so does its backward (``W g``); a copy of
the same bytes reads and writes them. Copy bandwidth is (read + written bytes) / time of ``dst.copy_(src)``;
dense bandwidth is bytes of ``W`` read / time, for the forward and for forward+backward.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mapscale.mapping.operators import OPERATORS, mapping_key  # noqa: E402

MIB = 2**20


def rss_mib() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * resource.getpagesize() / MIB


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def run_case(operator: str, num_outputs: int, latent_dim: int, repeats: int) -> dict:
    """One case in this process (called in a fresh subprocess)."""
    torch.manual_seed(0)
    base = rss_mib()
    start = time.perf_counter()
    op = OPERATORS[operator](latent_dim, num_outputs, mapping_key(0, "bench"))
    build_s = time.perf_counter() - start
    held = sum(t.numel() * t.element_size() for t in op.buffers()) / MIB
    c = torch.randn(latent_dim, requires_grad=True)
    g = torch.randn(num_outputs)

    def forward():
        with torch.no_grad():
            op(c)

    def forward_backward():
        (op(c) @ g).backward()

    forward_backward()  # warm up
    fwd = best_of(forward, repeats)
    fwd_bwd = best_of(forward_backward, repeats)
    result = {"operator": operator, "P": num_outputs, "d": latent_dim, "build_s": build_s, "forward_s": fwd, "fwd_bwd_s": fwd_bwd, "held_mib": held, "peak_mib": peak_mib() - base}
    if operator == "dense":
        nbytes = latent_dim * num_outputs * 4
        src = torch.ones(nbytes // 4)
        dst = torch.empty_like(src)
        copy_s = best_of(lambda: dst.copy_(src), repeats)
        result.update({"copy_gbs": 2 * nbytes / copy_s / 1e9, "dense_fwd_gbs": nbytes / fwd / 1e9, "dense_fwd_bwd_gbs": 2 * nbytes / fwd_bwd / 1e9})
    return result


def table(results: list[dict]) -> str:
    header = ["operator", "P", "d", "held MiB", "peak MiB", "build s", "forward s", "fwd+bwd s", "fwd+bwd vs dense", "dense GB/s fwd (fwd+bwd)", "copy GB/s", "dense / copy fwd (fwd+bwd)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    dense = {(r["P"], r["d"]): r for r in results if r["operator"] == "dense"}
    for r in results:
        ref = dense.get((r["P"], r["d"]))
        vs = f"{r['fwd_bwd_s'] / ref['fwd_bwd_s']:.2f}x" if ref else "–"
        bw = f"{r['dense_fwd_gbs']:.2f} ({r['dense_fwd_bwd_gbs']:.2f})" if "copy_gbs" in r else ""
        copy = f"{r['copy_gbs']:.2f}" if "copy_gbs" in r else ""
        frac = f"{r['dense_fwd_gbs'] / r['copy_gbs']:.0%} ({r['dense_fwd_bwd_gbs'] / r['copy_gbs']:.0%})" if "copy_gbs" in r else ""
        lines.append("| " + " | ".join([
            r["operator"], f"{r['P']:,}", str(r["d"]), f"{r['held_mib']:,.2f}", f"{r['peak_mib']:,.1f}", f"{r['build_s']:.2f}",
            f"{r['forward_s']:.4f}", f"{r['fwd_bwd_s']:.4f}", vs, bw, copy, frac,
        ]) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[100_000, 1_000_000, 5_000_000, 25_000_000])
    parser.add_argument("--dims", type=int, nargs="*", default=[64])
    parser.add_argument("--operators", nargs="*", default=list(OPERATORS), choices=list(OPERATORS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-dense-gib", type=float, default=8.0)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--case", nargs=3, metavar=("OPERATOR", "P", "D"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        operator, num_outputs, latent_dim = args.case[0], int(args.case[1]), int(args.case[2])
        print(json.dumps(run_case(operator, num_outputs, latent_dim, args.repeats)))
        return

    results = []
    for latent_dim in args.dims:
        for num_outputs in args.sizes:
            for operator in args.operators:
                if operator == "dense" and latent_dim * num_outputs * 4 > args.max_dense_gib * 2**30:
                    print(f"skip dense P={num_outputs:,} d={latent_dim}: {latent_dim * num_outputs * 4 / 2**30:.1f} GiB > --max-dense-gib")
                    continue
                repeats = 1 if operator == "seeded" and latent_dim * num_outputs > 2e8 else args.repeats  # seeded redraws d*P integers per pass
                done = subprocess.run(
                    [sys.executable, __file__, "--case", operator, str(num_outputs), str(latent_dim), "--repeats", str(repeats)],
                    capture_output=True, text=True, check=False,
                )
                if done.returncode:
                    raise SystemExit(f"case {operator} P={num_outputs} d={latent_dim} failed:\n{done.stderr[-2000:]}")
                results.append(json.loads(done.stdout.strip().splitlines()[-1]))
                r = results[-1]
                print(f"{operator:>10} P={num_outputs:>11,} d={latent_dim}: fwd+bwd {r['fwd_bwd_s']:.4f} s, held {r['held_mib']:.2f} MiB, peak {r['peak_mib']:.1f} MiB", flush=True)
    text = table(results)
    print(text)
    if args.out is not None:
        header = (
            f"# Mapping operators\n\n`python bench/operators.py {' '.join(sys.argv[1:])}` on {torch.get_num_threads()} CPU threads, torch {torch.__version__}. "
            "Best of the repeats; peak MiB is the case's own process's peak RSS above its post-import RSS.\n\n"
        )
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(header + text)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
