"""Operations signals (issue 11) against a known index: the review backlog and its oldest age, pending studies,
quarantined inputs and evidence returns waiting / failed, on ``/healthz`` (numbers only, no token) and as gauges
read from the index at each ``/metrics`` scrape."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from .test_api import auth, ingest_case
from .test_evidence_returns import later_image
from .test_ui_pages import REVIEW_CASES, make_site


@pytest.fixture(scope="module")
def known(tmp_path_factory: pytest.TempPathFactory, fixtures_output: Path) -> Iterator[dict]:
    """The pages' site (five decided studies, three of them waiting for a coder, one quarantined input) plus
    one study received again and not yet decided, and two evidence returns: one waiting, one given up."""
    started = dt.datetime.now(dt.UTC)
    folder = tmp_path_factory.mktemp("signals")
    site = make_site(folder / "data", None, fixtures_output)
    receiver = site["receiver"]
    ingest_case(receiver, later_image(fixtures_output, folder / "later", "ct_console_mip"))
    receiver.writer.flush()
    for case in ("ct_console_mip", "ct_workstation_vr_sc"):
        uid = site["expected"][case]["study_instance_uid"]
        receiver.returns.enqueue(uid, receiver.index.get_study(uid).current_decision_id, "PACS@127.0.0.1:104")
    given_up = receiver.returns.due()[0]
    assert receiver.returns.claim(given_up.id, lease=60) is not None
    receiver.returns.give_up(given_up.id, error="AssociationRejected: PACS@127.0.0.1:104 rejected the association")
    site["started"] = started
    yield site
    receiver.engine.dispose()


def test_healthz_shows_the_counts_and_degrades_on_failed_returns(known: dict) -> None:
    assert len(REVIEW_CASES) == sum(e["outcome"] == "needs_review" for e in known["expected"].values())
    response = TestClient(known["app"]).get("/healthz")  # no token: counts only
    assert response.status_code == 200
    body = response.json()
    operations = body["operations"]
    elapsed = (dt.datetime.now(dt.UTC) - known["started"]).total_seconds()
    assert 0 < operations.pop("review_backlog_oldest_seconds") <= elapsed
    assert operations == {
        "review_backlog": len(REVIEW_CASES),
        "pending_studies": 1,
        "quarantined": 1,
        "evidence_returns_waiting": 1,
        "evidence_returns_failed": 1,
    }
    assert body["status"] == "degraded" and "1 evidence return(s) to the PACS failed" in body["reason"]
    assert not re.search(r"\d+\.\d+\.\d+\.\d+\.\d+", response.text), "a UID on the unauthenticated /healthz"


def test_metrics_gauges_are_read_from_the_index_at_each_scrape(known: dict) -> None:
    client = TestClient(known["app"])
    headers = auth(known["tokens"]["reader"])

    def gauges() -> dict[str, float]:
        text = client.get("/metrics", headers=headers).text
        return {
            name: float(value)
            for name, value in re.findall(
                r"^(dicomcheck_(?:review_backlog|pending|quarantined|evidence_returns)\S*) (\S+)$", text, re.M
            )
        }

    seen = gauges()
    assert seen["dicomcheck_review_backlog_studies"] == len(REVIEW_CASES)
    assert seen["dicomcheck_review_backlog_oldest_seconds"] > 0
    assert seen["dicomcheck_pending_studies"] == 1
    assert seen["dicomcheck_quarantined_inputs"] == 1
    assert seen['dicomcheck_evidence_returns{state="pending"}'] == 1
    assert seen['dicomcheck_evidence_returns{state="failed"}'] == 1

    # the index changes: the next scrape says so (no timer in between)
    receiver = known["receiver"]
    assert receiver.returns.retry_failed() == 1
    try:
        seen = gauges()
        assert seen['dicomcheck_evidence_returns{state="pending"}'] == 2
        assert seen['dicomcheck_evidence_returns{state="failed"}'] == 0
        assert TestClient(known["app"]).get("/healthz").json()["status"] == "ok"
    finally:  # back to the known state: one of the two given up again, the other waiting
        first, *others = [due for due in receiver.returns.due() if receiver.returns.claim(due.id, lease=60)]
        receiver.returns.give_up(first.id, error="AssociationRejected: again")
        for due in others:
            receiver.returns.retry_later(due.id, error="SendError: later", at=dt.datetime.now(dt.UTC))
    assert client.get("/metrics").status_code == 401
