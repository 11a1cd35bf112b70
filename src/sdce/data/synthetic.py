"""The embedded default corpus: a seeded probabilistic grammar over a small real English lexicon.

No corpus can be downloaded, so the pipeline generates one. The grammar controls a set of
agreement phenomena that a small language model can learn, and the same grammar produces
BLiMP-style minimal pairs that probe exactly those phenomena:

* determiner-noun agreement (``this``/``that``/``these``/``those``, ``a``/``an`` vs ``some``/``many``),
* subject-verb agreement, also across a prepositional-phrase or relative-clause distractor and
  with conjoined subjects,
* reflexive anaphor agreement with its antecedent (``himself``/``herself``/``itself``/``themselves``),
* pronoun-antecedent agreement (a pronoun subject of a complement clause refers to the matrix
  subject; possessives agree with the subject; a sentence may continue with a pronoun for the
  previous sentence's subject),

plus variety (adjectives, locative PPs, adverbs, coordination, subordination, questions, past
tense) so that bigram statistics are informative but not sufficient. Word frequencies within each
category are Zipfian in the order the lexicon lists them.

Structural guarantees the tests rely on:

* a reflexive always directly follows its verb, and the verb directly follows the head of the
  antecedent (a name, a pronoun, or an unmodified noun phrase);
* a pronoun subject right after ``<verb of saying> that`` refers to the matrix subject;
* every word of the output (lower-cased, punctuation stripped) is in :meth:`Lexicon.vocabulary`.
"""

from __future__ import annotations

import json
import os
import random
import re
import tempfile
from bisect import bisect
from dataclasses import dataclass, field
from functools import cached_property
from itertools import accumulate
from pathlib import Path
from typing import NamedTuple

__all__ = [
    "LEXICON",
    "LEXICON_VERSION",
    "PARADIGMS",
    "Lexicon",
    "Noun",
    "Verb",
    "generate_documents",
    "generate_minimal_pairs",
    "grammar_errors",
    "grammaticality",
    "write_minimal_pairs",
]

#: Bump whenever the lexicon or the grammar changes what a seed generates.
LEXICON_VERSION = "sdce-synthetic-1"

ZIPF_EXPONENT = 1.0

# --------------------------------------------------------------------------------------------
# Lexicon
# --------------------------------------------------------------------------------------------

# Nouns: "singular plural gender" with gender m/f for gendered nouns and n otherwise.
_HUMAN_NOUNS = """
man men m | woman women f | child children n | boy boys m | girl girls f | teacher teachers n
friend friends n | king kings m | queen queens f | student students n | doctor doctors n
mother mothers f | father fathers m | person people n | farmer farmers n | brother brothers m
sister sisters f | neighbor neighbors n | son sons m | daughter daughters f | baby babies n
soldier soldiers n | prince princes m | princess princesses f | artist artists n | uncle uncles m
aunt aunts f | stranger strangers n | guest guests n | lawyer lawyers n | writer writers n
wife wives f | husband husbands m | nurse nurses n | pilot pilots n | actor actors m
actress actresses f | singer singers n | driver drivers n | baker bakers n | customer customers n
nephew nephews m | niece nieces f | waiter waiters m | waitress waitresses f | visitor visitors n
scientist scientists n | painter painters n | dancer dancers n | officer officers n
gentleman gentlemen m | lady ladies f | grandfather grandfathers m | grandmother grandmothers f
thief thieves n | hero heroes n | author authors n | engineer engineers n | worker workers n
player players n | patient patients n | manager managers n
"""

_ANIMAL_NOUNS = """
dog dogs | cat cats | bird birds | horse horses | mouse mice | rabbit rabbits | cow cows
duck ducks | fox foxes | wolf wolves | owl owls | goose geese | lion lions | monkey monkeys
puppy puppies | kitten kittens | frog frogs | pony ponies | ox oxen | donkey donkeys
"""

# Inanimate objects; food is marked with a trailing "+", texts with a trailing "*".
_OBJECT_NOUNS = """
book books * | key keys | letter letters * | box boxes | table tables | chair chairs | car cars
door doors | window windows | cup cups | picture pictures | cake cakes + | apple apples +
bag bags | ball balls | hat hats | coat coats | lamp lamps | bottle bottles | map maps
story stories * | song songs * | flower flowers | tree trees | boat boats | clock clocks
glass glasses | dish dishes | knife knives | shelf shelves | egg eggs + | orange oranges +
ring rings | toy toys | shoe shoes | bicycle bicycles | painting paintings | mirror mirrors
candle candles | basket baskets | newspaper newspapers * | pencil pencils | umbrella umbrellas
envelope envelopes | blanket blankets | sandwich sandwiches + | potato potatoes + | stone stones
tomato tomatoes + | photograph photographs | wheel wheels | puzzle puzzles | bridge bridges
tower towers | gate gates | fence fences | wall walls | tooth teeth | foot feet | pie pies +
cookie cookies + | carrot carrots + | bowl bowls | spoon spoons | plate plates | drawer drawers
"""

_PLACE_NOUNS = """
house houses | garden gardens | park parks | school schools | kitchen kitchens | room rooms
market markets | village villages | city cities | forest forests | river rivers | library libraries
church churches | station stations | office offices | shop shops | street streets | castle castles
farm farms | hospital hospitals | museum museums | hill hills | lake lakes | theater theaters
"""

_MALE_NAMES = """
John James David Michael Robert William Thomas Daniel Paul George Peter Richard Edward Henry
Samuel Oliver Jack Frank Martin Arthur Simon Victor Albert Walter Hugo
"""
_FEMALE_NAMES = """
Mary Sarah Elizabeth Anna Emma Laura Susan Rachel Alice Helen Grace Julia Catherine Lucy Emily
Margaret Claire Diana Nancy Olivia Sophie Ruth Irene Eva Linda
"""

