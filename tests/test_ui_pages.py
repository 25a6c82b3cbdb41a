"""The web pages without a browser (TestClient) on a real index filled by receiving the fixture studies:
what the worklist and the inventory list, sign-in, the session cookie, CSRF and Origin checks, the
audit trail, escaping, no external URL, and the coder's review in a new evidence pack."""

from __future__ import annotations

import datetime as dt
import json
import re
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from fastapi.testclient import TestClient

from dicomcheck.api import create_app
from dicomcheck.config import Settings
from dicomcheck.evidence.keys import load_key
from dicomcheck.evidence.pack import verify_pack
from dicomcheck.ingest import Receiver
from dicomcheck.store.access import Access
from dicomcheck.ui.session import COOKIE, SECRET_NAME, decode, session_secret

from .peers import require_peer
from .test_api import auth, ingest_case, settle_all

CASES = ("ct_console_mip", "ct_workstation_vr_sc", "unknown_station_3d", "equipment_stripped", "workstation_no_base")
REVIEW_CASES = ("unknown_station_3d", "equipment_stripped", "workstation_no_base")
HOSTILE = "<script>alert(1)</script>"
PAGES = ("/ui/worklist", "/ui/equipment", "/ui/dashboard", "/ui/quarantine")


def hostile_copy(source: Path, target: Path) -> None:
    """A copy of a no-3D study whose description is markup (it must reach every page as text)."""
    for path in sorted(source.rglob("*.dcm")):
        ds = pydicom.dcmread(path)
        ds.StudyDescription = HOSTILE
        ds.AccessionNumber = "ACC-HOSTILE"
        out = target / path.relative_to(source)
        out.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(out)


def make_site(data: Path, index_url: str | None, fixtures_output: Path) -> dict:
    settings = Settings(data=data, database_url=index_url, stable_after=0.01)
    receiver = Receiver(settings)
    for case in CASES:
        ingest_case(receiver, fixtures_output / case)
    hostile = data.parent / "hostile"
    hostile_copy(fixtures_output / "ct_mpr_only", hostile)
    ingest_case(receiver, hostile)
    settle_all(receiver)
    receiver.index.add_quarantined(
        path="2026/refused.dcm",
        reason=f"not DICOM: {HOSTILE}",
        status=0xC000,
        association_id=None,
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        sop_instance_uid="1.2.3.4.5",
        sha256=None,
    )
    access = Access(receiver.engine)
    expected = {c: json.loads((fixtures_output / c / "expected.json").read_text()) for c in CASES}
    tokens = {
        "admin": access.create_token("pacs-admin", "admin"),
        "reader": access.create_token("coder-1", "reader"),
        "auditor": access.create_token(
            "payer-auditor",
            "auditor",
            expires_at=dt.datetime.now(dt.UTC) + dt.timedelta(days=3),
            accessions=[expected["equipment_stripped"]["accession_number"]],
        ),
    }
    app = create_app(settings, receiver)
    return {"app": app, "receiver": receiver, "tokens": tokens, "expected": expected, "data": data}


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, fixtures_output: Path) -> Iterator[dict]:
    built = make_site(tmp_path_factory.mktemp("ui-pages") / "data", None, fixtures_output)
    yield built
    built["receiver"].engine.dispose()


def signed_in(site: dict, role: str = "admin", *, base_url: str = "http://testserver") -> TestClient:
    client = TestClient(site["app"], base_url=base_url)
    response = client.post("/ui/login", data={"token": site["tokens"][role]}, follow_redirects=False)
    assert response.status_code == 303, response.text
    return client


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([0-9a-f]{64})"', html)
    assert found, "the page has no form with a CSRF token"
    return found[1]


def worklist_uids(html: str) -> set[str]:
    return set(re.findall(r'<a href="/ui/studies/([0-9.]+)">', html))


def review_uids(site: dict) -> set[str]:
    return {site["expected"][c]["study_instance_uid"] for c in REVIEW_CASES}


# ---------------------------------------------------------------- what the pages list (both indexes)


