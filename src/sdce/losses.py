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

Memory: every loss takes `chunk_tokens` (the run's `training.loss_chunk_tokens`). The
student's side of every term, log p(target), log p^T at the listed ids, the mean log p of
the uniform tail, the dense KL and log Z, comes from `_ChunkedLogSoftmax`, which walks the
tokens in chunks of at most `chunk_tokens` rows (on CPU in cache-sized blocks of fewer) and
recomputes the softmaxes in backward, writing only the logits' gradient: beyond the logits
and their gradient a step holds a few (chunk x V) fp32 buffers, never a (tokens x V) tensor.
`chunk_tokens=None` is the plain autograd path, the reference the chunked one is tested
against (tests/test_chunked_losses.py).

z-loss (`training.z_loss`): every loss takes `z_loss=True` to compute log Z in its own chunk
pass and return the term `z_loss` (mean over its scored tokens of log(Z)^2, `_z_term`), so
a step with z-loss walks the logits once and writes one gradient; `objectives.terms` asks for
it. `z_loss()` is the same term on its own (the fallback of a loss that does not fold it: the
plain paths of ce and masked_diffusion).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sdce.teachers.signal import GuidanceSignal

IGNORE = -100
TAIL_POLICIES = ("uniform", "renormalize", "drop")

# The default of `training.loss_chunk_tokens` (the schema's; a test checks they agree). At
# GPT-2's 50,257 ids a (512 x V) fp32 buffer is 103 MB, small beside a micro-batch's logits
# and their gradient (8 x 512 tokens: 823 MB in fp32), and one kernel over a chunk (26M
# elements) still fills an accelerator, so the Python loop over chunks is not what it waits on.
CHUNK_TOKENS = 512


def _upcast(logits: torch.Tensor) -> torch.Tensor:
    """Losses are computed in fp32 at least (bf16/fp16 logits are cast; fp64 is kept)."""
    return logits if logits.dtype == torch.float64 else logits.float()


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.sum().clamp_min(1)


def _check_tail_policy(tail_policy: str) -> None:
    if tail_policy not in TAIL_POLICIES:
        raise ValueError(f"unknown tail_policy '{tail_policy}' (known: {', '.join(TAIL_POLICIES)})")


def _teacher_terms(listed_logp, mean_logp, signal: GuidanceSignal, tail_policy: str) -> torch.Tensor:
    """-sum_j q_j log p_j per position (B, T) from the student's log p at the listed ids
    (B, T, K) and its mean over the vocabulary (B, T; not read by `drop`)."""
    _check_tail_policy(tail_policy)
    listed = signal.probs.to(listed_logp.dtype)
    term = -(listed * listed_logp).sum(-1)
    if tail_policy == "uniform":
        return term + signal.rest.to(listed_logp.dtype) * (-mean_logp)
    if tail_policy == "renormalize":
        mass = listed.sum(-1)
        return torch.where(mass > 0, term / mass.clamp_min(1e-12), -mean_logp)
    return term


def teacher_cross_entropy(logp: torch.Tensor, signal: GuidanceSignal, tail_policy: str) -> torch.Tensor:
    """-sum_j q_j log p_j per position, q the teacher distribution under the tail policy. (B, T)"""
    return _teacher_terms(logp.gather(-1, signal.ids), logp.mean(-1), signal, tail_policy)


def ce_loss(logits, targets, signal=None, weight=0.0, *, tail_policy="uniform", chunk_tokens=CHUNK_TOKENS,
            z_loss=False, **opts) -> dict:  # fmt: skip
    if _chunk_rows(logits, chunk_tokens) is None:
        flat = logits.reshape(-1, logits.size(-1)).float()
        ce = F.cross_entropy(flat, targets.reshape(-1), ignore_index=IGNORE)
        return {"loss": ce, "ce": ce}
    s = _student(logits, targets.clamp_min(0), chunk_tokens, lse=z_loss)
    mask = (targets != IGNORE).to(s["logp_y"].dtype)
    ce = _masked_mean(-s["logp_y"], mask)
    return {"loss": ce, "ce": ce, **_z_term(s, mask)}


def bigram_mix_loss(
    logits,
    targets,
    signal: GuidanceSignal,
    weight: float,
    *,
    tail_policy="uniform",
    chunk_tokens=CHUNK_TOKENS,
    z_loss=False,
    **opts,
) -> dict:
    """-sum_j (w * p_teacher(j) + (1 - w) * onehot_j(target)) log p_model(j), mean over tokens."""
    _check_tail_policy(tail_policy)
    s = _student(logits, targets.clamp_min(0), chunk_tokens, ids=signal.ids, mean=tail_policy != "drop",
                 lse=z_loss)  # fmt: skip
    ce_tok = -s["logp_y"]
    mask = (targets != IGNORE).to(ce_tok.dtype)
    guide_tok = _teacher_terms(s["listed"], s.get("mean"), signal, tail_policy)
    ce = _masked_mean(ce_tok, mask)
    guidance = _masked_mean(guide_tok, mask)
    return {
        "loss": (1.0 - weight) * ce + weight * guidance,
        "ce": ce,
        "guidance": guidance,
        "teacher_mass": _masked_mean(signal.listed_mass().to(ce_tok.dtype), mask),
        **_z_term(s, mask),
    }


def label_smoothing_loss(
    logits,
    targets,
    signal: GuidanceSignal,
    weight: float,
    *,
    tail_policy="uniform",
    chunk_tokens=CHUNK_TOKENS,
    z_loss=False,
    **opts,
):
    """Bigram mixing with a uniform teacher (its signal lists nothing and has rest = 1):
    the data-independent control of the bigram objective. The tail is always uniform."""
    out = bigram_mix_loss(logits, targets, signal, weight, tail_policy="uniform", chunk_tokens=chunk_tokens,
                          z_loss=z_loss)  # fmt: skip
    out.pop("teacher_mass")
    return out


def _alignment_terms(signal: GuidanceSignal, mask: torch.Tensor, dtype, listed_mass=None) -> tuple:
    """(aligned (B, T) float, the logged teacher_mass / aligned terms) of a signal;
    `listed_mass` (B, T) when the caller has it (a dense signal's, computed in chunks)."""
    aligned = mask if signal.valid is None else mask * signal.valid.to(dtype)
    mass = signal.listed_mass() if listed_mass is None else listed_mass
    terms = {"teacher_mass": (mass.to(dtype) * aligned).sum() / aligned.sum().clamp_min(1)}
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
    chunk_tokens=CHUNK_TOKENS,
    z_loss=False,
    **opts,
) -> dict:
    """CE + w * mean_i sum_j a_ij (-log p(t_ij)) over the teacher's top-k (module docstring)."""
    if weighting not in ("probability", "inverse_perplexity"):
        raise ValueError(
            f"unknown surrogate weighting '{weighting}' (known: probability, inverse_perplexity)"
        )
    safe_targets = targets.clamp_min(0)
    s = _student(logits, safe_targets, chunk_tokens, ids=signal.ids, lse=z_loss)
    ce_tok = -s["logp_y"]
    mask = (targets != IGNORE).to(ce_tok.dtype)
    aligned, terms = _alignment_terms(signal, mask, ce_tok.dtype)
    q = signal.probs.to(ce_tok.dtype)
    keep = (q > 0) & (signal.ids != safe_targets.unsqueeze(-1)) & (aligned.unsqueeze(-1) > 0)
    score = q.clamp_min(1e-30).log() if weighting == "probability" else -1.0 / q.clamp_min(1e-30)
    score = score.masked_fill(~keep, float("-inf"))
    a = torch.softmax(score, dim=-1).nan_to_num(0.0)  # a row with no candidate is all zeros
    guide_tok = -(a * s["listed"]).sum(-1)
    ce = _masked_mean(ce_tok, mask)
    guidance = _masked_mean(guide_tok, mask)
    return {"loss": ce + weight * guidance, "ce": ce, "guidance": guidance, **terms, **_z_term(s, mask)}


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


