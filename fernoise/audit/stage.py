"""``fernoise audit``: which training labels of a manifest are likely wrong.

Reads a manifest (the rows of its ``train`` split that have a label are audited) and writes
``<workspace>/audits/<key[:16]>/``:

- ``folds/fold-<i>-of-<K>.parquet`` (:mod:`.folds`) and ``folds/fold-<i>.done.json`` (the
  fold's run, its predictions file and that file's sha256, written when the fold finished);
- ``audit.parquet``: one row per scored training row, sorted by ``rank`` (columns in
  ``docs/audit.md``); ``audit.json``: the summary; ``joint.csv``: the estimated joint of given
  and true labels; the pictures and ``index.html`` of :mod:`.gallery`.

Scorers:

- ``cleanlab`` (default): K-fold cross-fitting. Each fold is an ordinary ``fernoise train`` +
  ``fernoise eval`` in a child process (:mod:`fernoise.sweep.cell`), so both are cached: a
  re-run trains nothing, a killed audit resumes (a finished fold is a cache hit, an unfinished
  one resumes from its checkpoint), ``--shard i/n`` runs a contiguous share of the folds and
  ``--gpus`` one fold per GPU at once. The held-out fold's predicted probabilities are the
  out-of-sample probabilities cleanlab needs (:mod:`.score`).
- ``aum``: one training run on every audited row with ``--record-margins`` (no validation
  carve, so every row gets a margin); the area under the margin (:mod:`.aum`) is the score
  and AUM < 0 the issue flag; the probabilities are the final model's on the training rows
  (in-sample, so the joint is optimistic).

The key hashes the audit's parameters, the training configuration (and the sha256 of a
``--pretrained`` file or folder) and the content of every column of the manifest; the audit's
outputs are stamped (:func:`fernoise.cache.write_stamp`), so an edited ``audit.parquet`` is
rebuilt, never trusted, and ``fernoise clean`` refuses it.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fernoise.audit import folds as fold_mod
from fernoise.audit import score as score_mod
from fernoise.cache import (
    Workspace,
    atomic_write_json,
    atomic_write_text,
    file_sha256,
    outputs_intact,
    read_json,
    stage_key,
    stamp_path,
    write_stamp,
)
from fernoise.errors import FernoiseError
from fernoise.manifest import Manifest, read_manifest, resolve_manifest

STAGE = "audit"
VERSION = 1
AUDITS = "audits"  # <workspace>/audits/<key[:16]>/
AUDIT_PARQUET = "audit.parquet"
AUDIT_JSON = "audit.json"
JOINT_CSV = "joint.csv"
SCORERS = ("cleanlab", "aum")
_NOT_OUTPUT = ("workers", "keep_checkpoint", "device", "devices", "compile")  # change no result

Say = Callable[[str], None]


@dataclass(frozen=True)
class AuditParams:
    """How to audit (the training itself is a :class:`~fernoise.train.config.TrainConfig`)."""

    folds: int = 5
    """K, the number of cross-fitting folds (cleanlab scorer)."""
    scorer: str = "cleanlab"
    """cleanlab (K-fold out-of-sample probabilities) or aum (one run, area under the margin)."""
    filter_by: str = score_mod.FILTER_BY[0]
    """cleanlab's ``find_label_issues(filter_by=...)`` rule."""
    quality_method: str = score_mod.QUALITY_METHODS[0]
    """cleanlab's ``get_label_quality_scores(method=...)``."""
    truth_column: str | None = None
    """A column holding the true label (names, aliases or canonical indices); default: the
    manifest's ``label_clean`` when it has one (after ``fernoise corrupt``)."""
    group_column: str | None = None
    """Folds hold whole groups of this column; default ``subject`` when the manifest has it."""

    def __post_init__(self) -> None:
        if self.scorer not in SCORERS:
            raise FernoiseError(
                f"expected one of {', '.join(SCORERS)}, got {self.scorer!r}", flag="--scorer"
            )
        if self.filter_by not in score_mod.FILTER_BY:
            raise FernoiseError(
                f"expected one of {', '.join(score_mod.FILTER_BY)}, got {self.filter_by!r}",
                flag="--filter-by",
            )
        if self.quality_method not in score_mod.QUALITY_METHODS:
            raise FernoiseError(
                f"expected one of {', '.join(score_mod.QUALITY_METHODS)}, got {self.quality_method!r}",
                flag="--quality",
            )
        if self.folds < 2:
            raise FernoiseError(f"expected 2 or more folds, got {self.folds}", flag="--folds")


