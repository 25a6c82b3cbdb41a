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

A coder may choose the study that carries a session's code (:meth:`Sessions.choose_carrier`): every choice is
kept in ``session_carrier_choice`` (who, when, why; a later one supersedes the earlier), and every recomputation
reads the session's current choice, so it survives re-decisions. Studies decided before sessions were kept
get theirs from :meth:`Sessions.keep` (``dicomcheck.session_backfill``), never by being decided again.

A coder's review of a study counts in its session: every recomputation reads each study's current review (the
latest one no later decision made stale, ``review.stale_since``) and counts its outcome instead of the decision's
(:func:`dicomcheck.sessions.with_reviews`); a ``study_session`` row keeps the decision's outcome. Recording a
review recomputes the study's session (:meth:`Sessions.after_review`) in the review's own transaction.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, Self

from sqlalchemy import Connection, Engine, func, insert, select, update
from sqlmodel import col

from ..decision_record import StudyDecisionRecord
from ..enums import Outcome
from ..sessions import (
    CarrierChoice,
    CarrierChoiceRecord,
    CoderReview,
    MadeLater,
    MadeLaterRecord,
    OutcomeSource,
    RegionBasis,
    SessionRecord,
    SessionStudy,
    Verdict,
    builtin_regions,
    carrier_refusal,
    made_later,
    session_key,
    session_verdict,
    with_choice,
    with_reviews,
)
from .tables import Decision, Review, SessionCarrierChoice, Study, StudySession, utcnow

if TYPE_CHECKING:
    from .reads import IndexSession

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


def _choice(row: Any) -> CarrierChoice:
    return CarrierChoice(row.id, row.study_instance_uid, row.reviewer, row.reason, row.chosen_at)


def _current_reviews(connection: Connection, study_uids: Sequence[str]) -> list[CoderReview]:
    """The current (not stale) coder reviews of the studies, oldest first (the latest of a study counts)."""
    if not study_uids:
        return []
    rows = connection.execute(
        select(Review)
        .where(col(Review.study_instance_uid).in_(list(study_uids)), col(Review.stale_since).is_(None))
        .order_by(col(Review.id))
    ).all()
    return [_coder_review(row) for row in rows]


def _coder_review(row: Any) -> CoderReview:
    return CoderReview(row.id, row.study_instance_uid, Outcome(row.outcome), row.reviewer, row.created_at)


def _counted(connection: Connection, rows: Sequence[Any], choice: CarrierChoice | None) -> list[SessionStudy]:
    """The studies of ``rows`` as the verdict counts them: the coder's carrier choice marked, and each study's
    current review (if any) giving its outcome."""
    studies = with_choice((_session_study(row) for row in rows), choice)
    return with_reviews(studies, _current_reviews(connection, [row.study_instance_uid for row in rows]))


class SessionSettings(Protocol):
    """What the recomputation reads of the settings (``config.Settings``)."""

    @property
    def made_later_days(self) -> int: ...

    @property
    def session_hash_key(self) -> bytes: ...


class SessionNotFound(LookupError):
    """No decided study has this session id."""


class CarrierRefused(ValueError):
    """The study named cannot carry the session's code; the message says why."""


@dataclass(frozen=True, slots=True)
class SessionInput:
    """What a study's ``study_session`` row keeps of its decision (all the session needs of it)."""

    study_instance_uid: str
    accession_number: str | None
    patient_id: str | None
    issuer_of_patient_id: str | None
    study_date: str | None
    outcome: Outcome
    has_3d: bool
    regions: tuple[str, ...]
    regions_from: RegionBasis
    three_d_dates: tuple[dt.date, ...]

    @classmethod
    def of_record(cls, record: StudyDecisionRecord) -> Self:
        return cls(
            study_instance_uid=record.study_instance_uid,
            accession_number=record.accession_number,
            patient_id=record.patient_id,
            issuer_of_patient_id=record.issuer_of_patient_id,
            study_date=record.study_date,
            outcome=record.outcome,
            has_3d=any(series.is_3d for series in record.series),
            regions=tuple(record.regions),
            regions_from=record.regions_from,
            three_d_dates=tuple(record.three_d_dates),
        )


