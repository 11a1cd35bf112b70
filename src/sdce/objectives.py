"""The objective registry: every training objective is one entry here.

An entry says everything the pipeline needs to know about an objective:

* `loss`: the pure loss function (`sdce.losses`), one signature for all of them:
  `loss(logits, targets, signal, weight, *, tail_policy, **options, **batch extras) -> dict`;
* `options`: the loss-side settings it reads from a validated `guidance` slice;
* `teacher`: the kind of teacher that produces its `GuidanceSignal` (a key of
  `TEACHER_KINDS`: none, uniform, bigram, lm). The kind says which artifact the DAG builds
  for a run (`artifacts`, asked by the rules, which never name an objective) and how the
  training job loads it (`load_teacher`);
* `signal`: for an LM teacher, what the teacher must produce (top-k, threshold,
  temperature), which is also the key of its cache;
* `aux`: auxiliary loss terms it adds (names in `AUX_TERMS`; `z_loss` is on for every
  objective with `training.z_loss > 0`, a model family adds its own, e.g. a router loss);
* `model_kind`: the kind of student it trains (`causal` next-token models; `bidirectional`
  for objectives that denoise a whole sequence);
* `batch`: how a training window becomes the model's inputs, the loss targets and any extra
  arguments of the loss (`causal_batch`: inputs x, targets the next tokens;
  `diffusion_batch`: inputs x with tokens masked, targets the masked tokens);
* `tokenizer`: what the objective needs of the run's tokenizer (`with_mask_token` adds the
  mask token of masked diffusion), applied before the model is built and saved with it;
* `validation`: the periodic validation measure (a name in `sdce.evaluation.validation.MEASURES`)
  and `validation_options`, its settings from the run's `guidance` (`validation_spec`).

Adding an objective is one entry here, its name in the schema's `guidance.objective` enum,
its documentation and its tests.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from sdce import losses
from sdce.data import batches


class ObjectiveError(ValueError):
    """A run whose objective cannot be set up (missing teacher artifact, wrong model kind)."""


# ---------------------------------------------------------------------------- batches


@dataclass(frozen=True)
class Batch:
    """One micro-batch as the model and the loss see it."""

    inputs: dict[str, torch.Tensor]  # keyword arguments of model(...)
    targets: torch.Tensor  # (B, T), losses.IGNORE where nothing is scored
    extras: dict[str, Any] = field(default_factory=dict)  # extra keyword arguments of the loss


def causal_batch(x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None, guidance: dict,
                 tokenizer=None) -> Batch:  # fmt: skip
    """Next-token prediction: the window is the input, the shifted window the target."""
    return Batch({"input_ids": x}, y)


def diffusion_batch(x: torch.Tensor, y: torch.Tensor, generator: torch.Generator, guidance: dict,
                    tokenizer) -> Batch:  # fmt: skip
    """LLaDA pre-training: the window x (the last target token is not used), cropped to a
    random length with probability `random_length`, each sequence masked with its own
    p = (1 - eps) t + eps; the loss scores the masked tokens. Every draw comes from the
    micro-batch's noise generator, so a resumed run masks what the uninterrupted one did."""
    from sdce import diffusion

    spec = guidance["diffusion"]
    clean = diffusion.random_length(x, generator, spec["random_length"])
    noisy, masked, p = diffusion.forward_process(clean, tokenizer.mask_token_id, generator, eps=spec["eps"])
    targets = torch.where(masked, clean, torch.full_like(clean, losses.IGNORE))
    return Batch({"input_ids": noisy}, targets, {"p": p})


def sft_batch(x: torch.Tensor, y: torch.Tensor, generator: torch.Generator, guidance: dict,
              tokenizer) -> Batch:  # fmt: skip
    """LLaDA SFT: each window starts at an example (`DocumentSampler`); after its eos it is
    padded with eos, which counts as answer; the prompt (found by its chat markers) is never
    masked, the answer masked with p = (1 - eps) t + eps per sequence."""
    from sdce import diffusion
    from sdce.data.chat import pad_after_eos, prompt_lengths

    clean = pad_after_eos(x, tokenizer.eos_token_id)
    lengths = prompt_lengths(clean, tokenizer)
    eps = guidance["diffusion"]["eps"]
    noisy, masked, p = diffusion.sft_forward_process(
        clean, lengths, tokenizer.mask_token_id, generator, eps=eps
    )
    targets = torch.where(masked, clean, torch.full_like(clean, losses.IGNORE))
    return Batch({"input_ids": noisy}, targets, {"p": p, "prompt_lengths": lengths})


