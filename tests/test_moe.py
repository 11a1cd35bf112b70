"""Mixture-of-experts students (model.family mixtral and moep): the MoE layers against dense
ones and against their formulas, MoE-P's save/load round trip in sdce and in a process that
never imports sdce (trust_remote_code), generation, real training through sdce's loop with
the router term and the expert load logged, lm-evaluation-harness and the official BabyLM
pipeline scoring a saved MoE-P, and check-config refusing bad MoE shapes."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from tiny_training import tiny_run, train_tiny

import sdce.moep.modeling_moep as modeling
from sdce import cli
from sdce import config as cfg
from sdce.data.tokenizer import load
from sdce.evaluation.minimal_pairs import evaluate_minimal_pairs, load_minimal_pairs
from sdce.evaluation.scoring import sequence_logprobs
from sdce.model import build_model, expert_load, load_model
from sdce.moep import MoEPConfig, MoEPForCausalLM
from sdce.moep.modeling_moep import MoEPBlocks, MoEPParallelLayer, MoEPProjection, MoEPRouter, router_aux_loss

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
OFFICIAL = SHARED / "reference" / "babylm-evaluation-pipeline-2025"
BLIMP = SHARED / "data" / "blimp"
TEXTS = ["the cat sat on the mat .", "a dog ran to the park", "the the the"]
PAIRS = [
    ("the cat sat on the mat.", "the mat sat on the cat."),
    ("a man walks to the old house.", "a man walk to the old house."),
    ("the dog saw the cat.", "a dog saw the cat."),
    ("Every boy likes his teacher.", "Every boy like his teacher."),
    ("these children were running.", "these children was running."),
]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_config(**kw) -> MoEPConfig:
    base = dict(vocab_size=50, max_position_embeddings=32, hidden_size=16, num_attention_heads=2,
                num_hidden_layers=3, parallel_hidden_size=8, parallel_num_attention_heads=2,
                resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)  # fmt: skip
    config = MoEPConfig(**{**base, **kw})
    config._attn_implementation = "sdpa"
    return config


def spread(module, seed=0, std=0.3):
    """Weights wide enough that outputs, routing and sentence scores differ clearly."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return module


def moe_model(family: str) -> dict:
    moe = {"n_experts": 4, "experts_per_token": 2, "parallel_n_embd": 16, "parallel_n_head": 2}
    return {"family": family, "n_layer": 3, "n_embd": 32, "n_head": 2, "moe": moe}


def switch_loss(logits: torch.Tensor, k: int, keep: torch.Tensor | None = None) -> float:
    """Switch Transformer's balance loss written out: E * sum_e f_e P_e over the kept tokens,
    f_e the fraction of top-k assignments to e per token, P_e e's mean router probability."""
    rows = [n for n in range(logits.shape[0]) if keep is None or keep[n]]
    E = logits.shape[1]
    probs = torch.softmax(logits.double(), -1)
    chosen = [set(torch.topk(probs[n], k).indices.tolist()) for n in rows]
    f = [sum(e in c for c in chosen) / len(rows) for e in range(E)]
    P = [sum(probs[n, e].item() for n in rows) / len(rows) for e in range(E)]
    return E * sum(fe * pe for fe, pe in zip(f, P, strict=True))


# ----------------------------------------------------------------------------- layers


def test_moe_projection_with_identical_experts_is_one_linear_layer():
    proj = spread(MoEPProjection(tiny_config(), 16, 8))
    W, b = torch.randn(8, 16), torch.randn(8)
    with torch.no_grad():
        proj.weight.copy_(W.expand_as(proj.weight))
        proj.bias.copy_(b.expand_as(proj.bias))
    x = torch.randn(3, 5, 16)
    y, logits = proj(x)
    assert logits.shape == (15, 4)
    torch.testing.assert_close(y, F.linear(x, W, b))


def test_parallel_layer_with_identical_blocks_is_one_block():
    config = tiny_config()
    layer = spread(MoEPParallelLayer(config, layer_idx=1), seed=1)
    one = spread(MoEPBlocks(config, 8, 2, 32, paths=1, layer_idx=1), seed=2)
    with torch.no_grad():
        for name, p in one.named_parameters():
            getattr(layer.blocks, name).copy_(p.expand_as(getattr(layer.blocks, name)))
    x = torch.randn(2, 6, 8)
    torch.testing.assert_close(layer(x)[0], one(x)[0])


