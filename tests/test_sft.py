"""Masked-diffusion SFT (LLaDA GUIDELINES.md, "SFT") on a prompt/response corpus: the chat
format and its prompt lengths, one example per sequence padded with eos, the prompt never
masked, the loss normalised by the answer length (against `sdce.diffusion.sft_loss`), the
corpus columns and the config checks, and a tiny SFT study through the real DAG."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from sdce import config as cfg
from sdce import diffusion, losses, objectives
from sdce.data.batches import DocumentSampler, windows
from sdce.data.chat import MARKERS, format_example, pad_after_eos, prompt_lengths
from sdce.data.corpus import CorpusError, load_corpus
from sdce.data.synthetic import generate_documents
from sdce.data.tokenizer import build_tokenizer, with_mask_token

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))


def examples(n: int, seed: int = 0) -> list[dict]:
    """Prompt/response pairs from the embedded grammar: a document's first 3 words, the next 12."""
    out = []
    for text in generate_documents(n, seed=seed):
        words = text.split()
        out.append({"question": " ".join(words[:3]), "answer": " ".join(words[3:15])})
    return out


@pytest.fixture(scope="module")
def chat_tokenizer(tmp_path_factory):
    root = tmp_path_factory.mktemp("chat")
    texts = [format_example(e["question"], e["answer"]) for e in examples(300)]
    spec = cfg.validate({"kind": "bpe", "vocab_size": 300, "special_tokens": list(MARKERS)}, "tokenizer")
    return with_mask_token(build_tokenizer(spec, texts, root / "tok"))


def test_prompt_length_is_llada_prompt(chat_tokenizer):
    """The prompt runs through `<start_id>assistant<end_id>` and its newline, as LLaDA's
    prompt_lengths count it; markers are one id each."""
    tok = chat_tokenizer
    for e in examples(20, seed=5):
        text = format_example(e["question"], e["answer"])
        head = text[: text.index("assistant<end_id>\n") + len("assistant<end_id>\n")]
        ids = tok(text, add_special_tokens=False)["input_ids"]
        n_head = len(tok(head, add_special_tokens=False)["input_ids"])
        assert ids[:n_head] == tok(head, add_special_tokens=False)["input_ids"]
        x = torch.tensor([ids + [tok.eos_token_id] * 4])
        assert prompt_lengths(x, tok).tolist() == [n_head]
    for m in MARKERS:
        assert len(tok(m, add_special_tokens=False)["input_ids"]) == 1
    # a row cut before its response has no answer: prompt throughout
    cut = tok(format_example("the cat", "sat")[:20], add_special_tokens=False)["input_ids"]
    assert prompt_lengths(torch.tensor([cut]), tok).tolist() == [len(cut)]


def test_rows_are_examples_padded_with_eos(chat_tokenizer):
    eos = chat_tokenizer.eos_token_id
    data = np.array([5, 6, eos, 7, 8, 9, eos, 10, eos, 11, 12, 13, 14, eos], dtype=np.uint16)
    sampler = DocumentSampler(data, 3, eos)
    assert sampler.starts.tolist() == [0, 3, 7, 9]  # every document start whose window fits
    offsets = sampler.offsets(16, seed=1, step=3)
    assert set(offsets.tolist()) <= {0, 3, 7, 9}
    assert np.array_equal(offsets, DocumentSampler(data, 3, eos).offsets(16, seed=1, step=3))
    x, _ = windows(data, np.array([0, 7]), 3)
    assert pad_after_eos(x, eos).tolist() == [[5, 6, eos], [10, eos, eos]]


def test_sft_batch_never_masks_the_prompt_and_loss_matches_llada(chat_tokenizer):
    tok = chat_tokenizer
    rows = []
    for e in examples(6, seed=2):
        ids = tok(format_example(e["question"], e["answer"]), add_special_tokens=False)["input_ids"]
        rows.append((ids + [tok.eos_token_id] * 48)[:48])
    x = torch.tensor(rows)
    guidance = cfg.validate({"objective": "masked_diffusion_sft"}, "guidance")
    objective = objectives.get("masked_diffusion_sft")
    lengths = prompt_lengths(x, tok)
    seen = torch.zeros_like(x, dtype=torch.bool)
    for seed in range(20):
        batch = objective.batch(x, x, torch.Generator().manual_seed(seed), guidance, tok)
        masked = batch.targets != losses.IGNORE
        prompt = torch.arange(48)[None, :] < lengths[:, None]
        assert not (masked & prompt).any() and torch.equal(batch.extras["prompt_lengths"], lengths)
        assert torch.equal(batch.inputs["input_ids"][masked], torch.full_like(x[masked], tok.mask_token_id))
        seen |= masked
        logits = torch.randn(*x.shape, len(tok), dtype=torch.float64, requires_grad=True)
        ref = diffusion.sft_loss(logits, x, masked, batch.extras["p"].double(), lengths)
        for chunk in (None, 7):
            out = losses.masked_diffusion_sft_loss(logits, batch.targets, chunk_tokens=chunk, **batch.extras)
            torch.testing.assert_close(out["loss"], ref)
    assert seen[~(torch.arange(48)[None, :] < lengths[:, None])].float().mean() > 0.9  # the answer is


