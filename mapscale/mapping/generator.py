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
is random-subspace training, ``theta = theta_0 + P z``). Tensors whose default init is a constant (norm
weights, zero biases) get ``constant_init_std`` instead of their zero spread, or they could never move.

Variants (the paper's Table 7): ``"mapping"`` trains only the latents; ``"full-dnn"`` freezes the latents and
trains the mapping weights; ``"lv-wmap"`` modulates the mapping with a separate trainable vector ``v``
(started equal to ``z``) instead of ``z`` itself; ``"lv-full-dnn"`` trains latents and mapping weights.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from mapscale.mapping.layout import GroupSpec, ParamLayout
from mapscale.mapping.operators import OPERATORS, mapping_key

Modulation = Literal["additive", "multiplicative", "none"]
Activation = Literal["identity", "tanh"]
Offset = Literal["mean", "init"]
Variant = Literal["mapping", "full-dnn", "lv-wmap", "lv-full-dnn"]

MODULATIONS = ("additive", "multiplicative", "none")
ACTIVATIONS = {"identity": lambda x: x, "tanh": torch.tanh}
ACTIVATION_SLOPES = {"identity": torch.ones_like, "tanh": lambda x: 1 - torch.tanh(x) ** 2}
OFFSETS = ("mean", "init")
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
    offset: ``"mean"`` (pure generation, statistics matched) or ``"init"`` (around the target's ``theta_0``).
    variant: which of the paper's Table 7 variants trains what.
    operator: the name of a fixed mapping operator in ``OPERATORS``.
    latent_init_std: std of the seeded normal latent init; None means 1.0 for ``offset="mean"``, 0.0 for
        ``"init"`` (start exactly at ``theta_0``).
    constant_init_std: the std given at init to tensors whose default init is a constant.
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
    constant_init_std: float = 0.02
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
        return 1.0 if self.offset == "mean" else 0.0


def _one_of(field: str, value, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"unknown {field} {value!r}; choose one of {list(allowed)}")


def latent_init(seed: int, group: str, latent_dim: int, std: float) -> Tensor:
    """The seeded initial latent of ``group``: ``N(0, std²)`` from a generator keyed on (seed, group)."""
    generator = torch.Generator().manual_seed(mapping_key(seed, f"{group}/latent"))
    return torch.randn(latent_dim, generator=generator) * std


class MappingGenerator(nn.Module):
    """Generates every tensor of a `ParamLayout` from the group latents. ``forward() -> {name: tensor}``.

    ``init_tensors`` maps each generated tensor's name to the target's default-initialised value of it;
    only its statistics are kept (and, for ``offset="init"``, the values themselves as ``theta_0``).
    """

    def __init__(
        self,
        layout: ParamLayout,
        init_tensors: Mapping[str, Tensor],
        config: GeneratorConfig = GeneratorConfig(),
        *,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        self.layout, self.config = layout, config
        device = torch.device(device or "cpu")
        train_latents, train_mapping, separate_modulator = VARIANTS[config.variant]
        operator_cls = OPERATORS[config.operator]
        std = config.resolved_latent_init_std

        self.operators = nn.ModuleList()
        self.latents = nn.ParameterList()
        self.modulators = nn.ParameterList()
        for index, group in enumerate(layout.groups):
            self.operators.append(
                operator_cls(
                    group.latent_dim,
                    group.numel,
                    mapping_key(config.seed, group.name),
                    trainable=train_mapping,
                    dtype=config.mapping_dtype,
                    device=device,
                )
            )
            z0 = latent_init(config.seed, group.name, group.latent_dim, std).to(device)
            self.latents.append(nn.Parameter(z0, requires_grad=train_latents))
            if separate_modulator:
                self.modulators.append(nn.Parameter(z0.clone()))
            if config.offset == "init":
                base = torch.cat([init_tensors[t.name].detach().reshape(-1).float() for t in group.tensors])
                self.register_buffer(f"base_{index}", base.to(device), persistent=False)  # (P_g,)
        # (4, num tensors) per group: in_scale, in_shift, out_scale, out_shift; derived, never checkpointed.
        for index, group in enumerate(layout.groups):
            self.register_buffer(f"affine_{index}", self._calibrate(index, group, init_tensors), persistent=False)
            numels = torch.tensor([t.numel for t in group.tensors], device=device)
            self.register_buffer(f"numels_{index}", numels, persistent=False)  # (num tensors,)

    # -- the pipeline, stage by stage (the distributed layer reuses each stage on a slice) --------------

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

    def raw(self, index: int, latent: Tensor | None = None) -> Tensor:
        """``(P_g,)`` raw output ``u`` of group ``index``: ``W̃ᵀ z`` before scale, offset and activation."""
        coefficients, shift = self.coefficients(index, latent)
        out = self.operators[index](coefficients)
        return out if shift is None else out + shift

    def postprocess(self, index: int, raw: Tensor, start: int = 0) -> Tensor:
        """Per-tensor affine + activation on ``raw = u[start : start + len(raw)]`` of group ``index``."""
        in_scale, in_shift, out_scale, out_shift = self._per_element_affine(index, start, raw.shape[0])
        out = ACTIVATIONS[self.config.activation](raw * in_scale + in_shift) * out_scale + out_shift
        if self.config.offset == "init":
            out = out + getattr(self, f"base_{index}")[start : start + raw.shape[0]]
        return out

    def _per_element_affine(self, index: int, start: int, length: int) -> tuple[Tensor, ...]:
        affine, numels = getattr(self, f"affine_{index}"), getattr(self, f"numels_{index}")
        total = self.layout.groups[index].numel
        per_element = torch.repeat_interleave(affine, numels, dim=1, output_size=total)  # (4, P_g)
        return per_element[:, start : start + length].unbind(dim=0)

    def generate_group(self, index: int, latent: Tensor | None = None) -> Tensor:
        """``(P_g,)``: the flat generated parameters of group ``index``."""
        return self.postprocess(index, self.raw(index, latent))

    def split(self, index: int, flat: Tensor) -> dict[str, Tensor]:
        """Views of a group's flat vector as its named tensors (tied aliases included)."""
        out = {}
        for spec in self.layout.groups[index].tensors:
            tensor = flat[spec.offset : spec.offset + spec.numel].view(spec.shape).to(spec.dtype)
            for name in spec.names:
                out[name] = tensor
        return out

    def forward(self, latents: list[Tensor] | None = None) -> dict[str, Tensor]:
        """``{name: tensor}`` for every generated name; ``latents`` (one per group) replace the trained ones."""
        out: dict[str, Tensor] = {}
        for index in range(len(self.layout.groups)):
            latent = None if latents is None else latents[index]
            out.update(self.split(index, self.generate_group(index, latent)))
        return out

    # -- quantities the Mapping Loss needs ------------------------------------------------------------------

    def modulated_row_means(self, index: int) -> Tensor:
        """``(latent_dim,)``: the row-wise mean of the modulated mapping ``W̃`` (the paper's ``W_m``)."""
        row_means = self.operators[index].row_means()
        modulator = self._modulator(index, self.latents[index])
        alpha = self.config.modulation_scale
        if self.config.modulation == "multiplicative":  # W̃[i, :] = W[i, :] (1 + alpha v_i)
            return row_means * (1 + alpha * modulator)
        if self.config.modulation == "additive":  # W̃[i, :] = W[i, :] + alpha v_i
            return row_means + alpha * modulator
        return row_means

    def jacobian_sq_norm(self, index: int) -> Tensor | None:
        """``||d theta_g / d z_g||_F²`` exactly, or None when the operator cannot give it cheaply.

        With ``d theta_j / d u_j = c_j = out_scale * act'(pre_j) * in_scale`` and
        ``du/dz = Wᵀ diag(m) + 1 gᵀ`` (`coefficient_jacobian`), the norm is
        ``sum_i m_i² A_i + 2 sum_i m_i g_i B_i + ||g||² sum_j c_j²`` with ``A = (W∘W) c²`` and ``B = W c²``.
        For the identity activation ``c`` is constant per tensor and ``A``, ``B`` come from per-tensor row
        sums of the mapping (``O(latent_dim x tensors)`` per step); otherwise from one product with ``W``
        and one with ``W∘W``.
        """
        operator = self.operators[index]
        m, g = self.coefficient_jacobian(index)
        in_scale, in_shift, out_scale, _ = getattr(self, f"affine_{index}")  # (T,) each
        if self.config.activation == "identity":
            if not hasattr(operator, "segment_row_sums"):
                return None
            c_sq = (out_scale * in_scale) ** 2  # (T,)
            sums, sq_sums = operator.segment_row_sums(getattr(self, f"numels_{index}"))  # (d, T) each
            a, b = sq_sums @ c_sq, sums @ c_sq
            total_c_sq = (c_sq * getattr(self, f"numels_{index}")).sum()
        else:
            if not hasattr(operator, "weighted_row_sums"):
                return None
            raw = self.raw(index)
            in_s, in_sh, out_s, _ = self._per_element_affine(index, 0, raw.shape[0])
            slope = ACTIVATION_SLOPES[self.config.activation](raw * in_s + in_sh)
            c_sq_el = (out_s * slope * in_s) ** 2  # (P_g,); depends on z through act'(pre)
            sums, sq_sums = operator.weighted_row_sums(c_sq_el)
            a, b, total_c_sq = sq_sums, sums, c_sq_el.sum()
        norm = (m**2 * a).sum()
        if g is not None:
            norm = norm + 2 * (m * g * b).sum() + g.dot(g) * total_c_sq
        return norm

    # -- construction-time calibration ------------------------------------------------------------------

    @torch.no_grad()
    def _calibrate(self, index: int, group: GroupSpec, init_tensors: Mapping[str, Tensor]) -> Tensor:
        device = self.latents[index].device
        if device.type == "meta":
            return torch.empty(4, len(group.tensors), device="meta")
        act = ACTIVATIONS[self.config.activation]
        raw = self.raw(index).to(torch.float64)
        coefficient_norm = torch.linalg.vector_norm(self.coefficients(index)[0].double()).item()
        # A latent whose coefficients have unit-variance entries gives u entries of std sqrt(d / P_g).
        reference_scale = math.sqrt(group.numel) / (coefficient_norm if coefficient_norm > 0 else math.sqrt(group.latent_dim))
        rows = []
        for spec in group.tensors:
            theta0 = init_tensors[spec.name].detach().to(torch.float64).reshape(-1).cpu()
            target_std = theta0.std(unbiased=False).item() if theta0.numel() > 1 else 0.0
            if target_std <= 1e-12 * max(1.0, abs(theta0.mean().item())):
                target_std = self.config.constant_init_std
            u = raw[spec.offset : spec.offset + spec.numel].cpu()
            if self.config.offset == "init":
                # theta = theta_0 + out_scale * act(in_scale * u): exactly theta_0 at z = 0.
                rows.append([reference_scale, 0.0, target_std, 0.0])
                continue
            spread = u.std(unbiased=False).item() if u.numel() > 1 else 0.0
            in_scale = 1.0 / spread if spread > 1e-12 else reference_scale
            in_shift = -u.mean().item() * in_scale
            v = act(u * in_scale + in_shift)
            v_std = v.std(unbiased=False).item() if v.numel() > 1 else 0.0
            out_scale = target_std / v_std if v_std > 1e-12 else target_std
            out_shift = theta0.mean().item() - out_scale * v.mean().item()
            rows.append([in_scale, in_shift, out_scale, out_shift])
        return torch.tensor(rows, dtype=torch.float32, device=device).T.contiguous()

    # -- accounting ---------------------------------------------------------------------------------------

    def mapping_bytes(self) -> int:
        """Bytes held by the fixed (or, for the full-dnn variants, trained) mapping weights."""
        return sum(t.numel() * t.element_size() for op in self.operators for t in [*op.buffers(), *op.parameters()])
