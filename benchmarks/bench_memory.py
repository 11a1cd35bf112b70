"""Peak memory and step time of every objective's loss at GPT-2's vocabulary (V = 50,257,
8 x 512 tokens), each as a ratio to the CE step measured in the same run.

A step is what the training loop does after the student's forward: the objective's loss
from the logits (fp32, a leaf: what the lm_head hands the loss) and its backward to the
logits, through the objective registry at the run's default loss chunk
(`training.loss_chunk_tokens`). With `--head D` the step also runs an lm_head (hidden
states (tokens x D) times a (V x D) weight) forward and backward, the part of a real step
that scales with V. Each objective's signal is built before the step, as training hands
it to the loss:

    bigram            the bigram teacher's top-128 table (counted on a Zipfian stream), looked up
    label_smoothing   the uniform teacher
    surrogate         a cached top-6 signal (some positions unaligned)
    kl top-k          a cached top-32 signal at T = 2 with a tail and a vocabulary support
    kl dense          an online teacher's dense log-probabilities at T = 2 ((tokens x V) fp32)

Peak memory is torch's CPU allocator's: torch.profiler with profile_memory=True reports
every allocation and free of the allocator with its running total of live bytes, so the
peak over a step includes the kernels' internal temporaries and the logits' gradient, and
excludes the inputs (logits, targets, signal), allocated before the step. (tracemalloc
does not see torch's allocations.) The OS-level figure beside it is each objective's step
in a fresh subprocess: peak RSS (VmHWM, reset through /proc/self/clear_refs after the
inputs are built and free heap returned with malloc_trim) minus the RSS before the step.
The unchunked column is the same step by plain autograd (`chunk_tokens=None`). Step time
is the median over interleaved repeats of each step's time over the same repeat's CE step.

Usage: python benchmarks/bench_memory.py [--repeats 5] [--head 0] [--smoke]
The last line is `max peak ratio vs ce: X` (allocator peaks, chunked).
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import numpy as np
import torch

from sdce import config as cfg
from sdce import objectives
from sdce.teachers.bigram import BigramTeacher, count_bigrams, topk_table
from sdce.teachers.signal import GuidanceSignal
from sdce.teachers.uniform import UniformTeacher

# name -> (objective, guidance weight, loss options)
ARMS = {
    "ce": ("ce", 0.0, {}),
    "bigram": ("bigram", 0.5, {"tail_policy": "uniform"}),
    "label_smoothing": ("label_smoothing", 0.1, {}),
    "surrogate (cached)": ("surrogate", 0.5, {"weighting": "probability"}),
    "kl top-k (cached)": ("kl", 1.0, {"alpha": 0.5, "temperature": 2.0}),
    "kl dense (online)": ("kl", 1.0, {"alpha": 0.5, "temperature": 2.0}),
}


def allocator_peak(fn) -> int:
    """Peak bytes live in torch's CPU allocator while fn() runs, beyond those live before:
    the profiler's allocation events carry the allocator's running total (`total_allocated`,
    counted from the first profiled allocation), so the peak is exact and includes every
    kernel's temporaries (torch.profiler internals: `experimental_event_tree`)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = []

    def walk(node):
        extra = node.extra_fields
        if type(extra).__name__ == "_ExtraFields_Allocation":
            events.append((node.start_time_ns, extra.alloc_size, extra.total_allocated))
        for child in node.children:
            walk(child)

    for root in prof.profiler.kineto_results.experimental_event_tree():
        walk(root)
    if not events:
        return 0
    events.sort()
    base = events[0][2] - events[0][1]  # what the reporter counted before this step
    return max(total for _, _, total in events) - base


def build_inputs(batch: int, block: int, vocab: int, head: int, seed: int = 0) -> dict:
    """Logits (or hidden states and an lm_head), targets with some ignored, every signal."""
    g = torch.Generator().manual_seed(seed)
    n = batch * block
    x = torch.randint(0, vocab, (batch, block), generator=g)
    y = torch.randint(0, vocab, (batch, block), generator=g)
    y[:, -block // 16 :] = objectives.losses.IGNORE  # padding at the end of each window
    rng = np.random.default_rng(seed)
    stream = np.minimum(rng.zipf(1.2, size=max(20 * vocab, 200_000)) - 1, vocab - 1)
    table = topk_table(count_bigrams(stream, vocab), top_k=128, smoothing=0.0)
    bigram = BigramTeacher(*(torch.from_numpy(table[k]) for k in ("ids", "probs", "rest")))
    support = torch.rand(vocab, generator=g) < 0.8  # a vocabulary intersection
    support[y.clamp_min(0).flatten()] = True
    teacher = 3 * torch.randn(batch, block, vocab, generator=g)
    topk = torch.topk((teacher / 2.0).masked_fill(~support, float("-inf")).softmax(-1), 32, -1)
    rest = (1 - topk.values.sum(-1)).clamp_min(0)
    valid = torch.rand(batch, block, generator=g) > 0.05
    sur = torch.topk(teacher.softmax(-1), 6, -1)
    signals = {
        "ce": None,
        "bigram": bigram.signal(x),
        "label_smoothing": UniformTeacher().signal(x),
        "surrogate (cached)": GuidanceSignal(sur.indices, sur.values, 1 - sur.values.sum(-1), valid=valid),
        "kl top-k (cached)": GuidanceSignal(topk.indices, topk.values, rest, support=support),
        "kl dense (online)": GuidanceSignal(
            torch.zeros(batch, block, 0, dtype=torch.long),
            torch.zeros(batch, block, 0),
            torch.zeros(batch, block),
            torch.log_softmax(teacher / 2.0, -1),
        ),
    }
    del teacher, topk, sur
    out = {"targets": y, "signals": signals, "n": n}
    if head:
        out["hidden"] = torch.randn(n, head, generator=g).requires_grad_(True)
        out["weight"] = (torch.randn(vocab, head, generator=g) / head**0.5).requires_grad_(True)
    else:
        out["logits"] = (2 * torch.randn(batch, block, vocab, generator=g)).requires_grad_(True)
    return out


def step(arm: str, inputs: dict, chunk_tokens) -> None:
    """One loss forward and backward (through the lm_head when there is one); grads freed."""
    objective, weight, opts = ARMS[arm]
    y = inputs["targets"]
    if "logits" in inputs:
        logits = inputs["logits"]
    else:
        logits = (inputs["hidden"] @ inputs["weight"].T).view(*y.shape, -1)
    out = objectives.compute_named(
        objective, logits, y, inputs["signals"][arm], weight, chunk_tokens=chunk_tokens, **opts
    )
    out["loss"].backward()
    for name in ("logits", "hidden", "weight"):
        if name in inputs:
            inputs[name].grad = None


def _vm(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field + ":"))


