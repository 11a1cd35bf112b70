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


pytestmark = pytest.mark.usefixtures("one_torch_thread")


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
        suite.run_suite(model, tokenizer, tmp_path, tasks=["wug_past"])


@pytest.mark.parametrize("task", [t for t in suite.TASKS if t != "reading"])
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
    keys = [t for t in suite.TASKS if t != "reading"] + ["reading_eye_tracking", "reading_self_paced"]
    assert list(results["leaderboard"]) == keys
    assert list(results["tasks"]) == list(suite.TASKS)
    assert results["metrics"]["reading_self_paced"] == "partial_r2"
    # 4 rows cannot fit the reading regressions (8 and 17 coefficients): undefined, not garbage
    assert results["leaderboard"]["reading_eye_tracking"] is None
    json.dumps(results)
    table = suite.format_leaderboard(results, name="tiny")
    titles = [title for _, title in suite.LEADERBOARD_COLUMNS]
    assert table.splitlines()[0] == "| model | " + " | ".join(titles) + " | Macroaverage |"
    cells = [c.strip() for c in table.splitlines()[2].strip("|").split("|")]
    assert cells[0] == "tiny" and cells[-1] == "n/a"  # no macro average without every column
    for (key, _), cell in zip(suite.LEADERBOARD_COLUMNS, cells[1:-1], strict=True):
        score = results["leaderboard"][key]
        assert cell == ("n/a" if score is None else f"{100 * score:.2f}")
        assert score is None or math.isfinite(score)
    assert "reading 4" in table and "(at most 4 per task)" in table


# ----------------------------------------------------------------------------- reading


