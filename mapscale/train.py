"""The training loop, read top to bottom: build, step, evaluate, checkpoint, log.

``train(recipe, run_dir)`` runs one recipe in one process. Everything a run needs to continue exactly lives
in ``run_dir/checkpoint.pt`` (latents, loss coefficients and step, optimiser and scheduler state, position
in the data, RNG states, the resolved recipe; never generated weights), written atomically, so a kill at
any moment leaves the last good checkpoint. ``train(..., resume=True)`` continues from it: the same steps,
batches and losses as a run that was never interrupted.
"""

from __future__ import annotations

import ctypes
import hashlib
import importlib.metadata
import itertools
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from torch import nn

import mapscale
from mapscale.data import DataSplits, build_datasets
from mapscale.distributed.plan import ShardPlan
from mapscale.distributed.sharded import part_of, shard
from mapscale.distributed.step import DeepSpeedStep, TorchStep, deepspeed_config
from mapscale.distributed.world import World
from mapscale.loss import MappingLoss
from mapscale.mapping.mapped import MappedModel
from mapscale.mapping.operators import mapping_key
from mapscale.methods import METHODS, Build
from mapscale.metrics import PRIMARY, Metrics
from mapscale.recipe import Recipe
from mapscale.targets import build_target

CHECKPOINT = "checkpoint.pt"
CHECKPOINT_FORMAT = 2  # 2: optimiser and schedule under "optim" (DeepSpeed runs), "world_size"


@dataclass
class RunResult:
    """What a run did: the CLI's summary table."""

    run_dir: Path
    recipe_name: str
    step: int
    total_steps: int
    target_params: int
    trainable: int
    final: dict[str, float] = field(default_factory=dict)
    final_train: dict[str, float] = field(default_factory=dict)  # the final model on the training split
    best: dict[str, float] = field(default_factory=dict)  # {primary metric: value, "step": when}
    wall_seconds: float = 0.0
    interrupted: bool = False  # stopped before the last step, with a checkpoint to resume from
    signalled: bool = False  # ... because of SIGTERM / Ctrl-C (not a planned --stop-after)


# -- building: recipe -> objects -----------------------------------------------------------------------------


def build_model(recipe: Recipe, device: torch.device | str = "cpu", world: World | None = None) -> MappedModel:
    """The recipe's target with its method applied (`mapscale.methods.METHODS` holds one builder per method).
    The target's default init is seeded by ``recipe.seed``, the method's fixed randomness by its ``seed``, so
    the same recipe builds the same model in every process. In a multi-rank ``world`` (or with
    ``distributed.gather="per-unit"``) a generating method's generator holds only this rank's part of the flat
    vector (``distributed.units``) and `mapscale.distributed.shard` gathers the rest; on the meta device the
    part is built for shapes and bytes only (``mapscale inspect``)."""
    torch.manual_seed(recipe.seed)
    device = torch.device(device)
    meta = device.type == "meta"
    method = METHODS[recipe.mapping.method]
    dist = recipe.distributed
    with torch.device("meta") if meta else nullcontext():
        target = build_target(recipe.target.name, recipe.target.args, None if meta or method.pretrained else recipe.target.weights)
    per_unit = dist.gather == "per-unit"
    sharded = world is not None and (world.distributed or per_unit)
    if sharded and not method.generates and per_unit:
        raise ValueError(f"mapping.method={recipe.mapping.method!r} generates nothing to gather; use distributed.gather='whole'")
    sharded = sharded and method.generates
    if sharded and not meta:
        target = target.to(device)  # each rank builds its part of the fixed state straight onto its device
    if world is not None and world.distributed and dist.sync_batchnorm and not meta:
        if device.type == "cpu":
            raise ValueError("distributed.sync_batchnorm needs GPUs: torch's SyncBatchNorm has no CPU implementation")
        target = nn.SyncBatchNorm.convert_sync_batchnorm(target)  # same module names, so the same layout
    plans: list[ShardPlan] = []

    def part(layout):
        plans.append(ShardPlan.from_layout(layout, world.size, dist.units or None))
        return part_of(plans[-1], layout, world)

    model = method.build(recipe.mapping, Build(recipe, target, device, part if sharded else None))
    if sharded:
        shard(model, plans[-1], world, per_unit=per_unit)
    if meta:
        return model
    _return_freed_memory()
    return model.to(device)


