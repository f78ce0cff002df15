"""`fernoise train`: placeholder until its issue lands."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    name = "eval" if "train" == "evaluate" else "train"

    @app.command(name=name, help="(not yet implemented)")
    def _cmd() -> None:
        raise typer.Exit(1)
