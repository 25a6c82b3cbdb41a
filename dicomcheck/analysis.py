"""Instances -> study decisions. Pure: groups facts, runs the rules, cites the evidence.

This is the one entry point the CLI, the receiver and the API share, so that a study decided
offline and one decided as it arrives go through the same code.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from .enums import Origin, RuleId, SeriesKind
from .knowledge import Knowledge, builtin_knowledge
from .model import Equipment, Evidence, InstanceFacts, PrivateCreator, RuleHit, SeriesDecision, StudyDecision
from .registry import Registry
from .rules.kind import classify_series, is_secondary_capture
from .rules.origin import decide_origin, weak_marks
from .rules.outcome import DERIVED_ONLY_MODALITIES, decide_outcome, three_d_status
from .rules.tags import tag_of
from .sessions import DEFAULT_MADE_LATER_DAYS, find_regions, parse_da


def group_by_study(instances: Iterable[InstanceFacts]) -> dict[str, dict[str, list[InstanceFacts]]]:
    """study UID -> series UID -> instances, the first copy of a repeated SOP Instance UID kept."""
    studies: dict[str, dict[str, list[InstanceFacts]]] = {}
    seen: set[tuple[str, str]] = set()
    for facts in instances:
        if not facts.study_instance_uid:
            raise ValueError(f"{facts.source}: no Study Instance UID")
        key = (facts.study_instance_uid, facts.sop_instance_uid or facts.source)
        if key in seen:
            continue
        seen.add(key)
        series_uid = facts.series_instance_uid or f"(no series UID) {facts.modality or ''}".strip()
        studies.setdefault(facts.study_instance_uid, {}).setdefault(series_uid, []).append(facts)
    return studies


_EquipmentKey = tuple[Equipment, str | None, str | None, tuple[PrivateCreator, ...], str | None]


def _equipment_key(facts: InstanceFacts) -> _EquipmentKey:
    return (facts.equipment, facts.sc_manufacturer, facts.sc_model, facts.private_creators, facts.source_ae_title)


def _is_base_acquisition(kind: SeriesKind, first: InstanceFacts) -> bool:
    """Contract clarification: an image series of the study's modality, Image Type value 2
    PRIMARY (or an acquisition), with no reformat / projection / rendering technique."""
    if is_secondary_capture(first) or (first.modality or "") in DERIVED_ONLY_MODALITIES:
        return False
    if kind is SeriesKind.ACQUISITION:
        return True
    return kind is SeriesKind.OTHER_DERIVED and first.image_type[1:2] == ("PRIMARY",)


def _series_evidence(
    instances: Sequence[InstanceFacts], kind_hit: RuleHit, origin_hit: RuleHit, knowledge: Knowledge
) -> tuple[Evidence, ...]:
    first = instances[0]
    evidence: list[Evidence] = [*kind_hit.evidence, *origin_hit.evidence]
    if first.sop_class_uid:
        evidence.append(
            Evidence("sop_class", "SOPClassUID", first.sop_class_uid, tag_of("SOPClassUID"), first.sop_instance_uid)
        )
    if first.conversion_type:
        evidence.append(
            Evidence(
                "conversion_type",
                "ConversionType",
                first.conversion_type,
                tag_of("ConversionType"),
                first.sop_instance_uid,
            )
        )
    evidence.extend(weak_marks(first, knowledge))
    unique: dict[tuple[str, str, str, str | None], Evidence] = {}
    for item in evidence:
        unique.setdefault((item.signal, item.keyword, item.value, item.sop_instance_uid), item)
    return tuple(unique.values())


def decide_study(
    study_uid: str,
    series_map: dict[str, list[InstanceFacts]],
    *,
    registry: Registry | None = None,
    knowledge: Knowledge | None = None,
    made_later_days: int = DEFAULT_MADE_LATER_DAYS,
) -> StudyDecision:
    """Decide one study from its instances, grouped by series. ``made_later_days``: 3D series dated more than
    this many days after the Study Date are flagged ``3d_made_later`` (the outcome is unchanged)."""
    registry = registry or Registry()
    knowledge = knowledge or builtin_knowledge()
    policy = registry.policy
    kinds = {uid: classify_series(instances) for uid, instances in series_map.items()}
    acquisitions = [
        instances[0]
        for uid, instances in series_map.items()
        if kinds[uid][0].kind is SeriesKind.ACQUISITION and not is_secondary_capture(instances[0])
    ]
    base_series = frozenset(
        uid for uid, instances in series_map.items() if _is_base_acquisition(kinds[uid][0].kind, instances[0])
    )

    decisions = []
    for uid, instances in series_map.items():
        kind_decision, _ = kinds[uid]
        representatives: dict[_EquipmentKey, InstanceFacts] = {}
        for facts in instances:
            representatives.setdefault(_equipment_key(facts), facts)
        origins = [
            decide_origin(facts, kind_decision.kind, acquisitions=acquisitions, registry=registry, knowledge=knowledge)
            for facts in representatives.values()
        ]
        origin = origins[0]
        if len({o.origin for o in origins}) > 1:
            summary = ", ".join(sorted({o.origin.value for o in origins}))
            evidence = tuple(e for o in origins for e in o.hit.evidence[:2])
            origin = type(origin)(
                Origin.UNKNOWN,
                RuleHit(
                    RuleId.ORIGIN_CONFLICT,
                    f"Instances of the series point to different origins ({summary}).",
                    evidence=evidence,
                ),
            )
        is_3d, _ = three_d_status(kind_decision.kind, kind_decision.technique, policy)
        first = instances[0]
        decisions.append(
            SeriesDecision(
                series_instance_uid=uid,
                series_description=first.series_description,
                modality=first.modality,
                sop_class_uid=first.sop_class_uid,
                instances=len(instances),
                kind=kind_decision.kind,
                technique=kind_decision.technique,
                origin=origin.origin,
                is_3d=is_3d,
                kind_hit=RuleHit(kind_decision.hit.rule, kind_decision.hit.text, (uid,), kind_decision.hit.evidence),
                origin_hit=RuleHit(origin.hit.rule, origin.hit.text, (uid,), origin.hit.evidence),
                product=origin.product,
                equipment=first.equipment,
                evidence=_series_evidence(instances, kind_decision.hit, origin.hit, knowledge),
            )
        )
    decisions.sort(key=lambda s: (_series_number(series_map[s.series_instance_uid][0]), s.series_instance_uid))
    all_instances = [f for instances in series_map.values() for f in instances]
    outcome, reasons = decide_outcome(
        decisions, all_instances, acquisition_series=base_series, knowledge=knowledge, policy=policy
    )
    first = all_instances[0]
    study_description = _first(f.study_description for f in all_instances)
    three_d = [series_map[s.series_instance_uid][0] for s in decisions if s.is_3d]
    placed = [series_map[uid][0] for uid in sorted(base_series)] + three_d
    regions = find_regions(
        (f.body_part_examined for f in placed), (study_description, *(f.series_description for f in three_d))
    )
    three_d_dates = {parse_da(f.content_date) or parse_da(f.series_date) for f in three_d}
    return StudyDecision(
        study_instance_uid=study_uid,
        accession_number=_first(f.accession_number for f in all_instances),
        patient_id=_first(f.patient_id for f in all_instances),
        study_description=study_description,
        study_date=_first(f.study_date for f in all_instances) or first.study_date,
        outcome=outcome,
        reasons=reasons,
        series=tuple(decisions),
        instances=len(all_instances),
        issuer_of_patient_id=_first(f.issuer_of_patient_id for f in all_instances),
        regions=tuple(region.id for region in sorted(regions.regions)),
        regions_from=regions.basis.value,
        three_d_dates=tuple(sorted(day for day in three_d_dates if day is not None)),
        made_later_days=made_later_days,
    )


def _first(values: Iterable[str | None]) -> str | None:
    return next((v for v in values if v), None)


def _series_number(facts: InstanceFacts) -> int:
    try:
        return int(float(facts.series_number or 0))
    except ValueError:
        return 0


def decide_studies(
    instances: Iterable[InstanceFacts],
    *,
    registry: Registry | None = None,
    knowledge: Knowledge | None = None,
    made_later_days: int = DEFAULT_MADE_LATER_DAYS,
) -> list[StudyDecision]:
    """Decide every study among ``instances`` (ordered by study date, then UID)."""
    studies = group_by_study(instances)
    decisions = [
        decide_study(uid, series, registry=registry, knowledge=knowledge, made_later_days=made_later_days)
        for uid, series in studies.items()
    ]
    decisions.sort(key=lambda d: (d.study_date or "", d.study_instance_uid))
    return decisions
