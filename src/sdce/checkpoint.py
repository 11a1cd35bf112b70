"""Checkpoints: `step_NNNNNNN/` folders holding the model in `save_pretrained`
form, the tokenizer, `trainer_state.pt` (optimizer, scheduler, RNG states) and
`state.json` (step, tokens, words, config hash, versions). Written atomically;
rotation keeps the newest `save_total_limit`."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import numpy as np
import torch

from sdce.io import atomic_dir, read_json, write_json

STATE = "state.json"


def code_commit() -> str | None:
    """The git commit of the sdce source this process runs ("+dirty" when its files differ
    from it), or None outside a git checkout (an installed wheel, a container)."""
    import subprocess

    src = Path(__file__).resolve().parent
    try:
        head = subprocess.run(
            ["git", "-C", str(src), "rev-parse", "--short=12", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        if head.returncode:
            return None
        dirty = subprocess.run(["git", "-C", str(src), "diff", "--quiet", "HEAD", "--", "."], timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("+dirty" if dirty.returncode else "")


def versions() -> dict:
    import transformers

    import sdce

    out = {"sdce": sdce.__version__, "torch": torch.__version__, "transformers": transformers.__version__}
    commit = code_commit()
    if commit:
        out["sdce_commit"] = commit
    try:
        import torch_xla

        out["torch_xla"] = torch_xla.__version__
    except ImportError:
        pass
    return out


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(
    folder: Path,
    model,
    tokenizer,
    optimizer_state: dict,
    scheduler,
    state: dict,
    *,
    model_state: dict | None = None,
    scaler=None,
) -> None:
    """`model` gives the config; `model_state` (CPU tensors, gathered by the backend) the
    weights, else the model's own. The optimizer state comes gathered too."""
    with atomic_dir(folder) as tmp:
        model.save_pretrained(str(tmp / "model"), state_dict=model_state)
        tokenizer.save_pretrained(str(tmp / "model"))
        trainer = {
            "optimizer": optimizer_state,
            "scheduler": scheduler.state_dict(),
            "rng": rng_state(),
        }
        if scaler is not None:
            trainer["scaler"] = scaler.state_dict()
        torch.save(trainer, tmp / "trainer_state.pt")
        write_json(tmp / STATE, {**state, "versions": versions()})


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints (with a state.json), oldest first."""
    if not root.exists():
        return []
    found = [p for p in root.glob("step_*") if p.is_dir() and (p / STATE).exists()]
    return sorted(found, key=lambda p: int(p.name.split("_")[1]))


def latest(root: Path, config_hash: str) -> Path | None:
    """Newest checkpoint written with the same config; None when there is none."""
    for ckpt in reversed(list_checkpoints(root)):
        if read_json(ckpt / STATE).get("config_hash") == config_hash:
            return ckpt
    return None


def rotate(root: Path, keep: int) -> None:
    ckpts = [c for c in list_checkpoints(root) if not read_json(c / STATE).get("milestone")]
    for old in ckpts[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def load_trainer_state(folder: Path) -> dict:
    return torch.load(folder / "trainer_state.pt", map_location="cpu", weights_only=False)


# Copies in a bucket (sdce.storage.Remote): a checkpoint is pushed after it is written
# locally and pulled when a run starts on a machine that does not have it.
REMOTE_CHECKPOINTS = "checkpoints"


def push(remote, folder: Path, keep: int) -> None:
    """Upload a checkpoint (state.json last) and rotate the bucket's copies like the local ones."""
    remote.upload_dir(folder, f"{REMOTE_CHECKPOINTS}/{folder.name}", last=STATE)
    names = remote.children(REMOTE_CHECKPOINTS)
    steps = sorted((n for n in names if n.startswith("step_")), key=lambda n: int(n.split("_")[1]))
    for old in steps[:-keep]:
        remote.delete(f"{REMOTE_CHECKPOINTS}/{old}")


def pull_latest(remote, root: Path, config_hash: str) -> Path | None:
    """Download the bucket's newest complete checkpoint of this config into `root` unless
    a local one is as new; the local folder (or None)."""
    import json

    local = latest(root, config_hash)
    local_step = int(local.name.split("_")[1]) if local else -1
    names = [n for n in remote.children(REMOTE_CHECKPOINTS) if n.startswith("step_")]
    for name in sorted(names, key=lambda n: int(n.split("_")[1]), reverse=True):
        step = int(name.split("_")[1])
        if step <= local_step:
            break
        key = f"{REMOTE_CHECKPOINTS}/{name}/{STATE}"
        if not remote.exists(key) or json.loads(remote.read_text(key)).get("config_hash") != config_hash:
            continue  # incomplete (no state.json yet) or another config's
        with atomic_dir(root / name) as tmp:
            remote.download_dir(f"{REMOTE_CHECKPOINTS}/{name}", tmp)
        return root / name
    return local


