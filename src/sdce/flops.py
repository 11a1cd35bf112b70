"""Compute as SALT and PaLM count it: model FLOPs per token from a transformer's shape.

A decoder with L layers, width d, context T and N matrix-multiply parameters (attention and
MLP projections and the LM head; embedding lookups, norms and biases do no matmul) spends

    forward  2·N + 4·L·d·T  FLOPs per token   (2 per multiply-add; QK^T and AV: 2·T·d each)
    training 3 × forward    = 6·N + 12·L·d·T  (backward twice the forward)

(Chowdhery et al. 2022, PaLM, appendix B; Kaplan et al. 2020, section 2.1). As there, the
attention term counts the full T×T score matrix, not the causal half (with Mistral's and
Mixtral's `sliding_window` w, T×min(T, w): a query reads at most w keys), and elementwise work
(softmax, norms, the loss and its guidance mix) is left out: for the default study's student
the guidance mix is ~10·V = 2e4 FLOPs per token against 6·N ≈ 3e6, under 1 %.

A teacher costs its forward per token when it runs beside the student (`online`), its
forward over the training shard once when its signal is cached, and its own training when
the study trains it. A bigram table is counted as free: counting it is one pass of integer
additions over the shard, no matmul.

Mixtures of experts count the matmul parameters a token is multiplied by, not all that the
model holds. Mixtral (`num_local_experts` E, `num_experts_per_tok` k): per layer the
attention, a router d×E and k of the E gated experts (3·d·ff each). MoE-P (`sdce.moep`,
docs/models.md; width d, parallel width p, L layers): the two dense GPT-2 blocks at d
(4·d² + 2·d·ff each), the two MoE projections with their routers (d×E + k·d·p and
p×E + k·p·d: each expert multiplies only its tokens), and L - 2 parallel layers of a router
p×E and *all* E GPT-2 blocks at p (4·p² + 2·p·ff_p each): MoE-P runs every parallel block
on every token (a block's attention needs every earlier token's keys and values), so its
routing is sparse in what a token's output depends on, not in compute. Its attention term
is the sum over layers of their Q/K/V width: d for each dense layer, E·p for a parallel
layer (`attn_total`). tests/test_flops.py checks both against a hand count, the parameters
one token's forward uses, and PyTorch's FLOP counter.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

# model types whose `sliding_window` (when set) applies to every layer's attention; others
# (Qwen2's max_window_layers, Gemma 2's alternating layers) are counted with full context
SLIDING_EVERY_LAYER = {"mistral", "mixtral"}
# model types whose MLP is gated (gate, up and down projections: 3·d·ff parameters)
GATED_MLP = {"llama", "mistral", "mixtral", "qwen2", "qwen3", "gemma", "gemma2", "olmo", "olmo2"}


@dataclass(frozen=True)
class ModelFlops:
    """The shape that decides a decoder's FLOPs."""

    matmul_params: int  # N: parameters of the matrix multiplies a token uses, LM head included
    layers: int
    attn_width: int  # heads × head dimension (the width of Q, K and V per token)
    # the sum over layers of their attention width where layers differ (MoE-P); None: layers × attn_width
    attn_total: int | None = None
    window: int | None = None  # sliding-window attention: a query attends at most this many keys

    @property
    def attention(self) -> int:
        return self.layers * self.attn_width if self.attn_total is None else self.attn_total

    def forward_per_token(self, context: int) -> float:
        keys = context if self.window is None else min(context, self.window)
        return 2.0 * self.matmul_params + 4.0 * self.attention * keys

    def train_per_token(self, context: int) -> float:
        return 3.0 * self.forward_per_token(context)


def _get(config, *names, default=None):
    for name in names:
        value = getattr(config, name, None)
        if value is not None:
            return value
    return default


