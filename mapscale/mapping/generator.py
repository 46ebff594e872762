"""MappingGenerator: latents -> modulation -> fixed mapping operators -> per-tensor scale, offset and activation.

For a group ``g`` with latent ``z`` (``latent_dim``), fixed mapping ``W`` (orthonormal rows) and modulation
scale ``alpha`` (the paper's eqs. 20-21, DESIGN.md section 1), the raw output ``u`` (``P_g``) is

- ``"none"`` (the paper's WM ablation):           ``u = Wᵀ z``
- ``"additive"`` (eq. 20 as printed, ``w_ij + alpha z_i``):  ``u = W̃ᵀ z = Wᵀ z + alpha ||z||² 1``
- ``"multiplicative"`` (``w_ij (1 + alpha z_i)``):  ``u = W̃ᵀ z = Wᵀ (z + alpha z²)``

and each generated tensor ``t`` (a slice of ``u``) is

    theta_t = out_scale_t * act(in_scale_t * u_t + in_shift_t) + base_t

with fixed per-tensor constants, calibrated once at construction so that at initialisation every tensor has
the mean and standard deviation of the target's own default initialisation of it (``offset="mean"``:
``in_*`` standardise ``u_t``, ``out_*`` restore the target's statistics), or so that the run starts at
the target's initial weights ``theta_0`` (``offset="init"``: ``base_t = theta_0``, latents start at 0 and a
latent with unit-variance entries moves a tensor by one init standard deviation; with ``act=identity`` this
is random-subspace training, ``theta = theta_0 + P z``). ``offset="seeded"`` is ``init`` around a ``theta_0``
that is not stored: regenerated on every generation, tensor by tensor, from (seed, tensor name) by a
counter-based generator drawing from the target's own init distribution of the tensor
(`mapscale.mapping.seeded_init`): a fixed state of a few numbers per tensor instead of one per parameter. Tensors whose default init is a constant (norm
weights, zero biases) get ``constant_init_std`` instead of their zero spread, or they could never move.

Variants (the paper's Table 7): ``"mapping"`` trains only the latents; ``"full-dnn"`` freezes the latents and
trains the mapping weights; ``"lv-wmap"`` modulates the mapping with a separate trainable vector ``v``
(started equal to ``z``) instead of ``z`` itself; ``"lv-full-dnn"`` trains latents and mapping weights.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from mapscale.mapping.contract import WHOLE, Assembly, Part, copy_latents, from_pieces, generate_tensors, held_bytes, piece_ranges, pieces, with_aliases
from mapscale.mapping.layout import ParamLayout, TensorSpec
from mapscale.mapping.operators import OPERATORS, group_transforms, mapping_key, share_group_state
from mapscale.mapping.seeded_init import init_statistics, seeded_values, tensor_key

Modulation = Literal["additive", "multiplicative", "none"]
Activation = Literal["identity", "tanh"]
Offset = Literal["mean", "init", "seeded", "zero"]
Variant = Literal["mapping", "full-dnn", "lv-wmap", "lv-full-dnn"]

MODULATIONS = ("additive", "multiplicative", "none")
ACTIVATIONS = {"identity": lambda x: x, "tanh": torch.tanh}
ACTIVATION_SLOPES = {"identity": torch.ones_like, "tanh": lambda x: 1 - torch.tanh(x) ** 2}
OFFSETS = ("mean", "init", "seeded", "zero")
AROUND_THETA0 = ("init", "seeded", "zero")  # offsets that start at a theta_0 (base_t = theta_0, latents from 0); "zero": theta_0 = 0
# variant -> (latents trainable, mapping weights trainable, separate modulation vector)
VARIANTS: dict[str, tuple[bool, bool, bool]] = {
    "mapping": (True, False, False),
    "full-dnn": (False, True, False),
    "lv-wmap": (True, False, True),
    "lv-full-dnn": (True, True, False),
}


@dataclass(frozen=True)
class GeneratorConfig:
    """How a `ParamLayout`'s tensors are generated. Validated at construction.

    seed: keys the mapping weights (with each group's name) and the latent init.
    modulation / modulation_scale: the paper's eq. 20 form and its ``alpha`` (see the module docstring).
    activation: the paper's unnamed ``sigma`` of eq. 21.
    offset: ``"mean"`` (pure generation, statistics matched), ``"init"`` (around the target's ``theta_0``),
        ``"seeded"`` (around a ``theta_0`` regenerated from the seed with the target's init statistics) or
        ``"zero"`` (around ``theta_0 = 0``, held nowhere and never added, every tensor calibrated as a constant one
        (``constant_init_std``): fine-tuning's elements, `mapscale.mapping.finetune`; ``init_tensors`` may be empty).
    variant: which of the paper's Table 7 variants trains what.
    operator: the name of a fixed mapping operator in ``OPERATORS``.
    latent_init_std: std of the seeded normal latent init; None means 1.0 for ``offset="mean"``, 0.0 for
        ``"init"`` and ``"seeded"`` (start exactly at ``theta_0``).
    latent_seed: keys the latent init instead of ``seed`` (None: ``seed``). The calibration of the fixed
        per-tensor scales always uses the latents drawn from ``seed``, so generators differing only in
        ``latent_seed`` generate the same weights from the same latents: one mapping, other starting points.
    constant_init_std: the std given at init to tensors whose default init is a constant.
    gain: one trainable scalar ``g_t`` per generated tensor, ``theta_t = (1 + g_t) * generated_t``, from 0.
    mapping_dtype: storage dtype of the mapping weights.
    """

    seed: int = 0
    modulation: Modulation = "multiplicative"
    modulation_scale: float = 0.1
    activation: Activation = "identity"
    offset: Offset = "mean"
    variant: Variant = "mapping"
    operator: str = "dense"
    latent_init_std: float | None = None
    latent_seed: int | None = None
    constant_init_std: float = 0.02
    gain: bool = False
    mapping_dtype: torch.dtype = torch.float32

    def __post_init__(self) -> None:
        _one_of("modulation", self.modulation, MODULATIONS)
        _one_of("activation", self.activation, ACTIVATIONS)
        _one_of("offset", self.offset, OFFSETS)
        _one_of("variant", self.variant, VARIANTS)
        _one_of("operator", self.operator, OPERATORS)
        if not (isinstance(self.modulation_scale, (int, float)) and self.modulation_scale > 0 and math.isfinite(self.modulation_scale)):
            raise ValueError(f"modulation_scale (alpha) must be a positive number, got {self.modulation_scale!r}")
        if self.latent_init_std is not None and not self.latent_init_std >= 0:
            raise ValueError(f"latent_init_std must be >= 0, got {self.latent_init_std!r}")
        if not self.constant_init_std > 0:
            raise ValueError(f"constant_init_std must be positive, got {self.constant_init_std!r}")
        if self.variant == "lv-wmap" and self.modulation == "none":
            raise ValueError("variant 'lv-wmap' modulates the mapping with its own vector; modulation 'none' leaves nothing to modulate")

    @property
    def resolved_latent_init_std(self) -> float:
        if self.latent_init_std is not None:
            return float(self.latent_init_std)
        return 1.0 if self.offset == "mean" else 0.0  # init, seeded: start at theta_0


def _one_of(field: str, value, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"unknown {field} {value!r}; choose one of {list(allowed)}")


def _around(out: Tensor, theta0: Tensor | None) -> Tensor:
    """``out + theta_0``; ``out`` itself around a zero ``theta_0`` (no copy of an all-zero base)."""
    return out if theta0 is None else out + theta0


def _joined(segments: list[Tensor]) -> Tensor:
    return segments[0] if len(segments) == 1 else torch.cat(segments)


def latent_init(seed: int, group: str, latent_dim: int, std: float) -> Tensor:
    """The seeded initial latent of ``group``: ``N(0, std²)`` from a generator keyed on (seed, group)."""
    generator = torch.Generator().manual_seed(mapping_key(seed, f"{group}/latent"))
    return torch.randn(latent_dim, generator=generator) * std


class Identity(nn.Module):
    """The assembly of methods whose layout tensors are the target's own: each under all its (tied) names."""

    flat_smoothness = True

    def __init__(self, outputs: Sequence[TensorSpec]) -> None:
        super().__init__()
        self.outputs = tuple(outputs)

    def forward(self, tensors: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return with_aliases(tensors, self.outputs)


class MappingGenerator(nn.Module):
    """The mapping method: generates the flat vector of a `ParamLayout` from the group latents, and hands its
    tensors to an ``assembly`` (`Identity` by default; the LRD factors' products, `mapscale.mapping.lowrank`;
    the fine-tuned weights, `mapscale.mapping.finetune`). Implements the generator contract
    (`mapscale.mapping.contract.Generator`).

    ``init_tensors`` maps each generated tensor's name to the target's default-initialised value of it;
    only its statistics are kept (and, for ``offset="init"``, the values themselves as ``theta_0``; for
    ``"seeded"``, its init family, mean and std, from which `theta_0` is redrawn).
    ``part``: the column ranges held (default: all); a part builds only its mapping columns, from the seed.
    """

    def __init__(
        self,
        layout: ParamLayout,
        init_tensors: Mapping[str, Tensor],
        config: GeneratorConfig = GeneratorConfig(),
        *,
        device: torch.device | str | None = None,
        part: Part = WHOLE,
        assembly: Assembly | None = None,
    ) -> None:
        super().__init__()
        self.layout, self.config, self.part = layout, config, part
        self.assembly = assembly if assembly is not None else Identity(layout.generated_tensors())
        self.outputs, self.flat_smoothness = self.assembly.outputs, self.assembly.flat_smoothness
        device = torch.device(device or "cpu")
        train_latents, train_mapping, separate_modulator = VARIANTS[config.variant]
        operator_cls = OPERATORS[config.operator]
        std = config.resolved_latent_init_std
        if not part.whole and train_mapping:
            raise ValueError(f"variant {config.variant!r} trains the mapping weights, which cannot be split into parts (sharded); use variant 'mapping' or 'lv-wmap'")
        # Column pieces this generator holds, one operator each: every group whole (piece i is group i), or a part's.
        self.pieces = pieces(layout, part)
        self._ranges = piece_ranges(layout, self.pieces)
        transforms = group_transforms(layout, config.seed, self.pieces, part, device) if not part.whole and operator_cls.uses_transform else {}

        self.operators = nn.ModuleList()
        shared: dict[tuple[int, str], Tensor] = {}
        self.latents = nn.ParameterList()
        self.modulators = nn.ParameterList()
        self.gains = nn.ParameterList()  # (num tensors,) per group with config.gain, else empty
        for k, (index, start, stop) in enumerate(self.pieces):
            group = layout.groups[index]
            self.operators.append(
                operator_cls(
                    group.latent_dim,
                    group.numel,
                    mapping_key(config.seed, group.name),
                    trainable=train_mapping,
                    dtype=torch.float64 if layout.compute_dtype == torch.float64 else config.mapping_dtype,
                    device=device,
                    columns=None if part.whole else (start, stop),
                    transform=transforms.get(index),
                )
            )
            share_group_state(self.operators[-1], index, shared)  # the seeded orthonormalizer, the sparse tables
            if config.offset == "seeded":
                self._seeded_base_state(k, init_tensors, device)
            if config.offset == "init":
                base = torch.cat([init_tensors[t.name].detach().reshape(-1).to(layout.compute_dtype) for t in group.tensors])[start:stop].clone()
                self.register_buffer(f"base_{k}", base.to(device), persistent=False)  # (stop - start,), not a view of the group
        for group in layout.groups:
            z0 = latent_init(config.seed, group.name, group.latent_dim, std).to(device)
            self.latents.append(nn.Parameter(z0, requires_grad=train_latents))
            if separate_modulator:
                self.modulators.append(nn.Parameter(z0.clone()))
            if config.gain:
                self.gains.append(nn.Parameter(torch.zeros(len(group.tensors), device=device)))
        # (4, num tensors) per group: in_scale, in_shift, out_scale, out_shift; derived, never checkpointed.
        affines = self._calibrate(init_tensors)
        if config.latent_seed is not None:  # other starting latents, after calibrating at the seed's
            self.start_from([latent_init(config.latent_seed, g.name, g.latent_dim, std) for g in layout.groups])
        for index, group in enumerate(layout.groups):
            self.register_buffer(f"affine_{index}", affines[index], persistent=False)
            numels = torch.tensor([t.numel for t in group.tensors], device=device)
            self.register_buffer(f"numels_{index}", numels, persistent=False)  # (num tensors,)
        self._totals: dict = {}

    def _seeded_base_state(self, k: int, init_tensors: Mapping[str, Tensor], device: torch.device) -> None:
        """``offset="seeded"``: piece ``k``'s recipe for ``theta_0``: per tensor it holds a part of, the counter
        key, init family, mean and std (``(3, tensors)`` float64 buffer ``theta0_stats_k``, counted as fixed
        state) and the element range held."""
        index, start, stop = self.pieces[k]
        held = []
        for spec in self.layout.groups[index].tensors:
            lo, hi = max(start, spec.offset), min(stop, spec.offset + spec.numel)
            if lo < hi:
                stats = (0, 0.0, 0.0) if device.type == "meta" else init_statistics(init_tensors[spec.name])
                held.append((tensor_key(self.config.seed, spec.name), *stats, lo - spec.offset, hi - spec.offset))
        table = torch.tensor([h[1:4] for h in held], dtype=torch.float64).T.reshape(3, len(held))
        self.register_buffer(f"theta0_stats_{k}", table.to(device), persistent=False)
        self.__dict__.setdefault("_seeded_pieces", {})[k] = held

    def theta0_piece(self, k: int) -> Tensor | None:
        """``(stop - start,)``: ``theta_0`` on piece ``k``: the stored init weights (``offset="init"``), or
        redrawn from the seed tensor by tensor (``offset="seeded"``, `mapscale.mapping.seeded_init`); None for
        ``offset="zero"`` (nothing to add)."""
        if self.config.offset == "init":
            return getattr(self, f"base_{k}")
        if self.config.offset == "zero":
            return None
        dtype, device = self.layout.compute_dtype, getattr(self, f"theta0_stats_{k}").device
        return _joined([seeded_values(key, int(family), mean, std, lo, hi, dtype, device) for key, family, mean, std, lo, hi in self._seeded_pieces[k]])

    def _clipped_numels(self, k: int) -> Tensor:
        """``(num tensors,)`` elements of each of the group's tensors inside piece ``k`` (0 for those outside)."""
        index, start, stop = self.pieces[k]
        bounds = [(t.offset, t.offset + t.numel) for t in self.layout.groups[index].tensors]
        return torch.tensor([max(0, min(stop, hi) - max(start, lo)) for lo, hi in bounds])

    def _segments(self, k: int) -> tuple[list[int], list[int]]:
        """The tensors piece ``k`` holds a part of (their indices in the group) and the sizes of those parts."""
        cache = self.__dict__.setdefault("_segment_cache", {})
        if k not in cache:
            numels = self._clipped_numels(k).tolist()
            held = [t for t, n in enumerate(numels) if n]
            cache[k] = (held, [numels[t] for t in held])
        return cache[k]

    def start_from(self, latents) -> None:
        """Set the group latents to ``latents`` (lv-wmap's modulators start equal to them)."""
        copy_latents(self.latents, latents, self.modulators)

    # -- the pipeline, stage by stage, on a piece of columns (a whole group unless the part cuts it) --------

    def coefficients(self, index: int, latent: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """``(c, shift)`` such that the raw output is ``Wᵀ c + shift`` (shift: a scalar or None).

        ``latent`` replaces the group's latent ``z`` (the Mapping Loss evaluates perturbed latents).
        """
        z = self.latents[index] if latent is None else latent
        modulator = self._modulator(index, z)
        alpha = self.config.modulation_scale
        if self.config.modulation == "multiplicative":
            return z * (1 + alpha * modulator), None
        if self.config.modulation == "additive":
            return z, alpha * torch.dot(modulator, z)
        return z, None

    def _modulator(self, index: int, z: Tensor) -> Tensor:
        """The vector that modulates the mapping: the separate trainable one (``lv-wmap``), else ``z`` itself."""
        return self.modulators[index] if len(self.modulators) else z

    def coefficient_jacobian(self, index: int) -> tuple[Tensor, Tensor | None]:
        """``(m, g)``: ``d c / d z = diag(m)`` and ``d shift / d z = g`` (None when there is no shift)."""
        z = self.latents[index]
        separate = len(self.modulators) > 0
        modulator = self._modulator(index, z)
        alpha = self.config.modulation_scale
        if self.config.modulation == "multiplicative":  # c = z (1 + alpha v)
            return (1 + alpha * modulator) if separate else (1 + 2 * alpha * z), None
        if self.config.modulation == "additive":  # shift = alpha v . z
            return torch.ones_like(z), alpha * modulator if separate else 2 * alpha * z
        return torch.ones_like(z), None

    def raw_piece(self, k: int, latent: Tensor | None = None) -> Tensor:
        """``(stop - start,)`` raw output ``u[start:stop]`` of piece ``k``: ``W̃ᵀ z`` before scale, offset and
        activation (``latent`` replaces the piece's group latent)."""
        coefficients, shift = self.coefficients(self.pieces[k][0], latent)
        out = self.operators[k](coefficients)
        return out if shift is None else out + shift

    def postprocess_piece(self, k: int, raw: Tensor) -> Tensor:
        """Per-tensor affine + activation (+ ``theta_0`` for ``offset="init"``) on piece ``k``'s raw output: one
        scalar op per tensor on its segment (the same rounding as per-element constants, without building them)."""
        index = self.pieces[k][0]
        affine = getattr(self, f"affine_{index}")  # (4, T)
        act = ACTIVATIONS[self.config.activation]
        held, sizes = self._segments(k)
        segments = raw.split(sizes)
        if self.config.offset in AROUND_THETA0:  # shifts are 0: theta = theta_0 + out_scale * act(in_scale * u)
            if self.config.activation == "identity":  # one product per element: theta = theta_0 + (out_scale in_scale) u
                out = [u * (affine[0, t] * affine[2, t]) for u, t in zip(segments, held)]
            else:
                out = [act(u * affine[0, t]) * affine[2, t] for u, t in zip(segments, held)]
            return _around(_joined(out), self.theta0_piece(k))
        return _joined([act(u * affine[0, t] + affine[1, t]) * affine[2, t] + affine[3, t] for u, t in zip(segments, held)])

    def _per_element_affine(self, k: int) -> tuple[Tensor, ...]:
        index, start, stop = self.pieces[k]
        affine = getattr(self, f"affine_{index}")
        numels = getattr(self, f"numels_{index}") if (start, stop) == (0, self.layout.groups[index].numel) else self._clipped_numels(k).to(affine.device)
        return torch.repeat_interleave(affine, numels, dim=1, output_size=stop - start).unbind(dim=0)  # 4 x (stop - start,)

    def generate_piece(self, k: int, latent: Tensor | None = None) -> Tensor:
        """``(stop - start,)``: the generated parameters of piece ``k`` (times ``1 + g_t`` per tensor with ``gain``)."""
        out = self._generate_piece(k, latent)
        if not len(self.gains):
            return out
        held, sizes = self._segments(k)
        factor = 1 + self.gains[self.pieces[k][0]]
        return _joined([u * factor[t] for u, t in zip(out.split(sizes), held)])

    def _generate_piece(self, k: int, latent: Tensor | None = None) -> Tensor:
        held, _ = self._segments(k)
        if self.config.activation == "identity" and self.config.modulation != "additive" and len(held) == 1:
            # One tensor, no activation, no shift: its scale moves before the (linear) operator, onto latent_dim
            # values. (Additive modulation's shift is cancelled by the tensor's offset: kept in the order below.)
            affine = getattr(self, f"affine_{self.pieces[k][0]}")[:, held[0]]
            coefficients, _ = self.coefficients(self.pieces[k][0], latent)
            out = self.operators[k](coefficients * (affine[0] * affine[2]))
            if self.config.offset in AROUND_THETA0:
                return _around(out, self.theta0_piece(k))
            return out + (affine[1] * affine[2] + affine[3])
        return self.postprocess_piece(k, self.raw_piece(k, latent))

    def generate(self, start: int, stop: int, latents=None) -> Tensor:
        """``(stop - start,)``: elements ``[start, stop)`` of the flat vector, inside the held pieces."""
        return from_pieces(self._ranges, start, stop, lambda k: self.generate_piece(k, None if latents is None else latents[self.pieces[k][0]]))

    def assemble(self, tensors: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return self.assembly(tensors)

    def forward(self, latents=None) -> dict[str, Tensor]:
        """``{name: tensor}`` for every output name; ``latents`` (one per group) replace the trained ones."""
        return generate_tensors(self, latents)

    # -- quantities the Mapping Loss needs ------------------------------------------------------------------

    def modulated_row_means(self, index: int) -> Tensor:
        """``(latent_dim,)``: the row-wise mean of the modulated mapping ``W̃`` (the paper's ``W_m``)."""
        row_means = self._group_row_means(index)
        modulator = self._modulator(index, self.latents[index])
        alpha = self.config.modulation_scale
        if self.config.modulation == "multiplicative":  # W̃[i, :] = W[i, :] (1 + alpha v_i)
            return row_means * (1 + alpha * modulator)
        if self.config.modulation == "additive":  # W̃[i, :] = W[i, :] + alpha v_i
            return row_means + alpha * modulator
        return row_means

    def _group_row_means(self, index: int) -> Tensor:
        """``(latent_dim,)`` row means of group ``index``'s ``W``: the operator's own when held whole, else the
        sum over every part's pieces (fixed mapping: summed once, cached)."""
        if self.part.whole:  # piece `index` is group `index`
            return self.operators[index].row_means()

        def compute() -> Tensor:
            sums = torch.zeros_like(self.latents[index], dtype=self.layout.compute_dtype)
            for k, (g, start, stop) in enumerate(self.pieces):
                if g == index:
                    sums = sums + self.operators[k].row_means() * (stop - start)
            return self.part.total(sums) / self.layout.groups[index].numel

        return self._total(("row_means", index), compute)

    def _group_segment_row_sums(self, index: int) -> tuple[Tensor, Tensor] | None:
        """Per-tensor row sums of ``W`` and ``W∘W`` for group ``index`` (see `jacobian_sq_norm`), or None."""
        if not OPERATORS[self.config.operator].row_sums:  # decided alike by every part, before any sum over parts
            return None
        if self.part.whole:
            return self.operators[index].segment_row_sums(getattr(self, f"numels_{index}"))

        def compute() -> Tensor:
            d, tensors = self.layout.groups[index].latent_dim, len(self.layout.groups[index].tensors)
            both = torch.zeros(2, d, tensors, dtype=self.layout.compute_dtype, device=self.latents[index].device)  # alike on every part
            for k, (g, _, _) in enumerate(self.pieces):
                if g == index:
                    both = both + torch.stack(self.operators[k].segment_row_sums(self._clipped_numels(k).to(both.device)))
            return self.part.total(both)

        both = self._total(("segment_row_sums", index), compute)
        return both[0], both[1]

    def _total(self, key, compute):
        """A quantity of the fixed mapping summed over every part: computed once, then cached. Every part's
        holder calls these in the same order (the Mapping Loss does), as ``part.total`` requires."""
        if key not in self._totals:
            with torch.no_grad():
                self._totals[key] = compute()
        return self._totals[key]

    def jacobian_sq_norm(self, index: int) -> Tensor | None:
        """``||d theta_g / d z_g||_F²`` of the generated flat vector exactly, or None when the operator cannot
        give it cheaply or the assembly's smoothness is not the flat vector's (``flat_smoothness``).

        With ``d theta_j / d u_j = c_j = out_scale * act'(pre_j) * in_scale`` and
        ``du/dz = Wᵀ diag(m) + 1 gᵀ`` (`coefficient_jacobian`), the norm is
        ``sum_i m_i² A_i + 2 sum_i m_i g_i B_i + ||g||² sum_j c_j²`` with ``A = (W∘W) c²`` and ``B = W c²``.
        For the identity activation ``c`` is constant per tensor and ``A``, ``B`` come from per-tensor row
        sums of the mapping (``O(latent_dim x tensors)`` per step); otherwise from one product with ``W``
        and one with ``W∘W``, over the whole group (None for a part).
        """
        if not self.assembly.flat_smoothness:
            return None
        m, g = self.coefficient_jacobian(index)
        in_scale, in_shift, out_scale, _ = getattr(self, f"affine_{index}")  # (T,) each
        if self.config.activation == "identity":
            row_sums = self._group_segment_row_sums(index)
            if row_sums is None:
                return None
            c_sq = (out_scale * in_scale) ** 2 * self._gain_sq(index)  # (T,)
            sums, sq_sums = row_sums  # (d, T) each
            a, b = sq_sums @ c_sq, sums @ c_sq
            total_c_sq = (c_sq * getattr(self, f"numels_{index}")).sum()
        else:
            if not self.part.whole or not OPERATORS[self.config.operator].row_sums:  # the whole group's raw output, W∘W
                return None
            raw = self.raw_piece(index)
            in_s, in_sh, out_s, _ = self._per_element_affine(index)
            slope = ACTIVATION_SLOPES[self.config.activation](raw * in_s + in_sh)
            c_sq_el = (out_s * slope * in_s) ** 2  # (P_g,); depends on z through act'(pre)
            if len(self.gains):
                c_sq_el = c_sq_el * torch.repeat_interleave(self._gain_sq(index), getattr(self, f"numels_{index}"))
            sums, sq_sums = self.operators[index].weighted_row_sums(c_sq_el)
            a, b, total_c_sq = sq_sums, sums, c_sq_el.sum()
        norm = (m**2 * a).sum()
        if g is not None:
            norm = norm + 2 * (m * g * b).sum() + g.dot(g) * total_c_sq
        return norm

    def _gain_sq(self, index: int) -> Tensor | float:
        """``(1 + g_t)²`` per tensor of group ``index`` (1 without ``gain``): the gain's factor on ``d theta / d z``."""
        return (1 + self.gains[index]) ** 2 if len(self.gains) else 1.0

    # -- construction-time calibration ------------------------------------------------------------------

    @torch.no_grad()
    def _calibrate(self, init_tensors: Mapping[str, Tensor]) -> list[Tensor]:
        """``[(4, num tensors)]`` per group, from per-tensor moments of the raw output at the initial latents.

        The moments are float64 sums over this generator's pieces, summed over every part (``part.total``),
        so a generator holding a part calibrates exactly like a whole one (up to float64 summation order).
        """
        groups = self.layout.groups
        device = self.latents[0].device if len(self.latents) else torch.device("cpu")
        if device.type == "meta":
            return [torch.empty(4, len(g.tensors), device="meta") for g in groups]
        act = ACTIVATIONS[self.config.activation]

        def moments(transform=None) -> list[Tensor]:
            """Per group ``(2, T)`` float64: sum and sum of squares over each tensor of ``transform(k, u)``."""
            out = [torch.zeros(2, len(g.tensors), dtype=torch.float64) for g in groups]
            for k, (index, _, _) in enumerate(self.pieces):
                u = self.raw_piece(k).to(torch.float64).cpu()
                if transform is not None:
                    u = transform(k, u)
                numels = self._clipped_numels(k).tolist()
                for t, segment in enumerate(u.split(numels)):
                    if numels[t]:
                        out[index][:, t] += torch.stack([segment.sum(), segment.square().sum()])
            return [self.part.total(m.to(device)).cpu() for m in out]

        def mean_std(sums: Tensor, count: int) -> tuple[float, float]:
            mean = sums[0].item() / count
            return mean, math.sqrt(max(sums[1].item() / count - mean * mean, 0.0))

        around = self.config.offset in AROUND_THETA0
        raw_moments = None if around else moments()  # around theta_0 only the target's std is needed
        affines = []
        for index, group in enumerate(groups):
            coefficient_norm = torch.linalg.vector_norm(self.coefficients(index)[0].double()).item()
            # A latent whose coefficients have unit-variance entries gives u entries of std sqrt(d / P_g).
            reference_scale = math.sqrt(group.numel) / (coefficient_norm if coefficient_norm > 0 else math.sqrt(group.latent_dim))
            rows = []
            for t, spec in enumerate(group.tensors):
                if self.config.offset == "zero":  # theta_0 = 0: a constant tensor
                    rows.append([reference_scale, 0.0, self.config.constant_init_std, 0.0])
                    continue
                theta0 = init_tensors[spec.name].detach().to(torch.float64).reshape(-1).cpu()
                target_std = theta0.std(unbiased=False).item() if theta0.numel() > 1 else 0.0
                if target_std <= 1e-12 * max(1.0, abs(theta0.mean().item())):
                    target_std = self.config.constant_init_std
                if around:
                    # theta = theta_0 + out_scale * act(in_scale * u): exactly theta_0 at z = 0.
                    rows.append([reference_scale, 0.0, target_std, 0.0])
                    continue
                u_mean, spread = mean_std(raw_moments[index][:, t], spec.numel)
                in_scale = 1.0 / spread if spread > 1e-12 else reference_scale
                rows.append([in_scale, -u_mean * in_scale, target_std, theta0.mean().item()])
            affines.append(torch.tensor(rows, dtype=torch.float64))
        if around:
            return [a.T.contiguous().to(self.layout.compute_dtype).to(device) for a in affines]

        # Second pass: the spread of act(standardised u), so out_* restore the target's mean and std.
        def standardised(k: int, u: Tensor) -> Tensor:
            index = self.pieces[k][0]
            per_element = torch.repeat_interleave(affines[index][:, :2].T, self._clipped_numels(k), dim=1)
            return act(u * per_element[0] + per_element[1])

        act_moments = moments(standardised)
        for index, group in enumerate(groups):
            for t, spec in enumerate(group.tensors):
                target_std, target_mean = affines[index][t, 2].item(), affines[index][t, 3].item()
                v_mean, v_std = mean_std(act_moments[index][:, t], spec.numel)
                out_scale = target_std / v_std if v_std > 1e-12 else target_std
                affines[index][t, 2:] = torch.tensor([out_scale, target_mean - out_scale * v_mean], dtype=torch.float64)
        return [a.T.contiguous().to(self.layout.compute_dtype).to(device) for a in affines]

    # -- accounting ---------------------------------------------------------------------------------------

    def fixed_bytes(self) -> int:
        """Bytes of the fixed state held: the mapping operators' columns (a trained full-dnn mapping is not
        fixed and not counted), ``theta_0`` for ``offset="init"`` (for ``"seeded"``: 3 numbers per tensor) and the
        per-tensor constants; a part's share.
        Not the assembly's tensors: fine-tuning's pretrained weights are the target's, not the method's."""
        own = [t for name, t in self.named_buffers() if not name.startswith("assembly.")]
        return held_bytes(self, own + [p for p in self.parameters() if not p.requires_grad])
