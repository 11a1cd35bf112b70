"""The training loop: one loop for every objective and backend.

The objective is a name in `sdce.losses.LOSSES`; the teacher (if any) produces
a `GuidanceSignal`; `accelerate` supplies the device, mixed precision and,
when launched with several processes, DDP. A run folder holds:

    model/          final model + tokenizer (save_pretrained)      [output]
    milestones/     words_<N>/ models kept at words-seen milestones (never rotated)
    metrics.jsonl   train and eval records                         [output]
    summary.json    final numbers, parameter count, versions       [output]
    work/           live metrics and rotating checkpoints (kept across failures)
"""

from __future__ import annotations

import json
import math
import shutil
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from transformers.utils import logging as hf_logging

from sdce import checkpoint as ckpt
from sdce import config as cfg
from sdce import losses
from sdce.data import batches
from sdce.data.shards import load_shard
from sdce.io import atomic_dir, stable_hash, write_json
from sdce.model import build_model, count_parameters
from sdce.schedules import guidance_weight


class TrainingError(ValueError):
    pass


def make_teacher(guidance: dict, teacher_path: str | None, tokenizer, device, *, train_shard=None):
    """The signal producer for an objective (None for cross-entropy), built before training.

    `teacher_path` is the bigram table, an LM teacher's cache folder (teacher_source:
    cache) or its descriptor `teacher.json` (online); `tokenizer` the student's.
    """
    objective = guidance["objective"]
    if objective == "ce":
        return None
    if objective == "label_smoothing":
        from sdce.teachers.uniform import UniformTeacher

        return UniformTeacher()
    if objective == "bigram":
        from sdce.teachers.bigram import BigramTeacher

        if not teacher_path:
            raise TrainingError("objective 'bigram' needs the bigram table (--teacher)")
        teacher = BigramTeacher.load(teacher_path)
        if teacher.vocab_size != len(tokenizer):
            raise TrainingError(
                f"bigram table {teacher_path} has vocabulary {teacher.vocab_size}, "
                f"the student {len(tokenizer)}"
            )
        return teacher.to(device)
    if objective in ("surrogate", "kl"):
        from sdce.teachers.cache import CachedTeacher
        from sdce.teachers.surrogate import LMTeacher, signal_spec

        source = guidance["teacher_source"]
        if not teacher_path:
            what = "cache folder" if source == "cache" else "descriptor (teacher.json)"
            raise TrainingError(f"objective '{objective}' needs its LM teacher's {what} (--teacher)")
        spec = signal_spec(guidance)
        try:
            if source == "online":
                return LMTeacher.from_descriptor(teacher_path, tokenizer, spec, device)
            if spec["top_k"] is None:
                raise TrainingError("guidance.kl.top_k: null (dense) needs teacher_source: online")
            return CachedTeacher.load(teacher_path, spec, train_shard=train_shard, device=device)
        except ValueError as e:
            raise TrainingError(f"{objective} teacher {teacher_path}: {e}") from None
    raise TrainingError(f"unknown objective '{objective}'")


def _optimizer(model, spec: dict):
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "norm" in name or "ln_" in name else decay).append(p)
    groups = [
        {"params": decay, "weight_decay": spec["weight_decay"]},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=spec["learning_rate"], betas=(spec["beta1"], spec["beta2"]))


def _scheduler(optimizer, spec: dict):
    from transformers import get_scheduler

    name, kwargs = spec["lr_scheduler"], None
    if name == "cosine":
        name, kwargs = "cosine_with_min_lr", {"min_lr_rate": spec["min_lr_ratio"]}
    return get_scheduler(
        name,
        optimizer,
        num_warmup_steps=spec["warmup_steps"],
        num_training_steps=spec["steps"],
        scheduler_specific_kwargs=kwargs,
    )


def _accelerator(spec: dict):
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    # several runs in one process (tests, notebooks) may differ in precision; the
    # process group (PartialState) is kept
    AcceleratorState._reset_state(reset_partial_state=False)
    precision = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[spec["precision"]]
    if precision == "fp16" and not torch.cuda.is_available():
        raise TrainingError("training.precision=fp16 needs a CUDA device; use bf16 or fp32 here")
    return Accelerator(mixed_precision=precision)