def test_worklist_and_inventory_on_both_indexes(index_url: str, tmp_path: Path, fixtures_output: Path) -> None:
    """On SQLite and PostgreSQL: the worklist lists exactly the needs_review studies without a current review,
    ``GET /equipment`` names a writer for each study held for an unknown origin, every page renders."""
    built = make_site(tmp_path / "data", index_url, fixtures_output)
    try:
        client = signed_in(built, "reader")
        waiting = review_uids(built)
        assert worklist_uids(client.get("/ui/worklist").text) == waiting
        reviewed = built["expected"]["workstation_no_base"]["study_instance_uid"]
        api = TestClient(built["app"])
        body = {"outcome": "supports_76377", "reviewer": "Coder One", "reason": "report names the Vitrea workstation"}
        review = api.post(f"/studies/{reviewed}/review", json=body, headers=auth(built["tokens"]["reader"]))
        assert review.status_code == 201
        assert worklist_uids(client.get("/ui/worklist").text) == waiting - {reviewed}

        items = api.get("/equipment", headers=auth(built["tokens"]["reader"])).json()["items"]
        held = {uid for item in items for uid in item["held_studies"]}
        for case in ("unknown_station_3d", "equipment_stripped"):  # held for an unknown origin
            assert built["expected"][case]["study_instance_uid"] in held
        acme = next(i for i in items if i["station_name"] == "PC-UNKNOWN")
        assert acme["manufacturer"] == "Acme Imaging" and acme["settled_by"] == ["unknown"]
        assert acme["series_by_kind"] == {"volume_render": 1} and acme["ae_title"] == "PACS1"
        assert acme["first_seen"].endswith("+00:00") and acme["last_seen"].endswith("+00:00")  # aware UTC
        vitrea = next(i for i in items if i["model"] == "Vitrea")
        assert vitrea["settled_by"] == ["built-in fingerprint"] and vitrea["held_studies"] == []

        admin = signed_in(built, "admin")
        for path in PAGES:
            assert admin.get(path).status_code == 200, path
        study = admin.get(f"/ui/studies/{reviewed}").text
        assert "PACS1" in study and "127.0.0.1" in study and "Coder One" in study  # provenance, the review
    finally:
        built["receiver"].engine.dispose()


def test_worklist_filters_and_auditor_scope(site: dict) -> None:
    client = signed_in(site, "reader")
    acme = site["expected"]["unknown_station_3d"]["study_instance_uid"]
    assert worklist_uids(client.get("/ui/worklist", params={"station": "PC-UNKNOWN"}).text) == {acme}
    assert worklist_uids(client.get("/ui/worklist", params={"modality": "MR"}).text) == set()
    today = dt.date.today()
    later = {"received_from": (today + dt.timedelta(days=2)).isoformat()}
    assert worklist_uids(client.get("/ui/worklist", params=later).text) == set()
    assert client.get("/ui/worklist", params={"received_from": "yesterday"}).status_code == 422
    auditor = signed_in(site, "auditor")
    assert worklist_uids(auditor.get("/ui/worklist").text) == {
        site["expected"]["equipment_stripped"]["study_instance_uid"]
    }
    assert auditor.get(f"/ui/studies/{acme}").status_code == 404  # outside its scope: as if never received
    assert auditor.get("/ui/equipment").status_code == 403
    assert auditor.get("/ui/dashboard").status_code == 403


def test_roles_on_admin_pages(site: dict) -> None:
    reader = signed_in(site, "reader")
    refused = reader.get("/ui/quarantine")
    assert refused.status_code == 403 and refused.headers["content-type"].startswith("text/html")
    assert "Not allowed" in refused.text and "role &#39;reader&#39; may not use this page" in refused.text
    missing = reader.get("/ui/studies/1.2.3.999")
    assert missing.status_code == 404 and "no study 1.2.3.999 has been received" in missing.text
    assert reader.get("/ui/studies/not-a-uid").status_code == 422
    page = reader.get("/ui/equipment").text
    assert "/ui/equipment/register" not in page
    refused = reader.post(
        "/ui/equipment/register", data={"csrf": csrf_of(page), "station_name": "X", "role": "pacs_viewer"}
    )
    assert refused.status_code == 403


