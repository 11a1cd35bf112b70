"""Prompt/response examples in LLaDA's chat format (GUIDELINES.md, "SFT").

An example is one document of the corpus:

    <start_id>user<end_id>\\n{prompt}<eot_id><start_id>assistant<end_id>\\n{response}

followed in the shard by the eos token that ends every document. The three markers are
special tokens of the study's tokenizer (`tokenizer.special_tokens`), so each is one id and
the prompt can be found in the token ids themselves: it ends with the `<end_id>` that
follows the first `<eot_id>`, and the newline after it when the tokenizer has the newline
as a token of its own (LLaDA's prompt_lengths count that newline). LLaDA's <BOS> is not
written: sdce's shards hold no BOS, as the official BabyLM pipeline feeds none.

A training example is a window starting at a document's first token (`DocumentSampler`);
everything after its eos is replaced by eos, LLaDA's padding, and counts as answer."""

from __future__ import annotations

import torch

START, END, EOT = "<start_id>", "<end_id>", "<eot_id>"
MARKERS = (START, END, EOT)


def format_example(prompt: str, response: str) -> str:
    return f"{START}user{END}\n{prompt}{EOT}{START}assistant{END}\n{response}"


def marker_ids(tokenizer) -> tuple[int, int, int | None]:
    """(the `<end_id>` id, the `<eot_id>` id, the newline id or None), or a ValueError naming
    the missing marker."""
    vocab = tokenizer.get_vocab()
    missing = [m for m in (END, EOT) if m not in vocab]
    if missing:
        raise ValueError(
            f"the tokenizer has no chat marker {missing[0]}: set tokenizer.special_tokens to "
            f"[{', '.join(MARKERS)}] for a prompt/response corpus"
        )
    newline = tokenizer("\n", add_special_tokens=False)["input_ids"]
    return vocab[END], vocab[EOT], newline[0] if len(newline) == 1 else None


def pad_after_eos(x: torch.Tensor, eos_id: int) -> torch.Tensor:
    """Every token after a row's first eos replaced by eos (the next documents are not part
    of this example)."""
    is_eos = (x == eos_id).int()
    after = (is_eos.cumsum(dim=1) - is_eos) > 0
    return torch.where(after, torch.full_like(x, eos_id), x)


def prompt_lengths(x: torch.Tensor, tokenizer) -> torch.Tensor:
    """(B,) the prompt length of each row: through the `<end_id>` after the first `<eot_id>`
    (and its newline). A row without a complete prompt (a document that is not an example,
    or one cut before its response) is prompt throughout: nothing in it is scored."""
    return prompt_lengths_of(x, *marker_ids(tokenizer))


def prompt_lengths_of(x: torch.Tensor, end_id: int, eot_id: int, newline: int | None) -> torch.Tensor:
    """`prompt_lengths` from the marker ids (`marker_ids`)."""
    b, length = x.shape
    pos = torch.arange(length, device=x.device).expand(b, length)
    big = torch.full_like(pos, length)
    first_eot = torch.where(x == eot_id, pos, big).min(dim=1).values
    end_after = torch.where((x == end_id) & (pos > first_eot[:, None]), pos, big).min(dim=1).values
    lengths = (end_after + 1).clamp(max=length)
    if newline is not None:
        nxt = x.gather(1, lengths.clamp(max=length - 1)[:, None])[:, 0]
        lengths = torch.where((lengths < length) & (nxt == newline), lengths + 1, lengths)
    return torch.where(end_after < length, lengths, torch.full_like(lengths, length))


def answer_positions(x: torch.Tensor, markers: tuple[int, int, int | None], eos_id: int) -> torch.Tensor:
    """(B, L) bool: each row's response, from the end of its prompt through the eos that ends
    the example (the eos padding after it excluded); nothing in a row without a complete
    prompt. What the validation bound of an SFT run scores."""
    pos = torch.arange(x.shape[1], device=x.device).expand_as(x)
    is_eos = x == eos_id
    first_eos = torch.where(is_eos, pos, torch.full_like(pos, x.shape[1])).min(dim=1).values
    start = prompt_lengths_of(x, *markers)
    return (pos >= start[:, None]) & (pos <= first_eos[:, None])
