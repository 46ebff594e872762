"""Scale without the traffic (issue 27): bytes per rank per step and step time of each ``distributed.generation``
mode on 2 gloo ranks, against DDP full training of the same target, and a latency-bandwidth projection to
N = 8 ... 1,024 ranks.

    python bench/scale.py --out bench/results/scale.md          # ResNet50 and GPT-2 small: ~15 minutes on 2 cores
    python bench/scale.py --targets cnn2 --steps 2              # CNN2 LWT 256 on MNIST-sized input: a minute

**Measured (2 local ranks, gloo, one thread each, fresh processes per configuration).** Targets: ResNet50 LWT
2,048 (`recipes/resnet50_deepfake.py`, 64 x 64 inputs, global batch 8) and GPT-2 small ``blocks`` 4,096
(`recipes/gpt2_small_lwt.py`, window 128, global batch 8; sharding units the 12 blocks, the tied embeddings and
the final norm in the rest unit), each with the recipe's sparse operator. Modes:
``local``, ``local`` per-unit (``distributed.gather=per-unit``), the same with ``mapping.offset=seeded``
(theta_0 redrawn from the seed, not stored), ``sharded`` and ``sharded`` per-unit, each
built and stepped by the trainer (`mapscale.train.prepare`, `mapscale.train.train_step`: task loss, SGD
without momentum, constant rate, fp32, one micro-batch); and full training of the bare target under
`torch.nn.parallel.DistributedDataParallel` (SGD; ``broadcast_buffers=False``, so its only communication is
the gradient all-reduce), whose bytes a DDP communication hook adds to the same counter
(`mapscale.distributed.traffic.Traffic`, ring bytes) that mapscale's collectives use. ResNet50's BatchNorm
runs in train mode (each rank normalises over its share, as ``mapscale train`` does). The input batch is
synthetic for images (fixed seed) and the recipe's first training windows for text.

Each configuration: one warm-up step, then ``--steps`` timed steps (between barriers), the counter reset after
the warm-up; then generation alone (``model.generated_tensors()`` under no grad: this rank's share and, under
sharded, the all-gather) timed as many times; then one untimed forward and backward with every generated unit
tensor tracked (`mapscale.distributed.sharded.track_gathered_units`: a weak reference per unit) for the peak
bytes of generated weights alive at once. Under whole-model local generation the peak is the generated
tensors' storage, counted the same way from the tensors.

**Projection.** For N ranks at the same per-rank batch (weak scaling) a step takes compute(N) + comm(N), no
overlap of the two (an upper bound on the step time):

- comm: each collective as a ring: an all-reduce of S bytes takes 2(N-1) alpha + 2(N-1)/N S / beta (or, where
  less, as a tree: 2 ceil(log2 N) alpha + 2 S / beta, which NCCL picks for small payloads), an all-gather or
  reduce-scatter (N-1) alpha + (N-1)/N S / beta; the byte counts are the counter's at
  N = 2 rescaled to N by the ring factor; the collective counts are one all-reduce of the trainable
  gradients (mapscale), one all-gather and one reduce-scatter per unit (sharded; two all-gathers per module
  unit per-unit), DDP's 25 MB buckets, and FSDP with one unit per block (all-gather in forward, again in
  backward, reduce-scatter).
- compute: measured here on one CPU thread. Local modes do the whole generation on every rank at any N:
  their measured step. Sharded modes generate 1/N of it: the local step minus (1 - 1/N) of the generation
  work, taken as twice the measured generation (its forward and its backward; three times per-unit, which
  regenerates in backward). DDP and FSDP compute: the bare target's step measured on the same rank.
- efficiency: the one-device step of the same method (local's step; the bare target's for DDP and FSDP)
  over the step at N. Sharded can exceed 1: its share of the generation falls with N.

Links (bandwidth beta per direction, latency alpha per ring hop, assumed): NVLink 900 GB/s, 3 us;
InfiniBand 400 Gb/s (50 GB/s), 5 us; 25 GbE (3.125 GB/s), 20 us; 1 Gb/s (0.125 GB/s), 50 us. CPU compute
times make every step long next to a GPU's; the projection also prints each mode's communication time alone,
which does not depend on the device, and the efficiency with compute 100 times faster than measured here
(a stand-in for a GPU, an assumption: no GPU was measured). The 7B LLaMA-shaped target (``hf:llama`` with the
7B config fields, ``blocks`` 4,096) is built on the meta device: its bytes are exact from its shapes, its
compute and generation times are GPT-2 small's scaled by the parameter count (an extrapolation).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import socket
import sys
import time
import warnings
from datetime import datetime
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from rich.console import Console
from rich.table import Table

from mapscale.distributed.plan import REST_UNIT, ShardPlan
from mapscale.distributed.traffic import Traffic, byte_size, ring_bytes
from mapscale.distributed.world import World
from mapscale.recipe import Recipe, load_recipe
from mapscale.train import build_model, prepare, train_step

ROOT = Path(__file__).resolve().parents[1]
LLAMA_7B = {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32, "vocab_size": 32000}
TARGETS = {
    "resnet50": ("recipes/resnet50_deepfake.py", [], 64),
    "gpt2": ("recipes/gpt2_small_lwt.py", [f"distributed.units={json.dumps([f'h.{i}' for i in range(12)])}"], None),  # embeddings, ln_f: the rest unit
    "cnn2": ("recipes/mnist_cnn2.py", ["mapping.grouping=lwt", "mapping.budget=256", "distributed.units=[\"0\",\"3\",\"7\",\"9\"]"], 28),
}
MODES = {  # label: (distributed.generation, distributed.gather, other overrides)
    "local": ("local", "whole", []),
    "local per-unit": ("local", "per-unit", []),
    "local per-unit seeded": ("local", "per-unit", ["mapping.offset=seeded"]),  # theta_0 redrawn, not stored
    "sharded": ("sharded", "whole", []),
    "sharded per-unit": ("sharded", "per-unit", []),
}
LINKS = {"NVLink": (900e9, 3e-6), "InfiniBand 400G": (50e9, 5e-6), "25 GbE": (3.125e9, 20e-6), "1 GbE": (0.125e9, 50e-6)}
RANKS = (8, 64, 1024)  # in the tables
PLOT_RANKS = tuple(2**k for k in range(3, 11))  # 8 ... 1,024, in the plot
BUCKET = 25 * 2**20  # DDP's default bucket_cap_mb
GPU_SPEEDUP = 100.0


def bench_recipe(path: str, overrides: list[str], batch: int, generation: str, gather: str) -> Recipe:
    """The recipe as measured (module docstring): task loss, SGD, constant, fp32, one micro-batch; images from
    the shipped MNIST subset as the data `prepare` loads (the steps take a synthetic batch)."""
    recipe = load_recipe(ROOT / path, overrides)
    data = recipe.model_dump(mode="json")
    data["loss"] = {}
    data["optim"] = {**data["optim"], "optimizer": "sgd", "momentum": 0.0, "weight_decay": 0.0, "schedule": "constant", "grad_clip": None,
                     "batch_size": batch, "accumulation_steps": 1, "max_steps": None, "precision": "fp32"}
    if recipe.task == "classification":
        data["data"] = {"name": "shipped_mnist", "max_examples": batch}
    data["distributed"] = {**data["distributed"], "deepspeed": None, "generation": generation, "gather": gather}
    return Recipe.model_validate(data)


def rank_batch(run, batch: int, image_size: int | None, world: World):
    """This rank's share of the global batch: synthetic images (fixed seed) or the first training windows."""
    if image_size is None:
        inputs, targets = next(iter(torch.utils.data.DataLoader(run.data.train, batch_size=batch)))
    else:  # the target's own input channels and classes: its first convolution's and last linear layer's
        target = run.model.target
        channels = next(m for m in target.modules() if isinstance(m, torch.nn.Conv2d)).in_channels
        classes = [m for m in target.modules() if isinstance(m, torch.nn.Linear)][-1].out_features
        generator = torch.Generator().manual_seed(0)
        inputs = torch.randn(batch, channels, image_size, image_size, generator=generator)  # (B, C, H, W)
        targets = torch.randint(classes, (batch,), generator=generator)  # (B,)
    share = torch.tensor_split(torch.arange(batch), world.size)[world.rank]
    return inputs[share], targets[share]


