"""Sessions: the add-on code once per session, and 3D tied to the day of its study (issue 13).

dicomcheck decides per study; billing counts per *session*: the studies of one patient (Patient ID + Issuer
of Patient ID where given) on one Study Date. 76376 / 76377 are reported with the primary procedure of the
same day, once per session when the regions rendered are contiguous (C-, T- and L-spine rendered together
are one unit) and possibly once per region when they are not (billing-rules.md R15, Medlearn 2017).

This module is the pure core: typed inputs, typed outputs, no I/O beyond reading the packaged region table
(``knowledge/regions.toml``), no SQL, no network. The store recomputes a session's verdict whenever one of
its studies is decided; the API, exports and packs show :class:`SessionRecord`.

- :func:`find_regions` / :func:`study_regions`: a study's anatomical regions from Body Part Examined, else
  from anatomy words in its descriptions, else none (unknown).
- :func:`session_key`: the grouping key; no patient id or no valid date: no session (the study is alone).
- :func:`session_verdict`: ``single`` / ``one_unit`` / ``separate_units_possible`` / ``unknown_regions``
  (and ``no_unit`` when no study of the session supports a code), with the study that carries the unit.
- :func:`made_later`: the 3D series dated after the study date (the same-day tie), flagged
  ``3d_made_later`` beyond a threshold. It never changes an outcome, and never a session verdict.
- :class:`CarrierChoice`: a coder's choice of the study that carries the session's code (kept with who, when
  and why); :func:`with_choice` marks the chosen study, :func:`carrier_refusal` says why a choice is refused.
- :class:`CoderReview`: a coder's current review of a study (``POST /studies/{uid}/review``); :func:`with_reviews`
  makes its outcome the one the session counts for that study instead of the decision's.
"""

from __future__ import annotations

import hashlib
import json
import re
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime
from enum import StrEnum
from functools import lru_cache
from importlib import resources
from itertools import chain
from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from . import knowledge
from .enums import CptCode, Outcome

REGIONS_FILE = "regions.toml"
MAX_TEXTS = 256
"""At most this many Body Part Examined values and descriptions are read per study (the rest are ignored)."""
MAX_TEXT_CHARS = 256
"""Each value is read up to this many characters (Body Part Examined is CS, 16; descriptions are LO, 64)."""
MADE_LATER_FLAG = "3d_made_later"
DEFAULT_MADE_LATER_DAYS = 1
"""3D series dated more than this many days after the study date are flagged ``3d_made_later``."""

_REGION_ID = re.compile(r"^[a-z][a-z_]*$")
_BODY_PART_TERM = re.compile(r"^[A-Z0-9]+$")
_DA = re.compile(r"^(\d{4})\.?(\d{2})\.?(\d{2})$")
_SEPARATORS = re.compile(r"[\s_\-]+")


# --------------------------------------------------------------------------------------------- the region table


class RegionTableError(ValueError):
    """The region table is malformed; the message names the file and the key."""


@dataclass(frozen=True, slots=True, order=True)
class Region:
    """An anatomical region of the table; regions sort in table order (head to foot)."""

    rank: int
    id: str
    name: str


class RegionBasis(StrEnum):
    """What a study's regions were told from."""

    BODY_PART_EXAMINED = "body_part_examined"
    """A Body Part Examined (0018,0015) defined term of the 3D series or the study."""
    ANATOMY_WORDS = "anatomy_words"
    """Anatomy words in the study / series descriptions (or in a Body Part Examined that is no defined term)."""
    UNKNOWN = "unknown"
    """Nothing placed the study: its regions cannot be told."""


@dataclass(frozen=True, slots=True)
class StudyRegions:
    """The regions of a study and what told them (none: :attr:`RegionBasis.UNKNOWN`)."""

    regions: frozenset[Region]
    basis: RegionBasis


