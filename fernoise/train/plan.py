"""`fernoise train`'s plan: everything a run needs, read and checked before anything is written.

:func:`plan` reads the manifest (``split == train`` rows with a label train, ``val`` rows
validate, or a seeded stratified ``val_fraction`` of train when the manifest has none, ``test``
rows test), resolves the configuration (the method's parameters, the device, precision and
view path, the ``--pretrained`` start), and computes the run's key and folder. Raises a
FernoiseError naming the flag on any bad input; writes nothing. The key's manifest input is
the content digest of the columns train reads (``READS``), so an edited manifest never hits an
old run; options added after a run format existed enter the key only when set.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fernoise import __version__
from fernoise.cache import (
    Workspace,
    file_sha256,
    outputs_intact,
    read_json,
    stage_key,
    stamp_path,
)
from fernoise.devices import resolve_device
from fernoise.errors import FernoiseError, require_folder
from fernoise.manifest import Manifest, check_labels, find_stage, read_manifest, resolve_manifest
from fernoise.train.config import (
    READS,
    VERSION,
    TrainConfig,
    resolve_precision,
)


# ----------------------------------------------------------------------------- the plan
@dataclass
class Plan:
    """Everything the loop needs, checked before anything is written."""

    cfg: TrainConfig
    manifest: Manifest
    device: str
    precision: str
    key: str
    run_dir: Path
    config: dict[str, Any]
    key_params: dict[str, Any]
    rows: pd.DataFrame  # usable rows, in array-cache order
    train_pos: np.ndarray
    val_pos: np.ndarray
    test_pos: np.ndarray
    labels: np.ndarray  # (len(rows),) int64, -1 where unlabelled
    is_noisy: np.ndarray | None  # (len(rows),) bool for the train rows' flags, or None
    val_ids: list[str] | None
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # one-line facts printed before training
    paths: list[str] = field(default_factory=list)  # resolved crop paths, one per row of `rows`
    cache_dir: Path | None = None  # the decoded-image cache folder (<workspace>/.fernoise/arrays)
    shas: list[str | None] | None = None  # crop_sha256 per row when the manifest records it


def _carve_val(train: pd.DataFrame, fraction: float, seed: int) -> pd.Index:
    """A seeded, stratified ``fraction`` of ``train`` (per class: round(fraction * n_c))."""
    rng = np.random.default_rng([seed, 0x7A1])
    picked = []
    for _, group in train.groupby("label", sort=True):
        n = int(round(fraction * len(group)))
        if n:
            picked.extend(group.index[rng.choice(len(group), size=n, replace=False)])
    return pd.Index(sorted(picked))


def _subset(train: pd.DataFrame, n: int, seed: int) -> pd.Index:
    """A seeded subset of ``n`` rows of ``train``, stratified by label (largest remainder):
    :func:`fernoise.subset.stratified_subset`, the rule align's ``--max-rows`` uses too."""
    from fernoise.subset import stratified_subset

    return train.index[stratified_subset(train["label"].astype(int).tolist(), n, seed)]


def _resolve_paths(m: Manifest, rel: pd.Series) -> tuple[list[str], list[str]]:
    """Crop paths resolved against the manifest's folder, and those that land outside it."""
    root = os.path.realpath(m.root)
    dirs: dict[str, str] = {}  # realpath per folder: one call per folder, not per crop
    paths, outside = [], []
    for x in rel:
        joined = os.path.join(root, x)  # an absolute x stays absolute
        folder, name = os.path.split(os.path.normpath(joined))
        if folder not in dirs:
            dirs[folder] = os.path.realpath(folder)
        full = os.path.join(dirs[folder], name)
        paths.append(full)
        if os.path.commonpath([root, full]) != root:
            outside.append(str(x))
    return paths, outside


