"""Snakemake with its real Kubernetes executor, the Kubernetes API client replaced in this
process by a recorder that runs every submitted Job here.

    python tests/k8s_recorder.py RECORD_DIR -- <snakemake arguments>

Each `create_namespaced_job` call is written to RECORD_DIR/jobs.jsonl (namespace and
the Job as the API would receive it) and its container command runs in a fresh folder
(the pod's emptyDir /workdir) with the environment a pod of the image would have: the
image's PATH (this virtualenv) and the variables of the run's Kubernetes secret. Secret
values are never recorded, only their names. Job status, pod listing and logs are
answered from those processes, so the executor polls, collects and cleans up as it
would on a cluster.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import threading
from pathlib import Path

import kubernetes
import kubernetes.client as k8s
import kubernetes.config


class Recorder:
    def __init__(self, root: Path):
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.jobs: dict[str, subprocess.Popen] = {}
        self.secrets: dict[str, dict[str, str]] = {}
        self.lock = threading.Lock()

    def record(self, kind: str, **fields) -> None:
        with self.lock, open(self.root / "jobs.jsonl", "a") as f:
            f.write(json.dumps({"kind": kind, **fields}, default=str) + "\n")


REC: Recorder


class BatchV1Api:
    def create_namespaced_job(self, namespace, body):
        spec = k8s.ApiClient().sanitize_for_serialization(body)
        REC.record("job", namespace=namespace, job=spec)
        name = body.metadata.name
        pod = body.spec.template.spec
        container = pod.containers[0]
        workdir = REC.root / "pods" / name
        workdir.mkdir(parents=True)
        env = {
            "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
            "HOME": str(workdir),
            "LANG": "C.UTF-8",
        }
        for var in container.env or []:
            ref = var.value_from.secret_key_ref
            env[var.name] = REC.secrets[ref.name][ref.key]
        log = open(workdir.parent / f"{name}.log", "w")
        REC.jobs[name] = subprocess.Popen(
            [*container.command, *container.args], cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT
        )
        return body

    def read_namespaced_job_status(self, name, namespace):
        code = REC.jobs[name].poll()
        status = k8s.V1JobStatus(
            succeeded=1 if code == 0 else None, failed=1 if code not in (None, 0) else None
        )
        return k8s.V1Job(metadata=k8s.V1ObjectMeta(name=name), status=status)

    def delete_namespaced_job(self, name, namespace, **kwargs):
        REC.record("delete_job", namespace=namespace, name=name)


class CoreV1Api:
    def create_namespaced_secret(self, namespace, body):
        values = {k: base64.b64decode(v).decode() for k, v in (body.data or {}).items()}
        REC.secrets[body.metadata.name] = values
        REC.record("secret", namespace=namespace, keys=sorted(values))

    def delete_namespaced_secret(self, name, namespace, **kwargs):
        REC.record("delete_secret", namespace=namespace, name=name)

    def list_namespaced_pod(self, namespace, label_selector):
        name = label_selector.split("=", 1)[1]
        proc = REC.jobs.get(name)
        if proc is None or proc.poll() is None:
            return k8s.V1PodList(items=[])
        state = k8s.V1ContainerState(terminated=k8s.V1ContainerStateTerminated(exit_code=proc.returncode))
        status = k8s.V1ContainerStatus(
            name="snakemake", state=state, image="", image_id="", ready=False, restart_count=0
        )
        pod = k8s.V1Pod(
            metadata=k8s.V1ObjectMeta(name=f"{name}-pod"), status=k8s.V1PodStatus(container_statuses=[status])
        )
        return k8s.V1PodList(items=[pod])

    def read_namespaced_pod_log(self, name, namespace, container, previous=False):
        return (REC.root / "pods" / f"{name.removesuffix('-pod')}.log").read_text()

    def delete_namespaced_pod(self, name, namespace, body=None):
        REC.record("delete_pod", namespace=namespace, name=name)


def main(argv: list[str]) -> int:
    global REC
    sep = argv.index("--")
    REC = Recorder(Path(argv[0]).resolve())
    kubernetes.config.load_kube_config = lambda *a, **k: None
    k8s.BatchV1Api = BatchV1Api
    k8s.CoreV1Api = CoreV1Api
    from snakemake.cli import main as snakemake_main

    return snakemake_main(argv[sep + 1 :])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
