"""Losses and schedules against direct references on a tiny vocabulary."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sdce import losses, objectives
from sdce.schedules import guidance_weight
from sdce.teachers.bigram import BigramTeacher, count_bigrams, topk_table
from sdce.teachers.signal import GuidanceSignal

V = 7


def dense_bigram(tokens, vocab, smoothing):
    c = np.zeros((vocab, vocab))
    for a, b in zip(tokens[:-1], tokens[1:], strict=False):
        c[a, b] += 1
    n = c.sum(1, keepdims=True)
    p = (c + smoothing) / np.maximum(n + smoothing * vocab, 1e-300)
    p[(n[:, 0] + smoothing * vocab) == 0] = 1.0 / vocab  # unseen predecessor: uniform
    return p


def reference_mix_loss(logits, targets, p_bigram, weight):
    """-sum_j (w p_bigram(j|x_t) + (1-w) onehot_j) log p(j), looped over positions."""
    logp = torch.log_softmax(logits.double(), -1)
    total, n = 0.0, 0
    for b in range(logits.shape[0]):
        for t in range(logits.shape[1]):
            if targets[b, t] == -100:
                continue
            q = weight * p_bigram[b, t] + (1 - weight) * F.one_hot(targets[b, t], V).double()
            total += -(q * logp[b, t]).sum().item()
            n += 1
    return total / n


@pytest.mark.parametrize("smoothing", [0.0, 0.5])
@pytest.mark.parametrize("weight", [0.0, 0.3, 1.0])
def test_bigram_mix_loss_matches_dense_reference(smoothing, weight):
    rng = np.random.default_rng(0)
    corpus = rng.integers(0, V - 1, size=500)  # token V-1 never occurs: an unseen predecessor
    table = topk_table(count_bigrams(corpus, V), top_k=V, smoothing=smoothing)
    teacher = BigramTeacher(*(torch.from_numpy(table[k]) for k in ("ids", "probs", "rest")))
    x = torch.from_numpy(rng.integers(0, V, size=(3, 9)))
    y = torch.from_numpy(rng.integers(0, V, size=(3, 9)))
    y[0, :2] = -100
    logits = torch.randn(3, 9, V, dtype=torch.float64)
    out = losses.bigram_mix_loss(logits, y, teacher.signal(x), weight)
    p = torch.from_numpy(dense_bigram(corpus, V, smoothing))[x]
    assert out["loss"].item() == pytest.approx(reference_mix_loss(logits, y, p, weight), rel=1e-6)


def test_topk_truncation_keeps_rest_and_uniform_policy_is_exact_for_smoothing():
    rng = np.random.default_rng(1)
    corpus = rng.integers(0, V, size=2000)
    full = topk_table(count_bigrams(corpus, V), top_k=V, smoothing=0.2)
    cut = topk_table(count_bigrams(corpus, V), top_k=2, smoothing=0.2)
    assert cut["ids"].shape == (V, 2)
    np.testing.assert_allclose(cut["probs"].sum(1) + cut["rest"], 1.0, atol=1e-6)
    np.testing.assert_allclose(full["probs"].sum(1) + full["rest"], 1.0, atol=1e-6)
    # the kept entries are the most frequent successors
    dense = dense_bigram(corpus, V, 0.2)
    for i in range(V):
        assert set(cut["ids"][i]) == set(np.argsort(-dense[i], kind="stable")[:2])


def test_ce_objective_and_zero_weight_are_exactly_cross_entropy():
    torch.manual_seed(0)
    logits, y = torch.randn(2, 5, V), torch.randint(0, V, (2, 5))
    ref = F.cross_entropy(logits.reshape(-1, V), y.reshape(-1))
    assert losses.ce_loss(logits, y)["loss"].item() == pytest.approx(ref.item(), abs=1e-6)
    sig = GuidanceSignal(torch.zeros(2, 5, 1, dtype=torch.long), torch.ones(2, 5, 1), torch.zeros(2, 5))
    assert losses.bigram_mix_loss(logits, y, sig, 0.0)["loss"].item() == pytest.approx(ref.item(), abs=1e-6)
    assert objectives.compute_named("bigram", logits, y, None, 0.7)["loss"].item() == pytest.approx(
        ref.item(), abs=1e-6
    )


def test_tail_policies():
    logits = torch.randn(1, 1, V, dtype=torch.float64)
    logp = torch.log_softmax(logits, -1)
    sig = GuidanceSignal(
        torch.tensor([[[2, 4]]]),
        torch.tensor([[[0.3, 0.2]]], dtype=torch.float64),
        torch.tensor([[0.5]], dtype=torch.float64),
    )
    listed = -(0.3 * logp[0, 0, 2] + 0.2 * logp[0, 0, 4])
    assert losses.teacher_cross_entropy(logp, sig, "drop").item() == pytest.approx(listed.item())
    assert losses.teacher_cross_entropy(logp, sig, "renormalize").item() == pytest.approx(listed.item() / 0.5)
    uniform = listed - 0.5 * logp[0, 0].mean()
    assert losses.teacher_cross_entropy(logp, sig, "uniform").item() == pytest.approx(uniform.item())
    with pytest.raises(ValueError, match="tail_policy"):
        losses.teacher_cross_entropy(logp, sig, "nope")


def test_z_loss_adds_log_partition_squared():
    logits, y = torch.randn(2, 3, V), torch.randint(0, V, (2, 3))
    out = objectives.compute_named("ce", logits, y, None, 0.0, z_weight=0.1)
    lse = torch.logsumexp(logits, -1)
    assert out["z_loss"].item() == pytest.approx(lse.square().mean().item(), rel=1e-5)
    assert out["loss"].item() == pytest.approx(out["ce"].item() + 0.1 * out["z_loss"].item(), rel=1e-5)


def test_bigram_loss_gradient_is_softmax_minus_target_mixture():
    logits = torch.randn(1, 1, V, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([[3]])
    p = torch.full((V,), 1.0 / V, dtype=torch.float64)
    sig = GuidanceSignal(
        torch.arange(V).view(1, 1, V), p.view(1, 1, V), torch.zeros(1, 1, dtype=torch.float64)
    )
    losses.bigram_mix_loss(logits, y, sig, 0.25)["loss"].backward()
    q = 0.25 * p + 0.75 * F.one_hot(torch.tensor(3), V).double()
    torch.testing.assert_close(logits.grad[0, 0], torch.softmax(logits.detach()[0, 0], -1) - q)


SPEC = {"initial_weight": 1.0, "min_weight": 0.05, "schedule_steps": 100, "decay_rate": 5.0}


@pytest.mark.parametrize("kind", ["linear", "exponential", "reciprocal"])
def test_schedules_start_end_monotone(kind):
    spec = {**SPEC, "schedule": kind}
    ws = [guidance_weight(t, spec) for t in range(0, 150)]
    assert ws[0] == pytest.approx(1.0)
    assert ws[100] == pytest.approx(0.05) and ws[149] == pytest.approx(0.05)
    assert ws[99] > 0.05 and all(a >= b for a, b in zip(ws, ws[1:], strict=False))


def test_schedule_formulas():
    r, w0, wm = 5.0, 1.0, 0.05
    x = 0.3
    lin = {**SPEC, "schedule": "linear"}
    assert guidance_weight(30, lin) == pytest.approx(wm + (w0 - wm) * 0.7)
    exp = {**SPEC, "schedule": "exponential"}
    f = (math.exp(-r * x) - math.exp(-r)) / (1 - math.exp(-r))
    assert guidance_weight(30, exp) == pytest.approx(wm + (w0 - wm) * f)
    rec = {**SPEC, "schedule": "reciprocal"}
    f = (1 / (1 + r * x) - 1 / (1 + r)) / (1 - 1 / (1 + r))
    assert guidance_weight(30, rec) == pytest.approx(wm + (w0 - wm) * f)
    assert guidance_weight(500, {**SPEC, "schedule": "constant"}) == 1.0
    with pytest.raises(ValueError, match="unknown schedule"):
        guidance_weight(3, {**SPEC, "schedule": "cubic"})


# --------------------------------------------------------------------------- LM-teacher objectives

torch.set_num_threads(1)


def test_cosine_schedule_and_whole_run_length():
    spec = {**SPEC, "schedule": "cosine", "min_weight": 0.0, "schedule_steps": None}
    assert guidance_weight(0, spec, 300) == pytest.approx(1.0)
    assert guidance_weight(75, spec, 300) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.25)))
    assert guidance_weight(150, spec, 300) == pytest.approx(0.5)
    assert guidance_weight(300, spec, 300) == 0.0
    with pytest.raises(ValueError, match="run length"):
        guidance_weight(3, spec)


def test_label_smoothing_is_torch_label_smoothing_and_bigram_with_a_uniform_teacher():
    from sdce.teachers.uniform import UniformTeacher

    logits, y = torch.randn(2, 6, V, dtype=torch.float64), torch.randint(0, V, (2, 6))
    y[1, :3] = -100
    sig = UniformTeacher().signal(y.clamp_min(0))
    out = objectives.compute_named("label_smoothing", logits, y, sig, 0.3)
    ref = F.cross_entropy(logits.reshape(-1, V), y.reshape(-1), label_smoothing=0.3)
    assert out["loss"].item() == pytest.approx(ref.item(), rel=1e-9)
    mix = losses.bigram_mix_loss(logits, y, sig, 0.3, tail_policy="uniform")
    assert out["loss"].item() == pytest.approx(mix["loss"].item(), rel=1e-12)


def random_topk(b, t, k, vocab=V, seed=0, rest_scale=0.3):
    """A sparse signal: distinct ids per position, some padding entries, a tail."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.stack([torch.randperm(vocab, generator=g)[:k] for _ in range(b * t)]).view(b, t, k)
    probs = torch.rand(b, t, k, generator=g, dtype=torch.float64)
    probs[..., -1] = 0.0  # a padding entry (dropped by mapping or threshold)
    rest = torch.rand(b, t, generator=g, dtype=torch.float64) * rest_scale
    total = probs.sum(-1) + rest
    return GuidanceSignal(ids, probs / total.unsqueeze(-1) * 0.9, rest / total * 0.9)


