"""Step time of each objective against cross-entropy, and the teacher cache's cost.

On one student and one batch stream (the default study's sizes: 2 layers, 128 wide,
16 x 64 tokens, a 2000-type BPE), one training step (forward, teacher signal, loss,
backward, AdamW) is timed per objective, the objectives interleaved step by step so
that all see the same machine load; the median over steps of each step's time over
the same step's cross-entropy time is the number to read:

    surrogate, kl (cache)   top-k read from the memory-mapped cache      aim <= 1.10
    label_smoothing         a uniform teacher                            aim <= 1.05
    surrogate (online)      a surrogate of the same size with its own 1500-type tokenizer,
                            realigned and run on every micro-batch
    kl (online, dense)      a teacher with the student's tokenizer, full-vocabulary KL

For the online teachers the expected ratio from parameter counts is printed beside
the measured one: a training step costs about 6 N_s FLOPs per student token, a teacher
forward 2 N_t per teacher token, so 1 + 2 N_t m / (6 N_s) with m teacher tokens per
student token (attention and the Python realignment not counted).

The cache is built for both signals over a training shard: tokens/s and bytes/token.
The teachers are random-initialised with a sharpened output layer (the timing does not
depend on what they learnt, only on how many entries survive the threshold).

Usage: python benchmarks/bench_objectives.py [--documents 6000] [--steps 40]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from common import machine_line

from sdce import config as cfg
from sdce import objectives
from sdce.data.batches import global_offsets, windows
from sdce.data.shards import encode_documents, load_shard
from sdce.data.synthetic import generate_documents
from sdce.data.tokenizer import train_bpe
from sdce.model import build_model, count_parameters
from sdce.teachers.cache import CachedTeacher, build_caches
from sdce.teachers.lm import LMTeacher, describe_teacher
from sdce.teachers.uniform import UniformTeacher

BLOCK, BATCH = 64, 16


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--documents", type=int, default=6000)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(machine_line())
    tmp = Path(tempfile.mkdtemp())
    docs = [{"text": t, "source": "synthetic"} for t in generate_documents(args.documents, seed=0)]
    student_tok = train_bpe((d["text"] for d in docs), 2000, 2)
    student_tok.save_pretrained(str(tmp / "student"))
    teacher_tok = train_bpe((d["text"] for d in docs), 1500, 2)
    encode_documents(student_tok, docs, tmp / "train.bin", tmp / "student")
    data, meta = load_shard(tmp / "train.bin")
    print(f"shard: {meta['tokens']:,} student tokens")

    model_spec = cfg.validate({"n_layer": 2, "n_embd": 128, "n_head": 4}, "model")
    student = build_model(model_spec, student_tok, BLOCK, seed=0)
    opt = torch.optim.AdamW(student.parameters(), lr=1e-4)

    # the surrogate: same size, its own tokenizer; a second teacher with the student's tokenizer
    teachers = {}
    for name, tok, positions in (("surrogate", teacher_tok, 128), ("same", student_tok, BLOCK)):
        lm = build_model(model_spec, tok, positions, seed=1)
        with (
            torch.no_grad()
        ):  # a peaked distribution, as a trained teacher's: top-k entries pass the threshold
            lm.lm_head.weight.mul_(8.0)
        lm.save_pretrained(tmp / name)
        tok.save_pretrained(str(tmp / name))
        describe_teacher(
            cfg.validate({}, "teacher"), name, str(tmp / name), tmp / "student", tmp / f"{name}.json"
        )
        teachers[name] = lm
    n_s, n_t = count_parameters(student), count_parameters(teachers["surrogate"])

    signals = {
        "surrogate": {"top_k": 6, "probability_threshold": 0.02, "temperature": 1.0},
        "kl": {"top_k": 32, "probability_threshold": 0.0, "temperature": 2.0},
    }
    teacher = LMTeacher.from_descriptor(tmp / "surrogate.json", student_tok, signals["surrogate"])
    spec = cfg.validate(
        {"signals": list(signals.values()), "context": BLOCK, "batch_size": 64}, "teacher_cache"
    )
    infos = build_caches(teacher, tmp / "train.bin", spec, tmp / "cache")
    cached = {}
    for name, sig in signals.items():
        cached[name] = CachedTeacher.load(tmp / "cache", sig, train_shard=tmp / "train.bin")
        info = cached[name].info
        mib = info["bytes_per_token"] * meta["tokens"] / 2**20
        print(
            f"cache {name} (top-{sig['top_k']}): {info['bytes_per_token']:.0f} bytes/token ({mib:.1f} MiB), "
            f"aligned {info['aligned_fraction']:.1%}, listed mass {info['mean_listed_mass']:.3f}, "
            f"mapped mass {info['mean_mapped_mass']:.3f}"
        )
    info = next(iter(infos.values()))
    print(f"cache build: {info['tokens_per_s']:,.0f} tokens/s, both signals from one teacher pass")
    online_surrogate = LMTeacher.from_descriptor(tmp / "surrogate.json", student_tok, signals["surrogate"])
    online_dense = LMTeacher.from_descriptor(
        tmp / "same.json", student_tok, {"top_k": None, "probability_threshold": 0.0, "temperature": 2.0}
    )
    kl_opts = {"alpha": 0.5, "temperature": 2.0}
    arms = {
        "ce": ("ce", None, {}),
        "surrogate (cache)": ("surrogate", cached["surrogate"], {"weighting": "probability"}),
        "kl top-32 (cache)": ("kl", cached["kl"], kl_opts),
        "label_smoothing": ("label_smoothing", UniformTeacher(), {}),
        "surrogate (online)": ("surrogate", online_surrogate, {"weighting": "probability"}),
        "kl dense (online)": ("kl", online_dense, kl_opts),
    }

    def step(objective, teacher, opts, x, y, offsets) -> float:
        t = time.perf_counter()
        logits = student(input_ids=x).logits
        signal = teacher.signal(x, offsets=offsets) if teacher is not None else None
        out = objectives.compute_named(objective, logits, y, signal, 0.5, **opts)
        out["loss"].backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return time.perf_counter() - t

    times: dict[str, list[float]] = {name: [] for name in arms}
    for s in range(args.steps + 2):
        offsets = global_offsets(len(data), BLOCK, BATCH, 0, s)
        x, y = windows(data, offsets, BLOCK)
        order = list(arms)
        order = order[s % len(order) :] + order[: s % len(order)]  # no arm always runs first
        for name in order:
            objective, teacher, opts = arms[name]
            dt = step(objective, teacher, opts, x, y, offsets)
            if s >= 2:  # warm-up steps are not counted
                times[name].append(dt)
    m = online_surrogate.realigner.realign_batch(x).teacher_attention_mask.sum().item() / x.numel()
    expected = {
        "surrogate (online)": 1 + 2 * n_t * m / (6 * n_s),
        "kl dense (online)": 1 + 2 * count_parameters(teachers["same"]) / (6 * n_s),
    }
    print(f"student {n_s:,} parameters, surrogate teacher {n_t:,}; {m:.2f} teacher tokens per student token")
    print(f"{'objective':<20} {'median ms':>10} {'ratio':>7} {'expected':>9}")
    for name, ts in times.items():
        # paired: each step's time over the same step's cross-entropy time, then the median
        ratio = statistics.median(t / c for t, c in zip(ts, times["ce"], strict=True))
        exp = f"{expected[name]:.2f}" if name in expected else ""
        print(f"{name:<20} {1000 * statistics.median(ts):>10.1f} {ratio:>7.2f} {exp:>9}")
    print(f"({args.steps} interleaved steps, batch {BATCH} x {BLOCK}; ratio = median of step time / ce time)")
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
