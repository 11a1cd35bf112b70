"""Minimal pairs scored per second on CPU: batched vs one sentence at a time, side by side.

A small GPT-2 student (4 layers, 256 wide, 4 heads, vocabulary 4000; random weights, speed only)
with a byte-level BPE trained here on the pairs themselves, scoring BLiMP pairs (the shared copy
if present, else synthetic sentences) through :func:`sdce.evaluation.minimal_pairs.score_minimal_pairs`.
The two settings alternate over ``--repeats`` rounds and the best round of each is reported, so
background load affects both alike.

    python benchmarks/bench_minimal_pairs.py [--pairs 512] [--batch-size 32] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import time
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from sdce.evaluation.minimal_pairs import load_minimal_pairs, score_minimal_pairs

EOT = "<|endoftext|>"


def default_blimp() -> Path:
    if os.environ.get("SDCE_SHARED"):
        return Path(os.environ["SDCE_SHARED"]) / "data" / "blimp"
    return Path(__file__).resolve().parents[1].parent / "shared" / "data" / "blimp"


def synthetic_pairs(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    nouns = ["cat", "dog", "teacher", "child", "doctor", "bird", "senator", "waitress", "cashier"]
    verbs = ["sees", "likes", "helps", "visits", "praises", "annoys"]
    adjs = ["old", "small", "happy", "tall", "quiet"]
    pairs = []
    for i in range(n):
        a, b = rng.sample(nouns, 2)
        v, adj = rng.choice(verbs), rng.choice(adjs)
        good = f"The {adj} {a} {v} the {b} every day."
        bad = f"The {adj} {a} {v[:-1]} the {b} every day."
        pairs.append({"sentence_good": good, "sentence_bad": bad, "UID": f"synthetic_{i % 8}"})
    return pairs


def round_robin(pairs: list[dict], n: int) -> list[dict]:
    groups: dict[str, list[dict]] = {}
    for p in pairs:
        groups.setdefault(p["UID"], []).append(p)
    taken, depth = [], 0
    while len(taken) < n and any(depth < len(g) for g in groups.values()):
        taken.extend(g[depth] for g in groups.values() if depth < len(g))
        depth += 1
    return taken[:n]


def build_tokenizer(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOT, eos_token=EOT, unk_token=EOT)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--blimp", type=Path, default=default_blimp())
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.blimp.is_dir():
        all_pairs = load_minimal_pairs(args.blimp)
        source = f"BLiMP ({args.blimp})"
    else:
        all_pairs = synthetic_pairs(args.pairs)
        source = "synthetic pairs (BLiMP not found)"
    pairs = round_robin(all_pairs, args.pairs)
    corpus = [p[k] for p in all_pairs[:20000] for k in ("sentence_good", "sentence_bad")]
    tokenizer = build_tokenizer(corpus, vocab_size=4000)
    config = GPT2Config(
        n_layer=4,
        n_embd=256,
        n_head=4,
        n_positions=256,
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    model = GPT2LMHeadModel(config).eval()
    n_params = sum(p.numel() for p in model.parameters())
    n_tokens = [len(tokenizer(p[k])["input_ids"]) for p in pairs for k in ("sentence_good", "sentence_bad")]

    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, threads={args.threads}")
    print(f"model: GPT-2 4x256, vocab {len(tokenizer)}, {n_params / 1e6:.2f}M parameters")
    print(
        f"data: {len(pairs)} pairs from {source}; "
        f"{sum(n_tokens) / len(n_tokens):.1f} tokens per sentence (+1 conditioning token)"
    )

    score_minimal_pairs(model, tokenizer, pairs[:64], batch_size=args.batch_size)  # warm-up
    best = {args.batch_size: float("inf"), 1: float("inf")}
    scored = {}
    for _ in range(args.repeats):
        for bs in (args.batch_size, 1):
            start = time.perf_counter()
            scored[bs] = score_minimal_pairs(model, tokenizer, pairs, batch_size=bs)
            best[bs] = min(best[bs], time.perf_counter() - start)

    diff = max(
        abs(a[k] - b[k])
        for a, b in zip(scored[args.batch_size], scored[1], strict=True)
        for k in ("logp_good", "logp_bad")
    )
    same = sum(a["credit"] == b["credit"] for a, b in zip(scored[args.batch_size], scored[1], strict=True))
    rate_batched = len(pairs) / best[args.batch_size]
    rate_single = len(pairs) / best[1]
    t_batched = best[args.batch_size]
    print(f"batched (batch_size={args.batch_size}): {rate_batched:8.1f} pairs/s  ({t_batched:.2f} s)")
    print(f"one by one (batch_size=1):   {rate_single:8.1f} pairs/s  ({best[1]:.2f} s)")
    print(f"speed-up: {rate_batched / rate_single:.1f}x (best of {args.repeats} alternating rounds)")
    print(f"agreement: max |logp difference| {diff:.2e}, same decision on {same}/{len(pairs)} pairs")


if __name__ == "__main__":
    main()