def reference_surrogate(logits, targets, sig, weight, weighting="probability"):
    logp = torch.log_softmax(logits.double(), -1)
    ce = g = 0.0
    n = 0
    for b in range(logits.shape[0]):
        for t in range(logits.shape[1]):
            y = int(targets[b, t])
            if y == -100:
                continue
            n += 1
            ce += -logp[b, t, y].item()
            if sig.valid is not None and not sig.valid[b, t]:
                continue
            cand = [
                (int(i), float(p))
                for i, p in zip(sig.ids[b, t], sig.probs[b, t], strict=True)
                if p > 0 and int(i) != y
            ]
            if not cand:
                continue
            if weighting == "probability":
                scores = torch.tensor([math.log(p) for _, p in cand], dtype=torch.float64)
            else:
                scores = torch.tensor([-1.0 / p for _, p in cand], dtype=torch.float64)
            w = torch.softmax(scores, 0)
            g += sum(wj.item() * -logp[b, t, i].item() for wj, (i, _) in zip(w, cand, strict=True))
    return ce / n + weight * g / n


@pytest.mark.parametrize("weighting", ["probability", "inverse_perplexity"])
def test_surrogate_loss_matches_dense_loop(weighting):
    torch.manual_seed(0)
    logits = torch.randn(2, 5, V, dtype=torch.float64)
    y = torch.randint(0, V, (2, 5))
    y[0, 0] = -100
    sig = random_topk(2, 5, 4)
    sig.ids[1, 2, 0] = y[1, 2]  # the actual target among the teacher's tokens: removed
    sig.valid = torch.ones(2, 5, dtype=torch.bool)
    sig.valid[1, 4] = False  # an unaligned position adds nothing
    out = objectives.compute_named("surrogate", logits, y, sig, 0.6, weighting=weighting)
    assert out["loss"].item() == pytest.approx(reference_surrogate(logits, y, sig, 0.6, weighting), rel=1e-9)
    assert out["aligned"].item() == pytest.approx(8 / 9)
    ce = F.cross_entropy(logits.reshape(-1, V), y.reshape(-1))
    assert objectives.compute_named("surrogate", logits, y, sig, 0.0)["loss"].item() == pytest.approx(
        ce.item(), rel=1e-12
    )


