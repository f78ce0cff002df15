"""`fernoise clean`: an audit folder (built by tests.factories.fake_audit to the audit's
contract) -> a new manifest with the flagged rows dropped or relabelled; cached, recorded in
the workspace lock, taken by the next stage; bad input one line, nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from conftest import FERPLUS
from factories import cli, fake_audit, make_aligned, make_manifest, tiny_train

from fernoise.audit.clean import CleanParams, select
from fernoise.cache import Workspace, stamp_path
from fernoise.errors import FernoiseError
from fernoise.manifest import find_stage, read_manifest, read_meta


def one_line_error(res, flag: str) -> str:
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.exit_code == 2, res.output
    assert len(lines) == 1 and lines[0].startswith(f"error: {flag}"), res.stderr
    return lines[0]


def listing(root: Path) -> list[tuple[str, int]]:
    """Every file under ``root`` with its mtime (ns): what a refused command must not change."""
    return sorted((str(p.relative_to(root)), p.stat().st_mtime_ns) for p in root.rglob("*"))


def audit_frame(folder: Path) -> pd.DataFrame:
    return pd.read_parquet(folder / "audit.parquet")


# ----------------------------------------------------------------------------- selection
def test_select_issue_rows_or_below_quality_capped_lowest_first_ties_by_rank():
    frame = pd.DataFrame(
        {
            "id": list("abcdefghij"),
            "quality": [0.05, 0.2, 0.2, 0.5, 0.6, 0.7, 0.8, 0.1, 0.9, 0.95],
            "is_issue": [True, True, True, False, False, False, False, True, False, False],
            "rank": [1, 4, 3, 5, 6, 7, 8, 2, 9, 10],
        }
    )
    assert select(frame, CleanParams("drop"))["id"].tolist() == ["a", "h", "c", "b"]
    # floor(0.3 * 10) = 3: the tie b/c (quality 0.2) goes to c, rank 3
    assert select(frame, CleanParams("drop", max_fraction=0.3))["id"].tolist() == ["a", "h", "c"]
    got = select(frame, CleanParams("relabel", min_quality=0.65))["id"].tolist()
    assert got == ["a", "h", "c", "b", "d", "e"]  # quality < 0.65, issue or not
    assert select(frame, CleanParams("drop", min_quality=0.0)).empty
    assert len(select(frame, CleanParams("drop", min_quality=1.0))) == 10
    assert len(select(frame, CleanParams("drop", max_fraction=0.19))) == 1  # floor(1.9)
    big = pd.DataFrame(
        {"id": range(100), "quality": np.linspace(0, 1, 100), "is_issue": True, "rank": range(100)}
    )
    assert len(select(big, CleanParams("drop", max_fraction=0.29))) == 29  # not 28.999...


def test_apply_relabels_in_place_and_counts_unchanged_suggestions():
    import pyarrow as pa

    from fernoise.audit.clean import apply

    table = pa.table(
        {
            "id": ["a", "b", "c", "d"],
            "label": pa.array([0, 1, 2, None], type=pa.int64()),
            "label_name": ["neutral", "happy", "sad", None],
            "label_clean": pa.array([1, 1, 2, None], type=pa.int64()),
            "is_noisy": [True, False, False, None],
            "extra": [1.5, 2.5, 3.5, 4.5],
        }
    )
    chosen = pd.DataFrame({"id": ["a", "c"], "given": [0, 2], "suggested": [1, 2]})
    out, info = apply(table, chosen, action="relabel", classes=["neutral", "happy", "sad"])
    assert out.column_names == [*table.column_names, "label_given"]
    assert out.column("label").to_pylist() == [1, 1, 2, None]
    assert out.column("label_name").to_pylist() == ["happy", "happy", "sad", None]
    assert out.column("is_noisy").to_pylist() == [False, False, False, None]
    assert out.column("label_given").to_pylist() == [0, 1, 2, None]
    assert out.column("extra").equals(table.column("extra"))
    assert info["counts"]["neutral"] == {
        "acted": 1,
        "relabelled_from": 1,
        "relabelled_to": 0,
        "unchanged": 0,
    }
    assert info["counts"]["sad"]["unchanged"] == 1 and info["counts"]["happy"]["relabelled_to"] == 1
    assert info["pairs"] == [{"given": "neutral", "suggested": "happy", "count": 1}]
    dropped, info = apply(table, chosen, action="drop", classes=["neutral", "happy", "sad"])
    assert dropped.column("id").to_pylist() == ["b", "d"] and dropped.schema == table.schema
    assert [v["dropped"] for v in info["counts"].values()] == [1, 0, 1]


# ----------------------------------------------------------------------------- drop
def test_drop_removes_exactly_the_issue_rows_and_hits_the_cache(workspace):
    src = make_manifest(workspace / "data", noise=0.3)
    audit = fake_audit(workspace, src, workspace=workspace)
    frame = audit_frame(audit)
    issues = set(frame.loc[frame["is_issue"], "id"])
    assert 5 < len(issues) < len(frame)

    res = cli("clean", "--drop")  # no AUDIT: the lock's latest audit
    assert res.exit_code == 0, res.output
    key = Workspace(workspace).read()["stages"]["clean"]["key"]
    out = src.with_name(f"manifest.clean-drop-{key[:8]}.parquet")
    assert res.output.strip().splitlines()[-1] == f"wrote: {out}"
    assert f"{len(issues)} of {len(frame)} audited rows acted on" in res.output

    before, after = pq.read_table(src), pq.read_table(out)
    keep = [i not in issues for i in before.column("id").to_pylist()]
    assert after.column_names == before.column_names
    assert after.equals(before.filter(keep))  # every other row and column as read

    meta = read_meta(out)
    parent = read_meta(src)
    assert meta["stage"] == "clean" and meta["key"] == key
    assert meta["classes"] == parent["classes"]
    assert [e["stage"] for e in meta["lineage"]] == ["align", "corrupt", "clean"]
    assert meta["params"] == {
        "action": "drop",
        "min_quality": None,
        "max_fraction": None,
        "audit": json.loads((audit / "audit.json").read_text())["key"],
    }
    given = frame[frame["is_issue"]]["given_name"].value_counts()
    counts = meta["clean"]["counts"]
    assert {c: v["dropped"] for c, v in counts.items() if v["dropped"]} == given.to_dict()
    assert meta["clean"]["rows_in"] - meta["clean"]["rows_out"] == len(issues)
    assert meta["clean"]["audit"] == str(audit.resolve())

    stat = out.stat()
    again = cli("clean", audit, "--drop")
    assert again.output.strip().splitlines()[-1] == f"cache hit: {out}", again.output
    assert (out.stat().st_ino, out.stat().st_mtime_ns) == (stat.st_ino, stat.st_mtime_ns)

    # a bare `fernoise corrupt` now takes the cleaned manifest (--force: it carries noise)
    res = cli("corrupt", "--kind", "sym", "--rate", "0.1", "--force")
    assert res.exit_code == 0, res.output
    assert f"wrote: {out.with_name(out.stem + '.sym-r0.10-s0.parquet')}" in res.output


def test_other_parameters_miss_the_cache_and_cap_the_rows(workspace):
    src = make_manifest(workspace / "data", noise=0.3)
    audit = fake_audit(workspace, src)
    frame = audit_frame(audit)
    res = cli("clean", audit / "audit.json", "--drop", "--min-quality", "0.5")
    assert res.exit_code == 0, res.output
    low = frame.loc[frame["quality"] < 0.5, "id"]
    out = Path(res.output.strip().splitlines()[-1].removeprefix("wrote: "))
    assert read_manifest(out).df["id"].isin(low).sum() == 0
    assert read_meta(out)["clean"]["rows_out"] == len(read_manifest(src).df) - len(low)

    res = cli("clean", audit, "--drop", "--min-quality", "0.5", "--max-fraction", "0.1")
    assert res.exit_code == 0, res.output
    capped = Path(res.output.strip().splitlines()[-1].removeprefix("wrote: "))
    assert capped != out
    cap = len(frame) * 10 // 100
    lowest = frame.sort_values(["quality", "rank"])["id"].iloc[:cap]
    gone = set(read_manifest(src).df["id"]) - set(read_manifest(capped).df["id"])
    assert gone == set(lowest) and len(gone) == cap < len(low)

    other = fake_audit(workspace, src, issues=2, tag="another audit")
    res = cli("clean", other, "--drop", "--min-quality", "0.5")
    assert res.exit_code == 0, res.output
    again = Path(res.output.strip().splitlines()[-1].removeprefix("wrote: "))
    assert (
        again not in (out, capped)
        and read_meta(again)["params"]["audit"] != read_meta(out)["params"]["audit"]
    )


# ----------------------------------------------------------------------------- relabel
def test_relabel_takes_the_suggestion_keeps_the_given_label_and_rebases_paths(workspace):
    from fernoise.train.plan import plan

    src = make_manifest(workspace / "data", noise=0.3)
    audit = fake_audit(workspace, src)  # suggested = label_clean; issues = the noisy rows
    frame = audit_frame(audit)
    dest = workspace / "elsewhere" / "cleaned.parquet"
    dest.parent.mkdir()
    res = cli("clean", audit, "--relabel", "--out", dest)
    assert res.exit_code == 0, res.output
    assert res.output.strip().splitlines()[-1] == f"wrote: {dest}"

    before, after = read_manifest(src).df, read_manifest(dest).df
    assert before["is_noisy"].sum() == frame["is_issue"].sum() > 0
    assert after["is_noisy"].sum() == 0  # every noisy row got its clean label back
    assert (after["label"] == after["label_clean"]).all()
    assert after["label_given"].tolist() == before["label"].astype(int).tolist()
    assert after["id"].tolist() == before["id"].tolist()
    untouched = ~after["id"].isin(frame.loc[frame["is_issue"], "id"])
    assert (after.loc[untouched, "label"] == before.loc[untouched, "label"]).all()
    assert after["path"].iloc[0] == "../data/faces/0000.png"
    for col in ("src_path", "split", "status", "label_clean", "n_faces"):
        assert after[col].tolist() == before[col].tolist(), col

    counts = read_meta(dest)["clean"]
    moved = frame[frame["is_issue"]]
    assert sum(p["count"] for p in counts["pairs"]) == counts["changed"] == len(moved)
    to = moved["suggested_name"].value_counts().to_dict()
    assert {c: v["relabelled_to"] for c, v in counts["counts"].items() if v["relabelled_to"]} == to

    # train's plan resolves every crop of the re-based manifest to the original files
    p = plan(dest, tiny_train(method="ce"), runs_dir=workspace / "runs")
    resolved = dict(zip(p.rows["id"], p.paths, strict=True))
    assert resolved and all(
        Path(v) == (src.parent / k).resolve() and Path(v).is_file() for k, v in resolved.items()
    )
    assert not (workspace / "runs").exists()


@pytest.mark.slow
def test_a_bare_train_takes_the_cleaned_manifest(workspace):
    src = make_aligned(workspace / "data", n=42)
    audit = fake_audit(workspace, src, issues=3, workspace=workspace)
    res = cli("clean", "--relabel")
    assert res.exit_code == 0, res.output
    out = Path(res.output.strip().splitlines()[-1].removeprefix("wrote: "))
    assert "label_given" in read_manifest(out).df.columns and audit.is_dir()
    args = ["--epochs", "1", "--warmup", "0", "--batch-size", "16", "--image-size", "32"]
    res = cli("train", *args, "--workers", "0", "--precision", "fp32", "--device", "cpu")
    assert res.exit_code == 0, res.output
    run = Path(res.output.strip().splitlines()[-1].removeprefix("wrote: "))
    config = json.loads((run / "config.json").read_text())
    assert Path(config["manifest"]).resolve() == out.resolve()
    assert config["manifest_key"] == read_meta(out)["key"]


def test_an_audit_with_no_issue_rows_writes_the_rows_unchanged(workspace):
    src = make_manifest(workspace / "data", noise=0.3)
    audit = fake_audit(workspace, src, issues=[])
    res = cli("clean", audit, "--relabel")
    assert res.exit_code == 0, res.output
    assert "0 of " in res.output and "audited rows acted on; 0 relabelled" in res.output
    out = Path(res.output.strip().splitlines()[-1].removeprefix("wrote: "))
    before, after = read_manifest(src).df, read_manifest(out).df
    assert after.drop(columns="label_given").equals(before)
    assert find_stage(read_meta(out), "clean")["params"]["action"] == "relabel"


@pytest.mark.shared_data
@pytest.mark.skipif(not FERPLUS.exists(), reason=f"real data not present: {FERPLUS}")
def test_real_ferplus_crops_dropped_rows_still_resolve(ferplus_manifest, workspace):
    from fernoise.audit.clean import run_clean
    from fernoise.train.plan import plan

    audit = fake_audit(workspace, ferplus_manifest, issues=12)
    flagged = set(audit_frame(audit).query("is_issue")["id"])
    (workspace / "out").mkdir()  # an existing folder: the default name inside it
    res = run_clean(audit, CleanParams("drop"), out=workspace / "out")
    assert res.output.parent == workspace / "out" and not res.hit
    df = read_manifest(res.output).df
    assert len(flagged) == 12 and not df["id"].isin(flagged).any()
    assert len(df) == len(read_manifest(ferplus_manifest).df) - 12
    p = plan(res.output, tiny_train(method="ce"), runs_dir=workspace / "runs")
    assert all(Path(x).is_file() for x in p.paths)
    assert run_clean(audit, CleanParams("drop"), out=workspace / "out").hit


# ----------------------------------------------------------------------------- bad input
def test_bad_input_is_one_line_and_writes_nothing(workspace):
    src = make_manifest(workspace / "data", noise=0.3)
    audit = fake_audit(workspace, src)
    cases = [
        ([audit], "--drop", "choose what to do"),
        ([audit, "--drop", "--relabel"], "--drop", "not both"),
        ([audit, "--drop", "--min-quality", "1.5"], "--min-quality", "[0, 1]"),
        ([audit, "--drop", "--min-quality", "-0.1"], "--min-quality", "[0, 1]"),
        ([audit, "--drop", "--max-fraction", "0"], "--max-fraction", "(0, 1]"),
        ([audit, "--drop", "--max-fraction", "1.5"], "--max-fraction", "(0, 1]"),
        ([audit, "--drop", "--out", src], "--out", "never modified"),
        ([workspace / "data", "--drop"], "AUDIT", "is not an audit folder"),
        ([src, "--drop"], "AUDIT", "is not an audit folder"),
        ([workspace / "nope", "--drop"], "AUDIT", "does not exist"),
        (["--drop"], "AUDIT", "records none"),  # no audit in the lock
    ]
    before = listing(workspace)
    for args, flag, text in cases:
        line = one_line_error(cli("clean", *args), flag)
        assert text in line, (args, line)
    assert listing(workspace) == before
    with pytest.raises(FernoiseError, match="action"):
        CleanParams("fix")


def _edit_quality(folder: Path) -> None:
    frame = audit_frame(folder)
    frame.loc[0, "quality"] = 0.99
    frame.to_parquet(folder / "audit.parquet", index=False)


def _edit_json(folder: Path) -> None:
    summary = json.loads((folder / "audit.json").read_text())
    summary["rows"] += 1
    (folder / "audit.json").write_text(json.dumps(summary))


def _break_json(folder: Path) -> None:
    (folder / "audit.json").write_text("{")


def _no_stamp(folder: Path) -> None:
    stamp_path(folder / "audit.parquet").unlink()


def _no_column(folder: Path) -> None:
    """audit.parquet without `quality`, re-stamped: the stamp is intact, the columns are not."""
    from fernoise.cache import read_json, write_stamp

    stamp = read_json(stamp_path(folder / "audit.parquet"))
    audit_frame(folder).drop(columns="quality").to_parquet(folder / "audit.parquet")
    outs = [folder / n for n in stamp["outputs"]]
    write_stamp(folder / "audit.parquet", stamp["key"], outs, stage="audit")


@pytest.mark.parametrize(
    ("edit", "text"),
    [
        (_edit_quality, "audit.parquet was changed after the audit wrote it"),
        (_edit_json, "audit.json was changed after the audit wrote it"),
        (_break_json, "audit.json is not valid JSON"),
        (_no_stamp, "has no stamp of its audit"),
        (_no_column, "lacks columns or has nulls or wrong types in ['quality (number)']"),
    ],
)
def test_an_edited_audit_is_refused(workspace, edit, text):
    src = make_manifest(workspace / "data", noise=0.3)
    audit = fake_audit(workspace, src)
    edit(audit)
    before = listing(workspace)
    line = one_line_error(cli("clean", audit, "--drop"), "AUDIT")
    assert text in line, line
    assert listing(workspace) == before


def test_a_manifest_changed_since_the_audit_is_refused(workspace):
    src = make_manifest(workspace / "data", noise=0.3)
    audit = fake_audit(workspace, src)
    m = read_manifest(src)
    m.df.iloc[:-1].to_parquet(src)  # another tool drops a row, keeping the file name
    before = listing(workspace)
    line = one_line_error(cli("clean", audit, "--relabel"), "AUDIT")
    assert "changed since the audit" in line and "re-run `fernoise audit" in line, line
    assert listing(workspace) == before
    src.unlink()
    line = one_line_error(cli("clean", audit, "--relabel"), "AUDIT")
    assert "no longer exists" in line, line
