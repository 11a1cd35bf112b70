"""z-loss (`training.z_loss`) computed in the loss's own chunk pass (`losses._z_term`): the
same values and gradients as plain autograd, and one gradient written, not two."""

import pytest
import torch
from test_chunked_losses import CASES, MEMORY_CASES, B, K, T, V, _bench, _run, _signal

from sdce import losses, objectives

Z = 0.1  # the z-loss weight

FOLDED_CASES = [*CASES, ("masked_diffusion_sft", "none", {})]


def _extras(objective: str, targets: torch.Tensor) -> dict:
    if not objective.startswith("masked_diffusion"):
        return {}
    extra = {"p": torch.linspace(0.1, 0.9, targets.numel()).view(targets.shape)}
    if objective == "masked_diffusion_sft":
        extra["prompt_lengths"] = torch.tensor([3, 5])[: targets.size(0)]
    return extra


def _inputs(dtype, b=B, t=T, vocab=V, seed=0):
    """Logits and targets, with ignored positions at the end of one row and the start of the other."""
    g = torch.Generator().manual_seed(seed)
    logits = (3 * torch.randn(b, t, vocab, generator=g)).to(dtype)
    targets = torch.randint(0, vocab, (b, t), generator=g)
    targets[0, -4:] = targets[1, :1] = losses.IGNORE
    return logits, targets


@pytest.mark.parametrize("chunk_tokens", [4, 7])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("objective,kind,opts", FOLDED_CASES, ids=lambda c: c if isinstance(c, str) else None)
def test_folded_z_loss_equals_plain_autograd(objective, kind, opts, dtype, chunk_tokens):
    logits, targets = _inputs(dtype)
    signal = _signal(kind, targets)
    opts = {**opts, **_extras(objective, targets), "z_weight": Z}  # `_run` sets masked_diffusion's p
    plain, plain_grad = _run(objective, logits, targets, signal, opts, None)
    chunked, chunked_grad = _run(objective, logits, targets, signal, opts, chunk_tokens)
    assert chunked.keys() == plain.keys() and "z_loss" in chunked
    # the term is the stand-alone z-loss, and the optimised loss includes it
    torch.testing.assert_close(chunked["z_loss"], losses.z_loss(logits, targets, chunk_tokens=None))
    without = {**opts, "z_weight": 0.0}
    alone = objectives.compute_named(
        objective, logits, targets, signal, 0.7, chunk_tokens=chunk_tokens, **without
    )
    torch.testing.assert_close(chunked["loss"], alone["loss"] + Z * chunked["z_loss"])
    tol = {"rtol": 1e-5, "atol": 1e-6}
    for name in plain:
        torch.testing.assert_close(chunked[name], plain[name], **tol, msg=name)
    # bf16: the plain ce and masked_diffusion paths round the loss's and the z-loss's gradients
    # to bf16 apart, then add them (one rounding more than the folded pass, at most a few ulps
    # of the larger part where the two cancel)
    gtol = tol if dtype == torch.float32 else {"rtol": 1e-2, "atol": 3e-4}
    torch.testing.assert_close(chunked_grad, plain_grad, **gtol)


@pytest.mark.parametrize("objective,kind,opts", MEMORY_CASES, ids=lambda c: c if isinstance(c, str) else None)
def test_a_step_with_z_loss_writes_one_gradient(objective, kind, opts):
    """With z-loss folded, a step peaks at the bound of a step without it (the logits'
    gradient, 8 chunk buffers, per-token tensors); a second chunked pass for z-loss alone
    wrote a second (tokens x V) gradient and its sum, about three times the logits."""
    n, vocab, chunk = 256, 512, 8
    logits, targets = _inputs(torch.float32, 4, n // 4, vocab, seed=3)
    logits.requires_grad_(True)
    signal = _signal(kind, targets, vocab)
    extra = _extras(objective, targets)
    peak = _bench().allocator_peak

    def step(z_weight, separate=False):
        w = 0.0 if separate else z_weight
        out = objectives.compute_named(
            objective, logits, targets, signal, 0.7, z_weight=w, chunk_tokens=chunk, **opts, **extra
        )
        extra_term = z_weight * losses.z_loss(logits, targets, chunk_tokens=chunk) if separate else 0.0
        (out["loss"] + extra_term).backward()
        logits.grad = None

    row = vocab * 4
    bound = n * row + 8 * chunk * row + 32 * n * K * 4  # gradient + chunk buffers + per-token
    folded, separate = peak(lambda: step(Z)), peak(lambda: step(Z, separate=True))
    assert n * row <= folded <= bound, (folded / row, bound / row)
    assert separate > 2 * n * row, separate / row