def test_equipment_json_needs_a_staff_bearer_token(site: dict) -> None:
    api = TestClient(site["app"])
    missing = api.get("/equipment")
    assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
    assert api.get("/equipment", headers=auth("dck_unknown")).status_code == 401
    assert api.get("/equipment", headers=auth(site["tokens"]["auditor"])).status_code == 403
    session = {"Cookie": f"{COOKIE}={signed_in(site, 'admin').cookies[COOKIE]}"}
    assert api.get("/equipment", headers=session).status_code == 401  # a page session is no API credential
    assert "/equipment" in api.get("/openapi.json").json()["paths"]
    assert not any(path.startswith("/ui") for path in api.get("/openapi.json").json()["paths"])


def test_quarantine_page(site: dict) -> None:
    page = signed_in(site, "admin").get("/ui/quarantine").text
    assert "not DICOM: &lt;script&gt;" in page and "0xC000" in page and "1.2.3.4.5" in page


# ---------------------------------------------------------------- sign-in, session, CSRF, Origin


def test_unauthenticated_pages_go_to_sign_in(site: dict) -> None:
    client = TestClient(site["app"])
    uid = site["expected"]["unknown_station_3d"]["study_instance_uid"]
    for path in (*PAGES, f"/ui/studies/{uid}", f"/ui/studies/{uid}/evidence.pdf"):
        response = client.get(path, follow_redirects=False)
        assert response.status_code == 303 and response.headers["location"] == "/ui/login", path
    assert "<form" in client.get("/ui/login").text
    forged = client.get("/ui/worklist", cookies={COOKIE: "eyJ0IjoxfQ.00"}, follow_redirects=False)
    assert forged.status_code == 303


def test_cookie_flags_and_contents(site: dict) -> None:
    client = TestClient(site["app"])
    response = client.post("/ui/login", data={"token": site["tokens"]["reader"]}, follow_redirects=False)
    cookie = response.headers["set-cookie"]
    flags = {part.strip().split("=")[0].lower() for part in cookie.split(";")}
    assert {"httponly", "samesite", "path", "max-age"} <= flags and "secure" not in flags
    assert "samesite=strict" in cookie.lower() and "path=/ui" in cookie.lower()
    assert site["tokens"]["reader"] not in cookie and site["tokens"]["reader"][4:20] not in cookie
    value = cookie.split(";")[0].split("=", 1)[1]
    session = decode(value, session_secret(site["data"]))
    assert session is not None and session.token_id > 0
    assert 0 < session.expires - dt.datetime.now(dt.UTC).timestamp() <= 8 * 3600
    assert decode(value[:-2] + ("00" if not value.endswith("00") else "11"), session_secret(site["data"])) is None
    secure = TestClient(site["app"], base_url="https://testserver")
    over_tls = secure.post("/ui/login", data={"token": site["tokens"]["reader"]}, follow_redirects=False)
    assert "secure" in over_tls.headers["set-cookie"].lower()
    mode = stat.S_IMODE((site["data"] / SECRET_NAME).stat().st_mode)
    assert mode == 0o600


def test_sign_in_checks_origin_and_token(site: dict) -> None:
    client = TestClient(site["app"])
    token = site["tokens"]["reader"]
    foreign = client.post("/ui/login", data={"token": token}, headers={"Origin": "http://evil.example"})
    assert foreign.status_code == 403 and "set-cookie" not in foreign.headers
    null = client.post("/ui/login", data={"token": token}, headers={"Origin": "null"})
    assert null.status_code == 403
    same = client.post(
        "/ui/login", data={"token": token}, headers={"Origin": "http://testserver"}, follow_redirects=False
    )
    assert same.status_code == 303
    wrong = client.post("/ui/login", data={"token": "dck_not-a-token"})
    assert wrong.status_code == 401 and "unknown token" in wrong.text and "set-cookie" not in wrong.headers
    events = Access(site["receiver"].engine).audit_events(event="User Authentication", limit=20)
    assert {(e.outcome, e.detail.get("reason")) for e in events} >= {
        (4, "unknown token"),
        (4, "foreign origin"),
        (0, None),
    }


