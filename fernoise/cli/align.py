"""`fernoise align`: a folder of photos (+ labels) -> aligned crops and a Parquet manifest."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from fernoise.align.presets import load_preset, preset_names
from fernoise.cli.common import (
    DeviceOpt,
    ForceOpt,
    WorkspaceOpt,
    console,
    err_console,
    handle_errors,
    isatty,
    with_panels,
    wrote,
)
from fernoise.shards import HELP as SHARD_HELP

HELP = (
    "Detect, align and crop the faces of every image under RAW into OUT.\n\n"
    "Writes OUT/manifest.parquet (one row per image, or per face with --all-faces; a status and "
    "reason for every file) and OUT/faces/. Labels come from class sub-folders, or from "
    "--labels FILE --format rafdb|ferplus|affectnet|csv. Cached per image: a re-run, or a run "
    "killed half-way and started again, redoes only what changed."
)

DEFAULTS: dict[str, Any] = {"path_column": "path", "label_column": "label", "join_on": "path"}


def _class_option(value) -> tuple[str, ...] | None:
    """``--classes`` (or a preset's ``classes``, a string or a list) -> canonical names in order."""
    if value is None:
        return None
    from fernoise.labels import class_list

    return tuple(class_list(value, flag="--classes"))


def _n(count: int, one: str, many: str) -> str:
    return f"{count:,} {one if count == 1 else many}"


def label_line(lab: dict[str, Any]) -> str:
    """What became of every row of the label files, in parts that add up to the rows read:
    rows naming an image here + rows naming none + non-face rows skipped + repeats merged."""
    parts = [
        f"{lab.get('matched_rows', 0):,} name an image here",
        f"{lab.get('unmatched_rows', 0):,} name none",
    ]
    if lab.get("non_face_rows"):
        parts.append(_n(lab["non_face_rows"], "non-face row skipped", "non-face rows skipped"))
    if lab.get("duplicate_rows"):
        dup = _n(lab["duplicate_rows"], "repeated row merged", "repeated rows merged")
        if lab.get("conflicting_names"):
            how = (
                f"the {lab['on_duplicate']} row counts"
                if lab.get("on_duplicate")
                else "none names an image here"
            )
            dup += (
                f" ({_n(lab['conflicting_names'], 'name', 'names')} with different labels: {how})"
            )
        parts.append(dup)
    files = ", ".join(lab.get("files") or []) or "the label file"
    no_row = lab.get("images_without_label_row", 0)
    return (
        f"labels ({lab['format']}): {lab.get('rows', 0):,} rows in {files}: {', '.join(parts)}; "
        f"{_n(no_row, 'image', 'images')} without a label row (label null)"
    )


def regex_line(lab: dict[str, Any]) -> str:
    """What ``--label-regex`` made of the file names: images labelled, images it does not
    match (status no_match, first few named), codes nothing maps (status unknown_code)."""
    line = (
        f"labels (file names, {lab.get('regex')}): {lab.get('labelled', 0):,} of "
        f"{lab.get('images', 0):,} images labelled; "
        f"{_n(lab.get('no_match', 0), 'image does', 'images do')} not match (status no_match, label null)"
    )
    if lab.get("no_match_examples"):
        more = ", ..." if lab["no_match"] > len(lab["no_match_examples"]) else ""
        line += f": {', '.join(lab['no_match_examples'])}{more}"
    unknown = lab.get("unknown_codes") or {}
    if unknown:
        shown = ", ".join(f"{k} {v:,}" for k, v in unknown.items())
        line += f"; codes no class is given for (status unknown_code, label null): {shown}"
    return line


def print_summary(result, *, shown_path: Path) -> None:
    from rich.table import Table

    table = Table(title="rows per status", title_justify="left")
    table.add_column("status")
    table.add_column("rows", justify="right")
    for status, n in sorted(result.counts.items(), key=lambda kv: -kv[1]):
        table.add_row(status, f"{n:,}")
    table.add_row("[bold]total[/bold]", f"[bold]{result.rows:,}[/bold]")
    console.print(table)
    info = result.info or {}
    lab = info.get("labels") or {}
    if lab.get("format") == "regex":
        console.print(regex_line(lab), soft_wrap=True)
    elif lab.get("format") and lab.get("format") != "folders":
        console.print(label_line(lab), soft_wrap=True)
    if info.get("classes"):
        console.print(f"classes ({info.get('label_space')}): {', '.join(info['classes'])}")
    if info.get("groups"):
        g = info["groups"]
        console.print(
            f"groups ({g['column']}, from the {'file names' if g['source'] == 'regex' else 'label file'}): "
            f"{g['groups']:,} distinct; {g['images_without_group']:,} images have none"
        )
    if info.get("subset"):
        sub = info["subset"]
        console.print(
            f"subset (--max-rows {sub['max_rows']}, seed {sub['seed']}): {sub['images_kept']:,} of "
            f"{sub['images_total']:,} images, stratified by split and label"
        )
    if info.get("skipped_folders"):
        sk = info["skipped_folders"]
        shown = ", ".join(f"{x['folder']} ({x['reason']})" for x in sk[:3]) + (
            ", ..." if len(sk) > 3 else ""
        )
        console.print(
            f"skipped {len(sk)} folder(s) under RAW holding fernoise output: {shown}",
            soft_wrap=True,
        )
    if info.get("join"):
        j = info["join"]
        console.print(
            f"join ({j['file']}): {j['matched_images']:,} images matched; columns {', '.join(j['columns'])}"
        )
    if not result.hit and "realigned" in info:
        console.print(
            f"aligned {info['realigned']:,} images, reused {info['reused']:,} from the per-image cache "
            f"({result.seconds:.1f} s)"
        )
    wrote(shown_path, hit=result.hit)


# The options of `fernoise align`, in the order of its signature.
RawArg = Annotated[
    Path | None,
    typer.Argument(metavar="RAW", help="Folder of images (class or split sub-folders allowed)."),
]
OutArg = Annotated[
    Path | None,
    typer.Argument(metavar="OUT", help="Output folder: manifest.parquet and faces/."),
]
LabelsOpt = Annotated[
    list[Path] | None,
    typer.Option(
        "--labels",
        help="Label file (repeatable, e.g. AffectNet's training.csv and validation.csv).",
    ),
]
FormatOpt = Annotated[
    str | None,
    typer.Option("--format", help="Label file format: rafdb, ferplus, affectnet or csv."),
]
PathColumnOpt = Annotated[
    str | None,
    typer.Option("--path-column", help="csv: column of image paths (default: path)."),
]
LabelColumnOpt = Annotated[
    str | None,
    typer.Option(
        "--label-column",
        help="csv: column of class names or canonical indices (default: label).",
    ),
]
SplitColumnOpt = Annotated[
    str | None,
    typer.Option("--split-column", help="csv: column of splits (train/val/test or aliases)."),
]
OnDuplicateOpt = Annotated[
    str | None,
    typer.Option(
        "--on-duplicate",
        help="first or last: the row that counts where label rows name one image with different labels or splits (default: refuse such a file).",
    ),
]
SplitMapOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--split-map",
        help="FROM=TO split rename after reading splits, e.g. val=test (repeatable).",
    ),
]
JoinOpt = Annotated[
    Path | None,
    typer.Option("--join", help="CSV whose extra columns are added to matching rows."),
]
JoinOnOpt = Annotated[
    str | None,
    typer.Option("--join-on", help="Path column of the --join file (default: path)."),
]
JoinColumnsOpt = Annotated[
    str | None,
    typer.Option(
        "--join-columns",
        help="Comma-separated columns to take from --join (default: all the manifest lacks).",
    ),
]
ClassesOpt = Annotated[
    str | None,
    typer.Option(
        "--classes",
        help="The dataset's classes, comma-separated (e.g. happy,sad,anger) or basic7/basic8; kept in canonical order (default: the format's, else the classes that occur).",
    ),
]
GroupColumnOpt = Annotated[
    str | None,
    typer.Option(
        "--group-column",
        help="Label-file column to keep as the row's group (e.g. subject), as written; with --group-regex, the column it fills (default: subject).",
    ),
]
GroupRegexOpt = Annotated[
    str | None,
    typer.Option(
        "--group-regex",
        help="Regex searched in each image path (relative to RAW); its first group is the row's group, e.g. 'S(\\d+)_'.",
    ),
]
LabelRegexOpt = Annotated[
    str | None,
    typer.Option(
        "--label-regex",
        help="Labels from file names: a regex searched in each image path (relative to RAW); its group 'label', else its first group, is the code, e.g. '\\.([A-Z]{2})\\d' for JAFFE's KA.AN1.39.tiff. Rows it does not match get status no_match and no label.",
    ),
]
LabelMapOpt = Annotated[
    str | None,
    typer.Option(
        "--label-map",
        help="CODE=CLASS pairs turning --label-regex codes into classes, e.g. AN=anger,HA=happy (default: the code must be a class name or alias).",
    ),
]
MaxRowsOpt = Annotated[
    int | None,
    typer.Option(
        "--max-rows",
        help="Align only a seeded subset of this many images, stratified by split and label.",
    ),
]
SubsetSeedOpt = Annotated[int, typer.Option("--seed", help="Seed of the --max-rows subset.")]
NameOpt = Annotated[
    str | None,
    typer.Option(
        "--name",
        help="The data set's name, kept in the manifest and used in every heading (default: RAW's folder name).",
        show_default=False,
    ),
]
PresetOpt = Annotated[
    str | None,
    typer.Option(
        "--preset",
        help=f"Dataset preset: {', '.join(preset_names())}; or a path to a .toml file. Options given explicitly win.",
    ),
]
ModeOpt = Annotated[
    str | None,
    typer.Option(
        "--mode",
        help="align (5-point similarity), box (square box crop) or whole (no detection) (default: align).",
    ),
]
OnNoFaceOpt = Annotated[
    str | None,
    typer.Option(
        "--on-no-face",
        help="skip or whole: what a photo without a detected face gets (default: skip).",
    ),
]
AllFacesOpt = Annotated[
    bool | None,
    typer.Option(
        "--all-faces/--best-face",
        help="One row per detected face instead of the most confident one.",
    ),
]
SizeOpt = Annotated[int | None, typer.Option("--size", help="Crop side in pixels (default: 224).")]
MarginOpt = Annotated[
    float | None,
    typer.Option("--margin", help="Border around the face, fraction per side (default: 0.1)."),
]
ImageFormatOpt = Annotated[
    str | None, typer.Option("--image-format", help="jpg or png (default: jpg).")
]
JpegQualityOpt = Annotated[
    int | None, typer.Option("--jpeg-quality", help="JPEG quality 1-100 (default: 95).")
]
MinFaceSizeOpt = Annotated[
    int | None,
    typer.Option("--min-face-size", help="MTCNN minimum face size in pixels (default: 20)."),
]
MinProbOpt = Annotated[
    float | None,
    typer.Option("--min-prob", help="Drop faces below this detector probability (default: 0.9)."),
]
DetectSizeOpt = Annotated[
    int | None,
    typer.Option(
        "--detect-size",
        help="Longest side of the copy the detector sees; 0 = full size (default: 1024).",
    ),
]
ThresholdsOpt = Annotated[
    str | None,
    typer.Option("--thresholds", help="MTCNN P,R,O thresholds (default: 0.6,0.7,0.7)."),
]
WorkersOpt = Annotated[
    int,
    typer.Option("--workers", help="Threads decoding, warping and saving while MTCNN runs."),
]
BatchSizeOpt = Annotated[
    int,
    typer.Option("--batch-size", help="Images per detection batch (and per cache chunk)."),
]
ShardOpt = Annotated[
    str | None,
    typer.Option(
        "--shard",
        help=f"Align only one share of the images ({SHARD_HELP}; under torchrun one per rank); shares merge when all exist.",
    ),
]
MergeOpt = Annotated[
    bool,
    typer.Option("--merge", help="Only merge OUT's shard manifests into OUT/manifest.parquet."),
]


