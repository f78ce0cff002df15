"""Evaluation: metrics as pure functions, and the ``eval`` stage runner.

Reads a training run directory as ``fernoise train`` writes it (:mod:`fernoise.train.stage`):
``config.json``, ``model.pt``, ``metrics.jsonl``, and the test rows of the run's manifest (``split == "test"``, a non-null ``label``, a crop ``path``). Writes
``RUN/eval.json`` and four PNGs (confusion matrix, training curves, thresholds, noise
detection), plus ``gradcam.png`` with ``cam > 0``. Evaluating on another manifest
(``manifest=``) writes the same files into ``RUN/eval-<manifest key[:12]>/`` so the in-domain
evaluation is never overwritten; scoring another split (``split="val"``) writes into
``RUN/eval-val/`` (``RUN/eval-<key[:12]>-val/`` for another manifest).

Checks before anything is scored, on a cache hit too (:func:`check_inputs`): ``model.pt`` must
have the sha256 that train recorded in its stamp, and every evaluated crop must exist and match
the ``crop_sha256`` align recorded; either failure is a one-line error unless ``force``. A crop
that cannot be decoded is skipped and counted (``skipped`` in ``eval.json`` and a warning). The
cache key covers the content of the manifest columns eval reads and each crop's size and
modification time, so an edited manifest or a replaced crop is scored again.

``eval.json``: ``top1``, ``macro_f1``, ``mean_class_accuracy``, ``per_class`` (class name ->
``precision``, ``recall``, ``f1``, ``accuracy``, ``support``), ``confusion_matrix`` (C x C),
``ece`` with ``ece_bins`` and ``calibration`` (the bins), ``n``, ``classes``, ``method``,
``noise``, ``manifest``/``manifest_key``, ``own_manifest``, ``final_epoch_test_acc``,
``pictures``, ``params``, ``key``, ``model_sha256`` (the model.pt evaluated) and ``train_model_sha256`` (the one train's stamp
recorded then: ``fernoise report`` leaves the figures out once train has written another), ``inputs`` (the digests the key
covers), ``forced`` (the mismatches ``--force`` evaluated anyway; empty when none), and ``history`` (from ``metrics.jsonl``):
``test_max_last5``/``val_max_last5`` (``max``, ``max_epoch``, ``last``, ``last_n``),
``val_selected`` (``epoch``, ``val_acc``, ``test_acc``), ``warmup_epochs``,
``best_test_in_warmup``, ``val_selected_in_warmup``, ``warnings``, ``noise_detection`` (per epoch ``precision``,
``recall``, ``f1``, ``confident_frac``) and ``thresholds`` (``epoch`` and one list per class).

Conventions, fixed here:

- Predictions come from the ``pcc`` head (the positive-class classifier); ``ncc`` is a
  training device only.
- The confusion matrix ``cm[i, j]`` counts test rows of true class ``i`` predicted as ``j``.
- *Per-class accuracy* is the FER convention: the share of class ``c``'s rows predicted as
  ``c`` (the diagonal of the row-normalised confusion matrix), equal to that class's recall.
  A class with no support or no prediction gets precision/recall/F1 0.0 (sklearn's
  ``zero_division=0``); macro-F1 averages over classes that have support or predictions.
- Expected calibration error: 15 equal-width confidence bins over (0, 1], confidence = the
  top softmax probability; ``ECE = sum_b |B_b|/N * |acc(B_b) - conf(B_b)|``.
- ``max / last-5`` (the paper's x/y): the highest per-epoch ``test_acc`` and the mean of the
  last 5 epochs' ``test_acc`` (fewer when the run is shorter).
- Validation-selected epoch: the epoch with the highest ``val_acc`` (the earliest on ties);
  its ``test_acc`` is the honest single number.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fernoise.devices import check_device_name, resolve_device
from fernoise.errors import FernoiseError
from fernoise.evaluate.plots import GRADCAM_PNG, PICTURES  # noqa: F401 - the file names eval writes
from fernoise.progress import Counter as Progress  # (done, total)

Labels = Sequence[int] | np.ndarray
"""Class indices ``(N,)``: a list or an integer array."""

EVAL_READS = ("id", "path", "crop_sha256", "split", "label", "status")
"""The manifest columns eval reads: their content digest is part of the key."""

VERSION = 2  # 2: predictions.parquet and ci95
ECE_BINS = 15
MISMATCH = (
    0.02  # top-1 vs the last epoch's recorded test accuracy (bf16 vs fp32 rounding stays below)
)
LAST_N = 5


# ============================================================================ metrics
def confusion_matrix(y_true: Labels, y_pred: Labels, num_classes: int) -> np.ndarray:
    """``(C, C)`` int64 counts; ``cm[i, j]`` = rows of true class ``i`` predicted as ``j``."""
    t = np.asarray(y_true, dtype=np.int64)
    p = np.asarray(y_pred, dtype=np.int64)
    if t.shape != p.shape:
        raise ValueError(f"y_true and y_pred differ in shape: {t.shape} vs {p.shape}")
    if t.size and (min(t.min(), p.min()) < 0 or max(t.max(), p.max()) >= num_classes):
        raise ValueError(f"labels must lie in 0..{num_classes - 1}")
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (t, p), 1)
    return cm


def _safe_div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return np.divide(a, b, out=np.zeros_like(a), where=b > 0)


def per_class_metrics(cm: np.ndarray) -> dict[str, np.ndarray]:
    """Per-class ``precision``, ``recall``, ``f1``, ``accuracy`` (= recall) and ``support``.

    Each value is a ``(C,)`` array; ``support`` counts the true rows of each class.
    """
    cm = np.asarray(cm)
    tp = np.diag(cm).astype(np.float64)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    precision = _safe_div(tp, predicted)
    recall = _safe_div(tp, support)
    f1 = _safe_div(2 * precision * recall, precision + recall)
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "accuracy": recall.copy(),
        "support": support.astype(np.int64),
    }


def macro_f1(cm: np.ndarray) -> float:
    """Mean F1 over the classes that occur (true or predicted); 0.0 for an empty matrix."""
    cm = np.asarray(cm)
    present = (cm.sum(axis=0) + cm.sum(axis=1)) > 0
    if not present.any():
        return 0.0
    return float(per_class_metrics(cm)["f1"][present].mean())


def top1(cm: np.ndarray) -> float:
    """Share of rows on the diagonal (top-1 accuracy); 0.0 for an empty matrix."""
    cm = np.asarray(cm)
    n = cm.sum()
    return float(np.trace(cm) / n) if n else 0.0


def mean_class_accuracy(cm: np.ndarray) -> float:
    """Mean of the per-class accuracies over classes with support (balanced accuracy)."""
    cm = np.asarray(cm)
    support = cm.sum(axis=1)
    if not (support > 0).any():
        return 0.0
    return float(per_class_metrics(cm)["recall"][support > 0].mean())


def expected_calibration_error(
    probs: np.ndarray, y_true: Labels, n_bins: int = ECE_BINS
) -> tuple[float, list[dict[str, float | None]]]:
    """ECE of softmax ``probs`` ``(N, C)`` against ``y_true`` ``(N,)``, and the bins.

    ``n_bins`` equal-width bins over the top-1 confidence: bin ``b`` holds confidences in
    ``(b/n, (b+1)/n]`` (the first bin also takes 0). ECE is the support-weighted mean of
    ``|accuracy - mean confidence|`` over non-empty bins. Each bin dict has ``lo``, ``hi``,
    ``count``, ``accuracy`` and ``confidence`` (null for empty bins).
    """
    probs = np.asarray(probs, dtype=np.float64)
    y = np.asarray(y_true, dtype=np.int64)
    n = len(y)
    conf = probs.max(axis=1) if n else np.zeros(0)
    correct = (probs.argmax(axis=1) == y) if n else np.zeros(0, dtype=bool)
    idx = np.clip(np.ceil(conf * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    ece = 0.0
    bins = []
    for b in range(n_bins):
        m = idx == b
        k = int(m.sum())
        acc: float | None = None
        cf: float | None = None
        if k:
            acc, cf = float(correct[m].mean()), float(conf[m].mean())
            ece += k / n * abs(acc - cf)
        bins.append(
            {
                "lo": b / n_bins,
                "hi": (b + 1) / n_bins,
                "count": k,
                "accuracy": acc,
                "confidence": cf,
            }
        )
    return float(ece), bins


# ============================================================================ history
def read_history(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The epochs of a ``metrics.jsonl`` in order (a torn last line is ignored; a damaged file
    is a one-line FernoiseError naming the line: :func:`fernoise.evaluate.runs.read_metrics`)."""
    from fernoise.evaluate.runs import read_metrics

    return read_metrics(path)


