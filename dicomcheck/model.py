"""Typed, immutable records that flow from header extraction through the rules.

``InstanceFacts`` is built once per instance from its header (``dicomcheck.extract``); the rules
(``dicomcheck.rules``) are pure functions over these records and return ``Evidence`` and
``RuleHit`` objects that cite the exact header values behind every statement.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from typing import Any

from .enums import CptCode, Origin, Outcome, RuleId, SeriesKind, Technique


@dataclass(frozen=True, slots=True)
class Code:
    """A coded entry (Code Value, Coding Scheme Designator, Code Meaning)."""

    value: str
    scheme: str
    meaning: str = ""

    def __str__(self) -> str:
        text = f"({self.value}, {self.scheme}"
        return text + (f', "{self.meaning}")' if self.meaning else ")")


@dataclass(frozen=True, slots=True)
class ProcedureCode:
    """A code found in one of the procedure / protocol code sequences."""

    code: Code
    keyword: str
    """The sequence it came from, e.g. ``ProcedureCodeSequence``."""


@dataclass(frozen=True, slots=True)
class PrivateCreator:
    group: int
    block: int
    creator: str

    @property
    def tag(self) -> str:
        return f"({self.group:04X},{self.block:04X})"


@dataclass(frozen=True, slots=True)
class Equipment:
    """The equipment identity of an instance (General / Enhanced General Equipment)."""

    manufacturer: str | None = None
    model: str | None = None
    station_name: str | None = None
    device_serial_number: str | None = None
    software_versions: str | None = None

    @property
    def is_empty(self) -> bool:
        return not any(
            (self.manufacturer, self.model, self.station_name, self.device_serial_number, self.software_versions)
        )


@dataclass(frozen=True, slots=True)
class InstanceFacts:
    """Everything the analysis needs from one instance's header; no pixel data.

    ``None`` means absent; strings are stripped. ``source`` says where the instance was read
    (a path, ``archive.zip!member`` or a storage key).
    """

    source: str
    sop_class_uid: str | None
    sop_instance_uid: str | None
    study_instance_uid: str | None
    series_instance_uid: str | None
    modality: str | None = None
    accession_number: str | None = None
    patient_id: str | None = None
    issuer_of_patient_id: str | None = None
    study_date: str | None = None
    study_description: str | None = None
    series_description: str | None = None
    series_date: str | None = None
    content_date: str | None = None
    body_part_examined: str | None = None
    series_number: str | None = None
    protocol_name: str | None = None
    requested_procedure_descriptions: tuple[str, ...] = ()
    performed_procedure_step_description: str | None = None
    image_type: tuple[str, ...] = ()
    frame_types: tuple[tuple[str, ...], ...] = ()
    """Distinct Frame Type values of enhanced multi-frame objects (shared and per-frame groups)."""
    volume_techniques: tuple[str, ...] = ()
    """Distinct Volume Based Calculation Technique values (top level and functional groups)."""
    derivation_codes: tuple[Code, ...] = ()
    derivation_description: str | None = None
    procedure_codes: tuple[ProcedureCode, ...] = ()
    equipment: Equipment = field(default_factory=Equipment)
    sc_manufacturer: str | None = None
    sc_model: str | None = None
    sc_software_versions: str | None = None
    conversion_type: str | None = None
    private_creators: tuple[PrivateCreator, ...] = ()
    implementation_class_uid: str | None = None
    implementation_version_name: str | None = None
    source_ae_title: str | None = None
    """Source Application Entity Title of the file meta, or the calling AE of the association."""
    referenced_sop_instance_uids: tuple[str, ...] = ()
    """Instances this one was derived from or refers to (Source / Referenced Image, SEG refs)."""
    number_of_frames: int = 1
    has_pixel_attributes: bool = False
    burned_in_annotation: str | None = None
    patient_identity_removed: str | None = None


@dataclass(frozen=True, slots=True)
class Evidence:
    """One header value behind a statement."""

    signal: str
    keyword: str
    value: str
    tag: str | None = None
    sop_instance_uid: str | None = None

    def as_dict(self) -> dict[str, str | None]:
        return {
            "signal": self.signal,
            "tag": self.tag,
            "keyword": self.keyword,
            "value": self.value,
            "sop_instance_uid": self.sop_instance_uid,
        }


@dataclass(frozen=True, slots=True)
class RuleHit:
    """A rule that fired, in plain words, with the evidence that made it fire."""

    rule: RuleId
    text: str
    series_instance_uids: tuple[str, ...] = ()
    evidence: tuple[Evidence, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.rule, RuleId) or not self.text:
            raise ValueError("RuleHit needs a RuleId member and a text")


@dataclass(frozen=True, slots=True)
class KindDecision:
    kind: SeriesKind
    technique: Technique | None
    hit: RuleHit


@dataclass(frozen=True, slots=True)
class OriginDecision:
    origin: Origin
    hit: RuleHit
    product: str | None = None


@dataclass(frozen=True, slots=True)
class SeriesDecision:
    series_instance_uid: str
    series_description: str | None
    modality: str | None
    sop_class_uid: str | None
    instances: int
    kind: SeriesKind
    technique: Technique | None
    origin: Origin
    is_3d: bool
    kind_hit: RuleHit
    origin_hit: RuleHit
    product: str | None
    equipment: Equipment
    evidence: tuple[Evidence, ...]


@dataclass(frozen=True, slots=True)
class StudyDecision:
    study_instance_uid: str
    accession_number: str | None
    patient_id: str | None
    study_description: str | None
    study_date: str | None
    outcome: Outcome
    reasons: tuple[RuleHit, ...]
    series: tuple[SeriesDecision, ...]
    instances: int
    issuer_of_patient_id: str | None = None
    regions: tuple[str, ...] = ()
    """The study's anatomical regions (``sessions.find_regions`` ids, head to foot); empty: unknown."""
    regions_from: str = "unknown"
    three_d_dates: tuple[date, ...] = ()
    """Per 3D series its Content Date, else its Series Date, distinct and ascending (issue 13)."""
    made_later_days: int = 1
    """3D series dated more than this many days after the Study Date are flagged ``3d_made_later``."""

    @property
    def code(self) -> CptCode | None:
        return self.outcome.code


def facts_to_dict(facts: InstanceFacts) -> dict[str, Any]:
    """A JSON-ready dict of an :class:`InstanceFacts` (stored in the index beside each instance)."""
    from dataclasses import asdict

    return asdict(facts)


def facts_from_dict(data: dict[str, Any]) -> InstanceFacts:
    """Inverse of :func:`facts_to_dict`; unknown keys (from a later version) are ignored."""
    from dataclasses import fields

    known = {f.name for f in fields(InstanceFacts)}
    values = {k: v for k, v in data.items() if k in known}
    values["equipment"] = Equipment(**(values.get("equipment") or {}))
    values["derivation_codes"] = tuple(Code(**c) for c in values.get("derivation_codes", ()))
    values["procedure_codes"] = tuple(
        ProcedureCode(Code(**p["code"]), p["keyword"]) for p in values.get("procedure_codes", ())
    )
    values["private_creators"] = tuple(PrivateCreator(**p) for p in values.get("private_creators", ()))
    values["frame_types"] = tuple(tuple(t) for t in values.get("frame_types", ()))
    for name in ("requested_procedure_descriptions", "image_type", "volume_techniques", "referenced_sop_instance_uids"):
        values[name] = tuple(values.get(name, ()))
    return InstanceFacts(**values)