# Transitive verbs: "base 3sg past subject-class object-class [R]" where R marks verbs that take a
# reflexive object. Subject classes: h (human), anim (human or animal). Object classes: h, anim,
# inan (object), food, text, any.
_TRANSITIVE_VERBS = """
see sees saw anim any R | like likes liked anim any R | find finds found anim any R
know knows knew h anim R | help helps helped h anim R | want wants wanted anim inan
visit visits visited h h | watch watches watched anim any R | love loves loved anim any R
need needs needed anim any | meet meets met h anim | call calls called h anim
follow follows followed anim anim | remember remembers remembered h any
carry carries carried anim inan | read reads read h text | write writes wrote h text
build builds built h inan | buy buys bought h inan | hold holds held h any
bring brings brought anim inan | take takes took anim inan | make makes made h inan
hate hates hated anim any R | admire admires admired h any R | trust trusts trusted anim h R
forget forgets forgot h any | open opens opened h inan | clean cleans cleaned h inan
paint paints painted h inan R | sell sells sold h inan | lose loses lost anim inan
break breaks broke anim inan | fix fixes fixed h inan | drop drops dropped anim inan
eat eats ate anim food | cook cooks cooked h food | hide hides hid anim any R
teach teaches taught h h | thank thanks thanked h h | praise praises praised h h R
blame blames blamed h h R | protect protects protected anim anim R | hurt hurts hurt anim anim R
describe describes described h any R | criticize criticizes criticized h h R
defend defends defended anim anim R | introduce introduces introduced h h R
ignore ignores ignored anim any R | examine examines examined h any R | wash washes washed anim any R
draw draws drew h any R | greet greets greeted h h | borrow borrows borrowed h inan
"""

# Intransitive verbs: "base 3sg past subject-class" with subject classes h, anim, any, inan.
_INTRANSITIVE_VERBS = """
sleep sleeps slept anim | laugh laughs laughed h | smile smiles smiled h | arrive arrives arrived anim
sing sings sang anim | wait waits waited anim | work works worked h | talk talks talked h
run runs ran anim | walk walks walked anim | dance dances danced h | cry cries cried h
fall falls fell any | swim swims swam anim | play plays played anim | win wins won h
rest rests rested anim | disappear disappears disappeared any | jump jumps jumped anim
return returns returned anim | listen listens listened h | shout shouts shouted h
complain complains complained h | sit sits sat anim | wander wanders wandered anim
move moves moved any | shine shines shone inan | close closes closed inan | fail fails failed h
"""

# Verbs that take a finite "that" complement: "base 3sg past".
_SAY_VERBS = """
say says said | think thinks thought | believe believes believed | hope hopes hoped
claim claims claimed | notice notices noticed | suspect suspects suspected | insist insists insisted
"""

_HUMAN_ADJECTIVES = """
happy old young tired tall kind angry clever sad busy brave proud hungry quiet famous rich poor
friendly nervous honest polite lonely curious calm wise strong gentle cheerful careful lazy
"""
_ANIMAL_ADJECTIVES = """
small big old young hungry tired brown black white quiet friendly lazy little angry wild gentle
"""
_OBJECT_ADJECTIVES = """
old new small red large heavy blue green broken empty expensive beautiful strange yellow little
wooden cheap dirty round tiny huge dark bright soft warm cold dusty useful
"""

# Prepositions heading a noun-modifying PP (the agreement distractor) and locative adjuncts.
_MODIFIER_PREPOSITIONS = "near behind beside with from under above without"
_LOCATIVE_PREPOSITIONS = "in near behind outside inside beside"

_PAST_ADVERBS = ["yesterday", "last night", "last week", "once", "earlier", "again"]
_PRESENT_ADVERBS = ["often", "daily", "in the morning", "again", "at night", "today"]
_MANNER_ADVERBS = ["quietly", "slowly", "quickly", "happily", "carefully", "suddenly", "together"]

_SG_DETERMINERS = {"the": 50, "a": 26, "this": 6, "that": 5, "every": 2, "each": 2}
_PL_DETERMINERS = {"the": 42, "": 14, "some": 10, "these": 7, "those": 6, "many": 6, "several": 5}
_PL_DETERMINERS.update({"two": 5, "three": 3})
DEMONSTRATIVES = {"this": "sg", "that": "sg", "these": "pl", "those": "pl"}

_AN_EXCEPTIONS = {"honest", "hour", "honor"}
_A_EXCEPTIONS = {"useful", "university", "uniform", "one", "european", "unicorn"}

SG, PL = 0, 1  # grammatical number

PRONOUNS = {
    # key: (subject, object, possessive, reflexive)
    "m": ("he", "him", "his", "himself"),
    "f": ("she", "her", "her", "herself"),
    "n": ("it", "it", "its", "itself"),
    "pl": ("they", "them", "their", "themselves"),
}


class Noun(NamedTuple):
    singular: str
    plural: str
    kind: str  # "h" human, "a" animal, "i" object, "p" place
    gender: str  # "m", "f" or "n"
    tag: str = ""  # "food" or "text" for objects that only some verbs take

    @property
    def irregular(self) -> bool:
        s, p = self.singular, self.plural
        if p == s + "s" or p == s + "es":
            return False
        return not (s.endswith("y") and p == s[:-1] + "ies")


class Verb(NamedTuple):
    base: str
    s3: str
    past: str
    subject: str  # subject class
    object: str  # object class ("" for intransitive and verbs of saying)
    reflexive: bool = False

    def form(self, number: int, past: bool) -> str:
        if past:
            return self.past
        return self.s3 if number == SG else self.base


def _split_entries(text: str) -> list[list[str]]:
    return [e.split() for e in text.replace("\n", " | ").split("|") if e.strip()]


def _nouns(text: str, kind: str) -> tuple[Noun, ...]:
    out = []
    for e in _split_entries(text):
        if kind == "h":
            out.append(Noun(e[0], e[1], "h", e[2]))
        else:
            tag = {"+": "food", "*": "text"}.get(e[2], "") if len(e) > 2 else ""
            out.append(Noun(e[0], e[1], kind, "n", tag))
    return tuple(out)


