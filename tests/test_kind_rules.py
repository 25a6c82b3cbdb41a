"""Series kind: the contract's signal precedence, one behaviour per test."""

from __future__ import annotations

import pytest

from dicomcheck.enums import SeriesKind, Technique
from dicomcheck.rules.kind import classify_instance, classify_series

from .factories import SC, code, facts


def kind_of(**changes):
    decision = classify_instance(facts(**changes))
    return decision.kind, decision.technique, decision.hit.rule


def test_original_is_acquisition():
    assert kind_of() == (SeriesKind.ACQUISITION, None, "kind.original")


def test_original_mip_token_is_projection_even_under_original():
    assert kind_of(image_type=("ORIGINAL", "PRIMARY", "MIP_COR", "ND"))[:2] == (SeriesKind.PROJECTION, Technique.MIP)


def test_volume_technique_beats_derivation_code():
    kind, technique, rule = kind_of(
        image_type=("DERIVED", "PRIMARY", "VOLUME", "NONE"),
        frame_types=(("DERIVED", "PRIMARY", "VOLUME", "NONE"),),
        volume_techniques=("VOLUME_RENDER",),
        derivation_codes=(code("113072"),),
    )
    assert (kind, rule) == (SeriesKind.VOLUME_RENDER, "kind.volume_technique")


def test_enhanced_volume_flavor_alone_is_not_rendering():
    kind, _, _ = kind_of(
        image_type=("ORIGINAL", "PRIMARY", "VOLUME", "NONE"),
        frame_types=(("ORIGINAL", "PRIMARY", "VOLUME", "NONE"),),
        volume_techniques=("NONE",),
    )
    assert kind is SeriesKind.ACQUISITION


def test_derivation_code_beats_vendor_token():
    assert (
        kind_of(image_type=("DERIVED", "SECONDARY", "AXIAL", "CT_SOM5 MPR"), derivation_codes=(code("113078"),))[2]
        == "kind.derivation_code"
    )


def test_vendor_value4_token_beats_value3():
    kind, technique, rule = kind_of(
        image_type=("DERIVED", "SECONDARY", "PROJECTION IMAGE", "CSA MPR", "", "CSAPARALLEL")
    )
    assert (kind, technique, rule) == (SeriesKind.MPR, Technique.MPR, "kind.image_type_vendor_token")


def test_generic_reformatted_defers_to_description():
    kind, technique, rule = kind_of(
        image_type=("DERIVED", "SECONDARY", "REFORMATTED"), series_description="MIP 10mm COR"
    )
    assert (kind, technique, rule) == (SeriesKind.PROJECTION, Technique.MIP, "kind.series_description")


def test_description_ignored_on_original_images():
    assert kind_of(series_description="3D T1 MIP sequence")[0] is SeriesKind.ACQUISITION


@pytest.mark.parametrize(
    ("token", "technique"),
    [
        ("CT_SOM5 MIP", Technique.MIP),
        ("CSA MIP THIN", Technique.MIP),
        ("MIN IP", Technique.MINIP),
        ("MNIP", Technique.MINIP),
        ("AVERAGE", Technique.THICK_MPR),
        ("CSA MPR THICK", Technique.THICK_MPR),
        ("VOLREN", Technique.VOLUME_RENDER),
        ("CSA 3DPROJECTION", Technique.VOLUME_RENDER),
        ("SSD", Technique.SURFACE_RENDER),
        ("CPR", Technique.CURVED_MPR),
        ("SCREEN SAVE", Technique.NOT_3D),
        ("DOSE_INFO", Technique.NOT_3D),
    ],
)
def test_vendor_tokens(token, technique):
    assert kind_of(image_type=("DERIVED", "SECONDARY", "OTHER", token))[1] is technique


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        ("113074", SeriesKind.VOLUME_RENDER),
        ("113075", SeriesKind.SURFACE_RENDER),
        ("113076", SeriesKind.SEGMENTATION),
        ("113078", SeriesKind.PROJECTION),
        ("113079", SeriesKind.PROJECTION),
        ("113072", SeriesKind.MPR),
        ("113073", SeriesKind.MPR),
    ],
)
def test_derivation_codes(value, kind):
    assert kind_of(image_type=("DERIVED", "SECONDARY"), derivation_codes=(code(value),))[0] is kind


def test_lossy_compression_only_is_still_acquisition():
    kind, _, rule = kind_of(
        image_type=("DERIVED", "PRIMARY", "AXIAL"),
        derivation_codes=(code("113040"),),
        derivation_description="JPEG 2000 irreversible (lossy) 10:1",
    )
    assert (kind, rule) == (SeriesKind.ACQUISITION, "kind.compression_only")


