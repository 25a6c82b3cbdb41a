"""Series origin: registry > product fingerprints > in-study comparison, never a guess."""

from __future__ import annotations

from dataclasses import replace

import pytest

from dicomcheck.enums import Origin, Role, SeriesKind
from dicomcheck.knowledge import builtin_knowledge
from dicomcheck.model import Equipment
from dicomcheck.registry import parse_registry
from dicomcheck.rules.origin import decide_origin, weak_marks

from .factories import SC, SIEMENS_CT, creator, facts

KNOWLEDGE = builtin_knowledge()
ACQ = facts(series="acq")
EMPTY = parse_registry("")


def origin(derived, *, acquisitions=(ACQ,), registry=EMPTY, kind=SeriesKind.VOLUME_RENDER):
    decision = decide_origin(derived, kind, acquisitions=list(acquisitions), registry=registry, knowledge=KNOWLEDGE)
    return decision.origin, decision.hit.rule


def test_same_station_as_acquisition_is_console():
    assert origin(facts(series="d")) == (Origin.SCANNER_CONSOLE, "origin.study_match")


def test_other_station_without_product_is_unknown():
    other = facts(series="d", equipment=replace(SIEMENS_CT, station_name="3DLAB-01", device_serial_number="999"))
    assert origin(other) == (Origin.UNKNOWN, "origin.study_differs")


def test_registry_outranks_everything():
    registry = parse_registry('[[device]]\nstation_name = "3dlab-01"\nrole = "independent_workstation"\n')
    other = facts(series="d", equipment=replace(SIEMENS_CT, station_name="3DLAB-01"))
    assert origin(other, registry=registry) == (Origin.INDEPENDENT_WORKSTATION, "origin.registry")


def test_registry_entry_is_time_bound_by_study_date():
    registry = parse_registry(
        '[[device]]\nstation_name = "CT54023"\nrole = "independent_workstation"\nvalid_to = 2025-12-31\n'
        '[[device]]\nstation_name = "CT54023"\nrole = "scanner_console"\nvalid_from = 2026-01-01\n'
    )
    assert origin(facts(series="d", study_date="20251201"), registry=registry)[0] is Origin.INDEPENDENT_WORKSTATION
    assert origin(facts(series="d", study_date="20260105"), registry=registry)[0] is Origin.SCANNER_CONSOLE


def test_named_workstation_product():
    vitrea = facts(
        series="d",
        sop_class_uid=SC,
        equipment=Equipment("VITAL Images", "Vitrea", "VITREA01"),
        private_creators=(creator("Vital Images SW 3.4", 0x5653),),
    )
    assert origin(vitrea) == (Origin.INDEPENDENT_WORKSTATION, "origin.product")


def decision_of(derived, *, acquisitions=(ACQ,), registry=EMPTY, kind=SeriesKind.VOLUME_RENDER):
    return decide_origin(derived, kind, acquisitions=list(acquisitions), registry=registry, knowledge=KNOWLEDGE)


def capture(manufacturer=None, model=None, sc_manufacturer=None, sc_model=None, **changes):
    """A 3D capture written by a product: its Manufacturer / model, or its SC device, name the writer; another
    station than the acquisition's."""
    equipment = Equipment(manufacturer, model, changes.pop("station_name", "READ-07"))
    return facts(
        series="d", sop_class_uid=SC, equipment=equipment, sc_manufacturer=sc_manufacturer, sc_model=sc_model, **changes
    )


