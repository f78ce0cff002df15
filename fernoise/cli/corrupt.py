"""`fernoise corrupt`: exact, reproducible label noise on a manifest's training rows."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fernoise.cli.common import SeedOpt, WorkspaceOpt, console, handle_errors, wrote

HELP = (
    "Corrupt the training labels of a manifest (sym, asym, matrix or column noise, or a peer's "
    "noisy-label list), exactly and reproducibly.\n\n"
    "Writes a new manifest beside the input (e.g. manifest.sym-r0.30-s0.parquet) with label (noisy), "
    "label_clean and is_noisy, and prints the realised transition matrix and rates. "
    "Without MANIFEST, the latest `fernoise align` or `fernoise clean` output of the workspace is used."
)


def print_noise(noise: dict) -> None:
    """The realised transition matrix (true x noisy, counts) and the realised rates."""
    from rich import box
    from rich.table import Table

    classes = noise.get("classes") or []
    t = noise.get("transition") or []
    # compact enough for 8 classes in 80 columns: 4-letter headers, no vertical rules
    table = Table(
        title="realised transitions: rows clean label, columns noisy label (counts)",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        collapse_padding=True,
        pad_edge=False,
    )
    table.add_column("clean", style="bold", no_wrap=True)
    for c in classes:
        table.add_column(c[:4], justify="right", no_wrap=True)
    table.add_column("n", justify="right", no_wrap=True)
    table.add_column("flip", justify="right", no_wrap=True)
    table.add_column("rate", justify="right", no_wrap=True)
    for i, c in enumerate(classes):
        row = [
            f"[dim]{v}[/dim]" if v == 0 else (f"[green]{v}[/green]" if i == j else str(v))
            for j, v in enumerate(t[i])
        ]
        rate = noise["rate_per_class"][i]
        table.add_row(
            c,
            *row,
            str(noise["n"][i]),
            str(noise["flipped"][i]),
            "-" if rate is None else f"{rate:.4f}",
        )
    console.print(table)
    overall = noise.get("rate_overall")
    flipped, n = sum(noise.get("flipped", [])), sum(noise.get("n", []))
    line = (
        f"realised rate: {overall:.4f} ({flipped:,} of {n:,} labelled training rows)"
        if overall is not None
        else "realised rate: -"
    )
    if noise.get("kind") == "column":
        line += f"; {noise.get('missing', 0):,} training rows have no {noise.get('column')} (label null)"
        outside = noise.get("outside") or {}
        if outside:
            shown = ", ".join(f"{k} {v:,}" for k, v in outside.items())
            line += (
                f"; {sum(outside.values()):,} have a class this manifest does not have ({shown}): "
                "label null, left out of the matrix"
            )
    console.print(line)
    if noise.get("kind") == "list":
        console.print(list_line(noise), soft_wrap=True)


def list_line(noise: dict) -> str:
    """What a ``--kind list`` file matched: names, rows it names, rows it does not, names
    matching no row, names of rows outside the training split (first few of each named)."""
    info = noise.get("list") or {}

    def some(n: int, examples: list) -> str:
        shown = ", ".join(examples) + (", ..." if n > len(examples) else "")
        return f"{n:,}" + (f" ({shown})" if n else "")

    line = (
        f"list {info.get('file', '')} ({info.get('numbering')} numbering): {info.get('names', 0):,} "
        f"names; {info.get('named_rows', 0):,} training rows named; "
        f"{some(info.get('unlisted_rows', 0), info.get('unlisted_examples', []))} training rows "
        "not named (label kept); "
        f"{some(info.get('unmatched_names', 0), info.get('unmatched_examples', []))} names match "
        "no row; "
        f"{some(info.get('non_train_names', 0), info.get('non_train_examples', []))} name rows "
        "outside the training split (left as they are)"
    )
    outside = noise.get("outside") or {}
    if outside:
        shown = ", ".join(f"{k} {v:,}" for k, v in outside.items())
        line += f"; {sum(outside.values()):,} get a class this manifest lacks ({shown}): label null"
    return line


# The options of `fernoise corrupt`, in the order of its signature.
ManifestArg = Annotated[
    Path | None,
    typer.Argument(
        metavar="MANIFEST",
        help="Manifest to corrupt (default: the latest aligned or cleaned one). A folder means its manifest.parquet.",
    ),
]
KindOpt = Annotated[str | None, typer.Option("--kind", help="sym, asym, matrix, column or list.")]
RateOpt = Annotated[
    float | None,
    typer.Option("--rate", help="Fraction of each class to flip, in [0, 1) (sym, asym)."),
]
PairsOpt = Annotated[
    Path | None,
    typer.Option(
        "--pairs", help="asym: CSV 'from,to' or JSON {from: to} replacing the paper's pairs."
    ),
]
MatrixOpt = Annotated[
    Path | None,
    typer.Option("--matrix", help="matrix: C x C CSV or .npy, rows = true class, rows sum to 1."),
]
ColumnOpt = Annotated[
    str | None,
    typer.Option("--column", help="column: the manifest column holding the noisy annotation."),
]
FromOpt = Annotated[
    Path | None,
    typer.Option(
        "--from",
        help="list: a noisy-label list, '<image name> <label>' per line, as SCN, RUL and EAC ship them (names matched without folders, extension and _aligned).",
    ),
]
NumberingOpt = Annotated[
    str | None,
    typer.Option(
        "--label-numbering",
        help="list: raf (RAF-DB 1-7, EAC/RUL), raf0 (0-6 in RAF-DB's order, SCN), canonical (0 neutral ... 7 contempt) or names (default: names if the labels are words, raf if 1-7).",
    ),
]
CorruptForceOpt = Annotated[
    bool,
    typer.Option(
        "--force",
        help="Allow noise on an already corrupted manifest; recompute even on a cache hit.",
    ),
]
OutOpt = Annotated[
    Path | None,
    typer.Option(
        "--out",
        help="Output path (default: beside the input, named by kind, rate, seed); relative crop paths are re-based to its folder.",
    ),
]


@handle_errors
def corrupt_cmd(
    manifest: ManifestArg = None,
    kind: KindOpt = None,
    rate: RateOpt = None,
    seed: SeedOpt = 0,
    pairs: PairsOpt = None,
    matrix: MatrixOpt = None,
    column: ColumnOpt = None,
    from_file: FromOpt = None,
    numbering: NumberingOpt = None,
    force: CorruptForceOpt = False,
    out: OutOpt = None,
    workspace: WorkspaceOpt = None,
) -> None:
    """`fernoise corrupt` (help: :data:`HELP`): run the stage, print what it wrote and the
    realised noise."""
    from fernoise.cache import Workspace
    from fernoise.corrupt.stage import run_corrupt

    res = run_corrupt(
        manifest,
        kind=kind,
        rate=rate,
        seed=seed,
        pairs_file=pairs,
        matrix_file=matrix,
        column=column,
        list_file=from_file,
        numbering=numbering,
        force=force,
        out=out,
        workspace=Workspace(workspace) if workspace is not None else None,
    )
    wrote(res.output, hit=res.hit)
    print_noise(res.noise)


def register(app: typer.Typer) -> None:
    app.command(name="corrupt", help=HELP)(corrupt_cmd)
