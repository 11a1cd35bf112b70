"""One training from the predecessor's configuration: `sdce train --config FILE`.

The predecessor trainer (one `train.py`) read a YAML with the sections
`model`, `surrogate`, `data`, `training` and `evaluation`, and flags such as `--base_model`,
`--surrogate_k` or `--standard_training` over it. This module takes those files and flags
unchanged and translates them (`translate`, pure) into sdce's validated sections, then into a
one-run study (`study`, pure) whose results folder is `training.output_dir/pipeline`. The
repository's Snakefile builds that study's data and teacher (`sdce.dag.build`: the pipeline's
own rules, up to date by Snakemake's one rule), and the run trains in this process:

    pipeline/study.yaml             the translated study
    pipeline/data/, tokenizers/,    its corpus, split, the student's tokenizer, token shards
      shards/, teachers/, logs/     and the surrogate's descriptor, as `sdce run` makes them
    .snakemake/                     Snakemake's metadata and lock for this output_dir
    sdce.json                       the predecessor's settings and the sdce settings they became
    model/, metrics.jsonl, ...      the run (sdce.train.train, the one training loop)

An edited training or evaluation file reruns what depends on it; the same command again (to
resume) finds every stage up to date and goes straight to training. Every predecessor key maps
to an sdce key, or is refused or reported with its name (docs/predecessor-configs.md).
The predecessor's diffusion-LM trainer (`--config_path FILE --base_path DIR`) has a layout of its
own, defined and translated in `sdce.predecessor_dlm` into the same plan, run by the same stages.

Epochs become optimizer steps from the encoded training tokens:

    steps = ceil(num_epochs * floor(train_tokens / max_seq_length) / global_batch)
    global_batch = per_device_train_batch_size * gradient_accumulation_steps * processes
    warmup steps = warmup_steps if set, else ceil(warmup_ratio * steps)

sdce draws every step's windows at seeded random offsets (resumable without data-loader
state), so an epoch is a budget of windows, not one pass over fixed chunks.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import re
import sys
from pathlib import Path

import yaml

from sdce import config as cfg
from sdce.config import ConfigError

DTYPES = ("float16", "bfloat16", "float32")
LOSS_TYPES = ("surrogate", "kl", "standard")
DEVICES = ("auto", "cuda", "mps", "tpu", "cpu")
PRECISIONS = {"no": "fp32", "bf16": "bf16", "fp16": "fp16"}
SCHEDULERS = ("cosine", "linear", "constant_with_warmup")
TRACKERS = ("tensorboard", "wandb")

_S, _I, _N, _B = (str,), (int,), (int, float), (bool,)
TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true/false", list: "a list"}

# The predecessor's layout: section -> key -> (the predecessor's default, accepted types). None = unset:
# the sdce schema's default applies (each mapping below says which).
LAYOUT: dict[str, dict[str, tuple]] = {
    "model": {
        "name_or_path": ("gpt2", _S),
        "dtype": (None, _S),
        "use_flash_attention": (False, _B),
        "gradient_checkpointing": (False, _B),
        "trust_remote_code": (False, _B),
        "init_from_scratch": (False, _B),
    },
    "surrogate": {
        "name_or_path": (None, _S),
        "dtype": (None, _S),
        "k": (30, _I),
        "probability_threshold": (0.02, _N),
        "enabled": (True, _B),
        "trust_remote_code": (False, _B),
        "loss_weight_initial": (1.0, _N),
        "loss_weight_final": (0.0, _N),
        "use_perplexity_weighting": (True, _B),
    },
    "data": {
        "dataset_name": ("wikitext", _S),
        "dataset_config": ("wikitext-2-raw-v1", _S),
        "dataset_split": ("train", _S),
        "eval_split": ("validation", _S),
        "text_column": ("text", _S),
        "max_seq_length": (1024, _I),
        "preprocessing_num_workers": (None, _I),
        "train_file": (None, _S),
        "eval_file": (None, _S),
        "eval_split_ratio": (0.05, _N),
        "eval_split_seed": (42, _I),
    },
    "training": {
        "output_dir": ("output", _S),
        "num_epochs": (3, _N),
        "per_device_train_batch_size": (4, _I),
        "per_device_eval_batch_size": (None, _I),
        "gradient_accumulation_steps": (4, _I),
        "learning_rate": (1e-4, _N),
        "weight_decay": (0.01, _N),
        "warmup_ratio": (0.1, _N),
        "warmup_steps": (None, _I),
        "max_grad_norm": (1.0, _N),
        "lr_scheduler_type": ("cosine", _S),
        "loss_type": ("surrogate", _S),
        "device": ("auto", _S),
        "tpu_cores": (None, _I),
        "tpu_num_hosts": (None, _I),
        "tpu_metrics_debug": (False, _B),
        "tpu_use_pjrt": (True, _B),
        "mixed_precision": ("no", _S),
        "logging_steps": (None, _I),
        "eval_steps": (None, _I),
        "save_steps": (None, _I),
        "save_total_limit": (None, _I),
        "use_z_loss": (False, _B),
        "z_loss_multiplier": (1e-4, _N),
        "local_rank": (None, _I),
        "seed": (42, _I),
        "resume_from_checkpoint": (None, (str, bool)),
        "wandb_project": (None, _S),
        "wandb_run_name": (None, _S),
        "wandb_entity": (None, _S),
        # sdce's addition, named as Hugging Face's TrainingArguments name it
        "report_to": (None, (str, list)),
    },
    "evaluation": {
        "enabled": (False, _B),
        "eval_interval": (None, _I),
        "tasks": (None, (str, list)),
        "num_fewshot": (None, _I),
        "batch_size": (None, _I),
        "limit": (None, _N),
        "log_individual_tasks": (None, _B),
        "log_aggregate_score": (None, _B),
    },
}
CHOICES = {
    "model.dtype": DTYPES,
    "surrogate.dtype": DTYPES,
    "training.loss_type": LOSS_TYPES,
    "training.device": DEVICES,
    "training.mixed_precision": tuple(PRECISIONS),
}

# sdce keys (as validation and training errors name them) -> the predecessor's keys they come from
PREDECESSOR_NAMES = {
    "training.steps": "training.num_epochs",
    "training.batch_size": "training.per_device_train_batch_size x gradient_accumulation_steps",
    "training.micro_batch_size": "training.per_device_train_batch_size",
    "training.block_size": "data.max_seq_length",
    "training.warmup_steps": "training.warmup_ratio / warmup_steps",
    "training.grad_clip": "training.max_grad_norm",
    "training.lr_scheduler": "training.lr_scheduler_type",
    "training.precision": "training.mixed_precision",
    "training.log_interval": "training.logging_steps",
    "training.eval_interval": "training.eval_steps",
    "training.checkpoint_interval": "training.save_steps",
    "training.z_loss": "training.z_loss_multiplier",
    "training.tracking": "training.report_to / wandb_*",
    "model.attn_implementation": "model.use_flash_attention",
    "model.from_pretrained": "model.name_or_path",
    "guidance.initial_weight": "surrogate.loss_weight_initial",
    "guidance.min_weight": "surrogate.loss_weight_final",
    "guidance.surrogate.top_k": "surrogate.k",
    "split.validation_fraction": "data.eval_split_ratio",
    "teachers.surrogate": "surrogate.name_or_path",
}


def in_predecessor_terms(message: str, names: dict[str, str] = PREDECESSOR_NAMES) -> str:
    """`message` with the predecessor's names of the sdce keys it mentions appended."""
    hits = [
        f"{key} is the predecessor's {old}"
        for key, old in names.items()
        if re.search(rf"(?<!\w){re.escape(key)}(?!\w)", message)
    ]
    return message + (f" ({'; '.join(hits)})" if hits else "")


