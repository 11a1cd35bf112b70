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


def save(folder: Path, model, tokenizer, optimizer, scheduler, state: dict, scaler=None) -> None:
    with atomic_dir(folder) as tmp:
        model.save_pretrained(str(tmp / "model"))
        tokenizer.save_pretrained(str(tmp / "model"))
        trainer = {
            "optimizer": optimizer.state_dict(),
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
