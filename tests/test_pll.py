"""Pseudo-log-likelihood of a masked LM: against a direct per-token loop, and against the
official BabyLM 2025 pipeline's own `mlm` backend (its code in ../shared/reference), run on
the same saved model, tokenizer and BLiMP pairs: its scores captured in-process, and its
command line run end to end for the per-pair choices."""

import json
import subprocess
import sys
from argparse import Namespace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from sdce import config as cfg
from sdce.data.tokenizer import load, with_mask_token
from sdce.evaluation.minimal_pairs import evaluate_minimal_pairs, load_minimal_pairs, score_minimal_pairs
from sdce.evaluation.pll import pseudo_loglikelihoods
from sdce.model import build_model

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
OFFICIAL = SHARED / "reference" / "babylm-evaluation-pipeline-2025"
BLIMP = SHARED / "data" / "blimp"
TEXTS = ["the cat sat .", "a dog ran to the park and sat", "x", "the the the the the"]


@pytest.fixture(scope="module")
def saved(tiny_data, tmp_path_factory):
    """A tiny ModernBERT (weights spread so that tokens differ clearly) saved with its
    tokenizer, as a masked-diffusion run saves its model."""
    tok = with_mask_token(load(tiny_data / "tokenizer"))
    spec = cfg.validate({"family": "modernbert", "n_layer": 2, "n_embd": 32, "n_head": 2}, "model")
    model = build_model(spec, tok, 64, seed=3).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    out = tmp_path_factory.mktemp("mlm") / "model"
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return model, tok, out


def per_token_loop(model, tok, text):
    enc = tok(text, return_offsets_mapping=True)
    ids = enc["input_ids"]
    total = 0.0
    # every token but the special ones (the BOS of sdce's tokenizers has an empty span)
    for i in (i for i, (_, end) in enumerate(enc["offset_mapping"]) if end > 0):
        x = torch.tensor([ids[:i] + [tok.mask_token_id] + ids[i + 1 :]])
        with torch.no_grad():
            total += F.log_softmax(model(input_ids=x).logits[0, i].double(), -1)[ids[i]].item()
    return total


def test_pll_is_the_per_token_loop_at_any_batch_size(saved):
    model, tok, _ = saved
    want = [per_token_loop(model, tok, t) for t in TEXTS]
    for batch_size in (1, 3, 64):  # padded copies of different lengths share a batch
        assert pseudo_loglikelihoods(model, tok, TEXTS, batch_size=batch_size) == pytest.approx(
            want, abs=1e-4
        )
    assert len({round(w, 3) for w in want}) == len(want)  # the scores are not all alike


def test_pll_needs_a_mask_token(tiny_data, saved):
    model, _, _ = saved
    with pytest.raises(ValueError, match="needs a tokenizer with a mask token"):
        pseudo_loglikelihoods(model, load(tiny_data / "tokenizer"), TEXTS)


def test_minimal_pairs_of_a_masked_lm_are_scored_by_pll(saved):
    model, tok, _ = saved
    rec = {
        "sentence_good": TEXTS[0],
        "sentence_bad": TEXTS[1],
        "UID": "u",
        "field": "f",
        "linguistics_term": "t",
    }
    (scored,) = score_minimal_pairs(model, tok, [rec])
    assert scored["logp_good"] == pytest.approx(per_token_loop(model, tok, TEXTS[0]), abs=1e-4)
    assert scored["logp_bad"] == pytest.approx(per_token_loop(model, tok, TEXTS[1]), abs=1e-4)


def _blimp_subset(folder: Path, n: int = 6) -> list[dict]:
    folder.mkdir()
    rows = []
    for name in ("adjunct_island.jsonl", "anaphor_gender_agreement.jsonl"):
        lines = (BLIMP / name).read_text().splitlines()[:n]
        (folder / name).write_text("\n".join(lines) + "\n")
        rows += [json.loads(line) for line in lines]
    return rows


@pytest.fixture
def official(monkeypatch):
    if not (OFFICIAL / "evaluation_pipeline").is_dir() or not BLIMP.is_dir():
        pytest.skip("../shared/reference (the official BabyLM pipeline) or BLiMP is absent")
    monkeypatch.syspath_prepend(str(OFFICIAL))
    from evaluation_pipeline.sentence_zero_shot import compute_results, dataset

    return compute_results, dataset


def test_pll_equals_the_official_mlm_backend_scores(saved, official, tmp_path, monkeypatch):
    compute_results, dataset = official
    model, tok, out = saved
    rows = _blimp_subset(tmp_path / "blimp")
    captured = []  # the official per-sentence sums, [good, bad] per pair, before it ranks them

    def capture(args, stats, all_log_probs, *rest):
        captured.extend(torch.stack(all_log_probs[1.0], dim=1).tolist())

    monkeypatch.setattr(compute_results, "rank_and_evaluate", capture)
    args = Namespace(
        data_path=tmp_path / "blimp", task="blimp", model_path_or_name=str(out), backend="mlm",
        revision_name=None, images_path=None, image_split=None, image_template=None,
        full_sentence_scores=False, batch_size=4, non_causal_batch_size=5, save_predictions=False,
    )  # fmt: skip
    loader = dataset.get_dataloader(args)
    compute_results.compute_results(args, model, loader, [1.0])
    order = [
        json.loads(x)
        for f in sorted((tmp_path / "blimp").glob("*.jsonl"))
        for x in f.read_text().splitlines()
    ]
    assert len(captured) == len(rows) == len(order)
    ours = score_minimal_pairs(model, tok, order, batch_size=7)
    for theirs, mine in zip(captured, ours, strict=True):
        assert theirs == pytest.approx([mine["logp_good"], mine["logp_bad"]], abs=1e-3)


def test_official_mlm_command_line_makes_our_choices(saved, official, tmp_path):
    model, tok, out = saved
    _blimp_subset(tmp_path / "blimp")
    proc = subprocess.run(
        [sys.executable, "-m", "evaluation_pipeline.sentence_zero_shot.run",
         "--data_path", tmp_path / "blimp", "--task", "blimp", "--model_path_or_name", out,
         "--backend", "mlm", "--output_dir", tmp_path / "res",
         "--batch_size", "4", "--save_predictions"],
        cwd=OFFICIAL, capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    (pred_file,) = (tmp_path / "res").rglob("predictions.json")
    predictions = json.loads(pred_file.read_text())
    records = load_minimal_pairs(tmp_path / "blimp")
    scored = score_minimal_pairs(model, tok, records)
    for uid in {r["UID"] for r in records}:
        mine = [r for r in scored if r["UID"] == uid]
        theirs = [p["pred"] for p in predictions[uid]["predictions"]]
        assert theirs == [r["sentence_good"] if r["credit"] >= 0.5 else r["sentence_bad"] for r in mine]
    report = next((tmp_path / "res").rglob("best_temperature_report.txt")).read_text()
    average = float(report.split("### AVERAGE ACCURACY")[1].split()[0])
    assert average == pytest.approx(
        100 * evaluate_minimal_pairs(model, tok, records)["macro_accuracy"], abs=0.01
    )