# --- the predecessor's configuration: file, flags, checks ---------------------------------------------


def is_predecessor_layout(doc, layout: dict = LAYOUT) -> bool:
    """A predecessor-style config: its own sections, none of a study config's own keys."""
    if not isinstance(doc, dict) or not doc:
        return False
    study_only = set(cfg.schema()["properties"]) - set(layout)
    if study_only & set(doc):
        return False
    model, training = doc.get("model") or {}, doc.get("training") or {}
    return bool(
        {"surrogate", "data"} & set(doc)
        or (isinstance(model, dict) and "name_or_path" in model)
        or (isinstance(training, dict) and {"loss_type", "mode", "output_dir", "num_epochs"} & set(training))
    )


def _check_value(where: str, value, types: tuple, choices: dict = CHOICES) -> None:
    if value is None:
        return
    ok = isinstance(value, types)
    if isinstance(value, bool) and bool not in types:
        ok = False  # True is an int to Python, not to a config
    if not ok:
        names = " or ".join(TYPE_NAMES[t] for t in types)
        raise ConfigError(f"{where}: expected {names}, got {value!r}")
    if where in choices and value not in choices[where]:
        raise ConfigError(f"{where}: '{value}' is not one of {', '.join(choices[where])}")


def read_predecessor(path: str | Path | None, layout: dict = LAYOUT, choices: dict = CHOICES) -> dict:
    """The sections of a predecessor-style YAML as written, every key checked against `layout`
    (the surrogate trainer's, or the DLM trainer's: sdce.predecessor_dlm); unknown: an error."""
    if path is None:
        return {}
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: expected sections {', '.join(layout)}")
    if not is_predecessor_layout(doc, layout) and "runs" in doc:
        raise ConfigError(
            f"{path} is a study config: run it with `snakemake --configfile {path}`, or one of its "
            f"runs with `sdce train-job --config {path} --name RUN ...`"
        )
    for section, values in doc.items():
        if section not in layout:
            raise ConfigError(f"{section} is not a known section (known: {', '.join(layout)})")
        if values is None:
            continue
        if not isinstance(values, dict):
            raise ConfigError(f"{section}: expected a mapping of keys")
        for key, value in values.items():
            if key not in layout[section]:
                raise ConfigError(
                    f"{section}.{key} is not a known key of the predecessor's {section} section"
                )
            if (section, key, value) == ("training", "mixed_precision", False):
                values[key] = value = "no"  # YAML 1.1 reads an unquoted `no` as false
            _check_value(f"{section}.{key}", value, layout[section][key][1], choices)
    return {s: dict(v or {}) for s, v in doc.items()}