def _return_freed_memory() -> None:
    """Hand the C allocator's free pages back to the OS. Building the mapping frees gigabytes of temporaries
    (raw blocks, calibration passes) that glibc would otherwise keep in this process's resident memory:
    measured on ResNet50 LWT 2048 over 2 ranks, 5.0-5.3 GiB resident per rank without this, 3.8 GiB with it."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to do
        pass


def task_loss(task: str):
    """The task's loss ``(output, target) -> scalar``."""
    if task == "regression":
        return lambda output, target: F.mse_loss(output.reshape(target.shape), target.float())
    if task == "segmentation":
        return lambda output, target: F.cross_entropy(output, target, ignore_index=255)
    if task == "language_modeling":  # next-token cross-entropy over every position
        return lambda output, target: F.cross_entropy(output.flatten(0, -2), target.flatten())
    return F.cross_entropy


def build_loss(recipe: Recipe) -> MappingLoss:
    options = recipe.loss.model_dump()
    return MappingLoss(task_loss(recipe.task), seed=recipe.seed, **options)


def trainable_parameters(model: MappedModel, loss_fn: MappingLoss) -> list[nn.Parameter]:
    """What the optimiser updates: the model's trainable tensors and the loss's learned coefficients."""
    return [p for p in [*model.parameters(), *loss_fn.parameters()] if p.requires_grad]


def build_optimizer(recipe: Recipe, params: list[nn.Parameter], total_steps: int):
    o = recipe.optim
    if o.optimizer == "sgd":
        optimizer = torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
    else:
        cls = torch.optim.AdamW if o.optimizer == "adamw" else torch.optim.Adam
        optimizer = cls(params, lr=o.lr, weight_decay=o.weight_decay)
    if o.schedule == "onecycle":
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=o.lr, total_steps=total_steps, pct_start=max(o.warmup_fraction, 1e-3))
    else:
        warmup = int(o.warmup_fraction * total_steps)

        def factor(step: int) -> float:
            if o.schedule == "constant":
                return 1.0
            if step < warmup:
                return (step + 1) / warmup
            return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(total_steps - warmup, 1)))

        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    return optimizer, schedule


