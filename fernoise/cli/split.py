"""`fernoise split`: subject-independent k-fold (or leave-one-subject-out) manifests."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fernoise.cli.common import ForceOpt, SeedOpt, WorkspaceOpt, console, handle_errors, wrote

HELP = (
    "Split a manifest into subject-independent folds: one manifest per fold.\n\n"
    "Fold i's groups (e.g. subjects) are its test rows, whole groups carved from the others its val rows "
    "(--val-fraction of them), the rest its train rows; no group is in two parts, and every row is a test "
    "row exactly once. Folds are stratified by label where the groups allow. Writes "
    "<stem>.fold-<i>-of-<K>-s<seed>.parquet (i from 0) beside MANIFEST or in --out. Split the clean "
    "manifest, then corrupt and train each fold. Without MANIFEST, the latest `fernoise align` or `fernoise clean` output."
)


def print_folds(res, classes: list[str]) -> None:
    from rich import box
    from rich.table import Table

    table = Table(
        title=f"{len(res.folds)} folds over {res.groups} groups (test class counts)",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        collapse_padding=True,
        pad_edge=False,
    )
    for name in ("fold", "test groups", "train", "val", "test"):
        table.add_column(name, justify="right" if name != "test groups" else "left", no_wrap=True)
    for c in classes:
        table.add_column(c[:4], justify="right", no_wrap=True)
    for f in res.folds:
        shown = ", ".join(f.test_groups[:4]) + (
            f", ... ({len(f.test_groups)})" if len(f.test_groups) > 4 else ""
        )
        rows = f.info["rows"]
        table.add_row(
            str(f.index),
            shown,
            str(rows["train"]),
            str(rows["val"]),
            str(rows["test"]),
            *map(str, f.info["class_counts"]["test"]),
        )
    console.print(table)


def register(app: typer.Typer) -> None:
    @app.command(name="split", help=HELP)
    @handle_errors
    def split_cmd(
        manifest: Annotated[
            Path | None,
            typer.Argument(
                metavar="MANIFEST",
                help="Clean manifest with a group column (default: the latest aligned or cleaned one). A folder means its manifest.parquet.",
            ),
        ] = None,
        group_column: Annotated[
            str,
            typer.Option(
                "--group-column",
                help="Column holding each row's group, e.g. the subject (align --group-column/--group-regex).",
            ),
        ] = "subject",
        folds: Annotated[
            int | None, typer.Option("--folds", help="Number of folds K (default: 10).")
        ] = None,
        loso: Annotated[
            bool, typer.Option("--loso", help="Leave one subject out: one fold per group.")
        ] = False,
        val_fraction: Annotated[
            float,
            typer.Option(
                "--val-fraction",
                help="Share of each fold's non-test groups that become val (whole groups); 0 = none.",
            ),
        ] = 0.1,
        seed: SeedOpt = 0,
        out: Annotated[
            Path | None,
            typer.Option(
                "--out",
                help="Folder for the fold manifests (default: beside MANIFEST; crop paths are re-based).",
            ),
        ] = None,
        force: ForceOpt = False,
        workspace: WorkspaceOpt = None,
    ) -> None:
        from fernoise.cache import Workspace
        from fernoise.manifest import read_meta
        from fernoise.split import SplitParams, run_split

        params = SplitParams(
            group_column=group_column,
            folds=None if loso else (10 if folds is None else folds),
            loso=loso,
            seed=seed,
            val_fraction=val_fraction,
        )
        if loso and folds is not None:
            SplitParams(group_column=group_column, folds=folds, loso=True)  # the one-line error
        res = run_split(
            manifest,
            params,
            out=out,
            force=force,
            workspace=Workspace(workspace) if workspace is not None else None,
        )
        print_folds(res, list(read_meta(res.outputs[0]).get("classes") or []))
        for p, hit in zip(res.outputs, res.hits, strict=True):
            wrote(p, hit=hit)
        first = res.outputs[0].name.replace("-0-of-", "-$i-of-")
        console.print(
            f"train each fold: for i in $(seq 0 {len(res.outputs) - 1}); do fernoise train "
            f"{res.outputs[0].parent}/{first}; done",
            soft_wrap=True,
        )
