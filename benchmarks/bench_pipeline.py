"""Pipeline throughput at BabyLM 100M scale, measured side by side in one run.

1. a 100M-word synthetic corpus generated and split (seeded 95/5), and the peak memory of
   the whole run (this machine has 24 GiB);
2. encoding throughput of the training split (sdce's shard writer, in one process and in one
   process per core) next to the tokenizer library's own batch encoding of the same documents
   (`encode_batch_fast`, which encodes a batch on every core): the ratio says whether the
   writer is limited by the library;
3. bigram counting throughput on the whole training shard (aim: >= 20M tokens/s), at the
   run's vocabulary and at GPT-2's (V = 50,257, the 32-bit sort path);
4. training step time of bigram-guided vs cross-entropy on the same student and batch,
   interleaved step by step so that both see the same machine load (aim: <= 1.05).

Usage: python benchmarks/bench_pipeline.py [--words 100000000] [--steps 30]
"""

from __future__ import annotations

import argparse
import platform
import resource
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from sdce import config as cfg
from sdce import objectives
from sdce.data.batches import global_offsets, windows
from sdce.data.shards import encode_documents, encode_processes, load_shard
from sdce.data.split import split_documents
from sdce.data.synthetic import generate_documents
from sdce.data.tokenizer import train_bpe
from sdce.model import build_model
from sdce.teachers import bigram

WORDS_PER_DOCUMENT = 70  # the synthetic generator's mean, measured: 2,816,634 words / 40,000 documents


def _rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # ru_maxrss is in KiB on Linux


def _library_encode(tok, docs: list[dict], batch_docs: int = 4096) -> int:
    backend, n = tok.backend_tokenizer, 0
    for start in range(0, len(docs), batch_docs):
        texts = [d["text"] for d in docs[start : start + batch_docs]]
        n += sum(len(e.ids) + 1 for e in backend.encode_batch_fast(texts, add_special_tokens=False))
    return n


def _count(tokens: np.ndarray, vocab: int, label: str):
    t0 = time.perf_counter()
    counts = bigram.count_bigrams(tokens, vocab)
    dt = time.perf_counter() - t0
    print(
        f"bigram count ({label}, V={vocab:,}): {len(tokens):,} tokens in {dt:.2f}s = "
        f"{len(tokens) / dt / 1e6:,.1f}M tokens/s ({counts.nnz:,} distinct bigrams)"
    )
    return counts


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--words", type=int, default=100_000_000)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch thread(s), "
        f"torch {torch.__version__}"
    )

    tmp = Path(tempfile.mkdtemp())
    t0 = time.perf_counter()
    n_docs = max(20, args.words // WORDS_PER_DOCUMENT)
    docs = [{"text": t, "source": "synthetic"} for t in generate_documents(n_docs, seed=0)]
    words = sum(len(d["text"].split()) for d in docs)
    print(f"generated {len(docs):,} documents, {words:,} words in {time.perf_counter() - t0:.1f}s")
    t0 = time.perf_counter()
    split = {"validation_fraction": 0.05, "shuffle": True, "seed": 42}
    train, val = split_documents(docs, {**split, "train_subset": None, "validation_subset": None})
    del docs
    print(f"split 95/5: {len(train):,} / {len(val):,} documents in {time.perf_counter() - t0:.1f}s")
    tok = train_bpe((d["text"] for d in train[:20000]), 2000, 2)
    tok.save_pretrained(str(tmp / "tok"))

    sample = train[: max(10, len(train) // 20)]  # side by side on the same documents, both warm
    _library_encode(tok, sample[:4096])
    t0 = time.perf_counter()
    n_lib = _library_encode(tok, sample)
    lib = time.perf_counter() - t0
    t0 = time.perf_counter()
    encode_documents(tok, sample, tmp / "sample.bin", tmp / "tok", processes=1)
    ours = time.perf_counter() - t0
    print(
        f"encode ({len(sample):,} documents): library {n_lib / lib / 1e6:.2f}M tokens/s, shard writer "
        f"in one process {n_lib / ours / 1e6:.2f}M tokens/s, writer/library = {lib / ours:.2f}"
    )
    # the whole training split, in one process and by default (one process per core), one after the other
    n_proc, seconds = encode_processes(len(train), None), {}
    for processes in (1, None):
        t0 = time.perf_counter()
        meta = encode_documents(tok, train, tmp / "train.bin", tmp / "tok", processes=processes)
        seconds[processes] = time.perf_counter() - t0
    rates = {k: meta["tokens"] / v / 1e6 for k, v in seconds.items()}
    print(
        f"encode train split: {meta['tokens']:,} tokens; one process {seconds[1]:.1f}s = {rates[1]:.2f}M "
        f"tokens/s, {n_proc} processes (the default) {seconds[None]:.1f}s = {rates[None]:.2f}M tokens/s: "
        f"{seconds[1] / seconds[None]:.2f}x"
    )
    del train, val

    data, _ = load_shard(tmp / "train.bin")
    counts = _count(data, len(tok), "the run's BPE")
    rng = np.random.default_rng(0)  # GPT-2's vocabulary: the same shard's ids spread over 50,257 types
    spread = ((data.astype(np.uint32) * 25 + rng.integers(0, 25, data.size, dtype=np.uint32)) % 50257).astype(
        np.uint16
    )
    _count(spread, 50257, "ids spread")
    del spread
    t0 = time.perf_counter()
    table = bigram.topk_table(counts, 128, 0.0)
    print(f"top-128 table in {time.perf_counter() - t0:.2f}s; peak memory so far {_rss_gib():.1f} GiB")

    teacher = bigram.BigramTeacher(*(torch.from_numpy(table[k]) for k in ("ids", "probs", "rest")))
    model_spec = cfg.validate({"n_layer": 4, "n_embd": 256, "n_head": 4}, "model")
    model = build_model(model_spec, tok, 128, seed=0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x, y = windows(data, global_offsets(len(data), 128, 16, 0, 0), 128)

    def step(objective: str) -> float:
        t = time.perf_counter()
        logits = model(input_ids=x).logits
        signal = teacher.signal(x) if objective == "bigram" else None
        out = objectives.compute_named(objective, logits, y, signal, 0.5)
        out["loss"].backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return time.perf_counter() - t

    for _ in range(3):
        step("ce"), step("bigram")
    times = {"ce": [], "bigram": []}
    for i in range(args.steps):
        order = ("ce", "bigram") if i % 2 == 0 else ("bigram", "ce")
        for name in order:
            times[name].append(step(name))
    ce, bg = statistics.median(times["ce"]), statistics.median(times["bigram"])
    print(
        f"train step (4x256 GPT-2, V={len(tok)}, batch 16x128): ce {ce * 1e3:.1f} ms, "
        f"bigram {bg * 1e3:.1f} ms, ratio bigram/ce = {bg / ce:.3f}"
    )
    print(f"peak memory: {_rss_gib():.1f} GiB")


if __name__ == "__main__":
    main()
