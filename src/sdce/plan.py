"""Planning a study: from a schema-valid config to what the DAG builds.

`sdce.config` checks a config against the schema (one JSON schema, shared with
Snakemake); this module turns a valid study into its plan:

* the concrete runs (`expand_runs`: a run's `grid` becomes one run per combination) and
  each run's resolved settings (`resolve_run`: the top-level model/training under the
  run's overrides, validated against the schema's resolved-run definition);
* the data partitions (`folds`, `data_part`, `part_split`): folds and per-run subsets;
* the LM teachers (`teachers.<name>`): what each needs built (`needs_training`,
  `tokenizer_spec`, `training_run`) and the signals its cache stores (`cache_spec`);
* the checks across keys that the schema cannot express (`check`): the baseline names a
  run, the batch divides into micro-batches, the heads divide the width, a corpus path
  exists, each run's objective and student agree, each LM-guided run names a teacher.

`plan(study)` does all of it once; `sdce check-config` and the Snakefile's parse both call
it, so a config either side refuses, the other refuses in the same words.

An LM teacher is one of

* trained from scratch (`name_or_path: null`): its own tokenizer trained on the training
  split, the split encoded with it, and the cross-entropy objective (`model`, `training`):
  the same loop as every student;
* fine-tuned from `name_or_path` (`finetune: full | lora | qlora`): its tokenizer loaded
  from there, then trained from those weights, all of them or LoRA adapters (peft;
  QLoRA on a 4-bit base needs CUDA). An adapter folder is merged into its base when the
  teacher is loaded (`sdce.teachers.lm.load_teacher_lm`);
* used as is (`finetune: none`).
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass
from pathlib import Path

from sdce import objectives
from sdce.config import ConfigError, deep_merge, validate

MAIN_PART = "main"
# corpus sources that read a local path (hf reads `hf_name`; synthetic reads nothing)
_PATH_SOURCES = ("babylm", "files")


# ---------------------------------------------------------------------------- runs


def _set_dotted(spec: dict, dotted: str, value) -> dict:
    out = copy.deepcopy(spec)
    node = out
    *parents, leaf = dotted.split(".")
    for key in parents:
        node = node.setdefault(key, {})
    node[leaf] = value
    return out


def _slug(value) -> str:
    text = str(value).lower() if isinstance(value, bool) or value is None else str(value)
    return "".join(c if c.isalnum() or c == "_" else "p" if c == "." else "_" for c in text)


def expand_runs(config: dict) -> dict[str, dict]:
    """Every concrete run of the study: runs with a `grid` become one run per combination
    of its axes, named `<run>-<key><value>...` (key = the last part of the dotted name).

    Returns {name: {"base": run, "axes": {dotted key: value}, "spec": run spec as written}}.
    """
    out: dict[str, dict] = {}
    for name, spec in config["runs"].items():
        spec = copy.deepcopy(spec or {})
        grid = spec.pop("grid", None) or {}
        keys = list(grid)
        for combo in itertools.product(*(grid[k] for k in keys)):
            axes = dict(zip(keys, combo, strict=True))
            concrete = spec
            for key, value in axes.items():
                concrete = _set_dotted(concrete, key, value)
            full = name + "".join(f"-{k.split('.')[-1]}{_slug(v)}" for k, v in axes.items())
            if full in out:
                raise ConfigError(f"runs.{name}.grid: expanded run name '{full}' is not unique")
            out[full] = {"base": name, "axes": axes, "spec": concrete}
    return out


def resolve_run(config: dict, run: str) -> dict:
    """The complete, validated settings of one (concrete) run: the top-level model/training
    under the run's overrides (as written: the schema's `run_override` fills nothing), and
    its guidance, with the defaults of the schema's resolved `run` filled."""
    runs = expand_runs(config)
    if run not in runs:
        raise ConfigError(f"runs.{run}: no such run (known: {', '.join(sorted(runs))})")
    spec = runs[run]["spec"]
    resolved = {
        "model": deep_merge(config.get("model", {}), spec.get("model", {})),
        "training": deep_merge(config.get("training", {}), spec.get("training", {})),
        "guidance": spec.get("guidance", {}),
    }
    return validate(resolved, "run", where=f"runs.{run}")


