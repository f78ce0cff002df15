"""The progress events are declared once (``fernoise.progress.EVENTS``): every event a real
train and pretrain run sends is a declared kind with its declared fields."""

from __future__ import annotations

from factories import make_manifest, tiny_pretrain, tiny_train

from fernoise.progress import EVENTS


def _check(events: list[dict]) -> set[str]:
    for ev in events:
        assert ev["event"] in EVENTS, ev
        assert set(EVENTS[ev["event"]]) <= set(ev), (ev["event"], sorted(ev))
    return {ev["event"] for ev in events}


def test_train_and_pretrain_send_only_declared_events(tmp_path, workspace):
    from fernoise.pretrain.stage import pretrain
    from fernoise.train.stage import train

    man = make_manifest(tmp_path / "d", n=40)
    events: list[dict] = []
    train(
        man,
        tiny_train(method="ce", epochs=1, warmup=0, device="cpu"),
        runs_dir=tmp_path / "runs",
        progress=events.append,
    )
    assert {"header", "epoch_start", "batch", "epoch_end"} <= _check(events)
    events.clear()
    pretrain(man, tiny_pretrain(epochs=1), out_root=tmp_path / "ssl", progress=events.append)
    assert {"epoch_start", "batch", "epoch_end"} <= _check(events)
