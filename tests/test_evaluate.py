"""Evaluation metrics on hand-made data, and `fernoise eval` on a fake run directory."""

from __future__ import annotations

import json

import numpy as np
import pytest
from factories import CLASSES7, eval_cli, eval_manifest, eval_run, history, stamped_run
from PIL import Image

from fernoise import methods
from fernoise.errors import FernoiseError
from fernoise.evaluate import stage as ev
from fernoise.labels import LABEL_SPACES


# ----------------------------------------------------------------------------- metrics
def test_confusion_matrix_per_class_and_macro_figures():
    # 3 classes, 10 rows. cm = [[3,1,0],[1,2,1],[0,0,2]]
    y_true = [0, 0, 0, 0, 1, 1, 1, 1, 2, 2]
    y_pred = [0, 0, 0, 1, 0, 1, 1, 2, 2, 2]
    cm = ev.confusion_matrix(y_true, y_pred, 3)
    assert cm.tolist() == [[3, 1, 0], [1, 2, 1], [0, 0, 2]]
    m = ev.per_class_metrics(cm)
    np.testing.assert_allclose(m["precision"], [3 / 4, 2 / 3, 2 / 3])
    np.testing.assert_allclose(m["recall"], [3 / 4, 2 / 4, 2 / 2])
    np.testing.assert_allclose(m["accuracy"], m["recall"])
    f1 = [0.75, 2 * (2 / 3) * 0.5 / (2 / 3 + 0.5), 0.8]  # 0.75, 0.5714.., 0.8
    np.testing.assert_allclose(m["f1"], f1)
    assert m["support"].tolist() == [4, 4, 2]
    assert ev.top1(cm) == pytest.approx(0.7)
    assert ev.macro_f1(cm) == pytest.approx(np.mean(f1))
    assert ev.macro_f1(cm) == pytest.approx(0.707142857, abs=1e-8)
    assert ev.mean_class_accuracy(cm) == pytest.approx((0.75 + 0.5 + 1.0) / 3)


def test_absent_class_is_zero_and_left_out_of_macro():
    cm = ev.confusion_matrix([0, 0, 1], [0, 1, 1], 3)  # class 2 never occurs
    m = ev.per_class_metrics(cm)
    assert m["precision"][2] == 0 and m["recall"][2] == 0 and m["f1"][2] == 0
    assert ev.macro_f1(cm) == pytest.approx(np.mean([2 / 3, 2 / 3]))
    with pytest.raises(ValueError):
        ev.confusion_matrix([0, 3], [0, 0], 3)


def test_ece_hand_made():
    # Bin (0.8667, 0.9333]: 2 rows at 0.9, 1 right -> |0.5-0.9| ; bin (0.533,0.6]: 2 rows at 0.6, both right -> |1-0.6|
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.4, 0.6], [0.4, 0.6]])
    y = [0, 1, 1, 1]
    ece, bins = ev.expected_calibration_error(probs, y, n_bins=15)
    assert ece == pytest.approx(0.5 * 0.4 + 0.5 * 0.4)
    assert len(bins) == 15 and sum(b["count"] for b in bins) == 4
    b9 = [b for b in bins if b["count"] == 2 and b["confidence"] == pytest.approx(0.6)][0]
    assert b9["accuracy"] == 1.0 and b9["lo"] == pytest.approx(8 / 15)
    # perfectly calibrated: confidence 1.0 and always right -> 0; exactly 1.0 goes in the last bin
    ece, bins = ev.expected_calibration_error(np.eye(3), [0, 1, 2])
    assert ece == 0.0 and bins[-1]["count"] == 3


