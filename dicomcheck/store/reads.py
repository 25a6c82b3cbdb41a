"""The read facade of the index: every lookup the API, the exports and the evidence packs need, each
one method named for what it returns, as typed records (``store.records``).

An :class:`IndexReader` works on an engine (a connection per call) or on one connection
(:meth:`IndexSession.open`): an API request does all its reads and writes on one checked-out
connection instead of one per lookup.
"""

from __future__ import annotations

import datetime as dt
import threading
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from sqlalchemy import Connection, Engine, Select, and_, bindparam, case, event, exists, func, or_, select, text
from sqlmodel import Session, col

from ..enums import Outcome
from .access import AUTOCOMMIT, Access, columns_for, read_rows, table_of, transaction_on
from .records import (
    DecisionRecord,
    EarlierRead,
    ExportRecord,
    InstanceRecord,
    ReceiptRecord,
    ReviewRecord,
    StudyFilters,
    StudyForRead,
    StudyListItem,
    StudyPage,
    StudyPosition,
    StudyReadRecord,
    StudyRecord,
    from_columns,
    from_row,
)
from .retention import FULL, HEADER_ONLY, QuarantineRow, RetentionInstance
from .tables import (
    Association,
    Decision,
    Instance,
    Quarantined,
    Receipt,
    ReportRead,
    Review,
    Series,
    Study,
    StudyRead,
    StudySession,
)

