"""`mapscale launch` builds the torchrun / deepspeed command line; nothing here starts a process group."""

import json
import shlex
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mapscale.cli import app
from mapscale.distributed.launch import format_command, launch_command

ROOT = Path(__file__).resolve().parents[1]
RECIPE = "recipes/mnist_cnn2.py"
TRAIN = ["-m", "mapscale.cli", "train", RECIPE]
DS_TRAIN = ["--no_local_rank", "--module", "mapscale.cli", "train", RECIPE]
runner = CliRunner()


@pytest.fixture(autouse=True)
def _at_root(monkeypatch):
    monkeypatch.chdir(ROOT)  # recipe and config paths are relative to the repository, as users type them


@pytest.fixture()
def hostfile(tmp_path) -> str:
    path = tmp_path / "hostfile"
    path.write_text("node1 slots=8\nnode2 slots=8\n")
    return str(path)


# torchrun


def test_torchrun_single_node():
    assert launch_command(RECIPE, [], nproc=2) == ["torchrun", "--nproc-per-node", "2", *TRAIN]


def test_torchrun_overrides_follow_the_recipe_in_order():
    argv = launch_command(RECIPE, ["optim.lr=3e-3", "mapping.budget=4096"], nproc=8)
    assert argv[-2:] == ["optim.lr=3e-3", "mapping.budget=4096"]
    assert argv[:3] == ["torchrun", "--nproc-per-node", "8"]


def test_torchrun_single_node_other_port():
    argv = launch_command(RECIPE, [], nproc=2, master_port=29600)
    assert argv == ["torchrun", "--nproc-per-node", "2", "--master-port", "29600", *TRAIN]


def test_torchrun_multi_node():
    argv = launch_command(RECIPE, ["data.path=/data"], nproc=8, nnodes=4, node_rank=3, master_addr="10.0.0.1", master_port=29501)
    assert argv == [
        "torchrun", "--nproc-per-node", "8",
        "--nnodes", "4", "--node-rank", "3", "--master-addr", "10.0.0.1", "--master-port", "29501",
        *TRAIN, "data.path=/data",
    ]


@pytest.mark.parametrize(
    "given, missing",
    [({}, ["node_rank", "master_addr"]), ({"node_rank": 0}, ["master_addr"]), ({"master_addr": "node1"}, ["node_rank"])],
)
def test_torchrun_multi_node_names_what_is_missing(given, missing):
    with pytest.raises(ValueError, match="torchrun on 2 nodes") as err:
        launch_command(RECIPE, [], nproc=8, nnodes=2, **given)
    for name in missing:
        assert name in str(err.value)
    for name in set(["node_rank", "master_addr"]) - set(missing):
        assert name not in str(err.value)


def test_torchrun_refuses_a_hostfile(hostfile):
    with pytest.raises(ValueError, match="deepspeed launcher"):
        launch_command(RECIPE, [], nproc=8, hostfile=hostfile)


# deepspeed


def test_deepspeed_single_node():
    argv = launch_command(RECIPE, ["optim.lr=3e-3"], nproc=2, launcher="deepspeed")
    assert argv == ["deepspeed", "--num_gpus", "2", *DS_TRAIN, "optim.lr=3e-3"]


def test_deepspeed_multi_node_with_hostfile(hostfile):
    argv = launch_command(RECIPE, [], nproc=8, nnodes=2, hostfile=hostfile, master_addr="node1", master_port=29600, launcher="deepspeed")
    assert argv == [
        "deepspeed", "--num_gpus", "8", "--hostfile", hostfile, "--num_nodes", "2",
        "--master_addr", "node1", "--master_port", "29600", *DS_TRAIN,
    ]


def test_deepspeed_hostfile_on_one_node_pins_num_nodes(hostfile):
    # Without --num_nodes DeepSpeed would use every host listed in the hostfile.
    argv = launch_command(RECIPE, [], nproc=8, hostfile=hostfile, launcher="deepspeed")
    assert argv[:7] == ["deepspeed", "--num_gpus", "8", "--hostfile", hostfile, "--num_nodes", "1"]


def test_deepspeed_multi_node_needs_a_hostfile():
    with pytest.raises(ValueError, match="deepspeed on 3 nodes needs a hostfile"):
        launch_command(RECIPE, [], nproc=8, nnodes=3, launcher="deepspeed")


def test_deepspeed_node_rank_starts_one_node_without_ssh(hostfile):
    argv = launch_command(RECIPE, [], nproc=8, nnodes=2, node_rank=1, master_addr="node1", hostfile=hostfile, launcher="deepspeed")
    assert argv[argv.index("--no_ssh") + 1 : argv.index("--no_ssh") + 3] == ["--node_rank", "1"]
    with pytest.raises(ValueError, match="master_addr"):
        launch_command(RECIPE, [], nproc=8, nnodes=2, node_rank=1, hostfile=hostfile, launcher="deepspeed")


# the DeepSpeed config override, under either launcher


