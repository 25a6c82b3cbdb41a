"""A coder chooses the study that carries a session's code (issue 13: "the first decided, unless a coder review
says another"), and studies decided before sessions were kept get their session (backfill, ``sessions rebuild``).

Real indexes (SQLite and PostgreSQL), fixture studies built as DICOM and received, the API and the pages through
FastAPI's TestClient, packs and their PDF read back with pdftotext, the CLI run as a process."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import delete, select, update

from dicomcheck.api import create_app
from dicomcheck.enums import Outcome
from dicomcheck.evidence.service import ensure_pack
from dicomcheck.ingest import Receiver
from dicomcheck.session_backfill import SESSION_FIELDS, backfill
from dicomcheck.sessions import (
    CarrierBasis,
    CarrierChoice,
    RegionBasis,
    SessionRecord,
    SessionStudy,
    builtin_regions,
    carrier_refusal,
    session_verdict,
    with_choice,
)
from dicomcheck.store.access import Access
from dicomcheck.store.sessions import Sessions
from dicomcheck.store.tables import AuditEvent, Decision, SessionCarrierChoice, StudySession

from .test_api import auth, settle_all
from .test_sessions_wired import build_study, make_receiver, pdf_text, receive

ROOT = Path(__file__).resolve().parent.parent
CHEST = {"case": "enhanced_ct_vbct", "patient_id": "FXS-CC"}  # CT thorax, workstation VRT: supports_76377
ABDOMEN = {"case": "ct_workstation_vr_sc", "patient_id": "FXS-CC"}  # CT abdomen/pelvis, Vitrea VR: supports_76377
NO_3D = {"case": "ct_mpr_only", "patient_id": "FXS-CC"}  # reformats only: no_3d, same patient and day
OTHER = {"case": "ct_workstation_vr_sc", "patient_id": "FXS-CD"}  # another patient: another session


# ---------------------------------------------------------------- the pure core


def _study(uid: str, outcome: Outcome, regions: tuple[str, ...], minute: int) -> SessionStudy:
    table = builtin_regions()
    return SessionStudy(
        study_instance_uid=uid,
        outcome=outcome,
        regions=frozenset(table.regions[r] for r in regions),
        regions_from=RegionBasis.BODY_PART_EXAMINED if regions else RegionBasis.UNKNOWN,
        decided_at=dt.datetime(2026, 1, 5, 10, minute, tzinfo=dt.UTC),
        has_3d=outcome.code is not None,
    )


CORE = [
    _study("1.1", Outcome.SUPPORTS_76377, ("chest",), 1),
    _study("1.2", Outcome.SUPPORTS_76377, ("abdomen",), 2),
    _study("1.3", Outcome.NO_3D, ("abdomen",), 3),
]


def _choice(uid: str) -> CarrierChoice:
    return CarrierChoice(7, uid, "coder A", "report names the abdomen", dt.datetime(2026, 1, 6, 9, tzinfo=dt.UTC))


def test_the_chosen_study_carries_and_the_record_says_who_when_why() -> None:
    default = SessionRecord.from_verdict(session_verdict(CORE), "ses-" + "a" * 24)
    assert (default.carrier, default.carrier_from, default.carrier_choice) == ("1.1", CarrierBasis.FIRST_DECIDED, None)
    choice = _choice("1.2")
    studies = with_choice(CORE, choice)
    assert [s.carrier_chosen for s in studies] == [False, True, False]
    chosen = SessionRecord.from_verdict(session_verdict(studies), "ses-" + "a" * 24, choice)
    assert chosen.carrier == "1.2" and chosen.carrier_from is CarrierBasis.CODER_CHOICE
    assert chosen.carrier_choice is not None and chosen.carrier_choice.applied
    assert (chosen.carrier_choice.reviewer, chosen.carrier_choice.choice_id) == ("coder A", 7)


def test_a_choice_that_left_the_session_does_not_apply_and_a_note_says_so() -> None:
    choice = _choice("9.9")
    record = SessionRecord.from_verdict(session_verdict(with_choice(CORE, choice)), "ses-" + "a" * 24, choice)
    assert record.carrier == "1.1" and record.carrier_from is CarrierBasis.FIRST_DECIDED
    assert record.carrier_choice is not None and not record.carrier_choice.applied
    assert any("9.9" in note and "no longer in this session" in note for note in record.notes)


def test_carrier_refusals_name_the_reason() -> None:
    assert carrier_refusal(CORE, "1.2") is None
    assert "not in this session" in (carrier_refusal(CORE, "9.9") or "")
    assert "supports no code" in (carrier_refusal(CORE, "1.3") or "")


def test_a_record_kept_before_carrier_choices_reads_as_first_decided() -> None:
    document = SessionRecord.from_verdict(session_verdict(CORE), None).model_dump(mode="json")
    del document["carrier_from"], document["carrier_choice"]
    assert SessionRecord.model_validate(document).carrier_from is CarrierBasis.FIRST_DECIDED


# ---------------------------------------------------------------- wired: API, pages, packs


def _build(entry: dict[str, Any], name: str, number: int, out: Path) -> Path:
    return build_study(name, entry, number, out)


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("carrier-dicom")
    entries = {"chest": CHEST, "abdomen": ABDOMEN, "no_3d": NO_3D, "other": OTHER}
    return {key: _build(entry, f"carrier-{key}", 300 + i, out) for i, (key, entry) in enumerate(entries.items())}


@pytest.fixture(scope="module")
def site(module_index_url: str, tmp_path_factory: pytest.TempPathFactory, folders: dict[str, Path]):
    """One index with a one_unit session (chest decided first, then abdomen), a no_3d study of the same session,
    and another patient's study; reader, admin and auditor tokens."""
    receiver = make_receiver(module_index_url, tmp_path_factory.mktemp("carrier-data"))
    uids = {key: receive(receiver, folder) for key, folder in folders.items()}
    access = Access(receiver.engine)
    tokens = {role: access.create_token(f"{role}-carrier", role) for role in ("reader", "admin")}
    tokens["auditor"] = access.create_token(
        "auditor-carrier", "auditor", studies=[uids["chest"]], expires_at=dt.datetime.now(dt.UTC) + dt.timedelta(days=1)
    )
    client = TestClient(create_app(receiver.settings, receiver))
    yield {"client": client, "tokens": tokens, "uids": uids, "receiver": receiver}
    client.close()
    receiver.engine.dispose()