def test_forms_need_the_session_csrf_token(site: dict) -> None:
    client = signed_in(site, "reader")
    uid = site["expected"]["unknown_station_3d"]["study_instance_uid"]
    page = client.get(f"/ui/studies/{uid}").text
    form = {"outcome": "supports_76376", "reviewer": "x", "reason": "y"}
    assert client.post(f"/ui/studies/{uid}/review", data=form).status_code == 403
    assert client.post(f"/ui/studies/{uid}/review", data={**form, "csrf": "0" * 64}).status_code == 403
    other = signed_in(site, "reader")  # another session's token is not this one's
    other_csrf = csrf_of(other.get(f"/ui/studies/{uid}").text)
    assert other_csrf != csrf_of(page)
    assert client.post(f"/ui/studies/{uid}/review", data={**form, "csrf": other_csrf}).status_code == 403
    foreign = client.post(
        f"/ui/studies/{uid}/review", data={**form, "csrf": csrf_of(page)}, headers={"Origin": "http://evil.example"}
    )
    assert foreign.status_code == 403
    assert client.post("/ui/logout", data={"csrf": ""}).status_code == 403
    crowded = client.post(f"/ui/studies/{uid}/review", data={f"f{i}": "x" for i in range(60)})
    assert crowded.status_code == 422 and "at most 50 fields" in crowded.text
    not_a_form = client.post(f"/ui/studies/{uid}/review", json=form)
    assert not_a_form.status_code == 415
    assert Access(site["receiver"].engine).reviews(uid) == []  # none of them was recorded
    alerts = Access(site["receiver"].engine).audit_events(event="Security Alert", limit=50)
    assert sum("CSRF" in str(e.detail.get("reason")) for e in alerts) >= 4


def test_revoked_token_ends_the_session(site: dict, fixtures_output: Path) -> None:
    access = Access(site["receiver"].engine)
    token = access.create_token("short-lived", "reader")
    client = TestClient(site["app"])
    assert client.post("/ui/login", data={"token": token}, follow_redirects=False).status_code == 303
    assert client.get("/ui/worklist").status_code == 200
    access.revoke_token("short-lived")
    ended = client.get("/ui/worklist", follow_redirects=False)
    assert ended.status_code == 303 and ended.headers["location"] == "/ui/login"
    alerts = access.audit_events(event="Security Alert", limit=10)
    assert any(e.detail.get("reason") == "session ended: token revoked" for e in alerts)


def test_sign_out(site: dict) -> None:
    client = signed_in(site, "reader")
    csrf = csrf_of(client.get("/ui/worklist").text)
    out = client.post("/ui/logout", data={"csrf": csrf}, follow_redirects=False)
    assert out.status_code == 303 and out.headers["location"] == "/ui/login"
    assert "max-age=0" in out.headers["set-cookie"].lower()
    assert client.get("/ui/worklist", follow_redirects=False).status_code == 303


# ---------------------------------------------------------------- what every page is made of


def every_page(site: dict) -> dict[str, str]:
    client = signed_in(site, "admin")
    pages = {path: client.get(path).text for path in PAGES}
    for case in CASES:
        uid = site["expected"][case]["study_instance_uid"]
        pages[f"/ui/studies/{uid}"] = client.get(f"/ui/studies/{uid}").text
    pages["/ui/login"] = TestClient(site["app"]).get("/ui/login").text
    return pages


