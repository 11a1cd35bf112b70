"""Student models: a `transformers` GPT-2 or Llama config built from the `model`
section, or any causal LM loaded with `from_pretrained`."""

from __future__ import annotations

import torch


def build_config(spec: dict, vocab_size: int, block_size: int, bos_id: int, eos_id: int):
    from transformers import GPT2Config, LlamaConfig

    inner = spec["intermediate_size"] or 4 * spec["n_embd"]
    if spec["n_embd"] % spec["n_head"]:
        raise ValueError(f"model.n_embd={spec['n_embd']} is not divisible by model.n_head={spec['n_head']}")
    if spec["family"] == "gpt2":
        return GPT2Config(
            vocab_size=vocab_size,
            n_positions=block_size,
            n_embd=spec["n_embd"],
            n_layer=spec["n_layer"],
            n_head=spec["n_head"],
            n_inner=inner,
            resid_pdrop=spec["dropout"],
            embd_pdrop=spec["dropout"],
            attn_pdrop=spec["dropout"],
            bos_token_id=bos_id,
            eos_token_id=eos_id,
        )
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=spec["n_embd"],
        intermediate_size=inner,
        num_hidden_layers=spec["n_layer"],
        num_attention_heads=spec["n_head"],
        num_key_value_heads=spec["n_head"],
        max_position_embeddings=block_size,
        attention_dropout=spec["dropout"],
        tie_word_embeddings=True,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
    )


def build_model(spec: dict, tokenizer, block_size: int, seed: int):
    """Random init under `seed`, or `from_pretrained(spec['from_pretrained'])`.

    The torch RNG is seeded with `seed` either way: LoRA adapters are initialised from it
    (peft draws lora_A at random) and the training loop's dropout continues from it, so a
    run does not depend on what the process drew before (a resumed run rebuilds the same
    model before loading its checkpoint and RNG state)."""
    from transformers import AutoModelForCausalLM

    attn = spec["attn_implementation"]
    adapter = spec["adapter"]
    if spec["from_pretrained"] and spec["init_from_scratch"]:
        # the pretrained architecture (its config), fresh weights under the seed
        from transformers import AutoConfig

        if adapter != "none":
            raise ValueError(
                f"model.adapter={adapter} adapts pretrained weights: unset model.init_from_scratch"
            )
        config = AutoConfig.from_pretrained(spec["from_pretrained"])
        torch.manual_seed(seed)
        return AutoModelForCausalLM.from_config(config, attn_implementation=attn)
    if spec["from_pretrained"]:
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_pretrained(
            spec["from_pretrained"], attn_implementation=attn, **_quantization(adapter)
        )
        if model.get_input_embeddings().num_embeddings < len(tokenizer):
            raise ValueError(
                f"model {spec['from_pretrained']} has {model.get_input_embeddings().num_embeddings} "
                f"embeddings but the tokenizer has {len(tokenizer)} tokens"
            )
        return model if adapter == "none" else apply_lora(model, spec["lora"], quantized=adapter == "qlora")
    if adapter != "none":
        raise ValueError(
            f"model.adapter={adapter} adapts a pretrained model: set model.from_pretrained as well"
        )
    positions = max(block_size, spec["n_positions"] or block_size)
    cfg = build_config(spec, len(tokenizer), positions, tokenizer.bos_token_id, tokenizer.eos_token_id)
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(cfg, attn_implementation=attn)


def _quantization(adapter: str) -> dict:
    """from_pretrained arguments of a QLoRA base (4-bit NF4 weights, bf16 compute)."""
    if adapter != "qlora":
        return {}
    if not torch.cuda.is_available():
        raise ValueError(
            "model.adapter=qlora needs a CUDA device for its 4-bit base (bitsandbytes); on this "
            "machine use LoRA on the full-precision base (adapter: lora; for a teacher, finetune: lora)"
        )
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise ValueError("model.adapter=qlora needs bitsandbytes: pip install bitsandbytes") from None
    from transformers import BitsAndBytesConfig

    quant = BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16
    )
    return {"quantization_config": quant, "device_map": {"": torch.cuda.current_device()}}


def apply_lora(model, lora: dict, quantized: bool = False):
    """Wrap a pretrained causal LM in LoRA adapters (peft); only the adapters train."""
    try:
        from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    except ImportError:
        raise ValueError("model.adapter lora/qlora needs peft: pip install 'sdce[lora]'") from None
    if quantized:
        model = prepare_model_for_kbit_training(model)
    config = LoraConfig(
        r=lora["r"],
        lora_alpha=lora["alpha"],
        lora_dropout=lora["dropout"],
        target_modules=lora["target_modules"],
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())
