"""`fernoise evaluate`: placeholder until its issue lands."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    name = "eval" if "evaluate" == "evaluate" else "evaluate"

    @app.command(name=name, help="(not yet implemented)")
    def _cmd() -> None:
        raise typer.Exit(1)