@dataclass(frozen=True)
class Lexicon:
    """The closed lexicon the grammar draws from, with lookups used by tests and evaluation."""

    humans: tuple[Noun, ...]
    animals: tuple[Noun, ...]
    objects: tuple[Noun, ...]
    places: tuple[Noun, ...]
    male_names: tuple[str, ...]
    female_names: tuple[str, ...]
    transitive_verbs: tuple[Verb, ...]
    intransitive_verbs: tuple[Verb, ...]
    say_verbs: tuple[Verb, ...]
    human_adjectives: tuple[str, ...]
    animal_adjectives: tuple[str, ...]
    object_adjectives: tuple[str, ...]
    modifier_prepositions: tuple[str, ...]
    locative_prepositions: tuple[str, ...]
    _noun_number: dict[str, str] = field(default_factory=dict, init=False, repr=False, compare=False)
    _gender: dict[str, str] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for n in self.nouns:
            self._noun_number[n.singular] = "sg"
            self._noun_number[n.plural] = "pl"
            if n.gender in ("m", "f"):
                self._gender[n.singular] = n.gender
        for name in self.male_names:
            self._gender[name.lower()] = "m"
        for name in self.female_names:
            self._gender[name.lower()] = "f"
        self._gender["he"] = "m"
        self._gender["she"] = "f"

    @cached_property
    def nouns(self) -> tuple[Noun, ...]:
        return self.humans + self.animals + self.objects + self.places

    @cached_property
    def names(self) -> dict[str, str]:
        """Proper name -> gender ("m"/"f")."""
        return {**{n: "m" for n in self.male_names}, **{n: "f" for n in self.female_names}}

    @cached_property
    def verbs(self) -> tuple[Verb, ...]:
        return self.transitive_verbs + self.intransitive_verbs + self.say_verbs

    @cached_property
    def adjectives(self) -> frozenset[str]:
        return frozenset(self.human_adjectives + self.animal_adjectives + self.object_adjectives)

    def noun_number(self, word: str) -> str | None:
        """ "sg" or "pl" for a common noun form (lower case), None for anything else."""
        return self._noun_number.get(word)

    def gender(self, word: str) -> str | None:
        """ "m"/"f" for a gendered singular noun, a name or he/she (any case), else None."""
        return self._gender.get(word.lower())

    def verb_number(self, word: str) -> str | None:
        """ "sg" for a 3rd-person-singular present form (incl. is/was/does), "pl" for a plural present
        form (incl. are/were/do), None otherwise: past forms of lexical verbs, bare forms that are
        also past forms ("read", "hurt"), non-verbs."""
        return _VERB_NUMBER.get(word)

    def vocabulary(self) -> frozenset[str]:
        """Every lower-case word the grammar can emit (a small superset of the words it does emit)."""
        return _VOCABULARY


def _build_lexicon() -> Lexicon:
    def verbs(text: str, transitive: bool, say: bool = False) -> tuple[Verb, ...]:
        out = []
        for e in _split_entries(text):
            if say:
                out.append(Verb(e[0], e[1], e[2], "h", ""))
            elif transitive:
                out.append(Verb(e[0], e[1], e[2], e[3], e[4], len(e) > 5 and e[5] == "R"))
            else:
                out.append(Verb(e[0], e[1], e[2], e[3], ""))
        return tuple(out)

    return Lexicon(
        humans=_nouns(_HUMAN_NOUNS, "h"),
        animals=_nouns(_ANIMAL_NOUNS, "a"),
        objects=_nouns(_OBJECT_NOUNS, "i"),
        places=_nouns(_PLACE_NOUNS, "p"),
        male_names=tuple(_MALE_NAMES.split()),
        female_names=tuple(_FEMALE_NAMES.split()),
        transitive_verbs=verbs(_TRANSITIVE_VERBS, True),
        intransitive_verbs=verbs(_INTRANSITIVE_VERBS, False),
        say_verbs=verbs(_SAY_VERBS, False, say=True),
        human_adjectives=tuple(_HUMAN_ADJECTIVES.split()),
        animal_adjectives=tuple(_ANIMAL_ADJECTIVES.split()),
        object_adjectives=tuple(_OBJECT_ADJECTIVES.split()),
        modifier_prepositions=tuple(_MODIFIER_PREPOSITIONS.split()),
        locative_prepositions=tuple(_LOCATIVE_PREPOSITIONS.split()),
    )


LEXICON = _build_lexicon()

_VERB_NUMBER: dict[str, str] = {"is": "sg", "was": "sg", "does": "sg", "are": "pl", "were": "pl", "do": "pl"}
for _v in LEXICON.verbs:
    _VERB_NUMBER[_v.s3] = "sg"
    if _v.base != _v.past:  # "read", "hurt": the bare form may be a past tense
        _VERB_NUMBER[_v.base] = "pl"

_FUNCTION_WORDS = """
the a an this that these those some many several two three every each and but because when while
after before who what which is are was were does do did not he she it they him her them his its
their himself herself itself themselves
"""
_VOCABULARY = frozenset(
    {w.lower() for n in LEXICON.nouns for w in (n.singular, n.plural)}
    | {n.lower() for n in LEXICON.male_names + LEXICON.female_names}
    | {f for v in LEXICON.verbs for f in (v.base, v.s3, v.past)}
    | set(LEXICON.adjectives)
    | set(LEXICON.modifier_prepositions + LEXICON.locative_prepositions)
    | {w for a in _PAST_ADVERBS + _PRESENT_ADVERBS + _MANNER_ADVERBS for w in a.split()}
    | set(_FUNCTION_WORDS.split())
)


def _article(word: str) -> str:
    w = word.lower()
    if w in _AN_EXCEPTIONS:
        return "an"
    if w in _A_EXCEPTIONS:
        return "a"
    return "an" if w[0] in "aeiou" else "a"


# --------------------------------------------------------------------------------------------
# Weighted sampling
# --------------------------------------------------------------------------------------------


class _Pick:
    """Weighted choice by bisection over precomputed cumulative weights."""

    __slots__ = ("items", "cum", "total")

    def __init__(self, items, weights=None):
        self.items = tuple(items)
        if weights is None:  # Zipfian in listed order
            weights = [1.0 / (i + 1) ** ZIPF_EXPONENT for i in range(len(self.items))]
        self.cum = list(accumulate(weights))
        self.total = self.cum[-1]

    def __call__(self, r):
        return self.items[bisect(self.cum, r() * self.total)]


def _weighted(d: dict) -> _Pick:
    return _Pick(d.keys(), d.values())


