"""`fernoise backbones`: the backbones (registry: ``fernoise.backbones``) as blocks that read
at 80 columns, a GitHub table or JSON (``--format``)."""

from __future__ import annotations

import typer

from fernoise.cli.common import console, handle_errors
from fernoise.cli.listing import (
    FormatOpt,
    as_json,
    blocks,
    check_format,
    markdown,
    paragraph,
    show,
)

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


COLUMNS = (
    ("backbone", "backbone"),
    ("parameters", "parameters"),
    ("input_side", "input side"),
    ("feature_width", "feature width"),
    ("normalisation", "input normalisation"),
    ("map", "last conv map"),
    ("weights", "--pretrained weights"),
)
NOTE = "Map sizes and what they mean for Grad-CAM, EAC and RUL: docs/backbones.md."


def register(app: typer.Typer) -> None:
    @app.command(
        name="backbones",
        help="List the backbones: parameters, input sizes, feature width, normalisation, weights.",
    )
    @handle_errors
    def backbones_cmd(fmt: FormatOpt = "table") -> None:
        check_format(fmt)
        table = [dict(zip([k for k, _ in COLUMNS], r, strict=True)) for r in rows()]
        if fmt == "json":
            show(as_json(table))
        elif fmt == "markdown":
            show(markdown(table, COLUMNS))
        else:
            show("fernoise train --backbone NAME\n")
            show(blocks(table, "backbone", COLUMNS[1:], console.width))
            show("\n" + paragraph(NOTE, console.width))
