"""The training loop: one loop for every objective, model kind and backend.

`Trainer.train()` reads top to bottom: restore, then per step `train_step`, the logging
window, validation, milestones and checkpoints, then publish. It delegates: the objective
(`sdce.objectives`: its batch, loss and teacher), the backend (`sdce.backends`: accelerate
on CPU/CUDA with DDP or FSDP, or torch_xla: device, mixed precision, process group), the
checkpointer (`sdce.checkpoint.Checkpointer`: save, rotate, push, pull, restore), the
metrics log and its trackers (`sdce.metrics`) and the validation measure
(`sdce.evaluation.validation`). A job (`sdce.job.Job`) says what to train; `sdce.job.launch`
starts the processes that run `run_job`. A run folder holds:

    model/          final model + tokenizer (save_pretrained)      [output]
    milestones/     words_<N>/ models kept at words-seen milestones (never rotated) [output]
    metrics.jsonl   train and eval records                         [output]
    summary.json    final numbers, parameter count, versions, settings [output]
    work/           live metrics, rotating checkpoints and milestones (kept across
                    failures; copied to the job's checkpoint_uri when it has one)
"""

from __future__ import annotations

import math
import shutil
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from transformers.utils import logging as hf_logging

from sdce import backends, config, flops, objectives
from sdce import checkpoint as ckpt
from sdce.backends import TrainingError
from sdce.data import batches
from sdce.data.shards import load_shard, source_ranges
from sdce.evaluation import validation
from sdce.io import atomic_dir, file_hash, write_json, write_text
from sdce.job import Job
from sdce.metrics import MetricsLog, StepWindow, TrainingClock
from sdce.model import build_model, count_parameters, expert_load, experts_per_token
from sdce.schedules import guidance_weight

__all__ = ["Trainer", "TrainingError", "run_job", "train"]


def train(job: Job) -> dict:
    """Train `job` (see `sdce.job.launch`); its summary."""
    from sdce.job import launch

    return launch(job)


def run_job(job: Job) -> dict:
    """The loop, in one process of a launched job."""
    return Trainer(job).train()


def noise_generator(seed: int, step: int, micro: int) -> torch.Generator:
    """The generator of a micro-batch's noise (masks, timesteps): a function of (seed, step,
    micro-batch), so a resumed run draws what the uninterrupted one drew."""
    state = np.random.SeedSequence([seed, step, micro]).generate_state(2, dtype=np.uint64)
    return torch.Generator().manual_seed(int(state[0] >> np.uint64(1)))


