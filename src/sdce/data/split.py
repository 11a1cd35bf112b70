"""Reproducible train/validation split.

`shuffle: false` keeps document order and holds out the *last* fraction of every
source (the coherent 95/5 split used for BabyLM); `shuffle: true` permutes all
documents with `seed` first (e.g. 80/20 with seed 42). Subsets keep the first N
documents of each side after splitting.
"""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np


class SplitError(ValueError):
    pass


def split_documents(docs: list[dict], spec: dict) -> tuple[list[dict], list[dict]]:
    frac = spec["validation_fraction"]
    if spec["shuffle"]:
        order = np.random.default_rng(spec["seed"]).permutation(len(docs))
        shuffled = [docs[i] for i in order]
        n_val = math.floor(len(docs) * frac)
        train, val = shuffled[: len(docs) - n_val], shuffled[len(docs) - n_val :]
    else:
        by_source: dict[str, list[dict]] = defaultdict(list)
        for d in docs:
            by_source[d["source"]].append(d)
        train, val = [], []
        for source in sorted(by_source):
            group = by_source[source]
            n_val = math.floor(len(group) * frac)
            train.extend(group[: len(group) - n_val])
            val.extend(group[len(group) - n_val :])
    if spec.get("train_subset"):
        train = train[: spec["train_subset"]]
    if spec.get("validation_subset"):
        val = val[: spec["validation_subset"]]
    if not val:
        raise SplitError(
            f"split leaves the validation set empty ({len(docs)} documents, "
            f"split.validation_fraction={frac}): raise the fraction or add documents"
        )
    if not train:
        raise SplitError(f"split leaves the training set empty ({len(docs)} documents)")
    return train, val