@handle_errors
def align_cmd(
    raw: RawArg = None,
    out: OutArg = None,
    labels: LabelsOpt = None,
    fmt: FormatOpt = None,
    path_column: PathColumnOpt = None,
    label_column: LabelColumnOpt = None,
    split_column: SplitColumnOpt = None,
    on_duplicate: OnDuplicateOpt = None,
    split_map: SplitMapOpt = None,
    join: JoinOpt = None,
    join_on: JoinOnOpt = None,
    join_columns: JoinColumnsOpt = None,
    classes: ClassesOpt = None,
    group_column: GroupColumnOpt = None,
    group_regex: GroupRegexOpt = None,
    label_regex: LabelRegexOpt = None,
    label_map: LabelMapOpt = None,
    max_rows: MaxRowsOpt = None,
    seed: SubsetSeedOpt = 0,
    name: NameOpt = None,
    preset: PresetOpt = None,
    mode: ModeOpt = None,
    on_no_face: OnNoFaceOpt = None,
    all_faces: AllFacesOpt = None,
    size: SizeOpt = None,
    margin: MarginOpt = None,
    image_format: ImageFormatOpt = None,
    jpeg_quality: JpegQualityOpt = None,
    min_face_size: MinFaceSizeOpt = None,
    min_prob: MinProbOpt = None,
    detect_size: DetectSizeOpt = None,
    thresholds: ThresholdsOpt = None,
    workers: WorkersOpt = 2,
    batch_size: BatchSizeOpt = 32,
    shard: ShardOpt = None,
    merge: MergeOpt = False,
    device: DeviceOpt = "auto",
    force: ForceOpt = False,
    workspace: WorkspaceOpt = None,
) -> None:
    """`fernoise align` (help: :data:`HELP`): layer defaults, preset and the options given,
    build the parameters, align with a progress bar, print the summary.

    Long: the signature lists the command's 39 arguments and options (one line each, declared
    above), and ``given`` is the table of the 24 a preset may also set (option -> preset key);
    every step after them is a helper below."""
    from fernoise.cache import Workspace
    from fernoise.errors import FernoiseError

    ws = Workspace(workspace) if workspace is not None else Workspace()
    if merge:
        _merge(raw, out, ws)
        return
    if raw is None or out is None:
        raise FernoiseError("expected RAW and OUT folders: fernoise align RAW OUT", flag="RAW")
    given = {
        "format": fmt,
        "path_column": path_column,
        "label_column": label_column,
        "split_column": split_column,
        "split_map": split_map,
        "mode": mode,
        "on_no_face": on_no_face,
        "size": size,
        "margin": margin,
        "image_format": image_format,
        "jpeg_quality": jpeg_quality,
        "min_face_size": min_face_size,
        "min_prob": min_prob,
        "detect_size": detect_size,
        "all_faces": all_faces,
        "join_on": join_on,
        "join_columns": join_columns,
        "thresholds": thresholds,
        "classes": classes,
        "group_column": group_column,
        "group_regex": group_regex,
        "on_duplicate": on_duplicate,
        "label_regex": label_regex,
        "label_map": label_map,
    }
    opts = {
        **DEFAULTS,
        **(load_preset(preset) if preset else {}),
        **{k: v for k, v in given.items() if v is not None},
    }
    params = _align_params(opts)
    spec = _label_spec(opts, labels=labels, join=join, max_rows=max_rows, seed=seed)
    sh = _shard(shard)
    _run(
        raw,
        out,
        params,
        spec,
        workers=workers,
        batch_size=batch_size,
        shard=sh,
        device=device,
        force=force,
        workspace=ws,
        dataset=name,
    )