def test_max_last5_and_val_selected_epoch():
    test = [0.30, 0.50, 0.70, 0.65, 0.60, 0.62, 0.58, 0.61, 0.59]
    val = [0.31, 0.52, 0.66, 0.69, 0.61, 0.69, 0.57, 0.60, 0.58]
    h = history(test, val, warm=2)
    m = ev.max_last(h)
    assert m["max"] == 0.70 and m["max_epoch"] == 3 and m["last_n"] == 5
    assert m["last"] == pytest.approx((0.60 + 0.62 + 0.58 + 0.61 + 0.59) / 5)
    v = ev.val_selected(h)
    assert v == {"epoch": 4, "val_acc": 0.69, "test_acc": 0.65}  # earliest of the tied 0.69s
    assert ev.warmup_warning(h) is None
    short = ev.max_last(history([0.2, 0.4, 0.3]))
    assert short["last"] == pytest.approx(0.3) and short["last_n"] == 3
    assert ev.val_selected(history([0.2, 0.4])) is None
    assert ev.max_last([]) is None


def test_warmup_warning_when_best_test_epoch_is_in_warmup():
    h = history([0.40, 0.72, 0.55, 0.50, 0.45, 0.44], warm=3)
    w = ev.warmup_warning(h)
    assert w is not None and "epoch 2" in w and "warm-up (epochs 1-3)" in w
    s = ev.history_summary(h, CLASSES7)
    assert s["best_test_in_warmup"] is True and s["warnings"] == [w]
    assert s["warmup_epochs"] == [1, 2, 3]
    assert ev.warmup_warning(history([0.40, 0.50, 0.72], warm=2)) is None
    assert ev.warmup_warning(h, method="ce") is None  # ce's warm-up is its own loss
    # the method declares it (Method.warmup_is_own_loss); the others, and unknown names, warn
    assert [m for m in methods.names() if ev.warmup_warning(h, method=m) is None] == ["ce"]
    assert ev.warmup_warning(h, method="gone") == w


def test_noise_detection_and_thresholds_from_history():
    h = history(
        [0.5, 0.6, 0.7],
        warm=1,
        confident_precision=[None, 0.8, 0.9],
        confident_recall=[None, 0.4, 0.6],
        confident_frac=[None, 0.5, 0.55],
        thresholds=[None, [0.3, 0.5], [0.35, None]],
    )
    nd = ev.noise_detection(h)
    assert [d["epoch"] for d in nd] == [2, 3]
    assert nd[0]["f1"] == pytest.approx(2 * 0.8 * 0.4 / 1.2)
    assert nd[1]["f1"] == pytest.approx(0.72) and nd[1]["confident_frac"] == 0.55
    thr = ev.thresholds_over_time(h, ["neutral", "happy"])
    assert thr == {"epoch": [1, 2, 3], "neutral": [None, 0.3, 0.35], "happy": [None, 0.5, None]}


# ----------------------------------------------------------------------------- fake run
def _is_png(path):
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        return im.format == "PNG" and im.size[0] > 100 and im.size[1] > 100


