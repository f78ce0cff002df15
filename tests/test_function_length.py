"""Functions a reader can hold: no function in the library over 80 lines (``def`` to its last
line, docstring included, as ``ruff format`` writes it) unless its docstring says why, in a
paragraph that starts with ``Long:``."""

from __future__ import annotations

import ast
from pathlib import Path

import fernoise

LIMIT = 80
PACKAGE = Path(fernoise.__file__).parent


def long_functions() -> list[tuple[str, str, int, bool]]:
    """``(file, function, lines, has a Long: reason)`` for every function over the limit."""
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > LIMIT:
                    doc = ast.get_docstring(node) or ""
                    reason = any(p.lstrip().startswith("Long:") for p in doc.split("\n\n"))
                    rel = path.relative_to(PACKAGE).as_posix()
                    out.append((rel, node.name, lines, reason))
    return out


def test_every_long_function_says_why():
    unexplained = [(f, n, k) for f, n, k, reason in long_functions() if not reason]
    assert unexplained == [], "split them by job, or give a `Long:` paragraph in the docstring"


def test_the_walk_finds_long_functions():
    """The check can fail: the walk sees the two option-declaration functions of the CLI."""
    names = {(f, n) for f, n, _, _ in long_functions()}
    assert ("cli/train.py", "_static_options") in names
