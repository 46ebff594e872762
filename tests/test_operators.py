import math
import subprocess
import sys

import pytest
import torch

from mapscale.mapping.operators import (
    SparseOperator,
    BLOCK_COLUMNS,
    DenseOperator,
    build_orthonormal_mapping,
    mapping_key,
    seeded_columns,
    seeded_orthonormalizer,
)


@pytest.mark.parametrize(("latent_dim", "num_outputs"), [(1, 7), (16, 16), (64, 3 * BLOCK_COLUMNS + 123), (300, 5000)])
def test_rows_are_orthonormal(latent_dim, num_outputs):
    weight = build_orthonormal_mapping(mapping_key(0, "g"), latent_dim, num_outputs)
    assert weight.shape == (latent_dim, num_outputs) and weight.dtype == torch.float32
    gram = weight.double() @ weight.double().T
    # float32 storage bounds the error: each entry carries a relative rounding of at most 2**-24.
    assert (gram - torch.eye(latent_dim, dtype=torch.float64)).abs().max() < 1e-5


def test_mapping_depends_on_seed_and_group_only():
    a = build_orthonormal_mapping(mapping_key(0, "fc"), 8, 1000)
    assert torch.equal(a, build_orthonormal_mapping(mapping_key(0, "fc"), 8, 1000))
    assert not torch.allclose(a, build_orthonormal_mapping(mapping_key(1, "fc"), 8, 1000))
    assert not torch.allclose(a, build_orthonormal_mapping(mapping_key(0, "conv"), 8, 1000))


