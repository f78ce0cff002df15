"""Every fernoise stage from Python, on the built-in synthetic faces (no data needed).

    python examples/api.py OUT [--epochs 8] [--size 48] [--per-class 40]

Draws the synthetic-faces set into OUT/raw, then: align (whole images) -> corrupt (30% sym)
-> train ce and ncctfer -> eval -> report -> audit (2-fold, ce) -> clean --drop -> train ce
on the cleaned manifest -> predict two test photos. Every step is the function the CLI
calls, cached as the command is: run it twice and the second run is all cache hits.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import fernoise as fn


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--size", type=int, default=48)
    ap.add_argument("--per-class", type=int, default=40)
    a = ap.parse_args()
    from fernoise.demo.stage import synthesize
    from fernoise.demo.synthetic import SyntheticParams

    ws = fn.Workspace(a.out)
    raw = a.out / "raw"
    synthesize(raw, SyntheticParams(train_per_class=a.per_class, test_per_class=10, image_size=96))

    aligned = fn.run_align(
        raw, a.out / "faces", fn.AlignParams(mode="whole", size=a.size), device="cpu", workspace=ws
    )
    print("align:", aligned.manifest, aligned.counts)
    noisy = fn.run_corrupt(aligned.manifest, kind="sym", rate=0.3, seed=0, workspace=ws)
    print("corrupt:", noisy.output)

    def config(method: str) -> fn.TrainConfig:
        return fn.TrainConfig(
            method=method,
            epochs=a.epochs,
            warmup=min(2, a.epochs - 1),
            batch_size=16,
            image_size=a.size,
            lr_backbone=1e-3,
            device="cpu",
            workers=0,
        )

    runs = []
    for method in ("ce", "ncctfer"):
        run = fn.run_train(noisy.output, config(method), workspace=ws)
        _, rep = fn.run_eval(run.output, fn.EvalParams(device="cpu"), workspace=ws)
        print(f"{method}: {run.output} top-1 {rep['top1']:.3f}")
        runs.append(run.output)
    print(fn.run_report(runs))

    audit = fn.run_audit(
        noisy.output, fn.AuditParams(folds=2), config("ce"), workspace=ws, say=print
    )
    truth = audit.summary["truth"]
    print(
        f"audit: {audit.summary['issues']} issues of {audit.summary['rows']} rows; "
        f"precision {truth['precision']:.3f}, recall {truth['recall']:.3f}, AUROC {truth['auroc']:.3f}"
    )
    cleaned = fn.run_clean(audit.dir, fn.CleanParams(action="drop"), workspace=ws)
    print("clean:", cleaned.result.output, cleaned.info.get("acted"), "rows dropped")
    run = fn.run_train(cleaned.result.output, config("ce"), workspace=ws)
    _, rep = fn.run_eval(run.output, fn.EvalParams(device="cpu"), workspace=ws)
    print(f"ce on the cleaned manifest: top-1 {rep['top1']:.3f}")

    photos = sorted((raw / "test").rglob("*.png"))[:2]
    for row in fn.run_predict(photos, runs[0], fn.PredictParams(device="cpu")):
        print("predict:", row["file"], row["status"], row["label"], row["prob"])


if __name__ == "__main__":
    main()
