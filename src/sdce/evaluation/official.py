"""The ``babylm2025`` protocol: the official BabyLM 2025 zero-shot pipeline's scoring, exactly.

The official code (``babylm/evaluation-pipeline-2025``, ``evaluation_pipeline/sentence_zero_shot``
and ``evaluation_pipeline/reading``; a copy sits in ``../shared/reference`` for the tests) is
reimplemented here, not imported, so that a study can score with it inside its own jobs, in
batches, without the official package's layout. What it does, and so what this module does:

Items
    Every task is read into items of candidate ``sentences`` (the first one correct) and
    ``completions`` (the part of each sentence that is scored: the whole sentence for BLiMP
    and wug, ``" " + target`` for EWoK, the option for entity tracking, the property phrase for
    COMPS), and metadata keys whose values group the accuracies: BLiMP ``field`` (with
    ``syntax_semantics`` written ``syntax/semantics``), ``UID`` and ``linguistics_term``; the
    supplement's ``UID`` is its file stem; EWoK's ``UID`` is the ``Domain``, with
    ``context_type``, ``context_contrast`` and ``target_contrast``; entity tracking's is
    ``<file stem>_<numops>_ops``; COMPS's is ``base``, ``wugs``, ``wugs_dist_before`` or
    ``wugs_dist_in_between`` from the file name.

Causal scoring (backend ``causal``)
    A sentence is tokenised as the tokenizer itself tokenises it, its own special tokens
    included (so a tokenizer that adds no BOS leaves the first token unscored: nothing
    predicts it). The scored tokens are those whose character span ends after
    ``len(sentence) - len(completion) + offset[0].start``; special tokens have empty spans and
    are never scored. The score is the sum of their log-probabilities (float32 log-softmax at
    temperature 1).

Masked scoring (backend ``mlm``)
    The pseudo-log-likelihood of the scored tokens, each masked in its own copy
    (:func:`sdce.evaluation.pll.pseudo_loglikelihoods`).

Decisions
    The prediction is the candidate with the highest score, the *first* on a tie (the
    official ``torch.max``): a tie counts as correct. Accuracy per value of every metadata
    key; a task's score is the mean over its ``UID`` values, for entity tracking the mean over
    the ``regular``/``ambiref``/``move_contents`` files of the mean over their UIDs. The wug
    tasks correlate (Spearman) ``softmax([score_1, score_2])[0]`` in float32 with the human
    ``ratio``.

Reading
    For each word, ``p(word | item)`` from the logits at the last position of
    ``tokenizer(item)`` (special tokens included), the word tokenised without special tokens
    and *without* a leading space; a word of several tokens multiplies the probability of
    each token given the context extended by the previous tokens' decoded text (re-encoding
    each decoded token and taking its first id, as the official ``get_p2`` does). Surprisal
    ``-log p``; the previous word's likewise where ``prev_item`` is a string. The CSV is read
    as pandas reads it (an empty ``item`` becomes "None"; the strings "None", "NA", ... in
    other columns become missing). The two scores are the official OLS partial R2s
    (:func:`sdce.evaluation.babylm_suite.reading_scores`). Masked models, as the ``mlm``
    backend's ``get_p2_mlm``: the same word queries, each context followed by three mask
    tokens (in the text), the probability read at the first of them.

Scores are fractions (the official reports print them x 100). Batching differs from the
official code (texts are sorted by length and padded on the right under an attention mask),
which changes float32 sums in the last bits at most; tests/test_protocols.py checks the
per-subtask accuracies against the official code, exactly, on the same model and files.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from sdce.evaluation.minimal_pairs import jsonl_files, read_jsonl

MLM_READING_MASKS = 3  # the official reading run's --number_of_mask_tokens_to_append default

ENTITY_TRACKING_SPLITS = ("regular", "ambiref", "move_contents")
COMPS_SUBSETS = {"comps_base": "base", "comps_wugs": "wugs", "comps_wugs_dist-before": "wugs_dist_before"}


@dataclass
class Item:
    sentences: list[str]
    completions: list[str]
    meta: dict[str, str] = field(default_factory=dict)
    ratio: float | None = None  # the wug tasks' human preference for the first sentence


# ----------------------------------------------------------------------------- readers


def _need(rec: dict, keys: Sequence[str], where: str) -> None:
    missing = [k for k in keys if k not in rec]
    if missing:
        raise ValueError(f"{where}: missing field(s) {', '.join(missing)}")


def _blimp(rec: dict, path: Path, where: str) -> Item:
    _need(rec, ("sentence_good", "sentence_bad"), where)
    pair = [rec["sentence_good"], rec["sentence_bad"]]
    if "field" in rec:
        _need(rec, ("UID", "linguistics_term"), where)
        fld = "syntax/semantics" if rec["field"] == "syntax_semantics" else rec["field"]
        meta = {"field": fld, "UID": rec["UID"], "linguistics_term": rec["linguistics_term"]}
    else:  # the supplement: no field or UID, the file names the paradigm
        meta = {"field": "supplement", "UID": path.stem, "linguistics_term": "supplement"}
    return Item(pair, list(pair), meta)


def _ewok(rec: dict, path: Path, where: str) -> Item:
    _need(rec, ("Context1", "Target1", "Target2", "Domain"), where)
    targets = [rec["Target1"], rec["Target2"]]
    meta = {
        "UID": rec["Domain"],
        "context_type": rec.get("ContextType"),
        "context_contrast": rec.get("ContextDiff"),
        "target_contrast": rec.get("TargetDiff"),
    }
    return Item(
        [f"{rec['Context1']} {t}" for t in targets],
        [f" {t}" for t in targets],
        {k: v for k, v in meta.items() if v is not None},
    )


def _entity_tracking(rec: dict, path: Path, where: str) -> Item:
    _need(rec, ("input_prefix", "options", "numops"), where)
    options = rec["options"]
    if not isinstance(options, list) or len(options) < 2:
        raise ValueError(f"{where}: options must be a list of at least 2 strings")
    meta = {"UID": f"{path.stem}_{rec['numops']}_ops"}
    return Item([rec["input_prefix"] + o for o in options], list(options), meta)


def _wug(task: str):
    def read(rec: dict, path: Path, where: str) -> Item:
        _need(rec, ("sentences", "ratio"), where)
        sentences = str(rec["sentences"]).split("\t")
        if len(sentences) < 2:
            raise ValueError(f"{where}: sentences must be tab-separated texts")
        return Item(sentences, list(sentences), {"UID": task}, ratio=float(rec["ratio"]))

    return read


def _comps(rec: dict, path: Path, where: str) -> Item:
    _need(rec, ("prefix_acceptable", "prefix_unacceptable", "property_phrase"), where)
    phrase = rec["property_phrase"]
    prefixes = [rec["prefix_acceptable"], rec["prefix_unacceptable"]]
    meta = {"UID": COMPS_SUBSETS.get(path.stem, "wugs_dist_in_between")}
    return Item([f"{p} {phrase}" for p in prefixes], [phrase, phrase], meta)


READERS = {
    "blimp": _blimp,
    "blimp_supplement": _blimp,
    "ewok": _ewok,
    "entity_tracking": _entity_tracking,
    "wug_adj": _wug("wug_adj"),
    "wug_past": _wug("wug_past"),
    "comps": _comps,
}


def read_items(task: str, folder: str | Path) -> list[Item]:
    """Every item of a task's folder (its ``.jsonl`` files, in name order)."""
    reader = READERS[task]
    items = []
    for path in jsonl_files(folder):
        for lineno, rec in read_jsonl(path):
            items.append(reader(rec, path, f"{path}:{lineno}"))
    return items


