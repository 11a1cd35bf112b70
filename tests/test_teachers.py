"""LM teachers with their own tokenizer: signal, cache, bad input, LoRA fine-tuning."""

import json
import shutil

import numpy as np
import pytest
import torch
from tiny_training import tiny_job

from sdce import config as cfg
from sdce import objectives, plan
from sdce.data.batches import windows
from sdce.data.corpus import read_documents
from sdce.data.shards import load_shard
from sdce.data.tokenizer import load
from sdce.model import build_model
from sdce.teachers.cache import CachedTeacher, CacheMismatch, build_caches
from sdce.teachers.lm import LMTeacher, TeacherError, describe_teacher, load_teacher_lm
from sdce.train import train

torch.set_num_threads(1)
BLOCK = 32
SURROGATE = {"top_k": 6, "probability_threshold": 0.02, "temperature": 1.0}
KL = {"top_k": 8, "probability_threshold": 0.0, "temperature": 2.0}


def cross_word_bpe(texts, vocab_size: int):
    """A byte-level BPE whose merges may cross spaces (no pre-tokenizer regex), so it
    splits text differently from the student's word-bounded BPE."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    eot = "<|endoftext|>"
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[eot],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=eot, eos_token=eot, unk_token=eot)


@pytest.fixture(scope="module")
def teacher_dir(tiny_data, tmp_path_factory):
    """A small random GPT-2 with its own BPE (300 types, merges across spaces), described
    for the student's 400-type BPE."""
    root = tmp_path_factory.mktemp("teacher")
    docs = read_documents(tiny_data / "train.jsonl")[:100]
    tok = cross_word_bpe((d["text"] for d in docs), 300)
    spec = cfg.validate({"n_layer": 1, "n_embd": 32, "n_head": 2}, "model")
    model = build_model(spec, tok, 128, seed=0)
    with torch.no_grad():  # sharper than a fresh init: some tokens pass the 0.02 threshold
        model.lm_head.weight.mul_(8.0)
    model.save_pretrained(root / "model")
    tok.save_pretrained(root / "model")
    teacher_spec = cfg.validate({}, "teacher")
    describe_teacher(
        teacher_spec, "surrogate", str(root / "model"), tiny_data / "tokenizer", root / "teacher.json"
    )
    return root


@pytest.fixture(scope="module")
def student_tok(tiny_data):
    return load(tiny_data / "tokenizer")


def batch(tiny_data, offsets):
    data, _ = load_shard(tiny_data / "train.bin")
    return windows(data, np.asarray(offsets), BLOCK)


def test_surrogate_signal_on_two_tokenizers_matches_a_direct_teacher_run(tiny_data, teacher_dir, student_tok):
    teacher = LMTeacher.from_descriptor(teacher_dir / "teacher.json", student_tok, SURROGATE)
    assert not teacher.identity
    x, _ = batch(tiny_data, [0, 320, 1000])
    sig = teacher.signal(x)
    valid = sig.valid
    assert 0.5 < valid.float().mean().item() < 1.0  # the tokenizers split differently
    assert (sig.probs[~valid] == 0).all() and (sig.rest[~valid] == 0).all()
    assert (sig.ids < len(student_tok)).all()
    assert ((sig.probs == 0) | (sig.probs >= 0.02)).all()
    assert (sig.probs.sum(-1) + sig.rest <= 1 + 1e-5).all()
    # reference: the teacher run on its own tokens up to the aligned position, top-k mapped by hand
    model, _ = load_teacher_lm(teacher_dir / "model")
    realigned = teacher.realigner.realign(x[1])
    t2s = teacher.alignment.teacher_to_student
    checked = 0
    for t in range(BLOCK):
        j = int(realigned.teacher_pos[t])
        if j < 0:
            continue
        with torch.no_grad():
            q = torch.softmax(model(input_ids=realigned.teacher_ids[None, : j + 1]).logits[0, -1], -1)
        top_q, top_i = q.topk(6)
        expect = {
            int(t2s[i]): float(p) for p, i in zip(top_q, top_i, strict=True) if t2s[i] >= 0 and p >= 0.02
        }
        got = {int(i): float(p) for i, p in zip(sig.ids[1, t], sig.probs[1, t], strict=True) if p > 0}
        assert got.keys() == expect.keys()
        assert list(got.values()) == pytest.approx(list(expect.values()), rel=1e-4)
        mapped = float(q[teacher.alignment.teacher_mask].sum())
        assert float(sig.rest[1, t]) == pytest.approx(mapped - sum(expect.values()), abs=1e-5)
        checked += 1
    assert checked > BLOCK // 2