_STUDY = table_of(Study)
_DECISION = table_of(Decision)
_REVIEW = table_of(Review)
_STUDY_SESSION = table_of(StudySession)
_SERIES = table_of(Series)
_STUDY_COLUMNS = columns_for(_STUDY, StudyRecord)
_DECISION_COLUMNS = columns_for(_DECISION, DecisionRecord)
_REVIEW_COLUMNS = columns_for(_REVIEW, ReviewRecord)
_DECISION_BY_ID = select(*_DECISION_COLUMNS).where(_DECISION.c.id == bindparam("id"))
_STUDY_BY_UID = select(*_STUDY_COLUMNS).where(_STUDY.c.study_instance_uid == bindparam("uid"))
_LATEST_REVIEW_ID = (
    select(func.max(_REVIEW.c.id))
    .where(_REVIEW.c.study_instance_uid == _STUDY.c.study_instance_uid)
    .correlate(_STUDY)
    .scalar_subquery()
)
_STUDY_READ = table_of(StudyRead)
_REPORT_READ = table_of(ReportRead)
_STUDY_READ_COLUMNS = columns_for(_STUDY_READ, StudyReadRecord)
_STUDY_FOR_READ = (
    select(
        *_STUDY_COLUMNS,
        *_DECISION_COLUMNS,
        *_REVIEW_COLUMNS,
        _STUDY_SESSION.c.record,
        _STUDY_READ.c.id,
        *_STUDY_READ_COLUMNS,
        _REPORT_READ.c.documentation,
    )
    .select_from(
        _STUDY.outerjoin(_DECISION, _DECISION.c.id == _STUDY.c.current_decision_id)
        .outerjoin(_REVIEW, _REVIEW.c.id == _LATEST_REVIEW_ID)
        .outerjoin(_STUDY_SESSION, _STUDY_SESSION.c.study_instance_uid == _STUDY.c.study_instance_uid)
        .outerjoin(
            _STUDY_READ,
            and_(
                _STUDY_READ.c.study_instance_uid == _STUDY.c.study_instance_uid,
                _STUDY_READ.c.token_name == bindparam("reader"),
            ),
        )
        .outerjoin(
            _REPORT_READ,
            and_(
                _REPORT_READ.c.study_instance_uid == _STUDY.c.study_instance_uid,
                _REPORT_READ.c.token_name == bindparam("reader"),
            ),
        )
    )
    .where(_STUDY.c.study_instance_uid == bindparam("uid"))
)
"""The study, its current decision, its latest review, its session record and what the reading client (token
name ``reader``; NULL: none) last read of it (``uq_study_read``, ``uq_report_read``): one statement, built once
(its compiled form is cached), instead of four ORM lookups and the reads the write of this read would need."""


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
        rows = read_rows(self.bind, _STUDY_BY_UID, {"uid": study_uid})
        return from_columns(StudyRecord, rows[0]) if rows else None

    def study_for_read(self, study_uid: str, *, reader: str | None = None) -> StudyForRead | None:
        """The study with its current decision, latest coder review and session record, and, given the reading
        client's token name (``reader``), what that client last read of it (``StudyForRead.earlier``, for
        ``Access.record_read``): one query; None when the study was never received."""
        rows = read_rows(self.bind, _STUDY_FOR_READ, {"uid": study_uid, "reader": reader})
        if not rows:
            return None
        row = rows[0]
        decision_at = len(_STUDY_COLUMNS)
        review_at = decision_at + len(_DECISION_COLUMNS)
        session_at = review_at + len(_REVIEW_COLUMNS)
        read_at = session_at + 2  # after the session record and the study_read row's id
        earlier = None
        if reader is not None:
            study_read = from_columns(StudyReadRecord, row, read_at) if row[session_at + 1] is not None else None
            earlier = EarlierRead(study_read, row[-1])
        return StudyForRead(
            study=from_columns(StudyRecord, row),
            decision=from_columns(DecisionRecord, row, decision_at) if row[decision_at] is not None else None,
            latest_review=from_columns(ReviewRecord, row, review_at) if row[review_at] is not None else None,
            session=row[session_at],
            earlier=earlier,
        )

    def decision(self, decision_id: int) -> DecisionRecord | None:
        rows = read_rows(self.bind, _DECISION_BY_ID, {"id": decision_id})
        return from_columns(DecisionRecord, rows[0]) if rows else None

    def decision_history(self, study_uid: str) -> list[DecisionRecord]:
        """Every decision of the study, oldest first."""
        with Session(self.bind) as session:
            rows = session.execute(
                select(Decision).where(col(Decision.study_instance_uid) == study_uid).order_by(col(Decision.id))
            ).scalars()
            return [from_row(DecisionRecord, r) for r in rows]

    def find_studies(self, filters: StudyFilters, *, after: StudyPosition | None, limit: int) -> StudyPage:
        """Studies matching ``filters``, newest first arrival first, from just after ``after`` (Core rows: no ORM
        object per study)."""
        query = select(*_STUDY_COLUMNS, _DECISION.c.outcome, _DECISION.c.code).outerjoin(
            _DECISION, _DECISION.c.id == _STUDY.c.current_decision_id
        )
        if filters.accession:
            query = query.where(_STUDY.c.accession_number == filters.accession)
        if filters.patient_id:
            query = query.where(_STUDY.c.patient_id == filters.patient_id)
        if filters.outcome:
            query = query.where(_DECISION.c.outcome == filters.outcome)
        if filters.modality:
            query = query.where(
                _STUDY.c.study_instance_uid.in_(
                    select(_SERIES.c.study_instance_uid).where(_SERIES.c.modality == filters.modality)
                )
            )
        if filters.session_verdict:  # sessions (issue 13)
            query = query.where(
                _STUDY.c.study_instance_uid.in_(
                    select(_STUDY_SESSION.c.study_instance_uid).where(
                        _STUDY_SESSION.c.verdict == filters.session_verdict
                    )
                )
            )
        if filters.received_from:
            query = query.where(_STUDY.c.last_arrival >= filters.received_from)
        if filters.received_to:
            query = query.where(_STUDY.c.first_arrival <= filters.received_to)
        if filters.scope_studies is not None or filters.scope_accessions is not None:
            query = query.where(
                or_(
                    _STUDY.c.study_instance_uid.in_(filters.scope_studies or ("",)),
                    _STUDY.c.accession_number.in_(filters.scope_accessions or ("",)),
                )
            )
        if after is not None:
            query = query.where(
                or_(
                    _STUDY.c.first_arrival < after.first_arrival,
                    and_(
                        _STUDY.c.first_arrival == after.first_arrival,
                        _STUDY.c.study_instance_uid < after.study_instance_uid,
                    ),
                )
            )
        query = query.order_by(_STUDY.c.first_arrival.desc(), _STUDY.c.study_instance_uid.desc()).limit(limit + 1)
        rows = read_rows(self.bind, query, {})
        width = len(_STUDY_COLUMNS)
        items = tuple(StudyListItem(from_columns(StudyRecord, row), row[width], row[width + 1]) for row in rows[:limit])
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

    # ---------------------------------------------------------------- pixel retention (store.retention)
    @staticmethod
    def _not_pruned_since_decided() -> Any:
        """Decided studies retention has not gone over since their current decision."""
        return and_(
            col(Study.needs_decision).is_(False),
            col(Study.current_decision_id).is_not(None),
            col(Study.decided_at).is_not(None),
            or_(col(Study.retention_applied_at).is_(None), col(Study.retention_applied_at) < col(Study.decided_at)),
        )

    def studies_due_for_retention(self, decided_before: dt.datetime, *, limit: int) -> list[str]:
        """Studies whose current decision (which saw every instance) is older than ``decided_before`` and
        that retention has not gone over since, oldest decision first."""
        with Session(self.bind) as session:
            return list(
                session.execute(
                    select(col(Study.study_instance_uid))
                    .where(self._not_pruned_since_decided(), col(Study.decided_at) <= decided_before)
                    .order_by(col(Study.decided_at), col(Study.study_instance_uid))
                    .limit(limit)
                ).scalars()
            )

    def oldest_unpruned_decision(self) -> dt.datetime | None:
        """The current decision time of the oldest decided study retention has not gone over yet."""
        with Session(self.bind) as session:
            oldest: dt.datetime | None = session.execute(
                select(func.min(col(Study.decided_at))).where(self._not_pruned_since_decided())
            ).scalar_one_or_none()
            return oldest

    def retention_instances(self, study_uid: str) -> list[RetentionInstance]:
        """Every stored content version of the study with its pixel state, in arrival order."""
        with Session(self.bind) as session:
            rows = session.execute(
                select(Instance).where(col(Instance.study_instance_uid) == study_uid).order_by(col(Instance.id))
            ).scalars()
            return [from_row(RetentionInstance, r) for r in rows]

    def stored_bytes_by_pixel_state(self) -> dict[str, int]:
        """Bytes of the stored instances: ``full`` (received files) and ``header_only`` (their header copies)."""
        with Session(self.bind) as session:
            full = session.execute(
                select(func.coalesce(func.sum(col(Instance.size)), 0)).where(col(Instance.pixel_state) == FULL)
            ).scalar_one()
            header = session.execute(
                select(func.coalesce(func.sum(col(Instance.header_size)), 0)).where(
                    col(Instance.pixel_state) == HEADER_ONLY
                )
            ).scalar_one()
            return {FULL: int(full), HEADER_ONLY: int(header)}

    def quarantine_rows(self, paths: Sequence[str]) -> dict[str, QuarantineRow]:
        """Quarantine path (relative to ``quarantine/``) -> its index row, for the paths that have one."""
        if not paths:
            return {}
        with Session(self.bind) as session:
            rows = session.execute(select(Quarantined).where(col(Quarantined.path).in_(list(paths)))).scalars()
            return {r.path: from_row(QuarantineRow, r) for r in rows}

    # ---------------------------------------------------------------- web pages (dicomcheck.ui)
    def review_queue(self, filters: QueueFilters, *, limit: int) -> list[StudyWithDecision]:
        """Studies whose current decision is ``needs_review`` and that no current (not stale) coder review
        settles, oldest first arrival first."""
        query = awaiting_review(select(Study, Decision))
        for column, value in ((Series.station_name, filters.station), (Series.modality, filters.modality)):
            if value:
                query = query.where(
                    col(Study.study_instance_uid).in_(
                        select(col(Series.study_instance_uid)).where(col(column) == value)
                    )
                )
        if filters.received_from:
            query = query.where(col(Study.first_arrival) >= filters.received_from)
        if filters.received_before:
            query = query.where(col(Study.first_arrival) < filters.received_before)
        if filters.scope_studies is not None or filters.scope_accessions is not None:
            query = query.where(
                or_(
                    col(Study.study_instance_uid).in_(filters.scope_studies or ("",)),
                    col(Study.accession_number).in_(filters.scope_accessions or ("",)),
                )
            )
        query = query.order_by(col(Study.first_arrival), col(Study.study_instance_uid)).limit(limit)
        with Session(self.bind) as session:
            return [
                StudyWithDecision(from_row(StudyRecord, s), from_row(DecisionRecord, d))
                for s, d in session.execute(query).all()
            ]

    def current_decisions(self) -> list[StudyWithDecision]:
        """Every study with a current decision, oldest first arrival first (inventory and dashboard)."""
        query = (
            select(Study, Decision)
            .join(Decision, col(Decision.id) == col(Study.current_decision_id))
            .order_by(col(Study.first_arrival), col(Study.study_instance_uid))
        )
        with Session(self.bind) as session:
            return [
                StudyWithDecision(from_row(StudyRecord, s), from_row(DecisionRecord, d))
                for s, d in session.execute(query).all()
            ]

    def reviewed_studies(self) -> set[str]:
        """UIDs of the studies a current (not stale) coder review settles."""
        with Session(self.bind) as session:
            return set(
                session.execute(
                    select(col(Review.study_instance_uid)).where(col(Review.stale_since).is_(None)).distinct()
                ).scalars()
            )

    def pending_studies(self) -> int:
        """Studies waiting for a decision that has seen every instance."""
        with Session(self.bind) as session:
            return int(
                session.execute(select(func.count()).select_from(Study).where(col(Study.needs_decision))).scalar_one()
            )

    def series_equipment(self) -> list[SeriesEquipment]:
        """Every series as indexed, with its first and last arrival and the Secondary Capture device of its
        first stored instance (the equipment inventory)."""
        spans = (
            select(
                col(Instance.series_instance_uid).label("series_uid"),
                func.min(col(Instance.id)).label("first_id"),
                func.min(col(Instance.received_at)).label("first_seen"),
                func.max(col(Instance.received_at)).label("last_seen"),
            )
            .group_by(col(Instance.series_instance_uid))
            .subquery()
        )
        query = (
            select(Series, spans.c.first_seen, spans.c.last_seen, col(Instance.facts))
            .join(spans, spans.c.series_uid == col(Series.series_instance_uid))
            .join(Instance, col(Instance.id) == spans.c.first_id)
            .order_by(col(Series.study_instance_uid), col(Series.series_instance_uid))
        )
        with Session(self.bind) as session:
            return [
                SeriesEquipment(
                    series_instance_uid=s.series_instance_uid,
                    study_instance_uid=s.study_instance_uid,
                    modality=s.modality,
                    series_number=s.series_number,
                    series_description=s.series_description,
                    station_name=s.station_name,
                    device_serial_number=s.device_serial_number,
                    manufacturer=s.manufacturer,
                    model=s.model,
                    calling_ae=s.calling_ae,
                    instance_count=s.instance_count,
                    sc_manufacturer=(facts or {}).get("sc_manufacturer"),
                    sc_model=(facts or {}).get("sc_model"),
                    first_seen=first,  # min / max keep the column's type: aware UTC on every dialect
                    last_seen=last,
                )
                for s, first, last, facts in session.execute(query).all()
            ]

    def study_deliveries(self, study_uid: str) -> list[Delivery]:
        """How the study's instances arrived: one row per association (and sender), in order of arrival."""
        query = (
            select(
                col(Receipt.association_id),
                col(Receipt.calling_ae),
                col(Receipt.called_ae),
                col(Receipt.peer_address),
                col(Association.tls),
                func.count(),
                func.sum(case((col(Receipt.duplicate), 1), else_=0)),
                func.min(col(Receipt.received_at)),
                func.max(col(Receipt.received_at)),
            )
            .join(Instance, col(Instance.id) == col(Receipt.instance_id))
            .outerjoin(Association, col(Association.id) == col(Receipt.association_id))
            .where(col(Instance.study_instance_uid) == study_uid)
            .group_by(
                col(Receipt.association_id),
                col(Receipt.calling_ae),
                col(Receipt.called_ae),
                col(Receipt.peer_address),
                col(Association.tls),
            )
            .order_by(func.min(col(Receipt.received_at)))
        )
        with Session(self.bind) as session:
            return [
                Delivery(
                    association_id=a,
                    calling_ae=calling,
                    called_ae=called,
                    peer_address=peer,
                    tls=bool(tls),
                    receipts=int(count),
                    duplicates=int(dups or 0),
                    first=first,
                    last=last,
                )
                for a, calling, called, peer, tls, count, dups, first, last in session.execute(query).all()
            ]

    def quarantined(self, *, limit: int) -> tuple[int, list[QuarantineEntry]]:
        """How many inputs were quarantined, and the newest ``limit`` with the association they came on."""
        query = (
            select(Quarantined, col(Association.calling_ae), col(Association.peer_address))
            .outerjoin(Association, col(Association.id) == col(Quarantined.association_id))
            .order_by(col(Quarantined.id).desc())
            .limit(limit)
        )
        with Session(self.bind) as session:
            total = int(session.execute(select(func.count()).select_from(Quarantined)).scalar_one())
            return total, [
                QuarantineEntry(
                    received_at=q.received_at,
                    reason=q.reason,
                    status=q.status,
                    sop_class_uid=q.sop_class_uid,
                    sop_instance_uid=q.sop_instance_uid,
                    calling_ae=calling,
                    peer_address=peer,
                    expired=q.expired_at is not None,
                )
                for q, calling, peer in session.execute(query).all()
            ]


