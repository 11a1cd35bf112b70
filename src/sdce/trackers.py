"""Optional experiment trackers, fed the records the loop writes to metrics.jsonl.

`training.tracking.trackers` switches them on (`tensorboard`, `wandb`); none is required.
The loop hands every record to a `Trackers` object, which does nothing when no tracker
is on or in processes other than the main one, so the loop never branches on it. A
selected tracker whose package is missing is refused by `check` before training starts.

    record {"kind": "train", "step": 20, "loss": 3.1, ...}  ->  scalar "train/loss" at step 20
    {"kind": "eval", "val_loss_by_source": {"wiki": 4.1}}   ->  "eval/val_loss_by_source/wiki"

TensorBoard writes event files under `<run folder>/tensorboard/`; a resumed run purges the
events past its checkpoint's step, as metrics.jsonl is truncated. Weights & Biases keeps the
run id in `<run folder>/work/wandb_id`, so a resumed run continues the same W&B run
(`WANDB_MODE=offline` writes it locally).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from sdce.backends import TrainingError

# tracker -> (module that must import, package to install)
PACKAGES = {"tensorboard": ("tensorboard", "'sdce[trackers]' (or tensorboard)"), "wandb": ("wandb", "wandb")}


def check(spec: dict) -> None:
    """Refuse a selected tracker whose package is not installed (validated `tracking` slice)."""
    for name in spec["trackers"]:
        module, package = PACKAGES[name]
        if importlib.util.find_spec(module) is None:
            raise TrainingError(
                f"training.tracking.trackers: {name} needs the {module} package, which is not "
                f"installed: pip install {package}, or remove {name} from the trackers"
            )


def scalars(values: dict, prefix: str) -> dict[str, float]:
    """The numbers of a record as tracker scalars, nested dicts flattened by key:
    {"val_loss_by_source": {"wiki": 4.1}} -> {"<prefix>/val_loss_by_source/wiki": 4.1};
    strings, booleans and lists are left out."""
    out = {}
    for key, value in values.items():
        name = f"{prefix}/{key}"
        if isinstance(value, dict):
            out.update(scalars(value, name))
        elif isinstance(value, int | float) and not isinstance(value, bool):
            out[name] = float(value)
    return out


class Trackers:
    """The trackers of one run; `log` a metrics record, `close` at the end."""

    def __init__(self, sinks: list):
        self.sinks = sinks

    def log(self, record: dict) -> None:
        if not self.sinks:
            return
        kind, step = record.get("kind", "train"), record["step"]
        body = {k: v for k, v in record.items() if k not in ("kind", "step")}
        values = scalars(body, kind)
        for sink in self.sinks:
            sink.log(values, step)

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()
        self.sinks = []


def open_trackers(
    spec: dict, *, enabled: bool, run_dir: Path, name: str, config: dict, start_step: int
) -> Trackers:
    """The trackers of `spec` (validated `training.tracking`) for a run starting (or resuming)
    at `start_step`; none when `enabled` is False (processes other than the main one)."""
    if not enabled or not spec["trackers"]:
        return Trackers([])
    check(spec)
    run_name = spec["run_name"] or name
    sinks = []
    for tracker in spec["trackers"]:
        if tracker == "tensorboard":
            sinks.append(_TensorBoard(Path(run_dir) / "tensorboard", config, start_step))
        else:
            sinks.append(_WandB(spec, run_name, config, Path(run_dir)))
    return Trackers(sinks)


class _TensorBoard:
    def __init__(self, log_dir: Path, config: dict, start_step: int):
        from torch.utils.tensorboard import SummaryWriter

        # resumed: events after the checkpoint's step were written by the interrupted run
        self.writer = SummaryWriter(str(log_dir), purge_step=start_step + 1 if start_step else None)
        if not start_step:
            self.writer.add_text("config", "```\n" + json.dumps(config, indent=2, sort_keys=True) + "\n```")

    def log(self, values: dict, step: int) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)

    def close(self) -> None:
        self.writer.close()


class _WandB:
    def __init__(self, spec: dict, run_name: str, config: dict, run_dir: Path):
        import wandb

        id_file = run_dir / "work" / "wandb_id"
        if id_file.exists():
            run_id = id_file.read_text().strip()
        else:
            run_id = wandb.util.generate_id()
            id_file.parent.mkdir(parents=True, exist_ok=True)
            id_file.write_text(run_id)
        self.run = wandb.init(
            project=spec["project"] or "sdce",
            entity=spec["entity"],
            name=run_name,
            config=config,
            dir=str(run_dir),
            id=run_id,
            resume="allow",
        )

    def log(self, values: dict, step: int) -> None:
        self.run.log(values, step=step)

    def close(self) -> None:
        self.run.finish()
