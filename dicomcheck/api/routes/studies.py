"""Study lookups, searches, re-analysis and coders' reviews."""

import base64
import binascii
import datetime as dt
import json
import re
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request, Response
from pydantic_core import to_json

from ...enums import Outcome, StudyStatus, TokenRole
from ...reports import Documentation, ReportFlag
from ...sessions import SessionRecord, Verdict
from ...store.access import TokenInfo
from ...store.reads import IndexSession
from ...store.records import ReviewRecord, StudyFilters, StudyForRead, StudyListItem, StudyPosition
from ...store.sessions import Sessions
from ..deps import (
    NOT_FOUND,
    AdminToken,
    AnyToken,
    OperationsDep,
    SessionDep,
    StaffToken,
    StudyOperations,
    StudyUid,
    anyone,
    audit,
    existing_study,
    guarded,
    readable_for_read,
    readable_study,
    request_audit,
    run_lookup,
)
from ..schemas import (
    NO_NUL_PATTERN,
    UID_PATTERN,
    DecisionOut,
    ReportOut,
    ReviewIn,
    ReviewOut,
    StudyOut,
    StudyPage,
    StudySearch,
)
from .reports import filter_page, study_report

router = APIRouter(tags=["studies"])


def review_out(review: ReviewRecord) -> dict:
    return {
        "id": review.id,
        "outcome": review.outcome,
        "code": review.code,
        "reviewer": review.reviewer,
        "token_name": review.token_name,
        "reason": review.reason,
        "created_at": review.created_at,
        "decision_id": review.decision_id,
        "stale": review.stale_since is not None,
        "stale_since": review.stale_since,
    }


def study_view(
    store: IndexSession, operations: StudyOperations, found: StudyForRead, token: TokenInfo, *, read_by: Request | None
) -> dict[str, Any]:
    """The study as served (``StudyOut``, JSON-ready); ``read_by``: record this client's read, its documentation
    read and its audit event (one commit, before the answer; ``found`` read with ``reader=token.name`` carries
    what the client read before, so that commit writes three statements and reads none)."""
    study, decision = found.study, found.decision
    if decision is not None:
        document = dict(decision.document)
    else:
        evaluated = operations.evaluate(study.study_instance_uid)
        if evaluated is None:
            raise HTTPException(404, f"no instances of study {study.study_instance_uid} are indexed")
        document = evaluated[0].document()
    decision_id = decision.id if decision else None
    report = study_report(store, operations.settings, study, document)
    changed = False
    if read_by is not None:
        detail = {"outcome": document.get("outcome"), "documentation": report.documentation}
        earlier = store.access.record_read(
            study.study_instance_uid,
            token.name,
            decision_id,
            report.documentation,
            audit=request_audit(
                read_by, token, "DICOM Instances Accessed", "R", study_uid=study.study_instance_uid, detail=detail
            ),
            earlier=found.earlier,
        )
        previous = earlier.study_read
        changed = previous is not None and (
            previous.decision_id != decision_id
            or (earlier.documentation is not None and earlier.documentation != report.documentation)
        )
    document.setdefault("study_date", None)
    document.setdefault("made_later", None)
    document.update(
        status=StudyStatus.DECIDED if decision is not None and not study.needs_decision else StudyStatus.PENDING,
        instance_count=study.instance_count,
        first_arrival=study.first_arrival,
        last_arrival=study.last_arrival,
        decided_at=decision.decided_at if decision else None,
        decision_id=decision_id,
        rules_version=decision.rules_version if decision else None,
        changed_after_read=changed,
        review=review_out(found.latest_review) if found.latest_review else None,
        report=ReportOut.model_validate(report.document()).model_dump(mode="json"),
        # sessions (issue 13): kept with the study once it is decided
        session=SessionRecord.model_validate(found.session).model_dump(mode="json")
        if decision is not None and found.session
        else None,
    )
    return document


def json_response(content: Any) -> Response:
    """``content`` (JSON-ready, already shaped as the route's ``response_model``) as JSON bytes, without
    FastAPI's validation and encoding round trip (tests/test_api_responses_valid.py keeps it true to the schema)."""
    return Response(to_json(content), media_type="application/json")


