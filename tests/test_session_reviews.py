"""A coder's review counts in the session verdict (issue 13 follow-up): a study that needs review is "not final:
once reviewed it may support a code"; once a coder records the review, the session counts the review's outcome
for that study (until a later decision changes the study's outcome and the review goes stale).

Real indexes (SQLite and PostgreSQL), fixture studies built as DICOM and received, the API and the pages through
FastAPI's TestClient, packs and their PDF read back with pdftotext."""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import delete, select

from dicomcheck.api import create_app
from dicomcheck.enums import Outcome
from dicomcheck.evidence.pack import minimal_session
from dicomcheck.evidence.service import ensure_pack
from dicomcheck.ingest import Receiver
from dicomcheck.session_backfill import backfill
from dicomcheck.sessions import (
    CoderReview,
    OutcomeSource,
    RegionBasis,
    SessionRecord,
    SessionStudy,
    Verdict,
    builtin_regions,
    carrier_refusal,
    session_verdict,
    with_reviews,
)
from dicomcheck.store.access import Access
from dicomcheck.store.sessions import Sessions
from dicomcheck.store.tables import AuditEvent, Review, StudySession

from .test_api import auth
from .test_sessions_wired import build_study, make_receiver, pdf_text, receive

CHEST = {"case": "enhanced_ct_vbct", "patient_id": "FXS-RV"}  # CT thorax, workstation VRT: supports_76377
ABDOMEN = {"case": "general_viewer_3d", "patient_id": "FXS-RV"}  # CT abdomen, OsiriX VR not registered: needs_review
OSIRIX_AS_PACS_VIEWER = {"manufacturer": "GE MEDICAL SYSTEMS", "model": "OsiriX", "role": "pacs_viewer"}
"""Registering the abdomen's OsiriX writer as a PACS viewer: re-decided, the abdomen supports 76376."""


# ---------------------------------------------------------------- the pure core


def _study(uid: str, outcome: Outcome, region: str, minute: int) -> SessionStudy:
    return SessionStudy(
        study_instance_uid=uid,
        outcome=outcome,
        regions=frozenset({builtin_regions().regions[region]}),
        regions_from=RegionBasis.BODY_PART_EXAMINED,
        decided_at=dt.datetime(2026, 1, 5, 10, minute, tzinfo=dt.UTC),
        has_3d=True,
    )


CORE = [_study("1.1", Outcome.SUPPORTS_76377, "chest", 1), _study("1.2", Outcome.NEEDS_REVIEW, "abdomen", 2)]
AT = dt.datetime(2026, 1, 6, 9, tzinfo=dt.UTC)


def _coder_review(review_id: int, uid: str, outcome: Outcome, reviewer: str = "coder A") -> CoderReview:
    return CoderReview(review_id, uid, outcome, reviewer, AT)


def test_the_latest_review_gives_the_outcome_the_session_counts() -> None:
    before = session_verdict(CORE)
    assert (before.verdict, before.final) == (Verdict.SINGLE, False)
    reviewed = with_reviews(
        CORE, [_coder_review(3, "1.2", Outcome.SUPPORTS_76377), _coder_review(2, "1.2", Outcome.NO_3D, "coder B")]
    )
    abdomen = reviewed[1]
    assert abdomen.outcome is Outcome.NEEDS_REVIEW and abdomen.counted_outcome is Outcome.SUPPORTS_76377
    assert abdomen.review is not None and abdomen.review.review_id == 3  # the latest, whatever the order given
    assert reviewed[0].review is None and reviewed[0].outcome_from is OutcomeSource.DECISION
    after = session_verdict(reviewed)
    assert (after.verdict, after.final, after.carrier) == (Verdict.ONE_UNIT, True, "1.1")
    assert any("coder's review (coder A, 2026-01-06) says supports_76377" in note for note in after.notes)

    record = SessionRecord.from_verdict(after, "ses-" + "b" * 24)
    chest, mine = record.studies
    assert (mine.outcome, mine.code, mine.outcome_from) == (Outcome.SUPPORTS_76377, "76377", OutcomeSource.CODER_REVIEW)
    assert mine.decision_outcome is Outcome.NEEDS_REVIEW
    assert mine.review is not None and (mine.review.review_id, mine.review.reviewer) == (3, "coder A")
    assert (chest.outcome_from, chest.decision_outcome, chest.review) == (OutcomeSource.DECISION, None, None)


