"""Issue 8 §3: the API never answers 500 to a client's input, on SQLite and on PostgreSQL; auditors
cannot tell foreign studies from missing ones; /docs works offline."""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import threading
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from dicomcheck.api import create_app
from dicomcheck.config import Settings
from dicomcheck.ingest import Receiver
from dicomcheck.store.access import Access

from .test_api import auth, ingest_case, settle_all

SECRET = "PATSECRET4711"  # a patient ID that must never reach a log


@pytest.fixture()
def served(index_url: str, tmp_path: Path, fixtures_output: Path):
    """Two studies on a real index (SQLite, then PostgreSQL); an auditor scoped to the first."""
    receiver = Receiver(Settings(data=tmp_path / "data", database_url=index_url, stable_after=0.01))
    cases = {
        name: json.loads((fixtures_output / name / "expected.json").read_text())
        for name in ("ct_console_mip", "cta_by_code")
    }
    for name in cases:
        ingest_case(receiver, fixtures_output / name)
    settle_all(receiver)
    access = Access(receiver.engine)
    tokens = {
        "reader": access.create_token("billing", "reader"),
        "admin": access.create_token("admin", "admin"),
        "auditor": access.create_token(
            "payer",
            "auditor",
            expires_at=dt.datetime.now(dt.UTC) + dt.timedelta(days=3),
            accessions=[cases["ct_console_mip"]["accession_number"]],
        ),
    }
    client = TestClient(create_app(receiver.settings, receiver), raise_server_exceptions=False)
    yield client, tokens, cases, receiver
    client.close()
    receiver.engine.dispose()


def test_simultaneous_first_reads_of_one_study_never_fail(served):
    """6 clients read a study for the first time at once with one token: all 200 (an upsert), and
    exactly one of them is the first read."""
    client, _, cases, receiver = served
    uid = cases["ct_console_mip"]["study_instance_uid"]
    access = Access(receiver.engine)
    statuses: list[int] = []
    for round_ in range(6):
        token = access.create_token(f"ris-{round_}", "reader")
        barrier = threading.Barrier(6)

        def read(barrier: threading.Barrier = barrier, token: str = token) -> None:
            barrier.wait()
            statuses.append(client.get(f"/studies/{uid}", headers=auth(token)).status_code)

        threads = [threading.Thread(target=read) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert [r.token_name for r in access.reads(uid)].count(f"ris-{round_}") == 1
    assert statuses == [200] * 36


NUL_REQUESTS = [
    ("POST", "/studies/search", {"json": {"patient_id": f"{SECRET}\x00"}}, "reader"),
    ("POST", "/studies/search", {"json": {"accession": "A\x00B"}}, "reader"),
    ("GET", "/studies", {"params": {"patient_id": f"{SECRET}\x00"}}, "reader"),
    ("GET", "/studies", {"params": {"accession": "A\x00"}}, "reader"),
    ("GET", "/audit", {"params": {"event": "Query\x00"}}, "admin"),
    ("GET", "/exports/decisions", {"params": {"station": "CT\x00"}}, "reader"),
    ("POST", "/devices", {"json": {"station_name": "3D\x00LAB", "role": "pacs_viewer"}}, "admin"),
    ("POST", "/devices", {"json": {"manufacturer": "GE\x00", "model": "AW", "role": "pacs_viewer"}}, "admin"),
    ("POST", "/devices", {"json": {"station_name": "X", "note": "n\x00", "role": "pacs_viewer"}}, "admin"),
    ("POST", "/devices", {"json": {"ae_title": "AE\x00", "role": "pacs_viewer"}}, "admin"),
    ("POST", "/devices", {"json": {"device_serial_number": "1\x00", "role": "pacs_viewer"}}, "admin"),
]


def test_nul_bytes_are_422_and_never_logged(served, caplog):
    """NUL in any text field or query parameter that reaches SQL: 422 on both databases, and the
    patient ID is in no log line (SQLAlchemy never logs bound parameters)."""
    client, tokens, cases, _ = served
    uid = cases["ct_console_mip"]["study_instance_uid"]
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.WARNING, logger="httpx")  # the test's own client logs the URLs it sends
    requests = [
        *NUL_REQUESTS,
        (
            "POST",
            f"/studies/{uid}/review",
            {"json": {"outcome": "no_3d", "reviewer": f"{SECRET}\x00", "reason": "why not"}},
            "reader",
        ),
        (
            "POST",
            f"/studies/{uid}/review",
            {"json": {"outcome": "no_3d", "reviewer": "J. Coder", "reason": f"because\x00{SECRET}"}},
            "reader",
        ),
    ]
    for method, path, kwargs, role in requests:
        response = client.request(method, path, headers=auth(tokens[role]), **kwargs)
        assert response.status_code == 422, (path, kwargs, response.text)
    assert SECRET not in caplog.text
    # a NUL in the path of a refused request is audited, not a 500
    assert client.get("/studies/1.2%003").status_code == 401
    assert client.get("/studies/1.2%003", headers=auth(tokens["reader"])).status_code == 422
    alerts = client.get("/audit", params={"event": "Security Alert"}, headers=auth(tokens["admin"])).json()
    assert any(e["endpoint"].startswith("/studies/1.2") for e in alerts)


