"""`fernoise corrupt`: exact per-class counts, partners, matrices, real annotator noise, caching.

Manifests are built with ``write_manifest`` in tmp_path (no images needed): a few thousand
rows with FER+-like class imbalance and train/val/test splits.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
from factories import C7, C8, TRAIN_COUNTS, cli, corrupt_df, corrupt_manifest
from typer.testing import CliRunner

from fernoise.cache import Workspace
from fernoise.cli.app import app
from fernoise.corrupt.kinds import CorruptParams, corrupt, exact_count, largest_remainder
from fernoise.labels import ASYM_PAIRS, CLASSES
from fernoise.manifest import read_manifest, read_meta


def by_id(df: pd.DataFrame) -> pd.DataFrame:
    return df.set_index("id").sort_index()


@pytest.fixture
def m8(workspace):
    return corrupt_manifest(workspace / "manifest.parquet")


# ----------------------------------------------------------------------------- rounding rules
def test_exact_count_rounds_half_up():
    assert [exact_count(0.3, n) for n in (5, 15, 25, 55, 805, 10, 0)] == [2, 5, 8, 17, 242, 3, 0]
    assert round(0.3 * 15) == 4  # Python's round is half-to-even: this is why we do not use it
    assert exact_count(0.0, 1000) == 0
    assert exact_count(0.999, 3) == 3


def test_largest_remainder_by_hand():
    assert largest_remainder(10, [0.25, 0.25, 0.5]).tolist() == [3, 2, 5]  # tie -> lower index
    assert largest_remainder(7, [0.5, 0.3, 0.2]).tolist() == [4, 2, 1]  # 3.5 2.1 1.4: .5 wins
    assert largest_remainder(100, [0.7, 0.1, 0.1, 0.1]).tolist() == [70, 10, 10, 10]
    assert largest_remainder(0, [0.5, 0.5]).tolist() == [0, 0]


# ----------------------------------------------------------------------------- sym
def test_sym_exact_counts_no_self_flip_and_eval_rows_unchanged(m8):
    res = cli("corrupt", m8, "--kind", "sym", "--rate", "0.3", "--seed", "0")
    assert res.exit_code == 0, res.output
    out_path = m8.with_name("manifest.sym-r0.30-s0.parquet")
    assert str(out_path.name) in res.output and out_path.is_file()
    inp, out = read_manifest(m8), read_manifest(out_path)
    df = out.df
    cols = list(inp.df.columns)
    at = cols.index("label_name") + 1
    assert list(df.columns) == cols[:at] + ["label_clean", "is_noisy"] + cols[at:]
    assert {"label", "label_clean", "is_noisy", "second"} <= set(df.columns)
    a, b = by_id(inp.df), by_id(df)
    assert b["label_clean"].equals(a["label"])  # the clean label is the input's label
    train = (b["split"] == "train") & b["label_clean"].notna()
    flipped = b["label"] != b["label_clean"]
    assert (flipped.fillna(False) == b["is_noisy"]).all()
    for c, n_c in enumerate(TRAIN_COUNTS):
        rows = train & (b["label_clean"] == c)
        assert int(rows.sum()) == n_c
        assert int((rows & b["is_noisy"]).sum()) == exact_count(0.3, n_c)
    assert int((b["is_noisy"] & ~train).sum()) == 0
    # no self flip: every flipped row carries another class; eval rows identical
    assert (b.loc[b["is_noisy"], "label"] != b.loc[b["is_noisy"], "label_clean"]).all()
    ev = b["split"] != "train"
    assert b.loc[ev, "label"].equals(a.loc[ev, "label"])
    assert b.loc[b["split"].eq("train") & a["label"].isna(), "label"].isna().all()
    # label_name follows the noisy label; the targets spread over several classes
    names = b["label"].map(lambda v: None if pd.isna(v) else CLASSES[int(v)])
    assert (names.fillna("-") == b["label_name"].fillna("-")).all()
    targets = b.loc[b["is_noisy"] & (b["label_clean"] == 0), "label"]
    assert set(targets.astype(int)) == set(range(1, 8))
    # metadata: realised matrix, rates, input key, lineage
    noise = out.meta["noise"]
    t = np.array(noise["transition"])
    assert t.shape == (8, 8) and t.sum(axis=1).tolist() == TRAIN_COUNTS
    assert (t.sum(axis=1) - np.diag(t)).tolist() == [exact_count(0.3, n) for n in TRAIN_COUNTS]
    assert (
        noise["input_key"] == "alignkey0"
        and noise["kind"] == "sym"
        and noise["rate"] == 0.3
        and noise["seed"] == 0
    )
    flips = sum(exact_count(0.3, n) for n in TRAIN_COUNTS)
    assert noise["rate_overall"] == pytest.approx(flips / sum(TRAIN_COUNTS))
    assert f"{flips / sum(TRAIN_COUNTS):.4f}" in res.output
    assert out.meta["stage"] == "corrupt" and out.meta["lineage"][-1]["stage"] == "corrupt"
    assert out.meta["classes"] == C8
    lock = Workspace().read()["stages"]["corrupt"]
    assert lock["output"] == out_path.name and lock["key"] == out.meta["key"]


def test_rerun_is_a_cache_hit_seed_changes_rows_tampering_rebuilds(m8):
    r1 = cli("corrupt", m8, "--kind", "sym", "--rate", "0.3")
    out_path = m8.with_name("manifest.sym-r0.30-s0.parquet")
    first = read_manifest(out_path).df
    mtime = out_path.stat().st_mtime_ns
    r2 = cli("corrupt", m8, "--kind", "sym", "--rate", "0.3", "--seed", "0")
    assert r1.exit_code == r2.exit_code == 0
    assert "cache hit" in r2.output and "cache hit" not in r1.output
    assert out_path.stat().st_mtime_ns == mtime
    assert "realised rate" in r2.output  # the hit still prints the matrix from the metadata
    r3 = cli("corrupt", m8, "--kind", "sym", "--rate", "0.3", "--seed", "1")
    assert r3.exit_code == 0 and "cache hit" not in r3.output
    other = read_manifest(m8.with_name("manifest.sym-r0.30-s1.parquet")).df
    a, b = by_id(first), by_id(other)
    assert (a["is_noisy"] != b["is_noisy"]).sum() > 100
    assert a["is_noisy"].sum() == b["is_noisy"].sum()  # same exact counts
    # a tampered output fails its stamp and is rebuilt identically
    out_path.write_bytes(b"garbage")
    r4 = cli("corrupt", m8, "--kind", "sym", "--rate", "0.3")
    assert r4.exit_code == 0 and "cache hit" not in r4.output
    assert by_id(read_manifest(out_path).df)[["label", "is_noisy"]].equals(a[["label", "is_noisy"]])


def test_row_order_does_not_matter(workspace):
    df = corrupt_df()
    p1 = corrupt_manifest(workspace / "a" / "manifest.parquet", df=df)
    shuffled = df.sample(frac=1.0, random_state=123).reset_index(drop=True)
    assert not shuffled["id"].equals(df["id"])
    p2 = corrupt_manifest(workspace / "b" / "manifest.parquet", df=shuffled)
    # already sorted by id (as align writes): the sort is skipped, the result is the same
    p3 = corrupt_manifest(
        workspace / "c" / "manifest.parquet", df=df.sort_values("id").reset_index(drop=True)
    )
    for p in (p1, p2, p3):
        assert cli("corrupt", p, "--kind", "sym", "--rate", "0.4", "--seed", "7").exit_code == 0
    a = by_id(read_manifest(p1.with_name("manifest.sym-r0.40-s7.parquet")).df)
    for p in (p2, p3):
        b = by_id(read_manifest(p.with_name("manifest.sym-r0.40-s7.parquet")).df)
        assert a["label"].equals(b["label"]) and a["is_noisy"].equals(b["is_noisy"])


# ----------------------------------------------------------------------------- asym
def test_asym_flips_go_to_the_partner_with_exact_counts(m8):
    res = cli("corrupt", m8, "--kind", "asym", "--rate", "0.3")
    assert res.exit_code == 0, res.output
    out = read_manifest(m8.with_name("manifest.asym-r0.30-s0.parquet"))
    b = out.df
    flipped = b[b["is_noisy"]]
    partner = flipped["label_clean"].map(lambda c: CLASSES.index(ASYM_PAIRS[CLASSES[int(c)]]))
    assert (flipped["label"].astype(int) == partner.astype(int)).all()
    counts = (
        flipped["label_clean"].astype(int).value_counts().reindex(range(8), fill_value=0).tolist()
    )
    assert counts == [exact_count(0.3, n) for n in TRAIN_COUNTS]
    assert out.meta["noise"]["partners"]["fear"] == "surprise"


@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_pairs_file_replaces_the_pairs(m8, fmt):
    pairs = {c: C8[(i + 1) % 8] for i, c in enumerate(C8)}  # a ring: neutral->happy, ...
    pairs["sad"] = "Angry"  # aliases are accepted
    f = m8.with_name(f"pairs.{fmt}")
    if fmt == "json":
        f.write_text(json.dumps(pairs))
    else:
        f.write_text("from,to\n" + "\n".join(f"{a},{b}" for a, b in pairs.items()) + "\n")
    res = cli("corrupt", m8, "--kind", "asym", "--rate", "0.2", "--pairs", f)
    assert res.exit_code == 0, res.output
    b = read_manifest(m8.with_name("manifest.asym-r0.20-s0.parquet")).df
    flipped = b[b["is_noisy"]]
    want = flipped["label_clean"].astype(int).map(lambda c: 6 if c == 2 else (c + 1) % 8)
    assert (flipped["label"].astype(int) == want).all()
    assert len(flipped) == sum(exact_count(0.2, n) for n in TRAIN_COUNTS)


# ----------------------------------------------------------------------------- matrix
def test_matrix_counts_are_the_largest_remainder_rounding(workspace):
    counts = [805, 615, 285, 280, 195, 15, 55]
    p = corrupt_manifest(workspace / "manifest.parquet", C7, counts=counts)
    m = np.eye(7) * 0.6
    m[0, 1:] = [0.1, 0.1, 0.05, 0.05, 0.05, 0.05]  # neutral spreads out
    m[0, 0] = 0.6
    m[5] = [0.2, 0, 0, 0, 0, 0.5, 0.3]  # disgust: 15 * (.2, .5, .3) = 3, 7.5, 4.5
    for i in (1, 2, 3, 4, 6):
        m[i, (i + 1) % 7] = 0.4
    f = workspace / "m.csv"
    f.write_text("\n".join(",".join(f"{x:g}" for x in row) for row in m) + "\n")
    res = cli("corrupt", p, "--kind", "matrix", "--matrix", f, "--seed", "3")
    assert res.exit_code == 0, res.output
    outs = list(workspace.glob("manifest.matrix-*-s3.parquet"))
    assert len(outs) == 1
    noise = read_manifest(outs[0]).meta["noise"]
    t = np.array(noise["transition"])
    # by hand: neutral 805 * (.6 .1 .1 .05 .05 .05 .05) = 483, 80.5, 80.5, 40.25 x4
    # floors sum to 483+80+80+40*4 = 803; the 2 leftover units go to the two .5 remainders
    assert t[0].tolist() == [483, 81, 81, 40, 40, 40, 40]
    # disgust: 3, 7.5, 4.5 -> floors 3, 7, 4 (14); one unit left, tie .5/.5 -> lower index (disgust)
    assert t[5].tolist() == [3, 0, 0, 0, 0, 8, 4]
    for c, n_c in enumerate(counts):
        assert t[c].tolist() == largest_remainder(n_c, m[c]).tolist()
    # the .npy form of the same matrix gives the same labels
    np.save(workspace / "m.npy", m)
    assert (
        cli(
            "corrupt",
            p,
            "--kind",
            "matrix",
            "--matrix",
            workspace / "m.npy",
            "--seed",
            "3",
            "--out",
            workspace / "npy.parquet",
        ).exit_code
        == 0
    )
    assert (
        read_manifest(workspace / "npy.parquet")
        .df["label"]
        .equals(read_manifest(outs[0]).df["label"])
    )


# ----------------------------------------------------------------------------- column
def test_column_kind_marks_exactly_the_disagreements(m8):
    res = cli("corrupt", m8, "--kind", "column", "--column", "second")
    assert res.exit_code == 0, res.output
    out = read_manifest(m8.with_name("manifest.column-second.parquet"))
    inp = by_id(read_manifest(m8).df)
    b = by_id(out.df)
    alias = {
        "Neutral": 0,
        "happiness": 1,
        "sad": 2,
        "surprised": 3,
        "fear": 4,
        "disgust": 5,
        "angry": 6,
        "contempt": 7,
    }
    second = inp["second"].map(alias)
    train = (inp["split"] == "train") & inp["label"].notna()
    both = train & second.notna()
    disagree = both & (second != inp["label"].astype(float))
    assert b["is_noisy"].equals(disagree.rename("is_noisy"))
    assert (b.loc[both, "label"].astype(int) == second[both].astype(int)).all()
    assert b.loc[train & second.isna(), "label"].isna().all()  # no second annotation: null label
    assert b["label_clean"].equals(inp["label"].rename("label_clean"))
    assert b.loc[~train, "label"].equals(inp.loc[~train, "label"])
    rate = disagree.sum() / both.sum()
    noise = out.meta["noise"]
    assert noise["rate_overall"] == pytest.approx(rate)
    assert noise["missing"] == int((train & second.isna()).sum())
    assert f"realised rate: {rate:.4f}" in res.output


def test_column_of_canonical_indices(workspace):
    df = corrupt_df()
    df["second"] = df["label"]  # identical annotation: no noise
    df.loc[df.index[:50], "second"] = (df["label"].iloc[:50].fillna(0) + 1) % 8
    p = corrupt_manifest(workspace / "manifest.parquet", df=df)
    assert cli("corrupt", p, "--kind", "column", "--column", "second").exit_code == 0
    b = read_manifest(p.with_name("manifest.column-second.parquet")).df
    train = (df["split"] == "train") & df["label"].notna()
    assert int(b["is_noisy"].sum()) == int(train.iloc[:50].sum())


# ----------------------------------------------------------------------------- noise on noise, default input
def test_noise_on_noise_needs_force_and_keeps_the_clean_label(m8):
    assert cli("corrupt", m8, "--kind", "sym", "--rate", "0.2").exit_code == 0
    noisy = m8.with_name("manifest.sym-r0.20-s0.parquet")
    res = cli("corrupt", noisy, "--kind", "asym", "--rate", "0.2")
    assert res.exit_code != 0
    assert "label_clean" in res.output and "--force" in res.output
    assert not list(m8.parent.glob("manifest.sym-r0.20-s0.asym*"))
    res = cli("corrupt", noisy, "--kind", "asym", "--rate", "0.2", "--force")
    assert res.exit_code == 0, res.output
    twice = by_id(read_manifest(m8.with_name("manifest.sym-r0.20-s0.asym-r0.20-s0.parquet")).df)
    clean = by_id(read_manifest(m8).df)["label"]
    assert twice["label_clean"].equals(clean.rename("label_clean"))
    want = (twice["label"] != clean).fillna(False).astype(bool)
    assert (twice["is_noisy"] == want).all() and want.sum() > 0


def test_without_manifest_uses_the_latest_aligned_one(m8):
    Workspace().record("align", key="alignkey0", output=m8, params={})
    res = cli("corrupt", "--kind", "asym", "--rate", "0.1")
    assert res.exit_code == 0, res.output
    assert m8.with_name("manifest.asym-r0.10-s0.parquet").is_file()


def test_library_function_is_pure_and_keyword_only():
    df = corrupt_df()
    before = df.copy()
    out, info = corrupt(df, classes=C8, params=CorruptParams("sym", rate=0.5, seed=2))
    assert df.equals(before)  # input untouched
    assert info["flipped"] == [exact_count(0.5, n) for n in TRAIN_COUNTS]
    with pytest.raises(TypeError):
        corrupt(df, C8, CorruptParams("sym", rate=0.5))  # type: ignore[misc]


# ----------------------------------------------------------------------------- bad input
def _bad_cases(ws, p8, p7):
    bad_rows = ws / "rows.csv"
    bad_rows.write_text(
        "0.5,0.4,0,0,0,0,0\n"
        + "\n".join(",".join("1" if j == i else "0" for j in range(7)) for i in range(1, 7))
        + "\n"
    )
    wrong_shape = ws / "eight.csv"
    wrong_shape.write_text(
        "\n".join(",".join("1" if j == i else "0" for j in range(8)) for i in range(8)) + "\n"
    )
    pairs = ws / "pairs.csv"
    pairs.write_text("neutral,banana\n")
    partial = ws / "partial.json"
    partial.write_text('{"neutral": "sad"}')  # no partner for the other classes
    good = ws / "good.npy"
    np.save(good, np.eye(7))
    folder = ws / "a_folder"
    folder.mkdir()
    df = corrupt_df()
    df["second"] = df["second"].replace({"contempt": "bored"})
    p_badcol = corrupt_manifest(ws / "badcol.parquet", df=df)
    df = corrupt_df()
    df = df[df["split"] != "train"]
    p_notrain = corrupt_manifest(ws / "notrain.parquet", df=df)
    return [
        (["--kind", "sym", "--rate", "1.0"], p8, "--rate"),
        (["--kind", "sym", "--rate", "-0.1"], p8, "--rate"),
        (["--kind", "sym"], p8, "--rate"),
        (["--kind", "matrix"], p7, "--matrix"),
        (["--kind", "matrix", "--matrix", wrong_shape], p7, "--matrix"),
        (["--kind", "matrix", "--matrix", bad_rows], p7, "--matrix"),
        (["--kind", "matrix", "--matrix", ws / "nope.csv"], p7, "--matrix"),
        (["--kind", "asym", "--rate", "0.3", "--pairs", pairs], p8, "--pairs"),
        (["--kind", "asym", "--rate", "0.3", "--pairs", partial], p8, "--pairs"),
        (["--kind", "matrix", "--matrix", good, "--rate", "0.3"], p7, "--rate"),
        (["--kind", "sym", "--rate", "0.3", "--out", p8], p8, "--out"),
        (["--kind", "column", "--column", "nope"], p8, "--column"),
        (["--kind", "column", "--column", "second"], p_badcol, "--column"),
        (["--kind", "sym", "--rate", "0.3"], p_notrain, "MANIFEST"),
        (["--kind", "matrix", "--matrix", folder], p7, "--matrix"),
        (["--kind", "asym", "--rate", "0.3", "--pairs", folder], p8, "--pairs"),
        (["--kind", "gaussian", "--rate", "0.3"], p8, "--kind"),
    ]


def test_every_bad_input_is_one_line_nonzero_and_writes_nothing(workspace):
    p8 = corrupt_manifest(workspace / "manifest.parquet")
    p7 = corrupt_manifest(workspace / "m7.parquet", C7, counts=TRAIN_COUNTS[:7])
    cases = _bad_cases(workspace, p8, p7)
    before = sorted(p.name for p in workspace.rglob("*"))
    for args, manifest, flag in cases:
        res = CliRunner().invoke(app, ["corrupt", str(manifest), *map(str, args)])
        lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
        assert res.exit_code != 0, (args, res.output)
        assert len(lines) == 1 and lines[0].startswith(f"error: {flag}"), (args, res.stderr)
        assert sorted(p.name for p in workspace.rglob("*")) == before, args
    assert "sym, asym, matrix, column" in res.stderr  # the unknown kind lists the valid ones
    assert not (workspace / "fernoise.lock").exists()


def test_a_folder_for_a_file_is_called_a_folder(workspace):
    p7 = corrupt_manifest(workspace / "m7.parquet", C7, counts=TRAIN_COUNTS[:7])
    res = CliRunner().invoke(
        app, ["corrupt", str(p7), "--kind", "matrix", "--matrix", str(workspace)]
    )
    assert res.exit_code == 2 and "is a folder" in res.stderr and "does not exist" not in res.stderr
    res = CliRunner().invoke(app, ["corrupt", str(workspace), "--kind", "sym", "--rate", "0.3"])
    assert res.exit_code == 2 and "is a folder without a manifest.parquet" in res.stderr


def test_a_manifest_edited_behind_its_metadata_misses_the_cache(m8):
    import pyarrow as pa
    import pyarrow.parquet as pq

    out_path = m8.with_name("manifest.sym-r0.30-s0.parquet")
    first = cli("corrupt", m8, "--kind", "sym", "--rate", "0.3")
    key1 = read_meta(out_path)["key"]
    assert (
        first.exit_code == 0
        and "cache hit" in cli("corrupt", m8, "--kind", "sym", "--rate", "0.3").output
    )
    table = pq.read_table(m8)
    meta = table.schema.metadata
    pq.write_table(
        table.slice(0, table.num_rows - 219).replace_schema_metadata(meta), m8
    )  # 219 rows dropped
    dropped = cli("corrupt", m8, "--kind", "sym", "--rate", "0.3")
    assert dropped.exit_code == 0 and "cache hit" not in dropped.output
    key2 = read_meta(out_path)["key"]
    assert key2 != key1 and len(read_manifest(out_path).df) == table.num_rows - 219
    zero = pa.array([0] * table.num_rows, pa.int64())
    relabelled = table.set_column(table.column_names.index("label"), "label", zero)
    pq.write_table(relabelled.replace_schema_metadata(meta), m8)  # every label set to 0
    again = cli("corrupt", m8, "--kind", "sym", "--rate", "0.3")
    assert again.exit_code == 0 and "cache hit" not in again.output
    assert read_meta(out_path)["key"] not in (key1, key2)
    assert (read_manifest(out_path).df["label_clean"].dropna() == 0).all()


def test_output_name_states_kind_rate_and_seed(m8):
    assert cli("corrupt", m8, "--kind", "sym", "--rate", "0.125", "--seed", "4").exit_code == 0
    assert m8.with_name("manifest.sym-r0.125-s4.parquet").is_file()
    meta = read_meta(m8.with_name("manifest.sym-r0.125-s4.parquet"))
    assert meta["params"] == {"kind": "sym", "rate": 0.125, "seed": 4}
    assert re.fullmatch(r"[0-9a-f]{64}", meta["key"])
