"""`sdce train --config FILE` with the predecessor's configuration layout and flags (sdce.predecessor):
the translation into sdce's sections, refusals that name the predecessor's key, and real runs of
tiny pretrained students with a surrogate on another tokenizer."""

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch
import yaml

from sdce import cli
from sdce import config as cfg
from sdce import predecessor as standalone
from sdce.model import build_model

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """A tiny pretrained GPT-2 student with its BPE, a tiny surrogate GPT-2 with another BPE,
    a text file of 40 documents and the same text as a saved datasets.DatasetDict."""
    import datasets

    from sdce.data.synthetic import generate_documents
    from sdce.data.tokenizer import train_bpe

    root = tmp_path_factory.mktemp("seeds")
    texts = generate_documents(40, 7)
    (root / "train.txt").write_text("\n".join(texts) + "\n")
    tiny = cfg.validate({"n_layer": 1, "n_embd": 32, "n_head": 2}, "model")
    student_tok = train_bpe(texts, 300, 2)
    student = build_model(tiny, student_tok, 64, seed=0)
    student.save_pretrained(root / "student")
    student_tok.save_pretrained(root / "student")
    surrogate_tok = train_bpe(texts, 270, 3)  # another vocabulary: realigned, mapped ids
    surrogate = build_model(tiny, surrogate_tok, 128, seed=1)
    with torch.no_grad():  # sharper than a fresh init: some tokens pass the 0.02 threshold
        surrogate.lm_head.weight.mul_(8.0)
    surrogate.save_pretrained(root / "surrogate")
    surrogate_tok.save_pretrained(root / "surrogate")
    splits = {"train": texts[:36], "validation": texts[36:]}
    datasets.DatasetDict(
        {k: datasets.Dataset.from_dict({"text": v}) for k, v in splits.items()}
    ).save_to_disk(str(root / "saved"))
    return root


def seeds_config(assets, out, **changes) -> dict:
    """Every key of the predecessor's layout, as their train.py's dataclasses name them; `changes`
    as {"section.key": value}."""
    doc = {
        "model": {
            "name_or_path": str(assets / "student"),
            "dtype": "float32",
            "use_flash_attention": False,
            "gradient_checkpointing": False,
            "trust_remote_code": False,
            "init_from_scratch": False,
        },
        "surrogate": {
            "name_or_path": str(assets / "surrogate"),
            "dtype": "float32",
            "k": 8,
            "probability_threshold": 0.02,
            "enabled": True,
            "trust_remote_code": False,
            "loss_weight_initial": 1.0,
            "loss_weight_final": 0.0,
            "use_perplexity_weighting": True,
        },
        "data": {
            "dataset_name": "wikitext",
            "dataset_config": "wikitext-2-raw-v1",
            "dataset_split": "train",
            "eval_split": "validation",
            "text_column": "text",
            "max_seq_length": 1024,  # longer than the student takes: the tests pass --max_seq_length 32
            "preprocessing_num_workers": None,
            "train_file": str(assets / "train.txt"),
            "eval_file": None,
            "eval_split_ratio": 0.1,
            "eval_split_seed": 42,
        },
        "training": {
            "output_dir": str(out),
            "num_epochs": 3,
            "per_device_train_batch_size": 4,
            "per_device_eval_batch_size": 4,
            "gradient_accumulation_steps": 2,
            "learning_rate": 0.001,
            "weight_decay": 0.01,
            "warmup_ratio": 0.1,
            "warmup_steps": None,
            "max_grad_norm": 1.0,
            "lr_scheduler_type": "cosine",
            "loss_type": "surrogate",
            "device": "auto",
            "tpu_cores": None,
            "tpu_num_hosts": None,
            "tpu_metrics_debug": False,
            "tpu_use_pjrt": True,
            "mixed_precision": "no",
            "logging_steps": 4,
            "eval_steps": 8,
            "save_steps": 8,
            "save_total_limit": 3,
            "use_z_loss": False,
            "z_loss_multiplier": 1e-4,
            "local_rank": -1,
            "seed": 42,
            "resume_from_checkpoint": None,
            "wandb_project": None,
            "wandb_run_name": None,
            "wandb_entity": None,
        },
        "evaluation": {
            "enabled": False,
            "eval_interval": 500,
            "tasks": ["hellaswag", "arc_easy"],
            "num_fewshot": 0,
            "batch_size": 8,
            "limit": None,
            "log_individual_tasks": True,
            "log_aggregate_score": True,
        },
    }
    for dotted, value in changes.items():
        section, key = dotted.split(".")
        doc.setdefault(section, {})[key] = value
    return doc


