"""align's failures are one line and a non-zero exit, and leave nothing half-written: OUT a
file, a folder given as --labels, a read-only destination (also the fernoise.lock write after
the work is done), a full disk. The read-only and full-disk cases go through the shared
mechanism of every command (fernoise.cli.common.handle_errors + fernoise.errors)."""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

import pandas as pd
import pytest
from factories import align_cli, make_image, raw_tree
from typer.testing import CliRunner

from fernoise.errors import FernoiseError, destination_error, require_file, require_folder


def one_line(res) -> str:
    lines = [x for x in res.output.splitlines() if x.strip()]
    assert len(lines) == 1, res.output
    assert "Traceback" not in res.output
    return lines[0]


def files_under(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def read_only(monkeypatch, folder: Path, err: int = errno.EACCES) -> None:
    """Make atomic writes into ``folder`` fail as a read-only folder does (mkstemp raises).

    Tests run as root here, where chmod cannot make a folder read-only; the failing call is
    the one the OS makes fail."""
    real = tempfile.mkstemp
    folder = folder.resolve()

    def mkstemp(*a, dir=None, **kw):
        if dir is not None and Path(dir).resolve() == folder:
            raise OSError(err, os.strerror(err), os.path.join(str(dir), ".x.tmp"))
        return real(*a, dir=dir, **kw)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)


def test_out_is_an_existing_file(tmp_path, workspace):
    raw = raw_tree(tmp_path / "raw")
    out = tmp_path / "out"
    out.write_text("precious")
    res = align_cli(str(raw), str(out), "--mode", "whole", "--size", "32")
    assert res.exit_code == 2
    line = one_line(res)
    assert f"error: OUT {out} is a file, expected a folder" in " ".join(line.split())
    assert out.read_text() == "precious" and not (tmp_path / "fernoise.lock").exists()


def test_labels_given_a_folder_says_it_is_a_folder(tmp_path, workspace):
    raw = raw_tree(tmp_path / "raw")
    res = align_cli(
        str(raw), str(tmp_path / "out"), "--mode", "whole", "--labels", str(raw), "--format", "csv"
    )
    assert res.exit_code == 2
    assert f"--labels: label file {raw} is a folder, expected a file" in " ".join(
        one_line(res).split()
    )
    res = align_cli(
        str(raw),
        str(tmp_path / "out"),
        "--mode",
        "whole",
        "--labels",
        str(tmp_path / "no.csv"),
        "--format",
        "csv",
    )
    assert res.exit_code == 2 and "no.csv does not exist" in one_line(res)


def test_require_file_and_folder_helpers(tmp_path):
    f = tmp_path / "f.txt"
    f.write_text("x")
    require_file(f)
    require_folder(tmp_path)
    require_folder(tmp_path / "new", may_be_missing=True)
    with pytest.raises(FernoiseError, match="is a folder, expected a file") as e:
        require_file(tmp_path, "noise matrix", flag="--matrix")
    assert e.value.flag == "--matrix" and str(e.value).startswith(f"noise matrix {tmp_path} ")
    with pytest.raises(FernoiseError, match="does not exist"):
        require_file(tmp_path / "nope")
    (tmp_path / "dangling").symlink_to(tmp_path / "nope")
    with pytest.raises(FernoiseError, match="broken symbolic link"):
        require_file(tmp_path / "dangling")
    with pytest.raises(FernoiseError, match="is a file, expected a folder"):
        require_folder(f, "OUT")
    with pytest.raises(FernoiseError, match="does not exist"):
        require_folder(tmp_path / "nope")


def test_destination_error_texts():
    e = destination_error(OSError(errno.ENOSPC, "No space left on device", "/data/out/x.jpg"))
    assert str(e) == (
        "could not write /data/out/x.jpg: no space left on the device; free space on the disk "
        "holding /data/out (or choose another folder), then re-run the same command (finished "
        "work is kept and reused)"
    )
    assert "read-only file system" in str(destination_error(OSError(errno.EROFS, "x", "/a/b")))
    assert str(destination_error(PermissionError(errno.EACCES, "x", "/a/b"))).startswith(
        "/a/b: permission denied; make /a writable"
    )
    assert destination_error(OSError(errno.EIO, "x")) is None
    assert destination_error(ValueError("x")) is None


