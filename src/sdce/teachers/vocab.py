"""Vocabulary alignment and cross-tokenizer position mapping.

A teacher with its own tokenizer (the surrogate LM, a distillation teacher)
predicts distributions over *its* vocabulary at *its* token positions. Turning
that into a guidance signal for the student needs two mappings, both exact:

Ids: `align_vocabularies` intersects the two vocabularies by **surface form**,
the bytes a token stands for in decoded text:

* byte-level BPE (GPT-2 style; a `ByteLevel` pre-tokenizer or decoder): each
  character of the token string is mapped back through the GPT-2
  bytes<->unicode table (`Ġ` -> b" ", `Ċ` -> b"\\n", `Ã©` -> b"\\xc3\\xa9").
* sentencepiece style (`Metaspace`, or a `Replace ▁ -> " "` decoder / a
  `Replace " " -> ▁` normaliser): the meta symbol `▁` becomes a space.
* byte fallback (`<0xNN>` on a BPE model with `byte_fallback`): the single byte
  NN, valid UTF-8 or not; it can only match a token that is exactly that byte.
* anything else: the token string as UTF-8. WordPiece is refused: its
  word-initial pieces have no unambiguous surface form.
* special tokens (every `special` added token and every id the HF tokenizer
  lists in `all_special_ids`) have no surface form. They are paired by role
  (eos, bos, unk, pad, sep, cls, mask, in that priority), one to one: a role
  pairs only if neither token is already paired, so GPT-2's single
  `<|endoftext|>` (bos = eos = unk) pairs with the other side's eos only.
* non-special added tokens stand for their literal content.

Surface forms are `bytes`. When several tokens of one vocabulary share a form
(Llama 2 has `a` and `<0x61>`; `▁` and a literal-space token) the canonical one
is picked deterministically by (reachable first, normal before byte-fallback,
lowest id): a token containing a literal space in a `▁` vocabulary can never be
produced by the normaliser, so it loses to its `▁` twin. Only canonical tokens
are mapped, so both directions are injective. Ids beyond the tokenizer (a model
embedding padded to a multiple of 64) are unmapped.

Positions: `TextRealigner` shows the teacher the same text the student sees.
The student ids are turned into bytes (concatenated surface forms, every
token's byte span recorded), each run of text between special tokens is
re-tokenised by the teacher tokenizer (its own normaliser and pre-tokenizer,
special-token strings in the text kept as text), and every teacher token gets
its byte span in the same coordinates. Spans come from the teacher's surface
forms, which must concatenate back to the text fed (checked per run; byte
exact, so boundaries inside a multi-byte character are kept); a run whose
teacher tokens do not reproduce the text (a lowercasing normaliser, `<unk>`)
falls back to the tokenizer's character `offset_mapping`, accepting only
non-overlapping token ends.

Student position t (target token t+1, starting at byte b) is given teacher
position j when the teacher's prefix 0..j covers exactly the student's prefix
0..t: the same bytes (teacher token j ends at b) and the same paired special
tokens. Teacher position j then predicts a teacher token starting at b, the
point where the student target starts; that is the only place where the two
next-token distributions are about the same event. Where no teacher token ends
at b (the teacher merged across the student boundary), or the target has no
teacher counterpart (an unpaired special, a token of zero width), the position
is masked (`teacher_pos[t] = -1`). Nothing is interpolated.

Leading spaces: sentencepiece-style tokenizers put a `▁` in front of text. On
the student side, at a text start (after a special token, or the first token
when `starts_document=True`) a student tokenizer that adds such a prefix has
its leading space dropped, as its decoder does. On the teacher side a text
that begins with a space is fed without it to a tokenizer that prefixes
unconditionally (Llama 2's `Prepend ▁`), so the prefix stands for the real
space; a text without a leading space fed to a prefixing tokenizer gets an
artefact space, which belongs to the first teacher token and maps to width 0.
Invalid UTF-8 (a window cut inside a character) reaches the teacher as U+FFFD,
one character per byte; boundaries inside the replacement are masked.

Teacher top-k lists are carried into the student vocabulary with
`map_teacher_topk` (a gather through `teacher_to_student`; unmapped entries get
probability 0 and a placeholder id 0), and teacher values are picked at the
realigned positions with `gather_teacher_positions`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

SPECIAL_ROLES = ("eos", "bos", "unk", "pad", "sep", "cls", "mask")

# Role inference for a bare `tokenizers.Tokenizer`, which carries no role attributes.
_ROLE_NAMES = {
    "eos": ("</s>", "<|endoftext|>", "<eos>", "<|eos|>", "[EOS]", "<|end_of_text|>"),
    "bos": ("<s>", "<bos>", "<|bos|>", "[BOS]", "<|startoftext|>", "<|begin_of_text|>"),
    "unk": ("<unk>", "[UNK]", "<|unk|>"),
    "pad": ("<pad>", "[PAD]", "<|pad|>"),
    "sep": ("[SEP]", "<sep>"),
    "cls": ("[CLS]", "<cls>"),
    "mask": ("[MASK]", "<mask>"),
}

_BYTE_FALLBACK = re.compile(r"<0x([0-9A-Fa-f]{2})>")
_SURROGATES = re.compile("[\udc80-\udcff]")
_PROBE = "a"


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """The GPT-2 table from bytes to the printable characters byte-level BPE writes."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs, strict=True)}


