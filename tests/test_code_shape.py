"""The shape of the code the project promises (issue 16): no function in mapscale/ longer than 100 lines, and the
training loop readable in one screen (at most 80 lines)."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "mapscale"


def function_lengths() -> dict[str, int]:
    lengths = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lengths[f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name}"] = node.end_lineno - node.lineno + 1
    return lengths


def test_no_function_is_longer_than_100_lines():
    lengths = function_lengths()
    assert len(lengths) > 300  # the walk sees the package
    assert {name: n for name, n in lengths.items() if n > 100} == {}


def test_the_training_loop_fits_one_screen():
    (loop,) = [n for name, n in function_lengths().items() if name.startswith("mapscale/train/loop.py") and name.endswith(" train")]
    assert loop <= 80, loop