def resolve(
    written: dict, flags: dict, layout: dict = LAYOUT, choices: dict = CHOICES
) -> tuple[dict, set[str]]:
    """(every predecessor key with its value: flags over the file over the predecessor's defaults,
    the dotted keys set explicitly, in the file or by a flag)."""
    merged = {s: {k: d for k, (d, _) in keys.items()} for s, keys in layout.items()}
    explicit = set()
    for layer in (written, flags):
        for section, values in layer.items():
            for key, value in values.items():
                if value is not None:
                    _check_value(f"{section}.{key}", value, layout[section][key][1], choices)
                    merged[section][key] = value
                    explicit.add(f"{section}.{key}")
    return merged, explicit


# --- translation into sdce's sections --------------------------------------------------------


def translate(written: dict, explicit: set[str], *, processes: int = 1, no_resume: bool = False) -> dict:
    """The plan of one standalone training: sdce's validated corpus, split, tokenizer and
    teacher sections, the run (without the settings that need the token counts: `finalize`),
    and how to run it. Refuses, naming the predecessor's key, what sdce cannot do as asked."""
    m, s, d, t, e = (written[k] for k in ("model", "surrogate", "data", "training", "evaluation"))
    warnings: list[str] = []
    out = Path(t["output_dir"]).expanduser()
    loss_type = _loss_type(t, s, explicit)
    model = _model(m, t, warnings)
    backend = _backend(t)
    from sdce.backends import resolve as resolve_backend  # torch: imported when a config is translated

    training = _training(t, m, d["max_seq_length"], processes, resolve_backend(backend) == "xla", warnings)
    guidance, teacher = _guidance(loss_type, s), None
    if loss_type != "standard":
        teacher = cfg.validate(
            {
                "name_or_path": s["name_or_path"],
                "trust_remote_code": s["trust_remote_code"],
                **({"dtype": s["dtype"]} if s["dtype"] else {}),
            },
            "teacher",
            where="surrogate",
        )
    if e["enabled"]:
        tasks = e["tasks"] if isinstance(e["tasks"], str) else ", ".join(e["tasks"] or []) or "none listed"
        warnings.append(
            f"evaluation.enabled: lm-evaluation-harness tasks ({tasks}) are not run by sdce train; "
            "the validation loss is evaluated every training.eval_steps, and `sdce evaluate "
            "--model OUTPUT_DIR/model ...` scores minimal pairs (BLiMP, the BabyLM suite)"
        )
    resume_from = _resume_point(t["resume_from_checkpoint"], out)
    corpus, eval_corpus, split = _data(d, warnings)
    return {
        "output_dir": str(out),
        "name": t["wandb_run_name"] or out.resolve().name,
        "seed": t["seed"],
        "loss_type": loss_type,
        "corpus": corpus,
        "eval_corpus": eval_corpus,
        "split": split,
        "student": m["name_or_path"],
        "teacher": teacher,
        "run": {"model": model, "training": training, "guidance": guidance},
        "epochs": t["num_epochs"],
        "warmup_ratio": t["warmup_ratio"],
        "warmup_steps": t["warmup_steps"],
        "processes": processes,
        "backend": backend,
        "resume": not no_resume,
        "resume_from": resume_from,
        "warnings": warnings,
        "predecessor": written,
    }


def _loss_type(t: dict, s: dict, explicit: set[str]) -> str:
    """training.loss_type as it can run: standard when the surrogate is switched off."""
    loss_type = t["loss_type"]
    if not s["enabled"] and loss_type != "standard":
        if "training.loss_type" in explicit:
            raise ConfigError(
                f"training.loss_type={loss_type} trains against the surrogate, but surrogate.enabled "
                "is false (--no_surrogate): use loss_type standard (--standard_training) for plain "
                "cross-entropy, or drop --no_surrogate"
            )
        loss_type = "standard"  # the surrogate switched off and no loss type asked for
    if loss_type != "standard" and not s["name_or_path"]:
        raise ConfigError(
            f"training.loss_type={loss_type} needs surrogate.name_or_path (--surrogate_model): "
            "the surrogate model, a folder or a name"
        )
    return loss_type


def _model(m: dict, t: dict, warnings: list[str]) -> dict:
    """The run's model slice from the predecessor's model section."""
    if m["trust_remote_code"]:
        raise ConfigError(
            "model.trust_remote_code: sdce builds students with transformers' own architectures "
            "only; the surrogate may use remote code (surrogate.trust_remote_code)"
        )
    if m["dtype"] not in (None, "float32"):
        warnings.append(
            f"model.dtype={m['dtype']} is not used: sdce keeps fp32 weights and computes in "
            f"training.mixed_precision ({t['mixed_precision']}); set mixed_precision to "
            f"{'bf16' if m['dtype'] == 'bfloat16' else 'fp16'} for {m['dtype']} compute"
        )
    return {
        "from_pretrained": m["name_or_path"],
        "init_from_scratch": m["init_from_scratch"],
        "attn_implementation": "flash_attention_2" if m["use_flash_attention"] else "sdpa",
    }