@dataclass(frozen=True, slots=True)
class RegionTable:
    """The parsed ``regions.toml``: regions, their neighbours, and the terms and words that name them."""

    regions: Mapping[str, Region]
    neighbours: Mapping[str, frozenset[str]]
    body_parts: Mapping[str, frozenset[Region]]
    words: tuple[tuple[re.Pattern[str], frozenset[Region]], ...]
    unmapped: Mapping[str, str]
    sources: Mapping[str, str]

    def regions_of_body_parts(self, values: Iterable[str | None]) -> frozenset[Region]:
        """The regions named by Body Part Examined defined terms among ``values`` (others are ignored)."""
        found: set[Region] = set()
        for value in _bounded(values):
            for part in value.split("\\"):
                term = part.strip().upper()
                hit = self.body_parts.get(term) or self.body_parts.get(_SEPARATORS.sub("", term))
                if hit:
                    found |= hit
        return frozenset(found)

    def regions_of_words(self, texts: Iterable[str | None]) -> frozenset[Region]:
        """The regions named by anatomy words in ``texts``: at each word start the longest matching word wins,
        and the text it covers is consumed ("C-SPINE" names the cervical spine, not the whole spine)."""
        found: set[Region] = set()
        for text in _bounded(texts):
            pos = 0
            while pos < len(text):
                if text[pos].isalnum() and (pos == 0 or not text[pos - 1].isalnum()):
                    end, hit = pos, frozenset[Region]()
                    for pattern, regions in self.words:
                        match = pattern.match(text, pos)
                        if match and match.end() > end:
                            end, hit = match.end(), regions
                    if hit:
                        found |= hit
                        pos = end
                        continue
                pos += 1
        return frozenset(found)

    def components(self, regions: Iterable[Region]) -> tuple[frozenset[Region], ...]:
        """The connected components of the neighbour graph restricted to ``regions`` (two regions are in one
        component when a chain of neighbours *among the given regions* joins them), in table order."""
        remaining = {region.id: region for region in regions}
        components: list[frozenset[Region]] = []
        for start in sorted(remaining.values()):
            if start.id not in remaining:
                continue
            del remaining[start.id]
            component, frontier = {start}, [start.id]
            while frontier:
                for neighbour in self.neighbours[frontier.pop()]:
                    if neighbour in remaining:
                        component.add(remaining.pop(neighbour))
                        frontier.append(neighbour)
            components.append(frozenset(component))
        return tuple(components)


def _bounded(values: Iterable[str | None]) -> Iterable[str]:
    for count, value in enumerate(values):
        if count >= MAX_TEXTS:
            return
        if isinstance(value, str) and value:
            yield value[:MAX_TEXT_CHARS]


_REGION_KEYS = {"name", "body_parts", "words", "neighbours"}
_COMPOSITE_KEYS = {"regions", "body_parts", "words"}
_TOP_KEYS = {"sources", "region", "composite", "unmapped"}


def _strings(value: object, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(item, str) and item for item in value):
        raise RegionTableError(f"{where}: must be a list of non-empty strings")
    if len(set(value)) != len(value):
        raise RegionTableError(f"{where}: lists a value twice")
    return value


def _table(data: Mapping[str, object], key: str, where: str) -> Mapping[str, object]:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise RegionTableError(f"{where}: [{key}] must be a table")
    return value


def _word_pattern(fragment: str, where: str) -> re.Pattern[str]:
    try:
        return re.compile(f"(?:{fragment})(?![^\\W_])", re.IGNORECASE)
    except re.error as exc:
        raise RegionTableError(f"{where}: bad pattern {fragment!r}: {exc}") from exc