def write_config(path: Path, doc: dict) -> Path:
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def plan_of(path: Path, *flags: str) -> dict:
    """What `sdce train --config path flags` would run (the translation only)."""
    args = cli.build_parser().parse_args(["train", "--config", str(path), *flags])
    seeds, explicit = standalone.resolve(
        standalone.read_predecessor(args.config), standalone.flag_overrides(args)
    )
    return standalone.translate(seeds, explicit, processes=args.processes)


def sdce_train(capsys, *args) -> tuple[int, str, str]:
    rc = cli.main(["train", *map(str, args)])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def records(out: Path, kind: str = "train") -> list[dict]:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


def test_predecessor_layout_and_flags_translate_to_sdce_sections(assets, tmp_path):
    path = write_config(tmp_path / "seeds.yaml", seeds_config(assets, tmp_path / "out"))
    plan = plan_of(path, "--max_seq_length", "32", "--surrogate_k", "5", "--learning_rate", "3e-4")
    run, tr, g = plan["run"], plan["run"]["training"], plan["run"]["guidance"]
    assert run["model"] == {
        "from_pretrained": str(assets / "student"),
        "init_from_scratch": False,
        "attn_implementation": "sdpa",
    }
    assert (tr["block_size"], tr["learning_rate"]) == (32, 3e-4)  # flags over the file
    assert (tr["batch_size"], tr["micro_batch_size"]) == (8, 4)  # per device x accumulation
    assert (tr["min_lr_ratio"], tr["lr_scheduler"], tr["precision"]) == (0.0, "cosine", "fp32")
    assert (tr["log_interval"], tr["eval_interval"], tr["checkpoint_interval"]) == (4, 8, 8)
    assert g["objective"] == "surrogate" and g["teacher_source"] == "online"
    assert g["surrogate"] == {"top_k": 5, "probability_threshold": 0.02, "weighting": "inverse_perplexity"}
    assert (g["schedule"], g["schedule_steps"], g["initial_weight"], g["min_weight"]) == (
        "cosine",
        None,
        1.0,
        0.0,
    )
    assert plan["teacher"]["name_or_path"] == str(assets / "surrogate")
    assert plan["corpus"]["source"] == "files" and plan["eval_corpus"] is None
    assert plan["split"]["validation_fraction"] == 0.1 and plan["split"]["seed"] == 42
    assert plan["seed"] == 42 and plan["backend"] == "auto" and plan["warnings"] == []

    # steps = ceil(epochs * floor(tokens / block) / global batch); warmup = ceil(ratio * steps)
    settings, formula = standalone.finalize(plan, train_tokens=10_000, val_tokens=900)
    assert formula["windows_per_epoch"] == 312
    assert settings["training"]["steps"] == 117 == -(-3 * 312 // 8)
    assert settings["training"]["warmup_steps"] == 12
    assert settings["training"]["eval_tokens"] == 900

    kl = plan_of(path, "--kl_divergence")["run"]["guidance"]
    assert kl["objective"] == "kl" and kl["kl"] == {
        "alpha": 0.5,
        "temperature": 1.0,
        "top_k": None,
        "probability_threshold": 0.0,
    }
    standard = plan_of(path, "--standard_training")
    assert standard["run"]["guidance"] == {"objective": "ce"} and standard["teacher"] is None
    # --no_surrogate where the file names no loss type: plain cross-entropy
    no_type = seeds_config(assets, tmp_path / "out")
    del no_type["training"]["loss_type"]
    assert plan_of(write_config(tmp_path / "nt.yaml", no_type), "--no_surrogate")["loss_type"] == "standard"
    scratch = plan_of(path, "--init_from_scratch", "--use_z_loss", "--mixed_precision", "bf16")
    assert scratch["run"]["model"]["init_from_scratch"] is True
    assert scratch["run"]["training"]["z_loss"] == 1e-4 and scratch["run"]["training"]["precision"] == "bf16"

    # the evaluation split of a saved dataset, or a held-out fraction when it has none
    hf = seeds_config(
        assets, tmp_path / "out", **{"data.train_file": None, "data.dataset_name": str(assets / "saved")}
    )
    plan = plan_of(write_config(tmp_path / "hf.yaml", hf))
    assert plan["corpus"]["hf_split"] == "train" and plan["eval_corpus"]["hf_split"] == "validation"
    hf["data"]["eval_split"] = "test"
    plan = plan_of(write_config(tmp_path / "hf.yaml", hf))
    assert plan["eval_corpus"] is None and "has no split 'test'" in plan["warnings"][0]


def test_init_from_scratch_keeps_the_architecture_with_fresh_weights(assets):
    from sdce.data.tokenizer import load

    tok = load(assets / "student")
    spec = {"from_pretrained": str(assets / "student")}
    pretrained = build_model(cfg.validate(spec, "model"), tok, 32, seed=3)
    scratch = build_model(cfg.validate({**spec, "init_from_scratch": True}, "model"), tok, 32, seed=3)
    again = build_model(cfg.validate({**spec, "init_from_scratch": True}, "model"), tok, 32, seed=3)
    assert scratch.config.to_dict()["n_embd"] == pretrained.config.n_embd
    a, b, c = (m.state_dict() for m in (pretrained, scratch, again))
    assert a.keys() == b.keys() and all(a[k].shape == b[k].shape for k in a)
    assert not torch.equal(a["transformer.h.0.mlp.c_fc.weight"], b["transformer.h.0.mlp.c_fc.weight"])
    assert all(torch.equal(b[k], c[k]) for k in b)  # under the seed


@pytest.mark.parametrize(
    ("changes", "flags", "message"),
    [
        ({"training.lr": 0.1}, [], "training.lr is not a known key"),
        ({"optimizer.name": "adam"}, [], "optimizer is not a known section"),
        ({"surrogate.k": "30"}, [], "surrogate.k: expected an integer"),
        ({}, ["--no_surrogate"], "training.loss_type=surrogate trains against the surrogate"),
        ({"training.device": "mps"}, [], "training.device: mps is not supported"),
        ({"training.tpu_cores": 8}, [], "training.tpu_cores / tpu_num_hosts"),
        ({"training.lr_scheduler_type": "polynomial"}, [], "training.lr_scheduler_type: 'polynomial'"),
        ({"surrogate.loss_weight_initial": 2.0}, [], "surrogate.loss_weight_initial=2.0"),
        ({"surrogate.use_perplexity_weighting": False}, [], "surrogate.use_perplexity_weighting"),
        ({"model.trust_remote_code": True}, [], "model.trust_remote_code"),
        ({"data.train_file": "train.csv"}, [], "data.train_file: train.csv"),
        ({"surrogate.name_or_path": None}, [], "needs surrogate.name_or_path"),
        ({}, ["--standard_training", "--kl_divergence"], "disagree"),
        ({"training.resume_from_checkpoint": "missing"}, [], "training.resume_from_checkpoint"),
        ({"training.report_to": ["comet"]}, [], "training.report_to: 'comet'"),
        ({"training.output_dir": "my out"}, [], "holds a space or quote, which the pipeline's job commands"),
    ],
)
def test_bad_predecessor_settings_are_refused(assets, tmp_path, capsys, changes, flags, message):
    path = write_config(tmp_path / "seeds.yaml", seeds_config(assets, tmp_path / "out", **changes))
    rc, _, err = sdce_train(capsys, "--config", path, *flags)
    assert rc == 2 and message in err, err
    assert not (tmp_path / "out").exists()  # refused before any work


def test_sdce_errors_name_the_old_key_too():
    msg = standalone.in_predecessor_terms("run.training.block_size: 1 is less than the minimum of 2")
    assert msg.endswith("(training.block_size is the predecessor's data.max_seq_length)")


def test_a_study_config_trains_as_a_study_run_through_train_job(assets, tmp_path, capsys):
    study = REPO / "tests" / "configs" / "tiny.yaml"
    rc, _, err = sdce_train(capsys, "--config", study)
    assert rc == 2 and "is a study config" in err and "sdce train-job --config" in err
    missing = tmp_path / "none.bin"
    rc = cli.main(
        ["train-job", "--config", str(study), "--name", "baseline", "--seed", "1"]
        + ["--train-shard", str(missing), "--val-shard", str(missing), "--tokenizer", str(assets / "student")]
        + ["--out", str(tmp_path / "run")]
    )
    assert rc == 2 and "none.bin" in capsys.readouterr().err  # the study path: it went for the shard


def test_surrogate_run_from_a_predecessor_config(assets, tmp_path, capsys):
    out = tmp_path / "out"
    path = write_config(tmp_path / "seeds.yaml", seeds_config(assets, out))
    rc, stdout, err = sdce_train(
        capsys, "--config", path, "--max_seq_length", "32", "--num_epochs", "1", "--report_to", "tensorboard",
        "--no-progress",
    )  # fmt: skip
    assert rc == 0, err
    for made in (
        "pipeline/data/main/train.jsonl",
        "pipeline/tokenizers/main",
        "pipeline/shards/main/train.bin",
        "pipeline/teachers/surrogate/descriptors/main.json",
        "model",
        "summary.json",
    ):
        assert (out / made).exists(), made
    summary = json.loads(stdout.splitlines()[-1])
    assert summary["objective"] == "surrogate" and summary["schedule"] == "cosine"
    used = json.loads((out / "sdce.json").read_text())
    assert used["run"]["training"]["block_size"] == 32 and used["predecessor"]["data"]["max_seq_length"] == 32
    assert summary["steps"] == used["steps"]["steps"] == used["run"]["training"]["steps"]
    train = records(out)
    assert all(r["guidance"] > 0 and r["teacher_mass"] > 0 and r["aligned"] > 0.5 for r in train[:3])
    steps = summary["steps"]  # cosine from 1 to 0 over the run, w(t) logged at the window's last step
    assert [r["weight"] for r in train] == pytest.approx(
        [(1 + math.cos(math.pi * (r["step"] - 1) / steps)) / 2 for r in train]
    )

    if importlib.util.find_spec("tensorboard") is None:
        pytest.skip("tensorboard is not installed (the trackers extra)")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    assert {"train/loss", "train/guidance", "eval/val_loss"} <= set(events.Tags()["scalars"])
    logged = events.Scalars("train/loss")
    assert [e.step for e in logged] == [r["step"] for r in train]
    assert [e.value for e in logged] == pytest.approx([r["loss"] for r in train], rel=1e-6)


def test_standard_training_on_a_saved_dataset(assets, tmp_path, capsys):
    out = tmp_path / "out"
    doc = seeds_config(assets, out, **{"data.train_file": None, "data.dataset_name": str(assets / "saved")})
    path = write_config(tmp_path / "seeds.yaml", doc)
    rc, stdout, err = sdce_train(
        capsys, "--config", path, "--max_seq_length", "32", "--num_epochs", "0.5", "--standard_training",
        "--no-progress",
    )  # fmt: skip
    assert rc == 0, err
    assert json.loads(stdout.splitlines()[-1])["objective"] == "ce"
    assert not (out / "pipeline" / "teachers").exists()
    assert all("guidance" not in r for r in records(out))
    validation = [
        json.loads(line)
        for line in (out / "pipeline" / "data" / "main" / "validation.jsonl").read_text().splitlines()
    ]
    assert len(validation) == 4  # the dataset's own validation split


def planned_stages(out: Path) -> dict[str, int]:
    """The jobs a dry run of the translated study in `out` plans for its run's stages."""
    import re
    import subprocess

    from sdce import dag

    study = out / "pipeline" / "study.yaml"
    targets = [str(p) for p in standalone.stage_targets(yaml.safe_load(study.read_text())).values() if p]
    cmd = dag.command(study, args=["--directory", str(out), *targets, "--dry-run", "--quiet", "rules"])
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dag.environment(), check=True)
    jobs = {k: int(v) for k, v in re.findall(r"^(\w+)\s+(\d+)$", proc.stdout, flags=re.M)}
    jobs.pop("total", None)
    return jobs