# The help panels of align's options.
PANELS = {
    **dict.fromkeys(
        ("preset", "name", "max_rows", "seed", "shard", "merge", "force", "workspace"),
        "Input/Output",
    ),
    **dict.fromkeys(
        (
            "labels",
            "fmt",
            "path_column",
            "label_column",
            "split_column",
            "on_duplicate",
            "split_map",
            "classes",
            "label_regex",
            "label_map",
        ),
        "Labels",
    ),
    **dict.fromkeys(
        ("join", "join_on", "join_columns", "group_column", "group_regex"), "Extra columns"
    ),
    **dict.fromkeys(
        (
            "mode",
            "on_no_face",
            "all_faces",
            "min_face_size",
            "min_prob",
            "detect_size",
            "thresholds",
        ),
        "Detection",
    ),
    **dict.fromkeys(("size", "margin", "image_format", "jpeg_quality"), "Crops"),
    **dict.fromkeys(("workers", "batch_size", "device"), "Hardware"),
}


def register(app: typer.Typer) -> None:
    import inspect

    cmd = handle_errors(align_cmd.__wrapped__)  # type: ignore[attr-defined]
    # PEP 362: typer reads __signature__ (typeshed declares none on functions)
    cmd.__signature__ = with_panels(inspect.signature(align_cmd, eval_str=True), PANELS)
    app.command(name="align", help=HELP)(cmd)


