"""Masked diffusion language modelling (LLaDA): forward process, losses, ELBO and sampler.

Pure functions of tensors (torch only). Every random draw comes from an explicit
`torch.Generator`, so every result is a deterministic function of its inputs and seed.
Draws are made on the generator's device (a CPU generator gives the same draws whatever
device the data lives on) and then moved to the data's device.

Reference: ML-GSAI/LLaDA (https://github.com/ML-GSAI/LLaDA, snapshot b7e6c35), files

    GUIDELINES.md          forward_process, the pre-training loss, the 1 % random-length
                           option and the SFT loss ("Pre-training" and "SFT" sections)
    generate.py            generate, get_num_transfer_tokens, add_gumbel_noise
    get_log_likelihood.py  the Monte Carlo likelihood bound (forward_process with exactly
                           k of L tokens masked, stratified k, weight L / k)

Notation: a batch `input_ids` of shape (B, L); `mask_id` the reserved [MASK] token; t the
masking ratio; p the probability with which a token is masked; CE_i = -log p_theta(x_i | x_t)
the cross-entropy of the mask predictor at position i.

    forward process   t ~ U(0, 1) per sequence,  p = (1 - eps) t + eps,
                      x_t,i = [MASK] with probability p, independently per token
    pre-training      loss = sum_{i masked} CE_i / p_i  /  (B L)
    SFT               prompt tokens are never masked;
                      loss = 1/B sum_b sum_{i masked in b} CE_i / (p_i (L - prompt_b))
    negative ELBO     -log p(x) <= E_t[ sum_{i masked} CE_i / p ]   (nats per sequence),
                      reported here per token (divided by L), so exp() bounds the perplexity

Departures from the reference, all deliberate:

* `sft_forward_process` marks as masked exactly the answer positions it replaced; LLaDA's
  SFT snippet recomputes `noisy_batch == mask_id`, which would also flag a prompt token
  that is itself the mask id (the two agree on any real data).
* `generate` draws the Gumbel noise in log space: argmax(l - tau log(-log u)) is the same
  argmax as LLaDA's argmax(exp(l) / (-log u)^tau) (log is monotone) without overflowing
  exp for large logits; still in float64 as LLaDA insists. The options of LLaDA's sampler
  tied to its own tokenizer or to a second forward pass (attention_mask, cfg_scale,
  logits_eos_inf, confidence_eos_eot_inf) are left out; an unknown remasking strategy
  raises ValueError (LLaDA: NotImplementedError). The [MASK] logit is set to -inf before
  sampling, so a committed token is never [MASK] (LLaDA's trained model never predicts it;
  an early or tiny checkpoint may, and would then leave masks in the output).
* `elbo` offers two estimators. The default, `method="exact_count"`, is the one of
  get_log_likelihood.py: per draw exactly k of the n scored tokens are masked with
  p = k / n, k uniform on {1..n} and stratified over the draws; the scored tokens are the
  whole sequence (pre-training) or, with `scored`, an answer after a clean prompt (SFT).
  `method="bernoulli"` is the training forward process itself (t ~ U(0,1), eps, Bernoulli
  masks). Both are unbiased for the same bound; the exact-count one has lower variance and
  gives exactly log V for uniform logits on every draw.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from sdce.losses import CHUNK_TOKENS

ModelFn = Callable[[torch.Tensor], torch.Tensor]

REMASKING = ("low_confidence", "random")


def _rand(shape, generator: torch.Generator, device, dtype=torch.float32) -> torch.Tensor:
    """U[0, 1) draws from `generator` on its own device, moved to `device`."""
    return torch.rand(shape, generator=generator, device=generator.device, dtype=dtype).to(device)


def _check_ids(input_ids: torch.Tensor) -> tuple[int, int]:
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must have shape (B, L), got {tuple(input_ids.shape)}")
    return int(input_ids.shape[0]), int(input_ids.shape[1])


def forward_process(
    input_ids: torch.Tensor,
    mask_id: int,
    generator: torch.Generator,
    eps: float = 1e-3,
    t: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """LLaDA's forward (noising) process, GUIDELINES.md "Pre-training".

    For each sequence b a ratio t_b ~ U(0, 1) is drawn (or taken from `t`, shape (B,)),
    p_b = (1 - eps) t_b + eps (so p >= eps and the 1/p weight of the loss stays bounded),
    and every token is replaced by `mask_id` independently with probability p_b:
    masked_bi = (u_bi < p_b), u_bi ~ U(0, 1).

    Returns (noisy_ids, masked, p): noisy_ids (B, L) long, masked (B, L) bool, and p (B, L)
    float32, p_b repeated along the sequence.
    """
    b, seq_len = _check_ids(input_ids)
    device = input_ids.device
    if t is None:
        t = _rand((b,), generator, device)
    else:
        t = torch.as_tensor(t, dtype=torch.float32, device=device)
        if t.shape != (b,):
            raise ValueError(f"t must have shape ({b},), got {tuple(t.shape)}")
    p = ((1 - eps) * t + eps)[:, None].repeat(1, seq_len)
    masked = _rand((b, seq_len), generator, device) < p
    noisy = torch.where(masked, torch.full_like(input_ids, mask_id), input_ids)
    return noisy, masked, p


def pretraining_loss(
    logits: torch.Tensor, input_ids: torch.Tensor, masked: torch.Tensor, p: torch.Tensor
) -> torch.Tensor:
    """LLaDA pre-training loss, GUIDELINES.md "Pre-training":

        loss = sum_{(b, i) masked} CE(logits_bi, x_bi) / p_bi  /  (B L)

    `logits` (B, L, V) of the mask predictor on the noisy batch, `input_ids` (B, L) the clean
    batch, `masked` and `p` (B, L) from `forward_process`. Unmasked tokens contribute
    nothing, and the normaliser is every position (B L), not the number of masked ones.
    """
    b, seq_len = _check_ids(input_ids)
    token_loss = F.cross_entropy(logits[masked], input_ids[masked], reduction="none") / p[masked]
    return token_loss.sum() / (b * seq_len)


def random_length(
    input_ids: torch.Tensor, generator: torch.Generator, probability: float = 0.01
) -> torch.Tensor:
    """LLaDA's variable-length option, GUIDELINES.md "Pre-training".

    "We set 1% of the pre-training data to a random length that is uniformly sampled from
    the range [1, 4096]": with probability `probability` (one draw per batch) the whole batch
    is cropped to its first n tokens, n ~ U{1, ..., L}; otherwise it is returned unchanged.
    As in the reference, the cropped-off tokens are simply discarded (the guideline accepts
    this small data waste), and n is drawn only when the batch is cropped.
    """
    _, seq_len = _check_ids(input_ids)
    if float(_rand((1,), generator, "cpu")) < probability:
        n = int(torch.randint(1, seq_len + 1, (1,), generator=generator, device=generator.device))
        return input_ids[:, :n]
    return input_ids


def _prompt_mask(input_ids: torch.Tensor, prompt_lengths: torch.Tensor) -> torch.Tensor:
    b, seq_len = _check_ids(input_ids)
    prompt_lengths = torch.as_tensor(prompt_lengths, device=input_ids.device).long()
    if prompt_lengths.shape != (b,):
        raise ValueError(f"prompt_lengths must have shape ({b},), got {tuple(prompt_lengths.shape)}")
    if bool((prompt_lengths < 0).any()) or bool((prompt_lengths > seq_len).any()):
        raise ValueError(f"prompt_lengths must lie in [0, {seq_len}], got {prompt_lengths.tolist()}")
    positions = torch.arange(seq_len, device=input_ids.device).expand(b, seq_len)
    return positions < prompt_lengths[:, None]


def sft_forward_process(
    input_ids: torch.Tensor,
    prompt_lengths: torch.Tensor,
    mask_id: int,
    generator: torch.Generator,
    eps: float = 1e-3,
    t: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SFT forward process, GUIDELINES.md "SFT": `forward_process` with the prompt kept clean.

    Positions i < prompt_lengths[b] are never masked; the answer (everything after the
    prompt, the padded <EOS> tokens included) is masked with probability p_b as in
    pre-training. The draws are those of `forward_process` with the same generator state,
    so the answer masks equal the pre-training masks at the same seed. Returns
    (noisy_ids, masked, p) as `forward_process`.
    """
    prompt = _prompt_mask(input_ids, prompt_lengths)
    _, masked, p = forward_process(input_ids, mask_id, generator, eps=eps, t=t)
    masked = masked & ~prompt
    noisy = torch.where(masked, torch.full_like(input_ids, mask_id), input_ids)
    return noisy, masked, p


