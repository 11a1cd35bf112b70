"""PPO post-training (`sdce ppo`, TRL's PPOTrainer): the grammar reward on the embedded
grammar's minimal pairs, the reward interface TRL calls, a tiny trained student whose
grammar reward PPO raises, the command line's outputs and refusals, and the DAG's rule."""

import json
import math
import random
import re

import pytest
import torch

from sdce import config as cfg
from sdce.data.synthetic import PARADIGMS, generate_documents, generate_minimal_pairs, grammaticality

pytest.importorskip("trl.experimental.ppo", reason="needs TRL with PPO (pip install 'sdce[ppo]')")


def ppo_spec(**over):
    return cfg.validate(over, "properties/ppo")


# ---- the grammar reward ------------------------------------------------------------------------


def test_grammar_reward_prefers_the_good_sentence_of_minimal_pairs():
    pairs = generate_minimal_pairs(40, seed=0)
    assert set(pairs) == set(PARADIGMS)
    for uid, records in pairs.items():
        wins = sum(grammaticality(r["sentence_good"]) > grammaticality(r["sentence_bad"]) for r in records)
        # "read" is both a present plural and a past form: the one undecidable contrast
        assert wins >= 0.95 * len(records), uid
        assert all(grammaticality(r["sentence_good"]) == 1.0 for r in records), uid


def test_grammar_reward_passes_the_corpus_and_fails_scrambled_or_unfinished_text():
    docs = generate_documents(200, seed=11)
    assert all(grammaticality(d, ended=True) == 1.0 for d in docs)
    rng = random.Random(0)
    scrambled = [" ".join(rng.sample(d.split(), len(d.split()))) for d in docs]
    assert sum(map(grammaticality, scrambled)) / len(docs) < 0.9
    assert grammaticality("The old cats that the boy likes sleep.") == 1.0
    assert grammaticality("The old cats that the boy likes sleeps.") < 1.0
    assert grammaticality("The old cats that") == 1.0  # cut off: nothing wrong yet
    assert grammaticality("The old cats that", ended=True) < 1.0  # but a document cannot end there
    assert grammaticality("Thecat sle eps") == 0.0 and grammaticality("") == 0.0
    assert grammaticality("Does the boy like cats?") == 1.0 > grammaticality("Does the boy likes cats?")
    assert grammaticality("Is a letter old?") == 1.0 > grammaticality("Is a letter was in the house.")


# ---- a tiny student ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def student(tiny_data, tmp_path_factory):
    """A 2-layer GPT-2 trained for a few seconds on the synthetic corpus: half-grammatical text."""
    from tiny_training import tiny_run, train_tiny

    torch.set_num_threads(1)  # tiny models: extra threads only contend
    out = tmp_path_factory.mktemp("student")
    model = {"n_layer": 2, "n_embd": 64, "n_head": 2}
    run = tiny_run("ce", model=model, steps=250, batch_size=16, block_size=64, learning_rate=3e-3)
    run["training"].update(eval_interval=250, checkpoint_interval=250, log_interval=50, warmup_steps=10)
    train_tiny(tiny_data, out, run)
    return out / "model"


@pytest.fixture(scope="module")
def prompts(tiny_data):
    from sdce.data.corpus import read_documents
    from sdce.ppo import corpus_prompts

    texts = [d["text"] for d in read_documents(tiny_data / "train.jsonl")]
    found = corpus_prompts(texts, 64, 3)
    assert len(found) == 64 and all(len(p.split()) == 3 for p in found) and len(set(found)) == 64
    return found


def test_text_reward_is_read_by_trls_get_reward_as_the_texts_grammaticality(student):
    from transformers import AutoTokenizer
    from trl.experimental.utils import get_reward

    from sdce.rewards import TextReward, grammar_scores

    tok = AutoTokenizer.from_pretrained(student)
    ids = lambda text: tok(text, add_special_tokens=False)["input_ids"]
    eos = tok.eos_token_id
    queries = [ids("The cats"), ids("The cats"), ids("Mary")]
    responses = [ids(" sleep."), ids(" sleeps. The cat"), []]  # row 1 runs to the length limit
    width, length = max(map(len, queries)), max(map(len, responses))
    # as TRL's rollouts are: left-padded queries of one width, responses padded after eos (pad = eos)
    batch = torch.tensor(
        [
            [eos] * (width - len(q)) + q + r + [eos] * (length - len(r))
            for q, r in zip(queries, responses, strict=True)
        ]
    )
    _, scores, _ = get_reward(TextReward(grammar_scores, tok), batch, eos, width)
    texts = ["The cats sleep.", "The cats sleeps. The cat", "Mary"]
    assert [tok.decode(r, skip_special_tokens=True) for r in batch.tolist()] == texts
    expected = [grammaticality(t, ended) for t, ended in zip(texts, [True, False, True], strict=True)]
    assert scores.tolist() == pytest.approx(expected)
    assert scores[0] == 1.0 and scores[1] < 1.0 and scores[2] < 1.0