@pytest.mark.parametrize("launcher", ["torchrun", "deepspeed"])
def test_deepspeed_config_becomes_the_recipe_override(launcher):
    argv = launch_command(RECIPE, ["optim.lr=3e-3"], nproc=2, launcher=launcher, deepspeed_config="launch/ds_zero1_bf16.json")
    assert argv[-2:] == ["optim.lr=3e-3", "distributed.deepspeed=launch/ds_zero1_bf16.json"]
    assert argv[0] == launcher


def test_deepspeed_config_override_loads_into_the_recipe():
    from mapscale.recipe import load_recipe

    argv = launch_command(RECIPE, [], nproc=2, deepspeed_config="launch/ds_zero1_bf16.json")
    recipe = load_recipe(RECIPE, [argv[-1]])
    assert recipe.distributed.deepspeed_config()["zero_optimization"] == {"stage": 1}


# errors carry the numbers


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"nproc": 0}, "nproc 0"),
        ({"nproc": 2, "nnodes": 0}, "nnodes 0"),
        ({"nproc": 2, "nnodes": 2, "node_rank": 2, "master_addr": "a"}, "node rank 2 is outside 0..1"),
        ({"nproc": 2, "master_port": 70000}, "master port 70000"),
        ({"nproc": 2, "hostfile": "no/such/hostfile", "launcher": "deepspeed"}, "hostfile no/such/hostfile does not exist"),
        ({"nproc": 2, "deepspeed_config": "no/such.json"}, "DeepSpeed config no/such.json does not exist"),
        ({"nproc": 2, "launcher": "mpirun"}, "'mpirun' is not one of torchrun, deepspeed"),
    ],
)
def test_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        launch_command(RECIPE, [], **kwargs)


def test_missing_recipe():
    with pytest.raises(ValueError, match="recipe recipes/nope.py does not exist"):
        launch_command("recipes/nope.py", [], nproc=2)


def test_format_command_quotes_for_the_shell():
    argv = ["torchrun", "-m", "mapscale.cli", "train", RECIPE, 'distributed.units=["conv1", "fc"]']
    line = format_command(argv)
    assert shlex.split(line) == argv
    assert line.startswith("torchrun -m mapscale.cli train recipes/mnist_cnn2.py '")


# the CLI


def test_cli_dry_run_prints_the_command_and_runs_nothing(monkeypatch):
    import subprocess as sp

    def refuse(*args, **kwargs):
        raise AssertionError("--dry-run started a process")

    monkeypatch.setattr(sp, "Popen", refuse)
    monkeypatch.setattr(sp, "run", refuse)
    result = runner.invoke(app, ["launch", RECIPE, "optim.lr=3e-3", "--nproc", "2", "--dry-run"])
    assert result.exit_code == 0, result.output
    argv = shlex.split(result.output.strip())
    assert Path(argv[0]).name == "torchrun"
    assert argv[1:] == ["--nproc-per-node", "2", *TRAIN, "optim.lr=3e-3"]


def test_cli_dry_run_deepspeed_with_config():
    result = runner.invoke(
        app, ["launch", RECIPE, "--nproc", "2", "--launcher", "deepspeed", "--deepspeed-config", "launch/ds_zero1_bf16.json", "--dry-run"]
    )
    assert result.exit_code == 0, result.output
    argv = shlex.split(result.output.strip())
    assert Path(argv[0]).name == "deepspeed"
    assert argv[1:] == ["--num_gpus", "2", *DS_TRAIN, "distributed.deepspeed=launch/ds_zero1_bf16.json"]


def test_cli_passes_arguments_after_double_dash_to_train():
    result = runner.invoke(app, ["launch", RECIPE, "--nproc", "2", "--dry-run", "--", "--stop-after", "5"])
    assert result.exit_code == 0, result.output
    assert shlex.split(result.output.strip())[-2:] == ["--stop-after", "5"]


def test_cli_errors_exit_2():
    result = runner.invoke(app, ["launch", RECIPE, "--nproc", "2", "--nnodes", "2", "--dry-run"])
    assert result.exit_code == 2
    assert "node_rank" in " ".join(result.output.split())


def test_cli_missing_launcher_fails_clearly(monkeypatch):
    import mapscale.distributed.launch as launch

    monkeypatch.setattr(launch, "find_launcher", lambda name: None)
    monkeypatch.setattr(launch, "run_command", lambda argv: pytest.fail(f"ran {argv}"))
    result = runner.invoke(app, ["launch", RECIPE, "--nproc", "2"])
    assert result.exit_code == 2
    assert "torchrun not found" in " ".join(result.output.split())


# the files in launch/


def test_deepspeed_config_file():
    config = json.loads((ROOT / "launch" / "ds_zero1_bf16.json").read_text())
    assert config["zero_optimization"]["stage"] == 1
    assert config["bf16"]["enabled"] is True
    # The trainer fills batch sizes in from optim.batch_size and the world size.
    assert not {"train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps"} & config.keys()


def test_hostfile_example_parses():
    lines = [line.split() for line in (ROOT / "launch" / "hostfile.example").read_text().splitlines() if line.strip() and not line.startswith("#")]
    assert lines and all(len(words) == 2 and words[1].startswith("slots=") and int(words[1][6:]) > 0 for words in lines)


def test_slurm_script_is_valid_bash():
    subprocess.run(["bash", "-n", str(ROOT / "launch" / "slurm.sbatch")], check=True)
