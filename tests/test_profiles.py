"""The gpu and tpu profiles, run exactly as the README shows from a fresh clone, against a
local Cloud Storage emulator instead of a bucket: what they plan (dry runs), a real run
of the gpu profile through the real Kubernetes executor with the Kubernetes API replaced
by a recorder (slow), and a real run of the tpu profile with a local stand-in for the
pod script (slow)."""

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
BIN = Path(sys.executable).parent
SNAKEMAKE = str(BIN / "snakemake")

pytest.importorskip(
    "snakemake_storage_plugin_gcs", reason="needs the cloud extra (pip install 'sdce[cloud]')"
)


@pytest.fixture(scope="module")
def clone(tmp_path_factory):
    """A fresh clone of this working tree: every tracked file and every new file git does
    not ignore (nothing built, no results, no virtualenv), committed."""
    dest = tmp_path_factory.mktemp("clone")
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for rel in filter(None, (p.decode() for p in listed)):
        src = REPO / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t"}
    env["GIT_COMMITTER_EMAIL"] = "t@t"
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-q", "-m", "clone"]):
        subprocess.run(cmd, cwd=dest, env=env, check=True)
    return dest


def cloud_env(emulator, **extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SDCE_", "STORAGE_EMULATOR"))}
    env["PATH"] = f"{BIN}:{env['PATH']}"
    env["STORAGE_EMULATOR_HOST"] = emulator
    env.update(extra)
    return env


def snakemake(cwd, env, *args, check=True):
    proc = subprocess.run([SNAKEMAKE, *args], cwd=cwd, env=env, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)}\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return proc


def planned(output: str) -> list[dict]:
    """Jobs of a dry run's output: rule, wildcards, resources, shell command."""
    jobs = []
    for block in re.split(r"\n(?=\[[^\]]+\]\n(?:local)?rule )", output):
        m = re.search(r"^(?:local)?rule (\w+):", block, flags=re.M)
        if not m:
            continue
        job = {"rule": m.group(1), "resources": {}, "wildcards": {}, "shell": "", "io": ""}
        if r := re.search(r"^\s+resources: (.*)$", block, flags=re.M):
            job["resources"] = dict(kv.split("=", 1) for kv in r.group(1).split(", "))
        if w := re.search(r"^\s+wildcards: (.*)$", block, flags=re.M):
            job["wildcards"] = dict(kv.split("=", 1) for kv in w.group(1).split(", "))
        if s := re.search(r"^Shell command: (.*)$", block, flags=re.M):
            job["shell"] = s.group(1)
        job["io"] = " ".join(re.findall(r"^\s+(?:input|output): (.*)$", block, flags=re.M))
        jobs.append(job)
    return jobs


def profile(name):
    return yaml.safe_load((REPO / "profiles" / name / "config.yaml").read_text())


