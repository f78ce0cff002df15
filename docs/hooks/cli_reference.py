"""mkdocs hook: the CLI reference page (``cli.md``), generated from the Typer app at build time.

Reads ``fernoise.cli.app.app`` (through ``typer.main.get_command``: the click group that
``fernoise`` runs) and writes no file: the page is added to the build as a generated file, so
it always says what the installed commands say. For the root and each command (in the order
``fernoise --help`` lists them): the help text, the usage line, then each argument and option
as the command's own help record gives it (names, metavar, help, ``[default: ...]``). Hidden
commands and options are left out. Needs nothing beyond typer, which fernoise depends on.
Typer ships its own copy of click (``typer._click``), so objects are read by duck typing
(``param_type_name``, ``list_commands``, ``context_class``), never checked against ``click``.
"""

from __future__ import annotations

import html
import inspect
import re
from typing import Any

import typer
from mkdocs.structure.files import File, Files

PAGE = "cli.md"

_MD_SPECIAL = re.compile(r"([\\`*_\[\]])")


def _text(s: str) -> str:
    """Help text as Markdown that renders literally (no emphasis, no HTML)."""
    return html.escape(_MD_SPECIAL.sub(r"\\\1", s), quote=False)


def _help(cmd: Any) -> str:
    """The command's help, paragraph by paragraph (the ``\\b`` no-rewrap marks dropped)."""
    raw = inspect.cleandoc(cmd.help or "")
    paras = [p for p in re.split(r"\n\s*\n", raw) if p.strip()]
    out = []
    for p in paras:
        lines = [ln for ln in p.splitlines() if ln.strip() != "\b"]
        out.append(_text(" ".join(ln.strip() for ln in lines)))
    return "\n\n".join(out)


def _params(cmd: Any, ctx: Any, kind: str) -> list[str]:
    rows = []
    for param in cmd.params:
        if param.param_type_name != kind or getattr(param, "hidden", False):
            continue
        record = param.get_help_record(ctx)
        if record is None:
            names, text = param.human_readable_name, ""
        else:
            names, text = record
        rows.append(f"- `{names}`" + (f": {_text(text)}" if text else ""))
    return rows


def _section(cmd: Any, ctx: Any, title: str, level: str) -> list[str]:
    lines = [f"{level} {title}", ""]
    if cmd.help:
        lines += [_help(cmd), ""]
    lines += ["```text", cmd.get_usage(ctx), "```", ""]
    for label, kind in (("Arguments", "argument"), ("Options", "option")):
        rows = _params(cmd, ctx, kind)
        if rows:
            lines += [f"**{label}**", "", *rows, ""]
    return lines


def render(app: Any = None) -> str:
    """The whole page as Markdown; ``app`` defaults to ``fernoise.cli.app.app``."""
    if app is None:
        from fernoise.cli.app import app
    root = typer.main.get_command(app)
    ctx = root.context_class(root, info_name="fernoise")
    lines = [
        "# CLI reference",
        "",
        "Every `fernoise` command with its arguments and options, generated from the command",
        "itself when this site is built (`fernoise COMMAND --help` prints the same).",
        "",
    ]
    lines += _section(root, ctx, "fernoise", "##")
    for name in root.list_commands(ctx):
        cmd = root.get_command(ctx, name)
        if cmd is None or cmd.hidden:
            continue
        sub = cmd.context_class(cmd, info_name=name, parent=ctx)
        lines += _section(cmd, sub, f"fernoise {name}", "##")
    return "\n".join(lines).rstrip("\n") + "\n"


def on_files(files: Files, config: Any) -> Files:
    files.append(File.generated(config, PAGE, content=render()))
    return files