def round_robin(items: list[Item], limit: int | None) -> list[Item]:
    """At most ``limit`` items, taken in turn from each UID (deterministic)."""
    if limit is None:
        return items
    groups: dict[str, list[Item]] = defaultdict(list)
    for item in items:
        groups[item.meta["UID"]].append(item)
    queues = list(groups.values())
    taken = [q[d] for d in range(max(map(len, queues), default=0)) for q in queues if d < len(q)]
    return taken[:limit]


# ----------------------------------------------------------------------------- scoring


def phrase_logprobs(model, tokenizer, sentences: Sequence[str], completions: Sequence[str], *,
                    batch_size: int = 32) -> list[float]:  # fmt: skip
    """Each completion's summed log-probability within its sentence, as the official causal
    backend scores it (see the module docstring)."""
    from sdce.evaluation.scoring import _score_token_sequences

    if not getattr(tokenizer, "is_fast", False):
        raise ValueError("the babylm2025 protocol needs a fast tokenizer (it scores by character offsets)")
    sequences, masks = [], []
    for sentence, completion in zip(sentences, completions, strict=True):
        enc = tokenizer(sentence, return_offsets_mapping=True)
        offsets = enc["offset_mapping"]
        if not offsets:
            raise ValueError(f"cannot score {sentence!r}: the tokenizer produced no tokens for it")
        start = len(sentence) - len(completion) + offsets[0][0]
        sequences.append(list(enc["input_ids"]))
        masks.append([end > start for _, end in offsets])
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return _score_token_sequences(
        model,
        sequences,
        masks,
        batch_size=batch_size,
        device=None,
        pad_id=int(pad or 0),
        labels=list(sentences),
    )


