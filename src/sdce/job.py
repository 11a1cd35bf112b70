"""One training job, described once and launched once.

A `Job` is built where the command line is parsed (the train rule's `sdce train-job`, the
predecessor front door `sdce train`, a TPU pod worker, tests) and handed to `launch(job)`,
which refuses what can be refused before any process starts, then picks how the job runs:
one process, several local processes (DDP/FSDP through accelerate, torch_xla's one per
chip), or a TPU VM pod that trains elsewhere and reports through the bucket.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from sdce.io import read_json, stable_hash


@dataclass(frozen=True)
class Inputs:
    """What the job reads: token shards (with their `.json` sidecars), the student
    tokenizer, and the teacher artifact its objective names (sdce.objectives), if any.
    Any of them may be a gs:// location (TPU pod workers); `local` fetches those."""

    train_shard: str
    val_shard: str
    tokenizer: str
    teacher: str | None = None

    def local(self, cache: str | Path) -> Inputs:
        from sdce import storage

        found = {}
        for key, path in dataclasses.asdict(self).items():
            found[key] = storage.fetch(path, cache) if path else None
            if path and key.endswith("_shard") and storage.is_uri(path):
                storage.fetch(path + ".json", cache)  # the shard's sidecar
        return Inputs(**found)


@dataclass(frozen=True)
class Placement:
    """Where and how the job runs: runtime settings (profiles), never part of the run's
    identity. `threads` is the job's total; `processes` 0 = one per visible GPU."""

    processes: int = 1
    threads: int = 1
    backend: str = "auto"  # auto | accelerate | xla
    launcher: str = "local"  # local | tpu-pod
    checkpoint_uri: str | None = None  # gs:// copies of checkpoints, metrics and outputs


@dataclass(frozen=True)
class Job:
    """One run of a study with one seed: its validated settings (`run`: model, training,
    guidance), its inputs, its output folder and its placement."""

    run: dict = field(hash=False)
    name: str
    seed: int
    inputs: Inputs
    out: str
    fold: str = "main"
    placement: Placement = Placement()
    resume: bool = True  # continue from the newest checkpoint of the same config
    resume_from: str | None = None  # an explicit step_N checkpoint folder instead
    progress: bool = True
    stop_after: int | None = None  # end after this step's checkpoint, as a preemption would

    def replace(self, **changes) -> Job:
        return dataclasses.replace(self, **changes)

    @property
    def spec(self) -> dict:
        return self.run["training"]

    def config_hash(self, train_meta: dict | None = None) -> str:
        """What a checkpoint must match to be resumed: the run's settings (not its experiment
        trackers, which only watch), seed, training data and whether it reads a teacher."""
        from sdce.data.shards import sidecar

        if train_meta is None:
            train_meta = read_json(sidecar(self.inputs.train_shard))
        training = {k: v for k, v in self.spec.items() if k != "tracking"}
        settings = {**self.run, "training": training}
        return stable_hash(
            {
                "run": settings,
                "seed": self.seed,
                "train": train_meta,
                "teacher": self.inputs.teacher is not None,
            }
        )


def launch(job: Job) -> dict:
    """Run `job`; its summary (`{"stopped_at": step}` when it stopped early)."""
    from sdce import backends, storage, tpu_pod, trackers
    from sdce.train import micro_batch, run_job

    trackers.check(job.spec["tracking"])
    if job.placement.launcher == "tpu-pod":
        return tpu_pod.submit(job)
    job = job.replace(inputs=job.inputs.local(Path(job.out) / "work" / "inputs"))
    if job.resume_from is not None:
        _check_resumable(job)
    backend = backends.resolve(job.placement.backend)
    processes = backends.resolve_processes(job.placement.processes, backend)
    backends.check(job.spec, job.run["model"], backend, processes)
    if backend != "xla":  # XLA's world (devices x hosts) is known inside its processes
        micro_batch(job.spec, processes)
    storage.open_remote(job.placement.checkpoint_uri)
    threads = max(1, job.placement.threads // processes)
    placed = job.replace(placement=dataclasses.replace(job.placement, backend=backend, threads=threads))
    result = backends.launch(run_job, {"job": placed}, backend=backend, processes=processes)
    return result if result is not None else _reported(job)  # XLA processes report through files


def _reported(job: Job) -> dict:
    from sdce import checkpoint as ckpt

    done = ckpt.list_checkpoints(Path(job.out) / "work" / "checkpoints")
    last = int(done[-1].name.split("_")[1]) if done else 0
    if job.stop_after is not None and done and last < job.spec["steps"]:
        return {"stopped_at": last}
    return json.loads((Path(job.out) / "summary.json").read_text())


def _check_resumable(job: Job) -> None:
    """Refuse an explicit checkpoint to resume from that is incomplete or of other settings."""
    from sdce import checkpoint as ckpt
    from sdce.backends import TrainingError

    folder = Path(job.resume_from)
    if not (folder / ckpt.STATE).is_file():
        raise TrainingError(f"resume from {folder}: not a complete checkpoint (no {ckpt.STATE})")
    state = read_json(folder / ckpt.STATE)
    if state.get("config_hash") != job.config_hash():
        raise TrainingError(
            f"resume from {folder}: it was written at step {state.get('step')} with other settings, "
            "seed or training data than this run's (config hash differs); start without it"
        )
