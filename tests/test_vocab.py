"""Vocabulary alignment and cross-tokenizer position mapping (sdce.teachers.vocab)."""

from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from sdce.teachers.vocab import (
    TextRealigner,
    align_vocabularies,
    backend_of,
    bytes_to_unicode,
    gather_teacher_positions,
    load_tokenizer,
    map_teacher_topk,
    token_surfaces,
)

SHARED = Path(os.environ.get("SDCE_SHARED", Path(__file__).resolve().parents[1].parent / "shared"))
REAL = SHARED / "data" / "tokenizers"
WIKI = SHARED / "data" / "wikitext2" / "wiki.test.raw"

WORDS = (
    "the of and to in is was for on that with as by at from his her it an were are which this be or "
    "has had not but also they their first one new after who been its during two time other into more "
    "over season album song game film series war team city river church station school music world "
    "played released called known including later became between until under while against"
).split()
RARE = ["café", "naïve", "中文", "日本語", "🙂", "</s>", "<s>", "@-@", "Zürich"]


def corpus(n: int = 600, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    lines = []
    for _ in range(n):
        words = [rng.choice(WORDS) for _ in range(rng.randint(4, 14))]
        if rng.random() < 0.3:
            words.insert(rng.randrange(len(words)), rng.choice(RARE))
        words[0] = words[0].capitalize()
        line = " ".join(words) + rng.choice([" .", ".", " ,", "!"])
        if rng.random() < 0.2:
            line += "\n" + rng.choice(WORDS)
        lines.append(line)
    return lines


SAMPLE = (
    "The season was released in the city . Later the album became known as café music , "
    "and the team played between two 中文 stations 🙂 until the war .\nNew series after </s> the game "
)


@pytest.fixture(scope="module")
def byte_level():
    """GPT-2 style byte-level BPE, 300 ids, `<|endoftext|>` = bos = eos = unk (id 0)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus(), trainer=trainer)
    assert tok.get_vocab_size() == 300
    eot = "<|endoftext|>"
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=eot, eos_token=eot, unk_token=eot)


@pytest.fixture(scope="module")
def metaspace():
    """Llama style: `▁` BPE with byte fallback, 800 ids: <unk> <s> </s>, <0x00>..<0xFF>, merges."""
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    trainer = trainers.BpeTrainer(
        vocab_size=800 - 256,
        special_tokens=["<unk>", "<s>", "</s>"],
        limit_alphabet=40,
        show_progress=False,
    )
    tok.train_from_iterator(corpus(seed=1), trainer=trainer)
    spec = json.loads(tok.to_str())
    old = spec["model"]["vocab"]
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    vocab.update({f"<0x{b:02X}>": 3 + b for b in range(256)})
    for token, _ in sorted(old.items(), key=lambda kv: kv[1]):
        if token not in vocab:
            vocab[token] = len(vocab)
    spec["model"]["vocab"] = vocab
    tok = Tokenizer.from_str(json.dumps(spec))
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    assert tok.get_vocab_size() == 800
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


_SURFACES: dict[int, object] = {}


def surfaces(tok):
    if id(tok) not in _SURFACES:
        _SURFACES[id(tok)] = token_surfaces(tok)
    return _SURFACES[id(tok)]


def decode(tok, ids) -> str:
    special = surfaces(tok).special_ids
    return backend_of(tok).decode([int(i) for i in ids if int(i) not in special])


def read(tok, ids) -> str:
    """Decoded text with one leading space off every stretch between special tokens (where
    sentencepiece-style tokenizers add their own)."""
    special, parts, cur = surfaces(tok).special_ids, [], []
    for i in [*ids, None]:
        if i is None or int(i) in special:
            parts.append(one_space_off(decode(tok, cur)))
            cur = []
        else:
            cur.append(int(i))
    return "".join(parts)


def token_text(tok, i: int) -> str:
    """Decoded text of one token, read after a fixed lead token so no leading-space rule applies."""
    lead = backend_of(tok).encode("x", add_special_tokens=False).ids
    return decode(tok, [*lead, i])[len(decode(tok, lead)) :]


def one_space_off(text: str) -> str:
    return text[1:] if text.startswith(" ") else text


def spelled(tok, ids) -> bytes:
    """The bytes of a token sequence, spaces removed (tokenizers disagree on prefix spaces)."""
    forms = surfaces(tok).forms
    return b"".join(forms[i] or b"" for i in ids).replace(b" ", b"")


def assert_positions_agree_on_text(student_tok, teacher_tok, student_ids, realignment, normalise=str):
    """For every aligned position the teacher prefix reads as the student prefix, and the two
    next tokens start at the same place (one next-token prefix extends the other).

    Prefixes ending inside a character decode to U+FFFD in tokenizer-specific numbers, so the
    text check drops trailing U+FFFD and a byte check (spaces aside) pins such boundaries."""
    ids, tids = list(student_ids), realignment.teacher_ids.tolist()
    pos = realignment.teacher_pos.tolist()
    assert len(pos) == len(ids)

    def text(tok, seq):
        return normalise(read(tok, seq))

    checked = 0
    for t, j in enumerate(pos):
        if j < 0:
            continue
        s_prefix, t_prefix = text(student_tok, ids[: t + 1]), text(teacher_tok, tids[: j + 1])
        if "\ufffd" in s_prefix[-4:] + t_prefix[-4:]:  # ends inside a character
            s_prefix, t_prefix = s_prefix.rstrip("\ufffd"), t_prefix.rstrip("\ufffd")
            assert s_prefix.startswith(t_prefix) or t_prefix.startswith(s_prefix), (t, j)
        else:
            assert s_prefix == t_prefix, (t, j, s_prefix[-30:], t_prefix[-30:])
        if normalise is str:
            assert spelled(student_tok, ids[: t + 1]) == spelled(teacher_tok, tids[: j + 1]), (t, j)
        if t + 1 < len(ids) and j + 1 < len(tids):
            s_next = text(student_tok, ids[: t + 2]).rstrip("\ufffd")
            t_next = text(teacher_tok, tids[: j + 2]).rstrip("\ufffd")
            assert s_next.startswith(t_next) or t_next.startswith(s_next), (t, j, s_next[-20:], t_next[-20:])
        checked += 1
    return checked


# --------------------------------------------------------------------------- surface forms


def test_surface_forms_follow_each_scheme(byte_level, metaspace):
    bl, ms = token_surfaces(byte_level), token_surfaces(metaspace)
    assert bl.scheme.kind == "byte_level" and ms.scheme.kind == "metaspace" and ms.scheme.byte_fallback
    b2u = bytes_to_unicode()
    assert len(b2u) == 256 and b2u[ord(" ")] == "Ġ" and b2u[ord("\n")] == "Ċ"
    vocab = byte_level.get_vocab()
    assert bl.forms[vocab["Ġ"]] == b" " and bl.forms[vocab["Ċ"]] == b"\n"
    assert bl.forms[vocab[b2u[0xE4]]] == b"\xe4"  # a lone non-UTF-8 byte
    assert bl.forms[byte_level.eos_token_id] is None  # special: no text
    mvocab = metaspace.get_vocab()
    assert ms.forms[mvocab["<0x0A>"]] == b"\n" and ms.forms[mvocab["<0xE4>"]] == b"\xe4"
    assert ms.forms[mvocab["▁the"]] == b" the"
    assert all(ms.forms[i] is None for i in (0, 1, 2))
    assert ms.roles == {"eos": 2, "bos": 1, "unk": 0}


# --------------------------------------------------------------------------- vocabulary alignment


def test_alignment_maps_identical_surface_forms_and_only_those(byte_level, metaspace):
    al = align_vocabularies(byte_level, metaspace)  # student byte-level (300), teacher ▁ (800)
    bl, ms = token_surfaces(byte_level), token_surfaces(metaspace)
    t2s, s2t = al.teacher_to_student.numpy(), al.student_to_teacher.numpy()
    assert t2s.shape == (800,) and s2t.shape == (300,)
    assert al.teacher_mask.dtype == torch.bool and al.teacher_mask.sum() == al.size
    assert al.size == int((s2t >= 0).sum())
    assert al.teacher_coverage == pytest.approx(al.size / 800)
    assert al.student_coverage == pytest.approx(al.size / 300)
    # Both directions are inverse one-to-one maps.
    for tid in np.flatnonzero(t2s >= 0):
        assert s2t[t2s[tid]] == tid
    # Every mapped text pair stands for the same bytes and decodes to the same text.
    for tid in np.flatnonzero(t2s >= 0):
        sid = int(t2s[tid])
        if tid in ms.special_ids:
            continue
        assert ms.forms[tid] == bl.forms[sid]
        form = ms.forms[tid]
        try:
            form.decode("utf-8")
        except UnicodeDecodeError:
            continue
        assert token_text(metaspace, int(tid)) == token_text(byte_level, sid) == form.decode()
    # Completeness, by decoding: any teacher token whose text some student token decodes to is
    # mapped, unless it is a duplicate form (a byte-fallback twin of a normal token).
    student_by_text = {token_text(byte_level, s): s for s in range(300) if s not in bl.special_ids}
    canonical = set(ms.canonical().values())
    for tid in range(3, 800):
        text = token_text(metaspace, tid)
        if "\ufffd" in text or text not in student_by_text:
            continue
        if tid in canonical:
            assert t2s[tid] == student_by_text[text], (tid, text)
        else:
            assert t2s[tid] == -1
    # Expected size from first principles: shared byte strings between the two canonical sets.
    assert al.size == len(set(ms.canonical()) & set(bl.canonical())) + len(al.special_pairs)
    print("toy alignment", al.summary())


def test_byte_fallback_twins_prefer_the_normal_token(byte_level, metaspace):
    al = align_vocabularies(byte_level, metaspace)
    mvocab, bvocab = metaspace.get_vocab(), byte_level.get_vocab()
    t2s = al.teacher_to_student
    assert "a" in mvocab
    assert t2s[mvocab["a"]] == bvocab["a"]
    assert t2s[mvocab["<0x61>"]] == -1  # same byte, byte-fallback twin: unmapped
    # Bytes the ▁ vocabulary only has as fallback map to the byte-level single-byte token.
    for b in (0x0A, 0xE4, 0xF0, 0x80):
        fb = mvocab[f"<0x{b:02X}>"]
        normal = [i for i, f in enumerate(token_surfaces(metaspace).forms) if f == bytes([b]) and i != fb]
        expected = -1 if normal else bvocab[bytes_to_unicode()[b]]
        assert t2s[fb] == expected, b
    # A multi-byte character never matches a single byte.
    forms = token_surfaces(byte_level).forms
    teacher_forms = token_surfaces(metaspace).forms
    for tid in np.flatnonzero(t2s.numpy() >= 0):
        if teacher_forms[tid] is not None:
            assert len(forms[int(t2s[tid])]) == len(teacher_forms[tid])


def test_special_tokens_pair_by_role_never_as_text(byte_level, metaspace):
    al = align_vocabularies(byte_level, metaspace)
    # <|endoftext|> is bos = eos = unk: it pairs with the teacher's eos, once.
    assert al.special_pairs == {"eos": (2, byte_level.eos_token_id)}
    assert al.teacher_to_student[2] == byte_level.eos_token_id
    assert al.teacher_to_student[1] == -1 and al.teacher_to_student[0] == -1
    same = align_vocabularies(metaspace, metaspace)
    assert same.special_pairs == {"eos": (2, 2), "bos": (1, 1), "unk": (0, 0)}
    canonical = set(token_surfaces(metaspace).canonical().values())
    ident = same.teacher_to_student.numpy()
    for i in range(800):
        assert ident[i] == (i if i in canonical or i < 3 else -1)
    # Literal "<s>" / "</s>" text in the corpus is text: it can never pair with a special id.
    bl = token_surfaces(byte_level)
    for sid in np.flatnonzero(al.student_to_teacher.numpy() >= 0):
        if bl.forms[sid] is not None:
            assert int(al.student_to_teacher[sid]) not in (0, 1, 2)


def test_padded_model_vocabularies(byte_level, metaspace):
    al = align_vocabularies(byte_level, metaspace, teacher_model_vocab_size=832, student_model_vocab_size=320)
    assert al.teacher_to_student.shape == (832,) and al.student_to_teacher.shape == (320,)
    assert (al.teacher_to_student[800:] == -1).all() and (al.student_to_teacher[300:] == -1).all()
    assert not al.teacher_mask[800:].any()
    base = align_vocabularies(byte_level, metaspace)
    assert al.size == base.size and al.teacher_coverage == base.teacher_coverage
    assert torch.equal(al.teacher_to_student[:800], base.teacher_to_student)
    assert al.summary()["teacher_model_vocab"] == 832
    with pytest.raises(ValueError, match="smaller than the teacher tokenizer"):
        align_vocabularies(byte_level, metaspace, teacher_model_vocab_size=799)


def test_min_overlap_refuses_with_sizes(byte_level, metaspace):
    al = align_vocabularies(byte_level, metaspace)
    worst = min(al.teacher_coverage, al.student_coverage)
    align_vocabularies(byte_level, metaspace, min_overlap=worst)
    with pytest.raises(ValueError, match=rf"overlap too small: {al.size} shared tokens.*800.*300"):
        align_vocabularies(byte_level, metaspace, min_overlap=worst + 0.01)


def test_map_teacher_topk_is_a_gather(byte_level, metaspace):
    al = align_vocabularies(byte_level, metaspace)
    t2s = al.teacher_to_student
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 800, (2, 5, 6), generator=gen)
    ids[0, 0, 0] = -1  # padding id
    ids[1, 0, 0] = 900  # outside the vocabulary
    probs = torch.rand(2, 5, 6, generator=gen).softmax(-1)
    sid, p, mass, valid = map_teacher_topk(ids, probs, al, return_valid=True)
    assert sid.shape == p.shape == valid.shape == (2, 5, 6) and mass.shape == (2, 5)
    for idx in np.ndindex(2, 5, 6):
        i = int(ids[idx])
        ok = 0 <= i < 800 and int(t2s[i]) >= 0
        assert bool(valid[idx]) == ok
        assert int(sid[idx]) == (int(t2s[i]) if ok else 0)
        assert float(p[idx]) == (float(probs[idx]) if ok else 0.0)
    assert torch.allclose(mass, p.sum(-1))
    assert (mass <= 1 + 1e-6).all()
    three = map_teacher_topk(ids, probs, al)
    assert len(three) == 3 and torch.equal(three[0], sid)


# --------------------------------------------------------------------------- realignment


@pytest.mark.parametrize("which", ["byte_level", "metaspace"])
def test_identical_tokenizers_align_everywhere(which, request):
    tok = request.getfixturevalue(which)
    realigner = TextRealigner(tok, tok)
    ids = tok(SAMPLE.replace("</s>", "<p>"))["input_ids"]  # "</s>" would encode as eos
    r = realigner.realign(ids)
    assert r.aligned_fraction == 1.0
    assert r.teacher_ids.tolist() == ids
    assert r.teacher_pos.tolist() == list(range(len(ids)))


@pytest.mark.parametrize("direction", ["bl->ms", "ms->bl"])
def test_realignment_agrees_on_text(direction, byte_level, metaspace):
    student, teacher = (byte_level, metaspace) if direction == "bl->ms" else (metaspace, byte_level)
    realigner = TextRealigner(student, teacher)
    for text in [SAMPLE, *corpus(20, seed=7)]:
        ids = student(text)["input_ids"]
        r = realigner.realign(ids)
        assert 0.0 < r.aligned_fraction < 1.0 or len(ids) < 8
        assert assert_positions_agree_on_text(student, teacher, ids, r) == int(r.valid.sum())
        # Teacher ids are the teacher's own tokenisation of the same text.
        assert read(teacher, r.teacher_ids) == read(student, ids)
    r = realigner.realign(student(SAMPLE)["input_ids"])
    print(direction, "aligned fraction on SAMPLE:", round(r.aligned_fraction, 3))
    assert 0.2 < r.aligned_fraction < 1.0


def test_literal_special_strings_stay_text(byte_level, metaspace):
    r = TextRealigner(byte_level, metaspace).realign(byte_level("a </s> b <s> c")["input_ids"])
    assert 1 not in r.teacher_ids.tolist()[1:] and 2 not in r.teacher_ids.tolist()


def test_documents_and_specials_map_to_the_teacher_roles(byte_level, metaspace):
    eot = byte_level.eos_token_id
    first, second = byte_level("the album was released .")["input_ids"], byte_level("New song")["input_ids"]
    ids = [*first, eot, *second]
    realigner = TextRealigner(byte_level, metaspace)
    assert realigner.add_teacher_bos  # the ▁ teacher adds <s> itself
    r = realigner.realign(ids)
    tids = r.teacher_ids.tolist()
    assert tids[0] == 1 and tids.count(2) == 1
    k = tids.index(2)
    assert tids[k + 1] == 1  # a fresh <s> starts the second document
    pos = r.teacher_pos.tolist()
    # The position before eos predicts eos on both sides; the eos position predicts the next text.
    assert tids[pos[len(first) - 1] + 1] == 2
    # (after <s> the teacher may spend a lone "▁" on its own prefix space before "New")
    assert pos[len(first)] > k and decode(metaspace, tids[pos[len(first)] + 1 :]) == "New song"
    assert_positions_agree_on_text(byte_level, metaspace, ids, r)
    # The other way: the ▁ student's leading space after <s> is the tokenizer's, not text.
    ms_ids = [*metaspace("New song")["input_ids"], 2, *metaspace("the game")["input_ids"][1:]]
    r = TextRealigner(metaspace, byte_level).realign(ms_ids)
    assert decode(byte_level, r.teacher_ids) == "New song" + "the game"
    assert r.teacher_ids.tolist().count(eot) == 1
    assert_positions_agree_on_text(metaspace, byte_level, ms_ids, r)
    # Without a special token in front, the first stretch is text start only when told so.
    bare = metaspace("New song", add_special_tokens=False)["input_ids"]
    realigner = TextRealigner(metaspace, byte_level)
    assert decode(byte_level, realigner.realign(bare).teacher_ids) == " New song"
    assert decode(byte_level, realigner.realign(bare, starts_document=True).teacher_ids) == "New song"


def test_window_cut_inside_a_character(byte_level, metaspace):
    ids = byte_level("中文 and 日本語 music")["input_ids"]
    forms = token_surfaces(byte_level).forms
    cut = next(k for k in range(1, len(ids)) if forms[ids[k]][0] & 0xC0 == 0x80)  # continuation byte
    window = ids[cut:]
    r = TextRealigner(byte_level, metaspace).realign(window)
    assert r.text == b"".join(forms[i] for i in window)
    tforms = token_surfaces(metaspace).forms
    for t, j in enumerate(r.teacher_pos.tolist()):
        if j >= 0:
            assert r.teacher_spans[j][1] == r.student_spans[t][1]
    # Past the broken character the teacher tokens spell the student bytes exactly.
    good = [j for j, (a, _) in enumerate(r.teacher_spans) if a >= 2 and int(r.teacher_ids[j]) > 2]
    start = r.teacher_spans[good[0]][0]
    assert b"".join(tforms[int(r.teacher_ids[j])] for j in good) == r.text[start:]
    assert 0 < r.aligned_fraction < 1


def test_offsets_fallback_for_a_normalising_teacher(byte_level, metaspace):
    spec = json.loads(backend_of(byte_level).to_str())
    spec["normalizer"] = {"type": "Lowercase"}
    lower = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(json.dumps(spec)), eos_token="<|endoftext|>"
    )
    ids = metaspace("The Season Was Released In The City .")["input_ids"]
    r = TextRealigner(metaspace, lower).realign(ids)
    assert r.aligned_fraction > 0.5
    assert_positions_agree_on_text(metaspace, lower, ids, r, normalise=str.lower)


def test_batch_and_gather(byte_level, metaspace):
    realigner = TextRealigner(byte_level, metaspace)
    batch = torch.tensor([byte_level(s)["input_ids"][:12] for s in corpus(3, seed=3)])
    out = realigner.realign_batch(batch)
    assert out.teacher_pos.shape == batch.shape
    assert out.teacher_ids.shape[0] == 3 and out.teacher_attention_mask.sum(1).tolist() == [
        len(r.teacher_ids) for r in out.items
    ]
    values = torch.arange(out.teacher_ids.numel() * 2, dtype=torch.float).view(*out.teacher_ids.shape, 2)
    picked = gather_teacher_positions(values, out.teacher_pos)
    assert picked.shape == (*batch.shape, 2)
    for b, t in np.ndindex(*batch.shape):
        j = int(out.teacher_pos[b, t])
        expected = values[b, j] if j >= 0 else torch.zeros(2)
        assert torch.equal(picked[b, t], expected)


# --------------------------------------------------------------------------- real GPT-2 <-> Llama 2


@pytest.fixture(scope="module")
def real_pair():
    if not (REAL / "gpt2" / "vocab.json").is_file() or not (REAL / "llama2" / "tokenizer.json").is_file():
        pytest.skip(f"real tokenizers not found under {REAL}")
    return load_tokenizer(REAL / "gpt2"), load_tokenizer(REAL / "llama2")


def wiki_sentences(k: int = 3) -> list[str]:
    if not WIKI.is_file():
        pytest.skip(f"WikiText-2 not found at {WIKI}")
    lines = [ln.strip() for ln in WIKI.read_text(encoding="utf-8").splitlines()[:400]]
    lines = [ln for ln in lines if len(ln) > 200 and not ln.startswith("=")]
    return lines[:k]


def test_real_gpt2_llama2_alignment(real_pair):
    gpt2, llama = real_pair
    assert len(gpt2) == 50257 and len(llama) == 32000
    start = time.process_time()  # CPU time: other jobs on the machine do not count
    al = align_vocabularies(gpt2, llama, student_model_vocab_size=50304)
    elapsed = time.process_time() - start
    print("GPT-2 student <- Llama 2 teacher:", al.summary(), f"{elapsed:.2f}s")
    assert elapsed < 2.0
    assert 17_000 < al.size < 19_500  # measured: 18,204
    assert al.special_pairs == {"eos": (2, 50256)}
    g, lv = gpt2.get_vocab(), llama.get_vocab()
    t2s = al.teacher_to_student
    assert t2s[lv["▁the"]] == g["Ġthe"]
    assert t2s[lv["the"]] == g["the"]
    assert t2s[lv["<0x0A>"]] == g["Ċ"]  # the newline byte: byte fallback <-> byte-level
    assert t2s[lv["▁"]] == g["Ġ"] and t2s[lv["<0x20>"]] == -1 and t2s[lv[" "]] == -1
    assert t2s[lv["a"]] == g["a"] and t2s[lv["<0x61>"]] == -1
    assert t2s[lv["<0xE4>"]] == g[bytes_to_unicode()[0xE4]]  # a lone UTF-8 lead byte
    assert t2s[1] == -1 and t2s[0] == -1
    gs, ls = token_surfaces(gpt2), token_surfaces(llama)
    mapped = np.flatnonzero(t2s.numpy() >= 0)
    assert all(ls.forms[t] == gs.forms[int(t2s[t])] for t in mapped if t != 2)
    rng = random.Random(0)
    for tid in rng.sample([int(t) for t in mapped if t > 2], 300):
        text = token_text(llama, tid)
        if "\ufffd" not in text:
            assert text == token_text(gpt2, int(t2s[tid]))


@pytest.mark.parametrize("direction", ["gpt2->llama", "llama->gpt2"])
def test_real_realignment_on_wikitext(direction, real_pair):
    gpt2, llama = real_pair
    student, teacher = (gpt2, llama) if direction == "gpt2->llama" else (llama, gpt2)
    realigner = TextRealigner(student, teacher)
    total = aligned = 0
    for text in wiki_sentences():
        ids = student(text, add_special_tokens=False)["input_ids"]
        r = realigner.realign(ids)
        assert assert_positions_agree_on_text(student, teacher, ids, r) == int(r.valid.sum())
        total, aligned = total + len(ids), aligned + int(r.valid.sum())
    print(f"{direction}: aligned {aligned}/{total} student positions = {aligned / total:.3f}")
    assert (0.9 if direction == "gpt2->llama" else 0.6) < aligned / total < 1.0
