"""Sessions in the index (issue 13): every study of a session recomputed whenever one of them is decided.

A session is the studies of one patient (Patient ID + Issuer of Patient ID where given) on one Study Date
(:func:`dicomcheck.sessions.session_key`), across accessions and across receivers sharing the index. Each
decided study has a ``study_session`` row: what the verdict reads of it (outcome, regions, whether it has 3D,
when it was first decided) and the session record computed over its whole session. :meth:`Sessions.after_decision`
runs right after a decision is saved: it writes the study's row, then recomputes the record of every study of
the session in the same transaction, so a study decided earlier sees the one that joined it.

Receivers sharing one index (PostgreSQL) serialise the recomputation of one session with a transaction-level
advisory lock on the session id: two studies of one session decided at once by two processes both end with the
same, complete session (READ COMMITTED: each statement after the lock sees what the other committed). On SQLite
the study's own row is written before the session is read, which takes the database's one write lock first.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy import Connection, Engine, func, insert, select, update
from sqlmodel import col

from ..decision_record import StudyDecisionRecord
from ..enums import Outcome
from ..sessions import (
    MadeLater,
    MadeLaterRecord,
    RegionBasis,
    SessionRecord,
    SessionStudy,
    Verdict,
    builtin_regions,
    made_later,
    session_key,
    session_verdict,
)
from .tables import Decision, StudySession, utcnow

CHOICE_VERDICTS = (Verdict.ONE_UNIT, Verdict.UNKNOWN_REGIONS)
"""Verdicts that ask the coder to choose (listed on ``/ui/sessions``): ``one_unit`` across several studies
that support a code, ``unknown_regions``."""


def _lock_key(session_id: str) -> int:
    """A signed 64-bit advisory lock key from the session id's hash (``ses-`` + 24 hex digits)."""
    value = int(session_id[4:20], 16)
    return value - (1 << 64) if value >= 1 << 63 else value


def _made_later(stored: dict[str, Any] | None) -> MadeLater | None:
    if not stored:
        return None
    record = MadeLaterRecord.model_validate(stored)
    return MadeLater(record.study_date, tuple(record.three_d_dates), record.threshold_days)


def _session_study(row: Any) -> SessionStudy:
    table = builtin_regions()
    regions = frozenset(table.regions[region] for region in row.regions if region in table.regions)
    return SessionStudy(
        study_instance_uid=row.study_instance_uid,
        outcome=Outcome(row.outcome),
        regions=regions,
        regions_from=RegionBasis(row.regions_from) if regions else RegionBasis.UNKNOWN,
        accession_number=row.accession_number,
        decided_at=row.first_decided_at,
        has_3d=row.has_3d,
        carrier_chosen=row.carrier_chosen,
        made_later=_made_later(row.made_later),
    )


class SessionSettings(Protocol):
    """What the recomputation reads of the settings (``config.Settings``)."""

    @property
    def made_later_days(self) -> int: ...

    @property
    def session_hash_key(self) -> bytes: ...


@dataclass(frozen=True, slots=True)
class SessionSummary:
    """One session for the coders' page: its id, verdict and how many studies it has."""

    session_id: str
    verdict: Verdict
    final: bool
    studies: int
    coded: int
    carrier: str | None
    study_uids: tuple[str, ...]
    last_decided_at: dt.datetime