_L = LEXICON
_P_HUMAN = _Pick(_L.humans)
_P_HUMAN_GENDERED = _Pick([n for n in _L.humans if n.gender != "n"])
_P_ANIMAL = _Pick(_L.animals)
_P_OBJECT = _Pick(_L.objects)
_P_FOOD = _Pick([n for n in _L.objects if n.tag == "food"])
_P_TEXT = _Pick([n for n in _L.objects if n.tag == "text"])
_P_PLACE = _Pick(_L.places)
_P_IRREGULAR = {
    "h": _Pick([n for n in _L.humans if n.irregular]),
    "a": _Pick([n for n in _L.animals if n.irregular]),
    "i": _Pick([n for n in _L.objects if n.irregular]),
}
_P_REGULAR = {
    "h": _Pick([n for n in _L.humans if not n.irregular]),
    "a": _Pick([n for n in _L.animals if not n.irregular]),
    "i": _Pick([n for n in _L.objects if not n.irregular]),
}
# Interleave male and female names so that both genders have the same frequency profile.
_P_NAME = _Pick([n for pair in zip(_L.male_names, _L.female_names, strict=True) for n in pair])
_NAME_GENDER = _L.names
_P_ADJ = {
    "h": _Pick(_L.human_adjectives),
    "a": _Pick(_L.animal_adjectives),
    "i": _Pick(_L.object_adjectives),
    "p": _Pick(_L.object_adjectives),
}
_P_SG_DET = _weighted(_SG_DETERMINERS)
_P_PL_DET = _weighted(_PL_DETERMINERS)
_P_DEMONSTRATIVE = _Pick(("this", "these", "that", "those"), (3, 3, 2, 2))
_P_TRANS = _Pick(_L.transitive_verbs)
_P_TRANS_REFL = _Pick([v for v in _L.transitive_verbs if v.reflexive])
_P_TRANS_BY_OBJECT = {
    "inan": _Pick([v for v in _L.transitive_verbs if v.object in ("inan", "any")]),
    "anim": _Pick([v for v in _L.transitive_verbs if v.object in ("anim", "any", "h")]),
}
_P_INTRANS = _Pick(_L.intransitive_verbs)
_P_SAY = _Pick(_L.say_verbs)
_P_MOD_PREP = _Pick(_L.modifier_prepositions)
_P_LOC_PREP = _Pick(_L.locative_prepositions, (8, 3, 2, 2, 2, 1))
_P_PAST_ADV = _Pick(_PAST_ADVERBS)
_P_PRES_ADV = _Pick(_PRESENT_ADVERBS)
_P_MANNER_ADV = _Pick(_MANNER_ADVERBS)
_P_CONNECTIVE = _weighted({"because": 4, "when": 4, "while": 2, "after": 2, "before": 2})

# Subject classes -> which noun pools are allowed (with weights).
_KIND_FOR_CLASS = {
    "h": _Pick("h"),
    "anim": _Pick("ha", (3, 1)),
    "any": _Pick("hai", (4, 1, 3)),
    "inan": _Pick("i"),
    "food": _Pick("f"),
    "text": _Pick("t"),
}
_POOL = {"h": _P_HUMAN, "a": _P_ANIMAL, "i": _P_OBJECT, "f": _P_FOOD, "t": _P_TEXT, "p": _P_PLACE}


def _pron_key(num: int, gender: str, kind: str) -> str | None:
    if num == PL:
        return "pl"
    if kind != "h":
        return "n"
    return gender if gender in ("m", "f") else None


_NOUN_FLIP = {}
for _n in LEXICON.nouns:
    _NOUN_FLIP[_n.singular] = _n.plural
    _NOUN_FLIP[_n.plural] = _n.singular
_VERB_FLIP = {"is": "are", "are": "is", "was": "were", "were": "was"}
for _v in LEXICON.verbs:
    _VERB_FLIP[_v.s3] = _v.base
    _VERB_FLIP[_v.base] = _v.s3


# --------------------------------------------------------------------------------------------
# Grammar
# --------------------------------------------------------------------------------------------

# A noun phrase is a tuple (words, number, gender, kind).


def _be(num: int, past: bool) -> str:
    if past:
        return "was" if num == SG else "were"
    return "is" if num == SG else "are"