# ---------------------------------------------------------------------------- partitions


def folds(config: dict) -> list[str]:
    """The study's replicate data partitions: `fold0`..`fold<k-1>` under split.folds, else `main`."""
    k = config.get("split", {}).get("folds")
    return [f"fold{i}" for i in range(k)] if k else [MAIN_PART]


def data_part(config: dict, run: str, fold: str) -> str:
    """The data partition a (concrete) run trains on in `fold`: the fold itself, or
    `<fold>-n<N>` (`<fold>-nall` for null: every training document) when the run sets a
    training subset of its own (runs.<name>.split) other than the study's."""
    spec = expand_runs(config)[run]["spec"].get("split") or {}
    if "train_subset" not in spec or spec["train_subset"] == config["split"].get("train_subset"):
        return fold
    n = spec["train_subset"]
    return f"{fold}-n{'all' if n is None else n}"


def part_fold(part: str) -> str:
    """The fold a partition belongs to (`fold2` for `fold2-n500`; `main`)."""
    return part.split("-n")[0]


def fold_index(part: str) -> int | None:
    """The index of the fold a partition belongs to; None for `main`."""
    fold = part_fold(part)
    return None if fold == MAIN_PART else int(fold.removeprefix("fold"))


def part_split(config: dict, part: str) -> dict:
    """The split slice that makes `part` (what its split job gets as params). Without a
    validation corpus its two keys are left out: they are unused then, and a study made before
    they existed keeps its split params, so nothing reruns."""
    spec = copy.deepcopy(config.get("split", {}))
    if spec.get("validation_corpus") is None:
        spec.pop("validation_corpus", None)
        spec.pop("validation_missing", None)
    _, _, n = part.partition("-n")
    if n:
        spec["train_subset"] = None if n == "all" else int(n)
    return spec


# ---------------------------------------------------------------------------- LM teachers


def needs_training(spec: dict) -> bool:
    return spec["name_or_path"] is None or spec["finetune"] != "none"


def tokenizer_spec(spec: dict) -> dict:
    """The `tokenizer` slice of the teacher's own tokenizer."""
    if spec["name_or_path"] is None:
        return validate(spec["tokenizer"], "tokenizer")
    return validate({"kind": "pretrained", "path": spec["name_or_path"]}, "tokenizer")


def training_run(spec: dict) -> dict:
    """The run slice the training job gets for a teacher trained from scratch or fine-tuned."""
    if not needs_training(spec):
        raise ValueError("a teacher used as is (finetune: none) is not trained")
    model = dict(spec["model"])
    if spec["name_or_path"] is not None:
        model["from_pretrained"] = spec["name_or_path"]
        model["adapter"] = "none" if spec["finetune"] == "full" else spec["finetune"]
    run = {"model": model, "training": spec["training"], "guidance": {}}  # the default objective
    return validate(run, "run")


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
    return validate({**spec, "batch_size": teacher["batch_size"]}, "teacher_cache")


# ---------------------------------------------------------------------------- checks


