"""Named zero-shot protocols against the real tools.

``babylm2025`` against the official BabyLM 2025 pipeline (its code in ../shared/reference, its
own command-line entry points run in this process) on the same saved model and the same
files: every subtask's accuracy exactly, the wug correlation and both reading scores to 1e-6,
for BLiMP, the supplement, EWoK, entity tracking, wug adjective and past tense, COMPS (files
written in its format: that data is not in ../shared) and reading (causal, and masked through
its ``mlm`` backend). ``lm_eval`` against lm-evaluation-harness running its own shipped
``blimp`` task template on local files. Then the BOS decision, the ``sdce zero-shot`` command
and its bad input."""

from __future__ import annotations

import json
import math
import runpy
import shutil
import sys
from pathlib import Path

import pytest
import torch
from tokenizers.processors import TemplateProcessing

from sdce import config as cfg
from sdce.cli import main as sdce_main
from sdce.data.tokenizer import load, with_bos
from sdce.evaluation import protocols
from sdce.model import build_model

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
OFFICIAL = SHARED / "reference" / "babylm-evaluation-pipeline-2025"
SUITE = SHARED / "data" / "babylm-eval-2025"
NEEDS_SHARED = pytest.mark.skipif(
    not (OFFICIAL / "evaluation_pipeline").is_dir() or not SUITE.is_dir(),
    reason="../shared/reference (the official BabyLM pipeline) or its data is absent",
)


def _lines(path: Path, n: int) -> list[str]:
    with path.open() as f:
        return [line for _, line in zip(range(n), f, strict=False)]


def _write(path: Path, lines) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line if line.endswith("\n") else line + "\n" for line in lines))


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    """A small suite in the official full_eval layout: real files cut short, one file per
    UID group so the official prediction order is the file order; wug past tense and COMPS
    written in the official format."""
    if not SUITE.is_dir():
        pytest.skip("../shared/data/babylm-eval-2025 is absent")
    root = tmp_path_factory.mktemp("suite")
    for uid in ("anaphor_gender_agreement", "wh_questions_object_gap", "determiner_noun_agreement_1"):
        _write(
            root / "blimp_filtered" / f"{uid}.jsonl", _lines(SUITE / "blimp_filtered" / f"{uid}.jsonl", 30)
        )
    for stem in ("hypernym", "turn_taking"):
        _write(
            root / "supplement_filtered" / f"{stem}.jsonl",
            _lines(SUITE / "supplement_filtered" / f"{stem}.jsonl", 20),
        )
    ewok = [
        line
        for d in ("agent-properties", "spatial-relations")
        for line in _lines(SUITE / "ewok_filtered" / f"{d}.jsonl", 16)
    ]
    _write(root / "ewok_filtered" / "ewok.jsonl", ewok)
    for split in ("regular", "ambiref", "move_contents"):
        _write(
            root / "entity_tracking" / f"{split}.jsonl",
            _lines(SUITE / "entity_tracking" / f"{split}.jsonl", 8),
        )
    _write(
        root / "wug_adj_nominalization" / "wug_adj.jsonl",
        _lines(next((SUITE / "wug_adj_nominalization").glob("*.jsonl")), 40),
    )
    verbs = [
        "blick",
        "dax",
        "wug",
        "glorp",
        "spling",
        "frink",
        "norp",
        "trell",
        "zib",
        "mip",
        "quell",
        "brop",
    ]
    _write(
        root / "wug_past_tense" / "wug_past.jsonl",
        [
            json.dumps(
                {
                    "sentences": f"Today I {v}. Yesterday I {v}ed.\tToday I {v}. Yesterday I {v[0]}o{v[2:]}.",
                    "ratio": (i % 5) / 4,
                }
            )
            for i, v in enumerate(verbs)
        ],
    )
    nouns = [("A robin", "A stone"), ("A cat", "A table"), ("A dog", "A cup"), ("An eagle", "A spoon")]
    for stem in ("comps_base", "comps_wugs"):
        _write(
            root / "comps" / f"{stem}.jsonl",
            [
                json.dumps({"prefix_acceptable": a, "prefix_unacceptable": b, "property_phrase": p})
                for a, b in nouns
                for p in ("can fly.", "has feathers.", "is alive.")
            ],
        )
    (root / "reading").mkdir()
    _write(root / "reading" / "reading_data.csv", _lines(SUITE / "reading" / "reading_data.csv", 251))
    return root  # fmt: skip


