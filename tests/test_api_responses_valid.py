"""The study reads serve JSON they build themselves (issue 14: no FastAPI validation and encoding round trip on
``GET /studies/{uid}``, ``GET /studies`` and ``POST /studies/search``), so FastAPI no longer checks it against
``response_model``: these tests do. Every served answer validates against its schema model and is what the
model's own round trip would serve (same fields, same values, datetimes in the same form), for every fixture
study, decided and pending, reviewed, with a report and with a session, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import BaseModel

from dicomcheck.api import create_app
from dicomcheck.api.schemas import StudyOut, StudyPage
from dicomcheck.config import Settings
from dicomcheck.ingest import Receiver
from dicomcheck.store.access import Access

from .test_api import auth, ingest_case, settle_all


def _same_as_the_schema_serves(model: type[BaseModel], body: bytes) -> dict[str, Any]:
    """``body`` validates against ``model`` and equals the model's own JSON serialisation of it."""
    served = json.loads(body)
    assert model.model_validate_json(body).model_dump(mode="json") == served
    return served


@pytest.fixture(scope="module")
def site(module_index_url: str, tmp_path_factory: pytest.TempPathFactory, fixtures_output: Path) -> Iterator[dict]:
    """Every fixture study decided; one of them reviewed, one with a final report; then one study pending
    (its instances arrived after the settle pass, so the read evaluates it on the fly)."""
    data = tmp_path_factory.mktemp("responses-valid") / "data"
    receiver = Receiver(Settings(data=data, database_url=module_index_url, stable_after=0.01))
    cases = sorted(p.name for p in fixtures_output.iterdir() if p.is_dir() and any(p.rglob("*.dcm")))
    pending_case, decided_cases = cases[0], cases[1:]
    for case in decided_cases:
        ingest_case(receiver, fixtures_output / case)
    settle_all(receiver)
    access = Access(receiver.engine)
    tokens = {"reader": access.create_token("billing", "reader"), "admin": access.create_token("admin", "admin")}
    ingest_case(receiver, fixtures_output / pending_case)  # no settle pass after it: pending
    client = TestClient(create_app(receiver.settings, receiver))
    yield {"client": client, "tokens": tokens}
    client.close()
    receiver.engine.dispose()


def _all_studies(client: TestClient, token: str) -> list[dict[str, Any]]:
    """Every study, through the newest-first pages of GET /studies (each page checked)."""
    studies, cursor = [], None
    while True:
        params = {"limit": 7, **({"cursor": cursor} if cursor else {})}
        response = client.get("/studies", params=params, headers=auth(token))
        assert response.status_code == 200, response.text
        page = _same_as_the_schema_serves(StudyPage, response.content)
        studies += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            return studies


def test_every_study_read_is_valid_against_study_out(site: dict) -> None:
    client, tokens = site["client"], site["tokens"]
    studies = _all_studies(client, tokens["reader"])
    assert len(studies) > 20
    statuses = {s["status"] for s in studies}
    assert statuses == {"decided", "pending"}, statuses
    reviewed, reported = studies[1]["study_instance_uid"], studies[2]["study_instance_uid"]
    review = {"outcome": "supports_76377", "reviewer": "J. Coder", "reason": "3D lab PC per the report"}
    response = client.post(f"/studies/{reviewed}/review", json=review, headers=auth(tokens["admin"]))
    assert response.status_code == 201, response.text
    report = {"text": "CT angiography. 3D volume rendering performed on an independent workstation.", "status": "F"}
    response = client.post(f"/studies/{reported}/report", json=report, headers=auth(tokens["admin"]))
    assert response.status_code in (201, 202), response.text
    seen = {"review": 0, "report": 0, "session": 0, "pending": 0}
    for summary in studies:
        uid = summary["study_instance_uid"]
        for _ in range(2):  # a first read, and a second one (the client's earlier read is known)
            response = client.get(f"/studies/{uid}", headers=auth(tokens["reader"]))
            assert response.status_code == 200, response.text
            assert response.headers["content-type"] == "application/json"
            served = _same_as_the_schema_serves(StudyOut, response.content)
            assert served["study_instance_uid"] == uid
            assert served["status"] == summary["status"]
        seen["review"] += served["review"] is not None
        seen["report"] += served["report"]["report_id"] is not None
        seen["session"] += served["session"] is not None
        seen["pending"] += served["status"] == "pending"
    assert seen["review"] == 1 and seen["report"] >= 1 and seen["pending"] == 1, seen
    assert seen["session"] >= len(studies) - 1, seen  # every decided study has its session (issue 13)


def test_a_read_after_the_decision_changed_says_so_and_stays_valid(site: dict) -> None:
    client, tokens = site["client"], site["tokens"]
    uid = _all_studies(client, tokens["reader"])[3]["study_instance_uid"]
    first = client.get(f"/studies/{uid}", headers=auth(tokens["reader"]))
    assert first.status_code == 200
    response = client.post(f"/studies/{uid}/reanalyze", headers=auth(tokens["admin"]))
    assert response.status_code == 200, response.text
    again = client.get(f"/studies/{uid}", headers=auth(tokens["reader"]))
    served = _same_as_the_schema_serves(StudyOut, again.content)
    assert served["decision_id"] != json.loads(first.content)["decision_id"]
    assert served["changed_after_read"] is True


@pytest.mark.parametrize(
    "search",
    [
        {"limit": 3},
        {"outcome": "supports_76377"},
        {"modality": "CT", "limit": 500},
        {"received_from": "2000-01-01T00:00:00Z", "received_to": "2999-01-01T00:00:00+01:00"},
        {"documentation": "missing"},
    ],
)
def test_searches_are_valid_against_study_page(site: dict, search: dict) -> None:
    client, tokens = site["client"], site["tokens"]
    response = client.post("/studies/search", json=search, headers=auth(tokens["reader"]))
    assert response.status_code == 200, response.text
    page = _same_as_the_schema_serves(StudyPage, response.content)
    assert page["items"] or search.get("documentation"), page