def timed(world: World, fn, repeats: int) -> float:
    """Mean seconds of ``fn()`` between barriers, after one warm-up call."""
    seconds = []
    for _ in range(1 + repeats):
        world.barrier()
        start = time.perf_counter()
        fn()
        world.barrier()
        seconds.append(time.perf_counter() - start)
    return sum(seconds[1:]) / repeats


def tracked_peak(run, inputs, targets) -> int:
    """Peak bytes of generated weights alive at once in one forward and backward, counted from the tensors: each
    gathered unit (a weak reference drops it from the count when freed) or, without units, the generated dict."""
    from mapscale.distributed.sharded import track_gathered_units

    model = run.model
    if model.sharding is None:
        tensors = model.generated_tensors()
        return sum({t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors.values()}.values())
    with track_gathered_units() as generated:
        run.loss_fn(model(inputs), targets).total.backward()
    return generated.peak


def mapped_rank(recipe: Recipe, batch: int, image_size: int | None, steps: int) -> dict:
    world = World.from_env("cpu")
    run = prepare(recipe, world, "cpu")
    inputs, targets = rank_batch(run, batch, image_size, world)
    step = [0]

    def one_step():
        train_step(run, [(inputs, targets)], batch, step[0])
        step[0] += 1

    one_step()  # warm-up, uncounted
    world.traffic.reset()
    step_s = timed(world, one_step, steps)
    traffic = world.traffic.per_step()  # over every step since the reset (timed's own warm-up too)
    with torch.no_grad():
        generate_s = timed(world, run.model.generated_tensors, steps)
    with world.traffic.as_control():
        peak = tracked_peak(run, inputs, targets)
    return {"rank": world.rank, "step_s": step_s, "generate_s": generate_s, "traffic": traffic, "peak_generated": peak,
            "fixed_bytes": run.model.fixed_bytes(), "trainable": sum(p.numel() for p in run.params), "generation": run.generation,
            "params": run.model.num_target_params()}


