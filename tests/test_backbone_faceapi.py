"""``--backbone dlib-resnet29 --pretrained`` face-api's weights, on real FERPlus crops (issue 21).

The weights are the real files of ``../shared/data/faceapi``, given as the npm tarball's layout
(a .tgz made here with ``package/model/...`` members; its own sha256 differs from npm's, the
members are what is checked) and as a folder. Every run trains 1 epoch with a backbone
learning rate of 1e-12, so model.pt's backbone equals dlib's weights (Adam moves each by
about 1e-12). Bad weights and a too small ``--image-size`` are one line, a non-zero exit, no
run folder. Eval and predict of a dlib run take the normalisation from its config.json.
"""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import DATA, FERPLUS, needs
from factories import one_epoch_args
from PIL import Image
from typer.testing import CliRunner

from fernoise import backbones
from fernoise.backbones.dlib_resnet29 import FACEAPI_SHA256, DlibResNet29
from fernoise.cli.app import app
from fernoise.manifest import write_manifest

FACEAPI = DATA / "faceapi"
MANIFEST_NAME = "face_recognition_model-weights_manifest.json"
BIN_NAME = "face_recognition_model.bin"
pytestmark = needs(FERPLUS) + needs(FACEAPI)

CLASSES = ["neutral", "happiness", "surprise", "sadness"]
SIZE = 112
ARGS = ["--backbone", "dlib-resnet29", *one_epoch_args(SIZE, frozen=True)]


def ferplus_crops(root: Path, per_class: int = 10) -> Path:
    """A manifest of ``per_class`` real FERPlus crops per class (48 px grey, upsampled to 112
    px RGB), the lowest ``rand_rank`` of the train split; every fifth row is a test row."""
    src = pd.read_csv(
        FERPLUS / "manifest.csv", usecols=["path", "split", "ferplus_plurality", "rand_rank"]
    )
    src = src[(src["split"] == "train") & src["ferplus_plurality"].isin(CLASSES)]
    src = src.sort_values("rand_rank").groupby("ferplus_plurality").head(per_class)
    (root / "faces").mkdir(parents=True)
    rows = []
    for i, r in enumerate(src.itertuples()):
        img = Image.open(FERPLUS / r.path).convert("RGB").resize((SIZE, SIZE), Image.BILINEAR)
        path = f"faces/{i:03d}.png"
        img.save(root / path)
        split = "test" if i % 5 == 0 else "train"
        label = CLASSES.index(r.ferplus_plurality)
        rows.append(
            {"id": r.path, "src_path": r.path, "path": path, "split": split, "label": label}
            | {"status": "ok", "n_faces": 1}
        )
    meta = {"classes": CLASSES, "label_space": "ferplus4", "stage": "align", "key": "ferplus40"}
    return write_manifest(pd.DataFrame(rows), root / "manifest.parquet", meta)


def tarball(path: Path, members: dict[str, bytes]) -> Path:
    """A .tgz with ``members`` (name -> bytes), as `npm pack` lays out a package."""
    with tarfile.open(path, "w:gz") as tf:
        for name, blob in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tf.addfile(info, io.BytesIO(blob))
    return path


def real_members() -> dict[str, bytes]:
    return {
        "package/package.json": b'{"name": "@vladmandic/face-api", "version": "1.7.15"}',
        f"package/model/{MANIFEST_NAME}": (FACEAPI / MANIFEST_NAME).read_bytes(),
        f"package/model/{BIN_NAME}": (FACEAPI / BIN_NAME).read_bytes(),
        "package/model/face_expression_model.bin": b"\0" * 64,
    }


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("ferplus")
    return {
        "manifest": ferplus_crops(root / "crops"),
        "tgz": tarball(root / "vladmandic-face-api-1.7.15.tgz", real_members()),
    }


@pytest.fixture(scope="module")
def dlib_start():
    return DlibResNet29.from_faceapi(FACEAPI).state_dict()


def _train(manifest: Path, runs: Path, *extra: str):
    return CliRunner().invoke(app, ["train", str(manifest), *ARGS, "--runs-dir", str(runs), *extra])