class ThreadConnections:
    """One connection per engine and thread, kept open between uses, outside the pool's traffic.

    For the event loop's thread (SQLite lookups: ``api.deps.run_lookup``): checking a connection out of the pool
    there could wait, with the whole loop, for connections that other requests' threads hold and give back only
    through the loop (FastAPI ends their yield dependencies from it): a stall until the pool's timeout. The
    loop runs its lookups one at a time, so one connection of its own is all it needs, taken once. The
    connections are closed when the engine is disposed; a closed or invalidated one is replaced."""

    _lock: ClassVar[threading.Lock] = threading.Lock()
    _held: ClassVar[weakref.WeakKeyDictionary[Engine, dict[int, Connection]]] = weakref.WeakKeyDictionary()

    @classmethod
    def of(cls, engine: Engine) -> Connection:
        """The calling thread's connection to ``engine`` (checked out of the pool on its first use only)."""
        thread = threading.get_ident()
        with cls._lock:
            held = cls._held.get(engine)
            if held is None:
                held = cls._held[engine] = {}
                event.listen(engine, "engine_disposed", cls._close_all)
            connection = held.get(thread)
            if connection is not None and not connection.closed and not connection.invalidated:
                return connection
        connection = engine.connect()
        with cls._lock:
            cls._held.setdefault(engine, {})[thread] = connection
        return connection

    @classmethod
    def _close_all(cls, engine: Engine) -> None:
        with cls._lock:
            held = cls._held.pop(engine, {})
        for connection in held.values():
            connection.close()


