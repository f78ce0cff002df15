"""`fernoise demo [DIR]`: align -> corrupt -> train -> eval -> report on built-in synthetic faces."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape

from fernoise.cli.common import DeviceOpt, ForceOpt, console, err_console, handle_errors

if TYPE_CHECKING:
    from rich.status import Status

HELP = (
    "Run the whole pipeline on synthetic-faces, drawn faces built into fernoise (no data needed).\n\n"
    "Writes into DIR (default ./fernoise-demo, also the workspace): raw/ (the drawn class-folder tree), "
    "synthetic-faces/ (manifest.parquet, and the sym 30% noisy manifest), runs/<key>/ (one run per method, "
    "with eval.json and pictures) and report.md. The faces are drawings, not photos: the figures "
    "only show that the pipeline works. A second run is all cache hits."
)


def _f(v: Any, nd: int = 3) -> str:
    return "-" if v is None else f"{float(v):.{nd}f}"


class _Printer:
    """One line per finished step (what it wrote), one line per training epoch."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.status: Status | None = None

    def shown(self, path: Path) -> str:
        try:
            return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
        except ValueError:
            return str(path)

    def __call__(self, ev: dict) -> None:
        kind = ev.get("event")
        if kind == "stage":
            what = ev["stage"] + (f" {ev['method']}" if ev.get("method") else "")
            self._status(f"{what} ...")
        elif kind == "train" and ev.get("train_event") == "epoch_end":
            m = ev.get("metrics") or {}
            self._stop()
            console.print(
                f"  {ev['method']:<8} epoch {m.get('epoch', '?'):>2}{' w' if m.get('warmup') else '  '}  "
                f"loss {_f(m.get('loss'), 4)}  train {_f(m.get('train_acc'))}  val {_f(m.get('val_acc'))}  "
                f"test {_f(m.get('test_acc'))}  {_f(m.get('seconds'), 1)}s",
                soft_wrap=True,
            )
        elif kind == "train" and ev.get("train_event") in ("header", "note") and ev.get("message"):
            self._stop()
            console.print(
                f"  {ev['method']:<8} [dim]{escape(str(ev['message']))}[/dim]",
                soft_wrap=True,
                highlight=False,
            )
        elif kind == "train" and ev.get("train_event") == "warning":
            self._stop()
            err_console.print(
                f"[yellow]warning:[/yellow] {escape(str(ev.get('message')))}", soft_wrap=True
            )
        elif kind == "step":
            self._stop()
            self._step(ev["step"])

    def _status(self, text: str) -> None:
        self._stop()
        if console.is_terminal:
            self.status = console.status(text)
            self.status.start()

    def _stop(self) -> None:
        if self.status is not None:
            self.status.stop()
            self.status = None

    def _step(self, s) -> None:
        tag = "[green]cache hit[/green]" if s.hit else "[green]wrote[/green]"
        name = s.stage + (f" {s.info['method']}" if s.info.get("method") else "")
        extra = ""
        if s.stage == "synthesize":
            extra = f"  ({s.info['images']:,} drawn faces, 7 expressions, train/ and test/ class folders)"
        elif s.stage == "align":
            counts = ", ".join(f"{n:,} {k}" for k, n in sorted(s.info.get("counts", {}).items()))
            extra = f"  (--mode whole: {counts})"
        elif s.stage == "corrupt":
            nz = s.info.get("noise") or {}
            if nz.get("rate_overall") is not None:
                extra = (
                    f"  (realised rate {nz['rate_overall']:.3f}: {sum(nz.get('flipped', [])):,} of "
                    f"{sum(nz.get('n', [])):,} training labels changed)"
                )
        elif s.stage == "eval":
            pics = len(s.info.get("pictures", []))
            extra = f"  (top-1 {_f(s.info.get('top1'))}, macro-F1 {_f(s.info.get('macro_f1'))}, {pics} pictures)"
        console.print(
            f"{name:<16} {tag}: {self.shown(s.output)}{extra}  [dim]{s.seconds:.1f}s[/dim]",
            soft_wrap=True,
            highlight=False,
        )

    def close(self) -> None:
        self._stop()


