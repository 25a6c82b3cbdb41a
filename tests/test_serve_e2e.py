"""End to end as deployed: DCMTK storescu sends the fixture studies to `dicomcheck serve`; billing
looks them up over HTTP. Then two receivers share one PostgreSQL index."""

from __future__ import annotations

import ctypes
import json
import signal
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest
import sqlalchemy
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage

from .conftest import drop_postgres_schema, postgres_schema_url
from .dicomfiles import ct_dataset
from .peers import free_port, peer_env, require_peer, start_api_only, wait_for


def token(data: Path, name: str = "billing", role: str = "reader", database_url: str | None = None) -> str:
    args = [sys.executable, "-m", "dicomcheck.cli", "token", "create", name, "--role", role, "--data", str(data)]
    if database_url:
        args += ["--database-url", database_url]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


@pytest.mark.peer
@pytest.mark.slow
def test_fixture_studies_through_storescu_and_the_api(receiver_factory, fixtures_output, tmp_path):
    require_peer("storescu")
    http_port = free_port()
    data = tmp_path / "data"
    server = receiver_factory("--http-port", str(http_port), "--allow-caller", "MODALITY", data=data, stable_after=1.0)
    wait_for(lambda: "API listening" in server.log())
    cases = [json.loads(p.read_text()) for p in sorted(fixtures_output.glob("*/expected.json"))]
    for case in cases:
        files = sorted(str(p) for p in (fixtures_output / case["case"]).rglob("*.dcm"))
        proc = subprocess.run(
            ["storescu", "-aet", "MODALITY", "-aec", "DICOMCHECK", "-R", "127.0.0.1", str(server.port), *files],
            capture_output=True,
            text=True,
            env=peer_env(),
            timeout=300,
        )
        assert proc.returncode == 0, (case["case"], proc.stderr[-2000:])
    bearer = {"Authorization": f"Bearer {token(data)}"}
    with httpx.Client(base_url=f"http://127.0.0.1:{http_port}", headers=bearer, timeout=30) as client:

        def all_decided() -> bool:
            return all(
                client.get(f"/studies/{c['study_instance_uid']}").json().get("status") == "decided" for c in cases
            )

        wait_for(all_decided, timeout=120, interval=0.5)
        for case in cases:
            expected = case.get("without_devices") or case  # served without a registry file
            study = client.get(f"/studies/{case['study_instance_uid']}").json()
            assert (case["case"], study["outcome"], study["code"]) == (
                case["case"],
                expected["outcome"],
                expected.get("code"),
            )
            page = client.get("/studies", params={"accession": case["accession_number"]}).json()
            assert [(i["study_instance_uid"], i["outcome"]) for i in page["items"]] == [
                (case["study_instance_uid"], expected["outcome"])
            ]
        assert client.get("/healthz").json()["status"] == "ok"


def _send_half(port: int, datasets: list, errors: list) -> None:
    try:
        ae = AE(ae_title="HALF")
        ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
        assoc = ae.associate("127.0.0.1", port, ae_title="DICOMCHECK")
        assert assoc.is_established
        for ds in datasets:
            status = assoc.send_c_store(ds)
            if status.Status != 0:
                errors.append(status.Status)
        assoc.release()
    except Exception as exc:  # noqa: BLE001 - reported by the main thread
        errors.append(repr(exc))


@pytest.mark.peer
@pytest.mark.slow
def test_two_receivers_on_one_postgresql_index(receiver_factory, tmp_path):
    name = f"dc_two_{generate_uid()[-10:].replace('.', '')}"
    url = postgres_schema_url(name)
    try:
        env = {**peer_env(), "DICOMCHECK_DATABASE_URL": url}
        shared_storage = tmp_path / "shared"  # one storage folder, as on a shared volume
        first = receiver_factory("--no-api", data=shared_storage, env=env, stable_after=2.0)
        second = receiver_factory("--no-api", data=shared_storage, env=env, stable_after=2.0)
        study, series = generate_uid(), generate_uid()
        datasets = [ct_dataset(study, series, InstanceNumber=i + 1) for i in range(400)]
        errors: list = []
        threads = [
            threading.Thread(target=_send_half, args=(server.port, datasets[i::2], errors))
            for i, server in enumerate((first, second))
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=600)
        assert errors == []
        engine = sqlalchemy.create_engine(url)
        with engine.connect() as connection:

            def scalar(sql: str):
                return connection.execute(sqlalchemy.text(sql)).scalar()

            wait_for(
                lambda: (
                    scalar("SELECT count(*) FROM decision") >= 1
                    and scalar("SELECT count(*) FROM study WHERE needs_decision") == 0
                ),
                timeout=60,
            )
            assert scalar("SELECT count(*) FROM study") == 1
            assert scalar("SELECT instance_count FROM study") == 400
            assert (
                scalar("SELECT count(DISTINCT sop_instance_uid) FROM instance")
                == scalar("SELECT count(*) FROM instance")
                == 400
            )
            assert scalar("SELECT count(*) FROM decision") == 1
            assert scalar("SELECT instance_count FROM decision") == 400
            nodes = (
                connection.execute(
                    sqlalchemy.text(
                        "SELECT DISTINCT a.node FROM receipt r JOIN association a ON a.id = r.association_id"
                    )
                )
                .scalars()
                .all()
            )
            assert len(nodes) == 2  # both receivers took part
        engine.dispose()
    finally:
        drop_postgres_schema(name)


