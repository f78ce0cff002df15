"""`fernoise backbones`: the table of backbones (registry: ``fernoise.backbones``)."""

from __future__ import annotations

import typer

from fernoise.cli.common import console, handle_errors

SIZES = (112, 150, 224)
"""Input sides at which the table gives the last conv map's size."""


def rows() -> list[tuple[str, ...]]:
    """One row per backbone: name, parameters, input sizes, feature width, normalisation, map
    size at :data:`SIZES`, weights source (imports the families for the map sizes)."""
    from fernoise import backbones

    out: list[tuple[str, ...]] = []
    for name in backbones.names():
        c = backbones.get(name)
        maps = ", ".join(f"{s}: {c.map_size(s)}x{c.map_size(s)}" for s in SIZES)
        out.append(
            (
                name,
                f"{c.parameters:,}",
                f">= {c.min_size} px",
                str(c.feature_dim),
                c.normalisation,
                f"{maps}\n{c.map_rule}",
                c.weights + (f"\n({c.license})" if c.license else ""),
            )
        )
    return out


def register(app: typer.Typer) -> None:
    @app.command(
        name="backbones",
        help="List the backbones: parameters, input sizes, feature width, normalisation, weights.",
    )
    @handle_errors
    def backbones_cmd() -> None:
        from rich.table import Table

        table = Table(show_lines=True, title="fernoise train --backbone NAME")
        for col in (
            "backbone",
            "parameters",
            "input side",
            "feature width",
            "input normalisation",
            "last conv map",
            "--pretrained weights",
        ):
            table.add_column(col, overflow="fold")
        for row in rows():
            table.add_row(*row)
        console.print(table)
        console.print(
            "Map sizes and what they mean for Grad-CAM, EAC and RUL: docs/backbones.md.",
            soft_wrap=True,
        )