def _micro_batch(spec: dict, world: int) -> tuple[int, int]:
    """(sequences per forward pass, accumulation steps) for the global batch."""
    per_proc, rem = divmod(spec["batch_size"], world)
    if rem:
        raise TrainingError(f"training.batch_size={spec['batch_size']} is not divisible by {world} processes")
    micro = spec["micro_batch_size"] or per_proc
    if per_proc % micro:
        raise TrainingError(
            f"training.batch_size={spec['batch_size']} / {world} processes = {per_proc} per process, "
            f"not divisible by training.micro_batch_size={micro}"
        )
    return micro, per_proc // micro


@torch.no_grad()
def evaluate_loss(model, data, block_size: int, max_tokens: int | None, batch_size: int, accelerator=None):
    """Mean next-token cross-entropy over consecutive validation windows."""
    offsets = batches.validation_blocks(len(data), block_size, max_tokens)
    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator else (0, 1)
    device = accelerator.device if accelerator else next(model.parameters()).device
    was_training = model.training
    model.eval()
    total = torch.zeros(2, dtype=torch.float64, device=device)
    mine = offsets[rank::world]
    for i in range(0, len(mine), batch_size):
        x, y = batches.windows(data, mine[i : i + batch_size], block_size)
        logits = model(input_ids=x.to(device)).logits.float()
        nll = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.size(-1)), y.to(device).reshape(-1), reduction="sum"
        )
        total += torch.stack([nll.double(), torch.tensor(y.numel(), dtype=torch.float64, device=device)])
    if accelerator and world > 1:
        total = accelerator.reduce(total, "sum")
    model.train(was_training)
    loss = (total[0] / total[1]).item()
    return loss, int(total[1].item())


class MetricsLog:
    """Append-only JSONL of metrics; truncated to a checkpoint's step on resume."""

    def __init__(self, path: Path, enabled: bool):
        self.path, self.enabled = path, enabled

    def truncate(self, step: int) -> None:
        if not self.enabled or not self.path.exists():
            return
        keep = [r for r in map(json.loads, self.path.read_text().splitlines()) if r["step"] <= step]
        self.path.write_text("".join(json.dumps(r) + "\n" for r in keep))

    def reset(self) -> None:
        if self.enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text("")

    def write(self, record: dict) -> None:
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")