class _Grammar:
    """Sentence and document generation. All randomness comes from ``self.r`` (``Random.random``)."""

    def __init__(self, rng: random.Random):
        self.r = rng.random
        self.antecedent = None  # (number, gender, kind) of the previous sentence's subject
        self.p_past = 0.5

    # ---- noun phrases -------------------------------------------------------------------

    def noun_np(
        self,
        kind: str,
        num: int | None = None,
        adj_p: float = 0.35,
        noun: Noun | None = None,
        bare: bool = True,
    ):
        """``det [adj] noun``; plural noun phrases may be bare unless ``bare`` is false."""
        r = self.r
        if noun is None:
            noun = _POOL[kind](r)
        if num is None:
            num = PL if r() < 0.4 else SG
        head = noun.plural if num == PL else noun.singular
        words = []
        det = _P_PL_DET(r) if num == PL else _P_SG_DET(r)
        if not det and not bare:
            det = "the"
        adj = _P_ADJ[noun.kind](r) if r() < adj_p else None
        if det == "a":
            det = _article(adj or head)
        if det:
            words.append(det)
        if adj:
            words.append(adj)
        words.append(head)
        return words, num, noun.gender, noun.kind

    def name_np(self):
        name = _P_NAME(self.r)
        return [name], SG, _NAME_GENDER[name], "h"

    def subject(self, cls: str, modifiers: bool = True, pronoun_p: float = 0.3):
        """A subject NP of class ``cls``; may be a pronoun for the discourse antecedent, a name,
        a conjoined NP, or a noun phrase with a PP or relative-clause modifier."""
        r = self.r
        ante = self.antecedent
        if ante is not None and r() < pronoun_p:
            num, gender, kind = ante
            key = _pron_key(num, gender, kind)
            if key is not None and _class_allows(cls, kind):
                return [PRONOUNS[key][0]], num, gender, kind
        kind = _KIND_FOR_CLASS[cls](r)
        if kind == "h":
            x = r()
            if x < 0.3:
                return self.name_np()
            if x < 0.36 and modifiers:
                return self.conjoined()
        np = self.noun_np(kind)
        if modifiers:
            x = r()
            if x < 0.14:
                np = self.pp_modified(np)
            elif x < 0.22:
                np = self.rc_modified(np)
        return np

    def conjoined(self):
        r = self.r
        a = self.name_np() if r() < 0.6 else self.noun_np("h", adj_p=0.1)
        b = self.name_np() if r() < 0.6 else self.noun_np("h", adj_p=0.1)
        gender = a[2] if a[2] == b[2] else "n"
        return a[0] + ["and"] + b[0], PL, gender, "h"

    def pp_modified(self, np, num: int | None = None):
        """``the key to the cabinets``: the PP object is an agreement distractor."""
        r = self.r
        prep = _P_MOD_PREP(r)
        kind = "h" if prep == "with" and np[3] == "h" and r() < 0.5 else ("i" if r() < 0.7 else "a")
        if num is None:
            num = 1 - np[1] if r() < 0.6 else np[1]
        inner = self.noun_np(kind, num, adj_p=0.15, bare=False)
        return (np[0] + [prep] + inner[0],) + np[1:]

    def rc_modified(self, np, inner_num: int | None = None, past: bool | None = None):
        """A relative clause on the head: subject gap (``who likes the cats``) or object gap
        (``that the boys like``); the object-gap subject is an agreement distractor."""
        r = self.r
        words, num, gender, kind = np
        if past is None:
            past = r() < self.p_past
        rel = "who" if kind == "h" else "that"
        if kind == "i" or inner_num is not None or r() < 0.5:  # object gap
            verb = _P_TRANS_BY_OBJECT["inan" if kind == "i" else "anim"](r)
            while not _class_allows(verb.object, kind):
                verb = _P_TRANS_BY_OBJECT["inan" if kind == "i" else "anim"](r)
            if inner_num is None:
                inner_num = 1 - num if r() < 0.6 else num
            inner_kind = "h" if verb.subject == "h" or r() < 0.7 else "a"
            inner = self.noun_np(inner_kind, inner_num, adj_p=0.1, bare=False)
            return words + [rel] + inner[0] + [verb.form(inner_num, past)], num, gender, kind
        verb = _P_TRANS(r)
        while not _class_allows(verb.subject, kind):
            verb = _P_TRANS(r)
        obj = self.object(verb.object, adj_p=0.1)
        return words + [rel, verb.form(num, past)] + obj[0], num, gender, kind

    def object(self, cls: str, adj_p: float = 0.4):
        r = self.r
        kind = _KIND_FOR_CLASS[cls](r)
        np = self.noun_np(kind, adj_p=adj_p)
        if r() < 0.08:
            np = self.pp_modified(np)
        return np

    # ---- clauses --------------------------------------------------------------------------

    def adjunct(self, past: bool, manner: bool) -> list[str]:
        r = self.r
        x = r()
        if x < 0.35:
            place = _P_PLACE(r)
            num = PL if r() < 0.15 else SG
            return [_P_LOC_PREP(r), "the", place.plural if num == PL else place.singular]
        if x < 0.48:
            return (_P_PAST_ADV(r) if past else _P_PRES_ADV(r)).split()
        if manner and x < 0.62:
            return [_P_MANNER_ADV(r)]
        return []

    def clause(self, past: bool, subj=None, allow_say: bool = True):
        """A declarative clause; returns (words, subject NP)."""
        r = self.r
        x = r()
        if x < 0.40:
            verb = _P_TRANS(r)
            if subj is None:
                subj = self.subject(verb.subject)
            elif not _class_allows(verb.subject, subj[3]):
                return self.clause(past, subj, allow_say)
            words = subj[0] + [verb.form(subj[1], past)]
            key = _pron_key(subj[1], subj[2], subj[3])
            if key is not None and verb.object not in ("h", "anim") and r() < 0.15:
                # possessive agreeing with the subject: "Mary lost her keys"
                noun = _POOL[_KIND_FOR_CLASS[verb.object](r)](r)
                words.append(PRONOUNS[key][2])
                if r() < 0.2:
                    words.append(_P_ADJ["i"](r))
                words.append(noun.plural if r() < 0.3 else noun.singular)
            else:
                words += self.object(verb.object)[0]
            return words + self.adjunct(past, False), subj
        if x < 0.58:
            if subj is None:
                verb = _P_INTRANS(r)
                subj = self.subject(verb.subject)
            else:
                verb = _P_INTRANS(r)
                while not _class_allows(verb.subject, subj[3]):
                    verb = _P_INTRANS(r)
            return subj[0] + [verb.form(subj[1], past)] + self.adjunct(past, True), subj
        if x < 0.71:
            if subj is None:
                subj = self.subject("any")
            return subj[0] + [_be(subj[1], past), _P_ADJ[subj[3]](r)], subj
        if x < 0.77:
            if subj is None:
                subj = self.subject("any")
            place = _P_PLACE(r)
            return subj[0] + [_be(subj[1], past), _P_LOC_PREP(r), "the", place.singular], subj
        if x < 0.89:
            return self.reflexive_clause(past, subj)
        if allow_say and (subj is None or subj[3] == "h"):
            return self.say_clause(past, subj)
        return self.clause(past, subj, allow_say)

    def reflexive_subject(self, verb: Verb):
        """A subject whose reflexive is determined: a name, a gendered noun, a plural, an animal,
        or a pronoun for such an antecedent. Never modified, so the antecedent head directly
        precedes the verb."""
        r = self.r
        ante = self.antecedent
        if ante is not None and r() < 0.3:
            num, gender, kind = ante
            if _pron_key(num, gender, kind) is not None and _class_allows(verb.subject, kind):
                return [PRONOUNS[_pron_key(num, gender, kind)][0]], num, gender, kind
        x = r()
        if x < 0.35:
            return self.name_np()
        if x < 0.6:
            return self.noun_np("h", SG, noun=_P_HUMAN_GENDERED(r))
        if x < 0.9 or verb.subject == "h":
            return self.noun_np("h", PL)
        return self.noun_np("a")

    def reflexive_clause(self, past: bool, subj=None):
        r = self.r
        verb = _P_TRANS_REFL(r)
        if subj is not None and (
            _pron_key(subj[1], subj[2], subj[3]) is None or not _class_allows(verb.subject, subj[3])
        ):
            subj = None
        if subj is None:
            subj = self.reflexive_subject(verb)
        refl = PRONOUNS[_pron_key(subj[1], subj[2], subj[3])][3]
        return subj[0] + [verb.form(subj[1], past), refl] + self.adjunct(past, False), subj

    def say_clause(self, past: bool, subj=None):
        r = self.r
        if subj is None:
            subj = self.subject("h", modifiers=False)
        verb = _P_SAY(r)
        words = subj[0] + [verb.form(subj[1], past), "that"]
        key = _pron_key(subj[1], subj[2], subj[3])
        saved = self.antecedent
        self.antecedent = None
        if key is not None and r() < 0.5:
            # the embedded subject is a pronoun for the matrix subject
            inner_subj = [PRONOUNS[key][0]], subj[1], subj[2], subj[3]
            inner, _ = self.clause(past or r() < 0.3, inner_subj, allow_say=False)
        else:
            inner, _ = self.clause(past or r() < 0.3, None, allow_say=False)
        self.antecedent = saved
        return words + inner, subj

    # ---- sentences ------------------------------------------------------------------------

    def question(self, past: bool) -> list[str]:
        r = self.r
        x = r()
        if x < 0.45:  # yes/no with do-support
            verb = _P_TRANS(r)
            subj = self.subject(verb.subject, modifiers=False)
            aux = "did" if past else ("does" if subj[1] == SG else "do")
            return [aux] + subj[0] + [verb.base] + self.object(verb.object)[0]
        if x < 0.7:  # yes/no with be
            subj = self.subject("any", modifiers=False)
            return [_be(subj[1], past)] + subj[0] + [_P_ADJ[subj[3]](r)]
        if x < 0.85:  # object wh-question
            verb = _P_TRANS(r)
            subj = self.subject(verb.subject, modifiers=False)
            aux = "did" if past else ("does" if subj[1] == SG else "do")
            wh = "who" if verb.object == "h" or (verb.object == "anim" and r() < 0.8) else "what"
            return [wh, aux] + subj[0] + [verb.base]
        verb = _P_TRANS(r)  # subject wh-question
        return ["who", verb.form(SG, past)] + self.object(verb.object)[0]

    def sentence(self) -> str:
        """One sentence. Only the subject of the first (main) clause may be a pronoun for the
        previous sentence's subject; that subject becomes the next antecedent."""
        r = self.r
        past = r() < self.p_past
        x = r()
        subj = None
        end = "."
        if x < 0.08:
            words, end = self.question(past), "?"
        elif x < 0.56:
            words, subj = self.clause(past)
        elif x < 0.80:
            words, subj = self.clause(past)
            self.antecedent = None
            second, _ = self.clause(past if r() < 0.8 else not past)
            if r() < 0.4:
                words[-1] += ","
                words += ["but"] + second
            else:
                words += ["and"] + second
        elif x < 0.94:
            words, subj = self.clause(past)
            self.antecedent = None
            second, _ = self.clause(past, allow_say=False)
            words += [_P_CONNECTIVE(r)] + second
        else:
            main, subj = self.clause(past)
            self.antecedent = None
            first, _ = self.clause(past, allow_say=False)
            first[-1] += ","
            words = ["when" if r() < 0.7 else "after"] + first + main
        if subj is not None and _pron_key(subj[1], subj[2], subj[3]) is not None:
            self.antecedent = (subj[1], subj[2], subj[3])
        else:
            self.antecedent = None
        first_word = words[0]
        words[0] = first_word[0].upper() + first_word[1:]
        return " ".join(words) + end

    def document(self) -> str:
        r = self.r
        self.antecedent = None
        self.p_past = 0.8 if r() < 0.5 else 0.15
        n = 3 + int(r() * 10)  # 3..12 sentences
        return " ".join([self.sentence() for _ in range(n)])


