"""Student models: a `transformers` config built from the `model` section by the model
family's entry in `FAMILIES`, or any model loaded with `from_pretrained`."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch


@dataclass(frozen=True)
class Family:
    """A student architecture: its `transformers` config from the `model` section, the kind
    of model it is (`causal` or `bidirectional`, matched against the objective's), the Auto
    class that loads a saved one, and the weights of the auxiliary loss terms it adds."""

    config: Callable[[dict, int, int, int, int], Any]
    kind: str = "causal"
    auto_class: str = "AutoModelForCausalLM"
    aux_weights: Callable[[dict], dict] = lambda spec: {}


def _inner(spec: dict) -> int:
    return spec["intermediate_size"] or 4 * spec["n_embd"]


def _gpt2_config(spec: dict, vocab_size: int, positions: int, bos_id: int, eos_id: int):
    from transformers import GPT2Config

    return GPT2Config(
        vocab_size=vocab_size,
        n_positions=positions,
        n_embd=spec["n_embd"],
        n_layer=spec["n_layer"],
        n_head=spec["n_head"],
        n_inner=_inner(spec),
        resid_pdrop=spec["dropout"],
        embd_pdrop=spec["dropout"],
        attn_pdrop=spec["dropout"],
        bos_token_id=bos_id,
        eos_token_id=eos_id,
    )


def _llama_keys(spec: dict, vocab_size: int, positions: int, bos_id: int, eos_id: int) -> dict:
    """The `model` section in the Llama family's config names (Llama and Mixtral)."""
    return dict(
        vocab_size=vocab_size,
        hidden_size=spec["n_embd"],
        intermediate_size=_inner(spec),
        num_hidden_layers=spec["n_layer"],
        num_attention_heads=spec["n_head"],
        num_key_value_heads=spec["n_head"],
        max_position_embeddings=positions,
        attention_dropout=spec["dropout"],
        tie_word_embeddings=True,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
    )


def _llama_config(spec: dict, vocab_size: int, positions: int, bos_id: int, eos_id: int):
    from transformers import LlamaConfig

    return LlamaConfig(**_llama_keys(spec, vocab_size, positions, bos_id, eos_id))


def _modernbert_config(spec: dict, vocab_size: int, positions: int, bos_id: int, eos_id: int):
    """A bidirectional mask predictor for masked diffusion. LLaDA's network is a Llama
    without the causal mask; transformers has no bidirectional Llama class, and ModernBERT
    is the maintained encoder closest to it (pre-norm, rotary positions, gated MLP, no
    biases), loaded by AutoModelForMaskedLM as the official BabyLM `mlm` backend loads a
    model. Every layer attends globally (global_attn_every_n_layers=1): LLaDA has no local
    attention. The remaining differences (LayerNorm for RMSNorm, GeGLU for SwiGLU, a norm
    after the embeddings, a dense layer in the head) are ModernBERT's own."""
    from transformers import ModernBertConfig

    return ModernBertConfig(
        vocab_size=vocab_size,
        hidden_size=spec["n_embd"],
        intermediate_size=_inner(spec),
        num_hidden_layers=spec["n_layer"],
        num_attention_heads=spec["n_head"],
        max_position_embeddings=positions,
        global_attn_every_n_layers=1,
        attention_dropout=spec["dropout"],
        embedding_dropout=spec["dropout"],
        mlp_dropout=spec["dropout"],
        pad_token_id=eos_id,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        cls_token_id=bos_id,
        sep_token_id=eos_id,
    )


def _mixtral_config(spec: dict, vocab_size: int, positions: int, bos_id: int, eos_id: int):
    """transformers' Mixtral: a Llama whose MLPs are top-k routed SwiGLU experts
    (`intermediate_size` wide each). `output_router_logits` is on, so every forward returns
    the routers' load-balancing `aux_loss`, which the objective's `router` term adds to the
    loss (`aux_weights`). Mixtral adds it to its own `loss` only when given labels, and the
    training loop passes none (it scores the logits itself), so it is counted once;
    `router_aux_loss_coef` is set to the same weight so the saved config records it."""
    from transformers import MixtralConfig

    moe = spec["moe"]
    return MixtralConfig(
        **_llama_keys(spec, vocab_size, positions, bos_id, eos_id),
        num_local_experts=moe["n_experts"],
        num_experts_per_tok=moe["experts_per_token"],
        router_aux_loss_coef=moe["router_aux_weight"],
        output_router_logits=True,
    )


def _moep_config(spec: dict, vocab_size: int, positions: int, bos_id: int, eos_id: int):
    """MoE-P (`sdce.moep`, docs/models.md): n_layer = 2 dense layers of n_embd around
    n_layer - 2 parallel layers of moe.parallel_n_embd, each of moe.n_experts blocks; MoE
    projections of moe.n_experts linear experts between the widths; top-k routing with
    k = moe.experts_per_token everywhere. Its `aux_loss` enters the loss as Mixtral's does."""
    from sdce.moep import MoEPConfig

    moe, p = spec["moe"], spec["dropout"]
    return MoEPConfig(
        vocab_size=vocab_size,
        max_position_embeddings=positions,
        hidden_size=spec["n_embd"],
        num_attention_heads=spec["n_head"],
        intermediate_size=_inner(spec),
        num_hidden_layers=spec["n_layer"],
        parallel_hidden_size=moe["parallel_n_embd"],
        parallel_num_attention_heads=moe["parallel_n_head"],
        num_local_experts=moe["n_experts"],
        num_experts_per_tok=moe["experts_per_token"],
        router_aux_loss_coef=moe["router_aux_weight"],
        output_router_logits=True,
        resid_pdrop=p,
        embd_pdrop=p,
        attn_pdrop=p,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
    )


def _router_weight(spec: dict) -> dict:
    return {"router": spec["moe"]["router_aux_weight"]}


# model.family -> Family; a new architecture is one entry here and its name in the schema enum
FAMILIES: dict[str, Family] = {
    "gpt2": Family(_gpt2_config),
    "llama": Family(_llama_config),
    "modernbert": Family(_modernbert_config, kind="bidirectional", auto_class="AutoModelForMaskedLM"),
    "mixtral": Family(_mixtral_config, aux_weights=_router_weight),
    "moep": Family(_moep_config, aux_weights=_router_weight),
}
MOE_FAMILIES = ("mixtral", "moep")  # the families that read model.moe


def family_of(spec: dict) -> Family:
    if spec["family"] not in FAMILIES:
        raise ValueError(f"model.family: unknown family '{spec['family']}' (known: {', '.join(FAMILIES)})")
    return FAMILIES[spec["family"]]


def check_shape(spec: dict, where: str = "") -> None:
    """Architecture constraints the schema cannot express: a one-line ValueError naming the
    key (prefixed with `where`, e.g. `runs.baseline.`)."""
    key = f"{where}model"
    if spec["n_embd"] % spec["n_head"]:
        raise ValueError(f"{key}.n_embd: {spec['n_embd']} is not divisible by model.n_head={spec['n_head']}")
    if spec["family"] not in MOE_FAMILIES:
        return
    moe = spec["moe"]
    if moe["experts_per_token"] > moe["n_experts"]:
        raise ValueError(
            f"{key}.moe.experts_per_token: {moe['experts_per_token']} is more than "
            f"model.moe.n_experts={moe['n_experts']} (top-k routing picks k different experts)"
        )
    if spec["family"] != "moep":
        return
    if moe["parallel_n_embd"] % moe["parallel_n_head"]:
        raise ValueError(
            f"{key}.moe.parallel_n_embd: {moe['parallel_n_embd']} is not divisible by "
            f"model.moe.parallel_n_head={moe['parallel_n_head']}"
        )
    if spec["n_layer"] < 3:
        raise ValueError(
            f"{key}.n_layer: {spec['n_layer']} is too few for family moep "
            "(two dense layers around at least one parallel layer: 3 or more)"
        )


def build_config(spec: dict, vocab_size: int, block_size: int, bos_id: int, eos_id: int):
    check_shape(spec)
    return family_of(spec).config(spec, vocab_size, block_size, bos_id, eos_id)


def auto_class(kind_or_path: str):
    """The transformers Auto class of a model kind (`causal`, `bidirectional`) or of a saved
    model folder (read from its config's model_type)."""
    import transformers

    import sdce.moep  # noqa: F401  (registers model_type moep with the Auto classes)

    kind = kind_or_path
    if kind not in {f.kind for f in FAMILIES.values()}:
        kind = saved_kind(kind_or_path)
    name = next(f.auto_class for f in FAMILIES.values() if f.kind == kind)
    return getattr(transformers, name)


def saved_kind(path: str | Path) -> str:
    """The kind of a saved model: a family's kind when its config names one, else causal."""
    config = Path(path) / "config.json"
    model_type = json.loads(config.read_text()).get("model_type") if config.is_file() else None
    return _kind_of_type(model_type)


def kind_of(model) -> str:
    """The kind of a loaded model (`causal` or `bidirectional`), from its config's model_type."""
    return _kind_of_type(getattr(model.config, "model_type", None))


def _kind_of_type(model_type: str | None) -> str:
    family = FAMILIES.get(model_type or "")
    return family.kind if family else "causal"


def load_model(path: str | Path, **kwargs):
    """A saved student (any family) with the Auto class of its kind."""
    return auto_class(str(path)).from_pretrained(str(path), **kwargs)


def build_model(spec: dict, tokenizer, block_size: int, seed: int):
    """Random init under `seed`, or `from_pretrained(spec['from_pretrained'])`.

    The torch RNG is seeded with `seed` either way: LoRA adapters are initialised from it
    (peft draws lora_A at random) and the training loop's dropout continues from it, so a
    run does not depend on what the process drew before (a resumed run rebuilds the same
    model before loading its checkpoint and RNG state)."""
    import transformers

    import sdce.moep  # noqa: F401  (registers model_type moep with the Auto classes)

    AutoModel = getattr(transformers, family_of(spec).auto_class)
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
        return AutoModel.from_config(config, attn_implementation=attn)
    if spec["from_pretrained"]:
        torch.manual_seed(seed)
        model = AutoModel.from_pretrained(
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
    if getattr(tokenizer, "mask_token_id", None) is not None:  # saved with the model (masked diffusion)
        cfg.mask_token_id = tokenizer.mask_token_id
    torch.manual_seed(seed)
    return AutoModel.from_config(cfg, attn_implementation=attn)


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


def experts_per_token(config) -> int | None:
    """k of a mixture of experts' top-k routing when its forward returns the routers'
    logits (mixtral, moep); None for a dense model."""
    return (
        getattr(config, "num_experts_per_tok", None)
        if getattr(config, "output_router_logits", False)
        else None
    )


@torch.no_grad()
def expert_load(outputs, top_k: int | None) -> dict[str, torch.Tensor]:
    """The expert load balance of one forward, from its routers' logits, on the device
    (nothing is synced: the training loop averages it with the loss terms when it logs).
    Per router, f_e is the fraction of its top-k assignments that go to expert e (mean
    1/E). `expert_load_max`: the largest f_e / (1/E) over experts and routers (1 = every
    expert equally loaded; E/k = k experts take every token); `expert_load_cv`: the
    coefficient of variation std_e(f) / mean_e(f), averaged over routers (0 = balanced).
    {} for a dense model (`top_k` None)."""
    router_logits = getattr(outputs, "router_logits", None)
    if not top_k or not router_logits:
        return {}
    fractions = []
    for logits in router_logits:  # (tokens, E) per router
        chosen = logits.topk(top_k, dim=-1).indices.reshape(-1)  # the softmax keeps the order
        counts = torch.zeros(logits.shape[-1], device=logits.device).index_add_(
            0, chosen, torch.ones_like(chosen, dtype=torch.float32)
        )
        fractions.append(counts / chosen.numel())
    f = torch.stack(fractions)  # (routers, E)
    n_experts = f.shape[-1]
    return {
        "expert_load_max": (f.max(dim=-1).values * n_experts).max(),
        "expert_load_cv": (f.std(dim=-1, unbiased=False) / f.mean(dim=-1)).mean(),
    }
