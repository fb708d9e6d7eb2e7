"""The layout rules of docs/DESIGN.md, checked on the source: imports at module top (but
the optional ``nir``), no import cycle between modules or between packages, and no
function over 80 lines outside the numba kernels."""

from __future__ import annotations

import ast
from pathlib import Path

import qsnn

ROOT = Path(qsnn.__file__).resolve().parent
OPTIONAL = {"nir"}  # imported where used: qsnn runs without it
LONGEST = 80


def _modules() -> dict[str, ast.Module]:
    found = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = ast.parse(path.read_text(), filename=str(path))
    return found


def _imports(name: str, tree: ast.Module, known: set[str]) -> set[str]:
    """The qsnn modules that module ``name`` imports at its top level."""
    found = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("qsnn")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("qsnn"):
            for alias in node.names:
                child = f"{node.module}.{alias.name}"
                found.add(child if child in known else node.module)
    return {module for module in found if module != name}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of ``graph`` as a path, or None."""
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for after in sorted(graph.get(node, ())):
            if state.get(after) == 1:
                return [*path[path.index(after):], after]
            if after not in state and (found := visit(after)):
                return found
        state[node] = 2
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def _package(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2])


def test_no_import_cycle_between_modules_or_packages():
    modules = _modules()
    graph = {name: _imports(name, tree, set(modules)) for name, tree in modules.items()}
    # a package's __init__ re-exports its modules: importing it is importing them
    assert _cycle({m: {d for d in deps if not (m.startswith(d + ".") and d in modules)} for m, deps in graph.items()}) is None
    packages: dict[str, set[str]] = {}
    for module, deps in graph.items():
        packages.setdefault(_package(module), set()).update(_package(d) for d in deps if _package(d) != _package(module))
    packages.pop("qsnn", None)  # the top-level API re-exports everything
    for deps in packages.values():
        deps.discard("qsnn")
    assert _cycle(packages) is None, packages


def test_imports_are_at_module_top():
    inner = []
    for name, tree in _modules().items():
        for function in (n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)):
            for node in ast.walk(function):
                if isinstance(node, ast.Import | ast.ImportFrom):
                    imported = {a.name.split(".")[0] for a in node.names} if isinstance(node, ast.Import) else {(node.module or "").split(".")[0]}
                    if not imported <= OPTIONAL:
                        inner.append(f"{name}.{function.name}: {sorted(imported)}")
    assert inner == []


def test_no_function_over_80_lines_outside_the_numba_kernels():
    def kernel(function) -> bool:
        return any("njit" in ast.unparse(decorator) or "numba" in ast.unparse(decorator) for decorator in function.decorator_list)

    long = [
        f"{name}.{function.name}: {function.end_lineno - function.lineno + 1} lines"
        for name, tree in _modules().items()
        for function in ast.walk(tree)
        if isinstance(function, ast.FunctionDef) and not kernel(function)
        and function.end_lineno - function.lineno + 1 > LONGEST
    ]
    assert long == []


def test_the_checks_see_a_cycle_and_a_long_function():
    """The checks can fail: a made-up cycle is found."""
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None
