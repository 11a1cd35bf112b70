"""The training loop: one loop for every objective and backend.

The objective is a name in `sdce.losses.LOSSES`; the teacher (if any) produces
a `GuidanceSignal`; a backend (`sdce.backends`: accelerate on CPU/CUDA with DDP or
FSDP, or torch_xla) supplies the device, mixed precision and the process group. A
run folder holds:

    model/          final model + tokenizer (save_pretrained)      [output]
    milestones/     words_<N>/ models kept at words-seen milestones (never rotated) [output]
    metrics.jsonl   train and eval records                         [output]
    summary.json    final numbers, parameter count, versions       [output]
    work/           live metrics, rotating checkpoints and milestones (kept across
                    failures; copied to checkpoint_uri when one is given)
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

from sdce import backends, objectives, trackers
from sdce import checkpoint as ckpt
from sdce import config as cfg
from sdce.backends import TrainingError
from sdce.data import batches
from sdce.data.shards import load_shard, sidecar
from sdce.evaluation import validation
from sdce.io import atomic_dir, read_json, stable_hash, write_json
from sdce.model import build_model, count_parameters
from sdce.schedules import guidance_weight


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


def run_hash(run: dict, seed: int, train_meta: dict, has_teacher: bool) -> str:
    """What a checkpoint must match to be resumed: the run's settings, seed and data
    (not its experiment trackers, which only watch)."""
    training = {k: v for k, v in run["training"].items() if k != "tracking"}
    settings = {**run, "training": training}
    return stable_hash({"run": settings, "seed": seed, "train": train_meta, "teacher": has_teacher})


def _check_resumable(folder: Path, run: dict, seed: int, train_shard: str, has_teacher: bool) -> None:
    """Refuse an explicit checkpoint to resume from that is incomplete or of other settings."""
    if not (folder / ckpt.STATE).is_file():
        raise TrainingError(f"resume from {folder}: not a complete checkpoint (no {ckpt.STATE})")
    expected = run_hash(run, seed, read_json(sidecar(train_shard)), has_teacher)
    state = read_json(folder / ckpt.STATE)
    if state.get("config_hash") != expected:
        raise TrainingError(
            f"resume from {folder}: it was written at step {state.get('step')} with other settings, "
            "seed or training data than this run's (config hash differs); start without it"
        )


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


class MetricsLog:
    """Append-only JSONL of metrics; truncated to a checkpoint's step on resume."""

    def __init__(self, path: Path, enabled: bool):
        self.path, self.enabled = path, enabled
        self.trackers = trackers.Trackers([])  # experiment trackers get every record too

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
            self.trackers.log(record)


