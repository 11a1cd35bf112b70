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


def versions() -> dict:
    import transformers

    import sdce

    out = {"sdce": sdce.__version__, "torch": torch.__version__, "transformers": transformers.__version__}
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
