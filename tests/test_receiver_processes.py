"""Several receiver processes behind one DICOM port (``dicomcheck serve --processes N``, ``scp/workers.py``)."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, Verification

from .dicomfiles import ct_dataset
from .peers import free_port, wait_for

CALLING = "PROCTEST"


class Served:
    """``dicomcheck serve --processes N``, started as a user would; ready once every receiver process is.

    (Not ``tests.peers.start_receiver``: its readiness probe is a bare TCP connect, which a receiver
    process holds as an unanswered association until the ACSE timeout, skewing least-connections.)
    """

    def __init__(self, data: Path, processes: int) -> None:
        self.data, self.port, self.processes = data, free_port(), processes
        data.mkdir(parents=True)
        self.log_path = data.parent / f"{data.name}.log"
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "dicomcheck.cli",
                    "serve",
                    "--no-api",
                    "--data",
                    str(data),
                    "--dicom-port",
                    str(self.port),
                    "--bind",
                    "127.0.0.1",
                    "--allow-caller",
                    CALLING,
                    "--stable-after",
                    "1",
                    "--processes",
                    str(processes),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            wait_for(lambda: self._exited() or "listening on" in self.log(), timeout=120)
            wait_for(lambda: len(self.workers()) == processes, timeout=30)
        except BaseException:
            self.stop()
            raise

    def _exited(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"receiver exited {self.proc.returncode}:\n{self.log()}")
        return False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def workers(self) -> list[int]:
        pids = []
        for task in Path(f"/proc/{self.proc.pid}/task").glob("*"):
            try:
                pids += [int(p) for p in (task / "children").read_text().split()]
            except OSError:
                pass
        return pids

    def rows(self, sql: str, *params):
        with sqlite3.connect(self.data / "index.sqlite3") as db:
            return db.execute(sql, params).fetchall()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                for pid in self.workers():
                    os.kill(pid, signal.SIGKILL)
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """``served(n)``: the running ``serve --processes n`` of this module, started at the first call (one
    start for the module's tests); a test that stops it leaves the next one a new one."""
    started: list[Served] = []

    def running(processes: int) -> Served:
        for server in started:
            if server.processes == processes and server.proc.poll() is None:
                return server
        server = Served(tmp_path_factory.mktemp("served") / "data", processes)
        started.append(server)
        return server

    yield running
    for server in started:
        server.stop()


def associate(server: Served):
    ae = AE(ae_title=CALLING)
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", server.port, ae_title="DICOMCHECK")
    assert assoc.is_established
    return assoc


def test_concurrent_associations_go_to_different_processes_and_the_study_is_decided(served):
    server = served(3)
    assert server.rows("SELECT count(*) FROM association") == [(0,)]  # a new server: no process serves one yet
    study = generate_uid()
    acquisition, mip = generate_uid(), generate_uid()
    associations = [associate(server) for _ in range(3)]  # open together: one per process (least connections)
    try:
        for number, assoc in enumerate(associations):
            for _ in range(3):
                if number == 2:  # a console MIP series on the third association
                    ds = ct_dataset(
                        study,
                        mip,
                        "DERIVED\\PRIMARY\\AXIAL\\CT_SOM5 MIP",
                        SeriesDescription="MIP cor",
                        SeriesNumber=100,
                    )
                else:
                    ds = ct_dataset(study, acquisition, SeriesDescription="Abdomen 1.0")
                assert assoc.send_c_store(ds).Status == 0
    finally:
        for assoc in associations:
            assoc.release()
    nodes = wait_for(
        lambda: (
            (r := server.rows("SELECT node FROM association WHERE calling_ae = ? AND instances_received = 3", CALLING))
            and len(r) == 3
            and r
        )
    )  # recorded when each association ends
    assert len({n for (n,) in nodes}) == 3, nodes  # three receiver processes
    assert server.rows("SELECT instance_count FROM study") == [(9,)]
    decision = wait_for(lambda: server.rows("SELECT outcome, instance_count FROM decision"))
    assert decision == [("supports_76376", 9)]
    probe = associate(server)  # a later association is served too, and its end recorded
    assert probe.send_c_echo().Status == 0
    probe.release()
    wait_for(lambda: server.rows("SELECT status, count(*) FROM association GROUP BY status") == [("released", 4)])


def test_a_killed_receiver_process_is_replaced_and_shutdown_stops_all(served):
    server = served(3)  # the module's server (this test ends it)
    before = server.workers()
    os.kill(before[0], signal.SIGKILL)
    wait_for(lambda: len(server.workers()) == len(before) and before[0] not in server.workers(), timeout=60)
    wait_for(lambda: "exited with" in server.log())
    associations = []
    deadline = time.monotonic() + 60
    while len(associations) < 3:  # the new process may take a moment to be ready; all must serve
        assoc = associate(server)
        assert assoc.send_c_store(ct_dataset(generate_uid(), generate_uid())).Status == 0
        associations.append(assoc)
        assert time.monotonic() < deadline
    for assoc in associations:
        assoc.release()
    workers = server.workers()
    server.stop()
    assert server.proc.returncode == 0
    for pid in workers:
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text().lower()
