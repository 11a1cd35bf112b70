"""Text from a trained student, one entry point for every model kind.

`generate(model, tokenizer, prompts, spec)` samples a continuation of each prompt with the
sampler of the model's kind (`SAMPLERS`, keyed like `sdce.model.FAMILIES`' kinds):

* `causal`: transformers' own `model.generate` (temperature, top-k, top-p; temperature 0 is
  greedy decoding), `max_new_tokens` tokens or up to the eos token;
* `bidirectional`: LLaDA's reverse-process sampler (`sdce.diffusion.generate`): the answer
  starts as `max_new_tokens` mask tokens after the prompt and is filled in
  `diffusion.steps` steps, block by block (`diffusion.block_length`), committing the most
  confident predictions first (`remasking: low_confidence`); the text stops at the first
  eos token it produced.

Every prompt is sampled on its own under a generator seeded by (seed, prompt index), so a
continuation does not depend on which other prompts were asked, and the same seed gives the
same text. `spec` is the validated `generation` section of the schema."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from sdce.model import kind_of


def _prompt_ids(tokenizer, prompt: str, device) -> torch.Tensor:
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"] if prompt else []
    if not ids:  # an empty prompt starts from the document separator, as training saw documents
        ids = [tokenizer.eos_token_id]
    return torch.tensor([ids], device=device)


def _causal(model, tokenizer, ids: torch.Tensor, spec: dict, seed: int) -> list[int]:
    torch.manual_seed(seed)  # transformers' sampling draws from the global generator
    sample = spec["temperature"] > 0
    kwargs = {"temperature": spec["temperature"], "top_k": spec["top_k"] or None, "top_p": spec["top_p"]}
    out = model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=spec["max_new_tokens"],
        do_sample=sample,
        pad_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **(kwargs if sample else {"temperature": None, "top_k": None, "top_p": None}),
    )
    return out[0, ids.shape[1] :].tolist()


def _bidirectional(model, tokenizer, ids: torch.Tensor, spec: dict, seed: int) -> list[int]:
    from sdce import diffusion

    mask_id = tokenizer.mask_token_id
    if mask_id is None:
        raise ValueError(
            "a masked-diffusion model's tokenizer has no mask token: was it saved with its model?"
        )
    d = spec["diffusion"]
    n = spec["max_new_tokens"]
    block = min(d["block_length"], n)
    n = -(-n // block) * block  # LLaDA's sampler fills whole blocks
    blocks = n // block
    steps = max(blocks, -(-d["steps"] // blocks) * blocks)
    generator = torch.Generator(device=ids.device).manual_seed(seed)
    out = diffusion.generate(
        lambda x: model(input_ids=x).logits,
        ids,
        mask_id,
        gen_length=n,
        steps=steps,
        block_length=block,
        temperature=spec["temperature"],
        remasking=d["remasking"],
        generator=generator,
    )
    answer = out[0, ids.shape[1] :].tolist()
    eos = tokenizer.eos_token_id
    return answer[: answer.index(eos) + 1] if eos in answer else answer


SAMPLERS: dict[str, Callable[..., list[int]]] = {"causal": _causal, "bidirectional": _bidirectional}


@torch.no_grad()
def generate(model, tokenizer, prompts: Sequence[str], spec: dict) -> list[dict]:
    """One record per prompt: prompt, completion (text), completion_tokens, seed, sampler."""
    kind = kind_of(model)
    sampler = SAMPLERS[kind]
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    records = []
    for i, prompt in enumerate(prompts):
        seed = spec["seed"] * 1_000_003 + i
        tokens = sampler(model, tokenizer, _prompt_ids(tokenizer, prompt, device), spec, seed)
        text = tokenizer.decode([t for t in tokens if t != tokenizer.eos_token_id], skip_special_tokens=True)
        records.append(
            {
                "prompt": prompt,
                "completion": text,
                "completion_tokens": len(tokens),
                "seed": seed,
                "sampler": kind,
            }
        )
    model.train(was_training)
    return records
