"""Backends: 2 CPU processes (gloo DDP) against 1, checkpoints across process counts,
and what is refused before any process starts."""

import json
import sys
import types

import pytest
from tiny_training import loss_curve, tiny_run, train_tiny

from sdce import backends
from sdce.train import TrainingError


def run(data, out, processes=1, run_spec=None, **kw):
    return train_tiny(data, out, run_spec or tiny_run(), threads=processes, processes=processes, **kw)


def assert_same_curve(a, b, rel=1e-5):
    assert [x[:2] for x in a] == [y[:2] for y in b]
    for x, y in zip(a, b, strict=True):
        assert x[2] == pytest.approx(y[2], rel=rel), f"{x[:2]}: {x[2]} != {y[2]}"


@pytest.fixture(scope="module")
def one_process(tiny_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("one")
    return run(tiny_data, out), out


def test_two_processes_give_the_loss_curve_of_one(one_process, tiny_data, tmp_path):
    summary1, out1 = one_process
    # each process also accumulates two micro-batches (DDP no_sync) and recomputes
    # activations (gradient checkpointing): neither changes the numbers
    two = tiny_run(micro_batch_size=1, gradient_checkpointing=True)
    summary2 = run(tiny_data, tmp_path / "two", processes=2, run_spec=two)
    assert summary2["processes"] == 2 and summary1["processes"] == 1
    assert summary2["backend"]["parallelism"] == "ddp"
    assert_same_curve(loss_curve(tmp_path / "two"), loss_curve(out1))
    assert summary2["final_val_loss"] == pytest.approx(summary1["final_val_loss"], rel=1e-5)


def test_checkpoint_of_two_processes_resumes_in_one(one_process, tiny_data, tmp_path):
    summary1, out1 = one_process
    assert run(tiny_data, tmp_path / "r", processes=2, stop_after=4) == {"stopped_at": 4}
    state = json.loads((tmp_path / "r" / "work" / "checkpoints" / "step_0000004" / "state.json").read_text())
    assert state["processes"] == 2 and "torch" in state["versions"]
    resumed = run(tiny_data, tmp_path / "r", processes=1)
    assert resumed["processes"] == 1
    assert_same_curve(loss_curve(tmp_path / "r"), loss_curve(out1))


def test_bad_input_is_refused_before_any_process_starts(tiny_data, tmp_path):
    with pytest.raises(TrainingError, match="batch_size=3 is not divisible by 2 processes"):
        run(tiny_data, tmp_path / "x", processes=2, run_spec=tiny_run(batch_size=3))
    with pytest.raises(TrainingError, match=r"--processes 64 but this machine has \d+ CPU cores"):
        run(tiny_data, tmp_path / "x", processes=64)
    assert not (tmp_path / "x").exists()
    s = tiny_run()
    flash = {**s["model"], "attn_implementation": "flash_attention_2"}
    with pytest.raises(TrainingError, match="flash_attention_2 needs CUDA"):
        backends.check(s["training"], flash, "accelerate", 1)


def test_xla_settings_are_refused_with_what_to_set(monkeypatch):
    s = tiny_run()
    if "torch_xla" not in sys.modules:
        monkeypatch.setitem(sys.modules, "torch_xla", types.ModuleType("torch_xla"))
    with pytest.raises(TrainingError, match="fp16 is not supported on XLA.*set training.precision to bf16"):
        backends.check({**s["training"], "precision": "fp16"}, s["model"], "xla", 1)
    with pytest.raises(TrainingError, match="run one sdce train per host"):
        backends.check(s["training"], s["model"], "xla", 4)
    with pytest.raises(TrainingError, match="set training.compile: false"):
        backends.check({**s["training"], "compile": True}, s["model"], "xla", 1)
    monkeypatch.setenv("PJRT_DEVICE", "TPU")
    assert backends.resolve("auto") == "xla"
    monkeypatch.delenv("PJRT_DEVICE")
    assert backends.resolve("auto") == "accelerate"
    assert backends.resolve_processes(0, "xla") == 1
    assert backends.resolve_processes(0, "accelerate") >= 1


def test_xla_is_refused_without_torch_xla(monkeypatch):
    s = tiny_run()
    monkeypatch.setitem(sys.modules, "torch_xla", None)  # import fails
    with pytest.raises(TrainingError, match="--backend xla needs torch_xla"):
        backends.check(s["training"], s["model"], "xla", 1)


@pytest.mark.slow
def test_compiled_student_gives_the_eager_curve(one_process, tiny_data, tmp_path):
    from transformers import AutoModelForCausalLM

    summary1, out1 = one_process
    run(tiny_data, tmp_path / "c", run_spec=tiny_run(compile=True))
    assert_same_curve(loss_curve(tmp_path / "c"), loss_curve(out1))
    saved = AutoModelForCausalLM.from_pretrained(tmp_path / "c" / "model").state_dict()
    assert set(saved) == set(AutoModelForCausalLM.from_pretrained(out1 / "model").state_dict())


def test_fsdp_on_cpu_gives_the_curve_of_one_process_and_resumes(one_process, tiny_data, tmp_path):
    """FSDP2 (accelerate, one unit per block) over 2 gloo processes: the sharded optimizer
    step is the same step; a sharded checkpoint resumes, and the saved weights are whole."""
    summary1, out1 = one_process
    fsdp = tiny_run(parallelism="fsdp")
    out = tmp_path / "fsdp"
    assert run(tiny_data, out, processes=2, run_spec=fsdp, stop_after=4) == {"stopped_at": 4}
    summary2 = run(tiny_data, out, processes=2, run_spec=fsdp)
    assert summary2["backend"]["parallelism"] == "fsdp"
    assert_same_curve(loss_curve(out), loss_curve(out1))
    assert summary2["final_val_loss"] == pytest.approx(summary1["final_val_loss"], rel=1e-5)
    import torch
    from transformers import AutoModelForCausalLM

    whole = AutoModelForCausalLM.from_pretrained(out1 / "model").state_dict()
    gathered = AutoModelForCausalLM.from_pretrained(out / "model").state_dict()
    assert whole.keys() == gathered.keys()
    for key, value in whole.items():
        assert torch.allclose(gathered[key], value, rtol=1e-4, atol=1e-6), key
