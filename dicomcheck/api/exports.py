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
from ..store.reads import IndexReader

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
) -> list[dict]:
    """One row per current decision (at most ``limit`` decisions read), those of ``station`` only when given."""
    rows = []
    wanted = station.upper() if station else None
    for record in reader.decisions_for_export(
        decided_from=decided_from, decided_to=decided_to, outcome=outcome, limit=limit
    ):
        study, decision, review = record.study, record.decision, record.latest_review
        series = StudyDecisionUnderPolicy.model_validate(decision.document).series
        stations = sorted({s.equipment.station_name or "" for s in series} - {""})
        if wanted and wanted not in {s.upper() for s in stations}:
            continue
        three_d = [s for s in series if s.is_3d]
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
