"""Training throughput: the fernoise trainer end to end vs its own step on ready-made tensors,
and vs the usual FER-repo data path (per-sample PIL Dataset + torchvision.transforms).

Rows (all on FERPlus crops, ResNet-18, CPU unless CUDA is there):
- ``step`` : the same model, optimiser, precision and loss (the method's plugin loss, `fernoise.methods`) on
  tensors already normalised in memory: the ceiling. Measured before and after the end-to-end
  run (the machine is shared) and averaged.
- ``end-to-end`` : `fernoise.train.stage.train` for ``--epochs`` epochs (array cache already built;
  DataLoader workers, weak/strong views, normalisation, step, metrics), the ``images_per_s`` of
  its last epoch: the steady state a real run is in after its first epoch, with the one-off
  costs of epoch 1 (oneDNN primitives for new shapes, Adam's state, the first workers) left
  out, as the step-only row leaves out its untimed first step.
- ``baseline`` : torchvision ResNet-18, cross-entropy, batch 32, a PIL ``Dataset`` decoding each
  PNG with ``Resize/RandomCrop(pad 4)/RandomHorizontalFlip/ToTensor/Normalize`` in 2 workers.
- ``end-to-end, device views`` / ``workers`` : the same epoch with ``--augment device`` (views
  made in batches on the training device, fernoise/train/augment.py) and ``--augment workers``
  (per sample in DataLoader workers); ``device / workers`` is their ratio (issue 13).
- on CUDA, ``peer-style loader``: the same fernoise step fed by what the peers' repos do (EAC,
  RUL, SCN): a PIL ``Dataset`` decoding each PNG and making its views with torchvision
  transforms per sample (RandAugment for the second view), 8 DataLoader workers, batch 128.
Samples/s count both views for ncctfer. Ratio 1 = end-to-end / step (target >= 0.85); the
in-loop ratio is the share of the epoch the trainer's step did not wait for data (its own
``data_wait_s``), immune to other load on a shared machine;
ratio 2 = fernoise ce end-to-end / baseline end-to-end. Also fp32 vs bf16 steps (what
``--precision auto`` picks on this CPU).

    .venv/bin/python bench/train.py [--rows 1280] [--size 64] [--batch 128]
    .venv/bin/python bench/train.py --backbones resnet18,dlib-resnet29 --size 112   # per backbone
    python bench/train.py --device cuda --image-size 224 --rows 12271   # on a GPU (bench/gpu_check.sh)
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as `fernoise train` does, before torch loads
import numpy as np  # noqa: E402
import torch  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ferplus_manifest  # noqa: E402

from fernoise import (
    data,  # noqa: E402
    methods,  # noqa: E402
)
from fernoise.cache import Workspace  # noqa: E402
from fernoise.manifest import read_manifest  # noqa: E402
from fernoise.train.config import TrainConfig, resolve_precision  # noqa: E402
from fernoise.train.stage import train  # noqa: E402


def step_rate(
    method: str,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    batch: int,
    size: int,
    precision: str,
    device: str,
    steps: int,
    channels_last: bool = True,
    backbone: str = "resnet18",
) -> float:
    """Samples/s (both views for ncctfer) of the training step on ready-made tensors."""
    m = methods.create(method, num_classes=8, n_rows=len(images), image_size=size)
    two = len(m.views) > 1
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = methods.build_model(m, backbone)
    norm = {"mean": model.card.mean, "std": model.card.std}
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(device, memory_format=fmt).train()
    opt = torch.optim.Adam(m.param_groups(model, lr_backbone=1e-4, lr_head=1e-3))
    rng = np.random.default_rng(0)
    idx = rng.choice(len(images), size=batch, replace=False)
    x = torch.from_numpy(np.ascontiguousarray(images[idx])).permute(0, 3, 1, 2)
    x_w = data.normalize(x, torch.device(device), channels_last=channels_last, **norm)
    x_s = (
        data.normalize(x.flip(-1), torch.device(device), channels_last=channels_last, **norm)
        if two
        else None
    )
    y = torch.from_numpy(labels[idx]).to(device)
    idx_t = torch.from_numpy(idx.astype(np.int64))
    gen = torch.Generator().manual_seed(0)

    def one() -> None:
        views = {name: x_w if i == 0 else x_s for i, name in enumerate(m.views)}
        with torch.autocast(
            torch.device(device).type, dtype=torch.bfloat16, enabled=precision == "bf16"
        ):
            out = model(m.loss, views, y, idx_t, epoch=2, warm=False, gen=gen)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()

    one()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(steps):
        one()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return steps * batch * (2 if two else 1) / (time.perf_counter() - t)


def end_to_end_rate(
    manifest: Path,
    method: str,
    *,
    batch: int,
    size: int,
    runs: Path,
    augment: str = "workers",
    device: str = "auto",
    epochs: int = 2,
    backbone: str = "resnet18",
) -> tuple[float, float]:
    """(images/s of the last of ``epochs`` training epochs, share of its time not spent waiting for data)."""
    import json

    cfg = TrainConfig(
        backbone=backbone,
        method=method,
        epochs=epochs,
        warmup=0,
        batch_size=batch,
        image_size=size,
        val_fraction=0.0,
        augment=augment,
        device=device,
    )
    res = train(manifest, cfg, runs_dir=runs, force=True)
    m = json.loads((res.output / "metrics.jsonl").read_text().splitlines()[-1])
    return m["images_per_s"], 1 - m["data_wait_s"] / m["train_seconds"]


class PILFaces(torch.utils.data.Dataset):
    """How the published FER repos load data: one PIL decode + transforms per sample."""

    def __init__(self, paths: list[str], labels: np.ndarray, size: int):
        from torchvision import transforms as T

        self.paths, self.labels = paths, labels
        self.tf = T.Compose(
            [
                T.Resize((size, size)),
                T.RandomCrop(size, padding=4),
                T.RandomHorizontalFlip(),
                T.ToTensor(),
                T.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
            ]
        )

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        from PIL import Image

        with Image.open(self.paths[i]) as im:
            return self.tf(im.convert("RGB")), int(self.labels[i])


class PeerViews(torch.utils.data.Dataset):
    """The peers' loader (EAC/RUL/SCN ``dataset.py``): PIL decode, resize, then each view's
    torchvision transforms per sample; the second view (ncctfer's strong) adds RandAugment."""

    def __init__(self, paths: list[str], labels: np.ndarray, size: int, two: bool):
        from torchvision import transforms as T

        self.paths, self.labels, self.two = paths, labels, two
        base = [T.Resize((size, size)), T.RandomCrop(size, padding=4), T.RandomHorizontalFlip()]
        tail = [T.ToTensor(), T.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])]
        self.weak = T.Compose(base + tail)
        self.strong = T.Compose(base + [T.RandAugment(2, 10)] + tail)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        from PIL import Image

        with Image.open(self.paths[i]) as im:
            im = im.convert("RGB")
            views = (self.weak(im), self.strong(im)) if self.two else (self.weak(im),)
        return views, int(self.labels[i]), i


