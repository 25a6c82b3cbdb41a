"""A typed decision as the JSON document of one study (schema/analysis.schema.json ``studies[]``).

This is what the index stores, the API serves and an evidence pack carries, so it lives in the core:
ingest decides what is stored from it without depending on the presentation module (``report``).
"""

from __future__ import annotations

from .model import RuleHit, SeriesDecision, StudyDecision


def hit_dict(hit: RuleHit) -> dict:
    return {
        "rule": hit.rule,
        "text": hit.text,
        "series": list(hit.series_instance_uids),
        "evidence": [e.as_dict() for e in hit.evidence],
    }


def series_dict(series: SeriesDecision) -> dict:
    equipment = series.equipment
    return {
        "series_instance_uid": series.series_instance_uid,
        "series_description": series.series_description,
        "modality": series.modality,
        "sop_class_uid": series.sop_class_uid,
        "instances": series.instances,
        "kind": series.kind.value,
        "technique": series.technique.value if series.technique else None,
        "is_3d": series.is_3d,
        "origin": series.origin.value,
        "product": series.product,
        "kind_rule": series.kind_hit.rule,
        "origin_rule": series.origin_hit.rule,
        "equipment": {
            "manufacturer": equipment.manufacturer,
            "model": equipment.model,
            "station_name": equipment.station_name,
            "device_serial_number": equipment.device_serial_number,
            "software_versions": equipment.software_versions,
        },
        "evidence": [e.as_dict() for e in series.evidence],
    }


def study_dict(study: StudyDecision) -> dict:
    return {
        "study_instance_uid": study.study_instance_uid,
        "accession_number": study.accession_number,
        "patient_id": study.patient_id,
        "study_description": study.study_description,
        "study_date": study.study_date,
        "outcome": study.outcome.value,
        "code": study.code,
        "instances": study.instances,
        "reasons": [hit_dict(hit) for hit in study.reasons],
        "series": [series_dict(s) for s in study.series],
    }
