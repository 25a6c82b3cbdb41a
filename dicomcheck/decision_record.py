"""The public, typed form of a decision: what the index stores, the API serves, a pack carries and
``analyze --format json`` prints.

The rules work on frozen dataclasses (:mod:`dicomcheck.model`); after the rules the decision travels
as these pydantic models, built once by ``StudyDecisionRecord.from_decision``, which read the
dataclasses' fields by name (the few fields a record names otherwise are given explicitly). Their
``model_dump(mode="json")`` is the JSON document, and ``schema/analysis.schema.json`` is generated
from them (``python -m dicomcheck.decision_record > dicomcheck/schema/analysis.schema.json``), so
the document, its schema and the code cannot drift apart.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import TYPE_CHECKING, Annotated, Any, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.config import JsonValue

from .enums import CptCode, Origin, Outcome, PacsViewerCode, RuleId, SeriesKind, Technique
from .model import RuleHit, SeriesDecision, StudyDecision
from .sessions import MadeLaterRecord, RegionBasis, RegionId, SessionRecord, made_later

if TYPE_CHECKING:
    from .registry import Policy

TAG_PATTERN = r"^\([0-9A-F]{4},[0-9A-F]{4}\)$"
Text = Annotated[str, Field(min_length=1)]


class DecisionModel(BaseModel):
    """Immutable like the dataclasses it is built from, and read from them by field name."""

    model_config = ConfigDict(frozen=True, from_attributes=True)

    @classmethod
    def read(cls, source: object, **named_otherwise: Any) -> Self:
        """The record of ``source`` (a dataclass of :mod:`dicomcheck.model`, or ``registry.Policy``): every field
        is the attribute of the same name (nested records likewise), except those given ``named_otherwise``.
        A field the source lacks is an ``AttributeError``, never a silent default."""
        values = {
            name: named_otherwise[name] if name in named_otherwise else getattr(source, name)
            for name in cls.model_fields
        }
        return cls.model_validate(values)


class EvidenceRecord(DecisionModel):
    """One header value behind a statement."""

    signal: Text
    tag: Annotated[str, Field(pattern=TAG_PATTERN)] | None
    keyword: Text
    value: str
    sop_instance_uid: str | None


class ReasonRecord(DecisionModel):
    """A rule that fired, in plain words, the series it speaks of and the evidence that made it fire."""

    rule: RuleId
    text: Text
    series: list[str] = []
    evidence: list[EvidenceRecord] = []

    @classmethod
    def from_hit(cls, hit: RuleHit) -> Self:
        return cls.read(hit, series=hit.series_instance_uids)


class EquipmentRecord(DecisionModel):
    """The equipment identity of a series' first instance."""

    manufacturer: str | None
    model: str | None
    station_name: str | None
    device_serial_number: str | None
    software_versions: str | None


class SeriesRecord(DecisionModel):
    """What a series is, where it was made, and why."""

    series_instance_uid: Text
    series_description: str | None
    modality: str | None
    sop_class_uid: str | None
    instances: Annotated[int, Field(ge=1)]
    kind: SeriesKind
    technique: Technique | None
    is_3d: bool
    origin: Origin
    product: str | None
    kind_rule: RuleId
    origin_rule: RuleId
    equipment: EquipmentRecord
    evidence: Annotated[list[EvidenceRecord], Field(min_length=1)]

    @classmethod
    def from_series(cls, series: SeriesDecision) -> Self:
        return cls.read(series, kind_rule=series.kind_hit.rule, origin_rule=series.origin_hit.rule)


_CODED_OUTCOME_RULES: list[JsonValue] = [
    {
        "if": {"properties": {"outcome": {"const": outcome.value}}},
        "then": {"properties": {"code": {"const": outcome.code}}},
    }
    for outcome in Outcome
    if outcome.code
]
_CODE_RULES: list[JsonValue] = [
    *_CODED_OUTCOME_RULES,
    {
        "if": {"properties": {"outcome": {"enum": [o.value for o in Outcome if not o.code]}}},
        "then": {"properties": {"code": {"const": None}}},
    },
]


