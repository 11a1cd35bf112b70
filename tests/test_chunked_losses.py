"""The chunked losses against plain autograd: values and gradients of every objective, and
the memory a step holds."""

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sdce import config as cfg
from sdce import losses, objectives
from sdce.teachers.signal import GuidanceSignal
from sdce.teachers.uniform import UniformTeacher

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
V, B, T, K = 50, 2, 13, 5  # 26 tokens: chunks of 4 and 7 do not divide them


def _signal(kind: str, targets: torch.Tensor, vocab: int = V, seed: int = 0) -> GuidanceSignal | None:
    """A signal of each kind a loss reads, with padding entries, a duplicate listed id, an
    empty position, unaligned positions, a support and a teacher vocabulary smaller than V."""
    g = torch.Generator().manual_seed(seed)
    b, t = targets.shape
    if kind == "none":
        return None
    if kind == "uniform":
        return UniformTeacher().signal(targets.clamp_min(0))
    support = torch.rand(vocab, generator=g) < 0.8
    support[targets.clamp_min(0).flatten()] = True
    if kind == "dense":
        teacher = 3 * torch.randn(b, t, vocab - 3, generator=g)  # the teacher's tokenizer: 3 ids fewer
        logq = torch.log_softmax(teacher.masked_fill(~support[: vocab - 3], float("-inf")), -1)
        empty = torch.zeros(b, t, 0)
        sig = GuidanceSignal(empty.long(), empty, torch.zeros(b, t), logq, support=support)
    else:
        allowed = torch.nonzero(support).flatten()
        ids = allowed[torch.stack([torch.randperm(allowed.numel(), generator=g)[:K] for _ in range(b * t)])]
        probs = torch.rand(b * t, K, generator=g)
        probs[:, -1] = 0.0  # a padding entry
        probs = probs / probs.sum(-1, keepdim=True) * 0.8
        sig = GuidanceSignal(ids.view(b, t, K), probs.view(b, t, K), torch.full((b, t), 0.2))
        sig.ids[0, 0, 1] = sig.ids[0, 0, 0]  # a duplicate id
        sig.probs[1, 2], sig.rest[1, 2] = 0.0, 0.0  # nothing listed and no tail
        sig.ids[1, 3, 0] = targets[1, 3].clamp_min(0)  # the target among the teacher's tokens
        sig.support = support if kind == "topk_support" else None
    sig.valid = torch.rand(b, t, generator=g) > 0.2
    return sig


# (objective, signal kind, loss options)
CASES = [
    ("ce", "none", {}),
    ("bigram", "topk", {"tail_policy": "uniform"}),
    ("bigram", "topk", {"tail_policy": "renormalize"}),
    ("bigram", "topk", {"tail_policy": "drop"}),
    ("label_smoothing", "uniform", {}),
    ("surrogate", "topk", {"weighting": "probability"}),
    ("surrogate", "topk", {"weighting": "inverse_perplexity"}),
    ("kl", "topk", {"alpha": 0.3, "temperature": 1.0}),
    ("kl", "topk_support", {"alpha": 0.3, "temperature": 2.0}),
    ("kl", "dense", {"alpha": 0.5, "temperature": 1.0}),
    ("kl", "dense", {"alpha": 0.5, "temperature": 2.0}),
    ("masked_diffusion", "none", {}),
]


def _run(objective, logits, targets, signal, opts, chunk_tokens):
    """Every term of the objective and the logits' gradient of a weighted sum of all of them
    (so each term's own gradient is compared, not only the optimised loss's)."""
    z = logits.clone().requires_grad_(True)
    if objective == "masked_diffusion":
        p = torch.linspace(0.1, 0.9, targets.numel(), device=targets.device).view(targets.shape)
        opts = {**opts, "p": p}
    out = objectives.compute_named(objective, z, targets, signal, 0.7, chunk_tokens=chunk_tokens, **opts)
    total = sum((i + 1) * v for i, v in enumerate(out.values()) if v.requires_grad)
    total.backward()
    return {k: v.detach() for k, v in out.items()}, z.grad


