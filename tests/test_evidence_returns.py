"""Evidence returns to the PACS (issue 11): queued in the index by each decision, sent by the receiver, retried
with backoff while the PACS is down or refuses, given up after the attempts run out, superseded by a newer
decision, and never sent twice by two receivers sharing the index. The PACS is a real DCMTK ``storescp`` over
loopback; the backoff is made short through the settings, never slept through."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

from dicomcheck.config import Settings
from dicomcheck.ingest import Receiver, retry_delay
from dicomcheck.store.returns import EvidenceReturnRecord, ReturnState

from .conftest import run_cli
from .peers import free_port, peer_env, require_peer, stop_process, wait_for
from .test_api import ingest_case, settle_all

CASE = "ct_console_mip"
OTHER_CASES = ("ct_workstation_vr_sc", "unknown_station_3d")


class StoreScp:
    """DCMTK's storescp on a free port, writing what it receives into ``folder``."""

    def __init__(self, folder: Path, port: int, *extra: str) -> None:
        self.folder = folder
        self.port = port
        folder.mkdir(parents=True, exist_ok=True)
        self.log = (folder.parent / f"storescp-{port}.log").open("ab")
        self.proc = subprocess.Popen(
            [require_peer("storescp"), "-aet", "PACS", "-od", str(folder), *extra, str(port)],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=peer_env(),
        )
        wait_for(self._listening, timeout=20)

    def _listening(self) -> bool:
        import socket

        assert self.proc.poll() is None, "storescp exited"
        with socket.socket() as sock:
            return sock.connect_ex(("127.0.0.1", self.port)) == 0

    def received(self) -> set[str]:
        """SOP Instance UIDs of the files stored so far."""
        return {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in self.folder.iterdir()}

    def stop(self) -> None:
        stop_process(self.proc, timeout=10)
        self.log.close()


@pytest.fixture()
def pacs(tmp_path: Path) -> Iterator[list[StoreScp]]:
    """Started storescp processes, all stopped at the end."""
    started: list[StoreScp] = []
    yield started
    for scp in started:
        scp.stop()


def receiver_for(data: Path, port: int, index_url: str | None = None, node: str | None = None, **settings) -> Receiver:
    return Receiver(
        Settings(
            data=data,
            database_url=index_url,
            stable_after=0.01,
            evidence_destination=f"PACS@127.0.0.1:{port}",
            **settings,
        ),
        node=node,
    )


def only_return(receiver: Receiver, study_uid: str) -> EvidenceReturnRecord:
    (found,) = [r for r in receiver.returns.of_study(study_uid) if r.state is not ReturnState.SUPERSEDED]
    return found


def pack_objects(data: Path, study_uid: str, decision_id: int) -> set[str]:
    """SOP Instance UIDs of the KOS and SR in the decision's pack."""
    (folder,) = (data / "evidence" / study_uid).glob(f"decision-{decision_id}*")
    return {
        str(pydicom.dcmread(folder / name, stop_before_pixels=True).SOPInstanceUID) for name in ("kos.dcm", "sr.dcm")
    }


def later_image(fixtures_output: Path, folder: Path, case: str = CASE) -> Path:
    """One more image of the case's study (a new SOP Instance UID): the study is decided again."""
    source = sorted((fixtures_output / case).rglob("*.dcm"))[-1]
    ds = pydicom.dcmread(source)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    folder.mkdir(parents=True, exist_ok=True)
    ds.save_as(folder / "later.dcm")
    return folder


def test_backoff_doubles_up_to_the_cap_with_jitter() -> None:
    waits = [retry_delay(n, base=30, cap=3600) for n in range(1, 12)]
    for n, wait in enumerate(waits[:7], start=1):
        assert 0.8 * 30 * 2 ** (n - 1) <= wait <= 30 * 2 ** (n - 1)
    assert all(0.8 * 3600 <= wait <= 3600 for wait in waits[7:])
    assert retry_delay(10_000, base=30, cap=3600) <= 3600  # no overflow after very many attempts


def study_of(fixtures_output: Path, case: str) -> str:
    return json.loads((fixtures_output / case / "expected.json").read_text())["study_instance_uid"]


def current_decision(receiver: Receiver, study_uid: str) -> int:
    study = receiver.index.get_study(study_uid)
    assert study is not None and study.current_decision_id is not None
    return study.current_decision_id