def epoch_batches(num_examples: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """The index batches of ``epoch``: a pure function of (seed, epoch), so a resumed run sees the same."""
    order = torch.randperm(num_examples, generator=torch.Generator().manual_seed(mapping_key(seed, f"data/{epoch}")))
    return [b.tolist() for b in order.split(batch_size)]


# Mapping fields that choose only where the latents start, not the mapping: left out of the fingerprint.
LATENT_START_FIELDS = {"latent_seed", "latent_from"}


def fingerprint(model: MappedModel, recipe: Recipe) -> str:
    """Identifies the mapping: the target's generated tensors (names, shapes), the mapping section (but where the
    latents start, `LATENT_START_FIELDS`) and the target init seed. Runs with equal fingerprints generate weights
    from the same fixed mapping (`mapscale.space`)."""
    layout = [(g.name, g.latent_dim, [(t.name, list(t.shape)) for t in g.tensors]) for g in model.layout.groups]
    mapping = recipe.mapping.model_dump(mode="json", exclude=LATENT_START_FIELDS)
    payload = json.dumps([layout, mapping, recipe.target.model_dump(mode="json"), recipe.seed], sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


# -- the run directory ---------------------------------------------------------------------------------------


def new_run_dir(recipe: Recipe) -> Path:
    """A fresh run directory under ``output.root``: ``run_name`` or ``<recipe name>-<timestamp>``."""
    root = Path(recipe.output.root)
    name = recipe.output.run_name or f"{recipe.name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    run_dir, suffix = root / name, 1
    while run_dir.exists():
        suffix += 1
        run_dir = root / f"{name}-{suffix}"
    return run_dir


def write_run_files(run_dir: Path, recipe: Recipe, source: Path | None, overrides: list[str]) -> None:
    """Once per run: the recipe file, the overrides, the resolved recipe and the environment.
    ``mapscale train <run_dir>/recipe.json`` reproduces the run."""
    run_dir.mkdir(parents=True, exist_ok=True)
    if source is not None and source.suffix == ".py":
        shutil.copyfile(source, run_dir / "recipe_source.py")
    (run_dir / "overrides.json").write_text(json.dumps(list(overrides), indent=2) + "\n")
    (run_dir / "recipe.json").write_text(recipe.model_dump_json(indent=2) + "\n")
    (run_dir / "environment.json").write_text(json.dumps(environment(), indent=2) + "\n")


def environment() -> dict:
    versions = {"python": sys.version.split()[0], "torch": torch.__version__, "mapscale": mapscale.__version__}
    for package in ("torchvision", "deepspeed", "datasets", "pydantic", "safetensors"):
        try:  # read from the installed metadata: importing deepspeed alone takes seconds
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                                cwd=Path(__file__).parent).stdout.strip() or None
    except (OSError, subprocess.TimeoutExpired):
        commit = None
    return {
        "versions": versions,
        "git_commit": commit,
        "platform": platform.platform(),
        "hostname": platform.node(),
        "cpu_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "started": datetime.now().isoformat(timespec="seconds"),
    }


# -- checkpoints ---------------------------------------------------------------------------------------------


def save_checkpoint(path: Path, state: dict) -> None:
    """Write ``state`` to ``path`` atomically: a temp file in the same folder, flushed, then renamed."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as handle:
        torch.save(state, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> dict:
    if path.is_dir():
        path = path / CHECKPOINT
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    state = torch.load(path, map_location="cpu", weights_only=False)
    if state.get("format") == 1:  # single-process runs before multi-rank training: same content, older keys
        state["optim"] = {"optimizer": state.pop("optimizer"), "schedule": state.pop("schedule")}
        state["format"], state["world_size"] = CHECKPOINT_FORMAT, 1
    if state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a mapscale checkpoint of format {CHECKPOINT_FORMAT}")
    return state


def load_run(run: Path, device: torch.device | str = "cpu") -> tuple[Recipe, MappedModel, dict]:
    """``(recipe, model, checkpoint)`` of a run directory or checkpoint file: the model rebuilt from the
    recorded recipe with the checkpoint's latents (and buffers) loaded."""
    state = load_checkpoint(Path(run))
    recipe = Recipe.model_validate(state["recipe"])
    model = build_model(recipe, device)
    restore_model_state(model, state["model"])
    return recipe, model, state


def start_latents(model: MappedModel, path: Path, mapping_id: str) -> None:
    """``mapping.latent_from``: set the group latents (and lv-wmap modulators) to those saved in ``path``
    (`mapscale.space.save_latents`), which must belong to the same mapping."""
    saved = torch.load(path, map_location="cpu", weights_only=True)
    if saved["fingerprint"] != mapping_id:
        raise ValueError(f"mapping.latent_from {path} holds latents of mapping {saved['fingerprint']}, not of this recipe's {mapping_id}: check with `mapscale space --check`")
    try:
        model.generator.start_from(saved["latents"])
    except ValueError as err:
        raise ValueError(f"mapping.latent_from {path}: {err}") from None


def checkpoint_model_state(model: MappedModel) -> dict:
    """The model state a checkpoint keeps: trained tensors and buffers (BatchNorm statistics), not the
    frozen tensors, which the recipe rebuilds."""
    frozen = {f"target.{spec.name}" for spec in model.layout.frozen}
    return {k: v for k, v in model.state_dict().items() if k not in frozen}


def restore_model_state(model: MappedModel, state: dict) -> None:
    missing, unexpected = model.load_state_dict(state, strict=False)
    frozen = {f"target.{spec.name}" for spec in model.layout.frozen}
    if unexpected or set(missing) - frozen:
        raise ValueError(f"checkpoint does not fit the model: missing {sorted(set(missing) - frozen)}, unexpected {unexpected}")


# -- evaluation ----------------------------------------------------------------------------------------------


@torch.no_grad()
def evaluate(model: MappedModel, dataset, recipe: Recipe, num_classes: int | None, device, world: World = World()) -> dict[str, float]:
    """The task's metrics of ``model`` on ``dataset``, weights generated once. In a multi-rank world every
    rank generates (a collective), evaluates its contiguous share of ``dataset``, and the sums are reduced."""
    model.eval()
    metrics = Metrics(recipe.task, num_classes)
    if world.distributed:
        share = torch.tensor_split(torch.arange(len(dataset)), world.size)[world.rank]
        dataset = torch.utils.data.Subset(dataset, share.tolist())
    # Per-token logits over a vocabulary are large: language models evaluate at the training batch size.
    batch_size = recipe.optim.batch_size if recipe.task == "language_modeling" else max(recipe.optim.batch_size, 256)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size)
    with model.cached_weights():
        for inputs, targets in loader:
            with _autocast(recipe, device):
                output = model(inputs.to(device))
            metrics.update(output, targets)
    if world.distributed:
        metrics.reduce(world.sum)
    return metrics.compute()


