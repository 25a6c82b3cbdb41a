"""Index writes and reads for the API: tokens, audit events, registry devices, reviews, reads."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import queue
import secrets
import threading
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, TypeVar, cast

from sqlalchemy import (
    Column,
    Connection,
    CursorResult,
    Engine,
    Executable,
    Insert,
    Row,
    Table,
    and_,
    bindparam,
    event,
    insert,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session, col

from .records import (
    AuditRecord,
    DeviceRecord,
    EarlierRead,
    ReviewRecord,
    StudyReadRecord,
    TokenRecord,
    from_columns,
    from_row,
)
from .tables import ApiToken, AuditEvent, Device, DeviceChange, ReportRead, Review, StudyRead, utcnow

ROLES = ("reader", "admin", "auditor", "reporter")
LAST_USED_RESOLUTION = dt.timedelta(seconds=60)
TOKEN_PREFIX = "dck_"


def _text(value: Any) -> Any:
    """A request-derived value as the index can keep it: PostgreSQL text and JSONB refuse NUL, so
    a NUL (e.g. a percent-encoded %00 in a refused request's path) is stored as U+FFFD."""
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, dict):
        return {_text(k): _text(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_text(v) for v in value]
    return value


def table_of(model: Any) -> Table:
    """The Core table of a ``store.tables`` model (prebuilt Core statements skip the ORM's per-row work)."""
    return cast(Table, model.__table__)


def columns_for(table: Table, record_type: type) -> list[Column[Any]]:
    """The columns of ``table`` named like the fields of ``record_type``, in their order (``from_columns``)."""
    return [table.c[field.name] for field in fields(record_type)]


def read_rows(bind: Engine | Connection, statement: Executable, params: Mapping[str, Any]) -> Sequence[Row[Any]]:
    """The rows of one read. On an API request's connection the read's transaction is ended at once (unless
    the caller holds one open), as the ORM session did: a write that follows begins and commits its own, and
    SQLite never has to turn a read snapshot into a write lock."""
    if isinstance(bind, Engine):
        with bind.connect() as connection:
            return connection.execute(statement, params).all()
    outer = bind.in_transaction()
    try:
        return bind.execute(statement, params).all()
    finally:
        if not outer:
            bind.rollback()


Result = TypeVar("Result")


AUTOCOMMIT = "AUTOCOMMIT"


def autocommits(bind: Connection) -> bool:
    """Whether ``bind`` reads in autocommit (a PostgreSQL lookup's connection: ``IndexSession.open``)."""
    return bind.get_execution_options().get("isolation_level") == AUTOCOMMIT


@contextmanager
def transaction_on(bind: Connection) -> Iterator[None]:
    """A real transaction on ``bind``, committed at the end of the block (rolled back on an exception), also on a
    connection that reads in autocommit: that one leaves autocommit for the block (psycopg sets it locally, no
    round trip) and returns to it after, so several writes are still all durable or none."""
    if bind.in_transaction():  # a read's autobegun transaction: nothing written in it yet
        bind.rollback()
    if not autocommits(bind):
        with bind.begin():
            yield
        return
    bind.execution_options(isolation_level=bind.default_isolation_level)
    try:
        with bind.begin():
            yield
    finally:
        if not bind.invalidated and not bind.closed:
            bind.execution_options(isolation_level=AUTOCOMMIT)


def commit_writes(
    bind: Engine | Connection, work: Callable[[Connection], Result], *, one_statement: bool = False
) -> Result:
    """Run ``work`` (index writes) and commit it before returning: in one transaction of its own, or, inside a
    transaction the caller holds (``IndexSession.transaction``), in that one (its commit is the caller's). On
    an API request's SQLite connection the work goes to the engine's :class:`GroupCommit`: concurrent
    requests share one durable COMMIT instead of queueing for one fsync each. ``one_statement``: ``work``
    executes a single statement, which on a connection in autocommit (PostgreSQL lookups) is its own
    transaction, durable when it returns (``synchronous_commit``): one round trip instead of BEGIN, the
    statement and COMMIT."""
    if isinstance(bind, Engine):
        with bind.begin() as connection:
            return work(connection)
    if bind.in_transaction() and not autocommits(bind):
        return work(bind)
    if bind.dialect.name == "sqlite":
        return GroupCommit.of(bind.engine).run(work)
    if one_statement and autocommits(bind):
        try:
            result = work(bind)
        except BaseException:
            if bind.in_transaction():
                bind.rollback()
            raise
        bind.commit()  # ends SQLAlchemy's autobegun marker; the server committed the statement already
        return result
    with transaction_on(bind):
        return work(bind)


@dataclass(slots=True)
class _Job:
    work: Callable[[Connection], Any]
    done: threading.Event = field(default_factory=threading.Event)
    result: Any = None
    error: BaseException | None = None
    waiter: tuple[asyncio.AbstractEventLoop, asyncio.Future[None]] | None = None  # run_async's

    def finish(self) -> None:
        self.done.set()
        if self.waiter is not None:
            loop, future = self.waiter
            loop.call_soon_threadsafe(_resolve, future)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():  # not cancelled meanwhile
        future.set_result(None)


class GroupCommit:
    """One writer thread per SQLite engine that commits the writes of concurrent API requests together.

    Each request hands its writes over (:meth:`run`) and waits; the thread takes every job waiting, runs them
    in one transaction, COMMITs once (one fsync, ``synchronous=FULL``) and only then releases the requests,
    which answer (when a job fails, the batch is rolled back and each job runs again in its own transaction,
    so only the failing request gets the error).
    So an answered read still has its audit event durably written (also across a crash), and N requests
    arriving together cost one fsync instead of N in a row (SQLite has one writer at a time: without this,
    the last of a burst waited for every fsync before its own). The thread holds its own connection."""

    MAX_BATCH = 64
    _engines: ClassVar[weakref.WeakKeyDictionary[Engine, GroupCommit]] = weakref.WeakKeyDictionary()
    _lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._stopped = False
        self._handover = threading.Lock()  # a job is queued before the stop, or runs without the thread
        self._connection = engine.connect()
        self._thread = threading.Thread(target=self._serve, name="index-group-commit", daemon=True)
        self._thread.start()
        event.listen(engine, "engine_disposed", self._stop)

    @classmethod
    def of(cls, engine: Engine) -> GroupCommit:
        """The engine's group commit (started on first use, or by the API app at start; it ends, and
        closes its connection, when the engine is disposed)."""
        with cls._lock:
            found = cls._engines.get(engine)
            if found is None or not found._thread.is_alive():
                found = cls._engines[engine] = cls(engine)
            return found

    def _stop(self, engine: Engine) -> None:
        with self._lock:
            if self._engines.get(engine) is self:
                del self._engines[engine]
        with self._handover:
            self._stopped = True
            self._jobs.put(None)  # after the jobs already handed over, which are still committed

    def run(self, work: Callable[[Connection], Result]) -> Result:
        """``work`` run on the writer's connection and committed; its result (or its exception)."""
        job = _Job(work)
        if not self._queued(job):  # the engine was disposed meanwhile: the work commits on a connection of its own
            with self._engine.begin() as connection:
                return work(connection)
        job.done.wait()
        return cast(Result, self._outcome(job))

    async def run_async(self, work: Callable[[Connection], Result]) -> Result:
        """:meth:`run` for a coroutine on the event loop: the loop goes on serving other requests while the
        writer commits (their writes join the same COMMIT), and the coroutine resumes once ``work`` is durable."""
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        job = _Job(work, waiter=(loop, done))
        if not self._queued(job):
            with self._engine.begin() as connection:
                return work(connection)
        await asyncio.shield(done)  # a cancelled request still has its writes committed by the thread
        return cast(Result, self._outcome(job))

    def _queued(self, job: _Job) -> bool:
        """Hand ``job`` to the writer thread; False once the group has stopped (its engine disposed)."""
        with self._handover:
            if self._stopped:
                return False
            self._jobs.put(job)
            return True

    @staticmethod
    def _outcome(job: _Job) -> Any:
        if job.error is not None:
            raise job.error
        return job.result

    def _serve(self) -> None:
        connection = self._connection
        stopping = False
        while not stopping:
            jobs: list[_Job] = []
            job = self._jobs.get()
            while job is not None:
                jobs.append(job)
                if len(jobs) == self.MAX_BATCH:
                    break
                try:
                    job = self._jobs.get_nowait()
                except queue.Empty:
                    break
            stopping = job is None
            if not jobs:
                continue
            try:
                with connection.begin():
                    results = [job.work(connection) for job in jobs]
                for job, result in zip(jobs, results, strict=True):
                    job.result = result
            except Exception:  # noqa: BLE001 - a job or the COMMIT failed: all of it was rolled back
                for job in jobs:  # each again in its own transaction, so that only a failing one fails
                    try:
                        with connection.begin():
                            job.result = job.work(connection)
                    except Exception as exc:  # noqa: BLE001 - handed to the request that sent the job
                        job.error = exc
            for job in jobs:
                job.finish()
        connection.close()


_TOKEN = table_of(ApiToken)
_AUDIT = table_of(AuditEvent)
_STUDY_READ = table_of(StudyRead)
_REPORT_READ = table_of(ReportRead)
_TOKEN_COLUMNS = (
    _TOKEN.c.id,
    _TOKEN.c.name,
    _TOKEN.c.role,
    _TOKEN.c.revoked_at,
    _TOKEN.c.expires_at,
    _TOKEN.c.last_used_at,
    _TOKEN.c.studies,
    _TOKEN.c.accessions,
)
_TOKEN_BY_HASH = select(*_TOKEN_COLUMNS).where(_TOKEN.c.token_hash == bindparam("token_hash"))
_TOKEN_BY_ID = select(*_TOKEN_COLUMNS).where(_TOKEN.c.id == bindparam("token_id"))
_TOKEN_USED = update(_TOKEN).where(_TOKEN.c.id == bindparam("token_id")).values(last_used_at=bindparam("now"))
_AUDIT_INSERT = insert(_AUDIT)
_STUDY_READ_COLUMNS = columns_for(_STUDY_READ, StudyReadRecord)
_EARLIER_READ = (
    select(*_STUDY_READ_COLUMNS, _REPORT_READ.c.documentation)
    .select_from(
        _STUDY_READ.outerjoin(
            _REPORT_READ,
            and_(
                _REPORT_READ.c.study_instance_uid == _STUDY_READ.c.study_instance_uid,
                _REPORT_READ.c.token_name == _STUDY_READ.c.token_name,
            ),
        )
    )
    .where(_STUDY_READ.c.study_instance_uid == bindparam("uid"), _STUDY_READ.c.token_name == bindparam("token"))
)
"""What a client last read of a study (its read record, the documentation verdict it was shown), when the
caller did not read it already (``IndexReader.study_for_read`` with the reader's token name)."""


def _read_upsert(dialect: str, table: Table, values: dict[str, Any]) -> Insert:
    """INSERT ... ON CONFLICT (study, token) DO UPDATE of a client's read of a study, for the dialect: one
    statement whether it is the first read or a later one, and simultaneous first reads by one client
    never violate the unique key (``uq_study_read``, ``uq_report_read``)."""
    make = postgresql.insert if dialect == "postgresql" else sqlite.insert
    statement = make(table).values(
        study_instance_uid=bindparam("uid"), token_name=bindparam("token"), read_at=bindparam("now"), **values
    )
    updated = {name: statement.excluded[name] for name in (*values, "read_at")}
    return statement.on_conflict_do_update(index_elements=["study_instance_uid", "token_name"], set_=updated)


_STUDY_READ_UPSERT = {
    dialect: _read_upsert(dialect, _STUDY_READ, {"decision_id": bindparam("decision_id")})
    for dialect in ("postgresql", "sqlite")
}
_REPORT_READ_UPSERT = {
    dialect: _read_upsert(dialect, _REPORT_READ, {"documentation": bindparam("documentation")})
    for dialect in ("postgresql", "sqlite")
}
_AUDIT_FIELDS = (
    "event",
    "action",
    "outcome",
    "token_name",
    "role",
    "method",
    "endpoint",
    "study_instance_uid",
    "client_address",
    "detail",
)


def _read_written_at_once(with_documentation: bool) -> Executable:
    """PostgreSQL: a client's read of a study (its audit event, its read record and, ``with_documentation``, the
    documentation verdict it was shown) written by ONE statement, data-modifying CTEs: atomic by itself, one round
    trip and one WAL flush on a connection in autocommit, instead of BEGIN, three statements and COMMIT. The audit
    event's values are bound as ``audit_<column>``."""
    audit = (
        insert(_AUDIT)
        .values(
            at=bindparam("now"),
            **{name: bindparam(f"audit_{name}", type_=_AUDIT.c[name].type) for name in _AUDIT_FIELDS},
        )
        .cte("audit_written")
    )
    study_read = _read_upsert("postgresql", _STUDY_READ, {"decision_id": bindparam("decision_id")})
    if not with_documentation:
        return study_read.add_cte(audit)
    report_read = _read_upsert("postgresql", _REPORT_READ, {"documentation": bindparam("documentation")})
    return report_read.add_cte(audit, study_read.cte("study_read_written"))


_READ_WRITTEN_AT_ONCE = {
    with_documentation: _read_written_at_once(with_documentation) for with_documentation in (True, False)
}


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)
class TokenInfo:
    name: str
    role: str
    expires_at: dt.datetime | None
    studies: tuple[str, ...]
    accessions: tuple[str, ...]

    def may_read(self, study_uid: str, accession: str | None) -> bool:
        if self.role != "auditor":
            return True
        return study_uid in self.studies or (accession is not None and accession in self.accessions)


