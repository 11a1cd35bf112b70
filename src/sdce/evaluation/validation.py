"""The validation loss of a model over a token shard: what the training loop's periodic
evaluation and the evaluation job both compute (one implementation, one set of windows).

`score` scores the windows of `batches.validation_blocks` with a run's measure and, given
the shard's source ranges (`sdce.data.shards.source_ranges`), also per source: each window
counts for the source its first token falls in, so the per-source losses partition the
same windows (their token-weighted mean is `val_loss`)."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch

from sdce import losses
from sdce.data import batches


def window_sources(offsets: np.ndarray, sources: dict[str, list]) -> np.ndarray:
    """The source of each window (the one whose token range holds its first token), from
    `source_ranges`' {source: [(start, end), ...]} covering the shard."""
    spans = sorted((int(start), name) for name, ranges in sources.items() for start, _ in ranges)
    starts = np.array([start for start, _ in spans], dtype=np.int64)
    names = np.array([name for _, name in spans], dtype=object)
    return names[np.searchsorted(starts, offsets, side="right") - 1]


@torch.no_grad()
def score(
    measure: dict,
    model,
    data,
    block_size: int,
    max_tokens: int | None,
    batch_size: int,
    backend=None,
    *,
    sources: dict[str, list] | None = None,
    chunk_tokens: int | None = losses.CHUNK_TOKENS,
    tokenizer=None,
) -> dict:
    """`val_loss` and `val_tokens` (the tokens scored) of the measure {"name": a key of
    MEASURES, **its options} over its validation windows; with `sources`, also
    `val_loss_by_source` and `val_tokens_by_source` (the sources that hold a window's start,
    in the sidecar's order). `chunk_tokens`: the training losses' `training.loss_chunk_tokens`.
    `tokenizer`: the model's, for a measure that reads the token ids' meaning (answer_elbo).

    With a backend, every process scores its share of each source's windows and the sums
    are reduced once; on a static-shape backend (XLA) the last batch is padded and the
    padding weighs 0."""
    options = dict(measure)
    kind = MEASURES[options.pop("name")]
    options = kind.prepare(options, tokenizer)
    offsets = kind.windows(data, block_size, max_tokens, options)
    if sources is None:
        groups = [(None, offsets)]
    else:
        owner = window_sources(offsets, sources)
        groups = [(name, offsets[owner == name]) for name in sources if (owner == name).any()]
    rank, world = (backend.rank, backend.world) if backend else (0, 1)
    device = backend.device if backend else next(model.parameters()).device
    static = backend is not None and backend.static_shapes
    was_training = model.training
    model.eval()
    total = torch.zeros(len(groups), 2, dtype=torch.float32 if static else torch.float64, device=device)
    for g, (_, group) in enumerate(groups):
        kind.sums(
            model,
            data,
            group[rank::world],
            block_size,
            batch_size,
            backend,
            total[g],
            chunk_tokens,
            **options,
        )
    if backend and world > 1:
        total = backend.reduce(total, "sum")
    model.train(was_training)
    sums = total.cpu().double()
    overall = sums.sum(0)
    if overall[1] == 0:
        raise ValueError(
            "the validation windows hold no token to score (a prompt/response shard whose "
            "examples have no response within training.block_size?)"
        )
    out = {"val_loss": (overall[0] / overall[1]).item(), "val_tokens": int(overall[1].item())}
    if sources is not None:
        out["val_loss_by_source"] = {n: (s[0] / s[1]).item() for (n, _), s in zip(groups, sums, strict=True)}
        out["val_tokens_by_source"] = {n: int(s[1].item()) for (n, _), s in zip(groups, sums, strict=True)}
    return out


def _next_token_sums(model, data, offsets, block_size, batch_size, backend, out, chunk_tokens) -> None:
    """Adds (summed next-token cross-entropy, tokens) over the windows at `offsets` to `out`.
    The cross-entropy is `losses.ce_loss` in chunks of `chunk_tokens` tokens (the training
    losses' `training.loss_chunk_tokens`): beyond the logits no (tokens x V) fp32 tensor is
    formed, also from bf16 logits (None: plain autograd, the reference)."""
    device = out.device
    static = backend is not None and backend.static_shapes
    for i in range(0, len(offsets), batch_size):
        chunk = offsets[i : i + batch_size]
        real = len(chunk)
        if static and real < batch_size:  # one graph for every batch
            chunk = np.concatenate([chunk, np.repeat(chunk[:1], batch_size - real)])
        x, y = batches.windows(data, chunk, block_size)
        if real < len(chunk):  # the padding weighs 0 (y shares x's storage: a copy)
            y = y.clone()
            y[real:] = losses.IGNORE
        with backend.autocast() if backend else nullcontext():
            logits = model(input_ids=x.to(device)).logits
        ce = losses.ce_loss(logits, y.to(device), chunk_tokens=chunk_tokens)["ce"]
        n = torch.tensor(float(real * block_size), dtype=out.dtype, device=device)
        out += torch.stack([ce.to(out.dtype) * n, n])
        if backend:
            backend.mark_step()


