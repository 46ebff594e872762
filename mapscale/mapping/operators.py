"""Fixed mapping operators ``W_g`` (``latent_dim x P_g``, orthonormal rows): the one interface and its builds.

How the fixed weights are made (a pure function of ``(seed, group name, latent_dim, P_g)``):

1. *Raw entries.* The ``P_g`` output columns are cut into blocks of ``BLOCK_COLUMNS``; block ``b`` holds
   integers drawn uniformly from ``[-RAW_BOUND, RAW_BOUND]`` by a CPU ``torch.Generator`` seeded with
   ``block_seed(key, b)``. The block layout depends on nothing but ``P_g``: not on world size, chunk size,
   process or device. Any column range can be rebuilt on its own (what a rank owning a shard needs).
2. *Exact Gram.* ``G Gᵀ`` is summed block by block. Entries are integers below 2**15, so each product is
   below 2**30 and a block's float64 dot products (at most 2**12 terms) are exact; blocks are summed in
   int64. The Gram is therefore bitwise the same whatever the BLAS, thread count or summation order.
3. *Orthonormalise.* ``T = L⁻¹`` with ``L`` the Cholesky factor of the Gram (Cholesky-QR, float64, CPU):
   ``W = T G`` has ``W Wᵀ = I``. A rank, a chunked operator or a GPU rebuilds exactly this ``W`` from ``T``
   (``latent_dim x latent_dim``) and the seeded blocks, without ever holding the full matrix.

Operators are ``nn.Module``s with the `MappingOperator` interface; ``OPERATORS`` names them for recipes.
"""

from __future__ import annotations

import hashlib
from typing import Protocol

import torch
from torch import Tensor, nn

BLOCK_COLUMNS = 4096
RAW_BOUND = 2**15 - 1


class MappingOperator(Protocol):
    """A fixed linear map from a group's latent space to its flat parameter vector: ``c -> Wᵀ c``.

    ``W`` has ``latent_dim`` orthonormal rows of length ``num_outputs`` (``P_g``). Implementations may store
    ``W``, regenerate it from the seed, or apply a structured transform; the generator only calls these.
    """

    latent_dim: int
    num_outputs: int

    def forward(self, coefficients: Tensor) -> Tensor:
        """``(latent_dim,) -> (num_outputs,)``: ``Wᵀ coefficients``."""
        ...

    def row_means(self) -> Tensor:
        """``(latent_dim,)``: the mean of each row of ``W`` over its ``num_outputs`` entries."""
        ...


# Optional, for an exact smoothness term in the Mapping Loss (without them it uses a Hutchinson estimate):
#   segment_row_sums(numels: (T,)) -> ((d, T), (d, T)): per consecutive segment of columns, sum_j W_ij and
#       sum_j W_ij², the segments being the group's tensors.
#   weighted_row_sums(column_weights: (P,)) -> ((d,), (d,)): W @ w and (W∘W) @ w.


