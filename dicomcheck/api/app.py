"""The study-level lookup API for billing systems (FastAPI), on the receiver's index.

Every endpoint but ``/healthz`` needs a bearer token; every read of study data, every change and
every refused request writes an audit event named after the DICOM / IHE ATNA vocabulary.
"""

# No `from __future__ import annotations`: FastAPI resolves the dependency annotations at runtime.

import base64
import binascii
import csv
import datetime as dt
import io
import json
import re
import time
from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, FastAPI, HTTPException, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi_offline import FastAPIOffline
from starlette.concurrency import run_in_threadpool
from sqlalchemy import and_, or_, select, text
from sqlmodel import Session

from .. import __version__
from ..ingest import Receiver
from ..registry import RegistryError, _parse_device
from ..store.access import Access, TokenInfo
from ..store.tables import Decision, Series, Study
from .. import metrics
from .schemas import (
    NO_NUL_PATTERN,
    UID_PATTERN,
    AuditOut,
    DecisionOut,
    DeviceChangeOut,
    DeviceIn,
    DeviceOut,
    ErrorOut,
    Health,
    OutcomeName,
    ReviewIn,
    ReviewOut,
    StudyOut,
    StudyPage,
    StudySearch,
    StudySummary,
)

StudyUid = Annotated[str, Path(min_length=1, max_length=64, pattern=UID_PATTERN, description="Study Instance UID")]
MAX_EXPORT_ROWS = 100_000
DOCS_ASSETS = "/docs/assets"  # Swagger UI / ReDoc files, served from the fastapi-offline package (no CDN)
NOT_FOUND = "no study {uid} has been received"  # also an auditor's answer for a study outside its scope


def _client(request: Request) -> str | None:
    return request.client.host if request.client else None


