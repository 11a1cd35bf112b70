"""Scoring primitives and BLiMP-style minimal-pair evaluation on a tiny GPT-2 built in the test."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from sdce.evaluation.minimal_pairs import evaluate_minimal_pairs, load_minimal_pairs
from sdce.evaluation.scoring import conditioning_ids, continuation_logprobs, sequence_logprobs

EOT = "<|endoftext|>"
CORPUS = [
    "the cat sat on the mat.",
    "the dog saw the cat and the bird.",
    "a man walks to the old house every day.",
    "who should derek hug after shocking richard?",
    "these children were running to the park while it rained.",
    "Many girls have praised themselves. Every boy likes his teacher.",
    "Box 0 contains the blue card and the red rose, Box 1 contains nothing.",
]


def shared_data() -> Path | None:
    root = Path(os.environ["SDCE_SHARED"]) if os.environ.get("SDCE_SHARED") else None
    root = root or Path(__file__).resolve().parents[1].parent / "shared"
    data = root / "data"
    return data if data.is_dir() else None


def make_tokenizer(vocab_size: int = 320) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 20, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOT, eos_token=EOT, unk_token=EOT)


def make_model(tokenizer, seed: int = 0, n_positions: int = 256) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    config = GPT2Config(
        n_layer=1,
        n_embd=32,
        n_head=2,
        n_positions=n_positions,
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    model = GPT2LMHeadModel(config)
    # GPT-2's default init (std 0.02) gives nearly uniform logits; widen it so scores differ clearly
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.3)
    return model.eval()


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tokenizer():
    return make_tokenizer()


@pytest.fixture(scope="module")
def model(tokenizer):
    return make_model(tokenizer)


def write_jsonl(path: Path, records) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


TEXTS = [
    "the cat sat on the mat.",
    "a dog",
    "who should derek hug after shocking richard?",
    "x",
    "these children were running to the park while it rained every day.",
    "the bird",
    "Many girls have praised themselves.",
    "Every boy likes his teacher and the old house.",
    "the cat saw the dog.",
]


# ----------------------------------------------------------------------------- scoring


def reference_logprob(model, tokenizer, text: str) -> float:
    """Token-by-token log p, conditioned on <|endoftext|>, with no batching at all."""
    ids = [tokenizer.eos_token_id] + tokenizer(text, add_special_tokens=False)["input_ids"]
    total = 0.0
    with torch.no_grad():
        for t in range(1, len(ids)):
            logits = model(input_ids=torch.tensor([ids[:t]])).logits[0, -1].double()
            total += float(torch.log_softmax(logits, dim=-1)[ids[t]])
    return total


def test_matches_hand_computed_reference(model, tokenizer):
    text = "who should derek hug after shocking richard?"
    assert sequence_logprobs(model, tokenizer, [text]) == pytest.approx(
        [reference_logprob(model, tokenizer, text)], abs=1e-4
    )


def test_batch_size_invariance_and_input_order(model, tokenizer):
    one = sequence_logprobs(model, tokenizer, TEXTS, batch_size=1)
    seven = sequence_logprobs(model, tokenizer, TEXTS, batch_size=7)
    assert seven == pytest.approx(one, abs=1e-4)
    assert one[1] == pytest.approx(reference_logprob(model, tokenizer, TEXTS[1]), abs=1e-4)
    assert one[3] == pytest.approx(reference_logprob(model, tokenizer, TEXTS[3]), abs=1e-4)


def test_first_token_is_scored(model, tokenizer):
    a, b = sequence_logprobs(model, tokenizer, ["the cat sat on the mat.", "a cat sat on the mat."])
    assert a != pytest.approx(b, abs=1e-3)
    # a single-token text still has a score (it is conditioned on <|endoftext|>)
    (single,) = sequence_logprobs(model, tokenizer, ["x"])
    assert single < 0


def test_fp32_scores_for_half_precision_model(tokenizer):
    model = make_model(tokenizer).to(torch.bfloat16)
    (score,) = sequence_logprobs(model, tokenizer, ["the cat sat on the mat."])
    assert math.isfinite(score) and score < 0


def test_conditioning_token_choice(tokenizer):
    assert conditioning_ids(tokenizer) == [tokenizer.bos_token_id]
    assert conditioning_ids(tokenizer, prefix=5) == [5]

    class NoSpecials:
        bos_token_id = None
        eos_token_id = None

    with pytest.raises(ValueError, match="neither a BOS nor an EOS"):
        conditioning_ids(NoSpecials())


def test_unencodable_texts_raise(model, tokenizer):
    with pytest.raises(ValueError, match="''"):
        sequence_logprobs(model, tokenizer, ["fine text", ""])
    wordlevel = Tokenizer(models.WordLevel({"[UNK]": 0, "[BOS]": 1, "the": 2, "cat": 3}, unk_token="[UNK]"))
    wordlevel.pre_tokenizer = pre_tokenizers.Whitespace()
    wl_tok = PreTrainedTokenizerFast(tokenizer_object=wordlevel, unk_token="[UNK]", bos_token="[BOS]")
    wl_model = make_model(wl_tok)
    assert len(sequence_logprobs(wl_model, wl_tok, ["the cat"])) == 1
    with pytest.raises(ValueError, match="the zebra.*unknown token"):
        sequence_logprobs(wl_model, wl_tok, ["the zebra"])


def test_continuation_logprobs_boundary(model, tokenizer):
    ctx, cont = "the cat", " sat on the mat."
    full = ctx + cont
    ids_full = tokenizer(full, add_special_tokens=False)["input_ids"]
    ids_ctx = tokenizer(ctx, add_special_tokens=False)["input_ids"]
    assert ids_full[: len(ids_ctx)] == ids_ctx  # the boundary falls between tokens here
    (whole,) = sequence_logprobs(model, tokenizer, [full])
    (context_only,) = sequence_logprobs(model, tokenizer, [ctx])
    got = continuation_logprobs(model, tokenizer, [ctx, "the cat ", ""], [cont, cont[1:], full])
    assert got[0] == pytest.approx(whole - context_only, abs=1e-4)
    # a trailing space in the context belongs to the first continuation token (" sat")
    assert got[1] == pytest.approx(got[0], abs=1e-4)
    # empty context: the whole text, first token included
    assert got[2] == pytest.approx(whole, abs=1e-4)
    again = continuation_logprobs(
        model, tokenizer, [ctx, "the cat ", ""], [cont, cont[1:], full], batch_size=1
    )
    assert again == pytest.approx(got, abs=1e-4)
    with pytest.raises(ValueError, match="empty continuation"):
        continuation_logprobs(model, tokenizer, ["the cat"], [""])


# ----------------------------------------------------------------------------- loading


def test_load_defaults_and_errors(tmp_path):
    write_jsonl(
        tmp_path / "b_par.jsonl",
        [
            {"sentence_good": "the cat sat.", "sentence_bad": "the cat sit."},
            {"sentence_good": "a dog ran.", "sentence_bad": "a dog run.", "field": "syntax_semantics"},
        ],
    )
    write_jsonl(
        tmp_path / "a_par.jsonl",
        [
            {
                "sentence_good": "x y.",
                "sentence_bad": "y x.",
                "UID": "custom",
                "field": "syntax",
                "linguistics_term": "order",
            }
        ],
    )
    (tmp_path / "notes.txt").write_text("ignored")
    pairs = load_minimal_pairs(tmp_path)
    assert [p["UID"] for p in pairs] == ["custom", "b_par", "b_par"]  # files sorted by name
    assert pairs[1]["field"] == "unknown" and pairs[1]["linguistics_term"] == "unknown"
    assert pairs[2]["field"] == "syntax/semantics"
    assert pairs[0]["source"].endswith("a_par.jsonl:1")

    bad = tmp_path / "bad"
    bad.mkdir()
    write_jsonl(bad / "p.jsonl", [{"sentence_good": "a.", "sentence_bad": "b."}, {"sentence_good": "a."}])
    with pytest.raises(ValueError, match=r"p\.jsonl:2: missing field\(s\) sentence_bad"):
        load_minimal_pairs(bad)

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "q.jsonl").write_text('{"sentence_good": "a.", "sentence_bad": "b."}\n{not json\n')
    with pytest.raises(ValueError, match=r"q\.jsonl:2: invalid JSON"):
        load_minimal_pairs(broken)

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no \\*.jsonl files in .*empty"):
        load_minimal_pairs(empty)
    with pytest.raises(FileNotFoundError, match="missing"):
        load_minimal_pairs(tmp_path / "missing")


# ----------------------------------------------------------------------------- evaluation


SWAP_PAIRS = [
    ("the dog saw the cat.", "the cat saw the dog."),
    ("the man saw the bird.", "the bird saw the man."),
    ("a girl likes the house.", "a house likes the girl."),
    ("the boy hugs the teacher.", "the teacher hugs the boy."),
]


def test_output_structure_and_first_n_per_paradigm(model, tokenizer, tmp_path):
    records = [
        {
            "sentence_good": g,
            "sentence_bad": b,
            "UID": f"p{i % 2}",
            "field": "syntax",
            "linguistics_term": "t",
        }
        for i, (g, b) in enumerate(SWAP_PAIRS * 3)
    ]
    result = evaluate_minimal_pairs(model, tokenizer, records, batch_size=5)
    json.dumps(result, allow_nan=False)
    assert result["n_pairs"] == 12 and set(result["per_paradigm"]) == {"p0", "p1"}
    for stats in result["per_paradigm"].values():
        assert set(stats) == {"accuracy", "n", "ties", "field", "linguistics_term"}
    macro = sum(s["accuracy"] for s in result["per_paradigm"].values()) / 2
    assert result["macro_accuracy"] == pytest.approx(macro)
    assert result["per_phenomenon"] == {"t": pytest.approx(macro)}
    assert result["per_field"] == {"syntax": pytest.approx(macro)}
    # one model, same pairs in batch 1: identical decisions
    assert evaluate_minimal_pairs(model, tokenizer, records, batch_size=1)["micro_accuracy"] == pytest.approx(
        result["micro_accuracy"]
    )

    first = evaluate_minimal_pairs(model, tokenizer, records, max_pairs_per_paradigm=2)
    assert first["n_pairs"] == 4 and all(s["n"] == 2 for s in first["per_paradigm"].values())
    # "first N": the first two pairs of p0 are SWAP_PAIRS[0] and SWAP_PAIRS[2]
    good, bad = zip(*[SWAP_PAIRS[0], SWAP_PAIRS[2]], strict=True)
    lp = sequence_logprobs(model, tokenizer, list(good) + list(bad))
    expected = sum(1.0 if g > b else 0.0 for g, b in zip(lp[:2], lp[2:], strict=True)) / 2
    assert first["per_paradigm"]["p0"]["accuracy"] == pytest.approx(expected)

    folder = tmp_path / "pairs"
    folder.mkdir()
    write_jsonl(folder / "swap.jsonl", [{"sentence_good": g, "sentence_bad": b} for g, b in SWAP_PAIRS])
    from_folder = evaluate_minimal_pairs(model, tokenizer, folder)
    assert set(from_folder["per_paradigm"]) == {"swap"}
    assert from_folder["per_phenomenon"].keys() == {"unknown"}


def test_constant_model_ties_score_half(tokenizer):
    model = make_model(tokenizer)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()  # every logit is 0: the same uniform distribution whatever the input
    for good, bad in SWAP_PAIRS:
        assert len(tokenizer(good)["input_ids"]) == len(tokenizer(bad)["input_ids"])
    records = [{"sentence_good": g, "sentence_bad": b} for g, b in SWAP_PAIRS]
    result = evaluate_minimal_pairs(model, tokenizer, records)
    assert result["tie_rate"] == 1.0
    assert result["macro_accuracy"] == 0.5 and result["micro_accuracy"] == 0.5
    assert result["per_paradigm"]["unknown"]["ties"] == len(SWAP_PAIRS)


def test_real_blimp_subset(model, tokenizer, tmp_path):
    data = shared_data()
    if data is None or not (data / "blimp").is_dir():
        pytest.skip("shared BLiMP data not available")
    assert len(list((data / "blimp").glob("*.jsonl"))) == 67
    keep = {"anaphor_gender_agreement", "wh_island"}
    for uid in keep:  # two real paradigm files, read through the folder loader
        shutil.copy(data / "blimp" / f"{uid}.jsonl", tmp_path)
    pairs = load_minimal_pairs(tmp_path)
    assert len(pairs) == 2000 and {p["UID"] for p in pairs} == keep
    result = evaluate_minimal_pairs(model, tokenizer, tmp_path, max_pairs_per_paradigm=20)
    assert result["n_pairs"] == 40
    assert set(result["per_paradigm"]) == keep
    assert set(result["per_phenomenon"]) == {"anaphor_agreement", "island_effects"}
    assert set(result["per_field"]) == {"morphology", "syntax"}
    assert 0.0 <= result["macro_accuracy"] <= 1.0 and result["tie_rate"] < 1.0


# ----------------------------------------------------------------------------- lm-evaluation-harness


def test_agrees_with_lm_evaluation_harness(model, tokenizer, tmp_path, monkeypatch):
    pytest.importorskip("lm_eval")
    import datasets.config
    import huggingface_hub.constants

    # offline: a local task definition on a local file; nothing may be fetched from the Hub
    # (the libraries read the variables at import, so patch their constants too)
    for name in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.setenv(name, "1")
        monkeypatch.setattr(datasets.config, name, True, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    pairs = [
        ("the cat sat on the mat.", "the mat sat on the cat."),
        ("who should derek hug after shocking richard?", "who should derek hug richard after shocking?"),
        ("Many girls have praised themselves.", "Many girls have praised herself."),
        ("Every boy likes his teacher.", "Every boy like his teacher."),
        ("a man walks to the old house.", "a man walk to the old house."),
        ("the dog saw the cat.", "a dog saw the cat."),  # differ only in the first word
    ] + SWAP_PAIRS
    records = [{"sentence_good": g, "sentence_bad": b} for g, b in pairs]
    data = write_jsonl(tmp_path / "pairs.jsonl", records)
    (tmp_path / "sdce_pairs.yaml").write_text(
        "task: sdce_pairs\n"
        "dataset_path: json\n"
        "dataset_kwargs:\n"
        f"  data_files: {{test: '{data}'}}\n"
        f"  cache_dir: '{tmp_path / 'hf_cache'}'\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        'doc_to_text: ""\n'
        "doc_to_target: 0\n"
        # the harness prepends target_delimiter (default " ") to every choice; score the bare
        # sentences, as BLiMP defines them
        'target_delimiter: ""\n'
        'doc_to_choice: "{{[sentence_good, sentence_bad]}}"\n'
        "metric_list:\n"
        "  - metric: acc\n"
    )
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=4, device="cpu")
    out = simple_evaluate(
        model=lm,
        tasks=["sdce_pairs"],
        task_manager=TaskManager(include_path=str(tmp_path), include_defaults=False),
        log_samples=True,
    )
    harness_acc = out["results"]["sdce_pairs"]["acc,none"]
    ours = evaluate_minimal_pairs(model, tokenizer, records)
    assert ours["tie_rate"] == 0.0
    assert ours["micro_accuracy"] == pytest.approx(harness_acc, abs=1e-9)
    # per-sentence log-likelihoods agree too (both condition the first token on <|endoftext|>)
    samples = sorted(out["samples"]["sdce_pairs"], key=lambda s: s["doc_id"])
    harness_ll = [ll for s in samples for ll, _ in (r[0] for r in s["resps"])]
    our_ll = [
        x
        for g, b in pairs
        for x in sequence_logprobs(model, tokenizer, [g, b])  # good then bad, like the choices
    ]
    assert harness_ll == pytest.approx(our_ll, abs=1e-4)