def _training(t: dict, m: dict, block_size: int, processes: int, xla: bool, warnings: list[str]) -> dict:
    """The run's training slice (steps and warmup come later, from the token counts: `finalize`).
    On XLA the device count is known inside its processes only: the batch is split over them."""
    if t["lr_scheduler_type"] not in SCHEDULERS:
        raise ConfigError(
            f"training.lr_scheduler_type: '{t['lr_scheduler_type']}' is not supported "
            f"(sdce: {', '.join(SCHEDULERS)})"
        )
    per_device, accum = t["per_device_train_batch_size"], t["gradient_accumulation_steps"]
    training = {
        "batch_size": per_device * accum * processes,
        "micro_batch_size": None if xla else per_device,
        "block_size": block_size,
        "learning_rate": t["learning_rate"],
        "min_lr_ratio": 0.0,  # transformers' cosine and linear schedules end at 0
        "lr_scheduler": t["lr_scheduler_type"],
        "weight_decay": t["weight_decay"],
        "beta2": 0.999,  # the predecessor names no betas: torch's and transformers' AdamW default
        "grad_clip": t["max_grad_norm"],
        "precision": PRECISIONS[t["mixed_precision"]],
        "gradient_checkpointing": m["gradient_checkpointing"],
        "z_loss": t["z_loss_multiplier"] if t["use_z_loss"] else 0.0,
        "tracking": _tracking(t),
    }
    from sdce import trackers

    trackers.check(training["tracking"])  # a selected tracker's package, before any data work
    for old_key, key in (
        ("logging_steps", "log_interval"),
        ("eval_steps", "eval_interval"),
        ("save_steps", "checkpoint_interval"),
        ("save_total_limit", "save_total_limit"),
    ):
        if t[old_key] is not None:  # else sdce's default (config/README.md)
            training[key] = t[old_key]
    if t["local_rank"] not in (None, -1):
        warnings.append("training.local_rank is not used: sdce starts its processes itself (--processes N)")
    if t["tpu_metrics_debug"]:
        warnings.append("training.tpu_metrics_debug is not used: summary.json records XLA compilations")
    return training


def _backend(t: dict) -> str:
    import torch

    device, tpu = t["device"], "--backend xla (device: tpu) on one TPU VM, or profiles/tpu for a pod"
    if t["tpu_cores"] is not None or t["tpu_num_hosts"] is not None:
        raise ConfigError(
            "training.tpu_cores / tpu_num_hosts: torch_xla uses every local TPU core and the hosts "
            f"of a pod join through PJRT; remove them and use {tpu} (README, TPU VM pods)"
        )
    if not t["tpu_use_pjrt"]:
        raise ConfigError("training.tpu_use_pjrt: false: sdce runs XLA through PJRT only; remove it")
    if device == "mps":
        raise ConfigError("training.device: mps is not supported by sdce (cuda, cpu or tpu; auto picks)")
    if device == "tpu":
        return "xla"
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "training.device: cuda, but no CUDA device is visible here (auto or cpu trains here)"
        )
    if device == "cpu" and torch.cuda.is_available():
        raise ConfigError(
            "training.device: cpu on a machine with CUDA: sdce trains on the devices it is given; "
            "hide the GPUs with CUDA_VISIBLE_DEVICES= to train on the CPU"
        )
    return "auto" if device == "auto" else "accelerate"


def _tracking(t: dict) -> dict:
    report_to = t["report_to"]
    wanted = [report_to] if isinstance(report_to, str) else list(report_to or [])
    wanted = [w for w in wanted if w != "none"]
    for w in wanted:
        if w not in TRACKERS:
            raise ConfigError(
                f"training.report_to: '{w}' is not supported (sdce: {', '.join(TRACKERS)}, none)"
            )
    if t["wandb_project"] and "wandb" not in wanted:
        wanted.append("wandb")  # the predecessor logged to W&B when a project was named
    return {
        "trackers": wanted,
        "project": t["wandb_project"],
        "run_name": t["wandb_run_name"],
        "entity": t["wandb_entity"],
    }


