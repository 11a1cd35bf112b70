"""Configuration of MoE-P, the mixture-of-experts student with parallel layers (MoEP:
Modular Expert Paths, Tapaninaho 2025, BabyLM workshop). Self-contained beside
`modeling_moep.py`: `save_pretrained` copies both files into a model folder, so that
`AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)` loads it anywhere."""

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig


@strict
class MoEPConfig(PreTrainedConfig):
    r"""A MoE-P decoder: a dense GPT-2 block at `hidden_size`, an MoE projection down to
    `parallel_hidden_size`, `num_hidden_layers - 2` parallel layers (each
    `num_local_experts` GPT-2 blocks side by side, of which a router mixes the top
    `num_experts_per_tok` per token), an MoE projection back up, and a last dense block.
    The defaults are the paper's (Table 2: d 384/192, heads 6/3, layers 2/10, 4 experts
    and 4 parallel blocks, top-2, a 16k vocabulary).

    num_local_experts: experts of each MoE projection and blocks of each parallel layer
        (the paper uses 4 of each; one number here, so that every router has as many choices).
    num_experts_per_tok: k of every router's top-k.
    router_aux_loss_coef: weight of `aux_loss` in `loss` when `labels` are given.
    output_router_logits: return the routers' logits and their load-balancing `aux_loss`.
    """

    model_type = "moep"
    keys_to_ignore_at_inference = ["cache"]

    vocab_size: int = 16384
    max_position_embeddings: int = 512
    hidden_size: int = 384
    num_attention_heads: int = 6
    intermediate_size: int | None = None  # None = 4 * hidden_size
    num_hidden_layers: int = 12
    parallel_hidden_size: int = 192
    parallel_num_attention_heads: int = 3
    parallel_intermediate_size: int | None = None  # None = 4 * parallel_hidden_size
    num_local_experts: int = 4
    num_experts_per_tok: int = 2
    router_aux_loss_coef: float | int = 0.01
    output_router_logits: bool = True
    activation_function: str = "gelu_new"
    resid_pdrop: float | int = 0.1
    embd_pdrop: float | int = 0.1
    attn_pdrop: float | int = 0.1
    layer_norm_epsilon: float = 1e-5
    initializer_range: float = 0.02
    use_cache: bool = True
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None
    tie_word_embeddings: bool = True

    def validate_architecture(self):
        """Shapes the model cannot be built with (run by the config's strict validation)."""
        super().validate_architecture()
        for width, heads, what in (
            (self.hidden_size, self.num_attention_heads, "hidden_size"),
            (self.parallel_hidden_size, self.parallel_num_attention_heads, "parallel_hidden_size"),
        ):
            if width % heads:
                raise ValueError(f"MoEPConfig.{what}={width} is not divisible by its {heads} attention heads")
        if not 1 <= self.num_experts_per_tok <= self.num_local_experts:
            raise ValueError(
                f"MoEPConfig.num_experts_per_tok={self.num_experts_per_tok} must be between 1 and "
                f"num_local_experts={self.num_local_experts}"
            )
        if self.num_hidden_layers < 3:
            raise ValueError(
                f"MoEPConfig.num_hidden_layers={self.num_hidden_layers}: MoE-P needs 3 or more "
                "(two dense layers around at least one parallel layer)"
            )


__all__ = ["MoEPConfig"]
