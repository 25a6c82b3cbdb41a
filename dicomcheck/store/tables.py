"""The index: studies, series, instances (with the header facts), receipts, associations,
decisions and quarantined inputs. Only ``dicomcheck.store`` imports sqlmodel.

Times are timezone-aware UTC. The settle timer lives here (``Study.last_arrival``,
``Study.needs_decision``), so any receiver sharing the index can decide a study another received.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import JSON, BigInteger, Column, DateTime, Index, Text, TypeDecorator, UniqueConstraint
from sqlalchemy.engine import Dialect
from sqlmodel import Field, SQLModel


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class UtcDateTime(TypeDecorator[dt.datetime]):
    """Timezone-aware UTC on every dialect (SQLite keeps no zone: stored as UTC, read back aware)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        try:
            value = value.astimezone(dt.UTC)
        except OverflowError:  # e.g. 0001-01-01T00:00+01:00 as a filter bound: the earliest / latest time
            value = (dt.datetime.min if value.year < 1000 else dt.datetime.max).replace(tzinfo=dt.UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


def _ts(nullable: bool = False, index: bool = False) -> Column[dt.datetime]:
    return Column(UtcDateTime(), nullable=nullable, index=index)


class Study(SQLModel, table=True):
    __tablename__ = "study"
    __table_args__ = (
        # newest first (GET /studies, keyset by first arrival then UID; read backwards), the worklist
        Index("ix_study_first_arrival_uid", "first_arrival", "study_instance_uid"),
        # a study from its current decision (searches and exports that start from the decision's outcome or time)
        Index("ix_study_current_decision", "current_decision_id"),
    )

    study_instance_uid: str = Field(primary_key=True, max_length=64)
    accession_number: str | None = Field(default=None, max_length=64, index=True)
    patient_id: str | None = Field(default=None, max_length=64, index=True)
    study_date: str | None = Field(default=None, max_length=16)
    study_description: str | None = Field(default=None, sa_column=Column(Text))
    modalities: str | None = Field(default=None, max_length=128)
    instance_count: int = 0
    first_arrival: dt.datetime = Field(sa_column=_ts())
    last_arrival: dt.datetime = Field(sa_column=_ts(index=True))
    needs_decision: bool = Field(default=True, index=True)
    """Set on every arrival; cleared when a decision has seen every instance."""
    claimed_by: str | None = Field(default=None, max_length=128)
    claimed_at: dt.datetime | None = Field(default=None, sa_column=_ts(nullable=True))
    current_decision_id: int | None = Field(default=None, foreign_key="decision.id")
    decided_at: dt.datetime | None = Field(default=None, sa_column=_ts(nullable=True, index=True))
    retention_applied_at: dt.datetime | None = Field(default=None, sa_column=_ts(nullable=True))
    """When pixel retention last went over the study (``store.retention``); before ``decided_at``: not since
    its current decision."""


class Series(SQLModel, table=True):
    __tablename__ = "series"
    __table_args__ = (Index("ix_series_modality_study", "modality", "study_instance_uid"),)  # modality filters

    series_instance_uid: str = Field(primary_key=True, max_length=64)
    study_instance_uid: str = Field(foreign_key="study.study_instance_uid", max_length=64, index=True)
    modality: str | None = Field(default=None, max_length=16)
    series_number: str | None = Field(default=None, max_length=16)
    series_description: str | None = Field(default=None, sa_column=Column(Text))
    sop_class_uid: str | None = Field(default=None, max_length=64)
    station_name: str | None = Field(default=None, max_length=64, index=True)
    device_serial_number: str | None = Field(default=None, max_length=64)
    manufacturer: str | None = Field(default=None, max_length=64)
    model: str | None = Field(default=None, max_length=64)
    calling_ae: str | None = Field(default=None, max_length=16)
    instance_count: int = 0


class Association(SQLModel, table=True):
    __tablename__ = "association"

    id: int | None = Field(default=None, primary_key=True)
    node: str = Field(max_length=128)
    calling_ae: str = Field(max_length=16, index=True)
    called_ae: str = Field(max_length=16)
    peer_address: str = Field(max_length=64)
    peer_port: int | None = None
    implementation_class_uid: str | None = Field(default=None, max_length=64)
    implementation_version_name: str | None = Field(default=None, max_length=16)
    tls: bool = False
    status: str = Field(default="accepted", max_length=16)
    """accepted | released | aborted | closed | rejected"""
    reject_reason: str | None = Field(default=None, sa_column=Column(Text))
    started_at: dt.datetime = Field(sa_column=_ts(index=True))
    ended_at: dt.datetime | None = Field(default=None, sa_column=_ts(nullable=True, index=True))
    """None while open; rows a killed process left open are closed by the next start."""
    owner: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    """The receiving process, provably (``store.files.process_identity``: host/boot/pid/start)."""
    instances_received: int = 0
    duplicates: int = 0
    failures: int = 0


class Instance(SQLModel, table=True):
    """One stored version of an instance; a re-sent UID with other content adds a version."""

    __tablename__ = "instance"
    __table_args__ = (
        UniqueConstraint("sop_instance_uid", "sha256", name="uq_instance_content"),
        Index("ix_instance_study_sop", "study_instance_uid", "sop_instance_uid"),
    )

    id: int | None = Field(default=None, primary_key=True)
    sop_instance_uid: str = Field(max_length=64, index=True)
    version: int = 1
    study_instance_uid: str = Field(foreign_key="study.study_instance_uid", max_length=64)
    series_instance_uid: str = Field(foreign_key="series.series_instance_uid", max_length=64, index=True)
    sop_class_uid: str | None = Field(default=None, max_length=64)
    transfer_syntax_uid: str | None = Field(default=None, max_length=64)
    sha256: str = Field(max_length=64)
    size: int = Field(sa_column=Column(BigInteger, nullable=False))
    path: str = Field(sa_column=Column(Text, nullable=False))
    """Relative to the storage folder."""
    received_at: dt.datetime = Field(sa_column=_ts())
    association_id: int | None = Field(default=None, foreign_key="association.id", index=True)
    facts: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    pixel_state: str = Field(default="full", max_length=16)
    """full | header_only: the file at ``path`` lost its pixel data to retention (``sha256`` and ``size``
    stay the received file's; ``header_sha256`` / ``header_size`` are the header-only copy's)."""
    header_sha256: str | None = Field(default=None, max_length=64)
    header_size: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))
    pruned_at: dt.datetime | None = Field(default=None, sa_column=_ts(nullable=True))


