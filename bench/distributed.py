"""Sharded mapping on 1 and 2 local ranks: mapping bytes, peak memory and step time per rank, measured.

    python bench/distributed.py                      # ResNet50 LWT 2048: 2.5 minutes, 8 GiB peak on 2 CPU cores
    python bench/distributed.py --out bench/results/distributed_resnet50.md
    python bench/distributed.py --quick              # CNN2 LWT 256 on MNIST-sized input, seconds (the test)

Each world size runs in fresh processes (gloo on CPU), so each peak RSS is that world's alone: N = 1 is one
process holding the whole mapping, N = 2 two ranks holding their shards (`ShardPlan` with the recipe's
``distributed.units``). Every rank builds the run with the trainer's `mapscale.train.prepare` and steps it with
the trainer's `mapscale.train.train_step` on its contiguous share of the same synthetic global batch (fixed
seed): the task loss weighted by the share, backward through the gather, the latent gradients averaged over
ranks (`TorchStep`). The bench sets the recipe's loss to the task loss alone (it measures the mapping, not the
extra terms) and its optimiser to SGD without momentum at the recipe's rate, constant, fp32, the global batch
in one micro-batch; its data section becomes the shipped MNIST subset (a few examples), which `prepare` loads
and the bench never reads (the steps take the synthetic batch). Each rank loads that data once before its first
RSS reading, so the build's RSS figures are the model's (the data and its libraries sit in "RSS before build").
One warm-up step, then timed steps. The 2 ranks get one core each; the single process steps on every core, then
again from the same initial latents on one thread: a rank's summation order, the reference its losses must
match (a thread count alone changes ResNet50's first gradient by ~1e-3, see the output).

Timing: whole steps (`train_step` between two barriers); generation (this rank's rows, then the all-gather of
every unit: ``model.generated_tensors()``) is timed apart, as many times, after each series of steps. The
phases inside a step (forward, backward, update) are not timed separately: that needs a loop of the bench's own
around the model instead of the library's step. "rest of the step" is the step minus the separate generation.

BatchNorm runs in eval mode (running statistics; its layers are held there when `train_step` puts the model in
train mode) so that the global batch's loss does not depend on how it is split: then the losses of N = 1 and
N = 2 agree step by step, a check that the sharded forward and backward give the single-process update
(invariant 4). The "train-mode BatchNorm" line shows how far apart they are in
train mode, where each rank normalises over its own share (no SyncBatchNorm), as `mapscale train` does.

N = 8 and 64 are the plan's figures for a model built on the meta device (nothing allocated).
"""

from __future__ import annotations

import argparse
import os
import resource
import shlex
import socket
import sys
import time
import types
from datetime import datetime
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from rich.console import Console
from rich.table import Table
from torch import nn

from mapscale.data import build_datasets
from mapscale.distributed.plan import ShardPlan
from mapscale.distributed.world import World
from mapscale.mapping.contract import held_bytes
from mapscale.recipe import Recipe, load_recipe
from mapscale.train import build_model, prepare, train_step

ROOT = Path(__file__).resolve().parents[1]
GIB = 2**30
MEASURED = (1, 2)  # world sizes run on this machine
PLANNED = (8, 64)  # world sizes from the plan only


def peak_rss_bytes() -> int:
    """This process's peak resident set so far (``ru_maxrss`` is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def operator_bytes(model) -> int:
    """Bytes of the mapping operators this process holds (each storage once): what the plan's ``mapping_numel``
    counts. Not ``model.fixed_bytes()``, which adds the per-group constants every rank holds in full."""
    operators = model.generator.operators
    return held_bytes(operators, [t for op in operators for t in [*op.buffers(), *op.parameters()]])


def input_shape(target: nn.Module, image_size: int) -> tuple[int, int]:
    """``(channels, classes)`` of an image classifier: the first conv's inputs and the last linear's outputs."""
    convs = [m for m in target.modules() if isinstance(m, nn.Conv2d)]
    linears = [m for m in target.modules() if isinstance(m, nn.Linear)]
    if not convs or not linears:
        raise ValueError(f"{type(target).__name__} is not a conv classifier: the bench feeds it {image_size}x{image_size} images")
    return convs[0].in_channels, linears[-1].out_features


def global_batch(channels: int, classes: int, batch: int, image_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The synthetic global batch, the same on every rank."""
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(batch, channels, image_size, image_size, generator=generator)  # (B, C, H, W)
    targets = torch.randint(classes, (batch,), generator=generator)  # (B,)
    return inputs, targets