def sft_loss(
    logits: torch.Tensor,
    input_ids: torch.Tensor,
    masked: torch.Tensor,
    p: torch.Tensor,
    prompt_lengths: torch.Tensor,
) -> torch.Tensor:
    """LLaDA SFT loss, GUIDELINES.md "SFT":

        loss = 1/B sum_b  sum_{i masked in b} CE(logits_bi, x_bi) / p_bi  /  A_b,
        A_b = L - prompt_lengths[b]

    The answer length A_b counts the padded <EOS> tokens as answer (the guideline's
    `answer_lengths = sum(1 - prompt_mask)`): each sequence's loss is normalised by its own
    answer length, then the batch is averaged.
    """
    b, seq_len = _check_ids(input_ids)
    prompt = _prompt_mask(input_ids, prompt_lengths)
    if bool((masked & prompt).any()):
        raise ValueError("masked marks prompt tokens; SFT never masks the prompt")
    answer_lengths = (~prompt).sum(dim=1, keepdim=True).expand(b, seq_len)
    token_loss = F.cross_entropy(logits[masked], input_ids[masked], reduction="none") / p[masked]
    return torch.sum(token_loss / answer_lengths[masked]) / b


def _exact_count_mask(
    b: int, seq_len: int, k: torch.Tensor, generator: torch.Generator, device, scored=None
) -> torch.Tensor:
    """Exactly k[b] of row b's L positions masked, uniformly at random; with `scored` (B, L),
    exactly k[b] of row b's scored positions."""
    u = _rand((b, seq_len), generator, device)
    if scored is not None:  # the positions outside the bound rank last: never among the k
        u = torch.where(scored, u, torch.full_like(u, 2.0))
    ranks = u.argsort(dim=1).argsort(dim=1)  # a uniformly random permutation of 0..L-1 per row
    return ranks < k[:, None]