def test_no_external_url_and_everything_escaped(site: dict) -> None:
    pages = every_page(site)
    for path, html in pages.items():
        assert re.findall(r"https?://", html) == [], path  # every link and asset is relative to this server
        assert "<script" not in html, path
    client = signed_in(site, "admin")
    search = TestClient(site["app"]).get(
        "/studies", params={"accession": "ACC-HOSTILE"}, headers=auth(site["tokens"]["admin"])
    )
    uid = search.json()["items"][0]["study_instance_uid"]
    page = client.get(f"/ui/studies/{uid}")
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text and HOSTILE not in page.text
    assert re.findall(r"https?://", page.text) == []
    assert page.headers["content-security-policy"].startswith("default-src 'none'")
    assert page.headers["cache-control"] == "no-store"
    css = client.get("/ui/static/site.css")
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
    assert re.findall(r"https?://|@import|url\(", css.text) == []
    assert client.get("/ui/static/..%2Fpages.py").status_code == 404


def test_page_views_are_audited(site: dict) -> None:
    client = signed_in(site, "reader")
    uid = site["expected"]["unknown_station_3d"]["study_instance_uid"]
    client.get("/ui/worklist")
    client.get(f"/ui/studies/{uid}")
    client.get("/ui/equipment")
    client.get("/ui/dashboard")
    events = Access(site["receiver"].engine).audit_events(limit=30)
    mine = [
        (e.event, e.endpoint, e.study_instance_uid)
        for e in events
        if e.token_name == "coder-1" and e.detail.get("page")
    ]
    assert ("DICOM Instances Accessed", f"/ui/studies/{uid}", uid) in mine
    for path in ("/ui/worklist", "/ui/equipment", "/ui/dashboard"):
        assert ("Query", path, None) in mine, path


def test_thumbnails_are_rendered_once_and_cached(site: dict) -> None:
    client = signed_in(site, "reader")
    expected = site["expected"]["unknown_station_3d"]
    uid = expected["study_instance_uid"]
    page = client.get(f"/ui/studies/{uid}").text
    sources = re.findall(r'<img src="(/ui/studies/[0-9.]+/series/[0-9.]+/thumbnail)"', page)
    assert len(sources) == len(expected["series"])
    first = client.get(sources[0])
    assert first.status_code == 200 and first.content.startswith(b"\x89PNG")
    cached = list((site["data"] / "ui-thumbnails").glob("*.png"))
    assert cached
    assert client.get(sources[0]).content == first.content
    assert client.get(f"/ui/studies/{uid}/series/1.2.3/thumbnail").status_code == 404


# ---------------------------------------------------------------- changes: a review, a device


def test_review_writes_a_new_pack_beside_the_decisions(site: dict) -> None:
    client = signed_in(site, "reader")
    uid = site["expected"]["workstation_no_base"]["study_instance_uid"]
    before = client.get(f"/ui/studies/{uid}/evidence.zip")  # the decision's own pack, written now
    assert before.status_code == 200
    csrf = csrf_of(client.get(f"/ui/studies/{uid}").text)
    form = {"csrf": csrf, "outcome": "supports_76377", "reviewer": "Coder One", "reason": "Vitrea VR per the report"}
    saved = client.post(f"/ui/studies/{uid}/review", data=form, follow_redirects=False)
    assert saved.status_code == 303 and saved.headers["location"] == f"/ui/studies/{uid}?saved=1"
    folders = sorted(p.name for p in (site["data"] / "evidence" / uid).iterdir() if p.is_dir())
    review_id = Access(site["receiver"].engine).reviews(uid)[-1].id
    decision_pack = next(f for f in folders if "review" not in f)
    # both kept; the review counts in the study's session (issue 13), so its pack names the session's new state
    (review_pack,) = [f for f in folders if f.endswith(f"-review-{review_id}")]
    assert review_pack.split("-session-")[0] == decision_pack.split("-session-")[0]
    pack = site["data"] / "evidence" / uid / review_pack
    evidence = json.loads((pack / "evidence.json").read_text())
    assert evidence["review"]["outcome"] == "supports_76377" and evidence["review"]["reviewer"] == "Coder One"
    assert "review" not in json.loads((site["data"] / "evidence" / uid / decision_pack / "evidence.json").read_text())
    key = load_key(site["data"] / "keys")
    assert verify_pack(pack, trusted=[key.fingerprint], storage_root=site["data"] / "storage").ok
    served = client.get(f"/ui/studies/{uid}/evidence.zip")
    assert review_pack in served.headers["content-disposition"]  # the newer one
    pdftotext = require_peer("pdftotext")
    text = subprocess.run([pdftotext, str(pack / "report.pdf"), "-"], capture_output=True, text=True, check=True)
    assert "Coder's review" in text.stdout and "Vitrea VR per the report" in text.stdout
    assert uid not in worklist_uids(client.get("/ui/worklist").text)