def _cli(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dicomcheck.cli", *map(str, args)], capture_output=True, text=True, env=env, timeout=60
    )


def _token_row(listing: str, name: str) -> list[str]:
    """The cells of token ``name``'s row in the table `dicomcheck token list` prints."""
    rows = [[cell.strip() for cell in line.split("│")[1:-1]] for line in listing.splitlines() if line.startswith("│")]
    (row,) = [row for row in rows if row[0] == name]
    return row


def test_token_cli_create_list_revoke(upgraded_index):
    data = upgraded_index  # made by `db upgrade`: token commands use an index, never create one
    secrets = {name: token(data, name, role) for name, role in (("ris", "reader"), ("ops", "admin"))}
    for secret in secrets.values():
        assert secret.startswith("dck_") and len(secret) > 40
    listed = _cli("token", "list", "--data", data, env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"})
    assert listed.returncode == 0, listed.stderr
    assert _token_row(listed.stdout, "ris")[:2] == ["ris", "reader"]
    assert _token_row(listed.stdout, "ops")[:2] == ["ops", "admin"]
    assert not any(secret in listed.stdout for secret in secrets.values())
    for name in secrets:
        revoked = _cli("token", "revoke", name, "--data", data)
        assert revoked.returncode == 0 and revoked.stdout == f"revoked {name}\n", revoked.stderr
    again = _cli("token", "revoke", "ris", "--data", data)
    assert again.returncode == 1 and "no active token named 'ris'" in again.stderr.replace("\n", " ")


def test_an_auditor_token_needs_an_expiry(upgraded_index):
    bad = _cli("token", "create", "aud", "--role", "auditor", "--data", upgraded_index)
    assert bad.returncode == 1 and "auditor token needs --expires" in bad.stderr.replace("\n", " ").replace("│", "")


def test_sigterm_caught_by_any_thread_stops_serve_cleanly(receiver_factory):
    """The kernel gives a process's SIGTERM to any of its threads: here, on purpose, not the main one.
    `serve` must still stop at once and cleanly (before, it slept on until the service manager's SIGKILL)."""
    server = receiver_factory("--allow-caller", "MODALITY")
    pid = server.proc.pid
    others = sorted(int(task.name) for task in Path(f"/proc/{pid}/task").iterdir() if int(task.name) != pid)
    assert others, "serve runs its receiver on threads besides the main one"
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.tgkill(pid, others[-1], signal.SIGTERM) == 0, ctypes.get_errno()
    assert server.proc.wait(timeout=60) == 0, server.log()  # a missed signal hangs here, and fails


@pytest.mark.parametrize("http_workers", ["1", "2"])
def test_sigterm_right_after_the_announcement_stops_serve_cleanly(tmp_path: Path, http_workers: str):
    """A service manager may stop `serve` the moment it says it listens: the signal is caught from before the
    announcement, also while the API is still starting (its app built, uvicorn or its workers not yet running),
    and `serve` ends cleanly (exit 0), rather than by the signal's default action or never."""
    env = {"DICOMCHECK_HTTP_WORKERS": http_workers}
    proc = start_api_only(tmp_path / "data", free_port(), env=env, stdout=subprocess.PIPE)
    try:
        seen = []
        assert proc.stdout is not None
        for line in proc.stdout:
            seen.append(line)
            if "API listening" in line:
                proc.send_signal(signal.SIGTERM)
                break
        assert proc.wait(timeout=60) == 0, "".join(seen) + proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