def _session(client: TestClient, token: str, uid: str) -> dict[str, Any]:
    response = client.get(f"/studies/{uid}", headers=auth(token))
    assert response.status_code == 200, response.text
    return response.json()["session"]


def _choose(client: TestClient, token: str, session_id: str, uid: str, reason: str = "the report names it") -> Any:
    body = {"study_instance_uid": uid, "reviewer": "coder B", "reason": reason}
    return client.post(f"/sessions/{session_id}/carrier", json=body, headers=auth(token))


def test_a_coder_chooses_the_carrier_through_the_api(site: dict[str, Any]) -> None:
    """Choose the abdomen (decided second) for the one_unit session: every study of the session shows it, with
    who, when and why; the choice is audited; refusals change nothing; a later choice supersedes (kept); the
    choice survives re-decisions of the studies."""
    client, tokens, uids, receiver = site["client"], site["tokens"], site["uids"], site["receiver"]
    reader = tokens["reader"]
    before = _session(client, reader, uids["chest"])
    session_id = before["session_id"]
    assert before["verdict"] == "one_unit" and before["carrier"] == uids["chest"]
    assert before["carrier_from"] == "first_decided" and before["carrier_choice"] is None
    assert {s["study_instance_uid"] for s in before["studies"]} == {uids["chest"], uids["abdomen"], uids["no_3d"]}

    made = _choose(client, reader, session_id, uids["abdomen"], "radiologist read the abdomen with the 3D")
    assert made.status_code == 201, made.text
    body = made.json()
    assert body["choice"]["current"] is True and body["choice"]["reviewer"] == "coder B"
    assert body["session"]["carrier"] == uids["abdomen"]
    for uid in (uids["chest"], uids["abdomen"], uids["no_3d"]):
        session = _session(client, reader, uid)
        assert session["carrier"] == uids["abdomen"] and session["carrier_from"] == "coder_choice"
        choice = session["carrier_choice"]
        assert (choice["study_instance_uid"], choice["reviewer"]) == (uids["abdomen"], "coder B")
        assert choice["reason"] == "radiologist read the abdomen with the 3D" and choice["applied"] is True
        assert choice["chosen_at"] and choice["choice_id"] == body["choice"]["id"]
        flags = {s["study_instance_uid"]: (s["carries_unit"], s["carrier_chosen"]) for s in session["studies"]}
        assert flags == {uids["chest"]: (False, False), uids["abdomen"]: (True, True), uids["no_3d"]: (False, False)}
    with receiver.engine.connect() as connection:
        chosen = connection.execute(
            select(StudySession.study_instance_uid).where(StudySession.carrier_chosen.is_(True))
        ).scalars()
        assert set(chosen) == {uids["abdomen"]}
        events = connection.execute(
            select(AuditEvent).where(AuditEvent.endpoint == f"/sessions/{session_id}/carrier")
        ).all()
    (event,) = [e for e in events if e.outcome == 0]
    assert event.token_name == "reader-carrier" and event.study_instance_uid == uids["abdomen"]
    assert event.detail["carrier_choice_id"] == body["choice"]["id"] and event.event == "Procedure Record"

    # refused: another patient's study, a study whose outcome supports no code, an unknown session, an auditor
    other = _choose(client, reader, session_id, uids["other"])
    assert other.status_code == 409 and "not in this session" in other.json()["detail"]
    no_code = _choose(client, reader, session_id, uids["no_3d"])
    assert no_code.status_code == 409 and "supports no code" in no_code.json()["detail"]
    assert _choose(client, reader, "ses-" + "0" * 24, uids["chest"]).status_code == 404
    assert _choose(client, tokens["auditor"], session_id, uids["chest"]).status_code == 403
    bad = client.post(
        f"/sessions/{session_id}/carrier", json={"study_instance_uid": uids["chest"]}, headers=auth(reader)
    )
    assert bad.status_code == 422
    assert client.post("/sessions/not-a-session/carrier", json={}, headers=auth(reader)).status_code == 422
    assert _session(client, reader, uids["chest"])["carrier"] == uids["abdomen"]  # nothing changed
    with receiver.engine.connect() as connection:
        refusals = connection.execute(
            select(AuditEvent.outcome).where(
                AuditEvent.endpoint == f"/sessions/{session_id}/carrier", AuditEvent.event == "Procedure Record"
            )
        ).scalars()
        assert sorted(refusals).count(4) == 2  # the two 409s are audited as minor failures

    # re-decisions of both studies keep the coder's choice
    admin = tokens["admin"]
    for uid in (uids["chest"], uids["abdomen"]):
        assert client.post(f"/studies/{uid}/reanalyze", headers=auth(admin)).status_code in (200, 202)
    settle_all(receiver)
    again = _session(client, reader, uids["no_3d"])
    assert again["carrier"] == uids["abdomen"] and again["carrier_from"] == "coder_choice"

    # a later choice supersedes the earlier one; both are kept, the latest first
    later = _choose(client, admin, session_id, uids["chest"], "the thorax 3D is the one reported")
    assert later.status_code == 201
    assert _session(client, reader, uids["abdomen"])["carrier"] == uids["chest"]
    history = client.get(f"/sessions/{session_id}", headers=auth(reader))
    assert history.status_code == 200, history.text
    choices = history.json()["carrier_choices"]
    assert [(c["study_instance_uid"], c["current"]) for c in choices] == [
        (uids["chest"], True),
        (uids["abdomen"], False),
    ]
    assert history.json()["session"]["carrier_choice"]["reason"] == "the thorax 3D is the one reported"
    with receiver.engine.connect() as connection:
        rows = connection.execute(select(SessionCarrierChoice).order_by(SessionCarrierChoice.id)).all()
    assert rows[0].superseded_by == rows[1].id and rows[1].superseded_by is None
    assert client.get(f"/sessions/{session_id}", headers=auth(tokens["auditor"])).status_code == 403
    assert client.get("/sessions/ses-" + "1" * 24, headers=auth(reader)).status_code == 404
    assert "/sessions/{session_id}/carrier" in client.get("/openapi.json").json()["paths"]


