"""Peer generators: the simpler ways to train few parameters, behind the `MappedModel` interface.

Both take a `ParamLayout` (so slvt, lwt and glob groupings, budget splits, trainable and frozen tensors apply
unchanged) and return ``{name: tensor}`` for every generated name, like `MappingGenerator`; only their
``latents`` train. Selected by ``mapping.generator`` in a recipe (`mapscale.train.build_model`).

**Random subspace** (Li et al. 2018, "Measuring the Intrinsic Dimension of Objective Landscapes"):
``theta_g = theta0_g + P_g z_g`` with ``theta0`` the target's own seeded default init (fixed), ``P_g`` a fixed
random ``P_g x d_g`` projection and ``z_g`` the trained vector, started at 0 (the run starts at ``theta0``).
``P_g`` is the transpose of one of mapscale's own mapping operators (``OPERATORS``), keyed exactly as the
mapping generator keys its ``W`` for the same seed and group: its columns are orthonormal (Li et al. normalise
random Gaussian columns to unit length, which in high dimension are nearly orthogonal; ``dense`` and ``seeded``
are that matrix exactly orthogonalised, ``structured`` is a randomized Hadamard transform, the same family as
their Fastfood projection). There is no per-tensor scale: ``||theta - theta0|| = ||z||``, as in the paper.
With the same seed, mapscale's generator with ``offset="init"``, ``modulation="none"`` differs from this only
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

from collections.abc import Iterable, Mapping

import torch
from torch import Tensor, nn

from mapscale.mapping.generator import latent_init
from mapscale.mapping.layout import BudgetRule, Grouping, ParamLayout, Selector
from mapscale.mapping.mapped import MappedModel, build_mapped
from mapscale.mapping.operators import OPERATORS, mapping_key


class _PeerGenerator(nn.Module):
    """What `MappedModel` and the trainer read from any generator: ``layout``, ``outputs``, ``latents``,
    ``shard`` (peers are never sharded), ``forward(latents=None)`` and ``mapping_bytes()``."""

    shard = None

    def __init__(self, layout: ParamLayout) -> None:
        super().__init__()
        if not layout.groups:
            raise ValueError("the layout generates no tensor: nothing for a peer generator to do")
        self.layout = layout
        self.latents = nn.ParameterList()

    @property
    def outputs(self) -> list:
        return self.layout.generated_tensors()

    def generate_group(self, index: int, latent: Tensor | None = None) -> Tensor:
        raise NotImplementedError

    def forward(self, latents: list[Tensor] | None = None) -> dict[str, Tensor]:
        """``{name: tensor}`` for every generated name; ``latents`` (one per group) replace the trained ones."""
        out: dict[str, Tensor] = {}
        for index, group in enumerate(self.layout.groups):
            flat = self.generate_group(index, None if latents is None else latents[index])
            for spec, piece in zip(group.tensors, flat.split([t.numel for t in group.tensors]), strict=True):
                tensor = piece.view(spec.shape).to(spec.dtype)
                for name in spec.names:
                    out[name] = tensor
        return out

    def mapping_bytes(self) -> int:
        """Bytes of the fixed (never trained) tensors the generator holds."""
        return sum(b.numel() * b.element_size() for b in self.buffers())  # its operators' buffers included


class SubspaceGenerator(_PeerGenerator):
    """Random-subspace training: ``theta_g = theta0_g + P_g z_g`` (module docstring), ``z_g`` from 0."""

    def __init__(
        self,
        layout: ParamLayout,
        init_tensors: Mapping[str, Tensor],
        *,
        seed: int = 0,
        operator: str = "dense",
        latent_init_std: float = 0.0,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__(layout)
        if operator not in OPERATORS:
            raise ValueError(f"unknown operator {operator!r}; choose one of {list(OPERATORS)}")
        if not latent_init_std >= 0:
            raise ValueError(f"latent_init_std must be >= 0, got {latent_init_std!r}")
        device = torch.device(device or "cpu")
        self.operators = nn.ModuleList()
        for index, group in enumerate(layout.groups):
            key = mapping_key(seed, group.name)  # the key mapscale's generator gives this group's W
            self.operators.append(OPERATORS[operator](group.latent_dim, group.numel, key, trainable=False, device=device))
            theta0 = torch.cat([init_tensors[t.name].detach().reshape(-1).float() for t in group.tensors])
            self.register_buffer(f"theta0_{index}", theta0.to(device), persistent=False)  # (P_g,)
            z0 = latent_init(seed, group.name, group.latent_dim, latent_init_std) if latent_init_std > 0 else torch.zeros(group.latent_dim)
            self.latents.append(nn.Parameter(z0.to(device)))

    def generate_group(self, index: int, latent: Tensor | None = None) -> Tensor:
        z = self.latents[index] if latent is None else latent
        return getattr(self, f"theta0_{index}") + self.operators[index](z)  # (P_g,)


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


class RingGenerator(_PeerGenerator):
    """Recurrent Parameter Generator: every weight of a group is a fixed signed entry of its trainable ring
    (module docstring). ``latents[g]`` is group ``g``'s ring (``latent_dim`` entries)."""

    def __init__(
        self,
        layout: ParamLayout,
        init_tensors: Mapping[str, Tensor],
        *,
        seed: int = 0,
        constant_init_std: float = 0.02,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__(layout)
        device = torch.device(device or "cpu")
        meta = device.type == "meta"
        for index, group in enumerate(layout.groups):
            if meta:
                index_t, scale, shift = (torch.empty(group.numel, dtype=dt, device=device) for dt in (torch.int64, torch.float32, torch.float32))
                ring = torch.empty(group.latent_dim, device=device)
            else:
                index_t, sign = ring_assignment(seed, group.name, group.latent_dim, group.numel)
                stats = [_init_stats(init_tensors[t.name], constant_init_std) for t in group.tensors]
                numels = torch.tensor([t.numel for t in group.tensors])
                std, mean = (torch.repeat_interleave(torch.tensor(column), numels) for column in zip(*stats))
                scale, shift = sign.float() * std, mean  # (P_g,) each
                ring = torch.randn(group.latent_dim, generator=torch.Generator().manual_seed(mapping_key(seed, f"{group.name}/ring-init")))
            self.register_buffer(f"index_{index}", index_t.to(device), persistent=False)  # (P_g,) ring positions
            self.register_buffer(f"scale_{index}", scale.to(device), persistent=False)  # (P_g,) sign * init std
            self.register_buffer(f"shift_{index}", shift.to(device), persistent=False)  # (P_g,) init mean
            self.latents.append(nn.Parameter(ring.to(device)))

    def generate_group(self, index: int, latent: Tensor | None = None) -> Tensor:
        ring = self.latents[index] if latent is None else latent
        fetched = ring.index_select(0, getattr(self, f"index_{index}"))  # (P_g,); backward scatter-adds into the ring
        return fetched * getattr(self, f"scale_{index}") + getattr(self, f"shift_{index}")


def _init_stats(theta0: Tensor, constant_init_std: float) -> tuple[float, float]:
    """``(std, mean)`` of a tensor's default init; a constant tensor gets ``constant_init_std``."""
    theta0 = theta0.detach().double().reshape(-1)
    mean = theta0.mean().item()
    std = theta0.std(unbiased=False).item() if theta0.numel() > 1 else 0.0
    if std <= 1e-12 * max(1.0, abs(mean)):
        std = constant_init_std
    return std, mean


PEERS = {"subspace": SubspaceGenerator, "rpg": RingGenerator}


def storage_bytes(peer: str, latent_dim: int, numel: int, operator: str = "dense") -> int:
    """Bytes of fixed tensors a peer holds for a group (what `_PeerGenerator.mapping_bytes` counts once built):
    the subspace's projection (its operator's storage) and ``theta0`` (fp32); the ring's int64 positions and fp32
    scales and shifts, per weight."""
    if peer == "subspace":
        return OPERATORS[operator].storage_bytes(latent_dim, numel, torch.float32) + 4 * numel
    if peer == "rpg":
        return (8 + 4 + 4) * numel
    raise ValueError(f"unknown peer generator {peer!r}; choose one of {list(PEERS)}")


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
    **options,
) -> MappedModel:
    """``model`` trained through a peer generator (``"subspace"`` or ``"rpg"``), like `map_model`: the layout
    (grouping, budget, trainable, frozen) is built the same way, and each group's latent dimension is its
    subspace dimension or ring size. ``options``: ``operator``, ``latent_init_std`` (subspace) or
    ``constant_init_std`` (rpg). The model's current parameters are its default init ``theta0``."""
    if peer not in PEERS:
        raise ValueError(f"unknown peer generator {peer!r}; choose one of {list(PEERS)}")
    layout = ParamLayout.from_module(model, grouping, budget, trainable=trainable, frozen=frozen, budget_rule=budget_rule)
    return build_mapped(model, layout, device, lambda init, device: PEERS[peer](layout, init, seed=seed, device=device, **options))
