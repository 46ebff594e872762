"""Bad input through the real CLI: every case ends with exit code 2 and one line saying what to fix, no
traceback, and no run directory left behind. A crash after training started keeps the run directory."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mapscale.cli import app

ROOT = Path(__file__).resolve().parents[1]
RECIPE = str(ROOT / "recipes" / "mnist_cnn2.py")
QUICK = ["data.max_examples=64", "optim.max_steps=1", "output.progress=false"]

RECIPE_FILES = {
    "syntax.py": "from mapscale.recipe import Recipe\nclass Broken(Recipe)\n    pass\n",
    "imports.py": "import mapscale_has_no_such_module\n",
    "raises.py": "from mapscale.recipe import Recipe\nBUDGET = 1 // 0\n",
    "empty.py": "X = 1\n",
    "two.py": "from mapscale.recipe import Recipe\nclass A(Recipe):\n    pass\nclass B(Recipe):\n    pass\n",
    "section.py": "from mapscale.recipe import MappingMethod, Recipe\nclass A(Recipe):\n    mapping = MappingMethod(budget=0)\n",
    "recipe.txt": "not a recipe\n",
    "bad.json": "{not json",
}

# (name, argv with {tmp} and {recipe} placeholders, a fragment of the one-line message)
CASES = [
    ("budget zero, dry run", ["train", "{recipe}", "mapping.budget=0", "--dry-run"], "mapping.budget 0 must be at least 1"),
    ("budget negative", ["train", "{recipe}", "mapping.budget=-5"], "mapping.budget -5 must be at least 1"),
    ("budget of a group that does not exist", ["train", "{recipe}", 'mapping.budget={{"nope": 4}}', "--dry-run"], "nope"),
    ("unknown grouping", ["train", "{recipe}", "mapping.grouping=nonsense", "--dry-run"], "mapping.grouping 'nonsense' is not one of"),
    ("selector matching nothing", ["train", "{recipe}", 'mapping.trainable=["nomatch*"]', "--dry-run"], "nomatch"),
    ("wrong type", ["train", "{recipe}", "optim.lr=fast"], "optim.lr: Input should be a valid number"),
    ("negative rate", ["train", "{recipe}", "optim.lr=-1"], "optim.lr: Input should be greater than 0"),
    ("zero batch", ["train", "{recipe}", "optim.batch_size=0"], "optim.batch_size"),
    ("unknown key", ["train", "{recipe}", "optim.lrr=0.1"], "Did you mean 'lr'?"),
    ("unknown section", ["train", "{recipe}", "nosection.x=1"], "unknown key 'nosection.x'"),
    ("override without a value", ["train", "{recipe}", "optim.lr"], "is not key=value"),
    ("unknown method", ["train", "{recipe}", "mapping.method=rgp"], "Did you mean 'rpg'?"),
    ("a field the method does not read", ["train", "{recipe}", "mapping.method=rpg", "mapping.modulation=none"], "has no 'modulation'"),
    ("a loss term the start refuses", ["train", "{recipe}", "loss.alignment=0.1"], "no direction at the zero latent"),
    ("per-unit gathering without units", ["train", "{recipe}", "distributed.gather=per-unit"], "needs distributed.units"),
    ("a data field the source does not read", ["train", "{recipe}", "data.path=/no/such/folder", "--dry-run"], "does not read data.path"),
    ("missing data folder", ["train", "{recipe}", "data.name=imagefolder", "data.path=/no/such/folder"], "data.path: /no/such/folder does not exist"),
    ("local source without a path", ["train", "{recipe}", "data.name=imagefolder"], "reads local files: give data.path"),
    ("unknown target", ["train", "{recipe}", "target.name=no_such_net", "--dry-run"], "no_such_net"),
    ("missing weights file", ["train", "{recipe}", "target.weights=/no/such.pt"], "target.weights: /no/such.pt does not exist"),
    ("fine-tuning without weights", ["train", "{recipe}", "mapping.method=finetune"], "target.weights is not set"),
    ("output root is a file", ["train", "{recipe}", "output.root={tmp}/file.txt"], "is a file, not a folder"),
    ("missing recipe file", ["train", "{tmp}/nothing.py"], "does not exist"),
    ("recipe with a syntax error", ["train", "{tmp}/syntax.py"], "syntax.py, line 2: SyntaxError"),
    ("recipe whose import fails", ["train", "{tmp}/imports.py"], "imports.py, line 1: ModuleNotFoundError"),
    ("recipe raising at load", ["train", "{tmp}/raises.py"], "raises.py, line 2: ZeroDivisionError"),
    ("recipe defining no recipe", ["train", "{tmp}/empty.py"], "defines no Recipe subclass"),
    ("recipe defining two", ["train", "{tmp}/two.py"], "defines several recipes (A, B)"),
    ("recipe with a bad section", ["train", "{tmp}/section.py"], "mapping.budget 0 must be at least 1"),
    ("not a recipe file", ["train", "{tmp}/recipe.txt"], "a recipe is a .py file"),
    ("recipe.json that is not JSON", ["train", "{tmp}/bad.json"], "bad.json"),
    ("a folder that is not a run", ["train", "{tmp}/folder"], "without recipe.json"),
    ("resume without a checkpoint", ["train", "{tmp}/norun", "--resume"], "has none"),
    ("eval of a folder that is not a run", ["eval", "{tmp}/folder"], "no checkpoint at"),
    ("eval of a file that is not a checkpoint", ["eval", "{tmp}/recipe.txt"], "is not a readable checkpoint"),
    ("export of a folder that is not a run", ["export", "{tmp}/folder", "--out", "{tmp}/m.safetensors"], "no checkpoint at"),
    ("inspect with a bad override", ["inspect", "{recipe}", "mapping.budget=0"], "mapping.budget 0 must be at least 1"),
    ("launch on a world the batch does not fit", ["launch", "{recipe}", "--nproc", "4", "optim.batch_size=2", "--dry-run"], "smaller than 4 ranks"),
    ("report of a folder that is not a run", ["report", "{tmp}/folder", "--out", "{tmp}/report"], "folder"),
    ("space of folders that are not runs", ["space", "{tmp}/folder", "{tmp}/norun"], "no checkpoint at"),
    ("sharding units that match no tensor", ["train", "{recipe}", 'distributed.units=["no_such_unit"]'], "distributed.units ['no_such_unit'] match no tensor of cnn2"),
    ("auto-resume into another recipe's run", ["train", "{recipe}", "output.resume=auto", "output.root={tmp}", "output.run_name=norun"], "holds another recipe"),
    ("auto-resume into a folder that is not a run", ["train", "{recipe}", "output.resume=auto", "output.root={tmp}", "output.run_name=folder"], "is not a run directory"),
    ("launch with restarts under deepspeed", ["launch", "{recipe}", "--nproc", "2", "--launcher", "deepspeed", "--max-restarts", "1", "--dry-run"], "does not restart failed ranks"),
    ("unknown generation mode", ["train", "{recipe}", "distributed.generation=everywhere"], "distributed.generation: Input should be 'auto', 'sharded' or 'local'"),
    ("local generation that cannot fit", ["train", "{recipe}", "target.name=torchvision:resnet50", "mapping.operator=dense", "data.channels=3", "distributed.generation=local"], "use distributed.generation='sharded'"),
    ("fp64 under DeepSpeed", ["train", "{recipe}", "optim.precision=fp64", "distributed.deepspeed={{}}"], "optim.precision='fp64' runs plain PyTorch steps"),
]


@pytest.fixture
def tmp(tmp_path: Path) -> Path:
    for name, text in RECIPE_FILES.items():
        (tmp_path / name).write_text(text)
    (tmp_path / "file.txt").write_text("a file where a folder should be\n")
    (tmp_path / "folder").mkdir()
    (tmp_path / "norun").mkdir()
    (tmp_path / "norun" / "recipe.json").write_text(json.dumps({"name": "norun"}))
    return tmp_path


def test_the_table_has_at_least_25_cases():
    assert len(CASES) >= 25 and len({name for name, _, _ in CASES}) == len(CASES)


@pytest.mark.parametrize(("name", "argv", "message"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_ends_with_one_line_and_exit_code_2(name, argv, message, tmp):
    runs = tmp / "runs"
    args = [a.format(tmp=tmp, recipe=RECIPE) for a in argv]
    if args[0] == "train" and args[1] == RECIPE:
        args += [*QUICK, f"output.root={runs}"] if not any(a.startswith("output.root=") for a in args) else QUICK
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, (result.output, result.exception)
    assert type(result.exception) is SystemExit, result.exception  # not a crash caught by the runner
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.output, result.output
    assert message in lines[0], lines[0]
    assert not runs.exists() or not any(runs.iterdir()), "a run directory was left behind"
    assert sorted(p.name for p in (tmp / "norun").iterdir()) == ["recipe.json"] and not any((tmp / "folder").iterdir()), "an existing folder was written to"


CRASHING = """
from mapscale.recipe import DataSection, MappingMethod, OptimSection, OutputSection, Recipe, TargetSection
from mapscale import targets