@torch.no_grad()
def elbo(model_fn: ModelFn, input_ids: torch.Tensor, mask_id: int, **options) -> float:
    """The negative ELBO in nats per scored token (exp() bounds perplexity): `elbo_sums`'
    ratio, with its options (n_draws, seed, method, eps, row_seeds, chunk_tokens, scored)."""
    nats, tokens = elbo_sums(model_fn, input_ids, mask_id, **options)
    if tokens == 0:
        raise ValueError("scored marks no position: the bound covers no token")
    return nats / tokens


@torch.no_grad()
def elbo_sums(
    model_fn: ModelFn,
    input_ids: torch.Tensor,
    mask_id: int,
    *,
    n_draws: int,
    seed: int,
    eps: float = 1e-3,
    method: str = "exact_count",
    row_seeds=None,
    chunk_tokens: int | None = CHUNK_TOKENS,
    scored: torch.Tensor | None = None,
) -> tuple[float, int]:
    """Monte Carlo estimate of the negative ELBO, as two sums: (the bound in nats summed over
    the batch's scored tokens, averaged over the draws; the number of scored tokens), so that
    batches with different counts add up (`elbo` is their ratio, nats per token).

    LLaDA's bound on the negative log-likelihood of a sequence x of length L,

        -log p(x) <= E_t[ sum_{i masked in x_t} CE_i / p ],

    is estimated by averaging over `n_draws` draws of (t, masks) per sequence, calling
    `model_fn(noisy_ids) -> logits` (B, L, V) once per draw on the whole batch, and divided
    by L (and averaged over the B sequences):

        elbo = 1/(n_draws B L) sum_d sum_b sum_{i masked in draw d of b} CE_i / p_{d,b}

    The draws come from a CPU generator seeded with `seed`, before and independently of
    any model output, so every call with the same seed and batch shape uses identical
    draws: every checkpoint is scored on the same noisy inputs.

    method="exact_count" (default, get_log_likelihood.py): draw d masks exactly k_{d,b} of
    the L tokens, p = k / L, with k_{0,b} ~ U{1..L} and k_{d,b} = round(k_{0,b} + d L /
    n_draws) wrapped into 1..L (the reference's stratification of k over the Monte Carlo
    batch). For uniform logits every draw gives exactly L log V, so elbo = log V.
    method="bernoulli": `forward_process` (t ~ U(0, 1), p = (1 - eps) t + eps, Bernoulli
    masks), the training distribution; `eps` is used only here.

    `scored` (B, L) bool, optional: the bound covers only these positions, the others stay
    clean context and are never masked: row b's n_b scored tokens take the place of L
    (exact_count: k ~ U{1..n_b}, p = k / n_b; bernoulli: the masks restricted to them), and
    the sum is divided by sum_b n_b instead of B L. This is get_log_likelihood.py's
    conditional bound on -log p(answer | prompt) with the prompt left clean.

    `row_seeds` (one int per row): row b's draws come from a generator seeded with
    (seed, row_seeds[b]) instead of one generator for the batch, so a sequence is scored on
    the same draws whatever batch it is in (the validation measure seeds each window by its
    index in the shard).

    `chunk_tokens`: the masked positions' cross-entropy is taken over this many at a time
    (`training.loss_chunk_tokens`; None: all at once), the same value either way.
    """
    b, seq_len = _check_ids(input_ids)
    if n_draws < 1:
        raise ValueError(f"n_draws must be >= 1, got {n_draws}")
    if method not in ("exact_count", "bernoulli"):
        raise ValueError(f"method must be 'exact_count' or 'bernoulli', got {method!r}")
    if scored is not None and scored.shape != input_ids.shape:
        raise ValueError(f"scored must have shape {tuple(input_ids.shape)}, got {tuple(scored.shape)}")
    if row_seeds is None:
        draws = _draws(input_ids, mask_id, n_draws, _cpu_generator(seed), method, eps, scored)
    else:  # each row's draws from its own generator: independent of the batch it lands in
        if len(row_seeds) != b:
            raise ValueError(f"row_seeds must have {b} entries, got {len(row_seeds)}")
        rows = [
            _draws(
                input_ids[i : i + 1],
                mask_id,
                n_draws,
                _cpu_generator(seed, int(r)),
                method,
                eps,
                None if scored is None else scored[i : i + 1],
            )  # fmt: skip
            for i, r in enumerate(row_seeds)
        ]
        per_draw = zip(*rows, strict=True)  # draw d: every row's (noisy, masked, p)
        draws = [tuple(torch.cat(parts) for parts in zip(*d, strict=True)) for d in per_draw]
    total = 0.0
    for noisy, masked, p in draws:
        total += _masked_ce_over_p(model_fn(noisy), input_ids, masked, p, chunk_tokens)
    tokens = b * seq_len if scored is None else int(scored.sum())
    return total / n_draws, tokens