def candidate_scores(model, tokenizer, items: Sequence[Item], *, batch_size: int) -> list[list[float]]:
    """Every item's candidate scores: causal log-probabilities or masked PLLs."""
    from sdce.model import kind_of

    sentences = [s for it in items for s in it.sentences]
    completions = [c for it in items for c in it.completions]
    if kind_of(model) == "bidirectional":
        from sdce.evaluation.pll import pseudo_loglikelihoods

        flat = pseudo_loglikelihoods(
            model, tokenizer, sentences, batch_size=batch_size, completions=completions
        )
    else:
        flat = phrase_logprobs(model, tokenizer, sentences, completions, batch_size=batch_size)
    out, pos = [], 0
    for it in items:
        out.append(flat[pos : pos + len(it.sentences)])
        pos += len(it.sentences)
    return out


def first_argmax(scores: Sequence[float]) -> int:
    best = max(scores)
    return next(i for i, s in enumerate(scores) if s == best)


def accuracy_task(task: str, items: list[Item], scores: list[list[float]]) -> dict:
    """The official accuracies: per value of every metadata key, and the task's average."""
    total: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    correct: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    ties = 0
    for item, s in zip(items, scores, strict=True):
        hit = first_argmax(s) == 0
        ties += sum(1 for x in s if x == max(s)) > 1
        for key, value in item.meta.items():
            total[key][value] += 1
            correct[key][value] += hit
    subtasks = {k: {v: correct[k][v] / n for v, n in vals.items()} for k, vals in total.items()}
    uid = subtasks.get("UID", {})
    if task == "entity_tracking":
        splits = {}
        for split in ENTITY_TRACKING_SPLITS:
            keys = [k for k in uid if k.startswith(split)]
            if keys:
                splits[split] = sum(uid[k] for k in keys) / len(keys)
        uid.update(splits)
        score = sum(splits.values()) / len(splits) if splits else None
    else:
        score = sum(uid.values()) / len(uid) if uid else None
    return {"metric": "accuracy", "score": score, "n_items": len(items), "ties": ties, "subtasks": subtasks}


def spearman_task(items: list[Item], scores: list[list[float]]) -> dict:
    """The wug tasks: Spearman's rho of softmax(scores)[0] (float32) against the human ratio."""
    from scipy.stats import spearmanr

    probs = torch.softmax(torch.tensor(scores, dtype=torch.float32), dim=1)[:, 0].numpy()
    ratios = np.asarray([it.ratio for it in items], dtype=np.float64)
    rho = float(spearmanr(probs, ratios)[0]) if len(items) >= 2 else float("nan")
    rho = None if math.isnan(rho) else rho
    return {"metric": "spearman", "score": rho, "n_items": len(items), "subtasks": {"UID": {"avg": rho}}}


def score_task(model, tokenizer, task: str, folder: str | Path, *, max_items: int | None = None,
               batch_size: int = 32) -> dict:  # fmt: skip
    """One task of the suite under the official protocol."""
    if task == "reading":
        return reading(model, tokenizer, folder, max_items=max_items, batch_size=batch_size)
    items = round_robin(read_items(task, folder), max_items)
    if not items:
        raise ValueError(f"{folder}: no {task} items (.jsonl files) found")
    scores = candidate_scores(model, tokenizer, items, batch_size=batch_size)
    if task.startswith("wug"):
        return spearman_task(items, scores)
    return accuracy_task(task, items, scores)


# ----------------------------------------------------------------------------- reading


def _reading_frame(folder: str | Path):
    import pandas as pd

    folder = Path(folder)
    path = folder if folder.is_file() else folder / "reading_data.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{folder}: no reading_data.csv")
    frame = pd.read_csv(path, dtype={"item": str})
    frame["item"] = frame["item"].fillna("None")
    return frame