calls = []


def crashing_cnn2():
    net = targets.cnn2()
    original = net.forward

    def forward(x):
        calls.append(1)
        if len(calls) == 2:  # the second training step
            raise RuntimeError("injected crash")
        return original(x)

    net.forward = forward
    return net


targets.TARGETS["crashing_cnn2"] = crashing_cnn2


class Crashing(Recipe):
    target = TargetSection(name="crashing_cnn2")
    mapping = MappingMethod(budget=64)
    data = DataSection(max_examples=64)
    optim = OptimSection(batch_size=32, epochs=1)
    output = OutputSection(run_name="crashing", log_every=1, progress=False)
"""


def test_a_crash_after_the_first_step_keeps_the_run_directory_and_its_metrics(tmp_path):
    (tmp_path / "crashing.py").write_text(CRASHING)
    done = subprocess.run(
        [sys.executable, "-m", "mapscale.cli", "train", str(tmp_path / "crashing.py"), f"output.root={tmp_path / 'runs'}"],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode not in (0, 2), done.stdout + done.stderr
    assert "Traceback" in done.stderr and "RuntimeError: injected crash" in done.stderr
    run_dir = tmp_path / "runs" / "crashing"
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["split"] == "train"] == [1]
    assert (run_dir / "recipe.json").exists() and not (run_dir / "result.json").exists()
