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


class WindowSampler:
    """The offsets of a step's windows: anywhere in the shard (`global_offsets`)."""

    def __init__(self, data: np.ndarray, block_size: int, eos_id: int | None = None):
        self.n_tokens, self.block_size = len(data), block_size

    def offsets(self, batch_size: int, seed: int, step: int) -> np.ndarray:
        return global_offsets(self.n_tokens, self.block_size, batch_size, seed, step)


class DocumentSampler:
    """The offsets of a step's windows: each at a document's first token (the shard's start
    or the token after an eos), drawn uniformly among the documents whose window fits in the
    shard, as a pure function of (seed, step). One example per row (prompt/response SFT)."""

    def __init__(self, data: np.ndarray, block_size: int, eos_id: int):
        self.starts = document_starts(data, block_size, eos_id, "training")

    def offsets(self, batch_size: int, seed: int, step: int) -> np.ndarray:
        rng = np.random.default_rng([seed, step])
        return self.starts[rng.integers(0, len(self.starts), size=batch_size)]


def document_starts(data: np.ndarray, block_size: int, eos_id: int, shard: str) -> np.ndarray:
    """The offsets of the shard's documents (its start and every token after an eos) whose
    window of block_size + 1 tokens fits in the shard; a ValueError naming the `shard` when none."""
    ends = np.flatnonzero(np.asarray(data) == eos_id)
    starts = np.concatenate(([0], ends[:-1] + 1)) if len(ends) else np.array([0])
    starts = starts[starts + block_size + 1 <= len(data)]
    if not len(starts):
        raise ValueError(
            f"{shard} shard has no document with block_size + 1 = {block_size + 1} tokens after it"
        )
    return starts.astype(np.int64)


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
    return _spread(total, block_size, max_tokens) * block_size


def validation_examples(data: np.ndarray, block_size: int, max_tokens: int | None, eos_id: int) -> np.ndarray:
    """Offsets of the validation windows of a prompt/response shard: one per example (each
    at a document's first token, as `DocumentSampler` trains on them), every example whose
    window fits, or, when `max_tokens` holds fewer windows, that many spread evenly over the
    shard as in `validation_blocks`. They depend on the shard only."""
    starts = document_starts(data, block_size, eos_id, "validation")
    return starts[_spread(len(starts), block_size, max_tokens)]


def _spread(total: int, block_size: int, max_tokens: int | None) -> np.ndarray:
    """Indices of the windows scored among `total`: all of them, or the max_tokens //
    block_size (at least one) middles of as many equal stretches."""
    count = total if max_tokens is None else min(total, max(1, max_tokens // block_size))
    picks = (np.arange(count) * total + total // 2) // count if count < total else np.arange(total)
    return picks.astype(np.int64)
