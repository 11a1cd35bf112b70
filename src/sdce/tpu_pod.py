"""A training job on a TPU VM pod, submitted from a Snakemake job (profiles/tpu).

With the train rule's resource `launcher: tpu-pod`, the job on the Snakemake machine
trains nothing itself. It

1. uploads its inputs (shards with their sidecars, tokenizer, teacher) to
   <checkpoint_uri>/inputs/;
2. runs `infra/gcloud/tpu-pod.sh setup` with SDCE_TRAIN_ARGS: every worker of the pod
   runs `sdce train --backend xla` on those gs:// inputs with the same checkpoint_uri
   (one process per host; torch_xla starts one per chip; the master ordinal writes);
3. runs `tpu-pod.sh monitor` with SDCE_AUTO_RESUME=1 (a preempted pod is queued again
   and resumes from the bucket's newest checkpoint) while it polls for
   <checkpoint_uri>/final/summary.json, which the run uploads last;
4. downloads final/ and the milestones into the job's outputs, and deletes the pod
   (`tpu-pod.sh cleanup`) unless SDCE_TPU_KEEP=1.

tpu-pod.sh reads its settings (SDCE_PROJECT, SDCE_ZONE, SDCE_ACCELERATOR, SDCE_TPU_IMAGE,
...) from the environment; SDCE_TPU_POD_SCRIPT replaces the script (tests put a local
stand-in there). Poll interval: SDCE_POLL_SECONDS (30); limit: SDCE_MONITOR_MINUTES (1440).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import time
from pathlib import Path

from sdce import storage

SCRIPT = Path("infra") / "gcloud" / "tpu-pod.sh"


class TpuPodError(ValueError):
    pass


def _script() -> Path:
    if os.environ.get("SDCE_TPU_POD_SCRIPT"):
        return Path(os.environ["SDCE_TPU_POD_SCRIPT"])
    here = SCRIPT if SCRIPT.exists() else Path(__file__).resolve().parents[2] / SCRIPT
    if not here.exists():
        raise TpuPodError(f"{SCRIPT} not found: run from the repository root or set SDCE_TPU_POD_SCRIPT")
    return here


def check(checkpoint_uri: str | None) -> Path:
    """Before anything is uploaded: the bucket, the pod's project and zone, the script."""
    if not checkpoint_uri:
        raise TpuPodError(
            "launcher tpu-pod needs a bucket: set SDCE_BUCKET (profiles/tpu stores in "
            "gs://$SDCE_BUCKET/sdce) or checkpoint_uri in the config"
        )
    missing = [k for k in ("SDCE_PROJECT", "SDCE_ZONE") if not os.environ.get(k)]
    if missing:
        raise TpuPodError(f"launcher tpu-pod: set {' and '.join(missing)} (see infra/README.md)")
    return _script()


def run_id(name: str, seed: int, checkpoint_uri: str) -> str:
    """A queued-resource-safe id per run and bucket location (lowercase, digits, '-')."""
    import hashlib

    digest = hashlib.sha256(checkpoint_uri.encode()).hexdigest()[:8]
    return re.sub(r"[^a-z0-9-]", "-", f"sdce-{name}-s{seed}-{digest}".lower())


def upload_inputs(remote: storage.Remote, inputs: dict[str, str]) -> dict[str, str]:
    """Upload each input (file or folder) under inputs/<key>; their gs:// locations."""
    located = {}
    for key, path in inputs.items():
        p = Path(path)
        target = storage.join("inputs", key, p.name)
        if p.is_dir():
            remote.upload_dir(p, target)
        else:
            remote.upload_file(p, target)
            sidecar = p.with_name(p.name + ".json")
            if sidecar.exists():  # token shards: the sidecar travels with the shard
                remote.upload_file(sidecar, target + ".json")
        located[key] = f"{remote.uri}/{target}"
    return located