class Trainer:
    """Everything one process of a job holds while it trains."""

    def __init__(self, job: Job):
        from sdce import storage
        from sdce.data.tokenizer import load as load_tokenizer

        self.job, self.spec, self.guidance = job, job.spec, job.run["guidance"]
        self.out = Path(job.out)
        torch.set_num_threads(job.placement.threads)
        hf_logging.disable_progress_bar()
        self.bk = bk = backends.create(self.spec, job.placement.backend)
        self.objective = objectives.of(self.guidance)
        self.tokenizer = self.objective.tokenizer(load_tokenizer(job.inputs.tokenizer))
        self.train_data, train_meta = load_shard(job.inputs.train_shard)
        self.val_data, val_meta = load_shard(job.inputs.val_shard)
        self.val_sources = source_ranges(val_meta)  # per-source validation losses when listed
        self.block = self.spec["block_size"]
        self.sampler = self.objective.sampler(self.train_data, self.block, self.tokenizer.eos_token_id)
        self.micro, self.accum = micro_batch(self.spec, bk.world)
        # the teacher is loaded and checked on the host, then moved to the device
        self.teacher = objectives.load_teacher(
            self.guidance, job.inputs.teacher, self.tokenizer, bk.device, train_shard=job.inputs.train_shard
        )
        self.aux = objectives.aux_weights(job.run)
        self.model = build_model(job.run["model"], self.tokenizer, self.block, job.seed)
        self.top_k = experts_per_token(self.model.config)  # None: a dense student, no expert load to log
        self.compute = Compute(self.model.config, self.teacher, self.guidance, self.spec)
        if self.spec["gradient_checkpointing"]:
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.model = bk.place(self.model)
        self.optimizer = _optimizer(self.model, self.spec)
        self.scheduler = _scheduler(self.optimizer, self.spec)
        words_per_token = train_meta["words"] / max(train_meta["tokens"], 1)
        self.metrics = MetricsLog(self.out / "work" / "metrics.jsonl", bk.is_main, words_per_token)
        remote = storage.Remote(job.placement.checkpoint_uri) if job.placement.checkpoint_uri else None
        self.config_hash = job.config_hash(train_meta)
        self.tokenizer_hash = train_meta["tokenizer_hash"]
        self.checkpointer = ckpt.Checkpointer(
            self.out / "work", self.config_hash, self.spec, bk, self.metrics, remote
        )

    def train(self) -> dict:
        job, spec = self.job, self.spec
        folder = self.checkpointer.find(job.resume, job.resume_from)
        state, start, self.tokens = self.checkpointer.restore(folder, self.model, self.scheduler)
        self.model, self.optimizer = self.bk.prepare(self.model, self.optimizer)
        self.checkpointer.restore_optimizer(state, self.model, self.optimizer)
        self.model.train()
        self.metrics.open_trackers(
            spec["tracking"],
            run_dir=self.out,
            name=f"{job.name}-seed{job.seed}",
            config={**job.run, "seed": job.seed},
            start_step=start,
        )
        if start == 0:
            self.validate(0)
        self.clock = TrainingClock.resumed(self.metrics.records())
        pending = [m for m in config.milestone_words(spec["milestones"])]
        bar = self._progress_bar(start)
        window, val_loss = StepWindow(), float("nan")
        for step in range(start, spec["steps"]):
            weight = guidance_weight(step, self.guidance, spec["steps"]) if self.teacher is not None else 0.0
            terms = self.train_step(step, weight)
            lr = terms.pop("lr")
            self.tokens += spec["batch_size"] * self.block
            window.add(terms, spec["batch_size"] * self.block)
            done = step + 1
            bar.update(1)
            if done % spec["log_interval"] == 0 or done == spec["steps"]:
                self.log(done, lr, weight, window, bar)
            with self.clock.pause():  # validation, milestones and checkpoints are not training time
                if done % spec["eval_interval"] == 0 or done == spec["steps"]:
                    val_loss = self.validate(done)
                saved = self.keep(done, pending)
            if saved and job.stop_after is not None and job.stop_after <= done < spec["steps"]:
                bar.close()
                self.metrics.close()
                return {"stopped_at": done}
        bar.close()
        self.metrics.close()
        return self.finish(val_loss)

    def keep(self, done: int, pending: list[int]) -> bool:
        """The milestones `done` steps have passed, and the checkpoint due at `done` (whether
        one was saved)."""
        job, spec = self.job, self.spec
        words = self.metrics.words(self.tokens)
        while pending and pending[0] <= words:  # resumed runs skip the ones already kept
            self.checkpointer.milestone(pending.pop(0), done, self.tokens, self.model, self.tokenizer,
                                        {"seed": job.seed, "run": job.name})  # fmt: skip
        if done % spec["checkpoint_interval"] == 0 or done == spec["steps"]:
            extra = {"seed": job.seed, "processes": self.bk.world}
            self.checkpointer.save(done, self.tokens, self.model, self.tokenizer, self.optimizer,
                                   self.scheduler, extra)  # fmt: skip
            return True
        return False

    def train_step(self, step: int, weight: float) -> dict[str, torch.Tensor]:
        """One optimizer step over the global batch of `step` (this process's share of it, in
        `accum` micro-batches); the step's loss terms on the device, its grad norm and lr."""
        bk, job, block = self.bk, self.job, self.block
        use_teacher = self.teacher is not None and weight > 0  # a decayed teacher is not run at all
        offsets = self.sampler.offsets(self.spec["batch_size"], job.seed, step)
        mine = offsets[bk.rank * self.micro * self.accum : (bk.rank + 1) * self.micro * self.accum]
        terms: dict[str, torch.Tensor] = {}
        for m in range(self.accum):
            window = mine[m * self.micro : (m + 1) * self.micro]
            x, y = (t.to(bk.device) for t in batches.windows(self.train_data, window, block))
            with bk.no_sync(self.model) if m < self.accum - 1 else nullcontext(), bk.autocast():
                noise = noise_generator(job.seed, step, m)
                batch = self.objective.batch(x, y, noise, self.guidance, self.tokenizer)
                outputs = self.model(**batch.inputs)
                signal = self.teacher.signal(x, offsets=window) if use_teacher else None
                out = objectives.compute(
                    self.objective,
                    outputs.logits,
                    batch,
                    signal,
                    weight,
                    self.guidance,
                    self.aux,
                    outputs,
                    chunk_tokens=self.spec["loss_chunk_tokens"],
                )
                out.update(expert_load(outputs, self.top_k))  # logged beside the loss terms
                bk.backward(out["loss"] / self.accum)
            for k, v in out.items():
                terms[k] = terms.get(k, 0.0) + v.detach() / self.accum
            bk.mark_step()  # XLA: one graph per micro-batch (forward + backward)
        lr = self.scheduler.get_last_lr()[0]
        grad_norm = bk.clip_and_step(self.model, self.optimizer, self.spec["grad_clip"] or float("inf"))
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        bk.mark_step()  # XLA: the optimizer step's graph
        terms["grad_norm"] = (
            grad_norm.detach() if torch.is_tensor(grad_norm) else torch.tensor(float(grad_norm))
        )
        return {**terms, "lr": lr}

    def log(self, step: int, lr: float, weight: float, window: StepWindow, bar) -> None:
        values = {
            "lr": lr,
            "weight": weight,
            "tokens_per_s": window.tokens_per_s(),
            "flops": self.compute(step),
        }
        values.update(window.means(self.bk.device, self.bk))  # the window's host sync
        values["train_seconds"] = self.clock.read()
        self.metrics.write("train", step, self.tokens, values)
        bar.set_postfix(loss=f"{values['loss']:.3f}", w=f"{weight:.2f}")
        window.reset()

    def validate(self, step: int) -> float:
        values = validation.score(
            objectives.validation_spec(self.guidance),
            self.model,
            self.val_data,
            self.block,
            self.spec["eval_tokens"],
            self.micro,
            self.bk,
            sources=self.val_sources,
            chunk_tokens=self.spec["loss_chunk_tokens"],
            tokenizer=self.tokenizer,
        )
        loss = values["val_loss"]
        values = {
            "val_loss": loss,
            "val_ppl": math.exp(min(loss, 50.0)),
            **values,
            "flops": self.compute(step),
        }
        self.metrics.write("eval", step, self.tokens, values)
        return loss

    def finish(self, val_loss: float) -> dict:
        """The summary, and the run's outputs published (main process)."""
        job, bk = self.job, self.bk
        if math.isnan(val_loss):  # resumed at the final step: take the last recorded evaluation
            val_loss = [r for r in self.metrics.records() if r["kind"] == "eval"][-1]["val_loss"]
        summary = {
            "run": job.name,
            "schedule": self.guidance["schedule"] if self.teacher is not None else "",
            "final_val_loss": val_loss,
            "final_val_ppl": math.exp(min(val_loss, 50.0)),
            "steps": self.spec["steps"],
            "tokens": self.tokens,
            "parameters": count_parameters(bk.unwrap(self.model)),
            "flops": self.compute.summary(),
            "seed": job.seed,
            "fold": job.fold,
            "objective": self.objective.name,
            "val_measure": self.objective.validation,  # elbo, answer_elbo: val_loss is a bound
            "config_hash": self.config_hash,
            "versions": ckpt.versions(),
            "data": {
                "train_shard_hash": file_hash(job.inputs.train_shard),
                "tokenizer_hash": self.tokenizer_hash,
            },
            "processes": bk.world,
            "backend": bk.describe(),
            "settings": job.run,
        }
        weights = bk.model_state(self.model)
        if bk.is_main:
            publish(
                self.out, bk.unwrap(self.model), self.tokenizer, weights, summary, self.checkpointer.remote
            )
        bk.barrier("done")
        return summary

    def _progress_bar(self, start: int):
        if not (self.job.progress and self.bk.is_main):
            return _NoBar()
        from tqdm.auto import tqdm

        return tqdm(
            total=self.spec["steps"], initial=start, desc=self.out.name, dynamic_ncols=True, disable=None
        )


