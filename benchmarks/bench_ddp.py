"""DDP scaling on this machine, measured in one run: training throughput (tokens/s) of the
real loop (`sdce.train.train`) with 1 process and with 2 processes (gloo on CPU, NCCL on
CUDA) at the same global batch, plus 1 process with as many threads as the 2 processes
have together (what the same cores give without DDP).

    scaling efficiency = tokens/s(2 processes) / (2 x tokens/s(1 process, 1 thread))

Throughput is the median over the logging windows after the first (start-up, first
allocations). The configurations run alternately, `--repeats` times each, so that all
see the same machine load; the median over repeats is reported, with the load average
seen before each measurement (the machine may be shared).

Usage: python benchmarks/bench_ddp.py [--steps 40] [--batch-size 16] [--block-size 128]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
from pathlib import Path

import torch

from sdce import config as cfg
from sdce.data.shards import encode_documents
from sdce.data.synthetic import generate_documents
from sdce.data.tokenizer import train_bpe
from sdce.job import Inputs, Job, Placement
from sdce.model import build_model, count_parameters
from sdce.train import train


def throughput(out: Path) -> float:
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    rates = [r["tokens_per_s"] for r in recs if r["kind"] == "train"][1:]
    return statistics.median(rates)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--block-size", type=int, default=128)
    ap.add_argument("--n-layer", type=int, default=4)
    ap.add_argument("--n-embd", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    cuda = torch.cuda.is_available()
    print(
        f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} cores for torch, "
        f"{torch.cuda.device_count() if cuda else 0} CUDA devices, torch {torch.__version__}"
    )

    tmp = Path(tempfile.mkdtemp())
    docs = [{"text": t, "source": "synthetic"} for t in generate_documents(6000, seed=0)]
    tok = train_bpe((d["text"] for d in docs), 2000, 2)
    tok.save_pretrained(str(tmp / "tok"))
    encode_documents(tok, docs[:5500], tmp / "train.bin", tmp / "tok")
    encode_documents(tok, docs[5500:], tmp / "val.bin", tmp / "tok")
    run = cfg.validate(
        {
            "model": {"n_layer": args.n_layer, "n_embd": args.n_embd, "n_head": 4},
            "training": {
                "steps": args.steps,
                "batch_size": args.batch_size,
                "block_size": args.block_size,
                "log_interval": 5,
                "eval_interval": args.steps,
                "eval_tokens": 2048,
                "checkpoint_interval": args.steps,
                "warmup_steps": 5,
            },
            "guidance": {"objective": "ce"},
        },
        "run",
    )
    params = count_parameters(build_model(run["model"], tok, args.block_size, 0))
    print(
        f"student: gpt2 {args.n_layer} layers x {args.n_embd}, {params / 1e6:.1f}M parameters; "
        f"global batch {args.batch_size} x {args.block_size} tokens; {args.steps} steps"
    )
    configs = [
        ("1 process  x 1 thread ", 1, 1),
        ("1 process  x 2 threads", 1, 2),
        ("2 processes x 1 thread ", 2, 2),
    ]
    results: dict[str, list[float]] = {name: [] for name, _, _ in configs}
    loads = []  # the 1-minute load average before each measurement: other work on the machine
    for rep in range(args.repeats):
        for name, procs, threads in configs:
            out = tmp / f"{procs}p{threads}t{rep}"
            loads.append(os.getloadavg()[0])
            inputs = Inputs(str(tmp / "train.bin"), str(tmp / "val.bin"), str(tmp / "tok"))
            placement = Placement(processes=procs, threads=threads)
            job = Job(run=run, name="bench", seed=1, inputs=inputs, out=str(out), placement=placement)
            train(job.replace(progress=False, resume=False))
            results[name].append(throughput(out))
    medians = {name: statistics.median(v) for name, v in results.items()}
    for name, value in medians.items():
        print(f"{name}: {value:10,.0f} tokens/s  (repeats: {', '.join(f'{v:,.0f}' for v in results[name])})")
    one, two = medians[configs[0][0]], medians[configs[2][0]]
    print(f"DDP speedup, 2 processes vs 1: {two / one:.2f}x; scaling efficiency {two / (2 * one):.0%}")
    print(f"2 processes vs 1 process with both threads: {two / medians[configs[1][0]]:.2f}x")
    print(f"1-minute load average before the measurements: {min(loads):.1f} to {max(loads):.1f}")


if __name__ == "__main__":
    main()