@pytest.mark.slow
def test_eval_end_to_end_on_a_fake_run(tmp_path, workspace):
    from fernoise.cache import Workspace

    man = eval_manifest(tmp_path / "data")
    run = eval_run(tmp_path / "runs" / "r1", man)
    res, rep = ev.evaluate_run(
        run, ev.EvalParams(cam=8, batch_size=16, device="cpu"), workspace=Workspace()
    )
    assert not res.hit and res.output == run / "eval.json"
    on_disk = json.loads((run / "eval.json").read_text())
    assert on_disk == rep
    for field in (
        "top1",
        "macro_f1",
        "per_class",
        "confusion_matrix",
        "ece",
        "ece_bins",
        "history",
        "classes",
        "n",
        "method",
        "noise",
        "manifest",
        "pictures",
        "mean_class_accuracy",
        "calibration",
    ):
        assert field in rep, field
    assert rep["n"] == 40 and rep["classes"] == CLASSES7 and rep["ece_bins"] == 15
    cm = np.array(rep["confusion_matrix"])
    assert cm.shape == (7, 7) and cm.sum() == 40
    assert cm.sum(axis=1).tolist() == [6, 6, 6, 6, 6, 5, 5]
    assert rep["top1"] == pytest.approx(np.trace(cm) / 40)
    assert rep["per_class"]["happy"]["support"] == 6
    assert 0.0 <= rep["ece"] <= 1.0
    h = rep["history"]
    # a random model's top-1 is not the history's last test_acc (0.41): eval says so
    assert any("differs from the last epoch's test accuracy" in w for w in h["warnings"]) == (
        abs(rep["top1"] - 0.41) > 0.02
    )
    assert h["test_max_last5"] == {
        "max": 0.45,
        "max_epoch": 3,
        "last": pytest.approx((0.3 + 0.45 + 0.4 + 0.42 + 0.41) / 5),
        "last_n": 5,
    }
    assert h["val_selected"] == {"epoch": 4, "val_acc": 0.44, "test_acc": 0.4}
    assert h["best_test_in_warmup"] is False
    assert [d["epoch"] for d in h["noise_detection"]] == [3, 4, 5, 6]
    assert h["noise_detection"][0]["precision"] == pytest.approx(0.76)
    assert h["thresholds"]["epoch"] == [1, 2, 3, 4, 5, 6] and h["thresholds"]["neutral"][
        2
    ] == pytest.approx(0.24)
    assert sorted(rep["pictures"]) == sorted([*ev.PICTURES.values(), ev.GRADCAM_PNG])
    for name in rep["pictures"]:
        assert _is_png(run / name), name
    lock = json.loads((tmp_path / "fernoise.lock").read_text())
    assert lock["stages"]["eval"]["key"] == res.key

    # The model's own prediction agrees with the reported top-1.
    import torch

    from fernoise.images import load_many, to_tensor
    from fernoise.manifest import read_manifest

    m = read_manifest(man)
    rows = ev.select_test_rows(m)
    x = to_tensor(load_many([m.root / p for p in rows["path"]], 32))
    with torch.inference_mode():
        pred = ev.load_model(ev.load_run(run))(x).argmax(1).numpy()
    assert (pred == rows["label"].astype(int).to_numpy()).mean() == pytest.approx(rep["top1"])

    # Same inputs: cache hit; a changed model: a miss.
    res2, _ = ev.evaluate_run(run, ev.EvalParams(cam=8, batch_size=7, device="cpu"))
    assert res2.hit and res2.key == res.key
    res3, _ = ev.evaluate_run(run, ev.EvalParams(cam=0, device="cpu"))
    assert (
        not res3.hit and "gradcam.png" not in _["pictures"] and not (run / "gradcam.png").exists()
    )


def test_gradcam_grid_has_the_faces_asked_for(tmp_path):

    from fernoise import methods
    from fernoise.evaluate.gradcam import gradcam, gradcam_grid
    from fernoise.model import Classifier

    m = methods.create("ce", num_classes=7)
    model = Classifier(methods.build_model(m), m.logits, 7).eval()
    rng = np.random.default_rng(1)
    imgs = rng.integers(0, 255, (8, 48, 48, 3), dtype=np.uint8)
    cams, probs = gradcam(model, imgs)
    assert cams.shape == (8, 48, 48) and probs.shape == (8, 7)
    assert cams.min() >= 0 and cams.max() <= 1
    assert np.allclose(probs.sum(1), 1, atol=1e-5)
    out = gradcam_grid(imgs, cams, probs, [0, 1, 2, 3, 4, 5, 6, 0], CLASSES7, tmp_path / "g.png")
    assert _is_png(out)
    with Image.open(out) as im:
        w, h = im.size
    assert w > h  # 4 columns x 2 rows
    assert list(ev.pick_cam_rows(np.array([0, 0, 1, 1, 2, 2]), 4)) == [0, 2, 4, 1]


