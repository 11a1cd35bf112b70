"""BLiMP-style minimal-pair evaluation.

A minimal pair is a grammatical sentence and a minimally different ungrammatical one; the model
gets the pair right when it gives the good sentence the higher total log-probability (first token
included, see :mod:`sdce.evaluation.scoring`).

Ties
----
A pair whose two log-probabilities are exactly equal (in float32) scores **0.5**, and the share
of such pairs is reported as ``tie_rate``. The official BabyLM pipeline takes an argmax whose
first index wins ties, i.e. it credits every tie as correct: a model that assigns the same score
to everything (or a tokenizer/scoring bug that drops the differing token) then looks perfect on
paradigms where the two sentences tokenise to the same length. Half credit is the expected
accuracy of a coin flip, and ``tie_rate`` makes the degenerate case visible.

Aggregation
-----------
``macro_accuracy`` is the mean of per-paradigm (``UID``) accuracies, which is what BabyLM reports
for BLiMP; ``micro_accuracy`` is over all pairs. ``per_phenomenon`` (``linguistics_term``) and
``per_field`` are means of their paradigms' accuracies.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterator, Sequence
from pathlib import Path

from sdce.evaluation.scoring import sequence_logprobs

__all__ = [
    "evaluate_minimal_pairs",
    "load_minimal_pairs",
    "read_jsonl",
    "score_minimal_pairs",
    "summarise_pair_scores",
]

UNKNOWN = "unknown"
# BLiMP spells one field two ways (13 paradigms "syntax_semantics", one "syntax/semantics");
# the official BabyLM pipeline merges them, and so do we.
FIELD_ALIASES = {"syntax_semantics": "syntax/semantics"}


def read_jsonl(path: str | Path) -> Iterator[tuple[int, dict]]:
    """Yield ``(line_number, record)`` for each non-blank line of a JSON-lines file.

    Raises :class:`ValueError` naming ``file:line`` for invalid JSON or a line that is not a JSON
    object.
    """
    path = Path(path)
    with path.open(encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{lineno}: invalid JSON ({err.msg})") from err
            if not isinstance(record, dict):
                raise ValueError(f"{path}:{lineno}: expected a JSON object, got {type(record).__name__}")
            yield lineno, record


def jsonl_files(folder: str | Path) -> list[Path]:
    """The ``*.jsonl`` files of a folder, sorted by name; a clear error if there are none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"not a folder: {folder}")
    files = sorted(p for p in folder.glob("*.jsonl") if p.is_file())
    if not files:
        raise ValueError(f"no *.jsonl files in {folder}")
    return files


def _normalise(record: dict, *, where: str, default_uid: str, default_field: str, default_term: str) -> dict:
    missing = [key for key in ("sentence_good", "sentence_bad") if key not in record]
    if missing:
        raise ValueError(f"{where}: missing field(s) {', '.join(missing)}")
    for key in ("sentence_good", "sentence_bad"):
        if not isinstance(record[key], str):
            raise ValueError(f"{where}: field {key} must be a string, got {type(record[key]).__name__}")
    field = str(record.get("field") or default_field)
    return {
        "sentence_good": record["sentence_good"],
        "sentence_bad": record["sentence_bad"],
        "UID": str(record.get("UID") or default_uid),
        "field": FIELD_ALIASES.get(field, field),
        "linguistics_term": str(record.get("linguistics_term") or default_term),
        "source": where,
    }


def load_minimal_pairs(
    folder: str | Path, *, default_field: str = UNKNOWN, default_term: str = UNKNOWN
) -> list[dict]:
    """Read every ``*.jsonl`` file of ``folder`` (sorted by name) as minimal pairs.

    Each record needs ``sentence_good`` and ``sentence_bad``; ``UID`` defaults to the file stem
    (the BabyLM supplement files have none), ``field`` and ``linguistics_term`` to
    ``default_field``/``default_term``. BLiMP's field ``syntax_semantics`` is merged into
    ``syntax/semantics``, as the official BabyLM pipeline does. Returned records carry those five
    keys plus ``source`` (``file:line``). Errors name the file and line (missing fields, invalid
    JSON) or the folder (no jsonl files).
    """
    pairs: list[dict] = []
    for path in jsonl_files(folder):
        before = len(pairs)
        for lineno, record in read_jsonl(path):
            pairs.append(
                _normalise(
                    record,
                    where=f"{path}:{lineno}",
                    default_uid=path.stem,
                    default_field=default_field,
                    default_term=default_term,
                )
            )
        if len(pairs) == before:
            raise ValueError(f"{path}: no records")
    return pairs


