"""Decision exports for billing offices: CSV (stdlib) and XLSX (openpyxl).

Accession numbers, descriptions and station names come from whoever sent the images. A text cell
that a spreadsheet would read as a formula (OWASP CSV injection: first character, after any leading
whitespace, one of ``= + - @``, tab, CR or LF) gets a leading ``'``, in CSV and XLSX alike, and
XLSX text cells are written as strings, never formulas. Counts stay numbers.
"""

from __future__ import annotations

import csv
import datetime as dt
import io

from ..decision_record import StudyDecisionUnderPolicy
from ..reports_in.view import report_part
from ..store.reads import IndexReader
from ..store.reports import Reports
from ..store.sessions import Sessions

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "\n")


def neutralise(value: str) -> str:
    """``value`` with a leading ``'`` when a spreadsheet could take it for a formula."""
    if value.startswith(FORMULA_STARTS) or value.lstrip().startswith(FORMULA_STARTS):
        return "'" + value
    return value


def _cell(value: object) -> object:
    return neutralise(value) if isinstance(value, str) else value


def _join(values) -> str:
    """A ``;``-separated list whose parts are neutralised too (``;`` is the CSV separator in some locales)."""
    return ";".join(neutralise(v) for v in values)


COLUMNS = (
    "study_instance_uid",
    "accession_number",
    "study_date",
    "study_description",
    "outcome",
    "code",
    "decided_at",
    "rules_version",
    "instances",
    "stations",
    "three_d_series",
    "three_d_origins",
    "three_d_stations",
    "products",
    "review_outcome",
    "review_stale",
    "changed_after_read",
    "documentation",
    "report_flags",
    "report_status",
    "session_id",
    "session_verdict",
    "session_carrier",
    "made_later_flag",
    "evidence_link",
)


def decision_rows(
    reader: IndexReader,
    *,
    decided_from: dt.datetime | None,
    decided_to: dt.datetime | None,
    station: str | None,
    outcome: str | None,
    base_url: str,
    limit: int,
    report_wait: float | None = None,
    documentation: str | None = None,
    report_flag: str | None = None,
    session_verdict: str | None = None,
) -> list[dict]:
    """One row per current decision (at most ``limit`` decisions read), those of ``station`` only when given, and
    of that report ``documentation`` verdict / ``report_flag`` when given (computed per study, issue 12)."""
    rows = []
    wanted = station.upper() if station else None
    reports = Reports(reader.bind)
    sessions = Sessions(reader.bind)
    for record in reader.decisions_for_export(
        decided_from=decided_from, decided_to=decided_to, outcome=outcome, limit=limit
    ):
        study, decision, review = record.study, record.decision, record.latest_review
        typed = StudyDecisionUnderPolicy.model_validate(decision.document)
        series = typed.series
        stations = sorted({s.equipment.station_name or "" for s in series} - {""})
        if wanted and wanted not in {s.upper() for s in stations}:
            continue
        report = report_part(
            reports.for_study(study.study_instance_uid, study.accession_number, study.patient_id),
            decision.document,
            decided_at=study.decided_at,
            report_wait=report_wait,
        )
        if documentation and report.documentation != documentation:
            continue
        if report_flag and report_flag not in report.verdict.flag_names:
            continue
        three_d = [s for s in series if s.is_3d]
        session = sessions.of_study(study.study_instance_uid)  # sessions (issue 13)
        if session_verdict and (session is None or session.verdict.value != session_verdict):
            continue
        made_later = typed.made_later
        rows.append(
            {
                "study_instance_uid": study.study_instance_uid,
                "accession_number": study.accession_number,
                "study_date": study.study_date,
                "study_description": study.study_description,
                "outcome": decision.outcome,
                "code": decision.code,
                "decided_at": decision.decided_at.isoformat(),
                "rules_version": decision.rules_version,
                "instances": decision.instance_count,
                "stations": _join(stations),
                "three_d_series": len(three_d),
                "three_d_origins": _join(sorted({s.origin for s in three_d})),
                "three_d_stations": _join(sorted({s.equipment.station_name or "-" for s in three_d})),
                "products": _join(sorted({s.product for s in series if s.product})),
                "review_outcome": review.outcome if review else None,
                "review_stale": (review.stale_since is not None) if review else None,
                "changed_after_read": record.changed_after_read,
                "documentation": report.documentation,
                "report_flags": _join(f.value for f in report.verdict.flag_names),
                "report_status": report.current.report.status if report.current else None,
                "session_id": session.session_id if session else None,
                "session_verdict": session.verdict.value if session else None,
                "session_carrier": session.carrier if session else None,
                "made_later_flag": made_later.flag if made_later else None,
                "evidence_link": f"{base_url}/studies/{study.study_instance_uid}/evidence",
            }
        )
    return rows


def to_csv(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows({c: _cell(row.get(c)) for c in COLUMNS} for row in rows)
    return buffer.getvalue()


def to_xlsx(rows: list[dict]) -> bytes:
    from openpyxl import Workbook
    from openpyxl.cell.cell import ILLEGAL_CHARACTERS_RE

    book = Workbook()
    sheet = book.active
    sheet.title = "decisions"
    sheet.append(list(COLUMNS))
    for number, row in enumerate(rows, 2):
        for column, name in enumerate(COLUMNS, 1):
            value = _cell(row.get(name))
            if isinstance(value, str):  # control characters a sender put in a header have no place in XLSX
                value = ILLEGAL_CHARACTERS_RE.sub("\N{REPLACEMENT CHARACTER}", value)
            cell = sheet.cell(row=number, column=column, value=value)
            if isinstance(value, str):
                cell.data_type = "s"  # text, never a formula, whatever it looks like
        link = sheet.cell(row=number, column=len(COLUMNS))
        if isinstance(row.get("evidence_link"), str) and row["evidence_link"].startswith(("http://", "https://")):
            link.hyperlink = row["evidence_link"]
    sheet.freeze_panes = "A2"
    buffer = io.BytesIO()
    book.save(buffer)
    return buffer.getvalue()