def _masked_ce_over_p(logits, targets, masked, p, chunk_tokens) -> float:
    """sum over masked positions of CE_i / p_i, the CE in float64 over `chunk_tokens` masked
    positions at a time (None: all at once), so that beyond the logits at most one chunk of
    (tokens x V) is allocated (the plain form copies every masked row to float64 and takes its
    log-softmax: two (masked x V) float64 tensors, 4x the float32 logits at half the positions
    masked). Each row's CE does not depend on the chunk it is in."""
    flat = logits.reshape(-1, logits.shape[-1])
    rows = masked.reshape(-1).nonzero().squeeze(1)
    targets, p = targets.reshape(-1), p.reshape(-1)
    step = chunk_tokens or max(len(rows), 1)
    total = 0.0
    for start in range(0, len(rows), step):
        i = rows[start : start + step]
        ce = F.cross_entropy(flat[i].double(), targets[i], reduction="none")
        total += float((ce / p[i].double()).sum())
    return total


def _cpu_generator(*seed: int) -> torch.Generator:
    """A CPU generator seeded with `seed` (one int as given; several combined by SeedSequence)."""
    if len(seed) == 1:
        return torch.Generator(device="cpu").manual_seed(int(seed[0]))
    import numpy as np

    state = np.random.SeedSequence([int(s) for s in seed]).generate_state(1, dtype=np.uint64)
    return torch.Generator(device="cpu").manual_seed(int(state[0] >> np.uint64(1)))


