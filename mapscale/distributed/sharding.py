"""A rank's `Shard` of the mapping: its rows of each sharding unit, the gather and the reduce that join it to
the other ranks (DESIGN.md section 4).

``map_model(..., shard=sharding(world, units))`` gives a generator that builds only this rank's mapping
columns, from the seed, and on every forward generates its rows of each unit and all-gathers them
(`gather_rows`: backward is a SUM reduce-scatter, so each rank back-propagates the summed gradient of its own
rows into the replicated latents). The trainer then averages the latent gradients over ranks once, which makes
the update that of one process on the global batch (invariant 4).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from mapscale.distributed.collectives import gather_rows
from mapscale.distributed.plan import ShardPlan
from mapscale.distributed.world import World
from mapscale.mapping.generator import GatherUnit, Shard
from mapscale.mapping.layout import ParamLayout


def sharding(world: World, units: Sequence[str] | None = None) -> Callable[[ParamLayout], Shard]:
    """``layout -> Shard`` of rank ``world.rank``: the `ShardPlan` over ``world.size`` ranks with ``units``
    (tensor-name prefixes; None: the whole target as one unit)."""

    def make(layout: ParamLayout) -> Shard:
        return shard_of(ShardPlan.from_layout(layout, world.size, units), world)

    return make


def shard_of(plan: ShardPlan, world: World) -> Shard:
    """This rank's pieces of ``plan``: its rows of each unit, merged into one piece per contiguous run of a
    group's flat vector (one mapping operator each)."""
    pieces: list[tuple[int, int, int]] = []
    units = []
    for unit in plan.units:
        held: list[int] = []
        for segment in unit.rank_segments(world.rank):
            last = pieces[held[-1]] if held else None
            if last is not None and last[0] == segment.group and last[2] == segment.group_offset:
                pieces[held[-1]] = (last[0], last[1], last[2] + segment.numel)
            else:
                pieces.append((segment.group, segment.group_offset, segment.group_offset + segment.numel))
                held.append(len(pieces) - 1)
        units.append(GatherUnit(unit.name, tuple(held), tuple((s.tensor, s.offset) for s in unit.segments)))
    return Shard(
        pieces=tuple(pieces),
        units=tuple(units),
        gather=lambda index, local: gather_unit(plan, index, local, world.group),
        reduce=world.sum,
        index=world.rank,
        count=world.size,
    )


def gather_unit(plan: ShardPlan, index: int, local: Tensor, group=None) -> Tensor:
    """``(rows owned,) -> (unit rows,)``: pad to the unit's equal chunk, all-gather, drop the padding."""
    if plan.world_size == 1:  # one process (per-unit gathering without ranks): nothing to gather
        return local
    unit = plan.units[index]
    chunk = unit.rows_per_rank
    gathered = gather_rows(F.pad(local, (0, chunk - local.shape[0])), group).view(plan.world_size, chunk)
    lengths = [stop - start for start, stop in (unit.rank_range(r) for r in range(plan.world_size))]
    if all(length == chunk for length in lengths):
        return gathered.view(-1)
    return torch.cat([gathered[r, :length] for r, length in enumerate(lengths)])
