"""Losses and schedules against direct references on a tiny vocabulary."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sdce import losses
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
    assert losses.compute("bigram", logits, y, None, 0.7)["loss"].item() == pytest.approx(
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
    out = losses.compute("ce", logits, y, None, 0.0, z_weight=0.1)
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
