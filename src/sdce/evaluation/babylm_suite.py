"""The BabyLM 2025 zero-shot suite for causal LMs, read from the official data files.

Tasks (folder under the suite root -> leaderboard score), following the official pipeline
(``babylm/evaluation-pipeline-2025``, ``evaluation_pipeline/sentence_zero_shot``):

``blimp`` (``blimp_filtered/``)
    minimal pairs, :mod:`sdce.evaluation.minimal_pairs`; score = mean accuracy over paradigms.
``blimp_supplement`` (``supplement_filtered/``)
    minimal pairs without UID/field: the file stem names the paradigm, field and phenomenon are
    ``"supplement"`` (as the official reader sets them); score = mean accuracy over the 5 files.
``ewok`` (``ewok_filtered/``)
    each line holds ``Context1``, ``Context2``, ``Target1``, ``Target2``; the official reader
    scores ``" " + Target1`` and ``" " + Target2`` as continuations of ``Context1`` and counts the
    line correct when Target1 is more likely. (``Context2`` is not used for a causal LM: every
    item also appears with contexts and targets swapped on another line, which covers the
    converse comparison.) Score = mean accuracy over the 11 domains.
``entity_tracking`` (``entity_tracking/``)
    ``input_prefix`` plus 5 ``options`` (the first is correct), each option scored as a
    continuation of the prefix; correct when the first option has the highest log-probability.
    Subsets are ``<file stem>_<numops>_ops``; score = mean over the three files (``regular``,
    ``ambiref``, ``move_contents``) of the mean over their ``numops`` subsets (official).
``wug_adj`` (``wug_adj_nominalization/``)
    each line holds two tab-separated prompts ending in the ``-ity`` and the ``-ness``
    nominalisation of a nonce adjective, and ``ratio``, the human preference for the first. Both
    prompts are scored as whole texts; score = Spearman correlation between the model's
    preference for the first, ``logp(first) - logp(second)``, and ``ratio``. (The official
    pipeline correlates ``softmax([logp1, logp2])[0]``; that is a monotone function of the same
    difference, hence the same Spearman, except that in float32 it saturates to 1.0 for large
    differences and creates artificial ties, which ranking the difference avoids.)

Ties (two candidates with exactly equal log-probabilities) get partial credit: 0.5 for a pair,
``1/k`` when the correct option shares the maximum with ``k - 1`` others; the official argmax
credits them as correct (see :mod:`sdce.evaluation.minimal_pairs`). All log-probabilities
condition on BOS/EOS, first token included (:mod:`sdce.evaluation.scoring`).

``reading`` (eye-tracking and self-paced reading regressions) is not implemented: the official
script scores each word *without* its leading space after the context (a tokenisation artefact
for byte-level BPE) and fits statsmodels OLS models with interaction baselines; doing it both
right and comparable to the leaderboard is a separate piece of work.

``max_items_per_task`` caps the items scored per task, taking them round-robin over the task's
subsets (first item of every paradigm/file, then the second, ...), so a small cap still touches
many subsets; it is deterministic.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from sdce.evaluation.minimal_pairs import (
    jsonl_files,
    load_minimal_pairs,
    read_jsonl,
    score_minimal_pairs,
    summarise_pair_scores,
)
from sdce.evaluation.scoring import continuation_logprobs, sequence_logprobs

__all__ = [
    "TASKS",
    "TASK_FOLDERS",
    "evaluate_blimp",
    "evaluate_blimp_supplement",
    "evaluate_entity_tracking",
    "evaluate_ewok",
    "evaluate_wug_adj",
    "format_leaderboard",
    "load_entity_tracking",
    "load_ewok",
    "load_wug_adj",
    "run_suite",
]

TASK_FOLDERS = {
    "blimp": "blimp_filtered",
    "blimp_supplement": "supplement_filtered",
    "ewok": "ewok_filtered",
    "entity_tracking": "entity_tracking",
    "wug_adj": "wug_adj_nominalization",
}
TASKS = tuple(TASK_FOLDERS)
ENTITY_TRACKING_SPLITS = ("regular", "ambiref", "move_contents")


# ----------------------------------------------------------------------------- helpers


def _round_robin(items: Sequence[dict], key: str, limit: int | None) -> list[dict]:
    """At most ``limit`` items, taken in turn from each ``item[key]`` group (input order)."""
    if limit is None:
        return list(items)
    if limit < 1:
        raise ValueError(f"max_items must be >= 1, got {limit}")
    groups: dict[str, list[dict]] = defaultdict(list)
    for item in items:
        groups[item[key]].append(item)
    queues = list(groups.values())
    taken: list[dict] = []
    depth = 0
    while len(taken) < limit and any(depth < len(q) for q in queues):
        for queue in queues:
            if depth < len(queue) and len(taken) < limit:
                taken.append(queue[depth])
        depth += 1
    return taken


def _mean(values: Sequence[float]) -> float:
    return float(sum(values) / len(values)) if values else float("nan")


def _require(record: dict, keys: Sequence[str], where: str) -> None:
    missing = [k for k in keys if k not in record]
    if missing:
        raise ValueError(f"{where}: missing field(s) {', '.join(missing)}")


def _require_str(record: dict, key: str, where: str) -> str:
    value = record[key]
    if not isinstance(value, str) or not value:
        raise ValueError(f"{where}: field {key} must be a non-empty string")
    return value


def _best_credit(scores: Sequence[float], correct: int = 0) -> float:
    """1/k if the correct candidate is among the k candidates tied at the maximum, else 0."""
    best = max(scores)
    winners = [i for i, s in enumerate(scores) if s == best]
    return 1.0 / len(winners) if correct in winners else 0.0


def _nan_to_none(value: float) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value


# ----------------------------------------------------------------------------- BLiMP


def _minimal_pair_task(model, tokenizer, records, *, max_items, batch_size) -> dict:
    records = _round_robin(records, "UID", max_items)
    result = summarise_pair_scores(score_minimal_pairs(model, tokenizer, records, batch_size=batch_size))
    return {"score": result["macro_accuracy"], "metric": "accuracy", "n_items": result["n_pairs"], **result}


def evaluate_blimp(
    model, tokenizer, folder: str | Path, *, max_items: int | None = None, batch_size: int = 32
) -> dict:
    """BLiMP (filtered) minimal pairs; ``score`` is the mean accuracy over paradigms."""
    return _minimal_pair_task(
        model, tokenizer, load_minimal_pairs(folder), max_items=max_items, batch_size=batch_size
    )


def evaluate_blimp_supplement(
    model, tokenizer, folder: str | Path, *, max_items: int | None = None, batch_size: int = 32
) -> dict:
    """BLiMP supplement: paradigm = file stem; ``score`` is the mean accuracy over files."""
    records = load_minimal_pairs(folder, default_field="supplement", default_term="supplement")
    return _minimal_pair_task(model, tokenizer, records, max_items=max_items, batch_size=batch_size)


# ----------------------------------------------------------------------------- EWoK


def load_ewok(folder: str | Path) -> list[dict]:
    """EWoK items: ``context`` (Context1), ``target_good`` (Target1), ``target_bad`` (Target2)."""
    items = []
    for path in jsonl_files(folder):
        for lineno, rec in read_jsonl(path):
            where = f"{path}:{lineno}"
            _require(rec, ("Context1", "Target1", "Target2"), where)
            items.append(
                {
                    "context": _require_str(rec, "Context1", where),
                    "target_good": _require_str(rec, "Target1", where),
                    "target_bad": _require_str(rec, "Target2", where),
                    "domain": str(rec.get("Domain") or path.stem),
                    "context_type": str(rec.get("ContextType", "unknown")),
                    "source": where,
                }
            )
    return items


def evaluate_ewok(
    model, tokenizer, folder: str | Path, *, max_items: int | None = None, batch_size: int = 32
) -> dict:
    """EWoK: logp(" " + Target1 | Context1) vs logp(" " + Target2 | Context1), per domain."""
    items = _round_robin(load_ewok(folder), "domain", max_items)
    contexts = [it["context"] for it in items] * 2
    continuations = [" " + it["target_good"] for it in items] + [" " + it["target_bad"] for it in items]
    logps = continuation_logprobs(model, tokenizer, contexts, continuations, batch_size=batch_size)
    n = len(items)
    credits = [_best_credit([good, bad]) for good, bad in zip(logps[:n], logps[n:], strict=True)]
    by_domain: dict[str, list[float]] = defaultdict(list)
    by_context_type: dict[str, list[float]] = defaultdict(list)
    for item, credit in zip(items, credits, strict=True):
        by_domain[item["domain"]].append(credit)
        by_context_type[item["context_type"]].append(credit)
    per_domain = {d: {"accuracy": _mean(c), "n": len(c)} for d, c in by_domain.items()}
    return {
        "score": _mean([v["accuracy"] for v in per_domain.values()]),
        "metric": "accuracy",
        "n_items": n,
        "micro_accuracy": _mean(credits),
        "tie_rate": sum(1 for c in credits if c == 0.5) / n if n else float("nan"),
        "per_domain": per_domain,
        "per_context_type": {k: _mean(v) for k, v in sorted(by_context_type.items())},
    }


# ----------------------------------------------------------------------------- entity tracking


def load_entity_tracking(folder: str | Path) -> list[dict]:
    """Entity-tracking items: ``prefix``, ``options`` (first correct), ``split``, ``subset``."""
    items = []
    for path in jsonl_files(folder):
        for lineno, rec in read_jsonl(path):
            where = f"{path}:{lineno}"
            _require(rec, ("input_prefix", "options", "numops"), where)
            options = rec["options"]
            if not isinstance(options, list) or len(options) < 2:
                raise ValueError(f"{where}: options must be a list of at least 2 strings")
            for option in options:
                if not isinstance(option, str) or not option:
                    raise ValueError(f"{where}: options must be non-empty strings")
            items.append(
                {
                    "prefix": _require_str(rec, "input_prefix", where),
                    "options": list(options),
                    "split": path.stem,
                    "subset": f"{path.stem}_{rec['numops']}_ops",
                    "source": where,
                }
            )
    return items


def evaluate_entity_tracking(
    model, tokenizer, folder: str | Path, *, max_items: int | None = None, batch_size: int = 32
) -> dict:
    """Entity tracking: correct when the first option is the most likely continuation."""
    items = _round_robin(load_entity_tracking(folder), "subset", max_items)
    contexts = [it["prefix"] for it in items for _ in it["options"]]
    continuations = [option for it in items for option in it["options"]]
    logps = continuation_logprobs(model, tokenizer, contexts, continuations, batch_size=batch_size)
    credits = []
    pos = 0
    for item in items:
        k = len(item["options"])
        credits.append(_best_credit(logps[pos : pos + k], correct=0))
        pos += k
    by_subset: dict[str, list[float]] = defaultdict(list)
    split_of: dict[str, str] = {}
    for item, credit in zip(items, credits, strict=True):
        by_subset[item["subset"]].append(credit)
        split_of[item["subset"]] = item["split"]
    per_subset = {s: {"accuracy": _mean(c), "n": len(c)} for s, c in sorted(by_subset.items())}
    per_split: dict[str, float] = {}
    for split in sorted(set(split_of.values())):
        per_split[split] = _mean([v["accuracy"] for s, v in per_subset.items() if split_of[s] == split])
    return {
        "score": _mean(list(per_split.values())),
        "metric": "accuracy",
        "n_items": len(items),
        "micro_accuracy": _mean(credits),
        "per_split": per_split,
        "per_subset": per_subset,
    }


# ----------------------------------------------------------------------------- wug


def load_wug_adj(folder: str | Path) -> list[dict]:
    """Wug adjective nominalisation items: two prompts and the human ratio for the first."""
    items = []
    for path in jsonl_files(folder):
        for lineno, rec in read_jsonl(path):
            where = f"{path}:{lineno}"
            _require(rec, ("sentences", "ratio"), where)
            sentences = _require_str(rec, "sentences", where).split("\t")
            if len(sentences) != 2 or not all(sentences):
                raise ValueError(f"{where}: sentences must be two tab-separated texts")
            try:
                ratio = float(rec["ratio"])
            except (TypeError, ValueError) as err:
                raise ValueError(f"{where}: ratio must be a number, got {rec['ratio']!r}") from err
            items.append({"sentences": sentences, "ratio": ratio, "group": path.stem, "source": where})
    return items


def evaluate_wug_adj(
    model, tokenizer, folder: str | Path, *, max_items: int | None = None, batch_size: int = 32
) -> dict:
    """Spearman correlation between logp(first) - logp(second) and the human ratio."""
    items = _round_robin(load_wug_adj(folder), "group", max_items)
    n = len(items)
    texts = [it["sentences"][0] for it in items] + [it["sentences"][1] for it in items]
    logps = sequence_logprobs(model, tokenizer, texts, batch_size=batch_size)
    preference = np.asarray(logps[:n], dtype=np.float64) - np.asarray(logps[n:], dtype=np.float64)
    ratios = np.asarray([it["ratio"] for it in items], dtype=np.float64)
    if n >= 2 and np.ptp(preference) > 0 and np.ptp(ratios) > 0:
        rho = float(spearmanr(preference, ratios)[0])
    else:
        rho = float("nan")  # undefined: fewer than two items or a constant side
    return {
        "score": _nan_to_none(rho),
        "metric": "spearman",
        "n_items": n,
        "spearman": _nan_to_none(rho),
        "mean_preference_first": float(preference.mean()) if n else None,
    }


# ----------------------------------------------------------------------------- suite

EVALUATORS: dict[str, Callable[..., dict]] = {
    "blimp": evaluate_blimp,
    "blimp_supplement": evaluate_blimp_supplement,
    "ewok": evaluate_ewok,
    "entity_tracking": evaluate_entity_tracking,
    "wug_adj": evaluate_wug_adj,
}


def run_suite(
    model,
    tokenizer,
    root: str | Path,
    tasks: Sequence[str] | None = None,
    max_items_per_task: int | None = None,
    batch_size: int = 32,
) -> dict:
    """Run the BabyLM 2025 zero-shot tasks found under ``root`` (the ``full_eval`` folder).

    ``tasks`` defaults to every task in :data:`TASKS`; naming one whose folder is missing is an
    error, while the default run only includes tasks whose folder exists (at least one must).
    Returns ``{"leaderboard": {task: score}, "metrics": {task: "accuracy"|"spearman"},
    "tasks": {task: full result}, "max_items_per_task": ...}``.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"BabyLM evaluation folder not found: {root}")
    if tasks is None:
        selected = [t for t in TASKS if (root / TASK_FOLDERS[t]).is_dir()]
        if not selected:
            raise ValueError(f"no BabyLM task folders ({', '.join(TASK_FOLDERS.values())}) under {root}")
    else:
        selected = list(tasks)
        unknown = [t for t in selected if t not in EVALUATORS]
        if unknown:
            raise ValueError(f"unknown task(s) {unknown}; known: {list(TASKS)} (reading is not implemented)")
    results = {}
    for task in selected:
        results[task] = EVALUATORS[task](
            model, tokenizer, root / TASK_FOLDERS[task], max_items=max_items_per_task, batch_size=batch_size
        )
    return {
        "leaderboard": {task: _nan_to_none(res["score"]) for task, res in results.items()},
        "metrics": {task: res["metric"] for task, res in results.items()},
        "tasks": results,
        "max_items_per_task": max_items_per_task,
    }


def format_leaderboard(results: dict) -> str:
    """A markdown table of :func:`run_suite` results: accuracies in %, Spearman's rho as is."""
    lines = ["| task | metric | score | items |", "|---|---|---:|---:|"]
    for task, score in results["leaderboard"].items():
        metric = results["metrics"][task]
        n_items = results["tasks"][task]["n_items"]
        if score is None:
            shown = "n/a"
        elif metric == "accuracy":
            shown = f"{100.0 * score:.2f}"
        else:
            shown = f"{score:.3f}"
        label = "accuracy (%)" if metric == "accuracy" else "Spearman rho"
        lines.append(f"| {task} | {label} | {shown} | {n_items} |")
    return "\n".join(lines) + "\n"
