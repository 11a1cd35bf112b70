"""tests/configs/tiny_moe.yaml through the real Snakemake DAG: a dense ce baseline and a
MoE-P student, a PPO stage on the dense run (MoE-P has no value model for TRL's PPO, so it is
left out by default and refused by name), the router and expert-load entries in the MoE
run's metrics, and the MoE run's FLOPs in summary.csv counted as `sdce.flops` counts a
mixture of experts (the experts a token uses, not all of them)."""

import csv
import json

import pytest
import yaml
from test_workflow import REPO, snakemake

from sdce import config as cfg
from sdce import flops
from sdce.ppo import select_runs

TINY_MOE = REPO / "tests" / "configs" / "tiny_moe.yaml"
MOE_KEYS = {"router", "expert_load_max", "expert_load_cv"}


def test_tiny_moe_study_through_the_dag(tmp_path):
    proc = snakemake(tmp_path, TINY_MOE, "--cores", "2")
    assert "15 of 15 steps (100%) done" in proc.stderr
    results = tmp_path / "results" / "tiny_moe"
    ran = sorted(
        p.relative_to(results / "benchmarks").with_suffix("").as_posix() for p in results.rglob("*.tsv")
    )
    assert [r for r in ran if r.split("/")[0] in {"train", "evaluate", "generate", "ppo", "report"}] == [
        *(f"evaluate/{run}_main_seed1" for run in ("baseline", "moep")),
        *(f"generate/{run}_main_seed1" for run in ("baseline", "moep")),
        "ppo/baseline",  # the dense run only: ppo.runs null leaves MoE-P out
        "report/report",
        *(f"train/{run}_main_seed1" for run in ("baseline", "moep")),
    ]

    runs = {name: results / "runs" / name / "main" / "seed1" for name in ("baseline", "moep")}
    train = {
        name: [
            r
            for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
            if r["kind"] == "train"
        ]
        for name, run in runs.items()
    }
    assert train["moep"] and all(MOE_KEYS <= r.keys() for r in train["moep"])
    assert all(r["router"] > 0 and 1.0 <= r["expert_load_max"] <= 4 / 2 for r in train["moep"])
    assert not any(MOE_KEYS & r.keys() for r in train["baseline"])

    rows = {r["run"]: r for r in csv.DictReader((results / "report" / "summary.csv").open())}
    assert rows.keys() == {"baseline", "moep"}
    study = yaml.safe_load(TINY_MOE.read_text())["training"]
    tokens = study["steps"] * study["batch_size"] * study["block_size"]
    config = flops.of_model_folder(runs["moep"] / "model")
    want = tokens * config.train_per_token(study["block_size"])
    assert float(rows["moep"]["flops"]) == pytest.approx(want, rel=1e-5)
    # counting every expert of the MoE projections (k = E) would give more
    from transformers import AutoConfig

    every = AutoConfig.from_pretrained(runs["moep"] / "model")
    every.num_experts_per_tok = every.num_local_experts
    assert flops.of_config(every).matmul_params > config.matmul_params

    summary = (results / "report" / "summary.md").read_text()
    assert "| baseline |" in summary and "| moep |" in summary and "## PPO post-training" in summary
    assert (results / "ppo" / "baseline" / "final" / "config.json").is_file()
    assert not (results / "ppo" / "moep").exists()


def test_moep_is_refused_as_a_ppo_policy_in_one_line(tmp_path):
    runs = {n: cfg.validate({"model": {"family": f}}, "run") for n, f in (("dense", "gpt2"), ("moe", "moep"))}
    spec = cfg.validate({"enabled": True}, "properties/ppo", where="ppo")
    assert select_runs(spec, runs) == ["dense"]  # ppo.runs null: the runs that have a value model
    message = "ppo.runs: 'moe' trains a moep model, which has no AutoModelForSequenceClassification class"
    with pytest.raises(ValueError, match=message):
        select_runs({**spec, "runs": ["moe"]}, runs)
    study = yaml.safe_load(TINY_MOE.read_text())
    study["ppo"]["runs"] = ["moep"]
    config = tmp_path / "named.yaml"
    config.write_text(yaml.safe_dump(study))
    proc = snakemake(tmp_path, config, "--dry-run", check=False)
    assert proc.returncode != 0
    (line,) = [x for x in (proc.stdout + proc.stderr).splitlines() if "ppo.runs:" in x]
    assert "ppo.runs: 'moep' trains a moep model, which has no AutoModelForSequenceClassification" in line