@dataclass
class AuditPlan:
    """The audit's inputs, read and checked before anything is written."""

    source: Path
    manifest: Manifest
    params: AuditParams
    cfg: Any  # TrainConfig
    workspace: Workspace
    key: str
    dir: Path
    audited: np.ndarray  # positions of the audited rows in the manifest
    ids: np.ndarray
    labels: np.ndarray
    groups: np.ndarray | None
    group_column: str | None
    truth: np.ndarray | None  # true label per audited row, -1 unknown
    truth_source: str | None

    @property
    def classes(self) -> list[str]:
        return self.manifest.classes


@dataclass
class AuditResult:
    """What :func:`run_audit` did. ``done``: every fold scored and the audit written (False
    when this share's folds finished but others' have not)."""

    dir: Path
    key: str
    hit: bool
    done: bool
    summary: dict[str, Any] = field(default_factory=dict)
    folds_done: int = 0
    folds: int = 0


# ----------------------------------------------------------------------------- plan
def _refuse_audit_output(path: Path) -> None:
    """An audit's own output given as the manifest to audit: one line saying what to pass."""
    folder = path if path.is_dir() else path.parent
    if (folder / AUDIT_JSON).is_file() and (path.is_dir() or path.name == AUDIT_PARQUET):
        recorded = read_json(folder / AUDIT_JSON) or {}
        source = recorded.get("manifest") if isinstance(recorded, dict) else None
        hint = f" ({source})" if source else ""
        raise FernoiseError(
            f"{path} is an audit's output, not a manifest; audit the manifest it came from{hint}, "
            "or clean with `fernoise clean`",
            flag="MANIFEST",
        )


def _truth(
    m: Manifest, audited: np.ndarray, column: str | None
) -> tuple[np.ndarray | None, str | None]:
    """The true label of each audited row (-1: unknown) and where it came from."""
    from fernoise.corrupt.kinds import OUTSIDE, column_indices

    df = m.df
    if column is None:
        if "label_clean" not in df.columns:
            return None, None
        clean = df["label_clean"].iloc[audited]
        return clean.fillna(-1).astype("int64").to_numpy(), "is_noisy"
    if column not in df.columns:
        raise FernoiseError(
            f"the manifest has no column {column!r}; its columns: {', '.join(map(str, df.columns))}",
            flag="--truth-column",
        )
    try:
        idx, outside = column_indices(df[column].iloc[audited], m.classes, column=column)
    except FernoiseError as e:
        raise FernoiseError(str(e), flag="--truth-column") from None
    if outside:
        named = ", ".join(f"{k} ({v} rows)" for k, v in outside.items())
        raise FernoiseError(
            f"truth column {column!r} holds classes the manifest does not have: {named}; "
            f"its classes are {', '.join(m.classes)}",
            flag="--truth-column",
        )
    assert not (idx == OUTSIDE).any()
    return idx.astype(np.int64), f"column:{column}"


def _groups(
    m: Manifest, audited: np.ndarray, column: str | None
) -> tuple[np.ndarray | None, str | None]:
    df = m.df
    if column is None:
        column = "subject" if "subject" in df.columns else None
        if column is None:
            return None, None
    if column not in df.columns:
        raise FernoiseError(f"the manifest has no column {column!r}", flag="--group-column")
    values = df[column].iloc[audited]
    if values.isna().any():
        raise FernoiseError(
            f"{int(values.isna().sum())} training rows have no {column}; every row needs a group",
            flag="--group-column",
        )
    return values.astype(str).to_numpy(), column


def _start_fingerprint(cfg: Any, ws: Workspace) -> str | None:
    """sha256 of a ``--pretrained`` file, or of a folder's files (names and contents)."""
    if not cfg.pretrained:
        return None
    p = Path(cfg.pretrained)
    if cfg.pretrained == "latest":
        p = ws.latest("pretrain", what="pretrained backbone", flag="--pretrained")
    if p.is_file():
        return file_sha256(p)
    if p.is_dir():
        parts = [f"{q.name}:{file_sha256(q)}" for q in sorted(p.iterdir()) if q.is_file()]
        return stage_key("start", 1, {"files": parts}, {})
    raise FernoiseError(f"{p} does not exist", flag="--pretrained")


