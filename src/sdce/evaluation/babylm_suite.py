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

``reading`` (``reading/reading_data.csv``)
    1,726 words of 205 sentences (de Varda et al., 2023) with human reading measures:
    eye-tracking first-fixation, first-pass, go-past and right-bounded times, self-paced reading
    time, and six ERP components. Each row gives the word, its left context ``item`` and the
    previous word with its context. The word's surprisal is ``-log p(" " + word | item)`` in
    nats, summed over the word's tokens (punctuation attached to the word included), and the
    previous word's likewise (``prev_surprisal``). Scores follow the official
    ``evaluation_pipeline/reading/run.py`` and ``calculate_results_from_pred.py``: per measure,
    two OLS fits with an intercept, a baseline and the baseline plus surprisal, and the score
    ``(R2_model - R2_baseline) / (1 - R2_baseline)``, the share of the variance the baseline
    leaves unexplained that surprisal explains (a partial R2; the leaderboard shows it x 100).

    * ``reading_eye_tracking``: mean of that score over the four eye-tracking measures
      (``RTfirstfix``, ``RTfirstpass``, ``RTgopast``, ``RTrightbound``); baseline: word
      frequency (``Subtlex_log10``), ``length``, ``context_length`` and their pairwise products.
    * ``reading_self_paced``: ``self_paced_reading_time`` with a spillover baseline: the same
      three plus ``prev_length`` and ``prev_surprisal``, all pairwise products (15 terms); rows
      without a previous word drop out.

    Rows missing a variable of a fit drop out of both of its fits (30 rows have no frequency).
    The ERP measures are fitted against the first baseline for the record (``per_measure``) but
    score nothing, as in the official pipeline. Two differences from the official script, both
    in what is scored rather than how: it scores the word *without* its leading space after the
    context (a token that would glue onto the previous word in byte-level BPE; we score the
    text as it reads), re-tokenising the context after each subword; and its CSV reader turns
    the context "None" (the previous word's context in one row) into a missing value, dropping
    that row from the self-paced fit (we read strings verbatim; the one empty ``item``, also
    "None", is rebuilt from the sentence as the official reader's fill does). A fit with no
    more rows than coefficients is undefined and scores ``None``.

Ties (two candidates with exactly equal log-probabilities) get partial credit: 0.5 for a pair,
``1/k`` when the correct option shares the maximum with ``k - 1`` others; the official argmax
credits them as correct (see :mod:`sdce.evaluation.minimal_pairs`). All log-probabilities
condition on BOS/EOS, first token included (:mod:`sdce.evaluation.scoring`).

``max_items_per_task`` caps the items scored per task, taking them round-robin over the task's
subsets (first item of every paradigm/file, then the second, ...), so a small cap still touches
many subsets; it is deterministic. For ``reading`` it keeps the first N rows (the file mixes
the sentences: its first 150 rows come from 105 of them); its regressions need well over 17
rows to mean anything.

The leaderboard layout (:data:`LEADERBOARD_COLUMNS`, :func:`format_leaderboard`,
:func:`leaderboard_report`) is the results table of the official pipeline's README: every score
x 100 (accuracy in %, Spearman's rho x 100, the reading scores x 100) and a macro average, the
unweighted mean of the columns. The official macro average also includes (Super)GLUE, a
fine-tuning task this suite does not run, so ours is the mean of the zero-shot columns.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from itertools import combinations
from pathlib import Path

import numpy as np
import pandas as pd
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
    "LEADERBOARD_COLUMNS",
    "TASKS",
    "TASK_FOLDERS",
    "evaluate_blimp",
    "evaluate_blimp_supplement",
    "evaluate_entity_tracking",
    "evaluate_ewok",
    "evaluate_reading",
    "evaluate_wug_adj",
    "format_leaderboard",
    "leaderboard_report",
    "leaderboard_scores",
    "load_entity_tracking",
    "load_ewok",
    "load_reading",
    "load_wug_adj",
    "reading_scores",
    "run_suite",
    "surprisal_gain",
]

TASK_FOLDERS = {
    "blimp": "blimp_filtered",
    "blimp_supplement": "supplement_filtered",
    "ewok": "ewok_filtered",
    "entity_tracking": "entity_tracking",
    "wug_adj": "wug_adj_nominalization",
    "reading": "reading",
}
TASKS = tuple(TASK_FOLDERS)
ENTITY_TRACKING_SPLITS = ("regular", "ambiref", "move_contents")

# The results table of the official pipeline's README, in its order: leaderboard key (as in
# run_suite's "leaderboard" and the evaluation JSON's babylm_<key>) and column title. The
# official table's (Super)GLUE column (fine-tuning) has no counterpart here; its "WUGs" column
# is the adjective nominalisation task (the only wug task of the full_eval data).
LEADERBOARD_COLUMNS = (
    ("blimp", "BLiMP"),
    ("blimp_supplement", "BLiMP Supplement"),
    ("ewok", "EWoK"),
    ("reading_eye_tracking", "Reading (Eye Tracking)"),
    ("reading_self_paced", "Reading (Self-Paced Reading Time)"),
    ("entity_tracking", "Entity Tracking"),
    ("wug_adj", "WUGs"),
)
MACRO_AVERAGE = "Macroaverage"


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


# ----------------------------------------------------------------------------- reading

READING_EYE_TRACKING = ("RTfirstfix", "RTfirstpass", "RTgopast", "RTrightbound")
READING_SELF_PACED = "self_paced_reading_time"
READING_ERP = ("ELAN", "LAN", "N400", "P600", "EPNP", "PNP")
READING_BASELINE = ("Subtlex_log10", "length", "context_length")
READING_SPILLOVER_BASELINE = (*READING_BASELINE, "prev_length", "prev_surprisal")
_READING_TEXT = ("item", "word", "sentence", "prev_item", "prev_word")
_READING_COLUMNS = (
    *_READING_TEXT,
    *READING_BASELINE,
    "prev_length",
    *READING_EYE_TRACKING,
    READING_SELF_PACED,
)


def load_reading(folder: str | Path) -> pd.DataFrame:
    """The reading-measures table (``reading_data.csv``, else the folder's only CSV).

    Text fields are read verbatim (the word "None" stays a word); empty fields are missing.
    An empty ``item`` (the context) is rebuilt from the first ``context_length`` words of the
    sentence; ``prev_item``/``prev_word`` are missing for a sentence's first scored word.
    """
    folder = Path(folder)
    path = folder / "reading_data.csv"
    if not path.is_file():
        found = sorted(folder.glob("*.csv"))
        if len(found) != 1:
            raise FileNotFoundError(f"{folder}: expected reading_data.csv (or one .csv file)")
        path = found[0]
    frame = pd.read_csv(path, keep_default_na=False, na_values=[""], dtype={c: str for c in _READING_TEXT})
    missing = [c for c in _READING_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {', '.join(missing)}")
    items, prev_items, prev_words = [], [], []
    for row in frame.itertuples(index=True):
        where = f"{path}: row {row.Index}"
        if not isinstance(row.word, str) or not row.word.strip():
            raise ValueError(f"{where}: empty word")
        item = row.item
        if not isinstance(item, str) or not item.strip():
            words = str(row.sentence).split() if isinstance(row.sentence, str) else []
            n = int(row.context_length)
            if n < 1 or len(words) <= n or words[n] != row.word:
                raise ValueError(f"{where}: empty item (context) that the sentence cannot rebuild")
            item = " ".join(words[:n])
        items.append(item)
        has_prev = [isinstance(v, str) and bool(v.strip()) for v in (row.prev_item, row.prev_word)]
        if has_prev[0] != has_prev[1]:
            raise ValueError(f"{where}: prev_item and prev_word must be both given or both empty")
        prev_items.append(row.prev_item if has_prev[0] else None)
        prev_words.append(row.prev_word if has_prev[0] else None)
    frame["item"] = items
    frame["prev_item"] = pd.Series(prev_items, index=frame.index, dtype=object)
    frame["prev_word"] = pd.Series(prev_words, index=frame.index, dtype=object)
    for column in (*READING_BASELINE, "prev_length", *READING_EYE_TRACKING, READING_SELF_PACED):
        frame[column] = pd.to_numeric(frame[column], errors="raise").astype(float)
    for column in READING_ERP:
        if column in frame.columns:
            frame[column] = pd.to_numeric(frame[column], errors="raise").astype(float)
    return frame


def _design(frame: pd.DataFrame, predictors: Sequence[str], extra: Sequence[str] = ()) -> np.ndarray:
    """Intercept, the predictors, their pairwise products (the formula ``a + b + a:b ...``),
    then ``extra`` (entered without interactions)."""
    columns = [np.ones(len(frame))]
    columns += [frame[p].to_numpy(dtype=np.float64) for p in predictors]
    columns += [
        frame[a].to_numpy(dtype=np.float64) * frame[b].to_numpy(dtype=np.float64)
        for a, b in combinations(predictors, 2)
    ]
    columns += [frame[p].to_numpy(dtype=np.float64) for p in extra]
    return np.column_stack(columns)


def _ols(y: np.ndarray, design: np.ndarray) -> tuple[float, np.ndarray]:
    """R2 (centred, the model has an intercept) and the coefficients of a least-squares fit."""
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    residual = y - design @ coef
    total = float(np.sum((y - y.mean()) ** 2))
    return (1.0 - float(residual @ residual) / total if total > 0 else float("nan")), coef


def surprisal_gain(
    frame: pd.DataFrame, measure: str, baseline: Sequence[str], predictor: str = "surprisal"
) -> dict:
    """How much ``predictor`` adds to an OLS model of ``measure`` over ``baseline``.

    Both fits use the rows where the measure, the baseline predictors and ``predictor`` are
    all present; the baseline enters with all pairwise products. ``score`` is
    ``(R2_model - R2_baseline) / (1 - R2_baseline)`` (the official reading score before x 100),
    ``delta_r2`` the plain difference. Undefined fits (no more rows than coefficients, a
    constant measure, a baseline that already explains everything) give ``None`` scores.
    """
    used = [measure, *baseline, predictor]
    data = frame[used].replace([np.inf, -np.inf], np.nan).dropna()
    y = data[measure].to_numpy(dtype=np.float64)
    base_design = _design(data, baseline)
    full_design = _design(data, baseline, extra=[predictor])
    result = {"measure": measure, "baseline": list(baseline), "n": len(data)}
    if len(data) <= full_design.shape[1] or np.ptp(y) == 0:
        undefined = ("r2_baseline", "r2", "delta_r2", "score", "coefficient")
        return {**result, **dict.fromkeys(undefined)}
    r2_base, _ = _ols(y, base_design)
    r2_full, coef = _ols(y, full_design)
    delta = r2_full - r2_base
    score = delta / (1.0 - r2_base) if 1.0 - r2_base > 1e-12 else float("nan")
    return {
        **result,
        "r2_baseline": r2_base,
        "r2": r2_full,
        "delta_r2": delta,
        "score": _nan_to_none(score),
        "coefficient": float(coef[-1]),
    }


def reading_scores(frame: pd.DataFrame) -> dict:
    """The two leaderboard reading scores from a table with ``surprisal`` and ``prev_surprisal``.

    ``eye_tracking``: mean of :func:`surprisal_gain` over :data:`READING_EYE_TRACKING` with
    :data:`READING_BASELINE`; ``self_paced``: :data:`READING_SELF_PACED` with
    :data:`READING_SPILLOVER_BASELINE`. ``per_measure`` has every fit, the ERP measures included
    (against the first baseline, reported only).
    """
    per_measure = {m: surprisal_gain(frame, m, READING_BASELINE) for m in READING_EYE_TRACKING}
    spr = surprisal_gain(frame, READING_SELF_PACED, READING_SPILLOVER_BASELINE)
    per_measure[READING_SELF_PACED] = spr
    for m in READING_ERP:
        if m in frame.columns:
            per_measure[m] = surprisal_gain(frame, m, READING_BASELINE)
    et = [per_measure[m]["score"] for m in READING_EYE_TRACKING]
    return {
        "eye_tracking": None if any(s is None for s in et) else float(np.mean(et)),
        "self_paced": spr["score"],
        "per_measure": per_measure,
    }


def evaluate_reading(
    model, tokenizer, folder: str | Path, *, max_items: int | None = None, batch_size: int = 32
) -> dict:
    """Reading: surprisal's added explanatory power for eye-tracking and self-paced reading times.

    Returns two leaderboard entries, ``reading_eye_tracking`` and ``reading_self_paced`` (see
    the module docstring); ``max_items`` keeps the first N rows.
    """
    frame = load_reading(folder)
    if max_items is not None:
        if max_items < 1:
            raise ValueError(f"max_items must be >= 1, got {max_items}")
        frame = frame.iloc[:max_items].copy()
    pairs = list(zip(frame["item"], frame["word"], strict=True))
    pairs += [(c, w) for c, w in zip(frame["prev_item"], frame["prev_word"], strict=True) if c is not None]
    unique = sorted(set(pairs))
    logps = continuation_logprobs(
        model, tokenizer, [c for c, _ in unique], [" " + w for _, w in unique], batch_size=batch_size
    )
    surprisal = {pair: -lp for pair, lp in zip(unique, logps, strict=True)}
    frame["surprisal"] = [surprisal[p] for p in zip(frame["item"], frame["word"], strict=True)]
    frame["prev_surprisal"] = [
        surprisal[(c, w)] if c is not None else float("nan")
        for c, w in zip(frame["prev_item"], frame["prev_word"], strict=True)
    ]
    scores = reading_scores(frame)
    return {
        "leaderboard": {
            "reading_eye_tracking": scores["eye_tracking"],
            "reading_self_paced": scores["self_paced"],
        },
        "metric": "partial_r2",
        "n_items": len(frame),
        "n_scored_words": len(unique),
        "mean_surprisal": float(frame["surprisal"].mean()) if len(frame) else None,
        "per_measure": scores["per_measure"],
    }


# ----------------------------------------------------------------------------- suite

EVALUATORS: dict[str, Callable[..., dict]] = {
    "blimp": evaluate_blimp,
    "blimp_supplement": evaluate_blimp_supplement,
    "ewok": evaluate_ewok,
    "entity_tracking": evaluate_entity_tracking,
    "wug_adj": evaluate_wug_adj,
    "reading": evaluate_reading,
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
    Returns ``{"leaderboard": {key: score}, "metrics": {key: "accuracy"|"spearman"|
    "partial_r2"}, "tasks": {task: full result}, "max_items_per_task": ...}``; a leaderboard key
    is the task's name, except that ``reading`` gives two, ``reading_eye_tracking`` and
    ``reading_self_paced`` (see :data:`LEADERBOARD_COLUMNS`). Scores are fractions (x 100 on
    the leaderboard), ``None`` where undefined.
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
            raise ValueError(f"unknown task(s) {unknown}; known: {list(TASKS)}")
    results = {}
    for task in selected:
        results[task] = EVALUATORS[task](
            model, tokenizer, root / TASK_FOLDERS[task], max_items=max_items_per_task, batch_size=batch_size
        )
    leaderboard: dict[str, float | None] = {}
    metrics: dict[str, str] = {}
    for task, res in results.items():
        for key, score in res.get("leaderboard", {task: res.get("score")}).items():
            leaderboard[key] = _nan_to_none(score)
            metrics[key] = res["metric"]
    return {
        "leaderboard": leaderboard,
        "metrics": metrics,
        "tasks": results,
        "max_items_per_task": max_items_per_task,
    }


def _finite(value) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def leaderboard_scores(scores: Mapping[str, float | None], keys: Sequence[str] | None = None) -> dict:
    """One model's row in the leaderboard's units: ``{column title: score x 100}`` for the
    :data:`LEADERBOARD_COLUMNS` among ``keys`` (default: those in ``scores``), in the
    leaderboard's order, then ``"Macroaverage"``: their unweighted mean, ``None`` unless every
    one of them has a score. Missing or non-finite scores are ``None``."""
    wanted = set(scores if keys is None else keys)
    row: dict[str, float | None] = {}
    for key, title in LEADERBOARD_COLUMNS:
        if key in wanted:
            value = _finite(scores.get(key))
            row[title] = None if value is None else 100.0 * value
    values = list(row.values())
    row[MACRO_AVERAGE] = float(np.mean(values)) if values and all(v is not None for v in values) else None
    return row


def format_leaderboard(results: dict, name: str = "model") -> str:
    """:func:`run_suite` results as the leaderboard's table (one row named ``name``), every
    score x 100, followed by the items scored per task."""
    row = leaderboard_scores(results["leaderboard"])
    cap = results.get("max_items_per_task")
    lines = [
        "| model | " + " | ".join(row) + " |",
        "|---|" + "---:|" * len(row),
        f"| {name} | " + " | ".join("n/a" if v is None else f"{v:.2f}" for v in row.values()) + " |",
        "",
        "Items scored: "
        + ", ".join(f"{task} {res['n_items']}" for task, res in results["tasks"].items())
        + (f" (at most {cap} per task)" if cap else "")
        + ".",
    ]
    return "\n".join(lines) + "\n"


def _mean_std(values: Sequence[float | None]) -> str:
    """Mean ± sample std of the defined values; "(k/n)" when only k of the n have one."""
    x = [v for v in values if v is not None and math.isfinite(v)]
    if not x:
        return "n/a"
    text = f"{x[0]:.2f}" if len(x) == 1 else f"{np.mean(x):.2f} ± {np.std(x, ddof=1):.2f}"
    return text if len(x) == len(values) else f"{text} ({len(x)}/{len(values)})"


def leaderboard_report(finals: pd.DataFrame, prefix: str = "babylm2025_") -> tuple[pd.DataFrame, str]:
    """The suite in the leaderboard's layout for a study report.

    ``finals`` has one row per run and replicate with a ``run`` column (and ``fold``/``seed``
    if any) and the evaluation JSON's ``babylm_<key>`` scores (fractions). Returns the per-row
    leaderboard scores (x 100, with the macro average of each row) and a markdown section: per
    run, mean ± sample std across replicates of each column. The columns are the leaderboard
    columns any row has; a replicate's macro average needs all of them. ``(empty, "")`` when no
    row has suite scores.
    """
    keys = [key for key, _ in LEADERBOARD_COLUMNS if f"{prefix}{key}" in finals.columns]
    if not keys or finals[[f"{prefix}{k}" for k in keys]].isna().all().all():
        return pd.DataFrame(), ""
    ids = [c for c in ("run", "fold", "seed") if c in finals.columns]
    records = []
    for _, row in finals.iterrows():
        scores = {k: None if pd.isna(row[f"{prefix}{k}"]) else float(row[f"{prefix}{k}"]) for k in keys}
        records.append({**{c: row[c] for c in ids}, **leaderboard_scores(scores, keys)})
    table = pd.DataFrame(records)
    columns = [c for c in table.columns if c not in ids]
    titles = [title for key, title in LEADERBOARD_COLUMNS if key in keys]
    missing = [title for key, title in LEADERBOARD_COLUMNS if key not in keys]
    lines = [
        "",
        "## BabyLM 2025 zero-shot suite (leaderboard layout)",
        "",
        "Scored under the babylm2025 protocol (the official BabyLM 2025 pipeline's scoring, "
        "`sdce.evaluation.official`; columns babylm2025_<task> in summary.csv). "
        "As in the BabyLM 2025 results table: every score x 100: accuracy (%) for BLiMP, BLiMP "
        "Supplement, EWoK and Entity Tracking (mean over paradigms / domains / subsets), "
        "Spearman's rho x 100 for WUGs (adjective nominalisation), and for Reading the share of "
        "the variance left by the baseline that surprisal explains, "
        "(R2_model - R2_baseline) / (1 - R2_baseline) x 100 (Eye Tracking: mean over four "
        "measures; Self-Paced: with a spillover baseline). Macroaverage: unweighted mean of the "
        f"columns shown ({len(titles)}), per replicate; the leaderboard's also includes "
        "(Super)GLUE, which this suite does not run. (k/n): only k of the run's n replicates "
        "have that score."
        + (f" Not evaluated: {', '.join(missing)}." if missing else "")
        + " Mean ± sample std across replicates.",
        "",
        "| run | replicates | " + " | ".join(columns) + " |",
        "|---|---|" + "---:|" * len(columns),
    ]
    group = table.groupby("run", sort=False) if "run" in table.columns else [("all", table)]
    for run, g in group:
        cells = [_mean_std([None if pd.isna(v) else float(v) for v in g[c]]) for c in columns]
        lines.append(f"| {run} | {len(g)} | " + " | ".join(cells) + " |")
    return table, "\n".join(lines) + "\n"