@pytest.fixture(scope="module")
def models(tiny_data, tmp_path_factory):
    """One tiny GPT-2 (weights spread so that candidates differ) saved twice: with the study's
    tokenizer as trained (no BOS in its post-processor) and with the BOS post-processor."""
    tok = load(tiny_data / "tokenizer")
    assert tok("a")["input_ids"][0] == tok.bos_token_id  # sdce's BPE tokenizers add BOS
    spec = cfg.validate({"family": "gpt2", "n_layer": 2, "n_embd": 32, "n_head": 2}, "model")
    model = build_model(spec, tok, 512, seed=5).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    root = tmp_path_factory.mktemp("protocol_models")
    out = {}
    plain = load(tiny_data / "tokenizer")
    plain.backend_tokenizer.post_processor = TemplateProcessing(single="$A", pair="$A $B", special_tokens=[])
    for name, t in (("plain", plain), ("bos", with_bos(load(tiny_data / "tokenizer")))):
        model.save_pretrained(root / name)
        t.save_pretrained(root / name)
        out[name] = (model, t, root / name)
    return out


def _official(module: str, argv: list, monkeypatch) -> None:
    """Run one of the official pipeline's entry points in this process, as `python -m`."""
    monkeypatch.syspath_prepend(str(OFFICIAL))
    monkeypatch.setattr(sys, "argv", [module, *map(str, argv)])
    runpy.run_module(module, run_name="__main__", alter_sys=False)


def _report(path: Path) -> dict[str, dict[str, float]]:
    """The official best_temperature_report.txt: {section: {name: value}}."""
    sections, current = {}, None
    for line in path.read_text().splitlines():
        if line.startswith("### "):
            current = sections.setdefault(line[4:], {})
        elif current is not None and ": " in line:
            name, value = line.rsplit(": ", 1)
            current[name] = float(value)
        elif current is not None and line.strip():
            current["value"] = float(line)
    return sections


OFFICIAL_TASKS = {  # our task -> (official --task, folder)
    "blimp": ("blimp", "blimp_filtered"),
    "blimp_supplement": ("blimp", "supplement_filtered"),
    "ewok": ("ewok", "ewok_filtered"),
    "entity_tracking": ("entity_tracking", "entity_tracking"),
    "comps": ("comps", "comps"),
    "wug_adj": ("wug_adj", "wug_adj_nominalization"),
    "wug_past": ("wug_past", "wug_past_tense"),
}