def _inputs(kind: str, dtype):
    """(logits (B, T, V) of `dtype`, targets with ignored positions, the signal of `kind`)."""
    torch.manual_seed(0)
    logits = (3 * torch.randn(B, T, V)).to(dtype)
    targets = torch.randint(0, V, (B, T))
    targets[0, 9:] = losses.IGNORE
    targets[1, 0] = losses.IGNORE
    return logits, targets, _signal(kind, targets)


@pytest.mark.parametrize("chunk_tokens", [4, 7, 1024])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("objective,kind,opts", CASES, ids=lambda c: c if isinstance(c, str) else None)
def test_chunked_equals_plain_autograd(objective, kind, opts, dtype, chunk_tokens):
    logits, targets, signal = _inputs(kind, dtype)
    plain, plain_grad = _run(objective, logits, targets, signal, opts, None)
    chunked, chunked_grad = _run(objective, logits, targets, signal, opts, chunk_tokens)
    assert chunked.keys() == plain.keys()
    assert chunked_grad.dtype == dtype
    tol = {"rtol": 1e-5, "atol": 1e-6}
    for name in plain:
        torch.testing.assert_close(chunked[name], plain[name], **tol, msg=name)
    gtol = tol if dtype == torch.float32 else {"rtol": 1e-2, "atol": 1e-4}  # bf16 gradients
    torch.testing.assert_close(chunked_grad, plain_grad, **gtol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_chunked_z_loss_equals_plain_autograd(dtype):
    torch.manual_seed(4)
    logits = (3 * torch.randn(B, T, V)).to(dtype)
    targets = torch.randint(0, V, (B, T))
    targets[0, 5:] = losses.IGNORE
    results = []
    for chunk in (None, 4):
        z = logits.clone().requires_grad_(True)
        value = losses.z_loss(z, targets, chunk_tokens=chunk)
        value.backward()
        results.append((value.detach(), z.grad))
    torch.testing.assert_close(results[1][0], results[0][0], rtol=1e-5, atol=1e-6)
    gtol = {"rtol": 1e-5, "atol": 1e-6} if dtype == torch.float32 else {"rtol": 1e-2, "atol": 1e-4}
    torch.testing.assert_close(results[1][1], results[0][1], **gtol)


def test_fp64_chunks_are_exact_and_per_token_kl_grads_agree():
    """In fp64 the chunked path is the plain one to rounding, per token as well as in the mean."""
    torch.manual_seed(1)
    logits = torch.randn(B, T, V, dtype=torch.float64)
    targets = torch.randint(0, V, (B, T))
    for kind in ("topk_support", "dense"):
        signal = _signal(kind, targets, seed=2)
        weights = torch.rand(B, T, dtype=torch.float64)
        grads = []
        for chunk in (None, 3):
            z = logits.clone().requires_grad_(True)
            kl = losses.kl_divergence(z, signal, 2.0, chunk_tokens=chunk)
            (kl * weights).sum().backward()
            grads.append((kl.detach(), z.grad))
        torch.testing.assert_close(grads[1][0], grads[0][0], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(grads[1][1], grads[0][1], rtol=1e-12, atol=1e-12)


def test_chunk_setting_default_is_the_schema_default_and_bad_values_are_refused():
    assert cfg.validate({}, "training")["loss_chunk_tokens"] == losses.CHUNK_TOKENS
    logits, targets = torch.randn(1, 3, V), torch.randint(0, V, (1, 3))
    for bad in (0, -4, 2.5, True):
        with pytest.raises(ValueError, match="chunk_tokens"):
            losses.ce_loss(logits, targets, chunk_tokens=bad)


def _bench():
    spec = importlib.util.spec_from_file_location("bench_memory", ROOT / "benchmarks" / "bench_memory.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


MEMORY_CASES = [c for c in CASES if not (c[0] == "bigram" and c[2]["tail_policy"] != "uniform")]


@pytest.mark.parametrize("objective,kind,opts", MEMORY_CASES, ids=lambda c: c if isinstance(c, str) else None)
def test_a_step_holds_the_gradient_and_a_few_chunks_not_a_dense_copy(objective, kind, opts):
    """Peak bytes live in torch's allocator over forward + backward (the inputs allocated
    before): at most the logits' gradient and 8 (chunk x V) fp32 buffers (the chunked path
    holds up to 4 and a kernel's temporary), per-token tensors aside; plain autograd holds
    at least a second (tokens x V) tensor and breaks the same bound."""
    n, vocab, chunk = 256, 512, 8
    torch.manual_seed(3)
    logits = torch.randn(4, n // 4, vocab, requires_grad=True)
    targets = torch.randint(0, vocab, (4, n // 4))
    targets[0, :5] = losses.IGNORE
    signal = _signal(kind, targets, vocab)
    extra = {"p": torch.full(targets.shape, 0.5)} if objective == "masked_diffusion" else {}
    peak = _bench().allocator_peak

    def step(chunk_tokens):
        out = objectives.compute_named(
            objective, logits, targets, signal, 0.7, chunk_tokens=chunk_tokens, **opts, **extra
        )
        out["loss"].backward()
        logits.grad = None

    row = vocab * 4
    bound = n * row + 8 * chunk * row + 32 * n * K * 4  # gradient + chunk buffers + per-token
    chunked, plain = peak(lambda: step(chunk)), peak(lambda: step(None))
    assert n * row <= chunked <= bound, (chunked / row, bound / row)
    assert plain > bound, (plain / row, bound / row)


def test_z_loss_alone_is_chunked():
    logits = torch.randn(4, 64, 512, requires_grad=True)
    targets = torch.randint(0, 512, (4, 64))
    peak = _bench().allocator_peak

    def step(chunk):
        losses.z_loss(logits, targets, chunk_tokens=chunk).backward()
        logits.grad = None

    row = 512 * 4
    assert peak(lambda: step(8)) <= 256 * row + 8 * 8 * row < peak(lambda: step(None))


def test_memory_benchmark_smoke():
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_memory.py"), "--smoke"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    for arm in ("ce", "bigram", "label_smoothing", "surrogate (cached)", "kl top-k (cached)", "kl dense"):
        assert any(line.startswith(arm) for line in lines), arm
    match = re.fullmatch(r"max peak ratio vs ce: (\d+\.\d+)", lines[-1])
    assert match and float(match.group(1)) >= 1.0


def test_validation_elbo_in_chunks_equals_the_formula_and_stays_bounded():
    """diffusion.elbo over chunks of masked positions: the direct formula's value (float64,
    chunk sizes that do and do not divide the masked count), and the allocator's peak beyond
    the model's logits within a few chunks of (tokens x V), where all at once holds the masked
    rows twice in float64."""
    from sdce import diffusion

    b, seq_len, vocab, mask_id = 4, 64, 512, 511
    torch.manual_seed(5)
    ids = torch.randint(0, vocab - 1, (b, seq_len))
    table = torch.randn(seq_len, vocab)
    model = lambda x: table.expand(x.shape[0], -1, -1).clone()  # noqa: E731  fresh logits per call

    draws = diffusion._draws(ids, mask_id, 3, diffusion._cpu_generator(7), "exact_count", 1e-3)
    direct = 0.0
    for noisy, masked, p in draws:  # LLaDA's formula term by term
        logp = torch.log_softmax(model(noisy).double(), -1)
        for i, j in masked.nonzero().tolist():
            direct += float(-logp[i, j, ids[i, j]] / p[i, j])
    direct /= 3 * b * seq_len
    values = {
        c: diffusion.elbo(model, ids, mask_id, n_draws=3, seed=7, chunk_tokens=c) for c in (None, 7, 64)
    }
    assert all(v == pytest.approx(direct, rel=1e-12) for v in values.values()), values

    peak = _bench().allocator_peak
    row = vocab * 4
    logits = b * seq_len * row
    chunked = peak(lambda: diffusion.elbo(model, ids, mask_id, n_draws=1, seed=7, chunk_tokens=8))
    plain = peak(lambda: diffusion.elbo(model, ids, mask_id, n_draws=1, seed=7, chunk_tokens=None))
    bound = logits + 8 * 8 * row + 64 * b * seq_len * 8  # logits + chunk buffers + per-token
    assert chunked <= bound < plain, (chunked / row, bound / row, plain / row)
