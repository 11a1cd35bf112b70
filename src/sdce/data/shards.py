"""Token shards: a flat numpy memmap of token ids (documents separated by EOS)
with a JSON sidecar (tokens, words, documents, dtype, tokenizer hash, and per source its
documents, words, tokens and the token ranges its documents occupy)."""

from __future__ import annotations

from itertools import chain
from pathlib import Path

import numpy as np

from sdce.data.corpus import word_count
from sdce.io import atomic_path, dir_hash, read_json, write_json

# At most this many stretches of one source's consecutive documents are listed in the sidecar
# (`ranges`): a coherent split has one per source, a shuffled one about one per document, too
# many to list for a large corpus (its sidecar then has no ranges and no per-source losses).
MAX_SOURCE_RANGES = 4096


def dtype_for(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= np.iinfo(np.uint16).max + 1 else np.dtype(np.uint32)


def encode_documents(
    tokenizer, docs: list[dict], out: str | Path, tokenizer_dir: str | Path, batch_docs: int = 4096
) -> dict:
    """Encode documents in batches with the Rust tokenizer and write `out` + `out.json`.

    The tokenizer library encodes a batch on every core; the rest is vectorised so that it
    does not slow the library down: measured with benchmarks/bench_pipeline.py, this runs at
    the library's own batch-encoding throughput, where a per-document copy loop ran at 0.8x."""
    backend = tokenizer.backend_tokenizer
    encode = getattr(backend, "encode_batch_fast", backend.encode_batch)
    eos = tokenizer.eos_token_id
    vocab = len(tokenizer)
    dtype = dtype_for(vocab)
    n_tokens = 0
    sources: dict[str, dict] = {}
    runs: list[list] = []  # [source, start, end) of each stretch of consecutive documents
    with atomic_path(out) as tmp, open(tmp, "wb") as f:
        for start in range(0, len(docs), batch_docs):
            chunk = docs[start : start + batch_docs]
            texts = [d["text"] for d in chunk]
            # encode_batch_fast skips character offsets, which shards do not need
            ids = [e.ids for e in encode(texts, add_special_tokens=False)]
            flat, lengths = _join_with_eos(ids, eos, dtype)
            f.write(flat.tobytes())
            for d, n in zip(chunk, lengths.tolist(), strict=True):
                s = sources.setdefault(d["source"], {"documents": 0, "words": 0, "tokens": 0})
                s["documents"] += 1
                s["words"] += word_count(d["text"])
                s["tokens"] += n + 1
                if runs and runs[-1][0] == d["source"]:
                    runs[-1][2] += n + 1
                else:
                    runs.append([d["source"], n_tokens, n_tokens + n + 1])
                n_tokens += n + 1
    if len(runs) <= MAX_SOURCE_RANGES:
        for name, start, end in runs:
            sources[name].setdefault("ranges", []).append([start, end])
    meta = {
        "tokens": n_tokens,
        "words": sum(s["words"] for s in sources.values()),
        "documents": len(docs),
        "dtype": dtype.name,
        "vocab_size": vocab,
        "eos_token_id": eos,
        "tokenizer_hash": dir_hash(tokenizer_dir),
        "sources": sources,
    }
    write_json(sidecar(out), meta)
    return meta


def _join_with_eos(ids: list[list[int]], eos: int, dtype) -> tuple[np.ndarray, np.ndarray]:
    """The documents' ids end to end, each followed by eos, and their lengths (without eos)."""
    lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
    total = int(lengths.sum())
    flat = np.empty(total + len(ids), dtype=dtype)
    ends = np.cumsum(lengths + 1) - 1
    body = np.ones(flat.size, dtype=bool)
    body[ends] = False
    flat[body] = np.fromiter(chain.from_iterable(ids), dtype=dtype, count=total)
    flat[ends] = eos
    return flat, lengths


def sidecar(path: str | Path) -> Path:
    return Path(str(path) + ".json")


def source_ranges(meta: dict) -> dict[str, list[tuple[int, int]]] | None:
    """Each source's token ranges [start, end) in the shard, from its sidecar; None when the
    sidecar lists none (written before sources had ranges, or more than MAX_SOURCE_RANGES)."""
    sources = meta.get("sources") or {}
    if not sources or any("ranges" not in s for s in sources.values()):
        return None
    return {name: [tuple(r) for r in s["ranges"]] for name, s in sources.items()}


def load_shard(path: str | Path) -> tuple[np.memmap, dict]:
    meta = read_json(sidecar(path))
    data = np.memmap(path, dtype=np.dtype(meta["dtype"]), mode="r")
    if data.size != meta["tokens"]:
        raise ValueError(f"{path}: {data.size} tokens on disk but the sidecar says {meta['tokens']}")
    return data, meta