def create_app(receiver: Receiver) -> FastAPI:
    """The API app on one receiver's index (no import-time state)."""
    error = {"model": ErrorOut}
    settings = receiver.settings
    app = FastAPIOffline(
        responses={400: {**error, "description": "Bad request (e.g. a cursor not from a previous page)"},
                   401: {**error, "description": "No, unknown, expired or revoked token"},
                   403: {**error, "description": "The token's role does not allow this"},
                   404: {**error, "description": "No such study or device (auditors: or outside the token's scope)"},
                   409: {**error, "description": "The study has no decision yet"},
                   413: {**error, "description": "The request body is larger than the server accepts"}},
        static_url=DOCS_ASSETS,
        max_body_size=settings.http_max_body,
        title="dicomcheck",
        version=__version__,
        description="What the images of a study prove about its 3D post-processing (CPT 76376 / 76377 evidence). "
        "Authenticate with `Authorization: Bearer <token>` (`dicomcheck token create`).",
    )
    access = Access(receiver.engine)
    app.state.receiver = receiver
    app.state.access = access

    def audit(request: Request, token: TokenInfo | None, event: str, action: str, *, study_uid: str | None = None,
              outcome: int = 0, detail: dict | None = None) -> None:
        access.audit(event=event, action=action, method=request.method, endpoint=request.url.path, token=token,
                     study_uid=study_uid, client_address=_client(request), outcome=outcome, detail=detail)

    def require(*roles: str) -> Callable[[Request], TokenInfo]:
        def dependency(request: Request) -> TokenInfo:
            header = request.headers.get("authorization", "")
            scheme, _, credential = header.partition(" ")
            if scheme.lower() != "bearer" or not credential.strip():
                audit(request, None, "Security Alert", "E", outcome=4, detail={"reason": "no bearer token"})
                raise HTTPException(401, "a bearer token is required (Authorization: Bearer <token>)", headers={"WWW-Authenticate": "Bearer"})
            verified = access.verify(credential.strip())
            if isinstance(verified, str):
                audit(request, None, "Security Alert", "E", outcome=4, detail={"reason": verified})
                raise HTTPException(401, verified, headers={"WWW-Authenticate": "Bearer"})
            if verified.role not in roles:
                audit(request, verified, "Security Alert", "E", outcome=4, detail={"reason": f"role {verified.role} may not use this endpoint"})
                raise HTTPException(403, f"role {verified.role!r} may not use this endpoint (needs {' or '.join(roles)})")
            return verified

        return dependency

    anyone = require("reader", "admin", "auditor")
    staff = require("reader", "admin")
    admin = require("admin")

    guards = {anyone, staff, admin}

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI validates the body and parameters before it runs the token dependency: a request
        # that also lacks a valid token is answered (and audited) as unauthenticated first.
        route = request.scope.get("route")
        guard = next((d.call for d in getattr(getattr(route, "dependant", None), "dependencies", ()) if d.call in guards), None)
        if guard is not None:
            try:
                await run_in_threadpool(guard, request)
            except HTTPException as refused:
                return JSONResponse({"detail": refused.detail}, status_code=refused.status_code, headers=refused.headers)
        errors = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")} for e in exc.errors()]
        return JSONResponse({"detail": errors}, status_code=422)

    @app.middleware("http")
    async def _timing(request: Request, call_next):
        started = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        metrics.REQUEST_LATENCY.labels(getattr(route, "path", "unmatched"), request.method, str(response.status_code)).observe(time.perf_counter() - started)
        return response

    # ---------------------------------------------------------------- helpers
    def study_row(study_uid: str) -> Study:
        row = receiver.index.get_study(study_uid)
        if row is None:
            raise HTTPException(404, NOT_FOUND.format(uid=study_uid))
        return row

    def check_scope(request: Request, token: TokenInfo, study_uid: str) -> Study:
        """The study a token may read: an auditor gets the same 404 for a study outside its scope
        as for one never received, so it cannot learn which studies exist (both are audited)."""
        row = receiver.index.get_study(study_uid)
        if row is not None and token.may_read(row.study_instance_uid, row.accession_number):
            return row
        if token.role == "auditor":
            audit(request, token, "Security Alert", "R", study_uid=study_uid, outcome=4,
                  detail={"reason": "outside the auditor token's scope" if row is not None else "no such study"})
        raise HTTPException(404, NOT_FOUND.format(uid=study_uid))

    def study_view(row: Study, token: TokenInfo, *, read_by: Request | None) -> dict:
        """The study as served; ``read_by``: record this client's read and audit it (one commit)."""
        decision = None
        if row.current_decision_id is not None:
            with Session(receiver.engine) as session:
                decision = session.get(Decision, row.current_decision_id)
        if decision is not None:
            document = dict(decision.document)
        else:
            evaluated = receiver.evaluate(row.study_instance_uid)
            if evaluated is None:
                raise HTTPException(404, f"no instances of study {row.study_instance_uid} are indexed")
            document = evaluated[0]
        reviews = access.reviews(row.study_instance_uid)
        changed = False
        if read_by is not None:
            audit_fields = {"event": "DICOM Instances Accessed", "action": "R", "outcome": 0, "token_name": token.name,
                            "role": token.role, "method": read_by.method, "endpoint": read_by.url.path,
                            "study_instance_uid": row.study_instance_uid, "client_address": _client(read_by),
                            "detail": {"outcome": document.get("outcome")}}
            previous = access.record_read(row.study_instance_uid, token.name, decision.id if decision else None, audit=audit_fields)
            changed = previous is not None and previous.decision_id != (decision.id if decision else None)
        document.update(
            status="decided" if decision is not None and not row.needs_decision else "pending",
            instance_count=row.instance_count,
            first_arrival=row.first_arrival,
            last_arrival=row.last_arrival,
            decided_at=decision.decided_at if decision else None,
            decision_id=decision.id if decision else None,
            rules_version=decision.rules_version if decision else None,
            changed_after_read=changed,
            review=_review_out(reviews[-1]) if reviews else None,
        )
        return document

    # ---------------------------------------------------------------- health and metrics
    @app.get("/healthz", response_model=Health, tags=["operations"], summary="Liveness and index reachability",
             responses={503: {"model": Health, "description": "The index is unreachable"}})
    def healthz() -> JSONResponse:
        # A bad --devices file degrades (decisions go on with its last good version) but stays 200:
        # this node still serves lookups; 503 only when the index is unreachable.
        registry = receiver.reload_registry()
        body = {"status": "ok", "index": "reachable", "version": __version__,
                "registry": "none" if receiver.settings.devices is None else "error" if registry.error else "ok"}
        if registry.error:
            body.update(status="degraded", reason=f"device registry unusable, deciding with its last good version: {registry.error}"[:500])
        try:
            with receiver.engine.connect() as connection:
                connection.execute(text("SELECT 1"))
            return JSONResponse(body)
        except Exception:  # noqa: BLE001
            body.update(status="degraded", index="unreachable")
            body.setdefault("reason", "index unreachable")
            return JSONResponse(body, status_code=503)

    @app.get("/metrics", response_class=PlainTextResponse, tags=["operations"], summary="Prometheus metrics")
    def prometheus(token: Annotated[TokenInfo, Depends(staff)]) -> PlainTextResponse:
        body, content_type = metrics.exposition()
        return PlainTextResponse(body, media_type=content_type)

    # ---------------------------------------------------------------- studies
    @app.get("/studies/{study_uid}", response_model=StudyOut, tags=["studies"], summary="A study's outcome, reasons, series and evidence")
    def get_study(study_uid: StudyUid, request: Request, token: Annotated[TokenInfo, Depends(anyone)]) -> dict:
        row = check_scope(request, token, study_uid)
        return study_view(row, token, read_by=request)

    @app.get("/studies/{study_uid}/decisions", response_model=list[DecisionOut], tags=["studies"], summary="The decision history of a study")
    def get_decisions(study_uid: StudyUid, request: Request, token: Annotated[TokenInfo, Depends(anyone)]) -> list[dict]:
        row = check_scope(request, token, study_uid)
        history = receiver.index.decisions(study_uid)
        audit(request, token, "DICOM Instances Accessed", "R", study_uid=study_uid, detail={"decisions": len(history)})
        return [
            {"id": d.id, "decided_at": d.decided_at, "node": d.node, "rules_version": d.rules_version,
             "dicomcheck_version": d.dicomcheck_version, "outcome": d.outcome, "code": d.code,
             "instance_count": d.instance_count, "registry_path": d.registry_path, "current": d.id == row.current_decision_id}
            for d in history
        ]

    def list_studies(request: Request, token: TokenInfo, search: StudySearch) -> dict:
        after = _decode_cursor(search.cursor) if search.cursor else None
        query = select(Study, Decision.outcome, Decision.code).outerjoin(Decision, Decision.id == Study.current_decision_id)
        if search.accession:
            query = query.where(Study.accession_number == search.accession)
        if search.patient_id:
            query = query.where(Study.patient_id == search.patient_id)
        if search.outcome:
            query = query.where(Decision.outcome == search.outcome.value)
        if search.modality:
            query = query.where(Study.study_instance_uid.in_(select(Series.study_instance_uid).where(Series.modality == search.modality)))
        if search.received_from:
            query = query.where(Study.last_arrival >= search.received_from)
        if search.received_to:
            query = query.where(Study.first_arrival <= search.received_to)
        if token.role == "auditor":
            query = query.where(or_(Study.study_instance_uid.in_(token.studies or ("",)), Study.accession_number.in_(token.accessions or ("",))))
        if after:
            when, uid = after
            query = query.where(or_(Study.first_arrival < when, and_(Study.first_arrival == when, Study.study_instance_uid < uid)))
        query = query.order_by(Study.first_arrival.desc(), Study.study_instance_uid.desc()).limit(search.limit + 1)
        with Session(receiver.engine) as session:
            rows = session.execute(query).all()
        items = [
            StudySummary(study_instance_uid=s.study_instance_uid, accession_number=s.accession_number, study_date=s.study_date,
                         study_description=s.study_description, modalities=s.modalities, instance_count=s.instance_count,
                         first_arrival=s.first_arrival, last_arrival=s.last_arrival,
                         status="decided" if s.current_decision_id and not s.needs_decision else "pending",
                         outcome=outcome, code=code, decided_at=s.decided_at)
            for s, outcome, code in rows[: search.limit]
        ]
        next_cursor = _encode_cursor(rows[search.limit - 1][0]) if len(rows) > search.limit else None
        filters = search.model_dump(exclude_none=True, exclude={"limit", "cursor", "patient_id"}, mode="json")
        if search.patient_id:
            filters["patient_id"] = "(given)"  # the audit trail records that it was searched, not the value
        audit(request, token, "Query", "E", detail={"filters": filters, "results": len(items)})
        return {"items": items, "next_cursor": next_cursor}

    @app.get("/studies", response_model=StudyPage, tags=["studies"], summary="Find studies (cursor-paginated, newest first)")
    def find_studies(
        request: Request,
        token: Annotated[TokenInfo, Depends(anyone)],
        accession: Annotated[str | None, Query(max_length=64, pattern=NO_NUL_PATTERN)] = None,
        patient_id: Annotated[str | None, Query(max_length=64, pattern=NO_NUL_PATTERN, description="Prefer POST /studies/search: query strings end up in access logs (dicomcheck redacts this one from its own).")] = None,
        outcome: OutcomeName | None = None,
        modality: Annotated[str | None, Query(max_length=16, pattern=r"^[A-Z0-9]{1,16}$")] = None,
        received_from: dt.datetime | None = None,
        received_to: dt.datetime | None = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        cursor: Annotated[str | None, Query(max_length=512, pattern=r"^[A-Za-z0-9_-]+$", description="next_cursor of the previous page")] = None,
    ) -> dict:
        search = StudySearch(accession=accession, patient_id=patient_id, outcome=outcome, modality=modality,
                             received_from=received_from, received_to=received_to, limit=limit, cursor=cursor)
        return list_studies(request, token, search)

    @app.post("/studies/search", response_model=StudyPage, tags=["studies"], summary="Find studies by a JSON body (keeps patient IDs out of URLs)")
    def search_studies(search: StudySearch, request: Request, token: Annotated[TokenInfo, Depends(anyone)]) -> dict:
        return list_studies(request, token, search)

    @app.post("/studies/{study_uid}/reanalyze", response_model=StudyOut, tags=["studies"], summary="Re-run the rules on the stored headers now")
    def reanalyze(study_uid: StudyUid, request: Request, token: Annotated[TokenInfo, Depends(admin)]) -> dict:
        row = study_row(study_uid)
        receiver.decide(study_uid, last_arrival_seen=row.last_arrival)
        row = study_row(study_uid)
        view = study_view(row, token, read_by=None)
        audit(request, token, "Procedure Record", "U", study_uid=study_uid, detail={"reanalyzed": True, "outcome": view["outcome"]})
        return view

    @app.post("/studies/{study_uid}/review", response_model=ReviewOut, status_code=201, tags=["studies"], summary="Record a coder's final outcome")
    def review(study_uid: StudyUid, body: ReviewIn, request: Request, token: Annotated[TokenInfo, Depends(staff)]) -> dict:
        row = study_row(study_uid)
        code = {"supports_76377": "76377", "supports_76376": "76376"}.get(body.outcome.value)
        saved = access.add_review(study_uid=study_uid, decision_id=row.current_decision_id, outcome=body.outcome.value, code=code,
                                  reviewer=body.reviewer, token_name=token.name, reason=body.reason)
        audit(request, token, "Procedure Record", "C", study_uid=study_uid, detail={"review_id": saved.id, "outcome": body.outcome.value})
        return _review_out(saved)

    # ---------------------------------------------------------------- evidence packs
    def pack_minimal(token: TokenInfo, minimal: bool) -> bool:
        """Auditors (payers, outside the organisation) get the PHI-minimal pack unless the site says otherwise."""
        return minimal or (token.role == "auditor" and not settings.auditor_full_pack)

    def pack_for(request: Request, token: TokenInfo, study_uid: str, minimal: bool, kind: str):
        from ..evidence.collect import EvidenceError
        from ..evidence.service import ensure_pack

        row = check_scope(request, token, study_uid)
        if row.current_decision_id is None:
            raise HTTPException(409, f"study {study_uid} is pending: no decision to document yet")
        try:
            folder = ensure_pack(receiver, study_uid, minimal=minimal)
        except EvidenceError as exc:
            raise HTTPException(409, str(exc)) from None
        audit(request, token, "Data Export", "R", study_uid=study_uid, detail={"evidence": kind, "minimal": minimal, "pack": folder.name})
        return folder

    @app.get("/studies/{study_uid}/evidence", tags=["evidence"], summary="The evidence pack of the current decision (JSON)")
    def evidence_json(study_uid: StudyUid, request: Request, token: Annotated[TokenInfo, Depends(anyone)], minimal: bool = False) -> dict:
        minimal = pack_minimal(token, minimal)
        folder = pack_for(request, token, study_uid, minimal, "json")
        base = f"/studies/{study_uid}"
        return {"pack": folder.name,
                "manifest": json.loads((folder / "manifest.json").read_text()),
                "signature": (folder / "manifest.sig").read_text().strip(),
                "evidence": json.loads((folder / "evidence.json").read_text()),
                "links": {"pdf": f"{base}/evidence.pdf" + ("?minimal=true" if minimal else ""),
                          "zip": f"{base}/evidence.zip" + ("?minimal=true" if minimal else "")}}

    @app.get("/studies/{study_uid}/evidence.pdf", tags=["evidence"], summary="The readable evidence report (PDF)",
             responses={200: {"content": {"application/pdf": {}}}}, response_class=Response)
    def evidence_pdf(study_uid: StudyUid, request: Request, token: Annotated[TokenInfo, Depends(anyone)], minimal: bool = False) -> Response:
        folder = pack_for(request, token, study_uid, pack_minimal(token, minimal), "pdf")
        return Response((folder / "report.pdf").read_bytes(), media_type="application/pdf",
                        headers={"Content-Disposition": f'attachment; filename="evidence-{study_uid}.pdf"'})

    @app.get("/studies/{study_uid}/evidence.zip", tags=["evidence"], summary="The whole signed pack (ZIP)",
             responses={200: {"content": {"application/zip": {}}}}, response_class=Response)
    def evidence_zip(study_uid: StudyUid, request: Request, token: Annotated[TokenInfo, Depends(anyone)], minimal: bool = False) -> Response:
        from ..evidence.pack import zip_pack

        folder = pack_for(request, token, study_uid, pack_minimal(token, minimal), "zip")
        return Response(zip_pack(folder), media_type="application/zip",
                        headers={"Content-Disposition": f'attachment; filename="evidence-{study_uid}-{folder.name}.zip"'})

    # ---------------------------------------------------------------- device registry
    def affected_studies(values: dict) -> list[str]:
        clauses = []
        if values.get("station_name"):
            clauses.append(Series.station_name == values["station_name"])
        if values.get("device_serial_number"):
            clauses.append(Series.device_serial_number == values["device_serial_number"])
        if values.get("ae_title"):
            clauses.append(Series.calling_ae == values["ae_title"])
        if values.get("manufacturer") and values.get("model"):
            clauses.append(and_(Series.manufacturer == values["manufacturer"], Series.model == values["model"]))
        if not clauses:
            return []
        with Session(receiver.engine) as session:
            return sorted(set(session.execute(select(Series.study_instance_uid).where(or_(*clauses))).scalars()))

    def validated(body: DeviceIn) -> dict:
        values = body.model_dump(mode="python")
        try:
            _parse_device({k: (v.isoformat() if isinstance(v, dt.date) else v) for k, v in values.items() if v is not None}, "device", 0)
        except RegistryError as exc:  # the registry's own rules, reported like any validation error
            raise RequestValidationError([{"loc": ("body",), "msg": str(exc).removeprefix("device: "), "type": "value_error"}]) from None
        values["role"] = body.role.value
        return values

    def device_out(device_id: int) -> dict:
        device = access.get_device(device_id)
        if device is None:
            raise HTTPException(404, f"no device {device_id}")
        return _device_out(device)

    def change_response(device, before: dict | None, after: dict | None) -> dict:
        affected = sorted(set(affected_studies(before or {})) | set(affected_studies(after or {})))
        return {"device": _device_out(device) if device else None, "affected_studies": affected,
                "reanalyze": "POST /studies/{uid}/reanalyze for each affected study"}

    @app.get("/devices", response_model=list[DeviceOut], tags=["devices"], summary="The site device registry kept in the index")
    def list_devices(request: Request, token: Annotated[TokenInfo, Depends(staff)]) -> list[dict]:
        return [_device_out(d) for d in access.devices()]

    @app.post("/devices", response_model=DeviceChangeOut, status_code=201, tags=["devices"], summary="Add a registry entry")
    def create_device(body: DeviceIn, request: Request, token: Annotated[TokenInfo, Depends(admin)]) -> dict:
        values = validated(body)
        device = access.save_device(values, device_id=None, token_name=token.name)
        audit(request, token, "Security Alert", "C", detail={"device_id": device.id, "change": "registry entry created"})
        return change_response(device, None, values)

    @app.get("/devices/{device_id}", response_model=DeviceOut, tags=["devices"], summary="One registry entry")
    def get_device(device_id: Annotated[int, Path(ge=1, le=2**31 - 1)], request: Request, token: Annotated[TokenInfo, Depends(staff)]) -> dict:
        return device_out(device_id)

    @app.put("/devices/{device_id}", response_model=DeviceChangeOut, tags=["devices"], summary="Replace a registry entry")
    def update_device(device_id: Annotated[int, Path(ge=1, le=2**31 - 1)], body: DeviceIn, request: Request, token: Annotated[TokenInfo, Depends(admin)]) -> dict:
        before = device_out(device_id)
        values = validated(body)
        device = access.save_device(values, device_id=device_id, token_name=token.name)
        audit(request, token, "Security Alert", "U", detail={"device_id": device_id, "change": "registry entry updated"})
        return change_response(device, before, values)

    @app.delete("/devices/{device_id}", response_model=DeviceChangeOut, tags=["devices"], summary="Remove a registry entry")
    def delete_device(device_id: Annotated[int, Path(ge=1, le=2**31 - 1)], request: Request, token: Annotated[TokenInfo, Depends(admin)]) -> dict:
        before = device_out(device_id)
        access.delete_device(device_id, token_name=token.name)
        audit(request, token, "Security Alert", "D", detail={"device_id": device_id, "change": "registry entry deleted"})
        return change_response(None, before, None)

    # ---------------------------------------------------------------- audit trail
    @app.get("/audit", response_model=list[AuditOut], tags=["audit"], summary="The access audit trail (admins)",
             responses={200: {"content": {"text/csv": {}}}})
    def get_audit(
        request: Request,
        token: Annotated[TokenInfo, Depends(admin)],
        since: dt.datetime | None = None,
        until: dt.datetime | None = None,
        event: Annotated[str | None, Query(max_length=48, pattern=NO_NUL_PATTERN)] = None,
        study_uid: Annotated[str | None, Query(max_length=64, pattern=UID_PATTERN)] = None,
        limit: Annotated[int, Query(ge=1, le=10000)] = 1000,
        format: Annotated[str, Query(pattern="^(json|csv)$")] = "json",
    ):
        events = access.audit_events(since=since, until=until, event=event, study_uid=study_uid, limit=limit)
        audit(request, token, "Audit Log Used", "R", detail={"events": len(events), "format": format})
        rows = [AuditOut.model_validate(e, from_attributes=True).model_dump(mode="json") for e in events]
        if format == "csv":
            buffer = io.StringIO()
            writer = csv.DictWriter(buffer, fieldnames=list(AuditOut.model_fields))
            writer.writeheader()
            for row in rows:
                writer.writerow({**row, "detail": json.dumps(row["detail"], sort_keys=True)})
            return Response(buffer.getvalue(), media_type="text/csv",
                            headers={"Content-Disposition": 'attachment; filename="dicomcheck-audit.csv"'})
        return rows

    # ---------------------------------------------------------------- exports for billing offices
    @app.get("/exports/decisions", tags=["exports"], summary="Decisions by date range, station and outcome, as CSV or XLSX",
             responses={200: {"content": {"text/csv": {}, "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet": {}}}})
    def export_decisions(
        request: Request,
        token: Annotated[TokenInfo, Depends(staff)],
        decided_from: dt.datetime | None = None,
        decided_to: dt.datetime | None = None,
        station: Annotated[str | None, Query(max_length=64, pattern=NO_NUL_PATTERN)] = None,
        outcome: OutcomeName | None = None,
        format: Annotated[str, Query(pattern="^(csv|xlsx)$")] = "csv",
    ) -> Response:
        from .exports import decision_rows, to_csv, to_xlsx

        rows = decision_rows(receiver.engine, access, decided_from=decided_from, decided_to=decided_to,
                             station=station, outcome=outcome.value if outcome else None,
                             base_url=str(request.base_url).rstrip("/"), limit=MAX_EXPORT_ROWS)
        audit(request, token, "Data Export", "R", detail={"rows": len(rows), "format": format})
        if format == "xlsx":
            return Response(to_xlsx(rows), media_type="application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
                            headers={"Content-Disposition": 'attachment; filename="dicomcheck-decisions.xlsx"'})
        return Response(to_csv(rows), media_type="text/csv", headers={"Content-Disposition": 'attachment; filename="dicomcheck-decisions.csv"'})

    return app


