"""Sharded generation: any method's generator, split over the ranks of a world (DESIGN.md section 4).

The method knows nothing of ranks. Here, a `ShardPlan` of the generator's layout gives each rank its rows of
every sharding unit; `part_of` turns them into the generator's `Part` (the column ranges it builds fixed state
for, with ``world.sum`` as the sum over parts), so the method's builder makes a generator holding about 1/N of
its fixed state (mapping columns, subspace projection and ``theta0``, RPG ring positions). `Sharded` wraps that
generator for `MappedModel`: on every forward each rank generates its rows of each unit and all-gathers them
(`gather_rows`: backward is a SUM reduce-scatter, so each rank back-propagates the summed gradient of its own
rows into the replicated latents); the generator's ``assemble`` then makes the unit's target tensors. The
trainer averages the latent gradients over ranks once, which makes the update that of one process on the
global batch (invariant 4).

``per_unit``: each unit that is a module of the target is generated and gathered just before that module
runs, freed after, and regenerated in backward (activation checkpointing of the unit), so peak generated
memory is one unit. Works in one process too (a world of one).
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call
from torch.utils.checkpoint import checkpoint

from mapscale.distributed.collectives import gather_rows
from mapscale.distributed.plan import ShardPlan
from mapscale.distributed.traffic import Traffic
from mapscale.distributed.world import World
from mapscale.mapping.contract import Generator, Part, group_offsets, views
from mapscale.mapping.layout import ParamLayout
from mapscale.mapping.mapped import MappedModel


def unit_ranges(plan: ShardPlan, layout: ParamLayout, rank: int) -> list[list[tuple[int, int]]]:
    """Per unit, the ranges of the generator's flat vector rank ``rank`` owns, in the unit's row order:
    contiguous runs of one group's segments merged into one range."""
    offsets = group_offsets(layout)
    out = []
    for unit in plan.units:
        ranges: list[tuple[int, int]] = []
        last_group = None
        for segment in unit.rank_segments(rank):
            start = offsets[segment.group] + segment.group_offset
            if ranges and last_group == segment.group and ranges[-1][1] == start:
                ranges[-1] = (ranges[-1][0], start + segment.numel)
            else:
                ranges.append((start, start + segment.numel))
            last_group = segment.group
        out.append(ranges)
    return out


def part_of(plan: ShardPlan, layout: ParamLayout, world: World) -> Part:
    """Rank ``world.rank``'s `Part` of the generator's flat vector under ``plan``."""
    ranges = tuple(r for unit in unit_ranges(plan, layout, world.rank) for r in unit)
    return Part(ranges=ranges, total=lambda tensor: world.sum(tensor, control=True), index=world.rank, count=world.size)  # sums of fixed state


class Sharded:
    """A generator holding rank ``world.rank``'s part of ``plan``, joined to the other ranks' (`MappedModel.sharding`)."""

    def __init__(self, generator: Generator, plan: ShardPlan, world: World, *, per_unit: bool = False) -> None:
        layout = generator.layout
        self.generator, self.plan, self.world, self.per_unit = generator, plan, world, per_unit
        self.ranges = unit_ranges(plan, layout, world.rank)
        if generator.part.ranges != tuple(r for unit in self.ranges for r in unit):
            raise ValueError("the generator does not hold this rank's part of the plan; build it with part_of(plan, layout, world)")
        specs = {spec.name: spec for spec in layout.generated_tensors()}
        self.unit_specs = [[specs[segment.tensor] for segment in unit.segments] for unit in plan.units]

    def generate_unit(self, index: int, latents: list[Tensor] | None = None) -> dict[str, Tensor]:
        """The target tensors of unit ``index``: this rank's rows generated, the unit gathered, then assembled."""
        parts = [self.generator.generate(start, stop, latents) for start, stop in self.ranges[index]]
        local = torch.cat(parts) if len(parts) > 1 else parts[0] if parts else self._empty()  # (rows owned,)
        flat = gather_unit(self.plan, index, local, self.world.group, traffic=self.world.traffic)  # (unit rows,): its tensors back to back
        return self.generator.assemble(views(flat, self.unit_specs[index]))

    def _empty(self) -> Tensor:
        reference = next(iter(self.generator.latents), None)
        return torch.zeros(0) if reference is None else reference.new_zeros(0)

    def generate(self, latents: list[Tensor] | None = None) -> dict[str, Tensor]:
        """Every generated tensor, unit by unit (a collective: every rank calls it)."""
        return {name: t for index in range(len(self.plan.units)) for name, t in self.generate_unit(index, latents).items()}

    def forward(self, model: MappedModel, args: tuple, kwargs: dict):
        """The target's forward: every unit gathered first, or (``per_unit``) each unit module's tensors generated
        and gathered only while that module runs (`_unit_just_in_time`)."""
        if not self.per_unit:
            return model.forward_with(self.generate(), *args, **kwargs)
        modules = dict(model.target.named_modules())
        eager: dict[str, Tensor] = {}
        with contextlib.ExitStack() as stack:
            for index, unit in enumerate(self.plan.units):
                if unit.name in modules and unit.name:
                    stack.enter_context(_unit_just_in_time(modules[unit.name], unit.name, lambda index=index: self.generate_unit(index)))
                else:
                    eager.update(self.generate_unit(index))
            return model.forward_with(eager, *args, **kwargs)


