"""``fernoise report``: the paper's tables from training runs, pooling only true replicates.

Reads each run's ``config.json`` and ``metrics.jsonl`` (never the model), ``eval.json`` when
``fernoise eval`` wrote one for the run, and the metadata (footer only) of the run's manifest
for its lineage. Writes nothing but the optional pictures (:func:`plot`).

**What may be pooled.** Runs land in one cell only when they differ in nothing but their
seeds (the training ``--seed`` and the noise ``--seed`` of ``corrupt``) and, for k-fold
manifests from ``fernoise split``, the fold. Everything else separates them:

- the *dataset* (one table each): the key of the clean data the run's manifest derives from
  (the last lineage entry before any ``corrupt`` or ``split``, usually ``align``'s key);
- the *protocol* (one table each): the test split (the manifest's, or k-fold: ``folds``,
  ``group_column``, split ``seed``), the validation source (the manifest's val split, a share
  carved from the training labels, oracle-clean ``label_clean`` labels, or none), epochs,
  image size and start weights (``pretrained_sha256``);
- the *noise setting* (one column each): the ``corrupt`` parameters but its seed;
- every other result-changing option in ``config.json`` (one row each): learning rates,
  batch size, warm-up, ``k``, method parameters, precision, world size, ``max_rows``, ...
  Rows are labelled by method, plus the options that differ between rows of one method.
  Fields that do not change results (device, workers, paths, counts, versions) are ignored.

**Figures** (in % in the tables, fractions in the CSV):

- ``val-selected`` (the default figure): the test accuracy at the epoch with the highest
  validation accuracy (earliest on ties); a single run shows its epoch, ``71.2 (e7)``;
- ``max / last-5`` (*test-selected*, the paper's convention): the highest test accuracy over
  the epochs, and the mean test accuracy of the last 5 epochs;
- ``final [95% CI]``, when the runs have an ``eval.json``: the final model's top-1, with its
  bootstrap interval where the cell holds one run.

**Cells** are ``mean ± std (n)``: ``std`` is the sample standard deviation (``ddof=1``) over
the pooled runs, and ``n`` the number of runs; a single run shows no ``±``. For k-fold
protocols the runs of one fold (several seeds) are averaged first and ``mean ± std (n)`` is
over the ``n`` folds; the table says so under its heading ("mean ± std over 5 folds"), and a
table whose runs cover fewer folds than its split made (or a cell with fewer folds than the
others) says which are missing, there and in :attr:`Report.notes`. A leave-one-subject-out
split (fold manifests named ``.loso-``) is headed as such. Unfinished runs (fewer epochs in ``metrics.jsonl`` than configured) are
left out and listed in :attr:`Report.notes`; so are damaged runs (each file is read by its
validating reader in :mod:`fernoise.evaluate.runs`), one note each naming the file and what is wrong.
:func:`collect` raises only when no run could be read.
"""

from __future__ import annotations

import glob
import json
import math
import os
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fernoise.errors import FernoiseError
from fernoise.evaluate.plots import noise_label

FORMATS = ("markdown", "csv", "latex")

# config.json fields that do not change a run's result, or that other groupings cover.
NOT_RESULT = frozenset(
    {
        "seed",  # pooled: the replicates
        "method",  # the row
        "noise",
        "align",
        "lineage",
        "classes",
        "label_space",
        "num_classes",  # dataset / column
        "epochs",
        "image_size",
        "pretrained_sha256",  # protocol
        "val_source",
        "val_fraction",
        "val_clean",  # protocol
        "val_labels",  # "noisy" vs "train" follows the column's noise; oracle-clean is val_clean
        "device",
        "device_requested",
        "workers",
        "devices",
        "precision_requested",
        "val_fraction_requested",
        "manifest",
        "manifest_key",
        "manifest_content",
        "key",
        "fernoise_version",
        "pretrained",
        "pretrained_report",  # the file's sha256 is what counts
        "pretrained_kind",
        "pretrained_given",
        "pretrained_partial",  # idem (partial: the sha decides)
        "n_train",
        "n_val",
        "n_test",
        "n_train_available",
        "train_class_counts",
        "two_heads",  # follows the method
        "keep_checkpoint",
        "resume",
        "notes",
        "warnings",
        "paths",
        "val_ids",
    }
)
SPLIT_STAGE, CORRUPT_STAGE = "split", "corrupt"


def _canon(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, default=str)


def _noise_sort(noise: dict[str, Any] | None) -> tuple:
    if not noise:
        return (0, "", 0.0, "")
    return (1, str(noise.get("kind") or ""), float(noise.get("rate") or 0.0), _canon(noise))


def _method_sort(m: str) -> tuple:
    """Rows in the registry's order (``fernoise methods``), then unregistered names by name."""
    from fernoise import methods

    order = methods.names()
    return (order.index(m), "") if m in order else (len(order), m)