def test_read_only_out_is_one_line_and_writes_nothing(tmp_path, workspace, monkeypatch):
    raw = raw_tree(tmp_path / "raw")
    out = tmp_path / "out"
    out.mkdir()
    read_only(monkeypatch, out / "faces" / "happy", errno.EROFS)
    res = align_cli(str(raw), str(out), "--mode", "whole", "--size", "32")
    assert res.exit_code == 1
    line = " ".join(one_line(res).split())
    assert (
        line.startswith(f"error: could not write {out}/faces/happy/img")
        and "read-only file system" in line
    )
    assert not (out / "manifest.parquet").exists() and not (tmp_path / "fernoise.lock").exists()
    assert not [p for p in files_under(out) if p.endswith(".tmp")]


def test_read_only_workspace_after_the_work_is_one_line(tmp_path, workspace, monkeypatch):
    real_mkstemp = tempfile.mkstemp
    raw = raw_tree(tmp_path / "raw")
    ws = tmp_path / "ws"
    ws.mkdir()
    out = tmp_path / "out"
    read_only(monkeypatch, ws)
    res = align_cli(str(raw), str(out), "--mode", "whole", "--size", "32", "--workspace", str(ws))
    assert res.exit_code == 1
    line = " ".join(one_line(res).split())
    assert line == (
        f"error: {ws}/fernoise.lock: permission denied; make {ws} writable (and its files readable) "
        "or choose another folder, then re-run the same command (finished work is kept and reused)"
    )
    assert files_under(ws) == ["fernoise.lock.lk"]
    monkeypatch.setattr(tempfile, "mkstemp", real_mkstemp)
    res = align_cli(str(raw), str(out), "--mode", "whole", "--size", "32", "--workspace", str(ws))
    assert res.exit_code == 0 and "cache hit" in res.output  # the finished work was complete


def test_full_disk_mid_run_is_one_line_and_resumes(tmp_path, workspace, monkeypatch):
    import fernoise.align.stage as stage

    raw = raw_tree(tmp_path / "raw", n=6)
    out = tmp_path / "out"
    real = stage._save_crop
    saved = []

    def save_then_fill(crop, path, params):
        if len(saved) >= 2:  # the disk fills up half-way through the third crop
            with stage.atomic_path(path) as tmp, open(tmp, "wb") as f:
                f.write(b"half a jpeg")
                raise OSError(errno.ENOSPC, "No space left on device")
        saved.append(path)
        return real(crop, path, params)

    monkeypatch.setattr(stage, "_save_crop", save_then_fill)
    res = align_cli(
        str(raw), str(out), "--mode", "whole", "--size", "32", "--batch-size", "2", "--workers", "1"
    )
    assert res.exit_code == 1
    line = " ".join(one_line(res).split())
    assert line.startswith(
        f"error: could not write {out}/faces/happy/img2.png.jpg: no space left on the device"
    )
    assert not (out / "manifest.parquet").exists()
    assert not [p for p in files_under(out) if p.endswith(".tmp")]
    assert "img2.png.jpg" not in " ".join(files_under(out))
    monkeypatch.setattr(
        stage, "_save_crop", real
    )  # (not undo(): that would leave the tmp workspace)
    res = align_cli(
        str(raw), str(out), "--mode", "whole", "--size", "32", "--batch-size", "2", "--workers", "1"
    )
    assert res.exit_code == 0, res.output
    assert "aligned 4 images, reused 2" in " ".join(res.output.split())


