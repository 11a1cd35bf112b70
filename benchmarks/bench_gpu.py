"""Accelerator throughput of the CE step and every guided step at real scale.

GPT-2 small (124M parameters, V = 50,257), sequence 1024, bf16 autocast, SDPA attention
(flash attention where the device and torch pick it), `torch.compile` off and on. One
training step (forward, teacher signal, loss, backward, AdamW) per objective, the objectives
interleaved step by step so that all see the same device state. Printed per arm: tokens/s,
MFU (model FLOPs per second as `sdce.flops` counts them, PaLM's 6N + attention, over the
device's peak dense bf16 FLOP/s, the device detected and named) and the ratio of tokens/s to
the CE step's.

    bigram                 a bigram table of the student vocabulary, top-128, on the device
    label_smoothing        the uniform teacher
    surrogate (cached)     top-6 ids/probabilities per position, as the cache yields them
    kl top-32 (cached)     top-32 per position at T = 2
    kl dense (online)      a teacher of the student's size run on every micro-batch, full KL

The cached arms read a real memory-mapped cache through `CachedTeacher`, by the windows'
shard offsets, inside the timed step as the training loop does (the rows' gather on the host
and the copy to the device included); the cache holds random top-k entries in the layout
`sdce cache-teacher` writes (what they contain does not change the time). As in the loop, the
loss is taken under autocast from the model's own logits, in chunks of 512 tokens
(`training.loss_chunk_tokens`' default).

Aim on an H100-class GPU: CE >= 40 % MFU, every cached guided step >= 0.9x the CE tokens/s.

    python benchmarks/bench_gpu.py                # on a GPU
    python benchmarks/bench_gpu.py --smoke        # a tiny version on CPU (run by the tests)
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from sdce import config as cfg
from sdce import flops, objectives
from sdce.data.shards import dtype_for
from sdce.model import build_config
from sdce.teachers.bigram import BigramTeacher
from sdce.teachers.cache import CachedTeacher, _Writer
from sdce.teachers.signal import GuidanceSignal
from sdce.teachers.uniform import UniformTeacher

# peak dense bf16 tensor FLOP/s by device name fragment (vendor data sheets, no sparsity)
PEAK_BF16 = {
    "H200": 989e12,
    "H100 SXM": 989e12,
    "H100 NVL": 835e12,
    "H100 PCIe": 756e12,
    "H100": 989e12,
    "GH200": 989e12,
    "B200": 2250e12,
    "A100": 312e12,
    "L40S": 362e12,
    "L4": 121e12,
    "A10G": 70e12,
    "A10": 125e12,
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,
    "TPU v5e": 197e12,
    "TPU v5p": 459e12,
    "TPU v6": 918e12,
}


def device_and_peak(smoke: bool) -> tuple[torch.device, str, float | None]:
    if torch.cuda.is_available() and not smoke:
        name = torch.cuda.get_device_name()
        peak = next((v for k, v in PEAK_BF16.items() if k in name), None)
        return torch.device("cuda"), name, peak
    return torch.device("cpu"), "CPU", None  # no peak: MFU is not reported


class OnlineTeacher:
    """A teacher LM with the student's tokenizer, run on the micro-batch: the dense signal."""

    def __init__(self, model, temperature: float):
        self.model, self.temperature = model, temperature

    @torch.no_grad()
    def signal(self, x, offsets=None):
        logits = self.model(input_ids=x).logits.float() / self.temperature
        lp = torch.log_softmax(logits, dim=-1)
        empty = torch.zeros(*x.shape, 0, device=x.device)
        return GuidanceSignal(empty.long(), empty, torch.zeros(x.shape, device=x.device), log_probs=lp)


def cached_teacher(folder: Path, rows: int, vocab: int, k: int, seed: int, device) -> CachedTeacher:
    """A teacher cache of `rows` positions written by `sdce cache-teacher`'s own writer (ids in
    the shard's id dtype, float16 probabilities summing to 0.9, tail mass 0.1, every position
    valid, full support), random entries, opened memory-mapped as a run opens it."""
    gen = torch.Generator().manual_seed(seed)
    writer = _Writer(folder, rows, k, dtype_for(vocab))
    for start in range(0, rows, 1 << 20):
        n = min(rows - start, 1 << 20)
        probs = torch.rand(n, k, generator=gen)
        ids = torch.randint(0, vocab, (n, k), generator=gen)
        valid = torch.ones(n, dtype=torch.bool)
        writer.write(
            start,
            GuidanceSignal(ids, 0.9 * probs / probs.sum(1, keepdim=True), torch.full((n,), 0.1), valid=valid),
        )
    writer.close(np.ones(vocab, dtype=np.bool_))
    arrays = {
        name: np.load(folder / f"{name}.npy", mmap_mode="r") for name in ("ids", "probs", "rest", "valid")
    }
    arrays["support"] = np.load(folder / "support.npy")
    return CachedTeacher(arrays, {"top_k": k}, device)


