"""`fernoise audit [MANIFEST]`: which training labels are likely wrong (K-fold cross-fitting +
cleanlab, or one run's area under the margin); every `fernoise train` option sets the runs."""

from __future__ import annotations

import inspect
import os
from typing import Annotated, Any

import typer

from fernoise.cli.common import console, handle_errors, wrote


def _audit_options(
    folds: Annotated[
        int,
        typer.Option(
            "--folds",
            help="Cross-fitting folds K (stratified; by group when the manifest has one).",
            rich_help_panel="Audit",
        ),
    ] = 5,
    scorer: Annotated[
        str,
        typer.Option(
            "--scorer",
            help="cleanlab: K trainings, out-of-sample probabilities; aum: one training, area under the margin.",
            rich_help_panel="Audit",
        ),
    ] = "cleanlab",
    filter_by: Annotated[
        str,
        typer.Option(
            "--filter-by",
            help="cleanlab's find_label_issues rule (prune_by_noise_rate, prune_by_class, both, confident_learning, predicted_neq_given, low_normalized_margin, low_self_confidence).",
            rich_help_panel="Audit",
        ),
    ] = "prune_by_noise_rate",
    quality: Annotated[
        str,
        typer.Option(
            "--quality",
            help="cleanlab's label quality score (self_confidence, normalized_margin, confidence_weighted_entropy).",
            rich_help_panel="Audit",
        ),
    ] = "self_confidence",
    truth_column: Annotated[
        str | None,
        typer.Option(
            "--truth-column",
            help="A column with the true label, to score the audit (default: label_clean after fernoise corrupt).",
            rich_help_panel="Audit",
        ),
    ] = None,
    group_column: Annotated[
        str | None,
        typer.Option(
            "--group-column",
            help="Keep each group of this column in one fold (default: subject when present).",
            rich_help_panel="Audit",
        ),
    ] = None,
    shard: Annotated[
        str | None,
        typer.Option(
            "--shard",
            help="Run only a share i/n of the folds (score once all are done).",
            rich_help_panel="Audit",
        ),
    ] = None,
    gpus: Annotated[
        str | None,
        typer.Option(
            "--gpus", help="One fold per GPU at once, e.g. 0,1,2,3.", rich_help_panel="Audit"
        ),
    ] = None,
) -> None:
    """The audit's own options; `fernoise audit` also takes every `fernoise train` option."""


def _print_summary(s: dict[str, Any]) -> None:
    rows, issues = s["rows"], s["issues"]
    share = f" ({issues / rows:.1%})" if rows else ""
    console.print(f"audited {rows} training rows ({s['scorer']}); label issues: {issues}{share}")
    if s.get("unscored"):
        console.print(f"  {s['unscored']} rows could not be scored (their crops did not load)")
    per = ", ".join(f"{c} {n}" for c, n in s["issues_per_class"].items() if n)
    console.print(f"  issues by given label: {per or 'none'}", soft_wrap=True)
    pairs = ", ".join(f"{p['given']} -> {p['suggested']} {p['count']}" for p in s["top_pairs"][:5])
    if pairs:
        console.print(f"  top pairs: {pairs}", soft_wrap=True)
    t = s.get("truth")
    if t:

        def f(v: Any) -> str:
            return "-" if v is None else f"{v:.3f}"

        console.print(
            f"  against the truth ({t['source']}, noise rate {f(t['noise_rate'])}): precision "
            f"{f(t['precision'])}, recall {f(t['recall'])}, F1 {f(t['f1'])}, AUROC {f(t['auroc'])}, "
            f"AP {f(t['average_precision'])}",
            soft_wrap=True,
        )


def _audit(**kw: Any) -> None:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from fernoise.audit.stage import AuditParams, run_audit
    from fernoise.cache import Workspace
    from fernoise.cli.train import train_config
    from fernoise.shards import parse_shard
    from fernoise.sweep.runner import parse_gpus

    shard, gpus = parse_shard(kw.pop("shard")), parse_gpus(kw.pop("gpus"))
    params = AuditParams(
        folds=kw.pop("folds"),
        scorer=kw.pop("scorer"),
        filter_by=kw.pop("filter_by"),
        quality_method=kw.pop("quality"),
        truth_column=kw.pop("truth_column"),
        group_column=kw.pop("group_column"),
    )
    cfg = train_config(kw)
    ws = Workspace(kw["workspace"])
    manifest = kw["manifest"]
    if manifest is None:
        manifest = ws.latest("clean", "corrupt", "align", what="manifest", flag="MANIFEST")
    res = run_audit(
        manifest,
        params,
        cfg,
        workspace=ws,
        runs_dir=kw["runs_dir"],
        shard=shard,
        gpus=gpus,
        force=kw["force"],
        say=lambda line: console.print(line, soft_wrap=True),
    )
    if not res.done:
        console.print(
            f"{res.folds_done} of {res.folds} folds done; run the other shares (or this command "
            "without --shard) to score"
        )
        return
    _print_summary(res.summary)
    wrote(res.dir / "audit.parquet", hit=res.hit)
    if (res.dir / "index.html").is_file():
        console.print(f"  gallery: {res.dir / 'index.html'}", soft_wrap=True)


def register(app: typer.Typer) -> None:
    from fernoise.cli.train import train_signature

    def audit_cmd(**kw: Any) -> None:
        _audit(**kw)

    extra = list(inspect.signature(_audit_options, eval_str=True).parameters.values())
    sig = train_signature(extra)
    params = [q.replace(default="ce") if q.name == "method" else q for q in sig.parameters.values()]
    audit_cmd.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
    app.command(
        name="audit",
        help="Find likely wrong training labels: K-fold out-of-sample probabilities + cleanlab (or --scorer aum); writes audits/<key>/ (audit.parquet, audit.json, joint, gallery, index.html).",
    )(handle_errors(audit_cmd))
