"""The report phrase set (``dicomcheck/knowledge/report_phrases.toml``): loaded, validated and compiled.

The TOML file is the single source of every phrase; this module only checks it (an unknown key, a
missing ``source``, an empty or repeated list entry, a malformed phrase, a technique / place / product
the product does not know: :class:`PhraseSetError` naming the file and the key) and compiles each list
into one case-insensitive regular expression. The phrase syntax is described at the top of the file.
Nothing here reads a report.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Generic, TypeVar

from ..enums import Origin, Role, Technique
from ..knowledge import Product, builtin_knowledge

FILE_NAME = "report_phrases.toml"

P = TypeVar("P")

_SEPARATOR = r"[\s\-\u2010-\u2015/]*"
"""What may stand between two words of a phrase (or a digit and a letter of one word): spaces, line
breaks, hyphens and dashes, slashes, or nothing."""
_PHRASE = re.compile(r"[0-9a-z][0-9a-z.'&]*\*?(?: [0-9a-z.'&]+\*?)*", re.IGNORECASE)
_WORD = re.compile(r"[0-9a-z.'&]+|[;,/&]", re.IGNORECASE)


class PhraseSetError(ValueError):
    """The phrase set is malformed; the message names the file and the key."""


@dataclass(frozen=True, slots=True)
class Match(Generic[P]):
    """One phrase found in a text: its character span and what the phrase stands for."""

    start: int
    end: int
    payload: P


class PhraseMatcher(Generic[P]):
    """A list of phrases compiled into one regular expression; each phrase carries a payload.

    The phrases are merged into a trie before they become a pattern (``rec(?:onstruct\\w*|on)``), so the
    regular-expression engine tries one branch per distinct next character instead of every phrase at
    every word start: matching stays fast on a megabyte of text.
    """

    __slots__ = ("_payloads", "_regex", "phrases")

    def __init__(self, entries: Iterable[tuple[str, P]]) -> None:
        listed = list(entries)
        self.phrases = tuple(phrase for phrase, _ in listed)
        self._payloads = tuple(payload for _, payload in listed)
        trie: _Trie = {}
        for index, phrase in enumerate(self.phrases):
            node = trie
            for symbol in _symbols(phrase):
                child = node.setdefault(symbol, {})
                assert isinstance(child, dict)
                node = child
            node[_END] = index
        self._regex = re.compile(rf"\b{_pattern(trie)}(?!\w)", re.IGNORECASE)

    def find(self, text: str) -> list[Match[P]]:
        """Every non-overlapping occurrence, leftmost first (the longest phrase wins at one position)."""
        found = []
        for hit in self._regex.finditer(text):
            group = hit.lastgroup
            assert group is not None  # every phrase ends in its own (empty) named group
            found.append(Match(hit.start(), hit.end(), self._payloads[int(group[1:])]))
        return found


_Trie = dict[str, "_Trie | int"]
_END, _GAP, _STEM, _APOSTROPHE = "", " ", "*", "'"
_SYMBOL_PATTERNS = {_GAP: _SEPARATOR, _STEM: r"\w*", _APOSTROPHE: "['’]?"}


def _symbols(phrase: str) -> list[str]:
    """A phrase as trie symbols: lower-case characters, _GAP between words (and between a digit and a
    letter), _STEM for a trailing ``*``, _APOSTROPHE for ``'``."""
    symbols: list[str] = []
    for number, word in enumerate(phrase.lower().split(" ")):
        if number:
            symbols.append(_GAP)
        for piece_number, piece in enumerate(re.findall(r"\d+|\D+", word.rstrip("*"))):
            if piece_number:
                symbols.append(_GAP)
            symbols += [_APOSTROPHE if char == "'" else char for char in piece]
        if word.endswith("*"):
            symbols.append(_STEM)
    return symbols