class _TermIndex:
    """Collects body part terms and words with the regions they name, rejecting a term given twice."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.body_parts: dict[str, frozenset[Region]] = {}
        self.where_term: dict[str, str] = {}
        self.words: list[tuple[re.Pattern[str], frozenset[Region]]] = []
        self.where_word: dict[str, str] = {}

    def add(self, entry: Mapping[str, object], regions: frozenset[Region], where: str) -> None:
        for term in _strings(entry.get("body_parts", []), f"{where}.body_parts"):
            if not _BODY_PART_TERM.match(term):
                raise RegionTableError(f"{where}.body_parts: {term!r} is not a Body Part Examined defined term")
            if term in self.where_term:
                raise RegionTableError(f"{where}.body_parts: {term!r} is also in {self.where_term[term]}")
            self.where_term[term] = where
            self.body_parts[term] = regions
        for word in _strings(entry.get("words", []), f"{where}.words"):
            if word.upper() in self.where_word:
                raise RegionTableError(f"{where}.words: {word!r} is also in {self.where_word[word.upper()]}")
            self.where_word[word.upper()] = where
            self.words.append((_word_pattern(word, f"{where}.words"), regions))


def parse_regions(data: Mapping[str, object], file: str = REGIONS_FILE) -> RegionTable:
    """Validate and parse a region table (the TOML document as a dict). Unknown keys, a neighbour that is no
    region, asymmetric neighbours, a term given twice or a bad pattern raise :class:`RegionTableError` naming
    ``file`` and the key."""
    unknown = set(data) - _TOP_KEYS
    if unknown:
        raise RegionTableError(f"{file}: unknown keys {sorted(unknown)}")
    rows = _table(data, "region", file)
    if not rows:
        raise RegionTableError(f"{file}: no [region.*] tables")
    regions: dict[str, Region] = {}
    for rank, (region_id, row) in enumerate(rows.items()):
        where = f"{file}: region.{region_id}"
        if not _REGION_ID.match(region_id):
            raise RegionTableError(f"{where}: region ids are lower-case words joined by '_'")
        if not isinstance(row, dict):
            raise RegionTableError(f"{where}: must be a table")
        if set(row) - _REGION_KEYS:
            raise RegionTableError(f"{where}: unknown keys {sorted(set(row) - _REGION_KEYS)}")
        if not isinstance(row.get("name"), str) or not row["name"]:
            raise RegionTableError(f"{where}: missing 'name'")
        regions[region_id] = Region(rank, region_id, row["name"])
    neighbours = _neighbours(rows, regions, file)
    terms = _TermIndex(file)
    for region_id, row in rows.items():
        assert isinstance(row, dict)  # checked above
        terms.add(row, frozenset({regions[region_id]}), f"{file}: region.{region_id}")
    for composite_id, entry in _table(data, "composite", file).items():
        where = f"{file}: composite.{composite_id}"
        if not isinstance(entry, dict) or set(entry) - _COMPOSITE_KEYS:
            raise RegionTableError(f"{where}: a table of {sorted(_COMPOSITE_KEYS)} only")
        named = _strings(entry.get("regions"), f"{where}.regions")
        missing = [name for name in named if name not in regions]
        if missing or len(named) < 2:
            raise RegionTableError(f"{where}.regions: {missing or named} (at least two regions of the table)")
        terms.add(entry, frozenset(regions[name] for name in named), where)
    unmapped = {str(key): str(reason) for key, reason in _table(data, "unmapped", file).items()}
    for term in unmapped:
        if term in terms.where_term:
            raise RegionTableError(f"{file}: unmapped.{term}: also mapped in {terms.where_term[term]}")
    sources = {str(key): str(text) for key, text in _table(data, "sources", file).items()}
    if not sources:
        raise RegionTableError(f"{file}: [sources] must say where the table comes from")
    return RegionTable(regions, neighbours, terms.body_parts, tuple(terms.words), unmapped, sources)


def _neighbours(rows: Mapping[str, Any], regions: Mapping[str, Region], file: str) -> dict[str, frozenset[str]]:
    neighbours: dict[str, frozenset[str]] = {}
    for region_id, row in rows.items():
        where = f"{file}: region.{region_id}.neighbours"
        listed = frozenset(_strings(row.get("neighbours", []), where))
        for neighbour in listed:
            if neighbour not in regions:
                raise RegionTableError(f"{where}: {neighbour!r} is no region")
            if neighbour == region_id:
                raise RegionTableError(f"{where}: a region is not its own neighbour")
        neighbours[region_id] = listed
    for region_id, listed in neighbours.items():
        for neighbour in listed:
            if region_id not in neighbours[neighbour]:
                raise RegionTableError(
                    f"{file}: region.{region_id}.neighbours: {neighbour!r} does not list {region_id!r} back"
                )
    return neighbours


@lru_cache(maxsize=1)
def builtin_regions() -> RegionTable:
    """The region table shipped with this version (parsed once per process)."""
    text = resources.files(knowledge).joinpath(REGIONS_FILE).read_text(encoding="utf-8")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RegionTableError(f"{REGIONS_FILE}: {exc}") from exc
    return parse_regions(data)


# --------------------------------------------------------------------------------------------- a study's regions


def find_regions(
    body_parts: Iterable[str | None], descriptions: Iterable[str | None], table: RegionTable | None = None
) -> StudyRegions:
    """A study's regions. ``body_parts``: the Body Part Examined values of its 3D series and of the study's
    acquisition series; ``descriptions``: the Study Description and the 3D series' descriptions.

    Defined Body Part Examined terms decide first; else anatomy words in the descriptions (and in Body Part
    Examined values that are no defined term, which senders fill with free text); else the regions are
    unknown. Received text only selects regions of the table: it never appears in the result."""
    table = table or builtin_regions()
    parts = list(_bounded(body_parts))
    from_terms = table.regions_of_body_parts(parts)
    if from_terms:
        return StudyRegions(from_terms, RegionBasis.BODY_PART_EXAMINED)
    from_words = table.regions_of_words(chain(parts, descriptions))
    if from_words:
        return StudyRegions(from_words, RegionBasis.ANATOMY_WORDS)
    return StudyRegions(frozenset(), RegionBasis.UNKNOWN)


def study_regions(
    body_parts: Iterable[str | None], descriptions: Iterable[str | None], table: RegionTable | None = None
) -> frozenset[Region]:
    """The regions of :func:`find_regions` (empty: unknown)."""
    return find_regions(body_parts, descriptions, table).regions


# --------------------------------------------------------------------------------------------- dates and the key


def parse_da(value: str | date | None) -> date | None:
    """A DICOM DA value (``YYYYMMDD``, or the old ``YYYY.MM.DD``) as a date; anything else is None."""
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    if not isinstance(value, str):
        return None
    match = _DA.match(value.strip()[:16])
    if not match:
        return None
    try:
        return date(int(match[1]), int(match[2]), int(match[3]))
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class SessionKey:
    """What groups studies into a session: Patient ID, Issuer of Patient ID where given, Study Date."""

    patient_id: str
    issuer: str | None
    study_date: date

    def session_id(self, secret: bytes = b"") -> str:
        """A stable identifier of the session that carries no PHI: a BLAKE2b hash of the key, keyed with the
        site's ``secret`` when one is given (without it, someone who knows a patient's ID and date can confirm
        the hash; with it, only the site can). Receivers sharing an index must use the same secret."""
        canonical = json.dumps([self.patient_id, self.issuer or "", self.study_date.isoformat()])
        key = secret if len(secret) <= 64 else hashlib.blake2b(secret).digest()
        return "ses-" + hashlib.blake2b(canonical.encode("utf-8"), key=key, digest_size=12).hexdigest()


def session_key(patient_id: str | None, issuer: str | None, study_date: str | date | None) -> SessionKey | None:
    """The session key of a study, or None (no patient id or no valid Study Date: the study is alone).
    Leading and trailing spaces are not significant (LO); the Issuer counts only when given."""
    patient = patient_id.strip() if isinstance(patient_id, str) else ""
    day = parse_da(study_date)
    if not patient or day is None:
        return None
    issued_by = issuer.strip() if isinstance(issuer, str) else ""
    return SessionKey(patient, issued_by or None, day)


@dataclass(frozen=True, slots=True)
class MadeLater:
    """3D series dated after their study (the same-day tie of the add-on code to its primary procedure)."""

    study_date: date
    three_d_dates: tuple[date, ...]
    """The distinct 3D series dates after the study date, ascending."""
    threshold_days: int

    @property
    def days_after(self) -> int:
        return (self.three_d_dates[-1] - self.study_date).days

    @property
    def flagged(self) -> bool:
        """More than ``threshold_days`` after the study date: flagged ``3d_made_later`` for the coder."""
        return self.days_after > self.threshold_days

    def text(self) -> str:
        dates = ", ".join(day.isoformat() for day in self.three_d_dates)
        study_day = self.study_date.isoformat()
        said = f"3D series dated {dates}, {self.days_after} day(s) after the study date {study_day}"
        if self.flagged:
            return (
                f"{said}: more than {self.threshold_days} day(s), flagged {MADE_LATER_FLAG}; the add-on code "
                "ties to the primary procedure of its day. The outcome is unchanged."
            )
        return f"{said}: within {self.threshold_days} day(s), not flagged. The outcome is unchanged."


def made_later(
    study_date: str | date | None,
    three_d_dates: Iterable[str | date | None],
    threshold_days: int = DEFAULT_MADE_LATER_DAYS,
) -> MadeLater | None:
    """The 3D series dated after the study date, or None (none later, or no valid study date).
    ``three_d_dates``: per 3D series its Content Date, else its Series Date. Invalid dates are ignored."""
    if threshold_days < 0:
        raise ValueError("threshold_days must be 0 or more")
    day = parse_da(study_date)
    if day is None:
        return None
    later = sorted({d for d in (parse_da(v) for v in _bounded_dates(three_d_dates)) if d is not None and d > day})
    return MadeLater(day, tuple(later), threshold_days) if later else None


def _bounded_dates(values: Iterable[str | date | None]) -> Iterable[str | date | None]:
    for count, value in enumerate(values):
        if count >= MAX_TEXTS:
            return
        yield value


# --------------------------------------------------------------------------------------------- the verdict


class Verdict(StrEnum):
    """How many 3D units a session may carry."""

    SINGLE = "single"
    """One study of the session supports a code: it carries the unit."""
    ONE_UNIT = "one_unit"
    """Several studies support a code and their regions are contiguous or the same: report the code once; the
    carrier is named."""
    SEPARATE_UNITS_POSSIBLE = "separate_units_possible"
    """The regions of the studies with 3D fall into non-contiguous groups: each group may carry a unit, with the
    payer's policy to confirm."""
    UNKNOWN_REGIONS = "unknown_regions"
    """Several studies support a code and the regions of at least one cannot be told: the coder decides."""
    NO_UNIT = "no_unit"
    """No study of the session supports a code."""


