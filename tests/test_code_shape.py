"""The shape of the code the project promises: no function in mapscale/ longer than 100 lines and the training
loop readable in one screen (at most 80 lines) (issue 16); no import cycle inside mapscale/ and data modules
under 400 lines (issue 26)."""

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


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """``{module: mapscale modules it imports}``: every ``import`` and ``from ... import`` statement, at module
    level or inside a function (both run, sooner or later), ``from X import name`` counting ``X.name`` when that
    is a module. Imports under ``if TYPE_CHECKING:`` are left out: they never run (annotations only). A parent
    package's implicit import (``import a.b`` runs ``a/__init__.py``) is not an edge."""
    root = package.parent
    modules = {}
    for path in package.rglob("*.py"):
        parts = list(path.relative_to(root).with_suffix("").parts)
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        skipped = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test) for n in ast.walk(node)}
        targets = set()
        for node in ast.walk(tree):
            if id(node) in skipped:
                continue
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the importing module's package
                    package_parts = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                    base = ".".join(package_parts[: len(package_parts) - node.level + 1] + ([base] if base else []))
                targets.add(base)
                targets.update(f"{base}.{alias.name}" for alias in node.names)
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan): each holds an import cycle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for other in sorted(graph[module]):
            if other not in index:
                visit(other)
                low[module] = min(low[module], low[other])
            elif other in stack:
                low[module] = min(low[module], index[other])
        if low[module] == index[module]:
            component = []
            while component[-1:] != [module]:
                component.append(stack.pop())
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return cycles


def test_no_import_cycle_inside_mapscale():
    graph = import_graph()
    assert len(graph) > 40 and graph["mapscale.recipe"] >= {"mapscale.methods", "mapscale.data.section"}  # the walk sees imports
    assert import_cycles(graph) == []


def test_the_cycle_check_finds_a_cycle(tmp_path):
    """The check above can fail: a package whose modules import each other (one of them inside a function)."""
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from pkg.b import thing\n")
    (package / "b.py").write_text("def thing():\n    from pkg import a\n")
    (package / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.a import thing\n")
    assert import_cycles(import_graph(package)) == [["pkg.a", "pkg.b"]]


def test_each_data_module_is_under_400_lines():
    lengths = {path.name: len(path.read_text().splitlines()) for path in (PACKAGE / "data").glob("*.py")}
    assert len(lengths) >= 8 and max(lengths.values()) < 400, lengths