def _train_part(cfg: Any) -> dict[str, Any]:
    d = asdict(cfg)
    return {k: v for k, v in d.items() if k not in _NOT_OUTPUT}


def plan(
    manifest_path: str | os.PathLike, params: AuditParams, cfg: Any, workspace: Workspace
) -> AuditPlan:
    """Read and check everything; compute the key and the audit folder. Writes nothing."""
    raw = Path(manifest_path)
    _refuse_audit_output(raw)
    source = resolve_manifest(raw)
    m = read_manifest(source)
    if (m.meta.get("stage") or "") == fold_mod.FOLD_STAGE:
        raise FernoiseError(
            f"{source} is one of an audit's fold manifests; audit the manifest the audit read",
            flag="MANIFEST",
        )
    if not m.classes:
        raise FernoiseError(f"{source} records no class list; re-write it with fernoise align")
    audited = fold_mod.audited_positions(m.df)
    if not len(audited):
        raise FernoiseError(f"{source} has no labelled training rows to audit", flag="MANIFEST")
    labels = m.df["label"].iloc[audited].astype("int64").to_numpy()
    groups, gcol = _groups(m, audited, params.group_column)
    folds = params.folds if params.scorer == "cleanlab" else 2
    fold_mod.check_audit_rows(labels, m.classes, folds, groups)
    truth, truth_source = _truth(m, audited, params.truth_column)
    content = m.content_key(m.df.columns)
    key = stage_key(
        STAGE,
        VERSION,
        {**asdict(params), "group_column": gcol, "train": _train_part(cfg)},
        {"content": content, "start": _start_fingerprint(cfg, workspace)},
    )
    return AuditPlan(
        source=source,
        manifest=m,
        params=params,
        cfg=cfg,
        workspace=workspace,
        key=key,
        dir=workspace.root / AUDITS / key[:16],
        audited=audited,
        ids=m.df["id"].iloc[audited].astype(str).to_numpy(),
        labels=labels,
        groups=groups,
        group_column=gcol,
        truth=truth,
        truth_source=truth_source,
    )


# ----------------------------------------------------------------------------- the folds
@dataclass
class _Job:
    """One training run of the audit: a fold (index >= 0) or the aum run (index -1)."""

    index: int
    manifest: Path
    cfg: Any
    eval_split: str = "test"

    @property
    def done_file(self) -> Path:
        name = "aum" if self.index < 0 else f"fold-{self.index}"
        return self.manifest.parent / f"{name}.done.json"

    @property
    def label(self) -> str:
        return "the aum run" if self.index < 0 else f"fold {self.index + 1}"


def _jobs(p: AuditPlan) -> list[_Job]:
    """Write the fold manifests (or the aum manifest) and return the runs to do."""
    table = p.manifest.table
    assert table is not None
    folds_dir = p.dir / "folds"
    if p.params.scorer == "aum":
        none = np.zeros(len(p.audited), dtype=bool)  # every audited row trains
        (path,) = fold_mod.write_fold_manifests(
            table, p.manifest.meta, p.source, p.audited, {"aum.parquet": none}, folds_dir, p.key
        )
        cfg = replace(p.cfg, val_fraction=0.0, record_margins=True)
        return [_Job(-1, path, cfg, eval_split="train")]
    fold_of = fold_mod.assign_folds(
        p.ids, p.labels, len(p.classes), p.params.folds, p.cfg.seed, p.groups
    )
    paths = fold_mod.write_fold_manifests(
        table, p.manifest.meta, p.source, p.audited, fold_mod.fold_tests(fold_of), folds_dir, p.key
    )
    atomic_write_json(
        folds_dir / "assignment.json", {"ids": p.ids.tolist(), "fold": fold_of.tolist()}
    )
    return [_Job(i, path, p.cfg) for i, path in enumerate(paths)]


def _job_done(job: _Job) -> dict[str, Any] | None:
    """The job's done record when its predictions file is still what was recorded."""
    rec = read_json(job.done_file)
    if not isinstance(rec, dict):
        return None
    pred = Path(str(rec.get("predictions", "")))
    if not pred.is_file() or file_sha256(pred) != rec.get("sha256"):
        return None
    return rec