@router.get("/studies/{study_uid}", response_model=StudyOut, summary="A study's outcome, reasons, series and evidence")
@guarded(anyone)
async def get_study(study_uid: StudyUid, request: Request) -> Response:
    def read(store: IndexSession, token: TokenInfo) -> Response:
        found = readable_for_read(store, request, token, study_uid)
        return json_response(study_view(store, request.app.state.operations, found, token, read_by=request))

    return await run_lookup(anyone, request, read)


@router.get(
    "/studies/{study_uid}/decisions", response_model=list[DecisionOut], summary="The decision history of a study"
)
def get_decisions(study_uid: StudyUid, request: Request, token: AnyToken, store: SessionDep) -> list[dict]:
    study = readable_study(store, request, token, study_uid)
    history = store.reader.decision_history(study_uid)
    audit(
        store, request, token, "DICOM Instances Accessed", "R", study_uid=study_uid, detail={"decisions": len(history)}
    )
    return [
        {
            "id": d.id,
            "decided_at": d.decided_at,
            "node": d.node,
            "rules_version": d.rules_version,
            "dicomcheck_version": d.dicomcheck_version,
            "outcome": d.outcome,
            "code": d.code,
            "instance_count": d.instance_count,
            "registry_path": d.registry_path,
            "current": d.id == study.current_decision_id,
        }
        for d in history
    ]


def list_studies(store: IndexSession, request: Request, token: TokenInfo, search: StudySearch) -> dict[str, Any]:
    """A page of study summaries (``StudyPage``, JSON-ready), its query audited."""
    auditor = token.role == TokenRole.AUDITOR
    filters = StudyFilters(
        accession=search.accession,
        patient_id=search.patient_id,
        outcome=search.outcome.value if search.outcome else None,
        modality=search.modality,
        received_from=search.received_from,
        received_to=search.received_to,
        scope_studies=token.studies if auditor else None,
        scope_accessions=token.accessions if auditor else None,
        session_verdict=search.session_verdict.value if search.session_verdict else None,
    )
    after = _decode_cursor(search.cursor) if search.cursor else None
    if search.documentation is None and search.report_flag is None:
        page = store.reader.find_studies(filters, after=after, limit=search.limit)
    else:
        page = filter_page(
            store,
            request.app.state.settings,
            lambda position, n: store.reader.find_studies(filters, after=position, limit=n),
            after=after,
            limit=search.limit,
            documentation=search.documentation.value if search.documentation else None,
            flag=search.report_flag.value if search.report_flag else None,
        )
    items = [_summary(item) for item in page.items]
    shown = search.model_dump(exclude_none=True, exclude={"limit", "cursor", "patient_id"}, mode="json")
    if search.patient_id:
        shown["patient_id"] = "(given)"  # the audit trail records that it was searched, not the value
    audit(store, request, token, "Query", "E", detail={"filters": shown, "results": len(items)})
    return {"items": items, "next_cursor": _encode_cursor(page.next_after) if page.next_after else None}


@router.get("/studies", response_model=StudyPage, summary="Find studies (cursor-paginated, newest first)")
@guarded(anyone)
async def find_studies(
    request: Request,
    accession: Annotated[str | None, Query(max_length=64, pattern=NO_NUL_PATTERN)] = None,
    patient_id: Annotated[
        str | None,
        Query(
            max_length=64,
            pattern=NO_NUL_PATTERN,
            description="Prefer POST /studies/search: query strings end up in access logs "
            "(dicomcheck redacts this one from its own).",
        ),
    ] = None,
    outcome: Outcome | None = None,
    modality: Annotated[str | None, Query(max_length=16, pattern=r"^[A-Z0-9]{1,16}$")] = None,
    received_from: dt.datetime | None = None,
    received_to: dt.datetime | None = None,
    documentation: Documentation | None = None,
    report_flag: ReportFlag | None = None,
    session_verdict: Verdict | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[
        str | None, Query(max_length=512, pattern=r"^[A-Za-z0-9_-]+$", description="next_cursor of the previous page")
    ] = None,
) -> Response:
    search = StudySearch(
        accession=accession,
        patient_id=patient_id,
        outcome=outcome,
        modality=modality,
        received_from=received_from,
        received_to=received_to,
        documentation=documentation,
        report_flag=report_flag,
        session_verdict=session_verdict,
        limit=limit,
        cursor=cursor,
    )
    return await run_lookup(
        anyone, request, lambda store, token: json_response(list_studies(store, request, token, search))
    )


