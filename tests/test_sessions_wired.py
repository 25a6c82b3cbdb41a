"""Sessions wired in (issue 13): fixture sessions built as DICOM, received into a real index (SQLite and
PostgreSQL), decided one study after the other, and served by ``GET /studies/{uid}`` (``session``), the list
filter, the exports and the coders' sessions page."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import subprocess
import threading
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from fastapi.testclient import TestClient

from dicomcheck.api import create_app
from dicomcheck.config import Settings
from dicomcheck.evidence.service import ensure_pack
from dicomcheck.ingest import Receiver
from dicomcheck.sessions import session_key
from dicomcheck.store.access import Access
from dicomcheck.store.sessions import Sessions, _lock_key

from .peers import require_peer
from .test_api import auth, ingest_case, settle_all

ROOT = Path(__file__).resolve().parent.parent
MANIFEST = ROOT / "fixtures" / "sessions" / "sessions.toml"
SCENARIOS = {scenario["name"]: scenario for scenario in tomllib.loads(MANIFEST.read_text("utf-8"))["scenario"]}
SCHEMA = json.loads((ROOT / "dicomcheck" / "schema" / "analysis.schema.json").read_text("utf-8"))
SESSION_SCHEMA = jsonschema.Draft202012Validator({"$defs": SCHEMA["$defs"], "$ref": "#/$defs/session"})
"""The ``session`` part as ``schema/analysis.schema.json`` describes it."""
NOT_WIRED: set[str] = set()
"""Scenarios checked by the pure core only (none: a coder's carrier choice goes through the API)."""


def build_study(scenario: str, entry: dict[str, Any], number: int, out: Path) -> Path:
    """The fixture case of a scenario's study, built as DICOM with the scenario's overrides."""
    from fixtures.build import CASES, build_case

    case = next(c for c in CASES if c.name == entry["case"])
    overrides: dict[str, Any] = {"name": f"{scenario}-{entry['case']}", "patient_id": entry["patient_id"]}
    for key in ("body_part", "study_description", "issuer", "study_date", "three_d_date"):
        if key in entry:
            overrides[key] = entry[key]
    spec = dataclasses.replace(case, **overrides)
    build_case(spec, number, out)
    return out / spec.name


def study_uid(folder: Path) -> str:
    return json.loads((folder / "expected.json").read_text())["study_instance_uid"]


def pdf_text(pdf: Path) -> str:
    return subprocess.run(
        [require_peer("pdftotext"), str(pdf), "-"], capture_output=True, text=True, check=True, timeout=60
    ).stdout


def make_receiver(index_url: str, tmp_path: Path, **settings: Any) -> Receiver:
    return Receiver(Settings(data=tmp_path / "data", database_url=index_url, stable_after=0.01, **settings))


def client_of(receiver: Receiver) -> tuple[TestClient, str]:
    token = Access(receiver.engine).create_token("reader-token", "reader")
    return TestClient(create_app(receiver.settings, receiver)), token


def receive(receiver: Receiver, folder: Path) -> str:
    """Receive a study and decide it now, as the settle pass does once it is stable (claim, then decide)."""
    ingest_case(receiver, folder)
    uid = study_uid(folder)
    last = receiver.index.claim(uid, lease=60)
    assert last is not None and receiver.decide(uid, last_arrival_seen=last) is not None
    return uid


def session_of(client: TestClient, token: str, uid: str) -> dict[str, Any]:
    response = client.get(f"/studies/{uid}", headers=auth(token))
    assert response.status_code == 200, response.text
    return response.json()


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Path]]:
    """Every wired fixture session built as DICOM once (each index receives the same files)."""
    out = tmp_path_factory.mktemp("sessions-dicom")
    folders: dict[str, list[Path]] = {}
    number = 100
    for name, scenario in SCENARIOS.items():
        if name in NOT_WIRED:
            continue
        for entry in scenario["study"]:
            number += 1
            folders.setdefault(name, []).append(build_study(name, entry, number, out))
    return folders


