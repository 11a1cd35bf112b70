"""Helpers for tests that train on the `tiny_data` fixture: a run slice that trains in
seconds, the call of the training loop on it, and its loss curve."""

from pathlib import Path


def tiny_run(objective="bigram", model=None, **training):
    """A validated run slice that trains on `tiny_data` in seconds; no dropout, so that
    runs with other process counts or backends can be compared step by step."""
    from sdce import config as cfg

    base = {
        "steps": 8,
        "batch_size": 4,
        "block_size": 32,
        "eval_interval": 4,
        "eval_tokens": 2048,
        "log_interval": 2,
        "checkpoint_interval": 4,
        "warmup_steps": 2,
        **training,
    }
    guidance = {"objective": objective}
    if objective == "bigram":
        guidance.update(schedule="linear", schedule_steps=6)
    run = {
        "model": model or {"n_layer": 1, "n_embd": 32, "n_head": 2},
        "training": base,
        "guidance": guidance,
    }
    return cfg.validate(run, "run")


def train_tiny(data, out, run, **kw):
    """`sdce.train.train` of `run` on `tiny_data` (seed 5, the bigram table when guided)."""
    from sdce.train import train

    teacher = data / "bigram.npz" if run["guidance"]["objective"] == "bigram" else None
    kw = {"seed": 5, "teacher_path": teacher, "progress": False, **kw}
    return train(
        run,
        name="r",
        train_shard=data / "train.bin",
        val_shard=data / "validation.bin",
        tokenizer_dir=data / "tokenizer",
        out_dir=out,
        **kw,
    )


def loss_curve(out):
    """(kind, step, loss or val_loss) of every record of a run folder's metrics.jsonl."""
    import json

    recs = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    return [(r["kind"], r["step"], r.get("loss", r.get("val_loss"))) for r in recs]