def test_a_link_planted_under_out_is_never_written_through(tmp_path, workspace):
    """Item 2: OUT/faces/happy -> a folder elsewhere; its rows say why, nothing lands outside."""
    from fernoise.manifest import read_manifest

    raw = raw_tree(tmp_path / "raw", n=3)
    make_image(raw / "sad" / "s.png")
    out = tmp_path / "out"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (out / "faces").mkdir(parents=True)
    (out / "faces" / "happy").symlink_to(elsewhere, target_is_directory=True)
    res = align_cli(str(raw), str(out), "--mode", "whole", "--size", "32")
    assert res.exit_code == 0, res.output
    assert list(elsewhere.iterdir()) == []
    df = read_manifest(out / "manifest.parquet").df.set_index("src_path")
    assert df.loc["sad/s.png", "status"] == "whole" and (out / "faces/sad/s.png.jpg").is_file()
    for i in range(3):
        row = df.loc[f"happy/img{i}.png"]
        assert row["status"] == "error" and pd.isna(row["path"])
        assert row["reason"] == (
            f"refused to write the crop faces/happy/img{i}.png.jpg: its folder resolves to "
            f"{elsewhere.resolve()}, outside OUT {out.resolve()} (a symbolic link under OUT); "
            "nothing was written, remove the link and re-run"
        )
    # removing the link: the refused rows are retried (errors are never cached), the others reused
    (out / "faces" / "happy").unlink()
    res = align_cli(str(raw), str(out), "--mode", "whole", "--size", "32")
    assert res.exit_code == 0 and "aligned 3 images, reused 1" in " ".join(res.output.split())
    assert set(read_manifest(out / "manifest.parquet").df["status"]) == {"whole"}
    # a linked record/stamp folder is refused as a whole
    other = tmp_path / "other"
    other.mkdir()
    out2 = tmp_path / "out2"
    out2.mkdir()
    (out2 / ".fernoise").symlink_to(other, target_is_directory=True)
    res = align_cli(str(raw), str(out2), "--mode", "whole", "--size", "32")
    assert res.exit_code == 2 and "is a symbolic link to" in one_line(res)
    assert list(other.iterdir()) == [] and files_under(out2) == []


def test_out_inside_raw_is_never_re_ingested(tmp_path, workspace):
    """Item 8: OUT inside RAW, older outputs inside RAW and a workspace inside RAW are skipped."""
    from fernoise.manifest import read_manifest

    raw = raw_tree(tmp_path / "raw", n=3)
    rows = []
    for run in ("out", "out", "again"):  # the same OUT twice (forced), then a second OUT beside it
        res = align_cli(str(raw), str(raw / run), "--mode", "whole", "--size", "32", "--force")
        assert res.exit_code == 0, res.output
        rows.append(len(read_manifest(raw / run / "manifest.parquet").df))
    assert rows == [3, 3, 3]
    text = " ".join(res.output.split())
    assert (
        "skipped 1 folder(s) under RAW holding fernoise output: out (holds fernoise's .fernoise stamp folder)"
        in text
    )
    # a copied manifest without its stamps, and a workspace (fernoise.lock) with its pictures
    (raw / "copy").mkdir()
    (raw / "copy" / "manifest.parquet").write_bytes((raw / "out" / "manifest.parquet").read_bytes())
    make_image(raw / "copy" / "face.png")
    (raw / "ws" / "runs").mkdir(parents=True)
    (raw / "ws" / "fernoise.lock").write_text("{}")
    make_image(raw / "ws" / "runs" / "curves.png")
    from fernoise.align.stage import scan_images

    skipped: list[dict[str, str]] = []
    assert scan_images(raw, skipped=skipped) == [
        "happy/img0.png",
        "happy/img1.png",
        "happy/img2.png",
    ]
    assert skipped == [
        {"folder": "again", "reason": "holds fernoise's .fernoise stamp folder"},
        {"folder": "copy", "reason": "holds a fernoise manifest (manifest.parquet)"},
        {"folder": "out", "reason": "holds fernoise's .fernoise stamp folder"},
        {"folder": "ws", "reason": "holds a fernoise.lock"},
    ]


