"""The Typer command-line app of fernoise (console script ``fernoise = fernoise.cli.app:main``)."""