def _pattern(node: _Trie) -> str:
    """The trie as a pattern: longer continuations before the end of a shorter phrase (longest wins)."""
    branches = []
    for symbol in sorted((s for s in node if s != _END), key=lambda s: (s in _SYMBOL_PATTERNS, s)):
        child = node[symbol]
        assert isinstance(child, dict)
        branches.append(_SYMBOL_PATTERNS.get(symbol, re.escape(symbol)) + _pattern(child))
    if _END in node:
        branches.append(f"(?P<p{node[_END]}>)")
    return branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"


def words(values: Iterable[str]) -> PhraseMatcher[None]:
    return PhraseMatcher((value, None) for value in values)


@dataclass(frozen=True, slots=True)
class Compound:
    """A modifier that qualifies a noun at most ``gap`` words later, with no blocker between them."""

    modifiers: PhraseMatcher[None]
    nouns: PhraseMatcher[None]
    gap: int
    blockers: PhraseMatcher[None] | None


@dataclass(frozen=True, slots=True)
class Triggers:
    """ConText-style triggers of one kind (negation, hypothetical, historical)."""

    before: PhraseMatcher[None]
    after: PhraseMatcher[None]
    after_operators: PhraseMatcher[None] | None
    after_verbs: PhraseMatcher[None] | None
    after_gap: int
    comma_terminates: bool


@dataclass(frozen=True, slots=True)
class PlacePhrase:
    """What a place phrase states: the place (``UNKNOWN``: none), whether it needs a post-processing
    sentence to count, and the product it names."""

    place: Origin
    context: bool
    product: str | None = None


@dataclass(frozen=True, slots=True)
class PhraseSet:
    abbreviations: frozenset[str]
    continuation_words: frozenset[str]
    max_chars: int
    wrap_width: int
    history_headings: frozenset[str]
    three_d: Compound
    three_d_standalone: PhraseMatcher[None]
    techniques: PhraseMatcher[Technique]
    reformat_planes: Compound
    workstation: Compound
    places: PhraseMatcher[PlacePhrase]
    context: PhraseMatcher[None]
    indication: PhraseMatcher[None]
    indication_self_contained: PhraseMatcher[None]
    finding: PhraseMatcher[None]
    anaphors: PhraseMatcher[None]
    negation: Triggers
    hypothetical: Triggers
    historical: Triggers
    pseudo: PhraseMatcher[None]
    window_before: int
    window_after: int
    terminators: frozenset[str]
    before_terminators: frozenset[str]
    after_terminators: frozenset[str]
    conjunctions: frozenset[str]


# ------------------------------------------------------------------------------------------- validation

_TEXT, _PHRASES, _WORDS, _COUNT, _FLAG = "text", "phrases", "words", "count", "flag"