def test_ppo_raises_the_grammar_reward(student, prompts, tmp_path):
    from sdce.model import load_model
    from sdce.ppo import run_ppo

    spec = ppo_spec(steps=40, batch_size=16, mini_batch_size=8, learning_rate=3e-4, response_length=16)
    generation = cfg.validate({"max_new_tokens": 16}, "properties/generation")
    summary = run_ppo(student, tmp_path / "ppo", spec, spec["reward"], prompts, generation)
    records = [json.loads(x) for x in (tmp_path / "ppo" / "ppo_metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 41)) and summary["steps"] == 40
    first = sum(r["reward"] for r in records[:8]) / 8
    last = sum(r["reward"] for r in records[-8:]) / 8
    assert last > first + 0.03, (first, last)
    assert abs(records[0]["kl"]) < 1e-3 < records[-1]["kl"]  # the policy starts as its reference
    assert all(0 < r["response_length"] <= 16 for r in records)
    tuned = load_model(tmp_path / "ppo" / "final")
    before = load_model(student)
    assert not torch.equal(tuned.lm_head.weight, before.lm_head.weight)
    samples = [json.loads(x) for x in (tmp_path / "ppo" / "samples.jsonl").read_text().splitlines()]
    by_stage = {s: [r for r in samples if r["stage"] == s] for s in ("before", "after")}
    key = [(r["prompt"], r["seed"]) for r in by_stage["before"]]
    assert key == [(r["prompt"], r["seed"]) for r in by_stage["after"]] and len(key) == 3
    assert all(0.0 <= r["reward"] <= 1.0 for r in samples)


# ---- the command line --------------------------------------------------------------------------

QUICK = {"steps": 3, "batch_size": 4, "mini_batch_size": 2, "response_length": 8, "prompts": {"count": 8}}


def test_sdce_ppo_writes_the_policy_metrics_and_samples(student, tiny_data, run_sdce, tmp_path):
    from transformers import AutoTokenizer

    from sdce.model import load_model
    from sdce.report import ppo_markdown

    out = tmp_path / "run_a"
    args = [
        "ppo",
        "--model",
        student,
        "--params",
        json.dumps(QUICK),
        "--documents",
        tiny_data / "train.jsonl",
    ]
    proc = run_sdce(*args, "--generation", '{"max_new_tokens": 6}', "--out", out)
    assert json.loads(proc.stdout.strip().splitlines()[-1])["steps"] == 3
    assert load_model(out / "final").config.model_type == "gpt2"
    assert (
        AutoTokenizer.from_pretrained(out / "final").get_vocab()
        == AutoTokenizer.from_pretrained(student).get_vocab()
    )
    records = [json.loads(x) for x in (out / "ppo_metrics.jsonl").read_text().splitlines()]
    assert len(records) == 3 and {"reward", "kl", "response_length", "entropy", "value_loss"} <= set(
        records[0]
    )
    samples = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in samples] == ["before"] * 3 + ["after"] * 3
    assert all(r["completion_tokens"] <= 6 for r in samples)
    assert sorted(p.name for p in out.iterdir()) == ["final", "ppo_metrics.jsonl", "samples.jsonl"]
    text = ppo_markdown([str(out / "ppo_metrics.jsonl")], tmp_path)
    assert "| run_a | 3 |" in text and "before (" in text and (tmp_path / "ppo.png").stat().st_size > 0


def test_classifier_and_judge_rewards_run_through_trl(student, prompts, tmp_path):
    from transformers import AutoTokenizer, GPT2Config, GPT2ForSequenceClassification

    from sdce.ppo import run_ppo
    from sdce.rewards import Judge

    tok = AutoTokenizer.from_pretrained(student)
    config = GPT2Config(vocab_size=len(tok), n_positions=64, n_embd=32, n_layer=1, n_head=2, num_labels=1)
    torch.manual_seed(0)
    GPT2ForSequenceClassification(config).save_pretrained(tmp_path / "classifier")
    tok.save_pretrained(tmp_path / "classifier")
    spec = ppo_spec(**QUICK)
    generation = cfg.validate({"max_new_tokens": 6}, "properties/generation")
    for reward in (
        {"kind": "classifier", "path": str(tmp_path / "classifier")},
        {"kind": "judge", "path": str(student)},
    ):
        out = tmp_path / reward["kind"]
        summary = run_ppo(student, out, spec, reward, prompts[:8], generation)
        assert summary["steps"] == 3 and (out / "final" / "config.json").is_file()
        rewards = [json.loads(x)["reward"] for x in (out / "ppo_metrics.jsonl").read_text().splitlines()]
        if reward["kind"] == "judge":  # log P(Yes | Yes or No)
            assert all(r < 0 for r in rewards)
    judge = Judge(str(student))
    yes = judge(["The cats sleep.", "Cats the sleep"])
    judge.answers.reverse()
    no = judge(["The cats sleep.", "Cats the sleep"])
    assert [math.exp(y) + math.exp(n) for y, n in zip(yes, no, strict=True)] == pytest.approx([1.0, 1.0])


def test_bad_input_is_refused_in_one_line(student, tiny_data, run_sdce, tmp_path):
    from sdce.data.tokenizer import load, with_mask_token
    from sdce.model import build_model

    base = ["ppo", "--model", student, "--out", tmp_path / "x", "--documents", tiny_data / "train.jsonl"]
    proc = run_sdce(*base, "--reward", "classifier", "--reward-model", student, check=False)
    assert proc.returncode == 2
    assert "is not a sequence classifier (architecture GPT2LMHeadModel)" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    proc = run_sdce(*base, "--reward", "judge", check=False)
    assert proc.returncode == 2 and "the judge reward needs a model folder" in proc.stderr
    proc = run_sdce(*base, "--params", '{"batch_size": 6, "mini_batch_size": 4}', check=False)
    assert proc.returncode == 2 and "ppo.mini_batch_size: 4 does not divide ppo.batch_size=6" in proc.stderr
    proc = run_sdce("ppo", "--model", student, "--out", tmp_path / "x", check=False)
    assert proc.returncode == 2 and "give --documents" in proc.stderr
    tok = with_mask_token(load(tiny_data / "tokenizer"))
    spec = cfg.validate({"family": "modernbert", "n_layer": 1, "n_embd": 32, "n_head": 2}, "model")
    build_model(spec, tok, 64, seed=0).save_pretrained(tmp_path / "mdm")
    tok.save_pretrained(tmp_path / "mdm")
    proc = run_sdce("ppo", "--model", tmp_path / "mdm", "--out", tmp_path / "x", check=False)
    assert proc.returncode == 2 and "masked-diffusion (bidirectional) model" in proc.stderr
    assert not (tmp_path / "x").exists()


# ---- the DAG -----------------------------------------------------------------------------------


def test_select_runs_defaults_to_the_causal_runs():
    from sdce.ppo import select_runs

    runs = {
        n: cfg.validate({"model": {"family": f}}, "run") for n, f in (("ar", "gpt2"), ("mdm", "modernbert"))
    }
    assert select_runs(ppo_spec(), runs) == ["ar"]
    assert select_runs(ppo_spec(runs=["ar"]), runs) == ["ar"]
    with pytest.raises(ValueError, match="'mdm' trains a masked-diffusion model"):
        select_runs(ppo_spec(runs=["mdm"]), runs)
    with pytest.raises(ValueError, match="'nope' is not a run of the study"):
        select_runs(ppo_spec(runs=["nope"]), runs)


def _mdm_study(tmp_path, name, **ppo):
    import yaml
    from test_workflow import REPO

    config = yaml.safe_load((REPO / "tests" / "configs" / "tiny_mdm.yaml").read_text())
    config["ppo"] = {"enabled": True, **QUICK, **ppo}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_the_dag_post_trains_the_causal_runs_before_the_report(tmp_path):
    from test_workflow import planned_jobs, snakemake

    assert planned_jobs(tmp_path, _mdm_study(tmp_path, "on"))["ppo"] == 1  # the causal run only
    proc = snakemake(tmp_path, _mdm_study(tmp_path, "bad", runs=["diffusion"]), "--dry-run", check=False)
    assert proc.returncode != 0 and "'diffusion' trains a masked-diffusion model" in proc.stdout + proc.stderr


@pytest.mark.slow
def test_the_dag_runs_ppo_and_reports_it(tmp_path):
    from test_workflow import snakemake

    snakemake(tmp_path, _mdm_study(tmp_path, "on"), "--cores", "2")
    ppo = tmp_path / "results" / "tiny_mdm" / "ppo" / "baseline"
    assert (ppo / "final" / "config.json").is_file() and (ppo / "samples.jsonl").is_file()
    report = tmp_path / "results" / "tiny_mdm" / "report"
    assert "## PPO post-training" in (report / "summary.md").read_text()
    assert (report / "ppo.png").is_file()
    assert re.search(r"\| baseline \| 3 \|", (report / "summary.md").read_text())