class Sessions:
    """The ``study_session`` rows: written after each decision, read by the API, exports and packs."""

    def __init__(self, bind: Engine | Connection) -> None:
        self.bind = bind

    # ---------------------------------------------------------------- writes
    def after_decision(self, record: StudyDecisionRecord, settings: SessionSettings) -> SessionRecord:
        """Keep the decided study's row and recompute the session of every study of its session (and of the
        session it left, when its key changed); returns the study's session record. ``settings``: the
        ``made_later_days`` threshold and the site's ``session_hash_key``."""
        uid = record.study_instance_uid
        key = session_key(record.patient_id, record.issuer_of_patient_id, record.study_date)
        session_id = key.session_id(settings.session_hash_key) if key else None
        later = made_later(record.study_date, record.three_d_dates, settings.made_later_days)
        values = {
            "session_id": session_id,
            "accession_number": record.accession_number,
            "outcome": record.outcome.value,
            "has_3d": any(series.is_3d for series in record.series),
            "regions": list(record.regions),
            "regions_from": record.regions_from.value,
            "made_later": MadeLaterRecord.from_made_later(later).model_dump(mode="json") if later else None,
            "updated_at": utcnow(),
        }
        with self._transaction() as connection:
            left = connection.execute(
                select(col(StudySession.session_id)).where(col(StudySession.study_instance_uid) == uid)
            ).first()
            old_session = left[0] if left is not None else None
            self._lock(connection, {s for s in (session_id, old_session) if s})
            changed = connection.execute(
                update(StudySession).where(col(StudySession.study_instance_uid) == uid).values(**values)
            ).rowcount
            if not changed:
                first = connection.execute(
                    select(func.min(col(Decision.decided_at))).where(col(Decision.study_instance_uid) == uid)
                ).scalar_one_or_none()
                connection.execute(
                    insert(StudySession).values(
                        study_instance_uid=uid,
                        carrier_chosen=False,
                        first_decided_at=first or values["updated_at"],
                        verdict=Verdict.NO_UNIT.value,
                        record={},
                        **values,
                    )
                )
            if old_session and old_session != session_id:
                self._recompute(connection, old_session, None)
            session = self._recompute(connection, session_id, uid)
            assert session is not None  # the study's own row was written above
            return session

    def _transaction(self) -> Any:
        if isinstance(self.bind, Engine):
            return self.bind.begin()
        return _joined(self.bind)

    @staticmethod
    def _lock(connection: Connection, session_ids: Iterable[str]) -> None:
        if connection.dialect.name != "postgresql":
            return  # SQLite: the first write of the transaction holds the database's one write lock
        for session_id in sorted(session_ids):  # one order: no deadlock between two recomputations
            connection.exec_driver_sql("SELECT pg_advisory_xact_lock(%s)", (_lock_key(session_id),))

    def _recompute(self, connection: Connection, session_id: str | None, uid: str | None) -> SessionRecord | None:
        where = (
            col(StudySession.session_id) == session_id
            if session_id is not None
            else col(StudySession.study_instance_uid) == uid
        )
        rows = connection.execute(select(StudySession).where(where)).all()
        if not rows:  # the session a study left had no other study
            return None
        session = SessionRecord.from_verdict(session_verdict(_session_study(row) for row in rows), session_id)
        document = session.model_dump(mode="json")
        connection.execute(update(StudySession).where(where).values(verdict=session.verdict.value, record=document))
        return session

    # ---------------------------------------------------------------- reads
    def of_study(self, study_uid: str) -> SessionRecord | None:
        """The session part of a decided study; None before its first decision since sessions were kept."""
        with self._connection() as connection:
            document = connection.execute(
                select(col(StudySession.record)).where(col(StudySession.study_instance_uid) == study_uid)
            ).scalar_one_or_none()
        return SessionRecord.model_validate(document) if document else None

    def asking_to_choose(self, limit: int = 200) -> list[SessionSummary]:
        """Sessions whose verdict asks the coder to choose: ``one_unit`` across several studies that support a
        code, and ``unknown_regions``; the most recently decided first."""
        with self._connection() as connection:
            rows = connection.execute(
                select(StudySession)
                .where(
                    col(StudySession.verdict).in_([v.value for v in CHOICE_VERDICTS]),
                    col(StudySession.session_id).is_not(None),
                )
                .order_by(col(StudySession.updated_at).desc(), col(StudySession.study_instance_uid))
            ).all()
        sessions: dict[str, SessionSummary] = {}
        for row in rows:
            if row.session_id in sessions or len(sessions) >= limit:
                continue
            record = SessionRecord.model_validate(row.record)
            coded = sum(1 for study in record.studies if study.code)
            if record.verdict is Verdict.ONE_UNIT and coded < 2:
                continue
            sessions[row.session_id] = SessionSummary(
                session_id=row.session_id,
                verdict=record.verdict,
                final=record.final,
                studies=len(record.studies),
                coded=coded,
                carrier=record.carrier,
                study_uids=tuple(study.study_instance_uid for study in record.studies),
                last_decided_at=row.updated_at,
            )
        return list(sessions.values())

    def _connection(self) -> Any:
        if isinstance(self.bind, Engine):
            return self.bind.connect()
        return _borrowed(self.bind)


class _borrowed:
    """A connection lent by the caller (an API request's): not closed here."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection

    def __enter__(self) -> Connection:
        return self.connection

    def __exit__(self, *_: object) -> None:
        return None


class _joined(_borrowed):
    """A transaction on a lent connection: its own when none is open, else the caller's."""

    def __enter__(self) -> Connection:
        self.owned = None if self.connection.in_transaction() else self.connection.begin()
        return self.connection

    def __exit__(self, *exc: object) -> None:
        kind = exc[0] if exc else None
        if self.owned is not None:
            if kind is None:
                self.owned.commit()
            else:
                self.owned.rollback()
        return None