def _draws(input_ids, mask_id: int, n_draws: int, generator, method: str, eps: float, scored=None) -> list:
    """The n_draws (noisy_ids, masked, p) of `elbo` for a batch, all drawn before any model call;
    with `scored`, only its positions are ever masked."""
    b, seq_len = _check_ids(input_ids)
    device = input_ids.device
    n = None if scored is None else scored.sum(dim=1).cpu()
    if method == "exact_count":
        if n is None:
            k0 = torch.randint(1, seq_len + 1, (b,), generator=generator)
        else:  # k0 ~ U{1..n_b} per row (a row with nothing scored masks nothing)
            k0 = (torch.rand(b, generator=generator, dtype=torch.float64) * n).long().clamp(max=n - 1) + 1
        length = seq_len if n is None else n.clamp(min=1)
    out = []
    for d in range(n_draws):
        if method == "exact_count":
            k = torch.round(k0.double() + d * (length / n_draws)).long()
            k = (k - 1) % length + 1
            if n is not None:
                k = torch.where(n > 0, k, torch.zeros_like(k))
            k = k.to(device)
            masked = _exact_count_mask(b, seq_len, k, generator, device, scored)
            share = seq_len if n is None else length.to(device).double()  # the row's maskable tokens
            p = (k.double() / share)[:, None].expand(b, seq_len)
        else:
            _, masked, p = forward_process(input_ids, mask_id, generator, eps=eps)
            if scored is not None:
                masked = masked & scored
        noisy = torch.where(masked, torch.full_like(input_ids, mask_id), input_ids)
        out.append((noisy, masked, p))
    return out


def get_num_transfer_tokens(mask_index: torch.Tensor, steps: int) -> torch.Tensor:
    """Tokens to unmask at each of `steps` steps (generate.py `get_num_transfer_tokens`).

    LLaDA's linear schedule discretises [0, 1] into `steps` equal intervals, so the expected
    number of tokens revealed per step is constant: with m masked tokens in a row, every
    step reveals m // steps and the first m % steps steps one more. Returns (B, steps) int64.
    """
    mask_num = mask_index.sum(dim=1, keepdim=True)
    base = mask_num // steps
    remainder = mask_num % steps
    num = torch.zeros(mask_num.size(0), steps, device=mask_index.device, dtype=torch.int64) + base
    for i in range(mask_num.size(0)):
        num[i, : int(remainder[i])] += 1
    return num