def ddp_rank(recipe: Recipe, batch: int, image_size: int | None, steps: int) -> dict:
    """Full training of the bare target under DDP, its gradient buckets counted by a communication hook; and the
    same step without DDP (no communication) on the same rank: the compute that DDP and FSDP share."""
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
    from torch.nn.parallel import DistributedDataParallel

    world = World.from_env("cpu")
    full = Recipe.model_validate({**recipe.model_dump(mode="json"), "mapping": {"method": "full"}})
    run = prepare(full, world, "cpu")
    inputs, targets = rank_batch(run, batch, image_size, world)
    optimizer = torch.optim.SGD([p for p in run.model.parameters() if p.requires_grad], lr=1e-3)
    traffic = Traffic()

    def plain():
        run.loss_fn(run.model(inputs), targets).total.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    plain_s = timed(world, plain, steps)
    with warnings.catch_warnings():  # broadcast_buffers=False: no buffer sync at init or forward (its replacement syncs at init)
        warnings.simplefilter("ignore", FutureWarning)
        model = DistributedDataParallel(run.model, broadcast_buffers=False)

    def hook(state, bucket):
        buffer = bucket.buffer()
        traffic.add("all_reduce", buffer.numel() * buffer.element_size(), world.size)
        return default_hooks.allreduce_hook(None, bucket)

    model.register_comm_hook(None, hook)

    def one_step():
        run.loss_fn(model(inputs), targets).total.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        traffic.end_step()

    step_s = timed(world, one_step, steps)
    return {"rank": world.rank, "step_s": step_s, "plain_s": plain_s, "traffic": traffic.per_step(), "params": run.model.num_target_params(),
            "buckets": math.ceil(run.model.num_target_params() * 4 / BUCKET)}


def _rank_process(rank: int, world_size: int, port: int, kind: str, recipe: dict, args: tuple, results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_WORLD_SIZE=str(world_size))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        results[rank] = (ddp_rank if kind == "ddp" else mapped_rank)(Recipe.model_validate(recipe), *args)
    finally:
        dist.destroy_process_group()


