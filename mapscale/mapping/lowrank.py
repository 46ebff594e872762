"""The LRD add-on (the paper's Table 8, DESIGN.md "Add-ons"): weights generated as rank-``r`` factors.

A Linear or Conv weight ``A`` of shape ``(m, in, *kernel)`` is viewed as an ``m x n`` matrix
(``n = in * prod(kernel)``) and generated as ``U V`` with ``U`` ``(m, r)`` and ``V`` ``(r, n)``: its mapping
rows shrink from ``m n`` to ``r (m + n)``. Every other tensor is generated as usual. The factors are ordinary
generated tensors of an ordinary `MappingGenerator` (over a parameter-only module that mirrors the target's
paths, ``<attr>_lrd_u`` / ``<attr>_lrd_v`` beside each factored weight, so LWT groups a layer's factors
together); its `Factors` assembly multiplies them out on every forward, and `MappedModel` runs the target
with the products swapped in.

Factor initialisation (what the generator calibrates to): seeded ``N(0, s²)`` entries with
``s = sqrt(std(A_0) / sqrt(r))``, so that ``U V`` has the spread of the target's own init of ``A``. With
``offset="init"`` the run therefore starts at that random low-rank product, not at ``A_0`` itself.

Mapping Loss: stability and alignment as usual; smoothness is taken on the generated factors (the exact
norm of their Jacobian), not on the products.

The paper's "CNN2 + low-rank (rank 16), 35,914 parameters": 35,914 is CNN2 with only its first fully
connected weight (800 -> 128) factored at rank **32** (``160 + 4,640 + 32 (128 + 800) + 128 + 1,290``); no
rank-16 factoring of CNN2 gives that count. `tests/test_lowrank.py` checks the arithmetic.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping

import torch
from torch import Tensor, nn

from mapscale.mapping.contract import WHOLE, Part
from mapscale.mapping.generator import GeneratorConfig, MappingGenerator
from mapscale.mapping.layout import BudgetRule, Grouping, ParamLayout, Selector, TensorSpec, _capture, _select, shape_module
from mapscale.mapping.mapped import MappedModel

FACTOR_SUFFIXES = ("_lrd_u", "_lrd_v")


def matrix_shape(spec: TensorSpec) -> tuple[int, int]:
    """``(m, n)``: a weight of shape ``(m, in, *kernel)`` as a matrix."""
    return spec.shape[0], math.prod(spec.shape[1:])


def factorable(spec: TensorSpec, rank: int) -> bool:
    """A matrix or kernel (2+ dimensions) whose rank-``rank`` factors are smaller than itself."""
    if len(spec.shape) < 2:
        return False
    m, n = matrix_shape(spec)
    return rank * (m + n) < m * n


class Factors(nn.Module):
    """The LRD assembly of a `MappingGenerator` over the factor layout: each factored weight is the product
    ``U V`` of its generated factors, every other tensor is its generated self (tied aliases included)."""

    flat_smoothness = True  # the smoothness term is taken on the generated factors, as the module docstring says

    def __init__(self, outputs: list[TensorSpec], factored: list[TensorSpec], rank: int) -> None:
        super().__init__()
        self.outputs, self.rank = tuple(outputs), rank  # the target tensors assembled (MappedModel replaces these)
        self.factored = {spec.name: spec for spec in factored}

    def forward(self, tensors: Mapping[str, Tensor]) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        for spec in self.outputs:
            if spec.name in self.factored:
                if spec.name + FACTOR_SUFFIXES[0] not in tensors:
                    continue
                u, v = (tensors[spec.name + suffix] for suffix in FACTOR_SUFFIXES)
                tensor = (u @ v).view(spec.shape)  # (m, r) @ (r, n) -> (m, n) -> the weight's shape
            elif spec.name in tensors:
                tensor = tensors[spec.name]
            else:
                continue
            for name in spec.names:
                out[name] = tensor
        return out

    def extra_repr(self) -> str:
        return f"rank={self.rank}, factored={len(self.factored)} tensors"


def low_rank_model(
    model: nn.Module,
    rank: int,
    factored: Iterable[Selector] = (),
    grouping: Grouping = "slvt",
    budget: int | Mapping[str, int] = 2048,
    *,
    seed: int = 0,
    trainable: Iterable[Selector] = (),
    frozen: Iterable[Selector] = (),
    budget_rule: BudgetRule | None = None,
    device: torch.device | str | None = None,
    part: Callable[[ParamLayout], Part] | None = None,
    **generator_options,
) -> MappedModel:
    """`map_model` with the ``factored`` weights (selectors; none: every weight with 2+ dimensions whose
    rank-``rank`` factors are smaller) generated as rank-``rank`` factors. ``trainable`` / ``frozen`` keep
    tensors out of generation as in `map_model` (factored weights cannot be among them). ``part`` (``layout
    -> Part``) makes the generator hold only some ranges of the factor layout's flat vector."""
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ValueError(f"rank must be an int >= 1, got {rank!r}")
    unknown = sorted(set(generator_options) - set(GeneratorConfig.__dataclass_fields__))
    if unknown:
        raise TypeError(f"unknown low_rank_model options {unknown}; generator options are {sorted(GeneratorConfig.__dataclass_fields__)}")
    config = GeneratorConfig(seed=seed, **generator_options)
    specs, owners = _capture(model)
    selectors = list(factored)
    chosen = set(_select(specs, owners, selectors, "factored")) if selectors else {s.name for s in specs if factorable(s, rank)}
    factored_specs = [s for s in specs if s.name in chosen]
    for spec in factored_specs:
        if len(spec.shape) < 2:
            raise ValueError(f"{spec.name!r} has shape {tuple(spec.shape)}: only weights with 2+ dimensions can be factored")
    if not factored_specs:
        raise ValueError(f"no weight of {type(model).__name__} gets smaller at rank {rank}; lower the rank or name the tensors to factor")
    if device is None:
        device = next(model.parameters()).device

    # The factor module: the target's tensors, each factored weight replaced by its two factors.
    init: dict[str, Tensor] = {}
    generator = torch.Generator().manual_seed(seed)
    for spec in specs:
        value = model.get_parameter(spec.name).detach()
        if spec.name in chosen:
            m, n = matrix_shape(spec)
            spread = math.sqrt(_std(value) / math.sqrt(rank))
            for suffix, shape in zip(FACTOR_SUFFIXES, ((m, rank), (rank, n))):
                factor = (torch.randn(shape, generator=generator) * spread).to(device, value.dtype) if value.device.type != "meta" else torch.empty(shape, dtype=value.dtype, device="meta")
                init[spec.name + suffix] = factor
        else:
            init[spec.name] = value
    factor_module = shape_module({name: value.shape for name, value in init.items()}, dtype=specs[0].dtype)  # the target's dtype
    layout = ParamLayout.from_module(factor_module, grouping, budget, trainable=trainable, frozen=frozen, budget_rule=budget_rule)
    kept_out = {s.name for s in (*layout.trainable, *layout.frozen)}
    if kept_out & {spec.name + suffix for spec in factored_specs for suffix in FACTOR_SUFFIXES}:
        raise ValueError("factored weights are generated; they cannot also be trainable or frozen")
    outputs = [s for s in specs if s.name not in kept_out]
    assembly = Factors(outputs, factored_specs, rank)
    held = WHOLE if part is None else part(layout)
    generator = MappingGenerator(layout, {s.name: init[s.name] for s in layout.generated_tensors()}, config, device=device, part=held, assembly=assembly)
    return MappedModel(model, generator)


def _std(value: Tensor) -> float:
    if value.device.type == "meta" or value.numel() < 2:
        return 1.0
    return max(value.double().std(unbiased=False).item(), 1e-8)
