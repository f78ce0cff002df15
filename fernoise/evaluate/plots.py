"""The pictures of ``fernoise eval``: PNGs readable without the terminal.

Every function takes plain data (a confusion matrix, a training history as written to
``metrics.jsonl``) and writes one PNG atomically. Figures are built on matplotlib's Agg
canvas directly (``matplotlib.figure.Figure``), so no global backend or pyplot state is
touched. A picture whose data the run did not record (thresholds of a ``ce`` run, noise
detection without ``is_noisy``) is still written, saying so in the figure, so a run folder
always holds the same four pictures.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from fernoise.cache import atomic_path

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

DPI = 110
LAST_N = 5  # the paper's last-5: the epochs whose spread curves.png shades
PICTURES = {
    "confusion": "confusion.png",
    "curves": "curves.png",
    "thresholds": "thresholds.png",
    "noise_detection": "noise_detection.png",
}
GRADCAM_PNG = "gradcam.png"
GRADCAM_MIN_SIZE = 112  # below it ResNet-18's layer4 is at most 3x3 cells: a map too coarse to read


def gradcam_coarse_note(size: int, cells: int | None = None, layer: str = "backbone.layer4") -> str:
    """The caveat printed on screen and in ``gradcam.png`` for faces below 112 px, or whenever
    the hooked ``layer``'s map is under 4x4 ``cells`` (ResNet-18: ``ceil(size / 32)``)."""
    if cells is None:
        cells = max(1, -(-int(size) // 32))
    advice = (
        f"train at {GRADCAM_MIN_SIZE} px or more for readable Grad-CAM"
        if layer == "backbone.layer4"
        else "train at a larger --image-size for readable Grad-CAM (docs/backbones.md)"
    )
    return (
        f"at {size} px the last layer ({layer}) is {cells}x{cells} cells: the map is too "
        f"coarse to mean much ({advice})"
    )


def gradcam_is_coarse(size: int, cells: int | None = None) -> bool:
    """Below 112 px, or a map under 4x4 cells (dlib-resnet29: 1x1 at 103-134 px)."""
    return size < GRADCAM_MIN_SIZE or (cells is not None and cells < 4)


def noise_label(noise: dict[str, Any] | None) -> str:
    """``clean`` for no noise, else ``<kind> <rate %>`` (e.g. ``sym 30%``), ``column <name>``."""
    if not noise:
        return "clean"
    kind = str(noise.get("kind") or "noise")
    rate = noise.get("rate")
    if rate is None:
        return f"{kind} {noise['column']}" if kind == "column" and noise.get("column") else kind
    pct = float(rate) * 100
    return f"{kind} {pct:.0f}%" if pct == round(pct) else f"{kind} {pct:.1f}%"


def _figure(
    w: float, h: float, layout: Literal["constrained", "compressed", "tight"] | None = "constrained"
) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=DPI, layout=layout)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: str | os.PathLike) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", bbox_inches="tight")
    return path


def _epochs(history: Sequence[dict[str, Any]]) -> list[int]:
    return [int(r.get("epoch", i + 1)) for i, r in enumerate(history)]


def _col(history: Sequence[dict[str, Any]], key: str) -> np.ndarray:
    return np.array([np.nan if r.get(key) is None else float(r[key]) for r in history], dtype=float)


def _shade_warmup(ax, history: Sequence[dict[str, Any]]) -> None:
    warm = [int(r.get("epoch", i + 1)) for i, r in enumerate(history) if r.get("warmup")]
    if warm:
        ax.axvspan(min(warm) - 0.5, max(warm) + 0.5, color="0.88", zorder=0, label="warm-up")


def _epoch_axis(ax) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _empty(ax, text: str) -> None:
    ax.text(
        0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=11, wrap=True
    )
    ax.set_xticks([])
    ax.set_yticks([])