class Receipt(SQLModel, table=True):
    """Every arrival of an instance, duplicates included: who sent it, when, from where, how."""

    __tablename__ = "receipt"

    id: int | None = Field(default=None, primary_key=True)
    instance_id: int = Field(foreign_key="instance.id", index=True)
    association_id: int | None = Field(default=None, foreign_key="association.id", index=True)
    received_at: dt.datetime = Field(sa_column=_ts())
    transfer_syntax_uid: str | None = Field(default=None, max_length=64)
    calling_ae: str | None = Field(default=None, max_length=16)
    called_ae: str | None = Field(default=None, max_length=16)
    peer_address: str | None = Field(default=None, max_length=64)
    implementation_class_uid: str | None = Field(default=None, max_length=64)
    implementation_version_name: str | None = Field(default=None, max_length=16)
    move_originator_ae: str | None = Field(default=None, max_length=16)
    duplicate: bool = False


class Decision(SQLModel, table=True):
    """One decision of a study; the study's history is every row, newest current."""

    __tablename__ = "decision"

    id: int | None = Field(default=None, primary_key=True)
    study_instance_uid: str = Field(max_length=64, index=True)
    decided_at: dt.datetime = Field(sa_column=_ts(index=True))
    node: str = Field(max_length=128)
    rules_version: str = Field(max_length=32)
    dicomcheck_version: str = Field(max_length=32)
    outcome: str = Field(max_length=32, index=True)
    code: str | None = Field(default=None, max_length=8)
    instance_count: int
    registry_path: str | None = Field(default=None, sa_column=Column(Text))
    document: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    """The study as ``analyze --format json`` prints it."""