def run_world(kind: str, recipe: Recipe, batch: int, image_size: int | None, steps: int, world_size: int = 2) -> list[dict]:
    """``kind`` (``mapped`` or ``ddp``) on ``world_size`` fresh local processes (gloo), one thread each."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_rank_process, args=(world_size, port, kind, recipe.model_dump(mode="json"), (batch, image_size, steps), results), nprocs=world_size, join=True)
        return [results[r] for r in range(world_size)]


def plan_of(recipe: Recipe, world_size: int) -> ShardPlan:
    return ShardPlan.from_layout(build_model(recipe, "meta").layout, world_size, recipe.distributed.units or None)


def collective_time(kind: str, payload: float, calls: int, n: int, link: tuple[float, float]) -> float:
    """Seconds of ``calls`` ring collectives of ``kind`` moving ``payload`` bytes in all over ``n`` ranks."""
    beta, alpha = link
    hops = (2 if kind == "all_reduce" else 1) * (n - 1)
    ring = calls * hops * alpha + ring_bytes(kind, payload, n) / beta
    if kind != "all_reduce":
        return ring
    tree = calls * 2 * math.ceil(math.log2(n)) * alpha + 2 * payload / beta  # reduce up a tree, broadcast down (pipelined)
    return min(ring, tree)  # NCCL picks the tree for small payloads, the ring for large ones


def projection(name: str, measured: dict, plan: ShardPlan, element: int = 4) -> list[dict]:
    """Step time (compute + comm) and efficiency per mode, link and N (module docstring)."""
    P, T = measured["params"], measured["trainable"]
    units = list(plan.units)
    modules = [u for u in units if u.name != REST_UNIT]
    rows = []
    for n in PLOT_RANKS:
        for link_name, link in LINKS.items():
            for speed in (1.0, GPU_SPEEDUP):
                out = {"target": name, "N": n, "link": link_name, "speed": speed}
                for label, m in measured["modes"].items():
                    per_unit = "per-unit" in label
                    allreduce = collective_time("all_reduce", T * element, 1, n, link)
                    if label.startswith("local"):
                        compute, comm = m["step_s"] / speed, allreduce
                        base = m["step_s"] / speed
                    else:
                        gen_work = (3 if per_unit else 2) * m["generate_local_s"]
                        base = m["local_step_s"] / speed
                        compute = (m["local_step_s"] - (1 - 1 / n) * gen_work) / speed
                        gathered = sum(u.padded_rows for u in units) * element
                        again = sum(u.padded_rows for u in modules) * element if per_unit else 0
                        calls = len(units) + (len(modules) if per_unit else 0)
                        comm = allreduce + collective_time("all_gather", gathered + again, calls, n, link) + collective_time("reduce_scatter", gathered, len(units), n, link)
                    out[label] = (compute + comm, base / (compute + comm), comm)
                plain = measured["plain_s"] / speed
                ddp_comm = collective_time("all_reduce", P * element, max(1, math.ceil(P * element / BUCKET)), n, link)
                blocks = max(len(modules), 1)
                fsdp_comm = 2 * collective_time("all_gather", P * element, blocks, n, link) + collective_time("reduce_scatter", P * element, blocks, n, link)
                out["DDP"] = (plain + ddp_comm, plain / (plain + ddp_comm), ddp_comm)
                out["FSDP"] = (plain + fsdp_comm, plain / (plain + fsdp_comm), fsdp_comm)
                rows.append(out)
    return rows


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", nargs="+", default=["resnet50", "gpt2"], choices=list(TARGETS))
    parser.add_argument("--batch", type=int, default=8, help="global batch (split over the 2 ranks)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up")
    parser.add_argument("--out", type=Path, default=None, help="also write markdown (and a plot next to it)")
    parser.add_argument("--no-llama", action="store_true", help="leave the 7B LLaMA-shaped projection out")
    args = parser.parse_args(argv)
    console = Console(width=170, record=True)
    started = time.perf_counter()
    console.print(f"{os.cpu_count()} CPU cores, torch {torch.__version__}; 2 gloo ranks, 1 thread each; global batch {args.batch}, "
                  f"1 warm-up + {args.steps} timed steps; load average {os.getloadavg()[0]:.2f} at the start")
    measured = {}
    for name in args.targets:
        path, overrides, image_size = TARGETS[name]
        modes = {}
        for label, (generation, gather, extra) in MODES.items():
            recipe = bench_recipe(path, [*overrides, *extra], args.batch, generation, gather)
            t = time.perf_counter()
            ranks = run_world("mapped", recipe, args.batch, image_size, args.steps)
            modes[label] = {**ranks[0], "step_s": max(r["step_s"] for r in ranks), "generate_s": max(r["generate_s"] for r in ranks),
                            "peak_generated": max(r["peak_generated"] for r in ranks), "fixed_bytes": max(r["fixed_bytes"] for r in ranks)}
            console.print(f"{name} {label}: {time.perf_counter() - t:.0f} s wall ({ranks[0]['generation']['mode']}: {ranks[0]['generation']['reason']})")
        for label in ("sharded", "sharded per-unit"):  # the projection splits local's generation over N
            local = modes["local per-unit" if "per-unit" in label else "local"]
            modes[label]["local_step_s"], modes[label]["generate_local_s"] = local["step_s"], local["generate_s"]
        t = time.perf_counter()
        ddp = run_world("ddp", bench_recipe(path, overrides, args.batch, "local", "whole"), args.batch, image_size, args.steps)
        console.print(f"{name} DDP: {time.perf_counter() - t:.0f} s wall")
        recipe = bench_recipe(path, overrides, args.batch, "sharded", "whole")
        plan = plan_of(recipe, 2)
        measured[name] = {"modes": modes, "ddp": ddp[0] | {"step_s": max(r["step_s"] for r in ddp)}, "plain_s": max(r["plain_s"] for r in ddp),
                          "params": modes["local"]["params"], "trainable": modes["local"]["trainable"], "recipe": recipe, "plan": plan}
        report_measured(console, name, measured[name])
    projections = []
    for name, m in measured.items():
        projections += projection(name, m, m["plan"])
    if "gpt2" in measured and not args.no_llama:
        projections += llama_projection(console, measured["gpt2"])
    report_projection(console, projections)
    console.print(f"total {time.perf_counter() - started:.0f} s, load average at the end {os.getloadavg()[0]:.2f}")
    if args.out is not None:
        command = " ".join(shlex.quote(a) for a in ["python", "bench/scale.py", *(sys.argv[1:] if argv is None else argv)])
        args.out.parent.mkdir(parents=True, exist_ok=True)
        plot(projections, args.out.with_suffix(".png"))
        args.out.write_text(f"# Scale without the traffic: generation modes against DDP\n\n`{command}`\n\n{datetime.now():%Y-%m-%d %H:%M}, torch "
                            f"{torch.__version__}\n\n![projection]({args.out.with_suffix('.png').name})\n\n```\n{console.export_text()}```\n")
        args.out.with_suffix(".json").write_text(json.dumps({"measured": {k: {**v, "recipe": None, "plan": None} for k, v in measured.items()},
                                                             "projection": projections}, indent=1, default=str) + "\n")
    return measured


def report_measured(console: Console, name: str, m: dict) -> None:
    ddp = m["ddp"]
    table = Table(title=f"{name}: {m['params']:,} target parameters, {m['trainable']:,} trainable; per rank per step, 2 ranks (the counter's bytes)")
    for column in ("run", "all-reduce", "all-gather", "reduce-scatter", "total", "DDP / this", "step s", "generation s", "fixed state", "peak generated"):
        table.add_column(column, justify="left" if column == "run" else "right")
    ddp_total = sum(v for k, v in ddp["traffic"].items() if k in ("all_reduce", "all_gather", "reduce_scatter", "broadcast"))
    largest = max(u.rows for u in ShardPlan.from_layout(build_model(m["recipe"], "meta").layout, 1, m["recipe"].distributed.units or None).units) * 4
    for label, r in m["modes"].items():
        t = r["traffic"]
        total = sum(t[k] for k in ("all_reduce", "all_gather", "reduce_scatter", "broadcast"))
        table.add_row(label, byte_size(t["all_reduce"]), byte_size(t["all_gather"]), byte_size(t["reduce_scatter"]), byte_size(total),
                      f"{ddp_total / total:,.{0 if ddp_total >= 10 * total else 2}f}x", f"{r['step_s']:.3f}", f"{r['generate_s']:.3f}", byte_size(r["fixed_bytes"]), byte_size(r["peak_generated"]))
    table.add_row("DDP full training", byte_size(ddp["traffic"]["all_reduce"]), "0 B", "0 B", byte_size(ddp_total), "1x", f"{ddp['step_s']:.3f}",
                  "-", "-", "-")
    table.add_row("bare target, no DDP", "-", "-", "-", "-", "-", f"{m['plain_s']:.3f}", "-", "-", "-")
    console.print(table)
    local = m["modes"]["local"]["traffic"]
    console.print(f"{name} local: all-reduce {local['all_reduce']:,.0f} B per step = trainable {m['trainable']:,} x 4 x ring factor 1 "
                  f"({m['trainable'] * 4:,} B): {'equal' if local['all_reduce'] == m['trainable'] * 4 else 'DIFFERENT'}; other kinds "
                  f"{local['all_gather'] + local['reduce_scatter'] + local['broadcast']:,.0f} B; control {local['control']:,.0f} B")
    for label in ("sharded", "sharded per-unit"):
        expected = m["plan"].step_bytes(m["trainable"], 4, sharded=True, per_unit="per-unit" in label)
        counted = {k: m["modes"][label]["traffic"][k] for k in expected}
        console.print(f"{name} {label}: counted {', '.join(f'{k} {v:,.0f} B' for k, v in counted.items())}: "
                      f"{'equal to' if counted == expected else 'DIFFERENT from'} the plan's formula (ShardPlan.step_bytes)")
    console.print(f"{name} local per-unit: peak generated {m['modes']['local per-unit']['peak_generated']:,} B against the largest unit "
                  f"{largest:,} B: {m['modes']['local per-unit']['peak_generated'] / largest:.3f}x")


def llama_projection(console: Console, gpt2: dict) -> list[dict]:
    """The 7B LLaMA shape on the meta device: exact bytes; compute and generation scaled from GPT-2 small by P."""
    recipe = bench_recipe("recipes/gpt2_small_lwt.py", ["target.name=hf:llama", f"target.args={json.dumps(LLAMA_7B)}"], 8, "sharded", "whole")
    model = build_model(recipe, "meta")
    P, T = model.num_target_params(), model.num_trainable()
    scale = P / gpt2["params"]
    modes = {}
    for label, r in gpt2["modes"].items():
        modes[label] = {k: (v * scale if k.endswith("_s") else v) for k, v in r.items() if not isinstance(v, dict)}
    console.print(f"llama-7b (meta): {P:,} parameters, {T:,} trainable; compute and generation times are GPT-2 small's x {scale:.1f} (extrapolated)")
    measured = {"modes": modes, "plain_s": gpt2["plain_s"] * scale, "params": P, "trainable": T}
    return projection("llama-7b", measured, ShardPlan.from_layout(model.layout, 2, None))


def report_projection(console: Console, rows: list[dict]) -> None:
    labels = [*MODES, "DDP", "FSDP"]
    for speed in (1.0, GPU_SPEEDUP):
        title = "measured CPU compute" if speed == 1 else f"compute {speed:.0f}x faster than measured (a GPU stand-in, assumed)"
        table = Table(title=f"Projected scaling efficiency (one-device step / step at N), {title}")
        for column in ("target", "N", "link", *labels):
            table.add_column(column, justify="left" if column in ("target", "link") else "right")
        for r in rows:
            if r["speed"] == speed and r["N"] in RANKS:
                table.add_row(r["target"], str(r["N"]), r["link"], *(f"{r[k][1]:.2f}" for k in labels))
        console.print(table)
    table = Table(title="Projected communication seconds per step (device-independent)")
    for column in ("target", "N", "link", *labels):
        table.add_column(column, justify="left" if column in ("target", "link") else "right")
    for r in rows:
        if r["speed"] == 1.0 and r["N"] in RANKS:
            table.add_row(r["target"], str(r["N"]), r["link"], *(f"{r[k][2]:.2e}" for k in labels))
    console.print(table)
    console.print("At N = 64 on 25 GbE: scaling efficiency (step seconds), measured compute / 100x faster compute:")
    for r in rows:
        if r["N"] == 64 and r["link"] == "25 GbE" and r["speed"] == 1.0:
            fast = next(x for x in rows if x["N"] == 64 and x["link"] == "25 GbE" and x["speed"] == GPU_SPEEDUP and x["target"] == r["target"])
            console.print(f"  {r['target']}: " + ", ".join(f"{k} {r[k][1]:.2f} ({r[k][0]:.3g} s) / {fast[k][1]:.2f} ({fast[k][0]:.3g} s)" for k in labels))


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    targets = list(dict.fromkeys(r["target"] for r in rows))
    fig, axes = plt.subplots(1, len(targets), figsize=(5 * len(targets), 4), squeeze=False)
    for ax, target in zip(axes[0], targets, strict=True):
        picked = [r for r in rows if r["target"] == target and r["link"] == "25 GbE" and r["speed"] == GPU_SPEEDUP]
        for label in [*MODES, "DDP", "FSDP"]:
            ax.plot([r["N"] for r in picked], [r[label][1] for r in picked], marker="o", label=label)
        ax.set_xscale("log")
        ax.set_title(f"{target}, 25 GbE, compute {GPU_SPEEDUP:.0f}x CPU")
        ax.set_xlabel("ranks N")
        ax.set_ylabel("scaling efficiency")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