@lru_cache(maxsize=1)
def unicode_to_bytes() -> dict[str, int]:
    return {c: b for b, c in bytes_to_unicode().items()}


# --------------------------------------------------------------------------- surface forms


def backend_of(tok):
    """The `tokenizers.Tokenizer` behind a fast HF tokenizer (or `tok` itself)."""
    from tokenizers import Tokenizer

    if isinstance(tok, Tokenizer):
        return tok
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is None:
        raise TypeError(
            f"{type(tok).__name__} is not a fast tokenizer; vocabulary alignment needs a "
            "PreTrainedTokenizerFast or a tokenizers.Tokenizer"
        )
    return backend


def _types(component) -> list[dict]:
    """Every {"type": ...} node of a normaliser/pre-tokenizer/decoder, flattened."""
    if component is None:
        return []
    out: list[dict] = []
    stack: list[Any] = [json.loads(component.__getstate__())]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if "type" in node:
                out.append(node)
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return out


@dataclass(frozen=True)
class SurfaceScheme:
    """How token strings of one tokenizer spell text."""

    kind: str  # "byte_level" | "metaspace" | "plain"
    replacement: str | None = None
    byte_fallback: bool = False


def surface_scheme(tok) -> SurfaceScheme:
    backend = backend_of(tok)
    model = type(backend.model).__name__
    if model == "WordPiece":
        raise NotImplementedError(
            "WordPiece vocabularies have no unambiguous surface form (word-initial pieces "
            "may or may not follow a space); align byte-level or sentencepiece-style tokenizers"
        )
    byte_fallback = bool(getattr(backend.model, "byte_fallback", False))
    pre, dec, norm = _types(backend.pre_tokenizer), _types(backend.decoder), _types(backend.normalizer)
    if any(n["type"] == "ByteLevel" for n in pre + dec):
        return SurfaceScheme("byte_level", None, byte_fallback)
    for n in pre + dec:
        if n["type"] == "Metaspace":
            return SurfaceScheme("metaspace", n.get("replacement", "▁"), byte_fallback)
    for n in dec:
        pattern = n.get("pattern") or {}
        if n["type"] == "Replace" and n.get("content") == " " and "String" in pattern:
            return SurfaceScheme("metaspace", pattern["String"], byte_fallback)
    for n in norm:
        pattern = n.get("pattern") or {}
        if n["type"] == "Replace" and pattern.get("String") == " " and n.get("content"):
            return SurfaceScheme("metaspace", n["content"], byte_fallback)
    return SurfaceScheme("plain", None, byte_fallback)


def _surface(token: str, scheme: SurfaceScheme) -> bytes | None:
    if scheme.byte_fallback:
        m = _BYTE_FALLBACK.fullmatch(token)
        if m:
            return bytes([int(m.group(1), 16)])
    if scheme.kind == "byte_level":
        table = unicode_to_bytes()
        try:
            return bytes([table[c] for c in token])
        except KeyError:
            return None
    if scheme.kind == "metaspace":
        return token.replace(scheme.replacement, " ").encode("utf-8")
    return token.encode("utf-8")