# (fingerprint id, the capture it writes, the origin it gets). Strings are the fingerprints' own patterns (from
# the product names, see fingerprints.toml), not observed headers.
WRITERS = [
    ("sectra-ids7", capture("SECTRA", "IDS7"), Origin.PACS_VIEWER),
    ("sectra-ids7", capture(None, None, "Sectra", "IDS 7"), Origin.PACS_VIEWER),
    ("vue-pacs", capture("Carestream Health", "Vue PACS"), Origin.PACS_VIEWER),
    ("vue-pacs", capture("Philips", None, "Philips", "Vue PACS 12.2"), Origin.PACS_VIEWER),
    ("agfa-impax-viewer", capture("Agfa", "IMPAX 6.5"), Origin.PACS_VIEWER),
    ("agfa-impax-viewer", capture(None, None, "AGFA", "Enterprise Imaging"), Origin.PACS_VIEWER),
    ("intelerad-inteleviewer", capture("Intelerad Medical Systems", "InteleViewer"), Origin.PACS_VIEWER),
    ("ge-centricity-viewer", capture("GE Healthcare", "Centricity Universal Viewer"), Origin.PACS_VIEWER),
    ("philips-intellispace-pacs", capture("Philips", "IntelliSpace PACS"), Origin.PACS_VIEWER),
    ("fujifilm-synapse-pacs", capture("FUJIFILM Medical Systems", "Synapse"), Origin.PACS_VIEWER),
    ("change-healthcare-pacs", capture("McKesson", "Radiology"), Origin.PACS_VIEWER),
    ("change-healthcare-pacs", capture("Change Healthcare", None), Origin.PACS_VIEWER),
    ("merge-pacs", capture("Merge Healthcare", "Merge PACS"), Origin.PACS_VIEWER),
    ("novarad-novapacs", capture("Novarad", "NovaPACS"), Origin.PACS_VIEWER),
    ("visage", capture("Visage Imaging", "Visage 7"), Origin.PACS_VIEWER),
    ("infinitt-pacs", capture("INFINITT", "G3"), Origin.PACS_VIEWER),
    ("softneta-meddream", capture("Softneta", "MedDream"), Origin.PACS_VIEWER),
    ("materialise-mimics", capture("Materialise", "Mimics Medical"), Origin.INDEPENDENT_WORKSTATION),
    ("materialise-mimics", capture(None, None, None, "3-matic"), Origin.INDEPENDENT_WORKSTATION),
    ("brainlab", capture("Brainlab AG", "Elements"), Origin.INDEPENDENT_WORKSTATION),
    ("brainlab", capture(None, "iPlan"), Origin.INDEPENDENT_WORKSTATION),
    ("olea-sphere", capture("Olea Medical", "Olea Sphere"), Origin.INDEPENDENT_WORKSTATION),
    ("vital-images-vitrea", capture("Canon Medical Informatics", "Vitrea"), Origin.INDEPENDENT_WORKSTATION),
    ("terarecon-aquarius", capture("TeraRecon", "Aquarius iNtuition"), Origin.INDEPENDENT_WORKSTATION),
    ("ziosoft-ziostation", capture("Ziosoft", "Ziostation2"), Origin.INDEPENDENT_WORKSTATION),
    ("fujifilm-synapse-3d", capture("FUJIFILM Corporation", "Synapse 3D"), Origin.INDEPENDENT_WORKSTATION),
    ("mim-software", capture("MIM Software Inc.", "MIM"), Origin.INDEPENDENT_WORKSTATION),
    ("qiicr-dcmqi-3d-slicer", capture("QIICR", "https://github.com/QIICR/dcmqi.git"), Origin.INDEPENDENT_WORKSTATION),
    ("osirix", capture(None, "OsiriX", "OsiriX", "OsiriX"), Origin.UNKNOWN),
    ("horos", capture("Horos Project", "Horos"), Origin.UNKNOWN),
    ("radiant", capture(None, None, "Medixant", "RadiAnt DICOM Viewer"), Origin.UNKNOWN),
    ("weasis", capture("Weasis", None), Origin.UNKNOWN),
    ("microdicom", capture("MicroDicom", "MicroDicom viewer"), Origin.UNKNOWN),
]


@pytest.mark.parametrize(("product_id", "written", "expected"), WRITERS, ids=[w[0] for w in WRITERS])
def test_a_3d_capture_gets_the_role_of_the_product_that_wrote_it(product_id, written, expected):
    decision = decision_of(written)
    assert decision.origin is expected, decision.hit.text
    cited = [e.value for e in decision.hit.evidence if e.keyword == "Fingerprint"]
    assert cited == [KNOWLEDGE.product(product_id).cited()], "the evidence cites the fingerprint (id, status)"