def test_the_stages_are_the_pipelines_rules(assets, tmp_path, capsys):
    """`sdce train --config` builds its data through the repository's Snakefile: the translated
    study in output_dir/pipeline/study.yaml, kept up to date by Snakemake's rule and no record of
    its own. After a run nothing is left to do; an edited evaluation file reruns its corpus, the
    split and what follows, an edited training file the corpus and what follows."""
    from sdce.data.corpus import read_documents

    lines = (assets / "train.txt").read_text().splitlines()
    train, evals = tmp_path / "train.txt", tmp_path / "eval.txt"
    train.write_text("\n".join(lines[:34]) + "\n")
    evals.write_text("\n".join(lines[34:]) + "\n")
    out = tmp_path / "out"
    doc = seeds_config(assets, out, **{"data.train_file": str(train), "data.eval_file": str(evals)})
    flags = ["--max_seq_length", "32", "--num_epochs", "0.25", "--standard_training", "--no-progress"]
    rc, stdout, err = sdce_train(capsys, "--config", write_config(tmp_path / "seeds.yaml", doc), *flags)
    assert rc == 0, err
    ran = next(line for line in stdout.splitlines() if line.startswith("stages: ran "))
    assert set(ran.removeprefix("stages: ran ").split(", ")) == {
        "corpus", "validation_corpus", "split", "tokenizer", "encode x2"
    }  # fmt: skip
    assert not list(out.rglob("stages.json"))
    data = out / "pipeline" / "data" / "main"
    assert [d["text"] for d in read_documents(data / "validation.jsonl")] == lines[34:]
    assert len(read_documents(data / "train.jsonl")) == 34
    assert planned_stages(out) == {}
    evals.write_text(evals.read_text() + "one more evaluation line\n")
    after_eval = {"validation_corpus": 1, "split": 1, "tokenizer": 1, "encode": 2}
    assert planned_stages(out) == after_eval
    train.write_text(train.read_text() + "one more training line\n")
    assert planned_stages(out) == {**after_eval, "corpus": 1}


