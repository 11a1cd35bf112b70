#!/usr/bin/env python3
"""Write containers/constraints-<target>.txt: full pins for each image target.

Each lock is pip's own resolution (``pip install --dry-run --ignore-installed --report``)
of the sdce package from this repository, with the extras the Dockerfile's target
installs, plus containers/requirements-<target>.in, for the Python version and platform
of that target's base image. Run from anywhere:

    python3 containers/lock.py            # all targets
    python3 containers/lock.py cpu tpu    # some

Each target is resolved by an interpreter of its image's Python version (``python3.12`` on
PATH, pyenv, or SDCE_LOCK_PYTHON_3_12=/path/to/python3.12) on Linux x86_64, so that
environment markers and wheel tags are those of the image (pip's --platform mode admits
no source distributions, and several of Snakemake's dependencies ship only those). Run it
on a glibc no newer than the bases' (bookworm 2.36; Ubuntu 24.04 has 2.39).

Indexes: PyPI, and for the cpu target the PyTorch CPU index. SDCE_LOCK_FIND_LINKS adds a
local wheelhouse (a mirror of the PyTorch CPU wheels, for example) to the cpu target.
SDCE_LOCK_TORCH_INDEX replaces the PyTorch CPU index (empty: none, for
machines that reach only PyPI and a wheelhouse). The user's pip configuration is
ignored so that a local wheel of another variant cannot leak into a lock.
"""

from __future__ import annotations

import glob
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"


@dataclass
class Target:
    name: str
    python: str  # the base image's Python, major.minor
    extras: str  # sdce extras, as in the Dockerfile's SDCE_EXTRAS for this stage
    cpu_index: bool = False
    # (pattern of names to drop, why) after resolution; see tpu below.
    drop: list[tuple[str, str]] = field(default_factory=list)
    # pins to rewrite after resolution: name -> version
    rewrite: dict[str, str] = field(default_factory=dict)


TARGETS = {
    "cpu": Target("cpu", "3.11", "workflow", cpu_index=True),
    "cuda": Target("cuda", "3.12", "workflow"),
    # The tpu image installs the CPU build of torch 2.9.0 from the PyTorch CPU index. That
    # build's metadata cannot always be fetched where locks are written, so the target is
    # resolved against PyPI's torch 2.9.0 (whose Linux wheel is the CUDA build), and the
    # CUDA-only wheels are dropped and torch is pinned to the +cpu build. The remaining
    # dependency set of torch is the same for both builds.
    "tpu": Target(
        "tpu",
        "3.11",
        "",
        drop=[(r"nvidia-.*", "CUDA-only"), (r"triton", "CUDA-only")],
        rewrite={"torch": "2.9.0+cpu"},
    ),
}


def find_python(version: str) -> str | None:
    env = os.environ.get("SDCE_LOCK_PYTHON_" + version.replace(".", "_"))
    if env:
        return env
    if sys.version_info[:2] == tuple(int(p) for p in version.split(".")):
        return sys.executable
    exe = shutil.which(f"python{version}")
    if exe and subprocess.run([exe, "-c", "pass"], capture_output=True).returncode == 0:
        return exe
    pyenv = sorted(glob.glob(os.path.expanduser(f"~/.pyenv/versions/{version}.*/bin/python{version}")))
    return pyenv[-1] if pyenv else None


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def build_wheel(outdir: str) -> Path:
    """The sdce wheel (pure Python), built once and resolved with each target's extras."""
    env = dict(os.environ, PIP_CONSTRAINT=str(HERE / "constraints-build.txt"))
    cmd = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", outdir, str(REPO)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"building the sdce wheel failed\n{proc.stderr}")
    return next(Path(outdir).glob("sdce-*.whl"))


def resolve(target: Target, wheel: Path) -> tuple[list[tuple[str, str]], str]:
    python = find_python(target.python)
    if python is None:
        sys.exit(
            f"lock {target.name}: no Python {target.python} found; set SDCE_LOCK_PYTHON_"
            f"{target.python.replace('.', '_')} to one (markers must be evaluated for the image's Python)"
        )
    note = f"CPython {target.python} on Linux x86_64 (glibc of this machine, {platform.libc_ver()[1]})"
    reqs = [f"{wheel}[{target.extras}]" if target.extras else str(wheel)]
    reqs += ["-r", str(HERE / f"requirements-{target.name}.in")]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_") or k == "PIP_CERT"}
    env["PIP_CONFIG_FILE"] = os.devnull
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        cmd = [
            python,
            "-m",
            "pip",
            "install",
            "--dry-run",
            "--ignore-installed",
            "--quiet",
            "--disable-pip-version-check",
            "--report",
            str(report),
        ]
        if target.cpu_index:
            index = os.environ.get("SDCE_LOCK_TORCH_INDEX", TORCH_CPU_INDEX)
            if index:
                cmd += ["--extra-index-url", index]
            if os.environ.get("SDCE_LOCK_FIND_LINKS"):
                cmd += ["--find-links", os.environ["SDCE_LOCK_FIND_LINKS"]]
        cmd += reqs
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(f"lock {target.name}: pip failed\n{proc.stderr}")
        data = json.loads(report.read_text())
    pins = []
    for item in data["install"]:
        name, version = item["metadata"]["name"], item["metadata"]["version"]
        if canonical(name) == "sdce":
            continue
        pins.append((name, version))
    return pins, note


def write(target: Target, wheel: Path) -> Path:
    pins, note = resolve(target, wheel)
    dropped = []
    out = []
    for name, version in pins:
        reason = next((why for pat, why in target.drop if re.fullmatch(pat, canonical(name))), None)
        if reason:
            dropped.append(f"{canonical(name)} ({reason})" if reason != "CUDA-only" else canonical(name))
            continue
        version = target.rewrite.get(canonical(name), version)
        out.append(f"{canonical(name)}=={version}")
    out.sort()
    extras = f"[{target.extras}]" if target.extras else ""
    header = [
        f"# Lock for the '{target.name}' image target, written by containers/lock.py; do not edit.",
        f"# Resolved: sdce{extras} from pyproject.toml + containers/requirements-{target.name}.in",
        f"# for {note}.",
    ]
    if target.rewrite:
        header.append(
            "# Rewritten after resolution: " + ", ".join(f"{k}=={v}" for k, v in target.rewrite.items())
        )
    if dropped:
        header.append("# Dropped after resolution (dependencies of PyPI's CUDA build of torch only):")
        header += textwrap.wrap(
            ", ".join(sorted(dropped)),
            88,
            initial_indent="#   ",
            subsequent_indent="#   ",
            break_on_hyphens=False,
        )
    path = HERE / f"constraints-{target.name}.txt"
    path.write_text("\n".join(header + out) + "\n")
    return path


def main(argv: list[str]) -> int:
    names = argv or list(TARGETS)
    unknown = [n for n in names if n not in TARGETS]
    if unknown:
        sys.exit(f"unknown target(s) {unknown}; targets: {', '.join(TARGETS)}")
    with tempfile.TemporaryDirectory() as tmp:
        wheel = build_wheel(tmp)
        for name in names:
            print(f"{name}: {write(TARGETS[name], wheel).relative_to(REPO)}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
