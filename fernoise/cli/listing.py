"""Listings that read at any width: one block per entry (table), a GitHub table (markdown) or
JSON, for `fernoise methods` and `fernoise backbones` (``--format``).

The text layout wraps only at spaces (``textwrap`` with ``break_long_words`` and
``break_on_hyphens`` off), so no word is ever split, piped or not; a line is wider than the
console only where one word is.
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Sequence
from typing import Annotated, Any

import typer

from fernoise.errors import FernoiseError

FORMATS = ("table", "markdown", "json")

FormatOpt = Annotated[
    str,
    typer.Option(
        "--format",
        help="table (blocks that fit the console, words never split), markdown (a GitHub table) or json (every field).",
    ),
]


def check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise FernoiseError(
            f"unknown format {fmt!r}; expected one of: {', '.join(FORMATS)}", flag="--format"
        )
    return fmt


def _wrap(text: str, width: int, first: str, rest: str) -> list[str]:
    out: list[str] = []
    for i, para in enumerate(str(text).split("\n")):
        lines = textwrap.wrap(
            para,
            width=max(width, len(first) + 20),
            initial_indent=first if i == 0 else rest,
            subsequent_indent=rest,
            break_long_words=False,
            break_on_hyphens=False,
        )
        out.extend(lines or [(first if i == 0 else rest).rstrip()])
    return out


def blocks(
    rows: Sequence[dict[str, Any]], title: str, fields: Sequence[tuple[str, str]], width: int
) -> str:
    """One block per row: its ``title`` field, then ``label: value`` per other field, each
    wrapped at spaces to ``width`` and indented under its label."""
    pad = max(len(label) for _, label in fields) + 2
    lines: list[str] = []
    for row in rows:
        lines.append(str(row[title]))
        for key, label in fields:
            lines.extend(_wrap(row[key], width, f"  {label + ':':<{pad}}", " " * (pad + 2)))
        lines.append("")
    return "\n".join(lines).rstrip("\n")


def paragraph(text: str, width: int) -> str:
    """``text`` wrapped at spaces to ``width``, no word split."""
    return "\n".join(_wrap(text, width, "", ""))


def markdown(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]]) -> str:
    """A GitHub table: ``|`` escaped, line breaks as ``<br>``."""

    def cell(v: Any) -> str:
        return str(v).replace("|", "\\|").replace("\n", "<br>")

    head = "| " + " | ".join(label for _, label in columns) + " |"
    rule = "|" + "|".join("---" for _ in columns) + "|"
    body = ["| " + " | ".join(cell(r[k]) for k, _ in columns) + " |" for r in rows]
    return "\n".join([head, rule, *body])


def as_json(rows: Sequence[dict[str, Any]]) -> str:
    return json.dumps(list(rows), indent=2, ensure_ascii=False)


def show(text: str) -> None:
    """Print as is: no markup, no highlighting, no re-wrapping by rich."""
    typer.echo(text)