def test_the_engine_never_shows_bound_parameters(index_url: str):
    from sqlalchemy import text

    from dicomcheck.store.engine import make_engine

    engine = make_engine(index_url)
    with pytest.raises(Exception) as failure, engine.connect() as connection:
        connection.execute(text("SELECT * FROM no_such_table WHERE patient_id = :pid"), {"pid": SECRET})
    assert SECRET not in str(failure.value) and SECRET not in repr(failure.value)
    engine.dispose()


def test_an_auditor_gets_the_same_answer_for_foreign_and_missing_studies(served):
    client, tokens, cases, receiver = served
    mine, foreign, missing = (
        cases["ct_console_mip"]["study_instance_uid"],
        cases["cta_by_code"]["study_instance_uid"],
        "1.2.3.999",
    )
    headers = auth(tokens["auditor"])
    assert client.get(f"/studies/{mine}", headers=headers).status_code == 200
    for suffix in ("", "/decisions", "/evidence", "/evidence.pdf", "/evidence.zip"):
        answers = []
        for uid in (foreign, missing):
            response = client.get(f"/studies/{uid}{suffix}", headers=headers)
            answers.append((response.status_code, response.json()["detail"].replace(uid, "UID")))
        assert answers[0] == answers[1] and answers[0][0] == 404, (suffix, answers)
    alerts = Access(receiver.engine).audit_events(event="Security Alert", study_uid=foreign)
    assert alerts and alerts[0].token_name == "payer"  # still recorded as a refusal


@pytest.mark.parametrize("full", [False, True])
def test_auditors_get_the_phi_minimal_pack_unless_the_site_says_otherwise(
    tmp_path: Path, fixtures_output: Path, full: bool
):
    receiver = Receiver(Settings(data=tmp_path / "data", stable_after=0.01, auditor_full_pack=full))
    ingest_case(receiver, fixtures_output / "ct_console_mip")
    settle_all(receiver)
    case = json.loads((fixtures_output / "ct_console_mip" / "expected.json").read_text())
    access = Access(receiver.engine)
    auditor = access.create_token(
        "payer",
        "auditor",
        expires_at=dt.datetime.now(dt.UTC) + dt.timedelta(days=3),
        studies=[case["study_instance_uid"]],
    )
    reader = access.create_token("billing", "reader")
    with TestClient(create_app(receiver.settings, receiver)) as client:
        body = client.get(f"/studies/{case['study_instance_uid']}/evidence", headers=auth(auditor)).json()
        assert body["manifest"]["minimal"] is (not full)
        assert body["links"]["zip"].endswith("?minimal=true") is (not full)
        assert (
            client.get(f"/studies/{case['study_instance_uid']}/evidence", headers=auth(reader)).json()["manifest"][
                "minimal"
            ]
            is False
        )
    receiver.engine.dispose()


def test_malformed_json_without_a_token_is_401_and_audited(served):
    client, tokens, *_ = served
    for headers in ({}, auth("dck_unknown")):
        response = client.post(
            "/studies/search", content=b'{"patient_id": ', headers={**headers, "content-type": "application/json"}
        )
        assert response.status_code == 401, response.text
        assert response.headers["www-authenticate"] == "Bearer"
    assert (
        client.post(
            "/devices", content=b"{", headers={**auth(tokens["reader"]), "content-type": "application/json"}
        ).status_code
        == 403
    )
    assert (
        client.post(
            "/studies/search", content=b"{", headers={**auth(tokens["reader"]), "content-type": "application/json"}
        ).status_code
        == 422
    )
    assert client.get("/studies?limit=0").status_code == 401  # a bad parameter without a token: 401 too
    alerts = client.get("/audit", params={"event": "Security Alert"}, headers=auth(tokens["admin"])).json()
    reasons = [(e["endpoint"], e["detail"].get("reason")) for e in alerts]
    assert ("/studies/search", "no bearer token") in reasons and ("/studies/search", "unknown token") in reasons


def test_docs_load_with_no_internet(served):
    """/docs and /redoc and every asset they reference come from our server; no external host."""
    client, *_ = served
    for page in ("/docs", "/redoc"):
        response = client.get(page)
        assert response.status_code == 200
        html = response.text
        assert not re.search(r"https?://", html), re.findall(r"https?://[^\s'\"]+", html)
        assets = re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)["']""", html) + re.findall(
            r"""url:\s*["']([^"']+)["']""", html
        )
        assert any(a.endswith(".js") for a in assets), assets
        for asset in assets:
            assert asset.startswith("/"), asset
            assert client.get(asset).status_code == 200, asset
    assert client.get("/openapi.json").status_code == 200
