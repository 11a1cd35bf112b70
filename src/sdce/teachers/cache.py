"""Teacher cache: an LM teacher run once over the training shard.

The teacher runs once over the shard and every signal the study's runs ask for (top-k,
threshold, temperature) is stored from that one pass, each in its own folder. For every
shard position i (the student predicts token i+1 there) a cache holds the signal the
online teacher gives: the top-k student ids, their probabilities, the
unlisted intersection mass and whether the position could be aligned. The shard is
cut into consecutive chunks of `context` tokens and the teacher sees each chunk as one
window, so the signal at i is the teacher's prediction from its chunk start up to i.
A training window at shard offset o reads rows o .. o+T-1; for a window that starts
at a chunk start and has the chunk's length, it is exactly what the online teacher
gives (tested); elsewhere the teacher's context is the chunk's, not the window's.

Files of `<root>/<signal name>/`, memory-mapped (`np.lib.format.open_memmap`), N = shard tokens:

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

from sdce import flops
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


def build_caches(teacher, shard: str | Path, spec: dict, out: str | Path) -> dict[str, dict]:
    """Run `teacher` (an `LMTeacher`) once over the shard, in chunks of `spec['context']`
    tokens and `spec['batch_size']` chunks per forward pass, and write one cache per signal
    of `spec['signals']` under `out/<signal name>/`. Returns each cache's sidecar."""
    from sdce.teachers.lm import signal_name

    signals = {signal_name(s): s for s in spec["signals"]}
    for s in signals.values():
        if s["top_k"] is None:
            raise CacheMismatch(
                "a teacher cache stores top-k entries: top_k must be set (null is dense, online only)"
            )
        teacher.check_top_k(s["top_k"])
    data, meta = load_shard(shard)
    n, ctx = len(data), spec["context"]
    id_dtype = dtype_for(teacher.alignment.student_vocab_size)
    common = {
        "teacher": teacher.descriptor.get("identity"),
        "teacher_tokenizer": teacher.descriptor.get("tokenizer_hash"),
        "student_tokenizer": meta["tokenizer_hash"],
        "shard": file_hash(shard),
        "context": ctx,
    }
    t0 = time.perf_counter()
    with atomic_dir(out) as tmp:
        caches = {name: _Writer(tmp / name, n, s["top_k"], id_dtype) for name, s in signals.items()}
        starts = np.arange(0, n, ctx)
        whole = starts[starts + ctx <= n]
        # consecutive whole chunks, `batch_size` per pass, then the shorter last chunk alone
        batches = [whole[i : i + spec["batch_size"]] for i in range(0, len(whole), spec["batch_size"])]
        batches += [np.array([s]) for s in starts[starts + ctx > n]]
        for chunk_starts in batches:
            width = min(ctx, n - int(chunk_starts[0]))
            x = np.asarray(data[chunk_starts[:, None] + np.arange(width)], dtype=np.int64)
            logits, valid = teacher.rows(torch.from_numpy(x))
            for name, s in signals.items():
                caches[name].write(int(chunk_starts[0]), teacher.signal_from_logits(logits, valid, s))
        seconds = time.perf_counter() - t0
        shape = teacher.descriptor.get("flops", {}).get("shape")
        pass_flops = flops.ModelFlops(**shape).forward_per_token(ctx) * n if shape else 0.0
        support = teacher.alignment.student_mask.cpu().numpy()
        infos = {}
        for name, s in signals.items():
            hashed = {**common, **{k: s[k] for k in ("top_k", "probability_threshold", "temperature")}}
            infos[name] = {
                **hashed,
                "key": cache_key(hashed),
                **caches[name].close(support),
                "teacher_model": teacher.descriptor.get("model"),
                "seconds": seconds,
                "tokens_per_s": n / max(seconds, 1e-9),
                "signals_per_pass": len(signals),
                # compute (sdce.flops): the pass that filled the cache, counted once for all its
                # signals, and the teacher's own training when the study trained it
                "teacher_flops": pass_flops,
                "teacher_training_flops": float(teacher.descriptor.get("flops", {}).get("training", 0.0)),
            }
            write_json(tmp / name / SIDECAR, infos[name])
    return infos


class _Writer:
    """One cache folder being filled row by row."""

    def __init__(self, folder: Path, n: int, k: int, id_dtype):
        folder.mkdir(parents=True)
        mm = np.lib.format.open_memmap
        self.folder, self.n, self.k = folder, n, k
        self.arrays = {
            "ids": mm(folder / "ids.npy", mode="w+", dtype=id_dtype, shape=(n, k)),
            "probs": mm(folder / "probs.npy", mode="w+", dtype=np.float16, shape=(n, k)),
            "rest": mm(folder / "rest.npy", mode="w+", dtype=np.float16, shape=(n,)),
            "valid": mm(folder / "valid.npy", mode="w+", dtype=np.bool_, shape=(n,)),
        }
        self.aligned = self.listed = self.mapped = 0.0

    def write(self, a: int, sig: GuidanceSignal) -> None:
        valid = sig.valid.reshape(-1).cpu()
        b = a + valid.numel()
        self.arrays["ids"][a:b] = sig.ids.reshape(-1, self.k).cpu().numpy().astype(self.arrays["ids"].dtype)
        self.arrays["probs"][a:b] = sig.probs.reshape(-1, self.k).cpu().numpy().astype(np.float16)
        self.arrays["rest"][a:b] = sig.rest.reshape(-1).cpu().numpy().astype(np.float16)
        self.arrays["valid"][a:b] = valid.numpy()
        listed = sig.probs.sum(-1).reshape(-1).cpu()
        self.aligned += float(valid.sum())
        self.listed += float(listed[valid].sum())
        self.mapped += float((listed + sig.rest.reshape(-1).cpu())[valid].sum())

    def close(self, support: np.ndarray) -> dict:
        for arr in self.arrays.values():
            arr.flush()
        np.save(self.folder / "support.npy", support)
        nbytes = sum(arr.nbytes for arr in self.arrays.values())
        return {
            "tokens": self.n,
            "bytes_per_token": nbytes / max(self.n, 1),
            "aligned_fraction": self.aligned / max(self.n, 1),
            "mean_listed_mass": self.listed / max(self.aligned, 1),
            "mean_mapped_mass": self.mapped / max(self.aligned, 1),
        }


class CachedTeacher:
    """Reads the signal of training windows from a cache by their shard offsets."""

    def __init__(self, arrays: dict[str, np.ndarray], info: dict, device="cpu"):
        self.arrays, self.info, self.device = arrays, info, torch.device(device)
        support = np.asarray(arrays["support"])
        self.support = None if support.all() else torch.from_numpy(support).to(self.device)

    @classmethod
    def load(cls, path: str | Path, spec: dict, *, train_shard: str | Path, device="cpu") -> CachedTeacher:
        """Open a cache for a run with signal `spec` on `train_shard`; refuse a mismatch."""
        from sdce.teachers.lm import signal_name

        path = Path(path)
        if not (path / SIDECAR).is_file() and (path / signal_name(spec) / SIDECAR).is_file():
            path = path / signal_name(spec)  # the root of a teacher's caches: the run's signal
        if not (path / SIDECAR).is_file():
            held = sorted(p.parent.name for p in path.glob(f"*/{SIDECAR}"))
            if held:
                raise CacheMismatch(
                    f"teacher cache {path} holds the signals {', '.join(held)}; "
                    f"the run asks for {signal_name(spec)}"
                )
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