class Compute:
    """The model FLOPs a run has spent after a number of steps (`sdce.flops`): the student's
    training, its teacher's forward on the steps the teacher runs (a decayed teacher is not
    run) and the teacher's fixed cost (a cache pass, its own training), counted at step 0."""

    def __init__(self, model_config, teacher, guidance: dict, spec: dict):
        self.steps, block = spec["steps"], spec["block_size"]
        steps = self.steps
        self.tokens_per_step = spec["batch_size"] * block
        self.student = flops.of_config(model_config).train_per_token(block)
        self.teacher, self.fixed = flops.teacher_cost(teacher, block)
        runs = [teacher is not None and guidance_weight(s, guidance, steps) > 0 for s in range(steps)]
        self.teacher_steps = np.concatenate([[0], np.cumsum(runs)])

    def __call__(self, steps: int) -> float:
        teacher_steps = int(self.teacher_steps[steps])
        work = steps * self.student + teacher_steps * self.teacher
        return float(self.tokens_per_step * work + self.fixed)

    def summary(self) -> dict:
        return {
            "student_per_token": self.student,
            "teacher_per_token": self.teacher,
            "teacher_fixed": self.fixed,
            "tokens_per_step": self.tokens_per_step,
            "teacher_steps": int(self.teacher_steps[-1]),
            "total": self(self.steps),
        }


