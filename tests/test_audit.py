"""`fernoise audit`: the scores on hand-made arrays, the folds, the one-line refusals, and a
real 2-fold audit of FERPlus crops (32 px, 2 epochs) scored against the injected noise."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import FERPLUS
from factories import cli, make_manifest, nothing_written

from fernoise.audit import folds as fold_mod
from fernoise.audit import score

TINY = ["--epochs", "2", "--warmup", "0", "--image-size", "32", "--batch-size", "32"]
TINY += ["--precision", "fp32", "--device", "cpu", "--workers", "0"]


# ----------------------------------------------------------------------------- scores
def test_truth_metrics_by_hand():
    wrong = np.array([1, 1, 0, 0, 0, 1], bool)
    issue = np.array([1, 0, 1, 0, 0, 1], bool)
    quality = np.array([0.1, 0.6, 0.2, 0.9, 0.8, 0.3])
    m = score.truth_metrics(wrong, issue, quality)
    assert m["precision"] == pytest.approx(2 / 3) and m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 / 3) and m["noise_rate"] == pytest.approx(0.5)
    # scores 1 - quality: wrong rows 0.9, 0.4, 0.7 vs right 0.8, 0.1, 0.2 -> 7 of 9 pairs ordered
    assert m["auroc"] == pytest.approx(7 / 9)
    none = score.truth_metrics(np.zeros(3, bool), np.zeros(3, bool), np.ones(3))
    assert none["precision"] is None and none["recall"] is None and none["auroc"] is None


def test_rank_ties_by_id_and_summary_counts():
    rank = score.rank_rows(np.array([0.5, 0.1, 0.5, 0.9]), ["b", "z", "a", "c"])
    assert rank.tolist() == [3, 1, 2, 4]
    c = score.summary_counts(
        np.array([0, 0, 1, 2, 0]),
        np.array([1, 1, 0, 0, 2]),
        np.array([1, 1, 1, 0, 1], bool),
        ["x", "y", "z"],
    )
    assert c["issues_per_class"] == {"x": 3, "y": 1, "z": 0}
    assert c["top_pairs"][0] == {"given": "x", "suggested": "y", "count": 2}
    assert [p["count"] for p in c["top_pairs"]] == [2, 1, 1]


def test_cleanlab_scores_flag_the_confidently_contradicted_row():
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2], 20)
    probs = np.full((60, 3), 0.05)
    probs[np.arange(60), labels] = 0.9
    probs += rng.uniform(0, 0.01, probs.shape)
    probs[7] = [0.02, 0.96, 0.02]  # given 0, the model is sure it is 1
    probs /= probs.sum(axis=1, keepdims=True)
    s = score.cleanlab_scores(labels, probs)
    assert s.is_issue[7] and s.is_issue.sum() == 1
    assert s.suggested[7] == 1
    assert s.quality[7] == pytest.approx(probs[7, 0])  # self-confidence: p(given label)
    assert s.joint.sum() == pytest.approx(1.0)
    with pytest.raises(Exception, match="NaN"):
        score.check_probs(labels, np.full((60, 3), np.nan), 3)


# ----------------------------------------------------------------------------- folds
def test_folds_are_stratified_and_keep_groups_whole():
    labels = np.repeat([0, 1, 2], [30, 21, 9])
    ids = np.array([f"r{i}" for i in range(60)])
    f = fold_mod.assign_folds(ids, labels, 3, 3, seed=0)
    for c in range(3):
        per_fold = np.bincount(f[labels == c], minlength=3)
        assert per_fold.max() - per_fold.min() <= 1
    groups = np.array([f"s{i // 4}" for i in range(60)])
    g = fold_mod.assign_folds(ids, labels, 3, 3, seed=0, groups=groups)
    for s in np.unique(groups):
        assert len(set(g[groups == s])) == 1
    assert set(g.tolist()) == {0, 1, 2}


def test_fold_manifests_hold_the_right_rows(tmp_path):
    from fernoise.manifest import read_manifest

    src = make_manifest(tmp_path / "data", 40, splits=("train", "test"))
    m = read_manifest(src)
    m.df.loc[3, "split"] = "val"  # a row of the manifest's own validation split
    from fernoise.manifest import write_manifest

    src = write_manifest(m.df, src, m.meta)
    m = read_manifest(src)
    audited = fold_mod.audited_positions(m.df)
    assert 3 not in audited and set(m.df["split"].iloc[audited]) == {"train"}
    fold_of = fold_mod.assign_folds(
        m.df["id"].iloc[audited].to_numpy(), m.df["label"].iloc[audited].to_numpy(int), 7, 2, 0
    )
    out = tmp_path / "audit" / "folds"
    paths = fold_mod.write_fold_manifests(
        m.table, m.meta, src, audited, fold_mod.fold_tests(fold_of), out, "k" * 64
    )
    assert [p.name for p in paths] == ["fold-0-of-2.parquet", "fold-1-of-2.parquet"]
    tested = []
    for i, p in enumerate(paths):
        f = read_manifest(p)
        assert (f.df["split"] == "val").sum() == 1
        test_ids = set(f.df.loc[f.df["split"] == "test", "id"])
        assert test_ids == set(m.df["id"].iloc[audited[fold_of == i]])
        assert not set(m.df.loc[m.df["split"] == "test", "id"]) & set(f.df["id"])
        assert all((out / q).is_file() for q in f.df["path"])  # crop paths re-based
        tested += sorted(test_ids)
    assert sorted(tested) == sorted(m.df["id"].iloc[audited])  # every row tested exactly once


# ----------------------------------------------------------------------------- refusals
def _refused(res, ws: Path, text: str) -> None:
    assert res.exit_code == 2, res.output
    line = " ".join(res.output.split())
    assert line.count("error:") == 1 and line.startswith("error:") and text in line, line
    assert nothing_written(ws) and not (ws / "audits").exists()


def test_one_class_is_refused(workspace):
    src = make_manifest(workspace / "d", 30, labels=lambda df: [0] * len(df))
    _refused(cli("audit", src, *TINY), workspace, "one class (neutral)")


def test_class_smaller_than_folds_is_refused(workspace):
    src = make_manifest(workspace / "d", 70)
    _refused(cli("audit", src, "--folds", "12", *TINY), workspace, "fewer than --folds 12")


def test_truth_column_with_other_classes_is_refused(workspace):
    from fernoise.manifest import read_manifest, write_manifest

    src = make_manifest(workspace / "d", 30)
    m = read_manifest(src)
    m.df["fer"] = ["contempt"] * len(m.df)  # a class this 7-class manifest does not have
    m.df["odd"] = ["bored"] * len(m.df)
    write_manifest(m.df, src, m.meta)
    _refused(
        cli("audit", src, "--truth-column", "fer", "--folds", "2", *TINY), workspace, "contempt"
    )
    _refused(cli("audit", src, "--truth-column", "odd", "--folds", "2", *TINY), workspace, "bored")
    _refused(
        cli("audit", src, "--truth-column", "nope", "--folds", "2", *TINY),
        workspace,
        "no column 'nope'",
    )


def test_an_audit_of_an_audit_is_refused(workspace):
    fake = workspace / "elsewhere" / "a1"
    fake.mkdir(parents=True)
    (fake / "audit.json").write_text(json.dumps({"manifest": "/data/m.parquet"}))
    pd.DataFrame({"id": ["a"]}).to_parquet(fake / "audit.parquet")
    for target in (fake, fake / "audit.parquet"):
        _refused(cli("audit", target, *TINY), workspace, "is an audit's output")


# ----------------------------------------------------------------------------- real crops


def _noisy_ferplus(ferplus_manifest: Path, ws: Path) -> Path:
    res = cli(
        "corrupt", ferplus_manifest, "--kind", "sym", "--rate", "0.3", "--out", ws / "noisy.parquet"
    )
    assert res.exit_code == 0, res.output
    return ws / "noisy.parquet"


@pytest.fixture(scope="module")
def real_audit(ferplus_manifest, tmp_path_factory):
    if not FERPLUS.exists():
        pytest.skip(f"real data not present: {FERPLUS}")
    ws = tmp_path_factory.mktemp("audit_ws")
    old = os.environ.get("FERNOISE_WORKSPACE")
    os.environ["FERNOISE_WORKSPACE"] = str(ws)
    try:
        src = _noisy_ferplus(ferplus_manifest, ws)
        res = cli("audit", src, "--folds", "2", *TINY)
        assert res.exit_code == 0, res.output
        again = cli("audit", src, "--folds", "2", *TINY)
    finally:
        if old is None:
            os.environ.pop("FERNOISE_WORKSPACE", None)
        else:
            os.environ["FERNOISE_WORKSPACE"] = old
    (folder,) = list((ws / "audits").iterdir())
    return src, folder, res.output, again.output, ws


@pytest.mark.shared_data
@pytest.mark.slow
def test_real_audit_writes_its_outputs_and_scores_against_is_noisy(real_audit):
    from sklearn.metrics import roc_auc_score

    from fernoise.manifest import read_manifest

    src, folder, out, _, _ = real_audit
    frame = pd.read_parquet(folder / "audit.parquet")
    summary = json.loads((folder / "audit.json").read_text())
    m = read_manifest(src)
    train = m.df[m.df["split"] == "train"].set_index("id")
    assert len(frame) == len(train) == summary["rows"] and summary["unscored"] == 0
    assert frame["rank"].tolist() == list(range(1, len(frame) + 1))
    assert set(frame["fold"]) == {0, 1}
    noisy = train.loc[frame["id"], "is_noisy"].to_numpy(bool)
    assert (frame["is_wrong"].to_numpy(bool) == noisy).all()
    assert frame["given"].tolist() == train.loc[frame["id"], "label"].astype(int).tolist()
    probs = frame[[f"p_{c}" for c in summary["classes"]]].to_numpy()
    assert np.allclose(probs.sum(axis=1), 1.0)
    assert (frame["suggested"].to_numpy() == probs.argmax(axis=1)).all()
    t = summary["truth"]
    flag = frame["is_issue"].to_numpy(bool)
    assert t["source"] == "is_noisy" and t["noise_rate"] == pytest.approx(noisy.mean())
    assert t["precision"] == pytest.approx((flag & noisy).sum() / flag.sum())
    assert t["recall"] == pytest.approx((flag & noisy).sum() / noisy.sum())
    assert t["auroc"] == pytest.approx(roc_auc_score(noisy, 1 - frame["quality"]))
    assert np.asarray(summary["joint"]).sum() == pytest.approx(1.0)
    for name in ("joint.csv", "joint.png", "pr_curve.png", "index.html"):
        assert (folder / name).is_file(), name
    sheets = {p.stem for p in (folder / "gallery").glob("*.png")}
    assert sheets == set(frame.loc[frame["is_issue"], "given_name"])
    assert f"precision {t['precision']:.3f}" in out


@pytest.mark.shared_data
@pytest.mark.slow
def test_a_second_audit_is_all_cache_hits(real_audit):
    _, folder, _, again, ws = real_audit
    assert "cache hit" in again and ": training" not in again
    runs = [p for p in (ws / "runs").iterdir() if not p.name.startswith(".")]
    assert len(runs) == 2  # the two folds' runs, nothing more


@pytest.mark.shared_data
@pytest.mark.slow
@pytest.mark.skipif(not FERPLUS.exists(), reason=f"real data not present: {FERPLUS}")
def test_a_killed_audit_resumes_without_retraining_finished_folds(ferplus_manifest, workspace):
    src = _noisy_ferplus(ferplus_manifest, workspace)
    cmd = [sys.executable, "-m", "fernoise.cli.app", "audit", str(src), "--folds", "2", *TINY]
    env = {**os.environ, "FERNOISE_WORKSPACE": str(workspace)}
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    done = None
    deadline = time.time() + 240
    try:
        while time.time() < deadline and proc.poll() is None and done is None:
            found = list(workspace.glob("audits/*/folds/fold-0.done.json"))
            done = found[0] if found else None
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert done is not None, f"fold 1 never finished (exit code {proc.returncode})"
    first = json.loads(done.read_text())
    model = Path(first["run"]) / "model.pt"
    before = model.stat().st_mtime_ns
    assert not (done.parent.parent / "audit.parquet").exists()
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "1 of 2 runs already done" in res.stdout
    assert "fold 1: training" not in res.stdout and "fold 2: training" in res.stdout
    assert model.stat().st_mtime_ns == before
    assert json.loads(done.read_text()) == first
    assert (done.parent.parent / "audit.parquet").is_file()


def test_aum_scorer_scores_every_row_from_one_run(workspace):
    from fernoise.audit.aum import aum_issues, aum_quality, aum_scores

    src = make_manifest(workspace / "d", 70, noise=0.3)
    res = cli("audit", src, "--scorer", "aum", *TINY)
    assert res.exit_code == 0, res.output
    (folder,) = list((workspace / "audits").iterdir())
    summary = json.loads((folder / "audit.json").read_text())
    frame = pd.read_parquet(folder / "audit.parquet").set_index("id")
    assert summary["scorer"] == "aum" and summary["unscored"] == 0
    (run,) = summary["runs"]
    ids, aum, epochs = aum_scores(Path(run))
    assert epochs == 2 and sorted(ids) == sorted(frame.index)  # no validation carve: every row
    aum = pd.Series(aum, index=ids).loc[frame.index].to_numpy()
    assert np.allclose(frame["quality"], aum_quality(aum))
    assert (frame["is_issue"].to_numpy() == aum_issues(aum)).all()
    assert set(frame["fold"]) == {-1}
    assert summary["truth"]["source"] == "is_noisy" and summary["truth"]["auroc"] is not None