@dataclass
class TokenSurfaces:
    """Surface form (bytes) of every id of one tokenizer; None for special/unknown ids."""

    forms: list[bytes | None]
    special_ids: frozenset[int]
    roles: dict[str, int]
    byte_fallback_ids: frozenset[int]
    unreachable_ids: frozenset[int]
    scheme: SurfaceScheme

    @property
    def size(self) -> int:
        return len(self.forms)

    def canonical(self) -> dict[bytes, int]:
        """form -> the one id standing for it (reachable, then normal, then lowest id)."""
        best: dict[bytes, tuple[bool, bool, int]] = {}
        fb, unreachable = self.byte_fallback_ids, self.unreachable_ids
        for i, form in enumerate(self.forms):
            if form is None:
                continue
            rank = (i in unreachable, i in fb, i)
            old = best.get(form)
            if old is None or rank < old:
                best[form] = rank
        return {form: rank[2] for form, rank in best.items()}


def _special_roles(tok, backend, special_ids: set[int]) -> dict[str, int]:
    roles: dict[str, int] = {}
    if backend is not tok:
        for role in SPECIAL_ROLES:
            try:
                i = getattr(tok, f"{role}_token_id", None)
            except (AttributeError, KeyError, ValueError):
                i = None
            if isinstance(i, int) and i >= 0:
                roles[role] = i
        return roles
    names = {backend.id_to_token(i): i for i in special_ids}
    for role, candidates in _ROLE_NAMES.items():
        for name in candidates:
            if name in names:
                roles[role] = names[name]
                break
    return roles


def token_surfaces(tok) -> TokenSurfaces:
    """Surface forms of a fast HF tokenizer or a bare `tokenizers.Tokenizer`."""
    backend = backend_of(tok)
    scheme = surface_scheme(tok)
    vocab = backend.get_vocab(with_added_tokens=True)
    added = backend.get_added_tokens_decoder()
    special = {i for i, a in added.items() if a.special}
    if backend is not tok:
        special.update(int(i) for i in getattr(tok, "all_special_ids", []) or [])
    roles = _special_roles(tok, backend, special)
    special.update(roles.values())
    size = max([*vocab.values(), *added.keys(), *special, -1]) + 1
    forms: list[bytes | None] = [None] * size
    fallback: set[int] = set()
    unreachable: set[int] = set()
    for token, i in vocab.items():
        if i in special:
            continue
        if i in added:
            forms[i] = added[i].content.encode("utf-8")
            continue
        forms[i] = _surface(token, scheme)
        if scheme.byte_fallback and _BYTE_FALLBACK.fullmatch(token):
            fallback.add(i)
        elif scheme.kind == "metaspace" and " " in token:
            unreachable.add(i)
    return TokenSurfaces(
        forms, frozenset(special), roles, frozenset(fallback), frozenset(unreachable), scheme
    )


# --------------------------------------------------------------------------- vocabulary alignment


@dataclass
class VocabAlignment:
    """Id maps between a teacher and a student vocabulary (model-sized, -1 = unmapped)."""

    teacher_to_student: torch.Tensor  # (teacher model vocab,) long
    student_to_teacher: torch.Tensor  # (student model vocab,) long
    teacher_mask: torch.Tensor  # (teacher model vocab,) bool
    student_mask: torch.Tensor  # (student model vocab,) bool
    size: int
    teacher_coverage: float  # size / teacher tokenizer size
    student_coverage: float  # size / student tokenizer size
    teacher_tokenizer_size: int = 0
    student_tokenizer_size: int = 0
    special_pairs: dict[str, tuple[int, int]] = field(default_factory=dict)  # role -> (teacher, student)

    @property
    def teacher_vocab_size(self) -> int:
        return int(self.teacher_to_student.numel())

    @property
    def student_vocab_size(self) -> int:
        return int(self.student_to_teacher.numel())

    def to(self, device) -> VocabAlignment:
        return replace(
            self,
            teacher_to_student=self.teacher_to_student.to(device),
            student_to_teacher=self.student_to_teacher.to(device),
            teacher_mask=self.teacher_mask.to(device),
            student_mask=self.student_mask.to(device),
        )

    def summary(self) -> dict:
        return {
            "intersection": self.size,
            "teacher_coverage": round(self.teacher_coverage, 6),
            "student_coverage": round(self.student_coverage, 6),
            "teacher_tokenizer_size": self.teacher_tokenizer_size,
            "student_tokenizer_size": self.student_tokenizer_size,
            "teacher_model_vocab": self.teacher_vocab_size,
            "student_model_vocab": self.student_vocab_size,
            "special_pairs": {k: list(v) for k, v in self.special_pairs.items()},
        }


