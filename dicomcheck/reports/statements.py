"""What a radiology report says about 3D rendering: ``read_statements(text) -> ReportStatements``.

Pure: text in, typed statements out, with no I/O. Every statement keeps the phrase it was read from,
the sentence around it and their character spans in the text. The phrases are data
(``dicomcheck/knowledge/report_phrases.toml``); the algorithm, per sentence (:mod:`.sentences`):

* **3D wording** — a 3D adjective ("3D", "3-D", "three-dimensional") qualifying a rendering noun at
  most ``gap`` words later ("3D volume-rendered images", "3D reconstructions were performed"), with
  no acquisition / printing word after the adjective ("3D T1 MPRAGE", "3D TOF", "3D printed");
  under a heading ("3D:", "3D IMPRESSION:") the adjective alone; or a standalone phrase ("rendered
  in 3D"). When the 3D words qualify reformat wording directly ("3D multiplanar reformations",
  "coronal 3D reformats", "3D MPR images") and name no 3D technique, the statement is
  ``reformat_called_3d``: reformats described as 3D (billing-rules R2).
* **Techniques** — MIP, MinIP, volume rendering, surface rendering / SSD, segmentation / volumetry
  (3D, R1/R4), and the reformats MPR, curved planar (R3) and thick / average slabs (R5), which are
  not 3D. Plane words chained to a reformat noun ("coronal and sagittal reformats") are an MPR
  unless a 3D word or 3D technique qualifies the noun directly ("coronal MIP reconstructions");
  "MPR and 3D images" is both (a conjunction separates list items). A reformat word that is the
  noun of a 3D phrase ("3D reformats") is absorbed into it, so no phrase is both reformat and 3D.
* **Place** — an independent workstation ("independent / separate / offline workstation",
  "3D lab", a named 3D product), the scanner console, the PACS viewer, or an unnamed "workstation"
  (recorded, states no place). Console, PACS and bare-workstation phrases and PACS-viewer products
  count only in a sentence about post-processing (its 3D / technique / reformat wording or a
  context cue, a 3D heading above it, or a 3D statement in the sentence before).
* **Indication** — a purpose cue ("for surgical planning", "to better evaluate") after a 3D claim
  (3D wording, a 3D technique or reformats called 3D; not negated or hypothetical) in the same
  clause, or opening the clause that states it; or a phrase that names the 3D itself ("Indication
  for 3D:"). The exam's clinical history is not one.
* **Finding** — a finding cue ("demonstrates", "shows", "is seen") in a sentence about the 3D
  images: with affirmed 3D wording, under a 3D heading, or opening with an anaphor ("They",
  "These images") right after a 3D sentence. A cue inside an indication ("to better demonstrate")
  is not a finding.
* **Assertion** (NegEx / ConText) — each 3D, technique, reformat and place statement is
  ``negated``, ``hypothetical`` or ``historical`` when a trigger of that kind stands before it
  within ``window_before`` words or after it within ``window_after`` words, in the same clause:
  no scope terminator ("but", "which", ";") between; before the phrase a preposition or a verb
  also ends the scope ("no fracture is seen on the 3D images" keeps the 3D images), except for
  places ("not on an independent workstation"); after it a verb of completion does ("3D images were
  obtained and can be reviewed"). Pseudo-triggers ("without contrast", "no change") are not
  triggers. After the phrase a negator or modal counts only with a verb of making ("were not
  performed", "could be obtained"), so "3D images do not show a fracture" stays affirmed. Under a
  history / indication / comparison / exam-title heading an affirmed statement is ``historical``.

Hostile text (any length, any Unicode) never raises; work is linear in the text (each phrase list
is one regular expression; sentences are at most ``max_chars`` long).
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, TypeVar

from ..enums import Origin, Technique
from .phrases import Compound, Match, PhraseMatcher, PhraseSet, PlacePhrase, Triggers, builtin_phrases
from .sentences import HEADING, Sentence, Token, split_sentences, tokens

P = TypeVar("P")

THREE_D_TECHNIQUES = frozenset(
    {Technique.MIP, Technique.MINIP, Technique.VOLUME_RENDER, Technique.SURFACE_RENDER, Technique.SEGMENTATION}
)
"""The techniques billing-rules R1 / R4 count as 3D rendering (MinIP subject to ``minip_is_3d``)."""
REFORMAT_TECHNIQUES = frozenset({Technique.MPR, Technique.CURVED_MPR, Technique.THICK_MPR})
"""Reformats: 2D, never 3D (R2, R3, R5; curved subject to ``curved_mpr_is_3d``)."""


class StatementKind(StrEnum):
    """What a statement says."""

    THREE_D = "three_d"
    """3D rendering is named ("3D reconstructions", "three-dimensional rendering")."""
    TECHNIQUE = "technique"
    """A 3D technique is named (MIP, MinIP, volume rendering, surface rendering, segmentation)."""
    REFORMAT = "reformat"
    """Reformat wording (MPR, curved planar, thick / average slab): not 3D."""
    REFORMAT_CALLED_3D = "reformat_called_3d"
    """Reformats described as 3D ("3D multiplanar reformations")."""
    PLACE = "place"
    """Where the 3D was made (``place``; ``unknown`` for an unqualified "workstation")."""
    INDICATION = "indication"
    """A reason for the 3D work."""
    FINDING = "finding"
    """What the 3D images show."""


class Assertion(StrEnum):
    """Whether a statement is made (ConText's values)."""

    AFFIRMED = "affirmed"
    NEGATED = "negated"
    """"No 3D reconstructions were performed", "without volume rendering"."""
    HYPOTHETICAL = "hypothetical"
    """Offered, recommended or conditional: "3D can be performed on request"."""
    HISTORICAL = "historical"
    """About a prior exam, the clinical history or the order, not this report's 3D work."""


@dataclass(frozen=True, slots=True)
class Statement:
    """One statement, with the words it was read from and the sentence around them."""

    kind: StatementKind
    assertion: Assertion
    phrase: str
    """The words as written in the report."""
    start: int
    end: int
    """Character span of ``phrase`` in the report text."""
    sentence: str
    sentence_start: int
    sentence_end: int
    technique: Technique | None = None
    place: Origin | None = None
    product: str | None = None
    """The 3D product named (its fingerprint name)."""
    trigger: str | None = None
    """The negation / hypothetical / historical words that set ``assertion``, as written."""

    @property
    def affirmed(self) -> bool:
        return self.assertion is Assertion.AFFIRMED

    def document(self) -> dict[str, object]:
        """JSON-ready: every field, enums as their values, ``None`` fields left out."""
        values: dict[str, object] = {
            "kind": self.kind.value,
            "assertion": self.assertion.value,
            "phrase": self.phrase,
            "span": [self.start, self.end],
            "sentence": self.sentence,
            "sentence_span": [self.sentence_start, self.sentence_end],
        }
        for name, value in (
            ("technique", self.technique),
            ("place", self.place),
            ("product", self.product),
            ("trigger", self.trigger),
        ):
            if value is not None:
                values[name] = str(value)
        return values


@dataclass(frozen=True, slots=True)
class ReportStatements:
    """Everything one report's text states about 3D work, in text order."""

    statements: tuple[Statement, ...]
    sentences: int
    """How many sentences the text was split into."""
    truncated: bool = False
    """The text was longer than ``max_chars``: only its start was read."""

    def affirmed(self, *kinds: StatementKind) -> tuple[Statement, ...]:
        return tuple(s for s in self.statements if s.kind in kinds and s.affirmed)

    @property
    def three_d_stated(self) -> bool:
        """3D is said in words ("3D reconstructions", "three-dimensional rendering"), affirmed."""
        return bool(self.affirmed(StatementKind.THREE_D))

    @property
    def techniques(self) -> frozenset[Technique]:
        """The 3D techniques affirmed (MinIP included: the verdict applies the site policy)."""
        return frozenset(s.technique for s in self.affirmed(StatementKind.TECHNIQUE) if s.technique)

    @property
    def reformats(self) -> frozenset[Technique]:
        """The reformat techniques affirmed, whether or not called 3D."""
        kinds = (StatementKind.REFORMAT, StatementKind.REFORMAT_CALLED_3D)
        return frozenset(s.technique for s in self.affirmed(*kinds) if s.technique)

    @property
    def states_3d(self) -> bool:
        """3D work is claimed in any words: 3D wording or a 3D technique is affirmed."""
        return self.three_d_stated or bool(self.techniques)

    @property
    def mpr_only(self) -> bool:
        """The only rendering wording affirmed is reformat wording (including reformats called 3D)."""
        return bool(self.reformats) and not self.states_3d

    @property
    def places(self) -> frozenset[Origin]:
        """The places affirmed (an unqualified "workstation" names none)."""
        return frozenset(
            s.place for s in self.affirmed(StatementKind.PLACE) if s.place and s.place is not Origin.UNKNOWN
        )

    @property
    def workstation_stated(self) -> bool:
        """An independent workstation, a 3D lab or a named independent 3D product is affirmed."""
        return Origin.INDEPENDENT_WORKSTATION in self.places

    @property
    def console_stated(self) -> bool:
        return Origin.SCANNER_CONSOLE in self.places

    @property
    def indication_stated(self) -> bool:
        return bool(self.affirmed(StatementKind.INDICATION))

    @property
    def findings_stated(self) -> bool:
        return bool(self.affirmed(StatementKind.FINDING))

    @property
    def negated_3d(self) -> tuple[Statement, ...]:
        """3D wording or techniques the report negates ("no 3D reconstructions were performed")."""
        kinds = (StatementKind.THREE_D, StatementKind.TECHNIQUE)
        return tuple(s for s in self.statements if s.kind in kinds and s.assertion is Assertion.NEGATED)

    def document(self) -> list[dict[str, object]]:
        return [statement.document() for statement in self.statements]


MAX_REPORT_CHARS = 100_000
"""How much of a report is read: about 40 pages of text (a long radiology report is 5-20 kB). The rest
of a longer text is not read (``ReportStatements.truncated``), which bounds the work a hostile 1 MB
report can cause to about a second."""


def read_statements(
    text: str, phrases: PhraseSet | None = None, *, max_chars: int = MAX_REPORT_CHARS
) -> ReportStatements:
    """The statements of a report's text (see the module docstring); only its first ``max_chars``
    characters are read. Never raises on any ``str``."""
    phrase_set = phrases or builtin_phrases()
    truncated = len(text) > max_chars
    text = text[:max_chars]
    sentences = split_sentences(text, phrase_set)
    reader = _Reader(text, phrase_set, sentences)
    found: list[Statement] = []
    for index, sentence in enumerate(sentences):
        found += reader.sentence(index, sentence)
    return ReportStatements(tuple(found), len(sentences), truncated)


# ---------------------------------------------------------------------------------------------- internals


@dataclass(frozen=True, slots=True)
class _Span:
    """A match placed on the sentence's tokens: tokens ``i`` to ``j`` inclusive."""

    i: int
    j: int
    start: int
    end: int
    payload: object = None


@dataclass(slots=True)
class _Candidate:
    kind: StatementKind
    span: _Span
    technique: Technique | None = None
    place: PlacePhrase | None = None
    assertion: Assertion = Assertion.AFFIRMED
    trigger: str | None = None


@dataclass(slots=True)
class _State:
    """What carries from one sentence to the next."""

    history_section: bool = False
    three_d_section: bool = False
    previous_3d: bool = False


class _Scopes:
    """Trigger spans of one kind in a sentence, in token order: before-phrase and after-phrase triggers."""

    __slots__ = ("after", "after_starts", "before", "before_ends", "comma_terminates")

    def __init__(self, before: list[_Span], after: list[_Span], comma_terminates: bool) -> None:
        self.before = sorted(before, key=lambda s: s.j)
        self.before_ends = [s.j for s in self.before]
        self.after = sorted(after, key=lambda s: s.i)
        self.after_starts = [s.i for s in self.after]
        self.comma_terminates = comma_terminates


class _View:
    """One sentence's tokens, with the span arithmetic the rules need."""

    def __init__(self, toks: list[Token]) -> None:
        self.tokens = toks
        self.starts = [t.start for t in toks]
        self.ends = [t.end for t in toks]
        self.words_upto = [0]
        for token in toks:
            self.words_upto.append(self.words_upto[-1] + token.is_word)

    def place(self, match: Match[P]) -> _Span | None:
        i = bisect_right(self.ends, match.start)
        j = bisect_left(self.starts, match.end) - 1
        return _Span(i, j, match.start, match.end, match.payload) if i <= j else None

    def words_between(self, a: int, b: int) -> int:
        """Word tokens strictly between token ``a`` and token ``b``."""
        return self.words_upto[b] - self.words_upto[a + 1] if b > a + 1 else 0

    def any_between(self, a: int, b: int, stop: frozenset[str]) -> bool:
        return any(self.tokens[k].norm in stop for k in range(a + 1, b))


def _starting(spans: list[_Span], first: int, last: int) -> list[_Span]:
    """The spans (in token order) whose first token is ``first`` to ``last``."""
    return spans[bisect_left(spans, first, key=lambda s: s.i) : bisect_right(spans, last, key=lambda s: s.i)]


def _inside(span: _Span, others: Iterable[_Span]) -> bool:
    return any(o.i <= span.i and span.j <= o.j and o is not span for o in others)


def _overlaps(span: _Span, others: Iterable[_Span]) -> bool:
    return any(o.i <= span.j and span.i <= o.j for o in others)


class _Reader:
    """Reads sentence after sentence, keeping the section and the previous sentence's 3D state."""

    def __init__(self, text: str, phrases: PhraseSet, sentences: Sequence[Sentence]) -> None:
        self.text = text
        self.phrases = phrases
        self.state = _State()
        self._sentence_starts = [s.start for s in sentences]
        self._sentence_ends = [s.end for s in sentences]
        self._matches: dict[str, dict[int, list[Match[object]]]] = {}
        self._find_all()

    # -- matching over the whole text once, then bucketed per sentence

    def _find_all(self) -> None:
        p = self.phrases
        lists: dict[str, PhraseMatcher[Any] | None] = {
            "d": p.three_d.modifiers,
            "dn": p.three_d.nouns,
            "db": p.three_d.blockers,
            "ds": p.three_d_standalone,
            "t": p.techniques,
            "pl": p.reformat_planes.modifiers,
            "pn": p.reformat_planes.nouns,
            "wm": p.workstation.modifiers,
            "wn": p.workstation.nouns,
            "wb": p.workstation.blockers,
            "place": p.places,
            "ctx": p.context,
            "ind": p.indication,
            "inds": p.indication_self_contained,
            "find": p.finding,
            "ana": p.anaphors,
            "pseudo": p.pseudo,
        }
        for name, triggers in (("neg", p.negation), ("hyp", p.hypothetical), ("hist", p.historical)):
            lists |= {
                f"{name}b": triggers.before,
                f"{name}a": triggers.after,
                f"{name}o": triggers.after_operators,
                f"{name}v": triggers.after_verbs,
            }
        for name, matcher in lists.items():
            buckets: dict[int, list[Match[object]]] = {}
            if matcher is not None:
                for match in matcher.find(self.text):
                    k = bisect_right(self._sentence_starts, match.start) - 1
                    if k >= 0 and match.end <= self._sentence_ends[k]:
                        buckets.setdefault(k, []).append(match)
            self._matches[name] = buckets

    def _spans(self, view: _View, name: str, index: int) -> list[_Span]:
        placed = (view.place(m) for m in self._matches[name].get(index, ()))
        return [span for span in placed if span is not None]

    # -- one sentence

    def sentence(self, index: int, sentence: Sentence) -> list[Statement]:
        text = self.text
        view = _View(tokens(text, sentence.start, sentence.end))
        if not view.tokens:
            return []
        spans = {name: self._spans(view, name, index) for name in self._matches}
        heading_words = self._heading(view, sentence)
        candidates = self._places(view, spans)
        place_spans = [c.span for c in candidates]
        three_d_techniques = [s for s in spans["t"] if s.payload in THREE_D_TECHNIQUES]
        adjectives = [d for d in spans["d"] if not _overlaps(d, [*place_spans, *spans["inds"]])]
        rendering, absorbed = self._three_d(view, spans, adjectives, three_d_techniques, heading_words)
        candidates += rendering
        called = [c.span for c in rendering if c.kind is StatementKind.REFORMAT_CALLED_3D]
        candidates += self._reformats(view, spans, adjectives, three_d_techniques, [*absorbed, *called])
        candidates += [_Candidate(StatementKind.TECHNIQUE, s, technique=_technique(s)) for s in three_d_techniques]
        candidates = self._in_context(candidates, spans)
        self._assert(view, spans, candidates)
        anchors = [c for c in candidates if c.kind in _CLAIMS_3D]
        affirmed_3d = any(c.assertion is Assertion.AFFIRMED for c in anchors)
        candidates += self._indications(view, spans, anchors, heading_words)
        finding = self._finding(spans, anchors, affirmed_3d, heading_words == len(view.tokens))
        if finding:
            candidates.append(finding)
        if heading_words:
            self.state.three_d_section = any(
                c.assertion is Assertion.AFFIRMED and c.span.i < heading_words for c in anchors
            )
        self.state.previous_3d = affirmed_3d or finding is not None
        sentence_text = text[sentence.start : sentence.end]
        candidates.sort(key=lambda c: (c.span.start, c.span.end))
        return [self._statement(c, sentence, sentence_text) for c in candidates]

    def _heading(self, view: _View, sentence: Sentence) -> int:
        """Words of the sentence's heading (0: none); a heading opens a section, a paragraph ends one."""
        heading = HEADING.match(self.text, sentence.start, sentence.end)
        if heading is None:
            if sentence.paragraph_start:
                self.state = _State()
            return 0
        count = bisect_left(view.starts, heading.end(1))
        name = " ".join(t.norm for t in view.tokens[:count] if t.is_word)
        self.state.history_section = any(name == h or name.startswith(h + " ") for h in self.phrases.history_headings)
        self.state.three_d_section = False
        return count

    def _three_d(
        self,
        view: _View,
        spans: dict[str, list[_Span]],
        adjectives: list[_Span],
        three_d_techniques: list[_Span],
        heading_words: int,
    ) -> tuple[list[_Candidate], list[_Span]]:
        """3D wording, and the reformat matches it absorbs."""
        found: list[_Candidate] = []
        absorbed: list[_Span] = []
        reformats = [s for s in spans["t"] if s.payload in REFORMAT_TECHNIQUES]
        planes = spans["pl"]
        conjunctions = self.phrases.conjunctions
        for d in adjectives:
            blocked = bool(_starting(spans["db"], d.j + 1, d.j + 1))
            noun = None if blocked else self._noun(view, d, spans["dn"], spans["db"], self.phrases.three_d)
            if noun is None:
                if d.j < heading_words and not blocked:
                    found.append(_Candidate(StatementKind.THREE_D, d))
                continue
            whole = _Span(d.i, noun.j, d.start, noun.end)
            named_3d = bool(_starting(three_d_techniques, d.i, noun.j))
            specific = [
                r
                for r in [*_starting(reformats, d.j + 1, noun.j), *_starting(planes, d.j + 1, noun.j)]
                if not (r.i == noun.i and r.j == noun.j) and not view.any_between(d.j, r.i, conjunctions)
            ]
            leading = [
                r
                for r in [*_starting(reformats, d.i - 8, d.i - 1), *_starting(planes, d.i - 8, d.i - 1)]
                if r.j == d.i - 1
            ]
            absorbed += [
                r
                for r in _starting(reformats, d.i, noun.j)
                if r.j <= noun.j and not view.any_between(d.j, r.i, conjunctions)
            ]
            if (specific or leading) and not named_3d:
                first = min([*leading, d], key=lambda s: s.i)
                called = _Span(first.i, noun.j, first.start, noun.end)
                absorbed += leading
                technique = next((_technique(r) for r in [*specific, *leading] if r in reformats), Technique.MPR)
                found.append(_Candidate(StatementKind.REFORMAT_CALLED_3D, called, technique=technique))
            else:
                found.append(_Candidate(StatementKind.THREE_D, whole))
        found += [_Candidate(StatementKind.THREE_D, s) for s in spans["ds"]]
        return found, absorbed

    def _noun(
        self, view: _View, modifier: _Span, nouns: list[_Span], blockers: list[_Span], c: Compound
    ) -> _Span | None:
        """The first noun the modifier qualifies: within ``gap`` words, no blocker or terminator between."""
        stop = self.phrases.terminators
        following = _starting(nouns, modifier.j + 1, modifier.j + 1 + 2 * c.gap + 2)
        if not following:
            return None
        noun = following[0]
        if view.words_between(modifier.j, noun.i) > c.gap:
            return None
        if _starting(blockers, modifier.j + 1, noun.i) or view.any_between(modifier.j, noun.i, stop):
            return None
        return noun

    def _reformats(
        self,
        view: _View,
        spans: dict[str, list[_Span]],
        adjectives: list[_Span],
        three_d_techniques: list[_Span],
        absorbed: list[_Span],
    ) -> list[_Candidate]:
        conjunctions = self.phrases.conjunctions
        planes = spans["pl"]
        found: list[_Candidate] = []
        compounds: list[_Span] = []
        for noun in spans["pn"]:
            gap = self.phrases.reformat_planes.gap
            before = [p for p in planes if p.j < noun.i and view.words_between(p.j, noun.i) <= gap]
            if not before or view.any_between(before[-1].j, noun.i, self.phrases.terminators):
                continue
            last = before[-1]
            qualifying = [x for x in [*adjectives, *three_d_techniques] if last.j < x.i <= noun.j]
            if any(not view.any_between(last.j, x.i, conjunctions) for x in qualifying):
                continue  # "coronal MIP reconstructions": a MIP, not a reformat
            first = last
            for plane in reversed(before[:-1]):
                between = view.tokens[plane.j + 1 : first.i]
                if len(between) > 3 or any(t.norm not in conjunctions for t in between):
                    break
                first = plane
            compound = _Span(first.i, noun.j, first.start, noun.end)
            compounds.append(compound)
            if not any(a.i <= compound.i and compound.j <= a.j for a in absorbed):
                found.append(_Candidate(StatementKind.REFORMAT, compound, technique=Technique.MPR))
        for r in spans["t"]:
            if r.payload not in REFORMAT_TECHNIQUES or any(a.i <= r.i and r.j <= a.j for a in [*absorbed, *compounds]):
                continue
            if any(t.j < r.i and view.words_between(t.j, r.i) == 0 for t in three_d_techniques) and r.i == r.j:
                continue  # "MIP reformats", "volume-rendered reformations": the 3D technique's images
            found.append(_Candidate(StatementKind.REFORMAT, r, technique=_technique(r)))
        return found

    def _places(self, view: _View, spans: dict[str, list[_Span]]) -> list[_Candidate]:
        workstation = self.phrases.workstation
        compounds = []
        for modifier in spans["wm"]:
            noun = self._noun(view, modifier, spans["wn"], spans["wb"], workstation)
            if noun is not None:
                compounds.append(
                    _Span(
                        modifier.i,
                        noun.j,
                        modifier.start,
                        noun.end,
                        PlacePhrase(Origin.INDEPENDENT_WORKSTATION, context=False),
                    )
                )
        every = [*spans["place"], *compounds]
        kept = [
            s
            for s in every
            if not (_inside(s, every) and isinstance(s.payload, PlacePhrase) and s.payload.product is None)
        ]
        named = [s for s in kept if isinstance(s.payload, PlacePhrase) and s.payload.place is not Origin.UNKNOWN]
        if named:
            kept = [s for s in kept if isinstance(s.payload, PlacePhrase) and s.payload.place is not Origin.UNKNOWN]
        merged: list[_Span] = []
        for span in sorted(kept, key=lambda s: s.i):
            last = merged[-1] if merged else None
            if last is not None and last.j + 1 == span.i and last.payload == span.payload:
                merged[-1] = _Span(last.i, span.j, last.start, span.end, last.payload)  # "on the scanner" + "console"
            else:
                merged.append(span)
        return [_Candidate(StatementKind.PLACE, s, place=_place(s)) for s in merged]

    def _in_context(self, candidates: list[_Candidate], spans: dict[str, list[_Span]]) -> list[_Candidate]:
        """Drop console / PACS / bare-workstation places in a sentence that is not about post-processing."""
        about_processing = (
            any(c.kind is not StatementKind.PLACE for c in candidates)
            or bool(spans["ctx"])
            or self.state.three_d_section
            or self.state.previous_3d
        )
        return [c for c in candidates if about_processing or not (c.place and c.place.context)]

    # -- assertion

    def _assert(self, view: _View, spans: dict[str, list[_Span]], candidates: list[_Candidate]) -> None:
        pseudo = spans["pseudo"]
        scopes = [
            (Assertion.NEGATED, self._scopes(view, spans, "neg", self.phrases.negation, pseudo)),
            (Assertion.HYPOTHETICAL, self._scopes(view, spans, "hyp", self.phrases.hypothetical, pseudo)),
            (Assertion.HISTORICAL, self._scopes(view, spans, "hist", self.phrases.historical, pseudo)),
        ]
        for candidate in candidates:
            for assertion, scope in scopes:
                trigger = self._in_scope(view, candidate, scope)
                if trigger is not None:
                    candidate.assertion = assertion
                    candidate.trigger = self.text[trigger.start : trigger.end]
                    break
            else:
                if self.state.history_section:
                    candidate.assertion = Assertion.HISTORICAL
                    candidate.trigger = None

    def _scopes(
        self, view: _View, spans: dict[str, list[_Span]], name: str, triggers: Triggers, pseudo: list[_Span]
    ) -> _Scopes:
        before = [s for s in spans[f"{name}b"] if not _overlaps(s, pseudo)]
        after = [s for s in spans[f"{name}a"] if not _overlaps(s, pseudo)]
        for operator in spans[f"{name}o"]:
            if _overlaps(operator, pseudo):
                continue
            verb = next(
                (
                    v
                    for v in spans[f"{name}v"]
                    if v.i > operator.j and view.words_between(operator.j, v.i) <= triggers.after_gap
                ),
                None,
            )
            if verb is not None:
                after.append(_Span(operator.i, verb.j, operator.start, verb.end))
        return _Scopes(before, after, triggers.comma_terminates)

    def _in_scope(self, view: _View, candidate: _Candidate, scope: _Scopes) -> _Span | None:
        """The nearest trigger whose scope reaches the candidate (walking out from it, so the work per
        candidate is bounded by the window, not by the sentence)."""
        p = self.phrases
        span = candidate.span
        comma = frozenset({","}) if scope.comma_terminates else frozenset()
        stop_before = p.terminators | comma | (frozenset() if candidate.place else p.before_terminators)
        for k in range(bisect_left(scope.before_ends, span.i) - 1, -1, -1):
            trigger = scope.before[k]
            if view.words_between(trigger.j, span.i) > p.window_before:
                break
            if not view.any_between(trigger.j, span.i, stop_before):
                return trigger
        stop_after = p.terminators | comma | p.after_terminators
        for k in range(bisect_right(scope.after_starts, span.i), len(scope.after)):
            trigger = scope.after[k]
            if trigger.i <= span.j:
                return trigger
            if view.words_between(span.j, trigger.i) > p.window_after:
                break
            if not view.any_between(span.j, trigger.i, stop_after):
                return trigger
        return None

    # -- indication and findings

    def _indications(
        self, view: _View, spans: dict[str, list[_Span]], anchors: list[_Candidate], heading_words: int
    ) -> list[_Candidate]:
        found = []
        stop = self.phrases.terminators
        lead = heading_words
        while lead < len(view.tokens) and (
            not view.tokens[lead].is_word or (view.tokens[lead].norm.isdigit() and len(view.tokens[lead].norm) <= 2)
        ):
            lead += 1
        usable = [a.span for a in anchors if a.assertion in (Assertion.AFFIRMED, Assertion.HISTORICAL)]
        for cue in spans["ind"]:
            after_statement = any(a.i < cue.i and not view.any_between(a.j, cue.i, stop) for a in usable)
            opening = cue.i <= lead and any(cue.j < a.i and not view.any_between(cue.j, a.i, stop) for a in usable)
            if after_statement or opening:
                found.append(_Candidate(StatementKind.INDICATION, cue))
        for cue in spans["inds"]:
            candidate = _Candidate(StatementKind.INDICATION, cue)
            self._assert(view, spans, [candidate])
            if candidate.assertion is not Assertion.NEGATED:
                candidate.assertion, candidate.trigger = Assertion.AFFIRMED, None
                found.append(candidate)
        return found

    def _finding(
        self, spans: dict[str, list[_Span]], anchors: list[_Candidate], affirmed_3d: bool, heading_only: bool
    ) -> _Candidate | None:
        cues = [f for f in spans["find"] if not _overlaps(f, [*spans["ind"], *spans["inds"]])]
        if not cues or heading_only:
            return None
        denied = any(a.assertion is not Assertion.AFFIRMED for a in anchors)
        about_3d = affirmed_3d or (
            not denied and (self.state.three_d_section or (bool(spans["ana"]) and self.state.previous_3d))
        )
        return _Candidate(StatementKind.FINDING, cues[0]) if about_3d else None

    def _statement(self, candidate: _Candidate, sentence: Sentence, sentence_text: str) -> Statement:
        span = candidate.span
        place = candidate.place
        return Statement(
            kind=candidate.kind,
            assertion=candidate.assertion,
            phrase=self.text[span.start : span.end],
            start=span.start,
            end=span.end,
            sentence=sentence_text,
            sentence_start=sentence.start,
            sentence_end=sentence.end,
            technique=candidate.technique,
            place=place.place if place else None,
            product=place.product if place else None,
            trigger=candidate.trigger,
        )


_CLAIMS_3D = (StatementKind.THREE_D, StatementKind.TECHNIQUE, StatementKind.REFORMAT_CALLED_3D)
"""The statements an indication, a finding or a 3D heading hang on: any claim of 3D work (reformats called 3D
too: under the site policy curved_mpr_is_3d they are 3D; otherwise the verdict flags them anyway)."""


def _technique(span: _Span) -> Technique:
    assert isinstance(span.payload, Technique)
    return span.payload


def _place(span: _Span) -> PlacePhrase:
    assert isinstance(span.payload, PlacePhrase)
    return span.payload


__all__ = [
    "MAX_REPORT_CHARS",
    "REFORMAT_TECHNIQUES",
    "THREE_D_TECHNIQUES",
    "Assertion",
    "ReportStatements",
    "Statement",
    "StatementKind",
    "read_statements",
]
