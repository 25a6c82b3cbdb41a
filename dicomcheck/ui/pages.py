"""The web pages for coders and administrators: sign-in, worklist, study, equipment, dashboard, quarantine.

Server-rendered (Jinja2, autoescaped), plain forms, one stylesheet served from the package: no
JavaScript and no external URL, so they work on a hospital network without internet. Every page
view and every change is in the audit trail like an API call.

No `from __future__ import annotations`: FastAPI resolves the handler annotations at runtime.
"""

import datetime as dt
import functools
import hashlib
import importlib.resources
import os
import re
import textwrap
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from ..enums import REGISTRY_ROLES, Outcome, TokenRole
from ..evidence.collect import EvidenceError
from ..evidence.pack import zip_pack
from ..evidence.service import ensure_pack
from ..evidence.thumbnails import thumbnail
from ..registry import RegistryError, parse_device
from ..rules import RULES
from ..sessions import Verdict
from ..store.reads import IndexSession, QueueFilters
from ..store.records import StudyRecord
from ..store.sessions import CarrierRefused, SessionNotFound, Sessions, choose_carrier_audited
from .dashboard import figures, legend
from .inventory import inventory
from .session import COOKIE, encode, new_session
from .web import (
    LOGIN,
    PAGE_HEADERS,
    Form,
    Operations,
    PageOperations,
    PageRoute,
    SignedIn,
    StaffBearer,
    Store,
    Viewer,
    allow,
    audit,
    checked_form,
    origin_ok,
    render,
    secret,
    sign_out,
)
from .words import settled_by, why_review

router = APIRouter(prefix="/ui", include_in_schema=False, route_class=PageRoute)
json_router = APIRouter(tags=["devices"])
UID = r"^[0-9]+(\.[0-9]+)*$"
StudyUid = Annotated[str, PathParam(min_length=1, max_length=64, pattern=UID)]
SeriesUid = Annotated[str, PathParam(min_length=1, max_length=64, pattern=UID)]
SessionId = Annotated[str, PathParam(min_length=28, max_length=28, pattern=r"^ses-[0-9a-f]{24}$")]
WORKLIST_ROWS = 500
"""The worklist shows up to this many studies on one page (no paging below it)."""
THUMBNAIL_SIZE = 192
STAFF = (TokenRole.READER, TokenRole.ADMIN)
ADMIN = (TokenRole.ADMIN,)
FILTER = r"^[^\x00-\x1f]{0,64}$"


# ---------------------------------------------------------------- sign-in


@router.get("", response_class=HTMLResponse)
def home() -> RedirectResponse:
    return RedirectResponse("/ui/worklist", status_code=303)


@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request) -> HTMLResponse:
    return render(request, "login.html", None, error=None)


