"""`fernoise train [MANIFEST]`: train any registered method; a re-run is a cache hit or a resume.

The options are those every method shares plus one per method flag (``fernoise.methods``:
each method's ``Params``), all built from the registry; a flag of another method is a
one-line error naming both.
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from fernoise.cli.common import (
    DeviceOpt,
    ForceOpt,
    PrecisionOpt,
    SeedOpt,
    WorkspaceOpt,
    console,
    err_console,
    handle_errors,
    with_panels,
    wrote,
)
from fernoise.train.config import DEFAULT_METHOD

if TYPE_CHECKING:
    from rich.progress import TaskID


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.3f}"


ESTIMATE_STEPS = 5  # steps measured (after the first) before the start-of-run estimate


def duration(seconds: float) -> str:
    """``42 s``, ``3.5 min``, ``2 h 05 min``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    h, m = divmod(round(seconds / 60), 60)
    return f"{h} h {m:02d} min"


class _Progress:
    """Rich progress bar per epoch (images/s, running loss) and a one-line summary per epoch."""

    def __init__(self) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=True,
        )
        self.task: TaskID | None = None
        self.epochs = 0  # of the run
        self.first: tuple[float, int] | None = None  # (time, step) of this process's first step
        self.estimated = False
        self.warm = False  # the current epoch is a warm-up epoch
        self.estimated_warm: bool | None = None  # the estimate was made in a warm-up epoch
        self.seconds: list[float] = []  # epochs finished in this process

    def _estimate(self, ev: dict) -> None:
        """Once, after a few steps of the first epoch this process trains: the expected time
        of an epoch and of the rest of the run, from the steps measured (training only)."""
        import time

        now = time.perf_counter()
        if self.first is None:
            self.first = (now, ev["done"])  # the first step pays for warm-up: not counted
            return
        steps = ev["done"] - self.first[1]
        if steps < ESTIMATE_STEPS and ev["done"] < ev["total"]:
            return
        self.estimated, self.estimated_warm = True, self.warm
        per_epoch = (now - self.first[0]) / max(steps, 1) * ev["total"]
        left = self.epochs - ev["epoch"] + 1
        self._stop()
        phase = " of warm-up" if self.warm else ""
        console.print(
            f"estimate from {steps} steps{phase}: about {duration(per_epoch)} per epoch of training, "
            f"{duration(per_epoch * left)} for the {left} epoch(s) to go (evaluation not included"
            + (
                "; measured again after the warm-up, whose epochs can cost less)"
                if self.warm
                else ")"
            ),
            soft_wrap=True,
        )

    def __call__(self, ev: dict) -> None:
        kind = ev["event"]
        if kind == "decode":
            if self.task is None:
                self.bar.start()
                self.task = self.bar.add_task("decoding crops", total=ev["total"], info="")
            self.bar.update(self.task, completed=ev["done"])
            if ev["done"] == ev["total"]:
                self._stop()
        elif kind == "epoch_start":
            self._stop()
            self.bar.start()
            self.epochs = ev["epochs"]
            self.warm = bool(ev["warmup"])
            if self.estimated_warm and not self.warm:  # the method's own loss starts: measure again
                self.estimated, self.first, self.estimated_warm = False, None, None
            tag = " (warm-up)" if ev["warmup"] else ""
            self.task = self.bar.add_task(
                f"epoch {ev['epoch']}/{ev['epochs']}{tag}", total=ev["batches"], info=""
            )
        elif kind == "batch" and self.task is not None:
            if not self.estimated:
                self._estimate(ev)
            if self.task is None:
                return
            self.bar.update(
                self.task,
                completed=ev["done"],
                info=f"loss {ev['loss']:.4f}  {ev['images_per_s']:.0f} img/s",
            )
        elif kind == "epoch_end":
            self._stop()
            m = ev["metrics"]
            conf = f"  conf {_fmt(m['confident_frac'])}" if m["confident_frac"] is not None else ""
            if m.get("relabelled") is not None:
                conf += f"  relabelled {m['relabelled']}"
            if m["confident_precision"] is not None:
                conf += (
                    f" (prec {_fmt(m['confident_precision'])} rec {_fmt(m['confident_recall'])})"
                )
            self.seconds.append(float(m["seconds"]))
            left = max(self.epochs - m["epoch"], 0)
            eta = f"  ETA {duration(sum(self.seconds) / len(self.seconds) * left)}" if left else ""
            console.print(
                f"epoch {m['epoch']:>3}/{self.epochs}{' w' if m['warmup'] else '  '}  loss {m['loss']:.4f}  "
                f"train {m['train_acc']:.3f}  val {_fmt(m['val_acc'])}  test {_fmt(m['test_acc'])}{conf}  "
                f"{m['images_per_s']:.0f} img/s  {m['seconds']:.1f}s{eta}",
                soft_wrap=True,
            )
        elif kind == "pretrained":
            self._stop()
            console.print(
                f"pretrained {ev['path']} ({ev['kind']}, sha256 {ev['sha256'][:12]})",
                soft_wrap=True,
                markup=False,
            )
            for what, count, keys in ev["table"]:
                console.print(
                    f"  {what:<22} {count:>4}  {keys}".rstrip(), soft_wrap=True, markup=False
                )
        elif kind == "resume":
            console.print(f"resuming {ev['run_dir']} after epoch {ev['epoch']}")
        elif kind == "warning":
            self._stop()
            err_console.print(f"[yellow]warning:[/yellow] {ev['message']}", soft_wrap=True)
        elif kind in ("note", "header"):
            self._stop()
            console.print(ev["message"], soft_wrap=True, markup=False)

    def _stop(self) -> None:
        if self.task is not None:
            self.bar.stop()
            self.bar.remove_task(self.task)
            self.task = None

    def close(self) -> None:
        self._stop()


