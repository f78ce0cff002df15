"""`fernoise sweep GRID.toml [MANIFEST]`: a grid of corrupt -> train -> eval cells, resumable,
one cell per GPU (``--gpus``) or one share of the cells per machine (``--shard i/n``)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from fernoise.cli.common import WorkspaceOpt, console, err_console, handle_errors, isatty
from fernoise.shards import HELP as SHARD_HELP


def _pct(v) -> str:
    return "" if v is None else f"{100 * float(v):.1f}"


def _duration(s: float | None) -> str:
    if s is None:
        return "?"
    s = int(round(s))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{sec:02d}s"


def _status_text(st) -> str:
    if st.status == "running":
        if st.epoch:
            pct = f" {100 * (st.batch or 0) / st.batches:.0f}%" if st.batches else ""
            return f"[cyan]running[/cyan] epoch {st.epoch}/{st.epochs}{pct}"
        return "[cyan]running[/cyan] starting"
    if st.status == "done":
        return "[green]cached[/green]" if st.hit else "[green]done[/green]"
    if st.status == "failed":
        return "[red]failed[/red]"
    return "[dim]queued[/dim]"


def render(sweep, slots: int):
    """The live table: one row per cell of this shard, with an ETA caption."""
    from rich.table import Table

    from fernoise.sweep.runner import eta_seconds, summary

    states = list(sweep.states.values())
    counts = summary(states)
    eta = eta_seconds(sweep, slots)
    axes = list(sweep.grid.axes)
    show_pre = len(sweep.grid.pretrained) > 1 or sweep.grid.pretrained != (None,)
    shard = f" shard {sweep.shard[0]}/{sweep.shard[1]}" if sweep.shard != (1, 1) else ""
    t = Table(
        title=f"sweep {sweep.grid.name}{shard}: {len(states)} cells",
        title_justify="left",
        caption=(
            f"{counts['done']} done ({counts['hits']} cached), {counts['running']} running, "
            f"{counts['queued']} queued, {counts['failed']} failed; ETA {_duration(eta)}"
        ),
        caption_justify="left",
    )
    for name in (
        "#",
        "method",
        "noise",
        "seed",
        *(["pretrained"] if show_pre else []),
        *axes,
        "status",
        "img/s",
        "top-1 %",
        "val-sel %",
        "note",
    ):
        t.add_column(
            name,
            overflow="fold" if name == "note" else "ellipsis",
            no_wrap=name != "note",
            justify="right" if name in ("#", "seed", "img/s", "top-1 %", "val-sel %") else "left",
        )
    for st in states:
        c = st.cell
        opts = dict(c.options)
        last = st.reason or (f"gpu {st.gpu}" if st.gpu is not None else "")
        t.add_row(
            str(c.index + 1),
            c.method,
            c.noise.label(),
            str(c.seed),
            *([c.pretrained or "none"] if show_pre else []),
            *(str(opts[a]) for a in axes),
            _status_text(st),
            f"{st.images_per_s:.0f}" if st.images_per_s else "",
            _pct(st.top1),
            _pct(st.val_selected),
            last,
        )
    return t


class _Lines:
    """Without a terminal (logs of SLURM / Kubernetes jobs): one line per cell event."""

    def __init__(self) -> None:
        self.seen: dict[int, tuple] = {}

    def __call__(self, sweep) -> None:
        for st in sweep.states.values():
            sig = (st.status, st.epoch)
            if self.seen.get(st.cell.index) == sig:
                continue
            self.seen[st.cell.index] = sig
            c = st.cell
            what = f"cell {c.index + 1}/{len(sweep.cells)} {c.id}"
            if st.status == "running" and st.epoch:
                ips = f" {st.images_per_s:.0f} img/s" if st.images_per_s else ""
                console.print(f"{what}: epoch {st.epoch}/{st.epochs}{ips}", soft_wrap=True)
            elif st.status == "running":
                console.print(
                    f"{what}: running" + (f" on gpu {st.gpu}" if st.gpu is not None else ""),
                    soft_wrap=True,
                )
            elif st.status == "done":
                tag = " (cache hit)" if st.hit else ""
                console.print(
                    f"{what}: done{tag} top-1 {_pct(st.top1)}% val-sel {_pct(st.val_selected)}%",
                    soft_wrap=True,
                )
            elif st.status == "failed":
                console.print(f"{what}: [red]failed[/red]: {st.reason}", soft_wrap=True)


@handle_errors
def sweep_cmd(
    grid: Annotated[
        Path,
        typer.Argument(
            metavar="GRID",
            help="Grid file (TOML), or a shipped grid's name: smoke, paper-table2, paper-table4, paper-table5, paper-table5-cpu, paper-table5-reduced, paper-table5-face.",
        ),
    ],
    manifest: Annotated[
        Path | None,
        typer.Argument(
            metavar="MANIFEST",
            help="Clean aligned manifest (default: the grid's `manifest`, else the latest `fernoise align` or `fernoise clean`). A folder means its manifest.parquet.",
        ),
    ] = None,
    gpus: Annotated[
        str | None,
        typer.Option(
            "--gpus",
            help="Run one cell per GPU at once, e.g. 0,1,2,3 (each child sees its GPU as cuda:0).",
        ),
    ] = None,
    shard: Annotated[
        str | None,
        typer.Option(
            "--shard",
            help=f"Run only one of n disjoint shares of the cells ({SHARD_HELP}; SLURM arrays, indexed jobs).",
        ),
    ] = None,
    dry_run: Annotated[
        bool,
        typer.Option("--dry-run", help="List the cells and which are done; run and write nothing."),
    ] = False,
    workspace: WorkspaceOpt = None,
) -> None:
    """Exit code: 0 when every cell of this shard is done, 1 when some failed."""
    from fernoise.cache import Workspace
    from fernoise.sweep.runner import check_gpu_devices, parse_gpus, parse_shard, plan, summary

    share = parse_shard(shard)
    gpu_list = parse_gpus(gpus)
    sweep = plan(grid, manifest, workspace=Workspace(workspace), shard=share)
    check_gpu_devices(sweep.mine, gpu_list)
    t0 = time.perf_counter()
    states = _run(sweep, gpu_list, dry_run)
    counts = summary(states)
    secs = time.perf_counter() - t0
    if dry_run:
        console.print(
            f"dry run: {counts['done']} of {len(states)} cells done; nothing was run or written"
        )
        return
    _print_outcome(sweep, states, counts, secs)
    if counts["done"] != len(states):
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command(
        name="sweep",
        help="Run a grid file of methods x noise x seeds x options: corrupt -> train -> eval per cell, cached and resumable. Exit code 0 when every cell is done, 1 when some failed.",
    )(sweep_cmd)


def _run(sweep, gpu_list, dry_run: bool):
    """Run (or with ``dry_run`` only list) the cells: a live table on a terminal, else one
    line per cell event and the table at the end; the cells' states."""
    from fernoise.sweep.runner import run

    slots = len(gpu_list or [None])
    if isatty() and not dry_run:
        from rich.live import Live

        with Live(
            render(sweep, slots), console=console, refresh_per_second=2, transient=False
        ) as live:
            return run(sweep, gpus=gpu_list, update=lambda s: live.update(render(s, slots)))
    states = run(sweep, gpus=gpu_list, update=None if dry_run else _Lines(), dry_run=dry_run)
    console.print(render(sweep, slots))
    return states


def _print_outcome(sweep, states, counts: dict[str, int], secs: float) -> None:
    """The grid's notes, each failed cell with its reason, and the totals."""
    from rich.markup import escape

    for note in sweep.notes:
        err_console.print(f"[yellow]note:[/yellow] {escape(note)}", soft_wrap=True)
    for st in states:
        if st.status == "failed":
            err_console.print(f"[red]failed[/red] {st.cell.id}: {st.reason}", soft_wrap=True)
    console.print(
        f"{counts['done']} done ({counts['hits']} cache hits), {counts['failed']} failed, in {secs:.1f}s; "
        f"table: {sweep.state_dir / 'table.md'}  (compare runs: fernoise report)",
        soft_wrap=True,
    )
