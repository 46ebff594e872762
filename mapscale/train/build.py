"""Builders: a recipe into the objects a run needs (model, loss, optimiser and schedule, the step updater), and
`prepare`, which builds them all and checks what a run needs, before anything is written to disk."""

from __future__ import annotations

import ctypes
import math
import os
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from rich.console import Console
from torch import nn

from mapscale.data import DataError, DataSplits, build_datasets
from mapscale.distributed.plan import ShardPlan
from mapscale.distributed.sharded import part_of, shard
from mapscale.distributed.step import DeepSpeedStep, TorchStep, deepspeed_config
from mapscale.distributed.traffic import gib
from mapscale.distributed.world import World
from mapscale.loss import MappingLoss
from mapscale.mapping.mapped import MappedModel
from mapscale.mapping.operators import mapping_key
from mapscale.methods import METHODS, Build
from mapscale.recipe import Recipe
from mapscale.targets import build_target
from mapscale.train.checkpoint import fingerprint, start_latents
from mapscale.train.compiled import CompiledStep, compile_model, resolve_compile
from mapscale.train.evaluate import model_dtype


def build_model(recipe: Recipe, device: torch.device | str = "cpu", world: World | None = None, generation: str | None = None) -> MappedModel:
    """The recipe's target with its method applied (`mapscale.methods.METHODS` holds one builder per method).
    The target's default init is seeded by ``recipe.seed``, the method's fixed randomness by its ``seed``, so
    the same recipe builds the same model in every process. In a multi-rank ``world`` (or with
    ``distributed.gather="per-unit"``) a generating method's generator holds only this rank's part of the flat
    vector (``distributed.units``) and `mapscale.distributed.shard` gathers the rest, unless ``generation``
    (``distributed.generation`` resolved by `resolve_generation`; None: resolved here) is ``local``, where each rank
    builds the whole generator; on the meta device the part is built for shapes and bytes only (``mapscale inspect``)."""
    # fp64 builds in float64 throughout: the target's init, the latents' and adapters' draws and the fixed state.
    # float32 draws differ by an ulp with the CPU's vector width (measured: torch's uniform_ and normal_ under
    # ATEN_CPU_CAPABILITY=default against avx512 differ in half of 100,000 values; float64 draws not at all).
    device = torch.device(device)
    if world is not None and world.distributed and generation is None:
        generation = resolve_generation(recipe, world, device).mode
    with default_dtype(model_dtype(recipe)):
        return _build_model(recipe, device, world, generation == "local")


def _build_model(recipe: Recipe, device: torch.device, world: World | None, local: bool) -> MappedModel:
    torch.manual_seed(recipe.seed)
    meta = device.type == "meta"
    method = METHODS[recipe.mapping.method]
    dist = recipe.distributed
    dtype = model_dtype(recipe)
    with torch.device("meta") if meta else nullcontext():
        target = build_target(recipe.target.name, recipe.target.args, None if meta or method.pretrained else recipe.target.weights, recipe.task)
    target = target.to(dtype)  # before the method reads it: the layout records the dtype of every generated tensor
    per_unit = dist.gather == "per-unit"
    owners = World() if world is None or local else world  # the ranks that share the fixed state: one, under local
    sharded = world is not None and (owners.distributed or per_unit)
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
        plans.append(ShardPlan.from_layout(layout, owners.size, dist.units or None))
        return part_of(plans[-1], layout, owners)

    model = method.build(recipe.mapping, Build(recipe, target, device, part if sharded else None))
    if sharded:
        shard(model, plans[-1], owners, per_unit=per_unit)
    # fp64: whatever a builder made in float32 (constants exact in float64) computes in float64. Tensors a builder
    # keeps in half precision (a bf16 checkpoint's frozen weights under optim.precision='bf16') stay as they are.
    model = model._apply(lambda t: t.to(dtype) if t.is_floating_point() and t.dtype not in (torch.bfloat16, torch.float16) else t)
    if meta:
        return model
    _return_freed_memory()
    return model.to(device)


LOCAL_SHARE = 0.25
"""``distributed.generation='auto'`` picks ``local`` where the whole fixed state and one copy of the generated
weights take at most this share of a rank's device memory (the rest is the activations' and the data's)."""


