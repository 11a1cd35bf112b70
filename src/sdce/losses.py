"""Training objectives: pure functions of tensors with one signature.

    loss_fn(logits, targets, signal, weight, *, tail_policy, **opts) -> dict of scalar tensors

`logits` (B, T, V); `targets` (B, T) with -100 for ignored positions; `signal` a
`GuidanceSignal` over student ids (None for plain cross-entropy); `weight` the
guidance weight w(t); `opts` the objective's own settings (`options(guidance)`).
Every loss is a mean over non-ignored tokens, and every objective is exactly
cross-entropy at w = 0. The returned dict always holds `loss` (what is optimised)
and `ce`; guided losses add `guidance` (the teacher term as it enters the loss, before
w), `teacher_mass` (the listed mass, after vocabulary mapping and thresholding, mean
over aligned positions) and, for teachers with their own tokenizer, `aligned` (the
fraction of positions the teacher could align; the others carry no teacher term).

    bigram           (1 - w) CE + w H(q, p)            q the bigram teacher (tail policy below)
    label_smoothing  (1 - w) CE + w H(u, p)            u uniform: bigram mixing with a uniform
                                                       teacher, = F.cross_entropy(label_smoothing=w)
    surrogate        CE + w G,  G_i = sum_j a_ij (-log p(t_ij))
    kl               (1 - w(1 - alpha)) CE + w (1 - alpha) T^2 KL(q^T || p^T)

Surrogate: t_ij are the teacher's top-k next tokens at position i, mapped into the
student vocabulary; entries outside the vocabulary intersection, below
`probability_threshold` (both dropped by the teacher) and equal to the actual target
are removed. The weights are the softmax of the candidates' negative log-perplexity,
-log PPL_j = log q_j, so a_ij = q_ij / sum_k q_ik (`weighting: probability`); the
literal softmax of negative perplexity, a_ij = softmax_j(-1 / q_ij), is
`weighting: inverse_perplexity` (much sharper). A position with no candidate adds 0.

KL: q^T is the teacher at temperature T (the teacher applies T before its top-k),
p^T = softmax(z / T) of the student. Both are taken over the teacher's `support`
(the vocabulary intersection; the whole vocabulary for a teacher with the student's
tokenizer) and renormalised there. With a dense signal the KL is exact. With a
top-k signal the unlisted mass is one bucket: teacher q_r = rest / (listed + rest)
against the student's renormalised mass outside the listed ids, s_r = 1 - sum_j s_j:

    KL = sum_j q_j log(q_j / s_j) + q_r log(q_r / s_r)

which is exact when nothing is left unlisted (rest = 0 and k covers the support).
At w = 1 this is alpha CE + (1 - alpha) T^2 KL; the guidance schedule w(t) moves the
objective to pure CE (a "distill early, then switch off" run is a schedule reaching 0).

Tail policies (bigram) for the teacher mass `rest` not listed in the sparse signal:
    uniform      spread `rest` evenly over the whole vocabulary (exact for add-k smoothing)
    renormalize  rescale the listed probabilities to sum to one (uniform if none listed)
    drop         ignore `rest`: the teacher term covers only the listed mass
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sdce.teachers.signal import GuidanceSignal

IGNORE = -100


def _upcast(logits: torch.Tensor) -> torch.Tensor:
    """Losses are computed in fp32 at least (bf16/fp16 logits are cast; fp64 is kept)."""
    return logits if logits.dtype == torch.float64 else logits.float()


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.sum().clamp_min(1)


def teacher_cross_entropy(logp: torch.Tensor, signal: GuidanceSignal, tail_policy: str) -> torch.Tensor:
    """-sum_j q_j log p_j per position, q the teacher distribution under the tail policy. (B, T)"""
    listed = signal.probs.to(logp.dtype)
    term = -(listed * logp.gather(-1, signal.ids)).sum(-1)
    rest = signal.rest.to(logp.dtype)
    if tail_policy == "uniform":
        return term + rest * (-logp.mean(-1))
    if tail_policy == "renormalize":
        mass = listed.sum(-1)
        return torch.where(mass > 0, term / mass.clamp_min(1e-12), -logp.mean(-1))
    if tail_policy == "drop":
        return term
    raise ValueError(f"unknown tail_policy '{tail_policy}' (known: uniform, renormalize, drop)")


def ce_loss(logits, targets, signal=None, weight=0.0, *, tail_policy="uniform", **opts) -> dict:
    flat = logits.reshape(-1, logits.size(-1)).float()
    ce = F.cross_entropy(flat, targets.reshape(-1), ignore_index=IGNORE)
    return {"loss": ce, "ce": ce}


def bigram_mix_loss(
    logits, targets, signal: GuidanceSignal, weight: float, *, tail_policy="uniform", **opts
) -> dict:
    """-sum_j (w * p_teacher(j) + (1 - w) * onehot_j(target)) log p_model(j), mean over tokens."""
    logp = F.log_softmax(_upcast(logits), dim=-1)
    mask = (targets != IGNORE).to(logp.dtype)
    safe_targets = targets.clamp_min(0)
    ce_tok = -logp.gather(-1, safe_targets.unsqueeze(-1)).squeeze(-1)
    guide_tok = teacher_cross_entropy(logp, signal, tail_policy)
    ce = _masked_mean(ce_tok, mask)
    guidance = _masked_mean(guide_tok, mask)
    return {
        "loss": (1.0 - weight) * ce + weight * guidance,
        "ce": ce,
        "guidance": guidance,
        "teacher_mass": _masked_mean(signal.listed_mass().to(logp.dtype), mask),
    }


def label_smoothing_loss(
    logits, targets, signal: GuidanceSignal, weight: float, *, tail_policy="uniform", **opts
):
    """Bigram mixing with a uniform teacher (its signal lists nothing and has rest = 1):
    the data-independent control of the bigram objective. The tail is always uniform."""
    out = bigram_mix_loss(logits, targets, signal, weight, tail_policy="uniform")
    out.pop("teacher_mass")
    return out


def _alignment_terms(signal: GuidanceSignal, mask: torch.Tensor, dtype) -> tuple[torch.Tensor, dict]:
    """(aligned (B, T) float, the logged teacher_mass / aligned terms) of a signal."""
    aligned = mask if signal.valid is None else mask * signal.valid.to(dtype)
    terms = {"teacher_mass": (signal.listed_mass().to(dtype) * aligned).sum() / aligned.sum().clamp_min(1)}
    if signal.valid is not None:
        terms["aligned"] = aligned.sum() / mask.sum().clamp_min(1)
    return aligned, terms


def surrogate_loss(
    logits,
    targets,
    signal: GuidanceSignal,
    weight: float,
    *,
    tail_policy="uniform",
    weighting="probability",
    **opts,
) -> dict:
    """CE + w * mean_i sum_j a_ij (-log p(t_ij)) over the teacher's top-k (module docstring)."""
    logp = F.log_softmax(_upcast(logits), dim=-1)
    mask = (targets != IGNORE).to(logp.dtype)
    safe_targets = targets.clamp_min(0)
    ce_tok = -logp.gather(-1, safe_targets.unsqueeze(-1)).squeeze(-1)
    aligned, terms = _alignment_terms(signal, mask, logp.dtype)
    q = signal.probs.to(logp.dtype)
    keep = (q > 0) & (signal.ids != safe_targets.unsqueeze(-1)) & (aligned.unsqueeze(-1) > 0)
    if weighting == "probability":
        score = q.clamp_min(1e-30).log()
    elif weighting == "inverse_perplexity":
        score = -1.0 / q.clamp_min(1e-30)
    else:
        raise ValueError(
            f"unknown surrogate weighting '{weighting}' (known: probability, inverse_perplexity)"
        )
    score = score.masked_fill(~keep, float("-inf"))
    a = torch.softmax(score, dim=-1).nan_to_num(0.0)  # a row with no candidate is all zeros
    guide_tok = -(a * logp.gather(-1, signal.ids)).sum(-1)
    ce = _masked_mean(ce_tok, mask)
    guidance = _masked_mean(guide_tok, mask)
    return {"loss": ce + weight * guidance, "ce": ce, "guidance": guidance, **terms}