def test_same_tokenizer_teacher_skips_realignment_and_gives_a_dense_signal(tiny_data, student_tok, tmp_path):
    model = build_model(cfg.validate({"n_layer": 1, "n_embd": 32, "n_head": 2}, "model"), student_tok, 64, 1)
    teacher = LMTeacher(
        model.eval(), student_tok, student_tok, top_k=None, probability_threshold=0.0, temperature=2.0
    )
    assert teacher.identity
    x, y = batch(tiny_data, [0, 64])
    sig = teacher.signal(x)
    with torch.no_grad():
        ref = torch.log_softmax(model(input_ids=x).logits / 2.0, -1)
    torch.testing.assert_close(sig.log_probs, ref)
    out = objectives.compute_named("kl", ref * 2.0, y, sig, 1.0, alpha=0.0, temperature=2.0)
    assert abs(out["kl"].item()) < 1e-5  # a student equal to its teacher


@pytest.fixture(scope="module")
def caches(tiny_data, teacher_dir, student_tok, tmp_path_factory):
    """Both signals from one teacher pass over the training shard."""
    root = tmp_path_factory.mktemp("caches") / "cache"
    teacher = LMTeacher.from_descriptor(teacher_dir / "teacher.json", student_tok, SURROGATE)
    spec = cfg.validate({"signals": [SURROGATE, KL], "context": BLOCK, "batch_size": 32}, "teacher_cache")
    infos = build_caches(teacher, tiny_data / "train.bin", spec, root)
    return root, teacher, infos


def test_cache_and_online_teacher_give_the_same_loss(tiny_data, caches, student_tok, teacher_dir):
    root, _, infos = caches
    assert sorted(infos) == ["k6_p0.02_t1", "k8_p0_t2"]
    offsets = [0, BLOCK * 7, BLOCK * 40]  # windows at chunk starts: the teacher sees the same context
    x, y = batch(tiny_data, offsets)
    logits = torch.randn(3, BLOCK, 400)
    for objective, spec, opts in (
        ("surrogate", SURROGATE, {"weighting": "probability"}),
        ("kl", KL, {"alpha": 0.5, "temperature": 2.0}),
    ):
        teacher = LMTeacher.from_descriptor(teacher_dir / "teacher.json", student_tok, spec)
        cached = CachedTeacher.load(root, spec, train_shard=tiny_data / "train.bin")
        online = objectives.compute_named(objective, logits, y, teacher.signal(x), 0.8, **opts)
        offline = objectives.compute_named(
            objective, logits, y, cached.signal(x, offsets=offsets), 0.8, **opts
        )
        for key in ("loss", "guidance", "teacher_mass", "aligned"):
            assert offline[key].item() == pytest.approx(online[key].item(), rel=2e-3), (objective, key)
        info = cached.info
        assert info["bytes_per_token"] == pytest.approx(spec["top_k"] * (2 + 2) + 2 + 1)
        assert 0.5 < info["aligned_fraction"] < 1.0
        assert 0 < info["mean_listed_mass"] <= info["mean_mapped_mass"] <= 1 + 1e-6


def test_a_cache_for_another_tokenizer_shard_or_signal_is_refused(tiny_data, caches, tmp_path):
    root, _, _ = caches
    shard = tiny_data / "train.bin"
    with pytest.raises(CacheMismatch, match="another training shard"):
        CachedTeacher.load(root, SURROGATE, train_shard=tiny_data / "validation.bin")
    other = tmp_path / "train.bin"
    shutil.copy(shard, other)
    meta = json.loads((tiny_data / "train.bin.json").read_text())
    (tmp_path / "train.bin.json").write_text(json.dumps({**meta, "tokenizer_hash": "another"}))
    with pytest.raises(CacheMismatch, match="another student tokenizer"):
        CachedTeacher.load(root, SURROGATE, train_shard=other)
    with pytest.raises(CacheMismatch, match="top_k=6, the run asks for top_k=5"):
        CachedTeacher.load(root / "k6_p0.02_t1", {**SURROGATE, "top_k": 5}, train_shard=shard)
    guidance = cfg.validate({"objective": "surrogate", "surrogate": {"top_k": 5}}, "guidance")
    with pytest.raises(
        objectives.ObjectiveError,
        match="holds the signals k6_p0.02_t1, k8_p0_t2; the run asks for k5_p0.02_t1",
    ):
        objectives.load_teacher(guidance, str(root), None, "cpu", train_shard=shard)