def test_any_column_range_rebuilds_exactly_the_same_columns():
    key, latent_dim, num_outputs = mapping_key(3, "unit"), 12, 2 * BLOCK_COLUMNS + 500
    full = build_orthonormal_mapping(key, latent_dim, num_outputs)
    transform = seeded_orthonormalizer(key, latent_dim, num_outputs)
    for start, stop in [(0, num_outputs), (0, 1), (BLOCK_COLUMNS - 3, BLOCK_COLUMNS + 5), (5000, num_outputs), (17, 17)]:
        assert torch.equal(seeded_columns(key, latent_dim, num_outputs, start, stop, transform), full[:, start:stop])
    # Shards of any world size tile the matrix exactly (what a rank owning a slice of rows builds).
    for world in (2, 3, 8):
        bounds = [num_outputs * r // world for r in range(world + 1)]
        shards = [seeded_columns(key, latent_dim, num_outputs, lo, hi, transform) for lo, hi in zip(bounds, bounds[1:])]
        assert torch.equal(torch.cat(shards, dim=1), full)


def test_mapping_is_bitwise_identical_across_fresh_processes():
    code = (
        "import torch, hashlib;"
        "from mapscale.mapping.operators import build_orthonormal_mapping, mapping_key;"
        "torch.set_num_threads({threads});"
        "w = build_orthonormal_mapping(mapping_key(7, 'layer'), 32, 20000);"
        "print(hashlib.sha256(w.numpy().tobytes()).hexdigest())"
    )
    digests = {
        subprocess.run([sys.executable, "-c", code.format(threads=t)], capture_output=True, text=True, check=True).stdout
        for t in (1, 2)
    }
    assert len(digests) == 1, "the mapping changed with the process or its thread count"


def test_dense_operator_holds_a_non_persistent_buffer_and_applies_w_transpose():
    op = DenseOperator(6, 50, mapping_key(0, "g"))
    assert [n for n, _ in op.named_buffers()] == ["weight"] and not list(op.parameters())
    assert op.state_dict() == {}
    c = torch.randn(6)
    torch.testing.assert_close(op(c), op.weight.T @ c)
    torch.testing.assert_close(op.row_means(), op.weight.mean(dim=1))
    trainable = DenseOperator(6, 50, mapping_key(0, "g"), trainable=True)
    assert [n for n, p in trainable.named_parameters() if p.requires_grad] == ["weight"]
    assert torch.equal(trainable.weight.detach(), op.weight)


def test_meta_device_builds_shapes_only():
    op = DenseOperator(64, 10_000_000, mapping_key(0, "huge"), device="meta")
    assert op.weight.is_meta and op.weight.shape == (64, 10_000_000)
    assert DenseOperator.storage_bytes(64, 10_000_000) == 64 * 10_000_000 * 4


def test_derived_quantities_are_cached_for_a_fixed_mapping_and_differentiable_for_a_trained_one():
    fixed = DenseOperator(6, 50, mapping_key(0, "g"))
    assert fixed.row_means() is fixed.row_means()
    numels = torch.tensor([20, 30])
    sums, sq_sums = fixed.segment_row_sums(numels)
    torch.testing.assert_close(sums[:, 1], fixed.weight[:, 20:].sum(1))
    torch.testing.assert_close(sq_sums.sum(1), torch.ones(6))  # orthonormal rows: the squares sum to 1
    trained = DenseOperator(6, 50, mapping_key(0, "g"), trainable=True)
    (trained.row_means().sum() + trained.segment_row_sums(numels)[1].sum()).backward()
    assert trained.weight.grad is not None and trained.weight.grad.abs().sum() > 0


# -- operators that never store W: seeded and structured ---------------------------------------------------

from mapscale.mapping.operators import OPERATORS, SeededOperator, StructuredOperator, hadamard, mapping_key  # noqa: E402

KEY = mapping_key(0, "g")


def _matrix(op, latent_dim: int) -> torch.Tensor:
    """``W`` as the operator applies it: row i is ``Wᵀ e_i``."""
    with torch.no_grad():
        return torch.stack([op(e) for e in torch.eye(latent_dim, dtype=op.compute_dtype)])


@pytest.mark.parametrize("latent_dim,num_outputs", [(1, 10), (3, 37), (16, 5000), (40, 9000)])
def test_seeded_operator_is_the_dense_matrix_without_storing_it(latent_dim, num_outputs):
    dense = DenseOperator(latent_dim, num_outputs, KEY)
    seeded = SeededOperator(latent_dim, num_outputs, KEY)
    # Same G and T; only the product order differs (Gᵀ (Tᵀ c) against (T G)ᵀ c): float32 rounding apart.
    assert torch.allclose(_matrix(seeded, latent_dim), dense.weight, rtol=0, atol=2e-6 * dense.weight.abs().max().item())
    c = torch.randn(latent_dim)
    assert torch.allclose(seeded(c), dense(c), rtol=1e-4, atol=1e-6)
    assert torch.allclose(seeded.row_means(), dense.row_means(), atol=1e-8)
    held = sum(t.numel() * t.element_size() for t in seeded.buffers())
    assert held == latent_dim * latent_dim * 4 == SeededOperator.storage_bytes(latent_dim, num_outputs)


@pytest.mark.parametrize("latent_dim,num_outputs", [(1, 10), (3, 37), (16, 1000), (64, 5000), (200, 30000), (100, 110)])
def test_structured_rows_are_near_orthonormal_within_the_cut_blocks_share(latent_dim, num_outputs):
    op = StructuredOperator(latent_dim, num_outputs, KEY, dtype=torch.float64)
    w = _matrix(op, latent_dim)
    deviation = (w @ w.T - torch.eye(latent_dim, dtype=torch.float64)).abs().max().item()
    # Every full block of B columns contributes exactly (B / P) I; only the last, cut block deviates, so the
    # deviation is below B / P (measured: 0.0050 at (16, 1000), 0.0012 at (200, 30000), 0.137 at (100, 110)).
    assert deviation < op.block / num_outputs
    if num_outputs % op.block == 0:
        assert deviation < 1e-12
    assert torch.allclose(op.row_means().double(), w.mean(1), atol=1e-7)


def test_structured_rows_are_exactly_orthonormal_when_blocks_tile_the_columns():
    w = _matrix(StructuredOperator(16, 16 * 40, KEY, dtype=torch.float64), 16)
    assert torch.allclose(w @ w.T, torch.eye(16, dtype=torch.float64), atol=1e-12)


def test_hadamard_is_orthonormal_and_symmetric():
    h = hadamard(torch.eye(8, dtype=torch.float64))
    assert torch.allclose(h, h.T) and torch.allclose(h @ h, torch.eye(8, dtype=torch.float64))
    with pytest.raises(ValueError, match="power-of-two"):
        hadamard(torch.ones(6))


@pytest.mark.parametrize("name", ["seeded", "structured", "sparse"])
def test_never_stored_operators_pass_gradcheck_and_jvp(name):
    op = OPERATORS[name](5, 300, KEY, dtype=torch.float64)
    c = torch.randn(5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(op, (c,), eps=1e-6, atol=1e-8)
    tangent = torch.randn(5, dtype=torch.float64)
    _, jvp = torch.func.jvp(op, (c.detach(),), (tangent,))  # the Mapping Loss's Hutchinson estimate
    assert torch.allclose(jvp, op(tangent), atol=1e-12)


@pytest.mark.parametrize("name", ["seeded", "structured", "sparse"])
def test_any_column_range_gives_the_same_columns(name):
    cls, c = OPERATORS[name], torch.randn(16)
    whole = cls(16, 9000, KEY)(c)
    pieces = torch.cat([cls(16, 9000, KEY, columns=cut)(c) for cut in [(0, 4095), (4095, 4097), (4097, 9000)]])
    assert torch.equal(whole, pieces)


@pytest.mark.parametrize("name", ["seeded", "structured", "sparse"])
def test_never_stored_operators_refuse_to_train(name):
    with pytest.raises(ValueError, match="cannot train"):
        OPERATORS[name](4, 100, KEY, trainable=True)


def test_structured_memory_is_three_bits_per_column():
    op = StructuredOperator(2048, 108_618, KEY)
    held = sum(t.numel() * t.element_size() for t in op.buffers())
    assert held == StructuredOperator.storage_bytes(2048, 108_618)
    assert held / DenseOperator.storage_bytes(2048, 108_618) < 1e-4  # 57,856 B against 889,798,656 B


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU to compare with")
@pytest.mark.parametrize("name", ["dense", "seeded", "structured", "sparse"])
def test_same_weights_on_cpu_and_gpu(name):
    c = torch.randn(8)
    cpu, gpu = (OPERATORS[name](8, 5000, KEY, device=d)(c.to(d)).cpu() for d in ("cpu", "cuda"))
    assert torch.allclose(gpu, cpu, atol=1e-6)


@pytest.mark.parametrize(("latent_dim", "num_outputs"), [(3, 10), (7, 100), (16, 1000), (5, 5), (64, 4097), (13, 20_000), (600, 5000), (1, 700)])
def test_sparse_rows_are_disjoint_balanced_and_orthonormal(latent_dim, num_outputs):
    op = SparseOperator(latent_dim, num_outputs, KEY, dtype=torch.float64)
    weight = torch.stack([op(row) for row in torch.eye(latent_dim, dtype=torch.float64)])  # (d, P), column by column
    assert ((weight != 0).sum(0) == 1).all()  # exactly one non-zero per column
    signs = weight.sign()
    counts = (signs != 0).sum(1)
    torch.testing.assert_close(signs @ signs.T, torch.diag(counts).double(), rtol=0, atol=0)  # S Sᵀ = diag(n) exactly
    assert counts.max() - counts.min() <= 1 and counts.sum() == num_outputs  # balanced: floor or ceil of P / d
    gram = weight @ weight.T
    assert torch.equal(gram - torch.diag(torch.diag(gram)), torch.zeros_like(gram))  # W Wᵀ off the diagonal: exactly 0
    # each diagonal entry sums n_i squares of the one rounded 1/sqrt(n_i): 1 to within n_i roundings of a float64 sum
    torch.testing.assert_close(torch.diag(gram), torch.ones(latent_dim, dtype=torch.float64), rtol=0, atol=counts.max().item() * 2.3e-16)
    scales = torch.tensor([1 / math.sqrt(n) for n in counts.tolist()], dtype=torch.float64)
    assert torch.equal(weight.abs(), (weight != 0) * scales[:, None])  # every non-zero of row i is ±1/sqrt(n_i)


def test_sparse_holds_nothing_per_parameter():
    small, large = SparseOperator(64, 1_000, KEY), SparseOperator(64, 1_000_000, KEY)
    held = [sum(t.numel() * t.element_size() for t in [*op.buffers(), *op.parameters()]) for op in (small, large)]
    assert held[0] == held[1] == SparseOperator.storage_bytes(64, 1_000) == SparseOperator.storage_bytes(64, 1_000_000)
    assert held[1] == 64 * (8 + 4) + 512 * 4  # row permutation, row scales, one block's signs
    assert held[1] / DenseOperator.storage_bytes(64, 1_000_000) < 1e-4  # 2,816 B against 256,000,000 B
    assert SparseOperator.storage_bytes(2048, 108_618) / DenseOperator.storage_bytes(2048, 108_618) < 0.01
    assert large(torch.randn(64)).shape == (1_000_000,)

@pytest.mark.parametrize("name", ["dense", "seeded", "structured", "sparse"])
def test_operators_keep_nn_module_apply(name):
    """``nn.Module.apply(fn)`` (DeepSpeed's initialize calls it on the model) reaches every operator unshadowed."""
    op = OPERATORS[name](4, 600, KEY)
    seen = []
    torch.nn.Sequential(op).apply(lambda module: seen.append(type(module).__name__))
    assert type(op).__name__ in seen
