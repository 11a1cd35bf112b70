"""BabyLM 2025 zero-shot suite: file formats, scoring direction, and the real data files."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from test_minimal_pairs import make_model
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from sdce.evaluation import babylm_suite as suite
from sdce.evaluation.scoring import continuation_logprobs, sequence_logprobs

EOT = "<|endoftext|>"
CORPUS = [
    "Ali is in the bakery. Ali sees the candle inside. Ali believes that the candle is in the bakery.",
    "Box 0 contains the blue card and the red rose, Box 1 contains nothing.",
    "Create a noun out of the following adjective: actignable. actignability actignableness",
    "the cat sat on the mat. Who cleaned? David cleaned. Is the novel he is putting away from the library?",
]


def shared_babylm() -> Path | None:
    root = Path(os.environ["SDCE_SHARED"]) if os.environ.get("SDCE_SHARED") else None
    root = root or Path(__file__).resolve().parents[1].parent / "shared"
    folder = root / "data" / "babylm-eval-2025"
    return folder if folder.is_dir() else None


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Tiny models: intra-op threads only add synchronisation (pathological on a busy 2-core box)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tokenizer():
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 20, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOT, eos_token=EOT, unk_token=EOT)


@pytest.fixture(scope="module")
def model(tokenizer):
    return make_model(tokenizer, seed=0, n_positions=512)


class UnigramLM(torch.nn.Module):
    """A causal "LM" whose next-token distribution ignores the input: easy to reason about."""

    def __init__(self, token_logits: torch.Tensor):
        super().__init__()
        self.token_logits = torch.nn.Parameter(token_logits.float())

    def forward(self, input_ids, attention_mask=None, position_ids=None):
        return SimpleNamespace(logits=self.token_logits.expand(*input_ids.shape, -1))


def write_jsonl(path: Path, records) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_round_robin_and_credit():
    items = [{"g": g, "i": i} for g in "aab" for i in range(3)]
    taken = suite._round_robin(items, "g", 3)
    assert [(t["g"], t["i"]) for t in taken] == [("a", 0), ("b", 0), ("a", 1)]
    assert len(suite._round_robin(items, "g", None)) == len(items)
    assert suite._best_credit([-1.0, -2.0, -3.0]) == 1.0
    assert suite._best_credit([-2.0, -1.0]) == 0.0
    assert suite._best_credit([-1.0, -1.0]) == 0.5
    assert suite._best_credit([-1.0, -1.0, -1.0, -5.0]) == pytest.approx(1 / 3)


def test_ewok_direction_and_boundary(tokenizer, tmp_path):
    """Target1 given Context1 is the correct answer; only the target tokens are scored."""
    folder = tmp_path / "ewok_filtered"
    records = [
        {
            "Domain": "agent-properties",
            "ContextType": "direct",
            "Context1": "Ali is in the bakery.",
            "Context2": "Ali is outside.",
            "Target1": "Ali sees the candle.",
            "Target2": "Ali sees the rose.",
        },
        {
            "Domain": "spatial-relations",
            "Context1": "Box 0 contains the blue card.",
            "Context2": "Box 1 contains nothing.",
            "Target1": "the red rose.",
            "Target2": "the blue card.",
        },
    ]
    write_jsonl(folder / "mixed.jsonl", records)
    torch.manual_seed(1)
    lm = UnigramLM(torch.randn(len(tokenizer)) * 3)
    result = suite.evaluate_ewok(lm, tokenizer, folder)
    expected = []
    for rec in records:
        good, bad = continuation_logprobs(
            lm, tokenizer, [rec["Context1"]] * 2, [" " + rec["Target1"], " " + rec["Target2"]]
        )
        expected.append(1.0 if good > bad else 0.0 if good < bad else 0.5)
        # with a unigram model the continuation score is the targets' own token log-probs
        t1 = sequence_logprobs(lm, tokenizer, [" " + rec["Target1"]])[0]
        assert good == pytest.approx(t1, abs=1e-4)
    assert result["per_domain"]["agent-properties"]["accuracy"] == expected[0]
    assert result["per_domain"]["spatial-relations"]["accuracy"] == expected[1]
    assert result["score"] == pytest.approx(sum(expected) / 2)

    write_jsonl(tmp_path / "bad" / "x.jsonl", [records[0], {"Context1": "a", "Target1": "b"}])
    with pytest.raises(ValueError, match=r"x\.jsonl:2: missing field\(s\) Target2"):
        suite.load_ewok(tmp_path / "bad")


def test_entity_tracking_first_option_is_correct(tokenizer, tmp_path):
    folder = tmp_path / "entity_tracking"
    prefix = "Box 0 contains the blue card, Box 1 contains nothing. Box 0 contains "
    write_jsonl(
        folder / "regular.jsonl",
        [
            {"numops": 0, "input_prefix": prefix, "options": ["the blue card.", "nothing."]},
            {"numops": 1, "input_prefix": prefix, "options": ["nothing.", "the blue card."]},
        ],
    )
    write_jsonl(
        folder / "ambiref.jsonl",
        [{"numops": 0, "input_prefix": prefix, "options": ["the blue card.", "nothing.", "the red rose."]}],
    )
    lm = UnigramLM(torch.zeros(len(tokenizer)))
    # uniform next-token distribution: the option with the fewest tokens wins
    n_tok = {
        o: len(tokenizer(prefix + o)["input_ids"]) for o in ("the blue card.", "nothing.", "the red rose.")
    }
    assert n_tok["nothing."] < n_tok["the blue card."]
    result = suite.evaluate_entity_tracking(lm, tokenizer, folder)
    assert result["per_subset"]["regular_0_ops"]["accuracy"] == 0.0
    assert result["per_subset"]["regular_1_ops"]["accuracy"] == 1.0
    assert result["per_split"] == {"ambiref": 0.0, "regular": 0.5}
    assert result["score"] == pytest.approx(0.25)  # mean over splits of the mean over numops

    write_jsonl(tmp_path / "bad" / "regular.jsonl", [{"numops": 0, "input_prefix": prefix, "options": ["a"]}])
    with pytest.raises(ValueError, match=r"regular\.jsonl:1: options"):
        suite.load_entity_tracking(tmp_path / "bad")


def test_wug_spearman(tokenizer, tmp_path):
    folder = tmp_path / "wug_adj_nominalization"
    stems = ["actignable", "anilicable", "atecusive", "cogective", "conovative"]
    prompt = "Create a noun out of the following adjective: {a}. {n}"
    records = [
        {
            "sentences": prompt.format(a=s, n=s[:-2] + "ity") + "\t" + prompt.format(a=s, n=s + "ness"),
            "ratio": r,
        }
        for s, r in zip(stems, [0.1, 0.9, 0.5, 0.3, 0.7], strict=True)
    ]
    write_jsonl(folder / "wug_adj_nominalization.jsonl", records)
    torch.manual_seed(2)
    lm = UnigramLM(torch.randn(len(tokenizer)) * 3)
    result = suite.evaluate_wug_adj(lm, tokenizer, folder)
    from scipy.stats import spearmanr

    first = sequence_logprobs(lm, tokenizer, [r["sentences"].split("\t")[0] for r in records])
    second = sequence_logprobs(lm, tokenizer, [r["sentences"].split("\t")[1] for r in records])
    rho = spearmanr([a - b for a, b in zip(first, second, strict=True)], [r["ratio"] for r in records])[0]
    assert result["spearman"] == pytest.approx(rho) and result["metric"] == "spearman"

    write_jsonl(tmp_path / "bad" / "w.jsonl", [{"sentences": "only one", "ratio": 0.5}])
    with pytest.raises(ValueError, match=r"w\.jsonl:1: sentences must be two tab-separated"):
        suite.load_wug_adj(tmp_path / "bad")


def test_run_suite_errors(model, tokenizer, tmp_path):
    with pytest.raises(FileNotFoundError):
        suite.run_suite(model, tokenizer, tmp_path / "nope")
    with pytest.raises(ValueError, match="no BabyLM task folders"):
        suite.run_suite(model, tokenizer, tmp_path)
    with pytest.raises(ValueError, match="unknown task"):
        suite.run_suite(model, tokenizer, tmp_path, tasks=["reading"])


@pytest.mark.parametrize("task", suite.TASKS)
def test_real_task_files(model, tokenizer, task):
    root = shared_babylm()
    if root is None:
        pytest.skip("shared BabyLM 2025 evaluation data not available")
    folder = root / suite.TASK_FOLDERS[task]
    loaders = {
        "blimp": lambda f: suite.load_minimal_pairs(f),
        "blimp_supplement": lambda f: suite.load_minimal_pairs(f),
        "ewok": suite.load_ewok,
        "entity_tracking": suite.load_entity_tracking,
        "wug_adj": suite.load_wug_adj,
    }
    sizes = {"blimp": 67, "blimp_supplement": 5, "ewok": 11, "entity_tracking": 3, "wug_adj": 1}
    assert len(list(folder.glob("*.jsonl"))) == sizes[task]
    if task != "blimp":  # every line of every file parses (BLiMP's loader is tested elsewhere)
        assert len(loaders[task](folder)) > 100
    result = suite.EVALUATORS[task](model, tokenizer, folder, max_items=10, batch_size=8)
    assert result["n_items"] == 10
    json.dumps(result)
    if result["metric"] == "accuracy":
        assert 0.0 <= result["score"] <= 1.0
    else:
        assert result["score"] is None or -1.0 <= result["score"] <= 1.0
    if task == "blimp_supplement":
        assert set(result["per_paradigm"]) == {
            "hypernym",
            "qa_congruence_easy",
            "qa_congruence_tricky",
            "subject_aux_inversion",
            "turn_taking",
        }
        assert set(result["per_field"]) == {"supplement"}
    if task == "ewok":
        assert len(result["per_domain"]) == 10  # round-robin over the 11 domain files
    if task == "entity_tracking":
        assert set(result["per_split"]) <= {"regular", "ambiref", "move_contents"}


def test_real_run_suite_and_leaderboard(model, tokenizer):
    root = shared_babylm()
    if root is None:
        pytest.skip("shared BabyLM 2025 evaluation data not available")
    results = suite.run_suite(model, tokenizer, root, max_items_per_task=4, batch_size=16)
    assert list(results["leaderboard"]) == list(suite.TASKS)
    json.dumps(results)
    table = suite.format_leaderboard(results)
    assert table.splitlines()[0] == "| task | metric | score | items |"
    assert len(table.splitlines()) == 2 + len(suite.TASKS)
    for task, score in results["leaderboard"].items():
        assert score is None or math.isfinite(score)
        assert f"| {task} |" in table
