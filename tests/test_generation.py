"""`sdce generate` on saved causal and masked-diffusion students: the kind's sampler, the
same text at the same seed, the flags over the config's defaults, and a clear error."""

import json

import pytest

from sdce import config as cfg
from sdce.data.tokenizer import load, with_mask_token
from sdce.generation import generate
from sdce.model import build_model


@pytest.fixture(scope="module", params=["gpt2", "modernbert"])
def saved(request, tiny_data, tmp_path_factory):
    tok = load(tiny_data / "tokenizer")
    if request.param == "modernbert":
        tok = with_mask_token(tok)
    spec = cfg.validate({"family": request.param, "n_layer": 1, "n_embd": 32, "n_head": 2}, "model")
    model = build_model(spec, tok, 64, seed=0)
    out = tmp_path_factory.mktemp(request.param) / "model"
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return request.param, model, tok, out


def test_same_seed_same_text_and_the_kinds_sampler(saved, run_sdce, tmp_path):
    family, _, _, out = saved
    args = ["generate", "--model", out, "--prompt", "The old", "--prompt", "", "--max-new-tokens", "8"]
    a = run_sdce(*args, "--seed", "3", "--out", tmp_path / "a.jsonl")
    run_sdce(*args, "--seed", "3", "--out", tmp_path / "b.jsonl")
    rows = [[json.loads(x) for x in (tmp_path / f"{n}.jsonl").read_text().splitlines()] for n in "ab"]
    spec = cfg.validate({"max_new_tokens": 8, "seed": 4, "temperature": 2.0}, "properties/generation")
    rows.append(generate(saved[1], saved[2], ["The old", ""], spec))
    assert rows[0] == rows[1] and [r["prompt"] for r in rows[0]] == ["The old", ""]
    assert [r["completion"] for r in rows[0]] != [r["completion"] for r in rows[2]]
    assert {r["sampler"] for r in rows[0]} == {"causal" if family == "gpt2" else "bidirectional"}
    assert all(1 <= r["completion_tokens"] <= 8 for r in rows[0])
    assert "'The old' ->" in a.stdout


def test_a_prompt_is_sampled_independently_of_the_others(saved):
    _, model, tok, _ = saved
    spec = cfg.validate({"max_new_tokens": 8, "temperature": 1.0}, "properties/generation")
    alone = generate(model, tok, ["The old"], spec)[0]
    together = generate(model, tok, ["The old", "Is a letter"], spec)[0]
    assert alone == together


def test_greedy_masked_diffusion_fills_every_mask(saved):
    family, model, tok, _ = saved
    if family != "modernbert":
        pytest.skip("masked diffusion only")
    spec = cfg.validate(
        {"max_new_tokens": 10, "temperature": 0.0, "diffusion": {"steps": 4, "block_length": 4}},
        "properties/generation",
    )
    (r,) = generate(model, tok, ["The"], spec)
    assert tok.mask_token not in r["completion"] and r["completion_tokens"] <= 12


def test_bad_input_names_the_cause(run_sdce, tmp_path):
    proc = run_sdce("generate", "--model", tmp_path / "nope", check=False)
    assert proc.returncode == 2 and "--model is not a saved model folder" in proc.stderr
    proc = run_sdce("generate", "--model", tmp_path, "--top-p", "0", check=False)
    assert proc.returncode == 2 and "top_p" in proc.stderr