def audit_row(
    *,
    event: str,
    action: str,
    method: str,
    endpoint: str,
    token: TokenInfo | None,
    study_uid: str | None = None,
    client_address: str | None = None,
    outcome: int = 0,
    detail: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The columns of one audit event (DICOM / IHE ATNA event names) but its time, the request-derived text made
    storable (:func:`_text`): what ``Access.audit``, ``Access.record_read`` and ``Reports.add`` write."""
    return {
        "event": event,
        "action": action,
        "outcome": outcome,
        "token_name": token.name if token else None,
        "role": token.role if token else None,
        "method": _text(method),
        "endpoint": _text(endpoint),
        "study_instance_uid": _text(study_uid),
        "client_address": _text(client_address),
        "detail": _text(detail or {}),
    }


class Access:
    """Tokens, audit trail, registry devices, reviews and reads; ``bind`` is an engine (a connection
    per call) or the one connection of an API request (``store.reads.IndexSession``)."""

    def __init__(self, bind: Engine | Connection, *, defer_writes: bool = False) -> None:
        self.bind = bind
        self._deferred: list[Callable[[Connection], object]] | None = [] if defer_writes else None

    def _write(self, work: Callable[[Connection], object], *, one_statement: bool = False) -> None:
        """Commit ``work`` now (``commit_writes``), or, on a lookup's connection that defers its writes (a SQLite
        lookup on the event loop: ``IndexSession.on_this_thread(defer_writes=True)``), keep it for the one commit
        the lookup awaits before it answers (:meth:`take_deferred`); inside a transaction the caller holds, join
        that."""
        if self._deferred is not None and not (isinstance(self.bind, Connection) and self.bind.in_transaction()):
            self._deferred.append(work)
            return
        commit_writes(self.bind, work, one_statement=one_statement)

    def take_deferred(self) -> Callable[[Connection], None] | None:
        """The writes kept so far, as one unit of work for the group commit (None: none), and forget them."""
        if not self._deferred:
            return None
        writes, self._deferred = self._deferred, []

        def write_all(connection: Connection) -> None:
            for work in writes:
                work(connection)

        return write_all

    # ---------------------------------------------------------------- tokens
    def create_token(
        self,
        name: str,
        role: str,
        *,
        expires_at: dt.datetime | None = None,
        studies: list[str] | None = None,
        accessions: list[str] | None = None,
    ) -> str:
        """Create a token and return it; it is shown once, only its hash is kept."""
        if role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}")
        if role == "auditor" and (expires_at is None or not (studies or accessions)):
            raise ValueError("an auditor token needs --expires and at least one --study or --accession")
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        with Session(self.bind) as session:
            if session.execute(select(col(ApiToken.id)).where(col(ApiToken.name) == name)).first():
                raise ValueError(f"a token named {name!r} exists already")
            session.add(
                ApiToken(
                    name=name,
                    role=role,
                    token_hash=hash_token(token),
                    prefix=token[:10],
                    created_at=utcnow(),
                    expires_at=expires_at,
                    studies=studies or [],
                    accessions=accessions or [],
                )
            )
            session.commit()
        return token

    def list_tokens(self) -> list[TokenRecord]:
        with Session(self.bind) as session:
            return [
                from_row(TokenRecord, t) for t in session.execute(select(ApiToken).order_by(col(ApiToken.id))).scalars()
            ]

    def revoke_token(self, name: str) -> bool:
        with Session(self.bind) as session:
            result = session.execute(
                update(ApiToken)
                .where(col(ApiToken.name) == name, col(ApiToken.revoked_at).is_(None))
                .values(revoked_at=utcnow())
            )
            session.commit()
            return cast(CursorResult[Any], result).rowcount == 1  # an UPDATE's result carries its row count

    def verify(self, token: str) -> TokenInfo | str:
        """The token's identity, or why it is refused."""
        found = self.verify_session(token=token)
        return found if isinstance(found, str) else found[1]

    def verify_session(self, *, token: str | None = None, token_id: int | None = None) -> tuple[int, TokenInfo] | str:
        """The row id and identity of a token given as ``token`` or by its id (a web page's session
        cookie holds the id, never the token), or why it is refused (unknown, revoked, expired)."""
        if token is not None:
            rows = read_rows(self.bind, _TOKEN_BY_HASH, {"token_hash": hash_token(token)})
        else:
            rows = read_rows(self.bind, _TOKEN_BY_ID, {"token_id": token_id})
        if not rows:
            return "unknown token"
        row_id, name, role, revoked_at, expires, last, studies, accessions = tuple(rows[0])
        if revoked_at is not None:  # read on every request, never cached: a revocation holds at once
            return "token revoked"
        if expires is not None:
            if expires.tzinfo is None:
                expires = expires.replace(tzinfo=dt.UTC)
            if expires <= utcnow():
                return "token expired"
        now = utcnow()
        if last is None or now - last >= LAST_USED_RESOLUTION:  # one write a minute, not one per request
            self._write(
                lambda connection: connection.execute(_TOKEN_USED, {"token_id": row_id, "now": now}),
                one_statement=True,
            )
        return row_id, TokenInfo(name, role, expires, tuple(studies or ()), tuple(accessions or ()))

    # ---------------------------------------------------------------- audit
    def audit(self, row: Mapping[str, Any]) -> None:
        """Write one audit event (``row``: :func:`audit_row`), committed at once (or with the transaction the
        caller holds, or with the lookup's deferred writes, before its answer)."""
        self._write(lambda connection: connection.execute(_AUDIT_INSERT, {"at": utcnow(), **row}), one_statement=True)

    def audit_events(
        self,
        *,
        since: dt.datetime | None = None,
        until: dt.datetime | None = None,
        event: str | None = None,
        study_uid: str | None = None,
        limit: int = 1000,
    ) -> list[AuditRecord]:
        query = select(AuditEvent)
        if since:
            query = query.where(col(AuditEvent.at) >= since)
        if until:
            query = query.where(col(AuditEvent.at) <= until)
        if event:
            query = query.where(col(AuditEvent.event) == event)
        if study_uid:
            query = query.where(col(AuditEvent.study_instance_uid) == study_uid)
        with Session(self.bind) as session:
            return [
                from_row(AuditRecord, e)
                # newest first by time (the ``at`` index, also under a since / until filter), then by id
                for e in session.execute(
                    query.order_by(col(AuditEvent.at).desc(), col(AuditEvent.id).desc()).limit(limit)
                ).scalars()
            ]

    # ---------------------------------------------------------------- registry devices
    def devices(self) -> list[DeviceRecord]:
        with Session(self.bind) as session:
            return [
                from_row(DeviceRecord, d) for d in session.execute(select(Device).order_by(col(Device.id))).scalars()
            ]

    def get_device(self, device_id: int) -> DeviceRecord | None:
        with Session(self.bind) as session:
            device = session.get(Device, device_id)
            return from_row(DeviceRecord, device) if device is not None else None

    def save_device(self, values: dict[str, Any], *, device_id: int | None, token_name: str | None) -> DeviceRecord:
        now = utcnow()
        with Session(self.bind) as session:
            if device_id is None:
                device = Device(**values, created_at=now, updated_at=now)
                before = None
                session.add(device)
            else:
                found = session.get(Device, device_id)
                if found is None:
                    raise KeyError(device_id)
                device, before = found, _device_dict(found)
                for key, value in values.items():
                    setattr(device, key, value)
                device.updated_at = now
            session.flush()
            session.add(
                DeviceChange(
                    device_id=_row_id(device.id),
                    at=now,
                    action="created" if before is None else "updated",
                    token_name=token_name,
                    before=before,
                    after=_device_dict(device),
                )
            )
            session.commit()
            session.refresh(device)
            return from_row(DeviceRecord, device)

    def delete_device(self, device_id: int, *, token_name: str | None) -> bool:
        with Session(self.bind) as session:
            device = session.get(Device, device_id)
            if device is None:
                return False
            session.add(
                DeviceChange(
                    device_id=device_id,
                    at=utcnow(),
                    action="deleted",
                    token_name=token_name,
                    before=_device_dict(device),
                    after=None,
                )
            )
            session.delete(device)
            session.commit()
            return True

    # ---------------------------------------------------------------- reviews and reads
    def add_review(
        self,
        *,
        study_uid: str,
        decision_id: int | None,
        outcome: str,
        code: str | None,
        reviewer: str,
        token_name: str,
        reason: str,
    ) -> ReviewRecord:
        with Session(self.bind) as session:
            review = Review(
                study_instance_uid=study_uid,
                decision_id=decision_id,
                outcome=outcome,
                code=code,
                reviewer=reviewer,
                token_name=token_name,
                reason=reason,
                created_at=utcnow(),
            )
            session.add(review)
            session.commit()
            session.refresh(review)
            return from_row(ReviewRecord, review)

    def reviews(self, study_uid: str) -> list[ReviewRecord]:
        with Session(self.bind) as session:
            return [
                from_row(ReviewRecord, r)
                for r in session.execute(
                    select(Review).where(col(Review.study_instance_uid) == study_uid).order_by(col(Review.id))
                ).scalars()
            ]

    def record_read(
        self,
        study_uid: str,
        token_name: str,
        decision_id: int | None,
        documentation: str | None,
        *,
        audit: dict[str, Any] | None = None,
        earlier: EarlierRead | None = None,
    ) -> EarlierRead:
        """Remember the decision this client read and the documentation verdict it was shown (``None``: none
        recorded), and write its audit event: one transaction, one COMMIT before the answer; returns what the
        client had read before this read.

        ``earlier`` is that, as read with the study (``IndexReader.study_for_read`` given the token name): the
        writes are then the audit insert and one upsert per read record, nothing read in the write transaction
        (without it, it is read there first). Simultaneous first reads by one client all succeed (the upserts
        never violate the unique keys); each of them may report no previous read."""
        now = utcnow()
        keys = {"uid": study_uid, "token": token_name, "now": now}
        dialect = self.bind.dialect.name
        if dialect == "postgresql" and audit is not None and earlier is not None:
            written = _READ_WRITTEN_AT_ONCE[documentation is not None]
            params = {
                **keys,
                "decision_id": decision_id,
                "documentation": documentation,
                **{f"audit_{name}": audit.get(name) for name in _AUDIT_FIELDS},
            }
            self._write(lambda connection: connection.execute(written, params), one_statement=True)
            return earlier

        def write(connection: Connection) -> EarlierRead:
            if audit is not None:
                connection.execute(_AUDIT_INSERT, {"at": now, **audit})
            before = earlier
            if before is None:
                row = connection.execute(_EARLIER_READ, keys).first()
                before = EarlierRead(from_columns(StudyReadRecord, row), row[-1]) if row else EarlierRead(None, None)
            connection.execute(_STUDY_READ_UPSERT[dialect], {**keys, "decision_id": decision_id})
            if documentation is not None:
                connection.execute(_REPORT_READ_UPSERT[dialect], {**keys, "documentation": documentation})
            return before

        if earlier is not None:  # nothing to read in the write: it may wait for the lookup's one commit
            self._write(write)
            return earlier
        return commit_writes(self.bind, write)

    def reads(self, study_uid: str) -> list[StudyReadRecord]:
        with Session(self.bind) as session:
            return [
                from_row(StudyReadRecord, r)
                for r in session.execute(
                    select(StudyRead).where(col(StudyRead.study_instance_uid) == study_uid)
                ).scalars()
            ]


def _row_id(value: int | None) -> int:
    """The primary key of a row the session has flushed (``None`` only before the flush)."""
    if value is None:
        raise ValueError("row not flushed: it has no id yet")
    return value


def _device_dict(device: Device) -> dict[str, Any]:
    return {
        "station_name": device.station_name,
        "ae_title": device.ae_title,
        "device_serial_number": device.device_serial_number,
        "manufacturer": device.manufacturer,
        "model": device.model,
        "role": device.role,
        "note": device.note,
        "valid_from": device.valid_from.isoformat() if device.valid_from else None,
        "valid_to": device.valid_to.isoformat() if device.valid_to else None,
    }
