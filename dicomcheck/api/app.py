"""The study-level lookup API for billing systems (FastAPI), on the receiver's index.

Every endpoint but ``/healthz`` needs a bearer token; every read of study data, every change and
every refused request writes an audit event named after the DICOM / IHE ATNA vocabulary.
:func:`create_app` only assembles: the routes are in ``routes/``, what they depend on in ``deps.py``.
"""

# No `from __future__ import annotations`: FastAPI resolves the handler annotations at runtime.

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import cast

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi_offline import FastAPIOffline
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .. import __version__, metrics
from ..config import Settings
from ..store.access import GroupCommit
from ..store.reads import ThreadConnections
from ..ui import UI_ROUTERS
from .deps import GUARD_OF_ENDPOINT, GUARDS, StudyOperations, run_lookup
from .routes import ROUTERS
from .schemas import ErrorOut

DOCS_ASSETS = "/docs/assets"  # Swagger UI / ReDoc files, served from the fastapi-offline package (no CDN)
ERROR = {"model": ErrorOut}
ERROR_RESPONSES = {
    400: {**ERROR, "description": "Bad request (e.g. a cursor not from a previous page)"},
    401: {**ERROR, "description": "No, unknown, expired or revoked token"},
    403: {**ERROR, "description": "The token's role does not allow this"},
    404: {**ERROR, "description": "No such study or device (auditors: or outside the token's scope)"},
    409: {**ERROR, "description": "The study has no decision yet"},
    413: {**ERROR, "description": "The request body is larger than the server accepts"},
}


@asynccontextmanager
async def _reserve_loop_connection(app: FastAPI) -> AsyncIterator[None]:
    """On SQLite the lookups run on the event loop, on a connection of the loop's own (``api.deps.run_lookup``):
    taken at start-up, before any request holds one of the pool's."""
    engine = app.state.operations.engine
    if engine.dialect.name == "sqlite":
        ThreadConnections.of(engine)
    yield


def create_app(settings: Settings, operations: StudyOperations) -> FastAPI:
    """The API app on the index ``operations`` works on (no import-time state)."""
    app = FastAPIOffline(
        lifespan=_reserve_loop_connection,
        responses=ERROR_RESPONSES,
        static_url=DOCS_ASSETS,
        max_body_size=settings.http_max_body,
        title="dicomcheck",
        version=__version__,
        description="What the images of a study prove about its 3D post-processing (CPT 76376 / 76377 evidence). "
        "Authenticate with `Authorization: Bearer <token>` (`dicomcheck token create`).",
    )
    app.state.settings = settings
    app.state.operations = operations
    if operations.engine.dialect.name == "sqlite":  # the writer of shared commits takes its connection now
        GroupCommit.of(operations.engine)
    app.add_exception_handler(RequestValidationError, unauthenticated_first)
    app.add_middleware(RequestTiming)
    for router in (*ROUTERS, *UI_ROUTERS):  # the web pages (dicomcheck.ui) share the tokens and the audit
        app.include_router(router)
    return app


async def unauthenticated_first(request: Request, exc: Exception) -> JSONResponse:
    """FastAPI validates the body and parameters before it runs the token dependency: a request
    that also lacks a valid token is answered (and audited) as unauthenticated first.

    Typed for Starlette's handler signature (``Exception``); registered for RequestValidationError only."""
    route = request.scope.get("route")
    guard = GUARD_OF_ENDPOINT.get(getattr(route, "endpoint", None)) or next(  # type: ignore[arg-type]
        (d.call for d in getattr(getattr(route, "dependant", None), "dependencies", ()) if d.call in GUARDS), None
    )
    if guard is not None:
        try:
            await run_lookup(guard, request, lambda _store, _token: None)
        except HTTPException as refused:
            return JSONResponse({"detail": refused.detail}, status_code=refused.status_code, headers=refused.headers)
    errors = [
        {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
        for e in cast(RequestValidationError, exc).errors()
    ]
    return JSONResponse({"detail": errors}, status_code=422)


class RequestTiming:
    """Request latency by route template, method and status (Prometheus). Plain ASGI: Starlette's
    ``BaseHTTPMiddleware`` (``app.middleware("http")``) runs each request through a task group and memory
    streams, measurably more CPU per request than this wrapper of ``send``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # an exception escaped before a response was started

        async def send_noting_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_noting_status)
        finally:
            route = scope.get("route")  # set by the router on this same scope
            metrics.REQUEST_LATENCY.labels(getattr(route, "path", "unmatched"), scope["method"], str(status)).observe(
                time.perf_counter() - started
            )
