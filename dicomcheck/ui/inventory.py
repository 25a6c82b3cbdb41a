"""The equipment inventory: every writer of derived series, how its role was settled, what it holds in review.

A writer is the equipment identity the headers give a derived series (manufacturer, model, station,
serial, software, Secondary Capture device) with the AE title that sent it. The series' kind, origin
and origin rule come from each study's current decision; the identity of the sender and the arrival
times from the index. A study is held by a writer when its current outcome is ``needs_review`` and one
of the writer's derived series in it has an unknown origin: registering that writer can release it.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from ..enums import Origin, Outcome, SeriesKind
from ..store.reads import IndexReader, SeriesEquipment
from .words import settled_by, writer_name

NOT_DERIVED = {SeriesKind.ACQUISITION.value, SeriesKind.NON_IMAGE.value}
IDENTITY = (
    "manufacturer",
    "model",
    "station_name",
    "device_serial_number",
    "software_versions",
    "sc_manufacturer",
    "sc_model",
    "ae_title",
)


@dataclass
class Writer:
    identity: dict[str, str | None]
    settled_by: Counter[str] = field(default_factory=Counter)
    origins: Counter[str] = field(default_factory=Counter)
    kinds: Counter[str] = field(default_factory=Counter)
    first_seen: dt.datetime | None = None
    last_seen: dt.datetime | None = None
    studies: set[str] = field(default_factory=set)
    held_studies: set[str] = field(default_factory=set)
    accessions: dict[str, str | None] = field(default_factory=dict)
    """Accession number of each held study (what a coder recognises)."""

    def seen(self, when: dt.datetime | None) -> None:
        if when is None:
            return
        self.first_seen = when if self.first_seen is None else min(self.first_seen, when)
        self.last_seen = when if self.last_seen is None else max(self.last_seen, when)

    @property
    def key(self) -> str:
        """A stable id of the writer for the page's forms (its identity, joined)."""
        return "\x1f".join(self.identity.get(k) or "" for k in IDENTITY)

    @property
    def registrable(self) -> dict[str, str]:
        """The registry keys a new entry for this writer would match on: station and serial when the
        headers give them, else manufacturer + model (never the AE title: that names the sender)."""
        keys = {k: v for k in ("station_name", "device_serial_number") if (v := self.identity.get(k))}
        if not keys and self.identity.get("manufacturer") and self.identity.get("model"):
            keys = {"manufacturer": self.identity["manufacturer"] or "", "model": self.identity["model"] or ""}
        return keys

    def as_json(self) -> dict[str, Any]:
        return {
            **self.identity,
            "name": writer_name(self.identity) or "(no equipment identity)",
            "settled_by": sorted(self.settled_by),
            "origins": dict(sorted(self.origins.items())),
            "series_by_kind": dict(sorted(self.kinds.items())),
            "first_seen": self.first_seen.isoformat() if self.first_seen else None,
            "last_seen": self.last_seen.isoformat() if self.last_seen else None,
            "studies": len(self.studies),
            "held_studies": sorted(self.held_studies),
        }


def inventory(reader: IndexReader) -> list[Writer]:
    """Every writer of derived series in the current decisions, those holding studies in review first."""
    indexed = {s.series_instance_uid: s for s in reader.series_equipment()}
    writers: dict[tuple[str | None, ...], Writer] = {}
    for item in reader.current_decisions():
        document = item.decision.document
        needs_review = item.decision.outcome == Outcome.NEEDS_REVIEW
        for series in document.get("series", []):
            if series.get("kind") in NOT_DERIVED:
                continue
            row = indexed.get(series.get("series_instance_uid", ""))
            identity = _identity(series.get("equipment") or {}, row)
            writer = writers.setdefault(tuple(identity[k] for k in IDENTITY), Writer(identity))
            writer.settled_by[settled_by(series)] += 1
            writer.origins[str(series.get("origin"))] += 1
            writer.kinds[str(series.get("kind"))] += 1
            writer.studies.add(item.study.study_instance_uid)
            writer.seen(row.first_seen if row else item.study.first_arrival)
            writer.seen(row.last_seen if row else item.study.last_arrival)
            if needs_review and series.get("origin") == Origin.UNKNOWN:
                writer.held_studies.add(item.study.study_instance_uid)
                writer.accessions[item.study.study_instance_uid] = item.study.accession_number
    return sorted(
        writers.values(),
        key=lambda w: (-len(w.held_studies), writer_name(w.identity).lower(), w.key),
    )


def _identity(equipment: dict[str, Any], row: SeriesEquipment | None) -> dict[str, str | None]:
    return {
        "manufacturer": equipment.get("manufacturer"),
        "model": equipment.get("model"),
        "station_name": equipment.get("station_name"),
        "device_serial_number": equipment.get("device_serial_number"),
        "software_versions": equipment.get("software_versions"),
        "sc_manufacturer": row.sc_manufacturer if row else None,
        "sc_model": row.sc_model if row else None,
        "ae_title": row.calling_ae if row else None,
    }