def _num(v: Any) -> float | None:
    if v is None:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else f


def _series(history: Sequence[dict[str, Any]], key: str) -> list[tuple[int, float]]:
    out = []
    for i, row in enumerate(history):
        v = _num(row.get(key))
        if v is not None:
            out.append((int(row.get("epoch", i + 1)), v))
    return out


def max_last(
    history: Sequence[dict[str, Any]], key: str = "test_acc", last: int = LAST_N
) -> dict[str, Any] | None:
    """The paper's ``max / last-5`` of ``key``: ``{"max", "max_epoch", "last", "last_n"}``.

    ``max_epoch`` is the first epoch reaching the maximum; ``last`` is the mean over the last
    ``last`` epochs that recorded ``key`` (``last_n`` of them). None when none did.
    """
    s = _series(history, key)
    if not s:
        return None
    best_epoch, best = max(s, key=lambda e: (e[1], -e[0]))
    tail = [v for _, v in s[-last:]]
    return {"max": best, "max_epoch": best_epoch, "last": float(np.mean(tail)), "last_n": len(tail)}


def val_selected(history: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The epoch with the highest ``val_acc`` (earliest on ties) and its ``test_acc``.

    ``{"epoch", "val_acc", "test_acc"}``; None when no epoch recorded ``val_acc``.
    """
    best = None
    for i, row in enumerate(history):
        v = _num(row.get("val_acc"))
        if v is not None and (best is None or v > best[1]):
            best = (i, v)
    if best is None:
        return None
    row = history[best[0]]
    return {
        "epoch": int(row.get("epoch", best[0] + 1)),
        "val_acc": best[1],
        "test_acc": _num(row.get("test_acc")),
    }


def warmup_epochs(history: Sequence[dict[str, Any]]) -> list[int]:
    return [int(r.get("epoch", i + 1)) for i, r in enumerate(history) if r.get("warmup")]


def warmup_warning(
    history: Sequence[dict[str, Any]], key: str = "test_acc", method: str | None = None
) -> str | None:
    """A one-line warning when the best ``key`` epoch lies inside the warm-up, else None.

    Never for a method whose warm-up is the same loss as the rest of its training
    (``Method.warmup_is_own_loss``, e.g. ``ce``).
    """
    from fernoise import methods

    if method in methods.names() and methods.get(method).warmup_is_own_loss:
        return None
    m = max_last(history, key)
    warm = warmup_epochs(history)
    if m is None or m["max_epoch"] not in warm:
        return None
    span = f"epoch {warm[0]}" if len(warm) == 1 else f"epochs {min(warm)}-{max(warm)}"
    return (
        f"the best test accuracy ({m['max']:.3f}) is at epoch {m['max_epoch']}, inside the "
        f"warm-up ({span}), before the method's own loss took over: "
        "`max` flatters the method; read `last-5` and the validation-selected figure"
    )


def val_selected_warning(
    history: Sequence[dict[str, Any]], method: str | None = None
) -> str | None:
    """A one-line warning when the validation-selected epoch lies inside the warm-up (the
    figure is then the warm-up's model, before the method's own loss), else None. Never for a
    method whose warm-up is its own loss (``Method.warmup_is_own_loss``, e.g. ``ce``)."""
    from fernoise import methods

    if method in methods.names() and methods.get(method).warmup_is_own_loss:
        return None
    v = val_selected(history)
    warm = warmup_epochs(history)
    if v is None or v["epoch"] not in warm:
        return None
    span = f"epoch {warm[0]}" if len(warm) == 1 else f"epochs {min(warm)}-{max(warm)}"
    acc = "" if v["test_acc"] is None else f" ({v['test_acc']:.3f})"
    return (
        f"the validation-selected epoch {v['epoch']} is inside the warm-up ({span}): its test "
        f"accuracy{acc} is the warm-up's model, before the method's own loss took over"
    )


def f1_score(precision: float | None, recall: float | None) -> float | None:
    if precision is None or recall is None:
        return None
    return 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0


def noise_detection(history: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per epoch, how well the confident set picked the clean rows (``is_noisy == False``).

    One dict per epoch that recorded ``confident_precision`` or ``confident_recall``:
    ``{"epoch", "precision", "recall", "f1", "confident_frac"}``. Empty when the training
    manifest had no ``is_noisy`` column or the method selects nothing (ce, nl).
    """
    out = []
    for i, row in enumerate(history):
        p, r = _num(row.get("confident_precision")), _num(row.get("confident_recall"))
        if p is None and r is None:
            continue
        out.append(
            {
                "epoch": int(row.get("epoch", i + 1)),
                "precision": p,
                "recall": r,
                "f1": f1_score(p, r),
                "confident_frac": _num(row.get("confident_frac")),
            }
        )
    return out


def thresholds_over_time(
    history: Sequence[dict[str, Any]], classes: Sequence[str]
) -> dict[str, list[float | None]]:
    """``{"epoch": [...], class name: [T_c per epoch, None where unrecorded]}``."""
    out: dict[str, list] = {"epoch": [int(r.get("epoch", i + 1)) for i, r in enumerate(history)]}
    for c, name in enumerate(classes):
        col = []
        for r in history:
            t = r.get("thresholds")
            col.append(_num(t[c]) if isinstance(t, list) and c < len(t) else None)
        out[name] = col
    return out


def history_summary(
    history: Sequence[dict[str, Any]], classes: Sequence[str], method: str | None = None
) -> dict[str, Any]:
    """Everything ``eval.json`` reports from the training history."""
    warning = warmup_warning(history, method=method)
    val_warning = val_selected_warning(history, method=method)
    thr = thresholds_over_time(history, classes)
    return {
        "epochs": len(history),
        "warmup_epochs": warmup_epochs(history),
        "test_max_last5": max_last(history, "test_acc"),
        "val_max_last5": max_last(history, "val_acc"),
        "val_selected": val_selected(history),
        "best_test_in_warmup": warning is not None,
        "val_selected_in_warmup": val_warning is not None,
        "warnings": [w for w in (warning, val_warning) if w],
        "noise_detection": noise_detection(history),
        "thresholds": thr
        if any(v is not None for k, vs in thr.items() if k != "epoch" for v in vs)
        else None,
    }


def metrics_from_predictions(
    y_true: Labels, probs: np.ndarray, classes: Sequence[str], n_bins: int = ECE_BINS
) -> dict[str, Any]:
    """Top-1, per-class figures, macro-F1, confusion matrix and ECE of ``probs`` ``(N, C)``."""
    probs = np.asarray(probs, dtype=np.float64)
    y_pred = probs.argmax(axis=1) if len(probs) else np.zeros(0, dtype=np.int64)
    cm = confusion_matrix(y_true, y_pred, len(classes))
    pc = per_class_metrics(cm)
    ece, bins = expected_calibration_error(probs, y_true, n_bins)
    return {
        "n": int(cm.sum()),
        "top1": top1(cm),
        "macro_f1": macro_f1(cm),
        "mean_class_accuracy": mean_class_accuracy(cm),
        "per_class": {
            name: {k: (int(pc[k][c]) if k == "support" else float(pc[k][c])) for k in pc}
            for c, name in enumerate(classes)
        },
        "confusion_matrix": cm.tolist(),
        "ece": ece,
        "ece_bins": n_bins,
        "calibration": bins,
    }


# ============================================================================ the stage
@dataclass(frozen=True)
class EvalParams:
    """Parameters of ``fernoise eval``."""

    cam: int = 0
    """Grad-CAM faces in ``gradcam.png`` (0: none)."""
    batch_size: int = 256
    """Images per forward pass (does not change results)."""
    device: str = "auto"
    """auto, cpu, cuda or cuda:N (does not change results beyond float rounding)."""
    split: str = "test"
    """The manifest split to score (train, val or test); outputs of a split other than test go
    to their own folder."""

    def __post_init__(self):
        from fernoise.manifest import SPLITS

        if self.split not in SPLITS:
            raise FernoiseError(
                f"expected one of {', '.join(SPLITS)}, got {self.split!r}", flag="--split"
            )
        check_device_name(self.device)
        if self.cam < 0 or self.cam > 64:
            raise FernoiseError(f"expected 0..64 Grad-CAM faces, got {self.cam}", flag="--cam")
        if self.batch_size < 1:
            raise FernoiseError(
                f"expected a positive batch size, got {self.batch_size}", flag="--batch-size"
            )


@dataclass
class Run:
    """A training run directory as the contract defines it."""

    path: Path
    config: dict[str, Any]
    history: list[dict[str, Any]]

    @property
    def classes(self) -> list[str]:
        return list(self.config["classes"])

    @property
    def model_path(self) -> Path:
        return self.path / "model.pt"


def load_run(path: str | os.PathLike, *, need_model: bool = True) -> Run:
    """Read ``config.json`` and ``metrics.jsonl`` of a run directory, or a clear error."""
    path = Path(path)
    if path.is_file() and path.name in ("config.json", "model.pt", "metrics.jsonl", "eval.json"):
        path = path.parent
    cfg_path = path / "config.json"
    if not cfg_path.is_file():
        raise FernoiseError(
            f"{path} is not a training run (no config.json); pass a folder written by `fernoise train`"
        )
    from fernoise.evaluate.runs import read_config

    config = read_config(cfg_path)  # a damaged file: one line naming it and what is wrong
    if need_model and not (path / "model.pt").is_file():
        raise FernoiseError(
            f"{path} has no model.pt (training unfinished?); resume it with `fernoise train`"
        )
    return Run(path=path, config=config, history=read_history(path / "metrics.jsonl"))


def backbone_of(config: dict[str, Any]) -> str:
    """The backbone a run trained (config.json ``backbone``; runs made before it existed:
    ``resnet18``); an unknown one is a one-line error naming the config."""
    from fernoise import backbones

    name = config.get("backbone") or backbones.DEFAULT
    if not isinstance(name, str) or name not in backbones.names():
        raise FernoiseError(
            f"config.json names backbone {name!r}, which this fernoise does not know "
            f"({', '.join(backbones.names())})"
        )
    return name


def load_model(run: Run, device: str = "cpu"):
    """The run's classifier (``fernoise.model.Classifier``: ``model(x)`` -> logits ``(N, C)``),
    rebuilt through the method registry from config.json (``method``, ``method_params``,
    ``num_classes``, ``image_size``, ``backbone``) with ``model.pt`` loaded, in eval mode on
    ``device``; its ``mean``/``std`` are the backbone's input normalisation.
    Runs made before ``method_params`` existed take the method's defaults, plus ``k`` from the
    top level of their config."""
    import torch

    from fernoise import methods
    from fernoise.evaluate.runs import legacy_method
    from fernoise.model import Classifier

    cfg = run.config
    c = int(cfg.get("num_classes", len(cfg["classes"])))
    name, given = legacy_method(cfg)  # older runs: no method / method_params
    try:
        method = methods.create(
            name,
            methods.params_from_dict(name, given),
            num_classes=c,
            image_size=int(cfg.get("image_size", 224)),
        )
    except FernoiseError as e:
        raise FernoiseError(f"{run.path / 'config.json'}: {e.one_line()}") from None
    with torch.random.fork_rng(
        devices=[]
    ):  # init is overwritten by model.pt; keep the caller's RNG
        net = methods.build_model(method, backbone_of(cfg))
    try:
        state = torch.load(run.model_path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means a broken file
        raise FernoiseError(
            f"{run.model_path} could not be read ({e.__class__.__name__}); re-run `fernoise train`"
        ) from None
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    if isinstance(state, dict):  # torch.compile / DDP wrappers prefix the keys
        state = {k.replace("_orig_mod.", "").removeprefix("module."): v for k, v in state.items()}
    try:
        net.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).splitlines()[0]
        raise FernoiseError(
            f"{run.model_path} does not fit the {name} model ({c} classes): {first}"
        ) from None
    return Classifier(net, method.logits, c).to(device).eval()


def select_test_rows(manifest, split: str = "test") -> Any:
    """The evaluation rows of a manifest: ``split == split`` ("test"), a label and a crop path."""
    df = manifest.df
    if "path" not in df.columns:
        raise FernoiseError(
            f"{manifest.path} has no `path` column (the crop of each row); make it with `fernoise align`",
            flag="--manifest",
        )
    m = (df["split"] == split) & df["label"].notna() & df["path"].notna()
    if "status" in df.columns:
        m &= df["status"].isin(["ok", "whole"])
    return df[m].reset_index(drop=True)


def predict_probs(
    model,
    images: np.ndarray,
    *,
    batch_size: int = 256,
    device: str = "cpu",
    progress: Progress | None = None,
) -> np.ndarray:
    """Softmax of the classifier's logits (:func:`load_model`) for uint8 ``(N, H, W, 3)`` crops
    -> ``(N, C)`` float64."""
    import torch

    from fernoise.images import normalisation_of, to_tensor

    out = []
    n = len(images)
    on_cuda = str(device).startswith("cuda")  # bf16 autocast and batches of >= 1024 on CUDA
    step = max(batch_size, 1024) if on_cuda else batch_size
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=on_cuda):
        for s in range(0, n, step):
            x = to_tensor(images[s : s + step], device, *normalisation_of(model))
            logits = model(x)
            out.append(torch.softmax(logits.float(), dim=1).cpu().numpy().astype(np.float64))
            if progress:
                progress(min(s + step, n), n)
    return np.concatenate(out) if out else np.zeros((0, model.num_classes))