def dense_signal(teacher_logits, temperature, support=None):
    z = teacher_logits.double() / temperature
    if support is not None:
        z = z.masked_fill(~support, float("-inf"))
    b, t, _ = z.shape
    empty = torch.zeros(b, t, 0)
    return GuidanceSignal(
        empty.long(), empty.double(), torch.zeros(b, t), torch.log_softmax(z, -1), None, support
    )


def reference_kd(logits, targets, teacher_logits, alpha, temperature, weight=1.0):
    """alpha CE + (1 - alpha) T^2 KL with F.kl_div, mean over non-ignored tokens."""
    keep = targets.reshape(-1) != -100
    s = logits.reshape(-1, V)[keep].double()
    t = teacher_logits.reshape(-1, V)[keep].double()
    ce = F.cross_entropy(s, targets.reshape(-1)[keep])
    kl = F.kl_div(
        torch.log_softmax(s / temperature, -1),
        torch.log_softmax(t / temperature, -1),
        log_target=True,
        reduction="batchmean",
    )
    share = weight * (1 - alpha)
    return (1 - share) * ce + share * temperature**2 * kl, kl


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0])
@pytest.mark.parametrize("alpha", [0.0, 0.5])
def test_kl_loss_dense_matches_f_kl_div_with_t_squared(temperature, alpha):
    torch.manual_seed(1)
    logits, teacher = torch.randn(2, 6, V, dtype=torch.float64), torch.randn(2, 6, V, dtype=torch.float64)
    y = torch.randint(0, V, (2, 6))
    y[1, 3:] = -100
    out = objectives.compute_named(
        "kl", logits, y, dense_signal(teacher, temperature), 1.0, alpha=alpha, temperature=temperature
    )
    ref, kl = reference_kd(logits, y, teacher, alpha, temperature)
    assert out["loss"].item() == pytest.approx(ref.item(), rel=1e-9)
    assert out["kl"].item() == pytest.approx(kl.item(), rel=1e-9)
    assert out["guidance"].item() == pytest.approx(temperature**2 * kl.item(), rel=1e-9)
    # the schedule moves the teacher share: w = 0.4 gives (1 - 0.4(1 - alpha)) CE + 0.4(1 - alpha) T^2 KL
    partial = objectives.compute_named(
        "kl", logits, y, dense_signal(teacher, temperature), 0.4, alpha=alpha, temperature=temperature
    )
    assert partial["loss"].item() == pytest.approx(
        reference_kd(logits, y, teacher, alpha, temperature, 0.4)[0].item()
    )