@handle_errors
def demo_cmd(
    folder: Annotated[
        Path, typer.Argument(metavar="DIR", help="Folder for everything the demo writes.")
    ] = Path("fernoise-demo"),
    methods: Annotated[
        str | None,
        typer.Option(
            "--methods",
            help="Comma-separated methods to train, one run each (any of `fernoise methods`).",
            show_default="ce,ncctfer",
        ),
    ] = None,
    epochs: Annotated[
        int | None,
        typer.Option("--epochs", help="Training epochs per method.", show_default="8"),
    ] = None,
    train_per_class: Annotated[
        int | None,
        typer.Option(
            "--train-per-class", help="Drawn training faces per class.", show_default="40"
        ),
    ] = None,
    test_per_class: Annotated[
        int | None,
        typer.Option(
            "--test-per-class",
            help="Drawn test faces per class, of unseen identities.",
            show_default="10",
        ),
    ] = None,
    size: Annotated[
        int | None,
        typer.Option("--size", help="Crop and training image side in pixels.", show_default="48"),
    ] = None,
    device: DeviceOpt = "auto",
    force: ForceOpt = False,
) -> None:
    """`fernoise demo` (help: :data:`HELP`): run the demo, print each step and the table."""
    # as in `fernoise train`: idle OpenMP threads sleep (set before torch loads OpenMP)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import time

    from fernoise.demo.stage import run_demo
    from fernoise.demo.synthetic import NAME

    t0 = time.perf_counter()
    params = _params(methods, epochs, train_per_class, test_per_class, size, device)
    console.print(
        f"fernoise demo on [bold]{NAME}[/bold]: procedurally drawn faces (SYNTHETIC, not photos) "
        f"-> {folder}",
        soft_wrap=True,
    )
    printer = _Printer(folder)
    try:
        res = run_demo(folder, params, progress=printer, force=force)
    finally:
        printer.close()
    _print_result(res, folder, printer, t0)


def register(app: typer.Typer) -> None:
    app.command(name="demo", help=HELP)(demo_cmd)


def _params(
    methods: str | None,
    epochs: int | None,
    train_per_class: int | None,
    test_per_class: int | None,
    size: int | None,
    device: str,
):
    """The :class:`~fernoise.demo.stage.DemoParams` of the options given (None: the default)."""
    from fernoise.demo.stage import DemoParams

    given: dict[str, Any] = {
        k: v
        for k, v in {
            "epochs": epochs,
            "train_per_class": train_per_class,
            "test_per_class": test_per_class,
            "size": size,
        }.items()
        if v is not None
    }
    if methods is not None:
        given["methods"] = tuple(m.strip() for m in methods.split(",") if m.strip())
    if epochs is not None:  # keep a third of the epochs, at most the default's, as warm-up
        given["warmup"] = min(DemoParams.warmup, epochs // 3)
    return DemoParams(**given, device=device)


def _print_result(res, folder: Path, printer: _Printer, t0: float) -> None:
    """The report table, the time since ``t0``, how many stages came from the cache, and what
    to run next."""
    import time

    from fernoise.demo.synthetic import NAME

    console.print()
    console.print(f"[bold]{res.title}[/bold]", soft_wrap=True)
    typer.echo(res.table, nl=False)
    hits = sum(s.hit for s in res.steps if s.stage != "report")
    total = sum(1 for s in res.steps if s.stage != "report")
    console.print(
        f"\ndemo on {NAME} (synthetic) finished in {time.perf_counter() - t0:.0f} s "
        f"({hits} of {total} stages from the cache); table: {printer.shown(res.report_path)}",
        soft_wrap=True,
    )
    console.print(
        f"next: cd {folder} && fernoise eval && fernoise report 'runs/*'  (or run the Quickstart on "
        "your own photos)",
        soft_wrap=True,
    )
