"""The periodic validation loss represents the whole validation set (sdce.data.batches.
validation_blocks), also when a coherent split orders the validation shard by source."""

import dataclasses
import json

import numpy as np
import pytest
import torch
from tiny_training import tiny_job, tiny_run

from sdce.data import batches
from sdce.data.corpus import read_documents
from sdce.data.shards import encode_documents, load_shard
from sdce.data.split import split_documents
from sdce.data.tokenizer import load as load_tokenizer
from sdce.evaluation.validation import evaluate_loss
from sdce.model import load_model
from sdce.train import train


def test_windows_spread_over_the_shard_and_do_not_depend_on_the_run():
    offsets = batches.validation_blocks(10_001, 10, 500)
    assert len(offsets) == 50 and len(set(offsets)) == 50
    assert offsets.min() < 1_000 and offsets.max() > 9_000  # both ends of the shard
    gaps = np.diff(offsets)
    assert gaps.min() >= 190 and gaps.max() <= 210  # evenly spread
    assert (batches.validation_blocks(10_001, 10, 500) == offsets).all()
    assert (batches.validation_blocks(10_001, 10, None) == np.arange(1_000) * 10).all()
    assert (batches.validation_blocks(10_001, 10, 10**9) == np.arange(1_000) * 10).all()


def _two_source_validation(tiny_data, folder):
    """A coherent split of a two-source corpus: the synthetic grammar's text, and text decoded
    from random token ids (which a model of the grammar predicts badly)."""
    rng = np.random.default_rng(0)
    grammar = [{**d, "source": "grammar"} for d in read_documents(tiny_data / "train.jsonl")[:300]]
    tokenizer = load_tokenizer(tiny_data / "tokenizer")
    noise = [
        {"text": tokenizer.decode(rng.integers(10, len(tokenizer), 60).tolist()), "source": "random"}
        for _ in range(300)
    ]
    spec = {"validation_fraction": 0.2, "shuffle": False, "seed": 0, "train_subset": None}
    _, val = split_documents(grammar + noise, spec)
    assert [d["source"] for d in val][0] == "grammar" and val[-1]["source"] == "random"
    meta = encode_documents(tokenizer, val, folder / "validation.bin", tiny_data / "tokenizer")
    assert list(meta["sources"]) == ["grammar", "random"]
    return folder / "validation.bin"


def test_periodic_validation_agrees_with_the_full_validation_set(tmp_path, tiny_data):
    val_shard = _two_source_validation(tiny_data, tmp_path)
    data, _ = load_shard(val_shard)
    block, eval_tokens = 32, 1024
    run = tiny_run(
        "ce", steps=60, eval_interval=60, eval_tokens=eval_tokens, block_size=block, learning_rate=3e-3
    )
    job = tiny_job(tiny_data, tmp_path / "run", run)
    job = job.replace(inputs=dataclasses.replace(job.inputs, val_shard=str(val_shard)))
    train(job)
    last = [json.loads(r) for r in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()][-1]
    assert last["kind"] == "eval" and last["val_tokens"] == eval_tokens

    model = load_model(tmp_path / "run" / "model").eval()
    full, n = evaluate_loss(model, data, block, None, 8)
    assert n == ((len(data) - 1) // block) * block
    # the sampling error of a mean over `count` of the `total` windows (without replacement)
    total, count = (len(data) - 1) // block, eval_tokens // block
    per_window = []
    with torch.no_grad():
        for offset in np.arange(total) * block:
            x, y = batches.windows(data, np.array([offset]), block)
            per_window.append(torch.nn.functional.cross_entropy(model(input_ids=x).logits[0], y[0]).item())
    per_window = np.array(per_window)
    assert np.mean(per_window) == pytest.approx(full, abs=1e-5)
    se = per_window.std(ddof=1) / np.sqrt(count) * np.sqrt(1 - count / total)
    assert abs(last["val_loss"] - full) < 3 * se
    # the first windows (one source: what was scored before) fail the same test
    assert abs(per_window[:count].mean() - full) > 3 * se
