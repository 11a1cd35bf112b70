"""Log-probability scoring of texts and continuations under a Hugging Face causal LM.

Everything zero-shot in :mod:`sdce.evaluation` (BLiMP minimal pairs, the BabyLM 2025 suite)
reduces to two primitives defined here:

* :func:`sequence_logprobs` -- the total log-probability of each text, **first token
  included**;
* :func:`continuation_logprobs` -- the summed log-probability of a continuation's tokens given
  a context.

First-token conditioning
------------------------
A causal LM predicts token ``t`` from tokens ``< t``, so the first token of a text has no
prediction unless something precedes it. Implementations differ here:

* the official BabyLM 2025 pipeline (``babylm/evaluation-pipeline-2025``) tokenises with the
  tokenizer's own special tokens and scores tokens ``1..n``; with a GPT-2 style tokenizer, which
  adds no BOS, the first word is never scored, so two sentences differing only in their first
  word compare as equal (a tie, which that pipeline credits as correct);
* lm-evaluation-harness prepends ``prefix_token_id`` (the BOS token, else EOS) and scores every
  token of the continuation.

We follow lm-evaluation-harness: every text is encoded *without* the tokenizer's special tokens
and is conditioned on one conditioning token, ``tokenizer.bos_token_id`` or, if the tokenizer
has no BOS, ``tokenizer.eos_token_id`` (GPT-2's ``<|endoftext|>`` is both the document separator
and the de facto BOS, so a model trained on concatenated documents has seen it precede text).
A tokenizer with neither raises :class:`ValueError`; pass ``prefix=`` (token id or ids) to
choose the conditioning tokens explicitly. The conditioning tokens are never scored.

Numerics and batching
---------------------
Logits are upcast to float32 before the log-softmax, whatever the model dtype. Texts are sorted
by length and scored in right-padded batches with an attention mask and explicit position ids
(``0..n-1`` for each row), so padding never reaches a real token and a text's score does not
depend on the batch it lands in (up to float rounding, ~1e-5). Results come back in input order.

Continuation boundary
---------------------
:func:`continuation_logprobs` tokenises ``context + continuation`` *once*, as one string (the
strings are concatenated verbatim: callers put any separating space where the task puts it,
e.g. EWoK's ``" " + target``), so the model sees exactly the tokens it would see for the
full text. The continuation's tokens are those whose character span ends after ``len(context)``,
i.e. every token overlapping the continuation. A token straddling the boundary (``"contains "``
+ ``"the"`` is tokenised ``contains|Ġthe``) therefore belongs to the continuation: the same rule
as the official BabyLM pipeline (its phrase mask) and the same token split as
lm-evaluation-harness, which moves the context's trailing spaces into the continuation. With a
slow tokenizer (no offsets), the context is encoded alone and the continuation is what follows
the longest common token prefix of the two encodings.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import torch

__all__ = ["conditioning_ids", "continuation_logprobs", "sequence_logprobs"]


def conditioning_ids(tokenizer, prefix: int | Sequence[int] | None = None) -> list[int]:
    """The token ids every scored text is conditioned on (see the module docstring)."""
    if prefix is not None:
        ids = [int(prefix)] if isinstance(prefix, int) else [int(i) for i in prefix]
        if not ids:
            raise ValueError("prefix must name at least one token id")
        return ids
    for name in ("bos_token_id", "eos_token_id"):
        tok_id = getattr(tokenizer, name, None)
        if tok_id is not None:
            return [int(tok_id)]
    raise ValueError(
        "the tokenizer has neither a BOS nor an EOS token, so the first token of a text cannot be "
        "scored; pass prefix=<token id(s)> to choose the conditioning token"
    )


def _check_ids(tokenizer, text: str, ids: list[int]) -> None:
    if not ids:
        raise ValueError(f"cannot score {text!r}: the tokenizer produced no tokens for it")
    unk_id = getattr(tokenizer, "unk_token_id", None)
    if unk_id is not None and unk_id in ids:
        unk_token = getattr(tokenizer, "unk_token", None)
        # A text may legitimately contain the literal special token (GPT-2 style tokenizers use
        # one token as unk, bos and eos); anything else mapped to unk was not representable.
        if not unk_token or unk_token not in text:
            raise ValueError(
                f"cannot score {text!r}: the tokenizer maps part of it to the unknown token "
                f"{unk_token!r} (characters outside its vocabulary)"
            )


def _encode(tokenizer, text: str) -> list[int]:
    if not isinstance(text, str):
        raise TypeError(f"expected a string to score, got {type(text).__name__}: {text!r}")
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    _check_ids(tokenizer, text, ids)
    return ids


def _max_positions(model) -> int | None:
    config = getattr(model, "config", None)
    for name in ("n_positions", "max_position_embeddings"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _model_device(model, device) -> torch.device:
    if device is not None:
        return torch.device(device)
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def _accepts_position_ids(model) -> bool:
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False
    return "position_ids" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def _score_token_sequences(
    model,
    sequences: list[list[int]],
    scored: list[Sequence[bool]],
    *,
    batch_size: int,
    device,
    pad_id: int,
    labels: Sequence[str] | None = None,
) -> list[float]:
    """Sum of log p(x_t | x_<t) over the positions t where ``scored[i][t]`` is true (t >= 1:
    the first token of a sequence has no prediction) for each sequence."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n = len(sequences)
    if n == 0:
        return []
    limit = _max_positions(model)
    if limit is not None:
        for i, seq in enumerate(sequences):
            if len(seq) > limit:
                what = repr(labels[i]) if labels is not None else f"sequence {i}"
                raise ValueError(
                    f"cannot score {what}: {len(seq)} tokens (with the conditioning token) exceed the "
                    f"model's {limit} positions"
                )
    dev = _model_device(model, device)
    use_positions = _accepts_position_ids(model)
    order = sorted(range(n), key=lambda i: len(sequences[i]), reverse=True)
    out = [0.0] * n
    was_training = bool(getattr(model, "training", False))
    model.eval()
    try:
        with torch.inference_mode():
            for start in range(0, n, batch_size):
                idx = order[start : start + batch_size]
                width = len(sequences[idx[0]])
                input_ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
                attention = torch.zeros((len(idx), width), dtype=torch.long)
                score_mask = torch.zeros((len(idx), width - 1), dtype=torch.bool)
                for row, i in enumerate(idx):
                    seq = sequences[i]
                    input_ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
                    attention[row, : len(seq)] = 1
                    # target position t is predicted from logits at t - 1
                    score_mask[row, : len(seq) - 1] = torch.tensor(list(scored[i][1:]), dtype=torch.bool)
                input_ids = input_ids.to(dev)
                attention = attention.to(dev)
                kwargs = {"input_ids": input_ids, "attention_mask": attention}
                if use_positions:
                    kwargs["position_ids"] = (attention.cumsum(-1) - 1).clamp(min=0)
                output = model(**kwargs)
                logits = output.logits if hasattr(output, "logits") else output[0]
                logits = logits[:, :-1, :].float()
                targets = input_ids[:, 1:].unsqueeze(-1)
                token_lp = torch.gather(logits, -1, targets).squeeze(-1) - torch.logsumexp(logits, dim=-1)
                token_lp = torch.where(score_mask.to(dev), token_lp, torch.zeros_like(token_lp))
                sums = token_lp.sum(dim=-1).cpu().tolist()
                for row, i in enumerate(idx):
                    out[i] = float(sums[row])
    finally:
        if was_training:
            model.train()
    return out


