"""`fernoise align`: placeholder until its issue lands."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    name = "eval" if "align" == "evaluate" else "align"

    @app.command(name=name, help="(not yet implemented)")
    def _cmd() -> None:
        raise typer.Exit(1)
