"""`fernoise pretrain [MANIFEST]`: self-supervised ResNet-18 backbone (simclr | byol), labels never read."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from fernoise.cli.common import (
    DeviceOpt,
    ForceOpt,
    PrecisionOpt,
    SeedOpt,
    WorkspaceOpt,
    console,
    handle_errors,
    wrote,
)

# The options of `fernoise pretrain`, in the order of its signature.
ManifestArg = Annotated[
    Path | None,
    typer.Argument(
        metavar="MANIFEST",
        help="Manifest (default: the latest of `fernoise align`/`corrupt`/`clean`). A folder means its manifest.parquet.",
    ),
]
MethodOpt = Annotated[str, typer.Option("--method", help="simclr (NT-Xent) or byol (EMA target).")]
EpochsOpt = Annotated[int, typer.Option("--epochs", help="Training epochs.")]
ImageSizeOpt = Annotated[int, typer.Option("--image-size", help="View side in pixels.")]
BatchSizeOpt = Annotated[
    int, typer.Option("--batch-size", help="Images per batch (two views each).")
]
LrOpt = Annotated[float, typer.Option("--lr", help="Adam learning rate (cosine decay to 0).")]
TemperatureOpt = Annotated[
    float, typer.Option("--temperature", help="NT-Xent temperature (simclr).")
]
MomentumOpt = Annotated[
    float, typer.Option("--momentum", help="Base EMA momentum of the BYOL target.")
]
MinScaleOpt = Annotated[
    float,
    typer.Option("--min-scale", help="Smallest crop area fraction (faces stay faces)."),
]
SplitsOpt = Annotated[
    str,
    typer.Option("--splits", help="Comma-separated splits to train on (never test unless named)."),
]
ProbeSplitOpt = Annotated[
    str, typer.Option("--probe-split", help="Split for the k-NN probe ('' for none).")
]
ProbeEveryOpt = Annotated[int, typer.Option("--probe-every", help="Epochs between k-NN probes.")]
KeepCheckpointOpt = Annotated[
    bool, typer.Option("--keep-checkpoint", help="Keep checkpoint.pt after the run.")
]
DevicesOpt = Annotated[
    int,
    typer.Option(
        "--devices",
        help="Local processes for torch.distributed (DDP; NT-Xent over the global batch). torchrun sets its own.",
    ),
]
BackboneOpt = Annotated[
    str,
    typer.Option(
        "--backbone",
        help="Backbone family: resnet18 or dlib-resnet29 (at least 103 px); see `fernoise backbones`.",
    ),
]
MaxRowsOpt = Annotated[
    int | None,
    typer.Option(
        "--max-rows",
        help="Pretrain on a seeded, stratified N of the rows (a quick run on a CPU); the probe rows are all kept.",
        show_default=False,
    ),
]
OutOpt = Annotated[
    Path | None,
    typer.Option("--out", help="Folder of pretraining runs (default: <workspace>/pretrain)."),
]


@handle_errors
def pretrain_cmd(
    manifest: ManifestArg = None,
    method: MethodOpt = "simclr",
    epochs: EpochsOpt = 100,
    image_size: ImageSizeOpt = 112,
    batch_size: BatchSizeOpt = 256,
    lr: LrOpt = 1e-3,
    temperature: TemperatureOpt = 0.5,
    momentum: MomentumOpt = 0.996,
    min_scale: MinScaleOpt = 0.6,
    splits: SplitsOpt = "train",
    probe_split: ProbeSplitOpt = "val",
    probe_every: ProbeEveryOpt = 5,
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "auto",
    keep_checkpoint: KeepCheckpointOpt = False,
    devices: DevicesOpt = 1,
    backbone: BackboneOpt = "resnet18",
    max_rows: MaxRowsOpt = None,
    out: OutOpt = None,
    force: ForceOpt = False,
    workspace: WorkspaceOpt = None,
) -> None:
    """Self-supervised pretraining of a backbone (ResNet-18 by default) on the manifest's crops.

    Labels are never read (only the probe split's, for a k-NN accuracy that trains
    nothing). Writes <workspace>/pretrain/<key>/backbone.pt (torchvision key names); use it
    with `fernoise train --pretrained latest` (or the folder, or the file)."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from fernoise.cache import Workspace
    from fernoise.pretrain.stage import PretrainConfig, pretrain

    cfg = PretrainConfig(
        method=method,
        epochs=epochs,
        image_size=image_size,
        batch_size=batch_size,
        lr=lr,
        temperature=temperature,
        momentum=momentum,
        min_scale=min_scale,
        splits=tuple(s.strip() for s in splits.split(",") if s.strip()),
        probe_split=probe_split or None,
        probe_every=probe_every,
        seed=seed,
        device=device,
        precision=precision,
        keep_checkpoint=keep_checkpoint,
        devices=devices,
        backbone=backbone,
        max_rows=max_rows,
    )
    ws = Workspace(workspace)
    if manifest is None:
        manifest = ws.latest("clean", "corrupt", "align", what="manifest", flag="MANIFEST")
    bar = _PretrainProgress()
    try:
        result = pretrain(manifest, cfg, out_root=out, workspace=ws, progress=bar, force=force)
    finally:
        bar.close()
    wrote(result.output / "backbone.pt", hit=result.hit)


def register(app: typer.Typer) -> None:
    app.command(name="pretrain")(pretrain_cmd)


class _PretrainProgress:
    """A progress bar per epoch (images/s, loss) and one line per epoch."""

    def __init__(self) -> None:
        from fernoise.cli.train import _Progress

        self.inner = _Progress()

    def __call__(self, ev: dict) -> None:
        if ev["event"] == "epoch_end":
            self.inner._stop()
            m = ev["metrics"]
            knn = f"  k-NN {m['knn_acc']:.3f}" if m.get("knn_acc") is not None else ""
            console.print(
                f"epoch {m['epoch']:>3}  loss {m['loss']:.4f}{knn}  {m['images_per_s']:.0f} img/s  "
                f"{m['seconds']:.1f}s",
                soft_wrap=True,
            )
        else:
            self.inner(ev)

    def close(self) -> None:
        self.inner.close()