def _from(start: int, length: int) -> list[bool]:
    """Score positions start..length-1."""
    return [False] * start + [True] * (length - start)


def _pad_id(tokenizer, cond: list[int]) -> int:
    pad = getattr(tokenizer, "pad_token_id", None)
    return int(pad) if pad is not None else cond[0]


def sequence_logprobs(
    model,
    tokenizer,
    texts: Sequence[str],
    *,
    batch_size: int = 32,
    prefix: int | Sequence[int] | None = None,
    device=None,
) -> list[float]:
    """Total log-probability (natural log, float32 arithmetic) of each text, first token included.

    Each text is encoded without special tokens and conditioned on :func:`conditioning_ids`
    (BOS, else EOS, else ``prefix``); the conditioning tokens are not scored. Raises
    :class:`ValueError` naming a text the tokenizer cannot encode (no tokens, or pieces mapped to
    the unknown token) or one longer than the model's context.
    """
    cond = conditioning_ids(tokenizer, prefix)
    texts = list(texts)
    sequences = [cond + _encode(tokenizer, text) for text in texts]
    return _score_token_sequences(
        model,
        sequences,
        [_from(len(cond), len(seq)) for seq in sequences],
        batch_size=batch_size,
        device=device,
        pad_id=_pad_id(tokenizer, cond),
        labels=texts,
    )


def _split_context_continuation(tokenizer, context: str, continuation: str) -> tuple[list[int], int]:
    """Token ids of ``context + continuation`` and the index of the first continuation token."""
    if not isinstance(context, str) or not isinstance(continuation, str):
        raise TypeError("contexts and continuations must be strings")
    if not continuation:
        raise ValueError(f"empty continuation for context {context!r}")
    full = context + continuation
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
        ids = list(enc["input_ids"])
        _check_ids(tokenizer, full, ids)
        boundary = len(context)
        first = next((k for k, (_, end) in enumerate(enc["offset_mapping"]) if end > boundary), None)
    else:
        ids = _encode(tokenizer, full)
        ctx_ids = list(tokenizer(context, add_special_tokens=False)["input_ids"]) if context else []
        first = 0
        while first < min(len(ids), len(ctx_ids)) and ids[first] == ctx_ids[first]:
            first += 1
        if first == len(ids):
            first = None
    if first is None:
        raise ValueError(
            f"cannot score continuation {continuation!r} of context {context!r}: no token of the "
            "tokenised text covers the continuation"
        )
    return ids, first


def continuation_logprobs(
    model,
    tokenizer,
    contexts: Sequence[str],
    continuations: Sequence[str],
    *,
    batch_size: int = 32,
    prefix: int | Sequence[int] | None = None,
    device=None,
) -> list[float]:
    """Summed log-probability of each continuation's tokens given its context.

    ``contexts[i] + continuations[i]`` is tokenised as one string (no separator is inserted) and
    conditioned on the BOS/EOS token like :func:`sequence_logprobs`; only the tokens that overlap
    the continuation's characters are scored (see "Continuation boundary" in the module
    docstring). An empty context scores the continuation as a whole text, first token included.
    """
    contexts = list(contexts)
    continuations = list(continuations)
    if len(contexts) != len(continuations):
        raise ValueError(f"{len(contexts)} contexts but {len(continuations)} continuations")
    cond = conditioning_ids(tokenizer, prefix)
    sequences: list[list[int]] = []
    score_from: list[int] = []
    for context, continuation in zip(contexts, continuations, strict=True):
        ids, first = _split_context_continuation(tokenizer, context, continuation)
        sequences.append(cond + ids)
        score_from.append(len(cond) + first)
    return _score_token_sequences(
        model,
        sequences,
        [_from(start, len(seq)) for start, seq in zip(score_from, sequences, strict=True)],
        batch_size=batch_size,
        device=device,
        pad_id=_pad_id(tokenizer, cond),
        labels=[c + k for c, k in zip(contexts, continuations, strict=True)],
    )