@dataclass
class ManifestRef:
    """A manifest's path and metadata, without its rows (enough for a cache check)."""

    path: Path
    meta: dict[str, Any]

    @property
    def key(self) -> str | None:
        return self.meta.get("key")

    @property
    def classes(self) -> list[str]:
        return list(self.meta.get("classes", []))


def _manifest_for(run: Run, manifest_path: str | os.PathLike | None) -> ManifestRef:
    """The evaluated manifest's metadata only (rows are read on a cache miss)."""
    from fernoise.manifest import read_meta, resolve_manifest

    own = run.config.get("manifest")
    path = Path(manifest_path) if manifest_path else (Path(own) if own else None)
    if path is None:
        raise FernoiseError(
            f"{run.path}/config.json names no manifest; pass one", flag="--manifest"
        )
    if not path.is_absolute() and not path.exists() and manifest_path is None:
        path = run.path / path
    if not path.exists():
        raise FernoiseError(
            f"manifest {path} does not exist (moved?); pass the test manifest", flag="--manifest"
        )
    path = resolve_manifest(path, flag="--manifest")
    m = ManifestRef(path=path, meta=read_meta(path))
    if m.classes and list(m.classes) != run.classes:
        raise FernoiseError(
            f"{path} has classes {m.classes} ({m.meta.get('label_space')}), the run was trained on "
            f"{run.classes} ({run.config.get('label_space')}); evaluate on a manifest of the same label space",
            flag="--manifest",
        )
    return m