def test_the_pack_and_its_pdf_say_who_chose_the_carrier(site: dict[str, Any]) -> None:
    client, tokens, uids, receiver = site["client"], site["tokens"], site["uids"], site["receiver"]
    session_id = _session(client, tokens["reader"], uids["chest"])["session_id"]
    made = _choose(client, tokens["reader"], session_id, uids["abdomen"], "coder reading of the abdomen 3D")
    assert made.status_code == 201, made.text
    pack = ensure_pack(receiver, uids["chest"])
    session = json.loads((pack / "evidence.json").read_text())["session"]
    assert session["carrier"] == uids["abdomen"] and session["carrier_from"] == "coder_choice"
    assert session["carrier_choice"]["reviewer"] == "coder B"
    text = " ".join(pdf_text(pack / "report.pdf").split())
    assert "Carrier from" in text and "chosen by a coder: coder B" in text
    assert "coder reading of the abdomen 3D" in text
    minimal = json.loads((ensure_pack(receiver, uids["chest"], minimal=True) / "evidence.json").read_text())
    assert minimal["session"]["carrier_from"] == "coder_choice"
    assert "coder B" not in json.dumps(minimal["session"])  # no coder's words in a PHI-minimal pack


def test_a_pack_of_the_default_carrier_says_first_decided(site: dict[str, Any]) -> None:
    client, tokens, uids, receiver = site["client"], site["tokens"], site["uids"], site["receiver"]
    assert _session(client, tokens["reader"], uids["other"])["carrier_from"] == "first_decided"
    text = " ".join(pdf_text(ensure_pack(receiver, uids["other"]) / "report.pdf").split())
    assert "the first decided study (the default; no coder chose another)" in text


