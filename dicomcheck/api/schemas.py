"""Request and response models of the HTTP API (they are the OpenAPI schema).

Closed vocabularies are the core's enums (one declaration, a ``$ref`` in OpenAPI). A reason's
``rule`` stays a string: a decision stored under an earlier rules version may name a retired rule."""

from __future__ import annotations

import datetime as dt
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..enums import DeviceRole, Origin, Outcome, SeriesKind, StudyStatus, Technique, TokenRole
from ..reports import Documentation, ReportFlag
from ..sessions import MadeLaterRecord, SessionRecord, Verdict

UID_PATTERN = r"^[0-9]+(\.[0-9]+)*$"
# text reaching the index: PostgreSQL text cannot hold NUL, so it is a 422 on every database
NO_NUL_PATTERN = r"^[^\x00]*$"


class Evidence(BaseModel):
    signal: str
    tag: str | None
    keyword: str
    value: str
    sop_instance_uid: str | None


class Reason(BaseModel):
    rule: str
    text: str
    series: list[str] = []
    evidence: list[Evidence] = []


class SeriesOut(BaseModel):
    model_config = ConfigDict(extra="allow")

    series_instance_uid: str
    series_description: str | None
    modality: str | None
    sop_class_uid: str | None
    instances: int
    kind: SeriesKind
    technique: Technique | None = None
    is_3d: bool = False
    origin: Origin
    product: str | None = None
    kind_rule: str | None = None
    origin_rule: str | None = None
    equipment: dict[str, str | None] = {}
    evidence: list[Evidence]


class ReviewOut(BaseModel):
    id: int
    outcome: Outcome
    code: str | None
    reviewer: str
    token_name: str
    reason: str
    created_at: dt.datetime
    decision_id: int | None
    stale: bool
    stale_since: dt.datetime | None


class ReportFlagOut(BaseModel):
    flag: str
    reason: str
    sentences: list[str] = Field(description="The report sentences the flag is about (none for a missing element).")


class ReportVersionOut(BaseModel):
    report_id: int
    status: str
    received: dt.datetime
    source: str
    text_sha256: str
    matched_by: str
    superseded_by: int | None
    current: bool


class ReportOut(BaseModel):
    """The study's radiology report held against its decision (issue 12): the documentation verdict."""

    model_config = ConfigDict(extra="allow")

    documentation: Documentation
    flags: list[ReportFlag]
    reasons: list[ReportFlagOut]
    notes: list[str]
    statements: list[dict[str, Any]] = Field(
        description="What the report states about 3D work, each with the sentence it came from."
    )
    status: str | None = Field(description="P, F or C of the current report; null when none matched")
    received: dt.datetime | None
    matched_by: str | None = Field(description="study_instance_uid or accession_number")
    report_id: int | None
    text_sha256: str | None
    source: str | None = Field(description="hl7, api or sr")
    radiologist: str | None
    report_time: dt.datetime | None
    history: list[ReportVersionOut]


class ReportReceipt(BaseModel):
    report_id: int
    study_instance_uid: str
    status: str
    text_sha256: str
    received: dt.datetime
    matched: bool = Field(description="The study's images have been received (else the report waits for them).")


class StudyOut(BaseModel):
    """One study as ``dicomcheck analyze --format json`` prints it, plus its index status."""

    model_config = ConfigDict(extra="allow")

    study_instance_uid: str
    accession_number: str | None
    patient_id: str | None
    study_description: str | None
    study_date: str | None = None
    outcome: Outcome
    code: str | None
    instances: int
    reasons: list[Reason]
    series: list[SeriesOut]
    status: StudyStatus = Field(description="pending (not yet stable, or newer instances than the decision) or decided")
    instance_count: int
    first_arrival: dt.datetime
    last_arrival: dt.datetime
    decided_at: dt.datetime | None
    decision_id: int | None
    rules_version: str | None
    changed_after_read: bool = Field(description="The decision changed since this client last read the study.")
    review: ReviewOut | None = Field(description="The latest coder review, if any.")
    report: ReportOut = Field(description="The radiology report held against the decision (issue 12).")
    made_later: MadeLaterRecord | None = Field(
        None, description="3D series dated after the Study Date, and the `3d_made_later` flag (issue 13)."
    )
    session: SessionRecord | None = Field(
        None,
        description="The study's session (one patient, one day; issue 13): its verdict and every study of it, "
        "recomputed whenever one of them is decided. None before the study's first decision.",
    )


class StudySummary(BaseModel):
    study_instance_uid: str
    accession_number: str | None
    study_date: str | None
    study_description: str | None
    modalities: str | None
    instance_count: int
    first_arrival: dt.datetime
    last_arrival: dt.datetime
    status: StudyStatus
    outcome: Outcome | None
    code: str | None
    decided_at: dt.datetime | None


class StudyPage(BaseModel):
    items: list[StudySummary]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null on the last page.")