def _pad_vocab(x: torch.Tensor | None, size: int, value) -> torch.Tensor | None:
    """A teacher tensor over the tokenizer's ids, padded to the student model's vocabulary."""
    if x is None or x.size(-1) == size:
        return x
    return F.pad(x, (0, size - x.size(-1)), value=value)


def kl_divergence(logits: torch.Tensor, signal: GuidanceSignal, temperature: float) -> torch.Tensor:
    """KL(q^T || p^T) per position (B, T) over the teacher's support (module docstring)."""
    vocab = logits.size(-1)
    z = _upcast(logits) / temperature
    support = _pad_vocab(signal.support, vocab, False)
    if support is not None:
        z = z.masked_fill(~support.to(z.device), float("-inf"))
    logs = F.log_softmax(z, dim=-1)  # student at T, renormalised over the support
    if signal.log_probs is not None:
        logq = _pad_vocab(signal.log_probs.to(z.dtype), vocab, float("-inf"))
        logq = logq - torch.logsumexp(logq, -1, keepdim=True).clamp_min(-1e30)  # renormalised on the support
        q = logq.exp()
        kl = (q * (logq - logs)).where(q > 0, torch.zeros_like(q)).sum(-1)
    else:
        p = signal.probs.to(z.dtype)
        listed = p > 0
        rest = signal.rest.to(z.dtype)
        total = p.sum(-1) + rest
        q = p / total.clamp_min(1e-30).unsqueeze(-1)
        q_rest = rest / total.clamp_min(1e-30)
        log_s = logs.gather(-1, signal.ids).masked_fill(~listed, 0.0)
        s_rest = (1.0 - (log_s.exp() * listed).sum(-1)).clamp_min(1e-12)
        kl = (q * (q.clamp_min(1e-30).log() - log_s)).where(listed, torch.zeros_like(q)).sum(-1)
        kl = kl + torch.xlogy(q_rest, q_rest) - q_rest * s_rest.log()
        kl = torch.where(total > 0, kl, torch.zeros_like(kl))
    return kl