# ============================================================================ one run
@dataclass
class RunSummary:
    """One run's identity (what it may be pooled with) and figures (fractions)."""

    path: Path
    method: str
    seed: Any
    noise_seed: Any
    fold: int | None
    dataset_key: str
    dataset_name: str
    protocol: dict[str, Any]
    options: dict[str, Any]
    noise: dict[str, Any] | None  # without its seed
    setting: str
    noise_sort: tuple
    complete: bool
    max: float | None = None
    max_epoch: int | None = None
    last: float | None = None
    val_epoch: int | None = None
    val_test: float | None = None
    final: float | None = None  # eval.json top1 of the final model
    final_ci: list[float] | None = None
    macro_f1: float | None = None
    macro_f1_ci: list[float] | None = None
    sel_precision: float | None = None  # confident set vs is_noisy, last epoch that recorded it
    sel_recall: float | None = None
    clean_share: float | None = (
        None  # share of clean training rows (eval.json), the precision base rate
    )
    forced: bool = (
        False  # eval.json was made with --force on inputs that differ from train's/align's
    )
    eval_note: str | None = None  # why eval.json was left out (made for another model.pt)
    val_in_warmup: bool = False  # the validation-selected epoch lies inside the warm-up

    @property
    def table_key(self) -> str:
        return _canon([self.dataset_key, self.protocol])

    @property
    def row_key(self) -> str:
        return _canon([self.method, self.options])

    @property
    def col_key(self) -> str:
        return _canon(self.noise)


def find_runs(items: Sequence[str | os.PathLike]) -> list[Path]:
    """Run folders named by ``items``: run folders, globs of them, or folders of runs."""
    found: list[Path] = []
    for item in items:
        s = str(item)
        matches = sorted(glob.glob(s)) if glob.has_magic(s) else [s]
        if not matches:
            raise FernoiseError(f"{s} matches nothing; pass run folders (e.g. runs/*)")
        for m in matches:
            p = Path(m)
            if p.is_file() and p.name == "config.json":
                p = p.parent
            if (p / "config.json").is_file():
                found.append(p)
            elif p.is_dir():
                kids = sorted(k for k in p.iterdir() if (k / "config.json").is_file())
                if not kids and not glob.has_magic(s):
                    raise FernoiseError(
                        f"{p} is neither a run (no config.json) nor a folder of runs"
                    )
                found.extend(kids)
            elif not glob.has_magic(s):
                raise FernoiseError(f"{p} does not exist; pass run folders (e.g. runs/*)")
    seen, out = set(), []
    for p in found:
        r = p.resolve()
        if r not in seen:
            seen.add(r)
            out.append(p)
    if not out:
        raise FernoiseError(f"no training runs found in {' '.join(map(str, items))}")
    return out


_META_CACHE: dict[tuple[str, int], dict[str, Any] | None] = {}


def _manifest_meta(path: str | None) -> dict[str, Any] | None:
    """The manifest's metadata (footer only), or None when it is gone or unreadable."""
    if not path or not Path(path).is_file():
        return None
    key = (str(path), Path(path).stat().st_mtime_ns)
    if key not in _META_CACHE:  # many runs share one manifest
        from fernoise.manifest import read_meta

        try:
            _META_CACHE[key] = read_meta(path)
        except FernoiseError:
            _META_CACHE[key] = None
    return _META_CACHE[key]