@pytest.fixture(scope="module")
def received(module_index_url: str, tmp_path_factory: pytest.TempPathFactory, built: dict[str, list[Path]]):
    """Every wired fixture session received into one index, its studies decided in the order listed."""
    receiver = make_receiver(module_index_url, tmp_path_factory.mktemp("sessions-data"))
    uids = {name: [receive(receiver, folder) for folder in folders] for name, folders in built.items()}
    client, token = client_of(receiver)
    for name, studies in uids.items():  # the scenario's carrier choice by a coder (POST /sessions/{id}/carrier)
        for entry, uid in zip(SCENARIOS[name]["study"], studies, strict=True):
            if entry.get("carrier_chosen"):
                session_id = session_of(client, token, uid)["session"]["session_id"]
                body = {"study_instance_uid": uid, "reviewer": "fixture coder", "reason": "the scenario's choice"}
                chosen = client.post(f"/sessions/{session_id}/carrier", json=body, headers=auth(token))
                assert chosen.status_code == 201, chosen.text
    yield client, token, uids, receiver
    client.close()
    receiver.engine.dispose()


@pytest.mark.parametrize("name", [name for name in SCENARIOS if name not in NOT_WIRED])
def test_fixture_session_verdicts_through_the_api(received, name: str):
    client, token, uids, _ = received
    scenario = SCENARIOS[name]
    bodies = [session_of(client, token, uid) for uid in uids[name]]
    sessions = {body["session"]["session_id"] for body in bodies}
    assert len(sessions) == scenario.get("sessions", 1), sessions
    for entry, uid, body in zip(scenario["study"], uids[name], bodies, strict=True):
        session = body["session"]
        SESSION_SCHEMA.validate(session)
        assert session["verdict"] == entry["verdict"], (entry["case"], session["notes"])
        assert session["final"] is scenario.get("final", True)
        mine = next(s for s in session["studies"] if s["study_instance_uid"] == uid)
        assert mine["carries_unit"] is entry["carries_unit"], entry["case"]
        assert mine["carrier_chosen"] is entry.get("carrier_chosen", False), entry["case"]
        if any(e.get("carrier_chosen") for e in scenario["study"]):
            assert session["carrier_from"] == "coder_choice" and session["carrier_choice"]["applied"] is True
        elif session["carrier"]:
            assert session["carrier_from"] == "first_decided" and session["carrier_choice"] is None
        assert mine["outcome"] == body["outcome"]
        if scenario.get("sessions", 1) == 1:
            assert {s["study_instance_uid"] for s in session["studies"]} == set(uids[name])
        expected_later = entry.get("made_later")
        if expected_later is None:
            assert body["made_later"] is None and mine["made_later"] is None
        else:
            flagged = expected_later == "3d_made_later"
            assert body["made_later"]["flagged"] is flagged and mine["made_later"]["flagged"] is flagged
            assert body["made_later"]["flag"] == ("3d_made_later" if flagged else None)
            assert entry["three_d_date"][:4] in body["made_later"]["text"]  # the evidence names the dates
            assert body["outcome"] == "supports_76377"  # the outcome is unchanged
    text = str([body["session"] for body in bodies])
    for entry in scenario["study"]:
        assert entry["patient_id"] not in text, "a Patient ID reached the session part"


