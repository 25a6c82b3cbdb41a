"""What the routes depend on: the settings, the few operations beyond reads, one index session per
request, the caller's token and the roles an endpoint needs, and the audit trail they all write to.

No `from __future__ import annotations`: FastAPI resolves the dependency annotations at runtime.
"""

import datetime as dt
from collections.abc import Callable, Iterator
from typing import Annotated, Any, NoReturn, Protocol, TypeVar

from fastapi import Depends, HTTPException, Path, Request
from sqlalchemy import Engine
from starlette.concurrency import run_in_threadpool

from ..config import Settings
from ..decision_record import StudyDecisionUnderPolicy
from ..registry import Registry
from ..store.access import GroupCommit, TokenInfo, audit_row
from ..store.reads import IndexSession
from ..store.records import StudyForRead, StudyRecord
from .schemas import UID_PATTERN

NOT_FOUND = "no study {uid} has been received"  # also an auditor's answer for a study outside its scope
StudyUid = Annotated[str, Path(min_length=1, max_length=64, pattern=UID_PATTERN, description="Study Instance UID")]


class StudyOperations(Protocol):
    """The API's narrow view of the receiver: what it does beyond reading and writing the index
    (``ingest.Receiver`` provides it)."""

    settings: Settings
    engine: Engine

    def reload_registry(self) -> Registry:
        """The ``--devices`` registry now (``error`` set while the file is unusable)."""

    def effective_registry(self) -> Registry:
        """The registry file's entries, then those kept in the index."""

    def evaluate(self, study_uid: str) -> tuple[StudyDecisionUnderPolicy, Registry] | None:
        """The study decided now from its indexed facts, nothing saved (None without instances)."""

    def decide(self, study_uid: str, *, last_arrival_seen: dt.datetime) -> StudyDecisionUnderPolicy | None:
        """Decide the study now and keep the decision."""


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_operations(request: Request) -> StudyOperations:
    return request.app.state.operations


def index_session(request: Request) -> Iterator[IndexSession]:
    """One connection for the whole request: token check, reads, audit events and writes."""
    with IndexSession.open(request.app.state.operations.engine) as store:
        yield store


SettingsDep = Annotated[Settings, Depends(get_settings)]
OperationsDep = Annotated[StudyOperations, Depends(get_operations)]
SessionDep = Annotated[IndexSession, Depends(index_session)]


def client_address(request: Request) -> str | None:
    return request.client.host if request.client else None


def request_audit(
    request: Request,
    token: TokenInfo | None,
    event: str,
    action: str,
    *,
    study_uid: str | None = None,
    outcome: int = 0,
    detail: dict | None = None,
) -> dict[str, Any]:
    """The audit event (DICOM / IHE ATNA event names) of this request (method, path, client), by ``token``."""
    return audit_row(
        event=event,
        action=action,
        method=request.method,
        endpoint=request.url.path,
        token=token,
        study_uid=study_uid,
        client_address=client_address(request),
        outcome=outcome,
        detail=detail,
    )


def audit(
    store: IndexSession,
    request: Request,
    token: TokenInfo | None,
    event: str,
    action: str,
    *,
    study_uid: str | None = None,
    outcome: int = 0,
    detail: dict | None = None,
) -> None:
    """Write one audit event for this request (:func:`request_audit`), committed at once."""
    store.access.audit(
        request_audit(request, token, event, action, study_uid=study_uid, outcome=outcome, detail=detail)
    )


class RoleGuard:
    """The bearer token of the request, if it is valid and its role is one of ``roles``; every
    refusal is audited as a Security Alert (401 without a valid token, 403 for another role)."""

    def __init__(self, *roles: str) -> None:
        self.roles = roles

    def __call__(self, request: Request, store: SessionDep) -> TokenInfo:
        return self.check(request, store)

    def check(self, request: Request, store: IndexSession) -> TokenInfo:
        header = request.headers.get("authorization", "")
        scheme, _, credential = header.partition(" ")
        if scheme.lower() != "bearer" or not credential.strip():
            audit(store, request, None, "Security Alert", "E", outcome=4, detail={"reason": "no bearer token"})
            raise HTTPException(
                401,
                "a bearer token is required (Authorization: Bearer <token>)",
                headers={"WWW-Authenticate": "Bearer"},
            )
        verified = store.access.verify(credential.strip())
        if isinstance(verified, str):
            audit(store, request, None, "Security Alert", "E", outcome=4, detail={"reason": verified})
            raise HTTPException(401, verified, headers={"WWW-Authenticate": "Bearer"})
        if verified.role not in self.roles:
            audit(
                store,
                request,
                verified,
                "Security Alert",
                "E",
                outcome=4,
                detail={"reason": f"role {verified.role} may not use this endpoint"},
            )
            raise HTTPException(
                403, f"role {verified.role!r} may not use this endpoint (needs {' or '.join(self.roles)})"
            )
        return verified


