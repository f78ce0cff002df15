"""Validating readers of a run folder's files: ``config.json``, ``metrics.jsonl``, ``eval.json``.

One reader per file kind, used by ``fernoise report`` and ``fernoise eval``
(:func:`fernoise.evaluate.stage.load_run`), so a damaged file is found in one place and said in one
line: a :class:`~fernoise.errors.FernoiseError` whose message starts with the file's path and
says what was expected and what was found. ``report`` skips such a run with that line as a
note; ``eval`` stops with it.

Checked (only what the readers downstream rely on; unknown fields pass):

- ``config.json``: a JSON object; ``classes`` a non-empty list of strings; ``image_size`` and
  ``epochs`` positive integers (``epochs`` may be absent or null); ``noise`` null or an object
  whose ``kind`` is a string and ``rate`` a number or null; ``method``, ``key``, ``manifest``,
  ``pretrained`` strings or null; ``lineage`` null or a list of objects whose ``params`` are
  objects (a ``split`` entry's ``fold`` an integer).
- ``metrics.jsonl``: UTF-8 text, one JSON object per line (a torn *last* line, as a killed
  trainer leaves it, is ignored); ``epoch`` a positive integer; the figures read downstream
  (``test_acc``, ``val_acc``, ``confident_*``, ...) numbers or null; ``thresholds`` null or
  a list of numbers.
- ``eval.json``: a JSON object; ``top1``, ``macro_f1``, ``train_clean_share`` finite numbers in
  [0, 1] or null; ``ci95`` null or an object whose ``top1`` and ``macro_f1`` are null or
  ``[lo, hi]`` finite numbers.

The fields that only run folders of older fernoise versions have, and what they mean today,
are in one place: the "legacy" section at the end (:func:`legacy_method`).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from fernoise.errors import FernoiseError

METRIC_NUMBERS = (
    "test_acc",
    "val_acc",
    "train_acc",
    "loss",
    "confident_precision",
    "confident_recall",
    "confident_frac",
)
EVAL_FRACTIONS = ("top1", "macro_f1", "train_clean_share")
CI_FIGURES = ("top1", "macro_f1")  # ci95 also holds "level", "n_boot", ...


def _damaged(path: Path, why: str, fix: str) -> FernoiseError:
    return FernoiseError(f"{path}: {why}; {fix}")


def _kind(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return f"a boolean ({v})"
    if isinstance(v, int | float):
        return f"the number {v!r}"
    if isinstance(v, str):
        return f"the string {v[:40]!r}"
    return f"a JSON {'list' if isinstance(v, list) else 'object' if isinstance(v, dict) else type(v).__name__}"


def _is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _text(path: Path, fix: str) -> str:
    if not path.is_file():
        raise _damaged(path, "is not a regular file", fix)
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise _damaged(
            path, f"is not UTF-8 text (undecodable byte at offset {e.start})", fix
        ) from None
    except OSError as e:
        raise _damaged(
            path, f"could not be read ({e.strerror or e.__class__.__name__})", fix
        ) from None


def _json_object(path: Path, fix: str) -> dict[str, Any]:
    try:
        data = json.loads(_text(path, fix))
    except ValueError as e:
        raise _damaged(path, f"is not valid JSON ({e})", fix) from None
    if not isinstance(data, dict):
        raise _damaged(path, f"expected a JSON object, found {_kind(data)}", fix)
    return data


# ----------------------------------------------------------------------------- config.json
CONFIG_FIX = "re-run `fernoise train` for this run (or remove the folder)"


def read_config(path: str | os.PathLike) -> dict[str, Any]:
    """A run's ``config.json``, checked (module docstring); a one-line FernoiseError if damaged."""
    path = Path(path)
    cfg = _json_object(path, CONFIG_FIX)

    def bad(key: str, expected: str) -> FernoiseError:
        return _damaged(
            path, f"{key!r}: expected {expected}, found {_kind(cfg.get(key))}", CONFIG_FIX
        )

    for k in ("classes", "image_size"):
        if k not in cfg:
            raise _damaged(path, f"lacks {k!r}; it was not written by `fernoise train`", CONFIG_FIX)
    classes = cfg["classes"]
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        raise bad("classes", "a non-empty list of class names")
    if not (
        isinstance(cfg["image_size"], int)
        and not isinstance(cfg["image_size"], bool)
        and cfg["image_size"] > 0
    ):
        raise bad("image_size", "a positive integer")
    epochs = cfg.get("epochs")
    if epochs is not None and not (
        isinstance(epochs, int) and not isinstance(epochs, bool) and epochs > 0
    ):
        raise bad("epochs", "a positive integer")
    noise = cfg.get("noise")
    if noise is not None:
        if not isinstance(noise, dict):
            raise bad("noise", 'null (clean) or an object such as {"kind": "sym", "rate": 0.3}')
        if not isinstance(noise.get("kind"), str):
            raise _damaged(
                path,
                f"'noise.kind': expected a string, found {_kind(noise.get('kind'))}",
                CONFIG_FIX,
            )
        rate = noise.get("rate")
        if rate is not None and not (_is_num(rate) and math.isfinite(rate)):
            raise _damaged(
                path, f"'noise.rate': expected a number or null, found {_kind(rate)}", CONFIG_FIX
            )
    for k in ("method", "key", "manifest", "pretrained"):
        if cfg.get(k) is not None and not isinstance(cfg[k], str):
            raise bad(k, "a string")
    lineage = cfg.get("lineage")
    if lineage is not None and not (
        isinstance(lineage, list) and all(isinstance(e, dict) for e in lineage)
    ):
        raise bad("lineage", "a list of objects")
    for i, entry in enumerate(lineage or []):
        params = entry.get("params")
        if params is not None and not isinstance(params, dict):
            raise _damaged(
                path,
                f"'lineage[{i}].params': expected an object, found {_kind(params)}",
                CONFIG_FIX,
            )
        fold = (params or {}).get("fold")
        if (
            entry.get("stage") == "split"
            and fold is not None
            and not (isinstance(fold, int) and not isinstance(fold, bool))
        ):
            raise _damaged(
                path,
                f"'lineage[{i}].params.fold': expected an integer, found {_kind(fold)}",
                CONFIG_FIX,
            )
    return cfg


