"""Reproducible train/validation split.

`shuffle: false` keeps document order and holds out the *last* fraction of every
source (the coherent 95/5 split used for BabyLM); `shuffle: true` permutes all
documents with `seed` first (e.g. 80/20 with seed 42). With `folds: k`, fold i
holds out the i-th of k contiguous parts instead (of every source in order, or of
the seeded permutation), so the k validation sets partition the corpus. Subsets
keep the first N documents of each side after splitting; more than a side holds is
refused, naming the key. With `validation_corpus`, validation is that corpus and training
the whole of this one.
"""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np


class SplitError(ValueError):
    pass


def _held_out(n: int, spec: dict, fold: int | None) -> tuple[int, int]:
    """[start, stop) of the validation documents among n ordered ones."""
    k = spec.get("folds")
    if k is None:
        if fold is not None:
            raise SplitError(f"fold {fold} asked for, but split.folds is not set")
        return n - math.floor(n * spec["validation_fraction"]), n
    if fold is None or not 0 <= fold < k:
        raise SplitError(f"split.folds={k}: a fold index in 0..{k - 1} is needed, got {fold}")
    return fold * n // k, (fold + 1) * n // k


def take_subset(docs: list[dict], n: int | None, key: str, what: str) -> list[dict]:
    """The first n documents (all for None); more than there are is refused, naming the key
    (a subset-size axis whose sizes exceed the data would silently train on the same data)."""
    if n is not None and n > len(docs):
        raise SplitError(f"split.{key}: {n} is more than the {len(docs)} {what} documents")
    return docs[:n]


def split_documents(
    docs: list[dict], spec: dict, fold: int | None = None, validation: list[dict] | None = None
) -> tuple[list[dict], list[dict]]:
    """(training, validation documents): held out of `docs` as the spec says, or, given the
    documents of split.validation_corpus, all of `docs` against those."""
    if validation is not None:
        return _against(docs, validation, spec)
    frac = spec["validation_fraction"]
    if spec["shuffle"]:
        order = np.random.default_rng(spec["seed"]).permutation(len(docs))
        groups = [[docs[i] for i in order]]
    else:
        by_source: dict[str, list[dict]] = defaultdict(list)
        for d in docs:
            by_source[d["source"]].append(d)
        groups = [by_source[s] for s in sorted(by_source)]
    train, val = [], []
    for group in groups:
        start, stop = _held_out(len(group), spec, fold)
        train.extend(group[:start] + group[stop:])
        val.extend(group[start:stop])
    train = take_subset(train, spec.get("train_subset"), "train_subset", "training")
    val = take_subset(val, spec.get("validation_subset"), "validation_subset", "validation")
    if not val:
        raise SplitError(
            f"split leaves the validation set empty ({len(docs)} documents, "
            f"split.validation_fraction={frac}, split.folds={spec.get('folds')}): "
            "raise the fraction or add documents"
        )
    if not train:
        raise SplitError(f"split leaves the training set empty ({len(docs)} documents)")
    return train, val


def _against(docs: list[dict], validation: list[dict], spec: dict) -> tuple[list[dict], list[dict]]:
    """Training on the whole corpus, validation on its own corpus; with a subset, each side is
    permuted with split.seed first, so the subset is a seeded sample rather than the files' head."""
    if spec.get("train_subset") or spec.get("validation_subset"):
        rng = np.random.default_rng(spec["seed"])
        docs, validation = ([d[i] for i in rng.permutation(len(d))] for d in (docs, validation))
    train = take_subset(docs, spec.get("train_subset"), "train_subset", "training")
    val = take_subset(validation, spec.get("validation_subset"), "validation_subset", "validation")
    if not val:
        raise SplitError("split.validation_corpus holds no documents")
    return train, val