def _word_queries(tokenizer, context: str, word) -> list[tuple[str, int]]:
    """(context, token id) pairs whose probabilities multiply into p(word | context)."""
    if not isinstance(word, str) or not word:
        raise ValueError(f"reading: a row after {context!r} has no word")
    target = tokenizer(word, add_special_tokens=False)["input_ids"]
    queries = [(context, target[0])]
    text = context + tokenizer.decode(target[0])
    for token in target[1:]:
        piece = tokenizer.decode(token)
        queries.append((text, tokenizer(piece, add_special_tokens=False)["input_ids"][0]))
        text += piece
    return queries


@torch.no_grad()
def next_token_probs(
    model, tokenizer, queries: Sequence[tuple[str, int]], *, batch_size: int, masks: int = 0
) -> dict:
    """{(context, id): p(id | context)}, float32 softmax. Causal (``masks=0``): the logits at the
    last position of ``tokenizer(context)`` (special tokens included), as ``get_p``. Masked
    (the ``mlm`` backend's ``get_p_mlm``): ``tokenizer(context + masks x mask token)`` and the
    logits at the first appended mask (the position before a trailing special token counted
    as the official code counts it)."""
    device = next(model.parameters()).device
    contexts = sorted({c for c, _ in queries})
    suffix = tokenizer.mask_token * masks if masks else ""
    encoded = {c: list(tokenizer(c + suffix)["input_ids"]) for c in contexts}

    def position(ids: list[int]) -> int:  # the official negative index, from the end
        if not masks:
            return len(ids) - 1
        return len(ids) - masks - (0 if ids[-1] == tokenizer.mask_token_id else 1)

    contexts.sort(key=lambda c: len(encoded[c]))
    wanted: dict[str, set[int]] = defaultdict(set)
    for c, t in queries:
        wanted[c].add(t)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    out = {}
    for start in range(0, len(contexts), batch_size):
        chunk = contexts[start : start + batch_size]
        width = max(len(encoded[c]) for c in chunk)
        ids = torch.full((len(chunk), width), int(pad or 0), dtype=torch.long)
        attention = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, c in enumerate(chunk):
            ids[row, : len(encoded[c])] = torch.tensor(encoded[c])
            attention[row, : len(encoded[c])] = 1
        logits = model(input_ids=ids.to(device), attention_mask=attention.to(device)).logits
        at = torch.tensor([position(encoded[c]) for c in chunk], device=logits.device)
        probs = torch.softmax(logits[torch.arange(len(chunk)), at].float().cpu(), dim=-1)
        for row, c in enumerate(chunk):
            for t in wanted[c]:
                out[(c, t)] = probs[row, t].item()
    return out


def reading(
    model, tokenizer, folder: str | Path, *, max_items: int | None = None, batch_size: int = 32
) -> dict:
    """The reading task under the official protocol (see the module docstring): the causal
    backend for causal models, the ``mlm`` backend (3 appended mask tokens, its default
    ``--number_of_mask_tokens_to_append``) for bidirectional ones."""
    from sdce.evaluation.babylm_suite import reading_scores
    from sdce.model import kind_of

    masks = 0 if kind_of(model) == "causal" else MLM_READING_MASKS
    if masks and tokenizer.mask_token is None:
        raise ValueError("reading with the mlm backend needs a tokenizer with a mask token")
    frame = _reading_frame(folder)
    if max_items is not None:
        frame = frame.iloc[:max_items].copy()
    words = [_word_queries(tokenizer, c, w) for c, w in zip(frame["item"], frame["word"], strict=True)]
    prev = [
        _word_queries(tokenizer, c, w) if isinstance(c, str) else None
        for c, w in zip(frame["prev_item"], frame["prev_word"], strict=True)
    ]
    flat = [q for qs in words for q in qs] + [q for qs in prev if qs for q in qs]
    probs = next_token_probs(model, tokenizer, flat, batch_size=batch_size, masks=masks)

    def surprisal(qs):
        return -math.log(np.prod([probs[q] for q in qs])) if qs is not None else float("nan")

    frame["surprisal"] = [surprisal(qs) for qs in words]
    frame["prev_surprisal"] = [surprisal(qs) for qs in prev]
    scores = reading_scores(frame)
    return {
        "metric": "partial_r2",
        "leaderboard": {
            "reading_eye_tracking": scores["eye_tracking"],
            "reading_self_paced": scores["self_paced"],
        },
        "n_items": len(frame),
        "subtasks": {"measure": {m: r["score"] for m, r in scores["per_measure"].items()}},
        "surprisal": frame["surprisal"].tolist(),
        "prev_surprisal": frame["prev_surprisal"].tolist(),
    }
