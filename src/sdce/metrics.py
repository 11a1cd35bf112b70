"""The run's metrics: an append-only `metrics.jsonl` with the experiment trackers behind it,
and the logging window that averages a step's loss terms between logged steps.

Processes other than the main one get a log that writes nothing and a tracker that does
nothing (`sdce.trackers`), so the loop never branches on whether it logs.
"""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from sdce import trackers


class MetricsLog:
    """Records of kind `train` and `eval`, each with step, tokens and words seen."""

    def __init__(self, path: Path, enabled: bool, words_per_token: float):
        self.path, self.enabled, self.words_per_token = path, enabled, words_per_token
        self.trackers = trackers.Trackers([])

    def open_trackers(self, spec: dict, **kwargs) -> None:
        self.trackers = trackers.open_trackers(spec, enabled=self.enabled, **kwargs)

    def words(self, tokens: int) -> int:
        return round(tokens * self.words_per_token)

    def truncate(self, step: int) -> None:
        """Keep the records up to `step` (a resumed run's checkpoint)."""
        if not self.enabled or not self.path.exists():
            return
        keep = [r for r in map(json.loads, self.path.read_text().splitlines()) if r["step"] <= step]
        self.path.write_text("".join(json.dumps(r) + "\n" for r in keep))

    def reset(self) -> None:
        if self.enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text("")

    def write(self, kind: str, step: int, tokens: int, values: dict) -> dict:
        record = {"kind": kind, "step": step, "tokens": tokens, "words": self.words(tokens), **values}
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")
            self.trackers.log(record)
        return record

    def records(self) -> list[dict]:
        return [json.loads(r) for r in self.path.read_text().splitlines()] if self.path.exists() else []

    def close(self) -> None:
        self.trackers.close()


class StepWindow:
    """Loss terms and gradient norms of the steps since the last logged one, kept on the
    device; averaged (the training step's only host sync) when the window is logged."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.terms: dict[str, list] = {}
        self.tokens, self.started = 0, time.perf_counter()

    def add(self, terms: dict[str, torch.Tensor], tokens: int) -> None:
        for k, v in terms.items():
            self.terms.setdefault(k, []).append(v)
        self.tokens += tokens

    def means(self, device, backend) -> dict[str, float]:
        means = {k: torch.stack([t.float().to(device) for t in v]).mean() for k, v in self.terms.items()}
        if backend.world > 1:
            means = {k: backend.reduce(v, "mean") for k, v in means.items()}
        return {k: float(v) for k, v in means.items()}

    def tokens_per_s(self) -> float:
        return self.tokens / max(time.perf_counter() - self.started, 1e-9)


class TrainingClock:
    """Wall seconds spent training (the steps, not validation, milestones or checkpoints),
    summed over the run's restarts: `train_seconds` in the train records.

    Read at log time, after the window's host sync, so queued device work is counted in
    the window that ran it (on an accelerator, to within the step a pause starts in)."""

    def __init__(self, seconds: float = 0.0):
        self.seconds, self.since = seconds, time.perf_counter()

    @classmethod
    def resumed(cls, records: list[dict]) -> TrainingClock:
        """The clock of a run resumed from its (truncated) metrics: its last reading."""
        readings = [r["train_seconds"] for r in records if "train_seconds" in r]
        return cls(readings[-1] if readings else 0.0)

    def read(self) -> float:
        now = time.perf_counter()
        self.seconds, self.since = self.seconds + now - self.since, now
        return self.seconds

    @contextmanager
    def pause(self):
        """A context in which time is not counted."""
        self.read()
        try:
            yield
        finally:
            self.since = time.perf_counter()
