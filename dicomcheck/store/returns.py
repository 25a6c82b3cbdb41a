"""Evidence returns (issue 11): each decision's KOS and SR queued for the PACS, sent and retried from the index.

The queue is durable and shared: several receivers on one index (PostgreSQL) work it off like the studies they
decide (``Index.claim``): a receiver takes a due return with an atomic ``UPDATE ... WHERE`` unclaimed (or its
lease ran out), so no two send the same return at once. One row per (study, decision, destination); a newer
decision of the study supersedes the returns of its older ones that are still waiting or failed (only the
newest pack is sent). The retry policy (how long to wait, when to give up) is the caller's
(``ingest.Receiver.send_due_returns``); this module only keeps what happened.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, cast

from sqlalchemy import Connection, CursorResult, Engine, case, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session, col

from .tables import EvidenceReturn, utcnow


class ReturnState(StrEnum):
    """Where an evidence return stands."""

    PENDING = "pending"
    """Waiting for its (next) attempt at ``next_attempt_at``."""
    SENT = "sent"
    """The PACS answered success (or a warning) for the KOS and the SR."""
    FAILED = "failed"
    """Given up: too many attempts, too old, or the objects cannot be sent at all; ``last_error`` says why.
    ``dicomcheck evidence returns --retry`` queues it again."""
    SUPERSEDED = "superseded"
    """A newer decision of the study was queued before this one was sent: only the newest pack goes out."""


WAITING_STATES = (ReturnState.PENDING, ReturnState.FAILED)


@dataclass(frozen=True, slots=True)
class EvidenceReturnRecord:
    """One return as the index keeps it."""

    id: int
    study_instance_uid: str
    decision_id: int
    destination: str
    state: ReturnState
    attempts: int
    next_attempt_at: dt.datetime
    last_error: str | None
    created_at: dt.datetime
    attempts_since: dt.datetime
    sent_at: dt.datetime | None


def _record(row: EvidenceReturn) -> EvidenceReturnRecord:
    assert row.id is not None
    return EvidenceReturnRecord(
        id=row.id,
        study_instance_uid=row.study_instance_uid,
        decision_id=row.decision_id,
        destination=row.destination,
        state=ReturnState(row.state),
        attempts=row.attempts,
        next_attempt_at=row.next_attempt_at,
        last_error=row.last_error,
        created_at=row.created_at,
        attempts_since=row.attempts_since,
        sent_at=row.sent_at,
    )


def _rowcount(result: Any) -> int:
    return cast(CursorResult[Any], result).rowcount  # an UPDATE's result carries its row count


class EvidenceReturns:
    """The queue of evidence returns; ``bind`` an engine (a transaction per call) or one connection."""

    def __init__(self, bind: Engine | Connection, node: str = "") -> None:
        self.bind = bind
        self.node = node
        """This receiver's name in the index (``Index.node``): who holds a claim."""

    # ---------------------------------------------------------------- queueing
    def enqueue(self, study_uid: str, decision_id: int, destination: str) -> None:
        """Queue the return of ``decision_id``'s pack to ``destination``, due now; the returns of the study's
        older decisions to the same destination that are still pending or failed are superseded."""
        now = utcnow()
        insert = postgresql.insert if self._dialect() == "postgresql" else sqlite.insert
        with Session(self.bind) as session:
            session.execute(
                update(EvidenceReturn)
                .where(
                    col(EvidenceReturn.study_instance_uid) == study_uid,
                    col(EvidenceReturn.destination) == destination,
                    col(EvidenceReturn.decision_id) != decision_id,
                    col(EvidenceReturn.state).in_([s.value for s in WAITING_STATES]),
                )
                .values(state=ReturnState.SUPERSEDED.value)  # a claim held stays: its attempt is still recorded
            )
            session.execute(
                insert(EvidenceReturn)
                .values(
                    study_instance_uid=study_uid,
                    decision_id=decision_id,
                    destination=destination,
                    state=ReturnState.PENDING.value,
                    attempts=0,
                    next_attempt_at=now,
                    created_at=now,
                    attempts_since=now,
                )
                .on_conflict_do_nothing(index_elements=["study_instance_uid", "decision_id", "destination"])
            )
            session.commit()

    def _dialect(self) -> str:
        return self.bind.dialect.name

    # ---------------------------------------------------------------- working the queue off
    def due(self, *, limit: int = 20) -> list[EvidenceReturnRecord]:
        """Pending returns whose next attempt is due and that no receiver holds, oldest due first."""
        now = utcnow()
        query = (
            select(EvidenceReturn)
            .where(
                col(EvidenceReturn.state) == ReturnState.PENDING.value,
                col(EvidenceReturn.next_attempt_at) <= now,
                or_(col(EvidenceReturn.claimed_until).is_(None), col(EvidenceReturn.claimed_until) < now),
            )
            .order_by(col(EvidenceReturn.next_attempt_at), col(EvidenceReturn.id))
            .limit(limit)
        )
        with Session(self.bind) as session:
            return [_record(row) for row in session.execute(query).scalars()]

    def claim(self, return_id: int, *, lease: float) -> EvidenceReturnRecord | None:
        """Take a due, pending return for one attempt (one receiver at a time, for ``lease`` seconds at most);
        the return as it stands, or None when another receiver has it or it is no longer pending."""
        now = utcnow()
        with Session(self.bind) as session:
            result = session.execute(
                update(EvidenceReturn)
                .where(
                    col(EvidenceReturn.id) == return_id,
                    col(EvidenceReturn.state) == ReturnState.PENDING.value,
                    col(EvidenceReturn.next_attempt_at) <= now,
                    or_(col(EvidenceReturn.claimed_until).is_(None), col(EvidenceReturn.claimed_until) < now),
                )
                .values(claimed_by=self.node, claimed_until=now + dt.timedelta(seconds=lease))
            )
            row = session.get(EvidenceReturn, return_id)
            session.commit()
            return _record(row) if _rowcount(result) == 1 and row is not None else None

    def _finish(self, return_id: int, **values: Any) -> None:
        """Record an attempt of a return this receiver holds, and let go of it."""
        with Session(self.bind) as session:
            session.execute(
                update(EvidenceReturn)
                .where(col(EvidenceReturn.id) == return_id, col(EvidenceReturn.claimed_by) == self.node)
                .values(attempts=EvidenceReturn.attempts + 1, claimed_by=None, claimed_until=None, **values)
            )
            session.commit()

    def sent(self, return_id: int) -> None:
        """The attempt stored both objects (kept as sent even if a newer decision superseded it meanwhile)."""
        self._finish(return_id, state=ReturnState.SENT.value, sent_at=utcnow(), last_error=None)

    def retry_later(self, return_id: int, *, error: str, at: dt.datetime) -> None:
        """The attempt failed; the next one is due at ``at`` (unless a newer decision superseded it meanwhile)."""
        self._finish(return_id, next_attempt_at=at, last_error=error[:500])

    def give_up(self, return_id: int, *, error: str) -> None:
        """The attempt failed and no other will be made: ``failed`` (a superseded return stays superseded)."""
        still_pending = col(EvidenceReturn.state) == ReturnState.PENDING.value
        failed = case((still_pending, ReturnState.FAILED.value), else_=col(EvidenceReturn.state))
        self._finish(return_id, state=failed, last_error=error[:500])

    def set_aside(self, return_id: int) -> None:
        """A claimed return whose decision is no longer the study's current one: superseded, not attempted."""
        with Session(self.bind) as session:
            session.execute(
                update(EvidenceReturn)
                .where(col(EvidenceReturn.id) == return_id, col(EvidenceReturn.claimed_by) == self.node)
                .values(state=ReturnState.SUPERSEDED.value, claimed_by=None, claimed_until=None)
            )
            session.commit()

    def retry_failed(self) -> int:
        """Queue every failed return again, due now, with a fresh count of attempts and age; how many."""
        now = utcnow()
        with Session(self.bind) as session:
            result = session.execute(
                update(EvidenceReturn)
                .where(col(EvidenceReturn.state) == ReturnState.FAILED.value)
                .values(state=ReturnState.PENDING.value, attempts=0, next_attempt_at=now, attempts_since=now)
            )
            session.commit()
            return _rowcount(result)

    # ---------------------------------------------------------------- reads
    def listing(
        self, states: tuple[ReturnState, ...] = WAITING_STATES, *, limit: int = 50
    ) -> list[EvidenceReturnRecord]:
        """Returns in ``states``, failed first, then by when their next attempt is due."""
        failed_first = col(EvidenceReturn.state) != ReturnState.FAILED.value
        query = (
            select(EvidenceReturn)
            .where(col(EvidenceReturn.state).in_([s.value for s in states]))
            .order_by(failed_first, col(EvidenceReturn.next_attempt_at), col(EvidenceReturn.id))
            .limit(limit)
        )
        with Session(self.bind) as session:
            return [_record(row) for row in session.execute(query).scalars()]

    def counts(self) -> dict[ReturnState, int]:
        """How many returns are in each state (every state, 0 when none)."""
        query = select(col(EvidenceReturn.state), func.count()).group_by(col(EvidenceReturn.state))
        with Session(self.bind) as session:
            found = {ReturnState(state): int(n) for state, n in session.execute(query).all()}
        return {state: found.get(state, 0) for state in ReturnState}

    def of_study(self, study_uid: str) -> list[EvidenceReturnRecord]:
        """Every return of the study, oldest first."""
        query = (
            select(EvidenceReturn)
            .where(col(EvidenceReturn.study_instance_uid) == study_uid)
            .order_by(col(EvidenceReturn.id))
        )
        with Session(self.bind) as session:
            return [_record(row) for row in session.execute(query).scalars()]