# ---------------------------------------------------------------------------- the chunked path

# Rows per CPU block: about this many bytes per (rows, V) buffer, so that a block stays in
# cache; the buffers are allocated once per call and reused, because a fresh (rows, V) tensor
# per op costs more in first-touch page faults than the softmax computed in it.
_BLOCK_BYTES = 1 << 20


def _block_rows(n: int, vocab: int, dtype) -> int:
    """Rows per CPU block: about `_BLOCK_BYTES` per buffer, at least 32 rows (a large
    vocabulary would otherwise make the Python loop over blocks cost more than it saves)."""
    return max(1, min(n, max(32, _BLOCK_BYTES // (vocab * torch.finfo(dtype).bits // 8))))


def _fused(logits: torch.Tensor) -> bool:
    """Whether `logits` take the chunked path: on every device. The seam the tests turn off to
    compare it with plain autograd (as `chunk_tokens=None` does)."""
    return True


def _chunk_rows(logits: torch.Tensor, chunk_tokens) -> int | None:
    """Rows per chunk of the chunked path, or None for plain autograd: at most `chunk_tokens`,
    and on CPU at most a cache-sized block (`_block_rows`)."""
    if chunk_tokens is None:
        return None
    if isinstance(chunk_tokens, bool) or not isinstance(chunk_tokens, int) or chunk_tokens < 1:
        raise ValueError(f"loss chunk_tokens must be a positive integer or None, got {chunk_tokens!r}")
    if not _fused(logits):
        return None
    vocab = logits.size(-1)
    n = logits.numel() // max(vocab, 1)
    rows = min(n, chunk_tokens)
    if logits.device.type == "cpu":
        rows = min(rows, _block_rows(n, vocab, _compute_dtype(logits)))
    return max(1, rows)


def _scale(z: torch.Tensor, bias, temperature: float, out: torch.Tensor) -> torch.Tensor:
    """out = z / T + bias (bias None: z / T), computed in out's dtype (fp32 for bf16 z)."""
    if bias is not None:  # the fp32 bias promotes z
        return torch.add(bias, z, alpha=1.0 / temperature, out=out)
    if temperature == 1.0 or z.dtype != out.dtype:
        out.copy_(z)
        return out if temperature == 1.0 else out.mul_(1.0 / temperature)
    return torch.mul(z, 1.0 / temperature, out=out)


def _teacher_log_probs(logq: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """out = a dense teacher's log-probabilities (m, V') cast, padded with -inf to out's V
    and renormalised; returns their logsumexp before renormalising (m,), the teacher's mass."""
    vt = logq.size(1)
    out[:, :vt].copy_(logq)
    out[:, vt:].fill_(float("-inf"))
    lse = torch.logsumexp(out, 1)
    out.sub_(lse.clamp_min(-1e30).unsqueeze(1))
    return lse


def _dense_kl_rows(log_s, logq, buf, scratch) -> tuple[torch.Tensor, torch.Tensor]:
    """(KL(q || s) (m,), the teacher's mass (m,)) from the student's log s (m, V) and the
    teacher's log-probabilities (m, V'); `buf`, `scratch` (m, V) are overwritten."""
    lse = _teacher_log_probs(logq, buf)
    q = torch.exp(buf, out=scratch)
    buf.sub_(log_s).mul_(q).masked_fill_(q == 0, 0.0)  # q log(q / s), 0 where q = 0
    return buf.sum(1), lse.exp()


class _ChunkedLogSoftmax(torch.autograd.Function):
    """The student's side of every loss, from logits z (N, V) in row chunks of `rows`:

        logp_y (N,)    log softmax(z)[targets]                        targets (N,) or None
        listed (N, K)  log softmax(z / T + bias)[ids]                 ids (N, K) or None
        mean   (N,)    mean_j log softmax(z)_j                        want_mean
        kl     (N,)    KL(q || softmax(z / T + bias)), q = softmax(logq) over V (padded)
        mass   (N,)    exp logsumexp(logq), the dense teacher's mass (no gradient)
        lse    (N,)    logsumexp(z)                                   want_lse

    (an output not asked for is empty). Forward keeps only these per-row values; backward
    recomputes each chunk's softmaxes and writes only the gradient,

        dz = g_y (e_y - p) + g_mean (1/V - p) + g_lse p
             + (1/T) (scatter_ids(g_listed) - s sum_k g_listed) + (g_kl / T) (s sum_j q_j - q)

    with p = softmax(z), s = softmax(z / T + bias) (one softmax when T = 1 and no bias), so
    nothing of size (N, V) is formed but the gradient: a few (rows, V) buffers, reused over
    the chunks. Computed in fp32 at least; the gradient has z's dtype."""

    @staticmethod
    def forward(ctx, z, targets, ids, bias, logq, temperature, want_mean, want_lse, rows):
        n, v = z.shape
        dtype = _compute_dtype(z)
        shared = bias is None and temperature == 1.0
        scaled = ids is not None or logq is not None  # the T-side softmax is needed
        plain = targets is not None or want_mean or (shared and scaled)
        empty = z.new_empty(0, dtype=dtype)
        logp_y, mean, lse = (z.new_empty(n, dtype=dtype) if on else empty for on in
                             (targets is not None, want_mean, want_lse))  # fmt: skip
        listed = z.new_empty(ids.shape, dtype=dtype) if ids is not None else empty
        kl, mass = (
            (z.new_empty(n, dtype=dtype), z.new_empty(n, dtype=dtype)) if logq is not None else (empty, empty)
        )
        lp = _buffer(z, rows, plain or scaled)
        x = _buffer(z, rows, z.dtype != dtype or (scaled and not shared) or logq is not None)
        qb = _buffer(z, rows, logq is not None)
        for a in range(0, n, rows):
            b = min(a + rows, n)
            zc, lpc, xc = z[a:b], _rows(lp, b - a), _rows(x, b - a)
            zf = zc if zc.dtype == dtype else xc.copy_(zc)
            if want_lse:
                lse[a:b] = torch.logsumexp(zf, 1)
            if plain:
                torch._log_softmax(zf, 1, False, out=lpc)
                if targets is not None:
                    logp_y[a:b] = lpc.gather(1, targets[a:b, None]).squeeze(1)
                if want_mean:
                    mean[a:b] = lpc.mean(1)
            if scaled and not shared:
                torch._log_softmax(_scale(zc, bias, temperature, xc), 1, False, out=lpc)
            if ids is not None:
                listed[a:b] = lpc.gather(1, ids[a:b])
            if logq is not None:
                kl[a:b], mass[a:b] = _dense_kl_rows(lpc, logq[a:b], qb[: b - a], xc)
        ctx.save_for_backward(z, targets, ids, bias, logq)
        ctx.temperature, ctx.rows = temperature, rows
        ctx.mark_non_differentiable(mass)
        ctx.set_materialize_grads(False)
        return logp_y, listed, mean, kl, mass, lse

    @staticmethod
    def backward(ctx, g_y, g_listed, g_mean, g_kl, g_mass, g_lse):
        z, targets, ids, bias, logq = ctx.saved_tensors
        temperature, rows = ctx.temperature, ctx.rows
        n, v = z.shape
        dtype = _compute_dtype(z)
        shared = bias is None and temperature == 1.0
        # the per-row weights of p = softmax(z) and of s = softmax(z / T + bias)
        c_p = _add(_add(None if g_y is None else -g_y, None if g_mean is None else -g_mean), g_lse)
        c_s = None
        if g_listed is not None:
            g_listed = g_listed.to(dtype) * (1.0 / temperature)
            c_s = -g_listed.sum(1)
        c_kl = g_kl * (1.0 / temperature) if g_kl is not None else None
        out = torch.empty_like(z)
        direct = z.dtype == dtype  # else each chunk is computed in fp32, then cast
        p = _buffer(z, rows, not shared and (c_s is not None or c_kl is not None))  # s, when p is not it
        x = _buffer(z, rows, not direct or (not shared and (c_s is not None or c_kl is not None)))
        qb = _buffer(z, rows, c_kl is not None)
        grad = _buffer(z, rows, not direct)
        for a in range(0, n, rows):
            b = min(a + rows, n)
            zc, pc, xc = z[a:b], _rows(p, b - a), _rows(x, b - a)
            oc = out[a:b] if direct else grad[: b - a]
            cp = None if c_p is None else c_p[a:b, None]
            cs = None if c_s is None else c_s[a:b, None]
            if c_kl is not None:
                _teacher_log_probs(logq[a:b], qb[: b - a])
                q = qb[: b - a].exp_()
                cs = _add(cs, c_kl[a:b, None] * q.sum(1, keepdim=True))
            if shared and cs is not None:
                cp, cs = _add(cp, cs), None
            written = False
            if cp is not None:  # straight into the gradient: one pass fewer than through a buffer
                torch._softmax(zc if direct else xc.copy_(zc), 1, False, out=oc)
                oc.mul_(cp)
                written = True
            if cs is not None:
                torch._softmax(_scale(zc, bias, temperature, xc), 1, False, out=pc)
                if written:
                    oc.addcmul_(pc, cs)
                else:
                    torch.mul(pc, cs, out=oc)
                written = True
            if not written:
                oc.zero_()
            if g_mean is not None:
                oc.add_(g_mean[a:b, None].to(dtype) * (1.0 / v))
            if c_kl is not None:
                oc.addcmul_(q, c_kl[a:b, None], value=-1.0)
            if g_y is not None:
                oc.scatter_add_(1, targets[a:b, None], g_y[a:b, None].to(dtype))
            if g_listed is not None:
                oc.scatter_add_(1, ids[a:b], g_listed[a:b])
            if not direct:
                out[a:b].copy_(oc)
        return out, None, None, None, None, None, None, None, None


def _buffer(z: torch.Tensor, rows: int, needed: bool) -> torch.Tensor | None:
    """A (rows, V) buffer in z's compute dtype, reused by every chunk (None when not needed)."""
    if not needed:
        return None
    return z.new_empty(max(1, min(rows, z.size(0))), z.size(1), dtype=_compute_dtype(z))


def _rows(buf: torch.Tensor | None, m: int) -> torch.Tensor | None:
    return None if buf is None else buf[:m]


def _add(a, b):
    """a + b where None is zero (and both None stays None)."""
    if a is None:
        return b
    return a if b is None else a + b


_OUTPUTS = ("logp_y", "listed", "mean", "kl", "mass", "lse")


def _student(logits, targets, chunk_tokens, *, ids=None, mean=False, lse=False, temperature=1.0,
             support=None, logq=None) -> dict:  # fmt: skip
    """The student's side of a loss per position (B, T), by `_ChunkedLogSoftmax` in chunks
    of at most `chunk_tokens` (None: plain autograd, the reference): `logp_y` log p(targets)
    (targets given, already clamped), `mean` mean_j log p_j, `lse` log Z, at T = 1; `listed`
    (B, T, K) log p^T over `support` at `ids`; for a dense teacher `logq` (B, T, V') its
    `kl` KL(q || p^T) and `mass`. Only what is asked for is in the dict."""
    vocab = logits.size(-1)
    support = _pad_vocab(support, vocab, False)
    rows = _chunk_rows(logits, chunk_tokens)
    if rows is None:
        return _plain_student(logits, targets, ids, mean, lse, temperature, support, logq)
    shape = logits.shape[:-1]
    n = shape.numel()
    bias = _support_bias(support, _compute_dtype(logits), logits.device)
    flat_ids = ids.to(logits.device).reshape(n, ids.size(-1)) if ids is not None else None
    values = _ChunkedLogSoftmax.apply(
        logits.reshape(n, vocab),
        targets.reshape(n) if targets is not None else None,
        flat_ids,
        bias,
        logq.reshape(n, logq.size(-1)) if logq is not None else None,
        temperature,
        mean,
        lse,
        rows,
    )
    asked = (targets is not None, ids is not None, mean, logq is not None, logq is not None, lse)
    return {
        name: value.view(shape + value.shape[1:])
        for name, value, on in zip(_OUTPUTS, values, asked, strict=True)
        if on
    }


def _plain_student(logits, targets, ids, mean, lse, temperature, support, logq) -> dict:
    """`_student` by plain autograd on whole (B, T, V) tensors."""
    z = _upcast(logits)
    out = {}
    shared = support is None and temperature == 1.0
    logp = None
    if targets is not None or mean or (shared and (ids is not None or logq is not None)):
        logp = F.log_softmax(z, dim=-1)
        if targets is not None:
            out["logp_y"] = logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        if mean:
            out["mean"] = logp.mean(-1)
    if lse:
        out["lse"] = torch.logsumexp(z, dim=-1)
    if ids is None and logq is None:
        return out
    logs = _student_log_probs_t(z, support, temperature, logp)
    if ids is not None:
        out["listed"] = logs.gather(-1, ids)
    if logq is not None:
        lq = _pad_vocab(logq.to(logs.dtype), logits.size(-1), float("-inf"))
        norm = torch.logsumexp(lq, -1, keepdim=True)
        lq = lq - norm.clamp_min(-1e30)  # renormalised on the support
        q = lq.exp()
        out["kl"] = (q * (lq - logs)).where(q > 0, torch.zeros_like(q)).sum(-1)
        out["mass"] = norm.squeeze(-1).exp()
    return out


# ---------------------------------------------------------------------------- KL and the rest


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


def _kl_student(logits, targets, signal: GuidanceSignal, temperature: float, chunk_tokens, lse=False) -> dict:
    """`_student` for KL: the listed ids of a top-k signal, or the dense teacher's log-probs."""
    if signal.log_probs is None:
        return _student(logits, targets, chunk_tokens, ids=signal.ids, temperature=temperature,
                        support=signal.support, lse=lse)  # fmt: skip
    return _student(logits, targets, chunk_tokens, temperature=temperature, support=signal.support,
                    logq=signal.log_probs, lse=lse)  # fmt: skip


def kl_divergence(
    logits: torch.Tensor, signal: GuidanceSignal, temperature: float, *, chunk_tokens=CHUNK_TOKENS
) -> torch.Tensor:
    """KL(q^T || p^T) per position (B, T) over the teacher's support (module docstring).

    A top-k signal touches the vocabulary only through the student's log-partition at T and
    a gather of the K listed entries; the tail bucket's student mass s_r = 1 - sum_j s_j comes
    from the gathered values, so no dense tail tensor is formed. A dense signal's KL is summed
    over the vocabulary chunk by chunk."""
    s = _kl_student(logits, None, signal, temperature, chunk_tokens)
    return _topk_kl(s["listed"], signal) if signal.log_probs is None else s["kl"]


def kl_loss(
    logits,
    targets,
    signal: GuidanceSignal,
    weight: float,
    *,
    tail_policy="uniform",
    alpha=0.5,
    temperature=2.0,
    chunk_tokens=CHUNK_TOKENS,
    z_loss=False,
    **opts,
) -> dict:
    """(1 - w(1 - alpha)) CE + w (1 - alpha) T^2 KL(q^T || p^T), mean over tokens (module docstring)."""
    s = _kl_student(logits, targets.clamp_min(0), signal, temperature, chunk_tokens, lse=z_loss)
    kl_tok = _topk_kl(s["listed"], signal) if signal.log_probs is None else s["kl"]
    ce_tok = -s["logp_y"]
    mask = (targets != IGNORE).to(ce_tok.dtype)
    aligned, terms = _alignment_terms(signal, mask, ce_tok.dtype, s.get("mass"))
    kl_tok = kl_tok * aligned  # unaligned positions carry nothing
    ce = _masked_mean(ce_tok, mask)
    kl = _masked_mean(kl_tok, mask)
    share = weight * (1.0 - alpha)
    guidance = temperature**2 * kl
    out = {"loss": (1.0 - share) * ce + share * guidance, "ce": ce, "guidance": guidance, "kl": kl, **terms}
    return {**out, **_z_term(s, mask)}


def masked_diffusion_loss(
    logits, targets, signal=None, weight=0.0, *, tail_policy="uniform", p: torch.Tensor,
    chunk_tokens=CHUNK_TOKENS, z_loss=False, **opts
) -> dict:  # fmt: skip
    """LLaDA's pre-training loss (`sdce.diffusion.pretraining_loss`) in this module's signature:
    `targets` holds the clean token where the input was masked and IGNORE elsewhere, `p` the
    mask probability of each position. Unlike the other objectives it is not a mean over
    scored tokens: it is divided by every position. `ce` is the plain mean CE over the
    masked tokens and `mask_rate` the fraction masked (both logged, not optimised)."""
    from sdce.diffusion import pretraining_loss

    masked = targets != IGNORE
    if _chunk_rows(logits, chunk_tokens) is None:
        logits = _upcast(logits)
        loss = pretraining_loss(logits, targets.clamp_min(0), masked, p.to(logits.dtype))
        ce = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=IGNORE)
        return {"loss": loss, "ce": torch.nan_to_num(ce), "mask_rate": masked.to(logits.dtype).mean()}
    s = _student(logits, targets.clamp_min(0), chunk_tokens, lse=z_loss)
    ce_tok = -s["logp_y"]
    weight_tok = masked.to(ce_tok.dtype)
    # sum over masked positions of CE / p, over every position (pretraining_loss's formula)
    loss = (ce_tok * weight_tok / p.to(ce_tok.dtype)).sum() / targets.numel()
    return {"loss": loss, "ce": _masked_mean(ce_tok, weight_tok), "mask_rate": weight_tok.mean(),
            **_z_term(s, weight_tok)}  # fmt: skip


def masked_diffusion_sft_loss(
    logits, targets, signal=None, weight=0.0, *, tail_policy="uniform", p: torch.Tensor,
    prompt_lengths: torch.Tensor, chunk_tokens=CHUNK_TOKENS, z_loss=False, **opts
) -> dict:  # fmt: skip
    """LLaDA's SFT loss (`sdce.diffusion.sft_loss`) in this module's signature: per sequence,
    the sum over its masked tokens of CE / p divided by its answer length (the positions from
    `prompt_lengths` on, the eos padding included), then the mean over sequences. `targets`
    holds the clean token where the input was masked (never in the prompt), IGNORE elsewhere.
    `ce` (mean CE over the masked tokens) and `mask_rate` (masked fraction of the answer
    positions) are logged, not optimised."""
    masked = targets != IGNORE
    b, length = targets.shape
    s = _student(logits, targets.clamp_min(0), chunk_tokens, lse=z_loss)
    ce_tok = -s["logp_y"]
    weight_tok = masked.to(ce_tok.dtype)
    answer = (length - prompt_lengths.clamp(0, length)).to(ce_tok.dtype)[:, None]
    loss = (ce_tok * weight_tok / (p.to(ce_tok.dtype) * answer.clamp_min(1))).sum() / b
    mask_rate = weight_tok.sum() / answer.sum().clamp_min(1)
    return {
        "loss": loss,
        "ce": _masked_mean(ce_tok, weight_tok),
        "mask_rate": mask_rate,
        **_z_term(s, weight_tok),
    }


def _z_term(s: dict, mask: torch.Tensor) -> dict:
    """{"z_loss": mean over `mask` of log(Z)^2} when the loss's student pass computed log Z
    (its `z_loss=True`), else {}: the z-loss folded into the same chunks as the loss."""
    return {"z_loss": _masked_mean(s["lse"].square(), mask)} if "lse" in s else {}


def z_loss(logits: torch.Tensor, targets: torch.Tensor, *, chunk_tokens=CHUNK_TOKENS) -> torch.Tensor:
    """mean over tokens of log(Z)^2, keeping the softmax normaliser near 1."""
    if _chunk_rows(logits, chunk_tokens) is None:
        lse = torch.logsumexp(logits.float(), dim=-1)
    else:
        lse = _student(logits, None, chunk_tokens, lse=True)["lse"]
    return _masked_mean(lse.square(), (targets != IGNORE).to(lse.dtype))