def _guidance(loss_type: str, s: dict) -> dict:
    if loss_type == "standard":
        return {"objective": "ce"}
    for key in ("loss_weight_initial", "loss_weight_final"):
        if not 0 <= s[key] <= 1:
            raise ConfigError(f"surrogate.{key}={s[key]}: sdce's guidance weights lie in [0, 1]")
    common = {
        "schedule": "cosine",  # from loss_weight_initial to loss_weight_final over the whole run
        "schedule_steps": None,
        "initial_weight": s["loss_weight_initial"],
        "min_weight": s["loss_weight_final"],
        "teacher": "surrogate",
        "teacher_source": "online",
    }
    if loss_type == "kl":
        # CE + KL: sdce's kl at alpha 0.5, T = 1, the full shared vocabulary (see README)
        kl = {"alpha": 0.5, "temperature": 1.0, "top_k": None, "probability_threshold": 0.0}
        return {"objective": "kl", **common, "kl": kl}
    if not s["use_perplexity_weighting"]:
        raise ConfigError(
            "surrogate.use_perplexity_weighting: false (unweighted top-k tokens) has no sdce "
            "equivalent; sdce weights them by softmax(-perplexity) (true) or by teacher probability"
        )
    surrogate = {
        "top_k": s["k"],
        "probability_threshold": s["probability_threshold"],
        "weighting": "inverse_perplexity",  # w = softmax(-perplexity) = softmax(-1/q), as the predecessor
    }
    return {"objective": "surrogate", **common, "surrogate": surrogate}


def _data(d: dict, warnings: list[str]) -> tuple[dict, dict | None, dict]:
    """(training corpus, evaluation corpus or None, the split used when there is none)."""
    column = d["text_column"]
    split = cfg.validate(
        {"validation_fraction": d["eval_split_ratio"], "shuffle": True, "seed": d["eval_split_seed"]},
        "properties/split",
        where="split",
    )
    if d["preprocessing_num_workers"] is not None:
        warnings.append(
            "data.preprocessing_num_workers is not used: the Rust tokenizer encodes in batches on every core"
        )

    def files(key: str) -> dict:
        path = Path(d[key]).expanduser()
        if path.suffix not in ("", ".txt", ".json", ".jsonl"):
            raise ConfigError(
                f"data.{key}: {path.name}: sdce reads .txt (one document per line), .json and .jsonl "
                f"files (text column data.text_column) or a folder of them; convert {path.suffix} files"
            )
        return {"source": "files", "path": str(path), "text_column": column}

    def hf(split_name: str) -> dict:
        return {
            "source": "hf",
            "hf_name": d["dataset_name"],
            "hf_config": d["dataset_config"],
            "hf_split": split_name,
            "text_column": column,
        }

    if d["train_file"]:
        train = files("train_file")
        evals = files("eval_file") if d["eval_file"] else None
    else:
        train = hf(d["dataset_split"])
        evals = files("eval_file") if d["eval_file"] else None
        if evals is None and d["eval_split"]:
            splits = _saved_splits(d["dataset_name"])
            if splits is not None and d["dataset_split"] not in splits and splits != ["*"]:
                raise ConfigError(
                    f"data.dataset_split: {d['dataset_name']} has no split '{d['dataset_split']}' "
                    f"(has: {', '.join(splits)})"
                )
            if splits is None or d["eval_split"] in splits:
                evals = hf(d["eval_split"])  # on the hub: tried, and split instead if it is missing
            else:
                warnings.append(_no_eval_split(d))
    valid = lambda spec: cfg.validate(spec, "properties/corpus", where="corpus")  # noqa: E731
    return valid(train), valid(evals) if evals else None, split


def _saved_splits(name: str) -> list[str] | None:
    """The splits of a `save_to_disk` folder (["*"]: a single dataset); None for a hub name."""
    local = Path(name).expanduser()
    if (local / "dataset_dict.json").is_file():
        return list(json.loads((local / "dataset_dict.json").read_text())["splits"])
    if (local / "dataset_info.json").is_file() or (local / "state.json").is_file():
        return ["*"]
    return None


def _no_eval_split(d: dict) -> str:
    return (
        f"data.eval_split: {d['dataset_name']} has no split '{d['eval_split']}'; holding out "
        f"data.eval_split_ratio={d['eval_split_ratio']} of the training documents "
        f"(seed data.eval_split_seed={d['eval_split_seed']})"
    )


def _resume_point(value, out: Path) -> str | None:
    """The checkpoint folder `resume_from_checkpoint` names (None: sdce's own, the newest
    checkpoint of this output_dir written with the same settings, if any)."""
    from sdce import checkpoint as ckpt

    if value is None or isinstance(value, bool) or str(value).lower() in ("true", "false", "latest"):
        return None
    path = Path(value).expanduser()
    if not path.exists():
        raise ConfigError(f"training.resume_from_checkpoint: {path} does not exist")
    if (path / ckpt.STATE).is_file():
        return str(path)
    for root in (path / "work" / "checkpoints", path):
        found = ckpt.list_checkpoints(root)
        if found:
            return str(found[-1])
    if (path / "trainer_state.json").exists() or (path / "optimizer.pt").exists():
        raise ConfigError(
            f"training.resume_from_checkpoint: {path} is a transformers Trainer checkpoint, which "
            "sdce cannot resume (its optimizer and data order differ); start from its weights "
            "with model.name_or_path instead"
        )
    raise ConfigError(
        f"training.resume_from_checkpoint: {path} holds no sdce checkpoint (a step_N folder with "
        f"{ckpt.STATE}, or a run folder with work/checkpoints/)"
    )