@pytest.mark.slow
def test_eval_on_another_manifest_and_label_space_mismatch(tmp_path):
    man = eval_manifest(tmp_path / "data")
    run = eval_run(tmp_path / "runs" / "r1", man, method="ce", noisy=False)
    other = eval_manifest(tmp_path / "other", n_test=14, key="other-key")
    res, rep = ev.evaluate_run(run, ev.EvalParams(device="cpu"), manifest=other)
    assert res.output == run / "eval-other-key" / "eval.json"
    assert rep["n"] == 14 and rep["own_manifest"] is False and not (run / "eval.json").exists()
    assert rep["history"]["noise_detection"] == [] and rep["history"]["thresholds"] is None
    eight = eval_manifest(
        tmp_path / "eight",
        n_test=8,
        key="k8",
        classes=list(LABEL_SPACES["basic8"]),
        label_space="basic8",
    )
    with pytest.raises(FernoiseError, match="same label space"):
        ev.evaluate_run(run, ev.EvalParams(device="cpu"), manifest=eight)


def test_eval_errors_are_one_line(tmp_path):
    with pytest.raises(FernoiseError, match="not a training run"):
        ev.load_run(tmp_path)
    man = eval_manifest(tmp_path / "data", n_test=7)
    run = eval_run(tmp_path / "r", man, with_model=False)
    with pytest.raises(FernoiseError, match="no model.pt"):
        ev.evaluate_run(run)
    with pytest.raises(FernoiseError) as e:
        ev.EvalParams(cam=-1)
    assert e.value.one_line() == "--cam: expected 0..64 Grad-CAM faces, got -1"


@pytest.mark.slow
def test_cli_eval_takes_the_latest_run_and_prints_tables(tmp_path, workspace):
    import os
    import subprocess
    import sys

    from fernoise.cache import Workspace

    man = eval_manifest(tmp_path / "data", n_test=14)
    run = eval_run(tmp_path / "runs" / "r1", man, test=[0.5, 0.7, 0.4, 0.4, 0.42, 0.41])
    Workspace().record("train", key="runkey-r1", output=run, params={})
    cmd = [sys.executable, "-m", "fernoise.cli.app", "eval", "--device", "cpu"]
    r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "COLUMNS": "200"})
    assert r.returncode == 0, r.stderr
    assert (
        "top-1 accuracy" in r.stdout
        and "confusion matrix" in r.stdout
        and "contempt" not in r.stdout
    )
    assert "70.0 / 46.6" in r.stdout  # max / last-5 from the history
    assert "inside the warm-up (epochs 1-2)" in r.stderr
    assert (run / "eval.json").is_file()
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0 and "cache hit" in r.stdout
    eight = eval_manifest(
        tmp_path / "eight",
        n_test=8,
        key="k8",
        classes=list(LABEL_SPACES["basic8"]),
        label_space="basic8",
    )
    r = subprocess.run([*cmd, str(run), "--manifest", str(eight)], capture_output=True, text=True)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert r.stderr.startswith("error: --manifest:") and "same label space" in r.stderr


# ----------------------------------------------------------------------------- trust (issue 8)
def test_a_changed_model_is_refused_unless_forced(tmp_path, workspace):
    import torch

    from fernoise import methods

    _, run = stamped_run(tmp_path)
    torch.manual_seed(5)
    torch.save(
        methods.build_model(methods.create("ce", num_classes=7)).state_dict(), run / "model.pt"
    )  # replaced behind train's back
    res = eval_cli(run, "--device", "cpu")
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert res.exit_code == 2 and len(lines) == 1
    assert (
        "differs from the model.pt that `fernoise train` wrote" in lines[0]
        and "--force" in lines[0]
    )
    assert not (run / "eval.json").exists()
    _, rep = ev.evaluate_run(run, ev.EvalParams(device="cpu"), force=True)
    assert any("evaluated anyway" in w for w in rep["history"]["warnings"])