@router.post(
    "/studies/search", response_model=StudyPage, summary="Find studies by a JSON body (keeps patient IDs out of URLs)"
)
@guarded(anyone)
async def search_studies(search: StudySearch, request: Request) -> Response:
    return await run_lookup(
        anyone, request, lambda store, token: json_response(list_studies(store, request, token, search))
    )


@router.post(
    "/studies/{study_uid}/reanalyze", response_model=StudyOut, summary="Re-run the rules on the stored headers now"
)
def reanalyze(
    study_uid: StudyUid, request: Request, token: AdminToken, store: SessionDep, operations: OperationsDep
) -> dict:
    study = existing_study(store, study_uid)
    operations.decide(study_uid, last_arrival_seen=study.last_arrival)
    found = store.reader.study_for_read(study_uid)
    if found is None:
        raise HTTPException(404, NOT_FOUND.format(uid=study_uid))
    view = study_view(store, operations, found, token, read_by=None)
    audit(
        store,
        request,
        token,
        "Procedure Record",
        "U",
        study_uid=study_uid,
        detail={"reanalyzed": True, "outcome": view["outcome"]},
    )
    return view


@router.post(
    "/studies/{study_uid}/review", response_model=ReviewOut, status_code=201, summary="Record a coder's final outcome"
)
def review(study_uid: StudyUid, body: ReviewIn, request: Request, token: StaffToken, store: SessionDep) -> dict:
    study = existing_study(store, study_uid)
    with store.transaction():  # the review, its study's session recomputed (issue 13) and the audit event: one COMMIT
        saved = store.access.add_review(
            study_uid=study_uid,
            decision_id=study.current_decision_id,
            outcome=body.outcome.value,
            code=body.outcome.code,
            reviewer=body.reviewer,
            token_name=token.name,
            reason=body.reason,
        )
        Sessions(store.reader.bind).after_review(study_uid)
        audit(
            store,
            request,
            token,
            "Procedure Record",
            "C",
            study_uid=study_uid,
            detail={"review_id": saved.id, "outcome": body.outcome.value},
        )
    return review_out(saved)


def _summary(item: StudyListItem) -> dict[str, Any]:
    """One ``StudySummary``, JSON-ready."""
    study = item.study
    return {
        "study_instance_uid": study.study_instance_uid,
        "accession_number": study.accession_number,
        "study_date": study.study_date,
        "study_description": study.study_description,
        "modalities": study.modalities,
        "instance_count": study.instance_count,
        "first_arrival": study.first_arrival,
        "last_arrival": study.last_arrival,
        "status": study.status,
        "outcome": item.outcome,
        "code": item.code,
        "decided_at": study.decided_at,
    }


_CURSOR = re.compile(r"^[A-Za-z0-9_-]+={0,2}$")


def _encode_cursor(position: StudyPosition) -> str:
    payload = json.dumps([position.first_arrival.isoformat(), position.study_instance_uid]).encode()
    return base64.urlsafe_b64encode(payload).decode().rstrip("=")


def _decode_cursor(cursor: str) -> StudyPosition:
    try:
        if not _CURSOR.match(cursor):
            raise ValueError
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        when_text, uid = json.loads(raw)
        when = dt.datetime.fromisoformat(when_text)
        if not isinstance(uid, str) or not re.match(UID_PATTERN, uid):
            raise ValueError
        return StudyPosition(when, uid)
    except (ValueError, TypeError, binascii.Error, json.JSONDecodeError, UnicodeDecodeError):
        raise HTTPException(400, "bad cursor: pass back the next_cursor of a previous page unchanged") from None
