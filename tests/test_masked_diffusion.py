"""The masked_diffusion objective in the registry: its batch, its loss through the one loss
signature, the mask token, the bidirectional student, the ELBO validation measure, resume,
and the bad input it refuses before training."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from test_train import do_train, losses_of, records

from sdce import config as cfg
from sdce import losses, objectives
from sdce.data.tokenizer import MASK, TokenizerError, load, with_mask_token
from sdce.evaluation.validation import evaluate_elbo
from sdce.model import build_model, kind_of

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
GPT2 = SHARED / "data" / "tokenizers" / "gpt2"


def mdm_spec(**training):
    base = {
        "steps": 12,
        "batch_size": 4,
        "block_size": 32,
        "eval_interval": 4,
        "eval_tokens": 1024,
        "log_interval": 2,
        "checkpoint_interval": 4,
        "warmup_steps": 2,
    }
    base.update(training)
    return cfg.validate(
        {
            "model": {"family": "modernbert", "n_layer": 1, "n_embd": 32, "n_head": 2, "dropout": 0.1},
            "training": base,
            "guidance": {"objective": "masked_diffusion", "diffusion": {"elbo_draws": 2}},
        },
        "run",
    )


def guidance(**diffusion):
    return cfg.validate({"objective": "masked_diffusion", "diffusion": diffusion}, "guidance")


class _Tok:
    mask_token_id = 9


def test_batch_masks_at_p_and_scores_only_masked_tokens():
    g = guidance(random_length=0.0)
    x = torch.randint(0, 9, (64, 200), generator=torch.Generator().manual_seed(0))
    a = objectives.diffusion_batch(x, None, torch.Generator().manual_seed(5), g, _Tok())
    b = objectives.diffusion_batch(x, None, torch.Generator().manual_seed(5), g, _Tok())
    assert torch.equal(a.inputs["input_ids"], b.inputs["input_ids"])  # a function of the generator
    noisy, targets, p = a.inputs["input_ids"], a.targets, a.extras["p"]
    masked = noisy == 9
    assert torch.equal(masked, targets != losses.IGNORE)
    assert torch.equal(targets[masked], x[masked]) and torch.equal(noisy[~masked], x[~masked])
    assert (p[:, :1] == p).all() and (p >= 1e-3).all()  # one p per sequence, at least eps
    rate, expected = masked.float().mean(1), p[:, 0]
    assert (rate - expected).abs().max() < 4 * (expected * (1 - expected) / 200).sqrt().max() + 1e-3


def test_random_length_crops_the_whole_batch():
    g = guidance(random_length=1.0)
    x = torch.randint(0, 9, (3, 50), generator=torch.Generator().manual_seed(0))
    batches = [
        objectives.diffusion_batch(x, None, torch.Generator().manual_seed(s), g, _Tok()) for s in range(20)
    ]
    lengths = {b.targets.shape[1] for b in batches}
    assert len(lengths) > 3 and max(lengths) <= 50


def test_loss_through_the_registry_equals_the_formula():
    """sum over masked tokens of CE / p, over B * L: a direct loop as the reference."""
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 5, 7, generator=gen, dtype=torch.float64)
    clean = torch.randint(0, 6, (2, 5), generator=gen)
    masked = torch.tensor([[1, 0, 1, 0, 0], [0, 0, 0, 1, 1]], dtype=torch.bool)
    p = torch.tensor([[0.3] * 5, [0.8] * 5], dtype=torch.float64)
    targets = torch.where(masked, clean, torch.full_like(clean, losses.IGNORE))
    batch = objectives.Batch({}, targets, {"p": p})
    out = objectives.terms(
        objectives.get("masked_diffusion"), logits, batch, None, 0.0, {"tail_policy": "uniform"}
    )
    ref = 0.0
    for b in range(2):
        for i in range(5):
            if masked[b, i]:
                ref += -torch.log_softmax(logits[b, i], -1)[clean[b, i]].item() / p[b, i].item()
    assert out["loss"].item() == pytest.approx(ref / 10, rel=1e-12)
    assert out["mask_rate"].item() == pytest.approx(0.4)


def test_mask_token_is_added_to_trained_and_pretrained_tokenizers(tiny_data, tmp_path):
    trained = load(tiny_data / "tokenizer")
    n = len(trained)
    tok = with_mask_token(trained)
    assert tok.mask_token == MASK and tok.mask_token_id == n and len(tok) == n + 1
    assert with_mask_token(tok).mask_token_id == n  # idempotent
    assert MASK not in tok.decode(tok("a b c")["input_ids"])
    if not (GPT2 / "vocab.json").exists():
        pytest.skip("../shared/data/tokenizers/gpt2 is absent")
    from sdce.teachers.vocab import load_tokenizer

    assert with_mask_token(load_tokenizer(GPT2)).mask_token_id == 50257
    tok.save_pretrained(tmp_path / "t")  # the mask token survives save_pretrained / from_pretrained
    assert load(tmp_path / "t").mask_token_id == n


def test_a_tokenizer_that_cannot_take_a_mask_token(tiny_data, tmp_path):
    tok = load(tiny_data / "tokenizer")
    tok.add_tokens([MASK])  # an ordinary token: text could produce it
    with pytest.raises(
        TokenizerError, match="cannot take a mask token: '<\\|mask\\|>' is already an ordinary"
    ):
        with_mask_token(tok)


def test_bidirectional_student_is_saved_and_loaded_as_a_masked_lm(tiny_data, tmp_path):
    from transformers import AutoModelForMaskedLM

    tok = with_mask_token(load(tiny_data / "tokenizer"))
    spec = mdm_spec()["model"]
    model = build_model(spec, tok, 32, seed=1)
    assert kind_of(model) == "bidirectional" and model.config.mask_token_id == tok.mask_token_id
    model.save_pretrained(tmp_path / "m")
    again = AutoModelForMaskedLM.from_pretrained(tmp_path / "m")
    x = torch.randint(0, 50, (1, 12))
    # bidirectional: changing the last token changes the first position's logits
    y = x.clone()
    y[0, -1] = (y[0, -1] + 1) % 50
    with torch.no_grad():
        assert not torch.allclose(again(input_ids=x).logits[0, 0], again(input_ids=y).logits[0, 0])


def test_elbo_measure_is_seeded_per_window(tiny_data):
    from sdce.data.shards import load_shard

    tok = with_mask_token(load(tiny_data / "tokenizer"))
    model = build_model(mdm_spec()["model"], tok, 32, seed=1).eval()
    data, _ = load_shard(tiny_data / "validation.bin")
    a, n = evaluate_elbo(model, data, 32, 640, 4, n_draws=3)
    b, _ = evaluate_elbo(model, data, 32, 640, 7, n_draws=3)  # other batches, same draws
    c, _ = evaluate_elbo(model, data, 32, 640, 4, n_draws=2)
    assert n == 640 and a == pytest.approx(b, rel=1e-6) and a != c
    # an untrained predictor is near uniform: the bound is near log V
    assert abs(a - torch.log(torch.tensor(float(len(tok)))).item()) < 0.5


def test_masked_diffusion_trains_resumes_and_its_elbo_falls(tmp_path, tiny_data):
    spec = mdm_spec(steps=16, learning_rate=0.003)
    full = do_train(tiny_data, tmp_path / "full", spec)
    assert full["objective"] == "masked_diffusion" and full["val_measure"] == "elbo"
    evals = [r["val_loss"] for r in records(tmp_path / "full") if r["kind"] == "eval"]
    assert evals[-1] < evals[0] - 0.2  # the ELBO falls during training
    train_recs = [r for r in records(tmp_path / "full") if r["kind"] == "train"]
    assert all(0.0 < r["mask_rate"] < 1.0 for r in train_recs)
    assert do_train(tiny_data, tmp_path / "resumed", spec, stop_after=8) == {"stopped_at": 8}
    do_train(tiny_data, tmp_path / "resumed", spec)
    assert losses_of(records(tmp_path / "resumed")) == losses_of(records(tmp_path / "full"))
    saved = json.loads((tmp_path / "full" / "model" / "tokenizer_config.json").read_text())
    assert saved.get("mask_token") == MASK  # the run's tokenizer is saved with its mask token


@pytest.mark.parametrize(
    ("model", "objective", "message"),
    [
        (
            "modernbert",
            "ce",
            "objective 'ce' trains a causal model, model.family 'modernbert' is bidirectional",
        ),
        (
            "gpt2",
            "masked_diffusion",
            "objective 'masked_diffusion' trains a bidirectional model, model.family 'gpt2' is causal",
        ),
    ],
)
def test_model_kind_and_objective_must_agree(tmp_path, model, objective, message):
    config = {
        "experiment": "x",
        "corpus": {"source": "synthetic"},
        "runs": {"r": {"model": {"family": model}, "guidance": {"objective": objective}}},
        "baseline": "r",
    }
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = subprocess.run(
        [str(Path(sys.executable).with_name("sdce")), "check-config", str(path)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0
    assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
