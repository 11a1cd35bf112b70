"""Experiment trackers: what the real TensorBoard writer receives from the loop's records."""

import pytest

from sdce import config as cfg
from sdce.trackers import open_trackers, scalars


def test_nested_records_become_scalars():
    record = {"val_loss": 3.5, "val_loss_by_source": {"wiki": 4.1, "childes": 2}, "note": "x", "ok": True}
    assert scalars(record, "eval") == {
        "eval/val_loss": 3.5,
        "eval/val_loss_by_source/wiki": 4.1,
        "eval/val_loss_by_source/childes": 2.0,
    }


def test_tensorboard_gets_per_source_validation_losses(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    spec = cfg.validate({"tracking": {"trackers": ["tensorboard"]}}, "training")["tracking"]
    trackers = open_trackers(spec, enabled=True, run_dir=tmp_path, name="r", config={}, start_step=0)
    for step in (2, 4):
        trackers.log({"kind": "train", "step": step, "loss": 5.0 - step, "schedule": "linear"})
        by_source = {"wiki": 4.0 + step, "childes": 3.0 + step}
        trackers.log({"kind": "eval", "step": step, "val_loss": 4.5, "val_loss_by_source": by_source})
    trackers.close()
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {
        "train/loss",
        "eval/val_loss",
        "eval/val_loss_by_source/wiki",
        "eval/val_loss_by_source/childes",
    } <= tags
    assert not any("schedule" in t for t in tags)
    wiki = events.Scalars("eval/val_loss_by_source/wiki")
    assert [(e.step, e.value) for e in wiki] == [(2, 6.0), (4, 8.0)]
