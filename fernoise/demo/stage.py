"""``fernoise demo [DIR]``: the whole pipeline on the built-in synthetic-faces sample.

Everything lands in one folder ``DIR`` (default ``./fernoise-demo``), which is also the
workspace (``DIR/fernoise.lock``), so that ``fernoise eval``/``report`` work there afterwards:

- ``raw/``: the synthetic-faces class-folder tree (``raw/train/<class>/*.png``,
  ``raw/test/<class>/*.png``) and ``raw/synthetic.json`` (what was drawn, and how);
- ``synthetic-faces/``: ``fernoise align --mode whole`` output (``manifest.parquet``, ``faces/``;
  the folder's name is the data set's name in ``fernoise report``'s headings): the
  drawings are already face crops (MTCNN finds about one drawn face in five, so detection is
  not used); the manifest's metadata says ``dataset: synthetic-faces``;
- ``synthetic-faces/manifest.sym-r0.30-s0.parquet``: ``fernoise corrupt --kind sym --rate 0.3 --seed 0``;
- ``runs/<key>/``: one ``fernoise train`` run per method (``config.json``, ``metrics.jsonl``,
  ``model.pt``, ...), each with ``eval.json`` and pictures from ``fernoise eval``;
- ``report.md``: the ``fernoise report`` table under a title that names the synthetic data.

Each step calls the stage's library function (no subprocess), so each is cached as usual: a
second run of the same demo is all cache hits. The default configuration is sized to finish
in under 3 minutes on a busy 2-core CPU (README gives the measured time).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fernoise.cache import atomic_write_json, atomic_write_text, run_stage
from fernoise.demo.synthetic import NAME, SyntheticParams
from fernoise.errors import FernoiseError
from fernoise.progress import Progress

DEFAULT_DIR = "fernoise-demo"
SYNTH_STAGE, SYNTH_VERSION = "synthesize", 1


@dataclass(frozen=True)
class DemoParams:
    """The demo's data set and training configuration (defaults: under 3 minutes on 2 CPU cores)."""

    train_per_class: int = 40
    """Synthetic training images per class (10% of them become the validation split)."""
    test_per_class: int = 10
    """Synthetic test images per class (other identities than the training ones)."""
    image_size: int = 64
    """Side of the drawn images in pixels."""
    size: int = 48
    """Aligned crop side and training image side in pixels (train's 4-pixel shift augmentation
    is a large share of a smaller image: 40 px learnt markedly slower in 100-odd steps)."""
    methods: tuple[str, ...] = ("ce", "ncctfer")
    """Methods trained, one run each, on the same noisy manifest."""
    kind: str = "sym"
    """Noise kind (``fernoise corrupt --kind``)."""
    rate: float = 0.3
    """Noise rate (``--rate``)."""
    noise_seed: int = 0
    """Seed of the noise (``corrupt --seed``)."""
    epochs: int = 8
    """Training epochs per run (from scratch, measured with sym 30% noise: ce's test accuracy is
    near chance, 14%, up to epoch 4 and 26-34% at epochs 6-8)."""
    warmup: int = 3
    """Warm-up epochs of plain cross-entropy (``train --warmup``)."""
    batch_size: int = 16
    """Samples per batch (small: more steps in the few epochs)."""
    lr_backbone: float = 1e-3
    """Adam learning rate of the backbone: from scratch, the heads' 1e-3 (the methods' 1e-4 is for
    fine-tuning pretrained weights and barely moves in a few epochs: chance-level test accuracy)."""
    lr_head: float = 1e-3
    """Adam learning rate of the heads (the same for every method of the demo)."""
    seed: int = 0
    """Seed of the drawings and of training."""
    device: str = "auto"
    """auto, cpu, cuda or cuda:N (training and evaluation)."""
    workers: int | None = None
    """DataLoader workers (None: train's default)."""

    def __post_init__(self) -> None:
        from fernoise import methods

        known = methods.names()
        bad = [m for m in self.methods if m not in known]
        if not self.methods or bad:
            raise FernoiseError(
                f"expected methods among {', '.join(known)} (`fernoise methods`), got "
                f"{', '.join(self.methods) or 'none'}",
                flag="--methods",
            )
        if len(set(self.methods)) != len(self.methods):
            raise FernoiseError(
                f"a method is named twice in {', '.join(self.methods)}", flag="--methods"
            )
        if self.epochs < 1 or not 0 <= self.warmup <= self.epochs:
            raise FernoiseError(
                f"expected at least 1 epoch and a warm-up of 0..epochs, got {self.epochs} and "
                f"{self.warmup}",
                flag="--epochs",
            )
        if self.size < 16:
            raise FernoiseError(f"expected at least 16 px, got {self.size}", flag="--size")
        if self.test_per_class < 1:
            raise FernoiseError(
                f"expected at least 1 test image per class, got {self.test_per_class}",
                flag="--test-per-class",
            )
        self.synthetic  # noqa: B018 - checks the data set's numbers now, before anything is written

    @property
    def synthetic(self) -> SyntheticParams:
        return SyntheticParams(
            train_per_class=self.train_per_class,
            test_per_class=self.test_per_class,
            image_size=self.image_size,
            seed=self.seed,
        )