@dataclass(frozen=True, slots=True)
class IndexSession:
    """One connection for a unit of work (an API request): its reads and the API's writes share it."""

    reader: IndexReader
    access: Access

    @classmethod
    @contextmanager
    def open(cls, engine: Engine, *, autocommit_reads: bool = False) -> Iterator[IndexSession]:
        """``autocommit_reads`` (a PostgreSQL lookup's session): every read is one round trip, without the BEGIN
        and ROLLBACK around it, and one-statement writes commit themselves (``access.commit_writes``); several
        writes together still get a real transaction (``access.transaction_on``)."""
        with engine.connect() as connection:
            if autocommit_reads and engine.dialect.name == "postgresql":
                connection.execution_options(isolation_level=AUTOCOMMIT)
            yield cls(IndexReader(connection), Access(connection))

    @classmethod
    @contextmanager
    def on_this_thread(cls, engine: Engine, *, defer_writes: bool = False) -> Iterator[IndexSession]:
        """:meth:`open` on the calling thread's own connection (:class:`ThreadConnections`), never waiting for
        the pool; left without an open transaction after the block (a read snapshot held on would keep SQLite
        from checkpointing its WAL). ``defer_writes`` (a SQLite lookup on the event loop): the audit event and
        read records are kept (``Access.take_deferred``) for the one group commit the lookup awaits before it
        answers."""
        connection = ThreadConnections.of(engine)
        try:
            yield cls(IndexReader(connection), Access(connection, defer_writes=defer_writes))
        finally:
            if not connection.closed and connection.in_transaction():
                connection.rollback()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """The writes inside share one transaction and one COMMIT, at the end of the block (a review, its
        study's session recomputed and its audit event: all durable, or none). The store methods' own
        ``commit`` calls inside join it without committing (SQLAlchemy's ``conservative_savepoint`` joining of
        an outer transaction; ``access.commit_writes`` joins it too); an exception rolls all of it back."""
        bind = self.reader.bind
        if not isinstance(bind, Connection):
            yield
            return
        with transaction_on(bind):
            yield


