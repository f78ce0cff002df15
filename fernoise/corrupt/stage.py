"""The ``corrupt`` stage runner: read a manifest, key it, corrupt it, write the noisy manifest.

Reads a manifest (default: the latest ``align`` or ``clean`` output of the workspace) and, for ``--pairs``,
``--matrix`` and ``--from`` (a peer's noisy-label list), a small file. Writes ``<stem>.<suffix>.parquet`` beside the input, e.g.
``manifest.sym-r0.30-s0.parquet``, ``manifest.asym-r0.30-s0.parquet``,
``manifest.matrix-<8 hex of the matrix file sha256>-s0.parquet``,
``manifest.column-<name>.parquet`` (a name over 64 bytes: cut, ending in a hash),
``manifest.list-<8 hex of the list file sha256>.parquet``, with the
noise in the metadata (``noise``; see :func:`fernoise.corrupt.kinds.corrupt`), and records stage
``corrupt`` in the workspace lock.

The key is ``stage_key("corrupt", VERSION, params, {"manifest": <input manifest key>,
"content": <content digest of every column>})``: the input is fingerprinted by the key its own
stage recorded (chained fingerprints) and by what the file holds now (corrupt copies every
column, so every column counts), so a manifest edited while keeping its metadata misses the
cache; ``params`` holds only what changes the output plus the sha256 of a pairs/matrix/list
file. A ``--out`` in another folder gets its relative crop paths re-based
(:func:`fernoise.manifest.rebase_paths`), so they resolve from there.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from fernoise.cache import StageResult, Workspace, file_sha256, run_stage
from fernoise.corrupt.kinds import NUMBERINGS, CorruptParams, check_matrix, corrupt, image_key
from fernoise.errors import FernoiseError, require_file
from fernoise.labels import CLASSES, RAFDB_ORDER, canonical_name
from fernoise.manifest import (
    Manifest,
    read_meta,
    rebase_paths,
    resolve_manifest,
    stage_meta,
    write_manifest_table,
)

STAGE = "corrupt"
VERSION = 1


# ----------------------------------------------------------------------------- input files
def load_pairs(path: str | os.PathLike) -> dict[str, str]:
    """Asym pairs from a file: CSV rows ``from,to`` (an optional ``from,to`` header) or a JSON
    object ``{"from": "to", ...}``. Names may be aliases; they come back canonical."""
    path = Path(path)
    require_file(path, "pairs file", flag="--pairs")
    text = path.read_text()
    raw: list[tuple[str, str]] = []
    if path.suffix.lower() == ".json" or text.lstrip().startswith("{"):
        try:
            obj = json.loads(text)
        except ValueError as e:
            raise FernoiseError(f"{path} is not valid JSON ({e})", flag="--pairs") from None
        if not isinstance(obj, dict):
            raise FernoiseError(
                f"expected a JSON object class -> partner in {path}", flag="--pairs"
            )
        raw = [(str(a), str(b)) for a, b in obj.items()]
    else:
        for i, row in enumerate(csv.reader(text.splitlines())):
            cells = [c.strip() for c in row]
            if not any(cells):
                continue
            if len(cells) != 2:
                raise FernoiseError(
                    f"{path} line {i + 1}: expected 'from,to', found {row}", flag="--pairs"
                )
            if i == 0 and [c.lower() for c in cells] == ["from", "to"]:
                continue
            raw.append((cells[0], cells[1]))
    pairs: dict[str, str] = {}
    for a, b in raw:
        ca, cb = canonical_name(a, flag="--pairs"), canonical_name(b, flag="--pairs")
        if ca in pairs and pairs[ca] != cb:
            raise FernoiseError(
                f"class {ca!r} has two partners in {path}: {pairs[ca]!r} and {cb!r}", flag="--pairs"
            )
        pairs[ca] = cb
    if not pairs:
        raise FernoiseError(f"{path} names no pairs", flag="--pairs")
    return pairs


def load_matrix(path: str | os.PathLike) -> np.ndarray:
    """A transition matrix from ``.npy`` or CSV (numbers only, or with a header row and/or a
    first column of class names, which are ignored: rows and columns are in class order)."""
    path = Path(path)
    require_file(path, "matrix file", flag="--matrix")
    if path.suffix.lower() == ".npy":
        try:
            m = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as e:
            raise FernoiseError(
                f"{path} is not a readable .npy array ({e})", flag="--matrix"
            ) from None
        m = np.asarray(m, dtype=np.float64) if m.dtype.kind in "fiu" else None
        if m is None:
            raise FernoiseError(f"{path} does not hold numbers", flag="--matrix")
    else:
        rows = [
            [c.strip() for c in r]
            for r in csv.reader(path.read_text().splitlines())
            if any(c.strip() for c in r)
        ]

        def num(s: str) -> bool:
            try:
                float(s)
                return True
            except ValueError:
                return False

        if rows and not all(num(c) for c in rows[0][1:] or rows[0]):
            rows = rows[1:]  # header of class names
        if rows and all(not num(r[0]) for r in rows):
            rows = [r[1:] for r in rows]  # first column of class names
        try:
            m = np.array([[float(c) for c in r] for r in rows], dtype=np.float64)
        except ValueError as e:
            raise FernoiseError(
                f"{path}: expected a CSV of numbers ({e})", flag="--matrix"
            ) from None
        widths = {len(r) for r in rows}
        if len(widths) > 1:
            raise FernoiseError(
                f"{path}: rows have different lengths {sorted(widths)}", flag="--matrix"
            )
    check_matrix(m)
    return m


def _numbered(values: list[str], numbering: str | None, path: Path) -> tuple[list[str], str]:
    """``(canonical class names, numbering used)`` of a list's label field. Without a
    numbering: ``names`` when some label is not a number, ``raf`` (1-7) when all are 1-7;
    a list with a 0 must say which numbering it uses."""
    numeric = all(v.lstrip("-").isdigit() for v in values)
    if numbering is None:
        if not numeric:
            numbering = "names"
        elif all(1 <= int(v) <= 7 for v in values):
            numbering = "raf"
        else:
            raise FernoiseError(
                f"{path.name}: labels {min(map(int, values))}-{max(map(int, values))} are numbers "
                "but not RAF-DB's 1-7; say how they count with --label-numbering raf0 (RAF-DB's "
                "order from 0, as SCN's lists) or canonical (fernoise's 0 neutral ... 7 contempt)",
                flag="--label-numbering",
            )
    if numbering not in NUMBERINGS:
        raise FernoiseError(
            f"unknown numbering {numbering!r}; expected one of: {', '.join(NUMBERINGS)}",
            flag="--label-numbering",
        )
    if numbering == "names":
        return [canonical_name(v, flag="--from") for v in values], numbering
    if not numeric:
        bad = next(v for v in values if not v.lstrip("-").isdigit())
        raise FernoiseError(
            f"{path.name}: label {bad!r} is not a number (--label-numbering {numbering}); "
            "use --label-numbering names for class names",
            flag="--label-numbering",
        )
    table = {
        "raf": dict(RAFDB_ORDER),
        "raf0": {k - 1: v for k, v in RAFDB_ORDER.items()},
        "canonical": dict(enumerate(CLASSES)),
    }[numbering]
    bad_n = sorted({int(v) for v in values if int(v) not in table})
    if bad_n:
        raise FernoiseError(
            f"{path.name}: labels {bad_n[:5]} are outside {numbering}'s "
            f"{min(table)}-{max(table)}; choose another --label-numbering ({', '.join(NUMBERINGS)})",
            flag="--label-numbering",
        )
    return [table[int(v)] for v in values], numbering


def load_noise_list(
    path: str | os.PathLike, numbering: str | None = None
) -> tuple[dict[str, str], str]:
    """A peer's noisy-label list: ``(image key -> canonical class name, numbering used)``.

    One ``<image name> <label>`` per line, separated by white space, as SCN
    (``0.1noise_train.txt``: full paths of ``*_aligned.jpg``, labels 0-6 in RAF-DB's order)
    and EAC / RUL (``noise01.txt``: ``train_00001.jpg 5``, RAF-DB's 1-7) ship them; blank
    lines and ``#`` comments are skipped. Names are keyed by
    :func:`fernoise.corrupt.kinds.image_key`; one name twice with different labels is refused."""
    path = Path(path)
    require_file(path, "noisy-label list", flag="--from")
    names: list[str] = []
    values: list[str] = []
    for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        parts = text.rsplit(None, 1)
        if len(parts) != 2:
            raise FernoiseError(
                f"{path.name} line {n}: expected '<image name> <label>', found {text[:60]!r}",
                flag="--from",
            )
        names.append(parts[0])
        values.append(parts[1])
    if not names:
        raise FernoiseError(f"{path.name} names no image", flag="--from")
    classes, used = _numbered(values, numbering, path)
    listed: dict[str, str] = {}
    for name, cls in zip(names, classes, strict=True):
        key = image_key(name)
        if listed.get(key, cls) != cls:
            raise FernoiseError(
                f"{path.name} gives {name!r} two labels: {listed[key]} and {cls}", flag="--from"
            )
        listed[key] = cls
    return listed, used


# ----------------------------------------------------------------------------- naming
def _rate_text(rate: float) -> str:
    text = f"{rate:.2f}"
    return text if float(text) == rate else f"{rate:.6g}"


# A --column name longer than this (in UTF-8 bytes) is cut and ends in 12 hex digits of its
# sha256, so the output's name, its temporary and its stamp stay under 255 bytes.
MAX_COLUMN_NAME_BYTES = 64


def output_name(
    input_path: str | os.PathLike,
    params: CorruptParams,
    *,
    matrix_sha256: str | None = None,
    list_sha256: str | None = None,
) -> Path:
    """``<input stem>.<suffix>.parquet`` beside the input, the suffix stating kind, rate, seed
    (for ``column``, the column's name, shortened with a hash past ``MAX_COLUMN_NAME_BYTES``)."""
    p = Path(input_path)
    if params.kind in ("sym", "asym"):
        suffix = f"{params.kind}-r{_rate_text(float(params.rate))}-s{params.seed}"  # type: ignore[arg-type]
    elif params.kind == "matrix":
        suffix = f"matrix-{(matrix_sha256 or 'inline')[:8]}-s{params.seed}"
    elif params.kind == "list":
        suffix = f"list-{(list_sha256 or 'inline')[:8]}"
    else:
        safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in str(params.column))
        if (
            len(safe.encode()) > MAX_COLUMN_NAME_BYTES
        ):  # file names stop at 255 bytes (with .tmp, stamp)
            digest = hashlib.sha256(
                str(params.column).encode("utf-8", "surrogatepass")
            ).hexdigest()[:12]
            head = safe.encode()[: MAX_COLUMN_NAME_BYTES - 13].decode("utf-8", "ignore")
            safe = f"{head}-{digest}"
        suffix = f"column-{safe}"
    return p.with_name(f"{p.stem}.{suffix}.parquet")


# ----------------------------------------------------------------------------- the runner
NEW_COLUMNS: dict[str, pa.DataType] = {
    "label": pa.int64(),
    "label_name": pa.string(),
    "label_clean": pa.int64(),
    "is_noisy": pa.bool_(),
}


def splice(table: pa.Table, df: pd.DataFrame) -> pa.Table:
    """``table`` with the columns of :data:`NEW_COLUMNS` taken from ``df`` (same rows, same
    order): existing ones replaced in place, ``label_clean`` and ``is_noisy`` placed right
    after ``label_name`` (the order :func:`fernoise.corrupt.kinds.corrupt` gives a full frame)."""
    arrays = {
        name: pa.array(df[name], type=typ, from_pandas=True) for name, typ in NEW_COLUMNS.items()
    }
    names = [n for n in table.column_names if n not in ("label_clean", "is_noisy")]
    if "label_name" not in names:
        names.append("label_name")
    at = names.index("label_name") + 1
    names = names[:at] + ["label_clean", "is_noisy"] + names[at:]
    cols = [arrays[n] if n in arrays else table.column(n) for n in names]
    return pa.Table.from_arrays(cols, names=names)


@dataclass
class CorruptResult:
    """What :func:`run_corrupt` did: the stage result, the noise info and the timings (s)."""

    result: StageResult
    input: Path
    noise: dict[str, Any]
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def output(self) -> Path:
        return self.result.output

    @property
    def hit(self) -> bool:
        return self.result.hit


def run_corrupt(
    manifest: str | os.PathLike | None = None,
    *,
    kind: str | None,
    rate: float | None = None,
    seed: int = 0,
    pairs_file: str | os.PathLike | None = None,
    matrix_file: str | os.PathLike | None = None,
    column: str | None = None,
    list_file: str | os.PathLike | None = None,
    numbering: str | None = None,
    force: bool = False,
    out: str | os.PathLike | None = None,
    workspace: Workspace | None = None,
) -> CorruptResult:
    """Run the corrupt stage (cached). ``force`` allows noise on an already corrupted manifest
    and recomputes even on a cache hit. ``list_file`` (``--kind list``): a peer's noisy-label
    list (:func:`load_noise_list`), its labels numbered as ``numbering`` says (None: detected).
    Raises FernoiseError (naming the flag) on bad input, before anything is written."""
    if kind is None:
        raise FernoiseError(
            "choose a noise kind: --kind sym, asym, matrix, column or list", flag="--kind"
        )
    ws = workspace or Workspace()
    path = resolve_manifest(
        manifest
        if manifest is not None
        else ws.latest("clean", "align", what="manifest", flag="MANIFEST")
    )
    params = _params(kind, rate, seed, pairs_file, matrix_file, column, list_file, numbering)
    meta = read_meta(path)
    classes = _check_input(path, meta, params, force)

    key_params, matrix_sha = _key_params(params, pairs_file, matrix_file, list_file)
    input_key = meta.get("key") or file_sha256(path)
    whole = _read_table(path)
    content = Manifest(df=pd.DataFrame(), meta=meta, path=path, table=whole).content_key(
        whole.column_names
    )
    output = _output(path, out, params, key_params, matrix_sha)

    timings: dict[str, float] = {}
    noise: dict[str, Any] = {}

    def build(key: str) -> list[Path]:
        df, info, times = _noised(whole, classes, params, force)
        t2 = time.perf_counter()
        info["input_key"] = input_key
        info["input_content"] = content
        if pairs_file is not None:
            info["pairs_sha256"] = key_params["pairs_sha256"]
        if matrix_sha is not None:
            info["matrix_sha256"] = matrix_sha
        if list_file is not None:
            info["list"] = {"file": Path(list_file).name, **info.get("list", {})}
            info["list_sha256"] = key_params["list_sha256"]
        new_meta = stage_meta(meta, stage=STAGE, params=key_params, key=key, noise=info)
        table = rebase_paths(splice(whole, df), path.parent, output.parent)
        write_manifest_table(table, output, new_meta)
        timings.update(times, write=time.perf_counter() - t2)
        noise.update(info)
        return [output]

    res = run_stage(
        stage=STAGE,
        version=VERSION,
        params=key_params,
        inputs={"manifest": input_key, "content": content},
        output=output,
        build=build,
        workspace=ws,
        force=force,
    )
    if res.hit:
        noise = dict(read_meta(output).get("noise") or {})
    return CorruptResult(result=res, input=path, noise=noise, timings=timings)


def _output(
    path: Path,
    out: str | os.PathLike | None,
    params: CorruptParams,
    key_params: dict[str, Any],
    matrix_sha: str | None,
) -> Path:
    """``--out``, else :func:`output_name` beside the input; never the input itself."""
    output = (
        Path(out)
        if out is not None
        else output_name(
            path, params, matrix_sha256=matrix_sha, list_sha256=key_params.get("list_sha256")
        )
    )
    if output.resolve() == path.resolve():
        raise FernoiseError(
            f"--out {output} is the input manifest, which is never modified; choose another path",
            flag="--out",
        )
    return output


def _key_params(
    params: CorruptParams,
    pairs_file: str | os.PathLike | None,
    matrix_file: str | os.PathLike | None,
    list_file: str | os.PathLike | None = None,
) -> tuple[dict[str, Any], str | None]:
    """``(key params, matrix file sha256)``: the noise parameters plus the sha256 of a
    ``--pairs``, ``--matrix`` or ``--from`` file."""
    key_params = params.key_params()
    if list_file is not None:
        key_params["list_sha256"] = file_sha256(list_file)
    matrix_sha = None
    if pairs_file is not None:
        key_params["pairs_sha256"] = file_sha256(pairs_file)
    if matrix_file is not None:
        matrix_sha = file_sha256(matrix_file)
        key_params["matrix_sha256"] = matrix_sha
    return key_params, matrix_sha


def _noised(
    whole: pa.Table, classes: list[str], params: CorruptParams, force: bool
) -> tuple[pd.DataFrame, dict[str, Any], dict[str, float]]:
    """``(noisy frame, noise info, seconds to read and to corrupt)`` of the manifest table.

    Only the columns the noise needs go through pandas; the rest of the table (paths,
    boxes, landmarks, votes) is written back as read: a large manifest stays fast."""
    t0 = time.perf_counter()
    need = [
        c
        for c in ("id", "src_path", "split", "label", "label_name", "label_clean", params.column)
        if c and c in whole.column_names
    ]
    small = whole.select(need).to_pandas()
    if "label" in small.columns:
        small["label"] = small["label"].astype("Int64")
    t1 = time.perf_counter()
    df, info = corrupt(small, classes=classes, params=params, allow_noisy=force)
    return df, info, {"read": t1 - t0, "corrupt": time.perf_counter() - t1}


def _params(
    kind: str,
    rate: float | None,
    seed: int,
    pairs_file: str | os.PathLike | None,
    matrix_file: str | os.PathLike | None,
    column: str | None,
    list_file: str | os.PathLike | None = None,
    numbering: str | None = None,
) -> CorruptParams:
    """The noise parameters, with the ``--pairs``, ``--matrix`` or ``--from`` file read (each
    refused for a kind that does not use it)."""
    if kind != "list" and (list_file is not None or numbering is not None):
        flag = "--from" if list_file is not None else "--label-numbering"
        raise FernoiseError(f"{flag} is for --kind list, not {kind}; drop {flag}", flag=flag)
    if kind not in ("asym",) and pairs_file is not None:
        raise FernoiseError(f"pairs are for --kind asym, not {kind}; drop --pairs", flag="--pairs")
    if kind != "matrix" and matrix_file is not None:
        raise FernoiseError(
            f"a matrix is for --kind matrix, not {kind}; drop --matrix", flag="--matrix"
        )
    pairs = load_pairs(pairs_file) if pairs_file is not None else None
    matrix = load_matrix(matrix_file) if matrix_file is not None else None
    listed, used = load_noise_list(list_file, numbering) if list_file is not None else (None, None)
    return CorruptParams(
        kind=kind,
        rate=rate,
        seed=seed,
        pairs=pairs,
        matrix=tuple(tuple(float(x) for x in r) for r in matrix) if matrix is not None else None,
        column=column,
        listed=listed,
        numbering=used,
    )


# Columns `fernoise align` writes; a missing --column is looked for among the others.
_ALIGN_COLUMNS = (
    "id",
    "src_path",
    "src_sha256",
    "path",
    "split",
    "label",
    "label_name",
    "status",
    "reason",
    "face",
    "n_faces",
    "det_prob",
    "bbox",
    "landmarks",
)


def _check_input(path: Path, meta: dict[str, Any], params: CorruptParams, force: bool) -> list[str]:
    """The manifest's class list, after checking it has one, that the matrix fits it, that
    the manifest is not corrupted yet (unless ``force``) and has the ``--column``."""
    classes = list(meta.get("classes") or [])
    if not classes:
        raise FernoiseError(
            f"{path} has no class list in its metadata; make it with `fernoise align`",
            flag="MANIFEST",
        )
    if params.kind == "matrix":
        check_matrix(np.asarray(params.matrix), len(classes), classes)
    names = pq.read_schema(path).names
    if "label_clean" in names and not force:
        raise FernoiseError(
            f"{path.name} is already corrupted (it has label_clean); corrupting it again would make "
            "label_clean no longer the clean label of the labels you train on; corrupt the clean "
            "manifest instead, or pass --force for noise on noise (label_clean is kept)",
            flag="--force",
        )
    if params.kind == "column" and params.column not in names:
        extra = [n for n in names if n not in _ALIGN_COLUMNS]
        raise FernoiseError(
            f"{path.name} has no column {params.column!r}; its extra columns are {extra[:20]} "
            "(bring a second annotation in with align's label-file columns)",
            flag="--column",
        )
    return classes


def _read_table(path: Path) -> pa.Table:
    """The whole manifest as an Arrow table; ids must be unique (a repeated id would be
    noised, and trained, twice)."""
    try:
        whole = pq.read_table(path)
    except (OSError, pa.ArrowException) as e:
        raise FernoiseError(
            f"{path} is not a readable Parquet manifest ({e.__class__.__name__})", flag="MANIFEST"
        ) from None
    if "id" in whole.column_names:
        from fernoise.manifest import check_unique_ids

        check_unique_ids(whole.column("id"), path)
    return whole
