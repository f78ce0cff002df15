"""`fernoise split`: subject-independent folds (issue 9.5).

Manifests are written with ``write_manifest`` in tmp_path (no images needed): rows with a
``subject`` column, labels over a 3-class list, some unlabelled rows.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from fernoise.cache import Workspace
from fernoise.cli.app import app
from fernoise.errors import FernoiseError
from fernoise.manifest import read_manifest, read_meta, write_manifest
from fernoise.split import SplitParams, make_folds, run_split

CLASSES = ["happy", "sad", "anger"]


def make_manifest(path: Path, subjects, labels, *, key="alignkey", extra=None) -> Path:
    ids = [f"s{subj}/img{k:04d}.png" for k, subj in enumerate(subjects)]
    df = pd.DataFrame(
        {
            "id": ids,
            "src_path": ids,
            "path": [f"faces/{i}.jpg" for i in ids],
            "split": "train",
            "label": pd.array([None if y is None else int(y) for y in labels], dtype="Int64"),
            "label_name": [None if y is None else CLASSES[y] for y in labels],
            "status": "ok",
            "n_faces": 1,
            "subject": [None if s is None else str(s) for s in subjects],
            **(extra or {}),
        }
    )
    meta = {
        "classes": CLASSES,
        "label_space": "custom",
        "stage": "align",
        "key": key,
        "lineage": [{"stage": "align", "key": key, "params": {}}],
    }
    return write_manifest(df, path, meta)


def uneven(seed=0):
    """23 subjects with 2-9 rows each, classes drawn unevenly, a few unlabelled rows."""
    rng = np.random.default_rng(seed)
    subjects, labels = [], []
    for s in range(23):
        for _ in range(int(rng.integers(2, 10))):
            subjects.append(f"{s:03d}")
            labels.append(None if rng.random() < 0.05 else int(rng.choice(3, p=[0.5, 0.3, 0.2])))
    return subjects, labels


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def one_line_error(res, flag):
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.exit_code == 2, res.output
    assert len(lines) == 1 and lines[0].startswith(f"error: {flag}"), res.stderr
    return lines[0]


# ----------------------------------------------------------------------------- k-fold
def test_kfold_parts_are_subject_disjoint_and_every_row_is_test_once(workspace):
    subjects, labels = uneven()
    p = make_manifest(workspace / "manifest.parquet", subjects, labels)
    res = cli("split", p, "--folds", "5", "--seed", "0")
    assert res.exit_code == 0, res.output
    outs = [workspace / f"manifest.fold-{i}-of-5-s0.parquet" for i in range(5)]
    assert sorted(workspace.glob("manifest.fold-*.parquet")) == sorted(outs)
    test_count = Counter()
    for i, o in enumerate(outs):
        m = read_manifest(o)
        df = m.df
        assert len(df) == len(subjects) and df["id"].tolist() == read_manifest(p).df["id"].tolist()
        parts = {s: set(df.loc[df["split"] == s, "subject"]) for s in ("train", "val", "test")}
        assert (
            not parts["train"] & parts["val"]
            and not parts["train"] & parts["test"]
            and not parts["val"] & parts["test"]
        )
        assert set().union(*parts.values()) == set(subjects)
        n_rest = 23 - len(parts["test"])
        assert len(parts["val"]) == int(np.floor(0.1 * n_rest + 0.5))  # by subject, half up
        test_count.update(df.loc[df["split"] == "test", "id"])
        assert m.classes == CLASSES and m.meta["label_space"] == "custom"
        entry = m.meta["lineage"][-1]
        assert entry["stage"] == "split" and entry["key"] == m.meta["key"]
        assert entry["params"] == {
            "folds": 5,
            "fold": i,
            "group_column": "subject",
            "seed": 0,
            "val_fraction": 0.1,
        }
        assert [e["stage"] for e in m.meta["lineage"]] == ["align", "split"]
        info = m.meta["split"]
        assert sorted(info["test_groups"]) == sorted(parts["test"]) and sorted(
            info["val_groups"]
        ) == sorted(parts["val"])
        assert info["rows"]["test"] == int((df["split"] == "test").sum()) and info["loso"] is False
        assert df["label"].equals(read_manifest(p).df["label"])  # labels untouched
    assert set(test_count) == set(read_manifest(p).df["id"]) and set(test_count.values()) == {1}
    # the lock names the split and every fold; the CLI says how to train each fold
    lock = json.loads((workspace / "fernoise.lock").read_text())["stages"]["split"]
    assert lock["params"]["outputs"] == [str(o.resolve()) for o in outs]
    assert Workspace().latest("split") == outs[0].resolve()
    text = " ".join(res.output.split())
    assert (
        "for i in $(seq 0 4); do fernoise train" in text
        and "manifest.fold-$i-of-5-s0.parquet" in text
    )
    assert "5 folds over 23 groups" in text


def test_stratified_within_one_per_class_where_possible():
    # (a) one row per group: each class's test count is floor or ceil of n_c / K in every fold
    labels = [0] * 13 + [1] * 7 + [2] * 5 + [-1] * 2
    groups = [f"g{i}" for i in range(len(labels))]
    for k in (3, 4, 5):
        folds = make_folds(groups, labels, 3, SplitParams(folds=k, seed=1))
        counts = np.array([f.info["class_counts"]["test"] for f in folds])
        for c, n_c in enumerate((13, 7, 5)):
            assert set(counts[:, c]) <= {n_c // k, -(-n_c // k)}, (k, c, counts[:, c])
        assert counts.sum(axis=0).tolist() == [13, 7, 5]
    # (b) 23 subjects with one row of each class: 4 or 5 subjects per fold, so 4 or 5 per class
    groups = [f"s{s}" for s in range(23) for _ in range(3)]
    labels = [c for _ in range(23) for c in range(3)]
    folds = make_folds(groups, labels, 3, SplitParams(folds=5, seed=0))
    counts = np.array([f.info["class_counts"]["test"] for f in folds])
    assert set(counts.ravel()) == {4, 5} and (counts == counts[:, :1]).all()


def test_same_seed_same_folds_other_seed_other_folds(workspace):
    subjects, labels = uneven(1)
    p = make_manifest(workspace / "manifest.parquet", subjects, labels)
    r1 = run_split(p, SplitParams(folds=4, seed=7))
    first = [read_manifest(o).df["split"].tolist() for o in r1.outputs]
    r2 = run_split(p, SplitParams(folds=4, seed=7))
    assert r2.hits == [True] * 4 and r2.outputs == r1.outputs
    f1 = make_folds(
        subjects, [-1 if y is None else y for y in labels], 3, SplitParams(folds=4, seed=7)
    )
    assert [f.split.tolist() for f in f1] == first  # the library function gives the same folds
    r3 = run_split(p, SplitParams(folds=4, seed=8))
    assert r3.outputs[0].name == "manifest.fold-0-of-4-s8.parquet" and r3.hits == [False] * 4
    assert [read_manifest(o).df["split"].tolist() for o in r3.outputs] != first
    # a tampered fold is rebuilt
    r1.outputs[2].write_bytes(b"x")
    r4 = run_split(p, SplitParams(folds=4, seed=7))
    assert (
        r4.hits == [True, True, False, True]
        and read_manifest(r1.outputs[2]).df["split"].tolist() == first[2]
    )


def test_a_manifest_edited_behind_its_metadata_misses_the_cache(workspace):
    """Issue 8.4 for split: the key covers the rows, not only the recorded key."""
    import pyarrow.parquet as pq

    subjects, labels = uneven(2)
    p = make_manifest(workspace / "manifest.parquet", subjects, labels)
    first = run_split(p, SplitParams(folds=3, seed=0))
    table = pq.read_table(p)
    pq.write_table(table.slice(0, table.num_rows - 9), p)  # rows dropped, metadata kept as it was
    assert read_meta(p)["key"] == "alignkey"
    again = run_split(p, SplitParams(folds=3, seed=0))
    assert again.hits == [False] * 3
    assert sum(len(read_manifest(o).df) for o in again.outputs) == 3 * (len(subjects) - 9)
    assert sum(len(read_manifest(o).df) for o in first.outputs) == 3 * (
        len(subjects) - 9
    )  # same files, rebuilt


def test_loso_one_fold_per_subject(workspace):
    subjects = ["a", "a", "b", "b", "b", "c", "d", "d"]
    labels = [0, 1, 2, 0, 1, 2, 0, 1]
    p = make_manifest(workspace / "m.parquet", subjects, labels)
    res = cli("split", p, "--loso", "--val-fraction", "0.34")
    assert res.exit_code == 0, res.output
    outs = [workspace / f"m.loso-{i}-of-4-s0.parquet" for i in range(4)]
    for i, (o, subj) in enumerate(zip(outs, "abcd", strict=True)):
        m = read_manifest(o)
        df = m.df
        assert set(df.loc[df["split"] == "test", "subject"]) == {subj}
        assert len(set(df.loc[df["split"] == "val", "subject"])) == 1  # 0.34 * 3 subjects -> 1
        assert m.meta["lineage"][-1]["params"] == {
            "folds": 4,
            "fold": i,
            "group_column": "subject",
            "seed": 0,
            "val_fraction": 0.34,
        }
        assert m.meta["split"]["loso"] is True


def test_out_folder_rebases_crop_paths(workspace):
    subjects, labels = uneven()
    p = make_manifest(workspace / "data" / "manifest.parquet", subjects, labels)
    r = run_split(p, SplitParams(folds=3, val_fraction=0.0), out=workspace / "folds")
    m = read_manifest(r.outputs[0])
    assert (
        r.outputs[0].parent == workspace / "folds"
        and m.df["path"].iloc[0] == f"../data/faces/{m.df['id'].iloc[0]}.jpg"
    )
    assert (m.root / m.df["path"].iloc[0]).resolve() == (
        p.parent / "faces" / f"{m.df['id'].iloc[0]}.jpg"
    ).resolve()
    assert not (m.df["split"] == "val").any()  # --val-fraction 0


def test_out_folder_keeps_absolute_crop_paths(workspace):
    subjects, labels = uneven()
    p = make_manifest(workspace / "data" / "manifest.parquet", subjects, labels)
    m0 = read_manifest(p)
    m0.df["path"] = [str((p.parent / q).resolve()) for q in m0.df["path"]]
    from fernoise.manifest import write_manifest

    write_manifest(m0.df, p, m0.meta)
    r = run_split(p, SplitParams(folds=3, val_fraction=0.0), out=workspace / "folds")
    m = read_manifest(r.outputs[0])
    assert m.df["path"].tolist() == m0.df.set_index("id").loc[m.df["id"], "path"].tolist()


def test_bad_inputs_are_one_line_and_write_nothing(workspace):
    subjects, labels = uneven()
    p = make_manifest(workspace / "manifest.parquet", subjects, labels)
    holes = make_manifest(workspace / "holes.parquet", [None] + subjects[1:], labels)
    few = make_manifest(workspace / "few.parquet", ["a", "a", "b"], [0, 1, 2])
    noisy = make_manifest(
        workspace / "noisy.parquet",
        subjects,
        labels,
        extra={"label_clean": pd.array([None if y is None else y for y in labels], dtype="Int64")},
    )
    before = sorted(q.name for q in workspace.rglob("*"))
    cases = [
        ([p, "--group-column", "person"], "--group-column", "no column 'person'"),
        ([holes], "--group-column", "1 rows have no subject"),
        (
            [few, "--folds", "3"],
            "--folds",
            "--folds 3 needs at least 3 groups; column 'subject' has 2",
        ),
        ([noisy], "MANIFEST", "split the clean manifest, then corrupt each fold"),
        ([p, "--folds", "1"], "--folds", "at least 2 folds"),
        ([p, "--loso", "--folds", "3"], "--folds", "drop --folds"),
        ([p, "--val-fraction", "1"], "--val-fraction", "[0, 1)"),
        ([workspace / "nope.parquet"], "MANIFEST", "does not exist"),
    ]
    for args, flag, text in cases:
        line = one_line_error(cli("split", *args), flag)
        assert text in line, line
    assert sorted(q.name for q in workspace.rglob("*")) == before
    with pytest.raises(FernoiseError):
        SplitParams(seed=-1)


def test_corrupt_then_train_input_of_a_fold_keeps_test_rows_clean(workspace):
    subjects, labels = uneven()
    p = make_manifest(workspace / "manifest.parquet", subjects, labels)
    fold = run_split(p, SplitParams(folds=5)).outputs[1]
    res = cli("corrupt", fold, "--kind", "sym", "--rate", "0.5")
    assert res.exit_code == 0, res.output
    m = read_manifest(fold.with_name(fold.stem + ".sym-r0.50-s0.parquet"))
    assert not m.df.loc[m.df["split"] != "train", "is_noisy"].any() and m.df["is_noisy"].sum() > 0
    assert [e["stage"] for e in read_meta(m.path)["lineage"]] == ["align", "split", "corrupt"]