def of_config(config) -> ModelFlops:
    """The FLOP shape of a `transformers` decoder config (GPT-2 and Llama-family naming;
    Mixtral's experts and MoE-P as the module docstring counts them)."""
    if getattr(config, "model_type", "") == "moep":
        return _of_moep(config)
    d = int(_get(config, "hidden_size", "n_embd"))
    layers = int(_get(config, "num_hidden_layers", "n_layer"))
    heads = int(_get(config, "num_attention_heads", "n_head"))
    kv_heads = int(_get(config, "num_key_value_heads", default=heads))
    head_dim = int(_get(config, "head_dim", default=d // heads))
    ff = int(_get(config, "intermediate_size", "n_inner", default=4 * d) or 4 * d)
    vocab = int(config.vocab_size)
    attn = d * heads * head_dim + 2 * d * kv_heads * head_dim + heads * head_dim * d  # q, k, v, o
    mlp = (3 if getattr(config, "model_type", "") in GATED_MLP else 2) * d * ff
    experts = getattr(config, "num_local_experts", None)
    if experts:  # Mixtral: a router d×E and the k experts each token is routed to
        mlp = int(config.num_experts_per_tok) * mlp + d * int(experts)
    window = _get(config, "sliding_window") if config.model_type in SLIDING_EVERY_LAYER else None
    return ModelFlops(
        matmul_params=layers * (attn + mlp) + d * vocab,
        layers=layers,
        attn_width=heads * head_dim,
        window=int(window) if window else None,
    )


def _of_moep(config) -> ModelFlops:
    """MoE-P (`sdce.moep.MoEPConfig`): dense blocks, MoE projections and parallel layers."""
    d, p, layers = config.hidden_size, config.parallel_hidden_size, config.num_hidden_layers
    experts, k = config.num_local_experts, config.num_experts_per_tok
    ff, ff_p = config.intermediate_size or 4 * d, config.parallel_intermediate_size or 4 * p

    def block(width: int, inner: int) -> int:  # q, k, v, o and the MLP's two projections
        return 4 * width * width + 2 * width * inner

    dense = 2 * block(d, ff)
    projections = (d * experts + k * d * p) + (p * experts + k * p * d)  # shrink, grow: router + k experts
    parallel = (layers - 2) * (p * experts + experts * block(p, ff_p))  # router + every block
    return ModelFlops(
        matmul_params=dense + projections + parallel + d * config.vocab_size,
        layers=layers,
        attn_width=d,
        attn_total=2 * d + (layers - 2) * experts * p,
    )


def of_model_folder(path) -> ModelFlops:
    """The FLOP shape of a saved model (its config.json; no weights are loaded)."""
    from transformers import AutoConfig

    import sdce.moep  # noqa: F401  (registers model_type moep with AutoConfig)

    return of_config(AutoConfig.from_pretrained(str(path)))


def shape_dict(shape: ModelFlops) -> dict:
    """The shape as a descriptor or cache sidecar stores it (`ModelFlops(**d)` reads it back)."""
    return {k: v for k, v in dataclasses.asdict(shape).items() if v is not None}


def teacher_cost(teacher, context: int) -> tuple[float, float]:
    """(FLOPs per student token while the teacher runs, FLOPs spent once) of a loaded teacher.

    An online LM teacher's descriptor holds its shape and, when the study trained it, its
    training FLOPs; a cache's sidecar holds the FLOPs of the pass that filled it and the
    teacher's training FLOPs. Bigram and uniform teachers cost nothing (see the docstring)."""
    if teacher is None:
        return 0.0, 0.0
    info = getattr(teacher, "info", None)  # a cached signal
    if isinstance(info, dict):
        return 0.0, float(info.get("teacher_flops", 0.0)) + float(info.get("teacher_training_flops", 0.0))
    descriptor = getattr(teacher, "descriptor", None)  # an online teacher
    if isinstance(descriptor, dict) and "flops" in descriptor:
        shape = ModelFlops(**descriptor["flops"]["shape"])
        return shape.forward_per_token(context), float(descriptor["flops"].get("training", 0.0))
    return 0.0, 0.0
