"""The evidence source is the typed decision record, never its JSON dump: the producers read
attributes and enum members, so a dict (or a registry dict) is refused where the source is made,
and every word table of the producers covers every member of its enum."""

from __future__ import annotations

import dataclasses

import pytest

from dicomcheck.decision_record import PolicyRecord
from dicomcheck.enums import CitedRole, Origin, Outcome, RuleId, SeriesKind
from dicomcheck.evidence import dicom, report_pdf
from dicomcheck.evidence.model import EvidenceSource
from dicomcheck.registry import registry_to_dict


def test_a_source_made_from_the_json_dump_is_refused(fixture_source) -> None:
    source = fixture_source("ct_workstation_vr_sc")
    with pytest.raises(TypeError, match="StudyDecisionUnderPolicy, not dict"):
        dataclasses.replace(source, decision=source.decision.document())
    with pytest.raises(TypeError, match="StudyDecisionUnderPolicy, not dict"):
        EvidenceSource(
            source.study_instance_uid,
            source.decision.document(),  # type: ignore[arg-type]  # what the producers walked before
            source.instances,
            source.rules_version,
            source.dicomcheck_version,
        )
    with pytest.raises(TypeError, match="Registry, not dict"):
        dataclasses.replace(source, registry=registry_to_dict(source.registry))


def test_a_source_whose_decision_is_of_another_study_is_refused(fixture_source) -> None:
    source = fixture_source("ct_workstation_vr_sc")
    other = fixture_source("originals_only").decision
    with pytest.raises(ValueError, match="the decision is of study"):
        dataclasses.replace(source, decision=other)


def test_by_role_selects_by_the_cited_role(fixture_source) -> None:
    source = fixture_source("ct_workstation_vr_sc")
    for role in CitedRole:
        assert source.by_role(role) == [i for i in source.instances if i.role is role]
    assert source.by_role(CitedRole.THREE_D) and source.by_role(CitedRole.ACQUISITION)


def test_every_word_table_covers_its_enum() -> None:
    """The producers index these tables by the record's enum members: a new member needs words."""
    assert set(dicom.OUTCOME_MEANINGS) == set(Outcome)
    assert set(dicom.CPT_MEANINGS) == {o.code for o in Outcome if o.code}
    assert set(dicom.ROLE_CONCEPTS) == set(CitedRole)
    assert set(report_pdf.OUTCOME_WORDS) == set(Outcome)
    assert set(report_pdf._OUTCOME_COLOURS) == set(Outcome)
    assert set(report_pdf._KIND_WORDS) == set(SeriesKind)
    assert set(report_pdf._ORIGIN_WORDS) == set(Origin)
    assert set(report_pdf._ROLE_WORDS) == set(CitedRole) == set(report_pdf._ROLE_RANK)
    # a policy rule names the setting that decided: one rule per setting of the record
    assert sorted(report_pdf._POLICY_RULES.values()) == sorted(PolicyRecord.model_fields)
    assert all(rule.value.startswith("policy.") for rule in report_pdf._POLICY_RULES)
    assert set(report_pdf._POLICY_NOTES) == set(PolicyRecord.model_fields)
    assert RuleId.POLICY_PACS_VIEWER_CODE in report_pdf._POLICY_RULES
