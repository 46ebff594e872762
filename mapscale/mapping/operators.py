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
import math
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
        """``(latent_dim,)``: the mean of each row of ``W`` over its held columns."""
        ...

    row_sums: bool
    """Whether `segment_row_sums` and `weighted_row_sums` give values (a property of the operator class, so that
    every part of a group agrees on it before summing over parts)."""

    def segment_row_sums(self, numels: Tensor) -> tuple[Tensor, Tensor] | None:
        """Per consecutive segment of held columns (``numels``: ``(T,)``, the group's tensors), ``sum_j W_ij``
        and ``sum_j W_ij²`` (``(d, T)`` each), for the exact smoothness term; None where not cheap (the
        Mapping Loss then uses a Hutchinson estimate)."""
        ...

    def weighted_row_sums(self, column_weights: Tensor) -> tuple[Tensor, Tensor] | None:
        """``W @ w`` and ``(W∘W) @ w`` (``(d,)`` each) for ``(P,)`` column weights, or None where not cheap."""
        ...

    def shared_state(self) -> dict[str, Tensor]:
        """Fixed tensors that depend on the group alone (the seeded operator's orthonormalizer ``T``, the sparse
        operator's tables), by attribute name: the pieces of one group share one copy of each."""
        ...


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


def group_transforms(layout, seed: int, pieces, part, device: torch.device) -> dict[int, Tensor]:
    """The `orthonormalizer` of each group a part's ``pieces`` touch (``{group index: T}``), from the exact Gram
    summed over every part (``part.total``; part ``index`` of ``count`` draws the blocks ``index::count``), so
    no part draws a whole group's raw entries. Every part calls ``part.total`` once per group, in order."""
    held, transforms = {index for index, _, _ in pieces}, {}
    for index, group in enumerate(layout.groups):
        if device.type == "meta":
            continue
        key = mapping_key(seed, group.name)
        blocks = range(part.index, num_blocks(group.numel), part.count)
        gram = part.total(seeded_gram(key, group.latent_dim, group.numel, blocks))  # exact: int64 sums
        if index in held:
            transforms[index] = orthonormalizer(gram)
    return transforms


def seeded_orthonormalizer(key: int, latent_dim: int, num_outputs: int) -> Tensor:
    """`orthonormalizer` of the seeded mapping, streaming over its blocks (``O(latent_dim²)`` memory)."""
    return orthonormalizer(seeded_gram(key, latent_dim, num_outputs))


