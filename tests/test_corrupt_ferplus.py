"""`fernoise corrupt` on the real FERPlus labels (skipped when ../shared/data is absent).

The manifest is built from ``ferplus/manifest.csv`` (train + valid rows, no images needed):
``label`` = the FER+ majority of the 10 votes (docs/data.md), ``fer2013_label`` = the original
FER2013 annotation kept as a label-file column, as align keeps extra label-file columns.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import FERPLUS, needs
from typer.testing import CliRunner

from fernoise.cli.app import app
from fernoise.corrupt.kinds import exact_count
from fernoise.formats.ferplus import majority
from fernoise.labels import ALIASES, CLASSES, FERPLUS_VOTE_COLUMNS
from fernoise.manifest import read_manifest, write_manifest

pytestmark = needs(FERPLUS / "manifest.csv")


@pytest.fixture(scope="module")
def ferplus_manifest(tmp_path_factory):
    raw = pd.read_csv(FERPLUS / "manifest.csv")
    votes = raw[list(FERPLUS_VOTE_COLUMNS)].to_numpy()
    maj = majority(votes)  # the FER+ majority rule of the ferplus label format
    df = pd.DataFrame(
        {
            "id": raw["path"],
            "src_path": raw["path"],
            "split": raw["split"].map({"train": "train", "valid": "val"}),
            "label": pd.array(np.where(maj >= 0, maj, 0), dtype="Int64"),
            "status": "ok",
            "fer2013_label": raw["fer2013_label"],
        }
    )
    df.loc[maj < 0, "label"] = pd.NA
    df.insert(4, "label_name", [None if v < 0 else CLASSES[v] for v in maj])
    path = tmp_path_factory.mktemp("ferplus") / "manifest.parquet"
    write_manifest(
        df,
        path,
        {
            "classes": list(CLASSES),
            "label_space": "basic8",
            "stage": "align",
            "key": "ferplus-test",
        },
    )
    return path


def _run(*args):
    res = CliRunner().invoke(app, ["corrupt", *map(str, args)])
    assert res.exit_code == 0, res.output
    return res


def test_column_kind_on_real_ferplus_is_the_annotator_disagreement(ferplus_manifest, workspace):
    res = _run(ferplus_manifest, "--kind", "column", "--column", "fer2013_label")
    out = read_manifest(ferplus_manifest.with_name("manifest.column-fer2013_label.parquet"))
    df = out.df
    raw = pd.read_csv(FERPLUS / "manifest.csv").set_index("path").loc[df["id"]]
    second = (
        raw["fer2013_label"]
        .map(lambda s: CLASSES.index(ALIASES[s]) if isinstance(s, str) else np.nan)
        .to_numpy()
    )
    train = (df["split"] == "train").to_numpy() & df["label_clean"].notna().to_numpy()
    both = train & ~np.isnan(second)
    clean = df["label_clean"].to_numpy(dtype=float, na_value=np.nan)
    disagree = both & (second != clean)
    assert (df["is_noisy"].to_numpy() == disagree).all()
    rate = disagree.sum() / both.sum()
    assert 0.25 < rate < 0.40  # the README: about a third of the images disagree
    assert out.meta["noise"]["rate_overall"] == pytest.approx(rate)
    assert f"realised rate: {rate:.4f}" in res.output
    # val rows keep the FER+ majority
    val = (df["split"] == "val").to_numpy()
    assert df.loc[val, "label"].equals(df.loc[val, "label_clean"].rename("label"))
    print(
        f"\nFERPlus column kind: {disagree.sum()} of {both.sum()} training rows disagree ({rate:.4f})"
    )


@pytest.mark.parametrize("kind", ["sym", "asym"])
def test_sym_and_asym_on_real_ferplus_are_exact(ferplus_manifest, workspace, kind):
    _run(ferplus_manifest, "--kind", kind, "--rate", "0.3", "--seed", "0")
    df = read_manifest(ferplus_manifest.with_name(f"manifest.{kind}-r0.30-s0.parquet")).df
    train = (df["split"] == "train") & df["label_clean"].notna()
    n = df.loc[train, "label_clean"].astype(int).value_counts().reindex(range(8), fill_value=0)
    flipped = (
        df.loc[train & df["is_noisy"], "label_clean"]
        .astype(int)
        .value_counts()
        .reindex(range(8), fill_value=0)
    )
    assert flipped.tolist() == [exact_count(0.3, k) for k in n]
    assert not df.loc[df["is_noisy"], "label"].eq(df.loc[df["is_noisy"], "label_clean"]).any()
    print(f"\nFERPlus {kind} 0.3: n_c={n.tolist()} flipped={flipped.tolist()}")