def test_kl_is_zero_for_the_teacher_itself_and_ce_at_alpha_one_or_weight_zero():
    torch.manual_seed(2)
    logits, y = torch.randn(2, 4, V, dtype=torch.float64), torch.randint(0, V, (2, 4))
    ce = F.cross_entropy(logits.reshape(-1, V), y.reshape(-1)).item()
    same = objectives.compute_named(
        "kl", logits, y, dense_signal(logits, 2.0), 1.0, alpha=0.5, temperature=2.0
    )
    assert abs(same["kl"].item()) < 1e-12
    # a full top-k listing of the student's own distribution is the same KL = 0
    q = torch.softmax(logits / 2.0, -1)
    full = GuidanceSignal(torch.arange(V).expand(2, 4, V), q, torch.zeros(2, 4, dtype=torch.float64))
    assert (
        abs(objectives.compute_named("kl", logits, y, full, 1.0, alpha=0.5, temperature=2.0)["kl"].item())
        < 1e-12
    )
    other = dense_signal(torch.randn(2, 4, V, dtype=torch.float64), 2.0)
    for alpha, weight in ((1.0, 1.0), (0.3, 0.0)):
        out = objectives.compute_named("kl", logits, y, other, weight, alpha=alpha, temperature=2.0)
        assert out["loss"].item() == out["ce"].item() == pytest.approx(ce, rel=1e-12)
    assert objectives.compute_named("kl", logits, y, None, 0.0, alpha=0.3, temperature=2.0)[
        "loss"
    ].item() == pytest.approx(ce)


