"""Pipeline throughput, measured side by side in one run.

1. encoding throughput (tokens/s) of the batch encoder on a ~10M-token corpus;
2. bigram counting throughput (tokens/s) on the same shard;
3. training step time of bigram-guided vs cross-entropy on the same student and
   batch, interleaved step by step so that both see the same machine load;
   the ratio of medians is the number to read (aim: <= 1.05).

Usage: python benchmarks/bench_pipeline.py [--tokens 10000000] [--steps 30]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from sdce import config as cfg
from sdce import objectives
from sdce.data.batches import global_offsets, windows
from sdce.data.shards import encode_documents, load_shard
from sdce.data.synthetic import generate_documents
from sdce.data.tokenizer import train_bpe
from sdce.model import build_model
from sdce.teachers import bigram


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=10_000_000)
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
    docs = [{"text": t, "source": "synthetic"} for t in generate_documents(max(1, args.tokens // 75), seed=0)]
    print(f"generated {len(docs)} documents in {time.perf_counter() - t0:.1f}s")
    tok = train_bpe((d["text"] for d in docs[:20000]), 2000, 2)
    tok.save_pretrained(str(tmp / "tok"))

    t0 = time.perf_counter()
    meta = encode_documents(tok, docs, tmp / "train.bin", tmp / "tok")
    dt = time.perf_counter() - t0
    print(f"encode: {meta['tokens']:,} tokens in {dt:.2f}s = {meta['tokens'] / dt:,.0f} tokens/s")

    data, _ = load_shard(tmp / "train.bin")
    t0 = time.perf_counter()
    counts = bigram.count_bigrams(data, len(tok))
    dt_count = time.perf_counter() - t0
    t0 = time.perf_counter()
    table = bigram.topk_table(counts, 128, 0.0)
    dt_table = time.perf_counter() - t0
    print(
        f"bigram count: {len(data):,} tokens in {dt_count:.2f}s = {len(data) / dt_count:,.0f} tokens/s "
        f"({counts.nnz:,} distinct bigrams); top-128 table in {dt_table:.2f}s"
    )

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


if __name__ == "__main__":
    main()