def test_derived_map_without_technique_is_other_derived():
    assert kind_of(image_type=("DERIVED", "PRIMARY", "ASL", "RCBF"))[0] is SeriesKind.OTHER_DERIVED


def test_secondary_capture_is_classified_by_content_not_class():
    assert (
        kind_of(sop_class_uid=SC, image_type=("DERIVED", "SECONDARY", "OTHER"), series_description="Volume Rendering")[
            0
        ]
        is SeriesKind.VOLUME_RENDER
    )
    assert kind_of(sop_class_uid=SC, image_type=(), series_description="Dose Report")[0] is SeriesKind.OTHER_DERIVED


@pytest.mark.parametrize(
    ("sop_class", "kind"),
    [
        ("1.2.840.10008.5.1.4.1.1.88.59", SeriesKind.NON_IMAGE),
        ("1.2.840.10008.5.1.4.1.1.88.33", SeriesKind.NON_IMAGE),
        ("1.2.840.10008.5.1.4.1.1.11.1", SeriesKind.NON_IMAGE),
        ("1.2.840.10008.5.1.4.1.1.66", SeriesKind.NON_IMAGE),
        ("1.2.840.10008.5.1.4.1.1.66.4", SeriesKind.SEGMENTATION),
        ("1.2.840.10008.5.1.4.1.1.11.9", SeriesKind.VOLUME_RENDER),
    ],
)
def test_sop_class_decides(sop_class, kind):
    assert kind_of(sop_class_uid=sop_class, modality="OT")[0] is kind


def test_mixed_series_takes_the_3d_kind_and_says_so():
    instances = [facts(), facts(image_type=("DERIVED", "SECONDARY", "AXIAL", "CT_SOM5 MIP"))]
    decision, counts = classify_series(instances)
    assert decision.kind is SeriesKind.PROJECTION
    assert decision.hit.rule == "kind.mixed_series"
    assert counts[SeriesKind.ACQUISITION] == 1


# ---- "3D" alone (decision-outcomes.md clarifications): a rendering of unstated technique, never on an acquisition
def test_3d_token_alone_is_volume_render_of_unstated_technique():
    decision = classify_instance(facts(sop_class_uid=SC, image_type=("DERIVED", "SECONDARY", "3D")))
    assert (decision.kind, decision.technique, decision.hit.rule) == (
        SeriesKind.VOLUME_RENDER,
        None,
        "kind.unstated_3d",
    )
    assert "names no technique" in decision.hit.text and "unstated" in decision.hit.text
    (evidence,) = decision.hit.evidence
    assert (evidence.keyword, evidence.value) == ("ImageType", "DERIVED\\SECONDARY\\3D")


@pytest.mark.parametrize("description", ["3D", "3D Heart", "3-D reconstruction"])
def test_3d_description_alone_is_volume_render_of_unstated_technique(description):
    kind, technique, rule = kind_of(
        sop_class_uid=SC, image_type=("DERIVED", "SECONDARY", "OTHER"), series_description=description
    )
    assert (kind, technique, rule) == (SeriesKind.VOLUME_RENDER, None, "kind.unstated_3d")


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        # a technique named anywhere, even lower down, outranks the bare word 3D
        (dict(image_type=("DERIVED", "SECONDARY", "3D"), series_description="MIP 10mm"), Technique.MIP),
        (dict(image_type=("DERIVED", "SECONDARY", "3D", "VOLREN")), Technique.VOLUME_RENDER),
        (
            dict(image_type=("DERIVED", "SECONDARY", "OTHER"), series_description="3D SSD skull"),
            Technique.SURFACE_RENDER,
        ),
        (dict(image_type=("DERIVED", "SECONDARY", "3D"), series_description="Sag MPR"), Technique.MPR),
        (dict(image_type=("DERIVED", "SECONDARY", "3D", "SCREEN SAVE")), Technique.NOT_3D),
    ],
)
def test_3d_yields_to_any_named_technique(changes, expected):
    assert kind_of(sop_class_uid=SC, **changes)[1] is expected


@pytest.mark.parametrize(
    "changes",
    [
        dict(image_type=("ORIGINAL", "PRIMARY", "M", "ND"), series_description="Sag 3D T1 MPRAGE"),
        dict(image_type=("ORIGINAL", "PRIMARY", "AXIAL", "3D")),
        dict(image_type=("DERIVED", "PRIMARY", "AXIAL"), series_description="Thorax 3D 1.0 recon"),
        dict(image_type=("ORIGINAL", "PRIMARY", "AXIAL"), series_description="CAP 3D exposure modulation"),
    ],
)
def test_3d_in_an_acquisition_is_never_a_rendering(changes):
    assert kind_of(**changes)[0] is SeriesKind.ACQUISITION
