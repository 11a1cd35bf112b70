"""Evaluation of trained students: milestones, generated minimal pairs, real BLiMP."""

import json

import pytest
from tiny_training import tiny_job

from sdce import config as cfg
from sdce.data.synthetic import generate_minimal_pairs, write_minimal_pairs
from sdce.evaluation.run import evaluate_milestones, evaluate_model, revision_name
from sdce.train import train

EVAL = cfg.validate({"eval_tokens": 1024, "batch_size": 8}, "properties/evaluation")


@pytest.fixture(scope="module")
def trained(tiny_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    spec = cfg.validate(
        {
            "model": {"n_layer": 1, "n_embd": 32, "n_head": 2},
            "training": {
                "steps": 6,
                "batch_size": 4,
                "block_size": 64,
                "eval_interval": 3,
                "eval_tokens": 1024,
                "log_interval": 2,
                "checkpoint_interval": 3,
                "warmup_steps": 1,
                "milestones": [150, 300, 450],
            },
            "guidance": {"objective": "ce"},
        },
        "run",
    )
    train(tiny_job(tiny_data, out, spec, name="m", seed=1))
    pairs = tmp_path_factory.mktemp("pairs")
    write_minimal_pairs(pairs, generate_minimal_pairs(5, seed=1))
    return out, pairs


def test_milestones_are_kept_and_evaluated_in_order(trained, tiny_data):
    out, pairs = trained
    kept = sorted(p.name for p in (out / "milestones").iterdir())
    assert kept == ["words_150", "words_300", "words_450"]
    states = [json.loads((out / "milestones" / k / "state.json").read_text()) for k in kept]
    assert all(s["words"] >= s["milestone"] for s in states)
    results = evaluate_milestones(out, str(tiny_data / "validation.bin"), 64, EVAL, {"synthetic": str(pairs)})
    assert [r["milestone"] for r in results] == [150, 300, 450]
    assert all(0 <= r["sdce_synthetic_accuracy"] <= 1 and r["perplexity"] > 1 for r in results)


def test_final_model_with_generated_and_real_blimp_pairs(trained, tiny_data, shared_dir, tmp_path):
    out, pairs = trained
    blimp = tmp_path / "blimp"
    blimp.mkdir()
    for name in ("anaphor_number_agreement", "determiner_noun_agreement_1"):
        lines = (shared_dir / "data" / "blimp" / f"{name}.jsonl").read_text().splitlines()[:10]
        (blimp / f"{name}.jsonl").write_text("\n".join(lines) + "\n")
    spec = {**EVAL, "blimp_path": str(blimp)}
    r = evaluate_model(out / "model", str(tiny_data / "validation.bin"), 64, spec, {"synthetic": str(pairs)})
    assert set(r["minimal_pairs"]) == {"synthetic", "blimp"}
    assert r["minimal_pairs"]["blimp"]["n_pairs"] == 20
    assert set(r["minimal_pairs"]["synthetic"]["per_paradigm"]) == set(generate_minimal_pairs(1, 0))


def test_final_model_with_the_babylm_suite(trained, tiny_data, shared_dir, tmp_path):
    """evaluation.babylm_suite_path: the suite's leaderboard scores land in the evaluation JSON
    as babylm2025_<key> (reading as two), which is what the report's leaderboard table reads."""
    import pandas as pd

    from sdce.evaluation.babylm_suite import leaderboard_report

    out, _ = trained
    source = shared_dir / "data" / "babylm-eval-2025"
    if not source.is_dir():
        pytest.skip("shared BabyLM 2025 evaluation data not available")
    root = tmp_path / "suite"
    (root / "blimp_filtered").mkdir(parents=True)
    (root / "reading").mkdir()
    lines = (source / "blimp_filtered" / "wh_island.jsonl").read_text().splitlines()[:10]
    (root / "blimp_filtered" / "wh_island.jsonl").write_text("\n".join(lines) + "\n")
    (root / "reading" / "reading_data.csv").symlink_to(source / "reading" / "reading_data.csv")
    spec = {**EVAL, "babylm_suite_path": str(root), "max_pairs_per_paradigm": 120}
    r = evaluate_model(out / "model", str(tiny_data / "validation.bin"), 64, spec, {})
    assert list(r["babylm"]["tasks"]) == ["blimp", "reading"]
    assert r["babylm"]["tasks"]["reading"]["n_items"] == 120
    keys = ("babylm2025_blimp", "babylm2025_reading_eye_tracking", "babylm2025_reading_self_paced")
    assert all(0.0 <= r[k] <= 1.0 for k in keys)
    json.dumps(r)
    rows, text = leaderboard_report(pd.DataFrame([{"run": "m", "seed": 1, **{k: r[k] for k in keys}}]))
    assert rows.loc[0, "Reading (Self-Paced Reading Time)"] == pytest.approx(100 * r[keys[2]])
    assert "| m | 1 | " in text and "Not evaluated: BLiMP Supplement, EWoK, Entity Tracking, WUGs" in text


def test_milestones_must_increase():
    with pytest.raises(cfg.ConfigError, match="training.milestones: \\[5, 3\\] is not strictly increasing"):
        cfg.validate({"milestones": [5, 3]}, "training")
    assert cfg.milestone_words({"first": 1_000_000, "last": 1_000_000_000})[:3] == [
        1_000_000,
        2_000_000,
        3_000_000,
    ]
    assert cfg.milestone_words({"first": 1_000_000, "last": 1_000_000_000})[9:12] == [
        10_000_000,
        20_000_000,
        30_000_000,
    ]


def test_milestones_get_the_fast_suite_and_the_official_revision_names(
    trained, tiny_data, shared_dir, tmp_path
):
    """evaluation.babylm_fast_path: the milestones are scored on the fast suite (here a
    blimp_fast folder only), the final model on the full one (here BLiMP and reading); each
    milestone carries the official pipeline's revision name for its checkpoint."""
    out, _ = trained
    source = shared_dir / "data" / "babylm-eval-2025"
    if not source.is_dir():
        pytest.skip("shared BabyLM 2025 evaluation data not available")
    lines = (source / "blimp_filtered" / "wh_island.jsonl").read_text().splitlines()
    full, fast = tmp_path / "full_eval", tmp_path / "fast_eval"
    for root, folder, n in ((full, "blimp_filtered", 10), (fast, "blimp_fast", 4)):
        (root / folder).mkdir(parents=True)
        (root / folder / "wh_island.jsonl").write_text("\n".join(lines[:n]) + "\n")
    (full / "reading").mkdir()
    (full / "reading" / "reading_data.csv").symlink_to(source / "reading" / "reading_data.csv")
    spec = {
        **EVAL,
        "babylm_suite_path": str(full),
        "babylm_fast_path": str(fast),
        "max_pairs_per_paradigm": 50,
    }
    final = evaluate_model(out / "model", str(tiny_data / "validation.bin"), 64, spec, {})
    assert {"babylm2025_blimp", "babylm2025_reading_eye_tracking"} <= set(final)
    milestones = evaluate_milestones(out, str(tiny_data / "validation.bin"), 64, spec, {})
    assert [m["revision"] for m in milestones] == ["words_150", "words_300", "words_450"]
    for m in milestones:
        assert 0.0 <= m["babylm2025_blimp"] <= 1.0 and "babylm2025_reading_eye_tracking" not in m
    assert revision_name(1_000_000) == "chck_1M" and revision_name(20_000_000) == "chck_20M"
    assert revision_name(1_500_000) == "words_1500000"


def test_the_evaluate_command_scores_in_the_runs_loss_chunks(trained, tiny_data, tmp_path, capsys):
    """`sdce evaluate --chunk-tokens N` (the evaluate rules pass the run's
    training.loss_chunk_tokens): the same validation loss over 7-token chunks, the default
    chunk and all at once (0), to float precision; the loop's own last validation agrees."""
    from sdce.cli import main
    from sdce.io import read_json

    out, _ = trained
    losses = {}
    for chunk in ("7", "0", None):
        args = ["evaluate", "--params", json.dumps(EVAL), "--model", str(out / "model")]
        args += ["--val-shard", str(tiny_data / "validation.bin"), "--block-size", "64"]
        args += ["--name", "m", "--seed", "1", "--out", str(tmp_path / f"{chunk}.json")]
        assert main(args + (["--chunk-tokens", chunk] if chunk else [])) in (0, None)
        losses[chunk] = read_json(tmp_path / f"{chunk}.json")["val_loss"]
    assert losses["7"] == pytest.approx(losses[None], rel=1e-6)
    assert losses["0"] == pytest.approx(losses[None], rel=1e-6)
    last = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["val_loss"] for r in last if "val_loss" in r][-1] == pytest.approx(losses[None], rel=1e-5)