def _merge(raw: Path | None, out: Path | None, ws) -> None:
    """``--merge``: merge OUT's (else RAW's, else the current folder's) shard manifests."""
    from fernoise.align.stage import merge_shards

    target = Path(out or raw or ".")
    if out is None and raw is not None:
        target = raw
    path = merge_shards(target, workspace=ws)
    assert path is not None  # without quiet, merge_shards raises instead of returning None
    wrote(path, what="merged")


def _as_list(v: Any, sep: str = ",") -> list[Any] | None:
    """A comma-separated string (from the command line) or a list (from a preset) as a list."""
    if v is None:
        return None
    if isinstance(v, str):
        return [x.strip() for x in v.split(sep) if x.strip()]
    return list(v)


def _align_params(opts: dict[str, Any]):
    """The :class:`~fernoise.align.faces.AlignParams` of the layered options."""
    from fernoise.align.faces import AlignParams
    from fernoise.errors import FernoiseError

    thr = _as_list(opts.get("thresholds"))
    try:
        thr_t = tuple(float(x) for x in thr) if thr else None
    except ValueError:
        raise FernoiseError(
            f"expected three numbers like 0.6,0.7,0.7, got {opts.get('thresholds')!r}",
            flag="--thresholds",
        ) from None
    pkw: dict[str, Any] = {
        k: opts[k]
        for k in (
            "mode",
            "on_no_face",
            "size",
            "margin",
            "image_format",
            "jpeg_quality",
            "min_face_size",
            "min_prob",
            "detect_size",
            "all_faces",
        )
        if k in opts
    }
    if thr_t:
        pkw["thresholds"] = thr_t
    return AlignParams(**pkw)