def test_kl_gradient_is_t_times_student_minus_teacher():
    torch.manual_seed(3)
    T = 2.0
    logits = torch.randn(1, 3, V, dtype=torch.float64, requires_grad=True)
    teacher = torch.randn(1, 3, V, dtype=torch.float64)
    y = torch.randint(0, V, (1, 3))
    out = objectives.compute_named("kl", logits, y, dense_signal(teacher, T), 1.0, alpha=0.0, temperature=T)
    out["guidance"].backward()  # T^2 KL, mean over 3 tokens
    expected = T * (torch.softmax(logits.detach() / T, -1) - torch.softmax(teacher / T, -1)) / 3
    torch.testing.assert_close(logits.grad, expected)


def reference_bucket_kl(logits, sig, T, support=None):
    """Two-bucket KL per position, looped: listed ids one by one, everything else one bucket."""
    out = torch.zeros(logits.shape[:2], dtype=torch.float64)
    z = logits.double() / T
    if support is not None:
        z = z.masked_fill(~support, float("-inf"))
    s = torch.softmax(z, -1)
    for b in range(logits.shape[0]):
        for t in range(logits.shape[1]):
            listed = [(int(i), p) for i, p in zip(sig.ids[b, t], sig.probs[b, t], strict=True) if p > 0]
            total = sum(p for _, p in listed) + sig.rest[b, t]
            kl = 0.0
            for i, p in listed:
                kl = kl + p / total * torch.log((p / total) / s[b, t, i])
            q_r, s_r = sig.rest[b, t] / total, 1 - sum(s[b, t, i] for i, _ in listed)
            out[b, t] = kl + (q_r * torch.log(q_r / s_r) if q_r > 0 else 0.0)
    return out


def test_topk_kl_is_a_two_bucket_term_with_the_reference_gradient():
    torch.manual_seed(4)
    support = torch.ones(V, dtype=torch.bool)
    support[[1, 5]] = False  # student ids outside the vocabulary intersection
    sig = random_topk(2, 3, 3, seed=4)
    sig.ids = sig.ids.where(~(sig.ids == 1) & ~(sig.ids == 5), torch.tensor(0))  # listed ids lie in it
    sig.support = support
    logits = torch.randn(2, 3, V, dtype=torch.float64, requires_grad=True)
    ours = losses.kl_divergence(logits, sig, 2.0)
    ref_logits = logits.detach().clone().requires_grad_(True)
    ref = reference_bucket_kl(ref_logits, sig, 2.0, support)
    torch.testing.assert_close(ours, ref)
    ours.sum().backward()
    ref.sum().backward()
    torch.testing.assert_close(logits.grad, ref_logits.grad)
    # k covering the whole support with no tail: the bucket term is the exact restricted KL
    teacher = torch.randn(2, 3, V, dtype=torch.float64)
    q = torch.softmax((teacher / 2.0).masked_fill(~support, float("-inf")), -1)
    full = GuidanceSignal(torch.arange(V).expand(2, 3, V), q, torch.zeros(2, 3, dtype=torch.float64))
    full.support = support
    dense = losses.kl_divergence(logits.detach(), dense_signal(teacher, 2.0, support), 2.0)
    torch.testing.assert_close(losses.kl_divergence(logits.detach(), full, 2.0), dense)


def test_kl_normalises_per_token_and_masks_padding_and_unaligned_positions():
    torch.manual_seed(5)
    logits, teacher = torch.randn(2, 5, V), torch.randn(2, 5, V)
    y = torch.randint(0, V, (2, 5))
    y[0, 3:] = -100
    sig = dense_signal(teacher, 1.0)
    base = objectives.compute_named("kl", logits, y, sig, 1.0, alpha=0.5, temperature=1.0)["loss"]
    moved = logits.clone()
    moved[0, 3:] += 10 * torch.randn(2, V)  # padding positions: no effect
    assert objectives.compute_named("kl", moved, y, sig, 1.0, alpha=0.5, temperature=1.0)[
        "loss"
    ].item() == pytest.approx(base.item(), rel=1e-6)
    per_tok = losses.kl_divergence(logits, sig, 1.0)
    keep = y != -100
    out = objectives.compute_named("kl", logits, y, sig, 1.0, alpha=0.5, temperature=1.0)
    assert out["kl"].item() == pytest.approx(per_tok[keep].mean().item(), rel=1e-6)
    sig.valid = torch.ones(2, 5, dtype=torch.bool)
    sig.valid[1, 0] = False  # unaligned: no teacher term, still counted in the mean
    masked = objectives.compute_named("kl", logits, y, sig, 1.0, alpha=0.5, temperature=1.0)
    expected = (per_tok * sig.valid)[keep].sum() / keep.sum()
    assert masked["kl"].item() == pytest.approx(expected.item(), rel=1e-6)


