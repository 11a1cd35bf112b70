"""Named zero-shot scoring protocols, and the tasks a data folder holds.

The same model on the same BabyLM files gets different numbers under different, defensible
scoring rules (whether the first word is scored, whether a sentence is scored after a space,
how ties count). Every zero-shot score sdce writes names the protocol that made it:

``babylm2025``
    the official BabyLM 2025 pipeline, exactly (:mod:`sdce.evaluation.official`): every
    zero-shot task it has (BLiMP, supplement, EWoK, entity tracking, wug adjective and past
    tense, COMPS, reading), causal and masked (``mlm``) backends. The leaderboard table uses it.
``lm_eval``
    lm-evaluation-harness's own ``blimp`` task definition (``doc_to_text: ""``, choices
    ``[sentence_good, sentence_bad]``, the default ``target_delimiter`` " "): each sentence is
    scored as the continuation ``" " + sentence`` of the harness's prefix token (BOS, else
    EOS), ties go to the first choice, a task's accuracy is the unweighted mean over
    paradigms (``weight_by_size: False``). The harness ships no other BabyLM task, so this
    protocol scores the BLiMP-format tasks (BLiMP and its supplement) of causal models.
``sdce``
    sdce's own (:mod:`sdce.evaluation.babylm_suite`): every text conditioned on BOS/EOS with
    its first token scored, ties credited 0.5, and the wug preference ranked as a log-odds.

:func:`zero_shot` scores a suite folder in the official ``full_eval`` or ``fast_eval`` layout,
or one task's folder, under a protocol; :func:`find_tasks` says which tasks a folder holds.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

LEADERBOARD_PROTOCOL = "babylm2025"  # the protocol of the report's leaderboard table and its columns
# folder name in the official layouts -> task
FOLDERS = {
    "blimp_filtered": "blimp",
    "blimp_fast": "blimp",
    "supplement_filtered": "blimp_supplement",
    "supplement_fast": "blimp_supplement",
    "ewok_filtered": "ewok",
    "ewok_fast": "ewok",
    "entity_tracking": "entity_tracking",
    "entity_tracking_fast": "entity_tracking",
    "wug_adj_nominalization": "wug_adj",
    "wug_past_tense": "wug_past",
    "comps": "comps",
    "reading": "reading",
}
# a task's folder with another name is recognised by its first record's fields
_SIGNATURES = (
    ("Context1", "ewok"),
    ("input_prefix", "entity_tracking"),
    ("prefix_acceptable", "comps"),
    ("ratio", "wug_adj"),
    ("sentence_good", "blimp"),
)


@dataclass(frozen=True)
class Protocol:
    name: str
    summary: str
    tasks: dict[str, tuple[str, ...]]  # model kind -> tasks it scores
    score: Callable[..., dict]  # (model, tokenizer, task, folder, *, max_items, batch_size)


def _sdce_score(model, tokenizer, task, folder, *, max_items=None, batch_size=32) -> dict:
    from sdce.evaluation import babylm_suite

    evaluate = babylm_suite.EVALUATORS["wug_adj" if task == "wug_past" else task]
    result = evaluate(model, tokenizer, folder, max_items=max_items, batch_size=batch_size)
    groups = {
        "UID": result.get("per_paradigm") or result.get("per_domain") or result.get("per_subset"),
        "field": result.get("per_field"),
        "linguistics_term": result.get("per_phenomenon"),
        "context_type": result.get("per_context_type"),
        "split": result.get("per_split"),
        "measure": {m: r["score"] for m, r in result.get("per_measure", {}).items()} or None,
    }
    subtasks = {
        key: {k: v["accuracy"] if isinstance(v, dict) else v for k, v in values.items()}
        for key, values in groups.items()
        if values
    }
    return {**result, "subtasks": subtasks}


def _lm_eval_score(model, tokenizer, task, folder, *, max_items=None, batch_size=32) -> dict:
    from sdce.evaluation import official
    from sdce.evaluation.scoring import sequence_logprobs

    items = official.round_robin(official.read_items(task, folder), max_items)
    texts = [" " + s for it in items for s in it.sentences]  # target_delimiter + choice
    flat = sequence_logprobs(model, tokenizer, texts, batch_size=batch_size)
    scores = [flat[2 * i : 2 * i + 2] for i in range(len(items))]
    result = official.accuracy_task(task, items, scores)
    result["subtasks"] = {"UID": result["subtasks"]["UID"]}
    return result


def _official_score(model, tokenizer, task, folder, *, max_items=None, batch_size=32) -> dict:
    from sdce.evaluation import official

    return official.score_task(model, tokenizer, task, folder, max_items=max_items, batch_size=batch_size)


_ALL = ("blimp", "blimp_supplement", "ewok", "entity_tracking", "wug_adj", "wug_past", "comps", "reading")
PROTOCOLS = {
    p.name: p
    for p in (
        Protocol(
            "babylm2025",
            "the official BabyLM 2025 pipeline (tokenizer's own special tokens, ties to the first)",
            {"causal": _ALL, "bidirectional": _ALL},
            _official_score,
        ),
        Protocol(
            "lm_eval",
            "lm-evaluation-harness's blimp task (' ' + sentence after BOS/EOS, ties to the first)",
            {"causal": ("blimp", "blimp_supplement"), "bidirectional": ()},
            _lm_eval_score,
        ),
        Protocol(
            "sdce",
            "sdce's own (BOS/EOS-conditioned, first token scored, ties 0.5)",
            {
                "causal": (
                    "blimp",
                    "blimp_supplement",
                    "ewok",
                    "entity_tracking",
                    "wug_adj",
                    "wug_past",
                    "reading",
                ),
                "bidirectional": ("blimp", "blimp_supplement"),
            },
            _sdce_score,
        ),
    )
}


def get(name: str) -> Protocol:
    if name not in PROTOCOLS:
        raise ValueError(f"unknown protocol {name!r}; known: {', '.join(PROTOCOLS)}")
    return PROTOCOLS[name]


def _sniff(folder: Path) -> str | None:
    if (folder / "reading_data.csv").is_file():
        return "reading"
    files = sorted(folder.glob("*.jsonl"))
    if not files:
        return None
    with files[0].open() as f:
        first = next((line for line in f if line.strip()), "")
    try:
        keys = set(json.loads(first)) if first else set()
    except json.JSONDecodeError:
        return None
    task = next((t for key, t in _SIGNATURES if key in keys), None)
    if task == "blimp" and "UID" not in keys:
        return "blimp_supplement"
    if task == "wug_adj" and "past" in folder.name:
        return "wug_past"
    return task


def find_tasks(data: str | Path) -> dict[str, Path]:
    """{task: folder} for a suite folder (the official layout's task folders under it) or one
    task's folder (named as in the layout, or recognised by its records' fields)."""
    data = Path(data)
    if not data.is_dir():
        raise FileNotFoundError(f"zero-shot data folder not found: {data}")
    if data.name in FOLDERS:
        return {FOLDERS[data.name]: data}
    found = {FOLDERS[c.name]: c for c in sorted(data.iterdir()) if c.is_dir() and c.name in FOLDERS}
    if not found and (task := _sniff(data)):
        found = {task: data}
    if not found:
        raise ValueError(
            f"{data} holds no zero-shot task: expected a suite folder with any of "
            f"{', '.join(sorted(FOLDERS))}, or one task's folder of .jsonl files (or reading_data.csv)"
        )
    return found


def select(
    data: str | Path, protocol: str, kind: str, tasks: Sequence[str] | None = None
) -> tuple[dict[str, Path], dict[str, str]]:
    """({task: folder} that ``protocol`` scores for a ``kind`` model, {task: why not} for the
    others found); an error when none is left."""
    proto = get(protocol)
    found = find_tasks(data)
    if tasks is not None:
        unknown = [t for t in tasks if t not in found]
        if unknown:
            raise ValueError(f"{data} holds no {', '.join(unknown)} folder; it holds {', '.join(found)}")
        found = {t: found[t] for t in tasks}
    usable = {t: f for t, f in found.items() if t in proto.tasks[kind]}
    if not usable:
        raise ValueError(
            f"{data} holds none of protocol {protocol}'s tasks for a {kind} model "
            f"({', '.join(proto.tasks[kind]) or 'none'}); it holds {', '.join(found)}"
        )
    skipped = {t: f"protocol {protocol} has no {t} task for {kind} models" for t in found if t not in usable}
    return usable, skipped


def zero_shot(
    model,
    tokenizer,
    data: str | Path,
    protocol: str,
    *,
    tasks: Sequence[str] | None = None,
    max_items: int | None = None,
    batch_size: int = 32,
) -> dict:
    """Score every task under ``data`` that ``protocol`` scores for this model's kind.

    Returns ``{"protocol", "tasks": {task: {"metric", "score", "n_items", "subtasks": {key:
    {name: score}}, ...}}, "leaderboard": {key: score}, "metrics": {key: metric}, "skipped":
    {task: why}, "max_items_per_task"}``; scores are fractions (``None`` where undefined).
    A leaderboard key is the task's name, except that ``reading`` gives
    ``reading_eye_tracking`` and ``reading_self_paced``.
    """
    from sdce.model import kind_of

    proto = get(protocol)
    kind = kind_of(model)
    usable, skipped = select(data, protocol, kind, tasks)
    results = {
        t: proto.score(model, tokenizer, t, folder, max_items=max_items, batch_size=batch_size)
        for t, folder in usable.items()
    }
    leaderboard, metrics = {}, {}
    for task, res in results.items():
        for key, score in res.get("leaderboard", {task: res.get("score")}).items():
            leaderboard[key] = score
            metrics[key] = res["metric"]
    return {
        "protocol": protocol,
        "description": proto.summary,
        "tasks": {t: {"folder": str(usable[t]), **r} for t, r in results.items()},
        "leaderboard": leaderboard,
        "metrics": metrics,
        "skipped": skipped,
        "max_items_per_task": max_items,
    }