def plan(
    manifest_path: str | os.PathLike,
    cfg: TrainConfig,
    *,
    runs_dir: str | os.PathLike | None = None,
    workspace: Workspace | None = None,
) -> Plan:
    """Read and check the manifest and the configuration; compute the key and the run folder.

    Raises FernoiseError (naming the flag) on any bad input; writes nothing.
    """
    if runs_dir is not None:
        require_folder(runs_dir, "runs folder", flag="--runs-dir", may_be_missing=True)
    m, cfg, heads, warnings = _read(manifest_path, cfg)
    assert m.path is not None  # read from a file
    r = _rows(m, cfg)
    warnings += r.warnings
    device, precision, augment = _where(cfg)
    ws = workspace or Workspace()
    start = _start_weights(cfg, ws)
    key_in = m.key or file_sha256(m.path)
    content = m.content_key(READS)  # one pass over the columns train reads
    key_params = _key_params(cfg, precision, augment, start["pretrained_sha256"], r.val_fraction)
    key = stage_key("train", VERSION, key_params, {"manifest": key_in, "content": content})
    config = {
        **{k: v for k, v in asdict(cfg).items() if k not in ("devices",)},
        "k": getattr(cfg.method_params, "k", None),
        "heads": heads,
        "pretrained": start["pretrained"],
        "pretrained_kind": start["pretrained_kind"],
        "pretrained_given": cfg.pretrained,
        "pretrained_sha256": start["pretrained_sha256"],
        "pretrained_report": start["pretrained_report"],
        "pretrained_license": start.get("pretrained_license"),
        "precision": precision,
        "precision_requested": cfg.precision,
        "augment": augment,
        "augment_requested": cfg.augment,
        "compile": cfg.compile,
        "device": device,
        "device_requested": cfg.device,
        "world_size": key_params["world_size"],
        "val_fraction": r.val_fraction,
        "val_fraction_requested": cfg.val_fraction,
        "val_source": r.val_source,
        "manifest": str(Path(m.path).resolve()),
        "manifest_key": key_in,
        "manifest_content": content,
        **_data_fields(m, cfg, r, heads),
        "stage_version": VERSION,
        "fernoise_version": __version__,
        "key": key,
    }
    return Plan(
        cfg=cfg,
        manifest=m,
        device=device,
        precision=precision,
        key=key,
        run_dir=ws.runs_dir(runs_dir).resolve() / key[:16],
        config=config,
        key_params=key_params,
        rows=r.rows,
        train_pos=r.train.index.to_numpy(np.int64),
        val_pos=r.val.index.to_numpy(np.int64),
        test_pos=r.test.index.to_numpy(np.int64),
        labels=_labels(cfg, r),
        is_noisy=(
            r.rows["is_noisy"].fillna(False).astype(bool).to_numpy()
            if "is_noisy" in r.rows.columns
            else None
        ),
        val_ids=r.val_ids,
        warnings=warnings,
        notes=r.notes,
        paths=r.paths,
        cache_dir=ws.root / ".fernoise" / "arrays",
        shas=r.shas,
    )


def _labels(cfg: TrainConfig, r: _Rows) -> np.ndarray:
    """int64 per usable row, -1 where unlabelled; with ``--val-clean`` the validation rows'
    labels are their clean labels (oracle-clean validation)."""
    labels = r.rows["label"].fillna(-1).astype(np.int64).to_numpy().copy()
    if cfg.val_clean:
        vpos = r.val.index.to_numpy(np.int64)
        labels[vpos] = r.rows["label_clean"].iloc[vpos].fillna(-1).astype(np.int64).to_numpy()
    return labels


def _where(cfg: TrainConfig) -> tuple[str, str, str]:
    """The device, precision and view path the run resolves to here (``auto`` answered)."""
    from fernoise.train.augment import resolve_augment

    device = resolve_device(cfg.device)
    return device, resolve_precision(cfg.precision, device), resolve_augment(cfg.augment, device)


