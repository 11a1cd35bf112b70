"""Fixtures of the infrastructure tests (containers/, infra/)."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest


def _find_tool(name: str) -> str | None:
    """A tool in the running interpreter's bin folder (pip-installed wrappers) or on PATH."""
    here = Path(sys.executable).parent / name
    if here.exists():
        return str(here)
    return shutil.which(name)


@pytest.fixture(scope="session")
def find_tool():
    return _find_tool


@pytest.fixture
def require_slow(request: pytest.FixtureRequest) -> None:
    """Slow tests run with --runslow (where the suite defines it) or SDCE_SLOW=1."""
    try:
        enabled = bool(request.config.getoption("--runslow", default=False))
    except ValueError:
        enabled = False
    if not (enabled or os.environ.get("SDCE_SLOW") == "1"):
        pytest.skip("slow test: run with SDCE_SLOW=1 (or --runslow)")