@pytest.mark.parametrize("objective", ["surrogate", "kl"])
def test_bf16_logits_agree_with_fp32(objective):
    torch.manual_seed(6)
    logits = torch.randn(2, 8, V)
    y = torch.randint(0, V, (2, 8))
    sig = random_topk(2, 8, 3, seed=6)
    sig = GuidanceSignal(sig.ids, sig.probs.float(), sig.rest.float())
    opts = {"weighting": "probability"} if objective == "surrogate" else {"alpha": 0.5, "temperature": 2.0}
    a = objectives.compute_named(objective, logits, y, sig, 0.7, **opts)["loss"]
    b = objectives.compute_named(objective, logits.bfloat16(), y, sig, 0.7, **opts)["loss"]
    assert b.dtype == torch.float32
    assert b.item() == pytest.approx(a.item(), rel=2e-2)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
@pytest.mark.parametrize("temperature,with_support", [(1.0, False), (2.0, False), (2.0, True), (3.0, True)])
def test_fused_topk_kl_matches_plain_autograd(monkeypatch, dtype, temperature, with_support):
    """The CPU top-k path (one fused pass over the vocabulary in row blocks, softmaxes
    recomputed in backward) gives the plain-autograd values and gradients, over several
    blocks, with a duplicate listed id, an empty position, padding and bf16 logits."""
    torch.manual_seed(7)
    sig = random_topk(3, 5, 4, seed=7)
    sig.ids[0, 0, 1] = sig.ids[0, 0, 0]
    sig.probs[1, 2], sig.rest[1, 2] = 0.0, 0.0  # nothing listed and no tail
    sig.valid = torch.ones(3, 5, dtype=torch.bool)
    sig.valid[2, 1] = False
    if with_support:
        sig.support = torch.ones(V, dtype=torch.bool)
        sig.support[6] = False
        sig.ids = sig.ids.where(sig.ids != 6, torch.tensor(5))
    logits = (3 * torch.randn(3, 5, V, dtype=torch.float64)).to(dtype)
    y = torch.randint(0, V, (3, 5))
    y[0, 3:] = -100
    results = []
    for fused in (False, True):
        monkeypatch.setattr(losses, "_fused", lambda z, fused=fused: fused)
        monkeypatch.setattr(losses, "_block_rows", lambda n, v, dtype: 4)  # 15 rows: 4 blocks
        z = logits.clone().requires_grad_(True)
        out = objectives.compute_named("kl", z, y, sig, 0.8, alpha=0.3, temperature=temperature)
        out["loss"].backward()
        z2 = logits.clone().requires_grad_(True)
        per_tok = losses.kl_divergence(z2, sig, temperature)
        (per_tok * torch.arange(15.0).view(3, 5)).sum().backward()
        results.append(([out[k].detach() for k in ("loss", "ce", "kl")], per_tok.detach(), z.grad, z2.grad))
    (plain, plain_tok, plain_grad, plain_grad2), (fused, fused_tok, fused_grad, fused_grad2) = results
    assert fused_grad.dtype == plain_grad.dtype == dtype
    tol = {} if dtype == torch.float64 else {"rtol": 1e-5, "atol": 1e-6}
    for a, b in zip(plain, fused, strict=True):
        torch.testing.assert_close(b, a, **tol)
    torch.testing.assert_close(fused_tok, plain_tok, **tol)
    gtol = {} if dtype == torch.float64 else {"rtol": 1e-2, "atol": 1e-4}  # bf16 gradients
    torch.testing.assert_close(fused_grad, plain_grad, **gtol)
    torch.testing.assert_close(fused_grad2, plain_grad2, **gtol)