def _model_size(given: int | None, tokenizer_size: int, side: str) -> int:
    if given is None:
        return tokenizer_size
    if given < tokenizer_size:
        raise ValueError(
            f"{side}_model_vocab_size={given} is smaller than the {side} tokenizer ({tokenizer_size} ids); "
            "the model could not score every token the tokenizer produces"
        )
    return int(given)


def align_vocabularies(
    student_tok,
    teacher_tok,
    *,
    teacher_model_vocab_size: int | None = None,
    student_model_vocab_size: int | None = None,
    min_overlap: float = 0.0,
) -> VocabAlignment:
    """Intersect two vocabularies by normalised surface form (see the module docstring)."""
    return _align(
        token_surfaces(student_tok),
        token_surfaces(teacher_tok),
        teacher_model_vocab_size=teacher_model_vocab_size,
        student_model_vocab_size=student_model_vocab_size,
        min_overlap=min_overlap,
    )


def _align(
    ss: TokenSurfaces,
    ts: TokenSurfaces,
    *,
    teacher_model_vocab_size: int | None,
    student_model_vocab_size: int | None,
    min_overlap: float,
) -> VocabAlignment:
    vt = _model_size(teacher_model_vocab_size, ts.size, "teacher")
    vs = _model_size(student_model_vocab_size, ss.size, "student")
    t2s = np.full(vt, -1, dtype=np.int64)
    s2t = np.full(vs, -1, dtype=np.int64)
    student_best = ss.canonical()
    for form, tid in ts.canonical().items():
        sid = student_best.get(form)
        if sid is not None:
            t2s[tid] = sid
            s2t[sid] = tid
    pairs: dict[str, tuple[int, int]] = {}
    for role in SPECIAL_ROLES:
        tid, sid = ts.roles.get(role), ss.roles.get(role)
        if tid is None or sid is None or tid >= vt or sid >= vs:
            continue
        if t2s[tid] < 0 and s2t[sid] < 0:
            t2s[tid], s2t[sid] = sid, tid
            pairs[role] = (tid, sid)
    size = int((t2s >= 0).sum())
    alignment = VocabAlignment(
        teacher_to_student=torch.from_numpy(t2s),
        student_to_teacher=torch.from_numpy(s2t),
        teacher_mask=torch.from_numpy(t2s >= 0),
        student_mask=torch.from_numpy(s2t >= 0),
        size=size,
        teacher_coverage=size / max(ts.size, 1),
        student_coverage=size / max(ss.size, 1),
        teacher_tokenizer_size=ts.size,
        student_tokenizer_size=ss.size,
        special_pairs=pairs,
    )
    worst = min(alignment.teacher_coverage, alignment.student_coverage)
    if worst < min_overlap:
        raise ValueError(
            f"vocabulary overlap too small: {size} shared tokens cover "
            f"{alignment.teacher_coverage:.1%} of the teacher's {ts.size} and "
            f"{alignment.student_coverage:.1%} of the student's {ss.size} tokens; "
            f"min_overlap={min_overlap:.1%}"
        )
    return alignment


def map_teacher_topk(
    ids: torch.Tensor, probs: torch.Tensor, alignment: VocabAlignment, *, return_valid: bool = False
):
    """Carry teacher top-k (..., K) ids/probs into the student vocabulary.

    Returns `(student_ids, probs, mapped_mass)`: unmapped entries (and ids outside the
    teacher vocabulary) get id 0 and probability 0, `mapped_mass` (...,) is the
    probability that survived. With `return_valid=True` a fourth element, the bool
    (..., K) validity mask, is appended.
    """
    table = alignment.teacher_to_student
    if table.device != ids.device:
        table = table.to(ids.device)
    inside = (ids >= 0) & (ids < table.numel())
    looked_up = table[ids.clamp(0, table.numel() - 1)]
    valid = inside & (looked_up >= 0)
    student_ids = torch.where(valid, looked_up, torch.zeros_like(looked_up))
    kept = torch.where(valid, probs, torch.zeros_like(probs))
    mapped_mass = kept.sum(-1)
    if return_valid:
        return student_ids, kept, mapped_mass, valid
    return student_ids, kept, mapped_mass