# ----------------------------------------------------------------------------- metrics.jsonl
METRICS_FIX = "resume or re-run `fernoise train` for this run"


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The epochs of a ``metrics.jsonl`` in order, checked (module docstring); ``[]`` when the
    file does not exist; a torn last line is ignored; anything else damaged is a one-line
    FernoiseError naming the line."""
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return []
    lines = _text(path, METRICS_FIX).splitlines()
    last = max((i for i, ln in enumerate(lines) if ln.strip()), default=-1)
    rows: list[dict[str, Any]] = []
    for i, line in enumerate(lines):
        line = line.strip()
        if not line:
            continue
        try:
            row = json.loads(line)
        except ValueError:
            if i == last:  # a trainer killed mid-write
                continue
            raise _damaged(path, f"line {i + 1} is not valid JSON", METRICS_FIX) from None
        if not isinstance(row, dict):
            raise _damaged(
                path, f"line {i + 1}: expected a JSON object, found {_kind(row)}", METRICS_FIX
            )
        ep = row.get("epoch")
        if ep is not None and not (isinstance(ep, int) and not isinstance(ep, bool) and ep > 0):
            raise _damaged(
                path,
                f"line {i + 1}: 'epoch' expected a positive integer, found {_kind(ep)}",
                METRICS_FIX,
            )
        for k in METRIC_NUMBERS:
            if row.get(k) is not None and not _is_num(row[k]):
                raise _damaged(
                    path,
                    f"line {i + 1}: {k!r} expected a number, found {_kind(row[k])}",
                    METRICS_FIX,
                )
        thr = row.get("thresholds")
        if thr is not None and not (
            isinstance(thr, list) and all(t is None or _is_num(t) for t in thr)
        ):
            raise _damaged(
                path,
                f"line {i + 1}: 'thresholds' expected a list of numbers, found {_kind(thr)}",
                METRICS_FIX,
            )
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------- eval.json
EVAL_FIX = "re-run `fernoise eval` for this run (or delete the file)"


def read_eval(path: str | os.PathLike) -> dict[str, Any] | None:
    """A run's ``eval.json``, checked (module docstring); None when there is none; a one-line
    FernoiseError if damaged."""
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return None
    rep = _json_object(path, EVAL_FIX)
    for k in EVAL_FRACTIONS:
        v = rep.get(k)
        if v is not None and not (_is_num(v) and math.isfinite(v) and 0 <= v <= 1):
            raise _damaged(
                path, f"{k!r}: expected a fraction in [0, 1], found {_kind(v)}", EVAL_FIX
            )
    ci = rep.get("ci95")
    if ci is not None and not isinstance(ci, dict):
        raise _damaged(path, f"'ci95': expected an object, found {_kind(ci)}", EVAL_FIX)
    for k in CI_FIGURES:
        v = (ci or {}).get(k)
        ok = v is None or (
            isinstance(v, list) and len(v) == 2 and all(_is_num(x) and math.isfinite(x) for x in v)
        )
        if not ok:
            raise _damaged(
                path,
                f"'ci95.{k}': expected two finite numbers (lo, hi), found {json.dumps(v)[:40]}",
                EVAL_FIX,
            )
    if rep.get("run_key") is not None and not isinstance(rep["run_key"], str):
        raise _damaged(
            path, f"'run_key': expected a string, found {_kind(rep['run_key'])}", EVAL_FIX
        )
    return rep


# ----------------------------------------------------------------------------- legacy
# Run folders written by older fernoise versions, read by today's eval and report; the method
# names below are spelt here, outside fernoise/methods/, on purpose (tests/test_method_contract.py
# allows them):
# - config.json without ``method`` (before the method registry): ``two_heads`` true was NCCTFER
#   (the ``ncc`` head), false the cross-entropy baseline;
# - config.json without ``method_params``: NCCTFER's ``k`` at the top level;
# - metrics.jsonl rows with ``loss_c`` for every method (null where the method has no ``c``
#   part): today a run logs only its own method's parts. Readers take every ``loss_<part>``
#   column that has a value, so a null ``loss_c`` is never drawn or reported.
LEGACY_TWO_HEADS_METHOD = "ncctfer"
LEGACY_ONE_HEAD_METHOD = "ce"
LEGACY_TOP_LEVEL_PARAMS = ("k",)


def legacy_method(config: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """``(method name, method_params dict)`` of a run's ``config``, also for runs made before
    ``method`` or ``method_params`` existed (see the section's comment)."""
    name = config.get("method") or (
        LEGACY_TWO_HEADS_METHOD if config.get("two_heads") else LEGACY_ONE_HEAD_METHOD
    )
    given = config.get("method_params")
    if given is None:
        given = {k: config[k] for k in LEGACY_TOP_LEVEL_PARAMS if config.get(k) is not None}
    return name, given