def test_sft_validation_scores_each_response_given_its_prompt(chat_tokenizer):
    """answer_elbo, the validation measure of masked_diffusion_sft: one window per example
    (at every document start whose window fits), and the bound covers each response through
    its eos only: the scored tokens are counted here from the examples' own text, so neither
    the prompt nor the eos padding after the example is scored. The same value at any batch
    size (each window's draws are seeded by its offset); the chat markers come from the
    tokenizer, and no tokenizer is a clear error."""
    from sdce.data.batches import validation_examples
    from sdce.evaluation.validation import BOUNDS, score
    from sdce.model import build_model

    tok, block = chat_tokenizer, 40
    docs, heads = [], []
    for e in examples(30, seed=7):
        text = format_example(e["question"], e["answer"])
        head = text[: text.index("assistant<end_id>\n") + len("assistant<end_id>\n")]
        docs.append(tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id])
        heads.append(len(tok(head, add_special_tokens=False)["input_ids"]))
    data = np.array([i for d in docs for i in d], dtype=np.uint16)
    starts = np.cumsum([0] + [len(d) for d in docs[:-1]])
    fits = starts + block + 1 <= len(data)
    assert np.array_equal(validation_examples(data, block, None, tok.eos_token_id), starts[fits])
    answers = sum(max(0, min(len(d), block) - h) for d, h, f in zip(docs, heads, fits, strict=True) if f)
    assert answers < fits.sum() * block / 2  # the prompts and the padding are a large share

    model_spec = cfg.validate(
        {"model": {"family": "modernbert", "n_layer": 1, "n_embd": 32, "n_head": 2},
         "guidance": {"objective": "masked_diffusion_sft"}},
        "run",
    )  # fmt: skip
    model = build_model(model_spec["model"], tok, block, seed=1).eval()
    measure = objectives.validation_spec(model_spec["guidance"])
    assert measure["name"] == "answer_elbo" and "answer_elbo" in BOUNDS
    a = score(measure, model, data, block, None, 4, tokenizer=tok)
    b = score(measure, model, data, block, None, 7, tokenizer=tok)
    assert a["val_tokens"] == b["val_tokens"] == answers
    assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-6)
    # an untrained model is near uniform over the vocabulary on the response
    assert abs(a["val_loss"] - np.log(len(tok))) < 0.5
    three = score(measure, model, data, block, 3 * block, 4, tokenizer=tok)
    assert 0 < three["val_tokens"] < answers  # max_tokens: 3 windows spread over the shard
    with pytest.raises(ValueError, match="needs the model's tokenizer"):
        score(measure, model, data, block, None, 4)


def test_prompt_response_corpus_and_its_errors(tmp_path):
    path = tmp_path / "qa.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in examples(5)))
    spec = cfg.validate(
        {"source": "files", "path": str(path), "prompt_column": "question", "response_column": "answer"},
        "properties/corpus",
    )
    docs = load_corpus(spec)
    first = examples(5)[0]
    assert docs[0]["text"] == format_example(first["question"], first["answer"]) and docs[0]["source"] == "qa"
    with pytest.raises(
        CorpusError, match=r"qa.jsonl:1: record has no 'prompt' field \(corpus.prompt_column\)"
    ):
        load_corpus({**spec, "prompt_column": "prompt"})
    with pytest.raises(CorpusError, match="set together"):
        load_corpus({**spec, "response_column": None})
    (tmp_path / "a.txt").write_text("one line\n")
    with pytest.raises(CorpusError, match="needs json or jsonl"):
        load_corpus({**spec, "path": str(tmp_path / "a.txt")})


def sft_study(tmp_path, **edits) -> Path:
    (tmp_path / "qa.jsonl").write_text("".join(json.dumps(e) + "\n" for e in examples(240, seed=3)))
    study = yaml.safe_load((REPO / "tests" / "configs" / "tiny_sft.yaml").read_text())
    for key, value in edits.items():
        section, _, leaf = key.partition(".")
        study[section][leaf] = value
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


@pytest.mark.parametrize(
    "edit, key",
    [({"corpus.prompt_column": None, "corpus.response_column": None}, "corpus.prompt_column"),
     ({"tokenizer.special_tokens": []}, "tokenizer.special_tokens")],
)  # fmt: skip
def test_check_config_refuses_sft_without_its_data(tmp_path, edit, key, run_sdce):
    proc = run_sdce("check-config", sft_study(tmp_path, **edit), cwd=tmp_path, check=False)
    assert proc.returncode != 0 and proc.stderr.strip().splitlines()[-1].startswith(
        f"sdce check-config: error: {key}"
    )


def test_tiny_sft_study_through_the_dag(tmp_path):
    """tests/configs/tiny_sft.yaml: a causal baseline and a masked-diffusion SFT run on the
    same prompt/response corpus, through the real Snakemake DAG and report."""
    config = sft_study(tmp_path)
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "HOME": str(tmp_path)}
    proc = subprocess.run(
        [SNAKEMAKE, "-s", str(REPO / "Snakefile"), "--configfile", str(config), "--cores", "2"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = tmp_path / "results" / "tiny_sft"
    run = results / "runs" / "sft" / "main" / "seed1"
    records = [json.loads(line) for line in (run / "metrics.jsonl").open()]
    train = [r for r in records if "mask_rate" in r]
    assert train and all(0.0 < r["mask_rate"] <= 1.0 and np.isfinite(r["loss"]) for r in train)
    with (results / "report" / "summary.csv").open() as f:
        rows = {r["run"]: r for r in csv.DictReader(f)}
    assert set(rows) == {"baseline", "sft"}
    assert rows["sft"]["measure"] == "answer_elbo" and rows["baseline"]["measure"] == "next_token"
    assert json.loads((run / "summary.json").read_text())["val_measure"] == "answer_elbo"
