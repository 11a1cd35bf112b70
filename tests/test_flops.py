"""FLOPs per token (sdce.flops) against a hand count and against PyTorch's own FLOP counter."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from sdce import flops


def _gpt2():
    return GPT2Config(vocab_size=100, n_positions=16, n_embd=32, n_layer=2, n_head=4, n_inner=128)


def test_gpt2_by_hand():
    # per layer: q, k, v, o 4·32² = 4096, MLP 2·32·128 = 8192; two layers; the LM head 32·100
    shape = flops.of_config(_gpt2())
    assert shape.matmul_params == 2 * (4096 + 8192) + 3200 == 27776
    assert shape.forward_per_token(16) == 2 * 27776 + 4 * 2 * 32 * 16 == 59648
    assert shape.train_per_token(16) == 3 * 59648


def _counted(model, seq: int, backward: bool) -> int:
    x = torch.randint(0, model.config.vocab_size, (1, seq))
    with FlopCounterMode(display=False) as counter:
        out = model(input_ids=x).logits
        if backward:
            out.sum().backward()
    return counter.get_total_flops()


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_agrees_with_torch_flop_counter(family):
    """Eager attention computes the whole T×T score matrix, as the count assumes, so PyTorch's
    counter of the matmuls it runs gives exactly the forward and 3× the forward."""
    torch.manual_seed(0)
    if family == "gpt2":
        config = _gpt2()
        config._attn_implementation = "eager"
        model = GPT2LMHeadModel(config)
    else:
        config = LlamaConfig(
            vocab_size=100, hidden_size=32, intermediate_size=80, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=16,
            attn_implementation="eager",
        )  # fmt: skip
        model = LlamaForCausalLM(config)
    shape, seq = flops.of_config(model.config), 16
    assert _counted(model, seq, backward=False) == pytest.approx(seq * shape.forward_per_token(seq), rel=1e-9)
    assert _counted(model, seq, backward=True) == pytest.approx(seq * shape.train_per_token(seq), rel=1e-9)


def test_teacher_costs():
    shape = flops.of_config(_gpt2())

    class Online:
        descriptor = {"flops": {"shape": flops.shape_dict(shape), "training": 5e9}}

    class Cached:
        info = {"teacher_flops": 2e9, "teacher_training_flops": 5e9}

    assert flops.teacher_cost(None, 16) == (0.0, 0.0)
    assert flops.teacher_cost(Online(), 16) == (shape.forward_per_token(16), 5e9)
    assert flops.teacher_cost(Cached(), 16) == (0.0, 7e9)


# ----------------------------------------------------------------------------- mixtures of experts


def _mixtral():
    from transformers import MixtralConfig

    return MixtralConfig(
        vocab_size=100, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=16, num_local_experts=4, num_experts_per_tok=2,
        attn_implementation="eager", experts_implementation="eager",
    )  # fmt: skip


def _moep():
    from sdce.moep import MoEPConfig

    config = MoEPConfig(
        vocab_size=50, max_position_embeddings=16, hidden_size=16, num_attention_heads=2, num_hidden_layers=4,
        parallel_hidden_size=8, parallel_num_attention_heads=2, num_local_experts=4, num_experts_per_tok=2,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
    )  # fmt: skip
    config._attn_implementation = "eager"
    return config


def test_mixtral_by_hand():
    # per layer: q 32·32 = 1024, k and v 32·(2 heads · 8) = 512 each, o 1024: 3072;
    # the router 32·4 = 128; 2 of the 4 gated experts, 3·32·48 = 4608 each: 9216
    # two layers, the LM head 32·100 = 3200; attention 2 layers × width 32
    shape = flops.of_config(_mixtral())
    assert shape.matmul_params == 2 * (3072 + 128 + 2 * 4608) + 3200 == 28032
    assert shape.forward_per_token(16) == 2 * 28032 + 4 * 2 * 32 * 16 == 60160


def test_a_sliding_window_bounds_the_attention_term():
    # Mixtral's sliding_window w: a query reads min(T, w) keys, so the attention term is
    # 4·L·d·min(T, w); the matmul parameters do not change. (Eager attention still computes
    # the masked scores: PyTorch's counter counts the full T×T; flash kernels skip them.)
    config = _mixtral()
    config.sliding_window = 4
    shape = flops.of_config(config)
    assert shape.window == 4 and shape.matmul_params == 28032
    assert shape.forward_per_token(16) == 2 * 28032 + 4 * 2 * 32 * 4
    assert shape.forward_per_token(3) == 2 * 28032 + 4 * 2 * 32 * 3  # shorter than the window
    assert flops.ModelFlops(**flops.shape_dict(shape)) == shape  # as a descriptor stores it
    config.sliding_window = None
    assert flops.of_config(config).forward_per_token(16) == 60160


def test_moep_by_hand():
    # d 16 (MLP 64), p 8 (MLP 32), 4 layers: 2 dense around 2 parallel, E 4, k 2, V 50
    # a dense block: q, k, v, o 4·16² = 1024, MLP 2·16·64 = 2048: 3072, two of them 6144
    # shrink: router 16·4 = 64 and 2 experts 16·8 = 128 each: 320; grow: 8·4 + 2·8·16 = 288
    # a parallel layer: router 8·4 = 32 and all 4 blocks of 4·8² + 2·8·32 = 768: 3104, two 6208
    # the LM head 16·50 = 800; attention widths: 16 per dense layer, 4·8 = 32 per parallel layer
    shape = flops.of_config(_moep())
    assert shape.matmul_params == 6144 + 320 + 288 + 2 * 3104 + 800 == 13760
    assert shape.attention == 2 * 16 + 2 * 32 == 96
    assert shape.forward_per_token(16) == 2 * 13760 + 4 * 96 * 16 == 33664
    assert flops.ModelFlops(**flops.shape_dict(shape)) == shape  # as a descriptor stores it


def _touched(model, routers: list[torch.Tensor]) -> int:
    """The matmul parameters one token's forward uses, summed from named_parameters: every
    weight of a linear map (no embeddings, norms or biases), of a stack of E experts only
    the k slices the token's router chose (`routers`: one chosen-index tensor per router,
    in forward order)."""
    from sdce.moep.modeling_moep import MoEPProjection

    chosen = iter(routers)
    stacked = {}  # parameter -> the number of its expert slices the token used
    for module in model.modules():
        if type(module).__name__ == "MixtralSparseMoeBlock":
            k = len(next(chosen))
            stacked[module.experts.gate_up_proj] = stacked[module.experts.down_proj] = k
        elif isinstance(module, MoEPProjection):
            stacked[module.weight] = len(next(chosen))
    total = 0
    for name, p in model.named_parameters():
        if "embed" in name or "norm" in name or "ln_" in name or name.endswith("bias") or p.dim() < 2:
            continue
        if p in stacked:
            total += p[0].numel() * stacked[p]
        else:
            total += p.numel()
    tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
    return total + (model.get_output_embeddings().weight.numel() if tied else 0)


@pytest.mark.parametrize("family", ["mixtral", "moep"])
def test_moe_active_count_is_what_one_token_uses(family):
    from transformers import MixtralForCausalLM

    from sdce.moep import MoEPForCausalLM

    torch.manual_seed(0)
    model = MixtralForCausalLM(_mixtral()) if family == "mixtral" else MoEPForCausalLM(_moep())
    out = model.eval()(input_ids=torch.tensor([[3]]), output_router_logits=True)
    k = model.config.num_experts_per_tok
    chosen = [logits[0].topk(k).indices for logits in out.router_logits]
    assert len(chosen) == (2 if family == "mixtral" else 4)  # a router per layer; shrink, 2 parallel, grow
    assert _touched(model, chosen) == flops.of_config(model.config).matmul_params


@pytest.mark.parametrize("family", ["mixtral", "moep"])
def test_moe_agrees_with_torch_flop_counter(family):
    """Every token goes to k experts, so the experts' matmuls over a sequence are k per token
    whatever the routing; MoE-P's parallel blocks all run (batched matmuls of E paths)."""
    from transformers import MixtralForCausalLM

    from sdce.moep import MoEPForCausalLM

    torch.manual_seed(0)
    model = MixtralForCausalLM(_mixtral()) if family == "mixtral" else MoEPForCausalLM(_moep())
    shape, seq = flops.of_config(model.config), 16
    assert _counted(model, seq, backward=False) == pytest.approx(seq * shape.forward_per_token(seq), rel=1e-9)
    assert _counted(model, seq, backward=True) == pytest.approx(seq * shape.train_per_token(seq), rel=1e-9)


def test_a_saved_moep_folder_is_counted_without_sdce_moep_imported_first(tmp_path):
    """of_model_folder reads a MoE-P config.json (model_type moep) in a process that has not
    imported sdce.moep: it registers the type itself."""
    import subprocess
    import sys

    _moep().save_pretrained(tmp_path)
    code = "import sys; from sdce import flops; print(flops.of_model_folder(sys.argv[1]).matmul_params)"
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert int(proc.stdout.split()[-1]) == 13760