def test_a_failed_first_run_leaves_no_empty_out(tmp_path, workspace):
    """Item 10: OUT that the failed run created is gone; an OUT that existed stays."""
    raw = raw_tree(tmp_path / "raw")
    (tmp_path / "l.csv").write_text("path,label\nother.png,happy\n")
    out = tmp_path / "new" / "out"
    res = align_cli(
        str(raw),
        str(out),
        "--mode",
        "whole",
        "--labels",
        str(tmp_path / "l.csv"),
        "--format",
        "csv",
    )
    assert res.exit_code == 2 and "matches none of the 4 images" in one_line(res)
    assert not out.exists()
    kept = tmp_path / "kept"
    kept.mkdir()
    res = align_cli(
        str(raw),
        str(kept),
        "--mode",
        "whole",
        "--labels",
        str(tmp_path / "l.csv"),
        "--format",
        "csv",
    )
    assert res.exit_code == 2 and kept.is_dir() and list(kept.iterdir()) == []


def test_leftover_tmp_files_are_removed_on_the_next_run(tmp_path, workspace):
    """Item 10: a kill -9 inside an atomic write and a full disk leave .tmp files; the next run
    removes them (in OUT, faces/ and .fernoise/), but never a live writer's."""
    import subprocess
    import sys
    import time

    raw = raw_tree(tmp_path / "raw")
    out = tmp_path / "out"
    assert align_cli(str(raw), str(out), "--mode", "whole", "--size", "32").exit_code == 0
    code = (
        "import os, sys\nfrom fernoise.cache import atomic_path\n"
        "with atomic_path(sys.argv[1]) as tmp:\n    open(tmp, 'wb').write(b'half')\n    os.kill(os.getpid(), 9)\n"
    )
    for target in (
        out / "faces" / "happy" / "img0.png.jpg",
        out / ".fernoise" / "manifest.parquet.stamp.json",
    ):
        assert subprocess.run([sys.executable, "-c", code, str(target)]).returncode == -9
    killed = sorted(p.relative_to(out).as_posix() for p in out.rglob(".*.tmp"))
    assert len(killed) == 2 and killed[0].startswith(".fernoise/.manifest.parquet.stamp.json.")
    old = (
        out / ".fernoise" / "align-records" / ".records-all.json.1234.5678.tmp"
    )  # an older name, an hour old
    old.parent.mkdir(parents=True, exist_ok=True)
    old.write_bytes(b"half")
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    from fernoise.cache import HOST_TAG

    live = (
        out / "faces" / f".img1.png.jpg.{HOST_TAG}-{os.getpid()}.abc123.tmp"
    )  # this process: alive
    live.write_bytes(b"in flight")
    res = align_cli(str(raw), str(out), "--mode", "whole", "--size", "32")
    assert res.exit_code == 0 and "cache hit" in res.output
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.tmp")) == [
        live.relative_to(out).as_posix()
    ]


def test_duplicate_label_rows_are_refused_unless_on_duplicate(tmp_path, workspace):
    """Item 12: one image named twice with two labels: count + first example, refused; then
    --on-duplicate first|last picks the row. A conflict on a row naming no image here and
    repeats with the same label are only counted."""
    from fernoise.manifest import read_manifest

    raw = tmp_path / "raw"
    for name in ("a.png", "b.png", "c.png"):
        make_image(raw / name)
    lab = tmp_path / "l.csv"
    lab.write_text(
        "path,label\na.png,happy\nb.png,sad\na.png,anger\nc.png,fear\nc.png,fear\n"
        "gone.png,sad\ngone.png,happy\nb.png,surprise\n"
    )
    base = [
        str(raw),
        str(tmp_path / "out"),
        "--mode",
        "whole",
        "--size",
        "32",
        "--labels",
        str(lab),
        "--format",
        "csv",
    ]
    res = align_cli(*base)
    assert res.exit_code == 2
    assert " ".join(one_line(res).split()) == (
        "error: --on-duplicate: 2 image(s) are named by several rows of l.csv with different labels or splits "
        "(first: 'a.png': happy (no split) vs anger (no split)); choose which row counts with --on-duplicate "
        "first|last, or fix the file"
    )
    assert not (tmp_path / "out").exists()
    for how, want in (("first", ["happy", "sad", "fear"]), ("last", ["anger", "surprise", "fear"])):
        res = align_cli(*base, "--on-duplicate", how)
        assert res.exit_code == 0, res.output
        m = read_manifest(tmp_path / "out" / "manifest.parquet")
        assert m.df.sort_values("src_path")["label_name"].tolist() == want
        assert (
            m.meta["labels"]["duplicate_rows"] == 4 and m.meta["labels"]["conflicting_names"] == 3
        )
        assert [x for x in res.output.splitlines() if x.startswith("labels (")] == [
            f"labels (csv): 8 rows in l.csv: 3 name an image here, 1 name none, 4 repeated rows merged "
            f"(3 names with different labels: the {how} row counts); 0 images without a label row (label null)"
        ]
    res = align_cli(*base, "--on-duplicate", "both")
    assert res.exit_code == 2 and "expected one of: first, last" in one_line(res)
    # only repeats with equal labels, and a conflict on a row that names no image: accepted
    lab.write_text(
        "path,label\na.png,happy\nb.png,sad\na.png,happy\nc.png,fear\ngone.png,sad\ngone.png,happy\n"
    )
    res = align_cli(*base)
    assert res.exit_code == 0, res.output