def test_every_viewer_and_named_product_has_a_writer_case():
    covered = {product_id for product_id, _, _ in WRITERS}
    deciding = {
        p.id
        for p in KNOWLEDGE.products
        if (p.role is None or p.role is Role.PACS_VIEWER) and any(not c.weak for c in p.clauses)
    }
    assert deciding <= covered, sorted(deciding - covered)


def test_general_viewer_3d_is_unknown_until_the_registry_names_it():
    osirix = capture(None, "OsiriX", "OsiriX", "OsiriX")
    decision = decision_of(osirix)
    assert (decision.origin, decision.hit.rule) == (Origin.UNKNOWN, "origin.general_viewer")
    assert decision.product == "OsiriX", "the writer is named so the site can register it"
    assert "no role until the site registry" in decision.hit.text
    registry = parse_registry('[[device]]\nstation_name = "READ-07"\nrole = "pacs_viewer"\n')
    assert origin(osirix, registry=registry) == (Origin.PACS_VIEWER, "origin.registry")
    registry = parse_registry('[[device]]\nstation_name = "READ-07"\nrole = "independent_workstation"\n')
    assert origin(osirix, registry=registry) == (Origin.INDEPENDENT_WORKSTATION, "origin.registry")


def test_general_viewer_annotations_are_viewer_work():
    sr = facts(series="d", modality="SR", sop_class_uid="1.2.840.10008.5.1.4.1.1.88.11", equipment=Equipment("OsiriX"))
    assert origin(sr, kind=SeriesKind.NON_IMAGE) == (Origin.PACS_VIEWER, "origin.general_viewer")


@pytest.mark.parametrize(
    ("equipment", "expected"),
    [
        # the viewer's product name, not the company that also makes modalities, names a PACS viewer
        (Equipment("FUJIFILM Corporation", "Synapse 3D", "SYN3D-1"), "fujifilm-synapse-3d"),
        (Equipment("Philips", "IntelliSpace Portal", "ISP-1"), "philips-ev-workspace"),
        (Equipment("Philips", "IntelliSpace PACS", "ISP-1"), "philips-intellispace-pacs"),
    ],
)
def test_vendor_with_modalities_and_viewer_is_told_apart_by_product(equipment, expected):
    decision = decision_of(facts(series="d", sop_class_uid=SC, equipment=equipment))
    assert decision.origin is KNOWLEDGE.product(expected).role.origin
    assert [e.value for e in decision.hit.evidence if e.keyword == "Fingerprint"] == [
        KNOWLEDGE.product(expected).cited()
    ]


@pytest.mark.parametrize(
    "equipment",
    [
        Equipment("CARESTREAM HEALTH", "DRX-Revolution", "DRX-1"),
        Equipment("FUJIFILM Corporation", "FDR Go", "FDR-1"),
        Equipment("Agfa", "DX-D 600", "DXD-1"),
        Equipment("GE MEDICAL SYSTEMS", "Revolution CT", "CT-9"),
    ],
)
def test_company_of_a_pacs_vendor_alone_names_no_viewer(equipment):
    decision = decision_of(facts(series="d", sop_class_uid=SC, equipment=equipment), acquisitions=())
    assert decision.origin is not Origin.PACS_VIEWER


@pytest.mark.parametrize(
    "creator_name",
    [
        "SECTRA_Ident_01",
        "AGFA PACS Archive Mirroring 1.0",
        "MITRA OBJECT UTF8 ATTRIBUTES 1.0",
        "INTELERAD MEDICAL SYSTEMS",
    ],
)
def test_pacs_private_tag_stamped_by_the_archive_decides_nothing(creator_name):
    stamp = (creator(creator_name, 0x0029),)
    acquisition = facts(series="acq", private_creators=stamp)
    console_mip = facts(series="d", image_type=("DERIVED", "PRIMARY", "AXIAL", "CT_SOM5 MIP"), private_creators=stamp)
    assert origin(acquisition, kind=SeriesKind.ACQUISITION) == (Origin.SCANNER_CONSOLE, "origin.acquisition")
    assert origin(console_mip, acquisitions=(acquisition,), kind=SeriesKind.PROJECTION) == (
        Origin.SCANNER_CONSOLE,
        "origin.study_match",
    )
    marks = weak_marks(console_mip, KNOWLEDGE)
    assert any(m.value == creator_name for m in marks), "recorded as an archive mark"


