"""The predecessor's diffusion-LM trainer on sdce: `sdce train --config_path FILE --base_path DIR`.

The predecessor trained its LLaDA-style masked-diffusion LMs with a trainer of their own
("train the DLM using a custom trainer"), in two modes: `pretrain` (every token masked at random,
the model built from scratch) and `sft` (prompt/response pairs, the prompt never masked). Its
YAML files (one per model/dataset combination, written by `configs/prep.py`) had the sections
`model`, `data` and `training` of `LAYOUT` below, and the command line took

    --config_path FILE        the YAML
    --base_path DIR           the folder its relative paths (data, models, output_dir) resolve against
    --train_subset_size N     train on N training documents (a seeded sample)
    --ref_subset_size M       score on M reference (held-out) documents

This module only defines that layout and translates it; reading, checking, the stages and the
one training loop are `sdce.predecessor`'s (`read_predecessor`, `resolve`, `prepare`, `run`),
the same as for the surrogate trainer's `--config`. `training.mode` picks sdce's objective
(`masked_diffusion` or `masked_diffusion_sft`), the student is transformers' ModernBERT run
bidirectionally (`model.family: modernbert`, docs/objectives.md), the subsets are the split's
`train_subset` and `validation_subset`. The mapping of every key: docs/predecessor-configs.md,
"The DLM trainer".
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

from sdce import config as cfg
from sdce import predecessor as base_trainer
from sdce.config import ConfigError
from sdce.predecessor import _B, _I, _N, _S, DEVICES, PRECISIONS

MODES = {"pretrain": "masked_diffusion", "sft": "masked_diffusion_sft"}
_DATA, _TRAINING = base_trainer.LAYOUT["data"], base_trainer.LAYOUT["training"]

# The DLM trainer's layout: section -> key -> (default, accepted types), as in sdce.predecessor.
# The keys it shares with the surrogate trainer have that trainer's defaults and meaning.
LAYOUT: dict[str, dict[str, tuple]] = {
    "model": {
        "name_or_path": (None, _S),  # a saved bidirectional model to start from (sft: the pretrained DLM)
        "tokenizer_name_or_path": (None, _S),  # the tokenizer of a model built from scratch
        "init_from_scratch": (False, _B),
        # LLaDA's (OLMo's) configuration names of a model built from scratch
        "n_layers": (2, _I),
        "d_model": (128, _I),
        "n_heads": (4, _I),
        "mlp_hidden_size": (None, _I),
    },
    "data": {
        **{k: _DATA[k] for k in ("train_file", "eval_file")},
        "dataset_name": (None, _S),
        **{k: _DATA[k] for k in ("dataset_config", "dataset_split", "eval_split", "text_column")},
        "prompt_column": (None, _S),
        "response_column": (None, _S),
        **{k: _DATA[k] for k in ("max_seq_length", "eval_split_ratio", "eval_split_seed")},
        "train_subset_size": (None, _I),
        "ref_subset_size": (None, _I),
    },
    "training": {
        "mode": ("pretrain", _S),
        "mask_epsilon": (1e-3, _N),
        "random_length_prob": (0.01, _N),
        **{
            k: _TRAINING[k]
            for k in (
                "output_dir",
                "num_epochs",
                "per_device_train_batch_size",
                "gradient_accumulation_steps",
                "learning_rate",
                "weight_decay",
                "warmup_ratio",
                "warmup_steps",
                "max_grad_norm",
                "lr_scheduler_type",
                "mixed_precision",
                "device",
                "logging_steps",
                "eval_steps",
                "save_steps",
                "save_total_limit",
                "seed",
            )
        },
    },
}
CHOICES = {
    "training.mode": tuple(MODES),
    "training.device": DEVICES,
    "training.mixed_precision": tuple(PRECISIONS),
}
_ARCHITECTURE = {
    "n_layers": "n_layer",
    "d_model": "n_embd",
    "n_heads": "n_head",
    "mlp_hidden_size": "intermediate_size",
}

# sdce keys (as validation, data and training errors name them) -> the DLM trainer's keys
NAMES = {
    **{k: v for k, v in base_trainer.PREDECESSOR_NAMES.items() if k.startswith("training.")},
    "model.from_pretrained": "model.name_or_path",
    **{f"model.{new}": f"model.{old}" for old, new in _ARCHITECTURE.items()},
    "guidance.diffusion.eps": "training.mask_epsilon",
    "guidance.diffusion.random_length": "training.random_length_prob",
    "corpus.text_column": "data.text_column",
    "corpus.prompt_column": "data.prompt_column",
    "corpus.response_column": "data.response_column",
    "split.validation_fraction": "data.eval_split_ratio",
    "split.train_subset": "data.train_subset_size (--train_subset_size)",
    "split.validation_subset": "data.ref_subset_size (--ref_subset_size)",
}
del NAMES["training.tracking"]  # the DLM trainer names no trackers

# the DLM trainer's flags that set a key of its layout (--config_path and --base_path set none)
FLAGS = [
    ("--train_subset_size", "data.train_subset_size", {"type": int}),
    ("--ref_subset_size", "data.ref_subset_size", {"type": int}),
]
# where relative paths resolve against --base_path: (section, key, always a local path)
_PATHS = [
    ("model", "name_or_path", False),  # else a hub name
    ("model", "tokenizer_name_or_path", False),
    ("data", "train_file", True),
    ("data", "eval_file", True),
    ("data", "dataset_name", False),
    ("training", "output_dir", True),
]


def at_base(written: dict, base: Path) -> dict:
    """`written` with its relative paths under `base`. A model, tokenizer or dataset name that
    is no path under `base` stays as written (a name for the hub)."""
    out = copy.deepcopy(written)
    for section, key, local in _PATHS:
        value = out[section][key]
        if value is None or Path(value).expanduser().is_absolute():
            continue
        if local or (base / value).exists():
            out[section][key] = str(base / value)
    return out


def translate(written: dict, explicit: set[str], *, processes: int = 1, no_resume: bool = False) -> dict:
    """The plan of one DLM training (the keys of `sdce.predecessor.translate`'s plan), from the
    resolved layout with its paths already under the base path (`at_base`)."""
    m, d, t = (written[k] for k in ("model", "data", "training"))
    sft, warnings = t["mode"] == "sft", []
    full = {**{k: v for k, (v, _) in _TRAINING.items()}, **t}  # the surrogate trainer's other keys unset
    backend = base_trainer._backend(full)
    from sdce.backends import resolve as resolve_backend  # torch: imported when a config is translated

    xla = resolve_backend(backend) == "xla"
    training = base_trainer._training(
        full, {"gradient_checkpointing": False}, d["max_seq_length"], processes, xla, warnings
    )
    guidance = {
        "objective": MODES[t["mode"]],
        "diffusion": {"eps": t["mask_epsilon"], "random_length": t["random_length_prob"]},
    }
    model = _model(m, explicit)
    from sdce.plan import check_run

    check_run(cfg.validate({"model": model, "training": training, "guidance": guidance}, "run"), "run")
    corpus, eval_corpus, split = _data(d, sft, warnings)
    out = Path(t["output_dir"]).expanduser()
    from sdce.data.chat import MARKERS

    return {
        "output_dir": str(out),
        "name": out.resolve().name,
        "seed": t["seed"],
        "loss_type": guidance["objective"],
        "corpus": corpus,
        "eval_corpus": eval_corpus,
        "split": split,
        "student": m["name_or_path"] or m["tokenizer_name_or_path"],  # the tokenizer's source
        "special_tokens": list(MARKERS) if sft else [],
        "per_example": sft,  # an sft epoch is a pass over the examples, one per window
        "teacher": None,
        "run": {"model": model, "training": training, "guidance": guidance},
        "epochs": t["num_epochs"],
        "warmup_ratio": t["warmup_ratio"],
        "warmup_steps": t["warmup_steps"],
        "processes": processes,
        "backend": backend,
        "resume": not no_resume,
        "resume_from": None,
        "warnings": warnings,
        "predecessor": written,
    }


def _model(m: dict, explicit: set[str]) -> dict:
    """The run's model slice: a saved bidirectional model, or ModernBERT built from scratch."""
    from sdce.model import saved_kind

    name = m["name_or_path"]
    if name is None:
        if not m["tokenizer_name_or_path"]:
            raise ConfigError(
                "model.tokenizer_name_or_path: a model built from scratch (no model.name_or_path) "
                "needs a tokenizer, a folder or a name transformers can load"
            )
        return {"family": "modernbert", **{new: m[old] for old, new in _ARCHITECTURE.items()}}
    given = [f"model.{k}" for k in (*_ARCHITECTURE, "tokenizer_name_or_path") if f"model.{k}" in explicit]
    if given:
        raise ConfigError(
            f"{given[0]}: model.name_or_path ({name}) brings its architecture and tokenizer; remove "
            f"{given[0]}, or model.name_or_path to build a model from scratch"
        )
    if (Path(name) / "config.json").is_file() and saved_kind(name) != "bidirectional":
        raise ConfigError(
            f"model.name_or_path: {name} is a causal model; the DLM trainer trains bidirectional "
            "mask predictors (a ModernBERT, e.g. the model/ folder of a pretrain run)"
        )
    return {"family": "modernbert", "from_pretrained": name, "init_from_scratch": m["init_from_scratch"]}


def _data(d: dict, sft: bool, warnings: list[str]) -> tuple[dict, dict | None, dict]:
    """(training corpus, evaluation corpus or None, split with the two subsets): the surrogate
    trainer's data translation, with the prompt/response columns of sft and the subsets."""
    if not d["train_file"] and not d["dataset_name"]:
        raise ConfigError("data.train_file: the DLM trainer needs data.train_file or data.dataset_name")
    given = [k for k in ("prompt_column", "response_column") if d[k]]
    if sft and len(given) < 2:
        key = "response_column" if given == ["prompt_column"] else "prompt_column"
        raise ConfigError(
            f"data.{key}: training.mode sft trains on prompt/response pairs and needs "
            "data.prompt_column and data.response_column (the fields of each record)"
        )
    if not sft and given:
        raise ConfigError(
            f"data.{given[0]}: training.mode pretrain reads data.text_column; the prompt and "
            "response columns are read in mode sft"
        )
    full = {**{k: v for k, (v, _) in _DATA.items()}, **d, "preprocessing_num_workers": None}
    corpus, evals, split = base_trainer._data(full, warnings)
    chat = {"prompt_column": d["prompt_column"], "response_column": d["response_column"]} if sft else {}
    valid = lambda spec: cfg.validate({**spec, **chat}, "properties/corpus", where="corpus")  # noqa: E731
    for key in ("train_subset_size", "ref_subset_size"):
        if d[key] is not None and d[key] < 1:
            raise ConfigError(f"data.{key}: {d[key]} documents; give at least 1 (or leave it unset: all)")
    split = {**split, "train_subset": d["train_subset_size"], "validation_subset": d["ref_subset_size"]}
    return (
        valid(corpus),
        valid(evals) if evals else None,
        cfg.validate(split, "properties/split", where="split"),
    )


# --- the command line ----------------------------------------------------------------------------


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The DLM trainer's flags on `sdce train`'s parser."""
    group = p.add_argument_group("the DLM trainer's (docs/predecessor-configs.md, The DLM trainer)")
    group.add_argument("--config_path", help="the DLM trainer's YAML (sections model, data, training)")
    group.add_argument("--base_path", help="the folder relative paths of --config_path resolve against")
    for flag, key, kwargs in FLAGS:
        group.add_argument(flag, dest=key, metavar="N", help=f"sets {key}", **kwargs)


def plan_from_args(args: argparse.Namespace) -> dict:
    """What `sdce train --config_path ...` runs: the DLM YAML and flags, checked and translated."""
    if args.config is not None:
        raise ConfigError(
            "--config and --config_path: --config takes the surrogate trainer's YAML, --config_path "
            "the DLM trainer's; give one"
        )
    others = [flag for flag, key, _ in base_trainer.FLAGS if getattr(args, key) is not None]
    switches = (("--standard_training", args.standard_training), ("--kl_divergence", args.kl_divergence))
    others += [flag for flag, on in switches if on]
    others += ["--report_to"] if getattr(args, "training.report_to") is not None else []
    if others:
        raise ConfigError(
            f"{others[0]} is a flag of the surrogate trainer (--config); the DLM trainer takes "
            "--config_path, --base_path, --train_subset_size and --ref_subset_size"
        )
    base = Path(args.base_path or ".").expanduser()
    if not base.is_dir():
        raise ConfigError(f"--base_path: {base} is not a folder")
    flags: dict[str, dict] = {}
    for _, key, _ in FLAGS:
        if getattr(args, key) is not None:
            section, name = key.split(".")
            flags.setdefault(section, {})[name] = getattr(args, key)
    written = base_trainer.read_predecessor(args.config_path, LAYOUT, CHOICES)
    resolved, explicit = base_trainer.resolve(written, flags, LAYOUT, CHOICES)
    return translate(at_base(resolved, base), explicit, processes=args.processes, no_resume=args.no_resume)


def dlm_only_flags(args: argparse.Namespace) -> list[str]:
    """The DLM trainer's flags given (refused with the surrogate trainer's --config)."""
    dests = [("--base_path", "base_path"), *((flag, key) for flag, key, _ in FLAGS)]
    return [flag for flag, dest in dests if getattr(args, dest) is not None]