def test_kl_run_from_a_predecessor_config(assets, tmp_path, capsys):
    out = tmp_path / "out"
    path = write_config(tmp_path / "seeds.yaml", seeds_config(assets, out))
    rc, stdout, err = sdce_train(
        capsys, "--config", path, "--max_seq_length", "32", "--num_epochs", "0.25", "--kl_divergence",
        "--no-progress",
    )  # fmt: skip
    assert rc == 0, err
    assert json.loads(stdout.splitlines()[-1])["objective"] == "kl"
    # dense over the shared vocabulary: the whole teacher mass there is listed
    assert all(r["kl"] > 0 and r["teacher_mass"] == pytest.approx(1.0) for r in records(out))


@pytest.mark.skipif(importlib.util.find_spec("wandb") is not None, reason="wandb is installed")
def test_a_tracker_without_its_package_is_refused(assets, tmp_path, capsys):
    path = write_config(
        tmp_path / "seeds.yaml", seeds_config(assets, tmp_path / "out", **{"training.wandb_project": "p"})
    )
    rc, _, err = sdce_train(capsys, "--config", path, "--max_seq_length", "32")
    assert rc == 2 and "needs the wandb package" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(importlib.util.find_spec("wandb") is None, reason="wandb is not installed")
def test_wandb_offline(assets, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    out = tmp_path / "out"
    doc = seeds_config(assets, out, **{"training.wandb_project": "sdce-test", "training.wandb_run_name": "r"})
    rc, _, err = sdce_train(
        capsys, "--config", write_config(tmp_path / "s.yaml", doc), "--max_seq_length", "32",
        "--num_epochs", "0.25", "--standard_training", "--no-progress",
    )  # fmt: skip
    assert rc == 0, err
    assert list((out / "wandb").glob("offline-run-*"))


def test_resume_from_checkpoint_continues_at_its_step(assets, tmp_path, capsys):
    doc = seeds_config(assets, tmp_path / "unused")
    path = write_config(tmp_path / "seeds.yaml", doc)
    common = ["--config", path, "--max_seq_length", "32", "--num_epochs", "0.5", "--standard_training"]
    common += ["--no-progress"]
    whole, first, second = tmp_path / "whole", tmp_path / "first", tmp_path / "second"
    assert sdce_train(capsys, *common, "--output_dir", whole)[0] == 0
    rc, stdout, _ = sdce_train(capsys, *common, "--output_dir", first, "--stop-after", "8")
    assert rc == 0 and json.loads(stdout.splitlines()[-1]) == {"stopped_at": 8}
    step8 = first / "work" / "checkpoints" / "step_0000008"
    rc, stdout, err = sdce_train(capsys, *common, "--output_dir", second, "--resume_from_checkpoint", step8)
    assert rc == 0, err
    assert f"resumed from {step8} at step 8" in stdout
    timing = ("tokens_per_s", "train_seconds")  # measurements of the machine, not of the run
    strip = lambda rs: [{k: v for k, v in r.items() if k not in timing} for r in rs]  # noqa: E731
    assert strip(records(second)) == strip(records(whole))  # the uninterrupted run's curve
    assert records(second, "eval") == records(whole, "eval")

    # a checkpoint of other settings is refused, naming what differs
    rc, _, err = sdce_train(
        capsys,
        *common,
        "--output_dir",
        tmp_path / "third",
        "--resume_from_checkpoint",
        step8,
        "--learning_rate",
        "0.01",
    )
    assert rc == 2 and "with other settings" in err
    trainer_ckpt = tmp_path / "checkpoint-500"
    trainer_ckpt.mkdir()
    (trainer_ckpt / "trainer_state.json").write_text("{}")
    rc, _, err = sdce_train(capsys, *common, "--resume_from_checkpoint", trainer_ckpt)
    assert rc == 2 and "transformers Trainer checkpoint" in err


# --- the DLM trainer: sdce train --config_path FILE --base_path DIR (sdce.predecessor_dlm) ---------


@pytest.fixture(scope="module")
def dlm_assets(assets, tmp_path_factory):
    """Beside `assets`: 40 prompt/response pairs (qa.jsonl) and a tiny saved ModernBERT whose
    tokenizer (the student's BPE) has the chat markers and the mask token: a pretrained DLM."""
    from sdce.data.chat import MARKERS
    from sdce.data.synthetic import generate_documents
    from sdce.data.tokenizer import load, with_mask_token

    root = tmp_path_factory.mktemp("dlm")
    with open(root / "qa.jsonl", "w") as f:
        for text in generate_documents(40, 11):
            words = text.split()
            f.write(json.dumps({"question": " ".join(words[:3]), "answer": " ".join(words[3:12])}) + "\n")
    tok = load(assets / "student")
    tok.add_special_tokens({"additional_special_tokens": list(MARKERS)})
    tok = with_mask_token(tok)
    spec = cfg.validate({"family": "modernbert", "n_layer": 1, "n_embd": 32, "n_head": 2}, "model")
    model = build_model(spec, tok, 64, seed=0)
    model.save_pretrained(root / "dlm")
    tok.save_pretrained(root / "dlm")
    return root


def dlm_base(tmp_path: Path, assets: Path, dlm_assets: Path) -> Path:
    """A --base_path folder as the predecessor's project root: data/ and models/ beside the outputs."""
    (tmp_path / "data").mkdir()
    for name in ("train.txt",):
        (tmp_path / "data" / name).symlink_to(assets / name)
    (tmp_path / "data" / "qa.jsonl").symlink_to(dlm_assets / "qa.jsonl")
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "bpe").symlink_to(assets / "student")
    (tmp_path / "models" / "dlm").symlink_to(dlm_assets / "dlm")
    return tmp_path