def synthetic_reading(n: int, seed: int = 0):
    """Baseline predictors shaped like the real table's, and an independent surprisal."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "Subtlex_log10": rng.normal(10.5, 2.7, n),
            "length": rng.integers(1, 12, n).astype(float),
            "context_length": rng.integers(1, 14, n).astype(float),
            "prev_length": rng.integers(1, 10, n).astype(float),
            "prev_surprisal": rng.gamma(4.0, 2.5, n),
            "surprisal": rng.gamma(4.0, 2.5, n),
        }
    )
    return frame, rng


def baseline_signal(frame):
    f, ln, c = frame["Subtlex_log10"], frame["length"], frame["context_length"]
    return 300 - 4 * f + 9 * ln + 2 * c - 0.3 * f * ln + 0.1 * f * c - 0.2 * ln * c


def test_surprisal_gain_recovers_the_known_partial_r2():
    """y = baseline + beta * surprisal + noise, surprisal independent of the baseline: the
    baseline leaves beta^2 var(s) + sigma^2 unexplained, of which surprisal explains
    beta^2 var(s) / (beta^2 var(s) + sigma^2)."""
    import numpy as np

    frame, rng = synthetic_reading(20_000, seed=1)
    beta, sigma = 3.0, 25.0
    var_s = float(frame["surprisal"].var())
    frame["RT"] = baseline_signal(frame) + beta * frame["surprisal"] + rng.normal(0, sigma, len(frame))
    true = beta**2 * var_s / (beta**2 * var_s + sigma**2)
    assert 0.2 < true < 0.5
    gain = suite.surprisal_gain(frame, "RT", suite.READING_BASELINE)
    assert gain["n"] == 20_000
    assert gain["score"] == pytest.approx(true, abs=0.015)
    assert gain["coefficient"] == pytest.approx(beta, rel=0.03)
    assert gain["delta_r2"] == pytest.approx(gain["score"] * (1 - gain["r2_baseline"]), abs=1e-12)
    assert gain["r2"] > gain["r2_baseline"] > 0.3

    # reading times unrelated to surprisal: it explains ~nothing (expected ~1/n)
    frame["noise"] = baseline_signal(frame) + rng.normal(0, sigma, len(frame))
    null = suite.surprisal_gain(frame, "noise", suite.READING_BASELINE)
    assert 0.0 <= null["score"] < 0.001
    assert abs(null["coefficient"]) < 0.2
    # independent noise as the predictor instead of surprisal: the same
    frame["junk"] = rng.normal(0, 1, len(frame))
    assert suite.surprisal_gain(frame, "RT", suite.READING_BASELINE, predictor="junk")["score"] < 0.001
    assert np.isfinite(null["r2_baseline"])


def test_surprisal_gain_baselines_include_the_pairwise_products():
    frame, rng = synthetic_reading(400, seed=2)
    # exactly the 6-term baseline: it explains everything, surprisal has nothing left to explain
    frame["exact"] = baseline_signal(frame)
    exact = suite.surprisal_gain(frame, "exact", suite.READING_BASELINE)
    assert exact["r2_baseline"] == pytest.approx(1.0, abs=1e-9) and exact["score"] is None
    # a spillover interaction (prev_length x prev_surprisal) is in the 15-term spillover baseline
    frame["spill"] = 250 + 0.8 * frame["prev_length"] * frame["prev_surprisal"] + rng.normal(0, 1e-3, 400)
    spill = suite.surprisal_gain(frame, "spill", suite.READING_SPILLOVER_BASELINE)
    assert spill["r2_baseline"] > 0.999999 and spill["score"] < 0.05
    assert spill["n"] == 400 and spill["baseline"] == list(suite.READING_SPILLOVER_BASELINE)
    # ... but not in the plain baseline
    assert suite.surprisal_gain(frame, "spill", suite.READING_BASELINE)["r2_baseline"] < 0.9


def test_surprisal_gain_missing_rows_and_undefined_fits():
    import numpy as np

    frame, rng = synthetic_reading(300, seed=3)
    frame["RT"] = baseline_signal(frame) + 2 * frame["surprisal"] + rng.normal(0, 10, 300)
    frame.loc[:29, "Subtlex_log10"] = np.nan  # like the real table's 30 words without frequency
    frame.loc[30:39, "prev_surprisal"] = np.nan  # first words: no previous word
    assert suite.surprisal_gain(frame, "RT", suite.READING_BASELINE)["n"] == 270
    assert suite.surprisal_gain(frame, "RT", suite.READING_SPILLOVER_BASELINE)["n"] == 260
    # no more rows than coefficients (8: intercept, 3 + 3 products, surprisal): undefined
    assert suite.surprisal_gain(frame.iloc[30:38], "RT", suite.READING_BASELINE)["score"] is None
    assert suite.surprisal_gain(frame.iloc[30:39], "RT", suite.READING_BASELINE)["score"] is not None
    frame["flat"] = 1.0
    assert suite.surprisal_gain(frame, "flat", suite.READING_BASELINE)["score"] is None


def test_reading_scores_average_the_eye_tracking_measures():
    frame, rng = synthetic_reading(3000, seed=4)
    for k, measure in enumerate(suite.READING_EYE_TRACKING):
        frame[measure] = baseline_signal(frame) + (k + 1) * frame["surprisal"] + rng.normal(0, 20, 3000)
    frame[suite.READING_SELF_PACED] = 280 + 2 * frame["surprisal"] + rng.normal(0, 20, 3000)
    scores = suite.reading_scores(frame)
    eye = [
        suite.surprisal_gain(frame, m, suite.READING_BASELINE)["score"] for m in suite.READING_EYE_TRACKING
    ]
    assert scores["eye_tracking"] == pytest.approx(sum(eye) / 4)
    assert eye == sorted(eye)  # a larger surprisal effect explains more
    spr = suite.surprisal_gain(frame, suite.READING_SELF_PACED, suite.READING_SPILLOVER_BASELINE)
    assert scores["self_paced"] == spr["score"] and 0.0 < spr["score"] < 1.0
    assert set(scores["per_measure"]) == {*suite.READING_EYE_TRACKING, suite.READING_SELF_PACED}


def test_surprisal_gain_matches_statsmodels_formulas():
    """The official pipeline's statsmodels formulas give the same R2s (statsmodels optional)."""
    smf = pytest.importorskip("statsmodels.formula.api")
    frame, rng = synthetic_reading(500, seed=5)
    frame["y"] = baseline_signal(frame) + 1.5 * frame["surprisal"] + rng.normal(0, 30, 500)
    base = (
        "Subtlex_log10 + length + context_length + Subtlex_log10:length"
        " + Subtlex_log10:context_length + length:context_length"
    )
    r2_base = smf.ols(f"y ~ {base}", data=frame).fit().rsquared
    r2 = smf.ols(f"y ~ {base} + surprisal", data=frame).fit().rsquared
    gain = suite.surprisal_gain(frame, "y", suite.READING_BASELINE)
    assert gain["r2_baseline"] == pytest.approx(r2_base, abs=1e-10)
    assert gain["score"] == pytest.approx((r2 - r2_base) / (1 - r2_base), abs=1e-10)


READING_HEADER = (
    ",item,word,word2,sentence,context_length,sent_id,item_id,list,Subtlex_log10,length,RTfirstfix,"
    "RTfirstpass,RTgopast,RTrightbound,self_paced_reading_time,ELAN,LAN,N400,P600,EPNP,PNP,"
    "prev_word,prev_item,prev_length\n"
)


