"""A study's DAG through Snakemake: the whole of it (`sdce run`), or the targets one training
needs (`sdce train --config`'s data and teacher, `sdce.predecessor.prepare`). Both call the
repository's Snakefile with the study as its config file, so what is up to date is decided by
Snakemake's one rule (missing, older than an input, or made with other params or code)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
_FAILED_LOG = re.compile(r"^\s*log: (\S+) \(check log")
_JOB = re.compile(r"^(?:local)?rule (\w+):$")


class StageError(ValueError):
    """A pipeline job failed; the message is the last line of its log (its `sdce` error)."""


def command(config: Path, *, profile: str = "local", cores: int | None = None, args=()) -> list[str]:
    """The snakemake command line that runs the study `config` with `profile`."""
    snakefile = REPO / "Snakefile"
    if not snakefile.is_file():
        raise FileNotFoundError(f"the repository's Snakefile is needed, not found at {snakefile}")
    exe = Path(sys.executable).parent / "snakemake"
    cmd = [str(exe), "-s", str(snakefile), "--configfile", str(Path(config).resolve())]
    cmd += ["--profile", str(REPO / "profiles" / profile), "--cores", str(cores or os.cpu_count())]
    return cmd + list(args)


def environment() -> dict:
    """os.environ with this interpreter's scripts first on PATH: the rules call `sdce`."""
    bin_dir = Path(sys.executable).parent
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}


def build(
    config: Path, targets: list[str], workdir: Path, log_file: Path, cores: int | None = None
) -> list[str]:
    """Bring `targets` of the study `config` up to date, Snakemake's metadata and lock in
    `workdir`, its output in `log_file`; the rules of the jobs it ran (none: all up to date).
    A failed job raises StageError with the last line of the job's log (its `sdce` error),
    else with the end of Snakemake's output."""
    args = ["--directory", str(workdir), *targets]
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "w", encoding="utf-8") as f:
        rc = subprocess.call(
            command(config, cores=cores, args=args), stdout=f, stderr=subprocess.STDOUT, env=environment()
        )
    lines = log_file.read_text(errors="replace").splitlines()
    if rc != 0:
        failed = [Path(m.group(1)) for line in lines if (m := _FAILED_LOG.match(line))]
        raise StageError(_failure(failed, lines, rc, log_file))
    return [m.group(1) for line in lines if (m := _JOB.match(line))]


def _last_line(path: Path) -> str | None:
    lines = [s for s in path.read_text(errors="replace").splitlines() if s.strip()] if path.is_file() else []
    return lines[-1].strip() if lines else None


def _failure(job_logs: list[Path], lines: list[str], rc: int, log_file: Path) -> str:
    for log in job_logs:
        if last := _last_line(log):
            return f"{last} (log: {log})"
    said = next((s.strip() for s in reversed(lines) if s.strip()), "")
    return f"snakemake exited with {rc}: {said} (log: {log_file})"
