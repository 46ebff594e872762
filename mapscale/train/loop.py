"""The training loop, read top to bottom: build, step, evaluate, checkpoint, log.

``train(recipe, run_dir)`` runs one recipe. Everything a run needs to continue exactly lives in
``run_dir/checkpoint.pt`` (`mapscale.train.checkpoint`), written atomically, so a kill at any moment leaves the
last good checkpoint; ``train(..., resume=True)`` continues from it with the same steps, batches and losses as
a run that was never interrupted. The loop's parts: `prepare` (build), `batches` (the data order),
`train_step` (one optimiser step), `evaluate`, `save` (checkpoint) and `RunLog` (metrics).
"""

from __future__ import annotations

import itertools
import json
import math
import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from rich.console import Console

from mapscale.data import shifted_images
from mapscale.distributed.world import World
from mapscale.loss import LossOutput, MappingLoss
from mapscale.mapping.mapped import MappedModel, capture_rng
from mapscale.metrics import PRIMARY
from mapscale.recipe import Recipe, RecipeError
from mapscale.train.build import Prepared, epoch_batches, prepare
from mapscale.train.checkpoint import CHECKPOINT, checkpoint_state, fingerprint, load_checkpoint, restore_model_state, restore_rng, save_checkpoint
from mapscale.train.evaluate import autocast, evaluate, model_inputs
from mapscale.train.loader import StepBatches, make_loader
from mapscale.train.log import RunLog, global_mean, progress_bar

RESULT = "result.json"


@dataclass
class RunResult:
    """What a run did (written to ``run_dir/result.json`` when it ends): the CLI's summary table, and what
    `mapscale.report`, `mapscale.space` and the benches read."""

    run_dir: Path
    recipe_name: str
    step: int
    total_steps: int
    target_params: int
    trainable: int
    final: dict[str, float] = field(default_factory=dict)  # the last test evaluation
    final_train: dict[str, float] = field(default_factory=dict)  # the final model on the training split
    final_validation: dict[str, float] = field(default_factory=dict)  # ... on the validation split (data.validation_size)
    best: dict[str, float] = field(default_factory=dict)  # {primary metric: value, "step": when}
    wall_seconds: float = 0.0
    interrupted: bool = False  # stopped before the last step, with a checkpoint to resume from
    signalled: bool = False  # ... because of SIGTERM / Ctrl-C (not a planned --stop-after)
    traffic: dict = field(default_factory=dict)  # bytes per rank per step by kind (several ranks; `mapscale.distributed.traffic`)
    generation: dict = field(default_factory=dict)  # distributed.generation as resolved: {"mode", "reason", ...}
    compiled: dict = field(default_factory=dict)  # optim.compile as resolved: {"enabled", "reason", "scope"}

    def save(self) -> None:
        (self.run_dir / RESULT).write_text(json.dumps({**asdict(self), "run_dir": str(self.run_dir)}, indent=2) + "\n")

    @classmethod
    def load(cls, run_dir: Path) -> RunResult | None:
        """The result a run wrote when it ended, or None (a run still going, or killed)."""
        path = Path(run_dir) / RESULT
        return cls(**{**json.loads(path.read_text()), "run_dir": Path(run_dir)}) if path.exists() else None


def train_record(run: Prepared, epoch: int, rate: float, out: LossOutput, terms: dict) -> dict:
    """A logged training step: the ranks' mean loss terms, the loss coefficients, timings and (several ranks) the
    bytes per rank per step moved since the last record, by kind."""
    world = run.world
    record = {"epoch": epoch, "lr": run.updater.last_lr(), "samples_per_s": rate, **global_mean(terms, world)}
    record.update(world.traffic.take_per_step() if world.distributed else {})
    record.update({f"lambda_{k}": v.item() for k, v in out.coefficients.items()})
    return record | {f"seconds_{k}": v for k, v in out.seconds.items()}