def shard(model: MappedModel, plan: ShardPlan, world: World, *, per_unit: bool = False) -> MappedModel:
    """``model`` (its generator built with ``part_of(plan, ...)``) generating through `Sharded`."""
    model.sharding = Sharded(model.generator, plan, world, per_unit=per_unit)
    return model


def gather_unit(plan: ShardPlan, index: int, local: Tensor, group=None, traffic: Traffic | None = None) -> Tensor:
    """``(rows owned,) -> (unit rows,)``: pad to the unit's equal chunk, all-gather (counted in ``traffic``), drop
    the padding."""
    if plan.world_size == 1:  # one process (per-unit gathering without ranks): nothing to gather
        return local
    unit = plan.units[index]
    chunk = unit.rows_per_rank
    gathered = gather_rows(F.pad(local, (0, chunk - local.shape[0])), group, traffic).view(plan.world_size, chunk)
    lengths = [stop - start for start, stop in (unit.rank_range(r) for r in range(plan.world_size))]
    if all(length == chunk for length in lengths):
        return gathered.view(-1)
    return torch.cat([gathered[r, :length] for r, length in enumerate(lengths)])


@contextlib.contextmanager
def _unit_just_in_time(module: nn.Module, prefix: str, generate) -> Iterator[None]:
    """While active, ``module``'s forward generates its tensors (``generate() -> {full name: tensor}``) and runs
    under non-reentrant checkpointing. Its forward is swapped on the instance for the duration only, the way
    ``functional_call`` swaps tensors; running twice (recomputation) restores the module's buffers, so
    BatchNorm statistics are updated once per step."""
    original = type(module).forward.__get__(module)
    calls, inside = [0], [False]

    def run_unit(*args, **kwargs):
        tensors = {name[len(prefix) + 1 :]: t for name, t in generate().items()}
        recompute = calls[0] > 0
        calls[0] += 1
        saved = {n: b.clone() for n, b in module.named_buffers() if b.numel()} if recompute else {}
        inside[0] = True
        try:
            return functional_call(module, tensors, args, kwargs, tie_weights=False, strict=False)
        finally:
            inside[0] = False
            with torch.no_grad():
                for name, value in saved.items():
                    module.get_buffer(name).copy_(value)

    def forward(*args, **kwargs):
        if inside[0]:  # the call functional_call makes inside run_unit
            return original(*args, **kwargs)
        return checkpoint(run_unit, *args, use_reentrant=False, **kwargs)

    module.forward = forward
    try:
        yield
    finally:
        del module.forward



@dataclass
class GeneratedBytes:
    """Bytes of gathered unit weights alive now (``live``) and at most so far (``peak``): `track_gathered_units`."""

    live: int = 0
    peak: int = 0

    def add(self, size: int) -> None:
        self.live += size
        self.peak = max(self.peak, self.live)

    def release(self, size: int) -> None:
        self.live -= size


@contextlib.contextmanager
def track_gathered_units() -> Iterator[GeneratedBytes]:
    """Inside the block, every unit `Sharded` generates (gathers, or under local generation builds alone) is
    counted from the tensor itself until freed: the peak bytes of generated weights alive at once, not RSS. Each
    gathered unit gets a base of its own (a copy), alive while any view of it (the unit's tensors) is."""
    global gather_unit
    original, counts = gather_unit, GeneratedBytes()

    def tracked(plan: ShardPlan, index: int, local: Tensor, group=None, **counted) -> Tensor:
        out = original(plan, index, local, group, **counted).clone()
        size = out.numel() * out.element_size()
        counts.add(size)
        weakref.finalize(out, counts.release, size)
        return out

    gather_unit = tracked
    try:
        yield counts
    finally:
        gather_unit = original