def test_gpu_profile_plans_gpu_training_and_cpu_data_jobs(clone, gcs_emulator, gcs):
    env = cloud_env(gcs_emulator, SDCE_BUCKET=gcs, SDCE_PROJECT="sdce-test")
    out = snakemake(clone, env, "--profile", "profiles/gpu", "--dry-run").stdout  # the README's command
    jobs = planned(out)
    study = yaml.safe_load((clone / "config" / "config.yaml").read_text())
    experiment = study["experiment"]
    trains = [j for j in jobs if j["rule"] == "train"]
    assert trains and {(j["wildcards"]["run"], j["wildcards"]["seed"]) for j in trains} == {
        (j["wildcards"]["run"], j["wildcards"]["seed"]) for j in jobs if j["rule"] == "evaluate"
    }
    gpu_rules = {"train", "teacher_train", "cache_teacher"}
    for j in (j for j in jobs if j["rule"] in gpu_rules):  # the default study trains a surrogate
        r = j["resources"]
        assert (r["gpu"], r["gpu_manufacturer"], r["machine_type"], r["scale"]) == (
            "1",
            "nvidia",
            "g2-standard-8",
            "0",
        ), j
    assert {j["rule"] for j in jobs} >= gpu_rules
    for j in trains:
        run, seed = j["wildcards"]["run"], j["wildcards"]["seed"]
        uri = f"gs://{gcs}/checkpoints/{experiment}/{run}/main/seed{seed}"  # terraform's lifecycle prefix
        r = j["resources"]
        assert r["processes"] == "0" and r["launcher"] == "local" and r["checkpoint_uri"] == uri
        assert f"--processes 0 --launcher local --checkpoint-uri {uri}" in j["shell"]
    for j in jobs:
        if j["rule"] not in gpu_rules | {"all"}:
            assert "gpu" not in j["resources"] and "machine_type" not in j["resources"], j
        assert all(p.startswith(f"gs://{gcs}/sdce/") for p in re.findall(r"gs://\S+", j["io"]))
    # the Kubernetes job image is the config's cuda image (a run whose two differ stops at start)
    shipped = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    assert profile("gpu")["container-image"] == shipped["containers"]["cuda"]


def test_tpu_profile_sends_only_training_to_the_pod(clone, gcs_emulator, gcs):
    env = cloud_env(gcs_emulator, SDCE_BUCKET=gcs, SDCE_PROJECT="sdce-test", SDCE_ZONE="us-central2-b")
    jobs = planned(snakemake(clone, env, "--profile", "profiles/tpu", "--dry-run").stdout)
    assert "executor" not in profile("tpu")  # every job runs on this machine
    trains = [j for j in jobs if j["rule"] == "train"]
    assert trains
    for j in jobs:
        on_pod = j["rule"] == "train"
        assert (j["resources"].get("launcher") == "tpu-pod") == on_pod, j
        assert ("tpu_pods" in j["resources"]) == on_pod
        if on_pod:
            assert "--launcher tpu-pod --checkpoint-uri gs://" in j["shell"]


def test_profiles_name_what_to_set(clone, gcs_emulator):
    env = cloud_env(gcs_emulator, SDCE_PROJECT="p")
    proc = snakemake(clone, env, "--profile", "profiles/gpu", "--dry-run", check=False)
    assert proc.returncode != 0 and "set SDCE_BUCKET" in proc.stderr + proc.stdout
    env = cloud_env(gcs_emulator, SDCE_BUCKET="b")
    proc = snakemake(clone, env, "--profile", "profiles/tpu", "--dry-run", check=False)
    assert proc.returncode != 0 and "set SDCE_PROJECT" in proc.stderr + proc.stdout
    # a bare name is looked up in ./gpu, ~/.config/snakemake/gpu and /etc/xdg/snakemake/gpu
    proc = snakemake(clone, env, "--profile", "gpu", "--dry-run", check=False)
    assert proc.returncode != 0 and "profile directory given (gpu)" in proc.stderr


CUDA_IMAGE = profile("gpu")["container-image"]
STUDY = f"""
experiment: cloud
seeds: [1]
corpus: {{source: synthetic, synthetic_documents: 200, synthetic_seed: 1}}
split: {{validation_fraction: 0.1, shuffle: true, seed: 42}}
tokenizer: {{kind: bpe, vocab_size: 300}}
bigram: {{top_k: 32}}
model: {{family: gpt2, n_layer: 1, n_embd: 32, n_head: 2}}
training: {{steps: 4, batch_size: 4, block_size: 64, warmup_steps: 1, eval_interval: 2, eval_tokens: 1024,
           log_interval: 2, checkpoint_interval: 2, milestones: [200]}}
evaluation: {{eval_tokens: 1024, synthetic_pairs: 6}}
containers: {{cuda: "{CUDA_IMAGE}"}}
baseline: baseline
runs:
  baseline: {{guidance: {{objective: ce}}}}
  bigram_linear: {{guidance: {{objective: bigram, schedule: linear, schedule_steps: 3}}}}
"""