_TRIGGER_KEYS = {"source": _TEXT, "before": _PHRASES, "after": _PHRASES}
_TRIGGER_OPTIONAL = {
    "after_operators": _PHRASES,
    "after_verbs": _PHRASES,
    "after_gap": _COUNT,
    "comma_terminates": _FLAG,
}
_TABLES: dict[str, tuple[dict[str, str], dict[str, str]]] = {
    "sentences": (
        {
            "source": _TEXT,
            "abbreviations": _WORDS,
            "continuation_words": _WORDS,
            "max_chars": _COUNT,
            "wrap_width": _COUNT,
        },
        {},
    ),
    "sections": ({"source": _TEXT, "history": _PHRASES}, {}),
    "three_d": (
        {
            "source": _TEXT,
            "adjectives": _PHRASES,
            "nouns": _PHRASES,
            "gap": _COUNT,
            "blockers": _PHRASES,
            "standalone": _PHRASES,
        },
        {},
    ),
    "reformat_planes": ({"source": _TEXT, "planes": _PHRASES, "nouns": _PHRASES, "gap": _COUNT}, {}),
    "workstation": (
        {"source": _TEXT, "modifiers": _PHRASES, "nouns": _PHRASES, "gap": _COUNT, "blockers": _PHRASES},
        {},
    ),
    "context": ({"source": _TEXT, "cues": _PHRASES}, {}),
    "indication": ({"source": _TEXT, "cues": _PHRASES, "self_contained": _PHRASES}, {}),
    "finding": ({"source": _TEXT, "cues": _PHRASES, "anaphors": _PHRASES}, {}),
    "negation": (
        {**_TRIGGER_KEYS, "pseudo": _PHRASES, "window_before": _COUNT, "window_after": _COUNT},
        _TRIGGER_OPTIONAL,
    ),
    "hypothetical": (_TRIGGER_KEYS, _TRIGGER_OPTIONAL),
    "historical": (_TRIGGER_KEYS, _TRIGGER_OPTIONAL),
    "scope": (
        {
            "source": _TEXT,
            "terminators": _WORDS,
            "before_terminators": _WORDS,
            "after_terminators": _WORDS,
            "conjunctions": _WORDS,
        },
        {},
    ),
}
_ARRAYS: dict[str, dict[str, str]] = {
    "technique": {"technique": _TEXT, "source": _TEXT, "phrases": _PHRASES},
    "place": {"place": _TEXT, "context": _FLAG, "source": _TEXT, "phrases": _PHRASES},
    "product": {"fingerprint": _TEXT, "phrases": _PHRASES},
}
_REPORT_TECHNIQUES = frozenset(Technique) - {Technique.NOT_3D}
_PRODUCT_PLACES = {
    Role.INDEPENDENT_WORKSTATION: (Origin.INDEPENDENT_WORKSTATION, False),
    Role.PACS_VIEWER: (Origin.PACS_VIEWER, True),
    Role.SCANNER_CONSOLE: (Origin.SCANNER_CONSOLE, True),
    Role.CONSOLE_OR_WORKSTATION: (Origin.UNKNOWN, True),
}
"""A product named in a report states the place its fingerprint role gives (a product with no role, a
general-purpose viewer, states none); only an independent 3D product counts without a post-processing
sentence around it."""


class _Reader:
    """Reads one TOML document against the schema above, raising with the file and key."""

    def __init__(self, name: str) -> None:
        self.name = name

    def fail(self, where: str, problem: str) -> PhraseSetError:
        return PhraseSetError(f"{self.name}: {where}: {problem}")

    def table(
        self, raw: object, where: str, required: Mapping[str, str], optional: Mapping[str, str]
    ) -> dict[str, object]:
        if not isinstance(raw, dict):
            raise self.fail(where, "must be a table")
        unknown = sorted(set(raw) - set(required) - set(optional))
        if unknown:
            raise self.fail(where, f"unknown key {unknown[0]!r}")
        missing = sorted(set(required) - set(raw))
        if missing:
            raise self.fail(where, f"missing key {missing[0]!r}")
        kinds = {**required, **optional}
        return {key: self.value(raw[key], f"{where} {key}", kinds[key]) for key in raw}

    def value(self, raw: object, where: str, kind: str) -> object:
        if kind == _TEXT:
            if not isinstance(raw, str) or not raw.strip():
                raise self.fail(where, "must be a non-empty string")
            return raw
        if kind == _COUNT:
            if not isinstance(raw, int) or isinstance(raw, bool) or raw < 1:
                raise self.fail(where, "must be a positive integer")
            return raw
        if kind == _FLAG:
            if not isinstance(raw, bool):
                raise self.fail(where, "must be true or false")
            return raw
        return self.strings(raw, where, _PHRASE if kind == _PHRASES else _WORD)

    def strings(self, raw: object, where: str, shape: re.Pattern[str]) -> tuple[str, ...]:
        if not isinstance(raw, list) or not raw:
            raise self.fail(where, "must be a non-empty list")
        seen: set[str] = set()
        for item in raw:
            if not isinstance(item, str) or not shape.fullmatch(item):
                raise self.fail(where, f"malformed entry {item!r}")
            if item.lower() in seen:
                raise self.fail(where, f"repeats {item!r}")
            seen.add(item.lower())
        return tuple(raw)


