"""``fernoise report``: one table comparing training runs, like the paper's tables.

Reads ``config.json`` and ``metrics.jsonl`` of each run (never the model). Rows are methods
(``ce``, ``pc``, ``nl``, ``ncctfer`` first, others after, alphabetically); columns are noise
settings (``clean`` first, then by kind and rate). Each setting has two columns:

- ``<setting>``: ``max / last-5``: the highest test accuracy over the epochs and the mean
  test accuracy of the last 5 epochs, in % with one decimal (the paper's x/y);
- ``<setting> val``: the test accuracy at the epoch the validation split picks (highest
  ``val_acc``, earliest on ties), with that epoch: ``71.2 (e7)``. Empty when the run had no
  validation split.

Several runs in one cell (e.g. seeds) are averaged figure by figure, and the cell says
``n=K``. A (method, setting) without a run is an empty cell.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fernoise.errors import FernoiseError
from fernoise.plots import noise_label

METHOD_ORDER = ("ce", "pc", "nl", "ncctfer")


def _noise_sort(noise: dict[str, Any] | None) -> tuple:
    if not noise:
        return (0, "", 0.0)
    return (1, str(noise.get("kind") or ""), float(noise.get("rate") or 0.0))


def _method_sort(m: str) -> tuple:
    return (METHOD_ORDER.index(m), "") if m in METHOD_ORDER else (len(METHOD_ORDER), m)


@dataclass
class RunSummary:
    """One run's figures for the table."""

    path: Path
    method: str
    setting: str
    noise_sort: tuple
    max: float | None
    max_epoch: int | None
    last: float | None
    val_epoch: int | None
    val_test: float | None


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
                    raise FernoiseError(f"{p} is neither a run (no config.json) nor a folder of runs")
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


def summarise(path: str | os.PathLike) -> RunSummary:
    from fernoise.evaluate import load_run, max_last, val_selected

    run = load_run(path, need_model=False)
    m = max_last(run.history, "test_acc")
    v = val_selected(run.history)
    noise = run.config.get("noise")
    return RunSummary(
        path=run.path,
        method=str(run.config.get("method") or "?"),
        setting=noise_label(noise),
        noise_sort=_noise_sort(noise),
        max=m["max"] if m else None,
        max_epoch=m["max_epoch"] if m else None,
        last=m["last"] if m else None,
        val_epoch=v["epoch"] if v else None,
        val_test=v["test_acc"] if v else None,
    )


def _mean(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


def _pct(v: float | None) -> str:
    return "" if v is None else f"{100 * v:.1f}"


def build_table(runs: Sequence[RunSummary]) -> tuple[list[str], list[list[str]]]:
    """``(header, rows)`` of strings: the method column, then two columns per setting."""
    settings = sorted({(r.noise_sort, r.setting) for r in runs})
    methods = sorted({r.method for r in runs}, key=_method_sort)
    header = ["method"]
    for _, s in settings:
        header += [s, f"{s} val"]
    rows = []
    for meth in methods:
        row = [meth]
        for _, s in settings:
            cell = [r for r in runs if r.method == meth and r.setting == s]
            if not cell:
                row += ["", ""]
                continue
            mx, last = _mean([r.max for r in cell]), _mean([r.last for r in cell])
            n = f" (n={len(cell)})" if len(cell) > 1 else ""
            row.append(f"{_pct(mx)} / {_pct(last)}{n}" if mx is not None else "")
            vt = _mean([r.val_test for r in cell])
            if vt is None:
                row.append("")
            elif len(cell) == 1:
                row.append(f"{_pct(vt)} (e{cell[0].val_epoch})")
            else:
                row.append(f"{_pct(vt)}{n}")
        rows.append(row)
    return header, rows


def markdown(header: list[str], rows: list[list[str]]) -> str:
    """A GitHub Markdown table."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"  # noqa: E731
    sep = "| " + " | ".join("-" * w for w in widths) + " |"
    return "\n".join([line(header), sep, *(line(r) for r in rows)]) + "\n"


def csv_text(header: list[str], rows: list[list[str]]) -> str:
    import csv
    import io

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()


def report(items: Sequence[str | os.PathLike], *, fmt: str = "markdown") -> str:
    """The comparison table of the runs named by ``items`` as Markdown or CSV text."""
    if fmt not in ("markdown", "csv"):
        raise FernoiseError(f"unknown format {fmt!r}; expected markdown or csv")
    header, rows = build_table([summarise(p) for p in find_runs(items)])
    return markdown(header, rows) if fmt == "markdown" else csv_text(header, rows)
