import subprocess
import sys

import pytest
import torch

from mapscale.mapping.operators import (
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