def dlm_config(mode: str = "pretrain", **changes) -> dict:
    """A DLM trainer YAML with relative paths (resolved against --base_path); `changes` as
    {"section.key": value}, None removes the key."""
    doc = {
        "model": {"tokenizer_name_or_path": "models/bpe", "n_layers": 1, "d_model": 32, "n_heads": 2},
        "data": {"train_file": "data/train.txt", "max_seq_length": 32, "eval_split_ratio": 0.1},
        "training": {
            "mode": mode,
            "mask_epsilon": 0.001,
            "random_length_prob": 0.01,
            "output_dir": f"outputs/{mode}",
            "num_epochs": 0.25,
            "per_device_train_batch_size": 4,
            "gradient_accumulation_steps": 1,
            "learning_rate": 0.002,
            "warmup_steps": 1,
            "logging_steps": 1,
            "eval_steps": 4,
            "save_steps": 4,
            "seed": 3,
        },
    }
    if mode == "sft":
        doc["model"] = {"name_or_path": "models/dlm"}
        doc["data"].update(
            train_file="data/qa.jsonl", prompt_column="question", response_column="answer", max_seq_length=48
        )
        doc["training"].update(num_epochs=1, random_length_prob=0.0)
    for dotted, value in changes.items():
        section, key = dotted.split(".")
        if value is None:
            doc[section].pop(key, None)
        else:
            doc.setdefault(section, {})[key] = value
    return doc


