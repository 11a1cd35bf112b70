"""Pseudo-log-likelihood (PLL) of sentences under a masked LM, as the official BabyLM 2025
pipeline's `mlm` backend computes it (evaluation_pipeline/sentence_zero_shot: dataset.py
`process_mlm_sentences` and `get_mlm_collate_fn`, compute_results.py `compute_mlm_results`).

The sentence is encoded as the tokenizer encodes it (its own special tokens included); every
token whose character span is non-empty (special tokens have offsets (0, 0) and are never
scored) is replaced by the mask token in its own copy of the sentence, and the sentence's
score is the sum over those copies of log p(original token | the rest), at temperature 1.
The copies are right-padded with the tokenizer's pad id (else its cls id, as the official
code does, else its eos id) under an attention mask, in batches of `batch_size` copies.
tests/test_pll.py checks the scores against the official code on the same model and pairs."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def _copies(tokenizer, text: str, start_char: int = 0) -> tuple[list[int], list[int]]:
    enc = tokenizer(text, return_offsets_mapping=True)
    scored = [i for i, (start, end) in enumerate(enc["offset_mapping"]) if end > start_char]
    if not scored:
        raise ValueError(f"the tokenizer gives no scored tokens for {text!r}")
    return list(enc["input_ids"]), scored


@torch.no_grad()
def pseudo_loglikelihoods(
    model,
    tokenizer,
    texts: Sequence[str],
    *,
    batch_size: int = 32,
    device=None,
    completions: Sequence[str] | None = None,
) -> list[float]:
    """The PLL (natural log) of every text, in input order. With ``completions`` (each a
    suffix of its text, as the official backend's tasks give them), only the tokens that
    overlap the completion's characters are masked and scored (a whole text otherwise)."""
    mask_id = tokenizer.mask_token_id
    if mask_id is None:
        raise ValueError("pseudo-log-likelihood needs a tokenizer with a mask token")
    pad = next(
        (
            t
            for t in (tokenizer.pad_token_id, tokenizer.cls_token_id, tokenizer.eos_token_id)
            if t is not None
        ),
        0,
    )
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    rows = []  # (text index, masked position, target id, ids)
    for t, text in enumerate(texts):
        start_char = 0 if completions is None else len(text) - len(completions[t])
        ids, scored = _copies(tokenizer, text, start_char)
        rows += [(t, i, ids[i], ids[:i] + [mask_id] + ids[i + 1 :]) for i in scored]
    totals = torch.zeros(len(texts), dtype=torch.float64)
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        width = max(len(r[3]) for r in chunk)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        attention = torch.zeros((len(chunk), width), dtype=torch.long)
        for j, r in enumerate(chunk):
            ids[j, : len(r[3])] = torch.tensor(r[3])
            attention[j, : len(r[3])] = 1
        logits = model(input_ids=ids.to(device), attention_mask=attention.to(device)).logits.float()
        at = logits[torch.arange(len(chunk)), torch.tensor([r[1] for r in chunk])]
        logp = F.log_softmax(at, dim=-1).gather(-1, torch.tensor([[r[2]] for r in chunk], device=at.device))
        totals.index_add_(0, torch.tensor([r[0] for r in chunk]), logp.squeeze(-1).double().cpu())
    model.train(was_training)
    return totals.tolist()
