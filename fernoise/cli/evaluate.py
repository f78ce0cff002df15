"""`fernoise eval [RUN]`: metrics, tables and pictures of a training run."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from fernoise.cli.common import (
    DeviceOpt,
    WorkspaceOpt,
    console,
    err_console,
    handle_errors,
    wrote,
)


def _pct(v: Any) -> str:
    return "—" if v is None else f"{100 * float(v):.1f}"


def _f(v: Any, nd: int = 3) -> str:
    return "—" if v is None else f"{float(v):.{nd}f}"


def print_report(rep: dict[str, Any], out_dir: Path) -> None:
    """The rich tables of an eval.json."""
    h = rep["history"]
    console.print(_summary_table(rep))
    console.print(_per_class_table(rep))
    console.print(_confusion_table(rep))
    _print_history(h, rep["classes"])
    for w in h.get("warnings", []):
        err_console.print(f"[yellow]warning:[/yellow] {w}", soft_wrap=True)
    if rep.get("gradcam_note"):
        err_console.print(
            f"[yellow]note:[/yellow] gradcam.png: {rep['gradcam_note']}", soft_wrap=True
        )


def _summary_table(rep: dict[str, Any]):
    """Top-1, macro-F1, mean class accuracy, ECE and the history's figures, one row each."""
    from rich.table import Table

    h = rep["history"]
    mx, vs = h.get("test_max_last5"), h.get("val_selected")
    forced = rep.get("forced") or []
    tag = " — FORCED: evaluated with --force on changed inputs" if forced else ""
    t = Table(
        title=f"{rep['method']} on {Path(rep['manifest']).name} ({rep['n']} test faces){tag}",
        show_header=False,
    )
    t.add_column("figure", style="bold")
    t.add_column("value")
    ci = rep.get("ci95") or {}
    t.add_row(
        "top-1 accuracy (final model)",
        f"{_pct(rep['top1'])} %"
        + _ci(ci.get("top1"), pct=True)
        + ("  (forced: see the warnings)" if forced else ""),
    )
    t.add_row("macro-F1", _f(rep["macro_f1"]) + _ci(ci.get("macro_f1")))
    t.add_row("mean class accuracy", f"{_pct(rep['mean_class_accuracy'])} %")
    t.add_row(f"ECE ({rep['ece_bins']} bins)", _f(rep["ece"]))
    if mx:
        t.add_row(
            "history: max / last-5 test acc.",
            f"{_pct(mx['max'])} / {_pct(mx['last'])} %  (max at epoch {mx['max_epoch']}, last {mx['last_n']})",
        )
    if vs:
        t.add_row(
            "history: validation-selected",
            f"{_pct(vs['test_acc'])} %  (epoch {vs['epoch']}, val {_pct(vs['val_acc'])} %)"
            + (
                "  † inside the warm-up: see the warning" if h.get("val_selected_in_warmup") else ""
            ),
        )
    elif h.get("epochs"):
        t.add_row("history: validation-selected", "— (the run had no validation split)")
    if not rep.get("own_manifest", True) and (mx or vs):
        t.caption = "history figures come from the run's own test split, not this manifest"
    if ci:
        t.add_row(
            "",
            f"[dim]95% percentile bootstrap over test rows ({ci['resamples']} resamples, seed {ci['seed']})[/dim]",
        )
    return t


def _per_class_table(rep: dict[str, Any]):
    """Support, precision, recall, F1 and accuracy per class."""
    from rich.table import Table

    pc = Table(title="per class (accuracy = recall: share of the class's rows predicted right)")
    for col in ("class", "support", "precision", "recall", "F1", "accuracy"):
        pc.add_column(col, justify="left" if col == "class" else "right")
    for name in rep["classes"]:
        m = rep["per_class"][name]
        pc.add_row(
            name,
            str(m["support"]),
            _f(m["precision"]),
            _f(m["recall"]),
            _f(m["f1"]),
            _pct(m["accuracy"]),
        )
    return pc


def _confusion_table(rep: dict[str, Any]):
    """The confusion matrix, its diagonal in bold."""
    from rich.table import Table

    classes = rep["classes"]
    cm = Table(title="confusion matrix (rows: true, columns: predicted)")
    cm.add_column("true \\ pred")
    for name in classes:
        cm.add_column(name[:8], justify="right")
    for name, row in zip(classes, rep["confusion_matrix"], strict=True):
        cm.add_row(
            name,
            *[
                f"[bold]{v}[/bold]" if i == classes.index(name) else str(v)
                for i, v in enumerate(row)
            ],
        )
    return cm