def seeded_columns(key: int, latent_dim: int, num_outputs: int, start: int, stop: int, transform: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """Columns ``[start, stop)`` of the orthonormal mapping, float32 (or float64), built from only the blocks they touch."""
    if not 0 <= start <= stop <= num_outputs:
        raise IndexError(f"column range [{start}, {stop}) is outside [0, {num_outputs})")
    out = torch.empty(latent_dim, stop - start, dtype=_statistics_dtype(dtype))  # filled in place: no second copy to concatenate
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
    storage = _statistics_dtype(dtype)  # float64 stays float64: the transformed entries are rounded once, to it
    weight = torch.empty(latent_dim, num_outputs, dtype=storage)
    gram = torch.zeros(latent_dim, latent_dim, dtype=torch.int64)
    for block in range(num_blocks(num_outputs)):
        raw = raw_block(key, latent_dim, num_outputs, block)
        weight[:, block * BLOCK_COLUMNS : block * BLOCK_COLUMNS + raw.shape[1]] = raw
        gram += _block_gram(raw)
    transform = orthonormalizer(gram)
    for block in range(num_blocks(num_outputs)):
        cols = slice(block * BLOCK_COLUMNS, (block + 1) * BLOCK_COLUMNS)
        weight[:, cols] = (transform @ weight[:, cols].to(torch.float64)).to(storage)
    return weight.to(dtype)


def _statistics_dtype(dtype: torch.dtype) -> torch.dtype:
    """Row statistics of a mapping stored in ``dtype``: float64 for float64, else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


class _Operator(nn.Module):
    """What every operator shares: its shape, key and the held column range ``[start, stop)`` (a shard's)."""

    def __init__(self, latent_dim: int, num_outputs: int, key: int, columns: tuple[int, int] | None) -> None:
        super().__init__()
        self.latent_dim, self.num_outputs, self.key = latent_dim, num_outputs, key
        self.columns = (0, num_outputs) if columns is None else (int(columns[0]), int(columns[1]))
        start, stop = self.columns
        if not 0 <= start <= stop <= num_outputs:
            raise ValueError(f"columns {self.columns} are outside the {num_outputs} outputs")
        if latent_dim > num_outputs:
            raise ValueError(f"latent_dim {latent_dim} exceeds the {num_outputs} outputs; rows cannot be orthonormal")

    def _compute_in(self, dtype: torch.dtype, device) -> None:
        """Compute in float64 when ``dtype`` is float64, else float32; and in float64 after ``module.double()`` or
        ``.to(torch.float64)`` (``optim.precision='fp64'``), which converts this empty buffer with the others."""
        dtype = torch.float64 if dtype == torch.float64 else torch.float32
        self.register_buffer("_compute", torch.empty(0, dtype=dtype, device=device), persistent=False)

    @property
    def compute_dtype(self) -> torch.dtype:
        return self._compute.dtype

    def _apply(self, fn, recurse=True):
        # Statistics derived from the fixed state (row means, row sums) follow it to its new device or dtype.
        self.__dict__.pop("_derived_cache", None)
        return super()._apply(fn, recurse)

    row_sums = False

    def segment_row_sums(self, numels: Tensor) -> tuple[Tensor, Tensor] | None:
        return None

    def weighted_row_sums(self, column_weights: Tensor) -> tuple[Tensor, Tensor] | None:
        return None

    def shared_state(self) -> dict[str, Tensor]:
        return {}

    def _describe(self) -> str:
        shard = "" if self.columns == (0, self.num_outputs) else f", columns={self.columns}"
        return f"latent_dim={self.latent_dim}, num_outputs={self.num_outputs}{shard}"


class DenseOperator(_Operator):
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
        super().__init__(latent_dim, num_outputs, key, columns)
        start, stop = self.columns
        if torch.device(device or "cpu").type == "meta":
            weight = torch.empty(latent_dim, stop - start, dtype=dtype, device="meta")
        elif columns is None and transform is None:
            # Built on the CPU whatever the device, so every device holds the same numbers.
            weight = build_orthonormal_mapping(key, latent_dim, num_outputs, dtype).to(device)
        else:
            transform = seeded_orthonormalizer(key, latent_dim, num_outputs) if transform is None else transform
            weight = seeded_columns(key, latent_dim, num_outputs, start, stop, transform, dtype).to(dtype).to(device)
        if trainable:
            self.weight = nn.Parameter(weight)
        else:
            self.register_buffer("weight", weight, persistent=False)

    uses_transform = True  # built from the group's orthonormalizer T (sharded builds pass it in)
    row_sums = True

    @staticmethod
    def storage_bytes(latent_dim: int, num_outputs: int, dtype: torch.dtype = torch.float32, columns: int | None = None) -> int:
        """Bytes held for ``columns`` of the group's ``num_outputs`` (default all): a shard holds fewer."""
        return latent_dim * (num_outputs if columns is None else columns) * torch.empty((), dtype=dtype).element_size()

    def forward(self, coefficients: Tensor) -> Tensor:
        return coefficients.to(self.weight.dtype) @ self.weight  # (d,) @ (d, P_g) -> (P_g,)

    def row_means(self) -> Tensor:
        """Mean over the held columns (all of ``W``'s unless ``columns`` cut a shard)."""
        return self._derived("row_means", lambda: self.weight.mean(dim=1, dtype=_statistics_dtype(self.weight.dtype)))

    def segment_row_sums(self, numels: Tensor) -> tuple[Tensor, Tensor]:
        def compute() -> tuple[Tensor, Tensor]:
            pieces = self.weight.split(numels.tolist(), dim=1)
            dtype = _statistics_dtype(self.weight.dtype)
            sums = torch.stack([p.sum(1, dtype=dtype) for p in pieces], 1)
            return sums, torch.stack([p.to(dtype).square().sum(1) for p in pieces], 1)

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
        return f"{self._describe()}, dtype={self.weight.dtype}"




# -- operators that never store W -------------------------------------------------------------------------


def share_group_state(operator: nn.Module, group: int, shared: dict[tuple[int, str], Tensor]) -> None:
    """Point ``operator``'s `shared_state` at the copies ``shared`` already holds for ``group`` (recording its own
    where none is held yet): the pieces of one group keep one copy of what depends on the group alone."""
    for name, kept in operator.shared_state().items():
        setattr(operator, name, shared.setdefault((group, name), kept))


def _not_trainable(name: str, trainable: bool) -> None:
    if trainable:
        raise ValueError(f"operator {name!r} is never stored, so it cannot train (variant 'full-dnn' / 'lv-full-dnn' need operator 'dense')")


class _TracedLinear(torch.autograd.Function):
    """``op.multiply(x)`` for a fixed linear ``op`` with its transpose: backward is ``op.multiply_transpose`` (not
    ``apply``: that name is ``nn.Module.apply``, which DeepSpeed calls on the model). Nothing is saved. What the
    operators apply while compiling: dynamo refuses an ``autograd.Function`` with a custom ``jvp``, and without one
    the forward and the transpose enter the graph as the plain tensor operations they are, for inductor to fuse."""

    @staticmethod
    def forward(x: Tensor, op) -> Tensor:
        with torch.no_grad():
            return op.multiply(x)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.op = inputs[1]

    @staticmethod
    def backward(ctx, grad: Tensor):
        return ctx.op.multiply_transpose(grad), None


class _Linear(_TracedLinear):
    """`_TracedLinear` with its JVP (``torch.func.jvp``, the Mapping Loss's Hutchinson estimate): ``op.multiply`` of
    the tangent. What eager runs apply."""

    @staticmethod
    def jvp(ctx, tangent: Tensor, _op):
        return ctx.op.multiply(tangent)


def linear(x: Tensor, op) -> Tensor:
    """``op.multiply(x)``, differentiable with ``op.multiply_transpose`` as its backward: `_TracedLinear` under
    ``torch.compile``, else `_Linear`."""
    return (_TracedLinear if torch.compiler.is_compiling() else _Linear).apply(x, op)


class SeededOperator(_Operator):
    """Exactly `DenseOperator`'s ``W = T G`` for the same seed, never stored: the raw integer blocks of ``G`` are
    redrawn from their block seeds on every forward (``Wᵀ c = Gᵀ (Tᵀ c)``) and backward (``W g = T (G g)``).

    Memory: ``T`` (``latent_dim²``, float32) plus one block of ``G`` at a time (``latent_dim x BLOCK_COLUMNS``),
    against ``latent_dim x P`` for the dense matrix. Time: every step draws ``latent_dim x P`` random integers
    twice, on the CPU (the CPU generator is what makes the entries the same on every device), so it pays where
    memory, not time, is the limit. ``columns`` / ``transform`` as for `DenseOperator`.
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
        super().__init__(latent_dim, num_outputs, key, columns)
        _not_trainable("seeded", trainable)
        self._compute_in(dtype, device)
        if torch.device(device or "cpu").type == "meta":
            transform = torch.empty(latent_dim, latent_dim, device="meta")
        elif transform is None:
            transform = seeded_orthonormalizer(key, latent_dim, num_outputs)
        self.register_buffer("transform", transform.to(self.compute_dtype).to(device), persistent=False)

    uses_transform = True

    @staticmethod
    def storage_bytes(latent_dim: int, num_outputs: int, dtype: torch.dtype = torch.float32, columns: int | None = None) -> int:
        return latent_dim * latent_dim * (8 if dtype == torch.float64 else 4)  # T, whatever the columns held

    def shared_state(self) -> dict[str, Tensor]:
        return {"transform": self.transform}

    def _blocks(self):
        """``(block, first, last, lo)``: each raw block touching the held columns and the columns it gives."""
        start, stop = self.columns
        for block in range(start // BLOCK_COLUMNS, num_blocks(stop) if stop else 0):
            lo = block * BLOCK_COLUMNS
            yield block, max(start, lo), min(stop, lo + BLOCK_COLUMNS), lo

    def _raw(self, block: int, first: int, last: int, lo: int, like: Tensor) -> Tensor:
        raw = raw_block(self.key, self.latent_dim, self.num_outputs, block)[:, first - lo : last - lo]
        return raw.to(device=like.device, dtype=like.dtype)

    def multiply(self, projected: Tensor) -> Tensor:
        """``Gᵀ x`` over the held columns, a block at a time. Each column's dot product is taken in float64 (its
        products are exact there) and rounded once: a float32 product's rounding depends on how many columns the
        BLAS kernel is given (measured: 13 of 4,095 columns differed by an ulp between a 4,095- and a 4,096-column
        product), and the same column must come out the same from any column range."""
        start, stop = self.columns
        out = projected.new_empty(stop - start)
        wide = projected.to(torch.float64)
        for block, first, last, lo in self._blocks():
            out[first - start : last - start] = (wide @ self._raw(block, first, last, lo, wide)).to(out.dtype)
        return out

    def multiply_transpose(self, grad: Tensor) -> Tensor:
        """``G g`` over the held columns."""
        start, _ = self.columns
        total = grad.new_zeros(self.latent_dim)
        for block, first, last, lo in self._blocks():
            total += self._raw(block, first, last, lo, grad) @ grad[first - start : last - start]
        return total

    def forward(self, coefficients: Tensor) -> Tensor:
        projected = self.transform.T @ coefficients.to(self.compute_dtype)
        return linear(projected, self)

    def row_means(self) -> Tensor:
        """``T (G 1) / n`` over the held columns, computed once (one pass over the seeded blocks)."""
        cache = self.__dict__.setdefault("_derived_cache", {})
        if "row_means" not in cache:
            start, stop = self.columns
            ones = torch.ones(stop - start, dtype=torch.float64)
            with torch.no_grad():
                sums = torch.zeros(self.latent_dim, dtype=torch.float64)
                for block, first, last, lo in self._blocks():
                    sums += self._raw(block, first, last, lo, ones) @ ones[first - start : last - start]
                cache["row_means"] = (self.transform.double().cpu() @ sums / max(stop - start, 1)).to(self.transform.device, self.compute_dtype)
        return cache["row_means"]

    def extra_repr(self) -> str:
        return f"{self._describe()}, seeded (never stored)"


def _pow2_at_least(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def hadamard(x: Tensor) -> Tensor:
    """The orthonormal Walsh-Hadamard transform ``H x / sqrt(n)`` along the last dimension (``n`` a power of 2).

    ``H_n`` is a Kronecker product of small Sylvester matrices (``H_ab = H_a ⊗ H_b``), so the last dimension is
    viewed as factors of at most 128 and each is multiplied by its small ``H``: a few BLAS matmuls instead of
    ``log2 n`` strided butterfly passes, ``O(n · 128)`` flops per factor. ``H`` is symmetric (its own transpose).
    """
    n = x.shape[-1]
    if n & (n - 1):
        raise ValueError(f"the Hadamard transform needs a power-of-two length, got {n}")
    bits, lead = n.bit_length() - 1, x.shape[:-1]
    factors = [1 << min(7, bits - done) for done in range(0, bits, 7)] or [1]
    y = x.reshape(-1, *factors)
    for axis, size in enumerate(factors, start=1):
        if size > 1:
            y = torch.movedim(torch.movedim(y, axis, -1) @ _sylvester(size, y.dtype, y.device), -1, axis)
    return y.reshape(*lead, n) / math.sqrt(n)


def _sylvester(n: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """The ``n x n`` ±1 Sylvester-Hadamard matrix (``n`` a power of 2), cached per dtype and device."""
    key = (n, dtype, device)
    if key not in _SYLVESTER:
        h = torch.ones(1, 1, dtype=torch.float64)
        while h.shape[0] < n:
            h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
        _SYLVESTER[key] = h.to(dtype=dtype, device=device)
    return _SYLVESTER[key]


_SYLVESTER: dict = {}


class StructuredOperator(_Operator):
    """A structured orthogonal transform (Yu et al. 2016, "Orthogonal Random Features"; a subsampled randomized
    Hadamard transform): ``O(P log B)`` time, ``O(P)`` bits of memory, no stored matrix.

    The ``P`` columns are cut into ``nb`` blocks of ``B`` columns, ``B`` the smallest power of two ``>= latent_dim``.
    Block ``j`` is ``M_j = H D3_j H D2_j H D1_j`` (``H`` the normalised ``B x B`` Hadamard matrix, ``D*_j`` seeded
    ±1 diagonals), an exactly orthogonal matrix; ``W`` takes the same seeded ``latent_dim`` rows of every block,
    scaled by ``sqrt(B / P)``. Each full block then contributes ``(B / P) I`` to ``W Wᵀ``; only the last, cut block
    is not exact, so ``W Wᵀ = I`` up to that block's share (``tests/test_operators.py`` measures the deviation).
    Signs are drawn once on the CPU and kept as bits (3 bits per column), so every device gets the same ``W``.
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
        transform: Tensor | None = None,  # unused: nothing to orthonormalise
    ) -> None:
        super().__init__(latent_dim, num_outputs, key, columns)
        _not_trainable("structured", trainable)
        self._compute_in(dtype, device)
        self.block = _pow2_at_least(latent_dim)
        self.scale = math.sqrt(self.block / num_outputs)
        start, stop = self.columns
        self.first_block, last_block = start // self.block, (-(-stop // self.block) if stop else 0)
        nblocks = max(last_block - self.first_block, 0)
        meta = torch.device(device or "cpu").type == "meta"
        if meta:
            rows, bits = torch.empty(latent_dim, dtype=torch.int64), torch.empty(3, nblocks, self.block if self.block < 8 else self.block // 8, dtype=torch.uint8)
        else:
            generator = torch.Generator().manual_seed(block_seed(key, -1))
            rows = torch.randperm(self.block, generator=generator)[:latent_dim].sort().values
            bits = torch.stack([self._block_bits(self.first_block + j) for j in range(nblocks)], 1) if nblocks else torch.empty(3, 0, self.block if self.block < 8 else self.block // 8, dtype=torch.uint8)
        self.register_buffer("rows", rows.to(device), persistent=False)
        self.register_buffer("sign_bits", bits.to(device), persistent=False)  # (3, blocks, B / 8), 1 = minus

    def _block_bits(self, block: int) -> Tensor:
        """``(3, B / 8)`` packed sign bits of block ``block`` (its own seed: any column range rebuilds alone)."""
        generator = torch.Generator().manual_seed(block_seed(self.key, block))
        bits = torch.randint(0, 2, (3, self.block), generator=generator, dtype=torch.uint8)
        if self.block < 8:
            return bits  # (3, B): fewer than one byte's worth, kept unpacked
        weights = (2 ** torch.arange(8, dtype=torch.uint8))
        return (bits.view(3, -1, 8) * weights).sum(-1, dtype=torch.uint8)

    uses_transform = False

    @staticmethod
    def storage_bytes(latent_dim: int, num_outputs: int, dtype: torch.dtype = torch.float32, columns: int | None = None) -> int:
        """Sign bits of the blocks the columns touch (one more block where a shard's columns straddle) and the rows."""
        block = _pow2_at_least(latent_dim)
        blocks = -(-num_outputs // block) if columns is None else min(-(-columns // block) + 1, -(-num_outputs // block))
        return 3 * blocks * (block if block < 8 else block // 8) + 8 * latent_dim

    def _signs(self, dtype: torch.dtype) -> Tensor:
        """``(3, blocks, B)`` ±1 from the packed bits."""
        bits = self.sign_bits
        if self.block >= 8:
            shifts = torch.arange(8, dtype=torch.uint8, device=bits.device)
            bits = ((bits.unsqueeze(-1) >> shifts) & 1).flatten(-2)
        return 1 - 2 * bits.to(dtype)

    def _held(self) -> tuple[int, int]:
        """Offsets of the held columns inside the held blocks' flat span."""
        start, stop = self.columns
        offset = start - self.first_block * self.block
        return offset, offset + stop - start

    def multiply(self, coefficients: Tensor) -> Tensor:
        """``Wᵀ c``: scatter ``c`` onto the chosen rows of every block, then ``M_jᵀ = D1 H D2 H D3 H``."""
        signs = self._signs(coefficients.dtype)
        x = coefficients.new_zeros(signs.shape[1], self.block)
        x[:, self.rows] = coefficients
        x = hadamard(x) * signs[2]
        x = hadamard(x) * signs[1]
        x = hadamard(x) * signs[0]
        lo, hi = self._held()
        return x.reshape(-1)[lo:hi] * self.scale

    def multiply_transpose(self, grad: Tensor) -> Tensor:
        """``W g``: ``M_j = H D3 H D2 H D1`` on each block of ``g`` (zero past the columns), rows summed over blocks."""
        signs = self._signs(grad.dtype)
        lo, hi = self._held()
        x = grad.new_zeros(signs.shape[1] * self.block)
        x[lo:hi] = grad
        x = x.view(signs.shape[1], self.block)
        x = hadamard(x * signs[0])
        x = hadamard(x * signs[1])
        x = hadamard(x * signs[2])
        return x[:, self.rows].sum(0) * self.scale

    def forward(self, coefficients: Tensor) -> Tensor:
        return linear(coefficients.to(self.compute_dtype), self)

    def row_means(self) -> Tensor:
        """``W 1 / n`` over the held columns, computed once (one transpose transform)."""
        cache = self.__dict__.setdefault("_derived_cache", {})
        if "row_means" not in cache:
            start, stop = self.columns
            with torch.no_grad():
                ones = torch.ones(stop - start, dtype=self.compute_dtype, device=self.rows.device)
                cache["row_means"] = self.multiply_transpose(ones) / max(stop - start, 1)
        return cache["row_means"]

    def extra_repr(self) -> str:
        return f"{self._describe()}, block={self.block}, structured (Hadamard)"


# -- the sparse isometry: one hashed non-zero per column ---------------------------------------------------

def _hash_rounds(key: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """The ``(multiplier, addend)`` of each round of `_keyed_hash` under ``key``: plain ints, drawn once per operator
    (a SHA-256 digest, which no compiled graph can trace, so it stays out of the pass)."""
    bits = block_seed(key, -100)
    mask = (1 << 31) - 1
    return (((bits >> 32) & 0x7FFFFFFF) | 1, bits & mask), (((bits >> 1) & 0x7FFFFFFF) | 1, (bits >> 33) & mask)


def _keyed_hash(values: Tensor, rounds: tuple[tuple[int, int], tuple[int, int]]) -> Tensor:
    """A keyed 31-bit integer hash of int64 ``values`` below 2**31 (two multiply-xorshift rounds, `_hash_rounds`;
    every product stays below 2**62, so int64 arithmetic never overflows: the same bits on any device)."""
    mask = (1 << 31) - 1
    for multiplier, addend in rounds:
        values = (values * multiplier + addend) & mask
        values = values ^ (values >> 15)
    return values


def _rolled_rows(values: Tensor, shifts: Tensor, flips: Tensor, length: int) -> Tensor:
    """``(nb, length)``: row ``b`` is ``flips[b] * values`` (``d``; ``length`` a multiple of ``d``) tiled and rolled
    left by ``shifts[b]``: ``out[b, r] = flips[b] * values[(r + shifts[b]) % d]``. Windows of a tiling of ``values``
    followed by one of ``-values``: a row copy each, no index per element."""
    d = values.shape[-1]
    tiled = values.repeat(length // d + 1)  # long enough for a window at any shift below d
    starts = shifts + (flips < 0) * len(tiled)
    return torch.cat([tiled, -tiled]).unfold(0, length, 1).index_select(0, starts)


class SparseOperator(_Operator):
    """A sparse isometry: each column ``j`` of ``W`` holds exactly one non-zero, ``±1/sqrt(n_i)`` in row ``i``;
    rows have disjoint supports and unit norm, so ``W Wᵀ = I`` (exactly up to the rounding of ``1/sqrt(n_i)``).

    Columns are cut into blocks of ``L`` (the smallest multiple of ``d = latent_dim`` that is at least
    ``MIN_BLOCK``): column ``j = b L + r`` goes to row ``i = perm[(r + shift_b) % d]`` with sign
    ``flip_b * sign[r]``, where ``perm`` (a seeded permutation of the rows) and ``sign`` (seeded ±1, ``L`` long)
    are tables and ``shift_b``, ``flip_b`` a keyed integer hash of the block index. Each full block visits every
    row ``L/d`` times and the last, cut block every row ``floor`` or ``ceil`` of its length over ``d`` times, so
    row ``i`` gets ``n_i = floor(P/d)`` or ``ceil(P/d)`` columns. Columns sharing a row sit ``d`` apart inside a
    block and at hashed offsets across blocks, with hashed signs.

    Nothing is stored per parameter: the tables are ``O(d + L)``, the block hashes are recomputed on every pass
    (``O(P/L)``), bit-identical on any device and for any column range. ``Wᵀ c`` is one copy of an ``L``-long
    row per block and a sign product; ``W g`` the sign product, a sum of each block's ``d``-long pieces, the
    copies backwards and a sum over blocks: ``O(P)``, with no index per element and no scatter.
    """

    MIN_BLOCK = 512
    uses_transform = False
    row_sums = True

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
        transform: Tensor | None = None,  # unused: nothing to orthonormalise
    ) -> None:
        super().__init__(latent_dim, num_outputs, key, columns)
        _not_trainable("sparse", trainable)
        if num_outputs >= 2**31:
            raise ValueError(f"{num_outputs} outputs exceed the sparse operator's 2**31 columns")
        self._compute_in(dtype, device)
        self.block = self.block_length(latent_dim)
        self._rounds = (_hash_rounds(key), _hash_rounds(key + 1))  # of the shifts, of the flips
        device = torch.device(device or "cpu")
        generator = torch.Generator().manual_seed(block_seed(key, -1))
        perm = torch.randperm(latent_dim, generator=generator)  # (d,) the row of position x
        sign = torch.randint(0, 2, (self.block,), generator=generator) * 2 - 1  # (L,) ±1 per place r in a block
        # n_i: L/d per full block, plus the last, cut block's visits
        full, cut = divmod(num_outputs, self.block)
        counts = torch.full((latent_dim,), full * (self.block // latent_dim), dtype=torch.int64)
        if cut:
            last = (torch.arange(cut) + self._shifts(torch.tensor([full]))[0]) % latent_dim
            counts += torch.bincount(perm[last], minlength=latent_dim)
        row_scale = torch.tensor([1 / math.sqrt(n) if n else 0.0 for n in counts.tolist()], dtype=torch.float64)  # rounded once
        for name, table in (("perm", perm), ("sign", sign.to(self.compute_dtype)), ("row_scale", row_scale.to(self.compute_dtype))):
            self.register_buffer(name, table.to(device), persistent=False)

    def shared_state(self) -> dict[str, Tensor]:
        return {name: getattr(self, name) for name in ("perm", "sign", "row_scale")}  # functions of the group alone

    @classmethod
    def block_length(cls, latent_dim: int) -> int:
        return latent_dim * -(-cls.MIN_BLOCK // latent_dim)

    @classmethod
    def storage_bytes(cls, latent_dim: int, num_outputs: int, dtype: torch.dtype = torch.float32, columns: int | None = None) -> int:
        itemsize = 8 if dtype == torch.float64 else 4
        return latent_dim * (8 + itemsize) + cls.block_length(latent_dim) * itemsize  # perm, row scale, sign: none per column

    def _shifts(self, blocks: Tensor) -> Tensor:
        return _keyed_hash(blocks, self._rounds[0]) % self.latent_dim

    def _flips(self, blocks: Tensor) -> Tensor:
        return (_keyed_hash(blocks, self._rounds[1]) >> 30) * 2 - 1  # int64 ±1

    def _blocks(self, device) -> tuple[Tensor, Tensor, int]:
        """The blocks the held columns touch: their shifts and flips, and the offset of ``start`` in the first."""
        start, stop = self.columns
        first, last = start // self.block, max(stop - 1, start) // self.block
        blocks = torch.arange(first, last + 1, dtype=torch.int64, device=device)
        return self._shifts(blocks), self._flips(blocks), start - first * self.block

    def multiply(self, coefficients: Tensor) -> Tensor:
        """``(Wᵀ c)[start:stop]``."""
        start, stop = self.columns
        shifts, flips, offset = self._blocks(coefficients.device)
        values = (coefficients.to(self.compute_dtype) * self.row_scale)[self.perm]  # (d,) the value at position x
        out = _rolled_rows(values, shifts, flips, self.block) * self.sign  # (nb, L)
        return out.reshape(-1)[offset : offset + stop - start]

    def multiply_transpose(self, grad: Tensor) -> Tensor:
        """``W g`` for ``g`` over the held columns."""
        start, stop = self.columns
        shifts, flips, offset = self._blocks(grad.device)
        nb, d, length = len(shifts), self.latent_dim, self.block
        grad = grad.to(self.compute_dtype)
        whole = (stop - start) // length if offset == 0 else 0  # blocks the gradient covers whole: a view, no copy
        padded = torch.zeros((nb - whole) * length, dtype=grad.dtype, device=grad.device)
        padded[offset : offset + stop - start - whole * length] = grad[whole * length :]
        blocks = [grad[: whole * length].view(whole, length), padded.view(nb - whole, length)]
        rows = torch.cat([(b * self.sign).view(len(b), length // d, d).sum(1) for b in blocks]) * flips[:, None]  # (nb, d)
        flat = torch.cat([rows, rows], dim=1).reshape(-1)  # row b at [2 d b, 2 d b + 2 d)
        starts = torch.arange(nb, device=grad.device) * (2 * d) + (d - shifts)
        by_position = flat.unfold(0, d, 1).index_select(0, starts).sum(0)  # (d,): out[x] = sum_b rows[b, (x - s_b) % d]
        return torch.zeros_like(by_position).index_copy_(0, self.perm, by_position) * self.row_scale

    def forward(self, coefficients: Tensor) -> Tensor:
        return linear(coefficients, self)

    def assignment(self, start: int, stop: int, device=None) -> tuple[Tensor, Tensor]:
        """``(rows, scale)`` of columns ``[start, stop)``: each column's row (int64) and its signed value
        ``±1/sqrt(n_row)`` (compute dtype), a pure function of the key and the column index."""
        device = device or self.perm.device
        columns = torch.arange(start, stop, dtype=torch.int64, device=device)
        blocks, place = columns // self.block, columns % self.block
        rows = self.perm[(place + self._shifts(blocks)) % self.latent_dim]
        return rows, self.row_scale[rows] * self.sign[place] * self._flips(blocks).to(self.compute_dtype)

    def row_means(self) -> Tensor:
        """``W 1 / n`` over the held columns, computed once."""
        cache = self.__dict__.setdefault("_derived_cache", {})
        if "row_means" not in cache:
            start, stop = self.columns
            with torch.no_grad():
                rows, scale = self.assignment(start, stop)
                sums = torch.zeros(self.latent_dim, dtype=torch.float64, device=rows.device).index_add_(0, rows, scale.double())
                cache["row_means"] = (sums / max(stop - start, 1)).to(self.compute_dtype)
        return cache["row_means"]

    def segment_row_sums(self, numels: Tensor) -> tuple[Tensor, Tensor]:
        """Per consecutive segment of the held columns: ``sum_j W_ij`` and ``sum_j W_ij²`` (``(d, T)`` each), one
        pass over the columns, cached per segmentation."""
        cache = self.__dict__.setdefault("_derived_cache", {})
        cache_key = ("segment_row_sums", tuple(numels.tolist()))
        if cache_key not in cache:
            with torch.no_grad():
                rows, scale = self.assignment(*self.columns)
                segment = torch.repeat_interleave(torch.arange(len(numels), device=rows.device), numels.to(rows.device))
                flat = rows * len(numels) + segment
                size = self.latent_dim * len(numels)
                sums = torch.zeros(size, dtype=torch.float64, device=rows.device).index_add_(0, flat, scale.double())
                squares = torch.zeros(size, dtype=torch.float64, device=rows.device).index_add_(0, flat, scale.double().square())
                cache[cache_key] = tuple(t.view(self.latent_dim, len(numels)).to(self.compute_dtype) for t in (sums, squares))
        return cache[cache_key]

    def weighted_row_sums(self, column_weights: Tensor) -> tuple[Tensor, Tensor]:
        """``W @ w`` and ``(W∘W) @ w`` for weights of the held columns (a scatter-add each)."""
        rows, scale = self.assignment(*self.columns, column_weights.device)
        w = column_weights.to(scale.dtype)
        zeros = torch.zeros(self.latent_dim, dtype=scale.dtype, device=rows.device)
        return zeros.index_add(0, rows, scale * w), zeros.index_add(0, rows, scale.square() * w)

    def extra_repr(self) -> str:
        return f"{self._describe()}, sparse (hashed blocks, nothing stored per column)"


# Operator name -> class, as recipes name them. Each takes (latent_dim, num_outputs, key, *, trainable,
# dtype, device, columns, transform), has a static storage_bytes(latent_dim, num_outputs, dtype, columns) and a
# class attribute uses_transform (whether a sharded build must compute the group's orthonormalizer for it).
OPERATORS: dict[str, type[nn.Module]] = {
    "dense": DenseOperator,
    "seeded": SeededOperator,
    "structured": StructuredOperator,
    "sparse": SparseOperator,
}