class OutcomeSource(StrEnum):
    """Where the outcome a session counts for one of its studies comes from."""

    DECISION = "decision"
    """The study's current automatic decision."""
    CODER_REVIEW = "coder_review"
    """A coder's current review of the study: the latest one no later decision made stale (a decision that
    changed the study's outcome after the review). Who and when are in ``review``."""


@dataclass(frozen=True, slots=True)
class CoderReview:
    """A coder's current (not stale) review of a study: its final outcome, counted by the session instead of the
    decision's."""

    review_id: int
    study_instance_uid: str
    outcome: Outcome
    reviewer: str
    reviewed_at: datetime


@dataclass(frozen=True, slots=True)
class SessionStudy:
    """One study of a session, as the verdict sees it."""

    study_instance_uid: str
    outcome: Outcome
    regions: frozenset[Region] = frozenset()
    """The regions of its 3D series (:func:`find_regions`); empty: unknown."""
    regions_from: RegionBasis = RegionBasis.UNKNOWN
    accession_number: str | None = None
    decided_at: datetime | None = None
    """When the study was first decided (keep it across re-decisions, so the carrier stays put); None sorts last."""
    has_3d: bool = False
    """The study has 3D series (also when they support no code: bundled, needs_review)."""
    carrier_chosen: bool = False
    """A coder review chose this study to carry the session's unit."""
    made_later: MadeLater | None = None
    """Shown with the study; never read by the verdict."""
    review: CoderReview | None = None
    """A coder's current review of the study (:func:`with_reviews`): its outcome is the one the session counts."""

    def __post_init__(self) -> None:
        if not self.regions and self.regions_from is not RegionBasis.UNKNOWN:
            raise ValueError("no regions: regions_from must be unknown")
        if self.regions and self.regions_from is RegionBasis.UNKNOWN:
            raise ValueError("regions given: say what told them (regions_from)")

    @property
    def counted_outcome(self) -> Outcome:
        """The outcome the session counts: the coder's current review's, else the decision's (``outcome``)."""
        return self.review.outcome if self.review is not None else self.outcome

    @property
    def outcome_from(self) -> OutcomeSource:
        return OutcomeSource.CODER_REVIEW if self.review is not None else OutcomeSource.DECISION

    @property
    def code(self) -> CptCode | None:
        """The code of :attr:`counted_outcome`."""
        return self.counted_outcome.code


