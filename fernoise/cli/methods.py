"""`fernoise methods`: the training methods (registry: ``fernoise.methods``) as blocks that
read at 80 columns, a GitHub table or JSON (``--format``)."""

from __future__ import annotations

from dataclasses import asdict, fields
from typing import Any

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

FIELDS = (
    ("summary", "what it does"),
    ("source", "source"),
    ("repo", "code"),
    ("defaults", "defaults"),
    ("views", "views"),
    ("face_pretrained", "face-pretrained"),
)
NOTE = (
    "Optimiser: backbone/head lr; --epochs, --batch-size, --lr-* and --weight-decay override. "
    "face-pretrained: whether the paper's numbers start from a face-recognition backbone. "
    "What each method computes: docs/methods.md."
)


def _defaults(cls) -> str:
    o = cls.optim
    opt = f"Adam {o.lr_backbone:g}/{o.lr_head:g}"
    if o.weight_decay:
        opt += f" wd {o.weight_decay:g}"
    if o.lr_decay:
        opt += f" x{o.lr_decay:g}/epoch"
    opt += f", {o.epochs} ep, batch {o.batch_size}"
    opt += ", warm-up min(5, ep // 3)" if cls.warmup is None else f", warm-up {cls.warmup}"
    flags = cls.describe_params()
    return f"{flags}; {opt}" if flags else opt


def rows() -> list[dict[str, Any]]:
    """One dict per method, every field: the text columns and, for JSON, the values."""
    from fernoise import methods

    out = []
    for name in methods.names():
        cls = methods.get(name)
        params = cls.Params()
        out.append(
            {
                "method": name,
                "summary": cls.summary,
                "source": cls.source,
                "repo": cls.repo,
                "defaults": _defaults(cls),
                "views": ", ".join(cls.views),
                "face_pretrained": "yes" if cls.face_pretrained else "no",
                "optimiser": asdict(cls.optim),
                "warmup": cls.warmup,
                "params": {f.metadata["flag"]: getattr(params, f.name) for f in fields(params)},
            }
        )
    return out


def register(app: typer.Typer) -> None:
    @app.command(
        name="methods",
        help="List the training methods: source, defaults, views, backbone assumption.",
    )
    @handle_errors
    def methods_cmd(fmt: FormatOpt = "table") -> None:
        check_format(fmt)
        table = rows()
        if fmt == "json":
            for r in table:
                r["views"] = r["views"].split(", ")
                r["face_pretrained"] = r["face_pretrained"] == "yes"
            show(as_json(table))
        elif fmt == "markdown":
            show(markdown(table, [("method", "method"), *FIELDS]))
        else:
            show("fernoise train --method NAME\n")
            show(blocks(table, "method", FIELDS, console.width))
            show("\n" + paragraph(NOTE, console.width))
