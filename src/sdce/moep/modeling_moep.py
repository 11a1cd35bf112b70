"""MoE-P: the mixture-of-experts student with parallel layers (MoEP: Modular Expert Paths,
Tapaninaho 2025, BabyLM workshop), as a `transformers` causal LM with generation and a KV
cache. Self-contained with `configuration_moep.py` (relative import only), so a saved
folder loads with `AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)`.

The stack, after GPT-2's token and learned position embeddings (width d = hidden_size):

    dense block (d)  ->  MoE shrink d -> p  ->  (L - 2) parallel layers (p)  ->  MoE grow p -> d
    ->  dense block (d)  ->  final LayerNorm  ->  LM head (tied to the embeddings)

* a dense block is a pre-norm GPT-2 block (attention, then a GELU MLP of 4x width);
* an MoE projection is E linear experts (with bias) mapping one width to the other; a
  linear router (no bias: the paper gives it as a d x E matrix) picks the top-k experts
  per token and the output is their sum weighted by the renormalised router
  probabilities (the paper says the routed outputs are "summed up"; the weights are
  Mixtral's and Switch's, and the predecessor project's);
* a parallel layer is E GPT-2 blocks of width p side by side, all reading the layer's
  input; a router on that input mixes the top-k blocks' outputs per token the same way.
  Every block runs on every token: a block's attention at one token reads the keys and
  values of all earlier tokens, which exist only if the block has run on them. So the
  routing is sparse in what each token's output (and gradient) depends on, not in compute.

Where the paper is silent or unclear (docs/models.md lists these choices): the router
reads the un-normalised layer input; one expert count and one k serve both the MoE
projections and the parallel layers (the paper's are equal, 4 and 2); the load-balancing
loss is Switch Transformer's (Mixtral's `load_balancing_loss_func`, per router, averaged
over routers), as the paper's entropy term is, as printed, minimised toward collapse.

Hand-written here, and why: transformers' GPT-2 attention and Mixtral router read their
width from a model config's `hidden_size`, and MoE-P has blocks and routers at two widths;
its parallel blocks are stacked (E, ...) weights run as one batched attention of E x heads
heads and one batched MLP (as transformers' `MixtralExperts` stacks its experts), rather
than E modules called one after another. Reused: the attention kernels (eager, SDPA,
flash) through `ALL_ATTENTION_FUNCTIONS`, the causal and padding mask
(`create_causal_mask`), the KV cache (`DynamicCache`), `GenerationMixin`, the activation
table and Mixtral's load-balancing loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache, DynamicCache
from transformers.masking_utils import create_causal_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import MoeCausalLMOutputWithPast, MoeModelOutputWithPast
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.gpt2.modeling_gpt2 import eager_attention_forward
from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func
from transformers.utils import can_return_tuple

from .configuration_moep import MoEPConfig


class MoEPRouter(nn.Module):
    """Top-k routing as Mixtral's `MixtralTopKRouter` does it: softmax of a linear map (in
    float32), the k most probable choices, their probabilities renormalised to sum to 1."""

    def __init__(self, width: int, choices: int, top_k: int):
        super().__init__()
        self.top_k = top_k
        self.weight = _param(choices, width)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logits = F.linear(x, self.weight)  # (N, E)
        probs = torch.softmax(logits.float(), dim=-1)
        weights, index = torch.topk(probs, self.top_k, dim=-1)  # (N, k)
        return logits, weights / weights.sum(dim=-1, keepdim=True), index


class MoEPProjection(nn.Module):
    """An MoE projection: E linear experts from one width to another, the top-k per token
    weighted by the router. Each expert multiplies only the tokens routed to it (the
    dispatch of `MixtralExperts`), so its compute is sparse."""

    def __init__(self, config: MoEPConfig, d_in: int, d_out: int):
        super().__init__()
        self.n_experts = config.num_local_experts
        self.router = MoEPRouter(d_in, self.n_experts, config.num_experts_per_tok)
        self.weight, self.bias = _param(self.n_experts, d_out, d_in), _param(self.n_experts, d_out)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B, T, _ = x.shape
        flat = x.reshape(B * T, -1)
        logits, weights, index = self.router(flat)
        out = flat.new_zeros(B * T, self.weight.shape[1])
        for e in range(self.n_experts):
            token, slot = torch.where(index == e)  # each token picks an expert in at most one slot
            y = F.linear(flat[token], self.weight[e], self.bias[e]) * weights[token, slot, None]
            out.index_add_(0, token, y.to(out.dtype))  # under autocast y may be of lower precision
        return out.view(B, T, -1), logits


def _param(*shape) -> nn.Parameter:
    return nn.Parameter(torch.empty(*shape))  # filled by MoEPPreTrainedModel._init_weights


class MoEPBlocks(GradientCheckpointingLayer):
    """`paths` pre-norm GPT-2 blocks of one width side by side, weights stacked on a first
    axis of size `paths`, all reading the same input (B, T, d); returns every block's
    output (paths, B, T, d). A dense layer is one path. The paths' keys and values are
    cached as one layer of paths x heads heads."""

    def __init__(self, config: MoEPConfig, width: int, heads: int, inner: int, paths: int, layer_idx: int):
        super().__init__()
        self.config = config  # the attention kernel is read from it at call time, as in transformers' models
        self.width, self.heads, self.paths, self.layer_idx = width, heads, paths, layer_idx
        self.head_dim = width // heads
        self.scaling = self.head_dim**-0.5
        self.is_causal = True
        self.eps = config.layer_norm_epsilon
        P = paths
        self.ln_1_weight, self.ln_1_bias = _param(P, width), _param(P, width)
        self.qkv_weight, self.qkv_bias = _param(P, 3 * width, width), _param(P, 3 * width)
        self.o_weight, self.o_bias = _param(P, width, width), _param(P, width)
        self.ln_2_weight, self.ln_2_bias = _param(P, width), _param(P, width)
        self.up_weight, self.up_bias = _param(P, inner, width), _param(P, inner)
        self.down_weight, self.down_bias = _param(P, width, inner), _param(P, width)
        self.act = ACT2FN[config.activation_function]
        self.resid_dropout = nn.Dropout(config.resid_pdrop)

    @staticmethod
    def _linear(x, weight, bias):  # per path: (P, N, i) x (P, o, i) -> (P, N, o), one batched matmul
        return torch.baddbmm(bias[:, None], x, weight.transpose(1, 2))

    def forward(self, hidden_states: torch.Tensor, attention_mask=None, cache: Cache | None = None, **kwargs):
        B, T, d = hidden_states.shape
        P, H, hd = self.paths, self.heads, self.head_dim
        x = hidden_states.reshape(1, B * T, d)  # (1, N, d): every path reads it
        a = (
            F.layer_norm(x, (d,), eps=self.eps) * self.ln_1_weight[:, None] + self.ln_1_bias[:, None]
        )  # (P, N, d)
        q, k, v = self._linear(a, self.qkv_weight, self.qkv_bias).split(d, dim=-1)
        # the paths' heads side by side: (P, N, d) -> (B, P*H, T, hd)
        q, k, v = (
            t.reshape(P, B, T, H, hd).permute(1, 0, 3, 2, 4).reshape(B, P * H, T, hd) for t in (q, k, v)
        )
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)
        kernel = self.config._attn_implementation
        attention = ALL_ATTENTION_FUNCTIONS.get_interface(kernel, eager_attention_forward)
        dropout = self.config.attn_pdrop if self.training else 0.0
        out, _ = attention(
            self, q, k, v, attention_mask, dropout=dropout, scaling=self.scaling
        )  # (B, T, P*H, hd)
        out = out.reshape(B, T, P, d).permute(2, 0, 1, 3).reshape(P, B * T, d)
        h = x + self.resid_dropout(self._linear(out, self.o_weight, self.o_bias))
        m = F.layer_norm(h, (d,), eps=self.eps) * self.ln_2_weight[:, None] + self.ln_2_bias[:, None]
        m = self.act(self._linear(m, self.up_weight, self.up_bias))
        m = self._linear(m, self.down_weight, self.down_bias)
        return (h + self.resid_dropout(m)).view(P, B, T, d)


class MoEPParallelLayer(nn.Module):
    """E blocks of the parallel width side by side; per token, the router's top-k blocks'
    outputs weighted by their renormalised probabilities."""

    def __init__(self, config: MoEPConfig, layer_idx: int):
        super().__init__()
        width = config.parallel_hidden_size
        inner = config.parallel_intermediate_size or 4 * width
        E = config.num_local_experts
        self.blocks = MoEPBlocks(config, width, config.parallel_num_attention_heads, inner, E, layer_idx)
        self.router = MoEPRouter(width, E, config.num_experts_per_tok)

    def forward(self, x: torch.Tensor, attention_mask=None, cache: Cache | None = None):
        B, T, d = x.shape
        logits, weights, index = self.router(x.reshape(B * T, d))
        y = self.blocks(x, attention_mask, cache=cache).reshape(-1, B * T, d).transpose(0, 1)  # (N, E, d)
        picked = y.gather(1, index[..., None].expand(-1, -1, d))  # (N, k, d)
        out = (picked * weights[..., None].to(y.dtype)).sum(dim=1)
        return out.view(B, T, d), logits


def router_aux_loss(router_logits, n_experts: int, top_k: int, attention_mask=None) -> torch.Tensor:
    """Switch Transformer's load-balancing loss, E * sum_e f_e P_e (f_e: the fraction of
    top-k assignments that go to e, P_e: e's mean router probability), computed per router
    by Mixtral's `load_balancing_loss_func` and averaged over the routers (Mixtral pools all
    layers' tokens into one f and P; MoE-P's routers choose among different things:
    experts of two projections, blocks of each parallel layer). Padding is left out."""
    rows = router_logits[0].shape[0]
    if attention_mask is not None and attention_mask.numel() != rows:  # generation: the new tokens' part
        attention_mask = attention_mask[:, -(rows // attention_mask.shape[0]) :]
    losses = [load_balancing_loss_func((lg,), n_experts, top_k, attention_mask) for lg in router_logits]
    return torch.stack(losses).mean()


class MoEPPreTrainedModel(PreTrainedModel):
    config: MoEPConfig
    config_class = MoEPConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["MoEPBlocks"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_attention_backend = True

    def _init_weights(self, module):
        """GPT-2's: normal(0, initializer_range) weights, zero biases, unit norms."""
        super()._init_weights(module)
        std = self.config.initializer_range
        if isinstance(module, MoEPRouter):
            init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, MoEPProjection):
            init.normal_(module.weight, mean=0.0, std=std)
            init.zeros_(module.bias)
        elif isinstance(module, MoEPBlocks):
            for name, p in module.named_parameters(recurse=False):
                if name.startswith("ln_"):
                    (init.ones_ if name.endswith("weight") else init.zeros_)(p)
                elif name.endswith("weight"):
                    init.normal_(p, mean=0.0, std=std)
                else:
                    init.zeros_(p)