def finalize(
    plan: dict, train_tokens: int, val_tokens: int, documents: int | None = None
) -> tuple[dict, dict]:
    """(the validated run, the numbers of the steps formula) once the shards are encoded. An
    epoch is floor(train_tokens / block) windows, or, for a plan whose objective trains one
    example per window (`per_example`: the DLM trainer's sft mode), the training documents."""
    run = copy.deepcopy(plan["run"])
    training = run["training"]
    block, batch = training["block_size"], training["batch_size"]
    windows = documents if plan.get("per_example") and documents else train_tokens // block
    if windows < 1 or train_tokens <= block + 1:
        raise ConfigError(
            f"data: the training text has {train_tokens} tokens, fewer than one window of "
            f"data.max_seq_length={block} (+1)"
        )
    if val_tokens <= block:
        raise ConfigError(
            f"data: the evaluation text has {val_tokens} tokens, not one window of "
            f"data.max_seq_length={block}: raise data.eval_split_ratio or give more evaluation text"
        )
    steps = max(1, math.ceil(plan["epochs"] * windows / batch))
    warmup = plan["warmup_steps"]
    if warmup is None:
        warmup = math.ceil(plan["warmup_ratio"] * steps)
    training.update(steps=steps, warmup_steps=min(warmup, steps), eval_tokens=val_tokens)
    formula = {
        "train_tokens": train_tokens,
        "windows_per_epoch": windows,
        "global_batch": batch,
        "epochs": plan["epochs"],
        "steps": steps,
        "warmup_steps": training["warmup_steps"],
    }
    return cfg.validate(run, "run", where="run"), formula


# --- the stages: the translated study through the pipeline ------------------------------------

RUN = "run"  # the one run of the translated study
STAGES = "pipeline"  # its results folder under output_dir: data/, tokenizers/, shards/, teachers/


def _absolute(path: str | None) -> str | None:
    """A local path as an absolute one (the stage jobs run in output_dir); names as they are."""
    if path is None or not Path(path).expanduser().exists():
        return path
    return str(Path(path).expanduser().resolve())


def _local(spec: dict) -> dict:
    return {**spec, **{k: _absolute(spec[k]) for k in ("path", "hf_name") if spec.get(k)}}


def study(plan: dict) -> dict:
    """The one-run study the plan's stages are (a pure function of the plan, validated and
    planned): its corpus, split (the evaluation corpus as split.validation_corpus), the
    student's tokenizer and the surrogate, with output_dir/pipeline as its results folder.
    The run's steps are left to `finalize`, which needs the encoded shard."""
    from sdce.plan import plan as check

    results = str(Path(plan["output_dir"]).expanduser().resolve())
    if re.search(r"[\s'\"]", results):
        raise ConfigError(
            f"training.output_dir: {results} holds a space or quote, which the pipeline's job "
            "commands cannot take (its stages run through the Snakefile): choose another folder"
        )
    split = {**plan["split"], "validation_corpus": None, "validation_missing": "error"}
    evals = plan["eval_corpus"]
    if evals is not None:  # a hub dataset without the split: held out of the corpus instead
        missing = "split" if evals["source"] == "hf" else "error"
        split.update(validation_corpus=_local(evals), validation_missing=missing)
    tokenizer = {
        "kind": "pretrained",
        "path": _absolute(plan["student"]),
        "special_tokens": list(plan.get("special_tokens", [])),
    }
    teachers = {}
    if plan["teacher"]:
        teacher = plan["teacher"]
        teachers[plan["run"]["guidance"]["teacher"]] = {
            **teacher,
            "name_or_path": _absolute(teacher["name_or_path"]),
        }
    doc = cfg.validate(
        {
            "experiment": STAGES,
            "results_dir": results,
            "seeds": [plan["seed"]],
            "corpus": _local(plan["corpus"]),
            "split": split,
            "tokenizer": tokenizer,
            "teachers": teachers,
            "runs": {RUN: copy.deepcopy(plan["run"])},
            "baseline": RUN,
        }
    )
    check(doc)
    return doc


def stage_targets(doc: dict) -> dict:
    """The paths of what the study's run trains from: its shards, tokenizer and the teacher
    artifact its objective needs (the registry says which), under the study's results."""
    from sdce import objectives
    from sdce.plan import data_part, part_fold, resolve_run

    results = Path(doc["results_dir"]) / doc["experiment"]
    part = data_part(doc, RUN, "main")
    found = objectives.artifact(resolve_run(doc, RUN)["guidance"], part)
    return {
        "train_shard": results / "shards" / part / "train.bin",
        "val_shard": results / "shards" / part / "validation.bin",
        "tokenizer": results / "tokenizers" / part_fold(part),
        "teacher": results / found if found else None,
    }