def lineage_of(config: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The run's manifest lineage: ``config["lineage"]`` if recorded, else the manifest's own."""
    if isinstance(config.get("lineage"), list):
        return config["lineage"]
    meta = _manifest_meta(config.get("manifest"))
    return meta.get("lineage") if meta and isinstance(meta.get("lineage"), list) else None


def dataset_identity(
    config: dict[str, Any], lineage: list[dict[str, Any]] | None
) -> tuple[str, str]:
    """``(key, name)`` of the clean data a run trained on.

    The key of the last lineage entry before the first ``corrupt`` or ``split`` (the aligned
    manifest, normally); a manifest without such an entry is its own dataset when it carries no
    noise, else (lineage lost) the folder it lies in stands for the dataset. The name is the
    manifest's ``dataset`` (``align --name``, default RAW's folder name), else that folder's.
    """
    manifest = config.get("manifest")
    meta = _manifest_meta(manifest) or {}
    name = meta.get("dataset") or (Path(manifest).parent.name if manifest else "?")
    root = None
    for entry in lineage or []:
        if entry.get("stage") in (CORRUPT_STAGE, SPLIT_STAGE):
            break
        if entry.get("key"):
            root = f"{entry.get('stage')}:{entry['key']}"
    if root is None:
        if not config.get("noise") and config.get("manifest_key") and not lineage:
            root = f"manifest:{config['manifest_key']}"
        else:
            root = f"folder:{Path(manifest).parent.resolve() if manifest else '?'}"
    return f"{root}|{_canon(config.get('classes'))}", name


def _split_of(lineage: list[dict[str, Any]] | None) -> tuple[dict[str, Any] | None, int | None]:
    """``(split params without the fold, fold)`` of the last ``split`` lineage entry."""
    for entry in reversed(lineage or []):
        if entry.get("stage") == SPLIT_STAGE:
            params = dict(entry.get("params") or {})
            fold = params.pop("fold", None)
            return params, (int(fold) if fold is not None else None)
    return None, None


def protocol_of(config: dict[str, Any], split: dict[str, Any] | None) -> dict[str, Any]:
    """The table-level protocol: test split, validation source, epochs, size, start weights."""
    return {
        "test": {"kfold": split} if split else "manifest",
        "val_source": config.get("val_source"),
        "val_fraction": config.get("val_fraction"),
        "val_clean": bool(config.get("val_clean")) or config.get("val_labels") == "oracle-clean",
        "epochs": config.get("epochs"),
        "image_size": config.get("image_size"),
        "start": config.get("pretrained_sha256"),
        "start_name": Path(config["pretrained"]).name if config.get("pretrained") else None,
    }


def options_of(config: dict[str, Any]) -> dict[str, Any]:
    """The result-changing options that neither the row's method nor the table covers. An
    option that is off (False) or absent (None: a run made before the option existed) is left
    out, so such runs share a row."""
    return {
        k: v
        for k, v in sorted(config.items())
        if k not in NOT_RESULT and not k.startswith("_") and v is not None and v is not False
    }


def _eval_json(path: Path, config: dict[str, Any]) -> dict[str, Any] | None:
    from fernoise.evaluate.runs import read_eval

    rep = read_eval(path / "eval.json")  # a damaged file: FernoiseError, the run is skipped with it
    if rep is None:
        return None
    if config.get("key") and rep.get("run_key") and rep["run_key"] != config["key"]:
        return None  # an eval of an earlier run in this folder
    return rep


def stale_eval(run: Path, rep: dict[str, Any]) -> str | None:
    """Why ``eval.json`` is not the evaluation of the run's current ``model.pt`` (the sha256
    train's stamp recorded when it was made differs from the one it records now, e.g. after
    ``train --force``), or None. An eval.json without ``model_sha256`` (fernoise before issue
    19) cannot tell."""
    from fernoise.cache import read_json, stamp_path

    made_for = rep.get("train_model_sha256") or rep.get("model_sha256")  # differ only under --force
    stamp = read_json(stamp_path(run / "model.pt"))
    now = (
        stamp.get("outputs", {}).get("model.pt")
        if isinstance(stamp, dict) and isinstance(stamp.get("outputs"), dict)
        else None
    )
    if not isinstance(made_for, str) or not isinstance(now, str) or made_for == now:
        return None
    return (
        f"{run / 'eval.json'} left out: it evaluated an older model.pt (sha256 {made_for[:12]}, now {now[:12]}); "
        f"re-run `fernoise eval {run}`"
    )


def summarise(path: str | os.PathLike) -> RunSummary:
    """Read one run folder into a :class:`RunSummary`."""
    from fernoise.evaluate.stage import load_run, max_last, val_selected, val_selected_warning

    run = load_run(path, need_model=False)
    cfg = run.config
    lineage = lineage_of(cfg)
    split, fold = _split_of(lineage)
    noise_full = cfg.get("noise") or None
    noise = {k: v for k, v in noise_full.items() if k != "seed"} if noise_full else None
    if split is not None and _is_loso(cfg):
        split = {**split, "loso": True}
    key, name = dataset_identity(cfg, lineage)
    m = max_last(run.history, "test_acc")
    v = val_selected(run.history)
    epochs = cfg.get("epochs")
    s = RunSummary(
        path=run.path,
        method=str(cfg.get("method") or "?"),
        seed=cfg.get("seed"),
        noise_seed=noise_full.get("seed") if noise_full else None,
        fold=fold,
        dataset_key=key,
        dataset_name=name,
        protocol=protocol_of(cfg, split),
        options=options_of(cfg),
        noise=noise,
        setting=_setting_label(noise),
        noise_sort=_noise_sort(noise),
        complete=epochs is None or len(run.history) >= int(epochs),
        max=m["max"] if m else None,
        max_epoch=m["max_epoch"] if m else None,
        last=m["last"] if m else None,
        val_epoch=v["epoch"] if v else None,
        val_test=v["test_acc"] if v else None,
        val_in_warmup=val_selected_warning(run.history, str(cfg.get("method") or "")) is not None,
    )
    for row in reversed(run.history):
        if row.get("confident_precision") is not None or row.get("confident_recall") is not None:
            s.sel_precision, s.sel_recall = (
                row.get("confident_precision"),
                row.get("confident_recall"),
            )
            break
    rep = _eval_json(run.path, cfg)
    s.eval_note = stale_eval(run.path, rep) if rep else None
    if s.eval_note:
        rep = None
    if rep and rep.get("own_manifest", True):
        s.forced = bool(rep.get("forced"))
        ci = rep.get("ci95") or {}
        s.final, s.macro_f1 = rep.get("top1"), rep.get("macro_f1")
        s.final_ci, s.macro_f1_ci = ci.get("top1"), ci.get("macro_f1")
        s.clean_share = rep.get("train_clean_share")
    return s


def _is_loso(config: dict[str, Any]) -> bool:
    """Whether the run's manifest is (made from) a leave-one-subject-out fold: ``fernoise split
    --loso`` names its folds ``<stem>.loso-<i>-of-<G>-s<seed>.parquet`` (and corrupt keeps the stem)."""
    import re

    return bool(re.search(r"\.loso-\d+-of-\d+-s\d+", Path(str(config.get("manifest") or "")).name))


def _setting_label(noise: dict[str, Any] | None) -> str:
    label = noise_label(noise)
    extra = {k: v for k, v in (noise or {}).items() if k not in ("kind", "rate", "column")}
    if extra:  # e.g. another pairs file or matrix: same kind and rate, other noise
        import hashlib

        label += f" [{hashlib.sha256(_canon(extra).encode()).hexdigest()[:6]}]"
    return label


# ============================================================================ pooling
@dataclass(frozen=True)
class Stat:
    """``mean ± std (n)`` of a figure over replicates; ``std`` is ddof=1, None when n = 1."""

    mean: float
    std: float | None
    n: int


def pool(values: Sequence[float | None]) -> Stat | None:
    """Mean and sample standard deviation (ddof=1) of the non-missing values; None if none."""
    vals = np.array(
        [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))],
        dtype=np.float64,
    )
    if not len(vals):
        return None
    return Stat(float(vals.mean()), float(vals.std(ddof=1)) if len(vals) > 1 else None, len(vals))


@dataclass
class Cell:
    """The runs of one (row, noise setting) and their pooled figures."""

    runs: list[RunSummary]
    kfold: bool = False

    def units(self, attr: str) -> list[float | None]:
        """The replicate values of ``attr``: one per run, or per fold (its runs averaged)."""
        if not self.kfold:
            return [getattr(r, attr) for r in self.runs]
        by_fold: dict[Any, list[float]] = defaultdict(list)
        for r in self.runs:
            if getattr(r, attr) is not None:
                by_fold[r.fold].append(getattr(r, attr))
        return [float(np.mean(v)) for _, v in sorted(by_fold.items(), key=lambda kv: str(kv[0]))]

    def stat(self, attr: str) -> Stat | None:
        return pool(self.units(attr))

    @property
    def single(self) -> RunSummary | None:
        return self.runs[0] if len(self.runs) == 1 else None


@dataclass
class Table:
    """One dataset under one protocol: rows (methods) x columns (noise settings)."""

    dataset: str
    dataset_key: str
    protocol: dict[str, Any]
    settings: list[tuple[str, str, dict[str, Any] | None]]  # (col key, label, noise)
    rows: list[tuple[str, str]]  # (row key, label)
    cells: dict[tuple[str, str], Cell]
    has_final: bool

    @property
    def kfold(self) -> int | None:
        t = self.protocol.get("test")
        return int(t["kfold"].get("folds") or 0) or None if isinstance(t, dict) else None

    def title(self) -> str:
        """``dataset <folder> (<stage> <key[:10]>, <C> classes)``: the clean data the table is on."""
        root, _, classes = self.dataset_key.partition("|")
        kind, _, key = root.partition(":")
        try:
            n = f", {len(json.loads(classes))} classes"
        except (ValueError, TypeError):
            n = ""
        if kind == "folder":
            return f"dataset {self.dataset} (manifest lineage unknown: grouped by its folder{n})"
        return f"dataset {self.dataset} ({kind} {key[:10]}{n})"

    def protocol_text(self) -> str:
        return describe_protocol(self.protocol)

    def folds_present(self) -> list[int]:
        """The folds any run of the table is on (k-fold tables; else [])."""
        return sorted({r.fold for c in self.cells.values() for r in c.runs if r.fold is not None})

    def folds_text(self) -> str | None:
        """``mean ± std over 5 folds``, or what is missing when fewer folds than the split
        made have runs; None for a table that is not k-fold."""
        k = self.kfold
        if not k:
            return None
        have = self.folds_present()
        if len(have) >= k:
            return f"mean ± std over {k} folds"
        missing = [i for i in range(k) if i not in have]
        shown = ", ".join(map(str, missing[:10])) + (", ..." if len(missing) > 10 else "")
        return (
            f"warning: only {len(have)} of {k} folds have runs: mean ± std over {len(have)} "
            f"folds (missing fold(s) {shown}); not the {k}-fold figure"
        )


def describe_protocol(p: dict[str, Any]) -> str:
    """One line naming the test split, validation source, epochs, size and start weights."""
    t = p.get("test")
    if isinstance(t, dict):
        k = t["kfold"]
        test = (
            f"leave-one-{k.get('group_column') or 'group'}-out ({k.get('folds', '?')} folds)"
            if k.get("loso")
            else f"k-fold ({k.get('folds', '?')})"
        ) + ": test = the held-out fold"
        if k.get("group_column"):
            test += f", grouped by {k['group_column']}"
        if k.get("seed") is not None:
            test += f", split seed {k['seed']}"
    else:
        test = "test = the manifest's test split"
    src, frac = p.get("val_source"), p.get("val_fraction")
    share = f"{float(frac) * 100:g}% " if frac else ""
    if p.get("val_clean"):
        where = "the manifest's val split" if src == "split" else f"{share}carved from train"
        val = f"validation: {where}, oracle-clean labels (label_clean)"
    elif src == "split":
        val = "validation: the manifest's val split"
    elif src == "carved":
        val = f"validation: {share}carved from train, with its training labels (noisy where the column has noise)"
    elif src == "none":
        val = "no validation (val-selected empty)"
    else:
        val = "validation: not recorded"
    start = "start: random init"
    if p.get("start"):
        start = f"start: {p.get('start_name') or 'weights'} ({str(p['start'])[:8]})"
    return "; ".join(
        [test, val, f"{p.get('epochs', '?')} epochs", f"{p.get('image_size', '?')} px", start]
    )


@dataclass
class Report:
    """The tables of a set of runs, and notes (left-out runs, suspicious cells)."""

    tables: list[Table]
    notes: list[str] = field(default_factory=list)


def _row_labels(runs: Sequence[RunSummary]) -> dict[str, str]:
    """Row key -> label: the method, plus the options that differ between its rows."""
    by_method: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
    for r in runs:
        by_method[r.method][r.row_key] = r.options
    labels = {}
    for method, rows in by_method.items():
        if len(rows) == 1:
            labels.update({k: method for k in rows})
            continue
        keys = sorted({k for o in rows.values() for k in o})
        differ = [k for k in keys if len({_canon(o.get(k)) for o in rows.values()}) > 1]
        for rk, o in rows.items():
            labels[rk] = f"{method} ({', '.join(f'{k}={o.get(k)}' for k in differ)})"
    return labels


def build(runs: Sequence[RunSummary]) -> Report:
    """Group runs into tables (dataset x protocol), rows, noise columns and cells."""
    notes: list[str] = []
    done = [r for r in runs if r.complete]
    if len(done) < len(runs):
        left = [str(r.path.name) for r in runs if not r.complete]
        notes.append(f"left out {len(left)} unfinished run(s): {', '.join(left)}")
    by_table: dict[str, list[RunSummary]] = defaultdict(list)
    for r in done:
        by_table[r.table_key].append(r)
    tables = []
    for rs in by_table.values():
        names = Counter(r.dataset_name for r in rs)
        labels = _row_labels(rs)
        rows = sorted(
            {(r.row_key, labels[r.row_key], r.method) for r in rs},
            key=lambda x: (_method_sort(x[2]), x[1]),
        )
        settings = sorted({(r.noise_sort, r.col_key, r.setting) for r in rs})
        cells: dict[tuple[str, str], Cell] = {}
        kfold = isinstance(rs[0].protocol.get("test"), dict)
        for r in rs:
            cells.setdefault((r.row_key, r.col_key), Cell([], kfold=kfold)).runs.append(r)
        for (rk, _ck), cell in cells.items():
            seeds = Counter((r.seed, r.noise_seed, r.fold) for r in cell.runs)
            dup = [s for s, n in seeds.items() if n > 1]
            if dup:
                notes.append(
                    f"{labels[rk]} / {cell.runs[0].setting}: {len(cell.runs)} runs share seeds {dup[0][:2]}"
                    f"{' fold ' + str(dup[0][2]) if dup[0][2] is not None else ''} and differ only in "
                    "fields that do not change results (device, paths): they are not independent replicates"
                )
        noise_of = {r.col_key: r.noise for r in rs}
        tables.append(
            Table(
                dataset=names.most_common(1)[0][0],
                dataset_key=rs[0].dataset_key,
                protocol=rs[0].protocol,
                settings=[(ck, label, noise_of[ck]) for _, ck, label in settings],
                rows=[(rk, label) for rk, label, _ in rows],
                cells=cells,
                has_final=any(r.final is not None for r in rs),
            )
        )
    tables.sort(key=lambda t: (t.dataset, t.protocol_text()))
    for t in tables:
        notes += _fold_notes(t)
    if len({t.dataset_key for t in tables}) > 1:
        notes.append(
            f"{len({t.dataset_key for t in tables})} datasets: one table each, never averaged together"
        )
    return Report(tables=tables, notes=notes)


def _fold_notes(t: Table) -> list[str]:
    """A k-fold table's missing folds, and its cells with fewer folds than the table has."""
    text = t.folds_text()
    if text is None:
        return []
    notes = []
    if text.startswith("warning: "):
        what = t.protocol_text().split(":")[0]
        notes.append(f"{t.title()}, {what}: {text.removeprefix('warning: ')}")
    have = len(t.folds_present())
    labels = dict(t.rows)
    for (rk, _ck), cell in t.cells.items():
        n = len({r.fold for r in cell.runs})
        if n < have:
            notes.append(
                f"{labels.get(rk, rk)} / {cell.runs[0].setting}: runs on {n} of the table's "
                f"{have} folds; its mean ± std is over those {n}"
            )
    return notes


