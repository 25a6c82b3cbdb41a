"""The read facade of the index: every lookup the API, the exports and the evidence packs need, each
one method named for what it returns, as typed records (``store.records``).

An :class:`IndexReader` works on an engine (a connection per call) or on one connection
(:meth:`IndexSession.open`): an API request does all its reads and writes on one checked-out
connection instead of one per lookup.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from sqlalchemy import Connection, Engine, and_, exists, func, or_, select, text
from sqlmodel import Session, col

from .access import Access
from .records import (
    DecisionRecord,
    ExportRecord,
    InstanceRecord,
    ReceiptRecord,
    ReviewRecord,
    StudyFilters,
    StudyListItem,
    StudyPage,
    StudyPosition,
    StudyRecord,
    from_row,
)
from .tables import Decision, Instance, Receipt, Review, Series, Study, StudyRead


def index_reachable(engine: Engine) -> bool:
    """Whether the index answers a trivial query now (``/healthz``)."""
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        return True
    except Exception:  # noqa: BLE001 - any failure means unreachable
        return False


class IndexReader:
    """Typed reads of the index; ``bind`` is an engine or one connection shared by a unit of work."""

    def __init__(self, bind: Engine | Connection) -> None:
        self.bind = bind

    @classmethod
    @contextmanager
    def open(cls, engine: Engine) -> Iterator[IndexReader]:
        """A reader on one connection, for several lookups in a row."""
        with engine.connect() as connection:
            yield cls(connection)

    # ---------------------------------------------------------------- studies and decisions
    def study(self, study_uid: str) -> StudyRecord | None:
        with Session(self.bind) as session:
            row = session.get(Study, study_uid)
            return from_row(StudyRecord, row) if row is not None else None

    def decision(self, decision_id: int) -> DecisionRecord | None:
        with Session(self.bind) as session:
            row = session.get(Decision, decision_id)
            return from_row(DecisionRecord, row) if row is not None else None

    def decision_history(self, study_uid: str) -> list[DecisionRecord]:
        """Every decision of the study, oldest first."""
        with Session(self.bind) as session:
            rows = session.execute(
                select(Decision).where(col(Decision.study_instance_uid) == study_uid).order_by(col(Decision.id))
            ).scalars()
            return [from_row(DecisionRecord, r) for r in rows]

    def find_studies(self, filters: StudyFilters, *, after: StudyPosition | None, limit: int) -> StudyPage:
        """Studies matching ``filters``, newest first arrival first, from just after ``after``."""
        query = select(Study, col(Decision.outcome), col(Decision.code)).outerjoin(
            Decision, col(Decision.id) == col(Study.current_decision_id)
        )
        if filters.accession:
            query = query.where(col(Study.accession_number) == filters.accession)
        if filters.patient_id:
            query = query.where(col(Study.patient_id) == filters.patient_id)
        if filters.outcome:
            query = query.where(col(Decision.outcome) == filters.outcome)
        if filters.modality:
            query = query.where(
                col(Study.study_instance_uid).in_(
                    select(col(Series.study_instance_uid)).where(col(Series.modality) == filters.modality)
                )
            )
        if filters.received_from:
            query = query.where(col(Study.last_arrival) >= filters.received_from)
        if filters.received_to:
            query = query.where(col(Study.first_arrival) <= filters.received_to)
        if filters.scope_studies is not None or filters.scope_accessions is not None:
            query = query.where(
                or_(
                    col(Study.study_instance_uid).in_(filters.scope_studies or ("",)),
                    col(Study.accession_number).in_(filters.scope_accessions or ("",)),
                )
            )
        if after is not None:
            query = query.where(
                or_(
                    col(Study.first_arrival) < after.first_arrival,
                    and_(
                        col(Study.first_arrival) == after.first_arrival,
                        col(Study.study_instance_uid) < after.study_instance_uid,
                    ),
                )
            )
        query = query.order_by(col(Study.first_arrival).desc(), col(Study.study_instance_uid).desc()).limit(limit + 1)
        with Session(self.bind) as session:
            rows = session.execute(query).all()
            items = tuple(StudyListItem(from_row(StudyRecord, s), outcome, code) for s, outcome, code in rows[:limit])
        next_after = None
        if len(rows) > limit:
            last = items[-1].study
            next_after = StudyPosition(last.first_arrival, last.study_instance_uid)
        return StudyPage(items, next_after)

    def studies_using_equipment(
        self,
        *,
        station_name: str | None = None,
        device_serial_number: str | None = None,
        ae_title: str | None = None,
        manufacturer: str | None = None,
        model: str | None = None,
    ) -> list[str]:
        """UIDs (sorted) of the studies with a series from equipment a registry entry with these fields matches."""
        clauses = []
        if station_name:
            clauses.append(col(Series.station_name) == station_name)
        if device_serial_number:
            clauses.append(col(Series.device_serial_number) == device_serial_number)
        if ae_title:
            clauses.append(col(Series.calling_ae) == ae_title)
        if manufacturer and model:
            clauses.append(and_(col(Series.manufacturer) == manufacturer, col(Series.model) == model))
        if not clauses:
            return []
        with Session(self.bind) as session:
            return sorted(set(session.execute(select(col(Series.study_instance_uid)).where(or_(*clauses))).scalars()))

    # ---------------------------------------------------------------- exports
    def decisions_for_export(
        self, *, decided_from: dt.datetime | None, decided_to: dt.datetime | None, outcome: str | None, limit: int
    ) -> list[ExportRecord]:
        """Current decisions in order of decision time, each with its study, latest review and read state
        (one query)."""
        latest_review = (
            select(func.max(col(Review.id)))
            .where(col(Review.study_instance_uid) == col(Study.study_instance_uid))
            .correlate(Study)
            .scalar_subquery()
        )
        read_earlier = exists().where(
            col(StudyRead.study_instance_uid) == col(Study.study_instance_uid),
            or_(col(StudyRead.decision_id).is_(None), col(StudyRead.decision_id) != col(Decision.id)),
        )
        query = (
            select(Study, Decision, Review, read_earlier)
            .join(Decision, col(Decision.id) == col(Study.current_decision_id))
            .outerjoin(Review, col(Review.id) == latest_review)
        )
        if decided_from:
            query = query.where(col(Decision.decided_at) >= decided_from)
        if decided_to:
            query = query.where(col(Decision.decided_at) <= decided_to)
        if outcome:
            query = query.where(col(Decision.outcome) == outcome)
        with Session(self.bind) as session:
            rows = session.execute(
                query.order_by(col(Decision.decided_at), col(Study.study_instance_uid)).limit(limit)
            ).all()
            return [
                ExportRecord(
                    from_row(StudyRecord, study),
                    from_row(DecisionRecord, decision),
                    from_row(ReviewRecord, review) if review is not None else None,
                    bool(changed),
                )
                for study, decision, review, changed in rows
            ]

    # ---------------------------------------------------------------- instances (evidence packs)
    def instances_of_study(self, study_uid: str) -> list[InstanceRecord]:
        """Every stored content version of the study's instances, by series then arrival."""
        with Session(self.bind) as session:
            rows = session.execute(
                select(Instance)
                .where(col(Instance.study_instance_uid) == study_uid)
                .order_by(col(Instance.series_instance_uid), col(Instance.id))
            ).scalars()
            return [from_row(InstanceRecord, r) for r in rows]

    def receipts_of_instances(self, instance_ids: Sequence[int]) -> dict[int, list[ReceiptRecord]]:
        """Instance id -> every arrival of that content version, in order."""
        found: dict[int, list[ReceiptRecord]] = {i: [] for i in instance_ids}
        if not instance_ids:
            return found
        with Session(self.bind) as session:
            rows = session.execute(
                select(Receipt).where(col(Receipt.instance_id).in_(list(instance_ids))).order_by(col(Receipt.id))
            ).scalars()
            for r in rows:
                found[r.instance_id].append(from_row(ReceiptRecord, r))
        return found


@dataclass(frozen=True, slots=True)
class IndexSession:
    """One connection for a unit of work (an API request): its reads and the API's writes share it."""

    reader: IndexReader
    access: Access

    @classmethod
    @contextmanager
    def open(cls, engine: Engine) -> Iterator[IndexSession]:
        with engine.connect() as connection:
            yield cls(IndexReader(connection), Access(connection))