def _read(manifest_path, cfg: TrainConfig) -> tuple[Manifest, TrainConfig, list[str], list[str]]:
    """The manifest, checked (a crop column, 2+ classes, labels in the class list), and the
    configuration with the method's parameters resolved for its classes (e.g. ncctfer's k None =
    min(4, C - 1)); also the method's module names and warnings about edits to the manifest."""
    m = read_manifest(resolve_manifest(manifest_path))
    if "path" not in m.df.columns:
        raise FernoiseError(
            f"{m.path} has no `path` column (the crop of each row); make the manifest with `fernoise align`",
            flag="MANIFEST",
        )
    classes = m.classes
    if not classes:
        raise FernoiseError(
            f"{m.path} has no class list in its metadata; make it with `fernoise align`",
            flag="MANIFEST",
        )
    if len(classes) < 2:
        raise FernoiseError(
            f"{m.path} has {len(classes)} class ({classes}); training needs at least 2",
            flag="MANIFEST",
        )
    assert m.path is not None  # read from a file
    heads, resolved = method_heads(cfg, len(classes))
    cfg = replace(cfg, method_params=resolved)
    try:
        check_labels(m.df, classes)
    except FernoiseError as e:
        raise FernoiseError(f"{m.path}: {e}; fix the manifest's labels", flag="MANIFEST") from None
    warnings = []
    edited = m.edited(READS)
    if edited:
        warnings.append(
            f"{m.path.name} was edited after `fernoise {m.meta.get('stage', '?')}` wrote it "
            f"({', '.join(edited)} differ from its recorded digests); the run is keyed on its content"
        )
    if cfg.val_clean and "label_clean" not in m.df.columns:
        raise FernoiseError(
            f"{m.path} has no label_clean column (it was not corrupted); drop --val-clean",
            flag="--val-clean",
        )
    from fernoise.manifest import unknown_splits

    if other_splits := unknown_splits(m.df):  # e.g. `holdout`: said, never silently dropped
        warnings.append(f"{m.path.name}: {other_splits}")
    return m, cfg, heads, warnings


@dataclass
class _Rows:
    """The usable rows and how they split into train, validation and test."""

    rows: pd.DataFrame
    train: pd.DataFrame
    val: pd.DataFrame
    test: pd.DataFrame
    n_train_all: int
    val_ids: list[str] | None
    val_source: str
    val_fraction: float | None
    val_labels: str | None
    warnings: list[str]
    notes: list[str]
    paths: list[str]  # resolved crop paths, one per row of `rows`
    shas: list[str | None] | None  # crop_sha256 per row when the manifest records it


def _rows(m: Manifest, cfg: TrainConfig) -> _Rows:
    """The usable rows (a crop, status ok/whole), the training subset (``--max-rows``), the
    validation rows (the manifest's, or carved from train), the test rows; warnings for classes
    without training rows, notes on where validation comes from."""
    from fernoise import data

    assert m.path is not None  # read from a file
    classes = m.classes
    C = len(classes)
    warnings: list[str] = []
    notes: list[str] = []
    rows = m.df[data.usable(m.df)].reset_index(drop=True)
    labelled = rows["label"].notna()
    train = rows[(rows["split"] == "train") & labelled]
    if train.empty:
        raise FernoiseError(
            f"{m.path} has no labelled training rows with a crop (split == train, label set, status ok/whole)",
            flag="MANIFEST",
        )
    n_train_all = len(train)
    if cfg.max_rows is not None and cfg.max_rows < len(train):
        train = train.loc[_subset(train, cfg.max_rows, cfg.seed)]
        notes.append(
            f"--max-rows: a stratified subset of {len(train):,} of {n_train_all:,} training rows (seed {cfg.seed})"
        )
    counts = np.bincount(train["label"].astype(int), minlength=C)
    for c in np.flatnonzero(counts == 0):
        warnings.append(
            f"class {classes[c]!r} has no training samples; training continues without it"
        )
    val = rows[(rows["split"] == "val") & labelled]
    val_ids, val_source, val_fraction = None, "split", None
    if val.empty and cfg.val_fraction > 0:
        carved = _carve_val(train, cfg.val_fraction, cfg.seed)
        val, train = train.loc[carved], train.drop(carved)
        val_ids, val_source = rows.loc[carved, "id"].tolist(), "carved"
        val_fraction = cfg.val_fraction
    elif val.empty:
        val_source = "none"
    val_labels = _val_labels(m, cfg, rows, val, val_source, notes)
    test = rows[(rows["split"] == "test") & labelled]
    if test.empty:
        n_val = int((rows["split"] == "val").sum())
        where = f" ({n_val:,} rows are in val)" if n_val else ""
        warnings.append(
            f"{m.path.name} has 0 test rows{where}: test accuracy will be empty; if the data set's "
            "test rows landed in another split, re-align with e.g. `--split-map val=test`"
        )
    if len(train) < 2:
        raise FernoiseError(
            f"{m.path} leaves {len(train)} training row(s) after validation; training needs at least 2 "
            "(one batch of 2); add rows, or lower --val-fraction",
            flag="MANIFEST",
        )
    test_counts = (
        np.bincount(test["label"].astype(int), minlength=C) if len(test) else np.zeros(C, int)
    )
    trained = np.bincount(train["label"].astype(int), minlength=C)
    unseen = [classes[c] for c in np.flatnonzero((test_counts > 0) & (trained == 0))]
    if unseen:
        n_unseen = int(sum(test_counts[classes.index(c)] for c in unseen))
        warnings.append(
            f"test class(es) {', '.join(repr(c) for c in unseen)} never occur in training ({n_unseen:,} test rows): "
            "the model cannot predict them right"
        )
    paths, outside = _resolve_paths(m, rows["path"])
    if outside:
        warnings.append(
            f"{len(outside):,} crop paths resolve outside the manifest's folder {m.root.resolve()}, "
            f"e.g. {outside[0]!r}; they are read as given"
        )
    shas = (
        rows["crop_sha256"].where(rows["crop_sha256"].notna(), None).tolist()
        if "crop_sha256" in rows.columns
        else None
    )
    return _Rows(
        rows, train, val, test, n_train_all, val_ids, val_source, val_fraction, val_labels,
        warnings, notes, paths, shas,
    )  # fmt: skip