def peer_rate(
    method: str,
    paths: list[str],
    labels: np.ndarray,
    *,
    batch: int,
    size: int,
    precision: str,
    device: str,
    workers: int = 8,
) -> float:
    """Samples/s (both views for ncctfer) of one epoch of the fernoise step fed by :class:`PeerViews`."""
    m = methods.create(method, num_classes=8, n_rows=len(paths), image_size=size)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = methods.build_model(m)
    model = model.to(device, memory_format=torch.channels_last).train()
    opt = torch.optim.Adam(m.param_groups(model, lr_backbone=1e-4, lr_head=1e-3))
    gen = torch.Generator().manual_seed(0)
    two = len(m.views) > 1
    loader = torch.utils.data.DataLoader(
        PeerViews(paths, labels, size, two),
        batch_size=batch,
        shuffle=True,
        num_workers=workers,
        drop_last=True,
        pin_memory=device.startswith("cuda"),
        persistent_workers=False,
        prefetch_factor=4 if workers else None,
    )
    t, seen = time.perf_counter(), 0
    for views, y, idx in loader:
        x = {
            name: views[i]
            .to(device, non_blocking=True)
            .contiguous(memory_format=torch.channels_last)
            for i, name in enumerate(m.views)
        }
        with torch.autocast(
            torch.device(device).type, dtype=torch.bfloat16, enabled=precision == "bf16"
        ):
            out = model(m.loss, x, y.to(device), idx, epoch=2, warm=False, gen=gen)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()
        out.loss.item()  # as a training loop logging its loss does
        seen += len(y) * (2 if two else 1)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return seen / (time.perf_counter() - t)


