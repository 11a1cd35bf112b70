"""The study report shows the BabyLM 2025 suite in the leaderboard's layout."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from sdce.evaluation.babylm_suite import LEADERBOARD_COLUMNS
from sdce.report import build_report

# per run: per seed, the suite's leaderboard scores as run.py writes them (babylm2025_<key>, fractions)
SUITE = {
    "baseline": {
        1: {
            "blimp": 0.60,
            "blimp_supplement": 0.50,
            "ewok": 0.48,
            "reading_eye_tracking": 0.010,
            "reading_self_paced": 0.002,
            "entity_tracking": 0.20,
            "wug_adj": 0.10,
        },
        2: {
            "blimp": 0.62,
            "blimp_supplement": 0.54,
            "ewok": 0.50,
            "reading_eye_tracking": 0.014,
            "reading_self_paced": 0.004,
            "entity_tracking": 0.22,
            "wug_adj": 0.30,
        },
    },
    "guided": {
        1: {
            "blimp": 0.70,
            "blimp_supplement": 0.60,
            "ewok": 0.52,
            "reading_eye_tracking": 0.020,
            "reading_self_paced": 0.006,
            "entity_tracking": 0.25,
            "wug_adj": None,  # undefined Spearman: no macro average for this replicate
        },
        2: {
            "blimp": 0.74,
            "blimp_supplement": 0.62,
            "ewok": 0.54,
            "reading_eye_tracking": 0.030,
            "reading_self_paced": 0.010,
            "entity_tracking": 0.27,
            "wug_adj": 0.40,
        },
    },
}


def write_study(root: Path, suite: dict) -> tuple[list[str], list[str]]:
    summaries, evals = [], []
    for run, seeds in suite.items():
        for seed, scores in seeds.items():
            folder = root / "runs" / run / f"seed{seed}"
            folder.mkdir(parents=True)
            final = 3.0 if run == "baseline" else 2.9
            (folder / "summary.json").write_text(
                json.dumps(
                    {
                        "run": run,
                        "seed": seed,
                        "objective": "ce" if run == "baseline" else "kl",
                        "schedule": "",
                        "steps": 100,
                        "final_val_loss": final,
                        "final_val_ppl": 2.718**final,
                    }
                )
            )
            records = [
                {
                    "kind": "train",
                    "step": s,
                    "words": s,
                    "ce": 4 - s / 100,
                    "tokens_per_s": 1e3,
                    "weight": 1,
                    "train_seconds": s * (1.0 if run == "baseline" else 2.0),
                }  # fmt: skip
                for s in (10, 50, 100)
            ] + [{"kind": "eval", "step": s, "val_loss": v, "words": s} for s, v in ((50, 3.5), (100, final))]
            (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
            summaries.append(str(folder / "summary.json"))
            evaluation = {
                "run": run,
                "seed": seed,
                "val_loss": final,
                "perplexity": 2.718**final,
                "sdce_synthetic_accuracy": 0.9,
                "babylm": {"leaderboard": scores, "max_items_per_task": None},
                **{f"babylm2025_{k}": v for k, v in scores.items()},
            }
            path = root / "eval" / run / f"seed{seed}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(evaluation))
            evals.append(str(path))
    return summaries, evals


def table_rows(md: str, header_start: str) -> dict[str, list[str]]:
    lines = md.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    rows = {}
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0]] = cells[1:]
    return rows


def test_report_shows_the_suite_in_the_leaderboard_layout(tmp_path):
    summaries, evals = write_study(tmp_path, SUITE)
    out = tmp_path / "report"
    build_report(summaries, evals, "baseline", str(out), 0.3)
    md = (out / "summary.md").read_text()
    assert "## BabyLM 2025 zero-shot suite (leaderboard layout)" in md
    titles = [title for _, title in LEADERBOARD_COLUMNS]
    header = "| run | replicates | " + " | ".join(titles) + " | Macroaverage |"
    assert header in md
    rows = table_rows(md, header)
    assert set(rows) == {"baseline", "guided"}
    base, guided = rows["baseline"], rows["guided"]
    assert base[0] == "2"
    # x 100, mean ± sample std across the two seeds
    assert base[1:8] == [
        "61.00 ± 1.41",  # BLiMP
        "52.00 ± 2.83",  # BLiMP Supplement
        "49.00 ± 1.41",  # EWoK
        "1.20 ± 0.28",  # Reading (Eye Tracking)
        "0.30 ± 0.14",  # Reading (Self-Paced)
        "21.00 ± 1.41",  # Entity Tracking
        "20.00 ± 14.14",  # WUGs
    ]
    macro = [
        (60 + 50 + 48 + 1.0 + 0.2 + 20 + 10) / 7,
        (62 + 54 + 50 + 1.4 + 0.4 + 22 + 30) / 7,
    ]
    mean = sum(macro) / 2
    std = abs(macro[0] - macro[1]) / 2**0.5
    assert base[8] == f"{mean:.2f} ± {std:.2f}"
    # a replicate without a WUG score: its column and macro average come from the other seed
    assert guided[7] == "40.00 (1/2)"
    assert guided[8] == f"{(74 + 62 + 54 + 3.0 + 1.0 + 27 + 40) / 7:.2f} (1/2)"
    assert guided[1] == "72.00 ± 2.83"

    with open(out / "babylm_leaderboard.csv") as f:
        per_replicate = list(csv.DictReader(f))
    assert [(r["run"], r["seed"]) for r in per_replicate] == [
        ("baseline", "1"),
        ("baseline", "2"),
        ("guided", "1"),
        ("guided", "2"),
    ]
    assert float(per_replicate[0]["Macroaverage"]) == pytest.approx(macro[0], rel=1e-5)  # %.6g
    assert per_replicate[2]["WUGs"] == "" and per_replicate[2]["Macroaverage"] == ""
    assert float(per_replicate[3]["Reading (Self-Paced Reading Time)"]) == pytest.approx(1.0)


def test_report_with_part_of_the_suite_and_without_it(tmp_path):
    part = {
        run: {seed: {"blimp": s["blimp"], "ewok": s["ewok"]} for seed, s in seeds.items()}
        for run, seeds in SUITE.items()
    }
    summaries, evals = write_study(tmp_path / "part", part)
    build_report(summaries, evals, "baseline", str(tmp_path / "part" / "report"), 0.3)
    md = (tmp_path / "part" / "report" / "summary.md").read_text()
    rows = table_rows(md, "| run | replicates | BLiMP | EWoK | Macroaverage |")
    assert rows["baseline"] == ["2", "61.00 ± 1.41", "49.00 ± 1.41", "55.00 ± 1.41"]
    assert "Not evaluated: BLiMP Supplement, Reading (Eye Tracking)" in md

    none = {run: {seed: {} for seed in seeds} for run, seeds in SUITE.items()}
    summaries, evals = write_study(tmp_path / "none", none)
    build_report(summaries, evals, "baseline", str(tmp_path / "none" / "report"), 0.3)
    assert "leaderboard layout" not in (tmp_path / "none" / "report" / "summary.md").read_text()
    assert not (tmp_path / "none" / "report" / "babylm_leaderboard.csv").exists()


def test_wall_seconds_to_the_baseline_are_read_from_the_training_clock(tmp_path):
    """The guided run reaches the baseline's final loss (3.0) at step 50 + 50 * 0.5 / 0.6 of its
    curve (3.5 at 50, 2.9 at 100); its clock runs at 2 s per step against the baseline's 1 s, so
    it spends 2 * 91.67 s against the baseline's 100 s for its whole run."""
    summaries, evals = write_study(tmp_path, SUITE)
    out = tmp_path / "report"
    build_report(summaries, evals, "baseline", str(out), 0.3)
    rows = list(csv.DictReader(open(out / "summary.csv")))
    guided = [r for r in rows if r["run"] == "guided"]
    assert guided and all(
        float(r["seconds_to_baseline"]) == pytest.approx(2 * (50 + 50 * 0.5 / 0.6) / 100, rel=1e-4)
        for r in guided
    )
    assert all(float(r["train_seconds"]) == 200.0 for r in guided)
    md = (out / "summary.md").read_text()
    assert "wall to baseline" in md and "1.83" in md