@dataclass(frozen=True)
class Generation:
    """``distributed.generation`` resolved for a run: ``mode`` (``local`` or ``sharded``), why, and the bytes behind
    it (whole fixed state, peak generated weights of one rank under local, the rank's device memory)."""

    mode: str
    reason: str
    fixed_bytes: int = 0
    generated_bytes: int = 0
    device_bytes: int = 0

    def as_dict(self) -> dict:
        return {"mode": self.mode, "reason": self.reason, "fixed_bytes": self.fixed_bytes, "generated_bytes": self.generated_bytes, "device_bytes": self.device_bytes}


def device_memory(device: torch.device, world: World) -> int:
    """Bytes of memory one rank can count on: its GPU's, or this machine's RAM over the ranks on it."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    import psutil  # a dependency of deepspeed

    ranks_here = int(os.environ.get("LOCAL_WORLD_SIZE", world.size))
    return psutil.virtual_memory().total // max(ranks_here, 1)


def local_bytes(recipe: Recipe, model: MappedModel | None = None) -> tuple[int, int]:
    """``(fixed, generated)`` bytes one rank holds under local generation: the method's whole fixed state, and one
    copy of the generated weights (the largest unit's with ``gather='per-unit'``), from shapes alone (a meta build;
    ``model``: one already made, in one process)."""
    model = model if model is not None else build_model(recipe, "meta")
    element = torch.empty((), dtype=model_dtype(recipe)).element_size()
    layout = model.layout
    if recipe.distributed.gather == "per-unit" and layout.groups:
        plan = ShardPlan.from_layout(layout, 1, recipe.distributed.units or None)
        return model.fixed_bytes(), max(unit.rows for unit in plan.units) * element
    return model.fixed_bytes(), layout.num_generated * element


def resolve_generation(recipe: Recipe, world: World, device: torch.device, model: MappedModel | None = None) -> Generation:
    """``distributed.generation`` for this run: ``local`` in one process, for methods that generate nothing and
    where asked or (``auto``) where `local_bytes` (of ``model``, when given) fit `LOCAL_SHARE` of `device_memory`;
    else ``sharded``.
    Raises ValueError for ``local`` asked for (in one process too) that cannot fit the device's memory at all."""
    chosen = recipe.distributed.generation
    if not (world.distributed or chosen == "local"):
        return Generation("local", "one process")
    if not METHODS[recipe.mapping.method].generates:
        return Generation("local", f"mapping.method={recipe.mapping.method!r} generates nothing: plain data parallel")
    if chosen == "sharded":
        return Generation("sharded", "distributed.generation='sharded'")
    fixed, generated = local_bytes(recipe, model)
    memory = device_memory(device, world) if device.type != "meta" else 0
    need = fixed + generated
    if chosen == "local":
        if memory and need > memory:
            raise ValueError(
                f"distributed.generation='local' holds {gib(fixed)} of fixed state and {gib(generated)} of generated weights on "
                f"every rank, more than its {gib(memory)} of memory; use distributed.generation='sharded' (or 'auto')"
            )
        return Generation("local", "distributed.generation='local'", fixed, generated, memory)
    if memory and need <= LOCAL_SHARE * memory:
        return Generation("local", f"auto: the whole fixed state ({gib(fixed)}) and the generated weights ({gib(generated)}) fit {LOCAL_SHARE:.0%} of a rank's {gib(memory)}", fixed, generated, memory)
    return Generation("sharded", f"auto: the whole fixed state ({gib(fixed)}) and the generated weights ({gib(generated)}) exceed {LOCAL_SHARE:.0%} of a rank's {gib(memory)}", fixed, generated, memory)