def rss_peak(args, arm: str) -> int:
    """Peak RSS of one step of `arm` over the RSS before it, in this fresh process."""
    inputs = build_inputs(args.batch, args.block, args.vocab, args.head)
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # free heap from building the inputs goes back to the OS
    before = _vm("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS
    step(arm, inputs, args.chunk_tokens)
    return _vm("VmHWM") - before


def _subprocess_rss(args, arm: str) -> int | None:
    cmd = [sys.executable, __file__, "--rss-of", arm, "--batch", str(args.batch), "--block", str(args.block),
           "--vocab", str(args.vocab), "--head", str(args.head), "--threads", str(args.threads)]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:  # no /proc/self/clear_refs (not Linux): the column is left empty
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])["rss_peak"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--block", type=int, default=512)
    ap.add_argument("--vocab", type=int, default=50257)
    ap.add_argument("--head", type=int, default=0, help="lm_head width (0: the step starts at the logits)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-rss", action="store_true", help="skip the per-objective subprocesses")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes (the tests run this)")
    ap.add_argument("--rss-of", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.smoke:
        args.batch, args.block, args.vocab, args.repeats = 2, 32, 500, 2
    args.chunk_tokens = cfg.validate({}, "training")["loss_chunk_tokens"]  # the run's default
    torch.set_num_threads(args.threads)
    if args.rss_of:
        print(json.dumps({"rss_peak": rss_peak(args, args.rss_of)}))
        return
    print(
        f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch thread(s), "
        f"torch {torch.__version__}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}"
    )
    inputs = build_inputs(args.batch, args.block, args.vocab, args.head)
    peaks, plain, rss = {}, {}, {}
    for arm in ARMS:
        step(arm, inputs, args.chunk_tokens)  # warm-up
        peaks[arm] = allocator_peak(lambda arm=arm: step(arm, inputs, args.chunk_tokens))
        plain[arm] = allocator_peak(lambda arm=arm: step(arm, inputs, None))
        gc.collect()
    times: dict[str, list[float]] = {arm: [] for arm in ARMS}
    for r in range(args.repeats):
        order = list(ARMS)[r % len(ARMS) :] + list(ARMS)[: r % len(ARMS)]  # no arm always first
        for arm in order:
            t = time.perf_counter()
            step(arm, inputs, args.chunk_tokens)
            times[arm].append(time.perf_counter() - t)
    if not args.no_rss:
        del inputs
        gc.collect()
        arms = ("ce", "kl dense (online)") if args.smoke else ARMS  # smoke: the path, not the figures
        rss = {arm: _subprocess_rss(args, arm) for arm in arms}
    mb = 2**20
    print(f"{'step':<20} {'peak MiB':>8} {'ratio':>6} {'unchunked MiB':>13} {'RSS MiB':>7} {'ratio':>6} "
          f"{'median ms':>10} {'time ratio':>10}")  # fmt: skip
    for arm in ARMS:
        ratio = statistics.median(t / c for t, c in zip(times[arm], times["ce"], strict=True))
        r_mb = (
            f"{rss[arm] / mb:>7.0f} {rss[arm] / rss['ce']:>6.2f}"
            if rss.get(arm) and rss.get("ce")
            else f"{'-':>7} {'-':>6}"
        )
        print(f"{arm:<20} {peaks[arm] / mb:>8.0f} {peaks[arm] / peaks['ce']:>6.2f} {plain[arm] / mb:>13.0f} "
              f"{r_mb} {1000 * statistics.median(times[arm]):>10.0f} {ratio:>10.2f}")  # fmt: skip
    print(f"({args.batch} x {args.block} tokens, V = {args.vocab:,}, lm_head {args.head or 'none'}, "
          f"loss chunk {args.chunk_tokens} tokens, {args.repeats} interleaved repeats)")  # fmt: skip
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")
    print(f"max peak ratio vs ce: {max(peaks[a] / peaks['ce'] for a in ARMS):.3f}")


if __name__ == "__main__":
    main()