def _check_teachers(teachers: dict[str, dict], runs: dict[str, dict]) -> None:
    """Runs against teachers: each LM-guided run names a teacher of `teachers`, a cached
    signal is top-k, and finetune comes with a model to fine-tune."""
    for name, spec in teachers.items():
        if spec["name_or_path"] is None and spec["finetune"] != "none":
            raise ConfigError(
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
            raise ConfigError(f"{where}.teacher: '{g['teacher']}' is not one of teachers ({known})")
        if objectives.signal_spec(g)["top_k"] is None and not objectives.reads_online(g):
            raise ConfigError(
                f"{where}.{g['objective']}.top_k: null (dense) needs teacher_source: online; "
                "the cache stores top-k"
            )


def check_run(run: dict, where: str) -> None:
    """A resolved run's constraints across keys: the student's shape, its batch, and its
    objective's model kind. Raises ConfigError naming the key."""
    from sdce.model import check_shape

    model, training = run["model"], run["training"]
    if model["from_pretrained"] is None:
        try:
            check_shape(model, f"{where}.")  # heads divide the width, top-k within the experts, ...
        except ValueError as err:
            raise ConfigError(str(err)) from None
    micro = training["micro_batch_size"]
    if micro is not None and training["batch_size"] % micro:
        raise ConfigError(
            f"{where}.training.micro_batch_size: {micro} does not divide "
            f"training.batch_size={training['batch_size']}"
        )
    try:
        objectives.check_run(run, where)
    except objectives.ObjectiveError as err:
        raise ConfigError(str(err)) from None


def _check_corpus(corpus: dict, where: str = "corpus") -> None:
    if corpus["source"] in _PATH_SOURCES:
        if corpus["path"] is None:
            raise ConfigError(f"{where}.path: required when {where}.source is {corpus['source']}")
        if not Path(corpus["path"]).exists():
            raise ConfigError(f"{where}.path: {corpus['path']} does not exist")
    if corpus["source"] == "hf" and corpus["hf_name"] is None:
        raise ConfigError(f"{where}.hf_name: required when {where}.source is hf")


def _check_split(split: dict) -> None:
    if split["validation_corpus"] is None:
        return
    if split["folds"] is not None:
        raise ConfigError(
            "split.validation_corpus: folds cut one corpus into k validation sets; "
            "give split.folds or a validation corpus, not both"
        )
    _check_corpus(split["validation_corpus"], "split.validation_corpus")


@dataclass(frozen=True)
class Plan:
    """What a valid study builds: its resolved runs, partitions and LM teachers."""

    runs: dict[str, dict]  # concrete run -> resolved settings
    grid: dict[str, dict]  # concrete run -> its base run and grid axes (expand_runs)
    folds: list[str]
    parts: list[str]  # every data partition some run trains on, and the folds
    teachers: dict[str, dict]  # LM teacher -> validated spec
    caches: dict[str, dict]  # LM teacher -> the signals its cache stores (cached teachers only)


def plan(study: dict) -> Plan:
    """The plan of a schema-valid study (defaults filled), after every check across keys.
    Raises ConfigError naming the first offending key."""
    if study["baseline"] not in study["runs"]:
        raise ConfigError(
            f"baseline: '{study['baseline']}' is not one of the runs ({', '.join(study['runs'])})"
        )
    _check_corpus(study["corpus"])
    _check_split(study["split"])
    grid = expand_runs(study)
    runs = {name: resolve_run(study, name) for name in grid}
    for name, run in runs.items():
        check_run(run, f"runs.{name}")
    try:
        objectives.check_data(study, runs)
    except objectives.ObjectiveError as err:
        raise ConfigError(str(err)) from None
    teachers = {
        name: validate(spec, "teacher", where=f"teachers.{name}") for name, spec in study["teachers"].items()
    }
    _check_teachers(teachers, runs)
    caches = {n: c for n, spec in teachers.items() if (c := cache_spec(n, spec, runs)) is not None}
    study_folds = folds(study)
    parts = sorted({data_part(study, run, fold) for run in runs for fold in study_folds} | set(study_folds))
    return Plan(runs, grid, study_folds, parts, teachers, caches)


def parse(config: dict) -> Plan:
    """The Snakefile's parse: validate `config` with the schema in place (defaults filled)
    and plan it. A refused config ends the parse with the key in one line
    (`config error: <key>: <why>`), in the words of `sdce check-config`; Snakemake's own
    `snakemake.utils.validate` runs the same jsonschema validation but reports a multi-line
    dump of the schema, so the Snakefile calls this instead."""
    try:
        valid = validate(config)
        config.clear()
        config.update(valid)
        return plan(config)
    except ConfigError as err:
        raise SystemExit(f"config error: {err}") from None
