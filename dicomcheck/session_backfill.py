"""Sessions for studies decided before sessions were kept (issue 13), and ``dicomcheck sessions rebuild``.

A study decided before migration 0007 has no ``study_session`` row until its next decision. :func:`backfill`
gives every such study its session without waiting (``serve`` runs it in the background at start; the
``dicomcheck sessions backfill`` command runs it once), in batches, idempotently: a study that has its row is
never touched, and several receivers sharing one index may run it at once (each study is written under its
session's lock, and skipped when another process wrote it first or a newer decision replaced the one read).
:func:`rebuild` recomputes every decided study's session (after a ``regions.toml`` change, for instance).

Neither decides a study again: the outcome is the stored decision's, and a coder's current review of a study
counts in its session instead, as on every recomputation (``Sessions`` reads the reviews under the session's
lock; the ``study_session`` row keeps the decision's outcome). What the session needs besides the
outcome comes from the stored decision when it has it (decisions made since sessions are kept carry Issuer
of Patient ID, regions and 3D series dates); a decision stored before lacks them, and ``rebuild`` must read
the regions anew: then the study's instance facts in the index are analysed in memory, under the policy the
decision was made under, for its regions, 3D series dates and issuer only (nothing of that analysis is
saved, and its outcome is ignored).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError

from .analysis import decide_study, group_by_study
from .enums import Outcome, PacsViewerCode
from .model import InstanceFacts
from .registry import Policy, Registry
from .sessions import RegionBasis, parse_da
from .store.index import Index
from .store.sessions import DecidedStudy, SessionInput, Sessions, SessionSettings

log = logging.getLogger(__name__)

BATCH = 200
"""Studies read per query; each study is written in its own short transaction."""
SESSION_FIELDS = ("issuer_of_patient_id", "regions", "regions_from", "three_d_dates")
"""What a decision stored before sessions were kept lacks (the session needs it)."""

FactsOf = Callable[[str], list[InstanceFacts]]


@dataclass(frozen=True, slots=True)
class BackfillResult:
    """What a pass did: studies examined, sessions written, and studies skipped (another process or a newer
    decision wrote theirs)."""

    examined: int = 0
    written: int = 0
    skipped: int = 0


def _policy(document: dict[str, Any]) -> Policy:
    stored = document.get("policy")
    if not isinstance(stored, dict):
        return Policy()
    return Policy(
        pacs_viewer_code=PacsViewerCode(stored.get("pacs_viewer_code", Policy().pacs_viewer_code.value)),
        minip_is_3d=bool(stored.get("minip_is_3d", Policy().minip_is_3d)),
        curved_mpr_is_3d=bool(stored.get("curved_mpr_is_3d", Policy().curved_mpr_is_3d)),
    )


def _has_3d(document: dict[str, Any]) -> bool:
    return any(isinstance(s, dict) and s.get("is_3d") for s in document.get("series") or [])


def from_document(decided: DecidedStudy) -> SessionInput:
    """The session input of a decision stored with every field the session needs."""
    document = decided.document
    dates = (parse_da(value) for value in document.get("three_d_dates") or [])
    regions = tuple(str(region) for region in document.get("regions") or [])
    return SessionInput(
        study_instance_uid=decided.study_instance_uid,
        accession_number=document.get("accession_number"),
        patient_id=document.get("patient_id"),
        issuer_of_patient_id=document.get("issuer_of_patient_id"),
        study_date=document.get("study_date"),
        outcome=Outcome(document["outcome"]),
        has_3d=_has_3d(document),
        regions=regions,
        regions_from=RegionBasis(document.get("regions_from", RegionBasis.UNKNOWN)) if regions else RegionBasis.UNKNOWN,
        three_d_dates=tuple(sorted(day for day in dates if day is not None)),
    )


def from_instances(decided: DecidedStudy, facts: list[InstanceFacts]) -> SessionInput:
    """The session input of a stored decision, its regions, 3D series dates and issuer read anew from the
    study's instance facts (the outcome, patient, date, accession and 3D presence stay the stored decision's).
    Without facts (the instances were purged), what the decision has."""
    stored = from_document(decided)
    grouped = group_by_study(facts).get(decided.study_instance_uid) if facts else None
    if not grouped:
        return stored
    analysed = decide_study(decided.study_instance_uid, grouped, registry=Registry(policy=_policy(decided.document)))
    regions = tuple(analysed.regions)
    return SessionInput(
        study_instance_uid=stored.study_instance_uid,
        accession_number=stored.accession_number
        if "accession_number" in decided.document
        else analysed.accession_number,
        patient_id=stored.patient_id if "patient_id" in decided.document else analysed.patient_id,
        issuer_of_patient_id=(
            stored.issuer_of_patient_id if "issuer_of_patient_id" in decided.document else analysed.issuer_of_patient_id
        ),
        study_date=stored.study_date if "study_date" in decided.document else analysed.study_date,
        outcome=stored.outcome,
        has_3d=stored.has_3d,
        regions=regions,
        regions_from=RegionBasis(analysed.regions_from) if regions else RegionBasis.UNKNOWN,
        three_d_dates=tuple(analysed.three_d_dates),
    )


def session_input(decided: DecidedStudy, facts_of: FactsOf, *, read_regions_anew: bool) -> SessionInput:
    """From the stored decision alone when it has every field the session needs (and the regions need not be
    read anew), else with the instance facts (:func:`from_instances`)."""
    if not read_regions_anew and all(name in decided.document for name in SESSION_FIELDS):
        return from_document(decided)
    return from_instances(decided, facts_of(decided.study_instance_uid))


def _pass(
    engine: Engine,
    settings: SessionSettings,
    *,
    missing_only: bool,
    facts_of: FactsOf | None,
    stop: threading.Event | None,
    batch: int,
) -> BackfillResult:
    sessions = Sessions(engine)
    facts_of = facts_of or Index(engine, "sessions").study_facts
    examined = written = skipped = 0
    after = ""
    while stop is None or not stop.is_set():
        page = sessions.decided_without_session(batch, after) if missing_only else sessions.decided(batch, after)
        if not page:
            break
        for decided in page:
            if stop is not None and stop.is_set():
                break
            after = decided.study_instance_uid
            examined += 1
            study = session_input(decided, facts_of, read_regions_anew=not missing_only)
            try:
                kept = sessions.backfill(study, settings, decision_id=decided.decision_id, only_if_missing=missing_only)
            except IntegrityError:  # a study alone in its session, written by another receiver at the same moment
                kept = None
            if kept is None:
                skipped += 1
            else:
                written += 1
    return BackfillResult(examined, written, skipped)


def backfill(
    engine: Engine,
    settings: SessionSettings,
    *,
    facts_of: FactsOf | None = None,
    stop: threading.Event | None = None,
    batch: int = BATCH,
) -> BackfillResult:
    """Give every decided study without a session row its session (idempotent: a second pass writes nothing).
    ``stop``: checked between studies (``serve`` sets it on shutdown; the next start goes on)."""
    result = _pass(engine, settings, missing_only=True, facts_of=facts_of, stop=stop, batch=batch)
    if result.written:
        log.info("sessions: %d study(ies) decided before sessions were kept got their session", result.written)
    return result


def rebuild(
    engine: Engine,
    settings: SessionSettings,
    *,
    facts_of: FactsOf | None = None,
    batch: int = BATCH,
) -> BackfillResult:
    """Recompute the session of every decided study, its regions read anew from its instance facts with the
    current ``regions.toml`` (outcomes unchanged; the coders' carrier choices and current reviews counted)."""
    return _pass(engine, settings, missing_only=False, facts_of=facts_of, stop=None, batch=batch)


def backfill_in_background(engine: Engine, settings: SessionSettings) -> tuple[threading.Thread, threading.Event]:
    """:func:`backfill` on a daemon thread (``serve`` at start); set the event to stop it between studies."""
    stop = threading.Event()

    def run() -> None:
        try:
            backfill(engine, settings, stop=stop)
        except Exception:  # noqa: BLE001 - the receiver runs on; the next start (or the command) goes on
            log.exception("sessions: the backfill of studies decided before sessions were kept stopped")

    thread = threading.Thread(target=run, name="sessions-backfill", daemon=True)
    thread.start()
    return thread, stop
