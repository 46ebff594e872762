"""Peer generators: the simpler ways to train few parameters, behind the `MappedModel` interface.

Both take a `ParamLayout` (so slvt, lwt and glob groupings, budget splits, trainable and frozen tensors apply
unchanged) and implement the generator contract (`mapscale.mapping.contract`) like `MappingGenerator`; only
their ``latents`` train. Selected by ``mapping.method`` in a recipe (`mapscale.methods`).

**Random subspace** (Li et al. 2018, "Measuring the Intrinsic Dimension of Objective Landscapes"):
``theta_g = theta0_g + P_g z_g`` with ``theta0`` the target's own seeded default init (fixed), ``P_g`` a fixed
random ``P_g x d_g`` projection and ``z_g`` the trained vector, started at 0 (the run starts at ``theta0``).
``P_g`` is the transpose of one of mapscale's own mapping operators (``OPERATORS``), keyed exactly as the
mapping generator keys its ``W`` for the same seed and group: its columns are orthonormal (Li et al. normalise
random Gaussian columns to unit length, which in high dimension are nearly orthogonal; ``dense`` and ``seeded``
are that matrix exactly orthogonalised, ``structured`` is a randomized Hadamard transform, the same family as
their Fastfood projection). With ``scale="none"`` there is no scale: ``||theta - theta0|| = ||z||``, as in the paper, so a step of
``z`` moves each weight by ``sqrt(d_g / P_g)`` of it and the best learning rate depends on the budget. The
default ``scale="relative"`` multiplies each group's ``P_g z_g`` by one fixed constant, ``s_g = rms_g
sqrt(P_g / d_g)`` (``rms_g`` the root mean square of the init stds of the group's tensors): a step of unit
entries then moves the group's weights by about one init std, as the mapping's calibration does, and one
learning rate serves every budget (``bench/defaults.py``). With the same seed, mapscale's generator with ``offset="init"``, ``modulation="none"`` differs from this only
by its per-tensor scale (a latent of unit-variance entries moves each tensor by one init std).

**Recurrent Parameter Generator** (Wang et al. 2021, "Recurrent Parameter Generators"; after the official
``supermodels/super_resnet_equal.py``): each group owns a trainable *ring* ``r`` of ``B = d_g`` entries.
The group's ``N`` weights (its tensors back to back) fetch ring entries through one fixed random assignment:
``floor(N / B)`` copies of every ring index plus ``N mod B`` distinct random ones, randomly permuted (each
entry serves ``N / B`` weights, none more than one extra), and each weight gets a fixed random sign::

    theta_t = mean_t + std_t * sign_t * r[index_t]

The official code initialises the ring with Kaiming-normal entries and multiplies each layer's weights by the
ratio of its own Kaiming std to the ring's; here the ring starts ``N(0, 1)`` (seeded) and ``std_t``,
``mean_t`` are the statistics of the target's own default init of tensor ``t`` (``constant_init_std`` for a
constant one), so at step 0 every tensor has its init statistics, as mapscale's generator calibrates. The
official code keeps the stem conv, BatchNorm and the classifier directly trainable and generates the
residual convs only; here every tensor the layout generates comes from the ring, so the ring size is the
whole trainable budget (recipes can keep tensors trainable with ``mapping.trainable``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping

import torch
from torch import Tensor, nn

from mapscale.mapping.contract import WHOLE, Part, copy_latents, from_pieces, generate_tensors, held_bytes, piece_ranges, pieces
from mapscale.mapping.generator import Identity, latent_init
from mapscale.mapping.layout import BudgetRule, Grouping, ParamLayout, Selector
from mapscale.mapping.mapped import MappedModel, build_mapped
from mapscale.mapping.operators import OPERATORS, group_transforms, mapping_key, share_group_state


class _Peer(nn.Module):
    """The generator contract's plumbing both peers share: a held piece ``k`` of group ``g`` is
    ``_piece(k, latents[g])``; the layout's tensors are the target's (no assembly beyond tied names); no Mapping
    Loss quantities (the recipe refuses the terms for peers, as their papers train on the task loss alone)."""

    flat_smoothness = True

    def _setup(self, layout: ParamLayout, part: Part) -> None:
        if not layout.groups:
            raise ValueError("the layout generates no tensor: nothing for a peer generator to do")
        self.layout, self.part = layout, part
        self.assembly = Identity(layout.generated_tensors())
        self.outputs = self.assembly.outputs
        self.pieces = pieces(layout, part)
        self._ranges = piece_ranges(layout, self.pieces)
        self.latents = nn.ParameterList()

    def _piece(self, k: int, latent: Tensor) -> Tensor:
        raise NotImplementedError

    def generate(self, start: int, stop: int, latents=None) -> Tensor:
        def piece(k: int) -> Tensor:
            index = self.pieces[k][0]
            return self._piece(k, self.latents[index] if latents is None else latents[index])

        return from_pieces(self._ranges, start, stop, piece)

    def assemble(self, tensors: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return self.assembly(tensors)

    def forward(self, latents=None) -> dict[str, Tensor]:
        return generate_tensors(self, latents)

    def start_from(self, latents) -> None:
        copy_latents(self.latents, latents)

    def jacobian_sq_norm(self, index: int) -> None:
        return None

    def modulated_row_means(self, index: int) -> None:
        return None

    def fixed_bytes(self) -> int:
        return held_bytes(self)


class SubspaceGenerator(_Peer):
    """Random-subspace training: ``theta_g = theta0_g + P_g z_g`` (module docstring), ``z_g`` from 0. Implements
    the generator contract; a ``part`` holds the projection columns and ``theta0`` of its ranges only (its fixed
    state: the operators' storage and fp32 ``theta0``)."""

    def __init__(
        self,
        layout: ParamLayout,
        init_tensors: Mapping[str, Tensor],
        *,
        seed: int = 0,
        operator: str = "dense",
        latent_init_std: float = 0.0,
        scale: str = "relative",
        device: torch.device | str | None = None,
        part: Part = WHOLE,
    ) -> None:
        super().__init__()
        self._setup(layout, part)
        if scale not in SUBSPACE_SCALES:
            raise ValueError(f"unknown subspace scale {scale!r}; choose one of {list(SUBSPACE_SCALES)}")
        if operator not in OPERATORS:
            raise ValueError(f"unknown operator {operator!r}; choose one of {list(OPERATORS)}")
        if not latent_init_std >= 0:
            raise ValueError(f"latent_init_std must be >= 0, got {latent_init_std!r}")
        device = torch.device(device or "cpu")
        transforms = group_transforms(layout, seed, self.pieces, part, device) if not part.whole and OPERATORS[operator].uses_transform else {}
        self.operators = nn.ModuleList()
        shared: dict[tuple[int, str], Tensor] = {}
        for k, (index, start, stop) in enumerate(self.pieces):
            group = layout.groups[index]
            key = mapping_key(seed, group.name)  # the key mapscale's generator gives this group's W
            columns = None if part.whole else (start, stop)
            self.operators.append(OPERATORS[operator](group.latent_dim, group.numel, key, trainable=False, dtype=layout.compute_dtype, device=device, columns=columns, transform=transforms.get(index)))
            share_group_state(self.operators[-1], index, shared)
            theta0 = torch.cat([init_tensors[t.name].detach().reshape(-1).to(layout.compute_dtype) for t in group.tensors])[start:stop].clone()
            self.register_buffer(f"theta0_{k}", theta0.to(device), persistent=False)  # (stop - start,), not a view of the group
        relative = scale == "relative" and device.type != "meta"  # on meta (inspect) only shapes exist
        self.scales = [_relative_scale(group, init_tensors) if relative else 1.0 for group in layout.groups]
        for group in layout.groups:
            z0 = latent_init(seed, group.name, group.latent_dim, latent_init_std) if latent_init_std > 0 else torch.zeros(group.latent_dim)
            self.latents.append(nn.Parameter(z0.to(device)))

    def _piece(self, k: int, z: Tensor) -> Tensor:
        scale = self.scales[self.pieces[k][0]]
        return getattr(self, f"theta0_{k}") + self.operators[k](z if scale == 1.0 else z * scale)  # (stop - start,)


SUBSPACE_SCALES = ("relative", "none")


def _relative_scale(group, init_tensors: Mapping[str, Tensor]) -> float:
    """``s_g = rms_g sqrt(P_g / d_g)``: the root mean square over the group's weights of their tensors' init stds
    (`CONSTANT_INIT_STD` for a constant tensor), times ``sqrt(P_g / d_g)``. From the whole group on every part."""
    square_sum = sum(_init_stats(init_tensors[t.name], CONSTANT_INIT_STD)[0] ** 2 * t.numel for t in group.tensors)
    return math.sqrt(square_sum / group.numel) * math.sqrt(group.numel / group.latent_dim)


CONSTANT_INIT_STD = 0.02  # the spread a constant tensor counts with, as the mapping's default constant_init_std


def ring_assignment(seed: int, group: str, ring_size: int, numel: int) -> tuple[Tensor, Tensor]:
    """``(index, sign)`` of one RPG group: ``(numel,)`` int64 ring positions and ``(numel,)`` int8 signs (+-1),
    a pure function of ``(seed, group, ring_size, numel)``.

    ``floor(numel / ring_size)`` copies of every position plus ``numel mod ring_size`` distinct random ones,
    randomly permuted: each ring entry serves ``numel / ring_size`` weights, none more than one extra.
    """
    if ring_size < 1 or numel < 1:
        raise ValueError(f"a ring needs at least one entry and one weight, got ring_size={ring_size}, numel={numel}")
    generator = torch.Generator().manual_seed(mapping_key(seed, f"{group}/ring"))
    copies, rest = divmod(numel, ring_size)
    extra = torch.randperm(ring_size, generator=generator)[:rest]
    index = torch.cat([torch.arange(ring_size).repeat(copies), extra])
    index = index[torch.randperm(numel, generator=generator)]
    sign = torch.randint(0, 2, (numel,), generator=generator, dtype=torch.int8) * 2 - 1
    return index, sign


class RingGenerator(_Peer):
    """Recurrent Parameter Generator: every weight of a group is a fixed signed entry of its trainable ring
    (module docstring). ``latents[g]`` is group ``g``'s ring (``latent_dim`` entries). A ``part`` holds the ring
    positions, signs and scales of its ranges only (its fixed state: int64 positions, fp32 scales and shifts,
    16 bytes a weight); the rings are whole everywhere."""

    def __init__(
        self,
        layout: ParamLayout,
        init_tensors: Mapping[str, Tensor],
        *,
        seed: int = 0,
        constant_init_std: float = 0.02,
        device: torch.device | str | None = None,
        part: Part = WHOLE,
    ) -> None:
        super().__init__()
        self._setup(layout, part)
        device = torch.device(device or "cpu")
        meta = device.type == "meta"
        for index, group in enumerate(layout.groups):
            if meta:
                ring = torch.empty(group.latent_dim, device=device)
            else:
                ring = torch.randn(group.latent_dim, generator=torch.Generator().manual_seed(mapping_key(seed, f"{group.name}/ring-init")))
            self.latents.append(nn.Parameter(ring.to(device)))
        assignments: dict[int, tuple[Tensor, Tensor, Tensor]] = {}
        for k, (index, start, stop) in enumerate(self.pieces):
            group = layout.groups[index]
            if meta:
                index_t, scale, shift = (torch.empty(stop - start, dtype=dt, device=device) for dt in (torch.int64, layout.compute_dtype, layout.compute_dtype))
            else:
                if index not in assignments:  # the whole group's assignment, cut to each held piece
                    positions, sign = ring_assignment(seed, group.name, group.latent_dim, group.numel)
                    stats = [_init_stats(init_tensors[t.name], constant_init_std) for t in group.tensors]
                    numels = torch.tensor([t.numel for t in group.tensors])
                    std, mean = (torch.repeat_interleave(torch.tensor(column, dtype=layout.compute_dtype), numels) for column in zip(*stats))
                    assignments[index] = (positions, sign.to(std.dtype) * std, mean)  # (P_g,) each
                index_t, scale, shift = (t[start:stop].clone() for t in assignments[index])  # copies: a view would keep the whole group
            self.register_buffer(f"index_{k}", index_t.to(device), persistent=False)  # (stop - start,) ring positions
            self.register_buffer(f"scale_{k}", scale.to(device), persistent=False)  # (stop - start,) sign * init std
            self.register_buffer(f"shift_{k}", shift.to(device), persistent=False)  # (stop - start,) init mean

    def _piece(self, k: int, ring: Tensor) -> Tensor:
        fetched = ring.index_select(0, getattr(self, f"index_{k}"))  # (stop - start,); backward scatter-adds into the ring
        return fetched * getattr(self, f"scale_{k}") + getattr(self, f"shift_{k}")


def _init_stats(theta0: Tensor, constant_init_std: float) -> tuple[float, float]:
    """``(std, mean)`` of a tensor's default init; a constant tensor gets ``constant_init_std``."""
    theta0 = theta0.detach().double().reshape(-1)
    mean = theta0.mean().item()
    std = theta0.std(unbiased=False).item() if theta0.numel() > 1 else 0.0
    if std <= 1e-12 * max(1.0, abs(mean)):
        std = constant_init_std
    return std, mean


PEERS = {"subspace": SubspaceGenerator, "rpg": RingGenerator}


def peer_model(
    model: nn.Module,
    peer: str,
    grouping: Grouping = "slvt",
    budget: int | Mapping[str, int] = 2048,
    *,
    seed: int = 0,
    trainable: Iterable[Selector] = (),
    frozen: Iterable[Selector] = (),
    budget_rule: BudgetRule | None = None,
    device: torch.device | str | None = None,
    part: Callable[[ParamLayout], Part] | None = None,
    **options,
) -> MappedModel:
    """``model`` trained through a peer generator (``"subspace"`` or ``"rpg"``), like `map_model`: the layout
    (grouping, budget, trainable, frozen) is built the same way, and each group's latent dimension is its
    subspace dimension or ring size. ``options``: ``operator``, ``latent_init_std`` (subspace) or
    ``constant_init_std`` (rpg). The model's current parameters are its default init ``theta0``. ``part``
    (``layout -> Part``) makes the generator hold only some ranges of the flat vector."""
    if peer not in PEERS:
        raise ValueError(f"unknown peer generator {peer!r}; choose one of {list(PEERS)}")
    layout = ParamLayout.from_module(model, grouping, budget, trainable=trainable, frozen=frozen, budget_rule=budget_rule)
    held = WHOLE if part is None else part(layout)
    return build_mapped(model, layout, device, lambda init, device: PEERS[peer](layout, init, seed=seed, device=device, part=held, **options))
