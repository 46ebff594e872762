"""The generator contract: what `MappedModel`, the Mapping Loss, the trainer, export, `space` and the
distributed layer may call on the thing that produces a target's parameters.

Every method implements it: the mapping (`MappingGenerator`, with its Table 7 variants, the LRD add-on and
the fine-tuning mode as *assemblies*), the random subspace and RPG (`mapscale.mapping.peers`), and the
methods that generate nothing (`DirectGenerator`: full training, a linear probe, peft's LoRA / VeRA).

**The flat vector.** A generator's `ParamLayout` lists groups of tensors; their flat vectors back to back,
in group order, form one flat vector of ``layout.num_generated`` elements. ``generate(start, stop)`` gives
any contiguous range of it from the latents, and ``assemble`` turns named views of it (the layout's tensors)
into the target's tensors: the identity with tied aliases for most methods, ``U V`` products for LRD,
pretrained weights modulated by elements for fine-tuning.

**Parts.** A generator may hold only some column ranges of the flat vector (its `Part`): it builds the
fixed state (mapping columns, ring positions, ``theta0``) of those ranges only, and sums whole-vector
statistics (the mapping's exact Gram, calibration moments, row sums for the Mapping Loss) over all the parts
with ``part.total``. The distributed layer makes one part per rank and gathers the ranges
(`mapscale.distributed.sharded`); this package knows nothing of ranks, processes or collectives.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from mapscale.mapping.layout import ParamLayout, TensorSpec


def _alone(tensor: Tensor) -> Tensor:
    return tensor


@dataclass(frozen=True)
class Part:
    """The column ranges of the flat generated vector a generator holds, and how to sum over every part.

    ranges: global ``[start, stop)`` ranges, in the order the holder generates them; None: the whole vector
        (one range per group).
    total: sums a tensor over the generators holding the other parts (identity for a single whole part);
        every holder calls it in the same order.
    index, count: this part's position among ``count`` parts, for splitting construction work (the blocks
        of a mapping's exact Gram).
    """

    ranges: tuple[tuple[int, int], ...] | None = None
    total: Callable[[Tensor], Tensor] = field(default=_alone, compare=False)
    index: int = 0
    count: int = 1

    @property
    def whole(self) -> bool:
        return self.ranges is None


WHOLE = Part()


def group_offsets(layout: ParamLayout) -> list[int]:
    """Where each group's flat vector starts in the generator's flat vector."""
    offsets, position = [], 0
    for group in layout.groups:
        offsets.append(position)
        position += group.numel
    return offsets


def pieces(layout: ParamLayout, part: Part) -> list[tuple[int, int, int]]:
    """``(group, start, stop)`` in group coordinates: ``part``'s ranges cut at group boundaries, in order (the
    whole part: each group whole)."""
    if part.ranges is None:
        return [(index, 0, group.numel) for index, group in enumerate(layout.groups)]
    offsets = group_offsets(layout)
    out = []
    for start, stop in part.ranges:
        for index, group in enumerate(layout.groups):
            lo, hi = max(start, offsets[index]), min(stop, offsets[index] + group.numel)
            if lo < hi:
                out.append((index, lo - offsets[index], hi - offsets[index]))
    return out


def piece_ranges(layout: ParamLayout, held: Sequence[tuple[int, int, int]]) -> list[tuple[int, int]]:
    """The global ``[start, stop)`` range of each ``(group, start, stop)`` piece (`pieces`), for `from_pieces`."""
    offsets = group_offsets(layout)
    return [(offsets[index] + start, offsets[index] + stop) for index, start, stop in held]


def views(flat: Tensor, specs: Sequence[TensorSpec]) -> dict[str, Tensor]:
    """``flat`` (the ``specs``' elements back to back) as tensors named by each spec's first name. One
    ``split``, not a slice per tensor: a slice's backward fills a zero tensor the size of ``flat``, which made
    the backward of a 161-tensor ResNet50 vector cost 161 passes over it."""
    return {
        spec.name: piece.view(spec.shape).to(spec.dtype)
        for spec, piece in zip(specs, flat.split([spec.numel for spec in specs]), strict=True)
    }


def with_aliases(tensors: Mapping[str, Tensor], specs: Sequence[TensorSpec]) -> dict[str, Tensor]:
    """``tensors`` (by first name) under every name of their specs, tied aliases included."""
    out = {}
    for spec in specs:
        if spec.name in tensors:
            for name in spec.names:
                out[name] = tensors[spec.name]
    return out


class Assembly(Protocol):
    """How a generator's flat-vector tensors become the target's (an ``nn.Module``, so it may hold buffers).

    outputs: the target tensors it makes. flat_smoothness: whether the Mapping Loss's smoothness term is
    taken on the flat vector (True) or on the assembled tensors (False: fine-tuning's final weights).
    """

    outputs: tuple[TensorSpec, ...]
    flat_smoothness: bool

    def __call__(self, tensors: Mapping[str, Tensor]) -> dict[str, Tensor]: ...


@runtime_checkable
class Generator(Protocol):
    """What every method's generator is (an ``nn.Module``) and offers.

    Attributes:
        layout: the generated groups (of the generator's own flat vector) plus the target tensors kept
            directly trainable or frozen.
        outputs: the target's tensors that ``assemble`` produces; `MappedModel` replaces them by placeholders.
        latents: the trained vectors, one per group (a ring for RPG; empty for methods that generate nothing).
        part: the ranges of the flat vector this generator holds.
        flat_smoothness: whether the smoothness term is about the flat vector (else the assembled tensors).
    """

    layout: ParamLayout
    outputs: tuple[TensorSpec, ...]
    latents: nn.ParameterList
    part: Part
    flat_smoothness: bool

    def generate(self, start: int, stop: int, latents: Sequence[Tensor] | None = None) -> Tensor:
        """``(stop - start,)``: elements ``[start, stop)`` of the flat vector, inside one held range.
        ``latents`` (one per group) replace the trained ones (the Mapping Loss's perturbations)."""
        ...

    def assemble(self, tensors: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """The target tensors (every name, tied aliases included) made from ``tensors``: views of the flat
        vector named as the layout's tensors, for any set of whole outputs' tensors (a sharding unit's)."""
        ...

    def forward(self, latents: Sequence[Tensor] | None = None) -> dict[str, Tensor]:
        """Every output tensor, for a generator holding the whole flat vector (`generate_tensors`)."""
        ...

    def start_from(self, latents: Sequence[Tensor]) -> None:
        """Set the trained vectors (and whatever starts equal to them) to ``latents``: a warm start."""
        ...

    def jacobian_sq_norm(self, index: int) -> Tensor | None:
        """``||d theta_g / d z_g||_F²`` of group ``index`` exactly, or None (the loss then estimates it)."""
        ...

    def modulated_row_means(self, index: int) -> Tensor | None:
        """``(latent_dim,)`` row means of the modulated mapping (the alignment term's ``W_m``), or None."""
        ...

    def fixed_bytes(self) -> int:
        """Bytes of the fixed (never trained) state this generator holds: its part's share."""
        ...


def generate_tensors(generator: Generator, latents: Sequence[Tensor] | None = None) -> dict[str, Tensor]:
    """Every output tensor of a generator that holds its whole flat vector: each group generated and viewed as
    its tensors, then assembled."""
    if not generator.part.whole:
        raise RuntimeError("this generator holds a part of the flat vector; gather the parts (mapscale.distributed) for every tensor")
    named: dict[str, Tensor] = {}
    for offset, group in zip(group_offsets(generator.layout), generator.layout.groups):
        named.update(views(generator.generate(offset, offset + group.numel, latents), group.tensors))
    return generator.assemble(named)


def from_pieces(ranges: Sequence[tuple[int, int]], start: int, stop: int, generate_piece: Callable[[int], Tensor]) -> Tensor:
    """Elements ``[start, stop)`` of a flat vector held as pieces (global ``ranges``, one generated by
    ``generate_piece(k)``): the pieces overlapping it, cut to it, in order."""
    out = []
    for k, (lo, hi) in enumerate(ranges):
        first, last = max(start, lo), min(stop, hi)
        if first < last:
            piece = generate_piece(k)
            out.append(piece if (first, last) == (lo, hi) else piece[first - lo : last - lo])
    if sum(p.shape[0] for p in out) != stop - start:
        raise IndexError(f"elements [{start}, {stop}) are not all held; this part holds {list(ranges)}")
    return out[0] if len(out) == 1 else torch.cat(out)


def copy_latents(latents: Sequence[Tensor], values: Sequence[Tensor], *also: Sequence[Tensor]) -> None:
    """Copy ``values`` into ``latents`` (and into each of ``also``: vectors that start equal to them)."""
    if len(values) != len(latents) or any(z.shape != v.shape for z, v in zip(latents, values)):
        raise ValueError(f"{len(values)} latents of shapes {[tuple(v.shape) for v in values]} do not fit this generator's {[tuple(z.shape) for z in latents]}")
    with torch.no_grad():
        for target in (latents, *also):
            for z, value in zip(target, values):
                z.copy_(value)


def held_bytes(module: nn.Module, tensors: Sequence[Tensor] | None = None) -> int:
    """Bytes of ``tensors`` (default: ``module``'s buffers and frozen parameters), each storage counted once."""
    if tensors is None:
        tensors = [*module.buffers(), *(p for p in module.parameters() if not p.requires_grad)]
    held = {(t.device, t.data_ptr()) if t.device.type != "meta" and t.numel() else id(t): t for t in tensors}
    return sum(t.numel() * t.element_size() for t in held.values())