def _class_allows(cls: str, kind: str) -> bool:
    if cls == "any":
        return True
    if cls == "h":
        return kind == "h"
    if cls == "anim":
        return kind in ("h", "a")
    if cls in ("inan", "food", "text"):
        return kind == "i"
    return False


def generate_documents(n_documents: int, seed: int) -> list[str]:
    """``n_documents`` documents of 3-12 sentences each; deterministic for a seed."""
    g = _Grammar(random.Random(f"{LEXICON_VERSION}:documents:{seed}"))
    return [g.document() for _ in range(n_documents)]


# --------------------------------------------------------------------------------------------
# Minimal pairs
# --------------------------------------------------------------------------------------------

# A builder returns (tokens, index of the word to corrupt, bad word, final punctuation).


def _render(words: list[str], end: str = ".") -> str:
    first = words[0]
    return " ".join([first[0].upper() + first[1:]] + words[1:]) + end


def _object_det_np(g: _Grammar, verb: Verb, adj: bool, irregular: bool):
    r = g.r
    kind = _KIND_FOR_CLASS[verb.object](r)
    if kind in ("f", "t"):
        noun = _POOL[kind](r)
    elif irregular:
        irr_kind = kind if kind in _P_IRREGULAR else "i"
        noun = _P_IRREGULAR[irr_kind](r)
    else:
        noun = _POOL[kind](r)
    det = _P_DEMONSTRATIVE(r)
    num = PL if DEMONSTRATIVES[det] == "pl" else SG
    head = noun.plural if num == PL else noun.singular
    words = [det] + ([_P_ADJ[noun.kind](r)] if adj else []) + [head]
    return words


def _dna(g: _Grammar, adj: bool, irregular: bool):
    r = g.r
    verb = _P_TRANS(r)
    if irregular:
        while verb.object not in ("any", "anim", "h", "inan"):
            verb = _P_TRANS(r)
    subj = g.name_np() if r() < 0.5 else g.noun_np(_KIND_FOR_CLASS[verb.subject](r), adj_p=0.0)
    past = r() < 0.5
    obj = _object_det_np(g, verb, adj, irregular)
    words = subj[0] + [verb.form(subj[1], past)] + obj
    idx = len(words) - 1
    return words, idx, _NOUN_FLIP[words[idx]], "."


def _sva_predicate(g: _Grammar, num: int, kind: str):
    """A present-tense predicate whose first word shows agreement with a subject of ``num``."""
    r = g.r
    x = r()
    if x < 0.4:
        verb = _P_INTRANS(r)
        while not _class_allows(verb.subject, kind):
            verb = _P_INTRANS(r)
        return [verb.form(num, False)] + g.adjunct(False, True)
    if x < 0.75 and kind != "i":  # no transitive verb takes an inanimate subject
        verb = _P_TRANS(r)
        while not _class_allows(verb.subject, kind):
            verb = _P_TRANS(r)
        return [verb.form(num, False)] + g.object(verb.object, adj_p=0.2)[0]
    past = r() < 0.3
    return [_be(num, past), _P_ADJ[kind](r)]


def _sva(g: _Grammar, irregular: bool):
    r = g.r
    kind = "h" if r() < 0.6 else ("a" if r() < 0.6 else "i")
    pool = _P_IRREGULAR if irregular else _P_REGULAR
    num = PL if r() < 0.5 else SG
    subj = g.noun_np(kind, num, adj_p=0.2, noun=pool[kind](r))
    idx = len(subj[0])
    words = subj[0] + _sva_predicate(g, num, kind)
    return words, idx, _VERB_FLIP[words[idx]], "."


def _distractor_pp(g: _Grammar):
    r = g.r
    kind = "h" if r() < 0.5 else ("a" if r() < 0.4 else "i")
    num = PL if r() < 0.5 else SG
    head = g.noun_np(kind, num, adj_p=0.15, bare=False)
    subj = g.pp_modified(head, num=1 - num)
    idx = len(subj[0])
    words = subj[0] + _sva_predicate(g, num, kind)
    return words, idx, _VERB_FLIP[words[idx]], "."


