"""The training loop: resume equivalence, accumulation, golden loss curve, bad input."""

import json
import os
from pathlib import Path

import pytest
from tiny_training import tiny_job

from sdce import config as cfg
from sdce.train import TrainingError, train

GOLDEN = Path(__file__).parent / "golden" / "loss_curve.json"


def run_spec(objective="bigram", **training):
    base = {
        "steps": 12,
        "batch_size": 4,
        "block_size": 32,
        "eval_interval": 4,
        "eval_tokens": 2048,
        "log_interval": 2,
        "checkpoint_interval": 4,
        "warmup_steps": 2,
        "save_total_limit": 5,
    }
    base.update(training)
    guidance = {"objective": objective, "schedule": "linear", "schedule_steps": 8}
    return cfg.validate(
        {
            "model": {"n_layer": 1, "n_embd": 32, "n_head": 2, "dropout": 0.1},
            "training": base,
            "guidance": guidance,
        },
        "run",
    )


def do_train(data, out, spec, **kw):
    return train(tiny_job(data, out, spec, teacher=data / "bigram.npz", **kw))


def records(out):
    return [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def losses_of(recs):
    return [(r["kind"], r["step"], round(r.get("loss", r.get("val_loss")), 6)) for r in recs]


def test_killed_run_resumes_to_identical_metrics(tmp_path, tiny_data):
    spec = run_spec()
    full = do_train(tiny_data, tmp_path / "full", spec)
    stopped = do_train(tiny_data, tmp_path / "resumed", spec, stop_after=4)
    assert stopped == {"stopped_at": 4}
    assert not (tmp_path / "resumed" / "summary.json").exists()
    resumed = do_train(tiny_data, tmp_path / "resumed", spec)
    assert resumed["final_val_loss"] == pytest.approx(full["final_val_loss"], abs=1e-6)
    assert losses_of(records(tmp_path / "resumed")) == losses_of(records(tmp_path / "full"))
    clock = [r["train_seconds"] for r in records(tmp_path / "resumed") if r["kind"] == "train"]
    assert clock == sorted(clock)  # the training clock goes on from where the killed run stopped


def test_changed_config_does_not_resume_stale_checkpoints(tmp_path, tiny_data):
    do_train(tiny_data, tmp_path / "r", run_spec(), stop_after=4)
    other = run_spec(learning_rate=0.003)
    do_train(tiny_data, tmp_path / "r", other)
    assert records(tmp_path / "r")[0] == {**records(tmp_path / "r")[0], "step": 0}  # started afresh


def test_gradient_accumulation_matches_full_batch(tmp_path, tiny_data):
    no_dropout = {"n_layer": 1, "n_embd": 32, "n_head": 2}
    a = do_train(
        tiny_data, tmp_path / "a", cfg.validate({**run_spec("ce", steps=4), "model": no_dropout}, "run")
    )
    spec_b = cfg.validate({**run_spec("ce", steps=4, micro_batch_size=1), "model": no_dropout}, "run")
    b = do_train(tiny_data, tmp_path / "b", spec_b)
    assert b["final_val_loss"] == pytest.approx(a["final_val_loss"], abs=2e-4)


def test_metrics_and_checkpoint_layout(tmp_path, tiny_data):
    do_train(tiny_data, tmp_path / "r", run_spec(save_total_limit=2))
    recs = records(tmp_path / "r")
    train_rec = next(r for r in recs if r["kind"] == "train")
    for key in (
        "step",
        "tokens",
        "lr",
        "loss",
        "ce",
        "guidance",
        "weight",
        "grad_norm",
        "tokens_per_s",
        "train_seconds",
        "teacher_mass",
    ):
        assert key in train_rec
    clock = [r["train_seconds"] for r in recs if r["kind"] == "train"]
    assert clock == sorted(clock) and clock[0] > 0
    assert [r["step"] for r in recs if r["kind"] == "eval"] == [0, 4, 8, 12]
    ckpts = sorted(p.name for p in (tmp_path / "r" / "work" / "checkpoints").iterdir())
    assert ckpts == ["step_0000008", "step_0000012"]
    step = tmp_path / "r" / "work" / "checkpoints" / "step_0000012"
    assert {p.name for p in step.iterdir()} == {"model", "trainer_state.pt", "state.json"}
    from transformers import AutoModelForCausalLM, AutoTokenizer

    AutoModelForCausalLM.from_pretrained(tmp_path / "r" / "model")
    AutoTokenizer.from_pretrained(tmp_path / "r" / "model")
    # the guidance weight follows the linear schedule and the teacher stops at zero
    weights = {r["step"]: r["weight"] for r in recs if r["kind"] == "train"}
    assert weights[2] == pytest.approx(1 - 1 / 8) and weights[10] == 0.0


def test_bad_input_fails_before_training(tmp_path, tiny_data):
    with pytest.raises(TrainingError, match="not divisible by training.micro_batch_size=3"):
        do_train(tiny_data, tmp_path / "x", run_spec(micro_batch_size=3))
    with pytest.raises(TrainingError, match="fp16 needs a CUDA device"):
        do_train(tiny_data, tmp_path / "x", run_spec(precision="fp16"))
    with pytest.raises(ValueError, match="needs the bigram table"):
        train(tiny_job(tiny_data, tmp_path / "y", run_spec(), seed=1))


def test_bf16_autocast_runs_and_tracks_fp32(tmp_path, tiny_data):
    a = do_train(tiny_data, tmp_path / "a", run_spec(steps=4))
    b = do_train(tiny_data, tmp_path / "b", run_spec(steps=4, precision="bf16"))
    assert b["final_val_loss"] == pytest.approx(a["final_val_loss"], rel=0.02)


def test_golden_loss_curve(tmp_path, tiny_data):
    """A change in numerics shows up here, not in a guess (SDCE_UPDATE_GOLDEN=1 rewrites it)."""
    do_train(tiny_data, tmp_path / "g", run_spec())
    curve = [[r["kind"], r["step"], r.get("loss", r.get("val_loss"))] for r in records(tmp_path / "g")]
    if os.environ.get("SDCE_UPDATE_GOLDEN") == "1" or not GOLDEN.exists():
        GOLDEN.write_text(json.dumps(curve, indent=1) + "\n")
    golden = json.loads(GOLDEN.read_text())
    assert [c[:2] for c in curve] == [g[:2] for g in golden]
    for c, g in zip(curve, golden, strict=True):
        assert c[2] == pytest.approx(g[2], rel=1e-4), f"{c[:2]}: {c[2]} != golden {g[2]}"


def test_the_training_clock_leaves_out_its_pauses_and_resumes_from_the_log():
    import time

    from sdce.metrics import TrainingClock

    clock = TrainingClock()
    with clock.pause():
        time.sleep(0.2)
    time.sleep(0.05)
    assert 0.05 <= clock.read() < 0.2
    resumed = TrainingClock.resumed([{"kind": "eval"}, {"kind": "train", "train_seconds": 7.5}])
    assert 7.5 <= resumed.read() < 7.6
    assert TrainingClock.resumed([]).read() < 0.1
