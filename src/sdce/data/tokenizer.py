"""Student tokenizer: a byte-level BPE trained on the training split, or any
Hugging Face tokenizer loaded from a path. Saved with `save_pretrained`, so
`AutoTokenizer.from_pretrained(folder)` loads it."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
    """A tokenizer folder, or a model name `from_pretrained` resolves (the hub, its cache).
    A folder AutoTokenizer cannot load but that holds a tokenizer.json or GPT-2's own files
    (vocab.json and merges.txt) is read as the LM teachers read it
    (`sdce.teachers.vocab.load_tokenizer`, which repairs what recent `tokenizers` reject in
    older files): ../shared's GPT-2 folder (no config, so transformers 5 has no class to build
    it with) and Llama 2's (its "a b" merges) are two."""
    from transformers import AutoTokenizer

    local = Path(path).expanduser()
    try:
        tok = AutoTokenizer.from_pretrained(str(local) if local.exists() else path)
    except (OSError, ValueError, TypeError) as e:  # TypeError: Llama 2's merges in transformers 5
        if (local / "tokenizer.json").is_file() or (
            (local / "vocab.json").is_file() and (local / "merges.txt").is_file()
        ):
            from sdce.teachers.vocab import load_tokenizer

            tok = load_tokenizer(local)
        else:
            what = (
                "a folder transformers cannot load" if local.exists() else "neither a folder nor a model name"
            )
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


@dataclass(frozen=True)
class Encoder:
    """What shards are encoded with (`sdce.data.shards.encode_documents`): the tokenizer
    library's tokenizer, the eos id that ends every document, and the vocabulary size."""

    backend_tokenizer: Any
    eos_token_id: int
    size: int

    def __len__(self) -> int:
        return self.size


# the classes transformers loads straight from tokenizer.json, changing nothing in it
GENERIC_FAST = {"TokenizersBackend", "PreTrainedTokenizerFast"}


def load_encoder(path: str | Path) -> Encoder:
    """The encoder of the tokenizer folder at `path`, equal to what `load(path)` holds.

    A generic fast tokenizer (a class in GENERIC_FAST: every BPE tokenizer sdce trains), whose
    eos and listed added tokens tokenizer.json holds with the ids its config gives them, is
    read with the `tokenizers` library alone: an encode job then starts without importing
    transformers and torch, which was most of each encode job on the tiny studies (Snakemake's
    benchmark files of tests/configs/tiny_folds.yaml, this 2-core machine: 12 encode jobs,
    46.7 s in all before, 3.8 s after; docs/stages.md).
    Any other tokenizer (a model's own class, which may rebuild its backend on loading, or
    one without tokenizer.json) goes through `load`."""
    folder = Path(path)
    config_file, json_file = folder / "tokenizer_config.json", folder / "tokenizer.json"
    if config_file.is_file() and json_file.is_file():
        config = json.loads(config_file.read_text())
        if config.get("tokenizer_class") in GENERIC_FAST:
            from tokenizers import Tokenizer

            backend = Tokenizer.from_file(str(json_file))
            eos_id = _token_id(backend, config.get("eos_token"))
            listed = [
                (_token_id(backend, t), int(i)) for i, t in config.get("added_tokens_decoder", {}).items()
            ]
            if eos_id is not None and all(got == want for got, want in listed):
                return Encoder(backend, eos_id, backend.get_vocab_size(with_added_tokens=True))
    tok = load(path)
    return Encoder(tok.backend_tokenizer, tok.eos_token_id, len(tok))


def _token_id(backend, token) -> int | None:
    """The id of a token as a tokenizer config writes it (a string or {"content": ...})."""
    content = token.get("content") if isinstance(token, dict) else token
    return backend.token_to_id(content) if isinstance(content, str) else None


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