class Checkpointer:
    """A run's checkpoints: save, rotate and push (to the bucket, when the run has one),
    pull from the bucket and restore (full weights, or a LoRA run's adapters), and the
    words-seen milestones, kept beside them and never rotated.

    `work` is the run's work/ folder; `metrics` its MetricsLog (truncated to the restored
    step); `backend` the process's backend (main process, barriers, gathered states).
    """

    def __init__(self, work: Path, config_hash: str, spec: dict, backend, metrics, remote=None):
        self.work, self.config_hash, self.spec = work, config_hash, spec
        self.backend, self.metrics, self.remote = backend, metrics, remote
        self.root, self.milestones = work / "checkpoints", work / "milestones"

    def find(self, resume: bool, resume_from: str | None) -> Path | None:
        """The checkpoint to continue from: an explicit one, else this run's newest (pulled
        from the bucket first when this machine has none), else None."""
        if resume and self.remote is not None and resume_from is None and self.backend.is_local_main:
            # a machine without this run's checkpoints (preempted, rescheduled) takes the
            # bucket's newest, with the metrics and milestones written up to it
            if pull_latest(self.remote, self.root, self.config_hash) is not None:
                if self.remote.exists("metrics.jsonl"):
                    self.remote.download_file("metrics.jsonl", self.metrics.path)
                    self.remote.download_dir("milestones", self.milestones)
        self.backend.barrier("pull")
        if resume_from is not None:  # checked by sdce.job.launch
            last = Path(resume_from)
            theirs = last.parent.parent / "metrics.jsonl"  # its run's work/metrics.jsonl
            if self.backend.is_main and last.parent.resolve() != self.root.resolve() and theirs.exists():
                self.work.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(theirs, self.metrics.path)
            return last
        return latest(self.root, self.config_hash) if resume else None

    def restore(self, folder: Path | None, model, scheduler) -> tuple[dict | None, int, int]:
        """Load `folder` into the model and scheduler (the optimizer after the backend has
        prepared it: `restore_optimizer`); (trainer state, step, tokens). Without a
        checkpoint, stale checkpoints and milestones of another config are removed."""
        if folder is None:
            if self.backend.is_main:
                shutil.rmtree(self.root, ignore_errors=True)
                shutil.rmtree(self.milestones, ignore_errors=True)
            self.metrics.reset()
            return None, 0, 0
        state = load_trainer_state(folder)
        if hasattr(model, "peft_config"):  # a LoRA run checkpoints its adapter weights only
            from peft import load_peft_weights, set_peft_model_state_dict

            set_peft_model_state_dict(model, load_peft_weights(str(folder / "model")))
        else:
            from sdce.model import load_model

            model.load_state_dict(load_model(folder / "model").state_dict())
        scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        info = read_json(folder / STATE)
        self.metrics.truncate(info["step"])
        self.backend.print(f"resumed from {folder} at step {info['step']}")
        return state, info["step"], info["tokens"]

    def restore_optimizer(self, state: dict | None, model, optimizer) -> None:
        if state is None:
            return
        self.backend.load_optimizer_state(model, optimizer, state["optimizer"])
        if "scaler" in state and self.backend.scaler() is not None:
            self.backend.scaler().load_state_dict(state["scaler"])

    def save(self, step: int, tokens: int, model, tokenizer, optimizer, scheduler, extra: dict) -> None:
        """A checkpoint at `step` (every process: FSDP gathers), rotated and pushed."""
        bk = self.backend
        bk.barrier("checkpoint")
        weights = bk.model_state(model)
        optimizer_state = bk.optimizer_state(model, optimizer)
        if bk.is_main:
            folder = self.root / f"step_{step:07d}"
            info = {"step": step, "tokens": tokens, "words": self.metrics.words(tokens), **extra}
            info["config_hash"] = self.config_hash
            save(folder, bk.unwrap(model), tokenizer, optimizer_state, scheduler, info,
                 model_state=weights, scaler=bk.scaler())  # fmt: skip
            rotate(self.root, self.spec["save_total_limit"])
            if self.remote is not None:  # synchronous: the step waits for the upload
                push(self.remote, folder, self.spec["save_total_limit"])
                self.remote.upload_file(self.metrics.path, "metrics.jsonl")
        bk.barrier("checkpoint-saved")

    def milestone(self, words: int, step: int, tokens: int, model, tokenizer, extra: dict) -> None:
        """Keep the model at the `words` milestone (every process: FSDP gathers)."""
        folder = self.milestones / f"words_{words}"
        weights = self.backend.model_state(model)
        if self.backend.is_main and not (folder / STATE).exists():
            info = {"step": step, "tokens": tokens, "words": self.metrics.words(tokens), "milestone": words}
            with atomic_dir(folder) as tmp:
                self.backend.unwrap(model).save_pretrained(str(tmp), state_dict=weights)
                tokenizer.save_pretrained(str(tmp))
                write_json(
                    tmp / STATE, {**info, "config_hash": self.config_hash, **extra, "versions": versions()}
                )
            if self.remote is not None:
                self.remote.upload_dir(folder, f"milestones/{folder.name}", last=STATE)