def bigram_table(vocab: int, k: int, generator: torch.Generator, device) -> BigramTeacher:
    ids = torch.stack([torch.randperm(vocab, generator=generator)[:k] for _ in range(min(vocab, 64))])
    ids = ids.repeat(vocab // ids.shape[0] + 1, 1)[:vocab].int()
    probs = torch.rand(vocab, k, generator=generator)
    probs = 0.95 * probs / probs.sum(-1, keepdim=True)
    return BigramTeacher(ids, probs, torch.full((vocab,), 0.05)).to(device)


def build_student(shape: dict, seed: int, device):
    """GPT-2 as sdce builds a student (`sdce.model.build_config`), dropout off, SDPA."""
    from transformers import AutoModelForCausalLM

    spec = cfg.validate({k: shape[k] for k in ("n_layer", "n_embd", "n_head")}, "model")
    eos = shape["vocab"] - 1
    config = build_config(spec, shape["vocab"], shape["block"], eos, eos)
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").to(device)


def measure(args, compiled: bool, device, peak) -> dict[str, dict]:
    with tempfile.TemporaryDirectory(prefix="bench_gpu_") as tmp:
        return _measure(args, compiled, device, peak, Path(tmp))


def _measure(args, compiled: bool, device, peak, tmp: Path) -> dict[str, dict]:
    shape = SMOKE if args.smoke else FULL
    rows = shape["cache_rows"]
    student = build_student(shape, 0, device)
    teacher_lm = build_student(shape, 1, device).eval()
    opt = torch.optim.AdamW(student.parameters(), lr=1e-4, fused=device.type == "cuda")
    forward = torch.compile(student) if compiled else student
    gen = torch.Generator().manual_seed(0)
    v = shape["vocab"]
    arms = {
        "ce": ("ce", None, {}),
        "bigram": ("bigram", bigram_table(v, min(128, v), gen, device), {}),
        "label_smoothing": ("label_smoothing", UniformTeacher(), {}),
        "surrogate (cached)": (
            "surrogate",
            cached_teacher(tmp / "top6", rows, v, 6, 1, device),
            {"weighting": "probability"},
        ),
        "kl top-32 (cached)": (
            "kl",
            cached_teacher(tmp / "top32", rows, v, 32, 2, device),
            {"alpha": 0.5, "temperature": 2.0},
        ),
        "kl dense (online)": ("kl", OnlineTeacher(teacher_lm, 2.0), {"alpha": 0.5, "temperature": 2.0}),
    }
    dtype = torch.bfloat16

    def step(objective, teacher, opts, x, y, offsets) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        with torch.autocast(device.type, dtype=dtype):  # as the loop: loss from the model's logits
            logits = forward(input_ids=x).logits
            signal = teacher.signal(x, offsets=offsets) if teacher is not None else None
            out = objectives.compute_named(objective, logits, y, signal, 0.5, chunk_tokens=512, **opts)
        out["loss"].backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t

    b, t = shape["batch"], shape["block"]
    times: dict[str, list[float]] = {name: [] for name in arms}
    for s in range(args.warmup + args.steps):
        x = torch.randint(0, v, (b, t + 1), generator=gen).to(device)
        x, y = x[:, :-1], x[:, 1:]
        offsets = np.random.default_rng([0, s]).integers(0, rows - t, size=b)  # the windows' rows
        order = list(arms)
        order = order[s % len(order) :] + order[: s % len(order)]  # no arm always runs first
        for name in order:
            dt = step(*arms[name], x, y, offsets)
            if s >= args.warmup:
                times[name].append(dt)
    per_token = flops.of_config(student.config).train_per_token(t)
    results = {}
    for name, ts in times.items():
        tps = b * t / statistics.median(ts)
        extra = 0.0
        if name == "kl dense (online)":  # the teacher's forward is model FLOPs too
            extra = flops.of_config(teacher_lm.config).forward_per_token(t)
        mfu = tps * (per_token + extra) / peak if peak else None
        results[name] = {"tokens_per_s": tps, "mfu": mfu}
    return results


# cache_rows: the cached signals' positions (2M: 384 MiB at top-32, held in the page cache)
FULL = {
    "vocab": 50257,
    "block": 1024,
    "n_embd": 768,
    "n_layer": 12,
    "n_head": 12,
    "batch": 8,
    "cache_rows": 1 << 21,
}
SMOKE = {"vocab": 512, "block": 32, "n_embd": 32, "n_layer": 1, "n_head": 2, "batch": 2, "cache_rows": 4096}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--smoke", action="store_true", help="a tiny version on CPU")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--compile", choices=["off", "on", "both"], default="both")
    args = ap.parse_args(argv)
    device, name, peak = device_and_peak(args.smoke)
    shape = SMOKE if args.smoke else FULL
    print(
        f"device: {name} (peak bf16 {peak / 1e12:.0f} TFLOP/s)"
        if peak
        else f"device: {name} (no peak known)",
        f"| torch {torch.__version__} | student {shape} | bf16 autocast, SDPA",
    )
    modes = {"off": [False], "on": [True], "both": [False, True]}[args.compile]
    worst = None
    for compiled in modes:
        results = measure(args, compiled, device, peak)
        ce = results["ce"]["tokens_per_s"]
        print(f"torch.compile {'on' if compiled else 'off'}:")
        print(f"  {'step':<20} {'tokens/s':>12} {'MFU':>7} {'vs ce':>7}")
        for arm, r in results.items():
            mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a"
            ratio = r["tokens_per_s"] / ce
            print(f"  {arm:<20} {r['tokens_per_s']:>12,.0f} {mfu:>7} {ratio:>7.3f}")
            if "cached" in arm or arm in ("bigram", "label_smoothing"):
                worst = ratio if worst is None else min(worst, ratio)
    print(f"min cached guided tokens/s vs ce: {worst:.3f}")


if __name__ == "__main__":
    main()