@dataclass
class StepResult:
    """One step of the demo: its stage, what it wrote, whether the cache had it, seconds."""

    stage: str
    output: Path
    hit: bool
    seconds: float
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class DemoResult:
    """What :func:`run_demo` did, in order, and the final table."""

    root: Path
    steps: list[StepResult]
    runs: list[Path]
    evals: dict[str, dict[str, Any]]
    """Per method: the eval report (``eval.json``'s content)."""
    table: str
    """The ``report`` table (Markdown), without the title."""
    title: str
    """The table's title line: names the synthetic data set, noise and training configuration."""
    report_path: Path
    seconds: float


@contextlib.contextmanager
def _workspace_env(root: Path) -> Iterator[None]:
    # Some stages place caches under the workspace named by $FERNOISE_WORKSPACE (or the
    # current folder); point it at the demo folder so nothing lands outside DIR.
    old = os.environ.get("FERNOISE_WORKSPACE")
    os.environ["FERNOISE_WORKSPACE"] = str(root)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("FERNOISE_WORKSPACE", None)
        else:
            os.environ["FERNOISE_WORKSPACE"] = old


def synthesize(
    raw: str | os.PathLike,
    params: SyntheticParams,
    *,
    force: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> StepResult:
    """Write the synthetic-faces tree into ``raw`` (cached: stamped ``raw/synthetic.json``).

    PNG files in ``raw/<split>/<class>/`` that this configuration does not draw (left by a
    demo with more images) are removed, so that align sees exactly this data set.
    """
    from fernoise.demo import synthetic

    raw = Path(raw)
    info_path = raw / "synthetic.json"

    def build(key: str) -> list[Path]:
        written = synthetic.write_dataset(raw, params, progress=progress)
        keep = {p.resolve() for p in written}
        for split in synthetic.SPLITS:
            for name in synthetic.CLASSES:
                for p in (raw / split / name).glob("*.png"):
                    if p.resolve() not in keep:
                        p.unlink()
        counts = {
            split: {
                name: params.train_per_class if split == "train" else params.test_per_class
                for name in synthetic.CLASSES
            }
            for split in synthetic.SPLITS
        }
        atomic_write_json(
            info_path,
            {
                "dataset": NAME,
                "description": "procedurally drawn cartoon faces (fernoise.demo.synthetic), not photos of people; "
                "labels are the drawn expression",
                "licence": "generated by fernoise's own code (MIT); no third-party images",
                "params": params.asdict(),
                "classes": list(synthetic.CLASSES),
                "counts": counts,
                "train_identities": list(params.train_identities),
                "test_identities": list(params.test_identities),
                "key": key,
            },
        )
        return [info_path, *written]

    t0 = time.perf_counter()
    res = run_stage(
        stage=SYNTH_STAGE,
        version=SYNTH_VERSION,
        params=params.asdict(),
        inputs={"drawing_version": synthetic.VERSION},
        output=info_path,
        build=build,
        force=force,
    )
    n = len(synthetic.CLASSES) * (params.train_per_class + params.test_per_class)
    return StepResult("synthesize", raw, res.hit, time.perf_counter() - t0, {"images": n})


def title(params: DemoParams) -> str:
    """The report's title: the data set (synthetic), the protocol and the training configuration."""
    return (
        f"{NAME} (SYNTHETIC drawn faces, not real photos): {params.train_per_class}+{params.test_per_class} "
        f"images per class (train+test, test identities unseen), {params.kind} {params.rate:.0%} noise on the "
        f"training labels (seed {params.noise_seed}), {params.epochs} epochs at {params.size} px from scratch"
    )


def run_demo(
    root: str | os.PathLike = DEFAULT_DIR,
    params: DemoParams = DemoParams(),
    *,
    progress: Progress | None = None,
    force: bool = False,
) -> DemoResult:
    """Run synthesize -> align -> corrupt -> train (each method) -> eval -> report in ``root``.

    ``progress`` receives ``{"event": "step", "step": StepResult}`` after each step,
    ``{"event": "stage", "stage": name}`` before it, and the training and alignment events of
    the stages themselves (``{"event": "train", ...}`` wraps train's). ``force`` recomputes
    every step. Returns a :class:`DemoResult`; writes only inside ``root``.
    """
    from fernoise.cache import Workspace

    root = Path(root).resolve()
    if root.exists() and not root.is_dir():
        raise FernoiseError(f"{root} is a file; pass a folder for the demo", flag="DIR")
    root.mkdir(parents=True, exist_ok=True)
    say = progress or (lambda ev: None)
    t_all = time.perf_counter()
    steps: list[StepResult] = []

    def done(step: StepResult) -> StepResult:
        steps.append(step)
        say({"event": "step", "step": step})
        return step

    with _workspace_env(root):
        ws = Workspace(root)
        say({"event": "stage", "stage": "synthesize"})
        done(
            synthesize(
                root / "raw",
                params.synthetic,
                force=force,
                progress=lambda d, n: say({"event": "synthesize", "done": d, "total": n}),
            )
        )

        aligned = _align(root, params, ws, say, force, done)
        noisy = _corrupt(aligned, params, ws, say, force, done)
        runs: list[Path] = []
        evals: dict[str, dict[str, Any]] = {}
        for method in params.methods:
            run = _train(noisy, method, params, ws, say, force, done)
            runs.append(run)
            evals[method] = _eval(run, method, params, ws, say, force, done)

        say({"event": "stage", "stage": "report"})
        t0 = time.perf_counter()
        from fernoise.report import report

        table = report([str(r) for r in runs], fmt="markdown")
        head = title(params)
        report_path = root / "report.md"
        atomic_write_text(report_path, f"# fernoise demo: {head}\n\n{table}")
        done(StepResult("report", report_path, False, time.perf_counter() - t0))

    return DemoResult(
        root=root,
        steps=steps,
        runs=runs,
        evals=evals,
        table=table,
        title=head,
        report_path=report_path,
        seconds=time.perf_counter() - t_all,
    )


def _align(root: Path, params: DemoParams, ws, say, force: bool, done) -> Path:
    """Align ``root/raw`` into ``root/<NAME>`` (whole images, no detection); the manifest."""
    from fernoise.align.faces import AlignParams
    from fernoise.align.stage import LabelSpec, align_folder

    say({"event": "stage", "stage": "align"})
    t0 = time.perf_counter()
    aligned = align_folder(
        root / "raw",
        root / NAME,
        AlignParams(mode="whole", size=params.size),
        LabelSpec(),
        workers=1,
        device="cpu",
        force=force,
        workspace=ws,
        dataset=NAME,
        progress=lambda d, n: say({"event": "align", "done": d, "total": n}),
    )
    done(
        StepResult(
            "align",
            aligned.manifest,
            aligned.hit,
            time.perf_counter() - t0,
            {"counts": dict(aligned.counts), "rows": aligned.rows},
        )
    )
    return aligned.manifest


def _corrupt(manifest: Path, params: DemoParams, ws, say, force: bool, done) -> Path:
    """The demo's noise on the aligned ``manifest``; the noisy manifest."""
    from fernoise.corrupt.stage import run_corrupt

    say({"event": "stage", "stage": "corrupt"})
    t0 = time.perf_counter()
    noisy = run_corrupt(
        manifest,
        kind=params.kind,
        rate=params.rate,
        seed=params.noise_seed,
        force=force,
        workspace=ws,
    )
    done(
        StepResult(
            "corrupt",
            noisy.output,
            noisy.hit,
            time.perf_counter() - t0,
            {"noise": getattr(noisy, "noise", None) or {}},
        )
    )
    return noisy.output


def _train(manifest: Path, method: str, params: DemoParams, ws, say, force: bool, done) -> Path:
    from fernoise.train.stage import TrainConfig, train

    say({"event": "stage", "stage": "train", "method": method})
    kw: dict[str, Any] = dict(
        method=method,
        epochs=params.epochs,
        warmup=params.warmup,
        batch_size=params.batch_size,
        image_size=params.size,
        seed=params.seed,
        lr_backbone=params.lr_backbone,
        lr_head=params.lr_head,
        device=params.device,
        workers=params.workers,
    )
    cfg = TrainConfig(**kw)  # each method's own parameters (e.g. ncctfer's k) at their defaults
    t0 = time.perf_counter()
    res = train(
        manifest,
        cfg,
        runs_dir=ws.runs_dir(),
        workspace=ws,
        force=force,
        progress=lambda ev: say(
            {**ev, "event": "train", "train_event": ev.get("event"), "method": method}
        ),
    )
    done(
        StepResult("train", Path(res.output), res.hit, time.perf_counter() - t0, {"method": method})
    )
    return Path(res.output)


def _eval(run: Path, method: str, params: DemoParams, ws, say, force: bool, done) -> dict[str, Any]:
    from fernoise.evaluate.stage import EvalParams, evaluate_run

    say({"event": "stage", "stage": "eval", "method": method})
    t0 = time.perf_counter()
    res, rep = evaluate_run(run, EvalParams(device=params.device), workspace=ws, force=force)
    done(
        StepResult(
            "eval",
            Path(res.output),
            res.hit,
            time.perf_counter() - t0,
            {
                "method": method,
                "top1": rep.get("top1"),
                "macro_f1": rep.get("macro_f1"),
                "pictures": list(rep.get("pictures", [])),
            },
        )
    )
    return rep