def dlm_plan(path: Path, base: Path, *flags: str) -> dict:
    """What `sdce train --config_path path --base_path base flags` would run (the translation)."""
    from sdce import predecessor_dlm

    args = cli.build_parser().parse_args(
        ["train", "--config_path", str(path), "--base_path", str(base), *flags]
    )
    return predecessor_dlm.plan_from_args(args)


def test_dlm_pretrain_from_a_predecessor_config(assets, dlm_assets, tmp_path, capsys):
    base = dlm_base(tmp_path, assets, dlm_assets)
    path = write_config(tmp_path / "llada_pretrain.yaml", dlm_config("pretrain"))
    plan = dlm_plan(path, base)
    assert plan["run"]["model"] == {
        "family": "modernbert",
        "n_layer": 1,
        "n_embd": 32,
        "n_head": 2,
        "intermediate_size": None,
    }
    assert plan["run"]["guidance"] == {
        "objective": "masked_diffusion",
        "diffusion": {"eps": 0.001, "random_length": 0.01},
    }
    assert plan["student"] == str(base / "models" / "bpe") and plan["corpus"]["path"] == str(
        base / "data" / "train.txt"
    )
    assert plan["output_dir"] == str(base / "outputs" / "pretrain")  # the output root is --base_path too

    rc, stdout, err = sdce_train(capsys, "--config_path", path, "--base_path", base, "--no-progress")
    assert rc == 0, err
    out = base / "outputs" / "pretrain"
    summary = json.loads(stdout.splitlines()[-1])
    assert summary["objective"] == "masked_diffusion" and summary["steps"] >= 2
    saved = json.loads((out / "model" / "config.json").read_text())
    assert saved["model_type"] == "modernbert" and saved["num_hidden_layers"] == 1
    used = json.loads((out / "sdce.json").read_text())
    assert used["run"]["guidance"]["objective"] == "masked_diffusion"
    assert used["predecessor"]["training"]["mode"] == "pretrain"
    train = records(out)
    assert [r["step"] for r in train] == list(range(1, summary["steps"] + 1))
    assert all(math.isfinite(r["loss"]) for r in train) and records(out, "eval")  # the ELBO was scored


