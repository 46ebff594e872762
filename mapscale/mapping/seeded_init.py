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
    """``x * constant mod 2**32`` for ``x`` < 2**32 held in int64, with no product past 2**63: a constant past
    2**31 is split as ``c' + 2**31``, and ``x * 2**31 mod 2**32`` is ``x``'s lowest bit moved to bit 31."""
    if constant < 2**31:
        return (x * constant) & MASK32
    return (x * (constant - 2**31) + ((x & 1) << 31)) & MASK32


def _hash32(x: Tensor) -> Tensor:
    """Wellons' ``lowbias32`` integer hash of 32-bit values held in int64."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def _counter_hash(key: int, counters: Tensor) -> Tensor:
    """32 random bits per counter (int64, < 2**62): two rounds of `_hash32`, the key's halves xor-ed in before
    each (one round alone would give keys differing in low bits permutations of one another's values)."""
    h = _hash32((counters & MASK32) ^ (key & MASK32))
    return _hash32(h ^ (counters >> 32) ^ ((key >> 32) & MASK32))


def _unit(bits: Tensor) -> Tensor:
    """32 random bits -> a float64 uniform in (0, 1), never 0 (the Box-Muller logarithm)."""
    return (bits.to(torch.float64) + 0.5) * (1.0 / 2**32)


CPU_CHUNK = 2**16
"""Elements drawn at a time on a CPU: the hash's int64 temporaries then stay in cache. Measured on one thread
(2-core AMD EPYC) for a 38.6M-element tensor: 19 ns an element (normal) and 12 (uniform) in chunks of 2**16,
against 132 and 152 in one pass; 2**14 and 2**18 are within 10% of 2**16. Other devices draw in one pass."""


def seeded_values(key: int, family: int, mean: float, std: float, start: int, stop: int, dtype: torch.dtype, device=None) -> Tensor:
    """``(stop - start,)``: elements ``[start, stop)`` of a tensor drawn from ``family`` with ``mean`` and ``std``."""
    count = stop - start
    if family == CONSTANT or count <= 0:
        return torch.full((max(count, 0),), mean, dtype=dtype, device=device)
    if count > CPU_CHUNK and torch.device(device or "cpu").type == "cpu":
        out = torch.empty(count, dtype=dtype)
        for lo in range(start, stop, CPU_CHUNK):
            hi = min(stop, lo + CPU_CHUNK)
            out[lo - start : hi - start] = _draw(key, family, mean, std, lo, hi, dtype, device)
        return out
    return _draw(key, family, mean, std, start, stop, dtype, device)


def _draw(key: int, family: int, mean: float, std: float, start: int, stop: int, dtype: torch.dtype, device) -> Tensor:
    count = stop - start
    if family == UNIFORM:
        u = _unit(_counter_hash(key, torch.arange(start, stop, dtype=torch.int64, device=device)))
        return ((u * 2 - 1) * (math.sqrt(3.0) * std) + mean).to(dtype)
    # Box-Muller: pair j gives elements 2j (cosine) and 2j + 1 (sine), from two uniforms: the pair's bits and
    # their hash.
    pairs = torch.arange(start // 2, (stop + 1) // 2, dtype=torch.int64, device=device)
    bits = _counter_hash(key, pairs)
    u, v = _unit(bits), _unit(_hash32(bits ^ 0x68E31DA4))
    radius, angle = torch.sqrt(-2 * torch.log(u)), (2 * math.pi) * v
    both = torch.stack([radius * torch.cos(angle), radius * torch.sin(angle)], dim=1).reshape(-1)  # (2 * pairs,)
    first = start - 2 * (start // 2)
    return (both[first : first + count] * std + mean).to(dtype)
