"""Build an :class:`EvidenceSource` from the receiver's index or straight from a folder of files."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from sqlalchemy import Engine

from .. import __version__
from ..analysis import decide_studies
from ..decision_record import StudyDecisionUnderPolicy
from ..enums import CitedRole, SeriesKind
from ..model import InstanceFacts, facts_from_dict
from ..registry import Registry
from ..reports_in.view import report_part
from ..rules import RULES_VERSION
from ..sources import discover, read_all
from ..store.files import sha256_file
from ..store.reads import IndexReader
from ..store.records import InstanceRecord
from ..store.reports import Reports
from ..store.sessions import Sessions
from .model import CitedInstance, EvidenceSource, is_own_object


class EvidenceError(ValueError):
    """The evidence for a study cannot be assembled (unknown study, nothing decided, files missing)."""


def cited_uids(record: StudyDecisionUnderPolicy) -> list[str]:
    """Every SOP Instance UID the decision cites, in order of first mention (series, then reasons)."""
    evidence = [item for s in record.series for item in s.evidence] + [
        item for r in record.reasons for item in r.evidence
    ]
    return list(dict.fromkeys(item.sop_instance_uid for item in evidence if item.sop_instance_uid))


def representatives(record: StudyDecisionUnderPolicy, members: Mapping[str, Sequence[str]]) -> dict[str, CitedRole]:
    """SOP UID -> role for the images the report shows: the middle image of every 3D series and of
    the first acquisition series. ``members`` maps series UID -> its SOP UIDs in order."""
    chosen: dict[str, CitedRole] = {}
    acquisition_done = False
    for series in record.series:
        uids = members.get(series.series_instance_uid) or []
        if not uids:
            continue
        if series.is_3d:
            chosen[uids[len(uids) // 2]] = CitedRole.THREE_D
        elif series.kind is SeriesKind.ACQUISITION and not acquisition_done:
            chosen[uids[len(uids) // 2]] = CitedRole.ACQUISITION
            acquisition_done = True
    return chosen


def shown_roles(record: StudyDecisionUnderPolicy, members: Mapping[str, Sequence[str]]) -> dict[str, CitedRole]:
    """SOP UID -> role of every instance a pack holds: the cited ones, then the representatives."""
    roles = dict.fromkeys(cited_uids(record), CitedRole.CITED)
    roles.update(representatives(record, members))
    return roles


def stored_record(document: Mapping[str, object], study_uid: str) -> StudyDecisionUnderPolicy:
    """The typed record of a decision document kept in the index."""
    try:
        return StudyDecisionUnderPolicy.model_validate(document)
    except ValidationError as exc:
        raise EvidenceError(
            f"study {study_uid}: the stored decision is not a decision record ({exc.error_count()} problems)"
        ) from None


def from_folder(
    paths: Iterable[str | Path], study_uid: str | None = None, *, registry: Registry | None = None
) -> list[EvidenceSource]:
    """Analyse files offline and assemble the evidence of each study (or of ``study_uid``)."""
    sources, _ = discover(paths)
    facts = [r for r in read_all(sources) if isinstance(r, InstanceFacts)]
    results = []
    for decision in decide_studies(facts, registry=registry):
        if study_uid and decision.study_instance_uid != study_uid:
            continue
        record = StudyDecisionUnderPolicy.from_decision_and_policy(decision, (registry or Registry()).policy)
        by_uid = {f.sop_instance_uid: f for f in facts if f.study_instance_uid == decision.study_instance_uid}
        members: dict[str, list[str]] = {}
        for f in sorted(by_uid.values(), key=lambda f: f.source):
            members.setdefault(f.series_instance_uid or "", []).append(f.sop_instance_uid or "")
        instances = []
        for uid, role in shown_roles(record, members).items():
            shown = by_uid.get(uid)
            if shown is None or "!" in shown.source:  # ZIP members are not files the pack can hash in place
                continue
            path = Path(shown.source).resolve()
            instances.append(
                CitedInstance(
                    uid, shown.sop_class_uid or "", shown.series_instance_uid or "", path, sha256_file(path)[0], role
                )
            )
        results.append(
            EvidenceSource(
                decision.study_instance_uid,
                record,
                tuple(instances),
                RULES_VERSION,
                __version__,
                facts=tuple(by_uid.values()),
                registry=registry or Registry(),
            )
        )
    if study_uid and not results:
        raise EvidenceError(f"study {study_uid} is not among the files")
    return results


def from_index(
    engine: Engine,
    storage_root: Path,
    study_uid: str,
    *,
    decision_id: int | None = None,
    registry: Registry | None = None,
) -> EvidenceSource:
    """The evidence of a decided study in the index (its current decision unless ``decision_id``).

    The facts are those of the instances received up to the decision, so the pack re-derives the
    decision it documents even when more instances arrived later."""
    with IndexReader.open(engine) as reader:
        study = reader.study(study_uid)
        if study is None:
            raise EvidenceError(f"no study {study_uid} has been received")
        wanted = decision_id or study.current_decision_id
        decision = reader.decision(wanted) if wanted else None
        if decision is None or decision.study_instance_uid != study_uid:
            raise EvidenceError(f"study {study_uid} has no decision yet (it is pending)")
        cutoff = decision.decided_at
        rows = [
            r
            for r in reader.instances_of_study(study_uid)
            if r.received_at <= cutoff and not is_own_object(facts_from_dict(r.facts))
        ]
        newest: dict[str, InstanceRecord] = {}
        for row in rows:
            if row.sop_instance_uid not in newest or row.version > newest[row.sop_instance_uid].version:
                newest[row.sop_instance_uid] = row
        members: dict[str, list[str]] = {}
        for row in newest.values():
            members.setdefault(row.series_instance_uid, []).append(row.sop_instance_uid)
        record = stored_record(decision.document, study_uid)
        roles = shown_roles(record, members)
        shown = {uid: newest[uid] for uid in roles if uid in newest}
        receipts = reader.receipts_of_instances([row.id for row in shown.values()])
    instances = [
        CitedInstance(
            uid,
            row.sop_class_uid or "",
            row.series_instance_uid,
            (storage_root / row.path).resolve(),
            row.sha256,
            roles[uid],
            tuple(receipts[row.id]),
        )
        for uid, row in shown.items()
    ]
    decided_at = decision.decided_at
    if decided_at is not None and decided_at.tzinfo is None:
        decided_at = decided_at.replace(tzinfo=dt.UTC)
    return EvidenceSource(
        study_uid,
        record,
        tuple(instances),
        decision.rules_version,
        decision.dicomcheck_version,
        decision_id=decision.id,
        decided_at=decided_at,
        facts=tuple(facts_from_dict(r.facts) for r in newest.values()),
        registry=registry or Registry(),
        storage_paths={uid: r.path for uid, r in newest.items()},
    )


def pack_report(engine: Engine, source: EvidenceSource, *, report_wait: float | None) -> dict[str, Any] | None:
    """The radiology report a pack of ``source`` (a stored decision) cites, held against that decision: the
    documentation verdict, flags and reasons, the report's hash and status, and the sentences of the report
    its statements about the 3D work came from (in text order). None for an offline analysis."""
    if source.decision_id is None:
        return None
    with IndexReader.open(engine) as reader:
        study = reader.study(source.study_instance_uid)
        if study is None:
            return None
        reports = Reports(reader.bind).for_study(study.study_instance_uid, study.accession_number, study.patient_id)
    document = source.decision.model_dump(mode="json")
    part = report_part(reports, document, decided_at=source.decided_at, report_wait=report_wait).document()
    part["sentences"] = list(dict.fromkeys(str(s["sentence"]) for s in part["statements"] if s.get("sentence")))
    return part


def pack_session(engine: Engine, source: EvidenceSource) -> dict[str, Any] | None:
    """The session part (issue 13) a pack of ``source`` (a stored decision) records: the verdict of the study's
    session and every study of it, as computed when the pack is written. None for an offline analysis."""
    if source.decision_id is None:
        return None
    session = Sessions(engine).of_study(source.study_instance_uid)
    return session.model_dump(mode="json") if session else None