def evaluate_loss(
    model, data, block_size: int, max_tokens: int | None, batch_size: int, backend=None,
    *, chunk_tokens=losses.CHUNK_TOKENS,
) -> tuple[float, int]:  # fmt: skip
    """Mean next-token cross-entropy over the validation windows and the tokens scored."""
    r = score({"name": "next_token"}, model, data, block_size, max_tokens, batch_size, backend,
              chunk_tokens=chunk_tokens)  # fmt: skip
    return r["val_loss"], r["val_tokens"]


ELBO_SEED = 0  # the draws of every window are a function of (ELBO_SEED, window offset)


def _elbo_sums(
    model, data, offsets, block_size, batch_size, backend, out, chunk_tokens, *, n_draws=8,
    markers=None, eos_id=None,
) -> None:  # fmt: skip
    """Adds (summed negative ELBO in nats, tokens) over the windows at `offsets` to `out`;
    each draw's cross-entropy over `chunk_tokens` masked positions at a time (`diffusion.elbo`).
    With the chat `markers` (answer_elbo): each window is one example padded with eos after
    its own, and only its response (`chat.answer_positions`) is masked and scored, the prompt
    and the padding left clean: the bound on -log p(response | prompt) per response token."""
    from sdce.data.chat import answer_positions, pad_after_eos
    from sdce.diffusion import elbo_sums

    mask_id = getattr(model.config, "mask_token_id", None)
    if mask_id is None:
        raise ValueError("the elbo measure needs a model whose config has mask_token_id (masked diffusion)")

    def logits(ids):  # as the model gives them (bf16 under autocast): each chunk goes to float64
        with backend.autocast() if backend else nullcontext():
            z = model(input_ids=ids).logits
        if backend:
            backend.mark_step()
        return z

    for i in range(0, len(offsets), batch_size):
        chunk = offsets[i : i + batch_size]
        x, _ = batches.windows(data, chunk, block_size)
        scored = None
        if markers is not None:
            x = pad_after_eos(x, eos_id)
            scored = answer_positions(x, markers, eos_id).to(out.device)
        nats, n = elbo_sums(
            logits,
            x.to(out.device),
            mask_id,
            n_draws=n_draws,
            seed=ELBO_SEED,
            row_seeds=chunk.tolist(),
            chunk_tokens=chunk_tokens,
            scored=scored,
        )
        out += torch.tensor([nats, n], dtype=out.dtype, device=out.device)


def evaluate_elbo(
    model, data, block_size: int, max_tokens: int | None, batch_size: int, backend=None, *, n_draws: int = 8
) -> tuple[float, int]:
    """The masked-diffusion negative ELBO in nats per token over the validation windows
    (`sdce.diffusion.elbo`, LLaDA's exact-count estimator): an upper bound on the
    next-token loss a causal model would report, so exp() bounds the perplexity. The same
    windows as `evaluate_loss`, each with `n_draws` draws of (t, mask) seeded by its offset
    in the shard: every step, checkpoint, run, batch size, process count and grouping by
    source scores the same noisy inputs. The mask id is the model's (`config.mask_token_id`)."""
    r = score({"name": "elbo", "n_draws": n_draws}, model, data, block_size, max_tokens, batch_size, backend)
    return r["val_loss"], r["val_tokens"]


def _blocks(data, block_size: int, max_tokens: int | None, options: dict) -> np.ndarray:
    return batches.validation_blocks(len(data), block_size, max_tokens)


def _examples(data, block_size: int, max_tokens: int | None, options: dict) -> np.ndarray:
    return batches.validation_examples(data, block_size, max_tokens, options["eos_id"])


def _chat_ids(options: dict, tokenizer) -> dict:
    """answer_elbo finds each example's prompt by the tokenizer's chat markers."""
    from sdce.data.chat import marker_ids

    if tokenizer is None:
        raise ValueError("the answer_elbo measure needs the model's tokenizer (its chat markers)")
    return {**options, "markers": marker_ids(tokenizer), "eos_id": tokenizer.eos_token_id}


@dataclass(frozen=True)
class Measure:
    """A validation measure. `sums(model, data, offsets, block_size, batch_size, backend, out,
    chunk_tokens, **options)` adds (summed loss, scored tokens) over the windows at `offsets`
    to the (2,) tensor `out`; `windows(data, block_size, max_tokens, options)` picks those
    windows' offsets from the shard alone; `prepare(options, tokenizer)` adds what it needs of
    the tokenizer; `bound`: its value bounds the next-token loss from above (a perplexity
    bound) rather than equalling it."""

    sums: Callable[..., None]
    windows: Callable[..., np.ndarray] = _blocks
    prepare: Callable[[dict, object], dict] = lambda options, tokenizer: options
    bound: bool = False


# `score` runs a measure with the options of `objectives.validation_spec`: what the loop's
# periodic validation and the evaluation job report as val_loss for the runs of that objective
MEASURES = {
    "next_token": Measure(_next_token_sums),
    "elbo": Measure(_elbo_sums, bound=True),
    # SFT: one window per example, the response scored given its clean prompt
    "answer_elbo": Measure(_elbo_sums, windows=_examples, prepare=_chat_ids, bound=True),
}

BOUNDS = {name for name, m in MEASURES.items() if m.bound}
