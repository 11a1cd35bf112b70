"""The validation loss of a model over a token shard: what the training loop's periodic
evaluation and the evaluation job both compute (one implementation, one set of windows)."""

from __future__ import annotations

from contextlib import nullcontext

import numpy as np
import torch

from sdce.data import batches


@torch.no_grad()
def evaluate_loss(model, data, block_size: int, max_tokens: int | None, batch_size: int, backend=None):
    """Mean next-token cross-entropy over consecutive validation windows.

    With a backend, every process scores its share and the sums are reduced; on a
    static-shape backend (XLA) the last batch is padded and the padding weighs 0.
    """
    offsets = batches.validation_blocks(len(data), block_size, max_tokens)
    rank, world = (backend.rank, backend.world) if backend else (0, 1)
    device = backend.device if backend else next(model.parameters()).device
    static = backend is not None and backend.static_shapes
    was_training = model.training
    model.eval()
    total = torch.zeros(2, dtype=torch.float32 if static else torch.float64, device=device)
    mine = offsets[rank::world]
    for i in range(0, len(mine), batch_size):
        chunk = mine[i : i + batch_size]
        real = len(chunk)
        if static and real < batch_size:  # one graph for every batch
            chunk = np.concatenate([chunk, np.repeat(chunk[:1], batch_size - real)])
        x, y = batches.windows(data, chunk, block_size)
        with backend.autocast() if backend else nullcontext():
            logits = model(input_ids=x.to(device)).logits.float()
        nll = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.size(-1)), y.to(device).reshape(-1), reduction="none"
        ).view(len(chunk), -1)
        keep = (torch.arange(len(chunk)) < real).to(device=device, dtype=total.dtype)
        total += torch.stack([(nll.sum(1).to(total.dtype) * keep).sum(), keep.sum() * y.size(1)])
        if backend:
            backend.mark_step()
    if backend and world > 1:
        total = backend.reduce(total, "sum")
    model.train(was_training)
    loss = (total[0] / total[1]).item()
    return loss, int(total[1].item())


ELBO_SEED = 0  # the draws of every window are a function of (ELBO_SEED, window offset)


@torch.no_grad()
def evaluate_elbo(
    model, data, block_size: int, max_tokens: int | None, batch_size: int, backend=None, *, n_draws: int = 8
):
    """The masked-diffusion negative ELBO in nats per token over the validation windows
    (`sdce.diffusion.elbo`, LLaDA's exact-count estimator): an upper bound on the
    next-token loss a causal model would report, so exp() bounds the perplexity. The same
    windows as `evaluate_loss`, each with `n_draws` draws of (t, mask) seeded by its offset
    in the shard: every step, checkpoint, run, batch size and process count scores the
    same noisy inputs. The mask id is the model's (`config.mask_token_id`)."""
    from sdce.diffusion import elbo

    mask_id = getattr(model.config, "mask_token_id", None)
    if mask_id is None:
        raise ValueError("the elbo measure needs a model whose config has mask_token_id (masked diffusion)")
    offsets = batches.validation_blocks(len(data), block_size, max_tokens)
    rank, world = (backend.rank, backend.world) if backend else (0, 1)
    device = backend.device if backend else next(model.parameters()).device
    was_training = model.training
    model.eval()

    def logits(ids):
        with backend.autocast() if backend else nullcontext():
            out = model(input_ids=ids).logits.float()
        if backend:
            backend.mark_step()
        return out

    mine = offsets[rank::world]
    total = torch.zeros(2, dtype=torch.float64, device=device)
    for i in range(0, len(mine), batch_size):
        chunk = mine[i : i + batch_size]
        x, _ = batches.windows(data, chunk, block_size)
        nats = elbo(logits, x.to(device), mask_id, n_draws=n_draws, seed=ELBO_SEED, row_seeds=chunk.tolist())
        total += torch.tensor([nats * x.numel(), x.numel()], dtype=torch.float64, device=device)
    if backend and world > 1:
        total = backend.reduce(total, "sum")
    model.train(was_training)
    return (total[0] / total[1]).item(), int(total[1].item())


# objective.validation -> measure(model, data, block_size, max_tokens, batch_size, backend=None,
# **objective.validation_options) returning (loss, scored tokens): what the loop's periodic
# validation and the evaluation job report as val_loss for the runs of that objective
MEASURES = {"next_token": evaluate_loss, "elbo": evaluate_elbo}

# measures whose value bounds the next-token loss from above rather than equalling it
BOUNDS = {"elbo"}
