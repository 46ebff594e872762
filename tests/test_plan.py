import pytest
import torchvision
import torch
from conftest import SmallCNN

from mapscale.distributed.plan import ShardPlan
from mapscale.mapping.layout import ParamLayout


@pytest.mark.parametrize("grouping", ["slvt", "lwt"])
@pytest.mark.parametrize("world_size", [1, 2, 3, 7])
def test_ranks_tile_every_row_once_balanced_within_one(grouping, world_size):
    layout = ParamLayout.from_module(SmallCNN(), grouping, 64)
    plan = ShardPlan.from_layout(layout, world_size)
    (unit,) = plan.units
    ranges = [unit.rank_range(r) for r in range(world_size)]
    assert ranges[0][0] == 0 and ranges[-1][1] == unit.rows == layout.num_generated
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
    sizes = [hi - lo for lo, hi in ranges]
    assert max(sizes) - min(sizes) <= 1 and unit.padded_rows % world_size == 0
    # Every element of every group is owned by exactly one rank, at the right place in its group.
    owned = {(g.name, i): 0 for g in layout.groups for i in range(g.numel)}
    for rank in range(world_size):
        for s in unit.rank_segments(rank):
            for k in range(s.numel):
                owned[(layout.groups[s.group].name, s.group_offset + k)] += 1
    assert set(owned.values()) == {1}
    assert sum(plan.mapping_numel(r) for r in range(world_size)) == layout.mapping_numel


def test_units_by_prefix_and_rest():
    layout = ParamLayout.from_module(SmallCNN(), "lwt", 64)
    plan = ShardPlan.from_layout(layout, 2, units=["conv1", "conv2"])
    assert [u.name for u in plan.units] == ["conv1", "conv2", "(rest)"]
    assert plan.units[0].rows == 8 * 9 + 8
    with pytest.raises(ValueError, match=r"units \['decoder'\] hold no generated tensor"):
        ShardPlan.from_layout(layout, 2, units=["conv1", "decoder"])


@pytest.mark.parametrize(("grouping", "budget"), [("lwt", 2048), ("slvt", 64)])
def test_resnet50_mapping_per_rank_falls_with_world_size(grouping, budget):
    with torch.device("meta"):
        net = torchvision.models.resnet50()
    layout = ParamLayout.from_module(net, grouping, budget)
    plans = {n: ShardPlan.from_layout(layout, n) for n in (1, 2, 8, 64)}
    heaviest = {n: plan.max_mapping_numel() for n, plan in plans.items()}
    assert heaviest[1] == layout.mapping_numel
    assert heaviest[1] > heaviest[2] > heaviest[8] > heaviest[64]
    for n, plan in plans.items():
        per_rank = [plan.mapping_numel(r) for r in range(n)]
        assert sum(per_rank) == layout.mapping_numel
        if grouping == "slvt":  # one latent size: balanced rows are balanced bytes, within one row
            assert max(per_rank) - min(per_rank) <= budget
