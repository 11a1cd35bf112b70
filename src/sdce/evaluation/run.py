"""Evaluate a trained model (or every milestone of a run) the way the study reports it:
validation perplexity, minimal pairs (the grammar's own, real BLiMP when configured), and
the BabyLM zero-shot suite when configured."""

from __future__ import annotations

from pathlib import Path

import torch

from sdce import checkpoint as ckpt
from sdce.evaluation.perplexity import evaluate_perplexity
from sdce.io import read_json
from sdce.losses import CHUNK_TOKENS


def evaluate_model(
    model_dir: str | Path,
    val_shard: str,
    block_size: int,
    spec: dict,
    pair_folders: dict[str, str],
    measure: dict | None = None,
    *,
    chunk_tokens: int | None = CHUNK_TOKENS,
) -> dict:
    from transformers import AutoTokenizer

    from sdce.evaluation.minimal_pairs import evaluate_minimal_pairs
    from sdce.model import load_model

    model = load_model(model_dir, dtype=torch.float32).eval()  # once, for every score below
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    result = evaluate_perplexity(
        str(model_dir),
        val_shard,
        block_size,
        spec["eval_tokens"],
        spec["batch_size"],
        measure,
        chunk_tokens=chunk_tokens,
        model=model,
        tokenizer=tokenizer,
    )
    folders = dict(pair_folders)
    if spec.get("blimp_path"):
        folders["blimp"] = spec["blimp_path"]
    if not folders and not spec.get("babylm_suite_path"):
        return result
    pairs = {}
    for name, folder in sorted(folders.items()):
        limit = spec["max_pairs_per_paradigm"] if name != "synthetic" else None
        if not Path(folder).exists():
            raise FileNotFoundError(f"minimal-pair folder for '{name}' does not exist: {folder}")
        r = evaluate_minimal_pairs(
            model, tokenizer, folder, batch_size=spec["batch_size"], max_pairs_per_paradigm=limit
        )
        pairs[name] = r
        # named for the protocol that scored them: sdce's own (BOS-conditioned, ties 0.5)
        result[f"sdce_{name}_accuracy"] = r["macro_accuracy"]
        result[f"sdce_{name}_tie_rate"] = r["tie_rate"]
    result["minimal_pairs"] = pairs
    if spec.get("babylm_suite_path"):
        # the leaderboard's protocol: the official BabyLM 2025 pipeline (causal or mlm backend)
        from sdce.evaluation.protocols import LEADERBOARD_PROTOCOL, zero_shot

        suite = zero_shot(
            model,
            tokenizer,
            spec["babylm_suite_path"],
            LEADERBOARD_PROTOCOL,
            batch_size=spec["batch_size"],
            max_items=spec["max_pairs_per_paradigm"],
        )
        for task in suite["tasks"].values():
            task.pop("surprisal", None)
            task.pop("prev_surprisal", None)
        result["babylm"] = suite
        for task, score in suite["leaderboard"].items():
            result[f"{LEADERBOARD_PROTOCOL}_{task}"] = score
    return result


def evaluate_milestones(
    run_dir: str | Path,
    val_shard: str,
    block_size: int,
    spec: dict,
    pair_folders: dict[str, str],
    measure: dict | None = None,
    *,
    chunk_tokens: int | None = CHUNK_TOKENS,
) -> list[dict]:
    """One evaluation per milestone checkpoint of a run, in order of words seen."""
    root = Path(run_dir) / "milestones"
    found = (
        sorted(
            (p for p in root.glob("words_*") if (p / ckpt.STATE).exists()),
            key=lambda p: int(p.name.split("_")[1]),
        )
        if root.exists()
        else []
    )
    # intermediate checkpoints get the fast suite, as the official pipeline scores them
    spec = {**spec, "babylm_suite_path": spec.get("babylm_fast_path") or spec.get("babylm_suite_path")}
    out = []
    for folder in found:
        state = read_json(folder / ckpt.STATE)
        r = evaluate_model(
            folder, val_shard, block_size, spec, pair_folders, measure, chunk_tokens=chunk_tokens
        )
        r.pop("minimal_pairs", None)
        r.pop("babylm", None)
        out.append(
            {
                "milestone": state["milestone"],
                "revision": revision_name(state["milestone"]),
                "words": state["words"],
                "step": state["step"],
                "tokens": state["tokens"],
                **r,
            }
        )
    return out


def revision_name(words: int) -> str:
    """The official pipeline's name for the checkpoint at `words` words (chck_<N>M, its
    `--revision_name`); words_<N> where the milestone is not a whole number of millions."""
    return f"chck_{words // 1_000_000}M" if words and words % 1_000_000 == 0 else f"words_{words}"
