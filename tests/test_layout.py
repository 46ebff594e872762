import math
import re

import pytest
from conftest import SmallCNN, TiedLM, mlp
from torch import nn

from mapscale.mapping.layout import ParamLayout, sqrt_budget_split


def test_slvt_is_one_group_with_contiguous_offsets():
    net = SmallCNN()
    layout = ParamLayout.from_module(net, "slvt", 256)
    (group,) = layout.groups
    assert group.name == "all" and group.latent_dim == 256
    assert [t.name for t in group.tensors] == [n for n, _ in net.named_parameters()]
    offsets = [t.offset for t in group.tensors]
    assert offsets == [sum(t.numel for t in group.tensors[:i]) for i in range(len(offsets))]
    assert group.numel == layout.num_generated == sum(p.numel() for p in net.parameters())


def test_lwt_has_one_group_per_module_owning_parameters():
    layout = ParamLayout.from_module(SmallCNN(), "lwt", 100)
    assert [g.name for g in layout.groups] == ["conv1", "bn1", "conv2", "bn2", "fc"]
    assert [t.name for t in layout.group("bn1").tensors] == ["bn1.weight", "bn1.bias"]
    assert layout.total_latent_dim == 100


def test_custom_grouping_by_glob_regex_type_and_predicate():
    net = SmallCNN()
    by_glob = ParamLayout.from_module(net, {"convs": "conv*", "rest": "*"}, 64)
    assert [t.name for t in by_glob.group("convs").tensors] == ["conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias"]
    by_regex = ParamLayout.from_module(net, {"biases": re.compile(r"\.bias$"), "weights": "*"}, 64)
    assert all(t.name.endswith(".bias") for t in by_regex.group("biases").tensors)
    by_type = ParamLayout.from_module(net, {"norms": nn.BatchNorm2d, "rest": "*"}, 64)
    assert {t.name for t in by_type.group("norms").tensors} == {"bn1.weight", "bn1.bias", "bn2.weight", "bn2.bias"}
    by_predicate = ParamLayout.from_module(net, {"big": lambda n, p: p.numel() > 1000, "small": "*"}, 64)
    assert {t.name for t in by_predicate.group("big").tensors} == {"conv2.weight", "fc.weight"}
    by_callable = ParamLayout.from_module(net, lambda n, p: "w" if n.endswith("weight") else "b", 64)
    assert [g.name for g in by_callable.groups] == ["w", "b"]


def test_excluded_tensors_are_kept_trainable_or_frozen():
    layout = ParamLayout.from_module(SmallCNN(), "slvt", 64, trainable=[nn.BatchNorm2d], frozen=["fc.bias"])
    assert {t.name for t in layout.trainable} == {"bn1.weight", "bn1.bias", "bn2.weight", "bn2.bias"}
    assert [t.name for t in layout.frozen] == ["fc.bias"]
    generated = {t.name for t in layout.generated_tensors()}
    assert not generated & {"fc.bias", "bn1.weight"}
    assert layout.num_target_params == sum(p.numel() for p in SmallCNN().parameters())


def test_tied_parameters_are_one_tensor_with_aliases():
    layout = ParamLayout.from_module(TiedLM(), "slvt", 32)
    names = [t.name for t in layout.generated_tensors()]
    assert names == ["embed.weight", "mix.weight", "mix.bias"]
    assert layout.tensor("embed.weight").aliases == ("head.weight",)
    assert layout.num_target_params == sum(p.numel() for p in TiedLM().parameters())


def test_budget_split_is_sqrt_proportional_exact_and_deterministic():
    sizes = [80, 16, 1168, 32, 10000]
    dims = sqrt_budget_split(sizes, 300)
    assert sum(dims) == 300 and dims == sqrt_budget_split(sizes, 300)
    assert all(1 <= d <= s for d, s in zip(dims, sizes))
    # Away from the floor and caps each share is within 1 of budget * sqrt(P_g) / sum sqrt(P).
    total = sum(math.sqrt(s) for s in sizes)
    for d, s in zip(dims, sizes):
        assert abs(d - 300 * math.sqrt(s) / total) < 1.0
    # Tiny groups get the floor of 1 and the rest is redistributed.
    floored = sqrt_budget_split([1_000_000, 4, 4], 12)
    assert floored[1:] == [1, 1] and sum(floored) == 12
    # Caps: a group never gets more dimensions than it has parameters.
    capped = sqrt_budget_split([3, 10000], 200)
    assert capped == [3, 197]


@pytest.mark.parametrize("budget", [17, 64, 1000, 4096])
def test_budget_split_sums_exactly_for_many_budgets(budget):
    sizes = [p.numel() for p in SmallCNN().parameters()]
    dims = sqrt_budget_split(sizes, budget)
    assert sum(dims) == budget and min(dims) >= 1


def test_explicit_per_group_budget_and_custom_rule():
    layout = ParamLayout.from_module(mlp(), "lwt", {"0": 8, "2": 16, "4": 4})
    assert layout.latent_dims == {"0": 8, "2": 16, "4": 4}
    even = ParamLayout.from_module(mlp(), "lwt", 30, budget_rule=lambda sizes, b: [b // len(sizes)] * len(sizes))
    assert list(even.latent_dims.values()) == [10, 10, 10]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"grouping": "layerwise"}, "unknown grouping 'layerwise'"),
        ({"grouping": {"head": re.compile(r"^classifier\.")}}, r"regex '\^classifier\\\\.' matches no"),
        ({"grouping": {"convs": "conv*"}}, "match no group"),
        ({"grouping": "lwt", "budget": 3}, "budget 3 is smaller than the 5 groups under lwt"),
        ({"budget": 0}, "budget must be positive"),
        ({"budget": -5}, "budget must be positive"),
        ({"budget": 10**9}, "exceeds the"),
        ({"grouping": "lwt", "budget": {"conv1": 4}}, "missing"),
        ({"grouping": "lwt", "budget": {"conv1": 81, "bn1": 1, "conv2": 1, "bn2": 1, "fc": 1}}, "exceeds its 80 parameters"),
        ({"trainable": ["decoder.*"]}, "trainable glob 'decoder.\\*' matches no parameter"),
        ({"trainable": ["fc.*"], "frozen": ["fc.bias"]}, "both trainable and frozen"),
    ],
)
def test_bad_input_gets_a_clear_error(kwargs, message):
    args = {"grouping": "slvt", "budget": 64, **kwargs}
    with pytest.raises(ValueError, match=message):
        ParamLayout.from_module(SmallCNN(), args.pop("grouping"), args.pop("budget"), **args)