def _compound(section: Mapping[str, object], modifiers: str, blockers: str | None) -> Compound:
    return Compound(
        modifiers=words(_tuple(section[modifiers])),
        nouns=words(_tuple(section["nouns"])),
        gap=_int(section["gap"]),
        blockers=words(_tuple(section[blockers])) if blockers else None,
    )


def _triggers(reader: _Reader, section: Mapping[str, object], where: str) -> Triggers:
    compound = [key for key in ("after_operators", "after_verbs", "after_gap") if key in section]
    if compound and len(compound) != 3:
        raise reader.fail(where, "after_operators, after_verbs and after_gap go together")
    return Triggers(
        before=words(_tuple(section["before"])),
        after=words(_tuple(section["after"])),
        after_operators=words(_tuple(section["after_operators"])) if compound else None,
        after_verbs=words(_tuple(section["after_verbs"])) if compound else None,
        after_gap=_int(section["after_gap"]) if compound else 0,
        comma_terminates=bool(section.get("comma_terminates", False)),
    )


def _tuple(value: object) -> tuple[str, ...]:
    assert isinstance(value, tuple)
    return value


def _int(value: object) -> int:
    assert isinstance(value, int)
    return value


def _lowered(values: object) -> frozenset[str]:
    return frozenset(value.lower().replace("’", "'") for value in _tuple(values))


def _places(reader: _Reader, data: Mapping[str, object], products: Sequence[Product]) -> PhraseMatcher[PlacePhrase]:
    entries: list[tuple[str, PlacePhrase]] = []
    seen_places: set[Origin] = set()
    for index, row in enumerate(_rows(reader, data, "place"), start=1):
        where = f"[[place]] #{index}"
        try:
            place = Origin(str(row["place"]))
        except ValueError:
            raise reader.fail(f"{where} place", f"{row['place']!r} is not an origin") from None
        if place in seen_places:
            raise reader.fail(f"{where} place", f"{place.value!r} repeats")
        seen_places.add(place)
        entries += [(phrase, PlacePhrase(place, bool(row["context"]))) for phrase in _tuple(row["phrases"])]
    by_id = {product.id: product for product in products}
    for index, row in enumerate(_rows(reader, data, "product"), start=1):
        where = f"[[product]] #{index} fingerprint"
        product = by_id.get(str(row["fingerprint"]))
        if product is None:
            raise reader.fail(where, f"{row['fingerprint']!r} is not a product of fingerprints.toml")
        if product.role is None:
            place, context = Origin.UNKNOWN, True  # a general-purpose viewer: its role is the site's to give
        elif product.role in _PRODUCT_PLACES:
            place, context = _PRODUCT_PLACES[product.role]
        else:
            raise reader.fail(where, f"{product.id!r} has role {product.role.value!r}: it never makes 3D images")
        entries += [(phrase, PlacePhrase(place, context, product.name)) for phrase in _tuple(row["phrases"])]
    _no_repeats(reader, "[[place]] / [[product]] phrases", (phrase for phrase, _ in entries))
    return PhraseMatcher(entries)


def _techniques(reader: _Reader, data: Mapping[str, object]) -> PhraseMatcher[Technique]:
    entries: list[tuple[str, Technique]] = []
    seen: set[Technique] = set()
    for index, row in enumerate(_rows(reader, data, "technique"), start=1):
        where = f"[[technique]] #{index} technique"
        try:
            technique = Technique(str(row["technique"]))
        except ValueError:
            raise reader.fail(where, f"{row['technique']!r} is not a technique") from None
        if technique not in _REPORT_TECHNIQUES or technique in seen:
            raise reader.fail(where, f"{technique.value!r} cannot be used here or repeats")
        seen.add(technique)
        entries += [(phrase, technique) for phrase in _tuple(row["phrases"])]
    _no_repeats(reader, "[[technique]] phrases", (phrase for phrase, _ in entries))
    return PhraseMatcher(entries)


