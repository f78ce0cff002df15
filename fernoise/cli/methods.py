"""`fernoise methods`: the table of training methods (registry: ``fernoise.methods``)."""

from __future__ import annotations

import typer

from fernoise.cli.common import console, handle_errors


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
    return f"{flags}\n{opt}" if flags else opt


def register(app: typer.Typer) -> None:
    @app.command(
        name="methods",
        help="List the training methods: source, defaults, views, backbone assumption.",
    )
    @handle_errors
    def methods_cmd() -> None:
        from rich.table import Table

        from fernoise import methods

        table = Table(show_lines=True, title="fernoise train --method NAME")
        for col in (
            "method",
            "what it does",
            "source (paper; code)",
            "defaults (flags; optimiser)",
            "views",
            "face-pretrained\nbackbone in paper",
        ):
            table.add_column(col, overflow="fold")
        for name in methods.names():
            cls = methods.get(name)
            table.add_row(
                name,
                cls.summary,
                f"{cls.source}\n{cls.repo}",
                _defaults(cls),
                ", ".join(cls.views),
                "yes" if cls.face_pretrained else "no",
            )
        console.print(table)
        console.print(
            "Optimiser: backbone/head lr; --epochs, --batch-size, --lr-* and --weight-decay override. "
            "What each method computes: docs/methods.md.",
            soft_wrap=True,
        )