# ----------------------------------------------------------------------------- confusion
def confusion_png(
    cm: np.ndarray, classes: Sequence[str], path: str | os.PathLike, *, title: str = ""
) -> Path:
    """Heatmap of the row-normalised confusion matrix; each cell shows count and share.

    Rows are true classes, columns predicted classes, both labelled with class names.
    """
    cm = np.asarray(cm, dtype=np.int64)
    support = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, support, out=np.zeros(cm.shape, dtype=float), where=support > 0)
    c = len(classes)
    side = max(5.0, 0.85 * c + 2.5)
    fig = _figure(side + 1.2, side)
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    ax.set_xticks(range(c))
    ax.set_yticks(range(c))
    ax.set_xticklabels(classes, rotation=40, ha="right")
    ax.set_yticklabels([f"{n} ({int(s)})" for n, s in zip(classes, support[:, 0], strict=True)])
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class (test rows)")
    for i in range(c):
        for j in range(c):
            ax.text(
                j,
                i,
                f"{cm[i, j]}\n{norm[i, j]:.2f}",
                ha="center",
                va="center",
                fontsize=8,
                color="white" if norm[i, j] > 0.55 else "black",
            )
    ax.set_title(title or "confusion matrix (count / share of the row)")
    return _save(fig, path)


# ----------------------------------------------------------------------------- curves
def curves_png(
    history: Sequence[dict[str, Any]],
    path: str | os.PathLike,
    *,
    title: str = "",
    num_classes: int | None = None,
    part_captions: dict[str, str] | None = None,
) -> Path:
    """:func:`curves_figure` written to ``path``."""
    return _save(
        curves_figure(history, title=title, num_classes=num_classes, part_captions=part_captions),
        path,
    )


def _loss_lines(
    history: Sequence[dict[str, Any]], captions: dict[str, str]
) -> list[tuple[str, str, str]]:
    """The loss panel's (key, label, style): ``loss``, ``loss_s``, then every other ``loss_<part>``
    column of ``history`` in first-seen order, captioned by the method (``Method.part_captions``)."""
    lines = [("loss", "loss L", "-"), ("loss_s", "L_s (cross-entropy part)", "--")]
    others = dict.fromkeys(
        k for row in history for k in row if k.startswith("loss_") and k != "loss_s"
    )
    styles = (":", "-.")
    for i, key in enumerate(others):
        part = key[len("loss_") :]
        label = f"L_{part} ({captions[part]})" if part in captions else f"L_{part}"
        lines.append((key, label, styles[i % len(styles)]))
    return lines


def curves_figure(
    history: Sequence[dict[str, Any]],
    *,
    title: str = "",
    num_classes: int | None = None,
    part_captions: dict[str, str] | None = None,
) -> Figure:
    """Three panels over epochs: accuracies (train/val/test), loss parts, confident fraction.

    The loss panel draws every ``loss_<part>`` column with a value, captioned from
    ``part_captions`` (the method's ``Method.part_captions``: ``{"c": "negative classes"}``).

    Accuracies and the confident fraction sit on fixed 0-1 axes, so two runs' pictures compare
    at a glance. The accuracy panel draws chance (``1 / num_classes``) as a dotted line and
    shades the min-max band of the test accuracy over the last 5 epochs (the paper's last-5),
    with its mean in the legend.
    """
    fig = _figure(13, 4.2)
    axes = [fig.add_subplot(1, 3, i + 1) for i in range(3)]
    ep = _epochs(history)
    if not history:
        for ax in axes:
            _empty(ax, "no epochs recorded (metrics.jsonl is empty)")
        return fig
    accuracy = [
        ("train_acc", "train (vs training label)", ":"),
        ("val_acc", "validation", "--"),
        ("test_acc", "test", "-"),
    ]
    _curves_panel(axes[0], history, ep, "accuracy", accuracy)
    _curves_panel(axes[1], history, ep, "loss", _loss_lines(history, part_captions or {}))
    _curves_panel(
        axes[2],
        history,
        ep,
        "fraction of the batch",
        [("confident_frac", "confident fraction", "-")],
        empty_note="no confident set\n(warm-up only, or a method that does not select)",
    )
    axes[0].set_title("accuracy per epoch")
    axes[1].set_title("loss parts per epoch")
    axes[2].set_title("confident fraction per epoch")
    acc = axes[0]
    if num_classes:
        acc.axhline(
            1 / num_classes,
            color="0.35",
            ls=":",
            lw=1.2,
            label=f"chance (1/{num_classes} = {1 / num_classes:.3f})",
        )
    _last_test_band(acc, history, ep)
    for ax in (acc, axes[2]):
        ax.set_ylim(0, 1)
    acc.legend(fontsize=7, loc="best")
    if title:
        fig.suptitle(title)
    return fig