def collect(items: Sequence[str | os.PathLike]) -> Report:
    """:func:`build` over the runs named by ``items`` (run folders, globs, folders of runs)."""
    from fernoise.evaluate.runs import read_config

    paths = find_runs(items)
    summaries, seen, broken = [], set(), []
    for p in paths:
        try:
            s = summarise(p)
        except FernoiseError as e:  # one broken run folder does not hide the others' table
            broken.append(f"{p}: {e.one_line()}")
            continue
        key = read_config(s.path / "config.json").get("key") or str(s.path.resolve())
        if key in seen:  # the same run copied elsewhere
            continue
        seen.add(key)
        summaries.append(s)
    if not summaries:
        raise FernoiseError(
            f"no readable training run among {len(paths)} folder(s); first: {broken[0]}"
        )
    rep = build(summaries)
    rep.notes[:0] = [f"skipped {b}" for b in broken]
    rep.notes += [s.eval_note for s in summaries if s.eval_note]
    warm = [s.path.name for s in summaries if s.val_in_warmup and s.complete]
    if warm:
        rep.notes.append(
            f"†: the validation-selected epoch lies inside the warm-up (the warm-up's model) in "
            f"{len(warm)} run(s): {', '.join(warm[:10])}{', ...' if len(warm) > 10 else ''}"
        )
    forced = [s.path.name for s in summaries if s.forced]
    if forced:
        rep.notes.append(
            f"final*: evaluated with --force on inputs that differ from what train/align recorded: "
            f"{', '.join(forced)}"
        )
    return rep