def _static_options(
    manifest: Annotated[
        Path | None,
        typer.Argument(
            metavar="MANIFEST",
            help="Manifest (default: the latest of `fernoise clean`/`corrupt`/`align`). A folder means its manifest.parquet.",
        ),
    ] = None,
    method: Annotated[
        str, typer.Option("--method", help="Training method; `fernoise methods` lists them all.")
    ] = DEFAULT_METHOD,
    epochs: Annotated[
        int | None,
        typer.Option(
            "--epochs", help="Training epochs (default: the method's).", show_default=False
        ),
    ] = None,
    batch_size: Annotated[
        int | None,
        typer.Option(
            "--batch-size",
            help="Samples per batch, per process when distributed (default: the method's).",
            show_default=False,
        ),
    ] = None,
    image_size: Annotated[
        int, typer.Option("--image-size", help="Training and test image side in pixels.")
    ] = 224,
    warmup: Annotated[
        int | None,
        typer.Option(
            "--warmup",
            help="Epochs of plain cross-entropy first (default: the method's, shown by `fernoise methods`: min(5, epochs // 3), or 0 where its official code has none).",
            show_default=False,
        ),
    ] = None,
    lr_backbone: Annotated[
        float | None,
        typer.Option(
            "--lr-backbone",
            help="Adam lr of the backbone (default: the method's).",
            show_default=False,
        ),
    ] = None,
    lr_head: Annotated[
        float | None,
        typer.Option(
            "--lr-head", help="Adam lr of the heads (default: the method's).", show_default=False
        ),
    ] = None,
    weight_decay: Annotated[
        float | None,
        typer.Option(
            "--weight-decay", help="Adam weight decay (default: the method's).", show_default=False
        ),
    ] = None,
    lr_decay: Annotated[
        float | None,
        typer.Option(
            "--lr-decay",
            help="Per-epoch exponential lr factor; 1 = constant (default: the method's).",
            show_default=False,
        ),
    ] = None,
    randaug_magnitude: Annotated[
        int,
        typer.Option(
            "--randaug-magnitude", help="RandAugment magnitude 0..30 (2 ops) of the strong view."
        ),
    ] = 10,
    backbone: Annotated[
        str,
        typer.Option(
            "--backbone",
            help="Backbone family: resnet18 or dlib-resnet29 (at least 103 px); see `fernoise backbones`.",
        ),
    ] = "resnet18",
    pretrained: Annotated[
        Path | None,
        typer.Option(
            "--pretrained",
            help="Backbone start: a state dict file (resnet18_msceleb.pth, torchvision resnet18-*.pth, backbone.pt), a train run folder or its model.pt, a pretrain folder, or `latest` (the workspace's latest `fernoise pretrain`); with --backbone dlib-resnet29 also the tarball of `npm pack @vladmandic/face-api@1.7.15` or its model folder.",
        ),
    ] = None,
    pretrained_partial: Annotated[
        bool,
        typer.Option(
            "--pretrained-partial",
            help="Accept a --pretrained file that fills only part of the backbone (the rest stays random).",
        ),
    ] = False,
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "auto",
    val_fraction: Annotated[
        float,
        typer.Option(
            "--val-fraction",
            help="Stratified share of train held out when the manifest has no val rows.",
        ),
    ] = 0.1,
    val_clean: Annotated[
        bool,
        typer.Option(
            "--val-clean",
            help="Validate on label_clean (oracle-clean validation; recorded in config.json).",
        ),
    ] = False,
    max_rows: Annotated[
        int | None,
        typer.Option(
            "--max-rows",
            help="Train on a seeded, stratified subset of N training rows (part of the key).",
        ),
    ] = None,
    keep_checkpoint: Annotated[
        bool,
        typer.Option(
            "--keep-checkpoint",
            help="Keep checkpoint.pt after the run finishes (removed by default).",
        ),
    ] = False,
    runs_dir: Annotated[
        Path | None,
        typer.Option("--runs-dir", help="Folder of run folders (default: <workspace>/runs)."),
    ] = None,
    workers: Annotated[
        int | None, typer.Option("--workers", help="DataLoader workers (default: auto).")
    ] = None,
    augment: Annotated[
        str,
        typer.Option(
            "--augment",
            help="Where views are made: device (batched on the training device), workers (DataLoader workers) or auto (= device, on CUDA and on the CPU); recorded in the key.",
        ),
    ] = "auto",
    compile_: Annotated[
        bool,
        typer.Option(
            "--compile",
            help="torch.compile the backbone (skipped with a warning where unavailable).",
        ),
    ] = False,
    devices: Annotated[
        int, typer.Option("--devices", help="Local processes for torch.distributed (DDP).")
    ] = 1,
    record_margins: Annotated[
        bool,
        typer.Option(
            "--record-margins",
            help="Record every training row's margin per epoch in margins.npy (the data of the area-under-the-margin audit; part of the key).",
        ),
    ] = False,
    force: ForceOpt = False,
    workspace: WorkspaceOpt = None,
) -> None:
    """The options every method shares; the signature of `fernoise train` adds each method's flags.

    Long: a signature and nothing else: one parameter per option of `fernoise train` that
    every method shares (name, default, help), read by :func:`register`; nothing runs here."""