def output_dir(run: Run, manifest: ManifestRef, split: str = "test") -> Path:
    """``RUN`` for the run's own manifest, ``RUN/eval-<key[:12]>`` for another one; a split
    other than test adds ``-<split>`` (``RUN/eval-val``), so the test evaluation stays."""
    own_key = run.config.get("manifest_key")
    own_path = run.config.get("manifest")
    same = (manifest.key and manifest.key == own_key) or (
        own_path and manifest.path and Path(own_path).resolve() == manifest.path.resolve()
    )
    if same:
        return run.path if split == "test" else run.path / f"eval-{split}"
    tail = "" if split == "test" else f"-{split}"
    return run.path / f"eval-{_manifest_key(manifest)[:12]}{tail}"


def _manifest_key(manifest: ManifestRef) -> str:
    from fernoise.cache import file_sha256

    return manifest.key or file_sha256(manifest.path)


def evaluate_run(
    run_path: str | os.PathLike,
    params: EvalParams = EvalParams(),
    *,
    manifest: str | os.PathLike | None = None,
    workspace=None,
    force: bool = False,
    progress: Progress | None = None,
):
    """Evaluate a run on the test rows of its manifest (or ``manifest``), as a cached stage.

    Returns ``(StageResult, report)``: ``report`` is the parsed ``eval.json``. The key covers
    the model's sha256, the history's sha256, the evaluated manifest's key and ``cam``.
    """
    from fernoise.cache import atomic_write_json, file_sha256, read_json, run_stage

    resolve_device(params.device)  # --device cuda without CUDA fails here, cache hit or not
    run = load_run(run_path)
    mf = _manifest_for(run, manifest)
    out_dir = output_dir(run, mf, params.split)
    out = out_dir / "eval.json"
    hist_path = run.path / "metrics.jsonl"
    checked = check_inputs(run, mf, params.split, force=force)
    inputs = {
        "model": checked.model_sha256,
        "history": file_sha256(hist_path) if hist_path.is_file() else None,
        "manifest": _manifest_key(mf),
        "content": checked.content,
        "crops": checked.crops,
        "run": run.config.get("key"),
    }
    key_params: dict[str, Any] = {"cam": params.cam}
    if params.split != "test":  # only when set: keys of test evaluations stay as they were
        key_params["split"] = params.split

    def build(key: str) -> list[Path]:
        report, written = _evaluate(run, mf, params, out_dir, progress=progress)
        report["key"] = key
        report["split"] = params.split
        report["model_sha256"] = checked.model_sha256
        report["train_model_sha256"] = (
            checked.train_model
        )  # report shows it only while train's stamp says this
        report["inputs"] = inputs
        report["forced"] = checked.forced
        report["history"]["warnings"][:0] = checked.warnings
        atomic_write_json(out, report)
        return [out, *written]

    res = run_stage(
        stage="eval",
        version=VERSION,
        params=key_params,
        inputs=inputs,
        output=out,
        build=build,
        workspace=workspace,
        force=force,
    )
    return res, read_json(out)