def test_list_filter_exports_and_sessions_page(received):
    client, token, uids, receiver = received
    listed = client.get("/studies", params={"session_verdict": "one_unit", "limit": 100}, headers=auth(token))
    assert listed.status_code == 200, listed.text
    one_unit = {item["study_instance_uid"] for item in listed.json()["items"]}
    assert one_unit == set(uids["chest_abdomen_workstation"]) | set(uids["coder_chose_the_carrier"]) | set(
        uids["c_t_l_spine"]
    )
    searched = client.post("/studies/search", json={"session_verdict": "unknown_regions"}, headers=auth(token))
    assert {item["study_instance_uid"] for item in searched.json()["items"]} == set(uids["unknown_regions"])
    assert client.get("/studies", params={"session_verdict": "two"}, headers=auth(token)).status_code == 422

    admin = Access(receiver.engine).create_token("admin-token", "admin")
    exported = client.get("/exports/decisions", headers=auth(admin))
    assert exported.status_code == 200, exported.text
    rows = {row["study_instance_uid"]: row for row in csv.DictReader(io.StringIO(exported.text))}
    head, knee = uids["head_knee"]
    assert rows[head]["session_verdict"] == rows[knee]["session_verdict"] == "separate_units_possible"
    assert rows[head]["session_id"] == rows[knee]["session_id"] and rows[head]["session_id"].startswith("ses-")
    first, second = uids["two_patients_one_day"]
    assert rows[first]["session_id"] != rows[second]["session_id"]
    (late,) = uids["late_3d_series"]
    assert rows[late]["made_later_flag"] == "3d_made_later"
    chest, abdomen = uids["chest_abdomen_workstation"]
    assert rows[chest]["session_carrier"] == rows[abdomen]["session_carrier"] == chest
    first_decided, chosen = uids["coder_chose_the_carrier"]
    assert rows[first_decided]["session_carrier"] == rows[chosen]["session_carrier"] == chosen  # the coder's choice
    only = client.get("/exports/decisions", params={"session_verdict": "one_unit"}, headers=auth(admin))
    assert set(row["study_instance_uid"] for row in csv.DictReader(io.StringIO(only.text))) == one_unit

    assert client.post("/ui/login", data={"token": admin}, follow_redirects=False).status_code == 303
    page = client.get("/ui/sessions")
    assert page.status_code == 200, page.text
    for uid in (*uids["chest_abdomen_workstation"], *uids["unknown_regions"], *uids["c_t_l_spine"]):
        assert uid in page.text
    assert "chosen by fixture coder" in page.text  # the coder_chose_the_carrier session says who chose
    for uid in (*uids["head_knee"], *uids["one_with_3d_one_without"], *uids["late_3d_series"]):
        assert uid not in page.text  # separate units and single sessions ask no choice
    study = client.get(f"/ui/studies/{abdomen}")
    assert study.status_code == 200 and 'id="session"' in study.text and chest in study.text
    assert "One unit" in study.text
    client.cookies.clear()


def test_the_earlier_study_sees_the_one_that_joins_and_a_re_decision(
    index_url: str, tmp_path: Path, built: dict[str, list[Path]]
):
    receiver = make_receiver(index_url, tmp_path)
    chest, abdomen = built["chest_abdomen_workstation"]
    client, token = client_of(receiver)
    try:
        first = receive(receiver, chest)
        alone = session_of(client, token, first)["session"]
        assert alone["verdict"] == "single" and [s["study_instance_uid"] for s in alone["studies"]] == [first]
        alone_pack = ensure_pack(receiver, first)
        assert json.loads((alone_pack / "evidence.json").read_text())["session"]["verdict"] == "single"
        second = receive(receiver, abdomen)
        joined = session_of(client, token, first)["session"]
        assert joined["verdict"] == "one_unit" and joined["carrier"] == first
        assert {s["study_instance_uid"] for s in joined["studies"]} == {first, second}
        assert session_of(client, token, second)["session"] == joined
        pack = ensure_pack(receiver, first)  # the session changed since: a new pack beside the first
        assert pack != alone_pack and json.loads((pack / "evidence.json").read_text())["session"] == joined
        text = pdf_text(pack / "report.pdf")
        assert "Session" in text and "one_unit" in text and second in text.replace("\n", "")
        minimal = ensure_pack(receiver, second, minimal=True)
        kept = json.loads((minimal / "evidence.json").read_text())["session"]
        assert kept["verdict"] == "one_unit" and kept["studies"] == 2 and kept["this_study"]["carries_unit"] is False
        assert first not in (minimal / "evidence.json").read_text()  # the other study is not named

        # the first study re-decided (re-analysed): it stays the carrier (first decided), the session is recomputed
        response = client.post(
            f"/studies/{first}/reanalyze", headers=auth(Access(receiver.engine).create_token("a", "admin"))
        )
        assert response.status_code in (200, 202), response.text
        settle_all(receiver)
        again = session_of(client, token, second)["session"]
        assert again["verdict"] == "one_unit" and again["carrier"] == first

        # the second study decided again under another patient: it leaves the session, both sessions recomputed
        moved = receiver.evaluate(second)[0].model_copy(update={"patient_id": "FXS-OTHER"})  # type: ignore[index]
        Sessions(receiver.engine).after_decision(moved, receiver.settings)
        left = session_of(client, token, first)["session"]
        assert left["verdict"] == "single" and [s["study_instance_uid"] for s in left["studies"]] == [first]
        assert session_of(client, token, second)["session"]["session_id"] not in (None, left["session_id"])
    finally:
        client.close()
        receiver.engine.dispose()