@NEEDS_SHARED
@pytest.mark.parametrize(
    "variant, tasks",
    [("bos", (*OFFICIAL_TASKS, "reading")), ("plain", ("blimp", "ewok"))],  # plain: first word unscored
)
def test_babylm2025_is_the_official_pipeline(models, suite, tmp_path, monkeypatch, variant, tasks):
    model, tok, folder = models[variant]
    ours = protocols.zero_shot(model, tok, suite, "babylm2025", batch_size=8, tasks=tasks)
    assert set(ours["tasks"]) == set(tasks) and not ours["skipped"]
    for task, (official_task, data) in OFFICIAL_TASKS.items():
        if task not in tasks:
            continue
        _official("evaluation_pipeline.sentence_zero_shot.run", [
            "--model_path_or_name", folder, "--backend", "causal", "--task", official_task,
            "--data_path", suite / data, "--output_dir", tmp_path, "--batch_size", 8, "--save_predictions",
        ], monkeypatch)  # fmt: skip
        where = tmp_path / folder.name / "main" / "zero_shot" / "causal" / official_task / data
        report = _report(where / "best_temperature_report.txt")
        predictions = json.loads((where / "predictions.json").read_text())
        mine = ours["tasks"][task]
        if task.startswith("wug"):
            items = [
                json.loads(line)
                for line in (suite / data).glob("*.jsonl").__next__().read_text().splitlines()
            ]
            probs = [p["prob"] for p in predictions[official_task]["predictions"]]
            from scipy.stats import spearmanr

            want = spearmanr(probs, [float(i["ratio"]) for i in items])[0]
            assert mine["score"] == pytest.approx(want, abs=1e-6)
            continue
        # every UID's accuracy exactly, from the official per-item choices
        first = _first_candidates(task, suite / data)
        for uid, preds in predictions.items():
            hits = [p["pred"] == first[uid][k] for k, p in enumerate(preds["predictions"])]
            assert mine["subtasks"]["UID"][uid] == sum(hits) / len(hits), (task, uid)
        # and every line of its report (printed x 100 to two decimals)
        for section, values in report.items():
            if section.startswith("AVERAGE"):
                assert values["value"] == round(100 * mine["score"], 2), task
                continue
            key = section.rsplit(" ", 1)[0]
            key = {"UID": "UID", "FIELD": "field", "LINGUISTICS_TERM": "linguistics_term"}.get(
                key, key.lower()
            )
            for name, value in values.items():
                assert value == pytest.approx(round(100 * mine["subtasks"][key][name], 2), abs=0.0051), (
                    task,
                    key,
                    name,
                )
    if "reading" not in tasks:
        return
    _official("evaluation_pipeline.reading.run", [
        "--model_path_or_name", folder, "--backend", "causal",
        "--data_path", suite / "reading" / "reading_data.csv", "--output_dir", tmp_path,
    ], monkeypatch)  # fmt: skip
    where = tmp_path / folder.name / "main" / "zero_shot" / "causal" / "reading"
    rows = [json.loads(line) for line in (where / "prediction.jsonl").read_text().splitlines()]
    reading = ours["tasks"]["reading"]
    assert reading["surprisal"] == pytest.approx([r["Logprob"] for r in rows], abs=1e-5)
    assert _partial_r2(where / "predictive_power.jsonl", "RT") == pytest.approx(
        ours["leaderboard"]["reading_eye_tracking"], abs=1e-6
    )
    assert _partial_r2(where / "predictive_power_spillover.jsonl", "self") == pytest.approx(
        ours["leaderboard"]["reading_self_paced"], abs=1e-6
    )


def _first_candidates(task: str, folder: Path) -> dict[str, list[str]]:
    """Per UID, in file order, what the official predictions.json records for a correct choice."""
    from sdce.evaluation.official import read_items

    out: dict[str, list[str]] = {}
    for item in read_items(task, folder):
        correct = item.sentences[0] if task == "comps" else item.completions[0]
        out.setdefault(item.meta["UID"], []).append(correct)
    return out


def _partial_r2(path: Path, marker: str) -> float:
    """The official reading score (before x 100) from its per-measure fits."""
    scores = []
    for line in path.read_text().splitlines():
        fit = json.loads(line)
        if marker in fit["Predicted variable"]:
            r2, gain = fit["R2"], fit["Change in R2 from baseline"]
            scores.append(gain / (1 - (r2 - gain)))
    return sum(scores) / len(scores)