@dataclass(frozen=True, slots=True)
class DecidedStudy:
    """A decided study as a backfill reads it: its current decision and that decision's document."""

    study_instance_uid: str
    decision_id: int
    document: dict[str, Any]


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
    coded_uids: tuple[str, ...] = ()
    """The studies whose outcome supports a code: those a coder may choose to carry it."""
    reviewed_uids: tuple[str, ...] = ()
    """The studies whose outcome in the session is a coder's review's (not the decision's)."""
    carrier_choice: CarrierChoiceRecord | None = None
    """The coder's current carrier choice, if any."""


class Sessions:
    """The ``study_session`` rows: written after each decision, read by the API, exports and packs."""

    def __init__(self, bind: Engine | Connection) -> None:
        self.bind = bind

    # ---------------------------------------------------------------- writes
    def after_decision(self, record: StudyDecisionRecord, settings: SessionSettings) -> SessionRecord:
        """Keep the decided study's row and recompute the session of every study of its session (and of the
        session it left, when its key changed); returns the study's session record. ``settings``: the
        ``made_later_days`` threshold and the site's ``session_hash_key``."""
        return self.keep(SessionInput.of_record(record), settings)

    def keep(self, study: SessionInput, settings: SessionSettings) -> SessionRecord:
        """:meth:`after_decision` from what the session needs of the decision."""
        session = self._keep(study, settings)
        assert session is not None  # written unconditionally
        return session

    def backfill(
        self, study: SessionInput, settings: SessionSettings, *, decision_id: int, only_if_missing: bool
    ) -> SessionRecord | None:
        """:meth:`keep` for a study decided earlier (``dicomcheck.session_backfill``), skipped (None) when, under
        the session's lock, the study's current decision is no longer ``decision_id`` (a newer decision kept
        its own session meanwhile) or, with ``only_if_missing``, the study has its row already (another
        receiver sharing the index gave it one)."""
        return self._keep(study, settings, decision_id=decision_id, only_if_missing=only_if_missing)

    def _keep(
        self,
        study: SessionInput,
        settings: SessionSettings,
        *,
        decision_id: int | None = None,
        only_if_missing: bool = False,
    ) -> SessionRecord | None:
        uid = study.study_instance_uid
        key = session_key(study.patient_id, study.issuer_of_patient_id, study.study_date)
        session_id = key.session_id(settings.session_hash_key) if key else None
        later = made_later(study.study_date, study.three_d_dates, settings.made_later_days)
        values = {
            "session_id": session_id,
            "accession_number": study.accession_number,
            "outcome": study.outcome.value,
            "has_3d": study.has_3d,
            "regions": list(study.regions),
            "regions_from": study.regions_from.value,
            "made_later": MadeLaterRecord.from_made_later(later).model_dump(mode="json") if later else None,
            "updated_at": utcnow(),
        }
        with self._transaction() as connection:
            left = connection.execute(
                select(col(StudySession.session_id)).where(col(StudySession.study_instance_uid) == uid)
            ).first()
            old_session = left[0] if left is not None else None
            self._lock(connection, {s for s in (session_id, old_session) if s})
            if only_if_missing and left is not None:
                return None
            if decision_id is not None:
                current = connection.execute(
                    select(col(Study.current_decision_id)).where(col(Study.study_instance_uid) == uid)
                ).scalar_one_or_none()
                if current != decision_id:
                    return None
                if only_if_missing and self._row_exists(connection, uid):  # written while we waited for the lock
                    return None
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
        choice = self._current_choice(connection, session_id) if session_id is not None else None
        session = SessionRecord.from_verdict(session_verdict(_counted(connection, rows, choice)), session_id, choice)
        document = session.model_dump(mode="json")
        connection.execute(
            update(StudySession)
            .where(where)
            .values(verdict=session.verdict.value, record=document, carrier_chosen=False)
        )
        if choice is not None and any(row.study_instance_uid == choice.study_instance_uid for row in rows):
            connection.execute(
                update(StudySession)
                .where(col(StudySession.study_instance_uid) == choice.study_instance_uid)
                .values(carrier_chosen=True)
            )
        return session

    @staticmethod
    def _current_choice(connection: Connection, session_id: str) -> CarrierChoice | None:
        row = connection.execute(
            select(SessionCarrierChoice)
            .where(
                col(SessionCarrierChoice.session_id) == session_id,
                col(SessionCarrierChoice.superseded_by).is_(None),
            )
            .order_by(col(SessionCarrierChoice.id).desc())
            .limit(1)
        ).first()
        return _choice(row) if row is not None else None

    def after_review(self, study_uid: str) -> SessionRecord | None:
        """Recompute the session of every study of ``study_uid``'s session after a coder's review of it was
        recorded (call it in the review's transaction: one COMMIT for both). None when the study has no session
        row (not decided since sessions are kept; the backfill gives it one, counting the review)."""
        with self._transaction() as connection:
            locked: set[str] = set()
            while True:  # the study's session under its lock (a decision may have moved it meanwhile)
                found = connection.execute(
                    select(col(StudySession.session_id)).where(col(StudySession.study_instance_uid) == study_uid)
                ).first()
                if found is None:
                    return None
                session_id = found[0]
                if session_id is None or session_id in locked:
                    break
                self._lock(connection, {session_id})
                locked.add(session_id)
            return self._recompute(connection, session_id, study_uid)

    def choose_carrier(
        self, session_id: str, study_uid: str, *, reviewer: str, token_name: str, reason: str
    ) -> tuple[CarrierChoice, SessionRecord]:
        """Record a coder's choice of the study that carries the session's code, supersede the session's earlier
        choice, and recompute the session record of every study of it at once. Raises :class:`SessionNotFound`
        for an unknown session and :class:`CarrierRefused` (with the reason) for a study outside it or one
        whose counted outcome (a coder's current review, else the decision) supports no code
        (:func:`dicomcheck.sessions.carrier_refusal`)."""
        with self._transaction() as connection:
            self._lock(connection, {session_id})
            rows = connection.execute(select(StudySession).where(col(StudySession.session_id) == session_id)).all()
            if not rows:
                raise SessionNotFound(f"no decided study is in session {session_id}")
            refusal = carrier_refusal(_counted(connection, rows, None), study_uid)
            if refusal is not None:
                raise CarrierRefused(refusal)
            chosen_at = utcnow()
            choice_id = connection.execute(
                insert(SessionCarrierChoice).values(
                    session_id=session_id,
                    study_instance_uid=study_uid,
                    reviewer=reviewer,
                    token_name=token_name,
                    reason=reason,
                    chosen_at=chosen_at,
                )
            ).inserted_primary_key[0]
            connection.execute(
                update(SessionCarrierChoice)
                .where(
                    col(SessionCarrierChoice.session_id) == session_id,
                    col(SessionCarrierChoice.superseded_by).is_(None),
                    col(SessionCarrierChoice.id) != choice_id,
                )
                .values(superseded_by=choice_id)
            )
            session = self._recompute(connection, session_id, None)
            assert session is not None  # the session has rows (read above, under its lock)
            return CarrierChoice(choice_id, study_uid, reviewer, reason, chosen_at), session

    # ---------------------------------------------------------------- backfill (studies decided before sessions)
    def decided_without_session(self, limit: int, after: str = "") -> list[DecidedStudy]:
        """Up to ``limit`` decided studies that have no ``study_session`` row, in Study Instance UID order after
        ``after``, with their current decision's document."""
        return self._decided(limit, after, missing_only=True)

    def decided(self, limit: int, after: str = "") -> list[DecidedStudy]:
        """Up to ``limit`` decided studies (with a session row or not), in Study Instance UID order after
        ``after``, with their current decision's document (``sessions rebuild``)."""
        return self._decided(limit, after, missing_only=False)

    def _decided(self, limit: int, after: str, *, missing_only: bool) -> list[DecidedStudy]:
        query = (
            select(col(Study.study_instance_uid), col(Decision.id), col(Decision.document))
            .join(Decision, col(Decision.id) == col(Study.current_decision_id))
            .where(col(Study.study_instance_uid) > after)
            .order_by(col(Study.study_instance_uid))
            .limit(limit)
        )
        if missing_only:
            query = query.outerjoin(
                StudySession, col(StudySession.study_instance_uid) == col(Study.study_instance_uid)
            ).where(col(StudySession.study_instance_uid).is_(None))
        with self._connection() as connection:
            rows: Sequence[Any] = connection.execute(query).all()
        return [DecidedStudy(row[0], row[1], dict(row[2])) for row in rows]

    @staticmethod
    def _row_exists(connection: Connection, study_uid: str) -> bool:
        found = connection.execute(
            select(col(StudySession.study_instance_uid)).where(col(StudySession.study_instance_uid) == study_uid)
        ).first()
        return found is not None

    # ---------------------------------------------------------------- reads
    def of_study(self, study_uid: str) -> SessionRecord | None:
        """The session part of a decided study; None before its first decision since sessions were kept."""
        with self._connection() as connection:
            document = connection.execute(
                select(col(StudySession.record)).where(col(StudySession.study_instance_uid) == study_uid)
            ).scalar_one_or_none()
        return SessionRecord.model_validate(document) if document else None

    def carrier_choices(self, session_id: str) -> list[CarrierChoice]:
        """Every carrier choice of the session, the latest (current) first."""
        with self._connection() as connection:
            rows = connection.execute(
                select(SessionCarrierChoice)
                .where(col(SessionCarrierChoice.session_id) == session_id)
                .order_by(col(SessionCarrierChoice.id).desc())
            ).all()
        return [_choice(row) for row in rows]

    def of_session(self, session_id: str) -> SessionRecord | None:
        """The session record its studies share (None: no decided study is in it)."""
        with self._connection() as connection:
            document = connection.execute(
                select(col(StudySession.record)).where(col(StudySession.session_id) == session_id).limit(1)
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
                coded_uids=tuple(study.study_instance_uid for study in record.studies if study.code),
                carrier_choice=record.carrier_choice,
                reviewed_uids=tuple(
                    study.study_instance_uid
                    for study in record.studies
                    if study.outcome_from is OutcomeSource.CODER_REVIEW
                ),
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


class AuditCarrierChoice(Protocol):
    """The face's audit of one carrier choice (its request and token bound): ``outcome`` 0 or 4, ``detail``."""

    def __call__(self, *, outcome: int, detail: dict[str, Any]) -> None: ...


def choose_carrier_audited(
    store: IndexSession,
    session_id: str,
    study_uid: str,
    *,
    reviewer: str,
    token_name: str,
    reason: str,
    audit: AuditCarrierChoice,
) -> tuple[CarrierChoice, SessionRecord]:
    """A coder's carrier choice as the API and the pages record it: the choice, the recomputed session and its
    audit event in one COMMIT; a refusal (:class:`SessionNotFound`, :class:`CarrierRefused`) is audited as a
    failure and raised again."""
    try:
        with store.transaction():
            choice, record = Sessions(store.reader.bind).choose_carrier(
                session_id, study_uid, reviewer=reviewer, token_name=token_name, reason=reason
            )
            audit(
                outcome=0,
                detail={"session_id": session_id, "carrier_choice_id": choice.choice_id, "verdict": record.verdict},
            )
    except (SessionNotFound, CarrierRefused) as exc:
        audit(outcome=4, detail={"session_id": session_id, "refused": str(exc)})
        raise
    return choice, record