def test_a_dense_block_is_a_gpt2_block():
    from transformers import GPT2Config
    from transformers.models.gpt2.modeling_gpt2 import GPT2Block

    gpt2 = GPT2Config(
        n_embd=16, n_head=2, n_inner=64, resid_pdrop=0, attn_pdrop=0, attn_implementation="sdpa"
    )
    ref = spread(GPT2Block(gpt2, layer_idx=0), seed=3).eval()
    mine = MoEPBlocks(tiny_config(), 16, 2, 64, paths=1, layer_idx=0).eval()
    # GPT-2's Conv1D stores (in, out): its transpose is a Linear weight
    modules = {"ln_1": ref.ln_1, "qkv": ref.attn.c_attn, "o": ref.attn.c_proj, "ln_2": ref.ln_2,
               "up": ref.mlp.c_fc, "down": ref.mlp.c_proj}  # fmt: skip
    with torch.no_grad():
        for name, module in modules.items():
            weight = module.weight if name.startswith("ln_") else module.weight.T
            getattr(mine, f"{name}_weight").copy_(weight[None])
            getattr(mine, f"{name}_bias").copy_(module.bias[None])
    x = torch.randn(2, 7, 16)
    torch.testing.assert_close(mine(x)[0], ref(x))  # causal: no mask means is_causal in SDPA


def tiny_mixtral(tiny_data):
    return build_model(cfg.validate(moe_model("mixtral"), "model"), load(tiny_data / "tokenizer"), 32, seed=0)


def test_mixtral_moe_block_with_identical_experts_is_one_dense_mlp(tiny_data):
    model = tiny_mixtral(tiny_data)
    block = spread(model.model.layers[0].mlp, seed=4)  # MixtralSparseMoeBlock
    experts = block.experts
    with torch.no_grad():
        experts.gate_up_proj.copy_(experts.gate_up_proj[0].expand_as(experts.gate_up_proj))
        experts.down_proj.copy_(experts.down_proj[0].expand_as(experts.down_proj))
    x = torch.randn(2, 5, 32)
    gate, up = F.linear(x, experts.gate_up_proj[0]).chunk(2, dim=-1)
    torch.testing.assert_close(block(x), F.linear(F.silu(gate) * up, experts.down_proj[0]))


# ----------------------------------------------------------------------------- routing and the aux loss


def test_routing_takes_the_top_k_and_renormalises_their_probabilities():
    router = spread(MoEPRouter(8, 5, 3), seed=5)
    x = torch.randn(20, 8)
    _, weights, index = router(x)
    probs = torch.softmax(x @ router.weight.T, dim=-1)
    for n in range(20):
        order = sorted(range(5), key=lambda e: -probs[n, e].item())[:3]
        assert index[n].tolist() == order
        top = probs[n, order]
        torch.testing.assert_close(weights[n], top / top.sum())
    # an MoE projection sums its chosen experts' outputs with those weights
    proj = spread(MoEPProjection(tiny_config(num_local_experts=5, num_experts_per_tok=3), 8, 4), seed=6)
    y, _ = proj(x[None])
    _, weights, index = proj.router(x)
    for n in range(20):
        experts = index[n].tolist()
        want = sum(
            w * (proj.weight[e] @ x[n] + proj.bias[e]) for w, e in zip(weights[n], experts, strict=True)
        )
        torch.testing.assert_close(y[0, n], want)


def test_parallel_layer_mixes_its_chosen_blocks_outputs():
    layer = spread(MoEPParallelLayer(tiny_config(), layer_idx=1), seed=7)
    x = torch.randn(2, 5, 8)
    y, logits = layer(x)
    every = layer.blocks(x).reshape(4, 10, 8).transpose(0, 1)  # (tokens, blocks, d)
    probs = torch.softmax(logits, dim=-1)
    for n in range(10):
        top = torch.topk(probs[n], 2)
        want = sum(w / top.values.sum() * every[n, e] for w, e in zip(top.values, top.indices, strict=True))
        torch.testing.assert_close(y.reshape(10, 8)[n], want)