def test_bad_teacher_input_fails_before_training(tiny_data, teacher_dir, student_tok, tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    # no usable overlap: a word-level vocabulary of Greek words shares nothing but the eos
    words = Tokenizer(models.WordLevel({"<|endoftext|>": 0, "αβγ": 1, "δεζ": 2}, unk_token="<|endoftext|>"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    greek = PreTrainedTokenizerFast(tokenizer_object=words, eos_token="<|endoftext|>")
    model = build_model(cfg.validate({"n_layer": 1, "n_embd": 16, "n_head": 2}, "model"), greek, 16, 0)
    model.save_pretrained(tmp_path / "greek")
    greek.save_pretrained(tmp_path / "greek")
    with pytest.raises(TeacherError, match="vocabulary overlap too small"):
        describe_teacher(
            cfg.validate({}, "teacher"),
            "g",
            str(tmp_path / "greek"),
            tiny_data / "tokenizer",
            tmp_path / "g.json",
        )
    with pytest.raises(TeacherError, match="top_k=301 is larger than the teacher's vocabulary"):
        LMTeacher.from_descriptor(teacher_dir / "teacher.json", student_tok, {**SURROGATE, "top_k": 301})
    for bad, key in (({"temperature": 0}, "kl.temperature"), ({"alpha": 1.5}, "kl.alpha")):
        with pytest.raises(cfg.ConfigError, match=f"guidance.{key}"):
            cfg.validate({"objective": "kl", "kl": bad}, "guidance", where="guidance")
    study = cfg.load("config/config.yaml")
    study["runs"]["kl"]["guidance"]["teacher"] = "nobody"
    with pytest.raises(cfg.ConfigError, match="runs.kl.guidance.teacher: 'nobody' is not one of teachers"):
        plan.plan(study)
    study["runs"]["kl"]["guidance"].update(teacher="surrogate", kl={"top_k": None})
    with pytest.raises(cfg.ConfigError, match="dense.*teacher_source: online"):
        plan.plan(study)


def train_spec(objective, **guidance):
    return cfg.validate(
        {
            "model": {"n_layer": 1, "n_embd": 32, "n_head": 2},
            "training": {
                "steps": 4,
                "batch_size": 4,
                "block_size": BLOCK,
                "eval_interval": 4,
                "eval_tokens": 512,
                "log_interval": 2,
                "checkpoint_interval": 4,
                "warmup_steps": 1,
            },
            "guidance": {"objective": objective, **guidance},
        },
        "run",
    )


def train_on(tiny_data, run, out, tokenizer_dir, teacher_path=None, **kw):
    return train(tiny_job(tiny_data, out, run, seed=1, teacher=teacher_path, tokenizer=tokenizer_dir, **kw))


@pytest.mark.parametrize(
    "objective,guidance,source",
    [
        ("surrogate", {"schedule": "cosine", "schedule_steps": None}, "cache"),
        ("kl", {"schedule": "constant", "kl": {"top_k": None}, "teacher_source": "online"}, "descriptor"),
    ],
)
def test_training_logs_teacher_mass_from_cache_or_online_teacher(
    tiny_data, teacher_dir, caches, tmp_path, objective, guidance, source
):
    path = caches[0] if source == "cache" else teacher_dir / "teacher.json"
    train_on(tiny_data, train_spec(objective, **guidance), tmp_path / "r", tiny_data / "tokenizer", str(path))
    records = [json.loads(r) for r in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in records if r["kind"] == "train"]
    assert all("teacher_mass" in r and 0.5 < r["aligned"] < 1.0 for r in logged)
    if objective == "surrogate":  # cosine over the whole run (4 steps), logged at steps 1 and 3
        expected = [0.5 * (1 + np.cos(np.pi * t / 4)) for t in (1, 3)]
        assert [r["weight"] for r in logged] == pytest.approx(expected)


def test_lora_finetune_runs_on_cpu_for_two_steps_and_merges_into_the_teacher(
    tiny_data, student_tok, tmp_path
):
    pytest.importorskip("peft")
    base = build_model(cfg.validate({"n_layer": 1, "n_embd": 32, "n_head": 2}, "model"), student_tok, 64, 2)
    base.save_pretrained(tmp_path / "base")
    student_tok.save_pretrained(tmp_path / "base")
    spec = cfg.validate(
        {
            "name_or_path": str(tmp_path / "base"),
            "finetune": "lora",
            "model": {"lora": {"r": 4, "alpha": 8}},
            "training": {
                "steps": 2,
                "batch_size": 2,
                "block_size": BLOCK,
                "eval_interval": 2,
                "eval_tokens": 256,
                "warmup_steps": 0,
                "learning_rate": 0.01,
            },
        },
        "teacher",
    )
    assert plan.tokenizer_spec(spec) == {
        "kind": "pretrained",
        "path": str(tmp_path / "base"),
        "vocab_size": 2000,
        "min_frequency": 2,
        "special_tokens": [],
    }
    run = plan.training_run(spec)
    assert run["model"]["adapter"] == "lora" and run["model"]["from_pretrained"] == str(tmp_path / "base")
    summary = train_on(tiny_data, run, tmp_path / "ft", tmp_path / "base")
    assert summary["steps"] == 2
    assert (tmp_path / "ft" / "model" / "adapter_config.json").is_file()
    merged, _ = load_teacher_lm(tmp_path / "ft" / "model")
    x, _ = batch(tiny_data, [0])
    with torch.no_grad():
        assert not torch.allclose(merged(input_ids=x).logits, base(input_ids=x).logits)
    if not torch.cuda.is_available():
        qlora = cfg.validate({**run["model"], "adapter": "qlora"}, "model")
        with pytest.raises(ValueError, match="qlora needs a CUDA device"):
            build_model(qlora, student_tok, BLOCK, 0)


def test_lora_run_resumes_from_its_adapter_checkpoint(tiny_data, student_tok, tmp_path):
    pytest.importorskip("peft")
    base = build_model(cfg.validate({"n_layer": 1, "n_embd": 32, "n_head": 2}, "model"), student_tok, 64, 2)
    base.save_pretrained(tmp_path / "base")
    student_tok.save_pretrained(tmp_path / "base")
    run = cfg.validate(
        {
            "model": {"from_pretrained": str(tmp_path / "base"), "adapter": "lora", "lora": {"r": 4}},
            "training": {
                "steps": 4,
                "batch_size": 2,
                "block_size": BLOCK,
                "eval_interval": 2,
                "eval_tokens": 256,
                "warmup_steps": 0,
                "checkpoint_interval": 2,
                "log_interval": 1,
            },
            "guidance": {"objective": "ce"},
        },
        "run",
    )
    full = train_on(tiny_data, run, tmp_path / "full", tmp_path / "base")
    cut = tmp_path / "cut"
    assert train_on(tiny_data, run, cut, tmp_path / "base", stop_after=2) == {"stopped_at": 2}
    resumed = train_on(tiny_data, run, cut, tmp_path / "base")
    # resumes from the adapter weights, bit-identical to the uninterrupted run: the LoRA
    # init is seeded (build_model) and the dropout RNG continues from the checkpoint
    assert resumed["final_val_loss"] == full["final_val_loss"]

    def curve(out):
        recs = [json.loads(r) for r in (out / "metrics.jsonl").read_text().splitlines()]
        return [(r["kind"], r["step"], r.get("loss", r.get("val_loss"))) for r in recs]

    assert curve(tmp_path / "cut") == curve(tmp_path / "full")
    from safetensors.torch import load_file

    weights = [load_file(tmp_path / d / "model" / "adapter_model.safetensors") for d in ("full", "cut")]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