def prepare(plan: dict, log=print) -> dict:
    """The plan's data and teacher, made or found up to date by the pipeline's own rules
    (`sdce.dag.build`: the translated study, its config in output_dir/pipeline/study.yaml,
    Snakemake's metadata in output_dir/.snakemake); their paths."""
    from sdce import dag
    from sdce.io import atomic_path

    doc = study(plan)
    _check_positions(plan)
    results = Path(doc["results_dir"]) / doc["experiment"]
    config = results / "study.yaml"
    config.parent.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(doc, sort_keys=True)
    if not config.is_file() or config.read_text() != text:
        with atomic_path(config) as tmp:
            Path(tmp).write_text(text)
    paths = stage_targets(doc)
    targets, log_file = [str(p) for p in paths.values() if p is not None], results / "logs" / "snakemake.log"
    log(f"stages: {results} through the Snakefile (Snakemake's log: {log_file})")
    ran = dag.build(config, targets, Path(doc["results_dir"]), log_file)
    counts = {rule: ran.count(rule) for rule in dict.fromkeys(ran)}
    done = ", ".join(f"{rule} x{n}" if n > 1 else rule for rule, n in counts.items())
    log(f"stages: ran {done}" if ran else "stages: all up to date")
    return paths


def _check_positions(plan: dict) -> None:
    from transformers import AutoConfig

    pretrained = plan["run"]["model"].get("from_pretrained")
    if not pretrained:
        return  # built from scratch with block_size positions
    try:
        config = AutoConfig.from_pretrained(pretrained)
    except (OSError, ValueError):
        return  # from_pretrained says what is wrong when training starts
    positions = getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None)
    block = plan["run"]["training"]["block_size"]
    if positions and block > positions:
        raise ConfigError(
            f"data.max_seq_length={block} is longer than {pretrained} takes ({positions} positions)"
        )


def run(
    plan: dict, *, threads: int = 1, progress: bool = True, stop_after: int | None = None, log=print
) -> dict:
    """Prepare the data, then train with `sdce.train.train`; the run's summary."""
    from sdce.data.shards import sidecar
    from sdce.io import read_json, write_json
    from sdce.job import Inputs, Job, Placement, launch

    paths = prepare(plan, log)
    teacher = str(paths["teacher"]) if paths["teacher"] else None
    train_meta, val_meta = (read_json(sidecar(paths[k])) for k in ("train_shard", "val_shard"))
    settings, formula = finalize(plan, train_meta["tokens"], val_meta["tokens"], train_meta["documents"])
    out, split = Path(plan["output_dir"]), plan["split"]
    subsets = split.get("train_subset") or split.get("validation_subset")
    write_json(
        out / "sdce.json",
        {
            "predecessor": plan["predecessor"],
            "run": settings,
            "corpus": plan["corpus"],
            "eval_corpus": plan["eval_corpus"],
            "split": split if plan["eval_corpus"] is None or subsets else None,
            "teacher": plan["teacher"],
            "steps": formula,
        },
    )
    block = settings["training"]["block_size"]
    log(
        f"train: {plan['loss_type']} loss, {formula['epochs']} epoch(s) of {formula['windows_per_epoch']:,} "
        f"windows = {formula['steps']} steps of {formula['global_batch']} x {block} tokens "
        f"({formula['warmup_steps']} warmup) -> {out}"
    )
    inputs = Inputs(*(str(paths[k]) for k in ("train_shard", "val_shard", "tokenizer")), teacher=teacher)
    job = Job(
        run=settings,
        name=plan["name"],
        seed=plan["seed"],
        inputs=inputs,
        out=str(out),
        placement=Placement(processes=plan["processes"], threads=threads, backend=plan["backend"]),
        resume=plan["resume"],
        resume_from=plan["resume_from"],
        progress=progress,
        stop_after=stop_after,
    )
    return launch(job)


# --- the command line ----------------------------------------------------------------------------

