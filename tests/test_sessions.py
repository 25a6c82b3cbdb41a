"""Sessions (issue 13): regions, contiguity, the session verdict, the same-day tie, the session record.

Pure functions over the packaged region table (dicomcheck/knowledge/regions.toml) and the fixture cases of
fixtures/build.py regrouped into sessions by fixtures/sessions/sessions.toml.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections import defaultdict
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta, timezone
from importlib import resources
from typing import Any

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dicomcheck.enums import Outcome
from dicomcheck.sessions import (
    MADE_LATER_FLAG,
    MAX_TEXTS,
    RegionBasis,
    RegionTableError,
    SessionRecord,
    SessionStudy,
    Verdict,
    builtin_regions,
    find_regions,
    made_later,
    parse_regions,
    session_json_schema,
    session_key,
    session_verdict,
    study_regions,
)

from .conftest import ROOT

TABLE = builtin_regions()
T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)


def ids(regions: Any) -> set[str]:
    return {region.id for region in regions}


def region_set(*names: str) -> frozenset[Any]:
    return frozenset(TABLE.regions[name] for name in names)


def study(
    uid: str,
    outcome: Outcome = Outcome.SUPPORTS_76377,
    *regions: str,
    minute: int = 0,
    chosen: bool = False,
    **more: Any,
) -> SessionStudy:
    return SessionStudy(
        study_instance_uid=uid,
        outcome=outcome,
        regions=region_set(*regions),
        regions_from=RegionBasis.BODY_PART_EXAMINED if regions else RegionBasis.UNKNOWN,
        decided_at=T0 + timedelta(minutes=minute),
        has_3d=outcome is not Outcome.NO_3D,
        carrier_chosen=chosen,
        **more,
    )


# ------------------------------------------------------------------------------------------------ regions


@pytest.mark.parametrize(
    ("description", "expected"),
    [
        ("CT CHEST ABDOMEN PELVIS W CONTRAST", {"chest", "abdomen", "pelvis"}),
        ("CTA C-SPINE", {"cspine"}),
        ("MR KNEE RT", {"knee"}),
        ("CT CAP W CONTRAST", {"chest", "abdomen", "pelvis"}),
        ("CT TAP", {"chest", "abdomen", "pelvis"}),
        ("CT A/P W CON", {"abdomen", "pelvis"}),
        ("CT ABD/PELV", {"abdomen", "pelvis"}),
        ("ct abd pel wo", {"abdomen", "pelvis"}),
        ("CT THORAX", {"chest"}),
        ("CT THORACIC AORTA", {"chest"}),
        ("MR THORACIC SPINE", {"tspine"}),
        ("MR T-SPINE", {"tspine"}),
        ("CT SPINE LUMBAR WO", {"lspine"}),
        ("MR L SPINE", {"lspine"}),
        ("MR WHOLE SPINE", {"cspine", "tspine", "lspine", "sacrum"}),
        ("CTA LE RUNOFF", {"abdomen", "pelvis", "hip", "thigh", "knee", "lower_leg", "ankle_foot"}),
        ("CT HIP FEMORAL NECK", {"hip"}),
        ("CT SINUS", {"face"}),
        ("CT HEAD FACIAL BONES", {"head", "face"}),
        ("US OB 2ND TRIMESTER", {"pelvis"}),
        ("VR Abdomen", {"abdomen"}),
        ("CT PANCREATIC HEAD", {"abdomen"}),
        ("Cinematic VRT", set()),
        ("3D", set()),
        ("CT OUTSIDE IMAGES", set()),
    ],
)
def test_regions_from_descriptions(description: str, expected: set[str]) -> None:
    found = find_regions([], [description])
    assert ids(found.regions) == expected
    assert found.basis is (RegionBasis.ANATOMY_WORDS if expected else RegionBasis.UNKNOWN)


@pytest.mark.parametrize(
    ("body_part", "expected"),
    [
        ("CHEST", {"chest"}),
        ("Chest", {"chest"}),
        (" HEAD ", {"head"}),
        ("CSPINE", {"cspine"}),
        ("TSPINE", {"tspine"}),
        ("LSPINE", {"lspine"}),
        ("KNEE", {"knee"}),
        ("CHESTABDPELVIS", {"chest", "abdomen", "pelvis"}),
        ("ABDOMEN PELVIS", {"abdomen", "pelvis"}),  # a space where the term has none
        ("C-SPINE", {"cspine"}),
        ("HEAD_NECK", {"head", "face", "neck"}),
        ("WHOLEBODY", set(TABLE.regions)),
    ],
)
def test_regions_from_body_part_examined(body_part: str, expected: set[str]) -> None:
    found = find_regions([body_part], ["CT KNEE"])  # the defined term decides; the words are not read
    assert ids(found.regions) == expected
    assert found.basis is RegionBasis.BODY_PART_EXAMINED


def test_body_part_that_is_no_defined_term_falls_to_the_words() -> None:
    assert ids(study_regions(["EXTREMITY"], ["MR KNEE RT"])) == {"knee"}
    found = find_regions(["ABD_PELV"], [None, ""])  # vendor free text in Body Part Examined: read as words
    assert ids(found.regions) == {"abdomen", "pelvis"} and found.basis is RegionBasis.ANATOMY_WORDS
    assert find_regions([None, "", "BODY"], ["CT OUTSIDE STUDY"]).basis is RegionBasis.UNKNOWN


def test_hostile_texts_are_bounded_and_never_raise() -> None:
    long_text = "KNEE " + "X" * 100_000 + " CHEST"
    assert ids(study_regions([], [long_text])) == {"knee"}  # only the first characters are read
    many = ["CT"] * MAX_TEXTS + ["CT CHEST"]
    assert study_regions([], many) == frozenset()
    assert study_regions(["\\\\\x00", "(((", "KNEE\\CHEST"], []) == region_set("knee", "chest")


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.none(), st.text(max_size=80))), st.lists(st.one_of(st.none(), st.text(max_size=80))))
def test_region_extraction_never_raises(body_parts: list[str | None], descriptions: list[str | None]) -> None:
    found = find_regions(body_parts, descriptions)
    assert found.regions <= frozenset(TABLE.regions.values())
    assert (found.basis is RegionBasis.UNKNOWN) == (not found.regions)


# ------------------------------------------------------------------------------------------------ the table


def test_every_body_part_term_is_a_dicom_defined_term() -> None:
    """PS3.16 Annex L Table L-1 as shipped by highdicom: no invented Body Part Examined term."""
    text = resources.files("highdicom").joinpath("_standard/anatomic_regions.json").read_text("utf-8")
    defined = set(json.loads(text))
    assert len(defined) > 300
    used = set(TABLE.body_parts) | set(TABLE.unmapped)
    assert used - defined == set()
    for term in ("HEAD", "BRAIN", "NECK", "CSPINE", "CHEST", "TSPINE", "ABDOMEN", "LSPINE", "PELVIS", "KNEE"):
        assert term in TABLE.body_parts


def test_neighbours_are_symmetric_and_the_medlearn_example_holds() -> None:
    for region_id, neighbours in TABLE.neighbours.items():
        for neighbour in neighbours:
            assert region_id in TABLE.neighbours[neighbour]
    assert len(TABLE.components(region_set("cspine", "tspine", "lspine", "sacrum"))) == 1
    assert len(TABLE.components(region_set("chest", "abdomen", "pelvis"))) == 1
    assert len(TABLE.components(region_set("head", "face", "neck", "chest"))) == 1
    assert len(TABLE.components(region_set("pelvis", "hip"))) == 1
    assert len(TABLE.components(region_set("head", "knee"))) == 2
    assert len(TABLE.components(region_set("chest", "pelvis"))) == 2  # not joined unless the abdomen is there
    assert TABLE.sources and all(TABLE.sources.values())


def _table_data() -> dict[str, Any]:
    text = resources.files("dicomcheck.knowledge").joinpath("regions.toml").read_text("utf-8")
    return tomllib.loads(text)


def test_the_shipped_table_parses_the_same_twice() -> None:
    again = parse_regions(_table_data())
    assert again.regions == TABLE.regions and again.neighbours == TABLE.neighbours


def _broken(change: Any) -> dict[str, Any]:
    data = _table_data()
    change(data)
    return data


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.update(colour="red"), r"regions\.toml: unknown keys \['colour'\]"),
        (lambda d: d["region"]["knee"].update(colour="red"), r"regions\.toml: region\.knee: unknown keys"),
        (
            lambda d: d["region"]["knee"]["neighbours"].append("moon"),
            r"regions\.toml: region\.knee\.neighbours: 'moon' is no region",
        ),
        (
            lambda d: d["region"]["knee"]["neighbours"].append("head"),
            r"regions\.toml: region\.knee\.neighbours: 'head' does not list 'knee' back",
        ),
        (
            lambda d: d["region"]["knee"]["neighbours"].append("knee"),
            r"region\.knee\.neighbours: a region is not its own neighbour",
        ),
        (
            lambda d: d["region"]["knee"]["body_parts"].append("CHEST"),
            r"region\.knee\.body_parts: 'CHEST' is also in regions\.toml: region\.chest",
        ),
        (lambda d: d["region"]["knee"]["words"].append("KNEE("), r"region\.knee\.words: bad pattern 'KNEE\('"),
        (lambda d: d["region"]["knee"].pop("name"), r"region\.knee: missing 'name'"),
        (lambda d: d["composite"]["spine"]["regions"].append("tail"), r"composite\.spine\.regions: \['tail'\]"),
        (lambda d: d["unmapped"].update(KNEE="x"), r"unmapped\.KNEE: also mapped"),
        (lambda d: d.pop("sources"), r"\[sources\] must say"),
        (lambda d: d["region"]["knee"]["body_parts"].append("knee joint"), r"is not a Body Part Examined"),
    ],
)
def test_a_broken_region_table_fails_loudly(change: Any, message: str) -> None:
    with pytest.raises(RegionTableError, match=message):
        parse_regions(_broken(change))


# ------------------------------------------------------------------------------------------------ the key


def test_session_key_groups_by_patient_issuer_and_date() -> None:
    key = session_key("MRN1 ", "HOSP", "20260105")
    assert key == session_key(" MRN1", "HOSP ", "20260105")
    assert key != session_key("MRN1", "OTHER", "20260105") != session_key("MRN1", "HOSP", "20260106")
    assert session_key("MRN1", None, "20260105") == session_key("MRN1", "  ", "20260105")
    assert key is not None and key.study_date == date(2026, 1, 5)
    assert session_key("MRN1", None, "2026.01.05") == session_key("MRN1", None, date(2026, 1, 5))


@pytest.mark.parametrize(
    ("patient_id", "study_date"),
    [(None, "20260105"), ("", "20260105"), ("  ", "20260105"), ("MRN1", None), ("MRN1", "2026"), ("MRN1", "20261345")],
)
def test_no_patient_or_no_date_is_no_session(patient_id: str | None, study_date: str | None) -> None:
    assert session_key(patient_id, None, study_date) is None


def test_session_id_is_stable_and_carries_no_phi() -> None:
    key = session_key("MRN-12345", "HOSP", "20260105")
    assert key is not None
    session_id = key.session_id()
    assert session_id == session_key("MRN-12345", "HOSP", "20260105").session_id()  # type: ignore[union-attr]
    assert session_id.startswith("ses-") and len(session_id) == 28
    for phi in ("MRN", "12345", "HOSP", "2026", "0105"):
        assert phi not in session_id
    assert key.session_id(b"site secret") != session_id
    assert key.session_id(b"x" * 100) != key.session_id(b"y" * 100)


# ------------------------------------------------------------------------------------------------ the verdict


def test_chest_and_abdomen_with_workstation_3d_are_one_unit() -> None:
    verdict = session_verdict(
        [study("abd", Outcome.SUPPORTS_76377, "abdomen", minute=5), study("chest", Outcome.SUPPORTS_76377, "chest")]
    )
    assert verdict.verdict is Verdict.ONE_UNIT and verdict.final
    assert verdict.carrier == "chest"  # the first decided
    assert [s.study_instance_uid for s in verdict.studies] == ["chest", "abd"]
    (group,) = verdict.groups
    assert set(group.studies) == {"chest", "abd"} and ids(group.regions) == {"chest", "abdomen"}


def test_head_and_knee_are_separate_units_possible() -> None:
    verdict = session_verdict(
        [study("head", Outcome.SUPPORTS_76377, "head"), study("knee", Outcome.SUPPORTS_76376, "knee", minute=1)]
    )
    assert verdict.verdict is Verdict.SEPARATE_UNITS_POSSIBLE
    assert verdict.carrier is None and set(verdict.carriers) == {"head", "knee"}
    assert [g.studies for g in verdict.groups] == [("head",), ("knee",)]
    assert any("payer" in note for note in verdict.notes)
    assert not any("R13" in note for note in verdict.notes)  # separate units may carry different codes


def test_one_with_3d_and_one_without_is_single() -> None:
    verdict = session_verdict(
        [study("mpr", Outcome.NO_3D, "abdomen"), study("vr", Outcome.SUPPORTS_76377, "chest", minute=3)]
    )
    assert verdict.verdict is Verdict.SINGLE and verdict.carrier == "vr"
    assert {s.study_instance_uid for s in verdict.studies} == {"mpr", "vr"}


def test_cervical_thoracic_lumbar_spine_are_one_unit() -> None:
    studies = [
        study(name, Outcome.SUPPORTS_76376, name, minute=i) for i, name in enumerate(("lspine", "cspine", "tspine"))
    ]
    verdict = session_verdict(studies)
    assert verdict.verdict is Verdict.ONE_UNIT and verdict.carrier == "lspine"
    assert session_verdict(studies[:2]).verdict is Verdict.SEPARATE_UNITS_POSSIBLE  # L and C without T


def test_unknown_regions() -> None:
    verdict = session_verdict([study("a"), study("b", Outcome.SUPPORTS_76377, "chest", minute=1)])
    assert verdict.verdict is Verdict.UNKNOWN_REGIONS and verdict.carrier is None
    assert any("coder decides" in note for note in verdict.notes)
    chosen = session_verdict([study("a", chosen=True), study("b", Outcome.SUPPORTS_76377, "chest", minute=1)])
    assert chosen.verdict is Verdict.UNKNOWN_REGIONS and chosen.carrier == "a"
    # One study with 3D of unknown region and others without 3D: still single.
    assert session_verdict([study("a"), study("b", Outcome.NO_3D)]).verdict is Verdict.SINGLE


def test_a_coder_chosen_carrier_overrides_the_first_decided() -> None:
    studies = [
        study("chest", Outcome.SUPPORTS_76377, "chest"),
        study("abd", Outcome.SUPPORTS_76377, "abdomen", minute=5, chosen=True),
    ]
    verdict = session_verdict(studies)
    assert verdict.verdict is Verdict.ONE_UNIT and verdict.carrier == "abd"
    record = SessionRecord.from_verdict(verdict, None)
    assert {s.study_instance_uid: s.carries_unit for s in record.studies} == {"chest": False, "abd": True}
    # A study that supports no code cannot carry, even when chosen.
    bundled = session_verdict(
        [study("chest", Outcome.SUPPORTS_76377, "chest"), study("cta", Outcome.BUNDLED, "chest", chosen=True)]
    )
    assert bundled.verdict is Verdict.SINGLE and bundled.carrier == "chest"
    assert any("carries nothing" in note for note in bundled.notes)


def test_outcomes_that_make_no_unit() -> None:
    assert (
        session_verdict([study("a", Outcome.NO_3D, "chest"), study("b", Outcome.BUNDLED, "chest")]).verdict
        is Verdict.NO_UNIT
    )
    pending = session_verdict([study("a", Outcome.SUPPORTS_76377, "chest"), study("b", Outcome.NEEDS_REVIEW, "knee")])
    assert pending.verdict is Verdict.SINGLE and not pending.final
    assert any("need review" in note for note in pending.notes)


def test_different_codes_in_one_unit_are_noted() -> None:
    verdict = session_verdict(
        [study("a", Outcome.SUPPORTS_76376, "chest"), study("b", Outcome.SUPPORTS_76377, "abdomen", minute=1)]
    )
    assert verdict.verdict is Verdict.ONE_UNIT and any("R13" in note for note in verdict.notes)


def test_a_single_study_with_non_contiguous_3d_is_noted() -> None:
    verdict = session_verdict([study("a", Outcome.SUPPORTS_76377, "head", "knee")])
    assert verdict.verdict is Verdict.SINGLE and any("R15" in note for note in verdict.notes)


def test_naive_and_aware_times_and_missing_times_sort_without_error() -> None:
    naive = replace(study("naive", Outcome.SUPPORTS_76377, "chest"), decided_at=datetime(2026, 1, 5, 8, 0))
    aware = replace(
        study("aware", Outcome.SUPPORTS_76377, "chest"),
        decided_at=datetime(2026, 1, 5, 8, 30, tzinfo=timezone(timedelta(hours=-5))),
    )
    never = replace(study("never", Outcome.SUPPORTS_76377, "chest"), decided_at=None)
    verdict = session_verdict([never, aware, naive])
    assert [s.study_instance_uid for s in verdict.studies] == ["naive", "aware", "never"]
    assert verdict.carrier == "naive"


def test_a_study_given_twice_is_kept_once() -> None:
    verdict = session_verdict(
        [study("a", Outcome.SUPPORTS_76377, "chest"), study("a", Outcome.SUPPORTS_76377, "chest", minute=9)]
    )
    assert verdict.verdict is Verdict.SINGLE and len(verdict.studies) == 1 and verdict.notes


def test_session_study_regions_and_basis_go_together() -> None:
    with pytest.raises(ValueError, match="regions_from"):
        SessionStudy("a", Outcome.NO_3D, region_set("chest"))
    with pytest.raises(ValueError, match="unknown"):
        SessionStudy("a", Outcome.NO_3D, frozenset(), RegionBasis.ANATOMY_WORDS)


REGION_IDS = sorted(TABLE.regions)
later_flags = st.one_of(
    st.none(),
    st.builds(lambda days: made_later("20260105", [date(2026, 1, 5) + timedelta(days=days)]), st.integers(1, 9)),
)
studies_strategy = st.lists(
    st.builds(
        lambda uid, outcome, regions, minute, chosen, later: study(
            uid, outcome, *regions, minute=minute, chosen=chosen, made_later=later
        ),
        st.sampled_from(["s1", "s2", "s3", "s4", "s5"]),
        st.sampled_from(list(Outcome)),
        st.lists(st.sampled_from(REGION_IDS), max_size=3, unique=True),
        st.integers(0, 3),
        st.booleans(),
        later_flags,
    ),
    min_size=1,
    max_size=6,
)


RECORD_VALIDATOR = jsonschema.Draft202012Validator(session_json_schema())


def _essence(verdict: Any) -> tuple[Any, ...]:
    return (verdict.verdict, verdict.final, verdict.groups, verdict.carriers, sorted(verdict.notes))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(studies_strategy, st.randoms(use_true_random=False))
def test_the_verdict_is_invariant_to_order_and_to_made_later(studies: list[SessionStudy], random: Any) -> None:
    verdict = session_verdict(studies)  # never raises
    shuffled = list(studies)
    random.shuffle(shuffled)
    assert _essence(session_verdict(shuffled)) == _essence(verdict)
    unflagged = [replace(s, made_later=None) for s in studies]
    assert _essence(session_verdict(unflagged)) == _essence(verdict)
    unit_uids = {s.study_instance_uid for s in verdict.studies if s.code}
    assert set(verdict.carriers) <= unit_uids
    assert (verdict.verdict is Verdict.NO_UNIT) == (not unit_uids)
    assert verdict.final == all(s.outcome is not Outcome.NEEDS_REVIEW for s in verdict.studies)
    record = SessionRecord.from_verdict(verdict, None)
    RECORD_VALIDATOR.validate(record.model_dump(mode="json"))


# ------------------------------------------------------------------------------------------------ same-day tie


def test_a_late_3d_series_is_flagged_with_its_dates() -> None:
    later = made_later("20260105", ["20260108", "20260105", None, "garbage", "20260106"])
    assert later is not None and later.flagged and later.days_after == 3
    assert later.three_d_dates == (date(2026, 1, 6), date(2026, 1, 8))
    assert "2026-01-06, 2026-01-08" in later.text() and "2026-01-05" in later.text()
    assert MADE_LATER_FLAG in later.text() and "outcome is unchanged" in later.text()


def test_the_next_day_is_named_but_not_flagged_by_default() -> None:
    later = made_later("20260105", ["20260106"])
    assert later is not None and not later.flagged and "not flagged" in later.text()
    flagged = made_later("20260105", ["20260106"], threshold_days=0)
    assert flagged is not None and flagged.flagged


def test_same_day_earlier_or_undated_3d_is_no_finding() -> None:
    assert made_later("20260105", ["20260105", "20260101"]) is None
    assert made_later(None, ["20260108"]) is None
    assert made_later("20260105", []) is None
    with pytest.raises(ValueError, match="threshold"):
        made_later("20260105", [], threshold_days=-1)


# ------------------------------------------------------------------------------------------------ the record


def test_the_session_record_and_its_schema() -> None:
    key = session_key("MRN1", None, "20260105")
    assert key is not None
    late = made_later("20260105", ["20260108"])
    verdict = session_verdict(
        [study("chest", Outcome.SUPPORTS_76377, "chest", made_later=late), study("mpr", Outcome.NO_3D)]
    )
    record = SessionRecord.from_verdict(verdict, key.session_id())
    document = record.model_dump(mode="json")
    schema = session_json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.validate(document, schema)
    assert document["verdict"] == "single" and document["carrier"] == "chest"
    chest, mpr = document["studies"]
    assert chest["regions"] == ["chest"] and chest["regions_from"] == "body_part_examined" and chest["carries_unit"]
    assert chest["made_later"]["flag"] == "3d_made_later" and chest["made_later"]["three_d_dates"] == ["2026-01-08"]
    assert mpr["regions"] == [] and mpr["regions_from"] == "unknown" and not mpr["carries_unit"]
    verdicts = schema["$defs"]["Verdict"]["enum"]
    assert verdicts == [v.value for v in Verdict]
    bad = document | {"verdict": "two_units"}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)


# ------------------------------------------------------------------------------------------------ fixture sessions

MANIFEST = ROOT / "fixtures" / "sessions" / "sessions.toml"
SCENARIO_KEYS = {"name", "summary", "study", "sessions", "final"}
STUDY_KEYS = {
    "case",
    "patient_id",
    "issuer",
    "study_date",
    "body_part",
    "study_description",
    "three_d_date",
    "carrier_chosen",
    "verdict",
    "carries_unit",
    "made_later",
}


def _scenarios() -> list[dict[str, Any]]:
    return tomllib.loads(MANIFEST.read_text("utf-8"))["scenario"]


def test_fixture_sessions_manifest_is_well_formed() -> None:
    from fixtures.build import CASES, STUDY_DATE

    cases = {case.name for case in CASES}
    names = [scenario["name"] for scenario in _scenarios()]
    assert len(names) == len(set(names)) >= 8
    for scenario in _scenarios():
        assert set(scenario) <= SCENARIO_KEYS and scenario["summary"], scenario["name"]
        for entry in scenario["study"]:
            assert set(entry) <= STUDY_KEYS, (scenario["name"], set(entry) - STUDY_KEYS)
            assert entry["case"] in cases and entry["patient_id"]
            assert Verdict(entry["verdict"]) and isinstance(entry["carries_unit"], bool)
            assert entry.get("made_later") in (None, MADE_LATER_FLAG, "not_flagged")
            assert session_key(entry["patient_id"], entry.get("issuer"), entry.get("study_date", STUDY_DATE))


@pytest.mark.parametrize("scenario", _scenarios(), ids=lambda s: s["name"])
def test_fixture_sessions_give_their_verdicts(scenario: dict[str, Any]) -> None:
    """Each study of the scenario as the store will see it: the case's outcome, its regions from its Body Part
    Examined (every CT / MR series of the generator carries the case's) and study description, grouped by
    session key, decided in the order listed."""
    from fixtures.build import CASES, STUDY_DATE

    cases = {case.name: case for case in CASES}
    sessions: dict[Any, list[tuple[dict[str, Any], SessionStudy]]] = defaultdict(list)
    for order, entry in enumerate(scenario["study"]):
        case = cases[entry["case"]]
        study_date = entry.get("study_date", STUDY_DATE)
        found = find_regions(
            [entry.get("body_part", case.body_part)], [entry.get("study_description", case.study_description)]
        )
        later = made_later(study_date, [entry.get("three_d_date", study_date)])
        member = SessionStudy(
            study_instance_uid=f"{scenario['name']}/{case.name}",
            outcome=case.outcome,
            regions=found.regions,
            regions_from=found.basis,
            decided_at=T0 + timedelta(minutes=order),
            has_3d=case.outcome is not Outcome.NO_3D,
            carrier_chosen=entry.get("carrier_chosen", False),
            made_later=later,
        )
        key = session_key(entry["patient_id"], entry.get("issuer"), study_date)
        sessions[key].append((entry, member))
    assert len(sessions) == scenario.get("sessions", 1)
    for members in sessions.values():
        verdict = session_verdict([member for _, member in members])
        assert verdict.final == scenario.get("final", True)
        record = SessionRecord.from_verdict(verdict, None)
        carries = {s.study_instance_uid: s.carries_unit for s in record.studies}
        for entry, member in members:
            assert verdict.verdict == Verdict(entry["verdict"]), (entry["case"], verdict.notes)
            assert carries[member.study_instance_uid] is entry["carries_unit"], entry["case"]
            expected_later = entry.get("made_later")
            if expected_later is None:
                assert member.made_later is None
            else:
                assert member.made_later is not None
                assert member.made_later.flagged is (expected_later == MADE_LATER_FLAG)


def test_the_neighbour_list_in_the_docs_is_the_table() -> None:
    text = (ROOT / "docs" / "sessions.md").read_text("utf-8")
    listed = {}
    for line in text.splitlines():
        match = re.match(r"^- `([a-z_]+)` \(.*\): (.*)$", line)
        if match:
            listed[match[1]] = set(re.findall(r"`([a-z_]+)`", match[2]))
    assert listed == {region: set(neighbours) for region, neighbours in TABLE.neighbours.items()}
