"""theta_0 that is not stored (``offset="seeded"``): each tensor's initial weights regenerated on the fly from
(seed, tensor name) by a counter-based generator, drawn from the target's own init distribution of that tensor.

At build, `init_statistics` reduces each tensor of the target's default initialisation to three numbers: its
family (a constant, a uniform or a normal, told apart by the range: a uniform spans 2 sqrt(3) = 3.46 of its
standard deviations, 100 normal draws about 5; measured over 400 draws each, every uniform tensor of 100 or more
elements and 99.5% of normal ones of 100 are told right, all from 1,000 up; a smaller tensor may take the other
family with its own mean and std), mean and standard deviation. `seeded_values` then gives elements ``[start, stop)`` of that tensor:
element ``i`` is a pure function of (tensor key, ``i``), a 32-bit integer hash of the counter (Wellons'
``lowbias32``, its products split so that they stay exact in int64) turned into a uniform in (0, 1), then into
the family's value (Box-Muller for the normal, one pair of uniforms per pair of elements). So a tensor's values
are bit-identical whatever range is asked for, in whatever order, on whatever rank and however often; the math
runs in float64 before the cast, so the CPU's vector width does not reach the float32 values either.

Constants (norm weights, zero biases) stay constants. Pretrained weights cannot be regenerated: where
theta_0 is a checkpoint, keep ``offset="init"``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from mapscale.mapping.operators import mapping_key

CONSTANT, UNIFORM, NORMAL = 0, 1, 2
FAMILIES = {CONSTANT: "constant", UNIFORM: "uniform", NORMAL: "normal"}
UNIFORM_RANGE = 3.9  # largest (max - min) / std of a tensor told uniform: a uniform's is 2 sqrt(3) = 3.46 (sample std: a little more)
MASK32 = 0xFFFFFFFF


def init_statistics(tensor: Tensor) -> tuple[int, float, float]:
    """``(family, mean, std)`` of a default-initialised tensor (float64 moments over its elements)."""
    x = tensor.detach().to(torch.float64).reshape(-1).cpu()
    mean = x.mean().item()
    std = x.std(unbiased=False).item() if x.numel() > 1 else 0.0
    if std <= 1e-12 * max(1.0, abs(mean)):
        return CONSTANT, mean, 0.0
    spread = (x.max() - x.min()).item() / std
    return (UNIFORM if spread <= UNIFORM_RANGE else NORMAL), mean, std


def tensor_key(seed: int, name: str) -> int:
    """The counter generator's 63-bit key for tensor ``name`` under ``seed``."""
    return mapping_key(seed, f"{name}/theta_0")


def _mul32(x: Tensor, constant: int) -> Tensor:
    """``x * constant mod 2**32`` for ``x`` < 2**32 (int64), with no product past 2**48."""
    low, high = constant & 0xFFFF, constant >> 16
    return (x * low + (((x * high) & 0xFFFF) << 16)) & MASK32


def _hash32(x: Tensor) -> Tensor:
    """Wellons' ``lowbias32`` integer hash of 32-bit values held in int64."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def _uniforms(key: int, counters: Tensor) -> tuple[Tensor, Tensor]:
    """Two float64 uniforms in (0, 1) per counter (int64, < 2**62): pure functions of (key, counter)."""
    k = [(key >> shift) & MASK32 for shift in (0, 32)]
    h = _hash32((counters & MASK32) ^ k[0])
    h = _hash32(h ^ (counters >> 32) ^ k[1])
    a, b = _hash32(h ^ 0x68E31DA4), _hash32(h ^ 0xB5297A4D)
    scale = 1.0 / 2**32
    return (a.to(torch.float64) + 0.5) * scale, (b.to(torch.float64) + 0.5) * scale


def seeded_values(key: int, family: int, mean: float, std: float, start: int, stop: int, dtype: torch.dtype, device=None) -> Tensor:
    """``(stop - start,)``: elements ``[start, stop)`` of a tensor drawn from ``family`` with ``mean`` and ``std``."""
    count = stop - start
    if family == CONSTANT or count <= 0:
        return torch.full((max(count, 0),), mean, dtype=dtype, device=device)
    if family == UNIFORM:
        u, _ = _uniforms(key, torch.arange(start, stop, dtype=torch.int64, device=device))
        return ((u * 2 - 1) * (math.sqrt(3.0) * std) + mean).to(dtype)
    # Box-Muller: pair j gives elements 2j (cosine) and 2j + 1 (sine).
    pairs = torch.arange(start // 2, (stop + 1) // 2, dtype=torch.int64, device=device)
    u, v = _uniforms(key, pairs)
    radius, angle = torch.sqrt(-2 * torch.log(u)), (2 * math.pi) * v
    both = torch.stack([radius * torch.cos(angle), radius * torch.sin(angle)], dim=1).reshape(-1)  # (2 * pairs,)
    first = start - 2 * (start // 2)
    return (both[first : first + count] * std + mean).to(dtype)
