"""Typed records the index hands out: plain frozen values, never ORM objects that outlive their session.

Everything outside ``dicomcheck.store`` reads the index through these (``store.reads.IndexReader``,
``store.access.Access``), so no caller depends on a lazy attribute or an expired row.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, fields
from functools import cache
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

Record = TypeVar("Record", bound="DataclassInstance")


@dataclass(frozen=True, slots=True)
class StudyRecord:
    study_instance_uid: str
    accession_number: str | None
    patient_id: str | None
    study_date: str | None
    study_description: str | None
    modalities: str | None
    instance_count: int
    first_arrival: dt.datetime
    last_arrival: dt.datetime
    needs_decision: bool
    current_decision_id: int | None
    decided_at: dt.datetime | None

    @property
    def status(self) -> str:
        """``decided`` when a decision has seen every instance, else ``pending``."""
        return "decided" if self.current_decision_id and not self.needs_decision else "pending"


@dataclass(frozen=True, slots=True)
class DecisionRecord:
    id: int
    study_instance_uid: str
    decided_at: dt.datetime
    node: str
    rules_version: str
    dicomcheck_version: str
    outcome: str
    code: str | None
    instance_count: int
    registry_path: str | None
    document: dict[str, Any]
    """The study as ``analyze --format json`` prints it."""


@dataclass(frozen=True, slots=True)
class EarlierRead:
    """What a client had read of a study before this read: its read record (None: its first read) and the
    documentation verdict it was shown then (None: none recorded)."""

    study_read: StudyReadRecord | None
    documentation: str | None


@dataclass(frozen=True, slots=True)
class StudyForRead:
    """What one read of a study shows, from one query: the study, its current decision (None while it has
    none), its latest coder review and its session record as stored (issue 13; None before its first
    decision); with ``earlier``, what the reading client had read of it before (``IndexReader.study_for_read``
    given the client's token name; None when it was not), so recording this read needs no read of its own."""

    study: StudyRecord
    decision: DecisionRecord | None
    latest_review: ReviewRecord | None
    session: dict[str, Any] | None
    earlier: EarlierRead | None = None


@dataclass(frozen=True, slots=True)
class StudyListItem:
    """A study with the outcome and code of its current decision (None while it has none)."""

    study: StudyRecord
    outcome: str | None
    code: str | None


@dataclass(frozen=True, slots=True)
class StudyFilters:
    """What ``find_studies`` selects; ``scope_*`` restrict an auditor to its studies / accessions."""

    accession: str | None = None
    patient_id: str | None = None
    outcome: str | None = None
    modality: str | None = None
    received_from: dt.datetime | None = None
    received_to: dt.datetime | None = None
    scope_studies: tuple[str, ...] | None = None
    scope_accessions: tuple[str, ...] | None = None
    session_verdict: str | None = None
    """Only studies whose session verdict (issue 13, ``store.sessions``) is this."""


@dataclass(frozen=True, slots=True)
class StudyPosition:
    """Where a page ends in the newest-first order (first arrival, then UID): stable under inserts."""

    first_arrival: dt.datetime
    study_instance_uid: str


@dataclass(frozen=True, slots=True)
class StudyPage:
    items: tuple[StudyListItem, ...]
    next_after: StudyPosition | None
    """The position to continue after; None on the last page."""


@dataclass(frozen=True, slots=True)
class ReviewRecord:
    id: int
    study_instance_uid: str
    decision_id: int | None
    outcome: str
    code: str | None
    reviewer: str
    token_name: str
    reason: str
    created_at: dt.datetime
    stale_since: dt.datetime | None


@dataclass(frozen=True, slots=True)
class StudyReadRecord:
    study_instance_uid: str
    token_name: str
    decision_id: int | None
    read_at: dt.datetime


@dataclass(frozen=True, slots=True)
class ExportRecord:
    """One current decision as billing offices export it, with its latest review and read state."""

    study: StudyRecord
    decision: DecisionRecord
    latest_review: ReviewRecord | None
    changed_after_read: bool
    """Some client read an earlier decision of this study."""


@dataclass(frozen=True, slots=True)
class ReceiptRecord:
    received_at: dt.datetime
    calling_ae: str | None
    called_ae: str | None
    peer_address: str | None
    transfer_syntax_uid: str | None
    implementation_class_uid: str | None
    implementation_version_name: str | None
    duplicate: bool


@dataclass(frozen=True, slots=True)
class InstanceRecord:
    """One stored content version of an instance, with the header facts kept for it."""

    id: int
    sop_instance_uid: str
    version: int
    study_instance_uid: str
    series_instance_uid: str
    sop_class_uid: str | None
    sha256: str
    path: str
    """Relative to the storage folder."""
    received_at: dt.datetime
    facts: dict[str, Any]


@dataclass(frozen=True, slots=True)
class TokenRecord:
    """A token as listed (never the token itself: only its hash is kept)."""

    name: str
    role: str
    prefix: str
    created_at: dt.datetime
    expires_at: dt.datetime | None
    revoked_at: dt.datetime | None
    last_used_at: dt.datetime | None
    studies: tuple[str, ...]
    accessions: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class AuditRecord:
    id: int
    at: dt.datetime
    event: str
    action: str
    outcome: int
    token_name: str | None
    role: str | None
    method: str
    endpoint: str
    study_instance_uid: str | None
    client_address: str | None
    detail: dict[str, Any]


@dataclass(frozen=True, slots=True)
class DeviceRecord:
    id: int
    station_name: str | None
    ae_title: str | None
    device_serial_number: str | None
    manufacturer: str | None
    model: str | None
    role: str
    note: str | None
    valid_from: dt.date | None
    valid_to: dt.date | None
    created_at: dt.datetime
    updated_at: dt.datetime


def from_columns(record_type: type[Record], row: Any, start: int = 0) -> Record:
    """``record_type`` from the ``len(fields)`` values of a Core result ``row`` from position ``start`` on, in
    the order of the record's fields (the statements of ``store.reads`` / ``store.access`` select them so)."""
    return record_type(*row[start : start + _width(record_type)])


@cache
def _width(record_type: type) -> int:
    """How many fields ``record_type`` has (``dataclasses.fields`` builds a tuple on every call: 0.4 ms of
    a 50-row list page)."""
    return len(fields(record_type))


def from_row(record_type: type[Record], row: Any) -> Record:
    """``record_type`` filled from the same-named attributes of ``row`` (an ORM row, inside its session)."""
    values = {field.name: getattr(row, field.name) for field in fields(record_type)}
    for name in ("studies", "accessions"):
        if name in values:
            values[name] = tuple(values[name] or ())
    return record_type(**values)
