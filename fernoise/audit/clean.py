"""``fernoise clean``: an audit -> a new manifest with the likely mislabelled rows dropped or
relabelled.

Reads an audit folder (``audits/<key>/`` as ``fernoise audit`` writes it): ``audit.json`` (its
``key``, ``classes`` and the audited ``manifest`` with that file's ``manifest_sha256``),
``audit.parquet`` (``id``, ``given``, ``suggested``, ``quality``, ``is_issue``, ``rank`` per
audited row) and the audit's stamp (``.fernoise/audit.parquet.stamp.json``), which must still
hold the sha256 of ``audit.parquet`` (and of ``audit.json`` when it lists it): an audit edited
after it was written is refused, never trusted. The audited manifest must be the same bytes as
at audit time.

Rows acted on (:func:`select`): the ``is_issue`` rows, or with ``min_quality`` every audited
row whose ``quality`` is below it; ``max_fraction`` keeps at most ``floor(F * rows audited)``
of them, lowest quality first (ties by ``rank``). ``drop`` removes them; ``relabel`` sets
``label`` (and ``label_name``) to ``suggested``, recomputes ``is_noisy = label != label_clean``
on those rows when the manifest has ``label_clean``, and adds ``label_given`` (every row's label
before the clean; kept as it is when the manifest already has one, so it stays the first given
label). Every other row and column is kept as read; ``path`` is re-based when the output goes
to another folder, so the crops still resolve.

Writes one manifest, default beside the audited one:
``<stem>.clean-<drop|relabel>-<8 hex of the key>.parquet``, never the audited manifest itself.
Its metadata: the parent's class list, label space and lineage + ``{"stage": "clean", "key",
"params": {"action", "min_quality", "max_fraction", "audit"}}``, and ``clean``: the audit folder
and key, row counts, per class (given label) ``acted`` and ``dropped`` or ``relabelled_from``/
``relabelled_to``/``unchanged``, and the relabelled pairs. A cached stage (key over the
parameters, the audit's key and its ``audit.parquet`` sha256, and the manifest's content),
recorded in the workspace lock as stage ``clean``, which ``train``, ``corrupt``, ``split``,
``sweep`` and ``pretrain`` take when given no manifest.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from fernoise.cache import StageResult, Workspace
from fernoise.errors import FernoiseError

STAGE = "clean"
VERSION = 1
ACTIONS = ("drop", "relabel")
AUDIT_JSON = "audit.json"
AUDIT_PARQUET = "audit.parquet"
# What clean reads of an audit; the audit writes more (see the contract in fernoise/audit).
AUDIT_KEYS = ("key", "manifest", "manifest_sha256", "classes", "rows")
AUDIT_COLUMNS = {
    "id": "string",
    "given": "integer",
    "suggested": "integer",
    "quality": "number",
    "is_issue": "bool",
    "rank": "integer",
}


# ----------------------------------------------------------------------------- parameters
@dataclass(frozen=True)
class CleanParams:
    """What to do with which audited rows. Built by the CLI; checked here (messages name the
    CLI flag)."""

    action: str
    """``drop`` (remove the rows) or ``relabel`` (``label`` := the suggested label)."""
    min_quality: float | None = None
    """Act on every audited row whose label quality is below this, in [0, 1], instead of the
    audit's issue rows (``--min-quality``)."""
    max_fraction: float | None = None
    """At most ``floor(F * rows audited)`` rows, lowest quality first; F in (0, 1]
    (``--max-fraction``)."""

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise FernoiseError(
                f"expected an action among {list(ACTIONS)}, got {self.action!r}", flag="--drop"
            )
        q = self.min_quality
        if q is not None and (_not_number(q) or not 0 <= q <= 1):
            raise FernoiseError(
                f"expected a label quality in [0, 1], got {q!r}", flag="--min-quality"
            )
        f = self.max_fraction
        if f is not None and (_not_number(f) or not 0 < f <= 1):
            raise FernoiseError(f"expected a fraction in (0, 1], got {f!r}", flag="--max-fraction")

    def key_params(self, audit_key: str) -> dict[str, Any]:
        """The parameters the key hashes (and the lineage entry records)."""
        return {
            "action": self.action,
            "min_quality": None if self.min_quality is None else float(self.min_quality),
            "max_fraction": None if self.max_fraction is None else float(self.max_fraction),
            "audit": audit_key,
        }


