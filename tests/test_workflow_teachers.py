"""The real DAG with an LM teacher trained in it (tests/configs/tiny_teachers.yaml)."""

import csv
import json
import shutil
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from test_workflow import planned_jobs, snakemake  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "tests" / "configs" / "tiny_teachers.yaml"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def finished_study(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("teachers_study")
    config = workdir / "tiny_teachers.yaml"
    shutil.copy(TINY, config)
    snakemake(workdir, config, "--cores", "2")
    return workdir, config


def test_dag_trains_caches_and_uses_the_surrogate(finished_study):
    workdir, config = finished_study
    results = workdir / "results" / "tiny_teachers"
    rows = list(csv.DictReader(open(results / "report" / "summary.csv")))
    assert sorted(r["run"] for r in rows) == ["baseline", "kl", "kl_online", "label_smoothing", "surrogate"]
    teacher = json.loads((results / "teachers" / "surrogate" / "descriptors" / "main.json").read_text())
    assert teacher["alignment"]["teacher_tokenizer_size"] == 280
    caches = sorted(p.name for p in (results / "teachers" / "surrogate" / "cache" / "main").glob("k*"))
    assert caches == ["k6_p0.02_t1", "k8_p0_t2"]
    info = json.loads(
        (results / "teachers" / "surrogate" / "cache" / "main" / "k8_p0_t2" / "cache.json").read_text()
    )
    assert info["bytes_per_token"] == 8 * 4 + 3 and info["aligned_fraction"] > 0.5
    for run in ("surrogate", "kl", "kl_online"):
        logged = [
            json.loads(r)
            for r in (results / "runs" / run / "main" / "seed1" / "metrics.jsonl").read_text().splitlines()
        ]
        assert any("teacher_mass" in r for r in logged if r["kind"] == "train")
    assert planned_jobs(workdir, config) == {}


def test_changing_the_teacher_reruns_its_chain_and_its_students_only(finished_study, tmp_path):
    workdir, _ = finished_study
    config = yaml.safe_load(TINY.read_text())
    config["teachers"]["surrogate"]["training"]["steps"] = 3
    changed = tmp_path / "teacher.yaml"
    changed.write_text(yaml.safe_dump(config))
    jobs = planned_jobs(workdir, changed)
    assert {k: jobs.get(k) for k in ("teacher_train", "teacher", "cache_teacher", "train")} == {
        "teacher_train": 1,
        "teacher": 1,
        "cache_teacher": 1,
        "train": 3,
    }