def _csrf(html: str) -> str:
    found = re.search(r'name="csrf" value="([0-9a-f]{64})"', html)
    assert found, "no CSRF token in the page"
    return found.group(1)


def test_the_pages_let_a_coder_choose_the_carrier(site: dict[str, Any]) -> None:
    client, tokens, uids = site["client"], site["tokens"], site["uids"]
    session_id = _session(client, tokens["reader"], uids["chest"])["session_id"]
    pages = TestClient(client.app)
    try:
        assert pages.post("/ui/login", data={"token": tokens["reader"]}, follow_redirects=False).status_code == 303
        listing = pages.get("/ui/sessions")
        assert listing.status_code == 200 and f'action="/ui/sessions/{session_id}/carrier"' in listing.text
        form = {"csrf": _csrf(listing.text), "study_instance_uid": uids["chest"], "reviewer": "coder C"}
        assert pages.post(f"/ui/sessions/{session_id}/carrier", data={**form, "reason": "x"}).status_code == 422
        forged = pages.post(f"/ui/sessions/{session_id}/carrier", data={**form, "csrf": "0" * 64, "reason": "why"})
        assert forged.status_code == 403
        saved = pages.post(
            f"/ui/sessions/{session_id}/carrier",
            data={**form, "reason": "chosen from the sessions page"},
            follow_redirects=False,
        )
        assert saved.status_code == 303 and saved.headers["location"] == "/ui/sessions?saved=1"
        listing = pages.get("/ui/sessions?saved=1")
        assert "Carrier choice recorded" in listing.text and "chosen by coder C" in listing.text
        assert _session(client, tokens["reader"], uids["abdomen"])["carrier_choice"]["reviewer"] == "coder C"

        study = pages.get(f"/ui/studies/{uids['abdomen']}")
        assert study.status_code == 200 and 'id="carrier-form"' in study.text
        assert "Carrier chosen by a coder" in study.text and "coder C" in study.text
        refused = pages.post(
            f"/ui/sessions/{session_id}/carrier",
            data={"csrf": _csrf(study.text), "study_instance_uid": uids["no_3d"], "reason": "not coded"},
        )
        assert refused.status_code == 409 and "supports no code" in refused.text
        moved = pages.post(
            f"/ui/sessions/{session_id}/carrier",
            data={
                "csrf": _csrf(study.text),
                "study_instance_uid": uids["abdomen"],
                "reviewer": "coder D",
                "reason": "chosen from the study page",
                "from_study": uids["abdomen"],
            },
            follow_redirects=False,
        )
        assert (
            moved.status_code == 303 and moved.headers["location"] == f"/ui/studies/{uids['abdomen']}?carrier=1#session"
        )
        shown = pages.get(f"/ui/studies/{uids['chest']}")
        assert "coder D" in shown.text and "chosen from the study page" in shown.text
        alone = pages.get(f"/ui/studies/{uids['other']}")
        assert 'id="session"' in alone.text and 'id="carrier-form"' not in alone.text  # one coded study: no choice
    finally:
        pages.close()