def worker_args(job, located: dict[str, str]) -> str:
    """The `sdce train-job` arguments of every pod worker: `job` on the uploaded inputs, on XLA,
    with the job's bucket location."""
    out = f"tpu-runs/{job.name}/{job.fold}/seed{job.seed}"
    args = ["--params", json.dumps(job.run, sort_keys=True), "--name", job.name, "--seed", str(job.seed)]
    args += ["--fold", job.fold, "--train-shard", located["train"], "--val-shard", located["validation"]]
    args += ["--tokenizer", located["tokenizer"], "--backend", "xla"]
    args += ["--checkpoint-uri", job.placement.checkpoint_uri, "--out", out, "--no-progress"]
    if "teacher" in located:
        args += ["--teacher", located["teacher"]]
    return shlex.join(args)


def submit(job) -> dict:
    """Train `job` (an `sdce.job.Job` with launcher tpu-pod) on a TPU VM pod; its summary."""
    uri = job.placement.checkpoint_uri
    script = check(uri)
    remote = storage.open_remote(uri)
    out = Path(job.out)
    expected = job.config_hash()
    pod = os.environ.get("SDCE_TPU_NAME") or run_id(job.name, job.seed, uri)
    env = {**os.environ, "SDCE_TPU_NAME": pod}
    if _final_hash(remote) == expected:
        print(f"tpu-pod: {uri} already holds this run's final outputs", flush=True)
    else:
        remote.delete(storage.FINAL)  # another config's outputs
        inputs = {"train": job.inputs.train_shard, "validation": job.inputs.val_shard}
        inputs["tokenizer"] = job.inputs.tokenizer
        if job.inputs.teacher:
            inputs["teacher"] = job.inputs.teacher
        located = upload_inputs(remote, inputs)
        env.update(
            SDCE_BUCKET=remote.bucket_name,
            SDCE_RUN_ID=pod,
            SDCE_TRAIN_ARGS=worker_args(job, located),
            SDCE_AUTO_RESUME="1",
        )
        print(f"tpu-pod: {script} setup (pod {pod})", flush=True)
        subprocess.run(["bash", str(script), "setup"], env=env, check=True)
        wait(remote, script, env, expected)
    _download_outputs(remote, out)
    if os.environ.get("SDCE_TPU_KEEP") != "1":
        subprocess.run(["bash", str(script), "cleanup"], env=env, check=False)
    return json.loads((out / "summary.json").read_text())


def _final_hash(remote: storage.Remote) -> str | None:
    key = storage.join(storage.FINAL, "summary.json")
    return json.loads(remote.read_text(key)).get("config_hash") if remote.exists(key) else None


def wait(remote: storage.Remote, script: Path, env: dict, expected: str) -> None:
    """Until final/summary.json is in the bucket, with the pod script's monitor beside."""
    poll = int(env.get("SDCE_POLL_SECONDS") or 30)
    limit = time.monotonic() + 60 * int(env.get("SDCE_MONITOR_MINUTES") or 1440)
    monitor = subprocess.Popen(["bash", str(script), "monitor"], env=env)
    try:
        while _final_hash(remote) != expected:
            code = monitor.poll()
            if code not in (None, 0):
                raise TpuPodError(
                    f"tpu-pod: the pod was lost and not resumed (monitor exit {code}); "
                    f"run '{script} resume' and the job again: training resumes from {remote.uri}"
                )
            if time.monotonic() > limit:
                raise TpuPodError(f"tpu-pod: no final outputs in {remote.uri} after SDCE_MONITOR_MINUTES")
            time.sleep(poll)
    finally:
        if monitor.poll() is None:
            monitor.terminate()
            monitor.wait()


def _download_outputs(remote: storage.Remote, out: Path) -> None:
    from sdce.io import atomic_dir

    with atomic_dir(out / "model") as tmp:
        remote.download_dir(storage.join(storage.FINAL, "model"), tmp)
    with atomic_dir(out / "milestones") as tmp:
        remote.download_dir("milestones", tmp)
    remote.download_file(storage.join(storage.FINAL, "metrics.jsonl"), out / "metrics.jsonl")
    remote.download_file(storage.join(storage.FINAL, "summary.json"), out / "summary.json")