@router.post("/login", response_class=HTMLResponse)
def login(request: Request, store: Store, form: Form) -> Response:
    """Sign in with an API token (the single field ``token``): no CSRF token here, the Origin is checked."""
    if not origin_ok(request):
        audit(store, request, None, "User Authentication", "E", outcome=4, detail={"reason": "foreign origin"})
        raise HTTPException(403, "sign-in from another origin refused")
    found = store.access.verify_session(token=form.get("token", "").strip())
    if isinstance(found, str):
        audit(store, request, None, "User Authentication", "E", outcome=4, detail={"reason": found})
        return render(request, "login.html", None, status=401, error=f"Sign-in refused: {found}.")
    token_id, token = found
    session = new_session(token_id, token.expires_at.timestamp() if token.expires_at else None)
    audit(store, request, token, "User Authentication", "E", detail={"signed_in": True})
    response = RedirectResponse("/ui/worklist", status_code=303)
    response.set_cookie(
        COOKIE,
        encode(session, secret(request)),
        max_age=max(0, session.expires - int(dt.datetime.now(dt.UTC).timestamp())),
        path="/ui",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


@router.post("/logout", response_class=HTMLResponse)
def logout(request: Request, store: Store, viewer: SignedIn, form: Form) -> RedirectResponse:
    checked_form(store, request, viewer, form)
    sign_out(store, viewer)  # the session ends on the server: a copied cookie no longer works
    audit(store, request, viewer.token, "User Authentication", "E", detail={"signed_out": True})
    response = RedirectResponse(LOGIN, status_code=303)
    response.delete_cookie(COOKIE, path="/ui", httponly=True, samesite="strict")
    return response


@router.get("/static/{name}")
def static(name: Annotated[str, PathParam(pattern=r"^[a-z0-9-]+\.css$")]) -> Response:
    resource = importlib.resources.files("dicomcheck.ui") / "static" / name
    if not resource.is_file():
        raise HTTPException(404, "no such file")
    return Response(
        resource.read_bytes(),
        media_type="text/css",
        headers={"Cache-Control": "max-age=3600", "X-Content-Type-Options": "nosniff"},
    )


# ---------------------------------------------------------------- worklist


def _date(value: str | None) -> dt.datetime | None:
    if not value:
        return None
    try:
        return dt.datetime.combine(dt.date.fromisoformat(value), dt.time(), dt.UTC)
    except ValueError:
        raise HTTPException(422, f"not a date: {value[:20]!r} (use YYYY-MM-DD)") from None


@router.get("/worklist", response_class=HTMLResponse)
def worklist(
    request: Request,
    store: Store,
    viewer: SignedIn,
    station: Annotated[str, Query(pattern=FILTER)] = "",
    modality: Annotated[str, Query(pattern=r"^[A-Za-z0-9]{0,16}$")] = "",
    received_from: Annotated[str, Query(max_length=10)] = "",
    received_to: Annotated[str, Query(max_length=10)] = "",
) -> HTMLResponse:
    auditor = viewer.role == TokenRole.AUDITOR
    until = _date(received_to)
    filters = QueueFilters(
        station=station or None,
        modality=modality.upper() or None,
        received_from=_date(received_from),
        received_before=until + dt.timedelta(days=1) if until else None,
        scope_studies=viewer.token.studies if auditor else None,
        scope_accessions=viewer.token.accessions if auditor else None,
    )
    items = store.reader.review_queue(filters, limit=WORKLIST_ROWS + 1)
    shown = {k: v for k, v in (("station", station), ("modality", modality)) if v}
    shown.update({k: v for k, v in (("received_from", received_from), ("received_to", received_to)) if v})
    audit(
        store,
        request,
        viewer.token,
        "Query",
        "E",
        detail={"worklist": True, "filters": shown, "results": min(len(items), WORKLIST_ROWS)},
    )
    rows = [
        {
            "study": item.study,
            "why": why_review(item.decision.document),
            "stations": sorted(
                {(s.get("equipment") or {}).get("station_name") or "" for s in item.decision.document.get("series", [])}
                - {""}
            ),
        }
        for item in items[:WORKLIST_ROWS]
    ]
    return render(
        request,
        "worklist.html",
        viewer,
        rows=rows,
        more=len(items) > WORKLIST_ROWS,
        limit=WORKLIST_ROWS,
        filters={
            "station": station,
            "modality": modality,
            "received_from": received_from,
            "received_to": received_to,
        },
    )


# ---------------------------------------------------------------- study


def _readable(store: IndexSession, request: Request, viewer: Viewer, study_uid: str) -> StudyRecord:
    """The study if the viewer may read it; the same 404 for one outside an auditor's scope (audited)."""
    study = store.reader.study(study_uid)
    if study is not None and viewer.token.may_read(study.study_instance_uid, study.accession_number):
        return study
    if viewer.role == TokenRole.AUDITOR:
        audit(
            store,
            request,
            viewer.token,
            "Security Alert",
            "R",
            study_uid=study_uid,
            outcome=4,
            detail={"reason": "outside the auditor token's scope" if study is not None else "no such study"},
        )
    raise HTTPException(404, f"no study {study_uid} has been received")


@router.get("/studies/{study_uid}", response_class=HTMLResponse)
def study_page(request: Request, study_uid: StudyUid, store: Store, viewer: SignedIn) -> HTMLResponse:
    study = _readable(store, request, viewer, study_uid)
    decision = store.reader.decision(study.current_decision_id) if study.current_decision_id else None
    document: dict[str, Any] = dict(decision.document) if decision else {}
    audit(
        store,
        request,
        viewer.token,
        "DICOM Instances Accessed",
        "R",
        study_uid=study_uid,
        detail={"outcome": document.get("outcome")},
    )
    reviews = store.access.reviews(study_uid)
    series = [
        {**s, "settled_by": settled_by(s), "why": RULES.get(s.get("origin_rule", ""), "")}
        for s in document.get("series", [])
    ]
    return render(
        request,
        "study.html",
        viewer,
        study=study,
        decision=decision,
        document=document,
        reasons=[{**r, "meaning": RULES.get(r.get("rule", ""), "")} for r in document.get("reasons", [])],
        series=series,
        history=store.reader.decision_history(study_uid),
        reviews=reviews,
        deliveries=store.reader.study_deliveries(study_uid),
        why=why_review(document) if document.get("outcome") == Outcome.NEEDS_REVIEW else [],
        outcomes=list(Outcome),
        may_review=viewer.role in STAFF and decision is not None,
        saved=request.query_params.get("saved") == "1",
        **(_session_part(store, study_uid, may_choose=viewer.role in STAFF) if decision else NO_SESSION),
        carrier_saved=request.query_params.get("carrier") == "1",
    )


NO_SESSION: dict[str, Any] = {"session": None, "carrier_choices": []}


def _session_part(store: IndexSession, study_uid: str, *, may_choose: bool) -> dict[str, Any]:
    """The study's session (issue 13) as the page shows it, and the studies a coder may choose to carry its code
    (none when the viewer may not choose, the study is alone, or fewer than two studies could carry it)."""
    session = Sessions(store.reader.bind).of_study(study_uid)
    if session is None:
        return NO_SESSION
    coded = [study.study_instance_uid for study in session.studies if study.code]
    asks = len(coded) >= 2 or (session.verdict is Verdict.UNKNOWN_REGIONS and bool(coded))
    choices = coded if may_choose and session.session_id and asks else []
    return {"session": session.model_dump(mode="json"), "carrier_choices": choices}


# ---------------------------------------------------------------- sessions (issue 13)


@router.get("/sessions", response_class=HTMLResponse)
def sessions_page(request: Request, store: Store, viewer: SignedIn) -> HTMLResponse:
    """Sessions whose verdict asks the coder to choose (``one_unit`` across several coded studies,
    ``unknown_regions``): a page of its own, not mixed into the worklist."""
    allow(store, request, viewer, *STAFF)
    found = Sessions(store.reader.bind).asking_to_choose(limit=WORKLIST_ROWS + 1)
    audit(store, request, viewer.token, "Query", "E", detail={"sessions": True, "results": len(found)})
    return render(
        request,
        "sessions.html",
        viewer,
        sessions=found[:WORKLIST_ROWS],
        more=len(found) > WORKLIST_ROWS,
        limit=WORKLIST_ROWS,
        saved=request.query_params.get("saved") == "1",
    )


@router.post("/sessions/{session_id}/carrier", response_class=HTMLResponse)
def choose_carrier(request: Request, session_id: SessionId, store: Store, viewer: SignedIn, form: Form) -> Response:
    """A coder's choice of the study that carries the session's code: the same choice the API records
    (``POST /sessions/{session_id}/carrier``), audited, every study of the session recomputed at once."""
    allow(store, request, viewer, *STAFF)
    fields = checked_form(store, request, viewer, form)
    study_uid = fields.get("study_instance_uid", "").strip()
    reason = fields.get("reason", "").strip()
    reviewer = fields.get("reviewer", "").strip() or viewer.token.name
    back = fields.get("from_study", "").strip()
    if not re.match(UID, study_uid) or len(study_uid) > 64:
        raise HTTPException(422, "choose the study that carries the session's code")
    if len(reason) < 3 or len(reason) > 2000 or len(reviewer) > 128 or "\x00" in reason + reviewer:
        raise HTTPException(422, "give a reason (3 to 2000 characters) and a reviewer name (up to 128)")
    try:
        choose_carrier_audited(
            store,
            session_id,
            study_uid,
            reviewer=reviewer,
            token_name=viewer.token.name,
            reason=reason,
            audit=functools.partial(audit, store, request, viewer.token, "Procedure Record", "U", study_uid=study_uid),
        )
    except (SessionNotFound, CarrierRefused) as exc:
        raise HTTPException(404 if isinstance(exc, SessionNotFound) else 409, str(exc)) from None
    if back and re.match(UID, back) and len(back) <= 64:  # only a study of this index's pages, never a URL
        return RedirectResponse(f"/ui/studies/{back}?carrier=1#session", status_code=303)
    return RedirectResponse("/ui/sessions?saved=1", status_code=303)


@router.post("/studies/{study_uid}/review", response_class=HTMLResponse)
def record_review(
    request: Request, study_uid: StudyUid, store: Store, viewer: SignedIn, form: Form, operations: Operations
) -> Response:
    """The coder's final outcome: the same review the API records (``POST /studies/{uid}/review``), counted in the
    study's session at once; the evidence pack with the review is written at once beside the decision's own."""
    allow(store, request, viewer, *STAFF)
    fields = checked_form(store, request, viewer, form)
    study = _readable(store, request, viewer, study_uid)
    try:
        outcome = Outcome(fields.get("outcome", ""))
    except ValueError:
        raise HTTPException(422, "choose an outcome") from None
    reason = fields.get("reason", "").strip()
    reviewer = fields.get("reviewer", "").strip() or viewer.token.name
    if not reason or len(reason) > 2000 or len(reviewer) > 128:
        raise HTTPException(422, "give a reason (up to 2000 characters) and a reviewer name (up to 128)")
    with store.transaction():  # the review, its study's session recomputed (issue 13) and the audit event: one COMMIT
        saved = store.access.add_review(
            study_uid=study_uid,
            decision_id=study.current_decision_id,
            outcome=outcome.value,
            code=outcome.code,
            reviewer=reviewer,
            token_name=viewer.token.name,
            reason=reason,
        )
        Sessions(store.reader.bind).after_review(study_uid)
        audit(
            store,
            request,
            viewer.token,
            "Procedure Record",
            "C",
            study_uid=study_uid,
            detail={"review_id": saved.id, "outcome": outcome.value},
        )
    if study.current_decision_id is not None:
        try:
            ensure_pack(operations, study_uid)
        except EvidenceError:
            pass  # the pack is written on its first download instead (e.g. a stored file is missing)
    return RedirectResponse(f"/ui/studies/{study_uid}?saved=1", status_code=303)


@router.get("/studies/{study_uid}/series/{series_uid}/thumbnail")
def series_thumbnail(
    request: Request,
    study_uid: StudyUid,
    series_uid: SeriesUid,
    store: Store,
    viewer: SignedIn,
    operations: Operations,
) -> Response:
    """A picture of the series' middle image, rendered once and cached in the data folder; an SVG
    with the reason when there is no picture (no pixel data, kept header only, undecodable)."""
    _readable(store, request, viewer, study_uid)
    members = [i for i in store.reader.instances_of_study(study_uid) if i.series_instance_uid == series_uid]
    if not members:
        raise HTTPException(404, "no such series in this study")
    newest = {i.sop_instance_uid: i for i in members}  # the last stored version of each instance
    chosen = sorted(newest.values(), key=lambda i: i.id)[len(newest) // 2]
    allow_burned_in = viewer.role != TokenRole.AUDITOR
    audit(
        store,
        request,
        viewer.token,
        "DICOM Instances Accessed",
        "R",
        study_uid=study_uid,
        detail={"thumbnail": chosen.sop_instance_uid},
    )
    settings = operations.settings
    cache = settings.data / "ui-thumbnails"
    name = f"{chosen.sha256}-{THUMBNAIL_SIZE}{'' if allow_burned_in else '-noburn'}"
    png = cache / f"{name}.png"
    if png.is_file():
        return Response(png.read_bytes(), media_type="image/png", headers=PAGE_HEADERS)
    picture = thumbnail(settings.storage_dir / chosen.path, size=THUMBNAIL_SIZE, allow_burned_in=allow_burned_in)
    if picture.png is None:
        lines = textwrap.wrap(picture.note or "", 26)[:6]
        svg = render(request, "no_picture.svg", None, lines=lines)
        return Response(svg.body, media_type="image/svg+xml", headers=PAGE_HEADERS)
    _write_once(png, picture.png)
    return Response(picture.png, media_type="image/png", headers=PAGE_HEADERS)


def _write_once(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_suffix(f".{os.getpid()}.{hashlib.sha256(data).hexdigest()[:8]}.part")
    temp.write_bytes(data)
    os.replace(temp, path)


@router.get("/studies/{study_uid}/evidence.{kind}")
def evidence_download(
    request: Request,
    study_uid: StudyUid,
    kind: Annotated[str, PathParam(pattern="^(pdf|zip)$")],
    store: Store,
    viewer: SignedIn,
    operations: Operations,
) -> Response:
    """The evidence pack of the current decision (with the coder's review when there is one)."""
    study = _readable(store, request, viewer, study_uid)
    if study.current_decision_id is None:
        raise HTTPException(409, f"study {study_uid} is pending: no decision to document yet")
    minimal = viewer.role == TokenRole.AUDITOR and not operations.settings.auditor_full_pack
    try:
        folder = ensure_pack(operations, study_uid, minimal=minimal)
    except EvidenceError as exc:
        raise HTTPException(409, str(exc)) from None
    audit(
        store,
        request,
        viewer.token,
        "Data Export",
        "R",
        study_uid=study_uid,
        detail={"evidence": kind, "minimal": minimal, "pack": folder.name},
    )
    if kind == "pdf":
        data, media, filename = (folder / "report.pdf").read_bytes(), "application/pdf", f"evidence-{study_uid}.pdf"
    else:
        data, media, filename = zip_pack(folder), "application/zip", f"evidence-{study_uid}-{folder.name}.zip"
    return Response(data, media_type=media, headers={"Content-Disposition": f'attachment; filename="{filename}"'})


# ---------------------------------------------------------------- equipment


@router.get("/equipment", response_class=HTMLResponse)
def equipment_page(request: Request, store: Store, viewer: SignedIn, operations: Operations) -> HTMLResponse:
    allow(store, request, viewer, *STAFF)
    return _equipment(request, store, viewer, operations)


@json_router.get(
    "/equipment", summary="Every writer seen in derived series, how its role was settled, the studies it holds"
)
def equipment_json(request: Request, token: StaffBearer, store: Store) -> dict[str, list[dict[str, Any]]]:
    """The equipment inventory (readers and admins). Each item: the writer's identity (manufacturer, model,
    station, serial, software, Secondary Capture device, sending AE title), how its role was settled
    (registry entry, built-in fingerprint, in-study comparison, unknown), its series by kind, first and
    last seen, and ``held_studies``: the studies whose current outcome is ``needs_review`` because a
    derived series it wrote has an unknown origin (registering it can release them)."""
    items = [w.as_json() for w in inventory(store.reader)]
    audit(store, request, token, "Query", "E", detail={"equipment": True, "writers": len(items)}, page=False)
    return {"items": items}


REDECIDE_LIMIT = 200
"""Studies re-decided in the request that registers a device; any beyond are listed for ``reanalyze``."""
DEVICE_TEXT = {"station_name": 64, "device_serial_number": 64, "manufacturer": 64, "model": 64, "ae_title": 16}


@router.post("/equipment/register", response_class=HTMLResponse)
def register_device(
    request: Request, store: Store, viewer: SignedIn, form: Form, operations: Operations
) -> HTMLResponse:
    """An admin registers a writer from its inventory row: the registry entry is written (as ``POST
    /devices`` writes it), then the studies the writers it matches hold in review, and every other study
    with equipment it matches, are re-decided at once (up to ``REDECIDE_LIMIT``); the page shows each
    study's old and new outcome."""
    allow(store, request, viewer, *ADMIN)
    fields = checked_form(store, request, viewer, form)
    values: dict[str, Any] = {k: fields[k].strip() for k in DEVICE_TEXT if fields.get(k, "").strip()}
    values["role"] = fields.get("role", "")
    for key in ("note", "valid_from", "valid_to"):
        if fields.get(key, "").strip():
            values[key] = fields[key].strip()
    too_long = [k for k, limit in DEVICE_TEXT.items() if len(values.get(k, "")) > limit]
    try:
        if too_long or len(values.get("note", "")) > 1000:
            raise RegistryError(f"too long: {', '.join(too_long) or 'note'}")
        device = parse_device(values)
    except RegistryError as exc:
        return _equipment(request, store, viewer, operations, error=str(exc).removeprefix("device: "))
    values.update(valid_from=device.valid_from, valid_to=device.valid_to)
    held = {uid for w in inventory(store.reader) if _entry_matches(values, w.identity) for uid in w.held_studies}
    saved = store.access.save_device(
        {k: values.get(k) for k in (*DEVICE_TEXT, "role", "note", "valid_from", "valid_to")},
        device_id=None,
        token_name=viewer.token.name,
    )
    audit(
        store,
        request,
        viewer.token,
        "Security Alert",
        "C",
        detail={"device_id": saved.id, "change": "registry entry created", "page": "equipment"},
    )
    matched = store.reader.studies_using_equipment(
        station_name=saved.station_name,
        device_serial_number=saved.device_serial_number,
        ae_title=saved.ae_title,
        manufacturer=saved.manufacturer,
        model=saved.model,
    )
    affected = [*sorted(held), *sorted(set(matched) - held)]
    changes = _redecide(store, request, viewer, operations, affected[:REDECIDE_LIMIT])
    return _equipment(
        request,
        store,
        viewer,
        operations,
        changes={"device": saved, "studies": changes, "left": affected[REDECIDE_LIMIT:]},
    )


def _entry_matches(entry: dict[str, Any], identity: dict[str, str | None]) -> bool:
    """Whether a registry entry's keys name this writer (as ``Registry.match`` compares: trimmed, any case)."""

    def same(a: object, b: object) -> bool:
        return bool(a) and bool(b) and str(a).strip().casefold() == str(b).strip().casefold()

    singles = any(same(entry.get(k), identity.get(k)) for k in ("station_name", "device_serial_number", "ae_title"))
    pair = same(entry.get("manufacturer"), identity.get("manufacturer")) and same(
        entry.get("model"), identity.get("model")
    )
    return singles or pair


def _redecide(
    store: IndexSession, request: Request, viewer: Viewer, operations: PageOperations, uids: list[str]
) -> list[dict[str, Any]]:
    """Re-decide each study now (as ``POST /studies/{uid}/reanalyze`` does); its old and new outcome."""
    out = []
    for uid in uids:
        if not re.match(UID, uid):
            continue
        study = store.reader.study(uid)
        if study is None:
            continue
        before = store.reader.decision(study.current_decision_id) if study.current_decision_id else None
        record = operations.decide(uid, last_arrival_seen=study.last_arrival)
        after = record.outcome.value if record is not None else None
        audit(
            store,
            request,
            viewer.token,
            "Procedure Record",
            "U",
            study_uid=uid,
            detail={"reanalyzed": True, "outcome": after, "after": "device registered"},
        )
        out.append(
            {
                "study": study,
                "before": before.outcome if before else None,
                "after": after,
                "note": None if record is not None else "not decided now (instances still arriving): decided later",
            }
        )
    return out


def _equipment(
    request: Request,
    store: IndexSession,
    viewer: Viewer,
    operations: PageOperations,
    *,
    changes: dict[str, Any] | None = None,
    error: str | None = None,
) -> HTMLResponse:
    """The inventory page: after a registration with what it changed, after a refused one (422) with why;
    a page that shows the inventory is audited as a query."""
    writers = inventory(store.reader)
    if error is None:
        audit(store, request, viewer.token, "Query", "E", detail={"equipment": True, "writers": len(writers)})
    return render(
        request,
        "equipment.html",
        viewer,
        status=422 if error is not None else 200,
        writers=writers,
        registry=operations.effective_registry(),
        roles=[r.value for r in REGISTRY_ROLES],
        changes=changes,
        error=error,
    )


# ---------------------------------------------------------------- dashboard and quarantine


@router.get("/dashboard", response_class=HTMLResponse)
def dashboard(request: Request, store: Store, viewer: SignedIn) -> HTMLResponse:
    allow(store, request, viewer, *STAFF)
    numbers = figures(store.reader)
    audit(store, request, viewer.token, "Query", "E", detail={"dashboard": True, "decided": numbers.decided})
    return render(request, "dashboard.html", viewer, f=numbers, legend=legend())


@router.get("/quarantine", response_class=HTMLResponse)
def quarantine(request: Request, store: Store, viewer: SignedIn) -> HTMLResponse:
    allow(store, request, viewer, *ADMIN)
    total, entries = store.reader.quarantined(limit=WORKLIST_ROWS)
    audit(store, request, viewer.token, "Query", "E", detail={"quarantine": True, "results": len(entries)})
    return render(request, "quarantine.html", viewer, total=total, entries=entries, limit=WORKLIST_ROWS)
