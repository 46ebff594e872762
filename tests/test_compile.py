"""The compiled step (``optim.compile``, `mapscale.train.compiled`): the operators trace into one graph, the option
resolves and refuses in one line, and compiled runs log the losses of eager ones (slow tier: CPU inductor compiles
for 6-11 s a case)."""

from pathlib import Path

import pytest
import torch

import mapscale
from mapscale.distributed.world import World
from mapscale.mapping.operators import SparseOperator, StructuredOperator
from mapscale.recipe import RecipeError, load_recipe
from mapscale.targets import build_target
from mapscale.train.compiled import compile_seconds, graphs_compiled, resolve_compile
from test_pinned import REL_TOL

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "mnist_cnn2.py"


def recipe_of(*overrides: str):
    return load_recipe(RECIPE, ["output.progress=false", *overrides])


@pytest.mark.parametrize(("operator", "grouping"), [("sparse", "slvt"), ("sparse", "lwt"), ("structured", "slvt")])
def test_the_generation_traces_into_one_graph(operator, grouping):
    """``torch._dynamo.explain`` of the whole generation (every group's operator): one graph, no break. Before the
    operators chose `_TracedLinear` while compiling, the sparse generation broke 8 times (the custom JVP, the
    SHA-256 of the block hash)."""
    torch.manual_seed(0)
    model = mapscale.map_model(build_target("cnn2", {}), grouping=grouping, budget=256, operator=operator)
    model.generated_tensors()  # the generator's caches of its fixed layout, filled eagerly (as `compile_model` does)
    explained = torch._dynamo.explain(lambda: model.generated_tensors())()
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), [str(b.reason).splitlines()[0] for b in explained.break_reasons]


@pytest.mark.parametrize("cls", [SparseOperator, StructuredOperator])
def test_eager_operators_keep_their_jvp(cls):
    """Outside compilation the operators keep `_Linear`, whose JVP serves ``torch.func.jvp`` (the Mapping Loss's
    Hutchinson estimate): the JVP of the linear map is the map of the tangent."""
    op = cls(16, 3_000, 99, dtype=torch.float64)
    c, t = torch.randn(16, dtype=torch.float64), torch.randn(16, dtype=torch.float64)
    out, tangent = torch.func.jvp(op, (c,), (t,))
    assert torch.equal(out, op(c)) and torch.equal(tangent, op(t))


def test_auto_compiles_on_gpus_only_and_on_refuses_in_one_line():
    recipe = recipe_of()
    assert recipe.optim.compile == "auto"
    assert not resolve_compile(recipe, World(), torch.device("cpu")).enabled
    assert resolve_compile(recipe, World(), torch.device("cuda")).enabled  # a device type: nothing runs on it
    assert not resolve_compile(recipe_of("optim.compile=off"), World(), torch.device("cuda")).enabled
    assert resolve_compile(recipe_of("optim.compile=on"), World(), torch.device("cpu")).enabled
    refused = {
        "per-unit": (recipe_of("optim.compile=on", "distributed.gather=per-unit", "distributed.units=[\"0\",\"3\"]"), World()),
        "DeepSpeed": (recipe_of("optim.compile=on", "distributed.deepspeed={}"), World(size=2)),
        "sharded": (recipe_of("optim.compile=on"), World(size=2)),
    }
    for words, (recipe, world) in refused.items():
        with pytest.raises(RecipeError, match=words) as err:
            resolve_compile(recipe, world, torch.device("cuda"), "sharded")
        assert "\n" not in str(err.value)
        assert not resolve_compile(recipe.model_copy(update={"optim": recipe.optim.model_copy(update={"compile": "auto"})}), world, torch.device("cuda"), "sharded").enabled


def ten_losses(compile_mode: str, method: str, operator: str) -> tuple[list[float], dict]:
    """Task losses of 10 fp64 steps of CNN2 SLVT 256 on the first 320 shipped images, and what compiling took."""
    from mapscale.train import prepare, train_step

    recipe = recipe_of(
        f"mapping.method={method}", f"mapping.operator={operator}", "mapping.budget=256", "data.max_examples=320", "optim.batch_size=32",
        "optim.schedule=constant", "optim.precision=fp64", f"optim.compile={compile_mode}",
    )
    run = prepare(recipe, World(), "cpu")
    losses, graphs = [], []
    for step, (inputs, targets) in enumerate(torch.utils.data.DataLoader(run.data.train, batch_size=32)):
        _, terms = train_step(run, [(inputs, targets)], len(targets), step)
        losses.append(terms["task"].item())
        graphs.append(graphs_compiled())
    return losses, {"graphs": graphs, **run.compiled.take()}


@pytest.mark.slow
@pytest.mark.parametrize("method", ["mapping", "subspace"])
@pytest.mark.parametrize("operator", ["sparse", "structured"])
def test_compiled_runs_log_the_losses_of_eager_runs(method, operator):
    """The same 10 losses (to the pinned tier's `REL_TOL`; measured: at most 4e-15 apart), one compile on the first
    step and no recompilation after it, with the compile time reported apart."""
    torch._dynamo.reset()
    eager, _ = ten_losses("off", method, operator)
    before = graphs_compiled()
    compiled, stats = ten_losses("on", method, operator)
    assert len(eager) == len(compiled) == 10 and len(set(eager)) == 10
    for got, want in zip(compiled, eager):
        assert abs(got - want) <= REL_TOL * abs(want), (compiled, eager)
    assert stats["graphs"][0] == before + 1 and stats["graphs"][-1] == stats["graphs"][0], stats["graphs"]
    assert 0 < stats["compile_s"] <= compile_seconds()