def test_a_closed_port_is_retried_and_only_the_newest_decisions_pack_arrives(
    tmp_path: Path, fixtures_output: Path, pacs: list[StoreScp]
) -> None:
    port = free_port()  # nothing listens there yet
    receiver = receiver_for(tmp_path / "data", port, evidence_retry_base=2.0)
    try:
        ingest_case(receiver, fixtures_output / CASE)
        settle_all(receiver)
        study_uid = study_of(fixtures_output, CASE)
        first_decision = current_decision(receiver, study_uid)
        queued = only_return(receiver, study_uid)
        assert (queued.state, queued.attempts, queued.decision_id) == (ReturnState.PENDING, 0, first_decision)

        # the PACS is down: the decision stands, the return waits with its error and a later attempt
        before = dt.datetime.now(dt.UTC)
        assert receiver.send_due_returns() == 1
        waiting = only_return(receiver, study_uid)
        assert (waiting.state, waiting.attempts) == (ReturnState.PENDING, 1)
        assert waiting.next_attempt_at >= before + dt.timedelta(seconds=1.6)  # 2 s less up to 20 % jitter
        assert waiting.last_error is not None and waiting.last_error.startswith("SendError: no association")
        assert receiver.send_due_returns() == 0  # not due yet

        # a later image: the study is decided again; its return supersedes the one still waiting
        ingest_case(receiver, later_image(fixtures_output, tmp_path / "later"))
        settle_all(receiver)
        newest = current_decision(receiver, study_uid)
        assert newest != first_decision
        states = {r.decision_id: r.state for r in receiver.returns.of_study(study_uid)}
        assert states == {first_decision: ReturnState.SUPERSEDED, newest: ReturnState.PENDING}

        # the PACS comes up: the newest decision's KOS and SR arrive there, once
        pacs.append(StoreScp(tmp_path / "pacs", port))
        wait_for(
            lambda: receiver.send_due_returns() >= 0 and only_return(receiver, study_uid).state is ReturnState.SENT
        )
        sent = only_return(receiver, study_uid)
        assert (sent.decision_id, sent.attempts, sent.last_error) == (newest, 1, None) and sent.sent_at is not None
        assert pacs[0].received() == pack_objects(tmp_path / "data", study_uid, newest)
        assert receiver.send_due_returns() == 0
    finally:
        receiver.close()


def test_a_refusing_pacs_is_given_up_after_the_attempts_and_retried_by_hand(
    tmp_path: Path, fixtures_output: Path, pacs: list[StoreScp]
) -> None:
    port = free_port()
    pacs.append(StoreScp(tmp_path / "refusing", port, "--refuse", "--fork"))
    data = tmp_path / "data"
    receiver = receiver_for(data, port, evidence_retry_base=0.05, evidence_retry_max_attempts=2)
    try:
        ingest_case(receiver, fixtures_output / CASE)
        settle_all(receiver)
        study_uid = study_of(fixtures_output, CASE)
        assert receiver.send_due_returns() == 1
        first = only_return(receiver, study_uid)
        assert (first.state, first.attempts) == (ReturnState.PENDING, 1)
        # storescp --refuse answers A-ASSOCIATE-RJ, or at times closes the connection before pynetdicom reads it
        refusals = ("AssociationRejected", "SendError")
        assert first.last_error is not None and first.last_error.split(":")[0] in refusals
        wait_for(lambda: receiver.send_due_returns() >= 0 and only_return(receiver, study_uid).attempts == 2)
        failed = only_return(receiver, study_uid)
        assert failed.state is ReturnState.FAILED and failed.last_error is not None
        assert failed.last_error.split(":")[0] in refusals
        assert receiver.send_due_returns() == 0  # given up: no more attempts

        listed = run_cli("evidence", "returns", "--data", data, check=True).stdout
        assert f"failed   {study_uid}" in listed and "2 attempt(s)" in listed and failed.last_error in listed
        assert "0 waiting, 1 failed, 0 sent" in listed

        # the PACS accepts again; an administrator retries the failed return
        pacs.pop().stop()
        pacs.append(StoreScp(tmp_path / "pacs", port))
        retried = run_cli("evidence", "returns", "--retry", "--data", data, check=True).stdout
        assert "queued again: 1 failed evidence return(s)" in retried and "1 waiting, 0 failed" in retried
        assert only_return(receiver, study_uid).attempts == 0
        assert receiver.send_due_returns() == 1
        assert only_return(receiver, study_uid).state is ReturnState.SENT
        assert pacs[0].received() == pack_objects(data, study_uid, current_decision(receiver, study_uid))
    finally:
        receiver.close()