def train(
    recipe: Recipe,
    run_dir: Path,
    *,
    resume: bool = False,
    stop_after: int | None = None,
    device: str | None = None,
    console: Console | None = None,
    world: World | None = None,
    prepared: Prepared | None = None,
) -> RunResult:
    """Train ``recipe`` in ``run_dir`` (its run files written). ``stop_after`` ends this invocation after that many
    steps with a checkpoint. ``prepared``: the run `prepare` built (the CLI, before the run directory exists).

    Under ``torchrun`` or the ``deepspeed`` launcher (``world``: `World.start`), every rank runs this same loop
    on its share of each global batch with its part of the fixed state; only rank 0 writes to ``run_dir``.
    """
    world = world or World.start(recipe.distributed.backend, device)
    console = console if world.is_main and console is not None else Console(quiet=not world.is_main)
    started, run_dir, (metric, higher) = time.perf_counter(), Path(run_dir), PRIMARY[recipe.task]
    run = prepared or prepare(recipe, world, device, console, warm_start=not resume)
    mapping_id = fingerprint(run.model, recipe)
    log = RunLog(run_dir, world.is_main)
    step, best = resume_from(run, run_dir, mapping_id, log, console) if resume else (0, {})
    if step >= run.total_steps and (finished := RunResult.load(run_dir)) is not None:  # resumed after its end: nothing to redo
        return finished
    every_eval = recipe.output.eval_every or run.batches_per_epoch
    every_checkpoint = recipe.output.checkpoint_every or run.batches_per_epoch
    epochs = math.ceil(run.total_steps / run.batches_per_epoch)
    progress = progress_bar(console, recipe.output.progress and world.is_main)
    bar = progress.add_task(recipe.name, total=run.total_steps, completed=step, loss=float("nan"), metric="", rate=0.0)
    stop, throughput = StopFlag(console), Throughput()
    steps_this_run, interrupted, signalled, last_eval, final_train, final_validation = 0, False, False, {}, {}, {}
    try:
        with progress, stop:
            for epoch, batch, micro_batches in batches(run, step):
                out, terms = train_step(run, micro_batches, len(batch), step)
                step, steps_this_run = step + 1, steps_this_run + 1
                throughput.add(len(batch))
                if due(step, recipe.output.log_every, run.total_steps):
                    record = train_record(run, epoch, throughput.rate(), out, terms) | run.compiled.take()  # compile_s: apart from steps
                    log.write(step, {"split": "train", **record})
                    progress.update(bar, loss=record["task"], rate=record["samples_per_s"])
                if due(step, every_eval, run.total_steps):  # a fixed sample, the whole split at the end (output.final_eval)
                    last_eval = evaluate(run.model, run.data.test, recipe, run.data.num_classes, run.device, world, sample=sampled(recipe, step, run.total_steps))
                    log.write(step, {"split": "test", **last_eval})
                    best = better(best, last_eval, metric, higher, step)
                    progress.update(bar, metric=f"{metric} {last_eval[metric]:.4f}")
                if step == run.total_steps:  # the train split too, once: the train-test gap of the final model
                    if recipe.output.eval_train:
                        final_train = evaluate(run.model, run.data.train, recipe, run.data.num_classes, run.device, world, sample=recipe.output.final_eval == "sample")
                        log.write(step, {"split": "train-eval", **final_train})
                    if run.data.validation is not None:
                        final_validation = evaluate(run.model, run.data.validation, recipe, run.data.num_classes, run.device, world, sample=recipe.output.final_eval == "sample")
                        log.write(step, {"split": "validation", **final_validation})
                if due(step, every_checkpoint, run.total_steps):
                    save(run, run_dir, step, best, mapping_id)
                progress.update(bar, completed=step, description=f"{recipe.name} epoch {epoch + 1}/{epochs}")
                if step < run.total_steps:  # a stop asked for on any rank (all agree), or this invocation's share done
                    signalled = world.any(stop.requested)
                    if signalled or (stop_after is not None and steps_this_run >= stop_after):
                        interrupted = True
                        break
    except KeyboardInterrupt:  # a second Ctrl-C: abort mid-step, keep the last complete checkpoint
        console.print(f"aborted; continue from the last checkpoint with: mapscale train {run_dir} --resume")
        raise
    if interrupted:
        save(run, run_dir, step, best, mapping_id)  # nothing lost: the run continues from here with --resume
        console.print(f"stopped at step {step}/{run.total_steps}; continue with: mapscale train {run_dir} --resume")
    log.close()
    result = RunResult(
        run_dir=run_dir, recipe_name=recipe.name, step=step, total_steps=run.total_steps,
        target_params=run.model.num_target_params(), trainable=sum(p.numel() for p in run.params), final=last_eval,
        final_train=final_train, final_validation=final_validation, best=best, wall_seconds=time.perf_counter() - started, interrupted=interrupted, signalled=signalled,
        traffic=world.traffic.per_step() if world.distributed else {}, generation=run.generation,
        compiled=run.compiled.as_dict(),
    )
    if world.is_main:
        result.save()
    return result


