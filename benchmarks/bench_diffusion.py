"""Step time of `masked_diffusion` (a bidirectional ModernBERT student) against a
cross-entropy step of a causal GPT-2 student of the same depth and width, measured in one
run: the two steps interleaved on the same windows, so both see the same machine load.

Each step is what the training loop does through the objective registry: the objective's
batch (for masked diffusion: random length, the forward process' mask draw), forward,
loss, backward, AdamW. The number to read is the median over steps of each step's time
over the same step's CE time. Beside it the ratio expected from parameter counts (6 N
FLOPs per token for both; ModernBERT's gated MLP and untied head differ from GPT-2's, so
the two "same size" models do not hold the same number of parameters).

Usage: python benchmarks/bench_diffusion.py [--steps 40] [--n-layer 2] [--n-embd 128]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from common import machine_line, synthetic_shard

from sdce import config as cfg
from sdce import objectives
from sdce.data.batches import global_offsets, windows
from sdce.data.tokenizer import load
from sdce.model import build_model, count_parameters


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--documents", type=int, default=3000)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--n-layer", type=int, default=2)
    ap.add_argument("--n-embd", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--block-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(machine_line())
    tmp = Path(tempfile.mkdtemp())
    tok, data = synthetic_shard(args.documents, tmp)

    arms = {}
    size = {"n_layer": args.n_layer, "n_embd": args.n_embd, "n_head": 4}
    ce = "ce (gpt2, causal)"
    for name, family, objective in (
        (ce, "gpt2", "ce"),
        ("masked_diffusion (modernbert)", "modernbert", "masked_diffusion"),
    ):
        obj = objectives.get(objective)
        guidance = cfg.validate({"objective": objective}, "guidance")
        run_tok = obj.tokenizer(load(tmp / "tok"))  # the run's copy (masked diffusion adds its mask)
        model = build_model(
            cfg.validate({**size, "family": family}, "model"), run_tok, args.block_size, seed=0
        )
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        arms[name] = (obj, guidance, run_tok, model, opt)

    def step(obj, guidance, run_tok, model, opt, x, y, noise) -> float:
        t = time.perf_counter()
        batch = obj.batch(x, y, noise, guidance, run_tok)
        logits = model(**batch.inputs).logits
        out = objectives.compute(obj, logits, batch, None, 0.0, guidance)
        out["loss"].backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return time.perf_counter() - t

    times: dict[str, list[float]] = {name: [] for name in arms}
    for s in range(args.steps + 2):
        x, y = windows(
            data, global_offsets(len(data), args.block_size, args.batch_size, 0, s), args.block_size
        )
        order = list(arms)[s % 2 :] + list(arms)[: s % 2]  # neither arm always runs first
        for name in order:
            dt = step(*arms[name], x, y, torch.Generator().manual_seed(s))
            if s >= 2:  # warm-up steps are not counted
                times[name].append(dt)
    n = {name: count_parameters(arm[3]) for name, arm in arms.items()}
    print(f"{'step':<32} {'parameters':>11} {'median ms':>10} {'ratio':>7} {'expected':>9}")
    for name, ts in times.items():
        ratio = statistics.median(t / c for t, c in zip(ts, times[ce], strict=True))
        ms, expected = 1000 * statistics.median(ts), n[name] / n[ce]
        print(f"{name:<32} {n[name]:>11,} {ms:>10.1f} {ratio:>7.2f} {expected:>9.2f}")
    print(f"({args.steps} interleaved steps, batch {args.batch_size} x {args.block_size}, V = {len(tok)})")
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