def test_an_unsendable_pack_fails_at_once_and_a_failure_status_is_retried(
    tmp_path: Path, fixtures_output: Path, pacs: list[StoreScp]
) -> None:
    """A pack whose KOS is no KOS (tampered) can never be sent: failed at the first attempt, with the reason.
    A C-STORE answered with a failure status counts as a failed attempt (a pynetdicom SCP answering 0xA700)."""
    from pynetdicom import AE, evt
    from pynetdicom.sop_class import ComprehensiveSRStorage, EnhancedSRStorage, KeyObjectSelectionDocumentStorage

    scp_ae = AE(ae_title="PACS")
    for sop_class in (KeyObjectSelectionDocumentStorage, ComprehensiveSRStorage, EnhancedSRStorage):
        scp_ae.add_supported_context(sop_class)
    port = free_port()
    server = scp_ae.start_server(
        ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, lambda event: 0xA700)]
    )
    receiver = receiver_for(tmp_path / "data", port, evidence_retry_base=60.0)
    try:
        for case in (CASE, OTHER_CASES[0]):
            ingest_case(receiver, fixtures_output / case)
        settle_all(receiver)
        tampered_uid, refused_uid = study_of(fixtures_output, CASE), study_of(fixtures_output, OTHER_CASES[0])
        from dicomcheck.evidence.service import ensure_pack

        folder = ensure_pack(receiver, tampered_uid)
        image = sorted((fixtures_output / CASE).rglob("*.dcm"))[0]
        (folder / "kos.dcm").write_bytes(image.read_bytes())

        assert receiver.send_due_returns() == 2
        tampered = only_return(receiver, tampered_uid)
        assert (tampered.state, tampered.attempts) == (ReturnState.FAILED, 1)
        assert tampered.last_error is not None and tampered.last_error.startswith("NotSendable: ")
        assert "is not a KOS or Comprehensive" in tampered.last_error
        refused = only_return(receiver, refused_uid)
        assert (refused.state, refused.attempts) == (ReturnState.PENDING, 1)
        assert refused.last_error == "StoreRefused: C-STORE status 0xA700, 0xA700"
    finally:
        server.shutdown()
        receiver.close()


def test_two_receivers_sharing_the_index_send_each_return_once(
    index_url: str, tmp_path: Path, fixtures_output: Path, pacs: list[StoreScp]
) -> None:
    port = free_port()
    pacs.append(StoreScp(tmp_path / "pacs", port))
    data = tmp_path / "data"
    first = receiver_for(data, port, index_url, node="receiver-a")
    second = receiver_for(data, port, index_url, node="receiver-b")
    try:
        cases = (CASE, *OTHER_CASES)
        for case in cases:
            ingest_case(first, fixtures_output / case)
        settle_all(first)
        uids = [study_of(fixtures_output, case) for case in cases]

        # one claim at a time: the other receiver cannot take a return the first one holds
        (due, *_) = first.returns.due()
        assert first.returns.claim(due.id, lease=60) is not None
        assert second.returns.claim(due.id, lease=60) is None
        assert due.id not in {r.id for r in second.returns.due()}
        first.returns.retry_later(due.id, error="SendError: test", at=dt.datetime.now(dt.UTC))  # let go, due again

        # both work the queue off at once: every return is attempted once, its objects arrive once
        attempted: list[int] = []
        start = threading.Barrier(2)

        def work(receiver: Receiver) -> None:
            start.wait()
            attempted.append(receiver.send_due_returns())

        threads = [threading.Thread(target=work, args=(r,)) for r in (first, second)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert sum(attempted) == len(cases)
        expected: set[str] = set()
        for uid in uids:
            sent = only_return(first, uid)
            assert sent.state is ReturnState.SENT
            assert sent.attempts == (2 if sent.id == due.id else 1)
            expected |= pack_objects(data, uid, current_decision(first, uid))
        assert pacs[0].received() == expected and len(list(pacs[0].folder.iterdir())) == 2 * len(cases)
    finally:
        first.close()
        second.close()
        first.engine.dispose()
        second.engine.dispose()