# ============================================================================ cell text
def _pct(v: float | None) -> str:
    return "" if v is None else f"{100 * v:.1f}"


def _pm(s: Stat, pm: str = "±") -> str:
    return _pct(s.mean) if s.std is None else f"{_pct(s.mean)} {pm} {_pct(s.std)}"


def _n(s: Stat) -> str:
    return "" if s.n == 1 else f" ({s.n})"


def cell_texts(cell: Cell | None, *, with_final: bool, pm: str = "±") -> list[str]:
    """The strings of a cell: val-selected, max / last-5 and (``with_final``) final [95% CI]."""
    if cell is None:
        return ["", ""] + ([""] if with_final else [])
    one = cell.single
    out = []
    v = cell.stat("val_test")
    if v is None:
        out.append("—")
    elif one is not None:
        out.append(f"{_pct(v.mean)} (e{one.val_epoch})")
    else:
        out.append(f"{_pm(v, pm)}{_n(v)}")
    if v is not None and any(r.val_in_warmup for r in cell.runs):
        out[-1] += "†"  # selected inside the warm-up: the notes name the runs
    mx, last = cell.stat("max"), cell.stat("last")
    if mx is None or last is None:
        out.append("—")
    else:
        n = _n(mx) if mx.n == last.n else f" ({mx.n}/{last.n})"
        out.append(f"{_pm(mx, pm)} / {_pm(last, pm)}{n}")
    if with_final:
        f = cell.stat("final")
        if f is None:
            out.append("—")
        elif one is not None and one.final_ci:
            out.append(f"{_pct(f.mean)} [{_pct(one.final_ci[0])}, {_pct(one.final_ci[1])}]")
        else:
            out.append(f"{_pm(f, pm)}{_n(f)}")
        if f is not None and any(r.forced for r in cell.runs):
            out[-1] += "*"  # --force on changed inputs: the notes name the runs
    return out