def _distractor_rc(g: _Grammar):
    r = g.r
    kind = "h" if r() < 0.5 else ("a" if r() < 0.3 else "i")
    num = PL if r() < 0.5 else SG
    head = g.noun_np(kind, num, adj_p=0.1, bare=False)
    subj = g.rc_modified(head, inner_num=1 - num, past=r() < 0.5)
    idx = len(subj[0])
    words = subj[0] + _sva_predicate(g, num, kind)
    return words, idx, _VERB_FLIP[words[idx]], "."


def _anaphor(g: _Grammar, contrast: str):
    r = g.r
    verb = _P_TRANS_REFL(r)
    while verb.subject != "h" and verb.subject != "anim":
        verb = _P_TRANS_REFL(r)
    past = r() < 0.5
    if contrast == "gender" or r() < 0.5:
        subj = g.name_np() if r() < 0.5 else g.noun_np("h", SG, adj_p=0.15, noun=_P_HUMAN_GENDERED(r))
    else:
        subj = g.noun_np("h", PL, adj_p=0.15)
    key = _pron_key(subj[1], subj[2], subj[3])
    good = PRONOUNS[key][3]
    if contrast == "gender":
        bad = "himself" if good == "herself" else "herself"
    elif subj[1] == PL:
        bad = {"m": "himself", "f": "herself"}.get(subj[2]) or ("himself" if r() < 0.5 else "herself")
    else:
        bad = "themselves"
    words = subj[0] + [verb.form(subj[1], past), good]
    idx = len(words) - 1
    return words + g.adjunct(past, False), idx, bad, "."


_PARADIGMS = {
    # UID: (field, linguistics_term, builder)
    "determiner_noun_agreement_1": (
        "morphology",
        "determiner_noun_agreement",
        lambda g: _dna(g, adj=False, irregular=False),
    ),
    "determiner_noun_agreement_with_adjective_1": (
        "morphology",
        "determiner_noun_agreement",
        lambda g: _dna(g, adj=True, irregular=False),
    ),
    "determiner_noun_agreement_irregular_1": (
        "morphology",
        "determiner_noun_agreement",
        lambda g: _dna(g, adj=False, irregular=True),
    ),
    "regular_plural_subject_verb_agreement_1": (
        "morphology",
        "subject_verb_agreement",
        lambda g: _sva(g, irregular=False),
    ),
    "irregular_plural_subject_verb_agreement_1": (
        "morphology",
        "subject_verb_agreement",
        lambda g: _sva(g, irregular=True),
    ),
    "distractor_agreement_prepositional_phrase": ("morphology", "subject_verb_agreement", _distractor_pp),
    "distractor_agreement_relative_clause": ("morphology", "subject_verb_agreement", _distractor_rc),
    "anaphor_gender_agreement": ("morphology", "anaphor_agreement", lambda g: _anaphor(g, "gender")),
    "anaphor_number_agreement": ("morphology", "anaphor_agreement", lambda g: _anaphor(g, "number")),
}

#: The minimal-pair paradigm UIDs, in output order.
PARADIGMS: tuple[str, ...] = tuple(_PARADIGMS)


def generate_minimal_pairs(n_per_paradigm: int, seed: int) -> dict[str, list[dict]]:
    """BLiMP-format minimal pairs for every paradigm in :data:`PARADIGMS`.

    Each paradigm draws from its own random stream (independent of the corpus stream and of the
    other paradigms). Within a paradigm, good sentences are distinct while the grammar allows it.
    """
    out: dict[str, list[dict]] = {}
    for uid, (field_, term, build) in _PARADIGMS.items():
        g = _Grammar(random.Random(f"{LEXICON_VERSION}:minimal-pairs:{seed}:{uid}"))
        g.p_past = 0.5
        records: list[dict] = []
        seen: set[str] = set()
        attempts = 0
        while len(records) < n_per_paradigm:
            words, idx, bad_word, end = build(g)
            good = _render(words, end)
            attempts += 1
            if good in seen and attempts < 50 * n_per_paradigm:
                continue
            seen.add(good)
            bad_words = list(words)
            bad_words[idx] = bad_word
            records.append(
                {
                    "sentence_good": good,
                    "sentence_bad": _render(bad_words, end),
                    "field": field_,
                    "linguistics_term": term,
                    "UID": uid,
                    "pairID": str(len(records)),
                }
            )
        out[uid] = records
    return out