@contextmanager
def default_dtype(dtype: torch.dtype):
    """``torch.get_default_dtype()`` is ``dtype`` inside the block (the target's builder creates its tensors)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def check_vocabulary(model: nn.Module, data: DataSplits) -> None:
    """Refuse a language model whose token embedding (its first ``nn.Embedding``) holds fewer ids than the data's
    tokens take (``data.tokenizer``): the first batch would fail with an index error deep in the forward."""
    if data.vocab_size is None:
        return
    embedding = next((m for m in model.modules() if isinstance(m, nn.Embedding)), None)
    if embedding is not None and embedding.num_embeddings < data.vocab_size:
        raise DataError(
            f"the target's token embedding holds {embedding.num_embeddings:,} ids and the data's tokens take {data.vocab_size:,} "
            "(data.tokenizer); raise the target's vocabulary (target.args) to at least that"
        )


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
        return lambda output, target: F.mse_loss(output.reshape(target.shape), target.to(torch.float64 if output.dtype == torch.float64 else torch.float32))
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


def param_groups(recipe: Recipe, params: list[nn.Parameter], model: MappedModel | None = None) -> list[dict]:
    """The optimiser's groups of ``params``: one at ``recipe.lr``, and, when ``mapping.trainable_lr`` is set, the
    target's own directly trained tensors (those of ``model.target``) in a second group at that rate."""
    direct_lr = getattr(recipe.mapping, "trainable_lr", None)
    if direct_lr is None or model is None:
        return [{"params": params, "lr": recipe.lr}]
    direct = {id(p) for p in model.target.parameters()}
    groups = [{"params": [p for p in params if id(p) not in direct], "lr": recipe.lr}, {"params": [p for p in params if id(p) in direct], "lr": direct_lr}]
    return [g for g in groups if g["params"]]


def build_optimizer(recipe: Recipe, params: list[nn.Parameter], total_steps: int, model: MappedModel | None = None):
    """The optimiser and its schedule over ``params`` (``model``: where `param_groups` finds the directly trained tensors)."""
    o = recipe.optim
    groups = param_groups(recipe, params, model)
    if o.optimizer == "sgd":
        optimizer = torch.optim.SGD(groups, lr=recipe.lr, momentum=o.momentum, weight_decay=o.weight_decay)
    else:
        cls = torch.optim.AdamW if o.optimizer == "adamw" else torch.optim.Adam
        optimizer = cls(groups, lr=recipe.lr, weight_decay=o.weight_decay)
    if o.schedule == "onecycle":
        peaks = [g["lr"] for g in groups]
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=peaks if len(peaks) > 1 else recipe.lr, total_steps=total_steps, pct_start=max(o.warmup_fraction, 1e-3))
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


def check_units(recipe: Recipe, model: MappedModel) -> None:
    """Refuse ``distributed.units`` prefixes that name no tensor of the target, in a single process too (where no
    sharding plan would notice): a typo would otherwise train a whole run with the unit silently ignored."""
    layout = model.layout
    names = [t.name for t in (*layout.generated_tensors(), *layout.trainable, *layout.frozen)]
    unmatched = [p for p in recipe.distributed.units if not any(n == p or n.startswith(p + ".") for n in names)]
    if unmatched:
        tops = sorted({n.split(".")[0] for n in names})
        raise ValueError(
            f"distributed.units {unmatched} match no tensor of {recipe.target.name}; units are module-path prefixes such as "
            f"{tops[:8]}{' ...' if len(tops) > 8 else ''} (mapscale inspect RECIPE lists the tensors)"
        )


def check_world(recipe: Recipe, world_size: int) -> None:
    """Refuse a world the recipe cannot run on (known before any rank starts: `mapscale launch` checks it)."""
    accumulation = recipe.optim.accumulation_steps
    if recipe.optim.batch_size < world_size * accumulation:
        raise ValueError(
            f"optim.batch_size {recipe.optim.batch_size} is smaller than {world_size} ranks x {accumulation} accumulation steps: "
            "every micro-batch needs examples; raise optim.batch_size or use fewer ranks"
        )


def check_paths(recipe: Recipe, *, data_needed: bool = True) -> None:
    """Refuse files the recipe names that are not there, and (``data_needed``) a local source without
    ``data.path``. Checked here, not when a recipe is read: a run's recipe.json is also read where its data is
    not (`mapscale report`), and recipe files leave ``data.path`` to the command line."""
    if data_needed and recipe.data.needs_path and recipe.data.path is None:
        raise ValueError(f"data.name={recipe.data.name!r} reads local files: give data.path")
    for name, path in (("target.weights", recipe.target.weights), ("data.path", recipe.data.path)):
        if path is not None and not Path(path).exists():
            raise FileNotFoundError(f"{name}: {path} does not exist")
    root = Path(recipe.output.root)
    if root.exists() and not root.is_dir():
        raise NotADirectoryError(f"output.root: {root} is a file, not a folder for run directories")