anyone = RoleGuard("reader", "admin", "auditor")
staff = RoleGuard("reader", "admin")
admin = RoleGuard("admin")
GUARDS = (anyone, staff, admin)

Answer = TypeVar("Answer")
GUARD_OF_ENDPOINT: dict[Callable[..., object], RoleGuard] = {}
"""The guard of each endpoint that checks its token in :func:`run_lookup` rather than as a dependency
(``app.unauthenticated_first`` reads it: a request with a bad parameter and no token is still a 401)."""


def guarded(guard: RoleGuard) -> Callable[[Callable[..., Answer]], Callable[..., Answer]]:
    """Mark an ``async`` endpoint whose work runs through :func:`run_lookup` with ``guard``."""

    def mark(endpoint: Callable[..., Answer]) -> Callable[..., Answer]:
        GUARD_OF_ENDPOINT[endpoint] = guard
        return endpoint

    return mark


async def run_lookup(guard: RoleGuard, request: Request, work: Callable[[IndexSession, TokenInfo], Answer]) -> Answer:
    """The token check and ``work`` of a hot lookup (``GET /studies/{uid}``, lists, searches) on one index
    connection, in one thread, with every write it makes (audit events, read records) durable before it answers.

    * **SQLite**: on the event loop's own thread. The reads are in-process (WAL: a reader never waits for a
      writer), so handing them to a worker thread only added two hand-offs, each waiting for the loop and the GIL:
      the tail of the latency (bench/README.md, issue 14, fourth pass). The writes are kept and handed to the
      engine's group commit as one job, *awaited*: the loop serves other requests meanwhile and their writes
      join the same COMMIT. They are committed also when ``work`` refuses (401/403/404 with a Security Alert)
      or fails, before the refusal goes out; a failed commit answers 500 instead.
    * **PostgreSQL**: in one worker thread (each read is a round trip to another process, which may wait on a
      lock: never on the loop), its connection in autocommit (``IndexSession.open(autocommit_reads=True)``): each
      read and the audited read's one write are one round trip, without BEGIN / ROLLBACK / COMMIT around them.

    Earlier the index session, the guard and the endpoint were sync dependencies, each with a thread hand-off
    of its own. Same checks and audit as a dependency-guarded endpoint (the 401-before-422 order is kept by
    ``GUARD_OF_ENDPOINT``)."""
    engine = request.app.state.operations.engine
    if engine.dialect.name != "sqlite":

        def run() -> Answer:
            with IndexSession.open(engine, autocommit_reads=True) as store:
                return work(store, guard.check(request, store))

        return await run_in_threadpool(run)
    failure: BaseException | None = None
    # the loop's own connection (never waits for the pool: store.reads.ThreadConnections), free before the await
    with IndexSession.on_this_thread(engine, defer_writes=True) as store:
        try:
            answer = work(store, guard.check(request, store))
        except Exception as exc:  # noqa: BLE001 - raised again once its audit event is durable
            failure = exc
        writes = store.access.take_deferred()
    if writes is not None:
        await GroupCommit.of(engine).run_async(writes)
    if failure is not None:
        raise failure
    return answer


AnyToken = Annotated[TokenInfo, Depends(anyone)]
StaffToken = Annotated[TokenInfo, Depends(staff)]
AdminToken = Annotated[TokenInfo, Depends(admin)]


def existing_study(store: IndexSession, study_uid: str) -> StudyRecord:
    """The study, or 404 when it was never received."""
    study = store.reader.study(study_uid)
    if study is None:
        raise HTTPException(404, NOT_FOUND.format(uid=study_uid))
    return study


def readable_study(store: IndexSession, request: Request, token: TokenInfo, study_uid: str) -> StudyRecord:
    """The study a token may read: an auditor gets the same 404 for a study outside its scope
    as for one never received, so it cannot learn which studies exist (both are audited)."""
    study = store.reader.study(study_uid)
    if study is not None and token.may_read(study.study_instance_uid, study.accession_number):
        return study
    refuse_unreadable(store, request, token, study_uid, received=study is not None)


def readable_for_read(store: IndexSession, request: Request, token: TokenInfo, study_uid: str) -> StudyForRead:
    """:func:`readable_study` with what a read of it shows (``IndexReader.study_for_read``: one query)."""
    found = store.reader.study_for_read(study_uid, reader=token.name)
    if found is not None and token.may_read(found.study.study_instance_uid, found.study.accession_number):
        return found
    refuse_unreadable(store, request, token, study_uid, received=found is not None)


def refuse_unreadable(
    store: IndexSession, request: Request, token: TokenInfo, study_uid: str, *, received: bool
) -> NoReturn:
    """404 for a study never received or outside an auditor's scope (the auditor's refusal audited)."""
    if token.role == "auditor":
        audit(
            store,
            request,
            token,
            "Security Alert",
            "R",
            study_uid=study_uid,
            outcome=4,
            detail={"reason": "outside the auditor token's scope" if received else "no such study"},
        )
    raise HTTPException(404, NOT_FOUND.format(uid=study_uid))