class MoEPModel(MoEPPreTrainedModel):
    def __init__(self, config: MoEPConfig):
        super().__init__(config)
        d, p = config.hidden_size, config.parallel_hidden_size
        inner, last = config.intermediate_size or 4 * d, config.num_hidden_layers - 1
        self.embed_tokens = nn.Embedding(config.vocab_size, d)
        self.embed_positions = nn.Embedding(config.max_position_embeddings, d)
        self.drop = nn.Dropout(config.embd_pdrop)
        # attention layers, numbered as their KV cache layers: first dense 0, parallel 1..L-2, last dense L-1
        self.first = MoEPBlocks(config, d, config.num_attention_heads, inner, 1, layer_idx=0)
        self.shrink = MoEPProjection(config, d, p)
        self.parallel = nn.ModuleList(MoEPParallelLayer(config, i) for i in range(1, last))
        self.grow = MoEPProjection(config, p, d)
        self.last = MoEPBlocks(config, d, config.num_attention_heads, inner, 1, layer_idx=last)
        self.norm = nn.LayerNorm(d, eps=config.layer_norm_epsilon)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self):
        return self.embed_tokens

    def set_input_embeddings(self, value):
        self.embed_tokens = value

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        **kwargs,
    ) -> MoeModelOutputWithPast:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("MoEPModel needs exactly one of input_ids and inputs_embeds")
        if "past_key_values" in kwargs:  # the name generation used before transformers 5
            cache = kwargs.pop("past_key_values")
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if self.gradient_checkpointing and self.training:
            use_cache = False  # a cache written in the forward would be written again in the recompute
        if use_cache and cache is None:
            cache = DynamicCache()  # grows a layer per attention layer on first use
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        T = inputs_embeds.shape[1]
        if position_ids is None:
            past = cache.get_seq_length() if cache is not None else 0
            position_ids = torch.arange(past, past + T, device=inputs_embeds.device)[None]
        h = self.drop(inputs_embeds + self.embed_positions(position_ids))
        mask = create_causal_mask(
            config=self.config,
            inputs_embeds=h,
            attention_mask=attention_mask,
            cache=cache,
            position_ids=position_ids,
        )
        h = self.first(h, mask, cache=cache)[0]
        h, logits = self.shrink(h)
        router_logits = [logits]
        for layer in self.parallel:
            h, logits = layer(h, mask, cache=cache)
            router_logits.append(logits)
        h, logits = self.grow(h)
        router_logits.append(logits)
        h = self.norm(self.last(h, mask, cache=cache)[0])
        return MoeModelOutputWithPast(
            last_hidden_state=h, cache=cache if use_cache else None, router_logits=tuple(router_logits)
        )


