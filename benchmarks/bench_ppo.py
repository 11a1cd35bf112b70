"""PPO steps per second (`sdce.ppo.run_ppo`, TRL's PPOTrainer) in the tests' tiny setting.

A 2-layer, 64-wide GPT-2 student is first trained by the project's training loop on a small
synthetic corpus (600 documents, 400-type BPE), then post-trained with the grammar reward:
batch 16 (mini-batch 8), 16-token responses, 4 PPO epochs per step. A PPO step is one
rollout batch: sampling, the reference, value and reward passes, and 4 optimizer steps of
policy and value model. The rate is over `trainer.train()` alone (no loading, no samples).
The last line printed is the figure.

Usage: python benchmarks/bench_ppo.py [--steps 40] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import torch
from common import machine_line

from sdce import config as cfg
from sdce.data.corpus import build_corpus, read_documents, write_documents
from sdce.data.shards import encode_documents
from sdce.data.split import split_documents
from sdce.data.tokenizer import build_tokenizer
from sdce.job import Inputs, Job, Placement
from sdce.ppo import corpus_prompts, run_ppo
from sdce.train import train


def student(root: Path) -> Path:
    """The tests' tiny corpus and a student trained on it for 250 steps."""
    build_corpus(
        {"source": "synthetic", "synthetic_documents": 600, "synthetic_seed": 3}, root / "c.jsonl", root / "s"
    )
    split = {
        "validation_fraction": 0.1,
        "shuffle": True,
        "seed": 42,
        "train_subset": None,
        "validation_subset": None,
    }
    docs, val = split_documents(read_documents(root / "c.jsonl"), split)
    write_documents(root / "train.jsonl", docs)
    tok = build_tokenizer(
        {"kind": "bpe", "vocab_size": 400, "min_frequency": 2}, (d["text"] for d in docs), root / "tok"
    )
    encode_documents(tok, docs, root / "train.bin", root / "tok")
    encode_documents(tok, val, root / "val.bin", root / "tok")
    training = {"steps": 250, "batch_size": 16, "block_size": 64, "learning_rate": 3e-3, "warmup_steps": 10}
    training.update(eval_interval=250, eval_tokens=2048, log_interval=50, checkpoint_interval=250)
    run = {
        "model": {"n_layer": 2, "n_embd": 64, "n_head": 2},
        "training": training,
        "guidance": {"objective": "ce"},
    }
    inputs = Inputs(str(root / "train.bin"), str(root / "val.bin"), str(root / "tok"))
    placement = Placement(threads=torch.get_num_threads())
    job = Job(
        cfg.validate(run, "run"), "s", 5, inputs, str(root / "run"), placement=placement, progress=False
    )
    train(job)
    return root / "run" / "model"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(machine_line())
    root = Path(tempfile.mkdtemp())
    model = student(root)
    spec = cfg.validate(
        {
            "steps": args.steps,
            "batch_size": 16,
            "mini_batch_size": 8,
            "learning_rate": 3e-4,
            "response_length": 16,
        },
        "properties/ppo",
    )
    texts = [d["text"] for d in read_documents(root / "train.jsonl")]
    generation = cfg.validate({"max_new_tokens": 16}, "properties/generation")
    summary = run_ppo(model, root / "ppo", spec, spec["reward"], corpus_prompts(texts, 64, 3), generation)
    print(json.dumps(summary))
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    print(f"PPO steps/s: {summary['steps_per_second']:.2f}")


if __name__ == "__main__":
    main()