def test_bos_post_processor_makes_the_official_protocol_score_the_first_word(models):
    """The decision (docs/evaluation.md): sdce's trained tokenizers put their BOS (the
    document separator) in the post-processor, so that the official pipeline conditions the
    first word on it. Without it two sentences differing only in their first token tie."""
    pair = [("Cats sleep here.", "Dogs sleep here.")]
    for variant, tied in (("plain", True), ("bos", False)):
        model, tok, _ = models[variant]
        from sdce.evaluation.official import phrase_logprobs

        good, bad = phrase_logprobs(model, tok, list(pair[0]), list(pair[0]))
        first_good, first_bad = (tok(s, add_special_tokens=False)["input_ids"] for s in pair[0])
        if first_good[1:] == first_bad[1:]:  # the pair differs in the first token only
            assert (good == bad) is tied
    # with BOS, the official score of a whole sentence is sdce's own (first token conditioned)
    from sdce.evaluation.official import phrase_logprobs
    from sdce.evaluation.scoring import sequence_logprobs

    model, tok, _ = models["bos"]
    texts = ["the cat sat on the mat.", "Many girls have praised themselves."]
    assert phrase_logprobs(model, tok, texts, texts) == pytest.approx(
        sequence_logprobs(model, tok, texts), abs=1e-4
    )


@NEEDS_SHARED
def test_lm_eval_protocol_is_the_harness_blimp_task(models, suite, tmp_path, monkeypatch):
    pytest.importorskip("lm_eval")
    import datasets.config
    import huggingface_hub.constants
    import lm_eval

    for name in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.setenv(name, "1")
        monkeypatch.setattr(datasets.config, name, True, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    template = Path(lm_eval.__file__).parent / "tasks" / "blimp" / "_template_yaml"
    files = sorted((suite / "blimp_filtered").glob("*.jsonl"))
    for f in files:  # the harness's own template; only where the data come from is changed
        (tmp_path / f"{f.stem}.yaml").write_text(
            f"include: {template}\ntask: local_blimp_{f.stem}\ndataset_path: json\ndataset_name: null\n"
            f"dataset_kwargs:\n  data_files: {{train: '{f}'}}\n  cache_dir: '{tmp_path / 'hf_cache'}'\n"
        )
    model, tok, _ = models["plain"]
    out = simple_evaluate(
        model=HFLM(pretrained=model, tokenizer=tok, batch_size=8, device="cpu"),
        tasks=[f"local_blimp_{f.stem}" for f in files],
        task_manager=TaskManager(include_path=str(tmp_path), include_defaults=False),
    )
    ours = protocols.zero_shot(model, tok, suite / "blimp_filtered", "lm_eval")["tasks"]["blimp"]
    for f in files:
        assert ours["subtasks"]["UID"][f.stem] == pytest.approx(
            out["results"][f"local_blimp_{f.stem}"]["acc,none"], abs=1e-12
        )
    sdce_own = protocols.zero_shot(model, tok, suite / "blimp_filtered", "sdce")["tasks"]["blimp"]
    assert sdce_own["score"] != ours["score"]  # the leading space and the ties are not sdce's


def test_find_tasks_reads_the_official_layouts_and_single_task_folders(suite, tmp_path):
    assert protocols.find_tasks(suite) == {
        task: suite / folder
        for folder, task in protocols.FOLDERS.items()
        if "fast" not in folder  # the suite is in the full_eval layout
    }
    assert set(protocols.find_tasks(suite)) == {*OFFICIAL_TASKS, "reading"}
    assert protocols.find_tasks(suite / "ewok_filtered") == {"ewok": suite / "ewok_filtered"}
    for folder, task in (
        ("blimp_filtered", "blimp"),
        ("supplement_filtered", "blimp_supplement"),
        ("ewok_filtered", "ewok"),
    ):
        shutil.copytree(suite / folder, tmp_path / f"my_{folder}")
        assert protocols.find_tasks(tmp_path / f"my_{folder}") == {task: tmp_path / f"my_{folder}"}
    fast = tmp_path / "fast_eval"
    shutil.copytree(suite / "blimp_filtered", fast / "blimp_fast")
    assert protocols.find_tasks(fast) == {"blimp": fast / "blimp_fast"}


@NEEDS_SHARED
def test_zero_shot_command_writes_every_subtask(models, suite, tmp_path):
    _, _, folder = models["bos"]
    out = tmp_path / "scores.json"
    code = sdce_main(["zero-shot", "--model", str(folder), "--data", str(suite / "blimp_filtered"),
                      "--protocol", "babylm2025", "--out", str(out)])  # fmt: skip
    assert code == 0
    result = json.loads(out.read_text())
    assert result["protocol"] == "babylm2025"
    uids = result["tasks"]["blimp"]["subtasks"]["UID"]
    assert set(uids) == {"anaphor_gender_agreement", "wh_questions_object_gap", "determiner_noun_agreement_1"}
    assert result["leaderboard"]["blimp"] == pytest.approx(sum(uids.values()) / 3)
    assert all(0 <= v <= 1 and not math.isnan(v) for v in uids.values())


@pytest.mark.parametrize(
    "case, message",
    [
        ("protocol", "unknown protocol 'official'; known: babylm2025, lm_eval, sdce"),
        ("empty", "holds no zero-shot task"),
        ("tokenizer", "has no tokenizer"),
        ("none_of", "holds none of protocol lm_eval's tasks"),
    ],
)
def test_bad_input_is_one_line(models, tmp_path, capsys, case, message):
    _, tok, folder = models["plain"]
    data = tmp_path / "data"
    data.mkdir()
    model = folder
    protocol = "official" if case == "protocol" else ("lm_eval" if case == "none_of" else "babylm2025")
    if case in ("protocol", "tokenizer", "none_of"):
        _write(
            data / "ewok.jsonl",
            [json.dumps({"Domain": "d", "Context1": "a b.", "Target1": "c.", "Target2": "d."})],
        )
    if case == "tokenizer":
        model = tmp_path / "no_tok"
        shutil.copytree(folder, model)
        for f in model.iterdir():
            if "token" in f.name or f.name in ("vocab.json", "merges.txt"):
                f.unlink()
    code = sdce_main(["zero-shot", "--model", str(model), "--data", str(data), "--protocol", protocol,
                      "--out", str(tmp_path / "x.json")])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0], err
    assert not (tmp_path / "x.json").exists()