def test_pacs_implementation_name_on_a_console_series_decides_nothing():
    # IMPAX re-sent the console MIP: its implementation version name names the last writer only
    passed = facts(series="d", implementation_version_name="IMPAX_WS_6.5")
    assert origin(passed, kind=SeriesKind.PROJECTION) == (Origin.SCANNER_CONSOLE, "origin.study_match")


def test_product_decision_cites_the_fingerprint():
    vitrea = facts(series="d", sop_class_uid=SC, equipment=Equipment("VITAL Images", "Vitrea", "VITREA01"))
    decision = decision_of(vitrea)
    fingerprint = [e for e in decision.hit.evidence if e.keyword == "Fingerprint"]
    assert len(fingerprint) == 1 and fingerprint[0].value == "vital-images-vitrea (dictionary)"
    assert fingerprint[0].signal == "origin.product" and fingerprint[0].sop_instance_uid is None


def test_weak_marks_never_decide():
    # a console MIP that later passed through OsiriX keeps its console origin
    passed = facts(series="d", implementation_version_name="OSIRIX_361", source_ae_title="OSIRIX")
    assert origin(passed)[0] is Origin.SCANNER_CONSOLE


def test_product_against_console_equipment_without_comparison_is_conflict():
    seg = facts(
        series="d",
        modality="SEG",
        equipment=Equipment("GE MEDICAL SYSTEMS", "GENESIS_SIGNA", None, None, "09"),
        private_creators=(creator("UCSF BIRP PRIVATE CREATOR 011710xx", 0x0117),),
    )
    assert origin(seg, acquisitions=()) == (Origin.UNKNOWN, "origin.product_conflict")


GE_VCT = Equipment("GE MEDICAL SYSTEMS", "LightSpeed VCT", "ct01", "123")


def volume_viewer_sc(equipment: Equipment):
    """A GE Volume Viewer secondary capture (a product that runs on consoles and workstations alike)."""
    return facts(
        series="d",
        sop_class_uid=SC,
        sc_manufacturer="GE MEDICAL SYSTEMS",
        sc_model="Volume Viewer",
        equipment=equipment,
    )


def test_both_role_product_on_acquisition_station_is_console():
    acq = facts(series="acq", equipment=GE_VCT)
    assert origin(volume_viewer_sc(GE_VCT), acquisitions=(acq,)) == (Origin.SCANNER_CONSOLE, "origin.both_role_match")


def test_both_role_product_elsewhere_or_on_other_vendor_is_workstation():
    on_siemens = volume_viewer_sc(replace(SIEMENS_CT, station_name="AWSERVER1"))
    assert origin(on_siemens) == (Origin.INDEPENDENT_WORKSTATION, "origin.both_role_elsewhere")
    elsewhere = volume_viewer_sc(replace(GE_VCT, station_name="AW-9", device_serial_number="777"))
    acq = facts(series="acq", equipment=GE_VCT)
    assert origin(elsewhere, acquisitions=(acq,)) == (Origin.INDEPENDENT_WORKSTATION, "origin.both_role_elsewhere")


def test_stripped_equipment_is_unknown():
    assert origin(facts(series="d", equipment=Equipment())) == (Origin.UNKNOWN, "origin.equipment_stripped")


def test_console_fingerprint_when_nothing_to_compare():
    assert origin(facts(series="d"), acquisitions=()) == (Origin.SCANNER_CONSOLE, "origin.console_fingerprint")


def test_station_carrying_serial_without_comparison():
    unknown_vendor = facts(series="d", equipment=Equipment("Acme", "X1", "SCAN77123", "77123"))
    assert origin(unknown_vendor, acquisitions=()) == (Origin.SCANNER_CONSOLE, "origin.console_station_serial")


def test_unknown_equipment_without_comparison():
    assert origin(facts(series="d", equipment=Equipment("Acme Imaging", "PC")), acquisitions=()) == (
        Origin.UNKNOWN,
        "origin.unidentified",
    )


def test_acquisition_comes_from_the_modality():
    assert origin(facts(), kind=SeriesKind.ACQUISITION) == (Origin.SCANNER_CONSOLE, "origin.acquisition")
