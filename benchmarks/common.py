"""What several benchmarks share: the machine line they start with, and a synthetic shard."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch


def machine_line() -> str:
    return (
        f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch thread(s), "
        f"torch {torch.__version__}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}"
    )


def synthetic_shard(documents: int, tmp: Path, vocab_size: int = 2000):
    """A BPE trained on `documents` synthetic documents, saved in tmp/tok, and the documents
    encoded into tmp/train.bin: (tokenizer, token ids)."""
    from sdce.data.shards import encode_documents, load_shard
    from sdce.data.synthetic import generate_documents
    from sdce.data.tokenizer import train_bpe

    docs = [{"text": t, "source": "synthetic"} for t in generate_documents(documents, seed=0)]
    tok = train_bpe((d["text"] for d in docs), vocab_size, 2)
    tok.save_pretrained(str(tmp / "tok"))
    encode_documents(tok, docs, tmp / "train.bin", tmp / "tok")
    data, _ = load_shard(tmp / "train.bin")
    return tok, data