class Quarantined(SQLModel, table=True):
    __tablename__ = "quarantined"

    id: int | None = Field(default=None, primary_key=True)
    path: str = Field(sa_column=Column(Text, nullable=False))
    reason: str = Field(sa_column=Column(Text, nullable=False))
    status: int
    received_at: dt.datetime = Field(sa_column=_ts(index=True))
    association_id: int | None = Field(default=None, foreign_key="association.id")
    sop_class_uid: str | None = Field(default=None, max_length=64)
    sop_instance_uid: str | None = Field(default=None, max_length=64)
    sha256: str | None = Field(default=None, max_length=64)
    expired_at: dt.datetime | None = Field(default=None, sa_column=_ts(nullable=True))
    """When the quarantined file was deleted by ``quarantine_retention`` (the row stays)."""


# ---------------------------------------------------------------- API: access, audit, registry, reviews


class ApiToken(SQLModel, table=True):
    """A bearer token; only its SHA-256 is stored. Auditor tokens expire and are scoped."""

    __tablename__ = "api_token"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=64, unique=True)
    role: str = Field(max_length=16)
    """reader | admin | auditor | reporter"""
    token_hash: str = Field(max_length=64, unique=True)
    prefix: str = Field(max_length=12)
    created_at: dt.datetime = Field(sa_column=_ts())
    expires_at: dt.datetime | None = Field(default=None, sa_column=_ts(nullable=True))
    revoked_at: dt.datetime | None = Field(default=None, sa_column=_ts(nullable=True))
    last_used_at: dt.datetime | None = Field(default=None, sa_column=_ts(nullable=True))
    studies: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    accessions: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))


class AuditEvent(SQLModel, table=True):
    """An access audit record; ``event`` uses the DICOM / IHE ATNA event names (PS3.15 A.5.3)."""

    __tablename__ = "audit_event"

    id: int | None = Field(default=None, primary_key=True)
    at: dt.datetime = Field(sa_column=_ts(index=True))
    event: str = Field(max_length=48, index=True)
    action: str = Field(max_length=1)
    """ATNA action code: C create, R read, U update, D delete, E execute."""
    outcome: int = 0
    """ATNA outcome: 0 success, 4 minor failure, 8 serious failure, 12 major failure."""
    token_name: str | None = Field(default=None, max_length=64, index=True)
    role: str | None = Field(default=None, max_length=16)
    method: str = Field(max_length=8)
    endpoint: str = Field(sa_column=Column(Text, nullable=False))
    study_instance_uid: str | None = Field(default=None, max_length=64, index=True)
    client_address: str | None = Field(default=None, max_length=64)
    detail: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))


class Device(SQLModel, table=True):
    """A site registry entry kept in the index (beside the optional TOML file)."""

    __tablename__ = "device"

    id: int | None = Field(default=None, primary_key=True)
    station_name: str | None = Field(default=None, max_length=64)
    ae_title: str | None = Field(default=None, max_length=16)
    device_serial_number: str | None = Field(default=None, max_length=64)
    manufacturer: str | None = Field(default=None, max_length=64)
    model: str | None = Field(default=None, max_length=64)
    role: str = Field(max_length=32)
    note: str | None = Field(default=None, sa_column=Column(Text))
    valid_from: dt.date | None = None
    valid_to: dt.date | None = None
    created_at: dt.datetime = Field(sa_column=_ts())
    updated_at: dt.datetime = Field(sa_column=_ts())