@pytest.fixture(scope="module")
def masked(tiny_data, tmp_path_factory):
    """A tiny ModernBERT (weights spread) saved with its tokenizer, as a masked-diffusion run saves it."""
    from sdce.data.tokenizer import with_mask_token

    tok = with_mask_token(load(tiny_data / "tokenizer"))
    spec = cfg.validate({"family": "modernbert", "n_layer": 2, "n_embd": 32, "n_head": 2}, "model")
    model = build_model(spec, tok, 512, seed=3).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    out = tmp_path_factory.mktemp("masked") / "mdm"
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return model, tok, out


@NEEDS_SHARED
def test_babylm2025_reading_of_a_masked_model_is_the_official_mlm_backend(
    masked, suite, tmp_path, monkeypatch
):
    """Reading for a bidirectional model: the official reading run with `--backend mlm` (three
    mask tokens appended, the first one read) on the same saved model and CSV gives our
    surprisals to 1e-5 and both scores to 1e-6."""
    model, tok, folder = masked
    ours = protocols.zero_shot(model, tok, suite, "babylm2025", batch_size=8, tasks=["reading"])
    _official("evaluation_pipeline.reading.run", [
        "--model_path_or_name", folder, "--backend", "mlm",
        "--data_path", suite / "reading" / "reading_data.csv", "--output_dir", tmp_path,
    ], monkeypatch)  # fmt: skip
    where = tmp_path / folder.name / "main" / "zero_shot" / "mlm" / "reading"
    rows = [json.loads(line) for line in (where / "prediction.jsonl").read_text().splitlines()]
    reading = ours["tasks"]["reading"]
    assert reading["surprisal"] == pytest.approx([r["Logprob"] for r in rows], abs=1e-5)
    assert _partial_r2(where / "predictive_power.jsonl", "RT") == pytest.approx(
        ours["leaderboard"]["reading_eye_tracking"], abs=1e-6
    )
    assert _partial_r2(where / "predictive_power_spillover.jsonl", "self") == pytest.approx(
        ours["leaderboard"]["reading_self_paced"], abs=1e-6
    )
