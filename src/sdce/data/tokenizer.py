"""Student tokenizer: a byte-level BPE trained on the training split, or any
Hugging Face tokenizer loaded from a path. Saved with `save_pretrained`, so
`AutoTokenizer.from_pretrained(folder)` loads it."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from sdce.io import atomic_dir

EOS = "<|endoftext|>"
MASK = "<|mask|>"  # the [MASK] of masked diffusion, added to a run's copy of the tokenizer


class TokenizerError(ValueError):
    pass


def train_bpe(texts: Iterable[str], vocab_size: int, min_frequency: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    got = tok.get_vocab_size()
    if got < vocab_size:
        raise TokenizerError(
            f"tokenizer.vocab_size={vocab_size} is larger than the training split supports: "
            f"BPE stopped at {got} types (min_frequency={min_frequency}); lower the vocab size or add text"
        )
    return with_bos(
        PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOS, eos_token=EOS, unk_token=EOS)
    )


def with_bos(tokenizer):
    """The tokenizer with its BOS (for sdce's BPE the document separator, which precedes every
    document in the shards) put before every text it encodes with special tokens, as Llama's
    tokenizers do. Shards, teachers and sdce's scoring encode without special tokens, so this
    changes only what tools that call ``tokenizer(text)`` see: the official BabyLM pipeline
    then conditions a sentence's first word on the separator instead of leaving it unscored
    (docs/evaluation.md, "The BOS decision", has the measurement)."""
    from tokenizers.processors import TemplateProcessing

    bos, bos_id = tokenizer.bos_token, tokenizer.bos_token_id
    tokenizer.backend_tokenizer.post_processor = TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, bos_id)]
    )
    return tokenizer


def load_pretrained(path: str):
    """A tokenizer folder, or a model name `from_pretrained` resolves (the hub, its cache)."""
    from transformers import AutoTokenizer

    local = Path(path).expanduser()
    try:
        tok = AutoTokenizer.from_pretrained(str(local) if local.exists() else path)
    except (OSError, ValueError) as e:
        what = "a folder transformers cannot load" if local.exists() else "neither a folder nor a model name"
        raise TokenizerError(f"tokenizer.path: {path} is {what} here: {e}") from None
    if tok.eos_token_id is None:
        raise TokenizerError(f"tokenizer at {path} has no eos token; documents need a separator")
    return tok


def build_tokenizer(spec: dict, texts: Iterable[str], out: str | Path):
    if spec["kind"] == "bpe":
        tok = train_bpe(texts, spec["vocab_size"], spec["min_frequency"])
    else:
        if not spec.get("path"):
            raise TokenizerError("tokenizer.path must be set when tokenizer.kind is 'pretrained'")
        tok = load_pretrained(spec["path"])
    extra = [t for t in spec.get("special_tokens", []) if t not in tok.get_vocab()]
    if extra:  # e.g. the chat markers of a prompt/response corpus: one id each, never split
        tok.add_special_tokens({"additional_special_tokens": extra})
    with atomic_dir(out) as tmp:
        tok.save_pretrained(str(tmp))
    return tok


def load(path: str | Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path))


def with_mask_token(tokenizer):
    """The tokenizer with a mask token (its own, else MASK appended as a special token, id
    len(tokenizer) - 1). The study's shared tokenizer and shards are unchanged: the mask id
    is past every id in the data, and a masked-diffusion run saves its copy with the model.

    A tokenizer without a pad token gets its eos token as pad (no new id): the official BabyLM
    pipeline's `mlm` backend pads the masked copies with the pad id (else the cls id, which
    these tokenizers lack too), so a saved masked model is scored by that code as it is."""
    if tokenizer.pad_token_id is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.mask_token_id is not None:
        return tokenizer
    if MASK in tokenizer.get_vocab():
        raise TokenizerError(
            f"tokenizer cannot take a mask token: '{MASK}' is already an ordinary token of its vocabulary"
        )
    try:
        tokenizer.add_special_tokens({"mask_token": MASK})
    except (AttributeError, TypeError, ValueError) as e:
        raise TokenizerError(f"tokenizer cannot take a mask token: {e}") from None
    if tokenizer.mask_token_id is None or tokenizer.convert_ids_to_tokens(tokenizer.mask_token_id) != MASK:
        raise TokenizerError(f"tokenizer cannot take a mask token: '{MASK}' did not become a special token")
    return tokenizer
