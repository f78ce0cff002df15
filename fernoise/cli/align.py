"""`fernoise align`: a folder of photos (+ labels) -> aligned crops and a Parquet manifest."""

from __future__ import annotations

import os
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
    if lab.get("format") and lab.get("format") != "folders":
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


def register(app: typer.Typer) -> None:
    @app.command(name="align", help=HELP)
    @handle_errors
    def align_cmd(
        raw: Annotated[
            Path | None,
            typer.Argument(
                metavar="RAW", help="Folder of images (class or split sub-folders allowed)."
            ),
        ] = None,
        out: Annotated[
            Path | None,
            typer.Argument(metavar="OUT", help="Output folder: manifest.parquet and faces/."),
        ] = None,
        labels: Annotated[
            list[Path] | None,
            typer.Option(
                "--labels",
                help="Label file (repeatable, e.g. AffectNet's training.csv and validation.csv).",
            ),
        ] = None,
        fmt: Annotated[
            str | None,
            typer.Option("--format", help="Label file format: rafdb, ferplus, affectnet or csv."),
        ] = None,
        path_column: Annotated[
            str | None,
            typer.Option("--path-column", help="csv: column of image paths (default: path)."),
        ] = None,
        label_column: Annotated[
            str | None,
            typer.Option(
                "--label-column",
                help="csv: column of class names or canonical indices (default: label).",
            ),
        ] = None,
        split_column: Annotated[
            str | None,
            typer.Option(
                "--split-column", help="csv: column of splits (train/val/test or aliases)."
            ),
        ] = None,
        on_duplicate: Annotated[
            str | None,
            typer.Option(
                "--on-duplicate",
                help="first or last: the row that counts where label rows name one image with different labels or splits (default: refuse such a file).",
            ),
        ] = None,
        split_map: Annotated[
            list[str] | None,
            typer.Option(
                "--split-map",
                help="FROM=TO split rename after reading splits, e.g. val=test (repeatable).",
            ),
        ] = None,
        join: Annotated[
            Path | None,
            typer.Option("--join", help="CSV whose extra columns are added to matching rows."),
        ] = None,
        join_on: Annotated[
            str | None,
            typer.Option("--join-on", help="Path column of the --join file (default: path)."),
        ] = None,
        join_columns: Annotated[
            str | None,
            typer.Option(
                "--join-columns",
                help="Comma-separated columns to take from --join (default: all the manifest lacks).",
            ),
        ] = None,
        classes: Annotated[
            str | None,
            typer.Option(
                "--classes",
                help="The dataset's classes, comma-separated (e.g. happy,sad,anger) or basic7/basic8; kept in canonical order (default: the format's, else the classes that occur).",
            ),
        ] = None,
        group_column: Annotated[
            str | None,
            typer.Option(
                "--group-column",
                help="Label-file column to keep as the row's group (e.g. subject), as written; with --group-regex, the column it fills (default: subject).",
            ),
        ] = None,
        group_regex: Annotated[
            str | None,
            typer.Option(
                "--group-regex",
                help="Regex searched in each image path (relative to RAW); its first group is the row's group, e.g. 'S(\\d+)_'.",
            ),
        ] = None,
        max_rows: Annotated[
            int | None,
            typer.Option(
                "--max-rows",
                help="Align only a seeded subset of this many images, stratified by split and label.",
            ),
        ] = None,
        seed: Annotated[int, typer.Option("--seed", help="Seed of the --max-rows subset.")] = 0,
        preset: Annotated[
            str | None,
            typer.Option(
                "--preset",
                help=f"Dataset preset: {', '.join(preset_names())}; or a path to a .toml file. Options given explicitly win.",
            ),
        ] = None,
        mode: Annotated[
            str | None,
            typer.Option(
                "--mode",
                help="align (5-point similarity), box (square box crop) or whole (no detection) (default: align).",
            ),
        ] = None,
        on_no_face: Annotated[
            str | None,
            typer.Option(
                "--on-no-face",
                help="skip or whole: what a photo without a detected face gets (default: skip).",
            ),
        ] = None,
        all_faces: Annotated[
            bool | None,
            typer.Option(
                "--all-faces/--best-face",
                help="One row per detected face instead of the most confident one.",
            ),
        ] = None,
        size: Annotated[
            int | None, typer.Option("--size", help="Crop side in pixels (default: 224).")
        ] = None,
        margin: Annotated[
            float | None,
            typer.Option(
                "--margin", help="Border around the face, fraction per side (default: 0.1)."
            ),
        ] = None,
        image_format: Annotated[
            str | None, typer.Option("--image-format", help="jpg or png (default: jpg).")
        ] = None,
        jpeg_quality: Annotated[
            int | None, typer.Option("--jpeg-quality", help="JPEG quality 1-100 (default: 95).")
        ] = None,
        min_face_size: Annotated[
            int | None,
            typer.Option(
                "--min-face-size", help="MTCNN minimum face size in pixels (default: 20)."
            ),
        ] = None,
        min_prob: Annotated[
            float | None,
            typer.Option(
                "--min-prob", help="Drop faces below this detector probability (default: 0.9)."
            ),
        ] = None,
        detect_size: Annotated[
            int | None,
            typer.Option(
                "--detect-size",
                help="Longest side of the copy the detector sees; 0 = full size (default: 1024).",
            ),
        ] = None,
        thresholds: Annotated[
            str | None,
            typer.Option("--thresholds", help="MTCNN P,R,O thresholds (default: 0.6,0.7,0.7)."),
        ] = None,
        workers: Annotated[
            int,
            typer.Option(
                "--workers", help="Threads decoding, warping and saving while MTCNN runs."
            ),
        ] = 2,
        batch_size: Annotated[
            int,
            typer.Option("--batch-size", help="Images per detection batch (and per cache chunk)."),
        ] = 32,
        shard: Annotated[
            str | None,
            typer.Option(
                "--shard",
                help=f"Align only one share of the images ({SHARD_HELP}; under torchrun one per rank); shares merge when all exist.",
            ),
        ] = None,
        merge: Annotated[
            bool,
            typer.Option(
                "--merge", help="Only merge OUT's shard manifests into OUT/manifest.parquet."
            ),
        ] = False,
        device: DeviceOpt = "auto",
        force: ForceOpt = False,
        workspace: WorkspaceOpt = None,
    ) -> None:
        from fernoise.cache import Workspace
        from fernoise.errors import FernoiseError

        ws = Workspace(workspace) if workspace is not None else Workspace()
        if merge:
            from fernoise.align.stage import merge_shards

            target = Path(out or raw or ".")
            if out is None and raw is not None:
                target = raw
            path = merge_shards(target, workspace=ws)
            wrote(path, what="merged")
            return
        if raw is None or out is None:
            raise FernoiseError("expected RAW and OUT folders: fernoise align RAW OUT", flag="RAW")

        given = {
            k: v
            for k, v in {
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
            }.items()
            if v is not None
        }
        opts = {**DEFAULTS, **(load_preset(preset) if preset else {}), **given}

        from fernoise.align.faces import AlignParams
        from fernoise.align.stage import LabelSpec, align_folder, shard_from_env
        from fernoise.shards import parse_shard

        def as_list(v, sep=","):
            if v is None:
                return None
            if isinstance(v, str):
                return [x.strip() for x in v.split(sep) if x.strip()]
            return list(v)

        thr = as_list(opts.get("thresholds"))
        try:
            thr_t = tuple(float(x) for x in thr) if thr else None
        except ValueError:
            raise FernoiseError(
                f"expected three numbers like 0.6,0.7,0.7, got {opts.get('thresholds')!r}",
                flag="--thresholds",
            ) from None
        pkw = {
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
        params = AlignParams(**pkw)

        pairs = []
        for item in as_list(opts.get("split_map")) or []:
            a, eq, b = item.partition("=")
            if not eq:
                raise FernoiseError(
                    f"expected FROM=TO (e.g. val=test), got {item!r}", flag="--split-map"
                )
            from fernoise.formats import normalize_split

            pairs.append(
                (normalize_split(a, flag="--split-map"), normalize_split(b, flag="--split-map"))
            )
        spec = LabelSpec(
            files=tuple(str(p) for p in labels or ()),
            format=opts.get("format"),
            path_column=opts["path_column"],
            label_column=opts["label_column"],
            split_column=opts.get("split_column"),
            split_map=tuple(pairs),
            join=str(join) if join else None,
            join_on=opts["join_on"],
            join_columns=tuple(as_list(opts.get("join_columns")) or ()) or None,
            classes=_class_option(opts.get("classes")),
            group_column=opts.get("group_column"),
            group_regex=opts.get("group_regex"),
            max_rows=max_rows,
            seed=seed,
            on_duplicate=opts.get("on_duplicate"),
        )
        if shard:
            i, n = parse_shard(shard)
            sh = (i - 1, n)  # the library counts shards from 0, as RANK
        else:
            sh = shard_from_env()

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
            import time

            now = time.perf_counter()
            if "task" not in state:
                state.update(task=bar.add_task("align", total=total, rate="-"), t0=now, d0=done)
                bar.start()
            rate = (done - state["d0"]) / max(now - state["t0"], 1e-9)
            bar.update(
                state["task"], completed=done, rate=f"{rate:.1f}" if done > state["d0"] else "-"
            )

        try:
            result = align_folder(
                raw,
                out,
                params,
                spec,
                workers=workers,
                batch_size=batch_size,
                shard=sh,
                device=device,
                progress=progress,
                force=force,
                workspace=ws,
            )
        finally:
            bar.stop()
        print_summary(result, shown_path=result.manifest)
        if result.merged is not None:
            wrote(result.merged, what="merged shards into")