def test_aux_loss_is_switch_transformers_per_router_averaged():
    g = torch.Generator().manual_seed(8)
    logits = (torch.randn(30, 4, generator=g), 3 * torch.randn(30, 4, generator=g))
    want = sum(switch_loss(lg, 2) for lg in logits) / 2
    assert router_aux_loss(logits, 4, 2).item() == pytest.approx(want, rel=1e-6)
    # padding is left out: a (B, T) mask over the 30 = 3 x 10 rows
    mask = (torch.arange(10) < 7).repeat(3, 1)
    want = sum(switch_loss(lg, 2, keep=mask.reshape(-1)) for lg in logits) / 2
    assert router_aux_loss(logits, 4, 2, mask).item() == pytest.approx(want, rel=1e-6)
    # balanced routing (each expert chosen by half the tokens, equal mean probabilities) gives k
    balanced = 5.0 * torch.tensor([[1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 1], [1, 0, 0, 1]])
    assert router_aux_loss((balanced,), 4, 2).item() == pytest.approx(2.0, rel=1e-6)


def test_model_aux_loss_enters_its_loss_once_and_only_with_labels():
    model = spread(MoEPForCausalLM(tiny_config(router_aux_loss_coef=0.3)), seed=9).eval()
    x = torch.randint(0, 50, (2, 9))
    out = model(input_ids=x)
    assert out.loss is None and len(out.router_logits) == 3  # shrink, 1 parallel layer, grow
    assert out.aux_loss.item() == pytest.approx(router_aux_loss(out.router_logits, 4, 2).item())
    with_labels = model(input_ids=x, labels=x)
    ce = F.cross_entropy(out.logits[:, :-1].reshape(-1, 50), x[:, 1:].reshape(-1))
    assert with_labels.loss.item() == pytest.approx(ce.item() + 0.3 * out.aux_loss.item(), rel=1e-6)


def test_mixtral_aux_loss_is_switch_transformers_over_all_layers(tiny_data):
    out = spread(tiny_mixtral(tiny_data), seed=10).eval()(input_ids=torch.randint(0, 400, (2, 8)))
    assert out.loss is None
    assert out.aux_loss.item() == pytest.approx(switch_loss(torch.cat(out.router_logits), 2), rel=1e-5)


def test_expert_load_from_router_logits():
    # 4 tokens, top-1 of 4 experts: three go to expert 0, one to expert 1 -> f = (3/4, 1/4, 0, 0)
    logits = torch.tensor([[9.0, 0, 0, 0], [9, 0, 0, 0], [9, 0, 0, 0], [0, 9, 0, 0]])
    out = type("Out", (), {"router_logits": (logits, torch.eye(4))})()  # the second router is balanced
    load = expert_load(out, top_k=1)
    f = torch.tensor([0.75, 0.25, 0, 0])
    assert load["expert_load_max"].item() == pytest.approx(3.0)
    assert load["expert_load_cv"].item() == pytest.approx((f.std(unbiased=False) / f.mean()).item() / 2)
    assert expert_load(out, top_k=None) == {}


# ----------------------------------------------------------------------------- a saved MoE-P


@pytest.fixture(scope="module")
def saved(tiny_data, tmp_path_factory):
    """A tiny MoE-P built by sdce (weights spread so that scores differ), saved with its
    tokenizer as a training run publishes its model."""
    tok = load(tiny_data / "tokenizer")
    model = spread(build_model(cfg.validate(moe_model("moep"), "model"), tok, 64, seed=3), seed=11).eval()
    out = tmp_path_factory.mktemp("moep") / "model"
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return model, tok, out


def _ids(tok, texts):
    enc = tok(texts, return_tensors="pt", padding=True) if len(texts) > 1 else tok(texts, return_tensors="pt")
    return enc["input_ids"], enc.get("attention_mask")


def test_saved_moep_carries_its_code_and_loads_back_in_sdce(saved):
    model, tok, out = saved
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "moep"
    assert config["auto_map"] == {
        "AutoConfig": "configuration_moep.MoEPConfig",
        "AutoModel": "modeling_moep.MoEPModel",
        "AutoModelForCausalLM": "modeling_moep.MoEPForCausalLM",
    }
    for name in ("configuration_moep.py", "modeling_moep.py"):
        assert (out / name).read_text() == (Path(modeling.__file__).parent / name).read_text()
    loaded = load_model(out).eval()
    assert type(loaded) is MoEPForCausalLM
    ids, _ = _ids(tok, TEXTS[:1])
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=ids).logits, model(input_ids=ids).logits)