def test_dlm_sft_never_masks_the_prompt(assets, dlm_assets, tmp_path, capsys, monkeypatch):
    """SFT from a saved DLM on prompt/response pairs: every forward process of the run keeps
    the prompt (sdce.data.chat.prompt_lengths, LLaDA's) unmasked and masks some answer."""
    from sdce import diffusion

    seen = []
    forward = diffusion.sft_forward_process

    def recording(input_ids, prompt_lengths, *args, **kwargs):
        noisy, masked, p = forward(input_ids, prompt_lengths, *args, **kwargs)
        seen.append((masked.clone(), prompt_lengths.clone()))
        return noisy, masked, p

    monkeypatch.setattr(diffusion, "sft_forward_process", recording)
    base = dlm_base(tmp_path, assets, dlm_assets)
    path = write_config(tmp_path / "llada_sft.yaml", dlm_config("sft"))
    rc, stdout, err = sdce_train(capsys, "--config_path", path, "--base_path", base, "--no-progress")
    assert rc == 0, err
    out = base / "outputs" / "sft"
    summary = json.loads(stdout.splitlines()[-1])
    assert summary["objective"] == "masked_diffusion_sft"
    used = json.loads((out / "sdce.json").read_text())
    assert used["run"]["model"]["from_pretrained"] == str(base / "models" / "dlm")
    # an sft epoch is a pass over the examples: 36 training pairs in batches of 4
    assert used["steps"]["windows_per_epoch"] == 36 and summary["steps"] == 9
    assert len(seen) >= summary["steps"]
    for masked, lengths in seen:
        prompt = torch.arange(masked.shape[1])[None, :] < lengths[:, None]
        assert (lengths > 0).all() and not (masked & prompt).any()
    assert any(masked.any() for masked, _ in seen)
    tokens = json.loads((out / "pipeline" / "tokenizers" / "main" / "tokenizer_config.json").read_text())
    assert "<eot_id>" in json.dumps(tokens)  # the chat markers, one id each


def test_train_subset_size_limits_the_training_documents(assets, dlm_assets, tmp_path):
    from sdce.data.corpus import read_documents
    from sdce.data.split import split_documents

    base = dlm_base(tmp_path, assets, dlm_assets)
    path = write_config(tmp_path / "llada.yaml", dlm_config("pretrain"))
    plan = dlm_plan(path, base, "--train_subset_size", "10", "--ref_subset_size", "3")
    assert (plan["split"]["train_subset"], plan["split"]["validation_subset"]) == (10, 3)
    standalone.prepare(plan, log=lambda *_: None)
    data = Path(plan["output_dir"]) / "pipeline" / "data"
    train, val = (
        read_documents(data / "main" / "train.jsonl"),
        read_documents(data / "main" / "validation.jsonl"),
    )
    assert (len(train), len(val)) == (10, 3)
    shard = json.loads(
        (Path(plan["output_dir"]) / "pipeline" / "shards" / "main" / "train.bin.json").read_text()
    )
    assert shard["documents"] == 10
    # a seeded sample: the first 10 of the split's shuffle under data.eval_split_seed
    whole, held = split_documents(
        read_documents(data / "corpus.jsonl"), {**plan["split"], "train_subset": None}
    )
    assert train == whole[:10] and val == held[:3] and len(whole) == 36