def test_register_a_device_from_the_inventory(site: dict) -> None:
    client = signed_in(site, "admin")
    uid = site["expected"]["unknown_station_3d"]["study_instance_uid"]
    page = client.get("/ui/equipment").text
    form = {
        "csrf": csrf_of(page),
        "station_name": "PC-UNKNOWN",
        "device_serial_number": "A-0001",
        "role": "nonsense",
    }
    refused = client.post("/ui/equipment/register", data=form)
    assert refused.status_code == 422 and "role must be one of" in refused.text
    form.update(role="independent_workstation", note="3D lab", valid_from="2020-01-01")
    done = client.post("/ui/equipment/register", data=form)
    assert done.status_code == 200
    changes = re.search(r'<section class="card changes" id="changes">(.*?)</section>', done.text, re.S)
    assert changes and uid in changes[1] and "Needs a coder&#39;s review" in changes[1]
    assert "Supports 76377" in changes[1]
    api = TestClient(site["app"])
    study = api.get(f"/studies/{uid}", headers=auth(site["tokens"]["admin"])).json()
    assert study["outcome"] == "supports_76377"
    devices = api.get("/devices", headers=auth(site["tokens"]["admin"])).json()
    assert any(d["station_name"] == "PC-UNKNOWN" and d["role"] == "independent_workstation" for d in devices)
    items = api.get("/equipment", headers=auth(site["tokens"]["admin"])).json()["items"]
    acme = next(i for i in items if i["station_name"] == "PC-UNKNOWN")
    assert acme["held_studies"] == [] and acme["settled_by"] == ["registry entry"]
    assert uid not in worklist_uids(client.get("/ui/worklist").text)
    events = Access(site["receiver"].engine).audit_events(study_uid=uid, event="Procedure Record", limit=5)
    assert any(e.detail.get("after") == "device registered" for e in events)


# ---------------------------------------------------------------- operations (issue 11)


def test_dashboard_shows_what_waits_and_the_evidence_returns(site: dict) -> None:
    receiver = site["receiver"]
    uid = site["expected"]["ct_console_mip"]["study_instance_uid"]
    other = site["expected"]["ct_workstation_vr_sc"]["study_instance_uid"]
    for study in (uid, other):
        receiver.returns.enqueue(study, receiver.index.get_study(study).current_decision_id, "PACS@127.0.0.1:104")
    failed = next(r for r in receiver.returns.due() if r.study_instance_uid == uid)
    assert receiver.returns.claim(failed.id, lease=60) is not None
    receiver.returns.give_up(failed.id, error="AssociationRejected: PACS@127.0.0.1:104 rejected the association")
    try:
        client = signed_in(site, "reader")
        waiting_for_a_coder = len(worklist_uids(client.get("/ui/worklist").text))  # other tests review some
        page = client.get("/ui/dashboard").text
        number = {
            name: re.search(rf'id="{name}">(\d+)<', page)
            for name in ("backlog", "pending", "quarantined", "returns-waiting", "returns-failed")
        }
        assert {name: int(found[1]) for name, found in number.items() if found} == {
            "backlog": waiting_for_a_coder,
            "pending": 0,
            "quarantined": 1,
            "returns-waiting": 1,
            "returns-failed": 1,
        }
        rows = re.search(r'<table class="list" id="returns-list">(.*?)</table>', page, re.S)
        assert rows is not None
        failed_row, waiting_row = re.findall(r"<tr class=.*?</tr>", rows[1], re.S)  # failed first
        assert uid in failed_row and "<strong>AssociationRejected</strong>" in failed_row and "failed" in failed_row
        assert other in waiting_row and "pending" in waiting_row and "UTC" in waiting_row  # its next attempt
    finally:  # the other tests see no returns
        receiver.returns.retry_failed()
        for record in receiver.returns.due():
            if receiver.returns.claim(record.id, lease=60):
                receiver.returns.set_aside(record.id)