class DeviceChange(SQLModel, table=True):
    __tablename__ = "device_change"

    id: int | None = Field(default=None, primary_key=True)
    device_id: int = Field(index=True)
    at: dt.datetime = Field(sa_column=_ts())
    action: str = Field(max_length=16)
    token_name: str | None = Field(default=None, max_length=64)
    before: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    after: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON, nullable=True))


class Review(SQLModel, table=True):
    """A coder's final outcome for a study, beside the automatic decision it reviewed."""

    __tablename__ = "review"

    id: int | None = Field(default=None, primary_key=True)
    study_instance_uid: str = Field(max_length=64, index=True)
    decision_id: int | None = Field(default=None, foreign_key="decision.id")
    outcome: str = Field(max_length=32)
    code: str | None = Field(default=None, max_length=8)
    reviewer: str = Field(max_length=128)
    token_name: str = Field(max_length=64)
    reason: str = Field(sa_column=Column(Text, nullable=False))
    created_at: dt.datetime = Field(sa_column=_ts())
    stale_since: dt.datetime | None = Field(default=None, sa_column=_ts(nullable=True))
    """Set when a later automatic decision changed the outcome after this review."""


class StudyRead(SQLModel, table=True):
    """Which decision a billing client last read, for the ``changed_after_read`` flag."""

    __tablename__ = "study_read"
    __table_args__ = (UniqueConstraint("study_instance_uid", "token_name", name="uq_study_read"),)

    id: int | None = Field(default=None, primary_key=True)
    study_instance_uid: str = Field(max_length=64, index=True)
    token_name: str = Field(max_length=64)
    decision_id: int | None = None
    read_at: dt.datetime = Field(sa_column=_ts())


# ---------------------------------------------------------------- reports (issue 12): HL7 ORU, API, SR


class Report(SQLModel, table=True):
    """A radiology report as received; every version is kept. Matched to a study when it is read
    (``store.reports``): by ``study_instance_uid`` when the report has one, else by accession number
    within the same patient ID, so a report that arrives before its images waits for them."""

    __tablename__ = "report"
    __table_args__ = (Index("ix_report_accession_patient", "accession_number", "patient_id"),)

    id: int | None = Field(default=None, primary_key=True)
    study_instance_uid: str | None = Field(default=None, max_length=64, index=True)
    accession_number: str | None = Field(default=None, max_length=64)
    patient_id: str | None = Field(default=None, max_length=64)
    status: str = Field(max_length=1)
    """P preliminary, F final, C corrected (replaces the final one)."""
    text: str = Field(sa_column=Column(Text, nullable=False))
    text_sha256: str = Field(max_length=64)
    radiologist: str | None = Field(default=None, max_length=128)
    report_time: dt.datetime | None = Field(default=None, sa_column=_ts(nullable=True))
    received_at: dt.datetime = Field(sa_column=_ts())
    source: str = Field(max_length=8)
    """hl7 | api | sr"""
    sender: str | None = Field(default=None, max_length=160)
    """``APP^FACILITY`` (MSH-3, MSH-4) for HL7, the token name for the API, the calling AE for SR."""
    message_control_id: str | None = Field(default=None, max_length=199)
    superseded_by: int | None = Field(default=None, foreign_key="report.id")
    """The later final or corrected report for the same study that replaced this one."""


class ReportRead(SQLModel, table=True):
    """Which documentation verdict a billing client last read, for ``changed_after_read``."""

    __tablename__ = "report_read"
    __table_args__ = (UniqueConstraint("study_instance_uid", "token_name", name="uq_report_read"),)

    id: int | None = Field(default=None, primary_key=True)
    study_instance_uid: str = Field(max_length=64, index=True)
    token_name: str = Field(max_length=64)
    documentation: str = Field(max_length=16)
    read_at: dt.datetime = Field(sa_column=_ts())


# ---------------------------------------------------------------- sessions (issue 13): one patient, one day


