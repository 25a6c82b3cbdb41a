"""The typed decision record: its JSON dump is exactly the document the index stored, the API served
and packs carried before the record existed, over every synthetic study and the real-world corpus;
its schema file is generated from it."""

from __future__ import annotations

from pathlib import Path

import jsonschema
import pytest
from pydantic import ValidationError

from dicomcheck.analysis import decide_studies
from dicomcheck.decision_record import (
    StudyDecisionRecord,
    StudyDecisionUnderPolicy,
    analysis_json_schema,
    analysis_json_schema_text,
)
from dicomcheck.enums import Outcome, RuleId
from dicomcheck.model import InstanceFacts, RuleHit, StudyDecision
from dicomcheck.registry import Policy
from dicomcheck.sessions import MadeLaterRecord, made_later
from dicomcheck.sources import discover, read_all

from .conftest import ROOT

SCHEMA_FILE = ROOT / "dicomcheck/schema/analysis.schema.json"
EVIDENCE_KEYS = ["signal", "tag", "keyword", "value", "sop_instance_uid"]


def document_as_before(study: StudyDecision) -> dict:
    """The oracle: the study document as ``decision_document.study_dict`` built it by hand (issue 8), with the
    session facts of issue 13 after it."""
    later = made_later(study.study_date, study.three_d_dates, study.made_later_days)

    def evidence(items) -> list[dict]:
        return [{key: getattr(e, key) for key in EVIDENCE_KEYS} for e in items]

    def series(s) -> dict:
        equipment = ["manufacturer", "model", "station_name", "device_serial_number", "software_versions"]
        return {
            "series_instance_uid": s.series_instance_uid,
            "series_description": s.series_description,
            "modality": s.modality,
            "sop_class_uid": s.sop_class_uid,
            "instances": s.instances,
            "kind": s.kind.value,
            "technique": s.technique.value if s.technique else None,
            "is_3d": s.is_3d,
            "origin": s.origin.value,
            "product": s.product,
            "kind_rule": s.kind_hit.rule,
            "origin_rule": s.origin_hit.rule,
            "equipment": {key: getattr(s.equipment, key) for key in equipment},
            "evidence": evidence(s.evidence),
        }

    return {
        "study_instance_uid": study.study_instance_uid,
        "accession_number": study.accession_number,
        "patient_id": study.patient_id,
        "study_description": study.study_description,
        "study_date": study.study_date,
        "outcome": study.outcome.value,
        "code": study.code,
        "instances": study.instances,
        "reasons": [
            {"rule": h.rule, "text": h.text, "series": list(h.series_instance_uids), "evidence": evidence(h.evidence)}
            for h in study.reasons
        ],
        "series": [series(s) for s in study.series],
        "issuer_of_patient_id": study.issuer_of_patient_id,
        "regions": list(study.regions),
        "regions_from": study.regions_from,
        "three_d_dates": [day.isoformat() for day in study.three_d_dates],
        "made_later": MadeLaterRecord.from_made_later(later).model_dump(mode="json") if later else None,
    }


def _assert_same_documents(decisions: list[StudyDecision]) -> None:
    assert decisions
    for study in decisions:
        dumped = StudyDecisionRecord.from_decision(study).model_dump(mode="json")
        expected = document_as_before(study)
        assert dumped == expected, study.study_instance_uid
        assert list(dumped) == list(expected)  # key order too: stored documents and packs keep it
        assert [list(s) for s in dumped["series"]] == [list(s) for s in expected["series"]]


def _decisions(folder: Path) -> list[StudyDecision]:
    sources, _ = discover([folder])
    return decide_studies(r for r in read_all(sources) if isinstance(r, InstanceFacts))


def test_record_dumps_the_same_document_for_every_fixture_study(fixtures_output: Path):
    decisions = _decisions(fixtures_output)
    assert len(decisions) >= 20
    _assert_same_documents(decisions)


@pytest.mark.realworld
def test_record_dumps_the_same_document_for_the_real_world_corpus(realworld: Path):
    _assert_same_documents(_decisions(realworld))


def test_record_under_policy_adds_only_the_policy_last(fixtures_output: Path):
    study = _decisions(fixtures_output)[0]
    dumped = StudyDecisionUnderPolicy.from_decision_and_policy(study, Policy()).model_dump(mode="json")
    assert dumped == {**document_as_before(study), "policy": Policy().as_dict()}
    assert list(dumped)[-1] == "policy"


def test_fields_are_typed_by_the_enums(fixtures_output: Path):
    record = StudyDecisionRecord.from_decision(_decisions(fixtures_output)[0])
    assert isinstance(record.outcome, Outcome)
    assert all(isinstance(r.rule, RuleId) for r in record.reasons)
    assert StudyDecisionRecord.model_validate(record.model_dump(mode="json")) == record


def test_a_code_that_does_not_go_with_the_outcome_is_refused(fixtures_output: Path):
    document = StudyDecisionRecord.from_decision(_decisions(fixtures_output)[0]).model_dump(mode="json")
    wrong = "76376" if document["code"] != "76376" else "76377"
    with pytest.raises(ValidationError, match="does not go with outcome"):
        StudyDecisionRecord.model_validate({**document, "code": wrong})


def test_committed_schema_is_the_generated_one():
    assert SCHEMA_FILE.read_text() == analysis_json_schema_text(), (
        "regenerate: python -m dicomcheck.decision_record > dicomcheck/schema/analysis.schema.json"
    )


def test_schema_refuses_a_code_that_does_not_go_with_the_outcome(fixtures_output: Path):
    document = StudyDecisionRecord.from_decision(_decisions(fixtures_output)[0]).model_dump(mode="json")
    study_schema = {**analysis_json_schema()["$defs"]["study"], "$defs": analysis_json_schema()["$defs"]}
    jsonschema.validate(document, study_schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**document, "code": "76377" if document["code"] != "76377" else None}, study_schema)


def test_every_rule_id_is_described_and_keyed_by_its_member():
    """``rules.RULES`` describes every ``RuleId`` and nothing else, keyed by the member (not a copy of its string)."""
    from dicomcheck.rules import RULES

    assert set(RULES) == set(RuleId)
    assert all(type(rule) is RuleId for rule in RULES)


def test_the_rules_emit_rule_id_members(fixtures_output: Path):
    """Every hit the rules make (reasons, and the kind / origin hit of each series) carries a ``RuleId`` member,
    which prints as its id: the text report and the JSON document show ``kind.original``, never ``RuleId.X``."""
    hits = [
        hit
        for study in _decisions(fixtures_output)
        for hit in (*study.reasons, *(h for s in study.series for h in (s.kind_hit, s.origin_hit)))
    ]
    assert hits and all(type(hit.rule) is RuleId for hit in hits)
    assert {f"{hit.rule}" for hit in hits} <= {rule.value for rule in RuleId}


def test_a_hit_with_a_plain_string_rule_is_refused():
    with pytest.raises(ValueError, match="RuleId"):
        RuleHit("kind.original", "a plain string is not a rule id")  # type: ignore[arg-type]
    assert RuleHit(RuleId.KIND_ORIGINAL, "a member is").rule == "kind.original"
