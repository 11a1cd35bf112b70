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


PLACEMENT = ("processes", "threads", "backend", "launcher", "checkpoint_uri")


def tiny_job(data, out, run, *, name="r", seed=5, teacher=None, tokenizer=None, **kw):
    """The `sdce.job.Job` of `run` on `tiny_data` (keyword arguments: placement fields or
    Job fields)."""
    from sdce.job import Inputs, Job, Placement

    inputs = Inputs(
        str(data / "train.bin"),
        str(data / "validation.bin"),
        str(tokenizer or data / "tokenizer"),
        str(teacher) if teacher else None,
    )
    placement = Placement(**{k: kw.pop(k) for k in PLACEMENT if k in kw})
    kw.setdefault("progress", False)
    return Job(run=run, name=name, seed=seed, inputs=inputs, out=str(out), placement=placement, **kw)


def train_tiny(data, out, run, **kw):
    """`sdce.train.train` of `run` on `tiny_data` (seed 5, the bigram table when guided)."""
    from sdce.train import train

    teacher = data / "bigram.npz" if run["guidance"]["objective"] == "bigram" else None
    return train(tiny_job(data, out, run, teacher=kw.pop("teacher", teacher), **kw))


def loss_curve(out):
    """(kind, step, loss or val_loss) of every record of a run folder's metrics.jsonl."""
    import json

    recs = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    return [(r["kind"], r["step"], r.get("loss", r.get("val_loss"))) for r in recs]