_TRUE = {"action": "store_const", "const": True, "default": None}
# the predecessor's flags: (flag, the predecessor's key it sets, argparse settings)
FLAGS = [
    ("--base_model", "model.name_or_path", {}),
    ("--model_dtype", "model.dtype", {"choices": DTYPES}),
    ("--gradient_checkpointing", "model.gradient_checkpointing", _TRUE),
    ("--trust_remote_code", "model.trust_remote_code", _TRUE),
    ("--init_from_scratch", "model.init_from_scratch", _TRUE),
    ("--surrogate_model", "surrogate.name_or_path", {}),
    ("--surrogate_k", "surrogate.k", {"type": int}),
    ("--probability_threshold", "surrogate.probability_threshold", {"type": float}),
    ("--surrogate_dtype", "surrogate.dtype", {"choices": DTYPES}),
    ("--no_surrogate", "surrogate.enabled", {"action": "store_const", "const": False, "default": None}),
    ("--surrogate_loss_weight_initial", "surrogate.loss_weight_initial", {"type": float}),
    ("--surrogate_loss_weight_final", "surrogate.loss_weight_final", {"type": float}),
    ("--dataset", "data.dataset_name", {}),
    ("--dataset_config", "data.dataset_config", {}),
    ("--train_file", "data.train_file", {}),
    ("--eval_file", "data.eval_file", {}),
    ("--text_column", "data.text_column", {}),
    ("--max_seq_length", "data.max_seq_length", {"type": int}),
    ("--eval_split_ratio", "data.eval_split_ratio", {"type": float}),
    ("--output_dir", "training.output_dir", {}),
    ("--num_epochs", "training.num_epochs", {"type": float}),
    ("--batch_size", "training.per_device_train_batch_size", {"type": int}),
    ("--gradient_accumulation_steps", "training.gradient_accumulation_steps", {"type": int}),
    ("--learning_rate", "training.learning_rate", {"type": float}),
    ("--weight_decay", "training.weight_decay", {"type": float}),
    ("--warmup_ratio", "training.warmup_ratio", {"type": float}),
    ("--max_grad_norm", "training.max_grad_norm", {"type": float}),
    ("--seed", "training.seed", {"type": int}),
    ("--mixed_precision", "training.mixed_precision", {"choices": tuple(PRECISIONS)}),
    ("--use_z_loss", "training.use_z_loss", _TRUE),
    ("--loss_type", "training.loss_type", {"choices": LOSS_TYPES}),
    ("--logging_steps", "training.logging_steps", {"type": int}),
    ("--eval_steps", "training.eval_steps", {"type": int}),
    ("--save_steps", "training.save_steps", {"type": int}),
    ("--wandb_project", "training.wandb_project", {}),
    ("--wandb_run_name", "training.wandb_run_name", {}),
    ("--resume_from_checkpoint", "training.resume_from_checkpoint", {}),
    ("--device", "training.device", {"choices": DEVICES}),
    ("--tpu_cores", "training.tpu_cores", {"type": int}),
    ("--tpu_num_hosts", "training.tpu_num_hosts", {"type": int}),
]


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The predecessor's --config and flags, the DLM trainer's --config_path and flags
    (sdce.predecessor_dlm), and sdce's own, on `sdce train`'s parser."""
    from sdce import predecessor_dlm

    p.add_argument("--config", help="the predecessor-style YAML")
    for flag, key, kwargs in FLAGS:
        metavar = None if "action" in kwargs or "choices" in kwargs else key.split(".")[1].upper()
        p.add_argument(flag, dest=key, metavar=metavar, help=f"sets {key}", **kwargs)
    p.add_argument("--standard_training", action="store_true", help="= --loss_type standard")
    p.add_argument("--kl_divergence", action="store_true", help="= --loss_type kl")
    p.add_argument(
        "--report_to", dest="training.report_to", nargs="+", help="experiment trackers: tensorboard, wandb"
    )
    predecessor_dlm.add_arguments(p)
    own = p.add_argument_group("sdce's own")
    own.add_argument("--threads", type=int, default=1, help="CPU threads")
    own.add_argument("--processes", type=int, default=1, help="training processes here (DDP)")
    own.add_argument("--no-resume", action="store_true", help="ignore output_dir's checkpoints")
    own.add_argument("--no-progress", action="store_true")
    own.add_argument("--stop-after", type=int, help="stop after this step's checkpoint")


def flag_overrides(args: argparse.Namespace) -> dict:
    """The predecessor keys the flags set, as {section: {key: value}}."""
    out: dict[str, dict] = {}
    for _, key, _ in FLAGS:
        value = getattr(args, key)
        if value is not None:
            section, name = key.split(".")
            out.setdefault(section, {})[name] = value
    report_to = getattr(args, "training.report_to")
    if report_to is not None:
        out.setdefault("training", {})["report_to"] = report_to
    asked = [lt for lt, on in (("standard", args.standard_training), ("kl", args.kl_divergence)) if on]
    if getattr(args, "training.loss_type") is not None:
        asked.append(getattr(args, "training.loss_type"))
    if len(set(asked)) > 1:
        raise ConfigError(
            f"--standard_training, --kl_divergence and --loss_type disagree: {', '.join(asked)}; give one"
        )
    if asked:
        out.setdefault("training", {})["loss_type"] = asked[0]
    return out


def cmd_train(args: argparse.Namespace) -> None:
    """`sdce train --config FILE` (the surrogate trainer) or `--config_path FILE` (the DLM trainer):
    one translation into the same plan, then the same stages and training loop."""
    from sdce import predecessor_dlm as dlm

    names = dlm.NAMES if args.config_path is not None else PREDECESSOR_NAMES
    try:
        if args.config_path is not None:
            plan = dlm.plan_from_args(args)
        else:
            for flag in dlm.dlm_only_flags(args):
                raise ConfigError(f"{flag} is a flag of the DLM trainer: give its YAML with --config_path")
            written, explicit = resolve(read_predecessor(args.config), flag_overrides(args))
            plan = translate(written, explicit, processes=args.processes, no_resume=args.no_resume)
        for warning in plan["warnings"]:
            print(f"sdce train: warning: {warning}", file=sys.stderr)
        summary = run(plan, threads=args.threads, progress=not args.no_progress, stop_after=args.stop_after)
    except ValueError as e:  # name the predecessor's keys beside sdce's
        e.args = (in_predecessor_terms(str(e), names), *e.args[1:])
        raise
    print(json.dumps(summary, sort_keys=True))
