"""LM teachers in the DAG: what `teachers.<name>` asks the rules to build.

A teacher is one of

* trained from scratch (`name_or_path: null`): its own tokenizer (`tokenizer`, e.g. a
  BPE of another size than the student's) trained on the training split, the split
  encoded with it, and `sdce train` with the cross-entropy objective (`model`,
  `training`): the same loop as every student;
* fine-tuned from `name_or_path` (`finetune: full | lora | qlora`): its tokenizer loaded
  from there, then `sdce train` from those weights, all of them or LoRA adapters (peft;
  QLoRA on a 4-bit base needs CUDA). An adapter folder is merged into its base when the
  teacher is loaded (`sdce.teachers.lm.load_teacher_lm`);
* used as is (`finetune: none`).

These helpers turn the spec into the config slices the rules pass to the `sdce` CLI, and
check a study's runs against its teachers before anything runs.
"""

from __future__ import annotations

from sdce import config as cfg
from sdce import objectives


def needs_training(spec: dict) -> bool:
    return spec["name_or_path"] is None or spec["finetune"] != "none"


def tokenizer_spec(spec: dict) -> dict:
    """The `tokenizer` slice of the teacher's own tokenizer."""
    if spec["name_or_path"] is None:
        return cfg.validate(spec["tokenizer"], "tokenizer")
    return cfg.validate({"kind": "pretrained", "path": spec["name_or_path"]}, "tokenizer")


def training_run(spec: dict) -> dict:
    """The run slice `sdce train` gets for a teacher trained from scratch or fine-tuned."""
    if not needs_training(spec):
        raise ValueError("a teacher used as is (finetune: none) is not trained")
    model = dict(spec["model"])
    if spec["name_or_path"] is not None:
        model["from_pretrained"] = spec["name_or_path"]
        model["adapter"] = "none" if spec["finetune"] == "full" else spec["finetune"]
    run = {"model": model, "training": spec["training"], "guidance": {}}  # the default objective
    return cfg.validate(run, "run")


def cache_spec(name: str, teacher: dict, runs: dict[str, dict]) -> dict | None:
    """The `teacher_cache` slice of teacher `name`: every signal its cached runs read, built
    in one pass (None when no run reads it from the cache)."""
    from sdce.teachers.lm import signal_name

    signals = {
        signal_name(objectives.signal_spec(g)): objectives.signal_spec(g)
        for g in (run["guidance"] for run in runs.values())
        if objectives.lm_teacher(g) == name and not objectives.reads_online(g)
    }
    if not signals:
        return None
    spec = {"signals": [signals[k] for k in sorted(signals)], "context": teacher["context"]}
    return cfg.validate({**spec, "batch_size": teacher["batch_size"]}, "teacher_cache")


def check_study(study: dict, runs: dict[str, dict]) -> None:
    """Runs against teachers: each surrogate/kl run names a teacher of `teachers`, a cached
    signal is top-k, and finetune comes with a model to fine-tune."""
    teachers = study.get("teachers", {})
    for name, spec in teachers.items():
        spec = cfg.validate(spec, "teacher", where=f"teachers.{name}")
        if spec["name_or_path"] is None and spec["finetune"] != "none":
            raise cfg.ConfigError(
                f"teachers.{name}.finetune: '{spec['finetune']}' fine-tunes name_or_path, which is null "
                "(a teacher trained from scratch needs finetune: none)"
            )
    for run_name, run in runs.items():
        g = run["guidance"]
        if objectives.lm_teacher(g) is None:
            continue
        where = f"runs.{run_name}.guidance"
        if g["teacher"] not in teachers:
            known = ", ".join(sorted(teachers)) or "none"
            raise cfg.ConfigError(f"{where}.teacher: '{g['teacher']}' is not one of teachers ({known})")
        if objectives.signal_spec(g)["top_k"] is None and not objectives.reads_online(g):
            raise cfg.ConfigError(
                f"{where}.{g['objective']}.top_k: null (dense) needs teacher_source: online; "
                "the cache stores top-k"
            )