def _curves_panel(
    ax: Axes,
    history: Sequence[dict[str, Any]],
    ep: list[int],
    ylabel: str,
    keys: Sequence[tuple[str, str, str]],
    empty_note: str | None = None,
) -> None:
    """One panel of :func:`curves_figure`: each ``(column, label, line style)`` of ``keys``
    with a value as a line over epochs ``ep``, warm-up shaded; ``empty_note`` when none has."""
    _shade_warmup(ax, history)
    drawn = 0
    for key, label, style in keys:
        y = _col(history, key)
        if np.isfinite(y).any():
            ax.plot(ep, y, style, marker="o", ms=3, label=label)
            drawn += 1
    if empty_note and not drawn:
        ax.text(0.5, 0.5, empty_note, ha="center", va="center", transform=ax.transAxes)
    _epoch_axis(ax)
    ax.set_xlim(min(ep) - 0.5, max(ep) + 0.5)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)


def _last_test_band(acc: Axes, history: Sequence[dict[str, Any]], ep: list[int]) -> None:
    """Shade the min-max band of the test accuracy over its last LAST_N recorded epochs (the
    mean in the legend) and mark the maximum."""
    test = _col(history, "test_acc")
    ok = np.flatnonzero(np.isfinite(test))
    if not len(ok):
        return
    tail = ok[-LAST_N:]
    lo, hi, mean = float(test[tail].min()), float(test[tail].max()), float(test[tail].mean())
    x0, x1 = ep[tail[0]] - 0.5, ep[tail[-1]] + 0.5
    acc.fill_between(
        [x0, x1],
        lo,
        hi,
        color="tab:green",
        alpha=0.18,
        lw=0,
        label=f"test, last {len(tail)}: {lo:.3f}-{hi:.3f} (mean {mean:.3f})",
    )
    k = int(np.nanargmax(test))
    acc.annotate(
        f"max {test[k]:.3f} (epoch {ep[k]})",
        (ep[k], test[k]),
        textcoords="offset points",
        xytext=(0, 8),
        ha="center",
        fontsize=8,
    )


# ----------------------------------------------------------------------------- thresholds
def thresholds_png(
    history: Sequence[dict[str, Any]],
    classes: Sequence[str],
    path: str | os.PathLike,
    *,
    title: str = "",
) -> Path:
    """One line per class: the epoch mean of the per-batch threshold ``T_c`` (Eq. 1)."""
    fig = _figure(8, 4.6)
    ax = fig.add_subplot(1, 1, 1)
    ep = _epochs(history)
    cmap = _class_colours(len(classes))
    drawn = 0
    for c, name in enumerate(classes):
        y = np.array(
            [
                np.nan
                if not isinstance(r.get("thresholds"), list)
                or c >= len(r["thresholds"])
                or r["thresholds"][c] is None
                else float(r["thresholds"][c])
                for r in history
            ]
        )
        if np.isfinite(y).any():
            ax.plot(ep, y, marker="o", ms=3, color=cmap[c], label=name)
            drawn += 1
    if not drawn:
        _empty(ax, "no class thresholds recorded\n(method ce or nl, or only warm-up epochs)")
    else:
        _shade_warmup(ax, history)
        _epoch_axis(ax)
        ax.set_ylabel("threshold T_c (mean p[y=c] of the class's rows)")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, ncol=2, title="class")
    ax.set_title(title or "per-class confidence thresholds T_c over epochs")
    return _save(fig, path)