def test_label_summary_adds_up_to_the_rows_read(tmp_path, workspace):
    """Issue 9 item 14: every row of the label file is accounted for once (FER+: 8 rows = 2
    naming an image + 3 naming none + 1 non-face row + 2 repeats merged)."""
    raw = tmp_path / "raw"
    for name in ("fer0000001.png", "fer0000002.png", "extra.png"):
        make_image(raw / name)
    head = "Usage,Image name,neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,unknown,NF\n"
    rows = [
        "Training,fer0000001.png,0,10,0,0,0,0,0,0,0,0",
        "Training,,0,0,0,0,0,0,0,0,0,10",
        "Training,fer0000002.png,10,0,0,0,0,0,0,0,0,0",
        "Training,fer0000001.png,0,10,0,0,0,0,0,0,0,0",
        "PublicTest,fer0000009.png,10,0,0,0,0,0,0,0,0,0",
        "PrivateTest,fer0000010.png,10,0,0,0,0,0,0,0,0,0",
        "PrivateTest,fer0000011.png,0,10,0,0,0,0,0,0,0,0",
        "PrivateTest,fer0000011.png,0,0,10,0,0,0,0,0,0,0",
    ]
    (tmp_path / "fer2013new.csv").write_text(head + "\n".join(rows) + "\n")
    res = align_cli(
        str(raw),
        str(tmp_path / "out"),
        "--mode",
        "whole",
        "--size",
        "32",
        "--labels",
        str(tmp_path / "fer2013new.csv"),
        "--format",
        "ferplus",
    )
    assert res.exit_code == 0, res.output
    assert [x for x in res.output.splitlines() if x.startswith("labels (")] == [
        "labels (ferplus): 8 rows in fer2013new.csv: 2 name an image here, 3 name none, 1 non-face row skipped, "
        "2 repeated rows merged (1 name with different labels: none names an image here); 1 image without a "
        "label row (label null)"
    ]


def test_other_commands_share_the_one_line_for_a_full_disk(tmp_path, workspace, monkeypatch):
    """The mechanism is handle_errors', so corrupt (any command) says it in one line too."""
    from fernoise.cli.app import app

    raw = tmp_path / "raw"
    for i, cls in enumerate(["happy", "sad", "anger", "happy", "sad", "anger"]):
        make_image(raw / cls / f"{i}.png", colour=(30 * i, 40, 50))
    assert (
        align_cli(str(raw), str(tmp_path / "out"), "--mode", "whole", "--size", "32").exit_code == 0
    )
    read_only(monkeypatch, tmp_path / "out", errno.ENOSPC)
    res = CliRunner().invoke(
        app,
        ["corrupt", str(tmp_path / "out" / "manifest.parquet"), "--kind", "sym", "--rate", "0.5"],
    )
    assert res.exit_code == 1
    line = " ".join(one_line(res).split())
    assert line.startswith(
        f"error: could not write {tmp_path}/out/manifest.sym-r0.50-s0.parquet: no space left"
    )
    assert not list((tmp_path / "out").glob("manifest.sym*"))