def small_study_clone(clone, tmp_path):
    """The clone with a seconds-long study as its config/config.yaml, committed."""
    dest = tmp_path / "study"
    shutil.copytree(clone, dest, symlinks=True)
    (dest / "config" / "config.yaml").write_text(STUDY)
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t"}
    env["GIT_COMMITTER_EMAIL"] = "t@t"
    subprocess.run(["git", "commit", "-q", "-am", "study"], cwd=dest, env=env, check=True)
    return dest


def bucket_names(bucket, prefix=""):
    from google.cloud import storage

    return {b.name for b in storage.Client().list_blobs(bucket, prefix=prefix)}


def run_recorded(study, env, record, *extra):
    cmd = [sys.executable, str(REPO / "tests" / "k8s_recorder.py"), str(record), "--"]
    # the README's command; this machine runs two pods at a time and polls every second;
    # the emulator's address reaches the pods the way any variable does: --envvars
    args = ["--profile", "profiles/gpu", "--jobs", "2", "--seconds-between-status-checks", "1"]
    args += ["--retries", "0", "--envvars", "STORAGE_EMULATOR_HOST", *extra]
    return subprocess.run(cmd + args, cwd=study, env=env, capture_output=True, text=True)


@pytest.mark.slow
def test_job_image_other_than_the_configs_stops_the_run_at_start(clone, gcs_emulator, gcs, tmp_path):
    pytest.importorskip("snakemake_executor_plugin_kubernetes", reason="needs the cloud extra")
    study = small_study_clone(clone, tmp_path)
    env = cloud_env(gcs_emulator, SDCE_BUCKET=gcs, SDCE_PROJECT="sdce-test")
    proc = run_recorded(study, env, tmp_path / "k8s", "--container-image", "registry.example/other:1")
    assert proc.returncode != 0
    message = "--container-image registry.example/other:1 (profiles/gpu: container-image) is not the config's"
    assert message in proc.stderr
    events = (tmp_path / "k8s" / "jobs.jsonl").read_text().splitlines()
    assert not [e for e in events if json.loads(e)["kind"] == "job"]