def table_grid(t: Table, *, pm: str = "±") -> tuple[list[str], list[list[str]]]:
    """``(header, rows)`` of strings: the method column, then 2 or 3 columns per setting."""
    header = ["method"]
    for _, label, _ in t.settings:
        header += [f"{label}", f"{label} max / last-5 (test-selected)"]
        if t.has_final:
            header.append(f"{label} final [95% CI]")
    rows = []
    for rk, label in t.rows:
        row = [label]
        for ck, _, _ in t.settings:
            row += cell_texts(t.cells.get((rk, ck)), with_final=t.has_final, pm=pm)
        rows.append(row)
    return header, rows


LEGEND = (
    "cells: test accuracy in %, mean ± sample std (ddof=1) over seeds (n runs; k-fold: over folds); "
    "no ± for one run. `<setting>`: validation-selected (test accuracy at the epoch of best validation "
    "accuracy; e<N> = that epoch). `max / last-5`: test-selected, the paper's convention (best test "
    "accuracy over epochs / mean of the last 5 epochs). `final`: the final model's top-1 from eval.json, "
    "with its 95% bootstrap interval for one run; `*`: evaluated with --force on changed inputs; "
    "`†`: the validation-selected epoch of a run lies inside the warm-up (its figure is the warm-up's "
    "model, before the method's own loss)."
)


# ============================================================================ formats
def markdown(header: list[str], rows: list[list[str]]) -> str:
    """A GitHub Markdown table."""
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)
    ]

    def line(cells):
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    sep = "| " + " | ".join("-" * w for w in widths) + " |"
    return "\n".join([line(header), sep, *(line(r) for r in rows)]) + "\n"


def markdown_report(rep: Report) -> str:
    """Each table under a heading naming its dataset and protocol, then the legend."""
    parts = []
    for t in rep.tables:
        header, rows = table_grid(t)
        folds = t.folds_text()
        folds = (
            f"\n\n{'**' + folds + '**' if folds.startswith('warning') else folds}" if folds else ""
        )
        parts.append(f"### {t.title()}\n\n{t.protocol_text()}{folds}\n\n{markdown(header, rows)}")
    parts.append(LEGEND + "\n")
    return "\n".join(parts)