class StudySearch(BaseModel):
    """Search by body, so that patient IDs never travel in a URL that access logs record."""

    model_config = ConfigDict(extra="forbid")

    accession: str | None = Field(None, max_length=64, pattern=NO_NUL_PATTERN)
    patient_id: str | None = Field(None, max_length=64, pattern=NO_NUL_PATTERN)
    outcome: Outcome | None = None
    modality: str | None = Field(None, max_length=16, pattern=r"^[A-Z0-9]{1,16}$")
    received_from: dt.datetime | None = None
    received_to: dt.datetime | None = None
    documentation: Documentation | None = Field(
        None, description="Only studies whose report documentation verdict is this (decided studies only)."
    )
    report_flag: ReportFlag | None = Field(None, description="Only studies whose report raises this flag.")
    session_verdict: Verdict | None = Field(None, description="Only studies whose session verdict is this (issue 13).")
    limit: int = Field(50, ge=1, le=500)
    cursor: str | None = Field(
        None, max_length=512, pattern=r"^[A-Za-z0-9_-]+$", description="next_cursor of the previous page"
    )


class DecisionOut(BaseModel):
    id: int
    decided_at: dt.datetime
    node: str
    rules_version: str
    dicomcheck_version: str
    outcome: Outcome
    code: str | None
    instance_count: int
    registry_path: str | None
    current: bool


class ReviewIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    outcome: Outcome
    reviewer: str = Field(
        min_length=1, max_length=128, pattern=NO_NUL_PATTERN, description="The coder who made the call."
    )
    reason: str = Field(min_length=3, max_length=4000, pattern=NO_NUL_PATTERN)


SESSION_ID_PATTERN = r"^ses-[0-9a-f]{24}$"


class CarrierIn(BaseModel):
    """A coder's choice of the study that carries a session's code (issue 13): ``one_unit`` is reported once
    per session, by the first decided study unless a coder chooses another."""

    model_config = ConfigDict(extra="forbid")

    study_instance_uid: str = Field(
        min_length=1, max_length=64, pattern=UID_PATTERN, description="The study of the session that carries the code."
    )
    reviewer: str = Field(
        min_length=1, max_length=128, pattern=NO_NUL_PATTERN, description="The coder who made the call."
    )
    reason: str = Field(min_length=3, max_length=4000, pattern=NO_NUL_PATTERN)


class CarrierChoiceOut(BaseModel):
    """A recorded carrier choice: who chose which study, when and why (a later one supersedes it)."""

    id: int
    session_id: str
    study_instance_uid: str
    reviewer: str
    reason: str
    chosen_at: dt.datetime
    current: bool = Field(description="The session's latest choice: the one that counts.")


class SessionCarrierOut(BaseModel):
    choice: CarrierChoiceOut
    session: SessionRecord = Field(description="The session as every study of it now shows it (recomputed at once).")


class SessionOut(BaseModel):
    session: SessionRecord
    carrier_choices: list[CarrierChoiceOut] = Field(
        description="Every carrier choice of the session, the latest first."
    )


class DeviceIn(BaseModel):
    """A registry entry: the same fields as a [[device]] table of the TOML registry."""

    model_config = ConfigDict(extra="forbid")

    station_name: str | None = Field(None, min_length=1, max_length=64, pattern=NO_NUL_PATTERN)
    ae_title: str | None = Field(None, min_length=1, max_length=16, pattern=NO_NUL_PATTERN)
    device_serial_number: str | None = Field(None, min_length=1, max_length=64, pattern=NO_NUL_PATTERN)
    manufacturer: str | None = Field(None, min_length=1, max_length=64, pattern=NO_NUL_PATTERN)
    model: str | None = Field(None, min_length=1, max_length=64, pattern=NO_NUL_PATTERN)
    role: DeviceRole
    note: str | None = Field(None, max_length=1000, pattern=NO_NUL_PATTERN)
    valid_from: dt.date | None = None
    valid_to: dt.date | None = None

    @field_validator("station_name", "ae_title", "device_serial_number", "manufacturer", "model")
    @classmethod
    def _not_blank(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("must not be blank")
        return value


class DeviceOut(DeviceIn):
    model_config = ConfigDict(extra="allow")

    id: int
    created_at: dt.datetime
    updated_at: dt.datetime


class DeviceChangeOut(BaseModel):
    device: DeviceOut | None
    affected_studies: list[str] = Field(description="Studies with series from equipment this entry matches.")
    reanalyze: str = Field(description="How to re-run the rules on the affected studies.")


class AuditOut(BaseModel):
    id: int
    at: dt.datetime
    event: str
    action: str
    outcome: int
    token_name: str | None
    role: TokenRole | None
    method: str
    endpoint: str
    study_instance_uid: str | None
    client_address: str | None
    detail: dict[str, Any]


class ErrorOut(BaseModel):
    detail: str | list[dict[str, Any]] = Field(description="Why the request was refused.")


class OperationsHealth(BaseModel):
    """What waits for people or for the PACS (counts only: ``/healthz`` needs no token)."""

    review_backlog: int = Field(description="Studies in needs_review with no current coder review (the worklist).")
    review_backlog_oldest_seconds: float = Field(description="Age of the oldest of them since its first arrival.")
    pending_studies: int = Field(description="Studies received and not yet decided.")
    quarantined: int = Field(description="Inputs quarantined (refused).")
    evidence_returns_waiting: int = Field(description="Evidence returns to the PACS waiting for an attempt.")
    evidence_returns_failed: int = Field(description="Evidence returns given up (`dicomcheck evidence returns`).")


class Health(BaseModel):
    status: str
    index: str
    version: str
    reason: str | None = Field(None, description="Why the status is degraded.")
    operations: OperationsHealth | None = Field(None, description="Absent when the index is unreachable.")