def train(
    run: dict,
    *,
    name: str,
    train_shard: str,
    val_shard: str,
    tokenizer_dir: str,
    out_dir: str,
    seed: int,
    fold: str = "main",
    teacher_path: str | None = None,
    threads: int = 1,
    resume: bool = True,
    progress: bool = True,
    stop_after: int | None = None,
    processes: int = 1,
    backend: str = "auto",
    checkpoint_uri: str | None = None,
    resume_from: str | None = None,
) -> dict:
    """Train one run (validated `run` slice: model, training, guidance) with one seed.

    `processes` local processes on `backend` (`sdce.backends`: accelerate on CPU/CUDA,
    or XLA) run the same loop, `_train_process`, each on its slice of every global
    batch; `threads` is the job's total. With `checkpoint_uri` (gs://) checkpoints,
    metrics and the final outputs are copied to the bucket and a run on a machine
    without local checkpoints resumes from the bucket's newest. Everything that can be
    refused (backend settings, the batch split, credentials, the bucket) is refused
    here, before a process starts. `stop_after` ends the run after that step's
    checkpoint, as a preemption would. `resume_from` (a `step_N` checkpoint folder, of this
    run folder or another one) resumes from that checkpoint instead of this folder's newest;
    it must have been written with the same settings and data.
    """
    from sdce import storage

    spec = run["training"]
    trackers.check(spec["tracking"])
    if resume_from is not None:
        _check_resumable(Path(resume_from), run, seed, train_shard, teacher_path is not None)
    backend = backends.resolve(backend)
    processes = backends.resolve_processes(processes, backend)
    backends.check(spec, run["model"], backend, processes)
    if backend != "xla":  # XLA's world (devices x hosts) is known inside its processes
        _micro_batch(spec, processes)
    storage.open_remote(checkpoint_uri)
    kwargs = dict(
        run=run,
        name=name,
        train_shard=str(train_shard),
        val_shard=str(val_shard),
        tokenizer_dir=str(tokenizer_dir),
        out_dir=str(out_dir),
        seed=seed,
        fold=fold,
        teacher_path=str(teacher_path) if teacher_path else None,
        threads=max(1, threads // processes),
        resume=resume,
        progress=progress,
        stop_after=stop_after,
        backend_name=backend,
        checkpoint_uri=checkpoint_uri,
        resume_from=str(resume_from) if resume_from is not None else None,
    )
    result = backends.launch(_train_process, kwargs, backend=backend, processes=processes)
    if result is None:  # XLA processes report through the run folder
        summary = Path(out_dir) / "summary.json"
        done = ckpt.list_checkpoints(Path(out_dir) / "work" / "checkpoints")
        if stop_after is not None and done and int(done[-1].name.split("_")[1]) < spec["steps"]:
            return {"stopped_at": int(done[-1].name.split("_")[1])}
        return json.loads(summary.read_text())
    return result


def _train_process(
    run: dict,
    *,
    name: str,
    train_shard: str,
    val_shard: str,
    tokenizer_dir: str,
    out_dir: str,
    seed: int,
    fold: str,
    teacher_path: str | None,
    threads: int,
    resume: bool,
    progress: bool,
    stop_after: int | None,
    backend_name: str,
    checkpoint_uri: str | None,
    resume_from: str | None = None,
) -> dict:
    """The loop, in one process of `train`."""
    from sdce import storage
    from sdce.data.tokenizer import load as load_tokenizer

    spec, guidance = run["training"], run["guidance"]
    out = Path(out_dir)
    work = out / "work"
    ckpt_dir = work / "checkpoints"
    milestone_dir = work / "milestones"  # published to out/milestones at the end
    torch.set_num_threads(threads)
    hf_logging.disable_progress_bar()
    bk = backends.create(spec, backend_name)
    main, device = bk.is_main, bk.device
    remote = storage.Remote(checkpoint_uri) if checkpoint_uri else None

    tokenizer = load_tokenizer(tokenizer_dir)
    train_data, train_meta = load_shard(train_shard)
    val_data, _ = load_shard(val_shard)
    block = spec["block_size"]
    micro, accum = _micro_batch(spec, bk.world)
    words_per_token = train_meta["words"] / max(train_meta["tokens"], 1)
    # the teacher is loaded and checked on the host, then moved to the device
    objective = objectives.of(guidance)
    teacher = objectives.load_teacher(guidance, teacher_path, tokenizer, device, train_shard=train_shard)
    aux = objectives.aux_weights(run)
    config_hash = run_hash(run, seed, train_meta, teacher_path is not None)

    model = build_model(run["model"], tokenizer, block, seed)
    if spec["gradient_checkpointing"]:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model = bk.place(model)
    optimizer = _optimizer(model, spec)
    scheduler = _scheduler(optimizer, spec)

    metrics = MetricsLog(work / "metrics.jsonl", main)
    pending = cfg.milestone_words(spec["milestones"])
    start_step, tokens_seen = 0, 0
    if resume and remote is not None and resume_from is None and bk.is_local_main:
        # a machine without this run's checkpoints (preempted, rescheduled) takes the
        # bucket's newest, with the metrics and milestones written up to it
        pulled = ckpt.pull_latest(remote, ckpt_dir, config_hash)
        if pulled is not None and remote.exists("metrics.jsonl"):
            remote.download_file("metrics.jsonl", work / "metrics.jsonl")
            remote.download_dir("milestones", milestone_dir)
    bk.barrier("pull")
    last = ckpt.latest(ckpt_dir, config_hash) if resume else None
    if resume_from is not None:  # an explicit checkpoint (checked in `train`)
        last = Path(resume_from)
        theirs = last.parent.parent / "metrics.jsonl"  # its run's work/metrics.jsonl
        if main and last.parent.resolve() != ckpt_dir.resolve() and theirs.exists():
            work.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(theirs, work / "metrics.jsonl")
    state = None
    if last is not None:
        from transformers import AutoModelForCausalLM

        state = ckpt.load_trainer_state(last)
        if hasattr(model, "peft_config"):  # a LoRA run checkpoints its adapter weights only
            from peft import load_peft_weights, set_peft_model_state_dict

            set_peft_model_state_dict(model, load_peft_weights(str(last / "model")))
        else:
            weights = AutoModelForCausalLM.from_pretrained(str(last / "model")).state_dict()
            model.load_state_dict(weights)
        scheduler.load_state_dict(state["scheduler"])
        ckpt.set_rng_state(state["rng"])
        info = json.loads((last / ckpt.STATE).read_text())
        start_step, tokens_seen = info["step"], info["tokens"]
        metrics.truncate(start_step)
        bk.print(f"resumed from {last} at step {start_step}")
    else:
        if main:  # checkpoints and milestones of another config are stale
            shutil.rmtree(ckpt_dir, ignore_errors=True)
            shutil.rmtree(milestone_dir, ignore_errors=True)
        metrics.reset()

    model, optimizer = bk.prepare(model, optimizer)
    if state is not None:
        bk.load_optimizer_state(model, optimizer, state["optimizer"])
        if "scaler" in state and bk.scaler() is not None:
            bk.scaler().load_state_dict(state["scaler"])
    model.train()
    n_params = count_parameters(bk.unwrap(model))
    rank, world = bk.rank, bk.world
    tokens_per_step = spec["batch_size"] * block

    def run_eval(step: int) -> float:
        measure = validation.MEASURES[objective.validation]
        loss, n = measure(model, val_data, block, spec["eval_tokens"], micro, bk)
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

    metrics.trackers = trackers.open_trackers(
        spec["tracking"],
        enabled=main,
        run_dir=out,
        name=f"{name}-seed{seed}",
        config={**run, "seed": seed},
        start_step=start_step,
    )
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
            sync = bk.no_sync(model) if m < accum - 1 else nullcontext()
            with sync:
                with bk.autocast():
                    batch = objective.batch(x, y, None, guidance)
                    outputs = model(**batch.inputs)
                    signal = teacher.signal(x, offsets=window_offsets) if use_teacher else None
                    out_terms = objectives.compute(
                        objective, outputs.logits, batch, signal, weight, guidance, aux, outputs
                    )
                bk.backward(out_terms["loss"] / accum)
            for k, v in out_terms.items():
                step_terms[k] = step_terms.get(k, 0.0) + v.detach() / accum
            bk.mark_step()  # XLA: one graph per micro-batch (forward + backward)
        lr = scheduler.get_last_lr()[0]
        grad_norm = bk.clip_and_step(model, optimizer, spec["grad_clip"] or float("inf"))
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        bk.mark_step()  # XLA: the optimizer step's graph
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
            means = {k: torch.stack([t.float().to(device) for t in v]).mean() for k, v in window.items()}
            if world > 1:
                means = {k: bk.reduce(v, "mean") for k, v in means.items()}
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
            folder = milestone_dir / f"words_{milestone}"
            weights = bk.model_state(model)  # every process: FSDP gathers
            if main and not (folder / ckpt.STATE).exists():
                state = {
                    "step": done,
                    "tokens": tokens_seen,
                    "words": words_seen,
                    "milestone": milestone,
                    "config_hash": config_hash,
                    "seed": seed,
                    "run": name,
                }
                save_milestone(folder, bk.unwrap(model), tokenizer, state, model_state=weights)
                if remote is not None:
                    remote.upload_dir(folder, f"milestones/{folder.name}", last=ckpt.STATE)
        if done % spec["checkpoint_interval"] == 0 or done == spec["steps"]:
            bk.barrier("checkpoint")
            weights = bk.model_state(model)
            optimizer_state = bk.optimizer_state(model, optimizer)
            if main:
                folder = ckpt_dir / f"step_{done:07d}"
                ckpt.save(
                    folder,
                    bk.unwrap(model),
                    tokenizer,
                    optimizer_state,
                    scheduler,
                    {
                        "step": done,
                        "tokens": tokens_seen,
                        "words": round(tokens_seen * words_per_token),
                        "config_hash": config_hash,
                        "seed": seed,
                        "processes": world,
                    },
                    model_state=weights,
                    scaler=bk.scaler(),
                )
                ckpt.rotate(ckpt_dir, spec["save_total_limit"])
                if remote is not None:  # synchronous: the step waits for the upload
                    ckpt.push(remote, folder, spec["save_total_limit"])
                    remote.upload_file(work / "metrics.jsonl", "metrics.jsonl")
            bk.barrier("checkpoint-saved")
            if stop_after is not None and done >= stop_after and done < spec["steps"]:
                if bar is not None:
                    bar.close()
                metrics.trackers.close()
                return {"stopped_at": done}
    if bar is not None:
        bar.close()
    metrics.trackers.close()

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
        "fold": fold,
        "objective": guidance["objective"],
        "config_hash": config_hash,
        "versions": ckpt.versions(),
        "processes": world,
        "backend": bk.describe(),
    }
    weights = bk.model_state(model)
    if main:
        publish(out, bk.unwrap(model), tokenizer, weights, summary, remote)
    bk.barrier("done")
    return summary


def publish(out: Path, model, tokenizer, weights: dict, summary: dict, remote=None) -> None:
    """The run's outputs: model/, milestones/, metrics.jsonl and summary.json (last), each
    moved into place whole; with a remote, a copy under final/ (summary.json last)."""
    from sdce import storage
    from sdce.io import write_text

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


def save_milestone(folder: Path, model, tokenizer, state: dict, model_state: dict | None = None) -> None:
    with atomic_dir(folder) as tmp:
        model.save_pretrained(str(tmp), state_dict=model_state)
        tokenizer.save_pretrained(str(tmp))
        write_json(tmp / ckpt.STATE, {**state, "versions": ckpt.versions()})


def tokens_per_second(records: list[dict]) -> float:
    vals = [r["tokens_per_s"] for r in records if r.get("kind") == "train"]
    return float(np.median(vals)) if vals else float("nan")