@torch.no_grad()
def generate(
    model_fn: ModelFn,
    prompt_ids: torch.Tensor,
    mask_id: int,
    *,
    gen_length: int,
    steps: int,
    block_length: int,
    temperature: float = 0.0,
    remasking: str = "low_confidence",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """LLaDA's reverse-process sampler (generate.py `generate`), semi-autoregressive blocks.

    The answer starts as `gen_length` [MASK] tokens after the prompt (B, P) and is split
    into gen_length / block_length blocks, filled left to right; each block gets
    steps / num_blocks steps. At every step the model predicts all positions,
    x0 = argmax(logits) (with Gumbel noise when temperature > 0: argmax(l + tau g),
    g = -log(-log u), u ~ U(0, 1) from `generator`, i.e. a sample from softmax(l / tau)),
    and of the still-masked positions of the current block the `get_num_transfer_tokens`
    most confident are committed; the others stay masked (are "remasked"). Confidence is
    the model probability softmax(logits)[x0] for "low_confidence" remasking, a U(0, 1)
    draw from `generator` for "random". Positions after the current block get confidence
    -inf and are never committed early; committed tokens and the prompt are never changed.
    The [MASK] token itself is excluded from the predictions (its logit set to -inf).

    Returns the (B, P + gen_length) ids, the prompt unchanged. Raises ValueError when
    gen_length is not divisible by block_length, steps not by the number of blocks, or when
    a random draw is needed (temperature > 0 or remasking="random") without a generator.
    """
    b, prompt_len = _check_ids(prompt_ids)
    for name, value in (("gen_length", gen_length), ("steps", steps), ("block_length", block_length)):
        if int(value) != value or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if gen_length % block_length != 0:
        raise ValueError(f"gen_length ({gen_length}) must be divisible by block_length ({block_length})")
    num_blocks = gen_length // block_length
    if steps % num_blocks != 0:
        raise ValueError(
            f"steps ({steps}) must be divisible by the number of blocks "
            f"(gen_length / block_length = {num_blocks})"
        )
    if remasking not in REMASKING:
        raise ValueError(f"remasking must be one of {REMASKING}, got {remasking!r}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if generator is None and (temperature > 0 or remasking == "random"):
        raise ValueError("temperature > 0 and remasking='random' draw noise: pass a torch.Generator")
    steps_per_block = steps // num_blocks

    device = prompt_ids.device
    x = torch.full((b, prompt_len + gen_length), mask_id, dtype=torch.long, device=device)
    x[:, :prompt_len] = prompt_ids
    for nb in range(num_blocks):
        start = prompt_len + nb * block_length
        end = start + block_length
        num_transfer = get_num_transfer_tokens(x[:, start:end] == mask_id, steps_per_block)
        for i in range(steps_per_block):
            mask_index = x == mask_id
            logits = model_fn(x).clone()
            if mask_id < logits.shape[-1]:
                logits[..., mask_id] = -torch.inf  # never "predict" [MASK] (see the module docstring)
            if temperature > 0:
                u = _rand(logits.shape, generator, device, dtype=torch.float64)
                scores = logits.double() - temperature * torch.log(-torch.log(u))
            else:
                scores = logits
            x0 = scores.argmax(dim=-1)
            if remasking == "low_confidence":
                probs = F.softmax(logits.double(), dim=-1)
                x0_p = torch.gather(probs, -1, x0[..., None]).squeeze(-1)
            else:
                x0_p = _rand(x0.shape, generator, device, dtype=torch.float64)
            x0_p[:, end:] = -torch.inf
            x0 = torch.where(mask_index, x0, x)
            confidence = torch.where(mask_index, x0_p, torch.full_like(x0_p, -torch.inf))
            transfer = torch.zeros_like(x0, dtype=torch.bool)
            for j in range(b):
                _, select = torch.topk(confidence[j], k=int(num_transfer[j, i]))
                transfer[j, select] = True
            x[transfer] = x0[transfer]
    return x