class StudyDecisionRecord(DecisionModel):
    """One study's decision: the outcome and its CPT code, the reasons, every series."""

    model_config = ConfigDict(json_schema_extra={"allOf": _CODE_RULES})

    study_instance_uid: Text
    accession_number: str | None
    patient_id: str | None
    study_description: str | None
    study_date: str | None
    outcome: Outcome
    code: CptCode | None
    instances: int
    reasons: Annotated[list[ReasonRecord], Field(min_length=1)]
    series: Annotated[list[SeriesRecord], Field(min_length=1)]
    issuer_of_patient_id: str | None = None
    regions: list[RegionId] = []
    """The anatomical regions of the study (ids of ``knowledge/regions.toml``, head to foot); empty: unknown."""
    regions_from: RegionBasis = RegionBasis.UNKNOWN
    three_d_dates: list[dt.date] = []
    """Per 3D series its Content Date, else its Series Date: distinct, ascending."""
    made_later: MadeLaterRecord | None = None
    """3D series dated after the Study Date (the same-day tie of the add-on code): the dates, and the
    ``3d_made_later`` flag beyond the threshold. The outcome never changes for it."""

    @model_validator(mode="after")
    def _code_follows_outcome(self) -> Self:
        if self.code != self.outcome.code:
            raise ValueError(f"code {self.code!r} does not go with outcome {self.outcome.value}")
        return self

    @classmethod
    def from_decision(cls, study: StudyDecision, **named_otherwise: Any) -> Self:
        reasons = [ReasonRecord.from_hit(hit) for hit in study.reasons]
        series = [SeriesRecord.from_series(s) for s in study.series]
        later = made_later(study.study_date, study.three_d_dates, study.made_later_days)
        return cls.read(
            study,
            reasons=reasons,
            series=series,
            made_later=MadeLaterRecord.from_made_later(later) if later else None,
            **named_otherwise,
        )

    def document(self) -> dict[str, Any]:
        """The JSON document (plain strings, lists and dicts)."""
        return self.model_dump(mode="json")


class PolicyRecord(DecisionModel):
    """The site policy a decision was made under (``registry.Policy``)."""

    pacs_viewer_code: PacsViewerCode
    minip_is_3d: bool
    curved_mpr_is_3d: bool

    @classmethod
    def from_policy(cls, policy: Policy) -> Self:
        return cls.read(policy)


class StudyDecisionUnderPolicy(StudyDecisionRecord):
    """A study's decision with the policy it was made under: the form the index keeps and a pack carries."""

    policy: PolicyRecord

    @classmethod
    def from_decision_and_policy(cls, study: StudyDecision, policy: Policy) -> Self:
        return cls.from_decision(study, policy=PolicyRecord.from_policy(policy))


class ReadErrorRecord(DecisionModel):
    """An input that was not analysed, and why."""

    path: str
    reason: Text


class AnalysisDocument(DecisionModel):
    """The document printed by ``dicomcheck analyze --format json``. More keys are allowed than listed.
    ``$defs/session`` is the ``session`` part ``GET /studies/{uid}`` adds to a study (issue 13)."""

    model_config = ConfigDict(extra="allow", title="dicomcheck analyze --format json")

    dicomcheck_version: Text
    rules_version: Text
    policy: PolicyRecord
    devices: str | None
    studies: list[StudyDecisionRecord]
    errors: list[ReadErrorRecord]


_DEF_NAMES = {
    "EvidenceRecord": "evidence",
    "ReasonRecord": "reason",
    "SeriesRecord": "series",
    "StudyDecisionRecord": "study",
    "EquipmentRecord": "equipment",
    "PolicyRecord": "policy",
    "ReadErrorRecord": "read_error",
    "MadeLaterRecord": "made_later",
    "RegionBasis": "region_basis",
    "SessionRecord": "session",
    "SessionStudyRecord": "session_study",
    "UnitGroupRecord": "unit_group",
    "Verdict": "session_verdict",
}
"""Schema definitions keep the short names clients already reference (``#/$defs/study``)."""


def analysis_json_schema() -> dict[str, Any]:
    """The JSON Schema of :class:`AnalysisDocument` (what ``schema/analysis.schema.json`` holds)."""
    schema = AnalysisDocument.model_json_schema(ref_template="#/$defs/{model}")
    session = SessionRecord.model_json_schema(ref_template="#/$defs/{model}")  # what the API adds (issue 13)
    schema["$defs"] = {**session.pop("$defs"), **schema["$defs"], "SessionRecord": session}
    text = json.dumps(schema)
    for model, name in _DEF_NAMES.items():
        text = text.replace(f'"#/$defs/{model}"', f'"#/$defs/{name}"')
    schema = json.loads(text)
    schema["$defs"] = {_DEF_NAMES.get(key, key): value for key, value in schema["$defs"].items()}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://dicomcheck.local/schema/analysis.schema.json",
        **schema,
        "description": " ".join((AnalysisDocument.__doc__ or "").split()).replace("``", "`"),
    }


def analysis_json_schema_text() -> str:
    return json.dumps(analysis_json_schema(), indent=2, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    print(analysis_json_schema_text(), end="")
