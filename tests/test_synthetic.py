"""The embedded synthetic corpus and its BLiMP-style minimal pairs."""

from __future__ import annotations

import json
import re
from collections import Counter

import pytest

from sdce.data.synthetic import (
    DEMONSTRATIVES,
    LEXICON,
    LEXICON_VERSION,
    PARADIGMS,
    generate_documents,
    generate_minimal_pairs,
    write_minimal_pairs,
)

REQUIRED_FIELDS = {"sentence_good", "sentence_bad", "field", "linguistics_term", "UID", "pairID"}
NUMBER_DETERMINERS = {
    "this": "sg",
    "a": "sg",
    "an": "sg",
    "every": "sg",
    "each": "sg",
    "these": "pl",
    "those": "pl",
    "many": "pl",
    "several": "pl",
    "two": "pl",
    "three": "pl",
}
ADJECTIVES = LEXICON.adjectives
SAY_FORMS = {f for v in LEXICON.say_verbs for f in (v.base, v.s3, v.past)}
VERB_FORMS = {f for v in LEXICON.verbs for f in (v.base, v.s3, v.past)}
NAMES = {n.lower(): g for n, g in LEXICON.names.items()}
PRESENT_NUMBER = {"is": "sg", "was": "sg", "are": "pl", "were": "pl"}
for _v in LEXICON.verbs:
    PRESENT_NUMBER.update({_v.s3: "sg", _v.base: "pl"})
TERMS = {
    "determiner_noun_agreement": "determiner_noun_agreement",
    "subject_verb_agreement": "subject_verb_agreement",
    "anaphor": "anaphor_agreement",
}
NON_HUMAN_NOUNS = {w for n in LEXICON.nouns if n.kind != "h" for w in (n.singular, n.plural)}


def _words(sentence: str) -> list[str]:
    return [w.strip(".,?").lower() for w in sentence.split()]


def _sentences(docs: list[str]) -> list[str]:
    return [s for d in docs for s in re.split(r"(?<=[.?]) ", d)]


def _skip_adjectives(words: list[str], j: int) -> int:
    while j < len(words) and words[j] in ADJECTIVES:
        j += 1
    return j


@pytest.fixture(scope="module")
def docs() -> list[str]:
    return generate_documents(2000, seed=7)


@pytest.fixture(scope="module")
def sentences(docs) -> list[list[str]]:
    return [_words(s) for s in _sentences(docs)]


@pytest.fixture(scope="module")
def pairs() -> dict[str, list[dict]]:
    return generate_minimal_pairs(40, seed=0)


# ---- corpus ------------------------------------------------------------------------------------


def test_lexicon_version_is_a_nonempty_string():
    assert isinstance(LEXICON_VERSION, str) and LEXICON_VERSION


def test_documents_are_deterministic_per_seed_and_differ_across_seeds():
    a = generate_documents(30, seed=3)
    assert a == generate_documents(30, seed=3)
    assert len(a) == 30 and all(isinstance(d, str) for d in a)
    assert a != generate_documents(30, seed=4)
    assert generate_documents(0, seed=3) == []


def test_documents_are_several_capitalised_punctuated_sentences(docs):
    n_words = n_sentences = 0
    for doc in docs:
        sents = _sentences([doc])
        assert 3 <= len(sents) <= 12
        for s in sents:
            assert s[0].isupper() and s[-1] in ".?"
            assert "." not in s[:-1] and "?" not in s[:-1]
            n_words += len(s.split())
        n_sentences += len(sents)
    assert 7 <= n_words / n_sentences <= 13
    assert any(s.endswith("?") for s in _sentences(docs))