def test_a_review_that_takes_the_code_away_makes_the_session_single() -> None:
    reviewed = with_reviews(
        [*CORE[:1], _study("1.3", Outcome.SUPPORTS_76377, "abdomen", 3)], [_coder_review(1, "1.3", Outcome.BUNDLED)]
    )
    verdict = session_verdict(reviewed)
    assert (verdict.verdict, verdict.carrier) == (Verdict.SINGLE, "1.1")


def test_the_carrier_refusal_counts_the_review() -> None:
    assert "review it first" in (carrier_refusal(CORE, "1.2") or "")
    assert carrier_refusal(with_reviews(CORE, [_coder_review(1, "1.2", Outcome.SUPPORTS_76377)]), "1.2") is None
    refused = carrier_refusal(with_reviews(CORE, [_coder_review(1, "1.1", Outcome.NO_3D)]), "1.1")
    assert refused is not None and "the coder's review (no_3d) supports no code" in refused


def test_a_record_kept_before_reviews_counted_reads_as_decision() -> None:
    document = SessionRecord.from_verdict(session_verdict(CORE), None).model_dump(mode="json")
    for study in document["studies"]:
        del study["outcome_from"], study["decision_outcome"], study["review"]
    record = SessionRecord.model_validate(document)
    assert all(s.outcome_from is OutcomeSource.DECISION and s.review is None for s in record.studies)


def test_a_minimal_pack_keeps_where_the_outcome_came_from_not_who() -> None:
    record = SessionRecord.from_verdict(
        session_verdict(with_reviews(CORE, [_coder_review(1, "1.2", Outcome.SUPPORTS_76377, "coder Z")])), None
    )
    minimal = minimal_session(record.model_dump(mode="json"), "1.2")
    assert minimal is not None and minimal["this_study"]["outcome_from"] == "coder_review"
    assert "coder Z" not in json.dumps(minimal)


# ---------------------------------------------------------------- wired: API, pages, packs, backfill


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("review-dicom")
    return {
        key: build_study(f"review-{key}", entry, 600 + i, out)
        for i, (key, entry) in enumerate({"chest": CHEST, "abdomen": ABDOMEN}.items())
    }


def _site(index_url: str, data: Path, folders: dict[str, Path]) -> tuple[Receiver, dict[str, str], dict[str, str]]:
    """The chest decided first (supports_76377), then the abdomen (needs_review): a ``single`` session, not
    final; reader and admin tokens."""
    receiver = make_receiver(index_url, data)
    uids = {key: receive(receiver, folder) for key, folder in folders.items()}
    access = Access(receiver.engine)
    tokens = {role: access.create_token(f"{role}-review", role) for role in ("reader", "admin")}
    return receiver, uids, tokens


def _session(client: TestClient, token: str, uid: str) -> dict[str, Any]:
    response = client.get(f"/studies/{uid}", headers=auth(token))
    assert response.status_code == 200, response.text
    return response.json()["session"]