# --------------------------------------------------------------------------- position realignment


@dataclass
class Realignment:
    """One student sequence seen through the teacher tokenizer.

    `text` is the student text as bytes; spans are [start, end) byte offsets in it
    (teacher tokens that stand for no student bytes, such as an inserted bos, have
    zero width; -1 where a span cannot be expressed in student bytes).
    """

    teacher_ids: torch.Tensor  # (M,) long
    teacher_pos: torch.Tensor  # (N,) long, -1 where masked; `aligned_fraction` is over all N
    text: bytes
    student_spans: np.ndarray  # (N, 2) int64
    teacher_spans: np.ndarray  # (M, 2) int64

    @property
    def valid(self) -> torch.Tensor:
        return self.teacher_pos >= 0

    @property
    def aligned_fraction(self) -> float:
        n = self.teacher_pos.numel()
        return float((self.teacher_pos >= 0).sum()) / n if n else 0.0


@dataclass
class RealignedBatch:
    teacher_ids: torch.Tensor  # (B, M) long, right-padded with `pad_id`
    teacher_attention_mask: torch.Tensor  # (B, M) long
    teacher_pos: torch.Tensor  # (B, T) long, -1 where masked
    items: list[Realignment]

    @property
    def aligned_fraction(self) -> float:
        n = self.teacher_pos.numel()
        return float((self.teacher_pos >= 0).sum()) / n if n else 0.0


def gather_teacher_positions(values: torch.Tensor, teacher_pos: torch.Tensor) -> torch.Tensor:
    """values (B, M, ...) at teacher positions -> (B, T, ...); masked positions are zeros."""
    b, t = teacher_pos.shape
    idx = teacher_pos.clamp(min=0).to(values.device)
    out = values[torch.arange(b, device=values.device).unsqueeze(1), idx]  # row copies, (B, T, ...)
    keep = (teacher_pos >= 0).to(values.device).view(b, t, *([1] * (values.dim() - 2)))
    return torch.where(keep, out, torch.zeros_like(out))


@dataclass
class _Run:
    start: int  # byte offset of the run in the student text
    data: bytes
    nsp: int  # paired special tokens before the run


