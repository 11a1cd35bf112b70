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
    masked_diffusion sum_{i masked} CE_i / p_i / (B L)   LLaDA (sdce.diffusion); targets are the
                                                       clean tokens at masked positions, -100
                                                       elsewhere; the normaliser is every position

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


def _support_bias(support: torch.Tensor | None, dtype, device) -> torch.Tensor | None:
    """(V,) 0 on the support, -inf outside it (None: every id): added to z / T, it restricts
    the softmax to the support in the same pass as the temperature (never a dense masked_fill,
    whose broadcast mask and backward copy cost more than the softmax itself)."""
    if support is None:
        return None
    return torch.zeros(support.shape, dtype=dtype, device=device).masked_fill(
        ~support.to(device), float("-inf")
    )


def _compute_dtype(z: torch.Tensor) -> torch.dtype:
    return torch.float64 if z.dtype == torch.float64 else torch.float32


def _student_log_probs_t(z: torch.Tensor, support, temperature: float, log_probs=None) -> torch.Tensor:
    """log p^T = log_softmax(z / T) renormalised over `support` (-inf outside it). (..., V)

    One broadcast add (the 1/T scale and the support bias, which also promotes low-precision
    logits to fp32) and one fused log_softmax. At T = 1 with no support it is the CE's
    log_softmax, reused when given as `log_probs`.
    """
    if support is None:
        if temperature == 1.0:
            return log_probs if log_probs is not None else F.log_softmax(_upcast(z), dim=-1)
        return F.log_softmax(_upcast(z) * (1.0 / temperature), dim=-1)
    bias = _support_bias(support, _compute_dtype(z), z.device)
    return F.log_softmax(torch.add(bias, z, alpha=1.0 / temperature), dim=-1)


# Row blocks of about this many bytes per (rows, V) temporary for the fused top-k path on CPU:
# they stay in cache and in the allocator's heap. A fresh (N, V) tensor per op (what autograd
# gives) costs more in first-touch page faults than the softmax computed in it.
_BLOCK_BYTES = 1 << 20


class _GatheredLogSoftmax(torch.autograd.Function):
    """(log_softmax(z)[targets], log_softmax(z / T + bias)[ids]) for logits z (N, V), targets
    (N,) or None, ids (N, K), bias from `_support_bias` or None: the student's side of CE plus
    top-k KL, with no (N, V) intermediate. Forward and backward run over row blocks; backward
    recomputes the softmaxes (cheaper than keeping them) and writes only the gradient:

        dz = g_y (onehot_y - softmax(z)) + (1/T) (scatter_ids(g) - softmax(z / T + bias) sum_k g_k)

    (log_softmax's backward at each temperature, through the gathers). Computed in fp32 at
    least; the gradient has z's dtype. At T = 1 with no support both terms share one softmax."""

    @staticmethod
    def forward(ctx, z, targets, ids, bias, temperature):
        n, v = z.shape
        dtype = _compute_dtype(z)
        rows = _block_rows(n, v, dtype)
        shared = bias is None and temperature == 1.0
        ce = z.new_empty(n if targets is not None else 0, dtype=dtype)
        listed = z.new_empty(ids.shape, dtype=dtype)
        buf = z.new_empty(rows, v, dtype=dtype)
        scaled = z.new_empty(rows, v, dtype=dtype)
        up = None if z.dtype == dtype else z.new_empty(rows, v, dtype=dtype)  # low-precision z, cast
        for a in range(0, n, rows):
            b = min(a + rows, n)
            zc, lp, zt = z[a:b], buf[: b - a], scaled[: b - a]
            if targets is not None or shared:
                torch._log_softmax(zc if up is None else up[: b - a].copy_(zc), 1, False, out=lp)
                if targets is not None:
                    ce[a:b] = lp.gather(1, targets[a:b, None]).squeeze(1)
            if not shared:
                torch._log_softmax(_scale(zc, bias, temperature, zt), 1, False, out=lp)
            listed[a:b] = lp.gather(1, ids[a:b])
        ctx.save_for_backward(z, targets, ids, bias)
        ctx.temperature = temperature
        if targets is None:
            ctx.mark_non_differentiable(ce)
        return ce, listed

    @staticmethod
    def backward(ctx, g_ce, g_listed):
        z, targets, ids, bias = ctx.saved_tensors
        temperature = ctx.temperature
        n, v = z.shape
        dtype = _compute_dtype(z)
        rows = _block_rows(n, v, dtype)
        shared = bias is None and temperature == 1.0
        if targets is None:
            g_ce = None
        if g_listed is not None:
            g_listed = g_listed.to(dtype) * (1.0 / temperature)
            g_sum = g_listed.sum(1, keepdim=True)
        out = torch.empty_like(z)
        direct = z.dtype == dtype  # else each block is computed in fp32, then cast
        p = z.new_empty(rows, v, dtype=dtype)
        scaled = z.new_empty(rows, v, dtype=dtype)
        grad = None if direct else z.new_empty(rows, v, dtype=dtype)
        for a in range(0, n, rows):
            b = min(a + rows, n)
            zc, pc, zt = z[a:b], p[: b - a], scaled[: b - a]
            oc = out[a:b] if direct else grad[: b - a]
            # the weight of softmax(z) per row: CE's, and the listed one's when T = 1 shares it
            w = g_ce[a:b, None] if g_ce is not None else None
            if shared and g_listed is not None:
                w = g_sum[a:b] if w is None else w + g_sum[a:b]
            written = w is not None
            if written:
                torch._softmax(zc if direct else zt.copy_(zc), 1, False, out=pc)
                torch.mul(pc, -w, out=oc)
            if g_listed is not None and not shared:
                torch._softmax(_scale(zc, bias, temperature, zt), 1, False, out=pc)
                if written:
                    oc.addcmul_(pc, g_sum[a:b], value=-1.0)
                else:
                    torch.mul(pc, -g_sum[a:b], out=oc)
                written = True
            if not written:
                oc.zero_()
            if g_ce is not None:
                oc.scatter_add_(1, targets[a:b, None], g_ce[a:b, None])
            if g_listed is not None:
                oc.scatter_add_(1, ids[a:b], g_listed[a:b])
            if not direct:
                out[a:b].copy_(oc)
        return out, None, None, None, None