# ---------------------------------------------------------------------------- teachers


@dataclass(frozen=True)
class TeacherKind:
    """Where a kind of teacher comes from: the DAG artifact (a path relative to the study's
    results folder, None for teachers that need none) and how a job loads it."""

    artifact: Callable[[dict, str], str | None]
    load: Callable[..., Any] | None
    what: str = ""  # the artifact, as an error names it


def _bigram_load(guidance, path, tokenizer, device, train_shard):
    from sdce.teachers.bigram import BigramTeacher

    teacher = BigramTeacher.load(path)
    if teacher.vocab_size != len(tokenizer):
        raise ObjectiveError(
            f"bigram table {path} has vocabulary {teacher.vocab_size}, the student {len(tokenizer)}"
        )
    return teacher.to(device)


def _uniform_load(guidance, path, tokenizer, device, train_shard):
    from sdce.teachers.uniform import UniformTeacher

    return UniformTeacher()


def _lm_artifact(guidance: dict, part: str) -> str:
    folder = f"teachers/{guidance['teacher']}"
    if guidance["teacher_source"] == "online":
        return f"{folder}/descriptors/{part}.json"
    return f"{folder}/cache/{part}"  # the run's signal is a subfolder


def _lm_load(guidance, path, tokenizer, device, train_shard):
    from sdce.teachers.cache import CachedTeacher
    from sdce.teachers.lm import LMTeacher

    spec = signal_spec(guidance)
    try:
        if guidance["teacher_source"] == "online":
            return LMTeacher.from_descriptor(path, tokenizer, spec, device)
        if spec["top_k"] is None:
            raise ObjectiveError("a dense signal (top_k: null) needs teacher_source: online")
        return CachedTeacher.load(path, spec, train_shard=train_shard, device=device)
    except ValueError as e:
        raise ObjectiveError(f"{guidance['objective']} teacher {path}: {e}") from None


TEACHER_KINDS: dict[str, TeacherKind] = {
    "none": TeacherKind(artifact=lambda guidance, part: None, load=None),
    "uniform": TeacherKind(artifact=lambda guidance, part: None, load=_uniform_load),
    "bigram": TeacherKind(lambda guidance, part: f"bigram/{part}.npz", _bigram_load, "the bigram table"),
    "lm": TeacherKind(_lm_artifact, _lm_load, "its LM teacher's cache folder or descriptor (teacher.json)"),
}


# ---------------------------------------------------------------------------- auxiliary terms


def _z_loss_term(logits, batch: Batch, outputs, chunk_tokens=losses.CHUNK_TOKENS) -> torch.Tensor:
    return losses.z_loss(logits, batch.targets, chunk_tokens=chunk_tokens)


def _router_term(logits, batch: Batch, outputs, chunk_tokens=None) -> torch.Tensor:
    aux = getattr(outputs, "aux_loss", None)
    if aux is None:
        raise ObjectiveError("the router term needs a model that returns aux_loss (a mixture of experts)")
    return aux


# name -> term(logits, batch, model outputs); the weight of each comes from the run (`aux_weights`)
AUX_TERMS: dict[str, Callable] = {"z_loss": _z_loss_term, "router": _router_term}


# ---------------------------------------------------------------------------- objectives


def _no_options(guidance: dict) -> dict:
    return {}


@dataclass(frozen=True)
class Objective:
    name: str
    loss: Callable[..., dict]
    teacher: str = "none"
    options: Callable[[dict], dict] = _no_options
    signal: Callable[[dict], dict] | None = None
    aux: tuple[str, ...] = ()
    model_kind: str = "causal"
    batch: Callable[..., Batch] = causal_batch
    tokenizer: Callable[[Any], Any] = lambda tokenizer: tokenizer
    validation: str = "next_token"
    validation_options: Callable[[dict], dict] = _no_options
    sampler: Callable[..., Any] = batches.WindowSampler
    data: Callable[[dict], None] = lambda study: None

    @property
    def guided(self) -> bool:
        return self.teacher != "none"