def test_vocabulary_is_closed_rich_and_zipfian(docs):
    tokens = [w for d in docs for w in _words(d)]
    counts = Counter(tokens)
    assert set(counts) <= LEXICON.vocabulary()
    assert len({w for d in docs for w in d.split()}) > 300
    assert len(counts) > 300
    # within a category, the first-listed word is far more frequent than a late one
    humans = LEXICON.humans
    assert counts[humans[0].singular] > 5 * counts[humans[-1].singular] > 0
    # variety the grammar promises
    for w in ("who", "that", "because", "and", "but", "did", "were", "himself", "herself", "itself"):
        assert counts[w] > 0, w


def test_determiner_noun_agreement_holds(docs, sentences):
    checked = 0
    for words in sentences:
        for i, w in enumerate(words[:-1]):
            if w in NUMBER_DETERMINERS:
                j = _skip_adjectives(words, i + 1)
                assert LEXICON.noun_number(words[j]) == NUMBER_DETERMINERS[w], words
                checked += 1
            if w in ("a", "an"):
                nxt = words[i + 1]
                vowel = nxt[0] in "aeiou" and nxt != "useful" or nxt == "honest"
                assert (w == "an") == vowel, words
    assert checked > 2000
    # sentence-initial demonstratives, as in "These old dogs ..."
    initial = [ws for ws in sentences if ws[0] in DEMONSTRATIVES]
    assert len(initial) > 100
    for ws in initial:
        j = _skip_adjectives(ws, 1)
        assert LEXICON.noun_number(ws[j]) == DEMONSTRATIVES[ws[0]], ws


def test_subject_verb_agreement_holds_across_pp_distractors(sentences):
    checked = with_distractor = 0
    for ws in sentences:
        if ws[0] not in DEMONSTRATIVES:
            continue
        head = _skip_adjectives(ws, 1)
        number = LEXICON.noun_number(ws[head])
        j = head + 1
        if ws[j] in LEXICON.modifier_prepositions:  # "this key near the boxes"
            j = _skip_adjectives(ws, j + 2) + 1
            with_distractor += 1
        verb_number = LEXICON.verb_number(ws[j])
        if verb_number is not None:
            assert verb_number == number, ws
            checked += 1
    assert checked > 100 and with_distractor > 10


def test_reflexives_agree_with_their_antecedent(sentences):
    seen = Counter()
    for ws in sentences:
        for i, w in enumerate(ws):
            if w not in ("himself", "herself", "itself", "themselves"):
                continue
            verb, antecedent = ws[i - 1], ws[i - 2]
            assert verb in VERB_FORMS, ws
            if w == "himself":
                assert LEXICON.gender(antecedent) == "m", ws
            elif w == "herself":
                assert LEXICON.gender(antecedent) == "f", ws
            elif w == "itself":
                assert antecedent == "it" or (
                    antecedent in NON_HUMAN_NOUNS and LEXICON.noun_number(antecedent) == "sg"
                ), ws
            else:
                assert antecedent == "they" or LEXICON.noun_number(antecedent) == "pl", ws
            seen[w] += 1
    assert min(seen[w] for w in ("himself", "herself", "itself", "themselves")) > 20, seen


def test_pronouns_agree_with_their_antecedent(sentences):
    embedded = possessive = 0
    for ws in sentences:
        for k in range(len(ws) - 3):
            if k > 0 and ws[k - 1] == "and":
                continue
            gender = LEXICON.gender(ws[k]) if ws[k] not in ("he", "she") else None
            number = LEXICON.noun_number(ws[k])
            # "Mary said that she ...": a pronoun subject of the complement is the matrix subject
            if ws[k + 1] in SAY_FORMS and ws[k + 2] == "that" and ws[k + 3] in ("he", "she", "they", "it"):
                pronoun = ws[k + 3]
                if number == "pl":
                    assert pronoun == "they", ws
                elif gender is not None:
                    assert LEXICON.gender(pronoun) == gender, ws
                embedded += 1
            # "John lost his key": possessives agree with a name subject
            if ws[k] in NAMES and ws[k + 2] in ("his", "her"):
                assert {"his": "m", "her": "f"}[ws[k + 2]] == NAMES[ws[k]], ws
                possessive += 1
    assert embedded > 20 and possessive > 10


