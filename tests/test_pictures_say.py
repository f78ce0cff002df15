"""Pictures say what they show (issue 24, item 5): the chance line on accuracy_vs_noise, the
base-rate line with one noise rate, folds in the captions, EAC's small-map warning as a
fernoise warning event."""

from __future__ import annotations

import warnings

import pytest
from factories import SYM, fake_run, make_manifest

from fernoise.evaluate import plots
from fernoise.report import collect, plot, plot_series


@pytest.fixture
def figures(monkeypatch):
    """The matplotlib figures ``plots`` saves, by file name."""
    seen = {}
    save = plots._save

    def keep(fig, path):
        seen[str(path).rsplit("/", 1)[-1]] = fig
        return save(fig, path)

    monkeypatch.setattr(plots, "_save", keep)
    return seen


def _fold_lineage(fold: int) -> list[dict]:
    split = {"folds": 2, "fold": fold, "group_column": "subject", "seed": 0, "val_fraction": 0.1}
    return [
        {"stage": "align", "key": "align-ck", "params": {}},
        {"stage": "split", "key": f"s-{fold}", "params": split},
        {"stage": "corrupt", "key": f"c-{fold}", "params": SYM},
    ]


def test_accuracy_has_chance_and_selection_has_its_base_rate_with_one_rate(tmp_path, figures):
    runs = tmp_path / "runs"
    sel = [(0.8, 0.6), (0.85, 0.7)]
    fake_run(runs / "a", "ncctfer", SYM, [0.5, 0.6], val=[0.2, 0.3], sel=sel)
    rep = collect([runs])
    series = plot_series(rep.tables[0])
    assert series["chance"] == 0.5 and series["over"] == "seeds"  # 2 classes
    plot(rep, tmp_path / "pics")
    acc = figures["accuracy_vs_noise.png"].axes[0]
    chance = [ln for ln in acc.get_lines() if str(ln.get_label()).startswith("chance")]
    assert len(chance) == 1 and list(chance[0].get_ydata()) == [50.0, 50.0]
    assert chance[0].get_label() == "chance (1/2 = 50.0%)"
    assert "sample std over seeds" in figures["accuracy_vs_noise.png"]._suptitle.get_text()
    # one noise rate: the base rate (1 - 0.3 for sym without eval.json) is a drawn line
    ax = figures["selection_vs_noise.png"].axes[0]
    base = [ln for ln in ax.get_lines() if str(ln.get_label()).startswith("base rate")]
    assert len(base) == 1 and list(base[0].get_ydata()) == pytest.approx([0.7, 0.7])


def test_captions_say_folds_for_a_kfold_table(tmp_path, figures):
    runs = tmp_path / "runs"
    for fold, v in ((0, [0.5, 0.6]), (1, [0.55, 0.7])):
        fake_run(runs / f"f{fold}", "ce", SYM, v, val=[0.2, 0.3], lineage=_fold_lineage(fold))
    rep = collect([runs])
    assert plot_series(rep.tables[0])["over"] == "2 folds"
    plot(rep, tmp_path / "pics")
    title = figures["accuracy_vs_noise.png"]._suptitle.get_text()
    assert title == "test accuracy vs noise (error bars: sample std over 2 folds)"


def test_eac_small_map_warning_is_a_fernoise_warning_event(tmp_path):
    from fernoise.train.stage import TrainConfig, train

    path = make_manifest(tmp_path, n=40)
    cfg = TrainConfig(
        method="eac", epochs=1, warmup=0, batch_size=16, image_size=32, workers=0, device="cpu"
    )
    events: list[dict] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(path, cfg, runs_dir=tmp_path / "runs", progress=events.append)
    said = [e["message"] for e in events if e.get("event") == "warning"]
    assert (
        sum(m.startswith("eac: the attention maps are 1x1 at --image-size 32") for m in said) == 1
    )
    assert not [w for w in caught if "attention maps" in str(w.message)]  # no raw UserWarning
