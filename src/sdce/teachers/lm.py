"""Causal-LM teachers with their own tokenizer (what the surrogate and kl objectives read).

A teacher is any model `AutoModelForCausalLM` loads (a folder, a LoRA adapter folder
written by `sdce train`, or a name already in the local Hugging Face cache) with its
tokenizer beside it; a saved MoE-P student (`sdce.moep`) loads without remote code, as
students do. `sdce teacher` checks it against the student tokenizer and writes a small
descriptor (`teacher.json`); training (`teacher_source: online`) and the cache
(`sdce cache-teacher`) load the teacher from that descriptor.

The signal at student position i (the student predicts token i+1) comes from
`sdce.teachers.vocab`: the student window is re-tokenised by the teacher tokenizer
(`TextRealigner`), the teacher runs once over it, and its next-token distribution is
taken at the teacher position that covers exactly the student's prefix (as
`gather_teacher_positions` does). Positions
with no such teacher position are masked (`valid` False) and carry nothing. A teacher
with the student's own tokenizer skips the realignment.

At temperature T the teacher distribution is q = softmax(z / T) over its vocabulary.
With `top_k` set, the k most probable teacher tokens are mapped into the student
vocabulary (`map_teacher_topk`); tokens outside the intersection and those below
`probability_threshold` are dropped (probability 0, placeholder id 0), and `rest` is
the intersection mass that is not listed: q(intersection) - sum of listed. With
`top_k: null` the signal is dense: log q on every intersection id (-inf elsewhere).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F

from sdce import flops
from sdce.io import dir_hash, read_json, stable_hash, write_json
from sdce.teachers.signal import GuidanceSignal
from sdce.teachers.vocab import (
    TextRealigner,
    align_vocabularies,
    backend_of,
    load_tokenizer,
    map_teacher_topk,
)

# Probabilities the float16 cache cannot hold (below its smallest subnormal) are dropped
# online too, so that an online teacher and its cache list exactly the same entries.
MIN_PROB = 2.0**-24

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class TeacherError(ValueError):
    pass


def signal_name(spec: dict) -> str:
    """A readable folder name for a signal spec (the cache of a teacher is one per spec)."""
    k = "dense" if spec["top_k"] is None else spec["top_k"]
    return f"k{k}_p{spec['probability_threshold']:g}_t{spec['temperature']:g}"


def _is_local(path: str | Path) -> bool:
    return Path(path).expanduser().exists()


def _adapter_base(path: str | Path) -> str | None:
    """The base model of a LoRA adapter folder (None for a full model)."""
    f = Path(path) / "adapter_config.json"
    return json.loads(f.read_text())["base_model_name_or_path"] if f.is_file() else None


def load_lm_tokenizer(path: str | Path, trust_remote_code: bool = False):
    if _is_local(path) and (Path(path) / "tokenizer.json").is_file():
        return load_tokenizer(path)
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    except OSError as e:
        raise TeacherError(f"no tokenizer for teacher {path}: {e}") from None


def load_teacher_lm(path: str | Path, *, dtype: str = "float32", trust_remote_code: bool = False):
    """(model in eval mode without gradients, tokenizer); a LoRA adapter folder is merged
    into its base model."""
    from transformers import AutoModelForCausalLM

    import sdce.moep  # noqa: F401  (registers model_type moep: a saved MoE-P loads as a student does)

    kwargs = {"dtype": DTYPES[dtype], "trust_remote_code": trust_remote_code}
    base = _adapter_base(path)
    try:
        if base is None:
            model = AutoModelForCausalLM.from_pretrained(str(path), **kwargs)
        else:
            try:
                from peft import PeftModel
            except ImportError:
                raise TeacherError(
                    f"{path} is a LoRA adapter; loading it needs peft (pip install 'sdce[lora]')"
                ) from None
            model = AutoModelForCausalLM.from_pretrained(base, **kwargs)
            model = PeftModel.from_pretrained(model, str(path)).merge_and_unload()
    except OSError as e:
        raise TeacherError(f"cannot load teacher model {path}: {e}") from None
    model.eval().requires_grad_(False)
    return model, load_lm_tokenizer(path, trust_remote_code)


def _model_config(path: str | Path, trust_remote_code: bool):
    from transformers import AutoConfig

    import sdce.moep  # noqa: F401  (registers model_type moep with AutoConfig)

    return AutoConfig.from_pretrained(_adapter_base(path) or str(path), trust_remote_code=trust_remote_code)


def _training_flops(path: str | Path) -> float:
    """The FLOPs the study spent training a teacher: the training job's summary.json beside
    its model folder; 0 for a model the study did not train."""
    summary = Path(path).parent / "summary.json"
    if _is_local(path) and summary.is_file():
        return float(read_json(summary).get("flops", {}).get("total", 0.0))
    return 0.0


def tokenizer_hash(tokenizer) -> str:
    return stable_hash(backend_of(tokenizer).to_str())


def describe_teacher(
    spec: dict, name: str, model: str, student_tokenizer_dir: str | Path, out: str | Path
) -> dict:
    """Check a teacher against the student tokenizer and write its descriptor (`sdce teacher`).

    Refuses a vocabulary overlap below `min_overlap` here, before any training starts."""
    from sdce.data.tokenizer import load as load_student_tokenizer

    teacher_tok = load_lm_tokenizer(model, spec["trust_remote_code"])
    config = _model_config(model, spec["trust_remote_code"])
    vocab = int(config.vocab_size)
    positions = getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None)
    student_tok = load_student_tokenizer(student_tokenizer_dir)
    try:
        alignment = align_vocabularies(
            student_tok, teacher_tok, teacher_model_vocab_size=vocab, min_overlap=spec["min_overlap"]
        )
    except ValueError as e:
        raise TeacherError(f"teachers.{name}: {e}") from None
    identity = dir_hash(model) if _is_local(model) else str(model)
    descriptor = {
        "name": name,
        "model": str(model),
        "dtype": spec["dtype"],
        "trust_remote_code": spec["trust_remote_code"],
        "min_overlap": spec["min_overlap"],
        "identity": stable_hash({"model": identity, "dtype": spec["dtype"]}),
        "tokenizer_hash": tokenizer_hash(teacher_tok),
        "max_positions": positions,
        "alignment": alignment.summary(),
        "flops": {"shape": flops.shape_dict(flops.of_config(config)), "training": _training_flops(model)},
    }
    write_json(out, descriptor)
    return descriptor


class LMTeacher:
    """Online teacher: one forward pass of the teacher per student micro-batch."""

    def __init__(
        self,
        model,
        teacher_tokenizer,
        student_tokenizer,
        *,
        top_k: int | None,
        probability_threshold: float,
        temperature: float,
        min_overlap: float = 0.0,
        descriptor: dict | None = None,
    ):
        if temperature <= 0:
            raise TeacherError(f"temperature must be > 0, got {temperature}")
        self.model = model
        self.top_k, self.threshold, self.temperature = top_k, probability_threshold, temperature
        self.descriptor = descriptor or {}
        out_vocab = model.get_output_embeddings().weight.shape[0]
        self.alignment = align_vocabularies(
            student_tokenizer,
            teacher_tokenizer,
            teacher_model_vocab_size=max(out_vocab, len(teacher_tokenizer)),
            min_overlap=min_overlap,
        )
        self.vocab_size = len(teacher_tokenizer)
        self.check_top_k(top_k)
        t2s = self.alignment.teacher_to_student
        n = len(student_tokenizer)
        self.identity = (
            backend_of(teacher_tokenizer).to_str() == backend_of(student_tokenizer).to_str()
            and t2s.numel() >= n
            and bool((t2s[:n] == torch.arange(n)).all())
        )
        self.realigner = (
            None
            if self.identity
            else TextRealigner(student_tokenizer, teacher_tokenizer, alignment=self.alignment)
        )
        cfg = model.config
        self.max_positions = getattr(cfg, "n_positions", None) or getattr(
            cfg, "max_position_embeddings", None
        )
        self._mapped_ids = torch.nonzero(self.alignment.teacher_mask).squeeze(-1)
        # the student ids the teacher can express; None when that is all of them (no masking)
        mask = self.alignment.student_mask
        self.support = None if bool(mask.all()) else mask

    def check_top_k(self, top_k: int | None) -> None:
        if top_k is not None and top_k > self.vocab_size:
            raise TeacherError(
                f"top_k={top_k} is larger than the teacher's vocabulary ({self.vocab_size} tokens)"
            )

    @classmethod
    def from_descriptor(cls, path: str | Path, student_tokenizer, spec: dict, device="cpu") -> LMTeacher:
        d = read_json(path)
        model, tok = load_teacher_lm(d["model"], dtype=d["dtype"], trust_remote_code=d["trust_remote_code"])
        teacher = cls(model, tok, student_tokenizer, **spec, min_overlap=d["min_overlap"], descriptor=d)
        return teacher.to(device)

    @property
    def device(self):
        return next(self.model.parameters()).device

    def to(self, device) -> LMTeacher:
        self.model.to(device)
        self.alignment = self.alignment.to(device)
        self._mapped_ids = self._mapped_ids.to(device)
        self.support = None if self.support is None else self.support.to(device)
        return self

    @torch.no_grad()
    def signal(self, input_ids: torch.Tensor, offsets=None) -> GuidanceSignal:
        """The signal for student windows (B, T); `offsets` is unused (the cache needs it)."""
        return self.signal_from_logits(*self.rows(input_ids))

    @torch.no_grad()
    def rows(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(teacher logits (B, T, V_teacher) at the student positions, valid (B, T))."""
        device = self.device
        if self.identity:
            logits = self.model(input_ids=input_ids.to(device)).logits
            return logits, torch.ones(input_ids.shape, dtype=torch.bool, device=device)
        batch = self.realigner.realign_batch(input_ids.cpu())
        ids, attn, pos = batch.teacher_ids, batch.teacher_attention_mask, batch.teacher_pos
        if self.max_positions and ids.size(1) > self.max_positions:
            # a window the teacher cannot take whole: positions past its context are masked
            ids, attn = ids[:, : self.max_positions], attn[:, : self.max_positions]
            pos = torch.where(pos >= self.max_positions, torch.full_like(pos, -1), pos)
        logits = self.model(input_ids=ids.to(device), attention_mask=attn.to(device)).logits
        pos = pos.to(device)
        # the teacher row at each student position; masked rows are zeroed by signal_from_logits
        return logits[torch.arange(pos.size(0), device=device).unsqueeze(1), pos.clamp(min=0)], pos >= 0

    def signal_from_logits(self, logits: torch.Tensor, valid: torch.Tensor, spec: dict | None = None):
        """Teacher rows (B, T, V_teacher) -> the signal; `spec` (top_k, probability_threshold,
        temperature) overrides the teacher's own, so one teacher pass serves several signals."""
        spec = spec or {
            "top_k": self.top_k,
            "probability_threshold": self.threshold,
            "temperature": self.temperature,
        }
        top_k = spec["top_k"]
        logq = F.log_softmax(logits.float() / spec["temperature"], dim=-1)
        b, t = valid.shape
        support = self.support
        if top_k is None:
            vocab = self.alignment.student_vocab_size
            if self.identity and logq.size(-1) == vocab:
                dense = logq  # the student's own ids, every position aligned
            else:
                dense = torch.full((b, t, vocab), float("-inf"), device=logq.device)
                dense[..., self.alignment.teacher_to_student[self._mapped_ids]] = logq[..., self._mapped_ids]
                dense = dense.masked_fill(~valid.unsqueeze(-1), float("-inf"))
            empty = torch.zeros((b, t, 0), device=logq.device)
            return GuidanceSignal(
                empty.long(), empty, torch.zeros(b, t, device=logq.device), dense, valid, support
            )
        q = logq.exp()
        mapped = q @ self.alignment.teacher_mask.to(q.dtype)  # teacher mass on the intersection
        top_q, top_i = q.topk(top_k, dim=-1)
        ids, kept, _, ok = map_teacher_topk(top_i, top_q, self.alignment, return_valid=True)
        keep = ok & (kept >= max(spec["probability_threshold"], MIN_PROB)) & valid.unsqueeze(-1)
        probs = torch.where(keep, kept, torch.zeros_like(kept))
        ids = torch.where(keep, ids, torch.zeros_like(ids))
        rest = torch.where(valid, (mapped - probs.sum(-1)).clamp_min(0.0), torch.zeros_like(mapped))
        return GuidanceSignal(ids, probs, rest, valid=valid, support=support)
