"""Teacher cache: an LM teacher run once over the training shard.

For every shard position i (the student predicts token i+1 there) the cache holds the
signal the online teacher gives: the top-k student ids, their probabilities, the
unlisted intersection mass and whether the position could be aligned. The shard is
cut into consecutive chunks of `context` tokens and the teacher sees each chunk as one
window, so the signal at i is the teacher's prediction from its chunk start up to i.
A training window at shard offset o reads rows o .. o+T-1; for a window that starts
at a chunk start and has the chunk's length, it is exactly what the online teacher
gives (tested); elsewhere the teacher's context is the chunk's, not the window's.

Files, memory-mapped (`np.lib.format.open_memmap`), N = shard tokens:

    ids.npy      (N, K) uint16 (uint32 past 65,536 student ids)
    probs.npy    (N, K) float16
    rest.npy     (N,)   float16
    valid.npy    (N,)   bool
    support.npy  (V,)   bool     student ids the teacher can express
    cache.json   the key and everything it hashes (teacher, teacher tokenizer, student
                 tokenizer, shard, k, threshold, temperature, context), bytes per
                 token, aligned fraction, mean listed and mapped mass, build throughput

A cache is used only by a run whose student tokenizer, training shard and signal
(k, threshold, temperature) are the ones it was built with; anything else is refused
before training starts.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from sdce.data.shards import dtype_for, load_shard
from sdce.io import atomic_dir, file_hash, read_json, stable_hash, write_json
from sdce.teachers.signal import GuidanceSignal

SIDECAR = "cache.json"
HASHED = (
    "teacher",
    "teacher_tokenizer",
    "student_tokenizer",
    "shard",
    "top_k",
    "probability_threshold",
    "temperature",
    "context",
)


class CacheMismatch(ValueError):
    pass


def cache_key(hashed: dict) -> str:
    return stable_hash({k: hashed[k] for k in HASHED})


def build_cache(teacher, shard: str | Path, spec: dict, out: str | Path) -> dict:
    """Run `teacher` (an `LMTeacher`) over the shard in chunks of `spec['context']` tokens,
    `spec['batch_size']` chunks per forward pass, and write the cache folder `out`."""
    if spec["top_k"] is None:
        raise CacheMismatch(
            "a teacher cache stores top-k entries: top_k must be set (null is dense, online only)"
        )
    data, meta = load_shard(shard)
    n, k, ctx = len(data), spec["top_k"], spec["context"]
    id_dtype = dtype_for(teacher.alignment.student_vocab_size)
    hashed = {
        "teacher": teacher.descriptor.get("identity"),
        "teacher_tokenizer": teacher.descriptor.get("tokenizer_hash"),
        "student_tokenizer": meta["tokenizer_hash"],
        "shard": file_hash(shard),
        **{key: spec[key] for key in ("top_k", "probability_threshold", "temperature", "context")},
    }
    t0 = time.perf_counter()
    aligned = listed = mapped = 0.0
    with atomic_dir(out) as tmp:
        mm = np.lib.format.open_memmap
        arrays = {
            "ids": mm(tmp / "ids.npy", mode="w+", dtype=id_dtype, shape=(n, k)),
            "probs": mm(tmp / "probs.npy", mode="w+", dtype=np.float16, shape=(n, k)),
            "rest": mm(tmp / "rest.npy", mode="w+", dtype=np.float16, shape=(n,)),
            "valid": mm(tmp / "valid.npy", mode="w+", dtype=np.bool_, shape=(n,)),
        }
        starts = np.arange(0, n, ctx)
        whole = starts[starts + ctx <= n]
        # consecutive whole chunks, `batch_size` per pass, then the shorter last chunk alone
        batches = [whole[i : i + spec["batch_size"]] for i in range(0, len(whole), spec["batch_size"])]
        batches += [np.array([s]) for s in starts[starts + ctx > n]]
        for chunk_starts in batches:
            a = int(chunk_starts[0])
            width = min(ctx, n - a)
            x = np.asarray(data[chunk_starts[:, None] + np.arange(width)], dtype=np.int64)
            sig = teacher.signal(torch.from_numpy(x))
            b = a + x.size
            arrays["ids"][a:b] = sig.ids.reshape(-1, k).cpu().numpy().astype(id_dtype)
            arrays["probs"][a:b] = sig.probs.reshape(-1, k).cpu().numpy().astype(np.float16)
            arrays["rest"][a:b] = sig.rest.reshape(-1).cpu().numpy().astype(np.float16)
            valid = sig.valid.reshape(-1).cpu()
            arrays["valid"][a:b] = valid.numpy()
            aligned += float(valid.sum())
            listed += float(sig.probs.sum(-1).reshape(-1).cpu()[valid].sum())
            mapped += float((sig.probs.sum(-1) + sig.rest).reshape(-1).cpu()[valid].sum())
        for arr in arrays.values():
            arr.flush()
        np.save(tmp / "support.npy", teacher.alignment.student_mask.cpu().numpy())
        seconds = time.perf_counter() - t0
        nbytes = sum(arr.nbytes for arr in arrays.values())
        info = {
            **hashed,
            "key": cache_key(hashed),
            "tokens": n,
            "teacher_model": teacher.descriptor.get("model"),
            "bytes_per_token": nbytes / max(n, 1),
            "aligned_fraction": aligned / max(n, 1),
            "mean_listed_mass": listed / max(aligned, 1),
            "mean_mapped_mass": mapped / max(aligned, 1),
            "seconds": seconds,
            "tokens_per_s": n / max(seconds, 1e-9),
        }
        write_json(tmp / SIDECAR, info)
    return info


class CachedTeacher:
    """Reads the signal of training windows from a cache by their shard offsets."""

    def __init__(self, arrays: dict[str, np.ndarray], info: dict, device="cpu"):
        self.arrays, self.info, self.device = arrays, info, torch.device(device)
        self.support = torch.from_numpy(np.asarray(arrays["support"])).to(self.device)

    @classmethod
    def load(cls, path: str | Path, spec: dict, *, train_shard: str | Path, device="cpu") -> CachedTeacher:
        """Open a cache for a run with signal `spec` on `train_shard`; refuse a mismatch."""
        path = Path(path)
        if not (path / SIDECAR).is_file():
            raise CacheMismatch(
                f"{path} is not a teacher cache (no {SIDECAR}); build it with sdce cache-teacher"
            )
        info = read_json(path / SIDECAR)
        if info.get("key") != cache_key(info):
            raise CacheMismatch(f"teacher cache {path}: its key does not match what it says it hashes")
        for key in ("top_k", "probability_threshold", "temperature"):
            if info[key] != spec[key]:
                raise CacheMismatch(
                    f"teacher cache {path} was built with {key}={info[key]}, "
                    f"the run asks for {key}={spec[key]}"
                )
        _, meta = load_shard(train_shard)
        if info["student_tokenizer"] != meta["tokenizer_hash"]:
            raise CacheMismatch(
                f"teacher cache {path} was built with another student tokenizer "
                f"(hash {info['student_tokenizer']}, "
                f"the training shard's is {meta['tokenizer_hash']}): rebuild it with sdce cache-teacher"
            )
        if info["shard"] != file_hash(train_shard):
            raise CacheMismatch(
                f"teacher cache {path} was built over another training shard than {train_shard}: "
                "rebuild it with sdce cache-teacher"
            )
        arrays = {
            name: np.load(path / f"{name}.npy", mmap_mode="r") for name in ("ids", "probs", "rest", "valid")
        }
        arrays["support"] = np.load(path / "support.npy")
        if arrays["ids"].shape[0] != meta["tokens"]:
            raise CacheMismatch(
                f"teacher cache {path} has {arrays['ids'].shape[0]} rows, the shard {meta['tokens']}"
            )
        return cls(arrays, info, device)

    def to(self, device) -> CachedTeacher:
        return CachedTeacher(self.arrays, self.info, device)

    def signal(self, input_ids: torch.Tensor, offsets=None) -> GuidanceSignal:
        if offsets is None:
            raise ValueError("a cached teacher reads by shard offset: pass offsets= with the windows")
        rows = np.asarray(offsets)[:, None] + np.arange(input_ids.shape[1])

        def take(name: str, dtype) -> torch.Tensor:
            return torch.from_numpy(np.asarray(self.arrays[name][rows]).astype(dtype)).to(self.device)

        return GuidanceSignal(
            take("ids", np.int64),
            take("probs", np.float32),
            take("rest", np.float32),
            valid=take("valid", np.bool_),
            support=self.support,
        )
