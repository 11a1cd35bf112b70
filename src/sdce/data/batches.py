"""Training and validation batches from a token shard.

Training batches are a pure function of (seed, step): the global batch of step
s is `batch_size` windows at offsets drawn from a generator seeded with
(seed, s). Resuming therefore needs no data-loader state, and every process of
a distributed run slices its own part of the same global batch.
"""

from __future__ import annotations

import numpy as np
import torch


def global_offsets(n_tokens: int, block_size: int, batch_size: int, seed: int, step: int) -> np.ndarray:
    high = n_tokens - block_size - 1
    if high <= 0:
        raise ValueError(
            f"training shard has {n_tokens} tokens, fewer than block_size + 1 = {block_size + 1}"
        )
    return np.random.default_rng([seed, step]).integers(0, high + 1, size=batch_size)


def windows(data: np.ndarray, offsets: np.ndarray, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets), each (len(offsets), block_size) int64."""
    idx = offsets[:, None] + np.arange(block_size + 1)[None, :]
    block = torch.from_numpy(np.asarray(data[idx], dtype=np.int64))
    return block[:, :-1], block[:, 1:]


def validation_blocks(n_tokens: int, block_size: int, max_tokens: int | None) -> np.ndarray:
    """Offsets of the validation windows: every non-overlapping window of the shard, or, when
    `max_tokens` holds fewer, that many spread evenly over the whole shard (the middle window
    of each of `count` equal stretches). They depend on the shard's length only, so every
    step of every run on a shard is scored on the same windows. A coherent split orders the
    validation shard by source: the first windows alone would score the first source only."""
    total = (n_tokens - 1) // block_size
    if total == 0:
        raise ValueError(
            f"validation shard has {n_tokens} tokens, fewer than one block of {block_size}: "
            "raise split.validation_fraction or lower training.block_size"
        )
    count = total if max_tokens is None else min(total, max(1, max_tokens // block_size))
    picks = (np.arange(count) * total + total // 2) // count if count < total else np.arange(total)
    return picks.astype(np.int64) * block_size