def _ident(flag: str) -> str:
    return "method_" + flag.lstrip("-").replace("-", "_")


def _method_options() -> list[inspect.Parameter]:
    """One keyword option per method flag (``fernoise.methods``), default None = the method's."""
    from dataclasses import fields

    from fernoise import methods
    from fernoise.methods.base import option_type

    out = []
    for flag, owners in methods.all_flags().items():
        name, field_name = next(iter(owners.items()))
        f = next(f for f in fields(methods.get(name).Params) if f.name == field_name)
        kind = option_type(f)
        choices = (
            f"; one of {', '.join(f.metadata['choices'])}" if f.metadata.get("choices") else ""
        )
        help_ = f"{', '.join(owners)}: {f.metadata['help']} (default {f.default}{choices})"
        out.append(
            inspect.Parameter(
                _ident(flag),
                inspect.Parameter.KEYWORD_ONLY,
                default=None,
                annotation=Annotated[
                    kind | None,
                    typer.Option(
                        flag, help=help_, show_default=False, rich_help_panel="Method options"
                    ),
                ],
            )
        )
    return out


def train_config(kw: dict):
    """The TrainConfig of `fernoise train`'s options ``kw`` (the method flags are popped from
    ``kw``); `fernoise audit` takes the same options through it."""
    from fernoise import methods
    from fernoise.train.config import TrainConfig

    given = {flag: kw.pop(_ident(flag)) for flag in methods.all_flags()}
    method = kw["method"]
    params = methods.make_params(method, given)  # a flag of another method: one line naming both
    pretrained = kw["pretrained"]
    cfg = TrainConfig(
        method=method,
        method_params=params,
        epochs=kw["epochs"],
        batch_size=kw["batch_size"],
        image_size=kw["image_size"],
        warmup=kw["warmup"],
        lr_backbone=kw["lr_backbone"],
        lr_head=kw["lr_head"],
        weight_decay=kw["weight_decay"],
        lr_decay=kw["lr_decay"],
        randaug_magnitude=kw["randaug_magnitude"],
        pretrained=str(pretrained) if pretrained else None,
        pretrained_partial=kw["pretrained_partial"],
        seed=kw["seed"],
        device=kw["device"],
        precision=kw["precision"],
        val_fraction=kw["val_fraction"],
        workers=kw["workers"],
        devices=kw["devices"],
        val_clean=kw["val_clean"],
        max_rows=kw["max_rows"],
        keep_checkpoint=kw["keep_checkpoint"],
        augment=kw["augment"],
        compile=kw["compile_"],
        backbone=kw["backbone"],
        record_margins=kw["record_margins"],
    )
    return cfg


