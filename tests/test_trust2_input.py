"""Issue 19, the input side: align never deletes a user's file and never re-ingests its own
output (item 1); FIFOs, links to devices never hang align, train, eval or predict (item 2);
names that are not UTF-8, long column names and cells a spreadsheet would run (item 8).

Commands that hung on main run in a subprocess with a timeout, so this file never hangs."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from factories import (
    TINY_ARGS,
    align_cli,
    cli,
    corrupt_df,
    corrupt_manifest,
    fake_run,
    make_manifest,
    predict_run,
    raw_tree,
)
from PIL import Image

TIMEOUT = 120


def fernoise(*args, cwd: Path, timeout: float = TIMEOUT) -> subprocess.CompletedProcess:
    """``fernoise ARGS`` in a subprocess run in ``cwd`` (also its workspace); a hang fails the test."""
    env = {**os.environ, "FERNOISE_WORKSPACE": str(cwd), "OMP_NUM_THREADS": "1"}
    try:
        return subprocess.run(
            [sys.executable, "-m", "fernoise.cli.app", *map(str, args)],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"fernoise {' '.join(map(str, args))} did not finish in {timeout} s (hangs)")


def aged(path: Path, text: str = "mine") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    old = time.time() - 3600
    os.utime(path, (old, old))
    return path


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def special_files(folder: Path) -> None:
    """A FIFO named a.png and a link z.jpg to /dev/zero in ``folder``."""
    os.mkfifo(folder / "a.png")
    os.symlink("/dev/zero", folder / "z.jpg")


# ----------------------------------------------------------------------------- item 1
def test_align_into_the_project_folder_removes_no_users_tmp_file(tmp_path, workspace):
    """`fernoise align raw .`: hidden *.tmp files of the user, an hour old, anywhere under OUT
    (OUT itself, docs/, raw/) survive two runs (the second a cache hit); a dead align's own
    leftover temporary of the manifest is removed."""
    from fernoise.cache import HOST_TAG

    project = tmp_path / "project"
    raw = raw_tree(project / "raw")
    mine = [
        aged(project / ".draft.tmp"),
        aged(project / "docs" / ".thesis.tmp"),
        aged(raw / ".labels.tmp"),
        aged(project / "docs" / f".notes.md.{HOST_TAG}-{dead_pid()}.abcd1234.tmp"),
    ]
    for _ in range(2):
        res = align_cli(str(raw), str(project), "--mode", "whole", "--size", "32")
        assert res.exit_code == 0, res.output
        assert all(p.is_file() for p in mine), [p.name for p in mine if not p.exists()]
    assert "cache hit" in res.output
    leftover = project / f".manifest.parquet.{HOST_TAG}-{dead_pid()}.abcd1234.tmp"
    leftover.write_bytes(b"half")
    assert align_cli(str(raw), str(project), "--mode", "whole", "--size", "32").exit_code == 0
    assert not leftover.exists() and all(p.is_file() for p in mine)


def test_out_equal_to_raw_is_a_cache_hit_and_never_reingests_its_crops(tmp_path, workspace):
    """OUT = RAW: the second and third runs are hits with the same rows (main: 3 -> 6 -> 9)."""
    from fernoise.manifest import read_manifest

    raw = raw_tree(tmp_path / "raw", n=3)
    (raw / "labels.csv").write_text(
        "path,label\n" + "".join(f"happy/img{i}.png,happy\n" for i in range(3))
    )
    args = (
        str(raw),
        str(raw),
        "--mode",
        "whole",
        "--size",
        "32",
        "--labels",
        str(raw / "labels.csv"),
        "--format",
        "csv",
    )
    rows = []
    for _ in range(3):
        res = align_cli(*args)
        assert res.exit_code == 0, res.output
        rows.append(sorted(read_manifest(raw / "manifest.parquet").df["src_path"]))
    assert rows == [["happy/img0.png", "happy/img1.png", "happy/img2.png"]] * 3
    assert "cache hit" in res.output


# ----------------------------------------------------------------------------- item 2
def test_align_gives_fifo_and_device_link_a_status_row_without_hanging(tmp_path):
    from fernoise.manifest import read_manifest

    raw = raw_tree(tmp_path / "raw", n=1)
    special_files(raw)
    r = fernoise(
        "align", raw, tmp_path / "out", "--mode", "whole", "--size", "32", cwd=tmp_path, timeout=60
    )
    assert r.returncode == 0, r.stderr
    df = read_manifest(tmp_path / "out" / "manifest.parquet").df.set_index("src_path")
    assert df.loc["happy/img0.png", "status"] == "whole"
    assert df.loc["a.png", "status"] == "unreadable" and "FIFO" in df.loc["a.png", "reason"]
    assert (
        df.loc["z.jpg", "status"] == "unreadable"
        and "character device" in df.loc["z.jpg", "reason"]
    )


@pytest.mark.slow
def test_train_and_eval_count_fifo_and_dev_zero_crops_as_skipped(tmp_path):
    """Crops that are a FIFO, a link to /dev/zero or the path /dev/zero itself: counted skips
    in train (skipped_crops) and eval (skipped.count), never a hang or a read without end."""
    data = make_manifest(tmp_path / "d", n=20)  # every 5th row (0, 5, 10, 15) is a test row
    faces = tmp_path / "d" / "faces"
    for name in ("0001.png", "0005.png"):
        (faces / name).unlink()
        os.mkfifo(faces / name)
    (faces / "0010.png").unlink()
    os.symlink("/dev/zero", faces / "0010.png")
    df = pd.read_parquet(data)
    df.loc[df["path"] == "faces/0002.png", "path"] = "/dev/zero"
    from fernoise.manifest import read_manifest, write_manifest

    write_manifest(df, data, read_manifest(data).meta)
    r = fernoise("train", data, *TINY_ARGS, cwd=tmp_path)
    assert r.returncode == 0, r.stderr + r.stdout
    run = Path(r.stdout.strip().splitlines()[-1].split(": ", 1)[1])
    assert json.loads((run / "config.json").read_text())["skipped_crops"] == 4
    r = fernoise("eval", run, "--device", "cpu", cwd=tmp_path)
    assert r.returncode == 2 and "2 test crops are missing or not regular files" in r.stderr, (
        r.stderr
    )
    r = fernoise("eval", run, "--device", "cpu", "--force", cwd=tmp_path)
    assert r.returncode == 0, r.stderr + r.stdout
    assert (
        json.loads((run / "eval.json").read_text())["skipped"]["count"] == 2
    )  # 0005 (FIFO), 0010 (link)


@pytest.mark.slow
def test_predict_reports_fifo_and_device_link_as_align_does(tmp_path):
    run = predict_run(tmp_path / "run")
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.new("RGB", (64, 64), (200, 200, 200)).save(photos / "g.png")
    special_files(photos)
    r = fernoise(
        "predict",
        photos,
        photos / "a.png",
        "--run",
        run,
        "--out",
        tmp_path / "p.csv",
        "--device",
        "cpu",
        cwd=tmp_path,
        timeout=90,
    )
    assert r.returncode == 0, r.stderr
    with open(tmp_path / "p.csv", newline="") as fh:
        rows = sorted((Path(x["file"]).name, x["status"], x["reason"]) for x in csv.DictReader(fh))
    assert [(n, s) for n, s, _ in rows] == [
        ("a.png", "unreadable"),
        ("a.png", "unreadable"),
        ("g.png", "no_face"),
        ("z.jpg", "unreadable"),
    ]  # the folder's three, and a.png named
    assert "FIFO" in rows[0][2] and "FIFO" in rows[1][2] and "character device" in rows[3][2]


# ----------------------------------------------------------------------------- item 8
def test_align_names_a_non_utf8_file_with_escapes(tmp_path, workspace):
    from fernoise.manifest import read_manifest

    raw = raw_tree(tmp_path / "raw", n=1)
    Image.new("RGB", (40, 40), (10, 20, 30)).save(os.fsencode(raw) + b"/\xff\xfe.png")
    out = tmp_path / "out"
    res = align_cli(str(raw), str(out), "--mode", "whole", "--size", "32")
    assert res.exit_code == 0, res.output
    df = read_manifest(out / "manifest.parquet").df.set_index("src_path")
    row = df.loc["\\xff\\xfe.png"]
    assert row["status"] == "whole" and (out / row["path"]).is_file()
    assert "cache hit" in align_cli(str(raw), str(out), "--mode", "whole", "--size", "32").output


@pytest.mark.slow
def test_predict_csv_escapes_names_and_formula_cells(tmp_path):
    """A non-UTF-8 name is written with escapes; cells a spreadsheet would run get a quote."""
    run = predict_run(tmp_path / "run")
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in (b"\xff\xfe.png", b"=1+2.png", b"@x.png", b"-3.png", b"plain.png"):
        Image.new("RGB", (48, 48), (200, 200, 200)).save(os.fsencode(photos) + b"/" + name)
    r = fernoise(
        "predict",
        ".",
        "--run",
        run,
        "--out",
        tmp_path / "p.csv",
        "--device",
        "cpu",
        cwd=photos,
        timeout=90,
    )
    assert r.returncode == 0, r.stderr
    with open(tmp_path / "p.csv", newline="", encoding="utf-8") as fh:
        files = sorted(x["file"] for x in csv.DictReader(fh))
    assert files == sorted(["\\xff\\xfe.png", "'=1+2.png", "'@x.png", "'-3.png", "plain.png"])


def test_csv_cells_escape_formulas_but_keep_numbers():
    from fernoise import csvsafe

    assert [
        csvsafe.cell(v) for v in ("=SUM(A1)", "+1+cmd", "-2+3", "@A1", "\tx", "\rx", "a=b")
    ] == ["'=SUM(A1)", "'+1+cmd", "'-2+3", "'@A1", "'\tx", "'\rx", "a=b"]
    assert [csvsafe.cell(v) for v in (-0.5, -3, "-0.5", "+1e-3", "-12", None)] == [
        -0.5,
        -3,
        "-0.5",
        "+1e-3",
        "-12",
        None,
    ]
    import io

    buf = io.StringIO()  # the sweep's table.csv writer
    w = csvsafe.DictWriter(buf, fieldnames=["options", "top1"], lineterminator="\n")
    w.writeheader()
    w.writerow({"options": "--lr=1", "top1": -0.25})
    assert buf.getvalue() == "options,top1\n'--lr=1,-0.25\n"


def test_report_csv_escapes_a_formula_cell_and_keeps_numbers(tmp_path):
    """A run whose method name is a formula: report's CSV quotes it; the accuracies stay numbers."""
    from fernoise.report import report

    evil = '=HYPERLINK("http://x")'
    fake_run(tmp_path / "r1", evil, None, [0.5, 0.625])
    rows = list(csv.reader(report([tmp_path / "r1"], fmt="csv").splitlines()))
    cells = [c for r in rows[1:] for c in r]
    assert "'" + evil in cells and evil not in cells
    assert "0.625000" in cells and "0.562500" in cells  # max, last-5 mean: numbers, unquoted


def test_corrupt_with_a_300_character_column_name(workspace):
    from fernoise.manifest import read_manifest

    long_a, long_b = "a" * 300, "a" * 299 + "b"
    df = corrupt_df(n_eval=20)
    df[long_a] = df["second"]
    df[long_b] = df["second"]
    m = corrupt_manifest(workspace / "manifest.parquet", df=df)
    names = []
    for col in (long_a, long_b):
        res = cli("corrupt", m, "--kind", "column", "--column", col)
        assert res.exit_code == 0, res.output
        made = sorted(
            p.name for p in workspace.glob("manifest.column-*.parquet") if p.name not in names
        )
        assert len(made) == 1 and len(made[0].encode()) <= 100
        names.append(made[0])
        assert read_manifest(workspace / made[0]).df["is_noisy"].any()
    assert names[0] != names[1]  # cut to the same head, told apart by the hash
    assert "cache hit" in cli("corrupt", m, "--kind", "column", "--column", long_a).output