def _not_number(v: Any) -> bool:
    return isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v)


def action_from_flags(drop: bool, relabel: bool) -> str:
    """``drop`` or ``relabel`` from the two CLI switches; exactly one must be on."""
    if drop and relabel:
        raise FernoiseError(
            "choose one of --drop and --relabel, not both (drop removes the rows, relabel "
            "gives them the suggested label)",
            flag="--drop",
        )
    if not drop and not relabel:
        raise FernoiseError(
            "choose what to do with the rows the audit flags: --drop or --relabel", flag="--drop"
        )
    return "drop" if drop else "relabel"


# ----------------------------------------------------------------------------- the pure parts
def select(audit: pd.DataFrame, params: CleanParams) -> pd.DataFrame:
    """The rows of ``audit`` (audit.parquet's frame) to act on, lowest ``quality`` first
    (ties by ``rank``): the ``is_issue`` rows, or those with ``quality < min_quality``; at
    most ``floor(max_fraction * len(audit))`` of them. Pure: no I/O."""
    if params.min_quality is None:
        chosen = audit[audit["is_issue"].astype(bool)]
    else:
        chosen = audit[audit["quality"] < params.min_quality]
    chosen = chosen.sort_values(["quality", "rank"], kind="stable")
    if params.max_fraction is not None:
        # the epsilon keeps floor(0.29 * 100) at 29, not 28 (0.29 * 100 = 28.999999999999996)
        chosen = chosen.iloc[: math.floor(params.max_fraction * len(audit) + 1e-9)]
    return chosen.reset_index(drop=True)


