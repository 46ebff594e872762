"""The one count of what mapscale's collectives move (DESIGN.md invariant 6): bytes per rank, by kind.

Every collective mapscale issues goes through `mapscale.distributed.world.World` or
`mapscale.distributed.collectives`, and each records itself here once, where it is issued, as the bytes one rank
sends in a ring implementation with ``N`` ranks and ``S`` bytes of payload (DESIGN.md section 4):

- ``all_reduce``: ``2 (N - 1) / N * S`` (reduce-scatter, then all-gather), ``S`` the reduced tensor;
- ``all_gather``: ``(N - 1) / N * S``, ``S`` the gathered (output) tensor;
- ``reduce_scatter``: ``(N - 1) / N * S``, ``S`` the input tensor;
- ``broadcast``: ``(N - 1) / N * S`` (a pipelined ring), ``S`` the payload;
- ``control``: the small collectives that steer a run rather than train it (the agreed stop flag, the logged
  mean losses, evaluation sums, run directory names), whatever their kind.

DeepSpeed's engine reduces gradients with its own collectives, which are not counted (`counted` says so).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

KINDS = ("all_gather", "reduce_scatter", "all_reduce", "broadcast", "control")
RING = {"all_reduce": 2.0, "all_gather": 1.0, "reduce_scatter": 1.0, "broadcast": 1.0}


def byte_size(count: float) -> str:
    """``count`` bytes in the largest unit that keeps the figure at 1 or more (B, KiB, MiB, GiB)."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if count >= scale:
            return f"{count / scale:,.2f} {unit}"
    return f"{count:,.0f} B"


def gib(count: float) -> str:
    """``count`` bytes in GiB, 3 decimals (memory figures of `mapscale inspect` and ``distributed.generation``)."""
    return f"{count / 2**30:,.3f} GiB"


def ring_bytes(kind: str, payload_bytes: int, world_size: int) -> float:
    """Bytes one rank sends for one ring collective of ``kind`` over ``world_size`` ranks (0 on one rank)."""
    if world_size <= 1:
        return 0.0
    return RING[kind] * (world_size - 1) / world_size * payload_bytes


@dataclass
class Traffic:
    """Bytes per rank by kind: in total, and since the last `take_per_step` (with the optimiser steps taken)."""

    total: dict[str, float] = field(default_factory=lambda: dict.fromkeys(KINDS, 0.0))
    recent: dict[str, float] = field(default_factory=lambda: dict.fromkeys(KINDS, 0.0))
    steps: int = 0
    recent_steps: int = 0
    counted: bool = True  # False when an engine (DeepSpeed) moves gradients past this count
    _control: int = 0  # inside `as_control` blocks

    def add(self, kind: str, payload_bytes: int, world_size: int, *, control: bool = False) -> None:
        sent = ring_bytes(kind, payload_bytes, world_size)
        for book in (self.total, self.recent):
            book["control" if control or self._control else kind] += sent

    @contextlib.contextmanager
    def as_control(self) -> Iterator[None]:
        """Everything moved inside the block counts as ``control`` (an evaluation's weight gathers and sums)."""
        self._control += 1
        try:
            yield
        finally:
            self._control -= 1

    def end_step(self) -> None:
        """One optimiser step done (the per-step figures divide by these)."""
        self.steps += 1
        self.recent_steps += 1

    def reset(self) -> None:
        """Start counting afresh (a run's first step: what building the model moved is not a step's)."""
        self.total, self.recent = dict.fromkeys(KINDS, 0.0), dict.fromkeys(KINDS, 0.0)
        self.steps = self.recent_steps = 0

    def take_per_step(self) -> dict[str, float]:
        """``{"bytes_<kind>": bytes per rank per step}`` since the last call, for ``metrics.jsonl``."""
        steps = max(self.recent_steps, 1)
        out = {f"bytes_{kind}": value / steps for kind, value in self.recent.items()}
        self.recent, self.recent_steps = dict.fromkeys(KINDS, 0.0), 0
        return out

    def per_step(self) -> dict[str, float]:
        """Bytes per rank per step by kind over every step counted (``result.json``)."""
        steps = max(self.steps, 1)
        return {kind: value / steps for kind, value in self.total.items()} | {"steps": self.steps, "counted": self.counted}