CSV_COLUMNS = (
    "dataset",
    "dataset_key",
    "protocol",
    "kfold",
    "method",
    "row",
    "options",
    "setting",
    "noise_kind",
    "noise_rate",
    "n",
    "seeds",
    "folds",
    "val_selected_mean",
    "val_selected_std",
    "val_epoch",
    "max_mean",
    "max_std",
    "last5_mean",
    "last5_std",
    "final_top1_mean",
    "final_top1_std",
    "final_top1_ci_lo",
    "final_top1_ci_hi",
    "final_macro_f1_mean",
    "final_macro_f1_std",
    "final_macro_f1_ci_lo",
    "final_macro_f1_ci_hi",
    "selection_precision_mean",
    "selection_recall_mean",
    "runs",
    "final_forced",
)


def _num(v: float | None) -> str:
    return "" if v is None else f"{v:.6f}"


def csv_text(rep: Report) -> str:
    """One row per cell with its numbers as fractions (0-1): ready for pandas or a spreadsheet.

    ``n`` counts the replicates the mean and ``std`` (ddof=1, empty for one) are over: runs,
    or folds for k-fold; ``seeds`` lists ``train seed/noise seed`` of every run.
    """
    import io

    from fernoise import csvsafe

    buf = io.StringIO()
    w = csvsafe.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for t in rep.tables:
        for rk, label in t.rows:
            for ck, setting, noise in t.settings:
                cell = t.cells.get((rk, ck))
                if cell is not None:
                    w.writerow(_csv_row(t, label, setting, noise, cell))
    return buf.getvalue()


def _csv_row(
    t: Table, label: str, setting: str, noise: dict[str, Any] | None, cell: Cell
) -> list[Any]:
    r0, one = cell.runs[0], cell.single
    st = {
        a: cell.stat(a)
        for a in ("val_test", "max", "last", "final", "macro_f1", "sel_precision", "sel_recall")
    }
    n = max((s.n for s in st.values() if s), default=len(cell.units("max")))

    def mean(a: str) -> str:
        s = st[a]
        return _num(s.mean if s else None)

    def std(a: str) -> str:
        s = st[a]
        return _num(s.std if s else None)

    def ci(v: list[float] | None, i: int) -> str:
        return _num(v[i]) if (one is not None and v) else ""

    return [
        t.dataset,
        t.dataset_key,
        t.protocol_text(),
        t.kfold or "",
        r0.method,
        label,
        _canon(r0.options),
        setting,
        (noise or {}).get("kind", "clean"),
        "" if not noise or noise.get("rate") is None else noise["rate"],
        n,
        " ".join(f"{r.seed}/{'' if r.noise_seed is None else r.noise_seed}" for r in cell.runs),
        " ".join(sorted({str(r.fold) for r in cell.runs if r.fold is not None})),
        mean("val_test"),
        std("val_test"),
        one.val_epoch if one and one.val_epoch else "",
        mean("max"),
        std("max"),
        mean("last"),
        std("last"),
        mean("final"),
        std("final"),
        ci(r0.final_ci, 0),
        ci(r0.final_ci, 1),
        mean("macro_f1"),
        std("macro_f1"),
        ci(r0.macro_f1_ci, 0),
        ci(r0.macro_f1_ci, 1),
        mean("sel_precision"),
        mean("sel_recall"),
        " ".join(str(r.path) for r in cell.runs),
        "yes"
        if any(r.forced for r in cell.runs)
        else "",  # an eval.json made with --force on changed inputs
    ]


def _tex(s: str) -> str:
    for a, b in (
        ("\\", r"\textbackslash{}"),
        ("&", r"\&"),
        ("%", r"\%"),
        ("_", r"\_"),
        ("#", r"\#"),
        ("$", r"\$"),
        ("{", r"\{"),
        ("}", r"\}"),
        ("~", r"\textasciitilde{}"),
        ("^", r"\^{}"),
    ):
        s = s.replace(a, b)
    return s


def latex_report(rep: Report) -> str:
    """One booktabs ``table`` per dataset x protocol; the caption names both."""
    out = []
    for t in rep.tables:
        per = 3 if t.has_final else 2
        subs = ["val-sel.", "max / last-5"] + (["final [95\\% CI]"] if t.has_final else [])
        cols = "l" + ("c" * per) * len(t.settings)
        head1 = ["Method"] + [
            rf"\multicolumn{{{per}}}{{c}}{{{_tex(label)}}}" for _, label, _ in t.settings
        ]
        rules = " ".join(
            rf"\cmidrule(lr){{{2 + i * per}-{1 + (i + 1) * per}}}" for i in range(len(t.settings))
        )
        head2 = [""] + subs * len(t.settings)
        lines = [
            r"\begin{table}[t]",
            r"\centering",
            r"\small",
            rf"\caption{{{_tex(t.title())}. {_tex(t.protocol_text())}. Test accuracy (\%), mean $\pm$ sample std "
            rf"(ddof=1) over {_tex(_over(t))}; val-sel.: at the epoch of best validation accuracy; max / last-5: "
            r"test-selected (the paper's convention).}",
            rf"\begin{{tabular}}{{{cols}}}",
            r"\toprule",
            " & ".join(head1) + r" \\",
            rules,
            " & ".join(head2) + r" \\",
            r"\midrule",
        ]
        _, rows = table_grid(t, pm="$\\pm$")
        for row in rows:
            cells = [_tex(row[0])] + [c.replace("—", "--") for c in row[1:]]
            lines.append(" & ".join(cells) + r" \\")
        lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}", ""]
        out.append("\n".join(lines))
    return "\n".join(out)