def _with_mask_token(tokenizer):
    from sdce.data.tokenizer import with_mask_token

    return with_mask_token(tokenizer)


def _chat_corpus(study: dict) -> None:
    """SFT reads a prompt/response corpus whose chat markers the tokenizer keeps whole."""
    from sdce.data.chat import MARKERS

    if study["corpus"]["prompt_column"] is None:
        raise ObjectiveError(
            "corpus.prompt_column: objective 'masked_diffusion_sft' needs a prompt/response corpus "
            "(corpus.prompt_column and corpus.response_column)"
        )
    if study["tokenizer"]["kind"] == "bpe" and not set(MARKERS) <= set(study["tokenizer"]["special_tokens"]):
        raise ObjectiveError(
            f"tokenizer.special_tokens: a prompt/response corpus needs [{', '.join(MARKERS)}]"
        )


def _lm_signal(section: str, fixed_temperature: float | None = None):
    def spec(guidance: dict) -> dict:
        s = guidance[section]
        temperature = fixed_temperature if fixed_temperature is not None else s["temperature"]
        return {
            "top_k": s["top_k"],
            "probability_threshold": s["probability_threshold"],
            "temperature": temperature,
        }

    return spec


OBJECTIVES: dict[str, Objective] = {
    o.name: o
    for o in (
        Objective("ce", losses.ce_loss),
        Objective("bigram", losses.bigram_mix_loss, teacher="bigram"),
        Objective("label_smoothing", losses.label_smoothing_loss, teacher="uniform"),
        Objective(
            "surrogate",
            losses.surrogate_loss,
            teacher="lm",
            options=lambda g: {"weighting": g["surrogate"]["weighting"]},
            signal=_lm_signal("surrogate", fixed_temperature=1.0),
        ),
        Objective(
            "kl",
            losses.kl_loss,
            teacher="lm",
            options=lambda g: {"alpha": g["kl"]["alpha"], "temperature": g["kl"]["temperature"]},
            signal=_lm_signal("kl"),
        ),
        Objective(
            "masked_diffusion",
            losses.masked_diffusion_loss,
            model_kind="bidirectional",
            batch=diffusion_batch,
            tokenizer=_with_mask_token,
            validation="elbo",
            validation_options=lambda g: {"n_draws": g["diffusion"]["elbo_draws"]},
        ),
        Objective(
            "masked_diffusion_sft",
            losses.masked_diffusion_sft_loss,
            model_kind="bidirectional",
            batch=sft_batch,
            tokenizer=_with_mask_token,
            validation="answer_elbo",
            validation_options=lambda g: {"n_draws": g["diffusion"]["elbo_draws"]},
            sampler=batches.DocumentSampler,
            data=_chat_corpus,
        ),
    )
}


def get(name: str) -> Objective:
    if name not in OBJECTIVES:
        raise ObjectiveError(f"unknown objective '{name}' (known: {', '.join(OBJECTIVES)})")
    return OBJECTIVES[name]


def of(guidance: dict) -> Objective:
    return get(guidance["objective"])


# ---------------------------------------------------------------------------- what the rest asks


def artifact(guidance: dict, part: str) -> str | None:
    """The teacher artifact a run's objective reads, relative to the results folder (None:
    no artifact). The rules ask this; they never name an objective."""
    return TEACHER_KINDS[of(guidance).teacher].artifact(guidance, part)


def validation_spec(guidance: dict) -> dict:
    """The validation measure of a run (`name`, a key of `validation.MEASURES`) and its
    options: what the training loop and the evaluation job both score the run with."""
    objective = of(guidance)
    return {"name": objective.validation, **objective.validation_options(guidance)}


def lm_teacher(guidance: dict) -> str | None:
    """The name of the LM teacher (a key of `teachers`) a run reads, or None."""
    return guidance["teacher"] if of(guidance).teacher == "lm" else None