def test_made_later_threshold_is_a_setting(index_url: str, tmp_path: Path, built: dict[str, list[Path]]):
    receiver = make_receiver(index_url, tmp_path, made_later_days=5)
    client, token = client_of(receiver)
    try:
        uid = receive(receiver, built["late_3d_series"][0])
        (mine,) = session_of(client, token, uid)["session"]["studies"]
        assert mine["made_later"]["days_after"] == 3 and mine["made_later"]["flagged"] is False
        assert mine["made_later"]["threshold_days"] == 5
        own = client.get(f"/studies/{uid}", headers={"Authorization": f"Bearer {token}"}).json()["made_later"]
        assert own["threshold_days"] == 5 and own["flagged"] is False  # the decision itself follows the setting
    finally:
        client.close()
        receiver.engine.dispose()


@pytest.mark.peer
def test_two_processes_deciding_one_session_at_once_end_complete(tmp_path: Path, built: dict[str, list[Path]]):
    """PostgreSQL: two studies of one session recomputed at the same time on two connections (two receivers)
    both end with the same, complete session: the session's advisory lock serialises them."""
    import uuid

    from .conftest import drop_postgres_schema, postgres_schema_url

    name = f"dc_test_{uuid.uuid4().hex[:12]}"
    url = postgres_schema_url(name)  # skips on a laptop without PostgreSQL, fails under CI=true
    try:
        one = make_receiver(url, tmp_path / "one")
        two = make_receiver(url, tmp_path / "two")
        folders = built["chest_abdomen_workstation"]
        for folder in folders:
            ingest_case(one, folder)
        records = [one.evaluate(study_uid(folder))[0] for folder in folders]  # type: ignore[index]
        key = session_key(records[0].patient_id, None, records[0].study_date)
        assert key is not None
        session_id = key.session_id(b"")
        held = one.engine.connect()
        transaction = held.begin()
        held.exec_driver_sql("SELECT pg_advisory_xact_lock(%s)", (_lock_key(session_id),))
        results: list[Any] = [None, None]

        def decide(i: int, receiver: Receiver) -> None:
            results[i] = Sessions(receiver.engine).after_decision(records[i], receiver.settings)

        threads = [threading.Thread(target=decide, args=(i, r)) for i, r in enumerate((one, two))]
        for thread in threads:
            thread.start()
        transaction.commit()  # both were waiting on the session's lock; now they run one after the other
        held.close()
        for thread in threads:
            thread.join(timeout=60)
        final = [Sessions(one.engine).of_study(record.study_instance_uid) for record in records]
        assert final[0] == final[1] and final[0] is not None
        assert {s.study_instance_uid for s in final[0].studies} == {r.study_instance_uid for r in records}
        assert final[0].verdict.value == "one_unit"
        one.engine.dispose()
        two.engine.dispose()
    finally:
        drop_postgres_schema(name)
