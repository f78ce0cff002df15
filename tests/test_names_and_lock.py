"""Datasets have a name (`align --name`, default RAW's folder name, kept through corrupt), and a
command run without its input says what it took from `fernoise.lock`."""

from __future__ import annotations

from factories import align_cli, cli, make_image

from fernoise.manifest import read_meta


def _raw(root):
    for i in range(6):
        make_image(root / ("happy" if i % 2 else "sad") / f"img{i}.png", colour=(30 * i, 50, 200))
    return root


def test_dataset_name_defaults_to_raw_and_follows_the_manifest(workspace):
    raw = _raw(workspace / "jaffe-photos")
    res = align_cli(str(raw), str(workspace / "out"), "--mode", "whole", "--size", "32")
    assert res.exit_code == 0, res.output
    assert read_meta(workspace / "out" / "manifest.parquet")["dataset"] == "jaffe-photos"
    named = align_cli(
        str(raw), str(workspace / "out2"), "--mode", "whole", "--size", "32", "--name", "JAFFE"
    )
    assert named.exit_code == 0, named.output
    assert read_meta(workspace / "out2" / "manifest.parquet")["dataset"] == "JAFFE"
    noisy = cli("corrupt", workspace / "out2", "--kind", "sym", "--rate", "0.5")
    assert noisy.exit_code == 0, noisy.output
    (path,) = (workspace / "out2").glob("manifest.sym-*.parquet")
    assert read_meta(path)["dataset"] == "JAFFE"


def test_a_bare_command_says_what_it_took_from_the_lock(workspace):
    raw = _raw(workspace / "raw")
    assert (
        align_cli(str(raw), str(workspace / "out"), "--mode", "whole", "--size", "32").exit_code
        == 0
    )
    res = cli("corrupt", "--kind", "sym", "--rate", "0.5")
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    manifest = workspace / "out" / "manifest.parquet"
    assert (
        f"using {manifest} (the latest `fernoise align` output recorded in {workspace / 'fernoise.lock'})"
        in text
    )
    given = cli("corrupt", manifest, "--kind", "sym", "--rate", "0.2")
    assert given.exit_code == 0 and "using " not in given.output
