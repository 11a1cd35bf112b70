"""The CUDA paths, on a machine with a GPU (`make gpu-check`; skipped without one): the
chunked losses of every objective on the device against plain autograd on the device and on
the CPU, in fp32 and bf16, and the real training loop on the device in fp32, bf16 and fp16.
`SDCE_GPU_TEST_DEVICE=cpu` runs the same code on the CPU (to check the tests themselves)."""

import os

import pytest
import torch
from test_chunked_losses import CASES, _inputs, _run
from tiny_training import tiny_run, train_tiny

DEVICE = os.environ.get("SDCE_GPU_TEST_DEVICE", "cuda")
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(DEVICE == "cuda" and not torch.cuda.is_available(), reason="no CUDA device"),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("objective,kind,opts", CASES, ids=lambda c: c if isinstance(c, str) else None)
def test_chunked_losses_on_the_device(objective, kind, opts, dtype):
    logits, targets, signal = _inputs(kind, dtype)
    on = lambda t: t.to(DEVICE) if torch.is_tensor(t) else t  # noqa: E731
    dev_opts = {k: on(v) for k, v in opts.items()}
    dev_signal = signal.to(DEVICE) if signal is not None else None
    cpu, cpu_grad = _run(objective, logits, targets, signal, opts, None)
    plain, plain_grad = _run(objective, logits.to(DEVICE), targets.to(DEVICE), dev_signal, dev_opts, None)
    chunked, chunked_grad = _run(objective, logits.to(DEVICE), targets.to(DEVICE), dev_signal, dev_opts, 7)
    assert chunked_grad.device.type == torch.device(DEVICE).type and chunked_grad.dtype == dtype
    gtol = {"rtol": 1e-5, "atol": 1e-6} if dtype == torch.float32 else {"rtol": 1e-2, "atol": 1e-4}
    for name in cpu:
        torch.testing.assert_close(chunked[name], plain[name], rtol=1e-5, atol=1e-6, msg=name)
        torch.testing.assert_close(chunked[name].cpu(), cpu[name], rtol=1e-4, atol=1e-5, msg=name)
    torch.testing.assert_close(chunked_grad, plain_grad, **gtol)
    torch.testing.assert_close(chunked_grad.cpu(), cpu_grad, **gtol)


@pytest.mark.parametrize("objective", ["ce", "bigram", "masked_diffusion"])
def test_the_loop_trains_on_the_device_in_every_precision(tmp_path, tiny_data, objective):
    """The training loop picks the GPU by itself (accelerate): fp32, bf16 and fp16 (loss
    scaling) runs end near one another; the summary names the device."""
    model = (
        {"family": "modernbert", "n_layer": 1, "n_embd": 32, "n_head": 2}
        if objective == "masked_diffusion"
        else None
    )
    runs = {}
    for precision in ("fp32", "bf16", "fp16"):
        if precision == "fp16" and DEVICE != "cuda":
            continue  # fp16 needs CUDA (refused on the CPU: tests/test_backends.py)
        run = tiny_run(objective, model, steps=6, precision=precision)
        runs[precision] = train_tiny(tiny_data, tmp_path / precision, run)
    for precision, summary in runs.items():
        assert torch.device(summary["backend"]["device"]).type == torch.device(DEVICE).type
        assert summary["final_val_loss"] == pytest.approx(runs["fp32"]["final_val_loss"], rel=0.03), precision
