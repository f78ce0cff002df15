"""Silent outcomes named (issue 24, item 4): 0 test rows at train time, an align OUT reused for
another data set, a validation-selected epoch inside the warm-up (report and eval)."""

from __future__ import annotations

import json

from factories import align_cli, fake_run, make_image, make_manifest, tiny_train

from fernoise.evaluate.stage import history_summary
from fernoise.report import collect, render, table_grid
from fernoise.train.plan import plan


def test_zero_test_rows_is_a_warning_with_the_split_map_hint(tmp_path):
    path = make_manifest(tmp_path, n=40, splits=("train", "val"))  # every 5th row in val
    p = plan(path, tiny_train(method="ce"), runs_dir=tmp_path / "runs")
    said = [w for w in p.warnings if "0 test rows" in w]
    assert said == [
        "manifest.parquet has 0 test rows (8 rows are in val): test accuracy will be empty; if the "
        "data set's test rows landed in another split, re-align with e.g. `--split-map val=test`"
    ]
    with_test = plan(make_manifest(tmp_path / "b", n=40), tiny_train(method="ce"))
    assert not [w for w in with_test.warnings if "test rows" in w]


def test_an_out_of_another_data_set_is_refused_naming_both(tmp_path, monkeypatch):
    monkeypatch.setenv("FERNOISE_WORKSPACE", str(tmp_path))
    one, two, out = tmp_path / "one", tmp_path / "two", tmp_path / "out"
    for i in range(3):
        make_image(one / "happy" / f"a{i}.png", colour=(10 * i, 50, 200))
        make_image(two / "sad" / f"b{i}.png", colour=(200, 10 * i, 50))
    first = align_cli(str(one), str(out), "--mode", "whole", "--size", "32")
    assert first.exit_code == 0, first.output
    before = (out / "manifest.parquet").read_bytes()
    res = align_cli(str(two), str(out), "--mode", "whole", "--size", "32")
    assert res.exit_code == 2
    text = " ".join(res.output.split())
    assert "was made from another data set (3 images such as 'happy/a0.png')" in text
    assert f"RAW {two} shares none of them" in text and "--force" in text
    assert (out / "manifest.parquet").read_bytes() == before  # untouched
    # more images of the same data set: no refusal; --force replaces
    make_image(one / "happy" / "a9.png", colour=(1, 2, 3))
    assert align_cli(str(one), str(out), "--mode", "whole", "--size", "32").exit_code == 0
    forced = align_cli(str(two), str(out), "--mode", "whole", "--size", "32", "--force")
    assert forced.exit_code == 0, forced.output


def _warm_run(path, method, val):
    """A 4-epoch run, epochs 1-2 warm-up, whose best validation epoch is ``val``'s argmax."""
    run = fake_run(path, method, None, [0.5, 0.6, 0.4, 0.45], val=val, warmup=2)
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    for r in rows:
        r["warmup"] = r["epoch"] <= 2
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return run, rows


def test_a_validation_selected_epoch_in_the_warmup_is_flagged(tmp_path):
    _, rows = _warm_run(tmp_path / "runs" / "nc", "ncctfer", [0.3, 0.9, 0.5, 0.6])  # epoch 2
    _warm_run(tmp_path / "runs" / "ce", "ce", [0.3, 0.9, 0.5, 0.6])  # ce: warm-up = its loss
    h = history_summary(rows, ["neutral", "happy"], method="ncctfer")
    assert h["val_selected_in_warmup"] and h["val_selected"]["epoch"] == 2
    assert (
        "the validation-selected epoch 2 is inside the warm-up (epochs 1-2): its test accuracy "
        "(0.600) is the warm-up's model" in h["warnings"][-1]
    )
    assert not history_summary(rows, ["neutral", "happy"], method="ce")["val_selected_in_warmup"]
    later = [dict(r, val_acc=v) for r, v in zip(rows, [0.3, 0.4, 0.9, 0.5], strict=True)]
    assert not history_summary(later, ["neutral", "happy"], method="ncctfer")[
        "val_selected_in_warmup"
    ]
    rep = collect([tmp_path / "runs"])
    _, table = table_grid(rep.tables[0])
    cells = {row[0]: row[1] for row in table}
    assert cells == {"ce": "60.0 (e2)", "ncctfer": "60.0 (e2)†"}
    assert any(
        n.startswith("†: the validation-selected epoch lies inside the warm-up") and "nc" in n
        for n in rep.notes
    )
    assert "`†`: the validation-selected epoch of a run lies inside the warm-up" in render(rep)
