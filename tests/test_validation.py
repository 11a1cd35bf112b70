"""The periodic validation loss represents the whole validation set (sdce.data.batches.
validation_blocks), also when a coherent split orders the validation shard by source."""

import dataclasses
import json
from contextlib import nullcontext
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from test_chunked_losses import _bench
from tiny_training import tiny_job, tiny_run

from sdce.data import batches
from sdce.data.corpus import read_documents
from sdce.data.shards import encode_documents, load_shard, source_ranges
from sdce.data.split import split_documents
from sdce.data.tokenizer import load as load_tokenizer
from sdce.evaluation.perplexity import evaluate_perplexity
from sdce.evaluation.validation import evaluate_loss, score, window_sources
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

    # the same windows per source: the random text is what a model of the grammar predicts badly
    by_source = last["val_loss_by_source"]
    assert list(by_source) == ["grammar", "random"] and by_source["grammar"] < by_source["random"]
    assert sum(last["val_tokens_by_source"].values()) == eval_tokens
    # the evaluation job scores every window, per source as well
    evaluation = evaluate_perplexity(str(tmp_path / "run" / "model"), str(val_shard), block, None, 8)
    assert evaluation["val_loss"] == pytest.approx(full, rel=1e-6) and evaluation["tokens"] == n
    owner = window_sources(np.arange(total) * block, source_ranges(load_shard(val_shard)[1]))
    for name, loss in evaluation["val_loss_by_source"].items():
        assert loss == pytest.approx(per_window[owner == name].mean(), rel=1e-5)


def _tiny_model(vocab: int, seed: int = 0):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=vocab, n_positions=64, n_embd=32, n_layer=1, n_head=2)
    return GPT2LMHeadModel(config).eval()


def _direct_loss(model, data, offsets, block):
    """Mean next-token cross-entropy over the windows at `offsets`, one window at a time."""
    with torch.no_grad():
        return np.mean(
            [
                torch.nn.functional.cross_entropy(model(input_ids=x).logits[0], y[0]).item()
                for x, y in (batches.windows(data, np.array([o]), 32) for o in offsets)
            ]
        )


@pytest.mark.parametrize("eval_tokens", [None, 640])
def test_per_source_losses_equal_the_loss_on_each_sources_windows(tmp_path, tiny_data, eval_tokens):
    """Each source's loss is the loss on the windows that start in its token range (scored
    here directly, one window at a time); the sources partition the windows, so their
    token-weighted mean is the validation loss, which grouping does not change."""
    data, meta = load_shard(_two_source_validation(tiny_data, tmp_path))
    ranges = source_ranges(meta)
    model = _tiny_model(meta["vocab_size"])
    r = score({"name": "next_token"}, model, data, 32, eval_tokens, 5, sources=ranges)
    assert list(r["val_loss_by_source"]) == ["grammar", "random"]
    offsets = batches.validation_blocks(len(data), 32, eval_tokens)
    for name, [(start, end)] in ranges.items():
        mine = offsets[(offsets >= start) & (offsets < end)]
        assert r["val_tokens_by_source"][name] == len(mine) * 32
        assert r["val_loss_by_source"][name] == pytest.approx(_direct_loss(model, data, mine, 32), rel=1e-5)
    weighted = sum(r["val_loss_by_source"][s] * n for s, n in r["val_tokens_by_source"].items())
    assert weighted / r["val_tokens"] == pytest.approx(r["val_loss"], rel=1e-9)
    assert r["val_loss"] == pytest.approx(evaluate_loss(model, data, 32, eval_tokens, 5)[0], rel=1e-6)
    # without the ranges (a sidecar that lists none) there is no split
    assert "val_loss_by_source" not in score({"name": "next_token"}, model, data, 32, eval_tokens, 5)


class _FixedLogits(torch.nn.Module):
    """A "model" whose logits for a batch are the first rows of a tensor allocated before."""

    def __init__(self, logits):
        super().__init__()
        self.table, self.dummy = logits, torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids):
        return SimpleNamespace(logits=self.table[: input_ids.size(0)])


def test_validation_cross_entropy_is_chunked_and_equals_the_unchunked_value():
    """`evaluate_loss` in chunks of `training.loss_chunk_tokens` tokens equals plain
    cross-entropy over the whole batch, and holds a few (chunk x V) fp32 buffers where
    the unchunked path holds a (tokens x V) log-softmax beside the logits."""
    windows, block, vocab, chunk = 4, 64, 512, 8
    data = np.random.default_rng(0).integers(0, vocab, windows * block + 1).astype(np.uint16)
    torch.manual_seed(0)
    model = _FixedLogits(3 * torch.randn(windows, block, vocab))
    _, y = batches.windows(data, batches.validation_blocks(len(data), block, None), block)
    reference = torch.nn.functional.cross_entropy(model.table.reshape(-1, vocab).double(), y.reshape(-1))
    for chunk_tokens in (None, 5, chunk, 512):
        loss, n = evaluate_loss(model, data, block, None, windows, chunk_tokens=chunk_tokens)
        assert n == windows * block and loss == pytest.approx(reference.item(), rel=1e-6)

    peak = _bench().allocator_peak
    row = vocab * 4
    bound = 8 * chunk * row  # the chunk buffers and a kernel's temporary
    chunked = peak(lambda: evaluate_loss(model, data, block, None, windows, chunk_tokens=chunk))
    plain = peak(lambda: evaluate_loss(model, data, block, None, windows, chunk_tokens=None))
    assert chunked <= bound < windows * block * row <= plain, (chunked / row, plain / row)


def test_padded_batches_and_processes_give_the_same_per_source_losses():
    """A static-shape backend (XLA) pads the last batch of every source, and the padding
    weighs 0; two processes each score half of every source's windows and their sums add
    up to the one-process value."""
    data = np.random.default_rng(0).integers(0, 300, 2000).astype(np.uint16)
    model, sources = _tiny_model(300), {"a": [(0, 700)], "b": [(700, 2000)]}
    one = score({"name": "next_token"}, model, data, 32, None, 5, sources=sources)
    assert one["val_tokens_by_source"] == {"a": 22 * 32, "b": 40 * 32}  # 22 windows start below 700
    sums = []
    backend = SimpleNamespace(
        rank=0, world=1, device=torch.device("cpu"), static_shapes=True, autocast=nullcontext,
        mark_step=lambda: None, reduce=lambda t, op: sums.append(t.clone()) or sum(sums),
    )  # fmt: skip
    padded = score({"name": "next_token"}, model, data, 32, None, 5, backend, sources=sources)
    for rank in (0, 1):  # rank 1's reduce adds the sums of both
        backend.rank, backend.world = rank, 2
        split = score({"name": "next_token"}, model, data, 32, None, 5, backend, sources=sources)
    for other in (padded, split):
        assert other["val_tokens_by_source"] == one["val_tokens_by_source"]
        for name, loss in one["val_loss_by_source"].items():
            assert other["val_loss_by_source"][name] == pytest.approx(loss, rel=1e-6)