@dataclass
class Checked:
    """What :func:`check_inputs` found: the model's sha256, the content key of the columns
    eval reads, the crops' fingerprint, and warnings (forced mismatches, unseen classes)."""

    model_sha256: str
    content: str
    crops: str
    warnings: list[str]
    forced: list[str] = field(default_factory=list)  # the mismatches --force evaluated anyway
    train_model: str | None = None  # the model.pt sha256 train's stamp records (None: no stamp)


def check_inputs(
    run: Run, ref: ManifestRef, split: str = "test", *, force: bool = False
) -> Checked:
    """Check ``model.pt`` against the sha256 train recorded and the evaluated crops against the
    manifest's ``crop_sha256``; a mismatch or a missing crop raises unless ``force`` (then it
    is a warning). Also warns about evaluated classes the run never trained on."""
    from fernoise.data import crop_fingerprint
    from fernoise.manifest import read_manifest

    warnings: list[str] = []
    forced: list[str] = []

    def problem(message: str) -> None:
        if not force:
            raise FernoiseError(f"{message}; pass --force to evaluate anyway", flag="--force")
        warnings.append(f"{message} (evaluated anyway: --force)")
        forced.append(message)

    model_sha, recorded = _check_model(run, problem)
    mf = read_manifest(ref.path)
    present = sorted(str(s) for s in mf.df["split"].dropna().unique())
    if split not in present:
        raise FernoiseError(
            f"{ref.path} has no {split!r} rows (its splits: {', '.join(present) or 'none'})"
            + (
                "; the run's validation rows were carved from train (val_ids.json)"
                if split == "val" and (run.path / "val_ids.json").is_file()
                else ""
            ),
            flag="--split",
        )
    rows = select_test_rows(mf, split)
    paths = [str(mf.root / p) for p in rows["path"]]
    shas = (
        rows["crop_sha256"].where(rows["crop_sha256"].notna(), None).tolist()
        if "crop_sha256" in rows.columns
        else None
    )
    _check_crops(paths, shas, split, problem)
    warnings += _unseen_classes(run, rows, split)
    return Checked(
        model_sha,
        mf.content_key(EVAL_READS),
        crop_fingerprint(paths, shas),
        warnings,
        forced,
        recorded,
    )