def _review_out(review) -> dict:
    return {"id": review.id, "outcome": review.outcome, "code": review.code, "reviewer": review.reviewer,
            "token_name": review.token_name, "reason": review.reason, "created_at": review.created_at,
            "decision_id": review.decision_id, "stale": review.stale_since is not None, "stale_since": review.stale_since}


def _device_out(device) -> dict:
    return {"id": device.id, "station_name": device.station_name, "ae_title": device.ae_title,
            "device_serial_number": device.device_serial_number, "manufacturer": device.manufacturer, "model": device.model,
            "role": device.role, "note": device.note, "valid_from": device.valid_from, "valid_to": device.valid_to,
            "created_at": device.created_at, "updated_at": device.updated_at}


_CURSOR = re.compile(r"^[A-Za-z0-9_-]+={0,2}$")


def _encode_cursor(study: Study) -> str:
    when = study.first_arrival
    payload = json.dumps([when.isoformat(), study.study_instance_uid]).encode()
    return base64.urlsafe_b64encode(payload).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[dt.datetime, str]:
    try:
        if not _CURSOR.match(cursor):
            raise ValueError
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        when_text, uid = json.loads(raw)
        when = dt.datetime.fromisoformat(when_text)
        if not isinstance(uid, str) or not re.match(UID_PATTERN, uid):
            raise ValueError
        return when, uid
    except (ValueError, TypeError, binascii.Error, json.JSONDecodeError, UnicodeDecodeError):
        raise HTTPException(400, "bad cursor: pass back the next_cursor of a previous page unchanged") from None