class TextRealigner:
    """Map student positions to teacher positions by re-tokenising the student's text.

    `realign(student_ids)` returns a `Realignment`; see the module docstring for the
    method. `add_teacher_bos=None` inserts the teacher's bos at every text start
    (sequence start, after a paired eos) when the teacher tokenizer adds one itself.
    """

    def __init__(
        self,
        student_tok,
        teacher_tok,
        *,
        alignment: VocabAlignment | None = None,
        add_teacher_bos: bool | None = None,
    ):
        from tokenizers import Tokenizer

        self.student = token_surfaces(student_tok)
        self.teacher = token_surfaces(teacher_tok)
        if alignment is None:
            alignment = _align(
                self.student,
                self.teacher,
                teacher_model_vocab_size=None,
                student_model_vocab_size=None,
                min_overlap=0.0,
            )
        self.alignment = alignment
        self._s2t = self.alignment.student_to_teacher.tolist()
        # A private copy: special-token strings inside student text are text, not control tokens.
        self._backend = Tokenizer.from_str(backend_of(teacher_tok).to_str())
        self._backend.encode_special_tokens = True
        self._backend.no_padding()
        self._backend.no_truncation()
        self._teacher_bos = self.teacher.roles.get("bos")
        self._teacher_eos = self.teacher.roles.get("eos")
        if add_teacher_bos is None:
            first = backend_of(teacher_tok).encode(_PROBE, add_special_tokens=True).ids[:1]
            add_teacher_bos = self._teacher_bos is not None and first == [self._teacher_bos]
        self.add_teacher_bos = bool(add_teacher_bos) and self._teacher_bos is not None
        # Does the teacher prefix a space even to text that starts with one (Llama 2's Prepend)?
        self._teacher_prefixes_space = self._surface_of(self._backend, self.teacher, " " + _PROBE) == (
            b"  " + _PROBE.encode()
        )
        # Does the student tokenizer prefix a space to every text (sentencepiece style)?
        self._student_prefixes = self._surface_of(backend_of(student_tok), self.student, _PROBE) == (
            b" " + _PROBE.encode()
        )

    @staticmethod
    def _surface_of(backend, surfaces: TokenSurfaces, text: str) -> bytes | None:
        ids = backend.encode(text, add_special_tokens=False).ids
        forms = [surfaces.forms[i] if i < surfaces.size else None for i in ids]
        return None if any(f is None for f in forms) else b"".join(forms)

    def _maps_to_bos(self, sid: int) -> bool:
        return 0 <= sid < len(self._s2t) and self._s2t[sid] == self._teacher_bos

    def realign(
        self, student_ids: Sequence[int] | torch.Tensor, *, starts_document: bool = False
    ) -> Realignment:
        if isinstance(student_ids, torch.Tensor | np.ndarray):
            student_ids = student_ids.tolist()
        ids = [int(i) for i in student_ids]
        n = len(ids)
        forms, special, s2t = self.student.forms, self.student.special_ids, self._s2t
        spans = np.zeros((n, 2), dtype=np.int64)
        nsp_after = np.zeros(n, dtype=np.int64)
        is_target = np.zeros(n + 1, dtype=bool)
        is_target[n] = True  # the target after the window is unknown; position n-1 needs only a boundary
        text = bytearray()
        # Teacher stream: ("tok", teacher id, key, span) or ("run", _Run), in order; a key is
        # (byte end, paired special tokens so far), the prefix a position has seen.
        stream: list[tuple] = []
        nsp = 0
        text_start = starts_document
        run_start = 0
        bos = self._teacher_bos

        def flush():
            if len(text) > run_start:
                stream.append(("run", _Run(run_start, bytes(text[run_start:]), nsp)))

        if self.add_teacher_bos and not (n and self._maps_to_bos(ids[0])):
            stream.append(("tok", bos, (0, 0), (0, 0)))
        for t, sid in enumerate(ids):
            form = forms[sid] if 0 <= sid < len(forms) else None
            if form is None:
                flush()
                tid = s2t[sid] if 0 <= sid < len(s2t) else -1
                here = len(text)
                if tid >= 0:
                    nsp += 1
                    stream.append(("tok", tid, (here, nsp), (here, here)))
                    is_target[t] = True
                    next_is_bos = t + 1 < n and self._maps_to_bos(ids[t + 1])
                    if self.add_teacher_bos and tid == self._teacher_eos and not next_is_bos:
                        stream.append(("tok", bos, (here, nsp), (here, here)))
                spans[t] = here
                nsp_after[t] = nsp
                text_start = text_start or sid in special
                run_start = len(text)
                continue
            if text_start and self._student_prefixes and form[:1] == b" ":
                form = form[1:]
            text_start = False
            spans[t, 0] = len(text)
            text += form
            spans[t, 1] = len(text)
            nsp_after[t] = nsp
            is_target[t] = len(form) > 0
        flush()

        teacher_ids: list[int] = []
        teacher_spans: list[tuple[int, int]] = []
        last: dict[tuple[int, int], int] = {}
        runs = [item[1] for item in stream if item[0] == "run"]
        encoded = iter(self._encode_runs(runs))
        for item in stream:
            if item[0] == "tok":
                last[item[2]] = len(teacher_ids)
                teacher_ids.append(item[1])
                teacher_spans.append(item[3])
                continue
            run = item[1]
            for tid, (a, b) in zip(*next(encoded), strict=True):
                if b >= 0:
                    last[(run.start + b, run.nsp)] = len(teacher_ids)
                teacher_ids.append(tid)
                teacher_spans.append((run.start + a if a >= 0 else -1, run.start + b if b >= 0 else -1))

        pos = np.full(n, -1, dtype=np.int64)
        for t in range(n):
            if is_target[t + 1]:
                pos[t] = last.get((int(spans[t, 1]), int(nsp_after[t])), -1)
        return Realignment(
            teacher_ids=torch.tensor(teacher_ids, dtype=torch.long),
            teacher_pos=torch.from_numpy(pos),
            text=bytes(text),
            student_spans=spans,
            teacher_spans=np.asarray(teacher_spans, dtype=np.int64).reshape(-1, 2),
        )

    def realign_batch(
        self,
        batch: Sequence[Sequence[int]] | torch.Tensor,
        *,
        starts_document: bool = False,
        pad_id: int | None = None,
    ) -> RealignedBatch:
        items = [self.realign(row, starts_document=starts_document) for row in batch]
        if pad_id is None:
            pad = self.teacher.roles.get("pad", self.teacher.roles.get("eos", 0))
        else:
            pad = pad_id
        width = max([len(r.teacher_ids) for r in items] + [1])
        ids = torch.full((len(items), width), pad, dtype=torch.long)
        attn = torch.zeros((len(items), width), dtype=torch.long)
        for b, r in enumerate(items):
            ids[b, : len(r.teacher_ids)] = r.teacher_ids
            attn[b, : len(r.teacher_ids)] = 1
        pos = torch.stack([r.teacher_pos for r in items]) if items else torch.zeros((0, 0), dtype=torch.long)
        return RealignedBatch(ids, attn, pos, items)

    # -- teacher side -------------------------------------------------------------------------

    def _encode_runs(self, runs: list[_Run]) -> list[tuple[list[int], list[tuple[int, int]]]]:
        """Teacher ids and their byte spans relative to each run (-1 where not expressible)."""
        prepared = []
        for run in runs:
            decoded = run.data.decode("utf-8", "surrogateescape")
            lead = 0
            if self._teacher_prefixes_space and decoded.startswith(" ") and len(decoded) > 1:
                decoded, lead = decoded[1:], 1
            prepared.append((decoded, _SURROGATES.sub("\ufffd", decoded), lead))
        encodings = self._backend.encode_batch([fed for _, fed, _ in prepared], add_special_tokens=False)
        return [
            self._spans(enc, decoded, fed, lead)
            for enc, (decoded, fed, lead) in zip(encodings, prepared, strict=True)
        ]

    def _spans(self, enc, decoded: str, fed: str, lead: int):
        ids = list(enc.ids)
        forms = self.teacher.forms
        pieces = [forms[i] if i < len(forms) else None for i in ids]
        fed_bytes = fed.encode("utf-8")
        if all(p is not None for p in pieces):
            joined = b"".join(pieces)
            if lead and joined == b" " + fed_bytes:
                prefix, to_student = 1, 1  # the teacher's prefix space is the run's first byte
            elif not lead and joined == fed_bytes:
                prefix, to_student = 0, 0
            elif not lead and joined == b" " + fed_bytes:
                prefix, to_student = 1, 0  # artefact prefix space: width 0 in the student text
            else:
                prefix = None
            if prefix is not None:
                table = _byte_table(decoded, fed, fed_bytes)
                ends = np.cumsum([len(p) for p in pieces], dtype=np.int64)
                starts = ends - np.asarray([len(p) for p in pieces], dtype=np.int64)

                def rel(x: int) -> int:
                    if x <= prefix:
                        return 0 if x == 0 else to_student
                    y = table[x - prefix] if table is not None else x - prefix
                    return -1 if y < 0 else to_student + int(y)

                return ids, [(rel(int(a)), rel(int(b))) for a, b in zip(starts, ends, strict=True)]
        return ids, self._offset_spans(enc, decoded, lead)

    @staticmethod
    def _offset_spans(enc, decoded: str, lead: int) -> list[tuple[int, int]]:
        """Fallback: character offsets -> student bytes; overlapping token ends are rejected."""
        widths = [1 if _SURROGATES.match(c) else len(c.encode("utf-8")) for c in decoded]
        char_to_byte = np.concatenate([[0], np.cumsum(widths, dtype=np.int64)]) + lead
        offsets = list(enc.offsets)
        out = []
        reach = 0
        for k, (a, b) in enumerate(offsets):
            clean = b >= reach and (k + 1 == len(offsets) or b <= offsets[k + 1][0])
            reach = max(reach, b)
            end = int(char_to_byte[b]) if clean and b < len(char_to_byte) else -1
            start = 0 if a == 0 else int(char_to_byte[a]) if a < len(char_to_byte) else -1
            out.append((start, end))
        return out