def train(
    run: dict,
    *,
    name: str,
    train_shard: str,
    val_shard: str,
    tokenizer_dir: str,
    out_dir: str,
    seed: int,
    teacher_path: str | None = None,
    threads: int = 1,
    resume: bool = True,
    progress: bool = True,
    stop_after: int | None = None,
) -> dict:
    """Train one run (validated `run` slice: model, training, guidance) with one seed.

    `stop_after` ends the process after that step's checkpoint, as a preemption would.
    """
    from sdce.data.tokenizer import load as load_tokenizer

    spec, guidance = run["training"], run["guidance"]
    out = Path(out_dir)
    work = out / "work"
    ckpt_dir = work / "checkpoints"
    torch.set_num_threads(threads)
    hf_logging.disable_progress_bar()
    accelerator = _accelerator(spec)
    main = accelerator.is_main_process
    device = accelerator.device

    tokenizer = load_tokenizer(tokenizer_dir)
    train_data, train_meta = load_shard(train_shard)
    val_data, _ = load_shard(val_shard)
    block = spec["block_size"]
    micro, accum = _micro_batch(spec, accelerator.num_processes)
    words_per_token = train_meta["words"] / max(train_meta["tokens"], 1)
    teacher = make_teacher(guidance, teacher_path, tokenizer, device, train_shard=train_shard)
    config_hash = stable_hash(
        {"run": run, "seed": seed, "train": train_meta, "teacher": teacher_path is not None}
    )

    model = build_model(run["model"], tokenizer, block, seed)
    if spec["gradient_checkpointing"]:
        model.gradient_checkpointing_enable()
    optimizer = _optimizer(model, spec)
    scheduler = _scheduler(optimizer, spec)

    metrics = MetricsLog(work / "metrics.jsonl", main)
    milestone_dir = out / "milestones"
    pending = cfg.milestone_words(spec["milestones"])
    start_step, tokens_seen = 0, 0
    last = ckpt.latest(ckpt_dir, config_hash) if resume else None
    if last is not None:
        from transformers import AutoModelForCausalLM

        state = ckpt.load_trainer_state(last)
        model.load_state_dict(AutoModelForCausalLM.from_pretrained(str(last / "model")).state_dict())
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        ckpt.set_rng_state(state["rng"])
        info = json.loads((last / ckpt.STATE).read_text())
        start_step, tokens_seen = info["step"], info["tokens"]
        metrics.truncate(start_step)
        accelerator.print(f"resumed from {last} at step {start_step}")
    else:
        if main:  # checkpoints and milestones of another config are stale
            shutil.rmtree(ckpt_dir, ignore_errors=True)
            shutil.rmtree(milestone_dir, ignore_errors=True)
        metrics.reset()

    model, optimizer = accelerator.prepare(model, optimizer)
    model.train()
    n_params = count_parameters(accelerator.unwrap_model(model))
    rank, world = accelerator.process_index, accelerator.num_processes
    tokens_per_step = spec["batch_size"] * block

    def run_eval(step: int) -> float:
        loss, n = evaluate_loss(model, val_data, block, spec["eval_tokens"], micro, accelerator)
        metrics.write(
            {
                "kind": "eval",
                "step": step,
                "tokens": tokens_seen,
                "words": round(tokens_seen * words_per_token),
                "val_loss": loss,
                "val_ppl": math.exp(min(loss, 50.0)),
                "val_tokens": n,
            }
        )
        return loss

    if start_step == 0:
        run_eval(0)

    bar = None
    if progress and main:
        from tqdm.auto import tqdm

        bar = tqdm(total=spec["steps"], initial=start_step, desc=out.name, dynamic_ncols=True, disable=None)

    window: dict[str, list] = {}
    t_window, tok_window = time.perf_counter(), 0
    val_loss = float("nan")
    for step in range(start_step, spec["steps"]):
        weight = guidance_weight(step, guidance, spec["steps"]) if teacher is not None else 0.0
        use_teacher = teacher is not None and weight > 0  # a decayed teacher is not run at all
        offsets = batches.global_offsets(len(train_data), block, spec["batch_size"], seed, step)
        mine = offsets[rank * micro * accum : (rank + 1) * micro * accum]
        step_terms: dict[str, torch.Tensor] = {}
        for m in range(accum):
            window_offsets = mine[m * micro : (m + 1) * micro]
            x, y = batches.windows(train_data, window_offsets, block)
            x, y = x.to(device), y.to(device)
            sync = accelerator.no_sync(model) if m < accum - 1 else nullcontext()
            with sync:
                logits = model(input_ids=x).logits
                signal = teacher.signal(x, offsets=window_offsets) if use_teacher else None
                out_terms = losses.compute(
                    guidance["objective"],
                    logits,
                    y,
                    signal,
                    weight,
                    tail_policy=guidance["tail_policy"],
                    z_weight=spec["z_loss"],
                    **losses.options(guidance),
                )
                accelerator.backward(out_terms["loss"] / accum)
            for k, v in out_terms.items():
                step_terms[k] = step_terms.get(k, 0.0) + v.detach() / accum
        grad_norm = accelerator.clip_grad_norm_(model.parameters(), spec["grad_clip"] or float("inf"))
        lr = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        tokens_seen += tokens_per_step
        tok_window += tokens_per_step
        for k, v in step_terms.items():
            window.setdefault(k, []).append(v)
        window.setdefault("grad_norm", []).append(
            grad_norm.detach() if torch.is_tensor(grad_norm) else torch.tensor(float(grad_norm))
        )
        done = step + 1
        if bar is not None:
            bar.update(1)
        if done % spec["log_interval"] == 0 or done == spec["steps"]:
            # the only host sync of the training step: averages over the logging window
            means = {k: torch.stack([t.float() for t in v]).mean() for k, v in window.items()}
            if world > 1:
                means = {k: accelerator.reduce(v.to(device), "mean") for k, v in means.items()}
            elapsed = time.perf_counter() - t_window
            record = {
                "kind": "train",
                "step": done,
                "tokens": tokens_seen,
                "words": round(tokens_seen * words_per_token),
                "lr": lr,
                "weight": weight,
                "tokens_per_s": tok_window / max(elapsed, 1e-9),
            }
            record.update({k: float(v) for k, v in means.items()})
            metrics.write(record)
            if bar is not None:
                bar.set_postfix(loss=f"{record['loss']:.3f}", w=f"{weight:.2f}")
            window, t_window, tok_window = {}, time.perf_counter(), 0
        if done % spec["eval_interval"] == 0 or done == spec["steps"]:
            val_loss = run_eval(done)
        words_seen = round(tokens_seen * words_per_token)
        while pending and pending[0] <= words_seen:
            milestone = pending.pop(0)
            # milestones are checked against the words seen after each step; resumed runs
            # skip the ones saved before their checkpoint
            if main and not (milestone_dir / f"words_{milestone}" / ckpt.STATE).exists():
                save_milestone(
                    milestone_dir / f"words_{milestone}",
                    accelerator.unwrap_model(model),
                    tokenizer,
                    {
                        "step": done,
                        "tokens": tokens_seen,
                        "words": words_seen,
                        "milestone": milestone,
                        "config_hash": config_hash,
                        "seed": seed,
                        "run": name,
                    },
                )
        if done % spec["checkpoint_interval"] == 0 or done == spec["steps"]:
            accelerator.wait_for_everyone()
            if main:
                ckpt.save(
                    ckpt_dir / f"step_{done:07d}",
                    accelerator.unwrap_model(model),
                    tokenizer,
                    optimizer,
                    scheduler,
                    {
                        "step": done,
                        "tokens": tokens_seen,
                        "words": round(tokens_seen * words_per_token),
                        "config_hash": config_hash,
                        "seed": seed,
                    },
                )
                ckpt.rotate(ckpt_dir, spec["save_total_limit"])
            accelerator.wait_for_everyone()
            if stop_after is not None and done >= stop_after and done < spec["steps"]:
                if bar is not None:
                    bar.close()
                return {"stopped_at": done}
    if bar is not None:
        bar.close()

    if math.isnan(val_loss):  # resumed at the final step: take the last recorded evaluation
        evals = [json.loads(r) for r in (work / "metrics.jsonl").read_text().splitlines()]
        val_loss = [r for r in evals if r["kind"] == "eval"][-1]["val_loss"]
    summary = {
        "run": name,
        "schedule": guidance["schedule"] if teacher is not None else "",
        "final_val_loss": val_loss,
        "final_val_ppl": math.exp(min(val_loss, 50.0)),
        "steps": spec["steps"],
        "tokens": tokens_seen,
        "parameters": n_params,
        "seed": seed,
        "objective": guidance["objective"],
        "config_hash": config_hash,
        "versions": ckpt.versions(),
        "processes": world,
    }
    if main:
        with atomic_dir(out / "model") as tmp:
            accelerator.unwrap_model(model).save_pretrained(str(tmp))
            tokenizer.save_pretrained(str(tmp))
        records = (work / "metrics.jsonl").read_text()
        from sdce.io import write_text

        write_text(out / "metrics.jsonl", records)
        write_json(out / "summary.json", summary)
    accelerator.wait_for_everyone()
    return summary


def save_milestone(folder: Path, model, tokenizer, state: dict) -> None:
    with atomic_dir(folder) as tmp:
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        write_json(tmp / ckpt.STATE, {**state, "versions": ckpt.versions()})


def tokens_per_second(records: list[dict]) -> float:
    vals = [r["tokens_per_s"] for r in records if r.get("kind") == "train"]
    return float(np.median(vals)) if vals else float("nan")