@pytest.mark.parametrize(
    ("changes", "flags", "message"),
    [
        ({"training.mask_eps": 0.01}, [], "training.mask_eps is not a known key"),
        ({"training.mode": "finetune"}, [], "training.mode: 'finetune' is not one of pretrain, sft"),
        ({"sft": True, "data.response_column": None}, [], "data.response_column: training.mode sft"),
        ({"data.prompt_column": "question"}, [], "data.prompt_column: training.mode pretrain"),
        (
            {},
            ["--train_subset_size", "100"],
            "split.train_subset: 100 is more than the 36 training documents",
        ),
        ({}, ["--ref_subset_size", "0"], "data.ref_subset_size: 0 documents"),
        ({"training.mask_epsilon": 0.0}, [], "training.mask_epsilon"),
        (
            {"model.tokenizer_name_or_path": None},
            [],
            "model.tokenizer_name_or_path: a model built from scratch",
        ),
        ({"sft": True, "model.name_or_path": "models/bpe"}, [], "model.name_or_path: "),
        ({"sft": True, "model.n_layers": 4}, [], "model.n_layers: model.name_or_path"),
        ({}, ["--surrogate_k", "5"], "--surrogate_k is a flag of the surrogate trainer"),
    ],
)
def test_bad_dlm_settings_are_refused(assets, dlm_assets, tmp_path, capsys, changes, flags, message):
    base = dlm_base(tmp_path, assets, dlm_assets)
    changes = dict(changes)
    mode = "sft" if changes.pop("sft", False) else "pretrain"
    path = write_config(tmp_path / "llada.yaml", dlm_config(mode, **changes))
    rc, _, err = sdce_train(capsys, "--config_path", path, "--base_path", base, *flags)
    assert rc == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (base / "outputs" / mode / "model").exists()  # refused before training


def test_dlm_flags_need_the_dlm_layout(assets, tmp_path, capsys):
    path = write_config(tmp_path / "seeds.yaml", seeds_config(assets, tmp_path / "out"))
    rc, _, err = sdce_train(capsys, "--config", path, "--train_subset_size", "5")
    assert rc == 2 and "--train_subset_size is a flag of the DLM trainer" in err
    rc, _, err = sdce_train(capsys, "--config", path, "--config_path", path)
    assert rc == 2 and "give one" in err


def docs_study() -> str:
    """The study YAML of docs/predecessor-configs.md, "A prep.py grid as one study"."""
    text = (REPO / "docs" / "predecessor-configs.md").read_text()
    section = text.split("### A prep.py grid as one study", 1)[1]
    return section.split("```yaml\n", 1)[1].split("```", 1)[0]


def test_a_prep_py_grid_is_one_study(dlm_assets, tmp_path, monkeypatch, capsys):
    from sdce.plan import part_split, plan

    monkeypatch.chdir(tmp_path)
    (tmp_path / "qa.jsonl").symlink_to(dlm_assets / "qa.jsonl")
    (tmp_path / "study.yaml").write_text(docs_study())
    assert cli.main(["check-config", "study.yaml"]) == 0
    assert "valid (9 runs x 1 random seeds)" in capsys.readouterr().out
    study = cfg.load(tmp_path / "study.yaml")
    planned = plan(study)
    combos = [
        f"dlm-n_layer{n}-objective{o}-train_subset{s}"
        for n in (2, 4)
        for o in ("masked_diffusion", "masked_diffusion_sft")
        for s in ("1000", "none")
    ]
    assert sorted(planned.runs) == sorted(["ar", *combos])
    run = planned.runs["dlm-n_layer4-objectivemasked_diffusion_sft-train_subset1000"]
    assert (run["model"]["family"], run["model"]["n_layer"], run["guidance"]["objective"]) == (
        "modernbert",
        4,
        "masked_diffusion_sft",
    )
    assert planned.runs["ar"]["model"]["family"] == "gpt2"
    assert planned.parts == ["main", "main-n1000"]
    assert part_split(study, "main-n1000")["train_subset"] == 1000
    assert part_split(study, "main-n1000")["validation_subset"] == 200  # the same reference documents
