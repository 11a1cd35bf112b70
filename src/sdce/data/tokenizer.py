"""Student tokenizer: a byte-level BPE trained on the training split, or any
Hugging Face tokenizer loaded from a path. Saved with `save_pretrained`, so
`AutoTokenizer.from_pretrained(folder)` loads it."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from sdce.io import atomic_dir

EOS = "<|endoftext|>"


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
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOS, eos_token=EOS, unk_token=EOS)


def load_pretrained(path: str):
    from transformers import AutoTokenizer

    if not Path(path).expanduser().exists():
        raise TokenizerError(f"tokenizer.path does not exist: {path}")
    tok = AutoTokenizer.from_pretrained(path)
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
    with atomic_dir(out) as tmp:
        tok.save_pretrained(str(tmp))
    return tok


def load(path: str | Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path))