def _class_colours(n: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return [cmap(i % 10) for i in range(n)]


# ----------------------------------------------------------------------------- noise detection
def noise_detection_png(
    history: Sequence[dict[str, Any]],
    path: str | os.PathLike,
    *,
    title: str = "",
    clean_share: float | None = None,
) -> Path:
    """:func:`noise_detection_figure` written to ``path``."""
    return _save(noise_detection_figure(history, title=title, clean_share=clean_share), path)


def noise_detection_figure(
    history: Sequence[dict[str, Any]], *, title: str = "", clean_share: float | None = None
):
    """Precision, recall and F1 of the confident set as a detector of clean rows, per epoch.

    ``clean_share``: the share of clean rows among the training rows, drawn as a line: the
    precision of picking rows at random, which the confident set's precision must beat.
    """
    fig = _figure(8, 4.6)
    ax = fig.add_subplot(1, 1, 1)
    ep = _epochs(history)
    p = _col(history, "confident_precision")
    r = _col(history, "confident_recall")
    if not (np.isfinite(p).any() or np.isfinite(r).any()):
        _empty(
            ax,
            "no noise-detection figures recorded\n(the training manifest has no is_noisy column,\n"
            "or the method selects no confident set)",
        )
    else:
        _shade_warmup(ax, history)
        with np.errstate(invalid="ignore", divide="ignore"):
            f1 = np.where(p + r > 0, 2 * p * r / (p + r), 0.0)
        f1[~(np.isfinite(p) & np.isfinite(r))] = np.nan
        ax.plot(ep, p, "-", marker="o", ms=3, label="precision (clean among confident)")
        ax.plot(ep, r, "--", marker="s", ms=3, label="recall (confident among clean)")
        ax.plot(ep, f1, ":", marker="^", ms=3, label="F1")
        frac = _col(history, "confident_frac")
        if np.isfinite(frac).any():
            ax.plot(ep, frac, "-", color="0.5", lw=1, label="confident fraction")
        if clean_share is not None:
            ax.axhline(
                clean_share,
                color="firebrick",
                ls="-.",
                lw=1.2,
                label=f"base rate: clean share of training rows ({clean_share:.3f})",
            )
        _epoch_axis(ax)
        ax.set_ylabel("score (clean = is_noisy false)")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    ax.set_title(title or "confident set as a clean-label detector, per epoch")
    return fig


# ----------------------------------------------------------------------------- all
def all_pictures(
    report: dict[str, Any], history: Sequence[dict[str, Any]], out_dir: str | os.PathLike
) -> list[Path]:
    """The four standard pictures of an evaluation report, written into ``out_dir``."""
    out_dir = Path(out_dir)
    name = _run_label(report)
    classes = report["classes"]
    return [
        confusion_png(
            np.array(report["confusion_matrix"]),
            classes,
            out_dir / PICTURES["confusion"],
            title=f"{name}: top-1 {report['top1']:.3f}, macro-F1 {report['macro_f1']:.3f} (n={report['n']})",
        ),
        curves_png(
            history,
            out_dir / PICTURES["curves"],
            title=f"training curves: {name}",
            num_classes=len(classes),
            part_captions=_part_captions(report.get("method")),
        ),
        thresholds_png(
            history,
            classes,
            out_dir / PICTURES["thresholds"],
            title=f"per-class thresholds T_c over epochs: {name}",
        ),
        noise_detection_png(
            history,
            out_dir / PICTURES["noise_detection"],
            title=f"noise detection by the confident set: {name}",
            clean_share=report.get("train_clean_share"),
        ),
    ]


def _part_captions(method: str | None) -> dict[str, str]:
    """``method``'s loss-part captions (none for a method no longer registered)."""
    from fernoise import methods

    return dict(methods.get(method).part_captions) if method in methods.names() else {}


def _run_label(report: dict[str, Any]) -> str:
    return f"{report.get('method') or '?'}, {noise_label(report.get('noise'))}"


# ----------------------------------------------------------------------------- report pictures
def _grid(n: int, w: float, h: float):
    cols = min(n, 3)
    rows = -(-n // cols)
    fig = _figure(w * cols, h * rows)
    return fig, [fig.add_subplot(rows, cols, i + 1) for i in range(n)]


def _wrap(text: str, width: int = 60) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width=width))