class StudySession(SQLModel, table=True):
    """A decided study as its session sees it (``store.sessions``), and the session record computed for it.
    Every study of a session is recomputed whenever one of them is decided, so ``verdict`` can be filtered."""

    __tablename__ = "study_session"

    study_instance_uid: str = Field(primary_key=True, foreign_key="study.study_instance_uid", max_length=64)
    session_id: str | None = Field(default=None, max_length=32, index=True)
    """``ses-`` + 24 hex digits (a keyed hash of Patient ID, Issuer, Study Date); None: the study is alone."""
    accession_number: str | None = Field(default=None, max_length=64)
    outcome: str = Field(max_length=32)
    has_3d: bool = False
    regions: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    regions_from: str = Field(max_length=32)
    made_later: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    carrier_chosen: bool = False
    first_decided_at: dt.datetime = Field(sa_column=_ts())
    verdict: str = Field(max_length=32, index=True)
    record: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    """The ``session`` part of the study's decision (``sessions.SessionRecord``)."""
    updated_at: dt.datetime = Field(sa_column=_ts())


class SessionCarrierChoice(SQLModel, table=True):
    """A coder's choice of the study that carries a session's code (``one_unit``: "the first decided,
    unless a coder review says another"). Every choice is kept; a later one for the same session sets
    ``superseded_by`` on the one it replaces, so the current choice is the one without it."""

    __tablename__ = "session_carrier_choice"

    id: int | None = Field(default=None, primary_key=True)
    session_id: str = Field(max_length=32, index=True)
    study_instance_uid: str = Field(foreign_key="study.study_instance_uid", max_length=64)
    reviewer: str = Field(max_length=128)
    token_name: str = Field(max_length=64)
    reason: str = Field(sa_column=Column(Text, nullable=False))
    chosen_at: dt.datetime = Field(sa_column=_ts())
    superseded_by: int | None = Field(default=None, foreign_key="session_carrier_choice.id")


# ---------------------------------------------------------------- operations (issue 11): evidence returns, sign-outs


class EvidenceReturn(SQLModel, table=True):
    """One decision's evidence KOS and SR waiting to be, or sent, to a PACS (``store.returns``): a durable
    queue that every receiver sharing the index works off, each return claimed by one at a time."""

    __tablename__ = "evidence_return"
    __table_args__ = (
        UniqueConstraint("study_instance_uid", "decision_id", "destination", name="uq_evidence_return"),
        Index("ix_evidence_return_state_next", "state", "next_attempt_at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    study_instance_uid: str = Field(max_length=64)
    decision_id: int = Field(foreign_key="decision.id")
    destination: str = Field(max_length=300)
    """``AE@host:port`` (``evidence.send.PacsDestination``) as configured when the decision was made."""
    state: str = Field(max_length=16)
    """pending | sent | failed | superseded (``store.returns.ReturnState``)."""
    attempts: int = 0
    next_attempt_at: dt.datetime = Field(sa_column=_ts())
    last_error: str | None = Field(default=None, sa_column=Column(Text))
    """The last failed attempt: the error class and a short reason (AE titles, addresses, statuses; no PHI)."""
    created_at: dt.datetime = Field(sa_column=_ts())
    attempts_since: dt.datetime = Field(sa_column=_ts())
    """When this series of attempts began (created, or retried by hand): the maximum age counts from here."""
    sent_at: dt.datetime | None = Field(default=None, sa_column=_ts(nullable=True))
    claimed_by: str | None = Field(default=None, max_length=128)
    claimed_until: dt.datetime | None = Field(default=None, sa_column=_ts(nullable=True))


class EndedPageSession(SQLModel, table=True):
    """A web page session signed out before it expired: a cookie carrying its nonce is refused (a copy of
    the cookie is worth nothing after sign-out). Kept until ``expires_at``, when the cookie is dead anyway."""

    __tablename__ = "ended_page_session"

    nonce: str = Field(primary_key=True, max_length=64)
    expires_at: dt.datetime = Field(sa_column=_ts(index=True))
    ended_at: dt.datetime = Field(sa_column=_ts())