# The help panels of the shared options (method flags: "Method options"; audit's: "Audit").
PANELS = {
    **dict.fromkeys(("runs_dir", "keep_checkpoint", "force", "workspace"), "Input/Output"),
    **dict.fromkeys(("val_fraction", "val_clean", "max_rows"), "Data"),
    **dict.fromkeys(
        (
            "method",
            "epochs",
            "batch_size",
            "image_size",
            "warmup",
            "randaug_magnitude",
            "augment",
            "record_margins",
            "seed",
        ),
        "Training",
    ),
    **dict.fromkeys(("lr_backbone", "lr_head", "weight_decay", "lr_decay"), "Optimiser"),
    **dict.fromkeys(("backbone", "pretrained", "pretrained_partial"), "Start weights"),
    **dict.fromkeys(("device", "precision", "workers", "compile_", "devices"), "Hardware"),
}


def train_signature(extra: list[inspect.Parameter] | None = None) -> inspect.Signature:
    """`fernoise train`'s signature: the shared options (in their help panels, :data:`PANELS`),
    ``extra``, then every method flag."""
    base = with_panels(inspect.signature(_static_options, eval_str=True), PANELS)
    return base.replace(parameters=[*base.parameters.values(), *(extra or []), *_method_options()])


def _train(**kw) -> None:
    # Before torch loads OpenMP: idle threads sleep instead of spinning. On a shared CPU
    # spinning threads of several trainers starve each other (measured 2-3x slower).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from fernoise.cache import Workspace
    from fernoise.train.stage import train

    cfg = train_config(kw)
    ws = Workspace(kw["workspace"])
    manifest = kw["manifest"]
    if manifest is None:
        manifest = ws.latest("clean", "corrupt", "align", what="manifest", flag="MANIFEST")
    runs = ws.runs_dir(kw["runs_dir"])
    bar = _Progress()
    try:
        result = train(manifest, cfg, runs_dir=runs, workspace=ws, progress=bar, force=kw["force"])
    finally:
        bar.close()
    if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 speaks
        wrote(result.output, hit=result.hit)


def register(app: typer.Typer) -> None:
    def train_cmd(**kw) -> None:
        _train(**kw)

    # PEP 362: inspect.signature (and so Typer) reads __signature__; typeshed declares none on functions
    train_cmd.__signature__ = train_signature()  # type: ignore[attr-defined]
    app.command(
        name="train",
        help="Train a method (`fernoise methods`) on a manifest; writes runs/<key>/ (re-run: cache hit or resume).",
    )(handle_errors(train_cmd))