def _over(t: Table) -> str:
    """What a table's ± is over: ``seeds (n)``, or ``the 5 folds`` / ``2 of 5 folds (some missing)``."""
    if not t.kfold:
        return "seeds (n)"
    have = len(t.folds_present())
    return f"{have} folds" if have >= t.kfold else f"{have} of {t.kfold} folds (some missing)"


def render(rep: Report, fmt: str = "markdown") -> str:
    """The report as Markdown, CSV or LaTeX text (always ending in a newline)."""
    if fmt not in FORMATS:
        raise FernoiseError(
            f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}", flag="--format"
        )
    if fmt == "markdown":
        return markdown_report(rep)
    return csv_text(rep) if fmt == "csv" else latex_report(rep)


def report(items: Sequence[str | os.PathLike], *, fmt: str = "markdown") -> str:
    """The tables of the runs named by ``items`` as Markdown, CSV or LaTeX text."""
    if fmt not in FORMATS:
        raise FernoiseError(
            f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}", flag="--format"
        )
    return render(collect(items), fmt)


# ============================================================================ pictures
ACCURACY_PNG = "accuracy_vs_noise.png"
SELECTION_PNG = "selection_vs_noise.png"


def plot(rep: Report, out_dir: str | os.PathLike) -> list[Path]:
    """``accuracy_vs_noise.png`` and, where a method selects samples, ``selection_vs_noise.png``."""
    from fernoise.evaluate import plots

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    acc_panels, sel_panels = [], []
    for t in rep.tables:
        series = plot_series(t)
        title = f"{t.dataset}: {t.protocol_text()}"
        if series["kinds"]:
            acc_panels.append((title, series))
        if series["selection"]:
            sel_panels.append((title, series))
    written = [plots.accuracy_vs_noise_png(acc_panels, out_dir / ACCURACY_PNG)]
    if sel_panels:
        written.append(plots.selection_vs_noise_png(sel_panels, out_dir / SELECTION_PNG))
    else:
        (out_dir / SELECTION_PNG).unlink(missing_ok=True)
    return written


def plot_series(t: Table) -> dict[str, Any]:
    """The plotted numbers of a table (fractions), per noise kind with a rate.

    ``{"figure": "val_test" | "last", "kinds": {kind: {row label: [(rate, mean, std or 0, n)]}},
    "selection": {row label: {kind: [(rate, precision Stat, recall Stat, base rate or None)]}},
    "chance": 1 / C (None when the class list is unknown), "over": "seeds" | "2 folds" | ...}``.
    The clean column is rate 0 of every kind. The figure is the validation-selected accuracy,
    or last-5 when no run of the table had a validation split.
    """
    figure = "val_test" if any(c.stat("val_test") for c in t.cells.values()) else "last"
    kinds = sorted({n["kind"] for _, _, n in t.settings if n and n.get("rate") is not None})
    try:
        n_classes = len(json.loads(t.dataset_key.partition("|")[2]))
    except (ValueError, TypeError):
        n_classes = 0
    out: dict[str, Any] = {
        "figure": figure,
        "kinds": {},
        "selection": {},
        "chance": 1 / n_classes if n_classes else None,
        "over": _over(t).removesuffix(" (n)"),
    }
    for kind in kinds:
        out["kinds"][kind] = {}
        for rk, label in t.rows:
            pts, sel = [], []
            for ck, _, noise in t.settings:
                if noise and (noise.get("kind") != kind or noise.get("rate") is None):
                    continue
                cell = t.cells.get((rk, ck))
                if cell is None:
                    continue
                rate = float(noise["rate"]) if noise else 0.0
                s = cell.stat(figure)
                if s is not None:
                    pts.append((rate, s.mean, s.std or 0.0, s.n))
                p, r = cell.stat("sel_precision"), cell.stat("sel_recall")
                if p is not None or r is not None:
                    base = cell.stat("clean_share")
                    sel.append(
                        (rate, p, r, base.mean if base else (1 - rate if kind == "sym" else None))
                    )
            if pts:
                out["kinds"][kind][label] = sorted(pts)
            if sel:
                out["selection"].setdefault(label, {})[kind] = sorted(sel, key=lambda x: x[0])
    out["kinds"] = {k: v for k, v in out["kinds"].items() if v}
    return out
