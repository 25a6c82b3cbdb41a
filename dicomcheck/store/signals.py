"""Operations signals (issue 11): what waits for people or for the PACS, counted by the index for ``/metrics``,
``/healthz`` and the dashboard. Each figure is one cheap, index-backed query; the set is read when asked
(a scrape, a health check, a page view), never on a timer."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import Connection, Engine, func, select
from sqlmodel import Session, col

from .reads import awaiting_review
from .returns import EvidenceReturns, ReturnState
from .tables import Quarantined, Study, utcnow

IndexBind = Engine | Connection
"""An engine (one connection is checked out for every count) or the connection of a unit of work."""


@dataclass(frozen=True, slots=True)
class OperationsSignals:
    """Counts only, never a UID: ``/healthz`` shows them without authentication."""

    review_backlog: int
    """Studies whose current decision is ``needs_review`` and that no current coder review settles (the worklist)."""
    review_backlog_oldest_seconds: float
    """Seconds since the first arrival of the oldest of them (0 when none)."""
    pending_studies: int
    """Studies received and not yet decided with every instance (``Study.needs_decision``)."""
    quarantined: int
    """Inputs quarantined (refused), expired ones included: the count the quarantine page shows."""
    evidence_returns_waiting: int
    """Evidence returns to the PACS pending (queued or between retries)."""
    evidence_returns_failed: int
    """Evidence returns given up (``dicomcheck evidence returns --retry`` queues them again)."""


def review_backlog(bind: Engine | Connection) -> tuple[int, dt.datetime | None]:
    """How many studies wait for a coder (the worklist's definition, ``IndexReader.review_queue``), and the
    first arrival of the oldest. Served by the decision outcome index and the study's current-decision index."""
    query = awaiting_review(select(func.count(), func.min(col(Study.first_arrival))).select_from(Study))
    with Session(bind) as session:
        count, oldest = session.execute(query).one()
    return int(count), oldest  # min() keeps the column's type: aware UTC on every dialect


def operations_signals(bind: IndexBind, *, now: dt.datetime | None = None) -> OperationsSignals:
    """Every count, on one connection."""
    if isinstance(bind, Engine):
        with bind.connect() as connection:
            return operations_signals(connection, now=now)
    now = now or utcnow()
    backlog, oldest = review_backlog(bind)
    with Session(bind) as session:
        pending = session.execute(select(func.count()).select_from(Study).where(col(Study.needs_decision))).scalar_one()
        quarantined = session.execute(select(func.count()).select_from(Quarantined)).scalar_one()
    returns = EvidenceReturns(bind).counts()
    return OperationsSignals(
        review_backlog=backlog,
        review_backlog_oldest_seconds=max(0.0, (now - oldest).total_seconds()) if oldest is not None else 0.0,
        pending_studies=int(pending),
        quarantined=int(quarantined),
        evidence_returns_waiting=returns[ReturnState.PENDING],
        evidence_returns_failed=returns[ReturnState.FAILED],
    )