def batches(run: Prepared, step: int):
    """``(epoch, global batch, this rank's micro-batches)`` for every step from ``step`` on. The order is a pure
    function of (seed, epoch), so a resumed run sees the batches an uninterrupted one would; each rank takes its
    contiguous share of each global batch, in ``accumulation_steps`` micro-batches, loaded as they are used."""
    recipe, world, accumulation = run.recipe, run.world, run.recipe.optim.accumulation_steps
    sampler = StepBatches()  # one loader (and its workers) for every epoch: `mapscale.train.loader`
    persistent = make_loader(run.data.train, recipe, run.device, batch_sampler=sampler, persistent=True)
    while step < run.total_steps:
        epoch, position = divmod(step, run.batches_per_epoch)
        chosen = epoch_batches(len(run.data.train), recipe.optim.batch_size, recipe.seed, epoch)[position : run.batches_per_epoch]
        micro = [torch.tensor_split(torch.tensor(b), run.pieces)[world.rank * accumulation : (world.rank + 1) * accumulation] for b in chosen]
        sampler.set([m.tolist() for per in micro for m in per])
        loader = iter(persistent)
        if recipe.data.augment_shift:
            key, indices = recipe.seed * 1_000_003 + epoch, (m for per in micro for m in per)
            loader = ((shifted_images(x, next(indices), recipe.data.augment_shift, key), y) for x, y in loader)
        for batch in chosen[: run.total_steps - step]:
            yield epoch, batch, itertools.islice(loader, accumulation)
        step += len(chosen)


def train_step(run: Prepared, micro_batches, batch_size: int, step: int) -> tuple[LossOutput, dict[str, torch.Tensor]]:
    """One optimiser step (number ``step``, from 0) on this rank's micro-batches of a global batch of ``batch_size``
    examples: forward, loss and backward of each, then the update. Returns the last micro-batch's loss output and
    the loss terms, weighted so that their mean over ranks is the global batch's."""
    run.model.train()
    terms: dict[str, torch.Tensor] = {}
    accumulation = run.recipe.optim.accumulation_steps
    for inputs, targets in micro_batches:
        inputs, targets = model_inputs(inputs, run.recipe, run.device), targets.to(run.device, non_blocking=True)
        with autocast(run.recipe, run.device):
            out = model_loss(run.model, run.loss_fn, inputs, targets, step)
        # Averaging weight * loss over micro-batches and ranks gives the global batch's mean loss.
        weight = len(targets) * run.pieces / batch_size
        run.updater.backward(out.total * weight)
        for key, value in out.values.items():
            terms[key] = terms.get(key, 0.0) + value.detach() * weight / accumulation
    run.updater.step()
    return out, terms