class _NoBar:
    def update(self, n: int) -> None: ...

    def set_postfix(self, **kwargs) -> None: ...

    def close(self) -> None: ...


def publish(out: Path, model, tokenizer, weights: dict, summary: dict, remote=None) -> None:
    """The run's outputs: model/, milestones/, metrics.jsonl and summary.json (last), each
    moved into place whole; with a remote, a copy under final/ (summary.json last)."""
    from sdce import storage

    work = out / "work"
    with atomic_dir(out / "model") as tmp:
        model.save_pretrained(str(tmp), state_dict=weights)
        tokenizer.save_pretrained(str(tmp))
    with atomic_dir(out / "milestones") as tmp:
        if (work / "milestones").exists():
            shutil.copytree(work / "milestones", tmp, dirs_exist_ok=True)
    write_text(out / "metrics.jsonl", (work / "metrics.jsonl").read_text())
    write_json(out / "summary.json", summary)
    if remote is not None:
        remote.upload_dir(out / "model", storage.join(storage.FINAL, "model"))
        remote.upload_file(out / "metrics.jsonl", storage.join(storage.FINAL, "metrics.jsonl"))
        remote.upload_file(out / "summary.json", storage.join(storage.FINAL, "summary.json"))


def tokens_per_second(records: list[dict]) -> float:
    vals = [r["tokens_per_s"] for r in records if r.get("kind") == "train"]
    return float(np.median(vals)) if vals else float("nan")


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


def micro_batch(spec: dict, world: int) -> tuple[int, int]:
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
