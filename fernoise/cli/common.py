"""What every command shares: the console, error handling, shared options, printing paths."""

from __future__ import annotations

import copy
import functools
import inspect
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar, get_args, get_origin

import typer
from rich.console import Console
from rich.markup import escape

from fernoise.errors import FernoiseError, destination_error

console = Console(stderr=False, highlight=False)
err_console = Console(stderr=True, highlight=False)

F = TypeVar("F", bound=Callable[..., Any])

# Options shared between commands, defined once.
SeedOpt = Annotated[
    int, typer.Option("--seed", help="Random seed (every random choice uses its own generator).")
]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")]
PrecisionOpt = Annotated[str, typer.Option("--precision", help="auto, fp32 or bf16 (autocast).")]
ForceOpt = Annotated[
    bool, typer.Option("--force", help="Recompute even when the cache holds the result.")
]
WorkspaceOpt = Annotated[
    Path | None,
    typer.Option(
        "--workspace",
        help="Folder of the fernoise.lock that links the stages (default: $FERNOISE_WORKSPACE or the current folder).",
    ),
]


def with_panels(sig: inspect.Signature, panels: dict[str, str]) -> inspect.Signature:
    """``sig`` with each parameter named in ``panels`` shown in that help panel
    (``rich_help_panel``): its typer Option or Argument is copied, never changed in place, so
    an option shared between commands keeps its own panel elsewhere."""
    params = []
    for p in sig.parameters.values():
        panel = panels.get(p.name)
        if panel is not None and get_origin(p.annotation) is Annotated:
            base, *meta = get_args(p.annotation)
            copied = []
            for m in meta:
                if hasattr(m, "rich_help_panel"):
                    m = copy.copy(m)
                    m.rich_help_panel = panel
                copied.append(m)
            p = p.replace(annotation=Annotated[tuple([base, *copied])])
        params.append(p)
    return sig.replace(parameters=params)


def hide_flag_metavars() -> None:
    """Flags (``--force``, ``--all-faces/--best-face``, ``--help``) show no ``<bool>`` in
    help: typer (0.2x) gives every option a type column, flags included; a flag takes no
    value, so its column stays empty. Applied once, by the app."""
    from typer.core import TyperOption

    if getattr(TyperOption.display_type_rich, "_fernoise", False):
        return
    original = TyperOption.display_type_rich

    def display_type_rich(self: TyperOption, ctx: Any) -> str | None:
        if self.is_flag and self.metavar is None:
            return None
        return original(self, ctx)

    display_type_rich._fernoise = True  # type: ignore[attr-defined]
    TyperOption.display_type_rich = display_type_rich  # type: ignore[method-assign]


def debug_enabled() -> bool:
    return os.environ.get("FERNOISE_DEBUG", "") not in ("", "0")


def handle_errors(fn: F) -> F:
    """Turn a FernoiseError into one red line and exit code 2, and a write the destination
    refused (no permission, read-only file system, full disk, quota:
    :func:`fernoise.errors.destination_error`) into one line naming the path and exit code 1.

    Set FERNOISE_DEBUG=1 (or pass --debug to the app) for the traceback.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except FernoiseError as e:
            if debug_enabled():
                raise
            err_console.print(
                f"[red]error:[/red] {escape(e.one_line())}", markup=True, soft_wrap=True
            )
            raise typer.Exit(2) from None
        except OSError as e:
            fe = destination_error(e)
            if fe is None or debug_enabled():
                raise
            err_console.print(
                f"[red]error:[/red] {escape(fe.one_line())}", markup=True, soft_wrap=True
            )
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            err_console.print("interrupted; re-run the same command to resume")
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def wrote(path: Path | str, *, hit: bool = False, what: str = "wrote") -> None:
    """Print the path a command wrote (every command does), marking cache hits."""
    tag = "cache hit" if hit else what
    console.print(f"[green]{tag}[/green]: {path}", soft_wrap=True)


def isatty() -> bool:
    return sys.stdout.isatty()
