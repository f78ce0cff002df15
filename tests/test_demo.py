"""synthetic-faces and `fernoise demo`: the generator, then the whole pipeline small."""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from fernoise.demo import synthetic
from fernoise.errors import FernoiseError
from fernoise.manifest import read_meta

CLASSES = ["neutral", "happy", "sad", "surprise", "fear", "disgust", "anger"]


def _tree(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*.png"))


# ----------------------------------------------------------------------------- generator
def test_generator_writes_the_seven_classes_with_the_requested_counts_deterministically(tmp_path):
    params = synthetic.SyntheticParams(
        train_per_class=3, test_per_class=2, image_size=32, identities=8, seed=5
    )
    a = synthetic.write_dataset(tmp_path / "a", params)
    b = synthetic.write_dataset(tmp_path / "b", params)

    assert list(synthetic.CLASSES) == CLASSES
    expected = sorted(
        [f"train/{c}/{c}-{i:04d}.png" for c in CLASSES for i in range(3)]
        + [f"test/{c}/{c}-{i:04d}.png" for c in CLASSES for i in range(2)]
    )
    assert _tree(tmp_path / "a") == expected and len(a) == 35
    for pa, pb in zip(a, b, strict=True):  # byte-identical files
        assert pa.read_bytes() == pb.read_bytes()
    img = np.asarray(Image.open(a[0]))
    assert img.shape == (32, 32, 3) and img.dtype == np.uint8 and img.std() > 10

    # another seed draws other faces; each image has its own generator (order does not matter)
    other = synthetic.render(
        synthetic.SyntheticParams(seed=6, image_size=32), "train", "happy", 0, 0
    )
    same = synthetic.render(
        synthetic.SyntheticParams(seed=5, image_size=32, identities=8),
        "train",
        "happy",
        0,
        synthetic.plan(params)[3][3],
    )
    assert np.array_equal(
        same, np.asarray(Image.open(tmp_path / "a" / "train/happy/happy-0000.png"))
    )
    assert not np.array_equal(other, same)


def test_train_and_test_faces_come_from_disjoint_identities():
    params = synthetic.SyntheticParams(train_per_class=10, test_per_class=4, identities=8)
    plan = synthetic.plan(params)
    train_ids = {ident for split, _, _, ident in plan if split == "train"}
    test_ids = {ident for split, _, _, ident in plan if split == "test"}
    assert train_ids == set(range(6)) and test_ids == {6, 7}
    assert (
        sum(split == "train" for split, *_ in plan) == 70
        and sum(split == "test" for split, *_ in plan) == 28
    )


def test_expressions_move_the_face_parameters_the_documented_way():
    rng = np.random.default_rng(0)

    def mean(name, key, n=200):
        return float(np.mean([synthetic.expression_params(name, rng)[key] for _ in range(n)]))

    assert abs(mean("neutral", "smile")) < 0.05 and abs(mean("neutral", "mouth_open")) < 0.06
    assert mean("happy", "smile") > 0.6 and mean("sad", "smile") < -0.5
    assert (
        mean("sad", "brow_tilt") > 0.5 and mean("anger", "brow_tilt") < -0.6
    )  # inner brow ends up vs a V
    assert mean("surprise", "mouth_open") > 0.6 > mean("fear", "mouth_open") > 0.2
    assert (
        mean("surprise", "eye_open") > 0.35
        and mean("fear", "eye_open") > 0.35
        and mean("anger", "eye_open") < 0
    )
    assert mean("disgust", "sneer") > 0.6 and mean("happy", "sneer") < 0.1
    with pytest.raises(FernoiseError, match="unknown expression 'contempt'"):
        synthetic.expression_params("contempt", rng)


def test_bad_generator_numbers_name_the_flag():
    with pytest.raises(FernoiseError, match="at least 1 images per class, got 0") as e:
        synthetic.SyntheticParams(train_per_class=0)
    assert e.value.flag == "--train-per-class"
    with pytest.raises(FernoiseError, match="32..512 px, got 8") as e:
        synthetic.SyntheticParams(image_size=8)
    assert e.value.flag == "--image-size"


# ----------------------------------------------------------------------------- the demo
TINY = {
    "train_per_class": 4,
    "test_per_class": 2,
    "size": 32,
    "epochs": 3,
    "warmup": 1,
    "device": "cpu",
}


@pytest.mark.slow
def test_demo_runs_the_pipeline_writes_every_output_and_hits_the_cache(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from fernoise.cli.app import app
    from fernoise.demo.stage import DemoParams, run_demo

    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.delenv("FERNOISE_WORKSPACE", raising=False)
    root = tmp_path / "demo"
    events = []
    res = run_demo(root, DemoParams(**TINY, workers=0), progress=events.append)

    assert [s.stage for s in res.steps] == [
        "synthesize",
        "align",
        "corrupt",
        "train",
        "eval",
        "train",
        "eval",
        "report",
    ]
    assert not any(s.hit for s in res.steps)
    assert len(_tree(root / "raw")) == 7 * (4 + 2)
    info = json.loads((root / "raw" / "synthetic.json").read_text())
    assert info["dataset"] == "synthetic-faces" and info["counts"]["train"]["fear"] == 4

    aligned = root / "synthetic-faces" / "manifest.parquet"
    meta = read_meta(aligned)
    assert (
        meta["dataset"] == "synthetic-faces"
        and meta["classes"] == CLASSES
        and meta["params"]["mode"] == "whole"
    )
    df = pd.read_parquet(aligned)
    assert len(df) == 42 and set(df["status"]) == {"whole"}
    assert df.groupby(["split", "label_name"]).size().to_dict() == {
        **{("train", c): 4 for c in CLASSES},
        **{("test", c): 2 for c in CLASSES},
    }

    noisy = root / "synthetic-faces" / "manifest.sym-r0.30-s0.parquet"
    nmeta = read_meta(noisy)
    assert nmeta["dataset"] == "synthetic-faces" and nmeta["noise"]["kind"] == "sym"
    ndf = pd.read_parquet(noisy)
    assert int(ndf["is_noisy"].sum()) == 7  # floor(0.3 * 4 + 0.5) = 1 per class

    assert [r.parent for r in res.runs] == [root / "runs"] * 2
    methods = []
    for run in res.runs:
        config = json.loads((run / "config.json").read_text())
        methods.append(config["method"])
        assert (
            config["manifest"] == str(noisy)
            and config["epochs"] == 3
            and config["image_size"] == 32
        )
        assert (run / "model.pt").is_file() and len(
            (run / "metrics.jsonl").read_text().splitlines()
        ) == 3
        ev = json.loads((run / "eval.json").read_text())
        assert sum(map(sum, ev["confusion_matrix"])) == 14 and ev["classes"] == CLASSES
    assert methods == ["ce", "ncctfer"]
    assert sum(1 for e in events if e.get("train_event") == "epoch_end") == 6

    text = (root / "report.md").read_text()
    first = text.splitlines()[0]
    assert first.startswith(
        "# fernoise demo: synthetic-faces (SYNTHETIC drawn faces, not real photos)"
    )
    assert "sym 30% noise" in first and "3 epochs at 32 px" in first
    assert (
        "### dataset synthetic-faces (align " in text
    )  # report's own heading: the align folder's name
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    assert rows[0].split("|")[1].strip() == "method" and "sym 30%" in rows[0]
    assert [r.split("|")[1].strip() for r in rows[2:]] == ["ce", "ncctfer"]
    assert res.table in text and res.title in first

    lock = json.loads((root / "fernoise.lock").read_text())
    assert {"align", "corrupt", "train", "eval"} <= set(lock["stages"])
    assert list(elsewhere.iterdir()) == []  # nothing outside DIR (array cache included)

    # the same demo again: every stage from the cache, nothing rewritten
    stamp = {
        p: p.stat().st_mtime_ns
        for p in [*root.rglob("*.png"), *root.rglob("model.pt"), aligned, noisy]
    }
    again = run_demo(root, DemoParams(**TINY, workers=0))
    assert all(s.hit for s in again.steps if s.stage != "report")
    assert {p: p.stat().st_mtime_ns for p in stamp} == stamp
    assert again.table == res.table

    # the CLI with the same numbers: the same cache, the synthetic title, the table
    out = CliRunner().invoke(
        app,
        [
            "demo",
            str(root),
            "--train-per-class",
            "4",
            "--test-per-class",
            "2",
            "--size",
            "32",
            "--epochs",
            "3",
            "--device",
            "cpu",
        ],
        env={"COLUMNS": "200"},
    )
    assert out.exit_code == 0, out.output
    assert out.output.count("cache hit: ") == 7 and out.output.count("wrote: ") == 1  # report.md
    assert "synthetic-faces (SYNTHETIC drawn faces, not real photos)" in out.output
    assert next(line for line in res.table.splitlines() if line.startswith("| ce ")) in out.output
    assert "### dataset synthetic-faces" in out.output
    assert "(7 of 7 stages from the cache)" in out.output


def test_demo_refuses_bad_options_before_writing(tmp_path):
    from typer.testing import CliRunner

    from fernoise.cli.app import app
    from fernoise.demo.stage import DemoParams

    with pytest.raises(FernoiseError, match=r"among ce, pc, nl, ncctfer, .*got ce, mixup") as e:
        DemoParams(methods=("ce", "mixup"))
    assert e.value.flag == "--methods"
    with pytest.raises(FernoiseError, match="got 2 and 3") as e:
        DemoParams(epochs=2, warmup=3)
    assert e.value.flag == "--epochs"
    out = CliRunner().invoke(
        app, ["demo", str(tmp_path / "d"), "--methods", "ce,bogus"], env={"COLUMNS": "200"}
    )
    assert out.exit_code == 2 and "--methods" in out.output and "Traceback" not in out.output
    (tmp_path / "file").write_text("x")
    out = CliRunner().invoke(app, ["demo", str(tmp_path / "file")], env={"COLUMNS": "200"})
    assert out.exit_code == 2 and "is a file" in out.output
    assert not (tmp_path / "d").exists() and os.listdir(tmp_path) == ["file"]


def test_demo_help_states_the_library_defaults():
    from typer.testing import CliRunner

    from fernoise.cli.app import app
    from fernoise.demo.stage import DemoParams

    out = CliRunner().invoke(app, ["demo", "--help"], env={"COLUMNS": "300"})
    d = DemoParams()
    text = " ".join(out.output.split())
    for flag, value in (
        ("--methods", ",".join(d.methods)),
        ("--epochs", d.epochs),
        ("--size", d.size),
        ("--train-per-class", d.train_per_class),
        ("--test-per-class", d.test_per_class),
    ):
        shown = text.split(flag, 1)[1].split("--", 1)[0]
        assert f"[default: {value}]" in shown or f"[default: ({value})]" in shown, (flag, shown)
