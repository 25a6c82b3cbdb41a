"""Orthanc acting as the PACS: a study uploaded to Orthanc and pushed to dicomcheck through Orthanc's
own C-STORE (its REST ``/modalities/.../store``) arrives whole and is decided."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from .dicomfiles import write_study
from .peers import require_peer, start_orthanc, wait_for


def rows(db: Path, sql: str, *params):
    with sqlite3.connect(db) as connection:
        return connection.execute(sql, params).fetchall()


@pytest.mark.peer
@pytest.mark.slow
def test_study_pushed_by_orthanc_arrives_whole_and_is_decided(receiver_factory, tmp_path):
    require_peer("Orthanc")
    study, paths = write_study(tmp_path / "study", acquisition=16, mip=4)  # 20 instances, 4 of a console MIP
    server = receiver_factory("--allow-caller", "ORTHANC", stable_after=1.0)
    orthanc = start_orthanc(
        tmp_path / "orthanc", {"dicomcheck": [server.ae_title, "127.0.0.1", server.port]}, dicom_server=False
    )
    try:
        uploaded = [orthanc.post("/instances", path.read_bytes()) for path in paths]
        assert {u["Status"] for u in uploaded} == {"Success"}
        (orthanc_study,) = {u["ParentStudy"] for u in uploaded}
        assert orthanc.get("/statistics")["CountInstances"] == len(paths)
        pushed = orthanc.post("/modalities/dicomcheck/store", orthanc_study.encode())
        assert pushed["FailedInstancesCount"] == 0 and pushed["InstancesCount"] == len(paths), pushed
    finally:
        orthanc.stop()
    assert rows(server.db, "SELECT instance_count FROM study WHERE study_instance_uid = ?", study) == [(len(paths),)]
    assert rows(server.db, "SELECT count(*) FROM instance") == [(len(paths),)]
    receipts = rows(server.db, "SELECT calling_ae, called_ae, peer_address, duplicate FROM receipt")
    assert len(receipts) == len(paths) and set(receipts) == {("ORTHANC", server.ae_title, "127.0.0.1", 0)}
    (association,) = rows(
        server.db, "SELECT calling_ae, status, instances_received, implementation_version_name FROM association"
    )
    assert association[:3] == ("ORTHANC", "released", len(paths)) and association[3]  # Orthanc 1.10 names DCMTK here
    for (path,) in rows(server.db, "SELECT path FROM instance"):
        assert (server.data / "storage" / path).is_file()
    decision = wait_for(
        lambda: rows(
            server.db, "SELECT outcome, code, instance_count FROM decision WHERE study_instance_uid = ?", study
        )
    )
    assert decision == [("supports_76376", "76376", len(paths))]
