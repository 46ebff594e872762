"""The ``mapscale`` command line: thin Typer commands over the library.

    mapscale train recipes/mnist_cnn2.py optim.lr=3e-3 mapping.budget=4096
    mapscale train runs/MnistCNN2-20261123-120000 --resume
    mapscale eval runs/MnistCNN2-20261123-120000
    mapscale inspect recipes/resnet50_deepfake.py --world-size 8
    mapscale export runs/MnistCNN2-20261123-120000 --out model.safetensors
    mapscale launch recipes/mnist_cnn2.py --nproc 2 --launcher deepspeed --dry-run
    mapscale report runs/MnistCNN2-20261123-120000 runs/MnistCNN1Lwt-20261124-090000 --out report
    mapscale space runs/a runs/b runs/c --check
    mapscale interpolate runs/a runs/b --steps 11 --out space
    mapscale ensemble runs/a runs/b runs/c --out space
    mapscale search recipes/mnist_cnn2.py data.classes=[5,6,7,8,9] --from runs/a --from runs/b --init mean
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(
    help="Train big networks through tiny trainable latent vectors (Mapping Networks).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()

RecipeArg = Annotated[Path, typer.Argument(help="A recipe file (.py), a resolved recipe.json, or a run directory.", show_default=False)]
OverridesArg = Annotated[Optional[list[str]], typer.Argument(help="Dotted overrides, e.g. optim.lr=3e-3 mapping.budget=4096.", show_default=False)]


def _error(message: str) -> None:
    console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)  # one line, however long


def _fail(message: str) -> None:
    _error(message)
    raise typer.Exit(code=2)


# Errors that mean bad input (a recipe, a path, a run directory that is not one): one line and exit code 2.
USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError)


@contextlib.contextmanager
def _user_errors():
    """Bad input raised inside the block ends the command with its message on one line and exit code 2."""
    try:
        yield
    except USER_ERRORS as err:
        _fail(str(err))


def _checked(call, world, errors=USER_ERRORS):
    """``call()``, or None after printing (rank 0) the message of a bad-input error of type ``errors``."""
    try:
        return call()
    except errors as err:
        if world.is_main:
            _error(str(err))
        return None


_FAILED = object()


def _agreed(world, call):
    """``call()`` on rank 0, its result on every rank; `_FAILED` on every rank (rank 0 printing the message)
    when it raised a bad-input error. For what one process must decide for all (what is on disk)."""
    outcome = None
    if world.is_main:
        try:
            outcome = ("ok", call())
        except USER_ERRORS as err:
            outcome = ("error", str(err))
    outcome = world.broadcast_object(outcome)
    if outcome[0] == "error":
        if world.is_main:
            _error(outcome[1])
        return _FAILED
    return outcome[1]


def _load(recipe_path: Path, overrides: list[str] | None):
    from mapscale.recipe import RecipeError, load_recipe

    try:
        return load_recipe(recipe_path, overrides or [])
    except RecipeError as err:
        _fail(str(err))


@app.command()
def train(
    recipe_path: RecipeArg,
    overrides: OverridesArg = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in RECIPE_PATH (a run directory) from its last checkpoint (overrides: distributed.* only).")] = False,
    print_config: Annotated[bool, typer.Option("--print-config", help="Print the resolved recipe as JSON and exit.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Resolve the recipe, build the model, print the layout summary; no training, nothing written.")] = False,
    stop_after: Annotated[Optional[int], typer.Option(help="Stop this invocation after N steps with a checkpoint (resumable; exit code 0). A SIGTERM or Ctrl-C also stops with a checkpoint, exit code 130.", min=1)] = None,
    device: Annotated[Optional[str], typer.Option(help="Device, e.g. cpu or cuda:0 (default: cuda when available).")] = None,
) -> None:
    """Train a recipe. Writes a run directory with the recipe, environment, metrics.jsonl and checkpoint.pt.

    Reproduce a run with `mapscale train RUN_DIR/recipe.json`; continue an interrupted one with
    `mapscale train RUN_DIR --resume`.
    """
    from mapscale.distributed.world import World
    from mapscale.recipe import RecipeError
    from mapscale.train import CHECKPOINT, new_run_dir, prepare, train as run_training, write_run_files
    from mapscale.train.log import METRICS
    from mapscale.train.loop import RESULT
    from mapscale.train.rundir import continued_run_dir

    recipe = _load(recipe_path, overrides)
    if print_config:
        console.print_json(recipe.model_dump_json())
        return
    if dry_run:
        from mapscale.train.build import check_paths

        with _user_errors():
            check_paths(recipe, data_needed=False)
            _print_layout(recipe, world_size=1)
        return
    if resume:
        run_dir = recipe_path if recipe_path.is_dir() else recipe_path.parent
        if not (run_dir / "checkpoint.pt").exists():
            _fail(f"--resume needs a run directory with a checkpoint; {run_dir} has none")
        if any(not o.startswith("distributed.") for o in overrides or []):
            _fail("--resume continues a run exactly as it was recorded; only distributed.* overrides (how the ranks share the work) are allowed")
    # Under torchrun / deepspeed every rank runs this command; rank 0 alone names and writes the run directory.
    world = World.start(recipe.distributed.backend, device)
    out = console if world.is_main else Console(quiet=True)
    result, code, run = None, 2, None
    try:
        # output.resume='auto': the run directory an earlier attempt of this recipe began (rank 0 looks, all agree).
        continued = None if resume else _agreed(world, lambda: continued_run_dir(recipe, world.restart))
        if continued is not _FAILED:
            if continued is not None:
                run_dir, resume = continued, (continued / CHECKPOINT).exists()
                out.print(f"output.resume='auto': continuing {run_dir}" + ("" if resume else " from step 0 (it has no checkpoint yet)"))
            elif world.restart and recipe.output.resume != "auto":
                out.print(f"note: torchrun restarted this job (attempt {world.restart + 1}) and output.resume='never' starts a new run; set output.resume=auto to continue")
            # Bad input fails here, before a run directory exists: nothing is left behind.
            run = _checked(lambda: prepare(recipe, world, device, out, warm_start=not resume), world)
        if run is not None and not resume:
            run_dir = continued or world.broadcast_object(new_run_dir(recipe) if world.is_main else None)
            if world.is_main:
                for stale in (METRICS, RESULT):  # what an attempt that never checkpointed wrote
                    (run_dir / stale).unlink(missing_ok=True)
                write_run_files(run_dir, recipe, recipe_path if recipe_path.suffix == ".py" else None, overrides or [])
        if run is not None:
            out.print(f"run directory: {run_dir}" + (f" ({world.size} ranks)" if world.distributed else ""))
            # A crash from here on keeps the run directory and its metrics, and ends with the traceback.
            result = _checked(lambda: run_training(recipe, run_dir, resume=resume, stop_after=stop_after, device=device, console=out, world=world, prepared=run), world, RecipeError)
    finally:
        world.stop()
    if result is not None:
        if world.is_main:
            _print_summary(result)
        # a planned --stop-after ends with 0, so launchers and job chains see success
        code = 130 if result.signalled else 0
    if world.distributed:
        world.exit(code)  # not through interpreter teardown: see World.exit
    if code:
        raise typer.Exit(code=code)


@app.command("eval")
def evaluate(
    run: Annotated[Path, typer.Argument(help="A run directory or a checkpoint file.", show_default=False)],
    device: Annotated[Optional[str], typer.Option(help="Device (default: cuda when available).")] = None,
) -> None:
    """Evaluate a run's latest checkpoint on its recipe's test split."""
    import torch

    from mapscale.data import build_datasets
    from mapscale.train import evaluate as run_eval, load_run

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    with _user_errors():
        recipe, model, state = load_run(run, device)
        data = build_datasets(recipe.data, recipe.task)
    metrics = run_eval(model, data.test, recipe, data.num_classes, device)
    table = Table(title=f"{recipe.name} at step {state['step']} on the test split ({len(data.test)} examples)")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in metrics.items():
        table.add_row(key, f"{value:.4f}")
    console.print(table)
    console.print(json.dumps({"step": state["step"], **metrics}))


@app.command()
def inspect(
    recipe_path: RecipeArg,
    overrides: OverridesArg = None,
    world_size: Annotated[int, typer.Option(help="Ranks to split the fixed mapping weights across.", min=1)] = 1,
) -> None:
    """Show a recipe's parameter layout (groups, tensors, latent sizes) and the mapping memory per rank,
    without building the mapping or training."""
    _print_layout(_load(recipe_path, overrides), world_size)


@app.command()
def export(
    run: Annotated[Path, typer.Argument(help="A run directory or a checkpoint file.", show_default=False)],
    out: Annotated[Optional[Path], typer.Option("--out", help="Output file: .safetensors or .pt (a state_dict); with --quantize a .pt TorchScript file. Default model.safetensors, or model.pt with --quantize.", show_default=False)] = None,
    prune: Annotated[Optional[float], typer.Option("--prune", help="Zero this fraction (in [0, 1), e.g. 0.9) of the smallest-magnitude entries of each Linear/Conv/RNN weight; biases and norm parameters are kept.", show_default=False)] = None,
    quantize: Annotated[Optional[str], typer.Option("--quantize", help="int8: dynamic int8 quantisation of the Linear and LSTM layers (convolutions stay float32), saved as TorchScript.", show_default=False)] = None,
    format: Annotated[str, typer.Option("--format", help="state_dict: a file of tensors the target class loads; hf: a save_pretrained folder (config.json, model.safetensors, the tokenizer) for an hf: target, loaded by AutoModelFor*.from_pretrained(DIR) without mapscale.")] = "state_dict",
) -> None:
    """Materialise the target's weights into a plain state_dict the target loads without mapscale.

    --prune and --quantize are the export-time add-ons of the paper's Table 8; given both, the weights are pruned
    and then quantised. A quantised model runs with `torch.jit.load(FILE)` alone (CPU). --format hf writes an hf:
    target as a Hugging Face folder.
    """
    from mapscale.export import SparsityReport, export_run

    out = out or Path("model-hf" if format == "hf" else "model.pt" if quantize else "model.safetensors")
    with _user_errors():
        result = export_run(run, out, prune=prune, quantize=quantize, format=format)
    if result.sparsity is not None:
        report, fraction = result.sparsity, SparsityReport.sparsity
        table = Table(title=f"pruned {report.amount:.0%} of each of {len(report.tensors)} weights by magnitude")
        for column in ("weights", "values", "zeros"):
            table.add_column(column, justify="left" if column == "weights" else "right")
        for kind, counts in report.kinds.items():
            table.add_row(kind, f"{counts[1]:,}", f"{fraction(counts):.1%}")
        table.add_row("pruned, overall", f"{report.pruned[1]:,}", f"{fraction(report.pruned):.1%}")
        table.add_row("whole state_dict", f"{report.all[1]:,}", f"{fraction(report.all):.1%}")
        console.print(table)
    if result.quantization is not None:
        q = result.quantization
        console.print(f"quantised to int8 (dynamic): {', '.join(q.quantized) or 'nothing'}")
        if q.float_kept:
            console.print(f"kept float32 (no dynamic int8 kernel): {', '.join(q.float_kept)}")
        console.print(f"state size {q.bytes_before:,} -> {q.bytes_after:,} bytes ({q.bytes_after / q.bytes_before:.0%})")
    console.print(
        f"wrote {result.out} ({result.format}, {result.file_bytes:,} bytes): {result.tensors} tensors, "
        f"{result.values:,} values, from step {result.step}"
    )


@app.command()
def launch(
    recipe_path: Annotated[str, typer.Argument(help="A recipe file (.py), a resolved recipe.json, or a run directory.", show_default=False)],
    overrides: OverridesArg = None,
    nproc: Annotated[int, typer.Option("--nproc", help="Processes (ranks) per node, usually one per GPU.", show_default=False)] = ...,
    nnodes: Annotated[int, typer.Option("--nnodes", help="Nodes taking part.")] = 1,
    node_rank: Annotated[Optional[int], typer.Option("--node-rank", help="This node's rank, 0..nnodes-1 (multi-node torchrun; deepspeed without ssh).")] = None,
    master_addr: Annotated[Optional[str], typer.Option("--master-addr", help="Address of node 0.")] = None,
    master_port: Annotated[int, typer.Option("--master-port", help="Rendezvous port on node 0.")] = 29500,
    hostfile: Annotated[Optional[str], typer.Option("--hostfile", help="DeepSpeed hostfile ('host slots=N' lines; see launch/hostfile.example).")] = None,
    launcher: Annotated[str, typer.Option("--launcher", help="torchrun or deepspeed.")] = "torchrun",
    deepspeed_config: Annotated[Optional[str], typer.Option("--deepspeed-config", help="A DeepSpeed JSON config (e.g. launch/ds_zero1_bf16.json): adds distributed.deepspeed=PATH.")] = None,
    max_restarts: Annotated[int, typer.Option("--max-restarts", help="torchrun restarts the ranks up to N times when one fails, and they continue the run from its last checkpoint (adds output.resume=auto).", min=0)] = 0,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the command and exit without running it.")] = False,
) -> None:
    """Print and run the torchrun or deepspeed command that trains RECIPE on many ranks
    (`mapscale train` on every rank). Arguments after `--` go to `mapscale train` as they are, e.g. `-- --resume`."""
    import sys

    from mapscale.distributed.launch import find_launcher, format_command, launch_command, run_command

    from mapscale.train.build import check_world

    with _user_errors():
        argv = launch_command(
            recipe_path, overrides or [], nproc=nproc, nnodes=nnodes, node_rank=node_rank, master_addr=master_addr,
            master_port=master_port, hostfile=hostfile, launcher=launcher, deepspeed_config=deepspeed_config,
            max_restarts=max_restarts,
        )
        # The recipe and the world size are checked here, once, rather than on every rank after the launch.
        recipe_overrides = [o for o in overrides or [] if "=" in o and not o.startswith("-")]  # not the options after --
        check_world(_load(Path(recipe_path), recipe_overrides), nproc * nnodes)
    executable = find_launcher(argv[0])
    if executable is None and not dry_run:
        _fail(f"{argv[0]} not found next to {sys.executable} or on PATH; install torch (torchrun) or deepspeed in this environment")
    argv = [executable or argv[0], *argv[1:]]
    typer.echo(format_command(argv))  # plain text: rich would wrap it and eat [brackets] in overrides
    if not dry_run:
        raise typer.Exit(code=run_command(argv))


@app.command()
def report(
    runs: Annotated[list[Path], typer.Argument(help="Run directories (each with recipe.json and metrics.jsonl).", metavar="RUN_DIR", show_default=False)],
    out: Annotated[Path, typer.Option("--out", help="Folder for report.md, curves.png and metric_vs_trainable.png.")] = Path("report"),
) -> None:
    """Print a markdown results table of the runs (target, strategy, trainable parameters, reduction, primary metric,
    train-test gap) and write it with training-curve and metric-vs-trainable plots (PNG) into --out."""
    from mapscale.report import markdown_table, plot_curves, plot_metric_vs_trainable, summarize

    with _user_errors():
        summaries = [summarize(run) for run in runs]
    table = markdown_table(summaries)
    out.mkdir(parents=True, exist_ok=True)
    curves = plot_curves(summaries, out / "curves.png")
    scatter = plot_metric_vs_trainable(summaries, out / "metric_vs_trainable.png")
    (out / "report.md").write_text(f"{table}\n![training curves]({curves.name})\n\n![test metric vs trainable parameters]({scatter.name})\n")
    typer.echo(table)  # plain text: rich would wrap the table and eat [brackets] in run names
    typer.echo(f"wrote {out / 'report.md'}, {curves}, {scatter}")


RunsArg = Annotated[list[Path], typer.Argument(help="Run directories (or checkpoint files) sharing one mapping.", metavar="RUN_DIR", show_default=False)]
DeviceOption = Annotated[Optional[str], typer.Option(help="Device (default: cuda when available).")]


def _device(device: str | None):
    import torch

    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))


@app.command()
def space(
    runs: RunsArg,
    check: Annotated[bool, typer.Option("--check", help="Only verify that the runs share a mapping (exit code 2 and the differing fields if not).")] = False,
) -> None:
    """The runs as points of one latent space: verifies they share a mapping (the fingerprint of target, mapping
    section and seed in each checkpoint), then lists them with the distances between their latents."""
    from mapscale.space import check_shared_mapping, latent_distances, read_points

    with _user_errors():
        points = read_points(runs)
        check_shared_mapping(points)
    console.print(f"{len(points)} runs share mapping {points[0].fingerprint}")
    if check:
        return
    table = Table(title="runs (latent distances)")
    for column in ("run", "step", "test metric", *(p.name for p in points)):
        table.add_column(column, justify="left" if column == "run" else "right")
    for point, row in zip(points, latent_distances(points)):
        recorded = point.recorded() or {}
        metric = next(iter(recorded.items()), None)
        table.add_row(point.name, str(point.checkpoint["step"]), f"{metric[0]} {metric[1]:.4f}" if metric else "-", *(f"{d:.3f}" for d in row))
    console.print(table)


@app.command()
def interpolate(
    run_a: Annotated[Path, typer.Argument(help="The run at t = 0.", show_default=False)],
    run_b: Annotated[Path, typer.Argument(help="The run at t = 1.", show_default=False)],
    steps: Annotated[int, typer.Option(help="Evenly spaced points in [0, 1], endpoints included.", min=2)] = 11,
    out: Annotated[Path, typer.Option("--out", help="Folder for interpolation.md and interpolation.png.")] = Path("space"),
    device: DeviceOption = None,
) -> None:
    """The test metric along the straight latent path (1-t) z_A + t z_B and along the straight path between the
    two materialised weight vectors: a loss-barrier view (table, markdown and PNG plot)."""
    from mapscale.space import Space

    with _user_errors():
        result = Space.open([run_a, run_b], _device(device)).interpolate(0, 1, steps)
    table = Table(title=f"test {result.metric} from {result.run_a} (t=0) to {result.run_b} (t=1)")
    for column in ("t", "latent path", "weight path"):
        table.add_column(column, justify="right")
    for t, lat, wei in zip(result.ts, result.latent, result.weight):
        table.add_row(f"{t:.3f}", f"{lat[result.metric]:.4f}", f"{wei[result.metric]:.4f}")
    console.print(table)
    out.mkdir(parents=True, exist_ok=True)
    (out / "interpolation.md").write_text(result.markdown())
    plot = result.plot(out / "interpolation.png")
    console.print(f"barrier: latent path {result.barrier('latent'):.4f}, weight path {result.barrier('weight'):.4f}; wrote {out / 'interpolation.md'}, {plot}")


@app.command()
def ensemble(
    runs: RunsArg,
    out: Annotated[Path, typer.Option("--out", help="Folder for ensemble.md and ensemble.png.")] = Path("space"),
    device: DeviceOption = None,
) -> None:
    """The test metric of each run, of the averaged-latent model and of the output ensemble (mean softmax)."""
    from mapscale.space import Space

    with _user_errors():
        result = Space.open(runs, _device(device)).ensemble()
    table = Table(title="members, averaged latent, output ensemble (test split of the first run)")
    keys = list(result.averaged_latent)
    for column in ("model", *keys):
        table.add_column(column, justify="left" if column == "model" else "right")
    for name, values in result.rows():
        table.add_row(name, *(f"{values[k]:.4f}" for k in keys))
    console.print(table)
    out.mkdir(parents=True, exist_ok=True)
    (out / "ensemble.md").write_text(result.markdown())
    plot = result.plot(out / "ensemble.png")
    console.print(f"wrote {out / 'ensemble.md'}, {plot}")


@app.command()
def search(
    recipe_path: RecipeArg,
    overrides: OverridesArg = None,
    sources: Annotated[list[Path], typer.Option("--from", help="A source run (repeat the option for several).", show_default=False)] = ...,
    init: Annotated[str, typer.Option(help="best: the source with the lowest task loss on the new task's training split before training; mean: the sources' mean latent.")] = "best",
    target: Annotated[float, typer.Option(help="The test metric whose first reaching counts as 'steps to target'.")] = 0.9,
    eval_every: Annotated[int, typer.Option(help="Evaluate every N steps.", min=1)] = 10,
    out: Annotated[Path, typer.Option("--out", help="Folder for the warm and fresh runs, search.md and search.png.")] = Path("search"),
    device: DeviceOption = None,
) -> None:
    """Train RECIPE (a new task in the sources' mapping, e.g. data.classes=[5,6,7,8,9]) from the best or the mean of
    the sources' latents, training only the latents, and from a fresh latent: steps to --target for both."""
    from mapscale.space import search as run_search

    recipe = _load(recipe_path, overrides)
    with _user_errors():
        result = run_search(recipe, sources, out, init=init, target=target, eval_every=eval_every, device=_device(device), console=console)
    markdown = result.markdown()
    (out / "search.md").write_text(markdown)
    plot = result.plot(out / "search.png")
    typer.echo(markdown)  # plain text: rich would wrap the table
    typer.echo(f"wrote {out / 'search.md'}, {plot}")


def _print_layout(recipe, world_size: int) -> None:
    from mapscale.distributed.plan import ShardPlan
    from mapscale.distributed.traffic import gib
    from mapscale.distributed.world import World
    from mapscale.train import build_loss, build_model, trainable_parameters

    model = build_model(recipe, "meta")  # shapes only: nothing is allocated, whatever the target's size
    trainable = sum(p.numel() for p in trainable_parameters(model, build_loss(recipe)))  # the optimiser's count
    layout = model.layout
    table = Table(title=f"{recipe.name}: {recipe.target.name}, {recipe.mapping.describe()}")
    for column in ("group", "tensors", "parameters", "latent dim"):
        table.add_column(column, justify="left" if column == "group" else "right")
    shown = layout.groups if len(layout.groups) <= 40 else layout.groups[:20] + layout.groups[-20:]
    for group in shown:
        table.add_row(group.name, str(len(group.tensors)), f"{group.numel:,}", str(group.latent_dim))
    if len(shown) < len(layout.groups):
        table.caption = f"{len(layout.groups) - len(shown)} of {len(layout.groups)} groups not shown"
    if layout.groups:
        console.print(table)
    # Each rank's fixed state, from the generator of its part (built on the meta device): one accounting.
    per_rank = [model.fixed_bytes()] if world_size == 1 else [build_model(recipe, "meta", World(rank=r, size=world_size), "sharded").fixed_bytes() for r in range(world_size)]
    if world_size > 1 and layout.groups:
        plan = ShardPlan.from_layout(layout, world_size, recipe.distributed.units or None)
        _print_plan(plan, per_rank)
        _print_modes(recipe, model, plan, per_rank, trainable)
    summary = Table(show_header=False, title="summary")
    summary.add_column(justify="left")
    summary.add_column(justify="right")
    for key, value in [
        ("target parameters", f"{model.num_target_params():,}"),
        ("trainable parameters", f"{trainable:,}"),
        ("reduction", f"{model.num_target_params() / max(trainable, 1):,.1f}x"),
        ("groups", f"{len(layout.groups)}"),
        (f"fixed state of mapping.method={recipe.mapping.method!r}", gib(model.fixed_bytes())),
        *([("a dense fp32 mapping of this layout would hold", gib(layout.mapping_numel * 4))] if layout.groups else []),
        (f"fixed state on the heaviest rank, world size {world_size}", gib(max(per_rank))),
    ]:
        summary.add_row(key, value)
    console.print(summary)


def _print_modes(recipe, model, plan, per_rank: list[int], trainable: int) -> None:
    """Per ``distributed.generation`` mode: each rank's fixed state and peak generated weights, the bytes it moves
    per step (`ShardPlan.step_bytes`), and what ``auto`` picks on this machine's device."""
    import torch

    from mapscale.distributed.world import World
    from mapscale.distributed.traffic import byte_size
    from mapscale.train.build import local_bytes, resolve_generation
    from mapscale.train.evaluate import model_dtype

    element = torch.empty((), dtype=model_dtype(recipe)).element_size()
    per_unit = recipe.distributed.gather == "per-unit"
    fixed, generated = local_bytes(recipe, model)
    table = Table(title=f"distributed.generation over {plan.world_size} ranks" + (" (gather='per-unit')" if per_unit else ""))
    for column in ("mode", "fixed state per rank", "peak generated per rank", "all-gather / step", "reduce-scatter / step", "all-reduce / step", "total / step"):
        table.add_column(column, justify="left" if column == "mode" else "right")
    for mode, held in (("sharded", max(per_rank)), ("local", fixed)):
        moved = plan.step_bytes(trainable, element, sharded=mode == "sharded", per_unit=per_unit)
        table.add_row(mode, byte_size(held), byte_size(generated), *(byte_size(moved[k]) for k in ("all_gather", "reduce_scatter", "all_reduce")), byte_size(sum(moved.values())))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    picked = resolve_generation(recipe, World(size=plan.world_size), device, model)
    table.caption = f"auto picks {picked.mode} on this machine's {device.type}: {picked.reason}"
    console.print(table)


def _print_plan(plan, per_rank: list[int]) -> None:
    """The sharding plan's units, then each rank's fixed-state bytes against the even share."""
    table = Table(title=f"sharding plan over {plan.world_size} ranks (rank r owns rows [floor(r*rows/N), floor((r+1)*rows/N)) of each unit)")
    for column in ("unit", "tensors", "rows", "rows per rank"):
        table.add_column(column, justify="left" if column == "unit" else "right")
    for unit in plan.units:
        table.add_row(unit.name, str(len(unit.segments)), f"{unit.rows:,}", f"{unit.rows_per_rank:,}")
    console.print(table)
    even = sum(per_rank) / plan.world_size
    ranks = Table(title="fixed state per rank")
    ranks.add_column("rank", justify="left")
    ranks.add_column("GiB", justify="right")
    ranks.add_column("of the even share", justify="right")
    shown = range(plan.world_size) if plan.world_size <= 8 else [min(range(plan.world_size), key=per_rank.__getitem__), max(range(plan.world_size), key=per_rank.__getitem__)]
    for rank in shown:
        label = str(rank) if plan.world_size <= 8 else f"{rank} ({'lightest' if per_rank[rank] == min(per_rank) else 'heaviest'})"
        ranks.add_row(label, f"{per_rank[rank] / 2**30:,.3f}", f"{per_rank[rank] / max(even, 1):.2f}x")
    console.print(ranks)


def _print_summary(result) -> None:
    table = Table(title=f"{result.recipe_name}: {'stopped' if result.interrupted else 'done'} at step {result.step}/{result.total_steps}", show_header=False)
    table.add_column(justify="left")
    table.add_column(justify="right", overflow="fold")
    rows = [
        ("target parameters", f"{result.target_params:,}"),
        ("trainable parameters", f"{result.trainable:,}"),
        ("reduction", f"{result.target_params / max(result.trainable, 1):,.1f}x"),
    ]
    rows += [(f"final {k}", f"{v:.4f}") for k, v in result.final.items()]
    rows += [(f"final train-split {k}", f"{v:.4f}") for k, v in result.final_train.items()]
    rows += [(f"final validation {k}", f"{v:.4f}") for k, v in result.final_validation.items()]
    rows += [(f"best {k}", f"{v:.4f} (step {result.best['step']})") for k, v in result.best.items() if k != "step"]
    rows += [("wall time", f"{result.wall_seconds:,.1f} s"), ("run directory", str(result.run_dir))]
    for key, value in rows:
        table.add_row(key, value)
    console.print(table)


if __name__ == "__main__":
    app()
