"""The ``fernoise`` command: one thin sub-command per stage."""

from __future__ import annotations

import os

import typer

from fernoise import __version__
from fernoise.cli.common import hide_flag_metavars

hide_flag_metavars()

app = typer.Typer(
    name="fernoise",
    help="Facial expression recognition under noisy labels: align, corrupt, train, eval.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"fernoise {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version."
    ),
    debug: bool = typer.Option(
        False, "--debug", help="Show tracebacks instead of one-line errors."
    ),
) -> None:
    if debug:
        os.environ["FERNOISE_DEBUG"] = "1"
    from fernoise import cache

    cache.LATEST_NOTICE = _took


def _took(stage: str, output, lock) -> None:
    """Say which input a command took from the workspace lock (a bare `fernoise pretrain`
    takes the latest manifest: the user sees which)."""
    from fernoise.cli.common import err_console

    err_console.print(
        f"using {output} (the latest `fernoise {stage}` output recorded in {lock})",
        soft_wrap=True,
        markup=False,
        highlight=False,
    )


def _register() -> None:
    # Each command lives in its own module; importing them is cheap (no torch at import).
    from fernoise.cli import (
        align,
        audit,
        backbones,
        clean,
        corrupt,
        demo,
        evaluate,
        methods,
        predict,
        pretrain,
        report,
        split,
        sweep,
        train,
    )

    for mod in (
        demo,
        align,
        corrupt,
        split,
        pretrain,
        train,
        audit,
        clean,
        methods,
        backbones,
        evaluate,
        predict,
        report,
        sweep,
    ):
        mod.register(app)


_register()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