def _run_job(job: _Job, p: AuditPlan, runs_dir: Path, gpu: str | None, say: Say) -> dict[str, Any]:
    """Train and evaluate one job in a child process (:mod:`fernoise.sweep.cell`); write and
    return its done record. Raises a FernoiseError with the child's last line on failure."""
    from fernoise.sweep.cell import spawn
    from fernoise.sweep.runner import worker_env

    spec = {
        "manifest": str(job.manifest),
        "config": asdict(job.cfg),
        "runs_dir": str(runs_dir),
        "workspace": str(p.workspace.root),
        "cam": 0,
        "parent": os.getpid(),
        "eval_split": job.eval_split,
    }
    log = job.done_file.with_suffix(".log")
    env = worker_env(dict(os.environ), gpu, p.workspace.root)
    t0 = time.time()
    final: dict[str, Any] = {}

    def event(ev: dict[str, Any]) -> None:
        nonlocal final
        if ev.get("event") == "epoch_end":
            m = ev.get("metrics") or {}
            acc = m.get("val_acc")
            tail = f", validation {acc:.3f}" if isinstance(acc, float) else ""
            say(f"  {job.label}: epoch {m.get('epoch')} of {job.cfg.epochs}{tail}")
        elif ev.get("event") in ("done", "error"):
            final = ev

    with open(log, "ab") as err:
        rc = spawn(spec, env=env, log=err, cwd=p.workspace.root, on_event=event)
    if rc != 0 or final.get("event") != "done":
        why = final.get("message") or f"its process exited with code {rc}; log: {log}"
        raise FernoiseError(f"{job.label} failed: {why}")
    run, pred = Path(final["run"]), Path(final["predictions"])
    rec = {
        "index": job.index,
        "run": str(run),
        "predictions": str(pred),
        "sha256": file_sha256(pred),
        "wall_seconds": time.time() - t0,
        "train_seconds": _train_seconds(run),
    }
    atomic_write_json(job.done_file, rec)
    return rec


def _train_seconds(run: Path) -> float:
    """The run's training time as its metrics.jsonl records it (sum of epoch seconds)."""
    from fernoise.evaluate.runs import read_metrics

    path = run / "metrics.jsonl"
    return (
        sum(float(m.get("seconds") or 0.0) for m in read_metrics(path)) if path.is_file() else 0.0
    )


def _run_jobs(
    jobs: list[_Job], p: AuditPlan, runs_dir: Path, gpus: list[str] | None, say: Say
) -> None:
    """Run ``jobs`` one after another, or one per GPU at once with ``gpus``."""
    slots: list[str | None] = list(gpus) if gpus else [None]
    queue = list(jobs)
    errors: list[BaseException] = []
    lock = threading.Lock()

    def worker(gpu: str | None) -> None:
        while True:
            with lock:
                if not queue or errors:
                    return
                job = queue.pop(0)
            try:
                say(
                    f"{job.label}: training {job.manifest.name}" + (f" on GPU {gpu}" if gpu else "")
                )
                rec = _run_job(job, p, runs_dir, gpu, say)
                say(f"{job.label}: done ({rec['run']})")
            except BaseException as e:  # noqa: BLE001 - reported after every worker stops
                with lock:
                    errors.append(e)

    threads = [threading.Thread(target=worker, args=(g,), daemon=True) for g in slots]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