def test_sign_out_ends_the_session_on_the_server(site: dict) -> None:
    client = signed_in(site, "reader")
    copied = client.cookies[COOKIE]
    csrf = csrf_of(client.get("/ui/worklist").text)
    assert client.post("/ui/logout", data={"csrf": csrf}, follow_redirects=False).status_code == 303
    thief = TestClient(site["app"], cookies={COOKIE: copied})
    refused = thief.get("/ui/worklist", follow_redirects=False)
    assert refused.status_code == 303 and refused.headers["location"] == "/ui/login"
    access = Access(site["receiver"].engine)
    assert any(e.detail.get("signed_out") for e in access.audit_events(event="User Authentication", limit=20))
    alerts = access.audit_events(event="Security Alert", limit=20)
    assert any(e.detail.get("reason") == "session ended: signed out" for e in alerts)
    other = signed_in(site, "reader")  # another session of the same token is untouched
    assert other.get("/ui/worklist", follow_redirects=False).status_code == 200


def test_origin_behind_a_tls_proxy_only_with_forwarded_allow_ips(tmp_path: Path, receiver_factory) -> None:
    """A real `serve` (uvicorn): with `--forwarded-allow-ip 127.0.0.1` a sign-in posted through an https proxy
    (X-Forwarded-Proto https, Origin https://host) passes, its cookie is Secure and the audit names the client
    the proxy forwarded for; without the setting the same headers are ignored and the https Origin refused."""
    import httpx

    from dicomcheck.store.engine import make_engine

    from .peers import free_port, wait_for

    def serve(name: str, *extra: str) -> tuple[str, str]:
        http_port = free_port()
        server = receiver_factory("--http-port", str(http_port), *extra, data=tmp_path / name)
        base = f"http://127.0.0.1:{http_port}"
        wait_for(lambda: _answers(httpx, f"{base}/healthz"), timeout=30)
        engine = make_engine(f"sqlite:///{server.data / 'index.sqlite3'}")
        token = Access(engine).create_token("coder-behind-proxy", "reader")
        engine.dispose()
        return base, token

    proxied = {"X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.7"}
    base, token = serve("trusting", "--forwarded-allow-ip", "127.0.0.1")
    host = base.removeprefix("http://")
    passed = httpx.post(f"{base}/ui/login", data={"token": token}, headers={**proxied, "Origin": f"https://{host}"})
    assert passed.status_code == 303, passed.text
    cookie = passed.headers["set-cookie"].lower()
    assert "; secure" in cookie and "httponly" in cookie
    engine = make_engine(f"sqlite:///{tmp_path / 'trusting' / 'index.sqlite3'}")
    (event,) = [e for e in Access(engine).audit_events(event="User Authentication", limit=5) if e.outcome == 0]
    engine.dispose()
    assert event.client_address == "203.0.113.7"
    plain = httpx.post(f"{base}/ui/login", data={"token": token}, headers={"Origin": f"http://{host}"})
    assert plain.status_code == 303 and "secure" not in plain.headers["set-cookie"].lower()

    base, token = serve("default")
    host = base.removeprefix("http://")
    refused = httpx.post(f"{base}/ui/login", data={"token": token}, headers={**proxied, "Origin": f"https://{host}"})
    assert refused.status_code == 403 and "set-cookie" not in refused.headers


def _answers(httpx_module, url: str) -> bool:
    try:
        return httpx_module.get(url, timeout=2).status_code in (200, 503)
    except httpx_module.HTTPError:
        return False