def _check_model(run: Run, problem: Callable[[str], None]) -> tuple[str, str | None]:
    """``model.pt``'s sha256 and the one train's stamp records (None: no stamp); a difference
    is a ``problem``."""
    from fernoise.cache import file_sha256, read_json, stamp_path

    model_sha = file_sha256(run.model_path)
    stamp = read_json(stamp_path(run.model_path))
    recorded = (stamp or {}).get("outputs", {}).get("model.pt") if isinstance(stamp, dict) else None
    if recorded and recorded != model_sha:
        problem(
            f"{run.model_path} differs from the model.pt that `fernoise train` wrote (sha256 "
            f"{model_sha[:12]} vs recorded {recorded[:12]}); re-run `fernoise train --force`"
        )
    return model_sha, recorded if isinstance(recorded, str) else None


def _check_crops(
    paths: list[str], shas: list[str | None] | None, split: str, problem: Callable[[str], None]
) -> None:
    """A missing crop, or one whose sha256 differs from what align recorded, is a ``problem``."""
    from fernoise.cache import file_sha256

    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        problem(
            f"{len(missing)} {split} crops are missing or not regular files, e.g. {missing[0]}; "
            "re-run `fernoise align`"
        )
    if shas is not None:
        changed = [
            p
            for p, h in zip(paths, shas, strict=True)
            if h and os.path.isfile(p) and file_sha256(p) != h
        ]
        if changed:
            problem(
                f"{len(changed)} {split} crops differ from the sha256 align recorded, e.g. {changed[0]}; "
                "re-run `fernoise align`"
            )


def _unseen_classes(run: Run, rows: Any, split: str) -> list[str]:
    """A warning (or none) naming the evaluated classes that never occur in the run's
    training rows (``train_class_counts`` of its config)."""
    counts = run.config.get("train_class_counts")
    if not counts or rows.empty:
        return []
    classes = run.classes
    present_labels = np.bincount(rows["label"].astype(int), minlength=len(classes))
    unseen = [classes[c] for c in range(len(classes)) if present_labels[c] and not counts[c]]
    if not unseen:
        return []
    return [
        f"{split} class(es) {', '.join(repr(c) for c in unseen)} never occur in the run's training "
        "rows: the model cannot predict them right"
    ]


def _evaluate(
    run: Run,
    ref: ManifestRef,
    params: EvalParams,
    out_dir: Path,
    *,
    progress: Progress | None = None,
) -> tuple[dict[str, Any], list[Path]]:
    """Predict the test rows, compute every figure, draw the pictures: ``(report, written)``."""
    from fernoise.manifest import read_manifest

    mf = read_manifest(ref.path)
    rows = select_test_rows(mf, params.split)
    if rows.empty:
        raise FernoiseError(
            f"{ref.path} has no {params.split} rows with a label and a crop; evaluate on a manifest with a "
            f"{params.split} split",
            flag="--manifest",
        )
    size = int(run.config["image_size"])
    paths = [mf.root / p for p in rows["path"]]
    device = resolve_device(params.device)
    model = load_model(run, device)
    probs, ok = _predict_usable(model, paths, size, params, device, progress)
    skipped = {
        "count": int((~ok).sum()),
        "example": str(paths[int(np.flatnonzero(~ok)[0])]) if (~ok).any() else None,
    }
    if not ok.any():
        raise FernoiseError(
            f"none of the {len(paths)} {params.split} crops could be decoded, e.g. {paths[0]}; "
            "re-run `fernoise align`"
        )
    rows, paths = rows[ok].reset_index(drop=True), [p for p, k in zip(paths, ok, strict=True) if k]
    y = rows["label"].astype(int).to_numpy()
    report = _report(run, ref.path, mf.key, params, out_dir, y, probs, size, device, skipped)
    out_dir.mkdir(parents=True, exist_ok=True)
    predictions = write_predictions(
        predictions_frame(rows, probs, run.classes), out_dir / PREDICTIONS
    )
    report["predictions"] = predictions.name
    written = _pictures(report, run, model, params, out_dir, paths, y, size, device)
    report["pictures"] = [p.name for p in written]
    return report, [predictions, *written]


