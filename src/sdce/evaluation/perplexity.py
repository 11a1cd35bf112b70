"""Validation loss and perplexity of a saved model over the validation shard, with the
measure of its objective (`objectives.validation_spec`): the next-token loss of a causal
model, the negative ELBO of a masked-diffusion model, of an SFT model's responses given
their prompts (then `perplexity` is a bound and `perplexity_is_bound` says so). With a
sidecar that lists its sources' token ranges, also `val_loss_by_source` and
`val_tokens_by_source` (`sdce.evaluation.validation.score`)."""

from __future__ import annotations

import math

import torch

from sdce.data.shards import load_shard, source_ranges
from sdce.evaluation.validation import BOUNDS, score
from sdce.losses import CHUNK_TOKENS


def evaluate_perplexity(
    model_dir: str,
    val_shard: str,
    block_size: int,
    max_tokens: int | None,
    batch_size: int,
    measure: dict | None = None,
    *,
    chunk_tokens: int | None = CHUNK_TOKENS,
    model=None,
    tokenizer=None,
) -> dict:
    """`chunk_tokens`: the run's `training.loss_chunk_tokens` (the losses' chunk size).
    `model`, `tokenizer`: the folder's, when the caller has loaded them already."""
    from transformers import AutoTokenizer

    from sdce.model import load_model

    measure = measure or {"name": "next_token"}
    model = model if model is not None else load_model(model_dir, dtype=torch.float32)
    if tokenizer is None:
        tokenizer = AutoTokenizer.from_pretrained(model_dir)  # saved beside every model and milestone
    data, meta = load_shard(val_shard)
    scores = score(
        measure,
        model,
        data,
        block_size,
        max_tokens,
        batch_size,
        sources=source_ranges(meta),
        chunk_tokens=chunk_tokens,
        tokenizer=tokenizer,
    )
    loss, n = scores.pop("val_loss"), scores.pop("val_tokens")
    return {
        "val_loss": loss,
        "perplexity": math.exp(min(loss, 50.0)),
        "perplexity_is_bound": measure["name"] in BOUNDS,
        "measure": measure["name"],
        "tokens": n,
        "bits_per_word": loss * n / math.log(2) / max(1, round(n * meta["words"] / meta["tokens"])),
        **scores,  # val_loss_by_source, val_tokens_by_source
    }