def _byte_table(decoded: str, fed: str, fed_bytes: bytes) -> np.ndarray | None:
    """Offsets in `fed_bytes` -> offsets in the student bytes of `decoded` (-1 inside a U+FFFD).

    None when the two coincide (no invalid UTF-8 in the run).
    """
    if decoded == fed:
        return None
    table = np.full(len(fed_bytes) + 1, -1, dtype=np.int64)
    x = y = 0
    for c in decoded:
        if _SURROGATES.match(c):
            table[x] = y
            x, y = x + 3, y + 1
        else:
            w = len(c.encode("utf-8"))
            table[x : x + w] = np.arange(y, y + w)
            x, y = x + w, y + w
    table[x] = y
    return table


# --------------------------------------------------------------------------- loading


def _repair_merges(spec: dict) -> None:
    """Legacy "a b" merges whose tokens contain spaces (Llama 2 has some) -> [a, b] pairs."""
    model = spec.get("model") or {}
    merges, vocab = model.get("merges"), model.get("vocab")
    if not merges or not isinstance(merges[0], str) or all(m.count(" ") == 1 for m in merges):
        return
    pairs = []
    for m in merges:
        if m.count(" ") == 1:
            pairs.append(m.split(" "))
            continue
        cuts = [
            [m[:k], m[k + 1 :]]
            for k, c in enumerate(m)
            if c == " " and 0 < k < len(m) - 1 and m[:k] in vocab and m[k + 1 :] in vocab
            if m[:k] + m[k + 1 :] in vocab
        ]
        if not cuts:
            raise ValueError(f"merge {m!r} cannot be split into two vocabulary tokens")
        pairs.append(cuts[0])
    model["merges"] = pairs


