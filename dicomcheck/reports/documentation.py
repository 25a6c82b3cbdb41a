"""The documentation verdict: a report's statements held against the image decision (issue 12 §2).

The decision's outcome never changes on report content (the images decide what was made); this is
a second, separate verdict, ``complete | incomplete | missing | conflicting``, with flags that each
carry a plain-language reason and the statements they are about.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from ..enums import Origin, Outcome, PacsViewerCode, Technique
from ..registry import Policy
from .statements import THREE_D_TECHNIQUES, ReportStatements, Statement, StatementKind

CODED = frozenset({Outcome.SUPPORTS_76376, Outcome.SUPPORTS_76377})


class ReportFlag(StrEnum):
    """What a report lacks or contradicts."""

    REPORT_MISSING = "report_missing"
    REPORT_LACKS_3D_STATEMENT = "report_lacks_3d_statement"
    REPORT_LACKS_TECHNIQUE = "report_lacks_technique"
    REPORT_LACKS_INDICATION = "report_lacks_indication"
    REPORT_LACKS_WORKSTATION = "report_lacks_workstation"
    REPORT_3D_WITHOUT_IMAGES = "report_3d_without_images"
    REPORT_ORIGIN_CONFLICT = "report_origin_conflict"
    REPORT_MPR_ONLY_CALLED_3D = "report_mpr_only_called_3d"

    @property
    def conflicting(self) -> bool:
        """The report contradicts the images (the verdict is then ``conflicting``)."""
        return self in _CONFLICTS


_CONFLICTS = frozenset(
    {ReportFlag.REPORT_3D_WITHOUT_IMAGES, ReportFlag.REPORT_ORIGIN_CONFLICT, ReportFlag.REPORT_MPR_ONLY_CALLED_3D}
)


class Documentation(StrEnum):
    """The documentation verdict of one study."""

    COMPLETE = "complete"
    INCOMPLETE = "incomplete"
    MISSING = "missing"
    CONFLICTING = "conflicting"


@dataclass(frozen=True, slots=True)
class FlagReason:
    """One flag, why it was raised, and the report statements it is about (none for a missing element)."""

    flag: ReportFlag
    reason: str
    statements: tuple[Statement, ...] = ()

    def document(self) -> dict[str, object]:
        return {
            "flag": self.flag.value,
            "reason": self.reason,
            "sentences": list(dict.fromkeys(s.sentence for s in self.statements)),
        }


@dataclass(frozen=True, slots=True)
class DocumentationVerdict:
    """The verdict, its flags and notes, and the statements it was computed from."""

    documentation: Documentation
    flags: tuple[FlagReason, ...]
    notes: tuple[str, ...]
    """Plain-language remarks that are not flags (no 3D finding described; what was not checked and why)."""
    outcome: Outcome
    statements: ReportStatements | None

    @property
    def flag_names(self) -> tuple[ReportFlag, ...]:
        return tuple(f.flag for f in self.flags)

    def document(self) -> dict[str, object]:
        """JSON-ready: ``documentation``, ``flags`` (names), ``reasons``, ``notes``, ``statements``."""
        return {
            "documentation": self.documentation.value,
            "flags": [f.flag.value for f in self.flags],
            "reasons": [f.document() for f in self.flags],
            "notes": list(self.notes),
            "statements": self.statements.document() if self.statements else [],
        }


def documentation_verdict(
    outcome: Outcome,
    statements: ReportStatements | None,
    *,
    final_report_received: bool,
    waited_long_enough: bool,
    three_d_origins: Iterable[Origin] = (),
    policy: Policy | None = None,
) -> DocumentationVerdict:
    """The documentation verdict of a study whose images decided ``outcome``.

    ``statements`` are those of the final report (or of a preliminary one, recorded but not judged,
    while ``final_report_received`` is false). ``waited_long_enough``: the configured wait for a final
    report has passed. ``three_d_origins``: the origins of the decision's 3D series (for the origin
    conflict). ``policy``: the site policy of the decision (MinIP and curved MPR as 3D; PACS viewer
    billed as 76377); the defaults when ``None``.

    Per outcome, exactly as issue 12 §2 "How flags and verdict relate":

    * no final report: ``missing``; ``report_missing`` is raised for supports_76376 / supports_76377
      once the wait has passed (before that a note says the report is awaited);
    * ``bundled``: ``complete`` with no flags (the base code includes 3D; nothing asks for a separate
      3D code); the statements are recorded;
    * ``no_3d``: ``complete`` with no flags when the report claims no 3D (says nothing of it, says
      MPR only, or negates it); ``report_3d_without_images`` when it claims 3D work in any words (3D
      wording or a 3D technique: overcoding risk),
      ``report_mpr_only_called_3d`` when it calls reformats 3D: ``conflicting``;
    * ``supports_76376`` / ``supports_76377``: each missing element raises its own flag
      (``report_lacks_3d_statement`` when the report does not say 3D in words — "MIP images were
      created" names a technique but states no 3D rendering —, ``report_lacks_technique`` —
      "3D reconstructions" with no technique named raises it —, ``report_lacks_indication``, and for 76377
      ``report_lacks_workstation``); ``report_origin_conflict`` when the places the report affirms
      and the origins of the 3D series have nothing in common; ``report_mpr_only_called_3d``. A
      missing 3D finding raises no flag but makes the verdict ``incomplete``;
    * ``needs_review``: the images show 3D but settle no code, so there is nothing yet for the report
      to document: no lacks-flag is raised. What can be held against the images is: the origins the
      3D series do show (``report_origin_conflict``) and reformats called 3D. The verdict is
      ``conflicting`` when one of those is raised, else ``complete`` — meaning "nothing
      contradicts the images", which a note says; it is computed again when the study is decided.

    Verdict precedence: ``conflicting`` (``report_3d_without_images``, ``report_origin_conflict``,
    ``report_mpr_only_called_3d``) > ``incomplete`` (any lacks-flag, or no 3D finding) > ``complete``.

    The origin conflict compares places (``scanner_console``, ``pacs_viewer``,
    ``independent_workstation``) with origins: a PACS-viewer origin also agrees with an independent
    workstation when the site bills PACS-viewer 3D as 76377. It is not checked when the report names
    no place, when no origin is given, or when a 3D series' origin is ``unknown`` (the unnamed
    writer may be the place the report names); a note says so.
    """
    policy = policy or Policy()
    if not final_report_received:
        return _missing(outcome, statements, waited_long_enough)
    if statements is None:
        raise ValueError("a final report was received but no statements were given")
    reading = _Reading(statements, policy)
    read_notes = [_TRUNCATED] if statements.truncated else []
    if outcome is Outcome.BUNDLED:
        note = "The base procedure includes 3D (bundled): the report's statements are recorded; no flag asks for a "
        note += "separate 3D code."
        return DocumentationVerdict(Documentation.COMPLETE, (), (note, *read_notes), outcome, statements)
    origins = frozenset(three_d_origins)
    flags: list[FlagReason] = []
    notes: list[str] = read_notes
    if outcome is Outcome.NO_3D:
        flags += _no_3d_flags(reading)
        if not flags and statements.negated_3d:
            notes.append(f"The report says no 3D was made ({_quote(statements.negated_3d[0])}), as the images show.")
    else:
        if outcome in CODED:
            flags += _lacks_flags(outcome, reading)
        conflict, unchecked = _origin_conflict(reading, origins, policy)
        flags += conflict
        notes += unchecked
        flags += _called_3d_flag(reading)
    if outcome is Outcome.NEEDS_REVIEW:
        notes.append(
            "The images show 3D but settle no code yet (needs_review): nothing is required of the report until the "
            "study is decided, so no lacks-flag is raised; only what contradicts the images is flagged."
        )
    documentation = _verdict(outcome, flags, reading, notes)
    return DocumentationVerdict(documentation, tuple(flags), tuple(notes), outcome, statements)


def _missing(outcome: Outcome, statements: ReportStatements | None, waited: bool) -> DocumentationVerdict:
    flags: tuple[FlagReason, ...] = ()
    notes: tuple[str, ...] = ()
    if outcome in CODED and waited:
        code = outcome.code
        reason = f"The images support CPT {code}, but no final report arrived within the configured wait."
        flags = (FlagReason(ReportFlag.REPORT_MISSING, reason),)
    elif outcome in CODED:
        notes = ("No final report yet; report_missing is raised once the configured wait has passed.",)
    else:
        notes = ("No final report yet.",)
    if statements is not None:
        notes += ("The statements shown are from a report that is not final; they are recorded, not judged.",)
    return DocumentationVerdict(Documentation.MISSING, flags, notes, outcome, statements)


class _Reading:
    """The statements read under the site policy: which say 3D, name a 3D technique, call reformats 3D."""

    def __init__(self, statements: ReportStatements, policy: Policy) -> None:
        def three_d(technique: Technique | None) -> bool:
            if technique is Technique.MINIP:
                return policy.minip_is_3d
            if technique is Technique.CURVED_MPR:
                return policy.curved_mpr_is_3d
            return technique in THREE_D_TECHNIQUES

        kinds = (StatementKind.TECHNIQUE, StatementKind.REFORMAT, StatementKind.REFORMAT_CALLED_3D)
        called = statements.affirmed(StatementKind.REFORMAT_CALLED_3D)
        self.statements = statements
        self.techniques = tuple(s for s in statements.affirmed(*kinds) if three_d(s.technique))
        self.explicit_3d = (
            *statements.affirmed(StatementKind.THREE_D),
            *(s for s in called if three_d(s.technique)),
        )
        """The report says 3D in words: "3D", "3-D", "three-dimensional" (the 3D statement payers read for)."""
        self.claims_3d = (*self.explicit_3d, *self.techniques)
        """Any claim of 3D work: 3D wording or a 3D technique (what overcoding is about)."""
        self.called_3d = tuple(s for s in called if not three_d(s.technique))
        self.places = statements.affirmed(StatementKind.PLACE)


def _no_3d_flags(reading: _Reading) -> list[FlagReason]:
    flags = []
    if reading.claims_3d:
        reason = (
            f"The report states 3D rendering ({_quote(reading.claims_3d[0])}), but no 3D series is among the images "
            "(outcome no_3d): a 3D code billed from this report would be overcoding."
        )
        flags.append(FlagReason(ReportFlag.REPORT_3D_WITHOUT_IMAGES, reason, reading.claims_3d))
    flags += _called_3d_flag(reading)
    return flags


def _called_3d_flag(reading: _Reading) -> list[FlagReason]:
    if not reading.called_3d:
        return []
    reason = (
        f"The report calls reformats 3D ({_quote(reading.called_3d[0])}): coronal, sagittal, multiplanar and curved "
        "reformats are 2D and not 3D rendering (billing-rules R2, R3)."
    )
    return [FlagReason(ReportFlag.REPORT_MPR_ONLY_CALLED_3D, reason, reading.called_3d)]


def _lacks_flags(outcome: Outcome, reading: _Reading) -> list[FlagReason]:
    statements = reading.statements
    flags = []
    if not reading.explicit_3d:
        said = reading.techniques or statements.negated_3d or statements.affirmed(StatementKind.REFORMAT)
        reason = "The report does not say in words that 3D rendering was performed ('3D', 'three-dimensional')"
        reason += f"; it says {_quote(said[0])}." if said else "."
        flags.append(FlagReason(ReportFlag.REPORT_LACKS_3D_STATEMENT, reason, said[:1]))
    if not reading.techniques:
        generic = statements.affirmed(StatementKind.THREE_D)
        reason = "No 3D technique (MIP, MinIP, volume rendering, surface rendering / SSD, segmentation / volumetry) "
        reason += f"is named; {_quote(generic[0])} does not say which." if generic else "is named."
        flags.append(FlagReason(ReportFlag.REPORT_LACKS_TECHNIQUE, reason, generic[:1]))
    if not statements.indication_stated:
        reason = "No reason for the 3D work is stated (the exam's clinical history is not one)."
        flags.append(FlagReason(ReportFlag.REPORT_LACKS_INDICATION, reason))
    if outcome is Outcome.SUPPORTS_76377 and not statements.workstation_stated:
        others = tuple(s for s in reading.places if s.place is not Origin.INDEPENDENT_WORKSTATION)
        reason = (
            "CPT 76377 needs the report to say the 3D was made on an independent workstation (an independent, "
            "separate or offline workstation, a 3D lab, or a named 3D product)"
        )
        reason += f"; it says {_quote(others[0])}, which does not." if others else "; it names none."
        flags.append(FlagReason(ReportFlag.REPORT_LACKS_WORKSTATION, reason, others))
    return flags


def _origin_conflict(
    reading: _Reading, origins: frozenset[Origin], policy: Policy
) -> tuple[list[FlagReason], list[str]]:
    places = tuple(s for s in reading.places if s.place is not None and s.place is not Origin.UNKNOWN)
    if not places:
        return [], []
    if not origins:
        return [], ["The origins of the 3D series were not given: the place the report names was not checked."]
    if Origin.UNKNOWN in origins:
        return [], ["A 3D series has an unknown origin: the place the report names was not checked against it."]

    def agree(place: Origin, origin: Origin) -> bool:
        pacs_as_workstation = policy.pacs_viewer_code is PacsViewerCode.CODE_76377
        return place is origin or (
            pacs_as_workstation and origin is Origin.PACS_VIEWER and place is Origin.INDEPENDENT_WORKSTATION
        )

    if any(agree(s.place, origin) for s in places for origin in origins if s.place):
        return [], []
    named = ", ".join(sorted({_PLACE_WORDS[s.place] for s in places if s.place}))
    shown = ", ".join(sorted(_PLACE_WORDS[o] for o in origins))
    reason = (
        f"The report says the 3D was made on {named} ({_quote(places[0])}), but the images show the 3D series made "
        f"on {shown}."
    )
    return [FlagReason(ReportFlag.REPORT_ORIGIN_CONFLICT, reason, places)], []


_PLACE_WORDS = {
    Origin.SCANNER_CONSOLE: "the scanner console",
    Origin.PACS_VIEWER: "the PACS viewer",
    Origin.INDEPENDENT_WORKSTATION: "an independent workstation",
    Origin.UNKNOWN: "an unknown device",
}


def _verdict(outcome: Outcome, flags: list[FlagReason], reading: _Reading, notes: list[str]) -> Documentation:
    no_finding = outcome in CODED and not reading.statements.findings_stated
    if no_finding:
        notes.append(_NO_FINDING)
    if any(f.flag.conflicting for f in flags):
        return Documentation.CONFLICTING
    if flags or no_finding:
        return Documentation.INCOMPLETE
    return Documentation.COMPLETE


_TRUNCATED = "The report is longer than the part read: statements after it are not seen."
_NO_FINDING = "No 3D finding is described (what the 3D images show): no flag, but the documentation is incomplete."


def _quote(statement: Statement) -> str:
    phrase = " ".join(statement.phrase.split())
    sentence = " ".join(statement.sentence.split())
    if len(sentence) > 160:
        sentence = sentence[:157] + "..."
    return f"'{phrase}' in \"{sentence}\""
