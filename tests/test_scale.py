"""The real-scale pieces that can be checked here: the BabyLM strict-small study config
validates and plans through real Snakemake, its student is GPT-2 small, and the accelerator
benchmark runs in its CPU smoke mode (so it cannot rot without a GPU)."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sdce import config as cfg

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "config" / "babylm_strict_small.yaml"
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))


@pytest.fixture
def babylm_workdir(tmp_path, shared_dir):
    """A work folder laid out as the config expects: a BabyLM train_10M folder (a few real
    *.train lines) and the BabyLM 2025 evaluation data."""
    corpus = tmp_path / "data" / "babylm" / "train_10M"
    corpus.mkdir(parents=True)
    (corpus / "childes.train").write_text("*CHI: more juice please .\n*MOT: here you go .\n")
    (corpus / "simple_wiki.train").write_text("The cat is a small animal .\n")
    (tmp_path / "data" / "babylm-eval-2025").symlink_to(shared_dir / "data" / "babylm-eval-2025")
    return tmp_path


def test_strict_small_config_validates_and_plans(babylm_workdir):
    env_path = f"{Path(sys.executable).parent}:"
    proc = subprocess.run(
        [str(Path(sys.executable).with_name("sdce")), "check-config", str(CONFIG)],
        cwd=babylm_workdir,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0 and "valid (4 runs x 3 random seeds)" in proc.stdout, proc.stderr
    proc = subprocess.run(
        [SNAKEMAKE, "-s", str(REPO / "Snakefile"), "--configfile", str(CONFIG), "-n", "--quiet", "rules"],
        cwd=babylm_workdir,
        capture_output=True,
        text=True,
        env={"PATH": env_path + "/usr/bin:/bin", "HOME": str(babylm_workdir)},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    jobs = {k: int(v) for k, v in re.findall(r"^(\w+)\s+(\d+)$", proc.stdout, flags=re.M)}
    # 4 runs x 3 seeds; a surrogate trained from scratch and GPT-2 medium fine-tuned in the DAG
    assert jobs["train"] == 12 and jobs["evaluate_milestones"] == 12
    assert jobs["teacher_train"] == 2 and jobs["cache_teacher"] == 2


def test_strict_small_student_is_gpt2_small(shared_dir):
    """With the GPT-2 tokenizer (50,257 types) the configured student has GPT-2 small's
    124,439,808 parameters, the predecessor's settings are the ones trained."""
    import torch

    from sdce.model import build_config

    study = yaml.safe_load(CONFIG.read_text())
    model = cfg.validate(study["model"], "model")
    from sdce.teachers.vocab import load_tokenizer

    tok = load_tokenizer(shared_dir / "data" / "tokenizers" / "gpt2")
    config = build_config(model, len(tok), model["n_positions"], tok.bos_token_id, tok.eos_token_id)
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        student = AutoModelForCausalLM.from_config(config)
    assert sum(p.numel() for p in student.parameters()) == 124_439_808
    training = study["training"]
    assert (training["learning_rate"], training["batch_size"], training["block_size"]) == (2.5e-4, 32, 128)
    bigram = study["runs"]["bigram_linear"]["guidance"]
    assert (bigram["schedule_steps"], bigram["min_weight"]) == (240, 0.05)


@pytest.mark.parametrize("compiled", ["off", pytest.param("both", marks=pytest.mark.slow)])
def test_gpu_benchmark_smoke_runs_on_cpu(compiled):
    """The smoke benchmark runs every arm (the cached ones reading a real memory-mapped cache);
    `both` also runs them through torch.compile (inductor on CPU, about 30 s)."""
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "bench_gpu.py"),
            "--smoke",
            "--steps",
            "2",
            "--warmup",
            "1",
            "--compile",
            compiled,
        ],  # fmt: skip
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("torch.compile ") == (2 if compiled == "both" else 1)
    for arm in (
        "ce",
        "bigram",
        "label_smoothing",
        "surrogate (cached)",
        "kl top-32 (cached)",
        "kl dense (online)",
    ):
        assert re.search(rf"^  {re.escape(arm)}\s+[\d,]+\s+n/a\s+[\d.]+$", proc.stdout, flags=re.M), (
            proc.stdout
        )
    assert re.search(r"^min cached guided tokens/s vs ce: [\d.]+$", proc.stdout.strip().splitlines()[-1])