def _val_labels(m: Manifest, cfg: TrainConfig, rows, val, val_source: str, notes) -> str | None:
    """What the validation labels are (``oracle-clean``, ``noisy``, ``train``, ``split`` or None),
    with a note on it when they are carved from train or clean."""
    noisy_source = find_stage(m.meta, "corrupt") is not None or "label_clean" in rows.columns
    val_labels: str | None
    if cfg.val_clean:
        val_labels = "oracle-clean"
    elif val_source == "carved":
        val_labels = "noisy" if noisy_source else "train"
    else:
        val_labels = "split" if val_source == "split" else None
    if val_source == "carved" and not cfg.val_clean:
        notes.append(
            f"validation: {len(val):,} rows carved from the training split keep their "
            f"{'noisy ' if noisy_source else ''}training labels, so val_acc measures agreement with them"
            + (
                "; --val-clean validates on label_clean instead"
                if "label_clean" in rows.columns
                else ""
            )
        )
    elif cfg.val_clean:
        notes.append(
            f"validation: {len(val):,} rows scored against label_clean (oracle-clean, --val-clean)"
        )
    return val_labels


def _start_weights(cfg: TrainConfig, ws: Workspace) -> dict[str, Any]:
    """``--pretrained`` resolved (``latest`` through the workspace lock), read and matched
    now: its path, kind, sha256 (a key input) and match report, as config.json records them."""
    start: dict[str, Any] = {
        "pretrained": None,
        "pretrained_kind": None,
        "pretrained_sha256": None,
        "pretrained_report": None,
    }
    if cfg.pretrained:
        import torch

        from fernoise import backbones

        with torch.random.fork_rng(devices=[]):
            target = backbones.create(cfg.backbone)
        got = backbones.family(cfg.backbone).load_pretrained(
            target, cfg.pretrained, partial=cfg.pretrained_partial, workspace=ws
        )
        start.update(
            pretrained=got.path,
            pretrained_kind=got.kind,
            pretrained_sha256=got.sha256,
            pretrained_report=got.report,
        )
        if got.license:
            start["pretrained_license"] = got.license
    return start