@pytest.mark.slow
def test_gpu_profile_through_the_kubernetes_executor(clone, gcs_emulator, gcs, tmp_path):
    pytest.importorskip("snakemake_executor_plugin_kubernetes", reason="needs the cloud extra")
    study = small_study_clone(clone, tmp_path)
    env = cloud_env(gcs_emulator, SDCE_BUCKET=gcs, SDCE_PROJECT="sdce-test")
    record = tmp_path / "k8s"
    proc = run_recorded(study, env, record)
    failed = [p for p in (record / "pods").glob("*.log") if "Error in rule" in p.read_text()]
    logs = "".join(p.read_text()[-3000:] for p in failed[:2])
    assert proc.returncode == 0, proc.stderr[-6000:] + logs
    text = (record / "jobs.jsonl").read_text()
    assert gcs_emulator not in text  # secret values are referenced, never written
    events = [json.loads(line) for line in text.splitlines()]
    secrets = [e for e in events if e["kind"] == "secret"]
    assert secrets and "storage_emulator_host" in secrets[0]["keys"]
    jobs = [e for e in events if e["kind"] == "job"]
    rules = {}
    for e in jobs:
        assert e["namespace"] == "sdce"
        pod = e["job"]["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        assert container["image"] == CUDA_IMAGE
        assert pod["serviceAccountName"] == "sdce-jobs"
        assert pod["restartPolicy"] == "Never" and e["job"]["spec"]["backoffLimit"] == 0
        rule = re.search(r"--target-jobs '?(\w+):", container["args"][1]).group(1)
        rules[rule] = rules.get(rule, 0) + 1
        res = container["resources"]
        if rule == "train":
            assert res["requests"]["nvidia.com/gpu"] == "1" and res["limits"]["nvidia.com/gpu"] == "1"
            assert res["limits"]["cpu"] == "4000m" and res["limits"]["memory"] == "24000M"
            assert pod["tolerations"] == [
                {"effect": "NoSchedule", "key": "nvidia.com/gpu", "operator": "Equal", "value": "present"}
            ]
            assert pod["nodeSelector"] == {"node.kubernetes.io/instance-type": "g2-standard-8"}
        else:
            assert "nvidia.com/gpu" not in res["requests"] and not res.get("limits")
            assert not pod.get("tolerations") and not pod.get("nodeSelector")
    assert rules == {
        "corpus": 1,
        "split": 1,
        "tokenizer": 1,
        "encode": 2,
        "bigram": 1,
        "minimal_pairs": 1,
        "train": 2,
        "evaluate": 2,
        "evaluate_milestones": 2,
        "generate": 2,
        "report": 1,
    }
    names = bucket_names(gcs, "sdce/")
    assert "sdce/results/cloud/report/summary.csv" in names
    assert "sdce/results/cloud/runs/baseline/main/seed1/milestones/words_200/state.json" in names
    assert "checkpoints/cloud/bigram_linear/main/seed1/final/summary.json" in bucket_names(
        gcs, "checkpoints/"
    )


TPU_STAND_IN = """#!/usr/bin/env bash
# Stand-in for infra/gcloud/tpu-pod.sh: 'setup' runs the workers' command on this machine
# (CPU backend, as a pod of one host); 'monitor' and 'cleanup' only log.
set -euo pipefail
echo "$1 $SDCE_TPU_NAME" >> "$STAND_IN_LOG"
if [[ "$1" == setup ]]; then
  eval "set -- $SDCE_TRAIN_ARGS"
  args=()
  for a in "$@"; do [[ "$a" == xla ]] && a=accelerate; args+=("$a"); done
  (cd "$STAND_IN_HOME" && sdce train-job "${args[@]}") >> "$STAND_IN_LOG" 2>&1
fi
"""


@pytest.mark.slow
def test_tpu_profile_runs_training_through_the_pod_script(clone, gcs_emulator, gcs, tmp_path):
    study = small_study_clone(clone, tmp_path)
    script = tmp_path / "tpu-pod.sh"
    script.write_text(TPU_STAND_IN)
    (tmp_path / "home").mkdir()
    env = cloud_env(
        gcs_emulator,
        SDCE_BUCKET=gcs,
        SDCE_PROJECT="sdce-test",
        SDCE_ZONE="us-central2-b",
        SDCE_TPU_POD_SCRIPT=str(script),
        SDCE_POLL_SECONDS="1",
        STAND_IN_LOG=str(tmp_path / "pod.log"),
        STAND_IN_HOME=str(tmp_path / "home"),
    )
    proc = snakemake(study, env, "--profile", "profiles/tpu", "--cores", "2", check=False)
    log = (tmp_path / "pod.log").read_text() if (tmp_path / "pod.log").exists() else ""
    assert proc.returncode == 0, proc.stderr[-5000:] + log[-3000:]
    calls = [line.split()[0] for line in log.splitlines() if line.split()[:1] in (["setup"], ["cleanup"])]
    assert calls.count("setup") == 2 and calls.count("cleanup") == 2
    names = bucket_names(gcs, "sdce/")
    assert "sdce/results/cloud/report/summary.csv" in names
    assert "checkpoints/cloud/baseline/main/seed1/inputs/train/train.bin.json" in bucket_names(
        gcs, "checkpoints/"
    )
    from google.cloud import storage

    blob = storage.Client().bucket(gcs).blob("sdce/results/cloud/runs/baseline/main/seed1/summary.json")
    summary = json.loads(blob.download_as_text())
    assert summary["steps"] == 4 and summary["backend"]["backend"] == "accelerate"