def mapping_key(seed: int, group: str) -> int:
    """A stable 63-bit key for the mapping of ``group`` under ``seed`` (never Python's salted ``hash``)."""
    digest = hashlib.sha256(f"mapscale/mapping/{int(seed)}/{group}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def block_seed(key: int, block: int) -> int:
    digest = hashlib.sha256(f"{key}/{block}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def raw_block(key: int, latent_dim: int, num_outputs: int, block: int) -> Tensor:
    """``(latent_dim, ncols)`` float32 block ``block`` of the raw integer matrix ``G`` (exact in float32)."""
    start = block * BLOCK_COLUMNS
    ncols = min(BLOCK_COLUMNS, num_outputs - start)
    if ncols <= 0:
        raise IndexError(f"block {block} is past the {num_outputs} columns")
    generator = torch.Generator().manual_seed(block_seed(key, block))
    return torch.randint(-RAW_BOUND, RAW_BOUND + 1, (latent_dim, ncols), generator=generator, dtype=torch.float32)


def num_blocks(num_outputs: int) -> int:
    return -(-num_outputs // BLOCK_COLUMNS)


def orthonormalizer(gram: Tensor) -> Tensor:
    """``T = L⁻¹`` (float64) for the exact integer Gram ``G Gᵀ``, so that ``T G`` has orthonormal rows."""
    try:
        factor = torch.linalg.cholesky(gram.to(torch.float64))
    except RuntimeError as err:  # only for near-square groups whose raw rows happen to be dependent
        raise ValueError(
            f"the raw mapping rows of this group are linearly dependent (latent_dim {gram.shape[0]}); "
            "use a smaller latent_dim or another seed"
        ) from err
    eye = torch.eye(gram.shape[0], dtype=torch.float64)
    return torch.linalg.solve_triangular(factor, eye, upper=False)


def _block_gram(block: Tensor) -> Tensor:
    wide = block.to(torch.float64)
    return (wide @ wide.T).to(torch.int64)  # exact: integer-valued, below 2**53


def seeded_gram(key: int, latent_dim: int, num_outputs: int, blocks: range | None = None) -> Tensor:
    """The exact int64 Gram ``G Gᵀ`` summed over ``blocks`` (default: all), streaming (``O(latent_dim²)`` memory).

    Being integer, partial Grams over disjoint block sets add up to exactly the full one in any order: the
    distributed build splits the blocks across ranks and sums with an all-reduce.
    """
    gram = torch.zeros(latent_dim, latent_dim, dtype=torch.int64)
    for block in blocks if blocks is not None else range(num_blocks(num_outputs)):
        gram += _block_gram(raw_block(key, latent_dim, num_outputs, block))
    return gram


def seeded_orthonormalizer(key: int, latent_dim: int, num_outputs: int) -> Tensor:
    """`orthonormalizer` of the seeded mapping, streaming over its blocks (``O(latent_dim²)`` memory)."""
    return orthonormalizer(seeded_gram(key, latent_dim, num_outputs))


def seeded_columns(key: int, latent_dim: int, num_outputs: int, start: int, stop: int, transform: Tensor) -> Tensor:
    """Columns ``[start, stop)`` of the orthonormal mapping, float32, built from only the blocks they touch."""
    if not 0 <= start <= stop <= num_outputs:
        raise IndexError(f"column range [{start}, {stop}) is outside [0, {num_outputs})")
    out = torch.empty(latent_dim, stop - start, dtype=torch.float32)  # filled in place: no second copy to concatenate
    for block in range(start // BLOCK_COLUMNS, num_blocks(stop) if stop else 0):
        lo = block * BLOCK_COLUMNS
        first, last = max(start, lo), min(stop, lo + BLOCK_COLUMNS)
        raw = raw_block(key, latent_dim, num_outputs, block)[:, first - lo : last - lo]
        out[:, first - start : last - start] = transform @ raw.to(torch.float64)
    return out


def build_orthonormal_mapping(key: int, latent_dim: int, num_outputs: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """The whole ``(latent_dim, num_outputs)`` mapping, on the CPU.

    Equal to ``seeded_columns(..., 0, num_outputs, seeded_orthonormalizer(...))`` but draws each random
    block once: the raw integers are kept in the output buffer between the Gram pass and the transform.
    """
    if latent_dim > num_outputs:
        raise ValueError(f"latent_dim {latent_dim} exceeds the {num_outputs} outputs; rows cannot be orthonormal")
    weight = torch.empty(latent_dim, num_outputs, dtype=torch.float32)
    gram = torch.zeros(latent_dim, latent_dim, dtype=torch.int64)
    for block in range(num_blocks(num_outputs)):
        raw = raw_block(key, latent_dim, num_outputs, block)
        weight[:, block * BLOCK_COLUMNS : block * BLOCK_COLUMNS + raw.shape[1]] = raw
        gram += _block_gram(raw)
    transform = orthonormalizer(gram)
    for block in range(num_blocks(num_outputs)):
        cols = slice(block * BLOCK_COLUMNS, (block + 1) * BLOCK_COLUMNS)
        weight[:, cols] = (transform @ weight[:, cols].to(torch.float64)).to(torch.float32)
    return weight.to(dtype)


class DenseOperator(nn.Module):
    """The stored orthonormal matrix: the paper's baseline, ``latent_dim * P_g`` floats.

    ``columns=(start, stop)`` holds only those columns of ``W`` (a shard: ``forward`` gives
    ``(Wᵀ c)[start:stop]`` and the row statistics cover only those columns), rebuilt bit-identically from the
    seed with ``transform``, the group's `orthonormalizer` (computed from the whole group when not given).
    ``trainable=True`` holds ``W`` as an ``nn.Parameter`` (the paper's Table 7 "Full DNN" ablations);
    otherwise it is a non-persistent buffer, never in a state_dict or checkpoint (invariant 3).
    On the ``meta`` device only shapes exist, for inspecting layouts too large to build.
    """

    def __init__(
        self,
        latent_dim: int,
        num_outputs: int,
        key: int,
        *,
        trainable: bool = False,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
        columns: tuple[int, int] | None = None,
        transform: Tensor | None = None,
    ) -> None:
        super().__init__()
        self.latent_dim, self.num_outputs, self.key = latent_dim, num_outputs, key
        self.columns = (0, num_outputs) if columns is None else (int(columns[0]), int(columns[1]))
        start, stop = self.columns
        if not 0 <= start <= stop <= num_outputs:
            raise ValueError(f"columns {self.columns} are outside the {num_outputs} outputs")
        if latent_dim > num_outputs:
            raise ValueError(f"latent_dim {latent_dim} exceeds the {num_outputs} outputs; rows cannot be orthonormal")
        if torch.device(device or "cpu").type == "meta":
            weight = torch.empty(latent_dim, stop - start, dtype=dtype, device="meta")
        elif columns is None and transform is None:
            # Built on the CPU whatever the device, so every device holds the same numbers.
            weight = build_orthonormal_mapping(key, latent_dim, num_outputs, dtype).to(device)
        else:
            transform = seeded_orthonormalizer(key, latent_dim, num_outputs) if transform is None else transform
            weight = seeded_columns(key, latent_dim, num_outputs, start, stop, transform).to(dtype).to(device)
        if trainable:
            self.weight = nn.Parameter(weight)
        else:
            self.register_buffer("weight", weight, persistent=False)

    @staticmethod
    def storage_bytes(latent_dim: int, num_outputs: int, dtype: torch.dtype = torch.float32) -> int:
        return latent_dim * num_outputs * torch.empty((), dtype=dtype).element_size()

    def forward(self, coefficients: Tensor) -> Tensor:
        return coefficients.to(self.weight.dtype) @ self.weight  # (d,) @ (d, P_g) -> (P_g,)

    def row_means(self) -> Tensor:
        """Mean over the held columns (all of ``W``'s unless ``columns`` cut a shard)."""
        return self._derived("row_means", lambda: self.weight.mean(dim=1, dtype=torch.float32))

    def segment_row_sums(self, numels: Tensor) -> tuple[Tensor, Tensor]:
        def compute() -> tuple[Tensor, Tensor]:
            pieces = self.weight.split(numels.tolist(), dim=1)
            sums = torch.stack([p.sum(1, dtype=torch.float32) for p in pieces], 1)
            return sums, torch.stack([p.float().square().sum(1) for p in pieces], 1)

        return self._derived("segment_row_sums", compute)

    def _derived(self, name: str, compute):
        """A quantity derived from ``W``: computed once while ``W`` is fixed (it costs a full pass over the
        mapping), recomputed differentiably every call while ``W`` trains (the full-dnn variants)."""
        if self.weight.requires_grad:
            return compute()
        cache = self.__dict__.setdefault("_derived_cache", {})
        entry = cache.get(name)
        if entry is None or entry[0] != self.weight.device:
            with torch.no_grad():
                entry = cache[name] = (self.weight.device, compute())
        return entry[1]

    def weighted_row_sums(self, column_weights: Tensor) -> tuple[Tensor, Tensor]:
        sums = self.weight @ column_weights.to(self.weight.dtype)
        sq_sums = torch.zeros_like(sums)
        for start in range(0, self.num_outputs, 2**16):  # W∘W a chunk of columns at a time, not all at once
            cols = slice(start, start + 2**16)
            sq_sums = sq_sums + self.weight[:, cols].square() @ column_weights[cols].to(self.weight.dtype)
        return sums, sq_sums

    def extra_repr(self) -> str:
        shard = "" if self.columns == (0, self.num_outputs) else f", columns={self.columns}"
        return f"latent_dim={self.latent_dim}, num_outputs={self.num_outputs}{shard}, dtype={self.weight.dtype}"


# Operator name -> class, as recipes name them. Each takes (latent_dim, num_outputs, key, *, trainable,
# dtype, device, columns, transform) and has a static storage_bytes(latent_dim, num_outputs, dtype).
OPERATORS: dict[str, type[nn.Module]] = {
    "dense": DenseOperator,
}
