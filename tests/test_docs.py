"""The README fits on a screen and links to pages that exist; the DAG's picture is current."""

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_readme_is_short_and_its_links_resolve():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert len(readme.encode()) <= 12_000
    links = re.findall(r"\]\(([^)#]+)\)", readme)
    assert "docs/rulegraph.md" in links and "docs/objectives.md" in links
    missing = [link for link in links if not link.startswith("http") and not (REPO / link).exists()]
    assert not missing


def test_the_rulegraph_page_regenerates_without_a_diff():
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run(
        ["bash", str(REPO / "docs" / "rulegraph.sh")], capture_output=True, text=True, env=env, check=True
    )
    assert "flowchart" in proc.stdout and "all --> " not in proc.stdout and "report --> all" in proc.stdout
    assert proc.stdout == (REPO / "docs" / "rulegraph.md").read_text(encoding="utf-8"), "run: make rulegraph"