def reads_online(guidance: dict) -> bool:
    """Whether a run runs its LM teacher during training (and so reads the teacher model)."""
    return lm_teacher(guidance) is not None and guidance["teacher_source"] == "online"


def signal_spec(guidance: dict) -> dict:
    """What the LM teacher of a run must produce (also the key of its cache)."""
    objective = of(guidance)
    if objective.signal is None:
        raise ObjectiveError(f"objective '{objective.name}' has no LM teacher")
    return objective.signal(guidance)


def load_teacher(guidance: dict, path: str | None, tokenizer, device, *, train_shard=None):
    """The signal producer of a run (None when its objective has no teacher)."""
    objective = of(guidance)
    kind = TEACHER_KINDS[objective.teacher]
    if kind.load is None:
        return None
    if kind.artifact(guidance, "main") is not None and not path:
        raise ObjectiveError(f"objective '{objective.name}' needs {kind.what} (--teacher)")
    return kind.load(guidance, path, tokenizer, device, train_shard)


def aux_weights(run: dict) -> dict[str, float]:
    """The auxiliary terms of a run and their weights (only the non-zero ones)."""
    from sdce.model import family_of

    weights = {"z_loss": run["training"]["z_loss"]}
    weights.update(family_of(run["model"]).aux_weights(run["model"]))
    for name in of(run["guidance"]).aux:
        weights.setdefault(name, 1.0)
    return {k: float(v) for k, v in weights.items() if v}


def compute(
    objective: Objective,
    logits: torch.Tensor,
    batch: Batch,
    signal,
    weight: float,
    guidance: dict,
    aux: dict[str, float] | None = None,
    outputs=None,
    chunk_tokens: int | None = losses.CHUNK_TOKENS,
) -> dict:
    """The loss terms of a run's objective on one micro-batch (`terms` with the objective's
    options read from the run's `guidance`, in chunks of `chunk_tokens` tokens:
    training.loss_chunk_tokens)."""
    options = {
        "tail_policy": guidance["tail_policy"],
        "chunk_tokens": chunk_tokens,
        **objective.options(guidance),
    }
    return terms(objective, logits, batch, signal, weight, options, aux, outputs)


def terms(objective: Objective, logits, batch: Batch, signal, weight, options: dict, aux=None, outputs=None):
    """The objective's loss terms plus its weighted auxiliary terms. With no signal (no
    teacher, or a guidance weight of 0) a guided objective is its plain cross-entropy."""
    fn = objective.loss if signal is not None or not objective.guided else losses.ce_loss
    folded = {"z_loss": True} if "z_loss" in (aux or {}) else {}  # in the loss's own chunk pass
    out = fn(logits, batch.targets, signal, weight, **options, **batch.extras, **folded)
    for name, w in (aux or {}).items():
        if name not in out:  # a term the loss did not compute itself
            out[name] = AUX_TERMS[name](
                logits, batch, outputs, options.get("chunk_tokens", losses.CHUNK_TOKENS)
            )
        out["loss"] = out["loss"] + w * out[name]
    return out


def compute_named(name: str, logits, targets, signal, weight, *, z_weight: float = 0.0, **options) -> dict:
    """`terms` by objective name with the loss options given directly (tests, benchmarks)."""
    aux = {"z_loss": z_weight} if z_weight else None
    return terms(get(name), logits, Batch({}, targets), signal, weight, options, aux)


def check_data(study: dict, runs: dict[str, dict]) -> None:
    """What the runs' objectives need of the study's data (e.g. SFT a prompt/response corpus)."""
    for name in sorted({run["guidance"]["objective"] for run in runs.values()}):
        get(name).data(study)


def check_run(run: dict, where: str) -> None:
    """A run whose student is of another kind than its objective trains is refused."""
    from sdce.model import family_of

    objective, family = of(run["guidance"]), family_of(run["model"])
    if run["model"]["from_pretrained"] is None and family.kind != objective.model_kind:
        raise ObjectiveError(
            f"{where}: objective '{objective.name}' trains a {objective.model_kind} model, "
            f"model.family '{run['model']['family']}' is {family.kind}"
        )