def _special_kwargs(folder: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        f = folder / name
        if not f.is_file():
            continue
        data = json.loads(f.read_text())
        for role in SPECIAL_ROLES:
            value = data.get(f"{role}_token")
            if isinstance(value, dict):
                value = value.get("content")
            if isinstance(value, str):
                out[f"{role}_token"] = value
    return out


def load_tokenizer(path: str | Path):
    """A fast HF tokenizer from a folder (or file) holding `tokenizer.json`, or GPT-2 style
    `vocab.json` + `merges.txt`.

    Repairs two things recent `tokenizers` get wrong in older files: "a b" merges whose
    tokens contain spaces (rejected outright) and normalised special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    path = Path(path)
    folder = path if path.is_dir() else path.parent
    file = path / "tokenizer.json" if path.is_dir() else path
    if file.is_file() and file.suffix == ".json" and file.name != "vocab.json":
        spec = json.loads(file.read_text(encoding="utf-8"))
        _repair_merges(spec)
        for added in spec.get("added_tokens") or []:
            # A special token is never text: normalising it (Llama 2's file asks for that)
            # makes recent `tokenizers` store "<s>" as "▁<s>" and decode it as text.
            if added.get("special"):
                added["normalized"] = False
        backend = Tokenizer.from_str(json.dumps(spec))
        return PreTrainedTokenizerFast(tokenizer_object=backend, **_special_kwargs(folder))
    vocab, merges = folder / "vocab.json", folder / "merges.txt"
    if vocab.is_file() and merges.is_file():
        backend = Tokenizer(models.BPE.from_file(str(vocab), str(merges)))
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        backend.decoder = decoders.ByteLevel()
        backend.post_processor = processors.ByteLevel(trim_offsets=False)
        kwargs = _special_kwargs(folder)
        if not kwargs and "<|endoftext|>" in backend.get_vocab():
            kwargs = {f"{r}_token": "<|endoftext|>" for r in ("bos", "eos", "unk")}
        return PreTrainedTokenizerFast(tokenizer_object=backend, **kwargs)
    raise FileNotFoundError(f"no tokenizer.json or vocab.json + merges.txt at {path}")