# ---------------------------------------------------------------- backfill: studies decided before sessions


def _forget_sessions(receiver: Receiver, *, strip_documents: bool) -> None:
    """The index as it was before migration 0007: no session rows (and, optionally, decision documents without
    the fields the session needs, as decisions stored before issue 13 were)."""
    with receiver.engine.begin() as connection:
        connection.execute(delete(StudySession))
        if strip_documents:
            for decision_id, document in connection.execute(select(Decision.id, Decision.document)).all():
                old = {k: v for k, v in document.items() if k not in (*SESSION_FIELDS, "made_later")}
                connection.execute(update(Decision).where(Decision.id == decision_id).values(document=old))


def _rows(receiver: Receiver) -> dict[str, tuple[Any, ...]]:
    with receiver.engine.connect() as connection:
        rows = connection.execute(select(StudySession)).all()
    return {r.study_instance_uid: (r.session_id, r.verdict, tuple(r.regions), r.carrier_chosen, r.record) for r in rows}


def _outcomes(receiver: Receiver) -> dict[str, Any]:
    with receiver.engine.connect() as connection:
        return {row.id: row.document["outcome"] for row in connection.execute(select(Decision.id, Decision.document))}


@pytest.mark.parametrize("strip_documents", [False, True], ids=["decided-with-fields", "decided-before-issue-13"])
def test_backfill_gives_every_decided_study_its_session_once(
    index_url: str, tmp_path: Path, folders: dict[str, Path], strip_documents: bool
) -> None:
    receiver = make_receiver(index_url, tmp_path)
    try:
        uids = {key: receive(receiver, folder) for key, folder in folders.items()}
        expected = _rows(receiver)
        decisions = _outcomes(receiver)
        _forget_sessions(receiver, strip_documents=strip_documents)
        assert _rows(receiver) == {}

        first = backfill(receiver.engine, receiver.settings, batch=2)  # batches of two: several pages
        assert (first.examined, first.written, first.skipped) == (4, 4, 0)
        rows = _rows(receiver)
        assert set(rows) == set(uids.values())
        for uid, (session_id, verdict, regions, chosen, record) in rows.items():
            want = expected[uid]
            assert (session_id, verdict, regions, chosen) == want[:4], uid
            assert {s["study_instance_uid"] for s in record["studies"]} == {
                s["study_instance_uid"] for s in want[4]["studies"]
            }
        assert rows[uids["chest"]][1] == "one_unit" and rows[uids["other"]][1] == "single"
        assert _outcomes(receiver) == decisions  # nothing decided again

        second = backfill(receiver.engine, receiver.settings)
        assert (second.examined, second.written) == (0, 0) and _rows(receiver) == rows
    finally:
        receiver.engine.dispose()


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "dicomcheck", *args], capture_output=True, text=True, env=env, timeout=300, cwd=ROOT
    )


