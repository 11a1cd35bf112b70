"""The real Snakemake DAG on a tiny config: a full run, then what a change reruns."""

import csv
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "tests" / "configs" / "tiny.yaml"
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))
# the rules call `sdce`: the test environment's bin first on PATH, as `make run` does
ENV = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}


def snakemake(workdir, configfile, *args, check=True):
    cmd = [
        SNAKEMAKE,
        "-s",
        str(REPO / "Snakefile"),
        "--directory",
        str(workdir),
        "--configfile",
        str(configfile),
        *args,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=ENV)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


def planned_jobs(workdir, configfile) -> dict[str, int]:
    out = snakemake(workdir, configfile, "--dry-run", "--quiet", "rules").stdout
    jobs = dict(re.findall(r"^(\w+)\s+(\d+)$", out, flags=re.M))
    jobs.pop("total", None)
    return {k: int(v) for k, v in jobs.items()}


def variant(tmp_path, name, edit) -> Path:
    config = yaml.safe_load(TINY.read_text())
    edit(config)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def finished_study(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("study")
    config = workdir / "tiny.yaml"
    shutil.copy(TINY, config)
    snakemake(workdir, config, "--cores", "2")
    return workdir, config


def test_full_dag_produces_report(finished_study):
    workdir, _ = finished_study
    report = workdir / "results" / "tiny" / "report"
    rows = list(csv.DictReader(open(report / "summary.csv")))
    assert sorted((r["run"], r["seed"]) for r in rows) == [
        ("baseline", "1"),
        ("baseline", "2"),
        ("bigram_linear", "1"),
        ("bigram_linear", "2"),
    ]
    for r in rows:
        assert 1.0 < float(r["perplexity"]) < 400
    md = (report / "summary.md").read_text()
    assert "| bigram_linear | bigram | linear | 2 |" in md
    for png in (
        "val_loss.png",
        "val_loss_tail.png",
        "train_loss.png",
        "guidance_weight.png",
        "learning_curves.png",
    ):
        assert (report / png).stat().st_size > 5000
    milestones = list(csv.DictReader(open(report / "milestones.csv")))
    assert {int(m["milestone"]) for m in milestones} == {200, 400}
    assert all(0.0 <= float(m["sdce_synthetic_accuracy"]) <= 1.0 for m in milestones)
    assert "sdce_synthetic_accuracy" in rows[0]


def test_nothing_to_do_after_a_run(finished_study):
    workdir, config = finished_study
    assert planned_jobs(workdir, config) == {}


def test_changing_one_run_reruns_only_that_run(finished_study, tmp_path):
    workdir, _ = finished_study
    changed = variant(
        tmp_path, "one_run", lambda c: c["runs"]["bigram_linear"]["guidance"].update(schedule_steps=3)
    )
    assert planned_jobs(workdir, changed) == {
        "train": 2,
        "evaluate": 2,
        "evaluate_milestones": 2,
        "generate": 1,  # the report's samples: first seed only
        "report": 1,
        "all": 1,
    }


def test_adding_a_seed_runs_only_new_jobs(finished_study, tmp_path):
    workdir, _ = finished_study
    changed = variant(tmp_path, "seed", lambda c: c.update(seeds=[1, 2, 3]))
    assert planned_jobs(workdir, changed) == {
        "train": 2,
        "evaluate": 2,
        "evaluate_milestones": 2,
        "report": 1,
        "all": 1,
    }


def test_changing_the_tokenizer_reruns_everything_downstream(finished_study, tmp_path):
    workdir, _ = finished_study
    changed = variant(tmp_path, "tok", lambda c: c["tokenizer"].update(vocab_size=320))
    assert planned_jobs(workdir, changed) == {
        "tokenizer": 1,
        "encode": 2,
        "bigram": 1,
        "train": 4,
        "evaluate": 4,
        "evaluate_milestones": 4,
        "generate": 2,
        "report": 1,
        "all": 1,
    }


def test_schema_errors_name_the_key(tmp_path):
    bad = variant(tmp_path, "bad", lambda c: c["training"].update(learning_rat=0.1))
    proc = snakemake(tmp_path, bad, "--dry-run", check=False)
    assert proc.returncode != 0
    assert "learning_rat" in proc.stderr + proc.stdout
    bad = variant(tmp_path, "bad2", lambda c: c["runs"]["bigram_linear"]["guidance"].update(schedule="cubic"))
    proc = snakemake(tmp_path, bad, "--dry-run", check=False)
    assert proc.returncode != 0 and "cubic" in proc.stderr + proc.stdout


def test_lint_and_format_clean():
    proc = subprocess.run(
        [SNAKEMAKE, "-s", str(REPO / "Snakefile"), "--lint"], cwd=REPO, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    snakefmt = Path(sys.executable).with_name("snakefmt")
    files = [REPO / "Snakefile", *sorted((REPO / "workflow" / "rules").glob("*.smk"))]
    proc = subprocess.run([str(snakefmt), "--check", *map(str, files)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_grid_axes_expand_to_runs_and_group_the_report(tmp_path):
    config = REPO / "tests" / "configs" / "tiny_grid.yaml"
    assert planned_jobs(tmp_path, config)["train"] == 6
    snakemake(tmp_path, config, "--cores", "2")
    report = tmp_path / "results" / "tiny_grid" / "report"
    rows = list(csv.DictReader(open(report / "summary.csv")))
    assert sorted(r["run"] for r in rows) == [
        "baseline-n_layer1",
        "baseline-n_layer2",
        "bigram-n_layer1-schedulelinear",
        "bigram-n_layer1-schedulereciprocal",
        "bigram-n_layer2-schedulelinear",
        "bigram-n_layer2-schedulereciprocal",
    ]
    for r in rows:
        assert r["base"] in ("baseline", "bigram") and r["model.n_layer"] in ("1", "2")
    summary = json.loads(
        (
            tmp_path
            / "results"
            / "tiny_grid"
            / "runs"
            / "bigram-n_layer2-schedulereciprocal"
            / "main"
            / "seed1"
            / "summary.json"
        ).read_text()
    )
    assert summary["parameters"] > 0
    md = (report / "summary.md").read_text()
    assert "## By `model.n_layer`" in md and "## By `guidance.schedule`" in md
    assert (report / "by_model_n_layer.png").exists()


def test_k_folds_and_subset_sizes_are_data_partitions(tmp_path):
    config = REPO / "tests" / "configs" / "tiny_folds.yaml"
    # 3 folds + 3 subset partitions; a tokenizer per fold; bigram teachers per partition
    assert planned_jobs(tmp_path, config) == {
        "corpus": 1,
        "split": 6,
        "tokenizer": 3,
        "encode": 12,
        "bigram": 6,
        "train": 12,
        "evaluate": 12,  # no generate jobs: generation.prompts is [] (no sample generations)
        "report": 1,
        "all": 1,
    }
    snakemake(tmp_path, config, "--cores", "2")
    results = tmp_path / "results" / "tiny_folds"

    def texts(part, split):
        lines = (results / "data" / part / f"{split}.jsonl").read_text().splitlines()
        return [json.loads(line)["text"] for line in lines]

    corpus = [
        json.loads(line)["text"] for line in (results / "data" / "corpus.jsonl").read_text().splitlines()
    ]
    folds = [f"fold{i}" for i in range(3)]
    held_out = [texts(f, "validation") for f in folds]
    assert sorted(t for v in held_out for t in v) == sorted(corpus)  # the folds partition the corpus
    for fold, val in zip(folds, held_out, strict=True):
        train, subset = texts(fold, "train"), texts(f"{fold}-n60", "train")
        assert sorted(train + val) == sorted(corpus)
        assert subset == train[:60] and texts(f"{fold}-n60", "validation") == val
        # the subset's teacher counted only its own 60 documents, in the fold's vocabulary
        full = json.loads((results / "bigram" / f"{fold}.json").read_text())
        small = json.loads((results / "bigram" / f"{fold}-n60.json").read_text())
        assert small["tokens"] < full["tokens"]
    # the subset partitions use their fold's tokenizer; each fold has its own
    hashes = {
        part: json.loads((results / "shards" / part / "train.bin.json").read_text())["tokenizer_hash"]
        for part in folds + [f"{f}-n60" for f in folds]
    }
    assert len(set(hashes.values())) == 3 and all(hashes[f"{f}-n60"] == hashes[f] for f in folds)
    rows = list(csv.DictReader(open(results / "report" / "summary.csv")))
    assert sorted((r["run"], r["fold"]) for r in rows) == sorted(
        (run, fold)
        for run in (
            "baseline-train_subsetnone",
            "baseline-train_subset60",
            "bigram-train_subsetnone",
            "bigram-train_subset60",
        )
        for fold in folds
    )
    for r in rows:  # each guided run is measured against the baseline of its own fold and subset
        if r["base"] == "bigram" and r["steps_to_baseline"]:
            assert float(r["steps_to_baseline"]) > 0
    md = (results / "report" / "summary.md").read_text()
    assert "3 folds × 1 seeds" in md and "## By fold: final validation loss" in md
    assert "## By `split.train_subset`" in md
    assert (results / "report" / "val_loss_by_fold.png").stat().st_size > 5000
    assert "## Sample generations" not in md and not (results / "report" / "samples.md").exists()
    assert planned_jobs(tmp_path, config) == {}


def test_a_copy_of_the_baseline_is_not_significant_and_costs_the_same(finished_study, tmp_path):
    """A run identical to the baseline but for its name: every paired difference is 0, the
    report says so and does not call it significant; its FLOPs to baseline are the baseline's.
    The bigram run's FLOPs to baseline are counted and its comparisons are there."""
    workdir, _ = finished_study
    copy = tmp_path / "study"
    shutil.copytree(workdir, copy, symlinks=True)
    config = variant(
        tmp_path, "copy", lambda c: c["runs"].update(baseline_again={"guidance": {"objective": "ce"}})
    )
    snakemake(copy, config, "--cores", "2")
    report = copy / "results" / "tiny" / "report"
    table = list(csv.DictReader(open(report / "comparisons.csv")))
    mine = {r["metric"]: r for r in table if r["run"] == "baseline_again"}
    assert {"steps_saved", "final_val_loss", "sdce_synthetic_accuracy"} <= set(mine)
    for r in mine.values():
        assert float(r["mean"]) == 0.0 and r["n"] == "2" and r["verdict"] == "not significant"
        assert float(r["p_t"]) == 1.0
    assert {r["metric"] for r in table if r["run"] == "bigram_linear"} == set(mine)
    rows = {(r["run"], r["seed"]): r for r in csv.DictReader(open(report / "summary.csv"))}
    for seed in ("1", "2"):
        assert float(rows[("baseline_again", seed)]["flops_to_baseline"]) == pytest.approx(1.0)
        assert float(rows[("baseline_again", seed)]["flops"]) == float(rows[("baseline", seed)]["flops"]) > 0
        assert rows[("baseline_again", seed)]["config_hash"] == rows[("baseline", seed)]["config_hash"]
        for key in ("code_version", "data_hash", "tokenizer_hash"):
            assert rows[("bigram_linear", seed)][key]
    md = (report / "summary.md").read_text()
    assert "## Against the baseline, paired by replicate" in md
    assert re.search(r"\| baseline_again \| final_val_loss \| \+0\.0000 \[\+0\.0000, \+0\.0000\] \| 1 \|", md)


def test_snakemakes_own_report_holds_the_plots_tables_and_job_statistics(finished_study, tmp_path):
    workdir, config = finished_study
    html = tmp_path / "report.html"
    snakemake(workdir, config, "--report", str(html))
    text = html.read_text(encoding="utf-8", errors="replace")
    assert len(text) > 100_000
    for name in ("val_loss.png", "summary.csv", "comparisons.csv", "learning_curves.png", "Study report"):
        assert name in text, name
    bench = workdir / "results" / "tiny" / "benchmarks"
    assert {p.name for p in bench.iterdir()} >= {
        "corpus",
        "split",
        "tokenizer",
        "encode",
        "train",
        "evaluate",
    }
    times = list(csv.DictReader(open(workdir / "results" / "tiny" / "report" / "job_times.csv")))
    assert {"train", "evaluate", "encode"} <= {r["rule"] for r in times}
    assert all(float(r["seconds"]) >= 0 for r in times)
    assert "## Where the time went" in (workdir / "results" / "tiny" / "report" / "summary.md").read_text()


def test_a_masked_diffusion_run_beside_the_autoregressive_baseline(tmp_path):
    """tests/configs/tiny_mdm.yaml through the real DAG: the ModernBERT masked-diffusion run
    has its rows, milestones and minimal pairs like the baseline, its loss labelled a bound."""
    config = REPO / "tests" / "configs" / "tiny_mdm.yaml"
    snakemake(tmp_path, config, "--cores", "2")
    report = tmp_path / "results" / "tiny_mdm" / "report"
    rows = {r["run"]: r for r in csv.DictReader(open(report / "summary.csv"))}
    assert set(rows) == {"baseline", "diffusion"}
    assert rows["baseline"]["measure"] == "next_token" and rows["diffusion"]["measure"] == "elbo"
    for r in rows.values():
        assert 1.0 < float(r["perplexity"]) < 400 and 0.0 <= float(r["sdce_synthetic_accuracy"]) <= 1.0
    milestones = list(csv.DictReader(open(report / "milestones.csv")))
    assert {(m["run"], int(m["milestone"])) for m in milestones} >= {("diffusion", 200), ("diffusion", 400)}
    headline = (report / "headline.md").read_text()
    line = next(x for x in headline.splitlines() if x.startswith("| diffusion"))
    assert "≤" in line and "n/a (loss is a bound)" in line
    samples = (report / "samples.md").read_text()  # sample generations of both kinds of model
    assert "**baseline** (main, seed1)" in samples and "**diffusion** (main, seed1)" in samples
    assert samples.count("* **The old cats that**") == 2
    (model,) = (tmp_path / "results" / "tiny_mdm" / "runs" / "diffusion").glob("*/seed1/model")
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    assert AutoModelForMaskedLM.from_pretrained(model).config.model_type == "modernbert"
    assert AutoTokenizer.from_pretrained(model).mask_token == "<|mask|>"