class MoEPForCausalLM(MoEPPreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: MoEPConfig):
        super().__init__(config)
        self.model = MoEPModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def save_pretrained(self, save_directory, *args, **kwargs):
        """PreTrainedModel's, with the base model in `auto_map` beside the LM (the official
        BabyLM pipeline's fine-tuning loads `AutoModel` with remote code)."""
        if self._auto_class is not None:
            auto_map = getattr(self.config, "auto_map", None) or {}
            self.config.auto_map = {**auto_map, "AutoModel": "modeling_moep.MoEPModel"}
        return super().save_pretrained(save_directory, *args, **kwargs)

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_router_logits: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ) -> MoeCausalLMOutputWithPast:
        """Logits, and with `output_router_logits` (the config's default) the routers'
        logits and their load-balancing `aux_loss`; with `labels`, `loss` is the shifted
        cross-entropy plus `router_aux_loss_coef * aux_loss`, as in Mixtral."""
        config = self.config
        if output_router_logits is None:
            output_router_logits = config.output_router_logits
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )
        h = out.last_hidden_state
        if isinstance(logits_to_keep, int) and logits_to_keep:
            h = h[:, -logits_to_keep:]
        elif not isinstance(logits_to_keep, int):
            h = h[:, logits_to_keep]
        logits = self.lm_head(h)
        aux_loss = loss = None
        if output_router_logits:
            aux_loss = router_aux_loss(
                out.router_logits, config.num_local_experts, config.num_experts_per_tok, attention_mask
            )
        if labels is not None:
            loss = self.loss_function(logits, labels, vocab_size=config.vocab_size, **kwargs)
            if aux_loss is not None:
                loss = loss + config.router_aux_loss_coef * aux_loss.to(loss.device)
        return MoeCausalLMOutputWithPast(
            loss=loss,
            aux_loss=aux_loss,
            logits=logits,
            cache=out.cache,
            router_logits=out.router_logits if output_router_logits else None,
        )


__all__ = ["MoEPForCausalLM", "MoEPModel", "MoEPPreTrainedModel", "router_aux_loss"]