def test_cli_backfill_and_rebuild_keep_outcomes_and_the_coders_choice(
    index_url: str, tmp_path: Path, folders: dict[str, Path]
) -> None:
    receiver = make_receiver(index_url, tmp_path)
    try:
        uids = {key: receive(receiver, folder) for key, folder in folders.items()}
        session_id = Sessions(receiver.engine).of_study(uids["chest"]).session_id  # type: ignore[union-attr]
        Sessions(receiver.engine).choose_carrier(
            session_id, uids["abdomen"], reviewer="coder E", token_name="cli-test", reason="kept across a rebuild"
        )
        expected = _rows(receiver)
        decisions = _outcomes(receiver)
        _forget_sessions(receiver, strip_documents=True)
        where = ["--database-url", index_url]

        done = _cli("sessions", "backfill", *where)
        assert done.returncode == 0, done.stderr
        assert "4 study(ies) given their session" in done.stdout
        rows = _rows(receiver)
        assert rows[uids["abdomen"]][3] is True and rows[uids["chest"]][4]["carrier"] == uids["abdomen"]
        assert {uid: row[:4] for uid, row in rows.items()} == {uid: row[:4] for uid, row in expected.items()}
        again = _cli("sessions", "backfill", *where)
        assert again.returncode == 0 and "0 study(ies) given their session" in again.stdout

        # rebuild: every session recomputed, regions read anew from the headers; the same result here
        with receiver.engine.begin() as connection:
            connection.execute(update(StudySession).values(regions=[], regions_from="unknown", verdict="no_unit"))
        rebuilt = _cli("sessions", "rebuild", *where)
        assert rebuilt.returncode == 0, rebuilt.stderr
        assert "4 study(ies) recomputed" in rebuilt.stdout
        after = _rows(receiver)
        assert {uid: row[:4] for uid, row in after.items()} == {uid: row[:4] for uid, row in expected.items()}
        assert after[uids["no_3d"]][4]["carrier_choice"]["reviewer"] == "coder E"
        assert _outcomes(receiver) == decisions
    finally:
        receiver.engine.dispose()


def test_serve_start_backfills_in_the_background(index_url: str, tmp_path: Path, folders: dict[str, Path]) -> None:
    """The function ``serve`` starts at start-up (``backfill_in_background``) gives the sessions, then stops."""
    from dicomcheck.session_backfill import backfill_in_background

    receiver = make_receiver(index_url, tmp_path)
    try:
        for folder in (folders["chest"], folders["abdomen"]):
            receive(receiver, folder)
        expected = _rows(receiver)
        _forget_sessions(receiver, strip_documents=False)
        thread, stop = backfill_in_background(receiver.engine, receiver.settings)
        thread.join(timeout=120)
        assert not thread.is_alive() and not stop.is_set()
        assert {uid: row[:4] for uid, row in _rows(receiver).items()} == {uid: row[:4] for uid, row in expected.items()}
    finally:
        receiver.engine.dispose()


def test_settings_for_the_cli_are_the_servers(tmp_path: Path) -> None:
    """``sessions backfill`` refuses to create an index (a typo in --data must not start an empty one)."""
    done = _cli("sessions", "backfill", "--data", str(tmp_path / "nowhere"))
    assert done.returncode != 0 and "no index" in done.stderr