AnySelect = TypeVar("AnySelect", bound=Select)  # type: ignore[type-arg]  # any row shape


def awaiting_review(query: AnySelect) -> AnySelect:
    """``query`` (over ``Study``) kept to the studies that wait for a coder: the current decision is
    ``needs_review`` and no current (not stale) review settles it. The worklist and the backlog signal
    (``store.signals``) both select with it."""
    settled = exists().where(
        col(Review.study_instance_uid) == col(Study.study_instance_uid), col(Review.stale_since).is_(None)
    )
    return query.join(Decision, col(Decision.id) == col(Study.current_decision_id)).where(
        col(Decision.outcome) == Outcome.NEEDS_REVIEW.value, ~settled
    )


@dataclass(frozen=True, slots=True)
class QueueFilters:
    """What the coders' worklist selects (``review_queue``); ``scope_*`` restrict an auditor."""

    station: str | None = None
    modality: str | None = None
    received_from: dt.datetime | None = None
    received_before: dt.datetime | None = None
    scope_studies: tuple[str, ...] | None = None
    scope_accessions: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class StudyWithDecision:
    study: StudyRecord
    decision: DecisionRecord


@dataclass(frozen=True, slots=True)
class SeriesEquipment:
    """A series as indexed: who wrote it, who sent it, when its instances arrived."""

    series_instance_uid: str
    study_instance_uid: str
    modality: str | None
    series_number: str | None
    series_description: str | None
    station_name: str | None
    device_serial_number: str | None
    manufacturer: str | None
    model: str | None
    calling_ae: str | None
    instance_count: int
    sc_manufacturer: str | None
    sc_model: str | None
    first_seen: dt.datetime | None
    last_seen: dt.datetime | None


@dataclass(frozen=True, slots=True)
class Delivery:
    """The receipts of one study's instances on one association: sender, address, when, how many."""

    association_id: int | None
    calling_ae: str | None
    called_ae: str | None
    peer_address: str | None
    tls: bool
    receipts: int
    duplicates: int
    first: dt.datetime | None
    last: dt.datetime | None


@dataclass(frozen=True, slots=True)
class QuarantineEntry:
    """A refused input: when, from whom, why (``expired``: its file was deleted by quarantine retention)."""

    received_at: dt.datetime
    reason: str
    status: int
    sop_class_uid: str | None
    sop_instance_uid: str | None
    calling_ae: str | None
    peer_address: str | None
    expired: bool