def _records(folder_or_records) -> list[dict]:
    if isinstance(folder_or_records, (str, Path)):
        return load_minimal_pairs(folder_or_records)
    records = []
    for i, rec in enumerate(folder_or_records):
        if not isinstance(rec, dict):
            raise ValueError(f"record {i}: expected a dict, got {type(rec).__name__}")
        where = str(rec.get("source", f"record {i}"))
        records.append(
            _normalise(rec, where=where, default_uid=UNKNOWN, default_field=UNKNOWN, default_term=UNKNOWN)
        )
    if not records:
        raise ValueError("no minimal pairs to evaluate")
    return records


def first_per_paradigm(records: Sequence[dict], n: int | None) -> list[dict]:
    """The first ``n`` records of each paradigm, in input order (all of them when ``n`` is None)."""
    if n is None:
        return list(records)
    if n < 1:
        raise ValueError(f"max_pairs_per_paradigm must be >= 1, got {n}")
    seen: dict[str, int] = defaultdict(int)
    kept = []
    for rec in records:
        if seen[rec["UID"]] < n:
            seen[rec["UID"]] += 1
            kept.append(rec)
    return kept


def pair_credit(good: float, bad: float) -> float:
    """1 if good scores higher, 0 if lower, 0.5 for an exact tie."""
    if good > bad:
        return 1.0
    if good < bad:
        return 0.0
    return 0.5


def sentence_scorer(model):
    """How a model scores a sentence: its log-probability (a causal LM, `sequence_logprobs`)
    or its pseudo-log-likelihood (a masked LM, as the official BabyLM `mlm` backend)."""
    from sdce.model import kind_of

    if kind_of(model) == "bidirectional":
        from sdce.evaluation.pll import pseudo_loglikelihoods

        return pseudo_loglikelihoods
    return sequence_logprobs


def score_minimal_pairs(model, tokenizer, records: Sequence[dict], *, batch_size: int = 32) -> list[dict]:
    """Per-pair log-probabilities and credit, good and bad sentences scored in one batched pass."""
    texts = [r["sentence_good"] for r in records] + [r["sentence_bad"] for r in records]
    logps = sentence_scorer(model)(model, tokenizer, texts, batch_size=batch_size)
    n = len(records)
    scored = []
    for rec, good, bad in zip(records, logps[:n], logps[n:], strict=True):
        scored.append({**rec, "logp_good": good, "logp_bad": bad, "credit": pair_credit(good, bad)})
    return scored


def _mean(values: Sequence[float]) -> float:
    return float(sum(values) / len(values)) if values else float("nan")


def summarise_pair_scores(scored: Sequence[dict]) -> dict:
    """Aggregate scored pairs (output of :func:`score_minimal_pairs`) into the result dict."""
    by_uid: dict[str, list[dict]] = defaultdict(list)
    for rec in scored:
        by_uid[rec["UID"]].append(rec)
    per_paradigm = {}
    for uid, recs in by_uid.items():
        per_paradigm[uid] = {
            "accuracy": _mean([r["credit"] for r in recs]),
            "n": len(recs),
            "ties": sum(1 for r in recs if r["credit"] == 0.5),
            "field": recs[0]["field"],
            "linguistics_term": recs[0]["linguistics_term"],
        }
    by_term: dict[str, list[float]] = defaultdict(list)
    by_field: dict[str, list[float]] = defaultdict(list)
    for stats in per_paradigm.values():
        by_term[stats["linguistics_term"]].append(stats["accuracy"])
        by_field[stats["field"]].append(stats["accuracy"])
    n_pairs = len(scored)
    n_ties = sum(stats["ties"] for stats in per_paradigm.values())
    return {
        "macro_accuracy": _mean([s["accuracy"] for s in per_paradigm.values()]),
        "micro_accuracy": _mean([r["credit"] for r in scored]),
        "n_pairs": n_pairs,
        "n_paradigms": len(per_paradigm),
        "tie_rate": n_ties / n_pairs if n_pairs else float("nan"),
        "per_paradigm": per_paradigm,
        "per_phenomenon": {term: _mean(accs) for term, accs in sorted(by_term.items())},
        "per_field": {field: _mean(accs) for field, accs in sorted(by_field.items())},
    }


def evaluate_minimal_pairs(
    model,
    tokenizer,
    folder_or_records,
    batch_size: int = 32,
    max_pairs_per_paradigm: int | None = None,
) -> dict:
    """Evaluate a causal LM on minimal pairs (a folder of jsonl files, or records).

    Returns a JSON-able dict: ``macro_accuracy`` (mean over paradigms), ``micro_accuracy``,
    ``n_pairs``, ``n_paradigms``, ``tie_rate``, ``per_paradigm`` ({UID: {accuracy, n, ties,
    field, linguistics_term}}), ``per_phenomenon`` and ``per_field`` ({name: mean accuracy of
    its paradigms}). ``max_pairs_per_paradigm`` keeps the first N pairs of each paradigm.
    """
    records = first_per_paradigm(_records(folder_or_records), max_pairs_per_paradigm)
    return summarise_pair_scores(score_minimal_pairs(model, tokenizer, records, batch_size=batch_size))