def bench_recipe(recipe: Recipe, batch: int) -> Recipe:
    """``recipe`` as the bench runs it (module docstring): task loss alone; SGD without momentum at the recipe's
    rate, constant, fp32, no clipping, the global batch of ``batch`` in one micro-batch, no DeepSpeed, sharded
    generation (``distributed.generation='auto'`` would pick local where the mapping fits); the shipped
    MNIST subset as the data `prepare` loads (the steps take the synthetic batch instead); the dense operator."""
    data = recipe.model_dump(mode="json")
    data["loss"] = {}
    data["optim"] = {
        **data["optim"], "optimizer": "sgd", "momentum": 0.0, "weight_decay": 0.0, "schedule": "constant", "grad_clip": None,
        "batch_size": batch, "accumulation_steps": 1, "max_steps": None, "precision": "fp32",
    }
    data["data"] = {"name": "shipped_mnist", "max_examples": batch}
    data["distributed"] = {**data["distributed"], "deepspeed": None, "sync_batchnorm": False, "generation": "sharded"}  # what this bench measures
    if data["mapping"]["method"] == "mapping":  # the dense mapping: what the sharding plan splits by rows
        data["mapping"]["operator"] = "dense"
    return Recipe.model_validate(data)


def hold_batchnorm_in_eval(model: nn.Module) -> None:
    """Keep ``model``'s BatchNorm layers in eval mode (running statistics) whatever ``model.train()`` asks."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.train(False)
            module.train = types.MethodType(lambda self, mode=True: nn.Module.train(self, False), module)


def run_rank(recipe: Recipe, batch: int, image_size: int, steps: int, thread_counts: tuple[int, ...]) -> dict:
    """One rank's measurements (every rank of the world calls it): the build, then for each thread count a
    warm-up step and ``steps`` timed steps, each series from the same initial latents, then as many timed
    generations."""
    torch.set_num_threads(thread_counts[0])
    build_datasets(recipe.data, recipe.task)  # the stand-in data and its libraries, loaded before the first reading
    rss_start = peak_rss_bytes()
    world = World.from_env("cpu")

    # Build: this rank's shard of the mapping (the whole mapping at N = 1), loss, optimiser, updater.
    world.barrier()
    start = time.perf_counter()
    run = prepare(recipe, world, "cpu")
    build_seconds = time.perf_counter() - start
    rss_built = peak_rss_bytes()
    model, params = run.model, run.params

    channels, classes = input_shape(model.target, image_size)
    inputs, targets = global_batch(channels, classes, batch, image_size)
    share = torch.tensor_split(torch.arange(batch), world.size)[world.rank]  # (B / N,)
    inputs, targets = inputs[share], targets[share]
    weight = len(share) * world.size / batch  # averaging weight * loss over ranks: the global mean loss
    initial = [p.detach().clone() for p in params]

    # Train-mode BatchNorm at init, no update: each rank normalises over its own share.
    model.train()
    with torch.no_grad():
        buffers = {name: b.clone() for name, b in model.target.named_buffers() if b.numel()}  # throw-away statistics
        output = model.forward_with({**model.generated_tensors(), **buffers}, inputs)
        train_mode = world.sum(run.loss_fn.task_loss(output, targets) * weight) / world.size
    hold_batchnorm_in_eval(model)  # running statistics: the loss does not depend on the split (module docstring)

    series = {}
    for threads in thread_counts:
        torch.set_num_threads(threads)
        with torch.no_grad():
            for p, value in zip(params, initial):
                p.copy_(value)
        # The updater carries nothing between series: SGD without momentum, a constant schedule.
        losses, step_seconds, generate_seconds, update = [], [], [], None
        for step in range(1 + steps):  # step 1 is the warm-up
            world.barrier()
            start = time.perf_counter()
            _, terms = train_step(run, [(inputs, targets)], batch, step)
            world.barrier()
            step_seconds.append(time.perf_counter() - start)
            losses.append((world.sum(terms["task"]) / world.size).item())  # the weighted task loss: the global batch's
            if update is None:  # step 1's update: -lr times the global batch's gradient, the same at every N
                update = torch.cat([(p.detach() - value).reshape(-1) for p, value in zip(params, initial)]).tolist()
        for _ in range(1 + steps):  # generation alone, as in a step: this rank's rows, then the all-gather
            world.barrier()
            start = time.perf_counter()
            generated = model.generated_tensors()
            world.barrier()
            generate_seconds.append(time.perf_counter() - start)
            del generated
        step_s = sum(step_seconds[1:] or step_seconds) / len(step_seconds[1:] or step_seconds)
        generate_s = sum(generate_seconds[1:] or generate_seconds) / len(generate_seconds[1:] or generate_seconds)
        series[threads] = {"step_s": step_s, "generate_s": generate_s, "losses": losses, "update": update}
    return {
        "rank": world.rank, "mapping_bytes": operator_bytes(model), "rss_start": rss_start, "rss_built": rss_built,
        "rss_peak": peak_rss_bytes(), "build_s": build_seconds, "series": series, "train_mode_loss": train_mode.item(),
    }


def _rank_process(rank: int, world_size: int, port: int, recipe: dict, args: tuple, results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        results[rank] = run_rank(Recipe.model_validate(recipe), *args)
    finally:
        dist.destroy_process_group()


def run_world(world_size: int, recipe: Recipe, batch: int, image_size: int, steps: int) -> list[dict]:
    """`run_rank` on ``world_size`` fresh local processes (gloo) that share the machine's cores. One process
    steps on every core, then on one (the summation order of one thread is the one 2 ranks on a core each use)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cores = os.cpu_count() or 1
    thread_counts = (max(1, cores // world_size),) if world_size > 1 else tuple(dict.fromkeys((cores, 1)))
    with mp.Manager() as manager:
        results = manager.dict()
        args = (batch, image_size, steps, thread_counts)
        # The recipe travels as plain data: its class lives in a recipe file the ranks have not imported.
        mp.spawn(_rank_process, args=(world_size, port, recipe.model_dump(mode="json"), args, results), nprocs=world_size, join=True)
        return [results[r] for r in range(world_size)]


def relative(a: float, b: float) -> float:
    return abs(a - b) / max(abs(a), abs(b), 1e-30)


def relative_l2(a: list[float], b: list[float]) -> float:
    a, b = torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)
    return ((a - b).norm() / a.norm().clamp_min(1e-30)).item()


def main(argv: list[str] | None = None) -> dict[int, list[dict]]:
    """Run the bench (``argv``: the command line's arguments); return each world size's per-rank results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="recipes/resnet50_deepfake.py")
    parser.add_argument("--overrides", nargs="*", default=[], help="dotted recipe overrides (mapping.budget=1024)")
    parser.add_argument("--batch", type=int, default=8, help="global batch size (split across the ranks)")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=3, help="timed steps, after one warm-up step")
    parser.add_argument("--quick", action="store_true", help="CNN2 LWT 256, batch 16 of 28x28, 2 steps: seconds")
    parser.add_argument("--out", type=Path, default=None, help="also write the output to this markdown file")
    args = parser.parse_args(argv)
    if args.quick:
        args.recipe, args.overrides = "recipes/mnist_cnn2.py", ["mapping.grouping=lwt", "mapping.budget=256"]
        args.batch, args.image_size, args.steps = 16, 28, 2
    started = time.perf_counter()
    console = Console(width=150, record=True)
    recipe = bench_recipe(load_recipe(ROOT / args.recipe, args.overrides), args.batch)
    units = recipe.distributed.units or None
    layout = build_model(recipe, "meta").layout
    plans = {n: ShardPlan.from_layout(layout, n, units) for n in (*MEASURED, *PLANNED)}
    total_bytes = plans[1].mapping_numel(0) * 4  # float32 mapping entries
    cores = os.cpu_count()
    console.print(
        f"{recipe.name} ({recipe.target.name}): {layout.num_target_params:,} target parameters, {recipe.mapping.grouping} "
        f"budget {recipe.mapping.budget}, {len(layout.groups)} groups; dense mapping {total_bytes / GIB:.2f} GiB; "
        f"sharding units {units or 'whole target'}"
    )
    console.print(
        f"global batch {args.batch} of {args.image_size}x{args.image_size}, 1 warm-up + {args.steps} timed steps, SGD lr "
        f"{recipe.optim.lr}, BatchNorm in eval mode; {cores} cores: N = 1 on {cores} threads then on 1, N = 2 on "
        f"{max(1, cores // 2)} each; load average {os.getloadavg()[0]:.2f} at the start (other processes slow the steps)"
    )
    runs = {}
    for n in MEASURED:
        start = time.perf_counter()
        runs[n] = run_world(n, recipe, args.batch, args.image_size, args.steps)
        console.print(f"N = {n}: {time.perf_counter() - start:.0f} s wall")

    # Memory per rank, measured and planned.
    table = Table(title=f"Per rank: {recipe.name}, {recipe.mapping.grouping} {recipe.mapping.budget} (GiB; RSS peaks so far)")
    for column in ["N", "rank", "mapping", "plan", "RSS before build", "RSS after build", "peak RSS", "build s (prepare)"]:
        table.add_column(column, justify="right")
    for n, ranks in runs.items():
        for r in ranks:
            table.add_row(
                str(n), str(r["rank"]), f"{r['mapping_bytes'] / GIB:.3f}", f"{plans[n].mapping_numel(r['rank']) * 4 / GIB:.3f}",
                f"{r['rss_start'] / GIB:.2f}", f"{r['rss_built'] / GIB:.2f}", f"{r['rss_peak'] / GIB:.2f}", f"{r['build_s']:.1f}",
            )
    console.print(table)

    plan_table = Table(title=f"Plan per rank (float32 mapping GiB, units {'of the recipe' if units else 'whole target'})")
    for column in ["N", "heaviest rank", "lightest rank", "even share", "heaviest / even"]:
        plan_table.add_column(column, justify="right")
    for n, plan in plans.items():
        per_rank = [plan.mapping_numel(r) * 4 for r in range(n)]
        even = total_bytes / n
        plan_table.add_row(str(n), f"{max(per_rank) / GIB:.3f}", f"{min(per_rank) / GIB:.3f}", f"{even / GIB:.3f}", f"{max(per_rank) / even:.2f}x")
    console.print(plan_table)

    # Steps on the same global batch: (label, series of rank 0; ranks are in lockstep).
    rows = [(f"N = 1, {t} thread{'s' * (t > 1)}", series) for t, series in runs[1][0]["series"].items()]
    rows += [(f"N = 2, {t} thread{'s' * (t > 1)} each", series) for t, series in runs[2][0]["series"].items()]
    baseline = rows[0][1]["step_s"]
    step_table = Table(title=f"Step (train_step) on the global batch of {args.batch} (mean of {args.steps} timed steps, seconds; generation timed apart)")
    for column in ["run", "step", "generate + gather", "rest of the step", "vs N = 1 all cores"]:
        step_table.add_column(column, justify="left" if column == "run" else "right")
    for label, series in rows:
        rest = series["step_s"] - series["generate_s"]
        step_table.add_row(label, f"{series['step_s']:.3f}", f"{series['generate_s']:.3f}", f"{rest:.3f}", f"{series['step_s'] / baseline:.2f}x")
    console.print(step_table)

    reference = rows[len(runs[1][0]["series"]) - 1][1]  # N = 1 on one thread: the summation order of each rank
    sharded = rows[-1][1]
    loss_table = Table(title="Global-batch loss per step (step 1: the warm-up)")
    for column in ["step", *(label for label, _ in rows), "N = 2 vs N = 1, 1 thread", "N = 2 vs N = 1, all cores"]:
        loss_table.add_column(column, justify="right")
    for step in range(len(sharded["losses"])):
        losses = [series["losses"][step] for _, series in rows]
        loss_table.add_row(str(step + 1), *(f"{v:.7f}" for v in losses), f"{relative(reference['losses'][step], sharded['losses'][step]):.1e}",
                           f"{relative(rows[0][1]['losses'][step], sharded['losses'][step]):.1e}")
    console.print(loss_table)

    one, two = runs[1][0], runs[2]
    heaviest = max(two, key=lambda r: r["mapping_bytes"])
    console.print(f"step-1 loss, N = 2 vs N = 1: relative difference {relative(reference['losses'][0], sharded['losses'][0]):.1e} (1 thread), "
                  f"{relative(rows[0][1]['losses'][0], sharded['losses'][0]):.1e} (all cores)")
    console.print(f"step-1 update (-lr times the global batch's latent gradient), N = 2 vs N = 1: relative L2 difference "
                  f"{relative_l2(reference['update'], sharded['update']):.1e} (1 thread), {relative_l2(rows[0][1]['update'], sharded['update']):.1e} "
                  f"(all cores); N = 1 all cores vs 1 thread: {relative_l2(reference['update'], rows[0][1]['update']):.1e}")
    console.print(f"train-mode BatchNorm at init: N = 1 {one['train_mode_loss']:.7f}, N = 2 {two[0]['train_mode_loss']:.7f}, relative "
                  f"difference {relative(one['train_mode_loss'], two[0]['train_mode_loss']):.1e} (each rank normalises over its own share)")
    console.print(f"mapping bytes, heaviest rank N = 2 / N = 1: {heaviest['mapping_bytes'] / one['mapping_bytes']:.3f} "
                  f"(ranks summed / N = 1: {sum(r['mapping_bytes'] for r in two) / one['mapping_bytes']:.3f})")
    console.print(f"peak RSS, heaviest rank N = 2 / N = 1: {max(r['rss_peak'] for r in two) / one['rss_peak']:.3f}; "
                  f"above the RSS before the build: {max(r['rss_peak'] - r['rss_start'] for r in two) / (one['rss_peak'] - one['rss_start']):.3f}")
    console.print(f"step time N = 2 / N = 1 on the same global batch: {sharded['step_s'] / baseline:.3f} (N = 1 on all cores), "
                  f"{sharded['step_s'] / reference['step_s']:.3f} (N = 1 on 1 thread)")
    console.print(f"total {time.perf_counter() - started:.0f} s, load average at the end {os.getloadavg()[0]:.2f}")

    if args.out is not None:
        command = " ".join(shlex.quote(a) for a in ["python", "bench/distributed.py", *(sys.argv[1:] if argv is None else argv)])
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(
            f"# Sharded mapping on 1 and 2 ranks: {recipe.name}\n\n`{command}`\n\n{datetime.now():%Y-%m-%d %H:%M}, torch "
            f"{torch.__version__}, {cores} CPU cores\n\n```\n{console.export_text()}```\n"
        )
    return runs


if __name__ == "__main__":
    main()