def baseline_rates(
    paths: list[str], labels: np.ndarray, *, size: int, device: str, n: int
) -> tuple[float, float]:
    """(end-to-end, step-only) samples/s of the plain ResNet-18 CE baseline at batch 32."""
    from torchvision.models import resnet18

    torch.manual_seed(0)
    model = resnet18(num_classes=8).to(device).train()
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    loader = torch.utils.data.DataLoader(
        PILFaces(paths[:n], labels[:n], size),
        batch_size=32,
        shuffle=True,
        num_workers=2,
        drop_last=True,
    )

    def one(x, y) -> None:
        loss = torch.nn.functional.cross_entropy(model(x.to(device)), y.to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    t, seen = time.perf_counter(), 0
    for x, y in loader:
        one(x, y)
        seen += len(y)
    e2e = seen / (time.perf_counter() - t)
    x, y = next(iter(loader))
    one(x, y)
    t = time.perf_counter()
    for _ in range(8):
        one(x, y)
    return e2e, 8 * 32 / (time.perf_counter() - t)


def backbone_table(a, images, labels, manifest: Path, work: Path, device: str, auto: str) -> Table:
    """``--backbones``: step-only and end-to-end samples/s of ``ce`` per backbone (device views),
    best of ``--rounds`` interleaved measurements."""
    names = [b.strip() for b in a.backbones.split(",") if b.strip()]
    best: dict[tuple[str, str], float] = {}
    for _ in range(a.rounds):
        for b in names:
            step = step_rate(
                "ce",
                images,
                labels,
                batch=a.batch,
                size=a.size,
                precision=auto,
                device=device,
                steps=a.steps,
                backbone=b,
            )
            e2e, _busy = end_to_end_rate(
                manifest,
                "ce",
                batch=a.batch,
                size=a.size,
                runs=work / "runs",
                augment="device",
                device=device,
                epochs=a.epochs,
                backbone=b,
            )
            for what, v in (("step", step), ("e2e", e2e)):
                best[(b, what)] = max(best.get((b, what), 0.0), v)
            print(f"  {b}: step {step:.1f}, end-to-end {e2e:.1f} samples/s", flush=True)
    table = Table(
        title=f"ce by backbone ({device}, {a.size}x{a.size}, batch {a.batch}, {auto}, "
        f"samples/s, best of {a.rounds})"
    )
    for col in ("backbone", "step only", "end-to-end", "ratio"):
        table.add_column(col, justify="left" if col == "backbone" else "right")
    for b in names:
        step, e2e = best[(b, "step")], best[(b, "e2e")]
        table.add_row(b, f"{step:.0f}", f"{e2e:.0f}", f"{e2e / step:.2f}")
    return table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--backbones",
        default=None,
        help="comma-separated backbones (e.g. resnet18,dlib-resnet29): only the per-backbone "
        "table of ce, step only and end to end (dlib-resnet29 needs --size 103 or more)",
    )
    ap.add_argument(
        "--rows",
        type=int,
        default=2560,
        help="FERPlus training rows (one end-to-end epoch; 20 batches of 128, so the start of the DataLoader workers is amortised as in a real epoch)",
    )
    ap.add_argument(
        "--rounds", type=int, default=3, help="interleaved repetitions; the best is reported"
    )
    ap.add_argument("--size", "--image-size", dest="size", type=int, default=64)
    ap.add_argument("--device", default="auto", help="auto (cuda when there), cpu or cuda")
    ap.add_argument(
        "--peer-workers",
        type=int,
        default=8,
        help="DataLoader workers of the peer-style loader (CUDA)",
    )
    ap.add_argument(
        "--no-layouts", action="store_true", help="skip the fp32/bf16 x layout step rows"
    )
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=6, help="timed steps per step-only measurement")
    ap.add_argument(
        "--epochs", type=int, default=2, help="epochs per end-to-end run; the last one is timed"
    )
    ap.add_argument("--workdir", type=Path, default=None)
    a = ap.parse_args()
    console = Console(width=150)
    work = a.workdir or Path(tempfile.mkdtemp(prefix="fernoise-bench-train-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ["FERNOISE_WORKSPACE"] = str(work)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if a.device == "auto" else a.device
    auto = resolve_precision("auto", device)
    manifest = ferplus_manifest.build(work / "manifest.parquet", n_train=a.rows, n_test=0)
    m = read_manifest(manifest)
    paths = [str(m.root / p) for p in m.df["path"]]
    labels = m.df["label"].astype(int).to_numpy()
    t = time.perf_counter()
    images = data.array_cache(
        paths,
        m.df["id"].tolist(),
        manifest_key=m.key,
        size=a.size,
        cache_dir=Workspace().root / ".fernoise" / "arrays",
    )
    decode = time.perf_counter() - t
    gpu = torch.cuda.get_device_name(0) if device.startswith("cuda") else ""
    console.print(
        f"{device} {gpu}, {os.cpu_count()} CPUs, {torch.get_num_threads()} threads, {a.rows} FERPlus rows at {a.size}px, "
        f"batch {a.batch}, precision auto -> {auto}; array cache built in {decode:.1f}s"
    )

    if a.backbones:
        console.print(backbone_table(a, images, labels, manifest, work, device, auto))
        return
    # The machine is shared: every figure is the best of --rounds interleaved measurements.
    table = Table(
        title=f"fernoise train throughput ({device}, {a.size}x{a.size}, samples/s, best of {a.rounds})"
    )
    for col in (
        "what",
        "batch",
        "precision",
        "step only",
        "end-to-end",
        "ratio",
        "in-loop ratio",
        "vs workers",
        "vs peer",
    ):
        table.add_column(col, justify="right" if col not in ("what", "precision") else "left")
    best: dict[str, float] = {}

    def keep(name: str, value: float) -> None:
        best[name] = max(best.get(name, 0.0), value)
        console.print(f"  {name}: {value:.2f}")

    kw = dict(batch=a.batch, size=a.size, device=device, steps=a.steps)
    on_cuda = device.startswith("cuda")
    for _ in range(a.rounds):
        for method in ("ce", "ncctfer"):
            keep(f"step {method}", step_rate(method, images, labels, precision=auto, **kw))
            for aug in ("workers", "device"):
                rate, busy = end_to_end_rate(
                    manifest,
                    method,
                    batch=a.batch,
                    size=a.size,
                    runs=work / "runs",
                    augment=aug,
                    device=device,
                    epochs=a.epochs,
                )
                keep(f"e2e {method} {aug}", rate)
                keep(f"busy {method} {aug}", busy)
            if on_cuda:
                keep(
                    f"peer {method}",
                    peer_rate(
                        method,
                        paths,
                        labels,
                        batch=a.batch,
                        size=a.size,
                        precision=auto,
                        device=device,
                        workers=a.peer_workers,
                    ),
                )
        if not on_cuda:
            b_e2e, b_step = baseline_rates(
                paths, labels, size=a.size, device=device, n=min(640, a.rows)
            )
            keep("baseline e2e", b_e2e)
            keep("baseline step", b_step)
        for prec in () if a.no_layouts else ("fp32", "bf16"):
            for cl in (False, True):
                keep(
                    f"ce {prec} {'channels_last' if cl else 'contiguous'}",
                    step_rate("ce", images, labels, precision=prec, channels_last=cl, **kw),
                )
    for method in ("ce", "ncctfer"):
        step = best[f"step {method}"]
        workers_rate = best[f"e2e {method} workers"]
        peer = best.get(f"peer {method}")
        for aug in ("workers", "device"):
            e2e = best[f"e2e {method} {aug}"]
            table.add_row(
                f"fernoise {method}"
                + (" (2 views)" if method == "ncctfer" else "")
                + f", {aug} views",
                str(a.batch),
                auto,
                f"{step:.0f}",
                f"{e2e:.0f}",
                f"{e2e / step:.2f}",
                f"{best[f'busy {method} {aug}']:.2f}",
                f"{e2e / workers_rate:.2f}x",
                f"{e2e / peer:.2f}x" if peer else "",
            )
        if peer:
            table.add_row(
                f"peer-style loader ({a.peer_workers} workers) + {method} step",
                str(a.batch),
                auto,
                f"{step:.0f}",
                f"{peer:.0f}",
                f"{peer / step:.2f}",
                "",
                "",
                "1.00x",
            )
    if not on_cuda:
        b_e2e, b_step = best["baseline e2e"], best["baseline step"]
        table.add_row(
            "baseline: PIL Dataset + torchvision",
            "32",
            "fp32",
            f"{b_step:.0f}",
            f"{b_e2e:.0f}",
            f"{b_e2e / b_step:.2f}",
        )
        table.add_row(
            "fernoise ce (workers) / baseline, end-to-end",
            "",
            "",
            "",
            "",
            f"{best['e2e ce workers'] / b_e2e:.2f}x",
        )
    for method in ("ce", "ncctfer"):
        console.print(
            f"device / workers, end to end, {method}: "
            f"{best[f'e2e {method} device'] / best[f'e2e {method} workers']:.2f}x"
        )
    for name in [k for k in best if k.startswith("ce ")]:
        _, prec, layout = name.split()
        table.add_row(f"step ce, {layout}", str(a.batch), prec, f"{best[name]:.0f}", "", "")
    console.print(table)


if __name__ == "__main__":
    main()
