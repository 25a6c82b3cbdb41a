"""The access audit trail, for admins, as JSON or CSV."""

import csv
import datetime as dt
import io
import json
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response

from ..deps import AdminToken, SessionDep, audit
from ..schemas import NO_NUL_PATTERN, UID_PATTERN, AuditOut

router = APIRouter(tags=["audit"])


@router.get(
    "/audit",
    response_model=list[AuditOut],
    summary="The access audit trail (admins)",
    responses={200: {"content": {"text/csv": {}}}},
)
def get_audit(
    request: Request,
    token: AdminToken,
    store: SessionDep,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    event: Annotated[str | None, Query(max_length=48, pattern=NO_NUL_PATTERN)] = None,
    study_uid: Annotated[str | None, Query(max_length=64, pattern=UID_PATTERN)] = None,
    limit: Annotated[int, Query(ge=1, le=10000)] = 1000,
    format: Annotated[str, Query(pattern="^(json|csv)$")] = "json",
):
    events = store.access.audit_events(since=since, until=until, event=event, study_uid=study_uid, limit=limit)
    audit(store, request, token, "Audit Log Used", "R", detail={"events": len(events), "format": format})
    rows = [AuditOut.model_validate(e, from_attributes=True).model_dump(mode="json") for e in events]
    if format == "csv":
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(AuditOut.model_fields))
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, "detail": json.dumps(row["detail"], sort_keys=True)})
        return Response(
            buffer.getvalue(),
            media_type="text/csv",
            headers={"Content-Disposition": 'attachment; filename="dicomcheck-audit.csv"'},
        )
    return rows