@pytest.mark.slow
def test_changed_test_crops_are_refused_unless_forced(tmp_path, workspace):
    from fernoise.cache import file_sha256
    from fernoise.manifest import read_manifest, write_manifest

    man, run = stamped_run(tmp_path)
    m = read_manifest(man)
    m.df["crop_sha256"] = [
        file_sha256(man.parent / p) if isinstance(p, str) else None for p in m.df["path"]
    ]
    write_manifest(m.df, man, m.meta)
    first, _ = ev.evaluate_run(run, ev.EvalParams(device="cpu"))
    for p in m.df.loc[m.df["split"] == "test", "path"].dropna():
        Image.fromarray(np.full((32, 32, 3), (255, 0, 0), np.uint8)).save(
            man.parent / p
        )  # red squares
    with pytest.raises(
        FernoiseError, match=r"14 test crops differ from the sha256 align recorded"
    ) as e:
        ev.evaluate_run(
            run, ev.EvalParams(device="cpu")
        )  # the cache would have hit without the check
    assert e.value.flag == "--force"
    res, rep = ev.evaluate_run(run, ev.EvalParams(device="cpu"), force=True)
    assert (
        not res.hit
        and res.key != first.key
        and any("differ from the sha256" in w for w in rep["history"]["warnings"])
    )


def test_a_truncated_test_crop_is_skipped_and_counted(tmp_path, workspace):
    man, run = stamped_run(tmp_path)
    crop = man.parent / "faces" / "test_003.png"
    data = crop.read_bytes()
    crop.write_bytes(data[: len(data) // 3])
    res, rep = ev.evaluate_run(run, ev.EvalParams(device="cpu"))
    assert rep["n"] == 13 and rep["skipped"] == {"count": 1, "example": str(crop)}
    assert any("1 test rows skipped" in w for w in rep["history"]["warnings"])
    assert np.array(rep["confusion_matrix"]).sum() == 13


def test_eval_device_cuda_without_cuda_fails_even_on_a_cache_hit(tmp_path, workspace):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    _, run = stamped_run(tmp_path)
    assert eval_cli(run, "--device", "cpu").exit_code == 0
    res = eval_cli(run, "--device", "cuda")
    assert res.exit_code == 2 and "--device" in res.output and "no CUDA" in res.output


def test_eval_a_folder_without_a_manifest_given_as_manifest(tmp_path, workspace):
    _, run = stamped_run(tmp_path)
    (tmp_path / "empty").mkdir()
    res = eval_cli(run, "--device", "cpu", "--manifest", tmp_path / "empty")
    assert res.exit_code == 2 and "is a folder without a manifest.parquet" in res.output
    assert "does not exist" not in res.output


@pytest.mark.slow
def test_eval_split_val_writes_its_own_folder(tmp_path, workspace):
    from fernoise.manifest import read_manifest, write_manifest

    man, run = stamped_run(tmp_path)
    res = eval_cli(run, "--device", "cpu", "--split", "val")
    assert res.exit_code == 2 and "has no 'val' rows (its splits: test, train)" in res.output
    test_res, test_rep = ev.evaluate_run(run, ev.EvalParams(device="cpu"))
    before = (run / "eval.json").read_bytes()
    m = read_manifest(man)
    m.df.loc[m.df["split"] == "train", "split"] = "val"  # 12 labelled rows become val
    write_manifest(m.df, man, m.meta)
    res, rep = ev.evaluate_run(run, ev.EvalParams(device="cpu", split="val"))
    assert res.output == run / "eval-val" / "eval.json" and rep["n"] == 12 and rep["split"] == "val"
    assert (run / "eval.json").read_bytes() == before
    with pytest.raises(FernoiseError) as e:
        ev.EvalParams(split="dev")
    assert e.value.flag == "--split"


def test_eval_warns_about_a_class_the_run_never_trained_on(tmp_path, workspace):
    man, run = stamped_run(tmp_path)
    cfg = json.loads((run / "config.json").read_text())
    cfg["train_class_counts"] = [3, 3, 0, 3, 3, 3, 3]  # no 'sad' in training
    (run / "config.json").write_text(json.dumps(cfg))
    _, rep = ev.evaluate_run(run, ev.EvalParams(device="cpu"))
    assert any(
        "'sad' never occur in the run's training rows" in w for w in rep["history"]["warnings"]
    )
