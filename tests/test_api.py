"""The lookup API on a real index, run twice: SQLite (embedded default) and PostgreSQL."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import shutil
from pathlib import Path

import jsonschema
import pytest
from fastapi.testclient import TestClient

from dicomcheck.api import create_app
from dicomcheck.config import Settings
from dicomcheck.ingest import Receiver, StoreStatus
from dicomcheck.store.access import Access
from dicomcheck.store.index import ReceiptInfo

from .conftest import ROOT
from .peers import wait_for

SCHEMA = json.loads((ROOT / "dicomcheck/schema/analysis.schema.json").read_text())
STUDY_SCHEMA = {**SCHEMA["$defs"]["study"], "$defs": SCHEMA["$defs"]}
CASES = ("ct_console_mip", "ct_workstation_vr_sc", "registry_only_station", "cta_by_code", "originals_only")


def ingest_case(receiver: Receiver, folder: Path, calling_ae: str = "PACS1") -> None:
    for path in sorted(folder.rglob("*.dcm")):
        temp = receiver.files.new_temp()
        shutil.copyfile(path, temp)
        receipt = ReceiptInfo(
            None, calling_ae, "DICOMCHECK", "127.0.0.1", "1.2.3.4", "TESTSENDER", "1.2.840.10008.1.2.1"
        )
        assert receiver.store_file(temp, receipt).status is StoreStatus.SUCCESS


@pytest.fixture()
def api(index_url: str, tmp_path: Path, fixtures_output: Path):
    """The API on an index of the fixture studies, for a test that changes it (tokens, studies, devices,
    or counts audit events)."""
    yield from serve_fixture_studies(index_url, tmp_path / "data", fixtures_output)


@pytest.fixture(scope="module")
def read_api(module_index_url: str, tmp_path_factory: pytest.TempPathFactory, fixtures_output: Path):
    """The same API and index, shared by the module's tests that only read (each read adds audit rows and
    read marks, which none of these tests looks at)."""
    yield from serve_fixture_studies(module_index_url, tmp_path_factory.mktemp("read-api") / "data", fixtures_output)


def serve_fixture_studies(index_url: str, data: Path, fixtures_output: Path):
    settings = Settings(data=data, database_url=index_url, stable_after=0.01)
    receiver = Receiver(settings)
    for case in CASES:
        ingest_case(receiver, fixtures_output / case)
    settle_all(receiver)
    access = Access(receiver.engine)
    tokens = {
        "reader": access.create_token("billing-system", "reader"),
        "admin": access.create_token("pacs-admin", "admin"),
    }
    expected = {case: json.loads((fixtures_output / case / "expected.json").read_text()) for case in CASES}
    tokens["auditor"] = access.create_token(
        "payer-auditor",
        "auditor",
        expires_at=dt.datetime.now(dt.UTC) + dt.timedelta(days=30),
        accessions=[expected["ct_console_mip"]["accession_number"]],
    )
    client = TestClient(create_app(receiver.settings, receiver))
    yield client, tokens, expected, receiver
    client.close()
    receiver.engine.dispose()


def settle_all(receiver: Receiver) -> None:
    """Run the settle pass until every study has its decision (stable_after is tiny here)."""
    from sqlalchemy import select
    from sqlmodel import Session

    from dicomcheck.store.tables import Study

    def pending() -> int:
        with Session(receiver.engine) as session:
            return len(session.execute(select(Study.study_instance_uid).where(Study.needs_decision.is_(True))).all())

    wait_for(lambda: receiver.settle_once() >= 0 and pending() == 0, timeout=30)


def auth(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def test_migrations_apply_cleanly_from_empty(index_url: str):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext
    from sqlmodel import SQLModel

    from dicomcheck.store import tables  # noqa: F401
    from dicomcheck.store.engine import make_engine, upgrade

    engine = make_engine(index_url)
    upgrade(engine)
    upgrade(engine)  # idempotent
    with engine.connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection), SQLModel.metadata)
    assert diff == [], "the models and the migrations disagree"
    engine.dispose()


def test_health_needs_no_token(read_api):
    client, *_ = read_api
    response = client.get("/healthz")
    assert response.status_code == 200 and response.json()["index"] == "reachable"


def test_study_by_uid_has_the_analyze_shape_and_status(read_api):
    client, tokens, expected, _ = read_api
    case = expected["ct_console_mip"]
    response = client.get(f"/studies/{case['study_instance_uid']}", headers=auth(tokens["reader"]))
    assert response.status_code == 200
    body = response.json()
    jsonschema.validate(body, STUDY_SCHEMA)
    assert (body["outcome"], body["code"], body["status"]) == (case["outcome"], case["code"], "decided")
    assert body["instance_count"] == body["instances"] > 0
    assert body["first_arrival"] <= body["last_arrival"] and body["decision_id"] and body["rules_version"]
    assert {s["series_description"]: s["kind"] for s in body["series"]} == {
        k: v["kind"] for k, v in case["series"].items()
    }


@pytest.mark.parametrize("case", CASES)
def test_every_study_has_the_fixture_outcome_by_uid_and_accession(read_api, case):
    client, tokens, expected, _ = read_api
    want = expected[case]
    page = client.get("/studies", params={"accession": want["accession_number"]}, headers=auth(tokens["reader"])).json()
    assert [i["study_instance_uid"] for i in page["items"]] == [want["study_instance_uid"]]
    outcome = want.get("without_devices") or want  # the API test runs without a registry file
    assert (page["items"][0]["outcome"], page["items"][0]["code"]) == (outcome["outcome"], outcome.get("code"))
    body = client.get(f"/studies/{want['study_instance_uid']}", headers=auth(tokens["reader"])).json()
    assert (body["outcome"], body["code"]) == (outcome["outcome"], outcome.get("code"))


def test_tokens_roles_and_scopes(read_api):
    client, tokens, expected, _ = read_api
    uid = expected["ct_console_mip"]["study_instance_uid"]
    other = expected["cta_by_code"]["study_instance_uid"]
    assert client.get(f"/studies/{uid}").status_code == 401
    assert client.get(f"/studies/{uid}", headers=auth("dck_not-a-token")).status_code == 401
    assert client.get(f"/studies/{uid}", headers={"Authorization": "Basic abc"}).status_code == 401
    assert client.get("/audit", headers=auth(tokens["reader"])).status_code == 403
    assert (
        client.post(
            "/devices", json={"station_name": "X", "role": "pacs_viewer"}, headers=auth(tokens["reader"])
        ).status_code
        == 403
    )
    assert client.get(f"/studies/{uid}", headers=auth(tokens["auditor"])).status_code == 200
    assert client.get(f"/studies/{other}", headers=auth(tokens["auditor"])).status_code == 404  # as if it did not exist
    listed = client.get("/studies", headers=auth(tokens["auditor"])).json()["items"]
    assert [i["study_instance_uid"] for i in listed] == [uid]
    assert client.get("/metrics", headers=auth(tokens["auditor"])).status_code == 403


def test_expired_and_revoked_tokens(api):
    client, tokens, expected, receiver = api
    access = Access(receiver.engine)
    expired = access.create_token(
        "old-auditor", "auditor", expires_at=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1), studies=["1.2.3"]
    )
    assert client.get("/studies", headers=auth(expired)).json()["detail"] == "token expired"
    assert access.revoke_token("billing-system")
    response = client.get("/studies", headers=auth(tokens["reader"]))
    assert (response.status_code, response.json()["detail"]) == (401, "token revoked")


def test_client_mistakes_are_4xx_with_a_reason(read_api):
    client, tokens, *_ = read_api
    headers = auth(tokens["reader"])
    for path, status in [
        ("/studies/not-a-uid", 422),
        ("/studies/1.2.3.4.5.6", 404),
        ("/studies?limit=100000", 422),
        ("/studies?limit=0", 422),
        ("/studies?cursor=!!!", 422),
        ("/studies?cursor=bm90IGpzb24", 400),
        ("/studies?outcome=maybe", 422),
        ("/studies?received_from=yesterday", 422),
        ("/devices/0", 422),
        ("/devices/999", 404),
    ]:
        response = client.get(path, headers=headers)
        assert response.status_code == status, (path, response.text)
        assert response.json()["detail"]
    bad = client.post("/studies/search", json={"limit": 5, "colour": "red"}, headers=headers)
    assert bad.status_code == 422


def test_cursor_pagination_is_stable_under_inserts(api, fixtures_output):
    client, tokens, _, receiver = api
    headers = auth(tokens["reader"])
    first = client.get("/studies", params={"limit": 2}, headers=headers).json()
    assert len(first["items"]) == 2 and first["next_cursor"]
    ingest_case(receiver, fixtures_output / "mra")  # a new study arrives between pages
    seen = [i["study_instance_uid"] for i in first["items"]]
    cursor = first["next_cursor"]
    while cursor:
        page = client.get("/studies", params={"limit": 2, "cursor": cursor}, headers=headers).json()
        seen += [i["study_instance_uid"] for i in page["items"]]
        cursor = page["next_cursor"]
    assert len(seen) == len(set(seen)) == len(CASES)  # nothing repeated or skipped; the newcomer is on page one now


def test_search_by_body_keeps_patient_id_out_of_the_url_and_the_audit(read_api):
    client, tokens, expected, receiver = read_api
    ds_patient = "FX0001"
    before = len(Access(receiver.engine).audit_events(event="Query"))  # the index is shared with other readers
    page = client.post("/studies/search", json={"patient_id": ds_patient}, headers=auth(tokens["reader"])).json()
    assert [i["accession_number"] for i in page["items"]] == [expected["ct_console_mip"]["accession_number"]]
    events = Access(receiver.engine).audit_events(event="Query")
    assert len(events) > before and ds_patient not in json.dumps([e.detail for e in events])


def test_registry_change_offers_reanalysis_and_reanalysis_changes_the_outcome(api, fixtures_output):
    client, tokens, expected, _ = api
    case = expected["registry_only_station"]
    uid = case["study_instance_uid"]
    reader, admin = auth(tokens["reader"]), auth(tokens["admin"])
    before = client.get(f"/studies/{uid}", headers=reader).json()
    assert before["outcome"] == "needs_review"
    review = client.post(
        f"/studies/{uid}/review",
        json={"outcome": "supports_76377", "reviewer": "J. Coder", "reason": "3D lab PC per the report"},
        headers=reader,
    )
    assert review.status_code == 201 and not review.json()["stale"]
    device = {"station_name": "3DLAB-01", "role": "independent_workstation", "note": "3D lab PC"}
    created = client.post("/devices", json=device, headers=admin)
    assert created.status_code == 201
    assert uid in created.json()["affected_studies"] and "reanalyze" in created.json()["reanalyze"]
    after = client.post(f"/studies/{uid}/reanalyze", headers=admin)
    assert after.status_code == 200 and after.json()["outcome"] == "supports_76377"
    again = client.get(f"/studies/{uid}", headers=reader).json()
    assert again["changed_after_read"] is True
    assert again["review"]["stale"] is True  # the automatic decision changed after the review
    assert client.get(f"/studies/{uid}", headers=reader).json()["changed_after_read"] is False
    history = client.get(f"/studies/{uid}/decisions", headers=reader).json()
    assert [d["outcome"] for d in history] == ["needs_review", "supports_76377"] and history[-1]["current"]
    device_id = created.json()["device"]["id"]
    assert (
        client.put(f"/devices/{device_id}", json={**device, "role": "pacs_viewer"}, headers=admin).json()["device"][
            "role"
        ]
        == "pacs_viewer"
    )
    assert client.put(f"/devices/{device_id}", json={**device, "role": "3d-lab"}, headers=admin).status_code == 422
    assert client.post("/devices", json={"role": "pacs_viewer"}, headers=admin).status_code == 422
    assert client.post("/devices", json={"manufacturer": "GE", "role": "pacs_viewer"}, headers=admin).status_code == 422
    assert client.delete(f"/devices/{device_id}", headers=admin).status_code == 200
    assert client.get(f"/devices/{device_id}", headers=admin).status_code == 404


def test_every_read_is_audited_and_exportable_as_csv(api):
    client, tokens, expected, _ = api
    uid = expected["ct_console_mip"]["study_instance_uid"]
    client.get(f"/studies/{uid}", headers=auth(tokens["reader"]))
    client.get(f"/studies/{uid}", headers=auth("dck_wrong"))
    events = client.get("/audit", params={"study_uid": uid}, headers=auth(tokens["admin"])).json()
    read = [e for e in events if e["event"] == "DICOM Instances Accessed"]
    assert (
        read
        and read[0]["token_name"] == "billing-system"
        and read[0]["client_address"]
        and read[0]["endpoint"] == f"/studies/{uid}"
    )
    alerts = client.get("/audit", params={"event": "Security Alert"}, headers=auth(tokens["admin"])).json()
    assert any(e["detail"].get("reason") == "unknown token" for e in alerts)
    response = client.get("/audit", params={"format": "csv"}, headers=auth(tokens["admin"]))
    assert response.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert {"event", "token_name", "study_instance_uid", "at", "client_address"} <= set(rows[0])


def test_exports_csv_and_xlsx(read_api):
    from openpyxl import load_workbook

    client, tokens, expected, _ = read_api
    headers = auth(tokens["reader"])
    response = client.get("/exports/decisions", params={"format": "csv"}, headers=headers)
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert {r["study_instance_uid"] for r in rows} == {e["study_instance_uid"] for e in expected.values()}
    assert all(r["evidence_link"].endswith(f"/studies/{r['study_instance_uid']}/evidence") for r in rows)
    only = client.get("/exports/decisions", params={"outcome": "supports_76377"}, headers=headers)
    assert {r["outcome"] for r in csv.DictReader(io.StringIO(only.text))} == {"supports_76377"}
    station_rows = list(
        csv.DictReader(
            io.StringIO(client.get("/exports/decisions", params={"station": "ct54023"}, headers=headers).text)
        )
    )
    assert station_rows and all("CT54023" in r["stations"].split(";") for r in station_rows)
    assert len(station_rows) < len(rows)
    book = load_workbook(
        io.BytesIO(client.get("/exports/decisions", params={"format": "xlsx"}, headers=headers).content)
    )
    sheet = book["decisions"]
    assert sheet.max_row == len(rows) + 1 and sheet.cell(row=2, column=sheet.max_column).hyperlink is not None


def test_metrics_are_prometheus_text(read_api):
    client, tokens, *_ = read_api
    client.get("/healthz")
    text = client.get("/metrics", headers=auth(tokens["reader"])).text
    assert "dicomcheck_decisions_total" in text and "dicomcheck_http_request_seconds_bucket" in text


def test_patient_ids_are_redacted_from_the_access_log():
    import logging

    from dicomcheck.api.server import RedactPatientIds

    record = logging.LogRecord(
        "uvicorn.access",
        logging.INFO,
        __file__,
        1,
        '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5", "GET", "/studies?patient_id=FX0001&limit=5", "1.1", 200),
        None,
    )
    RedactPatientIds().filter(record)
    assert "FX0001" not in record.getMessage() and "patient_id=[redacted]&limit=5" in record.getMessage()
    for query in (
        "patient%5Fid=FX0001",
        "limit=5&Patient%5fID=FX0001",
        "%70atient_id=FX0001&x=1",
        "a=1;patient_id=FX0001",
    ):
        record = logging.LogRecord(
            "uvicorn.access",
            logging.INFO,
            __file__,
            1,
            '%s - "%s %s HTTP/%s" %d',
            ("127.0.0.1:5", "GET", f"/studies?{query}", "1.1", 200),
            None,
        )
        RedactPatientIds().filter(record)
        assert "FX0001" not in record.getMessage() and "=[redacted]" in record.getMessage(), query


def test_extreme_time_bounds_are_not_server_errors(read_api):
    """Found by schemathesis: a bound like year 1 at +01:00 overflowed when converted to UTC."""
    client, tokens, *_ = read_api
    for bound in ("0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-05:00"):
        response = client.get(
            "/studies", params={"received_from": bound, "received_to": bound}, headers=auth(tokens["reader"])
        )
        assert response.status_code == 200, response.text
