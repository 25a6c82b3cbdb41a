"""The dashboard's figures and chart geometry (the template draws the SVG; no chart library, no CDN)."""

from __future__ import annotations

import datetime as dt
import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from ..enums import Outcome, SeriesKind
from ..store.reads import IndexReader
from ..store.returns import EvidenceReturnRecord, EvidenceReturns, ReturnState

ORDER = (Outcome.SUPPORTS_76377, Outcome.SUPPORTS_76376, Outcome.NO_3D, Outcome.BUNDLED, Outcome.NEEDS_REVIEW)
COLOURS = {
    Outcome.SUPPORTS_76377: "#1f6f43",
    Outcome.SUPPORTS_76376: "#4c9f70",
    Outcome.NO_3D: "#8a8f98",
    Outcome.BUNDLED: "#3a6ea5",
    Outcome.NEEDS_REVIEW: "#c8702a",
}
AGE_BUCKETS = (("under 1 day", 1), ("1-7 days", 7), ("7-30 days", 30), ("over 30 days", None))
MAX_GROUPS = 24
"""At most this many months / stations are drawn (the most recent months, the busiest stations)."""
RETURN_ROWS = 20
"""At most this many evidence returns are listed (failed first, then the next due)."""


@dataclass(frozen=True, slots=True)
class Bar:
    label: str
    total: int
    segments: tuple[tuple[str, str, int, float, float], ...]
    """(outcome, colour, count, start, width) with start and width as fractions of the widest bar."""


@dataclass
class Figures:
    decided: int = 0
    three_d: int = 0
    backlog: int = 0
    backlog_oldest_days: float | None = None
    backlog_median_days: float | None = None
    pending: int = 0
    quarantined: int = 0
    by_month: list[Bar] = field(default_factory=list)
    by_station: list[Bar] = field(default_factory=list)
    ages: list[tuple[str, int, float]] = field(default_factory=list)
    """(bucket, count, width as a fraction of the largest bucket)."""
    returns_waiting: int = 0
    returns_failed: int = 0
    returns_sent: int = 0
    returns: list[EvidenceReturnRecord] = field(default_factory=list)
    """The failed evidence returns, then the waiting ones by next attempt (at most :data:`RETURN_ROWS`)."""

    @property
    def three_d_rate(self) -> str:
        return f"{100 * self.three_d / self.decided:.0f} %" if self.decided else "-"


def figures(reader: IndexReader, *, now: dt.datetime | None = None) -> Figures:
    now = now or dt.datetime.now(dt.UTC)
    out = Figures(pending=reader.pending_studies(), quarantined=reader.quarantined(limit=0)[0])
    reviewed = reader.reviewed_studies()
    months: defaultdict[str, Counter[str]] = defaultdict(Counter)
    stations: defaultdict[str, Counter[str]] = defaultdict(Counter)
    ages: list[float] = []
    for item in reader.current_decisions():
        outcome = item.decision.outcome
        out.decided += 1
        out.three_d += outcome in (Outcome.SUPPORTS_76376, Outcome.SUPPORTS_76377)
        months[item.study.first_arrival.strftime("%Y-%m")][outcome] += 1
        stations[_station(item.decision.document)][outcome] += 1
        if outcome == Outcome.NEEDS_REVIEW and item.study.study_instance_uid not in reviewed:
            ages.append((now - item.study.first_arrival).total_seconds() / 86400)
    out.backlog = len(ages)
    if ages:
        out.backlog_oldest_days = max(ages)
        out.backlog_median_days = statistics.median(ages)
    queue = EvidenceReturns(reader.bind)
    in_state = queue.counts()
    out.returns_waiting, out.returns_failed = in_state[ReturnState.PENDING], in_state[ReturnState.FAILED]
    out.returns_sent = in_state[ReturnState.SENT]
    out.returns = queue.listing(limit=RETURN_ROWS)
    out.by_month = _bars(sorted(months.items())[-MAX_GROUPS:])
    busiest = sorted(stations.items(), key=lambda kv: (-sum(kv[1].values()), kv[0]))[:MAX_GROUPS]
    out.by_station = _bars(busiest)
    counts = [0] * len(AGE_BUCKETS)
    for age in ages:
        counts[next(i for i, (_, limit) in enumerate(AGE_BUCKETS) if limit is None or age < limit)] += 1
    top = max(counts) or 1
    out.ages = [(label, n, n / top) for (label, _), n in zip(AGE_BUCKETS, counts, strict=True)]
    return out


def _station(document: dict[str, Any]) -> str:
    """The station that acquired the study (its first acquisition series), else of its first series."""
    series = document.get("series", [])
    chosen = next((s for s in series if s.get("kind") == SeriesKind.ACQUISITION), series[0] if series else {})
    return (chosen.get("equipment") or {}).get("station_name") or "(no station name)"


def _bars(groups: list[tuple[str, Counter[str]]]) -> list[Bar]:
    widest = max((sum(c.values()) for _, c in groups), default=0) or 1
    bars = []
    for label, counts in groups:
        start, segments = 0.0, []
        for outcome in ORDER:
            n = counts.get(outcome, 0)
            if n:
                segments.append((outcome.value, COLOURS[outcome], n, start, n / widest))
                start += n / widest
        bars.append(Bar(label, sum(counts.values()), tuple(segments)))
    return bars


def legend() -> list[tuple[str, str]]:
    return [(o.value, COLOURS[o]) for o in ORDER]


def error_class(last_error: str | None) -> str:
    """The error class of a return's last failed attempt (``last_error`` is ``Class: reason``)."""
    return (last_error or "-").split(":", 1)[0]
