"""Decisions in plain words for the pages: why a study waits for a coder, how a writer's role was settled."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..enums import Origin, Outcome, RuleId, SeriesKind

OUTCOME_LABELS = {
    Outcome.SUPPORTS_76377: "Supports 76377 (independent workstation)",
    Outcome.SUPPORTS_76376: "Supports 76376 (console or PACS viewer)",
    Outcome.NO_3D: "No 3D rendering",
    Outcome.BUNDLED: "3D bundled in the procedure",
    Outcome.NEEDS_REVIEW: "Needs a coder's review",
}

REGISTRY, FINGERPRINT, COMPARISON, UNKNOWN = "registry entry", "built-in fingerprint", "in-study comparison", "unknown"
ACQUISITION = "acquisition (the modality itself)"
SETTLED_BY = {
    RuleId.ORIGIN_REGISTRY: REGISTRY,
    RuleId.ORIGIN_PRODUCT: FINGERPRINT,
    RuleId.ORIGIN_CONSOLE_FINGERPRINT: FINGERPRINT,
    RuleId.ORIGIN_BOTH_ROLE_MATCH: FINGERPRINT,
    RuleId.ORIGIN_BOTH_ROLE_ELSEWHERE: FINGERPRINT,
    RuleId.ORIGIN_STUDY_MATCH: COMPARISON,
    RuleId.ORIGIN_CONSOLE_STATION_SERIAL: COMPARISON,
}
"""How a series' origin rule settled its writer's role; any other rule (or an unknown origin): unknown."""


def settled_by(series: Mapping[str, Any]) -> str:
    """How the role of the series' writer was settled, from the series' ``origin_rule``."""
    if series.get("origin") == Origin.UNKNOWN:
        return UNKNOWN
    if series.get("origin_rule") == RuleId.ORIGIN_ACQUISITION:
        return ACQUISITION
    return SETTLED_BY.get(RuleId(series["origin_rule"]), UNKNOWN) if series.get("origin_rule") in RULE_IDS else UNKNOWN


RULE_IDS = {r.value for r in RuleId}


def outcome_label(outcome: str | None) -> str:
    return OUTCOME_LABELS.get(Outcome(outcome), outcome) if outcome in OUTCOME_VALUES else (outcome or "pending")


OUTCOME_VALUES = {o.value for o in Outcome}

SESSION_VERDICT_LABELS = {
    "single": "Single: the only study of the session with 3D carries the unit",
    "one_unit": "One unit: contiguous regions, report the code once for the session",
    "separate_units_possible": "Separate units possible: non-contiguous regions (payer's policy to confirm)",
    "unknown_regions": "Regions unknown: the coder decides how many units",
    "no_unit": "No unit: no study of the session supports a code",
}
"""Session verdicts (issue 13) as a coder reads them."""


def session_verdict_label(verdict: str | None) -> str:
    value = str(verdict) if verdict is not None else ""
    return SESSION_VERDICT_LABELS.get(value, value or "-")


def writer_name(equipment: Mapping[str, Any]) -> str:
    """A writer as a person reads it: manufacturer, model, station (what the headers say)."""
    parts = [equipment.get("manufacturer"), equipment.get("model")]
    name = " ".join(p for p in parts if p)
    station = equipment.get("station_name")
    if station:
        name = f"{name}, station {station}" if name else f"station {station}"
    serial = equipment.get("device_serial_number")
    if serial and not name:
        name = f"serial {serial}"
    return name


def series_label(series: Mapping[str, Any]) -> str:
    return series.get("series_description") or f"series …{str(series.get('series_instance_uid', ''))[-8:]}"


def why_review(document: Mapping[str, Any]) -> list[str]:
    """Why a needs_review decision waits for a coder, one short line per cause."""
    series = {s["series_instance_uid"]: s for s in document.get("series", [])}
    lines: list[str] = []
    for reason in document.get("reasons", []):
        rule = reason.get("rule")
        named = [series[uid] for uid in reason.get("series", []) if uid in series]
        if rule == RuleId.OUTCOME_UNKNOWN_ORIGIN and named:
            for s in named:
                if s.get("origin_rule") == RuleId.ORIGIN_EQUIPMENT_STRIPPED:
                    lines.append(f"equipment stripped: '{series_label(s)}' names no manufacturer, model or station")
                elif s.get("origin_rule") == RuleId.ORIGIN_CONFLICT:
                    lines.append(f"conflicting origins within '{series_label(s)}'")
                else:
                    writer = writer_name(s.get("equipment") or {}) or "without a name"
                    lines.append(f"unknown writer \"{writer}\" made '{series_label(s)}' ({kind_words(s.get('kind'))})")
        elif rule == RuleId.OUTCOME_NO_BASE_ACQUISITION:
            shown = ", ".join(f"'{series_label(s)}'" for s in named) or "the 3D series"
            lines.append(f"no base acquisition: the original images behind {shown} were not received")
        elif document.get("outcome") == Outcome.NEEDS_REVIEW and rule and rule.startswith("outcome."):
            lines.append(str(reason.get("text", rule)))
    return lines or [str(r.get("text", "")) for r in document.get("reasons", [])]


KIND_WORDS = {
    SeriesKind.ACQUISITION: "original images",
    SeriesKind.MPR: "reformat (MPR)",
    SeriesKind.PROJECTION: "MIP / MinIP",
    SeriesKind.VOLUME_RENDER: "volume rendering",
    SeriesKind.SURFACE_RENDER: "surface rendering",
    SeriesKind.SEGMENTATION: "segmentation",
    SeriesKind.OTHER_DERIVED: "other derived images",
    SeriesKind.NON_IMAGE: "non-image object",
}


def kind_words(kind: str | None) -> str:
    return next((words for k, words in KIND_WORDS.items() if k.value == kind), kind or "-")
