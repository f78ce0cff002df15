"""`fernoise report RUN_OR_GLOB...`: one table comparing runs (methods x noise settings)."""

from __future__ import annotations

from typing import Annotated

import typer
from fernoise_cli.common import handle_errors


def register(app: typer.Typer) -> None:
    @app.command(name="report")
    @handle_errors
    def report_cmd(
        runs: Annotated[list[str], typer.Argument(help="Run folders, globs of them (quoted), or folders of runs.")],
        csv: Annotated[bool, typer.Option("--csv", help="CSV instead of Markdown.")] = False,
    ) -> None:
        """Compare runs in one table: methods x noise settings (Markdown, or CSV).

        Cells: `max / last-5` test accuracy in % (the paper's x/y) and, in the `val` column
        beside each setting, the test accuracy at the epoch the validation split picks."""
        from fernoise.report import report

        typer.echo(report(runs, fmt="csv" if csv else "markdown"), nl=False)
