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
