"""Reports in through the API (``POST /studies/{uid}/report``, admin or reporter tokens), and the ``report``
part every study view, list filter and export computes from the index (issue 12 §1, §3).

The body is read here, after the token is checked (a refused caller is answered 401 / 403 before any
422), as JSON ``{"text": "...", "status": "F"}`` (status P / F / C, default F) or ``text/plain`` (a
final report). Its size is bounded by ``http_max_body`` (413). A report for a study not received yet is
kept (202) and matched when the images come.
"""

import json
import re
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from ...config import Settings
from ...reports_in.view import ReportPart, report_part
from ...store.reads import IndexSession
from ...store.records import StudyListItem, StudyPage, StudyPosition, StudyRecord
from ...store.reports import NewReport, Reports
from ..deps import RoleGuard, request_audit
from ..schemas import UID_PATTERN, ErrorOut, ReportReceipt

router = APIRouter(tags=["reports"])
reporting = RoleGuard("admin", "reporter")
STATUSES = ("P", "F", "C")
SCAN_LIMIT = 2000
"""Studies one list request examines for a documentation filter (the verdict is computed per study)."""
_CHARSET = re.compile(r"charset\s*=\s*\"?([A-Za-z0-9_.:-]{1,40})\"?", re.IGNORECASE)


def study_report(store: IndexSession, settings: Settings, study: StudyRecord, document: dict[str, Any]) -> ReportPart:
    """The report part of a study whose current (or evaluated) decision is ``document`` (the text SRs it
    received were read into the reports when it was decided: ``Receiver.decide``)."""
    reports = Reports(store.reader.bind).for_study(study.study_instance_uid, study.accession_number, study.patient_id)
    decided_at = study.decided_at if study.current_decision_id is not None else None
    return report_part(reports, document, decided_at=decided_at, report_wait=settings.report_wait_seconds)


def documentation_matches(
    store: IndexSession, settings: Settings, study: StudyRecord, documentation: str | None, flag: str | None
) -> bool:
    """Whether the study's current decision has this documentation verdict and flag (a study without a
    decision has no verdict yet: never)."""
    if study.current_decision_id is None:
        return False
    decision = store.reader.decision(study.current_decision_id)
    if decision is None:
        return False
    part = study_report(store, settings, study, dict(decision.document))
    return (documentation is None or part.documentation == documentation) and (
        flag is None or flag in part.verdict.flag_names
    )


def filter_page(
    store: IndexSession,
    settings: Settings,
    fetch: Callable[[StudyPosition | None, int], StudyPage],
    *,
    after: StudyPosition | None,
    limit: int,
    documentation: str | None,
    flag: str | None,
) -> StudyPage:
    """A page of studies (``fetch(after, n)``: the unfiltered pages in order) whose documentation verdict and flag
    match, examining at most :data:`SCAN_LIMIT` studies a request; ``next_after`` continues after the last one
    examined, so a page may hold fewer than ``limit`` studies and still have a next one."""
    items: list[StudyListItem] = []
    position, examined = after, 0
    while examined < SCAN_LIMIT:
        page = fetch(position, min(200, SCAN_LIMIT - examined))
        for item in page.items:
            examined += 1
            position = StudyPosition(item.study.first_arrival, item.study.study_instance_uid)
            if documentation_matches(store, settings, item.study, documentation, flag):
                items.append(item)
                if len(items) == limit:
                    return StudyPage(tuple(items), position)
        if page.next_after is None:
            return StudyPage(tuple(items), None)
    return StudyPage(tuple(items), position)


@router.post(
    "/studies/{study_uid}/report",
    response_model=ReportReceipt,
    status_code=201,
    summary="Send a study's radiology report (JSON with status P / F / C, or text/plain: a final report)",
    responses={
        202: {"model": ReportReceipt, "description": "Kept: no image of the study has been received yet"},
        415: {"model": ErrorOut, "description": "Neither application/json nor text/plain"},
        422: {"model": ErrorOut, "description": "Not a Study Instance UID, or a body that is not a report"},
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "required": ["text"],
                        "additionalProperties": False,
                        "properties": {
                            "text": {"type": "string", "minLength": 1},
                            "status": {"type": "string", "enum": list(STATUSES), "default": "F"},
                        },
                    }
                },
                "text/plain": {"schema": {"type": "string", "minLength": 1}},
            },
        }
    },
)
async def post_report(study_uid: str, request: Request) -> JSONResponse:
    body = await request.body()  # bounded by http_max_body (413 before it is read)
    return await run_in_threadpool(_store_report, study_uid, request, body)


def _store_report(study_uid: str, request: Request, body: bytes) -> JSONResponse:
    with IndexSession.open(request.app.state.operations.engine) as store:
        token = reporting.check(request, store)
        if not re.match(UID_PATTERN, study_uid) or len(study_uid) > 64:
            raise HTTPException(422, "the path does not name a Study Instance UID (digits and dots, at most 64)")
        text, status = _read_body(request, body)
        study = store.reader.study(study_uid)
        new = NewReport(
            study_instance_uid=study_uid,
            accession_number=None,
            patient_id=None,
            status=status,
            text=text,
            radiologist=None,
            report_time=None,
            source="api",
            sender=token.name,
        )
        audit = request_audit(
            request,
            token,
            "Procedure Record",
            "C",
            study_uid=study_uid,
            detail={"status": status, "source": "api", "matched": study is not None},
        )
        stored, _ = Reports(store.reader.bind).add(new, audit=audit)
    receipt = ReportReceipt(
        report_id=stored.id,
        study_instance_uid=study_uid,
        status=stored.status,
        text_sha256=stored.text_sha256,
        received=stored.received_at,
        matched=study is not None,
    )
    return JSONResponse(receipt.model_dump(mode="json"), status_code=201 if study is not None else 202)


def _read_body(request: Request, body: bytes) -> tuple[str, str]:
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "application/json":
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            raise HTTPException(422, "the body is not JSON") from None
        if not isinstance(data, dict) or set(data) - {"text", "status"}:
            raise HTTPException(422, 'the body is a JSON object {"text": "...", "status": "F"} and nothing else')
        text, status = data.get("text"), data.get("status", "F")
        if status not in STATUSES:
            raise HTTPException(422, "status is P (preliminary), F (final) or C (corrected)")
    elif kind == "text/plain":
        charset = _CHARSET.search(request.headers.get("content-type", ""))
        try:
            text = body.decode(charset.group(1) if charset else "utf-8")
        except (LookupError, UnicodeDecodeError):
            reason = "the text is not in the character set the Content-Type names (UTF-8 by default)"
            raise HTTPException(422, reason) from None
        status = "F"
    else:
        raise HTTPException(415, "send the report as application/json or text/plain")
    if not isinstance(text, str) or not text.strip():
        raise HTTPException(422, "the report text is empty")
    if "\x00" in text:
        raise HTTPException(422, "the report text holds a NUL character")
    return text.strip(), status
