"""The sharding plan: which output rows of the fixed mapping each rank owns (DESIGN.md section 4).

A *sharding unit* is a set of generated tensors gathered together: by default the whole target, or one unit
per block (tensor-name prefixes such as ``layer1``, ``layer2``, ... for a torchvision ResNet). Each unit
concatenates its tensors' elements (the rows of ``Wᵀ``, one per generated parameter) into one flat vector;
rank ``r`` owns the contiguous slice ``[floor(r * rows / N), floor((r + 1) * rows / N))``, so ranks differ by
at most one real row, and pads it to ``L = ceil(rows / N)`` rows so that every rank sends an equal chunk to
the all-gather (at most one padding row per rank). A row of group ``g`` costs ``d_g`` mapping entries, so the
plan also gives each rank's exact share of the mapping weights; under LWT those differ with the groups a
rank's rows fall in (ResNet50 LWT 2048: the heaviest rank holds 1.24x the even share at N = 2).

Pure data: no ``torch.distributed`` here. The collectives that use the plan live beside it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from mapscale.distributed.traffic import ring_bytes
from mapscale.mapping.layout import ParamLayout, TensorSpec

REST_UNIT = "(rest)"


@dataclass(frozen=True)
class Segment:
    """A run of a unit's flat vector: rows ``[offset, offset + numel)`` of the unit are elements
    ``[group_offset, group_offset + numel)`` of group ``group``'s flat vector (tensor ``tensor``)."""

    group: int
    tensor: str
    offset: int
    group_offset: int
    numel: int
    latent_dim: int


@dataclass(frozen=True)
class ShardUnit:
    name: str
    segments: tuple[Segment, ...]
    world_size: int

    @property
    def rows(self) -> int:
        """Real rows (generated parameters) of the unit."""
        return sum(s.numel for s in self.segments)

    @property
    def rows_per_rank(self) -> int:
        """``L``: the padded chunk every rank contributes to the all-gather."""
        return -(-self.rows // self.world_size)

    @property
    def padded_rows(self) -> int:
        return self.rows_per_rank * self.world_size

    def rank_range(self, rank: int) -> tuple[int, int]:
        """``[start, stop)`` of the real rows rank ``rank`` owns; lengths differ by at most one across ranks."""
        return rank * self.rows // self.world_size, (rank + 1) * self.rows // self.world_size

    def rank_segments(self, rank: int) -> list[Segment]:
        """The parts of this unit's segments that rank ``rank`` owns, clipped to its range."""
        start, stop = self.rank_range(rank)
        owned = []
        for s in self.segments:
            lo, hi = max(start, s.offset), min(stop, s.offset + s.numel)
            if lo < hi:
                cut = lo - s.offset
                owned.append(Segment(s.group, s.tensor, lo, s.group_offset + cut, hi - lo, s.latent_dim))
        return owned

    def mapping_numel(self, rank: int) -> int:
        return sum(s.numel * s.latent_dim for s in self.rank_segments(rank))


@dataclass(frozen=True)
class ShardPlan:
    world_size: int
    units: tuple[ShardUnit, ...]

    @classmethod
    def from_layout(cls, layout: ParamLayout, world_size: int, units: Sequence[str] | None = None) -> ShardPlan:
        """Plan ``layout`` over ``world_size`` ranks. ``units``: tensor-name prefixes, one unit each, in order;
        tensors matching none go to a last unit, ``"(rest)"``. None: one unit, the whole target."""
        if world_size < 1:
            raise ValueError(f"world_size must be >= 1, got {world_size}")
        prefixes = list(units or [])
        members: dict[str, list[tuple[int, TensorSpec, int]]] = {p: [] for p in prefixes}
        for index, group in enumerate(layout.groups):
            for spec in group.tensors:
                unit = next((p for p in prefixes if spec.name == p or spec.name.startswith(p + ".")), None)
                members.setdefault(unit if unit is not None else (REST_UNIT if prefixes else "whole"), []).append(
                    (index, spec, group.latent_dim)
                )
        empty = [p for p in prefixes if not members[p]]
        if empty:
            raise ValueError(f"sharding units {empty} hold no generated tensor")
        planned = []
        for name, tensors in members.items():
            segments, offset = [], 0
            for index, spec, latent_dim in tensors:
                segments.append(Segment(index, spec.name, offset, spec.offset, spec.numel, latent_dim))
                offset += spec.numel
            planned.append(ShardUnit(name, tuple(segments), world_size))
        return cls(world_size, tuple(planned))

    def mapping_numel(self, rank: int) -> int:
        """Mapping entries rank ``rank`` holds under this plan (a single process holds them all at N = 1)."""
        return sum(unit.mapping_numel(rank) for unit in self.units)

    def step_bytes(self, trainable: int, element: int, *, sharded: bool, per_unit: bool = False) -> dict[str, float]:
        """Bytes per rank per step by collective kind (`mapscale.distributed.traffic`), ``element`` bytes a value:
        the all-reduce of ``trainable`` gradients; under ``sharded`` generation also each unit's all-gather (its
        padded rows; twice for a module unit with ``per_unit``, whose backward regenerates it) and one
        reduce-scatter of its gradient. What the counter must read for a step without control traffic."""
        n = self.world_size
        out = {"all_gather": 0.0, "reduce_scatter": 0.0, "all_reduce": ring_bytes("all_reduce", trainable * element, n)}
        if sharded:
            for unit in self.units:
                size = unit.padded_rows * element
                out["all_gather"] += (2 if per_unit and unit.name != REST_UNIT else 1) * ring_bytes("all_gather", size, n)
                out["reduce_scatter"] += ring_bytes("reduce_scatter", size, n)
        return out

    def max_mapping_numel(self) -> int:
        return max(self.mapping_numel(rank) for rank in range(self.world_size))