def _run_of(res) -> Path:
    assert res.exit_code == 0, res.output
    tag, _, path = res.output.strip().splitlines()[-1].partition(": ")
    return Path(path)


def _starts_from_dlib(run: Path, start: dict[str, torch.Tensor]) -> None:
    state = torch.load(run / "model.pt", weights_only=True)
    backbone = {
        k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")
    }
    assert set(backbone) == set(start) - {"fc.weight"}
    for k, v in backbone.items():
        torch.testing.assert_close(v, start[k], rtol=0, atol=1e-9)
    torch.manual_seed(0)
    random = backbones.create("dlib-resnet29").state_dict()
    k = "conv32_down.conv.weight"
    assert (backbone[k] - random[k]).abs().max() > 0.05  # not a random init


@pytest.mark.slow
def test_tarball_and_folder_start_from_dlibs_weights_with_one_key(
    data, dlib_start, tmp_path, workspace
):
    runs = tmp_path / "runs"
    run = _run_of(_train(data["manifest"], runs, "--pretrained", str(data["tgz"])))
    _starts_from_dlib(run, dlib_start)
    config = json.loads((run / "config.json").read_text())
    assert config["backbone"] == "dlib-resnet29"
    assert config["pretrained_kind"] == "faceapi-tarball"
    assert config["pretrained"] == str(data["tgz"].resolve())
    assert config["pretrained_sha256"] == FACEAPI_SHA256[BIN_NAME]
    assert config["pretrained_license"] == (
        "dlib model: public domain (Davis King); face-api package: MIT"
    )
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 1 and np.isfinite(metrics[0]["loss"])

    # the folder holding the same two files: the same key (a cache hit) ...
    res = _train(data["manifest"], runs, "--pretrained", str(FACEAPI))
    assert res.exit_code == 0 and res.output.strip().splitlines()[-1].startswith("cache hit"), (
        res.output
    )
    # ... and, as a new run (another seed), trained from the same start; model/ subfolder too
    pkg = tmp_path / "package"
    (pkg / "model").mkdir(parents=True)
    for name in (MANIFEST_NAME, BIN_NAME):
        shutil.copy(FACEAPI / name, pkg / "model" / name)
    run2 = _run_of(_train(data["manifest"], runs, "--pretrained", str(pkg), "--seed", "1"))
    _starts_from_dlib(run2, dlib_start)
    config2 = json.loads((run2 / "config.json").read_text())
    assert config2["pretrained_kind"] == "faceapi-folder"
    assert config2["pretrained"] == str((pkg / "model").resolve())
    assert config2["pretrained_sha256"] == config["pretrained_sha256"]

    # eval: the test accuracy it measures is the one training measured with the same
    # normalisation (dlib's, from config.json), on the same rows
    from fernoise.evaluate import stage as ev

    _, rep = ev.evaluate_run(run, ev.EvalParams(cam=4, batch_size=16, device="cpu"))
    assert rep["n"] == 8
    assert rep["top1"] == pytest.approx(metrics[0]["test_acc"], abs=1e-9)
    assert (run / "gradcam.png").is_file()
    assert "(backbone.conv256_down_out) is 1x1 cells" in rep["gradcam_note"]  # 1x1 at 112 px

    # predict: the run's classifier normalises the dlib way
    from fernoise.evaluate.stage import load_model, load_run
    from fernoise.predict import classify

    model = load_model(load_run(run))
    card = backbones.get("dlib-resnet29")
    assert model.mean == card.mean and model.std == card.std
    faces = np.stack(
        [np.asarray(Image.open(data["manifest"].parent / "faces" / f"{i:03d}.png")) for i in (0, 5)]
    )
    got = classify(model, faces, CLASSES, top=4)
    with torch.no_grad():
        x = torch.from_numpy(faces).permute(0, 3, 1, 2)
        want = torch.softmax(model(DlibResNet29.normalize(x)), dim=1)
    for row, p in zip(got, want, strict=True):
        assert row["label"] == CLASSES[int(p.argmax())]
        assert [t["prob"] for t in row["top"]] == pytest.approx(
            sorted(p.tolist(), reverse=True), abs=1e-5
        )


def _no_run(runs: Path) -> bool:
    return not runs.exists() or not any(runs.iterdir())


