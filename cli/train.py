"""`fernoise train [MANIFEST]`: train ce, pc, nl or ncctfer; a re-run is a cache hit or a resume."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from fernoise_cli.common import (
    DeviceOpt,
    ForceOpt,
    SeedOpt,
    WorkspaceOpt,
    console,
    err_console,
    handle_errors,
    wrote,
)


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.3f}"


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
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
            console=console, transient=True,
        )
        self.task = None

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
            tag = " (warm-up)" if ev["warmup"] else ""
            self.task = self.bar.add_task(f"epoch {ev['epoch']}/{ev['epochs']}{tag}", total=ev["batches"], info="")
        elif kind == "batch" and self.task is not None:
            self.bar.update(self.task, completed=ev["done"], info=f"loss {ev['loss']:.4f}  {ev['images_per_s']:.0f} img/s")
        elif kind == "epoch_end":
            self._stop()
            m = ev["metrics"]
            conf = f"  conf {_fmt(m['confident_frac'])}" if m["confident_frac"] is not None else ""
            if m["confident_precision"] is not None:
                conf += f" (prec {_fmt(m['confident_precision'])} rec {_fmt(m['confident_recall'])})"
            console.print(
                f"epoch {m['epoch']:>3}{' w' if m['warmup'] else '  '}  loss {m['loss']:.4f}  "
                f"train {m['train_acc']:.3f}  val {_fmt(m['val_acc'])}  test {_fmt(m['test_acc'])}{conf}  "
                f"{m['images_per_s']:.0f} img/s  {m['seconds']:.1f}s",
                soft_wrap=True,
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


def register(app: typer.Typer) -> None:
    @app.command(name="train", help="Train ce | pc | nl | ncctfer on a manifest; writes runs/<key>/ (re-run: cache hit or resume).")
    @handle_errors
    def train_cmd(
        manifest: Annotated[Path | None, typer.Argument(help="Manifest (default: the latest of `fernoise corrupt`/`align`).")] = None,
        method: Annotated[str, typer.Option("--method", help="ce, pc, nl or ncctfer.")] = "ncctfer",
        epochs: Annotated[int, typer.Option("--epochs", help="Training epochs.")] = 40,
        batch_size: Annotated[int, typer.Option("--batch-size", help="Samples per batch (per process when distributed).")] = 128,
        image_size: Annotated[int, typer.Option("--image-size", help="Training and test image side in pixels.")] = 224,
        warmup: Annotated[int | None, typer.Option("--warmup", help="Epochs of plain cross-entropy first (default: min(5, epochs // 3)).", show_default=False)] = None,
        k: Annotated[int | None, typer.Option("--k", help="Top-k negative classes in the consistency loss (1..C-1; default: min(4, C-1)).", show_default=False)] = None,
        lr_backbone: Annotated[float, typer.Option("--lr-backbone", help="Adam lr of the backbone.")] = 1e-4,
        lr_head: Annotated[float, typer.Option("--lr-head", help="Adam lr of the heads.")] = 1e-3,
        lr_decay: Annotated[float | None, typer.Option("--lr-decay", help="Per-epoch exponential lr factor (off by default).")] = None,
        randaug_magnitude: Annotated[int, typer.Option("--randaug-magnitude", help="RandAugment magnitude 0..30 (2 ops).")] = 10,
        pretrained: Annotated[Path | None, typer.Option("--pretrained", help="Local backbone state dict (e.g. resnet18_msceleb.pth).")] = None,
        seed: SeedOpt = 0,
        device: DeviceOpt = "auto",
        precision: Annotated[str, typer.Option("--precision", help="auto, fp32 or bf16 (autocast).")] = "auto",
        val_fraction: Annotated[float, typer.Option("--val-fraction", help="Stratified share of train held out when the manifest has no val rows.")] = 0.1,
        val_clean: Annotated[bool, typer.Option("--val-clean", help="Validate on label_clean (oracle-clean validation; recorded in config.json).")] = False,
        max_rows: Annotated[int | None, typer.Option("--max-rows", help="Train on a seeded, stratified subset of N training rows (part of the key).")] = None,
        keep_checkpoint: Annotated[bool, typer.Option("--keep-checkpoint", help="Keep checkpoint.pt after the run finishes (removed by default).")] = False,
        runs_dir: Annotated[Path | None, typer.Option("--runs-dir", help="Folder of run folders (default: <workspace>/runs).")] = None,
        workers: Annotated[int | None, typer.Option("--workers", help="DataLoader workers (default: auto).")] = None,
        devices: Annotated[int, typer.Option("--devices", help="Local processes for torch.distributed (DDP).")] = 1,
        force: ForceOpt = False,
        workspace: WorkspaceOpt = None,
    ) -> None:
        # Before torch loads OpenMP: idle threads sleep instead of spinning. On a shared CPU
        # spinning threads of several trainers starve each other (measured 2-3x slower).
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        from fernoise.cache import Workspace
        from fernoise.train import TrainConfig, train

        cfg = TrainConfig(
            method=method, epochs=epochs, batch_size=batch_size, image_size=image_size, warmup=warmup,
            k=k, lr_backbone=lr_backbone, lr_head=lr_head, lr_decay=lr_decay,
            randaug_magnitude=randaug_magnitude, pretrained=str(pretrained) if pretrained else None,
            seed=seed, device=device, precision=precision, val_fraction=val_fraction,
            workers=workers, devices=devices, val_clean=val_clean, max_rows=max_rows,
            keep_checkpoint=keep_checkpoint,
        )
        ws = Workspace(workspace)
        if manifest is None:
            manifest = ws.latest("corrupt", "align", what="manifest", flag="MANIFEST")
        runs = runs_dir if runs_dir is not None else ws.root / "runs"
        bar = _Progress()
        try:
            result = train(manifest, cfg, runs_dir=runs, workspace=ws, progress=bar, force=force)
        finally:
            bar.close()
        if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 speaks
            wrote(result.output, hit=result.hit)
