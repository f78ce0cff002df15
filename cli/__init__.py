"""The Typer command-line app of fernoise (installed as the import package ``fernoise_cli``)."""
