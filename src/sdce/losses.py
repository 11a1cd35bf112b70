"""Training objectives: pure functions of tensors with one signature.

    loss_fn(logits, targets, signal, weight, *, tail_policy) -> dict of scalar tensors

`logits` (B, T, V); `targets` (B, T) with -100 for ignored positions; `signal` a
`GuidanceSignal` over student ids (None for plain cross-entropy); `weight` the
guidance weight w(t). Every loss is a mean over non-ignored tokens. The returned
dict always holds `loss` (what is optimised) and `ce`; guided losses add
`guidance` (the teacher term) and `teacher_mass` (the listed mass).

Tail policies for the teacher mass `rest` not listed in the sparse signal:
    uniform      spread `rest` evenly over the whole vocabulary (exact for add-k smoothing)
    renormalize  rescale the listed probabilities to sum to one (uniform if none listed)
    drop         ignore `rest`: the teacher term covers only the listed mass
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sdce.teachers.signal import GuidanceSignal

IGNORE = -100


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


def ce_loss(logits, targets, signal=None, weight=0.0, *, tail_policy="uniform") -> dict:
    flat = logits.reshape(-1, logits.size(-1)).float()
    ce = F.cross_entropy(flat, targets.reshape(-1), ignore_index=IGNORE)
    return {"loss": ce, "ce": ce}


def bigram_mix_loss(logits, targets, signal: GuidanceSignal, weight: float, *, tail_policy="uniform") -> dict:
    """-sum_j (w * p_teacher(j) + (1 - w) * onehot_j(target)) log p_model(j), mean over tokens."""
    logp = F.log_softmax(logits.float(), dim=-1)
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


def z_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """mean over tokens of log(Z)^2, keeping the softmax normaliser near 1."""
    lse = torch.logsumexp(logits.float(), dim=-1)
    return _masked_mean(lse.square(), (targets != IGNORE).to(lse.dtype))


LOSSES = {"ce": ce_loss, "bigram": bigram_mix_loss}


def compute(
    objective: str, logits, targets, signal, weight, *, tail_policy="uniform", z_weight: float = 0.0
) -> dict:
    """Dispatch by name; with no signal (weight 0) every objective is plain cross-entropy."""
    fn = LOSSES[objective] if signal is not None else ce_loss
    out = fn(logits, targets, signal, weight, tail_policy=tail_policy)
    if z_weight > 0:
        z = z_loss(logits, targets)
        out["z_loss"] = z
        out["loss"] = out["loss"] + z_weight * z
    return out
