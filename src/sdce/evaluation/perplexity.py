"""Validation loss and perplexity of a saved model over the validation shard."""

from __future__ import annotations

import math

import torch

from sdce.data.shards import load_shard
from sdce.evaluation.validation import evaluate_loss


def evaluate_perplexity(
    model_dir: str, val_shard: str, block_size: int, max_tokens: int | None, batch_size: int
) -> dict:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    data, meta = load_shard(val_shard)
    loss, n = evaluate_loss(model, data, block_size, max_tokens, batch_size)
    return {
        "val_loss": loss,
        "perplexity": math.exp(min(loss, 50.0)),
        "tokens": n,
        "bits_per_word": loss * n / math.log(2) / max(1, round(n * meta["words"] / meta["tokens"])),
    }
