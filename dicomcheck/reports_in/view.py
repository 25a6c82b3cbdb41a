"""A study's report held against its decision (issue 12 §3): the ``report`` part of ``GET /studies/{uid}``,
of the exports and of the evidence pack.

The documentation verdict is :func:`dicomcheck.reports.documentation_verdict` on the statements of the
current report (:func:`dicomcheck.reports.read_statements`) and the decision's outcome, the origins of
its 3D series and its policy; ``report_missing`` waits ``report_wait`` after the decision.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..enums import Origin, Outcome, PacsViewerCode
from ..registry import Policy
from ..reports import DocumentationVerdict, documentation_verdict, read_statements
from ..store.reports import MatchedReport, StudyReports


@dataclass(frozen=True, slots=True)
class ReportPart:
    """The verdict and the report it was computed from (None: no report matched yet)."""

    verdict: DocumentationVerdict
    current: MatchedReport | None
    history: tuple[MatchedReport, ...]

    @property
    def documentation(self) -> str:
        return self.verdict.documentation.value

    def document(self) -> dict[str, Any]:
        """JSON-ready: ``documentation``, ``flags``, ``reasons``, ``notes``, the current report's ``status``,
        ``received``, ``matched_by``, ``statements`` (each with the sentence it came from), its id, hash,
        source, radiologist and time, and the ``history`` of every version (no text)."""
        verdict = self.verdict.document()
        current = self.current.report if self.current else None
        return {
            **verdict,
            "status": current.status if current else None,
            "received": current.received_at.isoformat() if current else None,
            "matched_by": self.current.matched_by if self.current else None,
            "report_id": current.id if current else None,
            "text_sha256": current.text_sha256 if current else None,
            "source": current.source if current else None,
            "radiologist": current.radiologist if current else None,
            "report_time": current.report_time.isoformat() if current and current.report_time else None,
            "history": [
                {
                    "report_id": m.report.id,
                    "status": m.report.status,
                    "received": m.report.received_at.isoformat(),
                    "source": m.report.source,
                    "text_sha256": m.report.text_sha256,
                    "matched_by": m.matched_by,
                    "superseded_by": m.report.superseded_by,
                    "current": self.current is not None and m.report.id == self.current.report.id,
                }
                for m in self.history
            ],
        }


def report_part(
    reports: StudyReports,
    decision: Mapping[str, Any],
    *,
    decided_at: dt.datetime | None,
    report_wait: float | None,
    now: dt.datetime | None = None,
) -> ReportPart:
    """The documentation verdict of a study from its matched reports and its decision document (``outcome``,
    ``series[].is_3d`` / ``origin``, ``policy``); ``decided_at`` None: not decided yet (nothing is missing yet)."""
    now = now or dt.datetime.now(dt.UTC)
    current = reports.current
    final = current is not None and current.report.final
    statements = read_statements(current.report.text) if current is not None else None
    waited = decided_at is not None and report_wait is not None and (now - decided_at).total_seconds() >= report_wait
    origins = [Origin(s["origin"]) for s in decision.get("series", ()) if s.get("is_3d") and s.get("origin")]
    verdict = documentation_verdict(
        Outcome(decision["outcome"]),
        statements,
        final_report_received=final,
        waited_long_enough=waited,
        three_d_origins=origins,
        policy=_policy(decision.get("policy")),
    )
    return ReportPart(verdict, current, reports.history)


def _policy(stored: Mapping[str, Any] | None) -> Policy | None:
    if not stored:
        return None
    return Policy(
        pacs_viewer_code=PacsViewerCode(stored.get("pacs_viewer_code", PacsViewerCode.CODE_76376.value)),
        minip_is_3d=bool(stored.get("minip_is_3d", True)),
        curved_mpr_is_3d=bool(stored.get("curved_mpr_is_3d", False)),
    )