def _by_uid(session: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {study["study_instance_uid"]: study for study in session["studies"]}


def _review(client: TestClient, token: str, uid: str, outcome: str, reviewer: str, reason: str) -> dict[str, Any]:
    body = {"outcome": outcome, "reviewer": reviewer, "reason": reason}
    response = client.post(f"/studies/{uid}/review", json=body, headers=auth(token))
    assert response.status_code == 201, response.text
    return response.json()


def _choose(client: TestClient, token: str, session_id: str, uid: str) -> Any:
    body = {"study_instance_uid": uid, "reviewer": "coder B", "reason": "the abdomen 3D is the one reported"}
    return client.post(f"/sessions/{session_id}/carrier", json=body, headers=auth(token))


def test_a_review_counts_in_the_session_until_a_later_decision_makes_it_stale(
    index_url: str, tmp_path: Path, folders: dict[str, Path]
) -> None:
    """Review the abdomen (needs_review) as supports_76377: both studies' session becomes one_unit and final, the
    abdomen marked as coder-reviewed (who, when), in the same COMMIT as the review and its audit event; the
    carrier choice counts the review; the pack and its PDF say so. Then the abdomen is re-decided with another
    outcome (its writer registered as a PACS viewer: supports_76376): the review goes stale and the session
    counts the decision again. A review that takes the code away makes the session single."""
    receiver, uids, tokens = _site(index_url, tmp_path, folders)
    client = TestClient(create_app(receiver.settings, receiver))
    try:
        reader, chest, abdomen = tokens["reader"], uids["chest"], uids["abdomen"]
        before = _session(client, reader, chest)
        assert (before["verdict"], before["final"], before["carrier"]) == ("single", False, chest)
        assert _by_uid(before)[abdomen]["outcome"] == "needs_review"
        assert _by_uid(before)[abdomen]["outcome_from"] == "decision"
        session_id = before["session_id"]
        refused = _choose(client, reader, session_id, abdomen)
        assert refused.status_code == 409 and "review it first" in refused.json()["detail"]

        saved = _review(client, reader, abdomen, "supports_76377", "coder A", "the report describes the 3D")
        for uid in (chest, abdomen):
            session = _session(client, reader, uid)
            assert (session["verdict"], session["final"], session["carrier"]) == ("one_unit", True, chest)
            mine = _by_uid(session)[abdomen]
            assert (mine["outcome"], mine["code"], mine["outcome_from"]) == ("supports_76377", "76377", "coder_review")
            assert mine["decision_outcome"] == "needs_review"
            assert (mine["review"]["review_id"], mine["review"]["reviewer"]) == (saved["id"], "coder A")
            assert mine["review"]["reviewed_at"]
            assert _by_uid(session)[chest]["outcome_from"] == "decision"
        with receiver.engine.connect() as connection:
            rows = connection.execute(select(StudySession.study_instance_uid, StudySession.verdict)).all()
            events = connection.execute(
                select(AuditEvent.detail).where(AuditEvent.endpoint == f"/studies/{abdomen}/review")
            ).scalars()
            assert [e["review_id"] for e in events] == [saved["id"]]
        assert dict(rows) == {chest: "one_unit", abdomen: "one_unit"}  # the list filter reads this column
        listed = client.get("/studies", params={"session_verdict": "one_unit"}, headers=auth(reader)).json()
        assert {item["study_instance_uid"] for item in listed["items"]} == {chest, abdomen}

        (summary,) = Sessions(receiver.engine).asking_to_choose()  # /ui/sessions: two coded studies, one unit
        assert (summary.session_id, summary.coded, summary.reviewed_uids) == (session_id, 2, (abdomen,))
        chosen = _choose(client, reader, session_id, abdomen)  # the reviewed outcome supports a code now
        assert chosen.status_code == 201, chosen.text
        assert chosen.json()["session"]["carrier"] == abdomen

        pack = ensure_pack(receiver, chest)
        packed = _by_uid(json.loads((pack / "evidence.json").read_text())["session"])[abdomen]
        assert packed["outcome_from"] == "coder_review" and packed["review"]["reviewer"] == "coder A"
        text = " ".join(pdf_text(pack / "report.pdf").split())
        assert "supports_76377 (coder review: coder A," in text
        minimal = json.loads((ensure_pack(receiver, abdomen, minimal=True) / "evidence.json").read_text())
        assert minimal["session"]["this_study"]["outcome_from"] == "coder_review"

        # re-decided with another outcome: the review goes stale, the session counts the decision again
        Access(receiver.engine).save_device(OSIRIX_AS_PACS_VIEWER, device_id=None, token_name="admin-review")
        again = client.post(f"/studies/{abdomen}/reanalyze", headers=auth(tokens["admin"]))
        assert again.status_code == 200, again.text
        assert again.json()["outcome"] == "supports_76376" and again.json()["review"]["stale"] is True
        for uid in (chest, abdomen):
            session = _session(client, reader, uid)
            mine = _by_uid(session)[abdomen]
            assert (mine["outcome"], mine["outcome_from"], mine["review"]) == ("supports_76376", "decision", None)
            assert mine["decision_outcome"] is None
            assert (session["verdict"], session["final"], session["carrier"]) == ("one_unit", True, abdomen)

        # a new review that says the abdomen's 3D supports no code: the chest alone carries the unit
        _review(client, reader, abdomen, "bundled", "coder C", "the 3D was part of the CT angiography")
        session = _session(client, reader, chest)
        assert (session["verdict"], session["carrier"]) == ("single", chest)
        assert _by_uid(session)[abdomen]["outcome_from"] == "coder_review"
        assert session["carrier_choice"]["applied"] is False  # the chosen abdomen carries nothing now
        refused = _choose(client, reader, session_id, abdomen)
        assert refused.status_code == 409
        assert "the coder's review (bundled) supports no code" in refused.json()["detail"]
    finally:
        client.close()
        receiver.engine.dispose()


def _csrf(html: str) -> str:
    found = re.search(r'name="csrf" value="([0-9a-f]{64})"', html)
    assert found, "no CSRF token in the page"
    return found.group(1)


def test_the_review_form_updates_the_session_box(index_url: str, tmp_path: Path, folders: dict[str, Path]) -> None:
    receiver, uids, tokens = _site(index_url, tmp_path, folders)
    client = TestClient(create_app(receiver.settings, receiver))
    try:
        chest, abdomen = uids["chest"], uids["abdomen"]
        assert client.post("/ui/login", data={"token": tokens["reader"]}, follow_redirects=False).status_code == 303
        page = client.get(f"/ui/studies/{abdomen}")
        assert page.status_code == 200 and "(not final: a study of the session needs review)" in page.text
        assert "coder-reviewed" not in page.text
        form = {
            "outcome": "supports_76377",
            "reviewer": "coder P",
            "reason": "report says so",
            "csrf": _csrf(page.text),
        }
        saved = client.post(f"/ui/studies/{abdomen}/review", data=form, follow_redirects=False)
        assert saved.status_code == 303 and saved.headers["location"] == f"/ui/studies/{abdomen}?saved=1"
        for uid in (abdomen, chest):
            shown = client.get(f"/ui/studies/{uid}").text
            box = shown[shown.index('id="session"') : shown.index("Rules that fired")]
            assert "One unit: contiguous regions" in box and "not final" not in box
            assert '<span class="sub coder-reviewed">(coder review: coder P,' in box
            assert "decision: Needs a coder&#39;s review" in box
        listing = client.get("/ui/sessions").text  # one_unit across two coded studies: the coder confirms the carrier
        assert f'href="/ui/studies/{abdomen}">{abdomen}</a> <span class="sub coder-reviewed">(coder review)' in listing
        assert f'href="/ui/studies/{chest}">{chest}</a><br>' in listing
        # the pack the form wrote at once carries the session as the review left it
        pack = ensure_pack(receiver, abdomen)
        assert json.loads((pack / "evidence.json").read_text())["session"]["verdict"] == "one_unit"
    finally:
        client.close()
        receiver.engine.dispose()


def test_backfill_counts_a_review_recorded_before_sessions_were_kept(
    index_url: str, tmp_path: Path, folders: dict[str, Path]
) -> None:
    receiver, uids, _ = _site(index_url, tmp_path, folders)
    try:
        chest, abdomen = uids["chest"], uids["abdomen"]
        with receiver.engine.begin() as connection:  # the index as it was before migration 0007
            connection.execute(delete(StudySession))
        decision = receiver.index.get_study(abdomen).current_decision_id  # type: ignore[union-attr]
        Access(receiver.engine).add_review(
            study_uid=abdomen,
            decision_id=decision,
            outcome="supports_76377",
            code="76377",
            reviewer="coder E",
            token_name="backfill-test",
            reason="reviewed before sessions were kept",
        )
        assert Sessions(receiver.engine).after_review(abdomen) is None  # no session row yet: nothing to recompute
        assert backfill(receiver.engine, receiver.settings).written == 2
        session = Sessions(receiver.engine).of_study(chest)
        assert session is not None and (session.verdict, session.final) == (Verdict.ONE_UNIT, True)
        mine = next(s for s in session.studies if s.study_instance_uid == abdomen)
        assert mine.outcome_from is OutcomeSource.CODER_REVIEW and mine.review is not None
        assert mine.review.reviewer == "coder E"
        with receiver.engine.connect() as connection:  # the row keeps the decision's outcome
            kept = connection.execute(
                select(StudySession.outcome).where(StudySession.study_instance_uid == abdomen)
            ).scalar_one()
            assert kept == "needs_review"
            assert connection.execute(select(Review.stale_since)).scalar_one() is None
    finally:
        receiver.engine.dispose()


def test_a_review_whose_session_cannot_be_recomputed_is_not_kept(
    index_url: str, tmp_path: Path, folders: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The review, its session's recomputation and the audit event are one COMMIT: a recomputation that fails
    (a fault that cannot be made real here) leaves neither the review nor its audit event behind."""
    receiver, uids, tokens = _site(index_url, tmp_path, folders)

    def broken(self: Sessions, study_uid: str) -> None:
        raise RuntimeError("the session could not be recomputed")

    monkeypatch.setattr(Sessions, "after_review", broken)
    client = TestClient(create_app(receiver.settings, receiver), raise_server_exceptions=False)
    try:
        body = {"outcome": "supports_76377", "reviewer": "coder F", "reason": "never kept"}
        failed = client.post(f"/studies/{uids['abdomen']}/review", json=body, headers=auth(tokens["reader"]))
        assert failed.status_code == 500
        with receiver.engine.connect() as connection:
            assert connection.execute(select(Review.id)).all() == []
            events = connection.execute(
                select(AuditEvent.id).where(AuditEvent.endpoint == f"/studies/{uids['abdomen']}/review")
            ).all()
            assert events == []
    finally:
        client.close()
        receiver.engine.dispose()