def _predict_usable(
    model: Any,
    paths: list[Path],
    size: int,
    params: EvalParams,
    device: str,
    progress: Progress | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Softmax probabilities ``(K, C)`` of the crops that decode and the ``(N,)`` bool mask of
    which did. Decoded batch by batch: a full test set at 224 px would hold ~0.5 GB per 3,000
    faces; a crop that cannot be decoded (missing, truncated, not an image) is skipped."""
    parts, keep = [], []
    for s in _batches(len(paths), params.batch_size, progress):
        imgs, ok = load_usable(paths[s : s + params.batch_size], size)
        parts.append(predict_probs(model, imgs, batch_size=params.batch_size, device=device))
        keep.append(ok)
    return np.concatenate(parts), np.concatenate(keep)


def _report(
    run: Run,
    manifest: Path,
    manifest_key: str | None,
    params: EvalParams,
    out_dir: Path,
    y: np.ndarray,
    probs: np.ndarray,
    size: int,
    device: str,
    skipped: dict[str, Any],
) -> dict[str, Any]:
    """eval.json's figures for labels ``y`` and ``probs``, the run's history summary, and the
    warnings about skipped crops and a final top-1 that differs from the last epoch's."""
    cfg = run.config
    classes = run.classes
    metrics = metrics_from_predictions(y, probs, classes)
    metrics["ci95"] = bootstrap_ci(y, probs.argmax(axis=1), len(classes))
    hist = history_summary(run.history, classes, method=cfg.get("method"))
    last = run.history[-1] if run.history else {}
    report: dict[str, Any] = {
        "run": str(run.path.resolve()),
        "run_key": cfg.get("key"),
        "method": cfg.get("method"),
        "noise": cfg.get("noise"),
        "manifest": str(manifest.resolve()),
        "manifest_key": manifest_key,
        "own_manifest": out_dir == run.path,
        "classes": classes,
        "label_space": cfg.get("label_space"),
        "image_size": size,
        "head": "pcc",
        **metrics,
        "history": hist,
        "final_epoch_test_acc": _num(last.get("test_acc")),
        "train_clean_share": train_clean_share(run),
        "params": asdict(params) | {"device": device},
        "skipped": skipped,
    }
    if skipped["count"]:
        hist["warnings"].append(
            f"{skipped['count']} {params.split} rows skipped: their crop could not be decoded, "
            f"e.g. {skipped['example']}"
        )
    final = report["final_epoch_test_acc"]
    if (
        report["own_manifest"]
        and params.split == "test"
        and final is not None
        and abs(final - metrics["top1"]) > MISMATCH
    ):
        hist["warnings"].append(
            f"the final model's top-1 ({metrics['top1']:.3f}) differs from the last epoch's test accuracy "
            f"in metrics.jsonl ({final:.3f}) by more than {MISMATCH:.2f}: were the crops or model.pt changed "
            "after training? re-run `fernoise train`"
        )
    return report


def _pictures(
    report: dict[str, Any],
    run: Run,
    model: Any,
    params: EvalParams,
    out_dir: Path,
    paths: list[Path],
    y: np.ndarray,
    size: int,
    device: str,
) -> list[Path]:
    """Draw every picture into ``out_dir`` (:func:`plots.all_pictures`) and, with
    ``params.cam``, the Grad-CAM grid (else remove a stale one); returns the files written."""
    from fernoise.evaluate import plots
    from fernoise.images import load_many

    written = plots.all_pictures(report, run.history, out_dir)
    if params.cam:
        from fernoise.evaluate.gradcam import cam_layer_of, gradcam, gradcam_grid

        pick = pick_cam_rows(y, params.cam)
        faces = load_many([paths[i] for i in pick], size)
        cams, cam_probs = gradcam(model, faces, device=device)
        layer, cells = cam_layer_of(model, size)
        written.append(
            gradcam_grid(
                faces,
                cams,
                cam_probs,
                y[pick],
                run.classes,
                out_dir / GRADCAM_PNG,
                layer=layer,
                cells=cells,
            )
        )
        if plots.gradcam_is_coarse(size, cells):
            report["gradcam_note"] = plots.gradcam_coarse_note(size, cells, layer)
    else:
        (out_dir / GRADCAM_PNG).unlink(missing_ok=True)  # a stale grid of an earlier --cam run
    return written


def load_usable(paths: Sequence[str | os.PathLike], size: int) -> tuple[np.ndarray, np.ndarray]:
    """The decodable crops among ``paths`` as ``(K, size, size, 3)`` uint8, and a bool mask
    ``(N,)`` of which paths they are."""
    from fernoise.images import load_rgb

    imgs, ok = [], np.zeros(len(paths), dtype=bool)
    for i, p in enumerate(paths):
        try:
            imgs.append(load_rgb(p, size))
            ok[i] = True
        except Exception:  # noqa: BLE001 - PIL raises many types for truncated or foreign files
            continue
    return (np.stack(imgs) if imgs else np.zeros((0, size, size, 3), np.uint8)), ok


def _batches(n: int, size: int, progress: Progress | None):
    for s in range(0, n, size):
        yield s
        if progress:
            progress(min(s + size, n), n)


def pick_cam_rows(y: np.ndarray, n: int) -> np.ndarray:
    """``n`` row indices taking the classes in turn (first rows of each class first)."""
    by_class = [list(np.flatnonzero(y == c)) for c in sorted(set(y.tolist()))]
    out: list[int] = []
    while len(out) < min(n, len(y)):
        for rows in by_class:
            if rows and len(out) < n:
                out.append(int(rows.pop(0)))
    return np.asarray(out, dtype=np.int64)


# ============================================================================ per-sample output
PREDICTIONS = "predictions.parquet"
BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 0
BOOTSTRAP_LEVEL = 0.95
BOOTSTRAP_CHUNK = (
    100  # resamples drawn per generator call (part of the definition: same seed, same draws)
)


def bootstrap_indices(n: int, n_resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED):
    """Resampled row indices, ``BOOTSTRAP_CHUNK`` resamples at a time: ``(k, n)`` int64 arrays.

    One generator ``np.random.default_rng(seed)``; each chunk is ``rng.integers(0, n, (k, n))``,
    chunks in order, so the draws depend only on ``(n, n_resamples, seed)``. Chunks bound the
    memory (8 * 100 * n bytes) on large test sets.
    """
    rng = np.random.default_rng(seed)
    for s in range(0, n_resamples, BOOTSTRAP_CHUNK):
        yield rng.integers(0, n, size=(min(BOOTSTRAP_CHUNK, n_resamples - s), n))


def _batched_top1_macro_f1(
    t: np.ndarray, p: np.ndarray, num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """Top-1 and macro-F1 of each row of ``t``/``p`` ``(B, n)``, the same rules as :func:`macro_f1`."""
    b, c = t.shape[0], num_classes
    flat = (np.arange(b)[:, None] * c + t) * c + p
    cm = np.bincount(flat.ravel(), minlength=b * c * c).reshape(b, c, c).astype(np.float64)
    tp = np.diagonal(cm, axis1=1, axis2=2)
    support, predicted = cm.sum(axis=2), cm.sum(axis=1)
    prec = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    rec = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    f1 = np.divide(2 * prec * rec, prec + rec, out=np.zeros_like(tp), where=(prec + rec) > 0)
    present = (support + predicted) > 0
    n_present = present.sum(axis=1)
    macro = np.divide((f1 * present).sum(axis=1), n_present, out=np.zeros(b), where=n_present > 0)
    return tp.sum(axis=1) / t.shape[1], macro


def bootstrap_ci(
    y_true: Labels,
    y_pred: Labels,
    num_classes: int,
    *,
    n_resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    level: float = BOOTSTRAP_LEVEL,
) -> dict[str, Any] | None:
    """Percentile-bootstrap intervals of top-1 and macro-F1 over the test rows.

    Each resample draws ``n`` rows with replacement (:func:`bootstrap_indices`) and computes
    :func:`top1` and :func:`macro_f1` of its confusion matrix; the interval is the
    ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles of the resampled figures (numpy's
    linear interpolation). Returns ``{"top1": [lo, hi], "macro_f1": [lo, hi], "level",
    "resamples", "seed", "method": "percentile"}``, or None for an empty test set.
    """
    t = np.asarray(y_true, dtype=np.int64)
    p = np.asarray(y_pred, dtype=np.int64)
    if t.shape != p.shape:
        raise ValueError(f"y_true and y_pred differ in shape: {t.shape} vs {p.shape}")
    if not len(t):
        return None
    tops, macros = [], []
    for idx in bootstrap_indices(len(t), n_resamples, seed):
        a, m = _batched_top1_macro_f1(t[idx], p[idx], num_classes)
        tops.append(a)
        macros.append(m)
    q = [(1 - level) / 2, (1 + level) / 2]
    return {
        "top1": [float(v) for v in np.quantile(np.concatenate(tops), q)],
        "macro_f1": [float(v) for v in np.quantile(np.concatenate(macros), q)],
        "level": level,
        "resamples": n_resamples,
        "seed": seed,
        "method": "percentile",
    }


def predictions_frame(rows, probs: np.ndarray, classes: Sequence[str]):
    """One row per evaluated test row: what anyone needs to compute their own statistics.

    ``rows``: the test rows (:func:`select_test_rows`), ``probs``: ``(N, C)`` softmax. Columns:
    ``id``, ``label`` (int, the evaluated label), ``label_name``, ``label_clean`` and
    ``is_noisy`` where the manifest has them, ``pred`` (int, argmax), ``pred_name``,
    ``correct`` (bool), ``confidence`` (top probability) and ``p_<class>`` per class.
    """
    import pandas as pd

    probs = np.asarray(probs, dtype=np.float64)
    pred = probs.argmax(axis=1) if len(probs) else np.zeros(0, dtype=np.int64)
    y = rows["label"].astype("int64").to_numpy()
    out = pd.DataFrame(
        {"id": rows["id"].astype(str).to_numpy(), "label": y, "label_name": [classes[i] for i in y]}
    )
    if "label_clean" in rows.columns:
        out["label_clean"] = rows["label_clean"].astype("Int64").to_numpy()
    if "is_noisy" in rows.columns:
        out["is_noisy"] = rows["is_noisy"].astype("boolean").to_numpy()
    out["pred"] = pred.astype(np.int64)
    out["pred_name"] = [classes[i] for i in pred]
    out["correct"] = pred == y
    out["confidence"] = probs.max(axis=1) if len(probs) else np.zeros(0)
    for c, name in enumerate(classes):
        out[f"p_{name}"] = probs[:, c]
    return out


def write_predictions(frame, path: str | os.PathLike) -> Path:
    """Write :func:`predictions_frame` output to Parquet atomically."""
    from fernoise.cache import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp:
        frame.to_parquet(tmp, index=False)
    return path


def train_clean_share(run: Run) -> float | None:
    """Share of clean rows (``is_noisy`` false) among the run's training rows, or None.

    The base rate a confident-set precision must beat: selecting rows at random gives this
    precision. Read from the run's own manifest (``config["manifest"]``): usable, labelled
    ``split == "train"`` rows, less the validation rows carved out of them (``val_ids.json``).
    None when that manifest is gone or has no ``is_noisy`` column.
    """
    import pyarrow.parquet as pq

    path = run.config.get("manifest")
    if not path or not Path(path).is_file():
        return None
    try:
        names = set(pq.read_schema(path).names)
        if "is_noisy" not in names:
            return None
        cols = [c for c in ("id", "split", "label", "path", "status", "is_noisy") if c in names]
        df = pq.read_table(path, columns=cols).to_pandas()
    except Exception:  # noqa: BLE001 - a picture's base line is not worth failing the evaluation over
        return None
    m = (df["split"] == "train") & df["label"].notna() & df["path"].notna()
    if "status" in df.columns:
        m &= df["status"].isin(["ok", "whole"])
    val_ids = run.path / "val_ids.json"
    if val_ids.is_file():
        try:
            m &= ~df["id"].astype(str).isin(set(map(str, json.loads(val_ids.read_text()))))
        except ValueError:
            pass
    flags = df.loc[m, "is_noisy"].dropna().astype(bool)
    return float((~flags).mean()) if len(flags) else None
