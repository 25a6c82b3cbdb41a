"""Decision exports for billing offices (CSV or XLSX)."""

import datetime as dt
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response

from ...enums import Outcome
from ...reports import Documentation, ReportFlag
from ...sessions import Verdict
from ..deps import SessionDep, StaffToken, audit
from ..exports import decision_rows, to_csv, to_xlsx
from ..schemas import NO_NUL_PATTERN

router = APIRouter(tags=["exports"])
MAX_EXPORT_ROWS = 100_000
XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"


@router.get(
    "/exports/decisions",
    summary="Decisions by date range, station and outcome, as CSV or XLSX",
    responses={200: {"content": {"text/csv": {}, XLSX: {}}}},
)
def export_decisions(
    request: Request,
    token: StaffToken,
    store: SessionDep,
    decided_from: dt.datetime | None = None,
    decided_to: dt.datetime | None = None,
    station: Annotated[str | None, Query(max_length=64, pattern=NO_NUL_PATTERN)] = None,
    outcome: Outcome | None = None,
    documentation: Documentation | None = None,
    report_flag: ReportFlag | None = None,
    session_verdict: Verdict | None = None,
    format: Annotated[str, Query(pattern="^(csv|xlsx)$")] = "csv",
) -> Response:
    rows = decision_rows(
        store.reader,
        decided_from=decided_from,
        decided_to=decided_to,
        station=station,
        outcome=outcome.value if outcome else None,
        base_url=str(request.base_url).rstrip("/"),
        limit=MAX_EXPORT_ROWS,
        report_wait=request.app.state.settings.report_wait_seconds,
        documentation=documentation.value if documentation else None,
        report_flag=report_flag.value if report_flag else None,
        session_verdict=session_verdict.value if session_verdict else None,
    )
    audit(store, request, token, "Data Export", "R", detail={"rows": len(rows), "format": format})
    if format == "xlsx":
        return Response(
            to_xlsx(rows),
            media_type=XLSX,
            headers={"Content-Disposition": 'attachment; filename="dicomcheck-decisions.xlsx"'},
        )
    return Response(
        to_csv(rows),
        media_type="text/csv",
        headers={"Content-Disposition": 'attachment; filename="dicomcheck-decisions.csv"'},
    )
