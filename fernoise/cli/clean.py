"""`fernoise clean`: an audit -> a new manifest with the flagged rows dropped or relabelled."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from fernoise.cli.common import ForceOpt, WorkspaceOpt, console, handle_errors, wrote

HELP = (
    "Clean a manifest with its audit: drop the rows the audit flags, or give them the suggested label.\n\n"
    "Acts on the audit's issue rows, or with --min-quality on every audited row whose label quality is "
    "below it; --max-fraction caps them, lowest quality first. Writes a new manifest beside the audited "
    "one (<stem>.clean-<drop|relabel>-<hash>.parquet) or at --out; the audited manifest is never modified. "
    "--relabel keeps each row's former label in label_given. Without AUDIT, the latest `fernoise audit` "
    "of the workspace; train, corrupt, split, sweep and pretrain then take the cleaned manifest by default."
)


def print_clean(info: dict[str, Any], action: str) -> None:
    """Rows acted on per class (given label) and, for relabel, the pairs."""
    counts = info.get("counts") or {}
    done = "dropped" if action == "drop" else "relabelled"
    per_class = ", ".join(f"{c} {v['acted']:,}" for c, v in counts.items() if v.get("acted"))
    console.print(
        f"{info.get('acted', 0):,} of {info.get('rows_audited', 0):,} audited rows acted on"
        + (f" ({per_class})" if per_class else "")
        + f"; {info.get('changed', 0):,} {done}; {info.get('rows_out', 0):,} rows written",
        soft_wrap=True,
    )
    pairs = info.get("pairs") or []
    if pairs:
        shown = ", ".join(f"{p['given']} -> {p['suggested']} {p['count']:,}" for p in pairs[:10])
        console.print(f"relabelled: {shown}", soft_wrap=True)


def register(app: typer.Typer) -> None:
    @app.command(name="clean", help=HELP)
    @handle_errors
    def clean_cmd(
        audit: Annotated[
            Path | None,
            typer.Argument(
                metavar="AUDIT",
                help="Audit folder (audits/<key>/) or its audit.json (default: the latest audit).",
            ),
        ] = None,
        drop: Annotated[bool, typer.Option("--drop", help="Remove the rows acted on.")] = False,
        relabel: Annotated[
            bool,
            typer.Option("--relabel", help="Set the rows' label to the audit's suggested label."),
        ] = False,
        min_quality: Annotated[
            float | None,
            typer.Option(
                "--min-quality",
                help="Act on every audited row whose label quality is below Q (0..1), not the issue rows.",
            ),
        ] = None,
        max_fraction: Annotated[
            float | None,
            typer.Option(
                "--max-fraction",
                help="Act on at most this share (0 < F <= 1) of the audited rows, lowest quality first.",
            ),
        ] = None,
        out: Annotated[
            Path | None,
            typer.Option(
                "--out",
                help="Output manifest, or a folder for it (default: beside the audited manifest; crop paths are re-based).",
            ),
        ] = None,
        force: ForceOpt = False,
        workspace: WorkspaceOpt = None,
    ) -> None:
        from fernoise.audit.clean import CleanParams, action_from_flags, run_clean
        from fernoise.cache import Workspace

        params = CleanParams(
            action=action_from_flags(drop, relabel),
            min_quality=min_quality,
            max_fraction=max_fraction,
        )
        res = run_clean(audit, params, out=out, force=force, workspace=Workspace(workspace))
        print_clean(res.info, params.action)
        wrote(res.output, hit=res.hit)