# ----------------------------------------------------------------------------- scoring
def _probabilities(p: AuditPlan, records: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    """``(probs (N, C) with NaN rows for unscored rows, fold per row)`` in audited order."""
    pos = {rid: i for i, rid in enumerate(p.ids.tolist())}
    probs = np.full((len(p.ids), len(p.classes)), np.nan)
    fold = np.full(len(p.ids), -1, dtype=np.int64)
    cols = [f"p_{c}" for c in p.classes]
    for rec in records:
        frame = pd.read_parquet(rec["predictions"], columns=["id", *cols])
        for rid, row in zip(frame["id"].astype(str), frame[cols].to_numpy(), strict=True):
            i = pos.get(rid)
            if i is not None:
                probs[i] = row
                fold[i] = rec["index"]
    return probs, fold


def _aum_scores(p: AuditPlan, rec: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """(quality, is_issue) per audited row from the aum run's margins (NaN: unseen)."""
    from fernoise.audit.aum import aum_issues, aum_quality, aum_scores

    ids, aum, _ = aum_scores(Path(rec["run"]))
    by_id = dict(
        zip([str(i) for i in ids], np.asarray(aum, dtype=np.float64).tolist(), strict=True)
    )
    values = np.array([by_id.get(i, np.nan) for i in p.ids.tolist()], dtype=np.float64)
    return aum_quality(values), aum_issues(values)


def _frame(
    p: AuditPlan, keep: np.ndarray, probs: np.ndarray, fold: np.ndarray, s: score_mod.Scores
) -> pd.DataFrame:
    """audit.parquet's rows (the scored rows), sorted by rank."""
    classes = p.classes
    df = p.manifest.df.iloc[p.audited[keep]]
    root = p.source.parent
    paths = [
        str((root / q).resolve()) if isinstance(q, str) and q else ""
        for q in (df["path"] if "path" in df.columns else [""] * len(df))
    ]
    ids = p.ids[keep]
    out = pd.DataFrame(
        {
            "id": ids,
            "path": paths,
            "given": p.labels[keep],
            "given_name": [classes[i] for i in p.labels[keep]],
            "suggested": s.suggested,
            "suggested_name": [classes[i] for i in s.suggested],
            "quality": s.quality,
            "is_issue": s.is_issue,
            "rank": score_mod.rank_rows(s.quality, ids),
            "fold": fold[keep],
        }
    )
    for c, name in enumerate(classes):
        out[f"p_{name}"] = probs[keep, c]
    if p.truth is not None:
        t = p.truth[keep]
        out["truth"] = t
        out["truth_name"] = [classes[i] if i >= 0 else None for i in t]
        out["is_wrong"] = pd.array(
            [bool(g != x) if x >= 0 else None for g, x in zip(p.labels[keep], t, strict=True)],
            dtype="boolean",
        )
    return out.sort_values("rank", kind="stable").reset_index(drop=True)


def _scores(p: AuditPlan, records: list[dict[str, Any]]) -> tuple[pd.DataFrame, np.ndarray, int]:
    """The scored frame, the joint and the number of audited rows left unscored."""
    probs, fold = _probabilities(p, records)
    keep = np.isfinite(probs).all(axis=1)
    if p.params.scorer == "aum":
        quality, issue = _aum_scores(p, records[0])
        keep &= np.isfinite(quality)
        probs_k = probs[keep] / probs[keep].sum(axis=1, keepdims=True)
        from cleanlab.count import estimate_joint

        s = score_mod.Scores(
            quality=quality[keep],
            is_issue=issue[keep],
            suggested=probs_k.argmax(axis=1).astype(np.int64),
            joint=np.asarray(estimate_joint(p.labels[keep], probs_k), dtype=np.float64),
        )
    else:
        probs_k = probs[keep] / probs[keep].sum(axis=1, keepdims=True)
        s = score_mod.cleanlab_scores(
            p.labels[keep],
            probs_k,
            filter_by=p.params.filter_by,
            quality_method=p.params.quality_method,
        )
    probs[keep] = probs_k
    return _frame(p, keep, probs, fold, s), s.joint, int((~keep).sum())


def _summary(
    p: AuditPlan, frame: pd.DataFrame, joint: np.ndarray, unscored: int, records, seconds
) -> dict[str, Any]:
    counts = score_mod.summary_counts(
        frame["given"].to_numpy(),
        frame["suggested"].to_numpy(),
        frame["is_issue"].to_numpy(),
        p.classes,
    )
    truth = None
    if p.truth is not None:
        known = frame["is_wrong"].notna().to_numpy()
        truth = {
            "source": p.truth_source,
            **score_mod.truth_metrics(
                frame["is_wrong"].to_numpy(dtype=bool, na_value=False)[known],
                frame["is_issue"].to_numpy()[known],
                frame["quality"].to_numpy()[known],
            ),
        }
    return {
        "stage": STAGE,
        "version": VERSION,
        "key": p.key,
        "manifest": str(p.source.resolve()),
        "manifest_sha256": file_sha256(p.source),
        "manifest_key": p.manifest.key,
        "dataset": p.manifest.meta.get("dataset") or p.source.resolve().parent.name,
        "classes": p.classes,
        "scorer": p.params.scorer,
        "filter_by": p.params.filter_by if p.params.scorer == "cleanlab" else None,
        "quality_method": p.params.quality_method if p.params.scorer == "cleanlab" else "aum",
        "folds": p.params.folds if p.params.scorer == "cleanlab" else None,
        "group_column": p.group_column,
        "train": json.loads(json.dumps(asdict(p.cfg), default=str)),
        "runs": [r["run"] for r in records],
        "rows": int(len(frame)),
        "unscored": unscored,
        "issues": int(frame["is_issue"].sum()),
        **counts,
        "joint": joint.tolist(),
        "truth": truth,
        "seconds": seconds,
    }


def _write_outputs(p: AuditPlan, frame: pd.DataFrame, summary: dict[str, Any]) -> list[Path]:
    from fernoise.cache import atomic_path

    out = p.dir / AUDIT_PARQUET
    with atomic_path(out) as tmp:
        frame.to_parquet(tmp, index=False)
    atomic_write_json(p.dir / AUDIT_JSON, summary)
    joint = pd.DataFrame(summary["joint"], index=p.classes, columns=p.classes)
    joint.index.name = "given \\ true"
    atomic_write_text(p.dir / JOINT_CSV, joint.to_csv())
    written = [out, p.dir / AUDIT_JSON, p.dir / JOINT_CSV]
    try:
        from fernoise.audit.gallery import write_gallery
    except ImportError:  # pragma: no cover - the gallery is part of the package
        return written
    return written + list(write_gallery(p.dir, frame, summary))


# ----------------------------------------------------------------------------- the stage
def audit_intact(audit_dir: Path, key: str | None = None) -> bool:
    """True when ``audit_dir``'s stamped outputs are what the audit wrote (``key``: and of
    that key)."""
    stamp = read_json(stamp_path(audit_dir / AUDIT_PARQUET))
    if not isinstance(stamp, dict):
        return False
    return outputs_intact(stamp, key or str(stamp.get("key")), audit_dir)


def run_audit(
    manifest_path: str | os.PathLike,
    params: AuditParams,
    cfg: Any,
    *,
    workspace: Workspace | None = None,
    runs_dir: str | os.PathLike | None = None,
    shard: tuple[int, int] = (1, 1),
    gpus: list[str] | None = None,
    force: bool = False,
    say: Say = lambda s: None,
) -> AuditResult:
    """Audit ``manifest_path``: a cache hit when the audit's outputs are intact, else run the
    folds this share holds (finished ones are skipped) and score once every fold is done.

    Long: the steps are plan, hit check, jobs, runs, scoring and writing; each is a named
    function above, and this one only sequences them and keeps the clock.
    """
    ws = workspace or Workspace()
    t0 = time.time()
    p = plan(manifest_path, params, cfg, ws)
    runs = ws.runs_dir(runs_dir)
    if not force and audit_intact(p.dir, p.key):
        ws.record(STAGE, key=p.key, output=p.dir / AUDIT_PARQUET, params=asdict(params))
        summary = read_json(p.dir / AUDIT_JSON) or {}
        n = len(summary.get("runs") or [])
        return AuditResult(p.dir, p.key, True, True, summary, n, n)
    p.dir.mkdir(parents=True, exist_ok=True)
    jobs = _jobs(p)
    i, n = shard
    mine = jobs[(i - 1) * len(jobs) // n : i * len(jobs) // n]
    todo = [j for j in mine if force or _job_done(j) is None]
    if len(todo) < len(mine):
        say(f"{len(mine) - len(todo)} of {len(mine)} runs already done")
    _run_jobs(todo, p, runs, gpus, say)
    records = [_job_done(j) for j in jobs]
    done = [r for r in records if r is not None]
    if len(done) < len(jobs):
        return AuditResult(p.dir, p.key, False, False, {}, len(done), len(jobs))
    t1 = time.time()
    frame, joint, unscored = _scores(p, done)
    seconds = {
        "folds_wall": float(sum(r["wall_seconds"] for r in done)),
        "training": float(sum(r["train_seconds"] for r in done)),
        "scoring": 0.0,
        "total": 0.0,
    }
    summary = _summary(p, frame, joint, unscored, done, seconds)
    seconds["scoring"] = time.time() - t1
    seconds["total"] = time.time() - t0
    written = _write_outputs(p, frame, summary)
    write_stamp(p.dir / AUDIT_PARQUET, p.key, written, stage=STAGE, params=asdict(params))
    ws.record(STAGE, key=p.key, output=p.dir / AUDIT_PARQUET, params=asdict(params))
    return AuditResult(p.dir, p.key, False, True, summary, len(done), len(jobs))
