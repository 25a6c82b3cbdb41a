"""Series origin: registry > product fingerprints > in-study comparison, never a guess."""

from __future__ import annotations

from dataclasses import replace

from dicomcheck.enums import Origin, SeriesKind
from dicomcheck.knowledge import builtin_knowledge
from dicomcheck.model import Equipment
from dicomcheck.registry import parse_registry
from dicomcheck.rules.origin import decide_origin

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


def test_pacs_viewer_product():
    osirix = facts(
        series="d", sop_class_uid=SC, equipment=Equipment(None, "OsiriX"), sc_manufacturer="OsiriX", sc_model="OsiriX"
    )
    assert origin(osirix)[0] is Origin.PACS_VIEWER


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