def _key_params(
    cfg: TrainConfig, precision: str, augment: str, pre_sha: str | None, val_fraction
) -> dict[str, Any]:
    """The parameters the run's key hashes. Options added after a run format existed enter only
    when set, so the keys of runs without them stay as they were (tests/test_stage_keys.py)."""
    key_params = {
        "method": cfg.method,
        "method_params": cfg.method_params_dict(),
        "epochs": cfg.epochs,
        "batch_size": cfg.batch_size,
        "image_size": cfg.image_size,
        "warmup": cfg.warmup,
        "lr_backbone": cfg.lr_backbone,
        "lr_head": cfg.lr_head,
        "weight_decay": cfg.weight_decay,
        "lr_decay": cfg.lr_decay,
        "randaug_magnitude": cfg.randaug_magnitude,
        "pretrained_sha256": pre_sha,
        "seed": cfg.seed,
        "precision": precision,
        "val_fraction": val_fraction,
        "world_size": _world(cfg),
    }
    if cfg.val_clean:
        key_params["val_clean"] = True
    if cfg.max_rows is not None:
        key_params["max_rows"] = cfg.max_rows
    if cfg.pretrained_partial:
        key_params["pretrained_partial"] = True
    if augment != "workers":  # the worker path keeps the keys runs had before --augment existed
        key_params["augment"] = augment
    if cfg.compile:
        key_params["compile"] = True
    if cfg.backbone != "resnet18":
        key_params["backbone"] = cfg.backbone
    if cfg.record_margins:
        key_params["record_margins"] = True
    return key_params


def _data_fields(m: Manifest, cfg: TrainConfig, r: _Rows, heads: list[str]) -> dict[str, Any]:
    """config.json's fields about the data: labels, classes, lineage, row counts."""
    corrupt = find_stage(m.meta, "corrupt")
    align = find_stage(m.meta, "align")
    C = len(m.classes)
    return {
        "val_labels": r.val_labels,
        "max_rows": cfg.max_rows,
        "n_train_available": r.n_train_all,
        "classes": m.classes,
        "label_space": m.meta.get("label_space"),
        "num_classes": C,
        "two_heads": "ncc" in heads,  # the field older run folders have; "heads" names them all
        "views": list(_method_class(cfg).views),
        "noise": dict(corrupt["params"]) if corrupt else None,
        "align": dict(align["params"]) if align else None,
        "n_train": len(r.train),
        "n_val": len(r.val),
        "n_test": len(r.test),
        "train_class_counts": np.bincount(r.train["label"].astype(int), minlength=C).tolist(),
    }


def method_heads(cfg: TrainConfig, num_classes: int) -> tuple[list[str], Any]:
    """The names of the modules ``cfg.method`` adds to the backbone (built on the meta device:
    no memory, no random draws) and its parameters resolved for ``num_classes``; raises the
    method's FernoiseError for bad parameters."""
    import torch

    from fernoise import methods

    method = methods.create(
        cfg.method, cfg.method_params, num_classes=num_classes, image_size=cfg.image_size
    )
    with torch.device("meta"):
        model = methods.build_model(method, cfg.backbone)
    backbones = method.backbones(model)
    return [name for name, _ in model.named_children() if name not in backbones], method.params


def _method_class(cfg: TrainConfig):
    from fernoise import methods

    return methods.get(cfg.method)


def _world(cfg: TrainConfig) -> int:
    from fernoise import distributed

    env = distributed.from_env()
    return env.world if env.enabled else cfg.devices


def is_cached(p: Plan) -> bool:
    """True when the run folder holds the finished run of this key, intact, trained on the
    same usable rows (:func:`other_rows`)."""
    output = p.run_dir / "model.pt"
    return outputs_intact(read_json(stamp_path(output)), p.key, p.run_dir) and not other_rows(p)


def key_inputs(p: Plan) -> dict[str, Any]:
    """The key's inputs: the manifest's key and content digest and, only when some rows' crops
    were unusable (missing, undecodable, changed since align), the digest of those rows' ids
    (``skipped_rows_sha256``): a run that skipped rows never answers for one that did not,
    and the key of a fully usable run is the one it always had."""
    inputs = {"manifest": p.config["manifest_key"], "content": p.config["manifest_content"]}
    if p.config.get("skipped_rows_sha256"):
        inputs["unusable"] = p.config["skipped_rows_sha256"]
    return inputs


def other_rows(p: Plan) -> bool:
    """True when the run folder's ``config.json`` records other unusable rows than ``p`` (a
    run of an older fernoise kept the key of a fully usable run while skipping rows):
    its model.pt and checkpoint.pt are not this run's."""
    recorded = read_json(p.run_dir / "config.json")
    if not isinstance(recorded, dict):
        return False
    theirs = recorded.get("skipped_rows_sha256") or (
        "unknown" if recorded.get("skipped_crops") else None
    )
    return theirs != p.config.get("skipped_rows_sha256")
