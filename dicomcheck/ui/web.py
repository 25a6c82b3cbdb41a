"""What every page needs: templates, the signed-in viewer, forms with CSRF, the audit trail, safe headers.

No `from __future__ import annotations`: FastAPI resolves the dependency annotations at runtime.
"""

import datetime as dt
from collections.abc import Callable, Coroutine, Iterator
from functools import cache
from typing import Annotated, Any, Protocol
from urllib.parse import parse_qs, urlsplit

import jinja2
from fastapi import Depends, HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.routing import APIRoute

from .. import __version__
from ..decision_record import StudyDecisionUnderPolicy
from ..evidence.service import PackFolders, PackSite
from ..store.access import TokenInfo, audit_row
from ..store.reads import IndexSession
from ..store.signouts import SignOuts
from .dashboard import error_class
from .session import COOKIE, PageSession, decode, session_secret
from .words import kind_words, outcome_label, session_verdict_label, why_review, writer_name

LOGIN = "/ui/login"
CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
PAGE_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",  # "no-referrer" would make browsers send Origin: null on our own forms
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
}
MAX_FORM_FIELD = 4000
MAX_FORM_FIELDS = 50
ERROR_TITLES = {403: "Not allowed", 404: "Not found", 409: "Not yet", 415: "Not a form", 422: "Not understood"}


class PageFolders(PackFolders, Protocol):
    """The settings the pages read: a pack's folders and whether auditors get full packs."""

    @property
    def auditor_full_pack(self) -> bool: ...


class PageOperations(PackSite, Protocol):
    """What the pages need of the receiver (``ingest.Receiver``, the API's ``StudyOperations``): what a pack
    writer needs, and deciding a study again."""

    @property
    def settings(self) -> PageFolders: ...

    def decide(self, study_uid: str, *, last_arrival_seen: dt.datetime) -> StudyDecisionUnderPolicy | None: ...


@cache
def templates() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("dicomcheck.ui", "templates"),
        autoescape=True,  # every value is escaped, whatever the template's name
        undefined=jinja2.StrictUndefined,
    )
    env.globals.update(version=__version__)
    env.filters.update(
        outcome_label=outcome_label,
        session_verdict=session_verdict_label,
        kind_words=kind_words,
        writer_name=writer_name,
        why_review=why_review,
        error_class=error_class,
        when=when,
        age=lambda days: f"{days * 24:.0f} h" if days < 1 else f"{days:.1f} days",
        day=lambda value: value.strftime("%Y-%m-%d") if value else "-",
        study_date=lambda v: f"{v[:4]}-{v[4:6]}-{v[6:]}" if v and len(v) == 8 and v.isdigit() else (v or "-"),
    )
    return env


def when(value: dt.datetime | str | None) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def operations_of(request: Request) -> PageOperations:
    return request.app.state.operations


def page_session(request: Request) -> Iterator[IndexSession]:
    with IndexSession.open(request.app.state.operations.engine) as store:
        yield store


Store = Annotated[IndexSession, Depends(page_session)]
Operations = Annotated[PageOperations, Depends(operations_of)]


def secret(request: Request) -> bytes:
    state = request.app.state
    if getattr(state, "ui_secret", None) is None:
        state.ui_secret = session_secret(state.operations.settings.data)
    return state.ui_secret


def own_origin(request: Request) -> str:
    """This server's origin as the browser sees it: the scheme is the connection's, or the X-Forwarded-Proto
    of a trusted TLS-terminating proxy (``forwarded_allow_ips``: uvicorn's proxy headers rewrite the scheme
    before the request gets here); the host is the Host header, which the proxy must pass on."""
    return f"{request.url.scheme}://{request.headers.get('host', '')}"


def origin_ok(request: Request) -> bool:
    """A form post's Origin (when the browser sends one) must be this server."""
    origin = request.headers.get("origin")
    if origin is None:
        return True
    parts = urlsplit(origin)
    return f"{parts.scheme}://{parts.netloc}" == own_origin(request)


def audit(
    store: IndexSession,
    request: Request,
    token: TokenInfo | None,
    event: str,
    action: str,
    *,
    study_uid: str | None = None,
    outcome: int = 0,
    detail: dict[str, Any] | None = None,
    page: bool = True,
) -> None:
    """One audit event for this request (the API's events; the reader is the token's name); a page
    view's detail says ``page``."""
    store.access.audit(
        audit_row(
            event=event,
            action=action,
            method=request.method,
            endpoint=request.url.path,
            token=token,
            study_uid=study_uid,
            client_address=request.client.host if request.client else None,
            outcome=outcome,
            detail={"page": True, **(detail or {})} if page else detail,
        )
    )


class Viewer:
    """The signed-in person: the token (name, role, scope) of a live session, and its CSRF token."""

    def __init__(self, token: TokenInfo, session: PageSession, csrf: str) -> None:
        self.token = token
        self.session = session
        self.csrf = csrf

    @property
    def role(self) -> str:
        return self.token.role