@dataclass(frozen=True, slots=True)
class UnitGroup:
    """Studies with 3D whose regions are one contiguous area, and the study that carries its unit."""

    regions: frozenset[Region]
    studies: tuple[str, ...]
    carrier: str | None


@dataclass(frozen=True, slots=True)
class SessionVerdict:
    verdict: Verdict
    final: bool
    """False while a study of the session needs review: it may yet support a code and change the verdict."""
    studies: tuple[SessionStudy, ...]
    """Every study of the session, the first decided first."""
    groups: tuple[UnitGroup, ...]
    notes: tuple[str, ...]

    @property
    def carriers(self) -> tuple[str, ...]:
        seen: dict[str, None] = {}
        for group in self.groups:
            if group.carrier:
                seen[group.carrier] = None
        return tuple(seen)

    @property
    def carrier(self) -> str | None:
        """The study that carries the session's unit (``single``, ``one_unit``; ``unknown_regions`` only when a
        coder chose one); None when several groups may each carry one."""
        carriers = self.carriers
        return carriers[0] if len(carriers) == 1 and len(self.groups) == 1 else None


def _decided_key(study: SessionStudy) -> tuple[int, float]:
    moment = study.decided_at
    if moment is None:
        return (1, 0.0)
    return (0, (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp())


def _canonical(study: SessionStudy) -> tuple[Any, ...]:
    return (
        _decided_key(study),
        study.study_instance_uid,
        study.counted_outcome.value,
        study.outcome.value,
        sorted(region.rank for region in study.regions),
        study.carrier_chosen,
        study.has_3d,
        study.accession_number or "",
    )


def _carrier(members: Sequence[SessionStudy], notes: list[str]) -> str | None:
    chosen = [study for study in members if study.carrier_chosen]
    if len(chosen) > 1:
        names = ", ".join(study.study_instance_uid for study in chosen)
        notes.append(f"A coder chose several carriers for one unit ({names}): the first decided of them is named.")
    if chosen:
        return chosen[0].study_instance_uid
    return members[0].study_instance_uid if members else None


def _region_names(regions: Iterable[Region]) -> str:
    return ", ".join(region.name for region in sorted(regions))


def session_verdict(studies: Iterable[SessionStudy], table: RegionTable | None = None) -> SessionVerdict:
    """The verdict of one session. It depends on the studies' outcomes, regions and the coder's carrier choice
    only (never on their order, their ``made_later`` or their ``has_3d``), and never raises on valid studies.
    A study's outcome here is :attr:`SessionStudy.counted_outcome`: a coder's current review, else the decision.

    Only studies whose outcome supports a code (supports_76376 / supports_76377) make units. ``no_3d`` and
    ``bundled`` studies are listed and make none. A ``needs_review`` study makes none either, but the verdict
    is then not ``final``: once reviewed it may support a code.

    Contiguity: the regions of all studies that support a code are joined into connected components of the
    neighbour graph of ``regions.toml`` restricted to those regions (so chest and pelvis are contiguous only
    when the abdomen is rendered too). One component: ``one_unit``; several: ``separate_units_possible``, each
    component's studies listed with the study that may carry its unit. A study whose regions span two
    components is listed in both. The carrier of a unit is the study a coder chose, else the first decided.
    """
    table = table or builtin_regions()
    unique: dict[str, SessionStudy] = {}
    notes: list[str] = []
    for study in sorted(studies, key=_canonical):
        if study.study_instance_uid in unique:
            notes.append(f"Study {study.study_instance_uid} was given twice: the first decided is kept.")
            continue
        unique[study.study_instance_uid] = study
    ordered = tuple(unique.values())
    units = [study for study in ordered if study.code]
    reviewing = [study for study in ordered if study.counted_outcome is Outcome.NEEDS_REVIEW]
    if reviewing:
        notes.append(
            f"{len(reviewing)} study(ies) of the session need review: the verdict may change once they are reviewed."
        )
    for study in ordered:
        if study.review is not None and study.review.outcome is not study.outcome:
            notes.append(
                f"Study {study.study_instance_uid}: a coder's review ({study.review.reviewer}, "
                f"{study.review.reviewed_at.date().isoformat()}) says {study.review.outcome.value}; its decision said "
                f"{study.outcome.value}: the session counts the review."
            )
        if study.carrier_chosen and not study.code:
            notes.append(
                f"Study {study.study_instance_uid} was chosen as carrier but its outcome "
                f"({study.counted_outcome.value}) supports no code: it carries nothing."
            )
    verdict, groups = _groups(units, table, notes)
    codes = sorted({study.code for study in units if study.code})
    if len(codes) > 1 and verdict is not Verdict.SEPARATE_UNITS_POSSIBLE:
        notes.append(
            f"The session's studies support different codes ({', '.join(codes)}): 76376 and 76377 are never "
            "reported together for one session (R13); the carrier's code is the one."
        )
    return SessionVerdict(verdict, not reviewing, ordered, groups, tuple(notes))


def _groups(
    units: Sequence[SessionStudy], table: RegionTable, notes: list[str]
) -> tuple[Verdict, tuple[UnitGroup, ...]]:
    if not units:
        return Verdict.NO_UNIT, ()
    uids = tuple(study.study_instance_uid for study in units)
    if len(units) == 1:
        (study,) = units
        components = table.components(study.regions)
        if len(components) > 1:
            notes.append(
                "The 3D of this study covers regions that are not contiguous ("
                + "; ".join(_region_names(c) for c in components)
                + "): separately rendered, each may be reported (R15), with the payer's policy to confirm."
            )
        return Verdict.SINGLE, (UnitGroup(study.regions, uids, study.study_instance_uid),)
    if any(not study.regions for study in units):
        notes.append("The regions of some studies with 3D cannot be told: the coder decides how many units.")
        chosen = [study for study in units if study.carrier_chosen]
        carrier = _carrier(chosen, notes) if chosen else None
        everything = frozenset(region for study in units for region in study.regions)
        return Verdict.UNKNOWN_REGIONS, (UnitGroup(everything, uids, carrier),)
    components = table.components(region for study in units for region in study.regions)
    groups = []
    for component in components:
        members = [study for study in units if study.regions & component]
        groups.append(UnitGroup(component, tuple(s.study_instance_uid for s in members), _carrier(members, notes)))
    if len(groups) == 1:
        return Verdict.ONE_UNIT, tuple(groups)
    notes.append(
        "The studies' 3D covers regions that are not contiguous ("
        + "; ".join(_region_names(group.regions) for group in groups)
        + "): each may carry a unit, with the payer's policy to confirm (R15)."
    )
    return Verdict.SEPARATE_UNITS_POSSIBLE, tuple(groups)


# --------------------------------------------------------------------------------------------- the record


class SessionModel(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


RegionId = Annotated[str, Field(pattern=_REGION_ID.pattern)]
Uid = Annotated[str, Field(min_length=1)]


class MadeLaterRecord(SessionModel):
    """3D series dated after the study date; ``flagged``: more than ``threshold_days`` after it."""

    flag: Literal["3d_made_later"] | None
    study_date: date
    three_d_dates: Annotated[list[date], Field(min_length=1)]
    days_after: Annotated[int, Field(ge=1)]
    threshold_days: Annotated[int, Field(ge=0)]
    flagged: bool
    text: str

    @classmethod
    def from_made_later(cls, later: MadeLater) -> Self:
        return cls(
            flag="3d_made_later" if later.flagged else None,
            study_date=later.study_date,
            three_d_dates=list(later.three_d_dates),
            days_after=later.days_after,
            threshold_days=later.threshold_days,
            flagged=later.flagged,
            text=later.text(),
        )


class SessionReviewRecord(SessionModel):
    """The coder's review whose outcome a session counts for a study: which review, who, when."""

    review_id: Annotated[int, Field(ge=1)]
    reviewer: str
    reviewed_at: datetime


class SessionStudyRecord(SessionModel):
    """A study of the session: the outcome the session counts, its regions and whether it carries the unit."""

    study_instance_uid: Uid
    accession_number: str | None
    outcome: Outcome
    code: CptCode | None
    has_3d: bool
    regions: list[RegionId]
    regions_from: RegionBasis
    carries_unit: bool
    carrier_chosen: bool
    made_later: MadeLaterRecord | None
    outcome_from: OutcomeSource = OutcomeSource.DECISION
    """Where ``outcome`` comes from: the study's decision, or a coder's current review (``review``). Records kept
    before reviews counted in sessions read as ``decision``."""
    decision_outcome: Outcome | None = None
    """The decision's outcome when a coder's review gives ``outcome`` (None: ``outcome`` is the decision's)."""
    review: SessionReviewRecord | None = None
    """The coder's review ``outcome`` comes from (``outcome_from``: ``coder_review``)."""


class UnitGroupRecord(SessionModel):
    """Studies with 3D of one contiguous area and the study that carries (or may carry) its unit."""

    regions: list[RegionId]
    studies: Annotated[list[Uid], Field(min_length=1)]
    carrier: Uid | None


class CarrierBasis(StrEnum):
    """Why the carrier of the session's unit is the study it is."""

    FIRST_DECIDED = "first_decided"
    """The default: the first decided study of the unit."""
    CODER_CHOICE = "coder_choice"
    """A coder chose it (``POST /sessions/{session_id}/carrier``): who, when and why are in ``carrier_choice``."""


@dataclass(frozen=True, slots=True)
class CarrierChoice:
    """A coder's choice of the study that carries the session's code. Every choice is kept; the latest one of a
    session is the one that counts, across re-decisions of its studies."""

    choice_id: int
    study_instance_uid: str
    reviewer: str
    reason: str
    chosen_at: datetime


def with_choice(studies: Iterable[SessionStudy], choice: CarrierChoice | None) -> list[SessionStudy]:
    """The studies with ``carrier_chosen`` set on the chosen one only (none without a choice)."""
    chosen = choice.study_instance_uid if choice else None
    return [
        study if study.carrier_chosen == (study.study_instance_uid == chosen)
        else replace(study, carrier_chosen=study.study_instance_uid == chosen)
        for study in studies
    ]


def with_reviews(studies: Iterable[SessionStudy], reviews: Iterable[CoderReview]) -> list[SessionStudy]:
    """The studies with ``review`` set to their coder's current review (the latest given per study; a study without
    one keeps none): the session then counts the review's outcome instead of the decision's."""
    latest: dict[str, CoderReview] = {}
    for review in reviews:
        found = latest.get(review.study_instance_uid)
        if found is None or review.review_id > found.review_id:
            latest[review.study_instance_uid] = review
    return [
        study if study.review == latest.get(study.study_instance_uid)
        else replace(study, review=latest.get(study.study_instance_uid))
        for study in studies
    ]


def carrier_refusal(studies: Iterable[SessionStudy], study_uid: str) -> str | None:
    """Why a coder may not choose ``study_uid`` to carry the code of the session of ``studies`` (None: they may).
    A study outside the session, or one whose counted outcome (a coder's current review, else the decision)
    supports no code, cannot carry it."""
    study = next((s for s in studies if s.study_instance_uid == study_uid), None)
    if study is None:
        return f"study {study_uid} is not in this session (one patient, one Study Date)"
    if study.code is None:
        outcome = study.counted_outcome
        said_by = "the coder's review" if study.review is not None else "its outcome"
        return (
            f"study {study_uid} cannot carry the session's code: {said_by} ({outcome.value}) supports no code"
            + (" yet (review it first)" if outcome is Outcome.NEEDS_REVIEW else "")
        )
    return None


class CarrierChoiceRecord(SessionModel):
    """The coder's choice of the carrier: who chose which study, when and why. ``applied``: the chosen study
    carries the unit now (False when it left the session or its outcome no longer supports a code)."""

    choice_id: Annotated[int, Field(ge=1)]
    study_instance_uid: Uid
    reviewer: str
    reason: str
    chosen_at: datetime
    applied: bool


class SessionRecord(SessionModel):
    """The ``session`` part of a study's decision: the session's verdict and every study of it.
    ``session_id`` is None when the study is alone (no Patient ID or no Study Date)."""

    session_id: Annotated[str, Field(pattern=r"^ses-[0-9a-f]{24}$")] | None
    verdict: Verdict
    final: bool
    carrier: Uid | None
    studies: Annotated[list[SessionStudyRecord], Field(min_length=1)]
    groups: list[UnitGroupRecord]
    notes: list[str]
    carrier_from: CarrierBasis | None = None
    """Why the carrier carries: the first decided, or a coder's choice; None when no study carries a unit."""
    carrier_choice: CarrierChoiceRecord | None = None
    """The session's current carrier choice by a coder, if any (also when it no longer applies)."""

    @model_validator(mode="before")
    @classmethod
    def _carrier_from_of_earlier_records(cls, data: Any) -> Any:
        """Records kept before coders could choose the carrier have no ``carrier_from``: their carriers were
        the first decided."""
        if isinstance(data, dict) and "carrier_from" not in data:
            studies = data.get("studies") or []
            carrying = [s for s in studies if isinstance(s, dict) and s.get("carries_unit")]
            if carrying:
                chosen = any(s.get("carrier_chosen") for s in carrying)
                data = {**data, "carrier_from": (CarrierBasis.CODER_CHOICE if chosen else CarrierBasis.FIRST_DECIDED)}
        return data

    @classmethod
    def from_verdict(
        cls, verdict: SessionVerdict, session_id: str | None, choice: CarrierChoice | None = None
    ) -> Self:
        """The record of ``verdict``; ``choice``: the session's current carrier choice (its study marked
        ``carrier_chosen`` among ``verdict.studies``: :func:`with_choice`)."""
        carriers = set(verdict.carriers)
        notes = list(verdict.notes)
        applied = choice is not None and choice.study_instance_uid in carriers
        if choice is not None and all(s.study_instance_uid != choice.study_instance_uid for s in verdict.studies):
            notes.append(
                f"A coder ({choice.reviewer}, {choice.chosen_at.date().isoformat()}) chose study "
                f"{choice.study_instance_uid} to carry the session's code; it is no longer in this session: "
                "the first decided carries it."
            )
        carrier_from = (CarrierBasis.CODER_CHOICE if applied else CarrierBasis.FIRST_DECIDED) if carriers else None
        choice_record = (
            CarrierChoiceRecord(
                choice_id=choice.choice_id,
                study_instance_uid=choice.study_instance_uid,
                reviewer=choice.reviewer,
                reason=choice.reason,
                chosen_at=choice.chosen_at,
                applied=applied,
            )
            if choice is not None
            else None
        )
        studies = [
            SessionStudyRecord(
                study_instance_uid=study.study_instance_uid,
                accession_number=study.accession_number,
                outcome=study.counted_outcome,
                code=study.code,
                has_3d=study.has_3d,
                regions=[region.id for region in sorted(study.regions)],
                regions_from=study.regions_from,
                carries_unit=study.study_instance_uid in carriers,
                carrier_chosen=study.carrier_chosen,
                made_later=MadeLaterRecord.from_made_later(study.made_later) if study.made_later else None,
                outcome_from=study.outcome_from,
                decision_outcome=study.outcome if study.review is not None else None,
                review=SessionReviewRecord(
                    review_id=study.review.review_id,
                    reviewer=study.review.reviewer,
                    reviewed_at=study.review.reviewed_at,
                )
                if study.review is not None
                else None,
            )
            for study in verdict.studies
        ]
        groups = [
            UnitGroupRecord(
                regions=[region.id for region in sorted(group.regions)],
                studies=list(group.studies),
                carrier=group.carrier,
            )
            for group in verdict.groups
        ]
        return cls(
            session_id=session_id,
            verdict=verdict.verdict,
            final=verdict.final,
            carrier=verdict.carrier,
            studies=studies,
            groups=groups,
            notes=notes,
            carrier_from=carrier_from,
            carrier_choice=choice_record,
        )


def session_json_schema() -> dict[str, Any]:
    """The JSON Schema of :class:`SessionRecord`."""
    return SessionRecord.model_json_schema()
