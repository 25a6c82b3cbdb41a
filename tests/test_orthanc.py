"""Orthanc acting as the PACS: a study uploaded to Orthanc and pushed to dicomcheck through Orthanc's
own C-STORE (its REST ``/modalities/.../store``) arrives whole and is decided."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from .dicomfiles import write_study
from .peers import free_port, peer_env, require_peer, wait_for


def orthanc_program() -> str:
    """Debian installs Orthanc in /usr/sbin, which is not on every user's PATH."""
    found = shutil.which("Orthanc") or shutil.which("Orthanc", path="/usr/sbin:/usr/local/sbin")
    if found is None:
        require_peer("Orthanc")  # skips on a laptop, fails under CI=true
    return found  # type: ignore[return-value]


@dataclass
class Orthanc:
    proc: subprocess.Popen
    http_port: int
    log_path: Path

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.http_port}{path}"

    def request(self, method: str, path: str, body: bytes | None = None, timeout: float = 120.0):
        request = urllib.request.Request(self.url(path), data=body, method=method)
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - loopback test server
            return json.loads(response.read() or b"null")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_orthanc(folder: Path, *, modalities: dict[str, list]) -> Orthanc:
    """Our own Orthanc (shared/reference/peers.md): loopback HTTP, free port, storage in ``folder``.

    Its DICOM server is off: here Orthanc is only the sender (C-STORE SCU), so nothing listens on
    the network but its loopback-only HTTP API.
    """
    folder.mkdir(parents=True)
    http_port = free_port()
    config = {
        "Name": "dicomcheck-test", "DicomAet": "ORTHANC", "DicomPort": free_port(), "DicomServerEnabled": False,
        "HttpPort": http_port, "RemoteAccessAllowed": False, "AuthenticationEnabled": False, "Plugins": [],
        "StorageDirectory": str(folder / "storage"), "IndexDirectory": str(folder / "index"),
        "DicomModalities": modalities, "DicomScuTimeout": 30,
    }
    (folder / "orthanc.json").write_text(json.dumps(config))
    log_path = folder / "orthanc.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen([orthanc_program(), str(folder / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT, env=peer_env())
    orthanc = Orthanc(proc, http_port, log_path)

    def up() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"Orthanc exited {proc.returncode}:\n{orthanc.log()[-3000:]}")
        try:
            return orthanc.request("GET", "/system", timeout=2)["DicomAet"] == "ORTHANC"
        except OSError:
            return False

    try:
        wait_for(up, timeout=60)
    except BaseException:
        orthanc.stop()
        raise
    return orthanc


def rows(db: Path, sql: str, *params):
    with sqlite3.connect(db) as connection:
        return connection.execute(sql, params).fetchall()


def test_study_pushed_by_orthanc_arrives_whole_and_is_decided(receiver_factory, tmp_path):
    orthanc_program()
    study, paths = write_study(tmp_path / "study", acquisition=16, mip=4)  # 20 instances, 4 of a console MIP
    server = receiver_factory("--allow-caller", "ORTHANC", stable_after=1.0)
    orthanc = start_orthanc(tmp_path / "orthanc", modalities={"dicomcheck": [server.ae_title, "127.0.0.1", server.port]})
    try:
        uploaded = [orthanc.request("POST", "/instances", path.read_bytes()) for path in paths]
        assert {u["Status"] for u in uploaded} == {"Success"}
        (orthanc_study,) = {u["ParentStudy"] for u in uploaded}
        assert orthanc.request("GET", "/statistics")["CountInstances"] == len(paths)
        pushed = orthanc.request("POST", "/modalities/dicomcheck/store", orthanc_study.encode())
        assert pushed["FailedInstancesCount"] == 0 and pushed["InstancesCount"] == len(paths), pushed
    finally:
        orthanc.stop()
    assert rows(server.db, "SELECT instance_count FROM study WHERE study_instance_uid = ?", study) == [(len(paths),)]
    assert rows(server.db, "SELECT count(*) FROM instance") == [(len(paths),)]
    receipts = rows(server.db, "SELECT calling_ae, called_ae, peer_address, duplicate FROM receipt")
    assert len(receipts) == len(paths) and set(receipts) == {("ORTHANC", server.ae_title, "127.0.0.1", 0)}
    (association,) = rows(server.db, "SELECT calling_ae, status, instances_received, implementation_version_name FROM association")
    assert association[:3] == ("ORTHANC", "released", len(paths)) and association[3]  # Orthanc 1.10 names DCMTK here
    for (path,) in rows(server.db, "SELECT path FROM instance"):
        assert (server.data / "storage" / path).is_file()
    decision = wait_for(lambda: rows(server.db, "SELECT outcome, code, instance_count FROM decision WHERE study_instance_uid = ?", study))
    assert decision == [("supports_76376", "76376", len(paths))]