def signed_in(request: Request, store: Store) -> Viewer:
    """The viewer of a valid session cookie whose token is still valid; otherwise off to the sign-in page
    (a revoked or expired token ends the session, audited as a Security Alert)."""
    key = secret(request)
    session = decode(request.cookies.get(COOKIE), key)
    if session is None:
        raise HTTPException(303, "sign in first", headers={"Location": LOGIN})
    found = store.access.verify_session(token_id=session.token_id)
    if isinstance(found, str) or SignOuts(store.reader.bind).ended(session.nonce):
        found = found if isinstance(found, str) else "signed out"  # a copy of a signed-out session's cookie
        audit(store, request, None, "Security Alert", "E", outcome=4, detail={"reason": f"session ended: {found}"})
        raise HTTPException(
            303, "sign in again", headers={"Location": LOGIN, "Set-Cookie": f"{COOKIE}=; Max-Age=0; Path=/ui"}
        )
    return Viewer(found[1], session, session.csrf(key))


SignedIn = Annotated[Viewer, Depends(signed_in)]


def sign_out(store: IndexSession, viewer: Viewer) -> None:
    """End the viewer's session on the server: its cookie (and any copy of it) is refused from now on."""
    SignOuts(store.reader.bind).end(
        viewer.session.nonce, expires_at=dt.datetime.fromtimestamp(viewer.session.expires, dt.UTC)
    )


def bearer_staff(request: Request, store: Store) -> TokenInfo:
    """A reader's or admin's bearer token, for the JSON beside the pages (``GET /equipment``): refused
    like the API refuses (401 without a valid token, 403 for another role), every refusal audited."""
    scheme, _, credential = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not credential.strip():
        audit(store, request, None, "Security Alert", "E", outcome=4, detail={"reason": "no bearer token"}, page=False)
        raise HTTPException(
            401, "a bearer token is required (Authorization: Bearer <token>)", {"WWW-Authenticate": "Bearer"}
        )
    verified = store.access.verify(credential.strip())
    if isinstance(verified, str):
        audit(store, request, None, "Security Alert", "E", outcome=4, detail={"reason": verified}, page=False)
        raise HTTPException(401, verified, {"WWW-Authenticate": "Bearer"})
    if verified.role not in ("reader", "admin"):
        reason = f"role {verified.role} may not use this endpoint"
        audit(store, request, verified, "Security Alert", "E", outcome=4, detail={"reason": reason}, page=False)
        raise HTTPException(403, f"role {verified.role!r} may not use this endpoint (needs reader or admin)")
    return verified


StaffBearer = Annotated[TokenInfo, Depends(bearer_staff)]


def allow(store: IndexSession, request: Request, viewer: Viewer, *roles: str) -> None:
    """403 (audited) unless the viewer's role is one of ``roles``."""
    if viewer.role not in roles:
        audit(
            store,
            request,
            viewer.token,
            "Security Alert",
            "E",
            outcome=4,
            detail={"reason": f"role {viewer.role} may not use this page"},
        )
        raise HTTPException(403, f"role {viewer.role!r} may not use this page (needs {' or '.join(roles)})")


async def form_fields(request: Request) -> dict[str, str]:
    """An urlencoded form's fields (first value of each; the body is bounded by ``http_max_body``)."""
    if not request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        raise HTTPException(415, "forms are posted as application/x-www-form-urlencoded")
    body = (await request.body()).decode("utf-8", errors="replace")
    try:
        fields = parse_qs(body, keep_blank_values=True, max_num_fields=MAX_FORM_FIELDS)
    except ValueError:
        raise HTTPException(422, f"a form has at most {MAX_FORM_FIELDS} fields") from None
    return {k[:64]: v[0][:MAX_FORM_FIELD].replace("\x00", "") for k, v in fields.items()}


Form = Annotated[dict[str, str], Depends(form_fields)]


def checked_form(store: IndexSession, request: Request, viewer: Viewer, form: dict[str, str]) -> dict[str, str]:
    """The form's fields once its Origin and CSRF token hold (403, audited, otherwise)."""
    if not origin_ok(request) or not viewer.session.csrf_ok(secret(request), form.get("csrf")):
        audit(
            store,
            request,
            viewer.token,
            "Security Alert",
            "E",
            outcome=4,
            detail={"reason": "form without this session's CSRF token or from another origin"},
        )
        raise HTTPException(403, "the form is not from this session (reload the page and try again)")
    return form


def render(request: Request, name: str, viewer: Viewer | None, status: int = 200, **context: Any) -> HTMLResponse:
    html = templates().get_template(name).render(request_path=request.url.path, viewer=viewer, **context)
    return HTMLResponse(html, status_code=status, headers=PAGE_HEADERS)


class PageRoute(APIRoute):
    """A page's refusals as pages: a redirect to sign in stays a redirect, any other error (403, 404,
    422 ...) is an HTML page saying why, with the pages' security headers."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def page_handler(request: Request) -> Response:
            try:
                return await handler(request)
            except HTTPException as exc:
                if exc.status_code == 303:
                    return RedirectResponse(LOGIN, status_code=303, headers=dict(exc.headers or {}))
                return render(
                    request,
                    "error.html",
                    None,
                    status=exc.status_code,
                    message=str(exc.detail),
                    status_text=ERROR_TITLES.get(exc.status_code, "Refused"),
                )
            except RequestValidationError as exc:
                wrong = ", ".join(str(e.get("loc", ("?",))[-1]) for e in exc.errors()) or "the request"
                return render(
                    request,
                    "error.html",
                    None,
                    status=422,
                    message=f"not a valid value: {wrong}",
                    status_text=ERROR_TITLES[422],
                )

        return page_handler