@dataclass
class Prepared:
    """Everything a run builds from its recipe, before its run directory exists: a failure here is bad input."""

    recipe: Recipe
    world: World
    device: torch.device
    data: DataSplits
    model: MappedModel
    loss_fn: MappingLoss
    params: list[nn.Parameter]
    updater: TorchStep | DeepSpeedStep
    batches_per_epoch: int
    total_steps: int
    generation: dict = field(default_factory=dict)  # `Generation.as_dict` of the resolved distributed.generation
    compiled: CompiledStep = field(default_factory=lambda: CompiledStep(False, "not prepared"))  # optim.compile resolved

    @property
    def pieces(self) -> int:
        """Micro-batches per global batch, over all ranks."""
        return self.world.size * self.recipe.optim.accumulation_steps


def prepare(recipe: Recipe, world: World, device: str | torch.device | None = None, console: Console | None = None, *, warm_start: bool = True) -> Prepared:
    """Build the run of ``recipe`` in ``world``: data, model (started from ``mapping.latent_from`` when
    ``warm_start``), loss, optimiser, schedule and updater. Raises ``ValueError`` (``DataError``, ``RecipeError``)
    or ``FileNotFoundError`` for what the user must fix; nothing is written."""
    console = console or Console(quiet=True)
    device = world.device if world.distributed else torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    check_world(recipe, world.size)
    check_paths(recipe)
    accumulation = recipe.optim.accumulation_steps
    pieces = world.size * accumulation
    data = build_datasets(recipe.data, recipe.task)
    if data.note:
        console.print(data.note)  # where the data came from (the embedded deepfake set)
    if recipe.data.augment_shift and len(data.input_shape) != 3:
        raise DataError(f"data.augment_shift moves images; the inputs of data.name={recipe.data.name!r} have shape {data.input_shape}")
    generation = resolve_generation(recipe, world, device)
    if world.distributed:
        console.print(f"generation: {generation.mode} ({generation.reason})")
    compiled = resolve_compile(recipe, world, device, generation.mode)  # refused before anything is built
    model = build_model(recipe, device, world, generation.mode)
    check_units(recipe, model)
    check_vocabulary(model, data)
    note = getattr(model.target, "build_note", None)  # e.g. an hf: folder without weights, initialised afresh
    if note:
        console.print(f"note: {note}")
    if warm_start and recipe.mapping.warm_start() is not None:
        start_latents(model, recipe.mapping.warm_start(), fingerprint(model, recipe))
    loss_fn = build_loss(recipe).to(device, model_dtype(recipe))  # fp64: the learned coefficients too
    batches_per_epoch = math.ceil(len(data.train) / recipe.optim.batch_size)
    last_batch = len(data.train) % recipe.optim.batch_size
    if 0 < last_batch < pieces:  # some micro-batch would get no example of the epoch's last batch
        batches_per_epoch -= 1
        console.print(f"note: each epoch's last batch ({last_batch} examples) is skipped: fewer than its {pieces} micro-batches")
    if batches_per_epoch < 1:
        raise ValueError(f"the training split has {len(data.train)} examples, fewer than one batch of {recipe.optim.batch_size}; lower optim.batch_size")
    total_steps = recipe.optim.epochs * batches_per_epoch
    if recipe.optim.max_steps is not None:
        total_steps = min(total_steps, recipe.optim.max_steps)
    params = trainable_parameters(model, loss_fn)
    optimizer, schedule = build_optimizer(recipe, params, total_steps, model)
    ds_config = recipe.distributed.deepspeed_config()
    if ds_config is not None and world.distributed:
        config = deepspeed_config(ds_config, batch_size=recipe.optim.batch_size, accumulation=accumulation, world=world, grad_clip=recipe.optim.grad_clip)
        updater = DeepSpeedStep(model, loss_fn, optimizer, schedule, config, world)
    else:
        if ds_config is not None:
            console.print("note: distributed.deepspeed applies on several ranks; one process steps with plain PyTorch (optim section)")
        updater = TorchStep(params, optimizer, schedule, recipe.optim.grad_clip, world, accumulation)
    if compiled.enabled:  # after the warm start: the eager generation it runs first sees the starting latents
        compile_model(model, compiled.scope)
        console.print(f"compile: the mapped forward ({compiled.reason}); compiled on the first step, its time logged as compile_s")
    world.traffic.reset()  # what building moved (calibration sums) is not a step's
    return Prepared(recipe, world, device, data, model, loss_fn, params, updater, batches_per_epoch, total_steps, generation.as_dict(), compiled)