def _rows(reader: _Reader, data: Mapping[str, object], key: str) -> list[dict[str, object]]:
    raw = data.get(key)
    if not isinstance(raw, list) or not raw:
        raise reader.fail(f"[[{key}]]", "at least one entry is needed")
    return [reader.table(row, f"[[{key}]] #{index}", _ARRAYS[key], {}) for index, row in enumerate(raw, start=1)]


def _no_repeats(reader: _Reader, where: str, phrases: Iterable[str]) -> None:
    seen: set[str] = set()
    for phrase in phrases:
        if phrase.lower() in seen:
            raise reader.fail(where, f"{phrase!r} appears twice")
        seen.add(phrase.lower())


def parse_phrases(data: Mapping[str, object], name: str, products: Sequence[Product]) -> PhraseSet:
    """Validate and compile a phrase-set document (``name`` is the file name errors cite)."""
    reader = _Reader(name)
    unknown = sorted(set(data) - set(_TABLES) - set(_ARRAYS))
    if unknown:
        raise reader.fail(f"[{unknown[0]}]", "unknown section")
    tables = {}
    for key, (required, optional) in _TABLES.items():
        if key not in data:
            raise reader.fail(f"[{key}]", "missing section")
        tables[key] = reader.table(data[key], f"[{key}]", required, optional)
    sentences, three_d, negation, scope = tables["sentences"], tables["three_d"], tables["negation"], tables["scope"]
    return PhraseSet(
        abbreviations=_lowered(sentences["abbreviations"]),
        continuation_words=_lowered(sentences["continuation_words"]),
        max_chars=_int(sentences["max_chars"]),
        wrap_width=_int(sentences["wrap_width"]),
        history_headings=_lowered(tables["sections"]["history"]),
        three_d=_compound(three_d, "adjectives", "blockers"),
        three_d_standalone=words(_tuple(three_d["standalone"])),
        techniques=_techniques(reader, data),
        reformat_planes=_compound(tables["reformat_planes"], "planes", None),
        workstation=_compound(tables["workstation"], "modifiers", "blockers"),
        places=_places(reader, data, products),
        context=words(_tuple(tables["context"]["cues"])),
        indication=words(_tuple(tables["indication"]["cues"])),
        indication_self_contained=words(_tuple(tables["indication"]["self_contained"])),
        finding=words(_tuple(tables["finding"]["cues"])),
        anaphors=words(_tuple(tables["finding"]["anaphors"])),
        negation=_triggers(reader, negation, "[negation]"),
        hypothetical=_triggers(reader, tables["hypothetical"], "[hypothetical]"),
        historical=_triggers(reader, tables["historical"], "[historical]"),
        pseudo=words(_tuple(negation["pseudo"])),
        window_before=_int(negation["window_before"]),
        window_after=_int(negation["window_after"]),
        terminators=_lowered(scope["terminators"]),
        before_terminators=_lowered(scope["before_terminators"]),
        after_terminators=_lowered(scope["after_terminators"]),
        conjunctions=_lowered(scope["conjunctions"]),
    )


def load_phrases(text: str, name: str = FILE_NAME) -> PhraseSet:
    """Parse a phrase-set TOML text (``name`` is cited by errors); products come from the built-in fingerprints."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PhraseSetError(f"{name}: not TOML: {exc}") from exc
    return parse_phrases(data, name, builtin_knowledge().products)


@lru_cache(maxsize=1)
def builtin_phrases() -> PhraseSet:
    """The phrase set shipped with this version (parsed once per process)."""
    text = resources.files("dicomcheck.knowledge").joinpath(FILE_NAME).read_text(encoding="utf-8")
    return load_phrases(text, f"dicomcheck/knowledge/{FILE_NAME}")
