"""Token shards: a flat numpy memmap of token ids (documents separated by EOS)
with a JSON sidecar (tokens, words, documents, dtype, tokenizer hash, and per source its
documents, words, tokens and the token ranges its documents occupy)."""

from __future__ import annotations

import os
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


# Documents per process below which encoding stays in one process (starting a process and
# sending it its documents costs more than it saves on a small split).
MIN_DOCS_PER_PROCESS = 10_000


def encode_documents(
    tokenizer,
    docs: list[dict],
    out: str | Path,
    tokenizer_dir: str | Path,
    batch_docs: int = 4096,
    processes: int | None = None,
) -> dict:
    """Encode documents in batches with the Rust tokenizer and write `out` + `out.json`.

    The tokenizer library encodes a batch on every core, but turning its encodings into ids,
    the shard and the counts is Python on one core: measured with benchmarks/bench_pipeline.py
    (this machine, 2 cores), that part alone runs at 0.75-0.85x the library's throughput. With
    `processes` (default: the usable cores, for splits of at least MIN_DOCS_PER_PROCESS
    documents per process) contiguous slices are encoded in processes of one tokenizer thread
    each, so that part runs on every core too; the shard and sidecar are byte for byte those
    of one process."""
    backend = tokenizer.backend_tokenizer
    eos, vocab = tokenizer.eos_token_id, len(tokenizer)
    dtype = dtype_for(vocab)
    processes = encode_processes(len(docs), processes)
    with atomic_path(out) as tmp:
        if processes == 1:
            with open(tmp, "wb") as f:
                n_tokens, sources, runs = _encode_into(f, backend, eos, dtype, docs, batch_docs)
        else:
            n_tokens, sources, runs = _encode_in_processes(
                tmp, backend, eos, dtype, docs, batch_docs, processes
            )
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


def encode_processes(n_docs: int, asked: int | None) -> int:
    """`asked` (at most one per document), else the usable cores, one per MIN_DOCS_PER_PROCESS;
    one where processes cannot be forked."""
    import multiprocessing

    if "fork" not in multiprocessing.get_all_start_methods():
        return 1
    if asked is not None:
        return max(1, min(asked, n_docs))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(cores, n_docs // MIN_DOCS_PER_PROCESS))


def _encode_into(f, backend, eos: int, dtype, docs: list[dict], batch_docs: int) -> tuple[int, dict, list]:
    """Write the documents' ids (each followed by eos) to the open file `f`; (tokens written,
    per-source counts, the [source, start, end) stretches of consecutive documents)."""
    encode = getattr(backend, "encode_batch_fast", backend.encode_batch)
    n_tokens, sources, runs = 0, {}, []
    for start in range(0, len(docs), batch_docs):
        chunk = docs[start : start + batch_docs]
        # encode_batch_fast skips character offsets, which shards do not need
        ids = [e.ids for e in encode([d["text"] for d in chunk], add_special_tokens=False)]
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
    return n_tokens, sources, runs


_FORKED_JOBS: list[tuple] = []  # the slices a forked worker encodes, inherited rather than pickled


def _encode_part(index: int) -> tuple[int, dict, list]:
    """A worker process: one contiguous slice of the documents into its own part file."""
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one thread per process: the processes share the cores
    path, backend, eos, dtype, docs, batch_docs = _FORKED_JOBS[index]
    with open(path, "wb") as f:
        return _encode_into(f, backend, eos, dtype, docs, batch_docs)


def _encode_in_processes(tmp: Path, backend, eos: int, dtype, docs, batch_docs: int, processes: int):
    """`_encode_into` over `processes` contiguous slices in forked processes, their parts
    joined in order into `tmp`. Forked, not spawned: a spawned worker would re-run the
    caller's main module and be sent its slice pickled; the tokenizer library turns its own
    thread pool off in a child forked after it ran, which is what each worker wants."""
    import gc
    import multiprocessing
    import shutil

    bounds = [len(docs) * i // processes for i in range(processes + 1)]
    parts = [Path(f"{tmp}.part{i}") for i in range(processes)]
    _FORKED_JOBS[:] = [
        (parts[i], backend, eos, dtype, docs[bounds[i] : bounds[i + 1]], batch_docs) for i in range(processes)
    ]
    gc.freeze()  # the children's collector leaves the caller's heap alone: no copy-on-write of it
    try:
        with multiprocessing.get_context("fork").Pool(processes) as pool:
            results = pool.map(_encode_part, range(processes), chunksize=1)
        n_tokens, sources, runs = 0, {}, []
        with open(tmp, "wb") as f:
            for part, (n, part_sources, part_runs) in zip(parts, results, strict=True):
                with open(part, "rb") as src:
                    shutil.copyfileobj(src, f, 1 << 24)
                for name, counts in part_sources.items():
                    total = sources.setdefault(name, {"documents": 0, "words": 0, "tokens": 0})
                    for key, value in counts.items():
                        total[key] += value
                for name, start, end in part_runs:
                    if runs and runs[-1][0] == name and runs[-1][2] == n_tokens + start:
                        runs[-1][2] = n_tokens + end  # a stretch that goes on across the slices
                    else:
                        runs.append([name, n_tokens + start, n_tokens + end])
                n_tokens += n
    finally:
        gc.unfreeze()
        _FORKED_JOBS.clear()
        for part in parts:
            part.unlink(missing_ok=True)
    return n_tokens, sources, runs


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