def _split_pairs(items: list[Any] | None) -> tuple[tuple[str, str], ...]:
    """``--split-map FROM=TO`` items as ``(from, to)`` canonical split names."""
    from fernoise.errors import FernoiseError
    from fernoise.formats import normalize_split

    pairs = []
    for item in items or []:
        a, eq, b = item.partition("=")
        if not eq:
            raise FernoiseError(
                f"expected FROM=TO (e.g. val=test), got {item!r}", flag="--split-map"
            )
        pairs.append(
            (normalize_split(a, flag="--split-map"), normalize_split(b, flag="--split-map"))
        )
    for a, b in pairs:
        if a is None or b is None:  # an empty side: the message LabelSpec gives a bad split
            raise FernoiseError(
                f"expected FROM=TO with train, val or test, got {a}={b}", flag="--split-map"
            )
    return tuple((a, b) for a, b in pairs if a is not None and b is not None)


def _label_spec(
    opts: dict[str, Any], *, labels: list[Path] | None, join: Path | None, max_rows, seed: int
):
    """The :class:`~fernoise.align.stage.LabelSpec` of the layered options."""
    from fernoise.align.stage import LabelSpec
    from fernoise.formats.filenames import parse_label_map

    return LabelSpec(
        files=tuple(str(p) for p in labels or ()),
        format=opts.get("format"),
        path_column=opts["path_column"],
        label_column=opts["label_column"],
        split_column=opts.get("split_column"),
        split_map=_split_pairs(_as_list(opts.get("split_map"))),
        join=str(join) if join else None,
        join_on=opts["join_on"],
        join_columns=tuple(_as_list(opts.get("join_columns")) or ()) or None,
        classes=_class_option(opts.get("classes")),
        group_column=opts.get("group_column"),
        group_regex=opts.get("group_regex"),
        max_rows=max_rows,
        seed=seed,
        on_duplicate=opts.get("on_duplicate"),
        label_regex=opts.get("label_regex"),
        label_map=tuple(parse_label_map(opts.get("label_map")).items()),
    )


def _shard(shard: str | None) -> tuple[int, int] | None:
    """``--shard i/n`` as the library's ``(i - 1, n)`` (it counts from 0, as RANK), else
    torchrun's rank, else None."""
    from fernoise.align.stage import shard_from_env
    from fernoise.shards import parse_shard

    if shard:
        i, n = parse_shard(shard)
        return (i - 1, n)
    return shard_from_env()


def _progress() -> tuple[Any, Callable[[int, int], None]]:
    """``(bar, callback)``: a rich bar on stderr (images/s, time left) fed by ``callback(done,
    total)``, shown on a terminal or with FERNOISE_PROGRESS set."""
    import time

    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    state: dict[str, Any] = {}
    bar = Progress(
        TextColumn("aligning"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]} img/s"),
        TimeRemainingColumn(),
        console=err_console,
        transient=True,
        disable=not isatty() and not os.environ.get("FERNOISE_PROGRESS"),
    )

    def progress(done: int, total: int) -> None:
        now = time.perf_counter()
        if "task" not in state:
            state.update(task=bar.add_task("align", total=total, rate="-"), t0=now, d0=done)
            bar.start()
        rate = (done - state["d0"]) / max(now - state["t0"], 1e-9)
        bar.update(state["task"], completed=done, rate=f"{rate:.1f}" if done > state["d0"] else "-")

    return bar, progress


def _run(raw: Path, out: Path, params, spec, **kw: Any) -> None:
    """Align with a progress bar (``kw``: :func:`~fernoise.align.stage.align_folder`'s
    keywords) and print the summary."""
    from fernoise.align.stage import align_folder

    bar, progress = _progress()
    try:
        result = align_folder(raw, out, params, spec, progress=progress, **kw)
    finally:
        bar.stop()
    print_summary(result, shown_path=result.manifest)
    if result.merged is not None:
        wrote(result.merged, what="merged shards into")