# ---- minimal pairs -----------------------------------------------------------------------------


def test_minimal_pairs_shape_and_fields(pairs):
    assert len(pairs) >= 6
    assert tuple(pairs) == PARADIGMS
    for uid, records in pairs.items():
        assert len(records) == 40
        for i, rec in enumerate(records):
            assert set(rec) == REQUIRED_FIELDS
            assert rec["UID"] == uid and rec["pairID"] == str(i)
            assert rec["field"] in ("morphology", "syntax", "semantics")
            expected_terms = {t for key, t in TERMS.items() if key in uid} or {"subject_verb_agreement"}
            assert rec["linguistics_term"] in expected_terms, rec
        assert len({r["sentence_good"] for r in records}) == len(records)


def test_minimal_pairs_differ_in_exactly_one_word_of_the_corpus_lexicon(pairs):
    vocabulary = LEXICON.vocabulary()
    for records in pairs.values():
        for rec in records:
            good, bad = rec["sentence_good"].split(), rec["sentence_bad"].split()
            assert rec["sentence_good"] != rec["sentence_bad"]
            assert len(good) == len(bad)
            assert sum(g != b for g, b in zip(good, bad, strict=True)) == 1
            assert set(_words(rec["sentence_good"]) + _words(rec["sentence_bad"])) <= vocabulary


def test_minimal_pairs_are_deterministic_and_seeded(pairs):
    assert generate_minimal_pairs(40, seed=0) == pairs
    other = generate_minimal_pairs(40, seed=1)
    assert other.keys() == pairs.keys() and other != pairs
    # a smaller request is a prefix of a larger one
    small = generate_minimal_pairs(5, seed=0)
    assert all(small[uid] == pairs[uid][:5] for uid in small)


def _diff(rec: dict) -> tuple[int, list[str], list[str]]:
    good, bad = _words(rec["sentence_good"]), _words(rec["sentence_bad"])
    (i,) = [k for k, (g, b) in enumerate(zip(good, bad, strict=True)) if g != b]
    return i, good, bad


def test_minimal_pairs_contrast_the_named_phenomenon(pairs):
    for uid, records in pairs.items():
        for rec in records:
            i, good, bad = _diff(rec)
            term = rec["linguistics_term"]
            if term == "determiner_noun_agreement":
                det = good[i - 1] if good[i - 1] in DEMONSTRATIVES else good[i - 2]
                assert LEXICON.noun_number(good[i]) == DEMONSTRATIVES[det], rec
                assert LEXICON.noun_number(bad[i]) != DEMONSTRATIVES[det], rec
            elif term == "subject_verb_agreement":
                assert {PRESENT_NUMBER[good[i]], PRESENT_NUMBER[bad[i]]} == {"sg", "pl"}, rec
                subject_nouns = [w for w in good[:i] if LEXICON.noun_number(w)]
                head, distractor = subject_nouns[0], subject_nouns[-1]
                assert PRESENT_NUMBER[good[i]] == LEXICON.noun_number(head), rec
                if uid.startswith("distractor"):
                    assert LEXICON.noun_number(distractor) != LEXICON.noun_number(head), rec
            else:
                assert term == "anaphor_agreement"
                antecedent = good[i - 2]
                expected = {"m": "himself", "f": "herself"}.get(LEXICON.gender(antecedent), "themselves")
                assert good[i] == expected, rec
                assert bad[i] in ("himself", "herself", "themselves") and bad[i] != expected, rec


def test_write_minimal_pairs_round_trips(tmp_path, pairs):
    out = tmp_path / "blimp"
    write_minimal_pairs(out, pairs)
    write_minimal_pairs(out, pairs)  # overwriting is fine
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{uid}.jsonl" for uid in pairs)
    for uid, records in pairs.items():
        lines = (out / f"{uid}.jsonl").read_text(encoding="utf-8").splitlines()
        assert [json.loads(line) for line in lines] == records