def kl_loss(
    logits,
    targets,
    signal: GuidanceSignal,
    weight: float,
    *,
    tail_policy="uniform",
    alpha=0.5,
    temperature=2.0,
    **opts,
) -> dict:
    """(1 - w(1 - alpha)) CE + w (1 - alpha) T^2 KL(q^T || p^T), mean over tokens (module docstring)."""
    logp = F.log_softmax(_upcast(logits), dim=-1)
    mask = (targets != IGNORE).to(logp.dtype)
    ce_tok = -logp.gather(-1, targets.clamp_min(0).unsqueeze(-1)).squeeze(-1)
    aligned, terms = _alignment_terms(signal, mask, logp.dtype)
    kl_tok = kl_divergence(logits, signal, temperature) * aligned  # unaligned positions carry nothing
    ce = _masked_mean(ce_tok, mask)
    kl = _masked_mean(kl_tok, mask)
    share = weight * (1.0 - alpha)
    guidance = temperature**2 * kl
    return {"loss": (1.0 - share) * ce + share * guidance, "ce": ce, "guidance": guidance, "kl": kl, **terms}


def z_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """mean over tokens of log(Z)^2, keeping the softmax normaliser near 1."""
    lse = torch.logsumexp(logits.float(), dim=-1)
    return _masked_mean(lse.square(), (targets != IGNORE).to(lse.dtype))


LOSSES = {
    "ce": ce_loss,
    "bigram": bigram_mix_loss,
    "label_smoothing": label_smoothing_loss,
    "surrogate": surrogate_loss,
    "kl": kl_loss,
}


def options(guidance: dict) -> dict:
    """The loss-side settings of a validated `guidance` spec (the teacher takes the rest)."""
    objective = guidance["objective"]
    if objective == "surrogate":
        return {"weighting": guidance["surrogate"]["weighting"]}
    if objective == "kl":
        return {"alpha": guidance["kl"]["alpha"], "temperature": guidance["kl"]["temperature"]}
    return {}


def compute(
    objective: str, logits, targets, signal, weight, *, tail_policy="uniform", z_weight: float = 0.0, **opts
) -> dict:
    """Dispatch by name; with no signal (weight 0) every objective is plain cross-entropy."""
    fn = LOSSES[objective] if signal is not None else ce_loss
    out = fn(logits, targets, signal, weight, tail_policy=tail_policy, **opts)
    if z_weight > 0:
        z = z_loss(logits, targets)
        out["z_loss"] = z
        out["loss"] = out["loss"] + z_weight * z
    return out