def accuracy_vs_noise_png(
    panels: Sequence[tuple[str, dict[str, Any]]], path: str | os.PathLike
) -> Path:
    """Test accuracy against the noise rate: one panel per (table, noise kind), one line per method.

    ``panels``: ``(title, series)`` with ``series`` as :func:`fernoise.report.plot_series`
    returns it: ``{"figure", "kinds": {kind: {method: [(rate, mean, std, n)]}}, "chance",
    "over"}``. Error bars are the sample std over seeds, or over folds for a k-fold table (none
    for a single run; the caption says which); the clean column is rate 0. ``chance`` (1 / C)
    is drawn as a dotted line.
    """
    items = [(title, s, kind, lines) for title, s in panels for kind, lines in s["kinds"].items()]
    if not items:
        fig = _figure(6, 4)
        _empty(
            fig.add_subplot(1, 1, 1),
            "no noise setting with a rate to plot\n(clean-only runs, or matrix/column noise)",
        )
        return _save(fig, path)
    fig, axes = _grid(len(items), 5.6, 4.4)
    for ax, (title, series, kind, lines) in zip(axes, items, strict=True):
        figure = series["figure"]
        if series.get("chance"):
            c = series["chance"]
            ax.axhline(
                100 * c,
                ls=":",
                color="grey",
                lw=1.2,
                label=f"chance (1/{round(1 / c)} = {100 * c:.1f}%)",
            )
        for i, (label, pts) in enumerate(sorted(lines.items())):
            x = [100 * p[0] for p in pts]
            y = [100 * p[1] for p in pts]
            e = [100 * p[2] for p in pts]
            ax.errorbar(x, y, yerr=e, marker="os^vD<>p*h"[i % 10], ms=4, capsize=3, label=label)
        ax.set_xlabel(f"{kind} noise rate (%)")
        what = (
            "validation-selected" if figure == "val_test" else "last-5 mean (no validation split)"
        )
        ax.set_ylabel(f"test accuracy (%), {what}")
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, title="method")
        ax.set_title(_wrap(title), fontsize=8)
    overs = sorted({str(s.get("over") or "seeds") for _, s, _, _ in items})
    fig.suptitle(
        f"test accuracy vs noise (error bars: sample std over {' / '.join(overs)})", fontsize=10
    )
    return _save(fig, path)


def selection_vs_noise_png(
    panels: Sequence[tuple[str, dict[str, Any]]], path: str | os.PathLike
) -> Path:
    """Per method that selects samples: confident-set precision and recall against the noise rate.

    ``series["selection"]``: ``{method: {kind: [(rate, precision Stat, recall Stat, base)]}}``;
    the figures are those of each run's last epoch that recorded them, mean ± std over seeds.
    ``base`` (the clean share of the training rows) is drawn as a dashed line: the precision of
    a random pick.
    """
    items = [
        (title, method, kind, pts)
        for title, s in panels
        for method, kinds in s["selection"].items()
        for kind, pts in kinds.items()
    ]
    if not items:
        fig = _figure(6, 4)
        _empty(
            fig.add_subplot(1, 1, 1),
            "no method selected samples\n(or the manifests had no is_noisy)",
        )
        return _save(fig, path)
    fig, axes = _grid(len(items), 5.0, 4.2)
    for ax, (title, method, kind, pts) in zip(axes, items, strict=True):
        x = np.array([100 * p[0] for p in pts])
        for j, (name, style) in enumerate(
            (("precision (clean among selected)", "-o"), ("recall (selected among clean)", "--s"))
        ):
            stats = [p[1 + j] for p in pts]
            keep = [i for i, s in enumerate(stats) if s is not None]
            if keep:
                ax.errorbar(
                    x[keep],
                    [stats[i].mean for i in keep],
                    yerr=[stats[i].std or 0.0 for i in keep],
                    fmt=style,
                    ms=4,
                    capsize=3,
                    label=name,
                )
        base = [(100 * p[0], p[3]) for p in pts if p[3] is not None]
        if len({b[1] for b in base}) == 1:  # one rate (or one base rate): a line across
            ax.axhline(
                base[0][1],
                ls=":",
                color="firebrick",
                lw=1.3,
                label="base rate: clean share of training rows",
            )
        elif base:
            ax.plot(
                [b[0] for b in base],
                [b[1] for b in base],
                ":",
                color="firebrick",
                lw=1.3,
                label="base rate: clean share of training rows",
            )
        ax.set_ylim(0, 1.02)
        ax.set_xlabel(f"{kind} noise rate (%)")
        ax.set_ylabel("score, last epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower left")
        ax.set_title(_wrap(f"{method}: {title}", 55), fontsize=8)
    overs = sorted({str(s.get("over") or "seeds") for _, s in panels})
    fig.suptitle(
        "confident set as a clean-label detector, per method (error bars: std over "
        f"{' / '.join(overs)})",
        fontsize=10,
    )
    return _save(fig, path)
