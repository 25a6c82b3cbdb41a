"""Study outcome: the contract's precedence, policies, and properties that must always hold."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dicomcheck.analysis import decide_study, group_by_study
from dicomcheck.enums import Origin, Outcome
from dicomcheck.model import Equipment
from dicomcheck.registry import parse_registry

from .factories import SC, code, creator, facts, proc
from .test_origin_rules import WRITERS

VITREA = dict(
    sop_class_uid=SC,
    image_type=("DERIVED", "SECONDARY", "OTHER"),
    derivation_codes=(code("113074"),),
    equipment=Equipment("VITAL Images", "Vitrea", "VITREA01"),
    private_creators=(creator("Vital Images SW 3.4", 0x5653),),
)
CONSOLE_MIP = dict(image_type=("DERIVED", "PRIMARY", "AXIAL", "CT_SOM5 MIP"))


def decide(*instances, registry=""):
    ((study_uid, series),) = group_by_study(instances).items()
    return decide_study(study_uid, series, registry=parse_registry(registry))


def rules_of(decision):
    return [hit.rule for hit in decision.reasons]


def test_acquisition_only_is_no_3d():
    decision = decide(facts(series="a"), facts(series="a"))
    assert decision.outcome is Outcome.NO_3D and decision.code is None


def test_mpr_only_is_no_3d():
    assert (
        decide(facts(series="a"), facts(series="m", image_type=("DERIVED", "PRIMARY", "AXIAL", "CT_SOM5 MPR"))).outcome
        is Outcome.NO_3D
    )


def test_console_mip_supports_76376():
    decision = decide(facts(series="a"), facts(series="m", **CONSOLE_MIP))
    assert decision.outcome is Outcome.SUPPORTS_76376 and decision.code == "76376"
    assert rules_of(decision)[0] == "outcome.console_or_viewer"


def test_workstation_wins_over_console_one_code_only():
    decision = decide(facts(series="a"), facts(series="m", **CONSOLE_MIP), facts(series="v", **VITREA))
    assert decision.outcome is Outcome.SUPPORTS_76377 and decision.code == "76377"


def test_cpt_code_bundles_before_origin():
    decision = decide(facts(series="a", procedure_codes=(proc("70496"),)), facts(series="v", **VITREA))
    assert decision.outcome is Outcome.BUNDLED and rules_of(decision)[0] == "outcome.bundled_cpt"


def test_cpt_designators_and_shape():
    assert (
        decide(facts(series="a", procedure_codes=(proc("74175", "cpt-4"),)), facts(series="v", **VITREA)).outcome
        is Outcome.BUNDLED
    )
    assert (
        decide(facts(series="a", procedure_codes=(proc("74175", "99LOCAL"),)), facts(series="v", **VITREA)).outcome
        is Outcome.SUPPORTS_76377
    )
    assert (
        decide(
            facts(series="a", procedure_codes=(proc("74175", "C4"),)),
            facts(series="m", image_type=("DERIVED", "PRIMARY", "AXIAL", "CT_SOM5 MPR")),
        ).outcome
        is Outcome.NO_3D
    )


def test_angiography_description_bundles():
    decision = decide(facts(series="a", study_description="CTA HEAD AND NECK"), facts(series="v", **VITREA))
    assert decision.outcome is Outcome.BUNDLED and rules_of(decision)[0] == "outcome.bundled_description"


def test_pet_modality_bundles():
    pet = dict(modality="PT", sop_class_uid="1.2.840.10008.5.1.4.1.1.128")
    decision = decide(
        facts(series="a", **pet),
        facts(series="m", **pet, image_type=("DERIVED", "SECONDARY"), derivation_codes=(code("113078"),)),
    )
    assert decision.outcome is Outcome.BUNDLED


def test_no_base_acquisition_needs_review_unless_referenced():
    assert decide(facts(series="v", **VITREA)).outcome is Outcome.NEEDS_REVIEW
    referenced = decide(facts(series="v", **VITREA, referenced_sop_instance_uids=("1.2.3.4",)))
    assert referenced.outcome is Outcome.SUPPORTS_76377


def test_unknown_origin_needs_review():
    stranger = facts(
        series="v",
        image_type=("DERIVED", "SECONDARY"),
        derivation_codes=(code("113074"),),
        equipment=Equipment("Acme Imaging", "PC", "PC-1"),
    )
    decision = decide(facts(series="a"), stranger)
    assert decision.outcome is Outcome.NEEDS_REVIEW and rules_of(decision)[0] == "outcome.unknown_origin"


def test_pacs_viewer_policy():
    viewer = dict(
        sop_class_uid=SC,
        image_type=("DERIVED", "SECONDARY", "OTHER"),
        derivation_codes=(code("113074"),),
        equipment=Equipment("SECTRA", "IDS7", "READ-07"),
    )
    base = facts(series="a")
    assert decide(base, facts(series="v", **viewer)).outcome is Outcome.SUPPORTS_76376
    assert (
        decide(base, facts(series="v", **viewer), registry='[policy]\npacs_viewer_code = "76377"').outcome
        is Outcome.SUPPORTS_76377
    )
    decision = decide(base, facts(series="v", **viewer), registry='[policy]\npacs_viewer_code = "review"')
    assert decision.outcome is Outcome.NEEDS_REVIEW and "policy.pacs_viewer_code" in rules_of(decision)


WRITTEN_OUTCOME = {
    Origin.PACS_VIEWER: Outcome.SUPPORTS_76376,
    Origin.INDEPENDENT_WORKSTATION: Outcome.SUPPORTS_76377,
    Origin.UNKNOWN: Outcome.NEEDS_REVIEW,
}


@pytest.mark.parametrize(("product_id", "written", "origin"), WRITERS, ids=[w[0] for w in WRITERS])
def test_study_outcome_follows_the_writer_of_its_3d_capture(product_id, written, origin):
    """Default policy: PACS viewer 3D supports 76376, a named independent product 76377, a general-purpose viewer
    leaves the study in review."""
    render = replace(written, image_type=("DERIVED", "SECONDARY", "OTHER"), derivation_codes=(code("113074"),))
    decision = decide(facts(series="a"), render)
    assert decision.outcome is WRITTEN_OUTCOME[origin], rules_of(decision)
    if origin is Origin.UNKNOWN:
        assert rules_of(decision)[0] == "outcome.unknown_origin"


def test_general_viewer_registered_by_the_site_settles_the_study():
    osirix = dict(
        sop_class_uid=SC,
        image_type=("DERIVED", "SECONDARY", "3D"),
        equipment=Equipment(None, "OsiriX", "MAC-3D"),
        sc_model="OsiriX",
    )
    assert decide(facts(series="a"), facts(series="v", **osirix)).outcome is Outcome.NEEDS_REVIEW
    registry = '[[device]]\nstation_name = "MAC-3D"\nrole = "independent_workstation"\n'
    assert decide(facts(series="a"), facts(series="v", **osirix), registry=registry).outcome is Outcome.SUPPORTS_76377


def test_pacs_archive_stamp_keeps_a_console_mip_on_the_console():
    """An original CT and a console MIP, both stamped by a Sectra / Agfa archive: still the console, 76376."""
    stamp = (creator("SECTRA_Ident_01", 0x0029), creator("AGFA PACS Archive Mirroring 1.0", 0x0031))
    decision = decide(
        facts(series="a", private_creators=stamp), facts(series="m", private_creators=stamp, **CONSOLE_MIP)
    )
    assert decision.outcome is Outcome.SUPPORTS_76376
    assert {s.origin for s in decision.series} == {Origin.SCANNER_CONSOLE}


def test_3d_in_an_acquisition_description_is_no_rendering():
    mr = dict(modality="MR", sop_class_uid="1.2.840.10008.5.1.4.1.1.4")
    decision = decide(
        facts(series="a", series_description="Sag 3D T1 MPRAGE", **mr),
        facts(series="b", image_type=("DERIVED", "PRIMARY", "M", "ND"), series_description="Ax 3D FSPGR", **mr),
    )
    assert decision.outcome is Outcome.NO_3D


def test_3d_alone_is_a_rendering_of_unstated_technique():
    ge_3d = dict(sop_class_uid=SC, image_type=("DERIVED", "SECONDARY", "3D"))
    decision = decide(facts(series="a"), facts(series="v", **ge_3d))
    (render,) = [s for s in decision.series if s.series_instance_uid == "v"]
    assert (render.kind, render.technique, render.kind_hit.rule) == ("volume_render", None, "kind.unstated_3d")
    assert decision.outcome is Outcome.SUPPORTS_76376


def test_minip_and_curved_policies():
    minip = facts(series="m", image_type=("DERIVED", "SECONDARY", "REFORMATTED", "MIN IP"))
    assert decide(facts(series="a"), minip).outcome is Outcome.SUPPORTS_76376
    decision = decide(facts(series="a"), minip, registry="[policy]\nminip_is_3d = false")
    assert decision.outcome is Outcome.NO_3D and "policy.minip_is_3d" in rules_of(decision)
    curved = facts(series="c", image_type=("DERIVED", "SECONDARY", "REFORMATTED"), derivation_codes=(code("113073"),))
    assert decide(facts(series="a"), curved).outcome is Outcome.NO_3D
    assert (
        decide(facts(series="a"), curved, registry="[policy]\ncurved_mpr_is_3d = true").outcome
        is Outcome.SUPPORTS_76376
    )


def test_non_tomographic_study_needs_review():
    dx = dict(modality="DX", sop_class_uid="1.2.840.10008.5.1.4.1.1.1.1")
    decision = decide(
        facts(series="a", **dx),
        facts(series="v", **dx, image_type=("DERIVED", "SECONDARY"), derivation_codes=(code("113074"),)),
    )
    assert decision.outcome is Outcome.NEEDS_REVIEW and rules_of(decision)[0] == "outcome.non_tomographic"


def test_every_reason_cites_evidence_for_3d_outcomes():
    decision = decide(facts(series="a"), facts(series="v", **VITREA))
    lead = decision.reasons[0]
    assert lead.series_instance_uids == ("v",)
    keywords = {e.keyword for e in lead.evidence}
    assert {"DerivationCodeSequence", "PrivateCreator"} <= keywords


# ---- properties: decide_study never raises and never claims both codes
_text = st.one_of(st.none(), st.sampled_from(["", "MIP", "VR", "CTA", "Dose Report", "3D", "MPR COR", "x"]))
_equipment = st.builds(
    Equipment,
    manufacturer=st.one_of(
        st.none(), st.sampled_from(["SIEMENS", "GE MEDICAL SYSTEMS", "VITAL Images", "OsiriX", "Acme"])
    ),
    model=st.one_of(st.none(), st.sampled_from(["SOMATOM Definition AS+", "Vitrea", "Volume Viewer", "X"])),
    station_name=st.one_of(st.none(), st.sampled_from(["CT54023", "3DLAB-01", "AW1"])),
    device_serial_number=st.one_of(st.none(), st.sampled_from(["54023", "1"])),
    software_versions=st.one_of(st.none(), st.sampled_from(["syngo CT VA48A", "7.1"])),
)
_instance = st.builds(
    facts,
    series=st.sampled_from(["s1", "s2", "s3"]),
    image_type=st.lists(
        st.sampled_from(
            [
                "ORIGINAL",
                "DERIVED",
                "PRIMARY",
                "SECONDARY",
                "AXIAL",
                "MIP",
                "CSA MPR",
                "VOLREN",
                "MIN IP",
                "REFORMATTED",
                "",
            ]
        ),
        max_size=5,
    ).map(tuple),
    derivation_codes=st.lists(
        st.sampled_from(
            [code(c) for c in ("113040", "113072", "113073", "113074", "113075", "113076", "113078", "113079")]
        ),
        max_size=2,
    ).map(tuple),
    equipment=_equipment,
    series_description=_text,
    sop_class_uid=st.sampled_from(
        [
            "1.2.840.10008.5.1.4.1.1.2",
            SC,
            "1.2.840.10008.5.1.4.1.1.66.4",
            "1.2.840.10008.5.1.4.1.1.88.59",
            "1.9.9.9",
            None,
        ]
    ),
    modality=st.sampled_from(["CT", "MR", "US", "PT", "DX", None]),
    procedure_codes=st.lists(st.sampled_from([proc("70496"), proc("74177"), proc("78815", "CPT")]), max_size=1).map(
        tuple
    ),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(_instance, min_size=1, max_size=6),
    st.sampled_from(
        ["", '[policy]\npacs_viewer_code = "review"', "[policy]\nminip_is_3d = false\ncurved_mpr_is_3d = true"]
    ),
)
def test_decide_never_raises_and_codes_are_consistent(instances, registry):
    decision = decide(*instances, registry=registry)
    assert decision.code in ("76376", "76377", None)
    assert (decision.code is not None) == (decision.outcome in (Outcome.SUPPORTS_76376, Outcome.SUPPORTS_76377))
    assert decision.reasons and decision.reasons[0].rule.startswith("outcome.")
    has_3d = any(s.is_3d for s in decision.series)
    assert (decision.outcome is Outcome.NO_3D) == (not has_3d)