FRESH = """
import json, sys, torch
from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer
folder, text = sys.argv[1], sys.argv[2]
model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
base = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
tok = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
ids = tok(text, return_tensors="pt").input_ids
with torch.no_grad():
    logits = model(input_ids=ids).logits[0]
    hidden = base(input_ids=ids).last_hidden_state[0]
generated = model.generate(ids, max_new_tokens=6, do_sample=False)[0]
print(json.dumps({"sdce": [m for m in sys.modules if m.split(".")[0] == "sdce"],
                  "classes": [type(model).__module__, type(model).__name__, type(base).__name__],
                  "logits": logits.tolist(), "hidden": hidden.tolist(), "generated": generated.tolist()}))
"""


def test_a_process_without_sdce_loads_it_with_trust_remote_code(saved, tmp_path):
    model, tok, out = saved
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-c", FRESH, str(out), TEXTS[0]]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["sdce"] == []
    assert got["classes"][0].startswith("transformers_modules.") and got["classes"][1:] == [
        "MoEPForCausalLM",
        "MoEPModel",
    ]
    ids, _ = _ids(tok, TEXTS[:1])
    with torch.no_grad():
        theirs = model(input_ids=ids)
        hidden = model.model(input_ids=ids).last_hidden_state[0]
    torch.testing.assert_close(torch.tensor(got["logits"]), theirs.logits[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.tensor(got["hidden"]), hidden, atol=1e-5, rtol=1e-5)
    assert got["generated"] == model.generate(ids, max_new_tokens=6, do_sample=False)[0].tolist()


TEACHER = """
import json, sys, torch
from sdce import config as cfg
from sdce.data.tokenizer import load
from sdce.teachers.lm import LMTeacher, describe_teacher
folder, student_tok, out, ids = sys.argv[1:5]
descriptor = describe_teacher(cfg.validate({}, "teacher"), "moep", folder, student_tok, out)
spec = {"top_k": 4, "probability_threshold": 0.0, "temperature": 2.0}
teacher = LMTeacher.from_descriptor(out, load(student_tok), spec)
sig = teacher.signal(torch.tensor(json.loads(ids)))
print(json.dumps({"class": type(teacher.model).__name__, "identity": teacher.identity,
                  "shape": descriptor["flops"]["shape"], "ids": sig.ids.tolist(),
                  "probs": sig.probs.tolist(), "rest": sig.rest.tolist()}))
"""


def test_a_saved_moep_is_an_lm_teacher_without_remote_code(saved, tiny_data, tmp_path):
    """`sdce teacher` and an online teacher in a fresh process (nothing imported sdce.moep
    before, trust_remote_code off): the descriptor with MoE-P's FLOP shape, and a top-4
    signal at temperature 2 equal to the saved model's own softmax."""
    from sdce import flops

    model, tok, out = saved
    ids, _ = _ids(tok, TEXTS[:1])
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-c", TEACHER, str(out), str(tiny_data / "tokenizer"), str(tmp_path / "t.json")]
    proc = subprocess.run([*cmd, json.dumps(ids.tolist())], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["class"] == "MoEPForCausalLM" and got["identity"]  # the student's tokenizer: no realignment
    assert got["shape"] == flops.shape_dict(flops.of_config(model.config))
    with torch.no_grad():
        q = torch.softmax(model(input_ids=ids).logits / 2.0, dim=-1)
    top_q, top_i = q.topk(4, dim=-1)
    assert torch.equal(torch.tensor(got["ids"]), top_i)
    torch.testing.assert_close(torch.tensor(got["probs"]), top_q, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.tensor(got["rest"]), 1 - top_q.sum(-1), atol=1e-5, rtol=1e-5)


def test_generation_with_the_kv_cache_equals_recomputing(saved):
    model, tok, _ = saved
    ids, _ = _ids(tok, TEXTS[:1])
    cached = model.generate(ids, max_new_tokens=10, do_sample=False, use_cache=True)
    recomputed = model.generate(ids, max_new_tokens=10, do_sample=False, use_cache=False)
    assert cached.shape[1] == ids.shape[1] + 10 and torch.equal(cached, recomputed)


def test_right_padding_leaves_the_real_tokens_unchanged(saved):
    model, tok, _ = saved
    tok.pad_token = tok.eos_token
    ids, mask = _ids(tok, TEXTS[:2])
    assert not bool(mask.all())
    with torch.no_grad():
        batch = model(input_ids=ids, attention_mask=mask).logits
        for row, text in enumerate(TEXTS[:2]):
            alone, _ = _ids(tok, [text])
            n = alone.shape[1]
            torch.testing.assert_close(batch[row, :n], model(input_ids=alone).logits[0], atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------- training through sdce's loop


@pytest.mark.parametrize("family", ["moep", "mixtral"])
@pytest.mark.parametrize("objective", ["ce", "bigram"])
def test_moe_students_train_with_router_term_and_expert_load_logged(tmp_path, tiny_data, family, objective):
    run = tiny_run(objective, model=moe_model(family))
    summary = train_tiny(tiny_data, tmp_path, run, threads=1)
    assert math.isfinite(summary["final_val_loss"])
    records = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    assert [r["step"] for r in train] == [2, 4, 6, 8]
    weight = run["model"]["moe"]["router_aux_weight"]
    for r in train:
        assert math.isfinite(r["router"]) and r["router"] > 0
        assert 1.0 <= r["expert_load_max"] <= 4 / 2 and 0.0 <= r["expert_load_cv"] < 1.0
        if objective == "ce":  # the router loss is counted once: the model adds none of its own
            assert r["loss"] == pytest.approx(r["ce"] + weight * r["router"], rel=1e-5)
    assert json.loads((tmp_path / "model" / "config.json").read_text())["model_type"] == family
    assert type(load_model(tmp_path / "model")).__name__.lower().startswith(family)


# ----------------------------------------------------------------------------- evaluation tools


def test_lm_evaluation_harness_scores_a_saved_moep(saved, tmp_path, monkeypatch):
    pytest.importorskip("lm_eval")
    import datasets.config
    import huggingface_hub.constants

    for name in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):  # a local task on a local file only
        monkeypatch.setenv(name, "1")
        monkeypatch.setattr(datasets.config, name, True, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_MODULES_CACHE", str(tmp_path / "modules"))
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    model, tok, out = saved
    records = [{"sentence_good": g, "sentence_bad": b} for g, b in PAIRS]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    (tmp_path / "moe_pairs.yaml").write_text(
        "task: moe_pairs\ndataset_path: json\ndataset_kwargs:\n"
        f"  data_files: {{test: '{data}'}}\n  cache_dir: '{tmp_path / 'hf_cache'}'\n"
        'test_split: test\noutput_type: multiple_choice\ndoc_to_text: ""\ndoc_to_target: 0\n'
        'target_delimiter: ""\ndoc_to_choice: "{{[sentence_good, sentence_bad]}}"\n'
        "metric_list:\n  - metric: acc\n"
    )
    lm = HFLM(pretrained=str(out), trust_remote_code=True, batch_size=4, device="cpu")
    assert type(lm.model).__name__ == "MoEPForCausalLM"
    result = simple_evaluate(
        model=lm,
        tasks=["moe_pairs"],
        task_manager=TaskManager(include_path=str(tmp_path), include_defaults=False),
        log_samples=True,
    )
    ours = evaluate_minimal_pairs(model, tok, records)
    assert ours["tie_rate"] == 0.0
    assert result["results"]["moe_pairs"]["acc,none"] == pytest.approx(ours["micro_accuracy"], abs=1e-9)
    samples = sorted(result["samples"]["moe_pairs"], key=lambda s: s["doc_id"])
    harness = [ll for s in samples for ll, _ in (r[0] for r in s["resps"])]
    ours = [x for g, b in PAIRS for x in sequence_logprobs(model, tok, [g, b])]  # good then bad
    assert harness == pytest.approx(ours, abs=1e-4)


def _blimp_subset(folder: Path, n: int = 6) -> None:
    folder.mkdir()
    for name in ("adjunct_island.jsonl", "anaphor_gender_agreement.jsonl"):
        (folder / name).write_text("\n".join((BLIMP / name).read_text().splitlines()[:n]) + "\n")


def official_causal_logp(model, tok, text: str) -> float:
    """A sentence's score under the official causal backend: the tokenizer's own ids (no
    BOS is added), log p(t_i | t_<i) summed from the second token on. (sdce's scorer also
    scores the first token, conditioned on BOS: docs/evaluation.md.)"""
    ids = torch.tensor([tok(text)["input_ids"]])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, :-1]
    return F.log_softmax(logits.double(), -1).gather(-1, ids[0, 1:, None]).sum().item()


def test_official_babylm_pipeline_scores_a_saved_moep(saved, tmp_path):
    if not (OFFICIAL / "evaluation_pipeline").is_dir() or not BLIMP.is_dir():
        pytest.skip("../shared/reference (the official BabyLM pipeline) or BLiMP is absent")
    model, tok, out = saved
    _blimp_subset(tmp_path / "blimp")
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "evaluation_pipeline.sentence_zero_shot.run",
         "--data_path", tmp_path / "blimp", "--task", "blimp", "--model_path_or_name", out,
         "--backend", "causal", "--output_dir", tmp_path / "res", "--batch_size", "4", "--save_predictions"],
        cwd=OFFICIAL, env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    (pred_file,) = (tmp_path / "res").rglob("predictions.json")
    predictions = json.loads(pred_file.read_text())
    records = load_minimal_pairs(tmp_path / "blimp")
    accuracy = {}
    for uid in {r["UID"] for r in records}:
        mine = [r for r in records if r["UID"] == uid]
        good = [official_causal_logp(model, tok, r["sentence_good"]) for r in mine]
        bad = [official_causal_logp(model, tok, r["sentence_bad"]) for r in mine]
        # the first of the two on a tie, as the pipeline's torch.max picks it
        want = [
            r["sentence_good"] if g >= b else r["sentence_bad"]
            for r, g, b in zip(mine, good, bad, strict=True)
        ]
        assert [p["pred"] for p in predictions[uid]["predictions"]] == want
        accuracy[uid] = sum(w == r["sentence_good"] for w, r in zip(want, mine, strict=True)) / len(mine)
    report = next((tmp_path / "res").rglob("best_temperature_report.txt")).read_text()
    average = float(report.split("### AVERAGE ACCURACY")[1].split()[0])
    assert average == pytest.approx(100 * sum(accuracy.values()) / len(accuracy), abs=0.01)


# ----------------------------------------------------------------------------- configs


def _study(tmp_path, model: dict) -> Path:
    study = yaml.safe_load((REPO / "tests" / "configs" / "tiny.yaml").read_text())
    study["model"] = model
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


@pytest.mark.parametrize(
    "moe,message",
    [
        ({"n_experts": 2, "experts_per_token": 3},
         "runs.baseline.model.moe.experts_per_token: 3 is more than model.moe.n_experts=2 "
         "(top-k routing picks k different experts)"),
        ({"parallel_n_embd": 20, "parallel_n_head": 3},
         "runs.baseline.model.moe.parallel_n_embd: 20 is not divisible by model.moe.parallel_n_head=3"),
    ],
)  # fmt: skip
def test_check_config_refuses_bad_moe_shapes_in_one_line(tmp_path, capsys, moe, message):
    model = {**moe_model("moep"), "moe": {**moe_model("moep")["moe"], **moe}}
    rc = cli.main(["check-config", str(_study(tmp_path, model))])
    err = capsys.readouterr().err
    assert rc == 2 and err.strip() == f"sdce check-config: error: {message}"


def test_mixtral_is_refused_top_k_above_its_experts_too(tmp_path, capsys):
    model = {**moe_model("mixtral"), "moe": {"n_experts": 1, "experts_per_token": 2}}
    assert cli.main(["check-config", str(_study(tmp_path, model))]) == 2
    err = capsys.readouterr().err
    assert "runs.baseline.model.moe.experts_per_token: 2 is more than model.moe.n_experts=1" in err


def test_the_shipped_moep_study_is_valid(run_sdce):
    proc = run_sdce("check-config", REPO / "config" / "moep_babylm.yaml")
    assert "valid (3 runs x 1 random seeds)" in proc.stdout
    study = cfg.load(REPO / "config" / "moep_babylm.yaml")
    model, training = study["model"], study["training"]
    assert (model["family"], model["n_embd"], model["n_head"], model["n_layer"]) == ("moep", 384, 6, 12)
    moe = model["moe"]
    assert (moe["n_experts"], moe["experts_per_token"], moe["parallel_n_embd"], moe["parallel_n_head"]) == (
        4,
        2,
        192,
        3,
    )
    assert (training["learning_rate"], training["batch_size"], training["block_size"]) == (3e-4, 16, 512)
