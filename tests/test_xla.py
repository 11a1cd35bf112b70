"""The training loop on the XLA CPU device (PJRT_DEVICE=CPU) through torch_xla, in the
optional `.venv-xla` (torch 2.9 + torch-xla 2.9; `make xla-env`). Skipped without it."""

import json
import os
import subprocess
from pathlib import Path

import pytest
from tiny_training import loss_curve, tiny_run, train_tiny

REPO = Path(__file__).resolve().parents[1]
XLA_BIN = REPO / ".venv-xla" / "bin"

pytestmark = pytest.mark.skipif(
    not (XLA_BIN / "sdce").exists(), reason=".venv-xla not found (make xla-env; README, TPU)"
)


def spec(**training):
    return tiny_run(steps=6, eval_interval=3, checkpoint_interval=2, **training)


def xla_train(data, out, run_spec, *extra, check=True):
    args = [
        str(XLA_BIN / "sdce"),
        "train-job",
        "--params",
        json.dumps(run_spec),
        "--name",
        "r",
        "--seed",
        "5",
        "--train-shard",
        str(data / "train.bin"),
        "--val-shard",
        str(data / "validation.bin"),
        "--tokenizer",
        str(data / "tokenizer"),
        "--teacher",
        str(data / "bigram.npz"),
        "--out",
        str(out),
        "--backend",
        "xla",
        "--no-progress",
        *extra,
    ]
    env = {**os.environ, "PJRT_DEVICE": "CPU", "PATH": f"{XLA_BIN}:{os.environ['PATH']}"}
    env.pop("VIRTUAL_ENV", None)
    proc = subprocess.run(args, capture_output=True, text=True, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(proc.stdout[-3000:] + proc.stderr[-5000:])
    return proc


def test_fp16_is_refused_on_xla_before_work(tiny_data, tmp_path):
    proc = xla_train(tiny_data, tmp_path / "x", spec(precision="fp16"), check=False)
    assert proc.returncode == 2
    assert "fp16 is not supported on XLA" in proc.stderr and "set training.precision to bf16" in proc.stderr
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_xla_cpu_trains_resumes_and_matches_the_accelerate_curve(tiny_data, tmp_path):
    s = spec()
    stopped = xla_train(tiny_data, tmp_path / "xla", s, "--stop-after", "2")  # a logging-window boundary
    assert json.loads(stopped.stdout.strip().splitlines()[-1]) == {"stopped_at": 2}
    state = json.loads(
        (tmp_path / "xla" / "work" / "checkpoints" / "step_0000002" / "state.json").read_text()
    )
    assert state["versions"]["torch_xla"] == "2.9.0" and state["versions"]["torch"].startswith("2.9.0")
    xla_train(tiny_data, tmp_path / "xla", s)  # a new process resumes from the master ordinal's checkpoint
    summary = json.loads((tmp_path / "xla" / "summary.json").read_text())
    assert summary["backend"]["backend"] == "xla" and summary["backend"]["device"] == "CPU"
    assert summary["versions"]["torch_xla"] == "2.9.0"
    # static shapes: a handful of graphs (forward/backward with and without the teacher,
    # optimizer step, evaluation, logging), not one per step
    assert summary["backend"]["compilations"] <= 16
    reference = train_tiny(tiny_data, tmp_path / "eager", s)
    got, want = loss_curve(tmp_path / "xla"), loss_curve(tmp_path / "eager")
    assert [g[:2] for g in got] == [w[:2] for w in want]
    for g, w in zip(got, want, strict=True):
        assert g[2] == pytest.approx(w[2], rel=1e-5), f"{g[:2]}: xla {g[2]} != eager {w[2]}"
    assert summary["final_val_loss"] == pytest.approx(reference["final_val_loss"], rel=1e-5)
    assert summary["parameters"] == reference["parameters"]  # tied weights stay tied on the device


@pytest.mark.slow
def test_xla_bf16_tracks_fp32(tiny_data, tmp_path):
    xla_train(tiny_data, tmp_path / "bf16", spec(precision="bf16"))
    summary = json.loads((tmp_path / "bf16" / "summary.json").read_text())
    assert summary["backend"]["mixed_precision"] == "bf16"
    fp32 = train_tiny(tiny_data, tmp_path / "fp32", spec())
    assert summary["final_val_loss"] == pytest.approx(fp32["final_val_loss"], rel=0.02)
