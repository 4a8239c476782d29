"""The package's shape: imports go one way, down the layers of DESIGN.md, and never in a circle.

Layers, top to bottom (a module may import its own layer and the ones below, never one above)::

    cli > engines > serve > training > tasks > bench > inference > api > weights > data > model > util

``api`` is ``pnasnet/api.py`` and the package's front door ``pnasnet/__init__.py`` (it re-exports
``create_model`` and friends); ``util`` is the helper modules at the top of the package
(``atomic_files``, ``env_flags``, ``file_locks``, ``version``) that any layer may use; ``pnasnet/__main__.py`` is
part of ``cli``. Every import counts, inside functions too (a lazy import is still a dependency);
only ``if TYPE_CHECKING:`` blocks are left out. ``from package import name`` depends on the module
that defines ``name`` when the package's ``__init__`` only re-exports it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
LAYERS = ["cli", "engines", "serve", "training", "tasks", "bench", "inference", "api", "weights", "data", "model",
          "util"]
# Modules directly under pnasnet/ and the layer each belongs to (a new one must be placed here).
TOP_LEVEL = {"__init__": "api", "__main__": "cli", "api": "api", "atomic_files": "util", "env_flags": "util",
             "file_locks": "util", "version": "util"}


def module_files(src: Path = SRC) -> dict[str, Path]:
    """``{"pnasnet.tasks.extract": path, "pnasnet.tasks": .../tasks/__init__.py, ...}``."""
    modules = {}
    for path in sorted((src / "pnasnet").rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def layer_of(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return TOP_LEVEL["__init__"]
    if parts[1] in LAYERS:
        return parts[1]
    if parts[1] in TOP_LEVEL:
        return TOP_LEVEL[parts[1]]
    raise AssertionError(f"{module}: no layer; add it to TOP_LEVEL in tests/test_layout.py (or move it into one)")


def _type_checking_block(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"))


def _imports(tree: ast.AST):
    """Every Import / ImportFrom node, at any depth, outside ``if TYPE_CHECKING:`` blocks."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if _type_checking_block(node):
            stack.extend(node.orelse)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def _reexports(modules: dict[str, Path]) -> dict[str, dict[str, str]]:
    """``{package: {name: defining submodule}}`` from the ``from .sub import name`` lines of each
    package's ``__init__``."""
    found: dict[str, dict[str, str]] = {}
    for module, path in modules.items():
        if path.name != "__init__.py":
            continue
        names = found.setdefault(module, {})
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module:
                target = f"{module}.{node.module}"
                if target in modules:
                    for alias in node.names:
                        names[alias.asname or alias.name] = target
    return found


def import_graph(src: Path = SRC) -> dict[str, dict[str, int]]:
    """``{module: {imported pnasnet module: line}}`` for every module of the package."""
    modules = module_files(src)
    reexports = _reexports(modules)

    def known(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    def defining(package: str, name: str) -> str:
        seen = set()
        while package in reexports and name in reexports[package] and package not in seen:
            seen.add(package)
            package = reexports[package][name]
        return package

    graph: dict[str, dict[str, int]] = {}
    for module, path in modules.items():
        edges = graph.setdefault(module, {})
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for node in _imports(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [known(alias.name) for alias in node.names if alias.name.split(".")[0] == "pnasnet"]
            else:
                if node.level:
                    base = package.split(".")
                    base = base[:len(base) - (node.level - 1)]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                if source.split(".")[0] != "pnasnet":
                    continue
                for alias in node.names:
                    if f"{source}.{alias.name}" in modules:
                        targets.append(f"{source}.{alias.name}")
                    elif source in modules:
                        targets.append(defining(source, alias.name))
                    else:
                        targets.append(known(source))
            for target in targets:
                if target and target != module:
                    edges.setdefault(target, node.lineno)
    return graph


def upward_imports(graph: dict[str, dict[str, int]]) -> list[str]:
    rank = {layer: index for index, layer in enumerate(LAYERS)}  # 0 = top
    found = []
    for module, edges in sorted(graph.items()):
        for target, line in sorted(edges.items()):
            if rank[layer_of(target)] < rank[layer_of(module)]:
                found.append(f"{module} (line {line}, layer {layer_of(module)}) imports {target} "
                             f"(layer {layer_of(target)}, above it)")
    return found


def cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:  # the graph is a few hundred modules: recursion is fine
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, {}):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_every_module_has_a_layer():
    for module in module_files():
        layer_of(module)


def test_no_module_imports_one_from_a_layer_above_it():
    assert upward_imports(import_graph()) == []


def test_no_import_cycles():
    assert cycles(import_graph()) == []


def test_nothing_outside_the_cli_imports_it():
    graph = import_graph()
    users = sorted(module for module, edges in graph.items() if layer_of(module) != "cli"
                   and any(layer_of(target) == "cli" for target in edges))
    assert users == []


@pytest.mark.parametrize("bad, found", [
    ("from ..cli.main import main\n", "upward"),                       # model -> cli
    ("def later():\n    from ..tasks import classify_paths\n", "upward"),  # a lazy import counts
    ("from .ops import *\n", "cycle"),                                 # ops already imports nothing above
])
def test_the_checks_catch_a_bad_import(tmp_path, bad, found):
    """The same checks on a copy of the package with one bad import added to model/cell.py (and,
    for the cycle, ops.py importing cell back)."""
    import shutil

    copy = tmp_path / "src"
    shutil.copytree(SRC / "pnasnet", copy / "pnasnet", ignore=shutil.ignore_patterns("__pycache__"))
    cell = copy / "pnasnet" / "model" / "cell.py"
    cell.write_text(cell.read_text(encoding="utf-8") + "\n" + bad, encoding="utf-8")
    if found == "cycle":
        ops = copy / "pnasnet" / "model" / "ops.py"
        ops.write_text(ops.read_text(encoding="utf-8") + "\nfrom .cell import *\n", encoding="utf-8")
        assert cycles(import_graph(copy))
    else:
        assert any(line.startswith("pnasnet.model.cell ") for line in upward_imports(import_graph(copy)))


def test_type_checking_imports_are_left_out(tmp_path):
    import shutil

    copy = tmp_path / "src"
    shutil.copytree(SRC / "pnasnet", copy / "pnasnet", ignore=shutil.ignore_patterns("__pycache__"))
    cell = copy / "pnasnet" / "model" / "cell.py"
    cell.write_text(cell.read_text(encoding="utf-8") + "\nfrom typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n"
                    "    from ..cli.main import main\n", encoding="utf-8")
    assert not any(line.startswith("pnasnet.model.cell ") for line in upward_imports(import_graph(copy)))
