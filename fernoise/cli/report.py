"""`fernoise report [RUN_OR_GLOB...]`: the paper's tables (methods x noise settings) from runs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fernoise.cli.common import WorkspaceOpt, err_console, handle_errors

HELP = (
    "Compare runs in tables: methods down, noise settings across, one table per dataset and protocol.\n\n"
    "Runs are pooled only when they differ in nothing but their seeds (training and noise seed) and, "
    "for manifests from `fernoise split`, the fold; any other difference (dataset, protocol, options) "
    "gives another row or another table, whose heading names the dataset and the protocol.\n\n"
    "Cells: mean ± std (n) of the test accuracy in % over seeds (std: sample std, ddof=1; one run: no ±; "
    "k-fold: over folds). First the validation-selected figure (the test accuracy at the epoch of best "
    "validation accuracy), then max / last-5 (test-selected: the paper's convention), then the final "
    "model's top-1 with its 95% bootstrap interval when `fernoise eval` was run.\n\n"
    "The table goes to standard output; notes and written pictures go to standard error."
)


def register(app: typer.Typer) -> None:
    @app.command(name="report", help=HELP)
    @handle_errors
    def report_cmd(
        runs: Annotated[
            list[str] | None,
            typer.Argument(
                metavar="RUNS",
                help="Run folders, globs of them (quoted), or folders of runs (default: the workspace's runs/).",
            ),
        ] = None,
        fmt: Annotated[
            str,
            typer.Option(
                "--format",
                help="markdown, csv (one row per cell, figures as fractions) or latex (booktabs).",
            ),
        ] = "markdown",
        csv: Annotated[bool, typer.Option("--csv", help="Same as --format csv.")] = False,
        plot: Annotated[
            bool,
            typer.Option(
                "--plot",
                help="Also write accuracy_vs_noise.png and, where a method selects samples, selection_vs_noise.png.",
            ),
        ] = False,
        plot_dir: Annotated[
            Path, typer.Option("--plot-dir", help="Folder for the --plot pictures.")
        ] = Path("."),
        workspace: WorkspaceOpt = None,
    ) -> None:
        from fernoise.cache import Workspace
        from fernoise.errors import FernoiseError
        from fernoise.report import FORMATS, collect, render
        from fernoise.report import plot as draw

        if fmt not in FORMATS:
            raise FernoiseError(
                f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}", flag="--format"
            )
        if csv:
            if fmt not in ("markdown", "csv"):
                raise FernoiseError(
                    f"--csv and --format {fmt} disagree; pass one of them", flag="--csv"
                )
            fmt = "csv"
        if not runs:
            folder = Workspace(workspace).runs_dir()
            if not folder.is_dir():
                raise FernoiseError(
                    f"no runs folder in the workspace ({folder}); pass run folders, e.g. 'runs/*'",
                    flag="RUNS",
                )
            runs = [str(folder)]
        rep = collect(runs)
        text = render(rep, fmt)
        typer.echo(text, nl=not text.endswith("\n"))
        from rich.markup import escape

        for note in rep.notes:  # escaped: a note quotes paths and file contents, never markup
            err_console.print(f"[yellow]note:[/yellow] {escape(note)}", soft_wrap=True)
        if plot:
            for p in draw(rep, plot_dir):
                err_console.print(f"[green]wrote[/green]: {p}", soft_wrap=True)