def _block_rows(n: int, vocab: int, dtype) -> int:
    """Rows per block: about `_BLOCK_BYTES` per temporary, at least 32 rows (a large
    vocabulary would otherwise make the Python loop over blocks cost more than it saves)."""
    return max(1, min(n, max(32, _BLOCK_BYTES // (vocab * torch.finfo(dtype).bits // 8))))


def _scale(z: torch.Tensor, bias, temperature: float, out: torch.Tensor) -> torch.Tensor:
    """out = z / T + bias (bias None: z / T), computed in out's dtype (fp32 for bf16 z)."""
    if bias is not None:  # the fp32 bias promotes z
        return torch.add(bias, z, alpha=1.0 / temperature, out=out)
    if temperature == 1.0 or z.dtype != out.dtype:
        out.copy_(z)
        return out if temperature == 1.0 else out.mul_(1.0 / temperature)
    return torch.mul(z, 1.0 / temperature, out=out)


def _fused(logits: torch.Tensor) -> bool:
    """Whether the top-k path runs `_GatheredLogSoftmax` (CPU) or plain autograd."""
    return logits.device.type == "cpu"


def _gathered_log_probs(logits, targets, signal: GuidanceSignal, temperature: float):
    """(log p(target) (B, T) or None, log p^T over the support at the listed ids (B, T, K)):
    `_GatheredLogSoftmax` on CPU; on accelerators (a caching allocator, no first-touch cost)
    the same values by plain autograd."""
    vocab = logits.size(-1)
    support = _pad_vocab(signal.support, vocab, False)
    if not _fused(logits):
        logs = _student_log_probs_t(logits, support, temperature)
        listed = logs.gather(-1, signal.ids)
        if targets is None:
            return None, listed
        logp = F.log_softmax(_upcast(logits), dim=-1)
        return logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1), listed
    bias = _support_bias(support, _compute_dtype(logits), logits.device)
    ids = signal.ids.to(logits.device)
    flat_targets = targets.reshape(-1) if targets is not None else None
    ce, listed = _GatheredLogSoftmax.apply(
        logits.reshape(-1, vocab), flat_targets, ids.reshape(-1, ids.size(-1)), bias, temperature
    )
    return (ce.view(targets.shape) if targets is not None else None), listed.view(ids.shape)


def _topk_kl(log_s: torch.Tensor, signal: GuidanceSignal) -> torch.Tensor:
    """The two-bucket KL per position (B, T) from the student's log p^T at the listed ids."""
    p = signal.probs.to(log_s.dtype)
    listed = p > 0
    rest = signal.rest.to(log_s.dtype)
    total = p.sum(-1) + rest
    inv = 1.0 / total.clamp_min(1e-30)
    q = p * inv.unsqueeze(-1)  # 0 on the unlisted (padding) entries
    q_rest = rest * inv
    log_s = log_s.masked_fill(~listed, 0.0)
    s_rest = (1.0 - (log_s.exp() * listed).sum(-1)).clamp_min(1e-12)
    # sum_j q_j log(q_j / s_j) + q_r log(q_r / s_r); the teacher's entropy terms carry no gradient
    kl = torch.xlogy(q, q).sum(-1) + torch.xlogy(q_rest, q_rest) - (q * log_s).sum(-1) - q_rest * s_rest.log()
    return torch.where(total > 0, kl, torch.zeros_like(kl))


def kl_divergence(
    logits: torch.Tensor, signal: GuidanceSignal, temperature: float, *, log_probs=None
) -> torch.Tensor:
    """KL(q^T || p^T) per position (B, T) over the teacher's support (module docstring).

    A top-k signal touches the vocabulary only through the student's log-partition at T and
    a gather of the K listed entries (`_GatheredLogSoftmax`); the tail bucket's student mass
    s_r = 1 - sum_j s_j comes from the gathered values, so no dense tail tensor is formed.
    `log_probs`: the student's log_softmax(logits) when the caller has it, reused by a dense
    signal at T = 1 with no support instead of a second full-vocabulary pass."""
    if signal.log_probs is None:
        return _topk_kl(_gathered_log_probs(logits, None, signal, temperature)[1], signal)
    vocab = logits.size(-1)
    logs = _student_log_probs_t(logits, _pad_vocab(signal.support, vocab, False), temperature, log_probs)
    logq = _pad_vocab(signal.log_probs.to(logs.dtype), vocab, float("-inf"))
    logq = logq - torch.logsumexp(logq, -1, keepdim=True).clamp_min(-1e30)  # renormalised on the support
    q = logq.exp()
    return (q * (logq - logs)).where(q > 0, torch.zeros_like(q)).sum(-1)


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
    safe_targets = targets.clamp_min(0)
    if signal.log_probs is None:  # top-k: both terms from one pass over the vocabulary
        logp_y, log_s = _gathered_log_probs(logits, safe_targets, signal, temperature)
        kl_tok = _topk_kl(log_s, signal)
    else:
        z = _upcast(logits)  # cast once, shared by both terms
        logp = F.log_softmax(z, dim=-1)
        logp_y = logp.gather(-1, safe_targets.unsqueeze(-1)).squeeze(-1)
        kl_tok = kl_divergence(z, signal, temperature, log_probs=logp)
    ce_tok = -logp_y
    mask = (targets != IGNORE).to(ce_tok.dtype)
    aligned, terms = _alignment_terms(signal, mask, ce_tok.dtype)
    kl_tok = kl_tok * aligned  # unaligned positions carry nothing
    ce = _masked_mean(ce_tok, mask)
    kl = _masked_mean(kl_tok, mask)
    share = weight * (1.0 - alpha)
    guidance = temperature**2 * kl
    return {"loss": (1.0 - share) * ce + share * guidance, "ce": ce, "guidance": guidance, "kl": kl, **terms}


def masked_diffusion_loss(
    logits, targets, signal=None, weight=0.0, *, tail_policy="uniform", p: torch.Tensor, **opts
) -> dict:
    """LLaDA's pre-training loss (`sdce.diffusion.pretraining_loss`) in this module's signature:
    `targets` holds the clean token where the input was masked and IGNORE elsewhere, `p` the
    mask probability of each position. Unlike the other objectives it is not a mean over
    scored tokens: it is divided by every position. `ce` is the plain mean CE over the
    masked tokens and `mask_rate` the fraction masked (both logged, not optimised)."""
    from sdce.diffusion import pretraining_loss

    masked = targets != IGNORE
    logits = _upcast(logits)
    loss = pretraining_loss(logits, targets.clamp_min(0), masked, p.to(logits.dtype))
    ce = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=IGNORE)
    return {"loss": loss, "ce": torch.nan_to_num(ce), "mask_rate": masked.to(logits.dtype).mean()}


def z_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """mean over tokens of log(Z)^2, keeping the softmax normaliser near 1."""
    lse = torch.logsumexp(logits.float(), dim=-1)
    return _masked_mean(lse.square(), (targets != IGNORE).to(lse.dtype))