def _print_history(h: dict[str, Any], classes: list[str]) -> None:
    """Per epoch, where the history has them: the confident set as a detector of clean rows,
    and the per-class thresholds."""
    from rich.table import Table

    nd = h.get("noise_detection") or []
    if nd:
        tt = Table(title="confident set as a detector of clean rows (vs is_noisy), per epoch")
        for col in ("epoch", "precision", "recall", "F1", "confident fraction"):
            tt.add_column(col, justify="right")
        for d in nd:
            tt.add_row(
                str(d["epoch"]),
                _f(d["precision"], 2),
                _f(d["recall"], 2),
                _f(d["f1"], 2),
                _f(d["confident_frac"], 2),
            )
        console.print(tt)
    thr = h.get("thresholds")
    if thr:
        tt = Table(title="per-class thresholds T_c per epoch (— : warm-up or class unseen)")
        tt.add_column("epoch", justify="right")
        for name in classes:
            tt.add_column(name[:3], justify="right")
        for i, e in enumerate(thr["epoch"]):
            tt.add_row(str(e), *[_f(thr[name][i], 2) for name in classes])
        console.print(tt)


def _ci(interval: list[float] | None, *, pct: bool = False) -> str:
    """`` [lo, hi]`` of a 95% interval (in % when ``pct``), or nothing."""
    if not interval:
        return ""
    lo, hi = interval
    return f"  [{_pct(lo)}, {_pct(hi)}] %" if pct else f"  [{_f(lo)}, {_f(hi)}]"


def register(app: typer.Typer) -> None:
    @app.command(name="eval")
    @handle_errors
    def eval_cmd(
        run: Annotated[
            Path | None,
            typer.Argument(
                metavar="RUN",
                help="Training run folder (default: the latest `fernoise train` run).",
            ),
        ] = None,
        manifest: Annotated[
            Path | None,
            typer.Option(
                "--manifest",
                help="Evaluate on this manifest's test rows (same label space); results go to RUN/eval-<key>/. A folder means its manifest.parquet.",
            ),
        ] = None,
        cam: Annotated[
            int, typer.Option("--cam", help="Grad-CAM grid of N test faces (gradcam.png).")
        ] = 0,
        batch_size: Annotated[
            int, typer.Option("--batch-size", help="Images per forward pass.")
        ] = 256,
        split: Annotated[
            str,
            typer.Option(
                "--split",
                help="Manifest split to score: test, val or train; a split other than test writes to RUN/eval-<split>/.",
            ),
        ] = "test",
        device: DeviceOpt = "auto",
        force: Annotated[
            bool,
            typer.Option(
                "--force",
                help="Recompute even on a cache hit, and evaluate even when model.pt or the crops differ from the sha256 recorded by train/align.",
            ),
        ] = False,
        workspace: WorkspaceOpt = None,
    ) -> None:
        """Evaluate a training run: metrics, tables and pictures (RUN/eval.json, predictions.parquet, PNGs).

        Top-1 and macro-F1 with 95% bootstrap intervals, per-class precision/recall/F1/accuracy, the confusion matrix, ECE (15 bins), the history's max / last-5 and validation-selected epoch, noise detection and thresholds per epoch.

        predictions.parquet holds one row per test face: id, label, label_clean and is_noisy where present, predicted class, confidence and one probability column per class. Pictures: confusion, curves, thresholds, noise detection (and gradcam.png with --cam)."""
        from fernoise.cache import Workspace
        from fernoise.evaluate.stage import EvalParams, evaluate_run

        params = EvalParams(cam=cam, batch_size=batch_size, device=device, split=split)
        ws = Workspace(workspace)
        run = run or ws.latest("train", what="training run")
        with console.status("evaluating"):
            res, rep = evaluate_run(run, params, manifest=manifest, workspace=ws, force=force)
        out_dir = res.output.parent
        print_report(rep, out_dir)
        wrote(res.output, hit=res.hit)
        if rep.get("predictions"):
            console.print(f"  {out_dir / rep['predictions']}", soft_wrap=True)
        for name in rep.get("pictures", []):
            console.print(f"  {out_dir / name}", soft_wrap=True)
