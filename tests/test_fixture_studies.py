"""The synthetic studies of fixtures/: the CLI decides each exactly as its expected.json says,
and together they produce every outcome and every kind of the contract."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from dicomcheck.enums import Outcome, SeriesKind
from dicomcheck.rules import RULES

from .conftest import ROOT, analyze_json

SCHEMA = json.loads((ROOT / "dicomcheck/schema/analysis.schema.json").read_text())


def _cases(root: Path) -> list[dict]:
    return [json.loads(p.read_text()) | {"folder": p.parent} for p in sorted(root.glob("*/expected.json"))]


@pytest.fixture(scope="module")
def all_without_registry(fixtures_output: Path) -> dict:
    document = analyze_json(fixtures_output)
    jsonschema.validate(document, SCHEMA)
    return document


def _study(document: dict, uid: str) -> dict:
    matches = [s for s in document["studies"] if s["study_instance_uid"] == uid]
    assert len(matches) == 1, f"study {uid} not found exactly once"
    return matches[0]


def _check(study: dict, expected: dict, outcome: str, code: str | None) -> None:
    assert (study["outcome"], study["code"]) == (outcome, code), json.dumps(study["reasons"], indent=1)[:3000]
    assert study["accession_number"] == expected["accession_number"]
    got = {s["series_description"]: (s["kind"], s["origin"]) for s in study["series"]}
    want = {desc: (v["kind"], v["origin"]) for desc, v in expected["series"].items()}
    assert got == want


def test_every_case_is_decided_as_expected_without_registry(fixtures_output: Path, all_without_registry: dict):
    cases = _cases(fixtures_output)
    assert len(cases) >= 20
    assert all_without_registry["errors"] == []
    failures = []
    for case in cases:
        study = _study(all_without_registry, case["study_instance_uid"])
        if case.get("devices"):
            expected = case.get("without_devices") or {}
            if expected and (study["outcome"], study["code"]) != (expected["outcome"], expected.get("code")):
                failures.append(f"{case['case']} (no registry): {study['outcome']} != {expected['outcome']}")
            continue
        try:
            _check(study, case, case["outcome"], case["code"])
        except AssertionError as exc:
            failures.append(f"{case['case']}: {exc}")
    assert not failures, "\n".join(failures)


def test_cases_with_a_registry_or_policy(fixtures_output: Path):
    cases = [c for c in _cases(fixtures_output) if c.get("devices")]
    assert cases, "at least one case exercises the site registry"
    for case in cases:
        document = analyze_json("--devices", case["folder"] / case["devices"], case["folder"])
        study = _study(document, case["study_instance_uid"])
        _check(study, case, case["outcome"], case["code"])


def test_every_outcome_and_kind_is_produced(fixtures_output: Path, all_without_registry: dict):
    outcomes = {s["outcome"] for s in all_without_registry["studies"]}
    kinds = {ser["kind"] for s in all_without_registry["studies"] for ser in s["series"]}
    assert outcomes == {o.value for o in Outcome}
    assert kinds == {k.value for k in SeriesKind}


def test_rules_fire_across_fixtures_and_evidence_names_header_values(all_without_registry: dict):
    fired = set()
    for study in all_without_registry["studies"]:
        fired |= {r["rule"] for r in study["reasons"]}
        for series in study["series"]:
            fired |= {series["kind_rule"], series["origin_rule"]}
            assert series["evidence"], series["series_description"]
            for item in series["evidence"]:
                assert item["keyword"] and item["value"] is not None
    assert fired <= set(RULES)
    # the rules every fixture set must exercise (the rest are covered by unit tests)
    must = {
        "kind.sop_class",
        "kind.volume_technique",
        "kind.derivation_code",
        "kind.image_type_vendor_token",
        "kind.image_type_value3",
        "kind.series_description",
        "kind.original",
        "kind.compression_only",
        "kind.unstated_3d",
        "origin.acquisition",
        "origin.product",
        "origin.study_match",
        "origin.study_differs",
        "origin.both_role_match",
        "origin.both_role_elsewhere",
        "origin.equipment_stripped",
        "origin.general_viewer",
        "outcome.no_3d",
        "outcome.bundled_cpt",
        "outcome.bundled_description",
        "outcome.bundled_modality",
        "outcome.no_base_acquisition",
        "outcome.independent_workstation",
        "outcome.unknown_origin",
        "outcome.console_or_viewer",
    }
    assert must <= fired, sorted(must - fired)