def write_minimal_pairs(folder: str | Path, pairs: dict[str, list[dict]]) -> None:
    """Write ``<UID>.jsonl`` per paradigm into ``folder``, each file atomically."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for uid, records in pairs.items():
        fd, tmp = tempfile.mkstemp(prefix=f".{uid}.", suffix=".tmp", dir=folder)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                for rec in records:
                    f.write(json.dumps(rec) + "\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, folder / f"{uid}.jsonl")
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise


# --------------------------------------------------------------------------------------------
# Checking
# --------------------------------------------------------------------------------------------

# A left-to-right check of the grammar's agreement rules over the lexicon's categories (no
# parser: every construction the grammar emits is recognised from the word categories alone).
# It is the `grammar` reward of PPO post-training (`sdce.rewards`), so it must be cheap.

_DET_NUMBER = {"the": None, "a": "sg", "an": "sg", "every": "sg", "each": "sg", "some": "pl", "many": "pl"}
_DET_NUMBER.update({"several": "pl", "two": "pl", "three": "pl", **DEMONSTRATIVES})
_AUX_NUMBER = {"does": "sg", "do": "pl", "did": None, "is": "sg", "are": "pl", "was": "sg", "were": "pl"}
_NP_INFO = {n.singular: ("sg", n.gender, n.kind) for n in LEXICON.nouns}
_NP_INFO.update({n.plural: ("pl", n.gender, n.kind) for n in LEXICON.nouns})
_COMMON_NOUNS = frozenset(_NP_INFO)
_NP_INFO.update({name.lower(): ("sg", g, "h") for name, g in LEXICON.names.items()})
_NP_INFO.update({"he": ("sg", "m", "h"), "she": ("sg", "f", "h"), "it": ("sg", "n", "i")})
_NP_INFO["they"] = ("pl", "n", "h")
_BE_FORMS = {"is", "are", "was", "were"}
_BARE_FORMS = frozenset(v.base for v in LEXICON.verbs)
_VERB_FORMS = frozenset(f for v in LEXICON.verbs for f in (v.base, v.s3, v.past)) | _BE_FORMS
_SAY_FORMS = frozenset(f for v in LEXICON.say_verbs for f in (v.base, v.s3, v.past))
_PREPOSITIONS = frozenset(LEXICON.modifier_prepositions + LEXICON.locative_prepositions)
_REFLEXIVES = {PRONOUNS[k][3] for k in PRONOUNS}
_BOUNDARIES = {",", "and", "but", "because", "when", "while", "after", "before"}
_ADVERB_NOUNS = {a.split()[-1] for a in _PRESENT_ADVERBS + _PAST_ADVERBS if " the " in f" {a} "}


def _reflexive_ok(word: str, antecedent) -> bool:
    number, gender, kind = antecedent
    if number == "pl":
        return word == "themselves"
    if kind != "h":
        return word == "itself"
    if gender in ("m", "f"):
        return word == {"m": "himself", "f": "herself"}[gender]
    return word in ("himself", "herself")  # a human noun of either gender


def _local_checks(words: list[str], complete: bool) -> list[bool]:
    """Vocabulary, a/an, and determiner-noun agreement: each determiner heads [adjectives] noun."""
    out = [w in _VOCABULARY for w in words if w != ","]
    for i, w in enumerate(words[:-1]):
        prev = words[i - 1] if i else ""
        if w not in _DET_NUMBER or (w == "that" and (prev in _COMMON_NOUNS or prev in _SAY_FORMS)):
            continue  # "that" after a noun opens a relative clause, after a verb of saying a complement
        if w in ("a", "an"):
            out.append(_article(words[i + 1]) == w)
        j = i + 1
        while j < len(words) and words[j] in LEXICON.adjectives:
            j += 1
        head = words[j] if j < len(words) else None
        if (head is None and not complete) or (w == "the" and head in _ADVERB_NOUNS):
            continue  # cut off before its noun, or "in the morning"
        head = head if head in _COMMON_NOUNS else None
        out.append(head is not None and _DET_NUMBER[w] in (None, _NP_INFO[head][0]))
    return out


def _question_checks(words: list[str], complete: bool) -> list[bool]:
    """Subject-wh questions take a singular verb; the others agree the auxiliary with the
    subject, after which a verb can only be the bare form of do-support."""
    if words[0] == "who" and words[1:] and words[1] not in _AUX_NUMBER:
        return [words[1] in _VERB_FORMS and _VERB_NUMBER.get(words[1]) in (None, "sg")]
    if words[0] in ("who", "what"):
        words = words[1:]
    at = next((i for i, w in enumerate(words) if i and w in _NP_INFO), None)
    if not words or words[0] not in _AUX_NUMBER or at is None:
        return [False] if complete else []  # no auxiliary, or no subject after it
    out = [_AUX_NUMBER[words[0]] in (None, _NP_INFO[words[at]][0])]
    do = words[0] in ("do", "does", "did")
    return out + [do and w in _BARE_FORMS for w in words[at + 1 :] if w in _VERB_FORMS]


def _clause_checks(words: list[str], complete: bool) -> list[bool]:
    """Subject-verb agreement across PP and relative-clause distractors, conjoined subjects and
    reflexives, walking the words once: `subject` awaits its verb, `outer` holds the subjects
    of the clauses a relative clause interrupts."""
    out: list[bool] = []
    subject, outer, last_np, agent = None, [], None, None
    expect_subject, in_pp, conjoin = True, False, False
    for i, w in enumerate(words):
        prev, nxt = (words[i - 1] if i else ""), (words[i + 1] if i + 1 < len(words) else "")
        if w in _NP_INFO and not (w == "it" and not expect_subject):
            if in_pp:  # a PP's object: an agreement distractor, never a subject
                in_pp = False
            elif conjoin:
                subject, conjoin = ("pl", "n", "h"), False
            elif expect_subject and subject is None:
                subject = _NP_INFO[w]
            last_np = _NP_INFO[w]
        elif w in _PREPOSITIONS:
            in_pp = True
        elif w in ("who", "that") and prev in _COMMON_NOUNS:  # a relative clause on the last noun
            outer.append(subject)
            subject, expect_subject = (last_np, False) if nxt in _VERB_FORMS else (None, True)
        elif w in _VERB_FORMS:
            out.append(subject is not None and _VERB_NUMBER.get(w) in (None, subject[0]))
            agent, subject = subject, (outer.pop() if outer else None)
            expect_subject = False
        elif w in _REFLEXIVES:
            out.append(prev in _VERB_FORMS and agent is not None and _reflexive_ok(w, agent))
        elif w in _BOUNDARIES or (w == "that" and prev in _SAY_FORMS):
            if w == "and" and subject is not None and expect_subject and not outer:
                conjoin = True  # "John and Mary like ..."
                continue
            if subject is not None or outer:
                out.append(False)  # a clause whose subject never got its verb
            subject, outer, expect_subject, in_pp, conjoin = None, [], True, False, False
    if complete:
        out.append(subject is None and not outer)
    return out


def grammar_errors(sentence: str, ended: bool = False) -> tuple[int, int]:
    """(checks, errors) of one sentence under the embedded grammar's rules: every word in the
    lexicon, a/an, determiner-noun, subject-verb (across PP and relative-clause distractors,
    with conjoined subjects, in questions), reflexive-antecedent agreement, and each clause's
    subject getting a verb. A sentence without final punctuation is cut off and is not
    penalised for what it has not said yet, unless the text `ended` there (then the missing
    punctuation is an error and the sentence is checked as complete)."""
    text = sentence.strip()
    words = re.findall(r"[a-z]+|,", text.lower())
    if not words:
        return 0, 0
    terminated = text[-1] in ".?!"
    results = _local_checks(words, terminated or ended) + ([terminated] if ended else [])
    if text.endswith("?") or words[0] in _AUX_NUMBER or words[0] in ("who", "what"):
        results += _question_checks([w for w in words if w != ","], terminated or ended)
        results += [text[-1] == "?"] if terminated else []
    else:
        results += _clause_checks(words, complete=terminated or ended)
    return len(results), results.count(False)


def grammaticality(text: str, ended: bool = False) -> float:
    """The fraction of the checks of :func:`grammar_errors` that the sentences of `text`
    pass (0 for a text with nothing to check); `ended`: the text ends there (a document's
    end), so its last sentence must be complete."""
    checks = errors = 0
    sentences = [x for x in re.split(r"(?<=[.?!])\s+", text) if x.strip()]
    for i, sentence in enumerate(sentences):
        c, e = grammar_errors(sentence, ended=ended and i == len(sentences) - 1)
        checks, errors = checks + c, errors + e
    return (checks - errors) / checks if checks else 0.0
