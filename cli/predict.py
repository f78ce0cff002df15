"""`fernoise predict`: placeholder until its issue lands."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    name = "eval" if "predict" == "evaluate" else "predict"

    @app.command(name=name, help="(not yet implemented)")
    def _cmd() -> None:
        raise typer.Exit(1)