def model_loss(model: MappedModel, loss_fn: MappingLoss, inputs, targets, step: int) -> LossOutput:
    """The model's forward on ``inputs`` and its loss at optimiser step ``step`` (the random state captured first
    when the stability term must replay the forward's draws)."""
    rng = capture_rng(inputs.device) if loss_fn.perturbs else None
    output = model(inputs)
    return loss_fn(output, targets, model, inputs=inputs, rng=rng, step=step)


def sampled(recipe: Recipe, step: int, total: int) -> bool:
    """Whether the evaluation at ``step`` sees the fixed sample (``output.eval_batches``) rather than whole splits."""
    return step < total or recipe.output.final_eval == "sample"


def due(step: int, every: int, total: int) -> bool:
    return step % every == 0 or step == total


def better(best: dict, result: dict[str, float], metric: str, higher: bool, step: int) -> dict:
    """``best`` or, when ``result`` beats it on ``metric``, ``{metric: value, "step": step}``."""
    value = result[metric]
    if not best or (value > best[metric] if higher else value < best[metric]):
        return {metric: value, "step": step}
    return best


def save(run: Prepared, run_dir: Path, step: int, best: dict, mapping_id: str) -> None:
    """Checkpoint the run at ``step`` (every rank takes part: DeepSpeed ranks write their partitions)."""
    optim_state = run.updater.state_dict()
    if optim_state.get("deepspeed_partitioned"):
        run.updater.save_partitions(run_dir / "deepspeed")
    if run.world.is_main:
        state = checkpoint_state(
            step=step, best=best, mapping_id=mapping_id, model=run.model, loss=run.loss_fn.state_dict(), optim=optim_state,
            recipe=run.recipe, world_size=run.world.size, device=run.device,
        )
        save_checkpoint(run_dir / CHECKPOINT, state)
    run.world.barrier()  # nobody races ahead of a checkpoint that might be the last


def resume_from(run: Prepared, run_dir: Path, mapping_id: str, log: RunLog, console: Console) -> tuple[int, dict]:
    """Restore the run from its checkpoint: ``(step, best)``. A checkpoint that is not this run's is refused
    (`RecipeError`) before anything changes on disk."""
    state = load_checkpoint(run_dir / CHECKPOINT)
    if state["fingerprint"] != mapping_id:
        raise RecipeError(f"checkpoint mapping {state['fingerprint']} differs from the recipe's {mapping_id}: not the same run")
    saved_world, partitioned = state.get("world_size", 1), state["optim"].get("deepspeed_partitioned")
    if partitioned and saved_world != run.world.size:
        raise RecipeError(f"this run's optimiser state is partitioned by DeepSpeed (ZeRO or bf16) over {saved_world} ranks; resume it on {saved_world} ranks")
    restore_model_state(run.model, state["model"])
    run.loss_fn.load_state_dict(state["loss"])
    run.updater.load_state_dict(state["optim"])
    if partitioned:
        run.updater.load_partitions(run_dir / "deepspeed")
    restore_rng(state, run.device)
    log.truncate(state["step"])  # drop what the interrupted process logged after its checkpoint
    where = f" on {run.world.size} ranks (saved on {saved_world})" if run.world.size != saved_world else ""
    console.print(f"resumed {run_dir} at step {state['step']}/{run.total_steps}{where}" + ("; it is finished, nothing to continue" if state["step"] >= run.total_steps else ""))
    return state["step"], state["best"]


class Throughput:
    """Examples per second since the last reading."""

    def __init__(self) -> None:
        self.samples, self.start = 0, time.perf_counter()

    def add(self, samples: int) -> None:
        self.samples += samples

    def rate(self) -> float:
        rate = self.samples / max(time.perf_counter() - self.start, 1e-9)
        self.samples, self.start = 0, time.perf_counter()
        return rate


class StopFlag:
    """Turns SIGTERM (a cluster preempting the job) and a first Ctrl-C into a clean stop after the current
    step, with a checkpoint; a second Ctrl-C aborts at once."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, console: Console) -> None:
        self.requested, self.console = False, console
        self._previous: dict = {}

    def __enter__(self) -> StopFlag:
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