def test_load_reading_reads_text_verbatim(tmp_path):
    folder = tmp_path / "reading"
    folder.mkdir()
    nums = "14.2,3,71.1,75.8,102.9,86.5,296.1,-0.5,0.1,1.1,1.0,-0.7,1.6"
    (folder / "reading_data.csv").write_text(
        READING_HEADER
        # an empty context (the real file's "None of ...", which pandas reads as missing)
        + f"0,,of,OF,None of the city people.,1,1,1,1,{nums},,,-1\n"
        + f"1,None of,the,THE,None of the city people.,2,1,2,1,{nums.replace('14.2', '')},of,None,2\n"
        + f'2,"Good God, if you are","watching,",W,"Good God, if you are watching, give",5,2,3,1,{nums},are,'
        + '"Good God, if you",3\n'
    )
    frame = suite.load_reading(folder)
    assert list(frame["item"]) == ["None", "None of", "Good God, if you are"]
    assert frame.loc[1, "prev_item"] == "None" and frame.loc[1, "prev_word"] == "of"
    assert frame.loc[0, "prev_item"] is None and frame.loc[2, "word"] == "watching,"
    assert frame["Subtlex_log10"].isna().tolist() == [False, True, False]

    (folder / "reading_data.csv").write_text(READING_HEADER + f"0,,of,OF,A sentence.,1,1,1,1,{nums},,,-1\n")
    with pytest.raises(ValueError, match="row 0: empty item"):
        suite.load_reading(folder)
    (folder / "reading_data.csv").write_text(READING_HEADER + f"0,A,b,B,A b.,1,1,1,1,{nums},x,,-1\n")
    with pytest.raises(ValueError, match="prev_item and prev_word"):
        suite.load_reading(folder)
    (folder / "reading_data.csv").write_text("item,word\nA,b\n")
    with pytest.raises(ValueError, match="missing column"):
        suite.load_reading(folder)


def test_real_reading_subset(model, tokenizer):
    """The real table, first 150 rows, scored with the tiny model: the scores equal the
    regressions on surprisals computed directly, word by word."""
    root = shared_babylm()
    if root is None:
        pytest.skip("shared BabyLM 2025 evaluation data not available")
    folder = root / "reading"
    full = suite.load_reading(folder)
    assert len(full) == 1726 and full["sentence"].nunique() == 205
    result = suite.evaluate_reading(model, tokenizer, folder, max_items=150, batch_size=32)
    json.dumps(result)
    assert result["n_items"] == 150 and result["metric"] == "partial_r2"
    frame = full.iloc[:150].copy()
    frame["surprisal"] = [
        -continuation_logprobs(model, tokenizer, [c], [" " + w])[0]
        for c, w in zip(frame["item"], frame["word"], strict=True)
    ]
    frame["prev_surprisal"] = [
        -continuation_logprobs(model, tokenizer, [c], [" " + w])[0] if c is not None else float("nan")
        for c, w in zip(frame["prev_item"], frame["prev_word"], strict=True)
    ]
    assert result["mean_surprisal"] == pytest.approx(frame["surprisal"].mean(), rel=1e-5)
    expected = suite.reading_scores(frame)
    board = result["leaderboard"]
    assert board["reading_eye_tracking"] == pytest.approx(expected["eye_tracking"], abs=1e-6)
    assert board["reading_self_paced"] == pytest.approx(expected["self_paced"], abs=1e-6)
    for score in board.values():
        assert 0.0 <= score < 1.0
    per = result["per_measure"]
    assert per["RTfirstfix"]["n"] == frame["Subtlex_log10"].notna().sum()
    spr_rows = frame["Subtlex_log10"].notna() & frame["prev_item"].notna()
    assert per["self_paced_reading_time"]["n"] == spr_rows.sum() > 100
    assert set(per) == {*suite.READING_EYE_TRACKING, suite.READING_SELF_PACED, *suite.READING_ERP}


# ----------------------------------------------------------------------------- leaderboard layout


def test_leaderboard_scores_units_and_macro_average():
    scores = {
        "blimp": 0.7166,
        "blimp_supplement": 0.6321,
        "ewok": 0.4949,
        "reading_eye_tracking": 0.0989,
        "reading_self_paced": 0.0345,
        "entity_tracking": 0.3396,
        "wug_adj": 0.43,
    }
    row = suite.leaderboard_scores(scores)
    assert list(row) == [title for _, title in suite.LEADERBOARD_COLUMNS] + ["Macroaverage"]
    assert row["BLiMP"] == pytest.approx(71.66) and row["WUGs"] == pytest.approx(43.0)
    assert row["Reading (Eye Tracking)"] == pytest.approx(9.89)
    assert row["Macroaverage"] == pytest.approx((71.66 + 63.21 + 49.49 + 9.89 + 3.45 + 33.96 + 43.0) / 7)
    # a subset of tasks: only their columns, averaged; a missing score leaves no macro average
    assert suite.leaderboard_scores({"ewok": 0.5, "blimp": 0.7}) == pytest.approx(
        {"BLiMP": 70.0, "EWoK": 50.0, "Macroaverage": 60.0}
    )
    assert suite.leaderboard_scores({"blimp": 0.7, "wug_adj": None})["Macroaverage"] is None
    assert suite.leaderboard_scores({"blimp": 0.7, "wug_adj": float("nan")})["WUGs"] is None
