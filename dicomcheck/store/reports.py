"""Radiology reports in the index (issue 12): kept durably with an audit event in one commit (HL7 is
answered AA only after it), matched to studies when read, the history of every version kept.

Matching happens when a study is read (:meth:`Reports.for_study`), so it is the same whichever came
first, images or report: the Study Instance UID of the report (ZDS-1, the API's path) when it has one,
else its accession number within the same patient ID. A final (F) or corrected (C) report supersedes
the earlier versions of the same study; a preliminary (P) only earlier preliminaries.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, and_, or_, select, update
from sqlmodel import Session, col

from .tables import AuditEvent, Report, Study, utcnow

FINAL_STATUSES = ("F", "C")
MATCHED_BY_STUDY = "study_instance_uid"
MATCHED_BY_ACCESSION = "accession_number"


@dataclass(frozen=True, slots=True)
class ReportRecord:
    id: int
    study_instance_uid: str | None
    accession_number: str | None
    patient_id: str | None
    status: str
    text: str
    text_sha256: str
    radiologist: str | None
    report_time: dt.datetime | None
    received_at: dt.datetime
    source: str
    sender: str | None
    message_control_id: str | None
    superseded_by: int | None

    @property
    def final(self) -> bool:
        return self.status in FINAL_STATUSES


@dataclass(frozen=True, slots=True)
class MatchedReport:
    report: ReportRecord
    matched_by: str
    """``study_instance_uid`` or ``accession_number``."""


@dataclass(frozen=True, slots=True)
class StudyReports:
    """The reports matched to one study, oldest first, and the current one: the newest final or corrected
    report, else the newest preliminary."""

    history: tuple[MatchedReport, ...]

    @property
    def current(self) -> MatchedReport | None:
        finals = [m for m in self.history if m.report.final]
        if finals:
            return finals[-1]
        return self.history[-1] if self.history else None


@dataclass(frozen=True, slots=True)
class NewReport:
    study_instance_uid: str | None
    accession_number: str | None
    patient_id: str | None
    status: str
    text: str
    radiologist: str | None
    report_time: dt.datetime | None
    source: str
    sender: str | None
    message_control_id: str | None = None


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _record(row: Report) -> ReportRecord:
    if row.id is None:
        raise ValueError("report row not flushed")
    return ReportRecord(
        id=row.id,
        study_instance_uid=row.study_instance_uid,
        accession_number=row.accession_number,
        patient_id=row.patient_id,
        status=row.status,
        text=row.text,
        text_sha256=row.text_sha256,
        radiologist=row.radiologist,
        report_time=row.report_time,
        received_at=row.received_at,
        source=row.source,
        sender=row.sender,
        message_control_id=row.message_control_id,
        superseded_by=row.superseded_by,
    )


class Reports:
    """Report writes and reads; ``bind`` is an engine or the one connection of an API request."""

    def __init__(self, bind: Engine | Connection) -> None:
        self.bind = bind

    def add(self, new: NewReport, *, audit: dict[str, Any]) -> tuple[ReportRecord, bool]:
        """Store ``new`` and its audit event (``AuditEvent`` fields but ``at``) in one commit; returns the
        stored report and whether it was a resend already stored (same sender, control ID and text: not
        stored twice)."""
        digest = text_sha256(new.text)
        now = utcnow()
        with Session(self.bind) as session:
            if new.message_control_id is not None:
                same = (
                    session.execute(
                        select(Report).where(
                            col(Report.source) == new.source,
                            col(Report.sender) == new.sender,
                            col(Report.message_control_id) == new.message_control_id,
                            col(Report.text_sha256) == digest,
                        )
                    )
                    .scalars()
                    .first()
                )
                if same is not None:
                    session.add(AuditEvent(at=now, **{**audit, "detail": {**audit.get("detail", {}), "resend": True}}))
                    session.commit()
                    return _record(same), True
            row = Report(
                study_instance_uid=new.study_instance_uid,
                accession_number=new.accession_number,
                patient_id=new.patient_id,
                status=new.status,
                text=new.text,
                text_sha256=digest,
                radiologist=new.radiologist,
                report_time=new.report_time,
                received_at=now,
                source=new.source,
                sender=new.sender,
                message_control_id=new.message_control_id,
            )
            session.add(row)
            session.flush()
            earlier = [m.report.id for m in self._same_study(session, new) if m.report.id != row.id]
            if earlier:
                replaced = col(Report.id).in_(earlier) & col(Report.superseded_by).is_(None)
                if new.status not in FINAL_STATUSES:
                    replaced = replaced & (col(Report.status) == "P")
                session.execute(update(Report).where(replaced).values(superseded_by=row.id))
            session.add(AuditEvent(at=now, **{**audit, "detail": {**audit.get("detail", {}), "report_id": row.id}}))
            session.commit()
            session.refresh(row)
            return _record(row), False

    def _same_study(self, session: Session, new: NewReport) -> tuple[MatchedReport, ...]:
        """The reports already matched to the study ``new`` is for: its study when indexed, else those with
        the same identifiers (they will match the same study when it comes)."""
        study = self._study_of(session, new.study_instance_uid, new.accession_number, new.patient_id)
        if study is not None:
            return self._matched(session, study.study_instance_uid, study.accession_number, study.patient_id)
        if new.study_instance_uid:
            where = col(Report.study_instance_uid) == new.study_instance_uid
        else:
            where = and_(
                col(Report.study_instance_uid).is_(None),
                col(Report.accession_number) == new.accession_number,
                col(Report.patient_id) == new.patient_id,
            )
        rows = session.execute(select(Report).where(where).order_by(col(Report.id))).scalars()
        return tuple(MatchedReport(_record(r), MATCHED_BY_STUDY) for r in rows)

    @staticmethod
    def _study_of(
        session: Session, study_uid: str | None, accession: str | None, patient_id: str | None
    ) -> Study | None:
        if study_uid:
            return session.get(Study, study_uid)
        if accession and patient_id:
            return (
                session.execute(
                    select(Study).where(col(Study.accession_number) == accession, col(Study.patient_id) == patient_id)
                )
                .scalars()
                .first()
            )
        return None

    def control_ids(self, source: str, study_uid: str) -> set[str]:
        """The message control IDs of the reports from ``source`` for ``study_uid`` (SR: instance keys read)."""
        with Session(self.bind) as session:
            return {
                c
                for c in session.execute(
                    select(col(Report.message_control_id)).where(
                        col(Report.source) == source, col(Report.study_instance_uid) == study_uid
                    )
                ).scalars()
                if c is not None
            }

    def patient_mismatch(self, study_uid: str | None, accession: str | None, patient_id: str | None) -> bool:
        """Whether the report names an indexed study (by UID, or an accession number) whose patient ID is
        not the report's: it can never match, and is answered AE."""
        if not patient_id:
            return False
        with Session(self.bind) as session:
            if study_uid:
                study = session.get(Study, study_uid)
                return study is not None and study.patient_id != patient_id
            if not accession:
                return False
            patients = set(
                session.execute(select(col(Study.patient_id)).where(col(Study.accession_number) == accession)).scalars()
            )
            return bool(patients) and patient_id not in patients

    def for_study(self, study_uid: str, accession: str | None, patient_id: str | None) -> StudyReports:
        """The reports matched to the study, oldest first (see the module docstring)."""
        with Session(self.bind) as session:
            return StudyReports(self._matched(session, study_uid, accession, patient_id))

    @staticmethod
    def _matched(
        session: Session, study_uid: str, accession: str | None, patient_id: str | None
    ) -> tuple[MatchedReport, ...]:
        by_uid = and_(
            col(Report.study_instance_uid) == study_uid,
            or_(col(Report.patient_id).is_(None), col(Report.patient_id) == patient_id),
        )
        clauses = [by_uid]
        if accession and patient_id:
            clauses.append(
                and_(
                    col(Report.study_instance_uid).is_(None),
                    col(Report.accession_number) == accession,
                    col(Report.patient_id) == patient_id,
                )
            )
        rows = session.execute(select(Report).where(or_(*clauses)).order_by(col(Report.id))).scalars()
        return tuple(
            MatchedReport(_record(r), MATCHED_BY_STUDY if r.study_instance_uid else MATCHED_BY_ACCESSION) for r in rows
        )