def apply(
    table: pa.Table, chosen: pd.DataFrame, *, action: str, classes: list[str]
) -> tuple[pa.Table, dict[str, Any]]:
    """``(cleaned table, counts)``: ``table`` (the manifest) with the ``chosen`` rows (by
    ``id``) dropped or given their ``suggested`` label; every other row and column as read.
    Counts per given class: ``acted`` and ``dropped``, or ``relabelled_from``,
    ``relabelled_to`` and ``unchanged`` (suggested = given); ``pairs``: relabelled
    ``{"given", "suggested", "count"}``, most first. Pure: no I/O."""
    pos = {v: i for i, v in enumerate(table.column("id").to_pylist())}
    idx = np.array([pos[i] for i in chosen["id"]], dtype=np.int64)
    given = chosen["given"].to_numpy(dtype=np.int64)
    suggested = chosen["suggested"].to_numpy(dtype=np.int64)
    C = len(classes)
    acted = np.bincount(given, minlength=C)
    counts: dict[str, dict[str, int]] = {c: {"acted": int(acted[i])} for i, c in enumerate(classes)}
    pairs: list[dict[str, Any]] = []
    if action == "drop":
        keep = np.ones(table.num_rows, dtype=bool)
        keep[idx] = False
        out = table.filter(pa.array(keep))
        for c in classes:
            counts[c]["dropped"] = counts[c]["acted"]
    else:
        changed = suggested != given
        out = _relabelled(table, idx[changed], suggested[changed], classes)
        frm = np.bincount(given[changed], minlength=C)
        to = np.bincount(suggested[changed], minlength=C)
        for i, c in enumerate(classes):
            counts[c].update(
                relabelled_from=int(frm[i]),
                relabelled_to=int(to[i]),
                unchanged=int(acted[i] - frm[i]),
            )
        flat = np.bincount(given[changed] * C + suggested[changed], minlength=C * C)
        pairs = [
            {"given": classes[k // C], "suggested": classes[k % C], "count": int(flat[k])}
            for k in np.argsort(-flat, kind="stable")
            if flat[k]
        ]
    return out, {"counts": counts, "pairs": pairs}


def _relabelled(table: pa.Table, idx: np.ndarray, new: np.ndarray, classes: list[str]) -> pa.Table:
    """``table`` with rows ``idx`` labelled ``new``: ``label``, ``label_name`` (when present)
    and ``is_noisy`` (when ``label_clean`` is present) replaced in place, ``label_given``
    (the labels before) appended unless the table has one."""
    names = table.column_names
    before = table.column("label").to_pylist()
    labels = list(before)
    for i, y in zip(idx.tolist(), new.tolist(), strict=True):
        labels[i] = int(y)
    cols = {"label": pa.array(labels, type=table.schema.field("label").type)}
    if "label_name" in names:
        shown = table.column("label_name").to_pylist()
        for i, y in zip(idx.tolist(), new.tolist(), strict=True):
            shown[i] = classes[y]
        cols["label_name"] = pa.array(shown, type=table.schema.field("label_name").type)
    if "label_clean" in names and "is_noisy" in names:
        clean = table.column("label_clean").to_pylist()
        noisy = table.column("is_noisy").to_pylist()
        for i in idx.tolist():
            noisy[i] = None if clean[i] is None else labels[i] != clean[i]
        cols["is_noisy"] = pa.array(noisy, type=table.schema.field("is_noisy").type)
    arrays = [cols.get(n, table.column(n)) for n in names]
    out = pa.Table.from_arrays(arrays, names=names)
    if "label_given" not in names:
        out = out.append_column("label_given", pa.array(before, type=pa.int64()))
    return out


# ----------------------------------------------------------------------------- reading an audit
@dataclass
class Audit:
    """An audit folder as clean reads it, after every check (:func:`read_audit`)."""

    folder: Path
    summary: dict[str, Any]
    frame: pd.DataFrame
    parquet_sha256: str

    @property
    def key(self) -> str:
        return str(self.summary["key"])

    @property
    def classes(self) -> list[str]:
        return list(self.summary["classes"])


def audit_folder(path: str | os.PathLike) -> Path:
    """The audit folder a user means by ``path``: the folder itself, or the folder of its
    ``audit.json`` / ``audit.parquet``. Raises unless both files are there."""
    p = Path(path)
    folder = p if p.is_dir() else p.parent
    if not p.exists():
        raise FernoiseError(f"audit {p} does not exist; pass an audit folder", flag="AUDIT")
    if p.is_file() and p.name not in (AUDIT_JSON, AUDIT_PARQUET):
        raise FernoiseError(
            f"{p} is not an audit folder or its {AUDIT_JSON}; pass the folder `fernoise audit` "
            "wrote (audits/<key>/)",
            flag="AUDIT",
        )
    missing = [n for n in (AUDIT_JSON, AUDIT_PARQUET) if not (folder / n).is_file()]
    if missing:
        raise FernoiseError(
            f"{folder} is not an audit folder (no {' and no '.join(missing)}); pass the folder "
            "`fernoise audit` wrote (audits/<key>/)",
            flag="AUDIT",
        )
    return folder


def read_audit(path: str | os.PathLike) -> Audit:
    """Read and check the audit at ``path`` (see :func:`audit_folder`): ``audit.json`` parses
    and has :data:`AUDIT_KEYS`, the audit's stamp still holds the sha256 of ``audit.parquet``
    (and of ``audit.json`` when it lists it), ``audit.parquet`` has :data:`AUDIT_COLUMNS` with
    unique ids and labels inside the class list. One-line FernoiseError otherwise."""
    import json

    from fernoise.cache import bytes_sha256, file_sha256

    folder = audit_folder(path)
    raw = (folder / AUDIT_JSON).read_bytes()
    try:
        summary = json.loads(raw)
    except ValueError as e:
        raise FernoiseError(
            f"{folder / AUDIT_JSON} is not valid JSON ({e}); re-run `fernoise audit`", flag="AUDIT"
        ) from None
    missing = [k for k in AUDIT_KEYS if not isinstance(summary, dict) or k not in summary]
    if missing or summary.get("stage", "audit") != "audit" or not summary.get("classes"):
        raise FernoiseError(
            f"{folder / AUDIT_JSON} is not an audit's summary (missing {missing or ['classes']}); "
            "pass the folder `fernoise audit` wrote",
            flag="AUDIT",
        )
    parquet_sha = file_sha256(folder / AUDIT_PARQUET)
    _check_stamp(folder, str(summary["key"]), parquet_sha, bytes_sha256(raw))
    frame = _read_frame(folder / AUDIT_PARQUET, len(summary["classes"]))
    return Audit(folder=folder, summary=summary, frame=frame, parquet_sha256=parquet_sha)


def _check_stamp(folder: Path, key: str, parquet_sha: str, json_sha: str) -> None:
    """Raise unless the audit's stamp is for ``key`` and lists ``audit.parquet`` (and
    ``audit.json``, when listed) with these sha256."""
    from fernoise.cache import read_json, stamp_path

    stamps = [stamp_path(folder / n) for n in (AUDIT_PARQUET, AUDIT_JSON)]
    stamp = next((s for s in (read_json(p) for p in stamps) if isinstance(s, dict)), None)
    if stamp is None:
        raise FernoiseError(
            f"{folder} has no stamp of its audit ({stamps[0]}), so its files cannot be "
            "trusted; re-run `fernoise audit`",
            flag="AUDIT",
        )
    outputs = stamp.get("outputs") or {}
    if stamp.get("key") != key:
        raise FernoiseError(
            f"{folder / AUDIT_JSON} was changed after the audit wrote it (its key is not the "
            "stamp's); re-run `fernoise audit`",
            flag="AUDIT",
        )
    for name, now in ((AUDIT_PARQUET, parquet_sha), (AUDIT_JSON, json_sha)):
        if outputs.get(name, now if name == AUDIT_JSON else None) != now:
            raise FernoiseError(
                f"{folder / name} was changed after the audit wrote it (its sha256 is not the "
                "one in the audit's stamp); re-run `fernoise audit`",
                flag="AUDIT",
            )


def _read_frame(path: Path, n_classes: int) -> pd.DataFrame:
    """audit.parquet's frame, after checking its columns, ids and labels."""
    try:
        frame = pd.read_parquet(path)
    except (OSError, ValueError, pa.ArrowException) as e:
        raise FernoiseError(
            f"{path} is not a readable Parquet file ({e.__class__.__name__}); re-run `fernoise audit`",
            flag="AUDIT",
        ) from None
    kinds = {"string": "OUS", "integer": "iu", "number": "iuf", "bool": "b"}
    bad = [
        f"{c} ({want})"
        for c, want in AUDIT_COLUMNS.items()
        if c not in frame.columns
        or frame[c].isna().any()
        or (want != "string" and frame[c].dtype.kind not in kinds[want])
    ]
    if bad:
        raise FernoiseError(
            f"{path} lacks columns or has nulls or wrong types in {bad}; re-run `fernoise audit`",
            flag="AUDIT",
        )
    labels = frame[["given", "suggested"]].to_numpy()
    if frame["id"].duplicated().any() or ((labels < 0) | (labels >= n_classes)).any():
        raise FernoiseError(
            f"{path} has repeated ids or labels outside 0..{n_classes - 1}; re-run `fernoise audit`",
            flag="AUDIT",
        )
    return frame


def check_manifest(audit: Audit) -> Path:
    """The audited manifest (audit.json's ``manifest``), after checking that it exists and
    is the same bytes as at audit time (``manifest_sha256``)."""
    from fernoise.cache import file_sha256

    path = Path(str(audit.summary["manifest"]))
    if not path.is_file():
        raise FernoiseError(
            f"the audited manifest {path} no longer exists; re-run `fernoise audit` on the "
            "manifest to clean",
            flag="AUDIT",
        )
    if file_sha256(path) != audit.summary["manifest_sha256"]:
        raise FernoiseError(
            f"the manifest {path} changed since the audit (its sha256 is not audit.json's "
            f"manifest_sha256); re-run `fernoise audit {path}`",
            flag="AUDIT",
        )
    return path


def _check_rows(
    table: pa.Table, frame: pd.DataFrame, path: Path, meta: dict[str, Any], audit: Audit
) -> None:
    """Raise unless the audit's classes are the manifest's and every audited row is a row of
    the manifest with the audit's given label."""
    if list(meta.get("classes") or []) != audit.classes:
        raise FernoiseError(
            f"{audit.folder / AUDIT_JSON} has classes {audit.classes}, {path.name} has "
            f"{meta.get('classes')}; re-run `fernoise audit`",
            flag="AUDIT",
        )
    labels = dict(
        zip(table.column("id").to_pylist(), table.column("label").to_pylist(), strict=True)
    )
    wrong = [i for i, g in zip(frame["id"], frame["given"], strict=True) if labels.get(i, -1) != g]
    if wrong:
        raise FernoiseError(
            f"{len(wrong):,} audited rows are not rows of {path.name} with the audit's given "
            f"label (e.g. {wrong[0]!r}); re-run `fernoise audit`",
            flag="AUDIT",
        )


# ----------------------------------------------------------------------------- the runner
def output_name(source: Path, action: str, key: str) -> str:
    """``<stem>.clean-<action>-<8 hex of the key>.parquet``."""
    return f"{source.stem}.clean-{action}-{key[:8]}.parquet"


@dataclass
class CleanResult:
    """What :func:`run_clean` did: the stage result, the audited manifest and the audit
    folder, and the ``clean`` entry of the output's metadata (counts, rows)."""

    result: StageResult
    input: Path
    audit: Path
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def output(self) -> Path:
        return self.result.output

    @property
    def hit(self) -> bool:
        return self.result.hit


def run_clean(
    audit: str | os.PathLike | None,
    params: CleanParams,
    *,
    out: str | os.PathLike | None = None,
    force: bool = False,
    workspace: Workspace | None = None,
) -> CleanResult:
    """Run the clean stage (cached; see the module docstring). ``audit`` None: the
    workspace lock's latest ``audit``. ``out``: the output file, or a folder for the default
    name. Raises FernoiseError (naming the flag) on bad input, before anything is written."""
    import pyarrow.parquet as pq

    from fernoise.cache import run_stage, stage_key
    from fernoise.manifest import (
        Manifest,
        read_meta,
        rebase_paths,
        stage_meta,
        write_manifest_table,
    )

    ws = workspace or Workspace()
    found = read_audit(
        audit if audit is not None else ws.latest("audit", what="audit", flag="AUDIT")
    )
    source = check_manifest(found)
    meta = read_meta(source)
    table = pq.read_table(source)
    _check_rows(table, found.frame, source, meta, found)
    content = Manifest(df=pd.DataFrame(), meta=meta, path=source, table=table).content_key(
        table.column_names
    )
    key_params = params.key_params(found.key)
    inputs = {
        "manifest": meta.get("key") or found.summary["manifest_sha256"],
        "content": content,
        "audit": found.key,
        "audit_parquet": found.parquet_sha256,
    }
    output = _output_path(source, params.action, stage_key(STAGE, VERSION, key_params, inputs), out)

    def build(key: str) -> list[Path]:
        chosen = select(found.frame, params)
        cleaned, counts = apply(table, chosen, action=params.action, classes=found.classes)
        info = _info(found, source, table, cleaned, chosen, counts)
        new_meta = stage_meta(meta, stage=STAGE, params=key_params, key=key, clean=info)
        write_manifest_table(rebase_paths(cleaned, source.parent, output.parent), output, new_meta)
        return [output]

    res = run_stage(
        stage=STAGE,
        version=VERSION,
        params=key_params,
        inputs=inputs,
        output=output,
        build=build,
        workspace=ws,
        force=force,
    )
    info = dict(read_meta(output).get("clean") or {})
    return CleanResult(result=res, input=source, audit=found.folder, info=info)


def _output_path(source: Path, action: str, key: str, out: str | os.PathLike | None) -> Path:
    """Where the cleaned manifest goes: ``out`` (a folder: the default name in it), else
    beside ``source``; never ``source`` itself."""
    if out is None:
        output = source.with_name(output_name(source, action, key))
    else:
        output = Path(out)
        if output.is_dir():
            output = output / output_name(source, action, key)
    if output.resolve() == source.resolve():
        raise FernoiseError(
            f"--out {output} is the audited manifest, which is never modified; choose another path",
            flag="--out",
        )
    return output


def _info(
    audit: Audit,
    source: Path,
    table: pa.Table,
    cleaned: pa.Table,
    chosen: pd.DataFrame,
    counts: dict[str, Any],
) -> dict[str, Any]:
    """The ``clean`` entry of the output's metadata."""
    changed = sum(c.get("relabelled_from", c.get("dropped", 0)) for c in counts["counts"].values())
    return {
        "audit": str(audit.folder.resolve()),
        "audit_key": audit.key,
        "manifest": str(source.resolve()),
        "manifest_sha256": audit.summary["manifest_sha256"],
        "rows_in": table.num_rows,
        "rows_out": cleaned.num_rows,
        "rows_audited": len(audit.frame),
        "acted": len(chosen),
        "changed": int(changed),
        **counts,
    }