def _autocast(recipe: Recipe, device):
    if recipe.optim.precision == "bf16":
        return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
    return nullcontext()


# -- the loop ------------------------------------------------------------------------------------------------


def train(
    recipe: Recipe,
    run_dir: Path,
    *,
    resume: bool = False,
    stop_after: int | None = None,
    device: str | None = None,
    console: Console | None = None,
    world: World | None = None,
) -> RunResult:
    """Train ``recipe`` in ``run_dir`` (its run files already written). ``stop_after`` ends this invocation
    after that many steps with a checkpoint, resumable (e.g. to fit a scheduler's time slot).

    Under ``torchrun`` or the ``deepspeed`` launcher (``world``: `World.start`), every rank runs this same
    loop on its share of each global batch with its shard of the mapping; only rank 0 writes to ``run_dir``.
    """
    world = world or World.start(recipe.distributed.backend, device)
    console = console if world.is_main and console is not None else Console(quiet=not world.is_main)
    started = time.perf_counter()
    device = world.device if world.distributed else torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    run_dir = Path(run_dir)

    # Build.
    data: DataSplits = build_datasets(recipe.data, recipe.task)
    accumulation = recipe.optim.accumulation_steps
    pieces = world.size * accumulation  # micro-batches per global batch, over all ranks
    if recipe.optim.batch_size < pieces:
        raise ValueError(f"optim.batch_size {recipe.optim.batch_size} is smaller than {world.size} ranks x {accumulation} accumulation steps: every micro-batch needs examples")
    model = build_model(recipe, device, world)
    loss_fn = build_loss(recipe).to(device)
    batches_per_epoch = math.ceil(len(data.train) / recipe.optim.batch_size)
    last_batch = len(data.train) % recipe.optim.batch_size
    if 0 < last_batch < pieces:  # some micro-batch would get no example of the epoch's last batch
        batches_per_epoch -= 1
        console.print(f"note: each epoch's last batch ({last_batch} examples) is skipped: fewer than its {pieces} micro-batches")
    total_steps = recipe.optim.epochs * batches_per_epoch
    if recipe.optim.max_steps is not None:
        total_steps = min(total_steps, recipe.optim.max_steps)
    params = trainable_parameters(model, loss_fn)
    optimizer, schedule = build_optimizer(recipe, params, total_steps)
    ds_config = recipe.distributed.deepspeed_config()
    if ds_config is not None and world.distributed:
        config = deepspeed_config(ds_config, batch_size=recipe.optim.batch_size, accumulation=accumulation, world=world, grad_clip=recipe.optim.grad_clip)
        updater = DeepSpeedStep(model, loss_fn, optimizer, schedule, config)
    else:
        if ds_config is not None:
            console.print("note: distributed.deepspeed applies on several ranks; one process steps with plain PyTorch (optim section)")
        updater = TorchStep(params, optimizer, schedule, recipe.optim.grad_clip, world, accumulation)
    metric_name, higher_is_better = PRIMARY[recipe.task]
    mapping_id = fingerprint(model, recipe)
    if recipe.mapping.warm_start() is not None and not resume:
        start_latents(model, recipe.mapping.warm_start(), mapping_id)

    step, best = 0, {}
    log_path = run_dir / "metrics.jsonl"
    if resume:
        state = load_checkpoint(run_dir / CHECKPOINT)
        if state["fingerprint"] != mapping_id:
            raise ValueError(f"checkpoint mapping {state['fingerprint']} differs from the recipe's {mapping_id}: not the same run")
        saved_world = state.get("world_size", 1)
        if state["optim"].get("deepspeed_partitioned") and saved_world != world.size:
            raise ValueError(f"this run's optimiser state is partitioned by DeepSpeed (ZeRO or bf16) over {saved_world} ranks; resume it on {saved_world} ranks")
        restore_model_state(model, state["model"])
        loss_fn.load_state_dict(state["loss"])
        updater.load_state_dict(state["optim"])
        if state["optim"].get("deepspeed_partitioned"):
            updater.load_partitions(run_dir / "deepspeed")
        torch.set_rng_state(state["rng"]["torch"])
        if device.type == "cuda" and state["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state(state["rng"]["cuda"], device)
        step, best = state["step"], state["best"]
        if world.is_main:
            _truncate_log(log_path, step)  # drop what the interrupted process logged after its checkpoint
        console.print(f"resumed {run_dir} at step {step}/{total_steps}" + (f" on {world.size} ranks (saved on {saved_world})" if world.size != saved_world else ""))

    def checkpoint() -> None:
        optim_state = updater.state_dict()
        if optim_state.get("deepspeed_partitioned"):
            updater.save_partitions(run_dir / "deepspeed")  # every rank writes its partition
        if world.is_main:
            save_checkpoint(run_dir / CHECKPOINT, {
                "format": CHECKPOINT_FORMAT, "step": step, "fingerprint": mapping_id, "best": best,
                "model": checkpoint_model_state(model), "loss": loss_fn.state_dict(), "optim": optim_state,
                "rng": {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None},
                "recipe": recipe.model_dump(mode="json"), "seed": recipe.seed, "world_size": world.size,
            })
        world.barrier()  # nobody races ahead of a checkpoint that might be the last

    def log(record: dict) -> None:
        if not world.is_main:
            return
        with open(log_path, "a") as handle:
            handle.write(json.dumps({"step": step, **record}) + "\n")
        if tensorboard is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and key != "epoch":
                    tensorboard.add_scalar(f"{record.get('split', 'train')}/{key}", value, step)

    def run_eval() -> dict[str, float]:
        nonlocal best
        result = evaluate(model, data.test, recipe, data.num_classes, device, world)
        log({"split": "test", **result})
        value = result[metric_name]
        if not best or (value > best[metric_name] if higher_is_better else value < best[metric_name]):
            best = {metric_name: value, "step": step}
        return result

    tensorboard = _tensorboard(run_dir) if world.is_main else None
    stop = _StopFlag(console)
    interrupted, signalled, last_eval, final_train = False, False, {}, {}
    every_eval = recipe.output.eval_every or batches_per_epoch
    every_checkpoint = recipe.output.checkpoint_every or batches_per_epoch
    progress = _progress(console, recipe.output.progress and world.is_main)
    task_id = progress.add_task(recipe.name, total=total_steps, completed=step, loss=float("nan"), metric="", rate=0.0)
    steps_this_run, window_samples, window_start = 0, 0, time.perf_counter()

    def halted() -> bool:
        """A stop was asked for (signal, on any rank: all agree) or this invocation's --stop-after is used up."""
        return world.any(stop.requested) or (stop_after is not None and steps_this_run >= stop_after)

    # Train.
    try:
        with progress, stop:
            while step < total_steps:
                epoch, position = divmod(step, batches_per_epoch)
                batches = epoch_batches(len(data.train), recipe.optim.batch_size, recipe.seed, epoch)[position:batches_per_epoch]
                # This rank's contiguous share of each global batch, in `accumulation` micro-batches.
                micro = [torch.tensor_split(torch.tensor(b), pieces)[world.rank * accumulation : (world.rank + 1) * accumulation] for b in batches]
                loader = iter(torch.utils.data.DataLoader(data.train, batch_sampler=[m.tolist() for per in micro for m in per]))
                for batch in batches:
                    model.train()
                    terms = {}
                    for inputs, targets in itertools.islice(loader, accumulation):
                        inputs, targets = inputs.to(device), targets.to(device)
                        with _autocast(recipe, device):
                            out = loss_fn(model, inputs, targets)
                        # Averaging weight * loss over micro-batches and ranks gives the global batch's mean loss.
                        weight = len(targets) * pieces / len(batch)
                        updater.backward(out.total * weight)
                        for key, value in out.values.items():
                            terms[key] = terms.get(key, 0.0) + value.detach() * weight / accumulation
                    updater.step()
                    step, steps_this_run = step + 1, steps_this_run + 1
                    window_samples += len(batch)

                    # Log.
                    if step % recipe.output.log_every == 0 or step == total_steps:
                        rate = window_samples / max(time.perf_counter() - window_start, 1e-9)
                        window_samples, window_start = 0, time.perf_counter()
                        record = _global_mean(terms, world)
                        record.update({f"lambda_{k}": v.item() for k, v in out.coefficients.items()})
                        record.update({f"seconds_{k}": v for k, v in out.seconds.items()})
                        log({"split": "train", "epoch": epoch, "lr": updater.last_lr(), "samples_per_s": rate, **record})
                        progress.update(task_id, loss=record["task"], rate=rate)

                    # Evaluate.
                    if step % every_eval == 0 or step == total_steps:
                        last_eval = run_eval()
                        progress.update(task_id, metric=f"{metric_name} {last_eval[metric_name]:.4f}")
                    if step == total_steps:  # the train split too, once: the train-test gap of the final model
                        final_train = evaluate(model, data.train, recipe, data.num_classes, device, world)
                        log({"split": "train-eval", **final_train})

                    # Checkpoint.
                    if step % every_checkpoint == 0 or step == total_steps:
                        checkpoint()
                    progress.update(task_id, completed=step, description=f"{recipe.name} epoch {epoch + 1}/{math.ceil(total_steps / batches_per_epoch)}")

                    if step >= total_steps or halted():
                        break
                if halted():
                    interrupted, signalled = step < total_steps, world.any(stop.requested)
                    break
    except KeyboardInterrupt:  # a second Ctrl-C: abort mid-step, keep the last complete checkpoint
        console.print(f"aborted; continue from the last checkpoint with: mapscale train {run_dir} --resume")
        raise
    if interrupted:
        checkpoint()  # nothing lost: the run continues from here with --resume
        console.print(f"stopped at step {step}/{total_steps}; continue with: mapscale train {run_dir} --resume")
    if tensorboard is not None:
        tensorboard.close()
    return RunResult(
        run_dir=run_dir, recipe_name=recipe.name, step=step, total_steps=total_steps,
        target_params=model.num_target_params(), trainable=sum(p.numel() for p in params),
        final=last_eval, final_train=final_train, best=best, wall_seconds=time.perf_counter() - started, interrupted=interrupted,
        signalled=signalled,
    )


def _global_mean(weighted: dict[str, torch.Tensor], world: World) -> dict[str, float]:
    """The loss terms of the global batch: the rank-weighted values averaged over ranks (one collective)."""
    if not weighted:
        return {}
    values = world.sum(torch.stack(list(weighted.values())).float()) / world.size
    return dict(zip(weighted, values.tolist()))


def _truncate_log(path: Path, step: int) -> None:
    if path.exists():
        kept = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
        path.write_text("".join(line + "\n" for line in kept))


def _tensorboard(run_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # TensorBoard is optional
        return None
    return SummaryWriter(str(run_dir / "tensorboard"))


def _progress(console: Console, enabled: bool) -> Progress:
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}"), TextColumn("{task.fields[metric]}"),
        TextColumn("{task.fields[rate]:.0f} samples/s"), TimeElapsedColumn(), TimeRemainingColumn(),
        console=console, disable=not enabled,
    )


class _StopFlag:
    """Turns SIGTERM (a cluster preempting the job) and a first Ctrl-C into a clean stop after the current
    step, with a checkpoint; a second Ctrl-C aborts at once."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, console: Console) -> None:
        self.requested, self.console = False, console
        self._previous: dict = {}

    def __enter__(self) -> _StopFlag:
        try:
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        except ValueError:  # not the main thread: no signal handling
            self._previous = {}
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        self.console.print("stopping after this step (Ctrl-C again to abort)")

    def __exit__(self, *exc) -> None:
        for s, previous in self._previous.items():
            signal.signal(s, previous)
