"""The study report's per-source validation losses (`sdce.report.source_losses`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_report_babylm import SUITE, table_rows, write_study

from sdce.report import build_report

# per run and seed: the evaluation job's val_loss_by_source
BY_SOURCE = {
    ("baseline", 1): {"childes": 3.0, "wiki": 4.0},
    ("baseline", 2): {"childes": 3.2, "wiki": 4.4},
    ("guided", 1): {"childes": 2.9, "wiki": 4.1},
    ("guided", 2): {"childes": 3.0, "wiki": 4.5},
}


def _with_sources(evals: list[str], by_source: dict) -> None:
    for path in evals:
        e = json.loads(Path(path).read_text())
        losses = by_source[(e["run"], e["seed"])]
        e["val_loss_by_source"] = losses
        e["val_tokens_by_source"] = {s: 1000 * (i + 1) for i, s in enumerate(losses)}
        Path(path).write_text(json.dumps(e))


def test_report_tabulates_each_sources_loss_and_its_difference_from_the_baseline(tmp_path):
    summaries, evals = write_study(tmp_path, SUITE)
    _with_sources(evals, BY_SOURCE)
    build_report(summaries, evals, "baseline", str(tmp_path / "report"), 0.3)
    md = (tmp_path / "report" / "summary.md").read_text()
    assert "## Validation loss by source" in md and "Tokens scored: childes 1,000, wiki 2,000." in md
    rows = table_rows(md, "| run | childes | wiki |")
    assert rows["baseline"] == ["3.1000", "4.2000"]  # the mean over seeds, no difference
    # guided - baseline paired by seed: childes (-0.1, -0.2), wiki (+0.1, +0.1)
    assert rows["guided"] == ["2.9500 (-0.1500)", "4.3000 (+0.1000)"]


@pytest.mark.parametrize("sources", [1, 0])
def test_one_source_is_said_and_none_is_left_out(tmp_path, sources):
    summaries, evals = write_study(tmp_path, SUITE)
    if sources:
        _with_sources(evals, {k: {"synthetic": v["childes"]} for k, v in BY_SOURCE.items()})
    build_report(summaries, evals, "baseline", str(tmp_path / "report"), 0.3)
    md = (tmp_path / "report" / "summary.md").read_text()
    one = "## Validation loss by source\n\nThe validation set has one source (`synthetic`).\n"
    assert (one in md) == bool(sources) and ("by source" in md) == bool(sources)
