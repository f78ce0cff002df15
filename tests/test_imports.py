"""The package's modules import each other without a circle.

Walks every module of ``fernoise`` (the CLI included) with :func:`pkgutil.walk_packages`,
reads each file's ``fernoise`` imports with :mod:`ast` and looks for a cycle. Two graphs:

- the imports made when a module is imported (statements at the top of the file, also under
  ``try``/``if``; not those under ``if TYPE_CHECKING:``): a cycle there makes the import order
  matter, and a name may be missing while its module is half-initialised;
- every import, including those inside functions (kept there so that torch loads only when
  needed): a cycle there is a circle between modules all the same. The one exception is a
  package loading its own plugin modules inside a function (``formats`` reads its adapters on
  first use; they import the package).
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import pytest

PACKAGES = ("fernoise",)  # the CLI is fernoise.cli


def _modules() -> dict[str, Path]:
    mods: dict[str, Path] = {}
    for top in PACKAGES:
        try:
            pkg = importlib.import_module(top)
        except ImportError:
            continue
        root = Path(pkg.__file__).parent
        mods[top] = root / "__init__.py"
        for info in pkgutil.walk_packages([str(root)], prefix=f"{top}."):
            rel = root.joinpath(*info.name.split(".")[1:])
            mods[info.name] = rel / "__init__.py" if info.ispkg else rel.with_suffix(".py")
    return mods


MODULES = _modules()


def _known(name: str) -> str | None:
    """The longest prefix of ``name`` that is one of our modules."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING"
    )


def _import_nodes(tree: ast.Module, *, top_only: bool):
    """(node, inside_function) for every import statement, skipping TYPE_CHECKING blocks."""

    def walk(nodes, in_function):
        for node in nodes:
            if isinstance(node, ast.If) and _is_type_checking(node):
                yield from walk(node.orelse, in_function)
                continue
            if isinstance(node, ast.Import | ast.ImportFrom):
                yield node, in_function
                continue
            is_def = isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
            if is_def and top_only and not isinstance(node, ast.ClassDef):
                continue
            for child in ast.iter_child_nodes(node):
                yield from walk(
                    [child], in_function or isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
                )

    yield from walk(tree.body, False)


def _targets(module: str, path: Path, node: ast.Import | ast.ImportFrom) -> set[str]:
    found: set[str] = set()
    if isinstance(node, ast.Import):
        for alias in node.names:
            if (m := _known(alias.name)) is not None:
                found.add(m)
        return found
    base = node.module or ""
    if node.level:  # relative import
        pkg = module if path.name == "__init__.py" else module.rpartition(".")[0]
        parts = pkg.split(".")[: len(pkg.split(".")) - (node.level - 1)]
        base = ".".join([*parts, *([node.module] if node.module else [])])
    for alias in node.names:
        sub = f"{base}.{alias.name}"
        m = sub if sub in MODULES else _known(base)
        if m is not None:
            found.add(m)
    return found


def graph(*, top_only: bool) -> dict[str, set[str]]:
    g: dict[str, set[str]] = {}
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        edges: set[str] = set()
        for node, in_function in _import_nodes(tree, top_only=top_only):
            for target in _targets(module, path, node):
                if in_function and path.name == "__init__.py" and target.startswith(f"{module}."):
                    continue  # a package loading its own plugins on first use
                edges.add(target)
        edges.discard(module)
        g[module] = edges
    return g


def find_cycle(g: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``g`` as ``[a, b, ..., a]``, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    stack: list[str] = []

    def visit(v: str) -> list[str] | None:
        state[v] = 1
        stack.append(v)
        for w in sorted(g.get(v, ())):
            if state.get(w) == 1:
                return [*stack[stack.index(w) :], w]
            if w not in state and (found := visit(w)):
                return found
        stack.pop()
        state[v] = 2
        return None

    for v in sorted(g):
        if v not in state and (found := visit(v)):
            return found
    return None


def test_the_walk_finds_the_package():
    assert {
        "fernoise.cache",
        "fernoise.methods.base",
        "fernoise.train.stage",
        "fernoise.cli.app",
    } <= set(MODULES)
    assert all(p.is_file() for p in MODULES.values())


@pytest.mark.parametrize("top_only", [True, False], ids=["at-import", "all-imports"])
def test_no_import_cycle(top_only):
    cycle = find_cycle(graph(top_only=top_only))
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_check_sees_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_packages_and_the_run_index_import_no_torch():
    """Every package's ``__init__``, train's config and the run index load without torch
    (``fernoise --help`` and cache hits stay fast)."""
    import subprocess
    import sys

    packages = sorted(m for m, p in MODULES.items() if p.name == "__init__.py")
    code = (
        f"import sys\nfor m in {[*packages, 'fernoise.train.config', 'fernoise.runindex']!r}: __import__(m)\n"
        "print('torch' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "False"