def _one_line(res, flag: str = "--pretrained") -> str:
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert res.exit_code != 0 and len(lines) == 1, res.output
    assert lines[0].startswith(f"error: {flag}: "), lines[0]
    return lines[0]


def test_bad_weights_are_one_line_and_write_nothing(data, tmp_path, workspace):
    runs = tmp_path / "runs"
    man = data["manifest"]
    blob = (FACEAPI / BIN_NAME).read_bytes()

    def folder(name: str, files: dict[str, bytes]) -> Path:
        d = tmp_path / name
        d.mkdir()
        for n, b in files.items():
            (d / n).write_bytes(b)
        return d

    manifest_bytes = (FACEAPI / MANIFEST_NAME).read_bytes()
    truncated = folder("trunc", {MANIFEST_NAME: manifest_bytes, BIN_NAME: blob[:-1000]})
    line = _one_line(_train(man, runs, "--pretrained", str(truncated)))
    assert "sha256" in line and "truncated" in line

    other = folder(
        "other",
        {MANIFEST_NAME: manifest_bytes, BIN_NAME: (FACEAPI / "LICENSE-face-api").read_bytes()},
    )
    assert "sha256" in _one_line(_train(man, runs, "--pretrained", str(other)))

    edited = bytearray(blob)
    edited[4096] ^= 0xFF
    bad = folder("edited", {MANIFEST_NAME: manifest_bytes, BIN_NAME: bytes(edited)})
    assert "sha256" in _one_line(_train(man, runs, "--pretrained", str(bad)))

    no_manifest = folder("nomanifest", {BIN_NAME: blob})
    assert MANIFEST_NAME in _one_line(_train(man, runs, "--pretrained", str(no_manifest)))

    members = {"package/package.json": b"{}", "package/model/other.bin": b"x"}
    empty = tarball(tmp_path / "empty.tgz", members)
    line = _one_line(_train(man, runs, "--pretrained", str(empty)))
    assert f"package/model/{MANIFEST_NAME}" in line and "npm pack" in line

    cut = tmp_path / "cut.tgz"
    cut.write_bytes(data["tgz"].read_bytes()[: 3 << 20])
    assert "cut.tgz" in _one_line(_train(man, runs, "--pretrained", str(cut)))

    short_member = dict(real_members())
    short_member[f"package/model/{BIN_NAME}"] = blob[: len(blob) // 2]
    half = tarball(tmp_path / "half.tgz", short_member)
    assert "sha256" in _one_line(_train(man, runs, "--pretrained", str(half)))

    # a link where the .bin should be is refused, never followed
    linked = tmp_path / "link.tgz"
    with tarfile.open(linked, "w:gz") as tf:
        info = tarfile.TarInfo(f"package/model/{MANIFEST_NAME}")
        info.size = len(manifest_bytes)
        tf.addfile(info, io.BytesIO(manifest_bytes))
        link = tarfile.TarInfo(f"package/model/{BIN_NAME}")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tf.addfile(link)
    assert "not a regular file" in _one_line(_train(man, runs, "--pretrained", str(linked)))

    line = _one_line(_train(man, runs, "--image-size", "96"), "--image-size")
    assert "at least 103 px, got 96" in line
    assert _no_run(runs)


def test_weights_of_the_other_backbone_say_which_backbone_they_are_for(data, tmp_path, workspace):
    runs = tmp_path / "runs"
    man = data["manifest"]
    torch.manual_seed(0)
    r18 = tmp_path / "resnet18.pth"
    torch.save(backbones.create("resnet18").state_dict(), r18)
    line = _one_line(_train(man, runs, "--pretrained", str(r18)))
    assert "for --backbone resnet18" in line
    plain = list(ARGS)
    plain[plain.index("dlib-resnet29")] = "resnet18"
    for spec in (str(data["tgz"]), str(FACEAPI), str(FACEAPI / BIN_NAME)):
        res = CliRunner().invoke(
            app, ["train", str(man), *plain, "--runs-dir", str(runs), "--pretrained", spec]
        )
        assert "for --backbone dlib-resnet29" in _one_line(res)
    assert _no_run(runs)
