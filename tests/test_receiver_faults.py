"""Faults of the receiver with real components: SIGKILL in the middle of a study, real-world files
sent by DCMTK, and a real full disk (a tmpfs in the receiver's own mount namespace).

The full-disk test asserts that nothing stored is lost, that the receiver keeps serving, and that
the refusal is 0xA700 rather than an abort (the receiver receives into ``SpoolFile``).
"""

from __future__ import annotations

import hashlib
import os
import random
import sqlite3
import struct
import subprocess
import threading
import time
import warnings
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, Verification

from .dicomfiles import ct_dataset
from .peers import (
    in_namespace,
    nodelay,
    peer_env,
    require_mount_namespace,
    require_peer,
    tmpfs_prefix,
    wait_for,
)


def rows(server, sql: str, *params):
    with sqlite3.connect(server.db) as db:
        return db.execute(sql, params).fetchall()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def associate(server_or_port, calling: str, called: str = "DICOMCHECK", timeout: float = 30):
    """A pynetdicom association proposing CT storage and verification (TCP_NODELAY set)."""
    ae = AE(ae_title=calling)
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    port = getattr(server_or_port, "port", server_or_port)
    return nodelay(ae.associate("127.0.0.1", port, ae_title=called))


# ---------------------------------------------------------------- SIGKILL in the middle of a study
def test_fifteen_sigkills_mid_study_then_retry_lose_nothing_and_duplicate_nothing(receiver_factory):
    """Issue 8 acceptance: ``serve`` killed 15 times in the middle of a study's transfer (at a random
    point after a random number of answers). After every restart, before anything is re-sent: every
    instance ever acknowledged is on disk with its bytes and indexed, the index and the disk agree
    (a file renamed into storage but not indexed when the kill came is indexed at start), and the
    killed receivers' associations are recorded aborted with what they received. Then the sender
    retries the whole study: each instance once, decided with all of them."""
    server = receiver_factory(stable_after=0.5)
    data, port = server.data, server.port
    storage, temp = data / "storage", data / "storage" / ".tmp"
    rng = random.Random(8)
    study, series = generate_uid(), generate_uid()
    datasets = [ct_dataset(study, series, rows=48, InstanceNumber=i + 1) for i in range(300)]
    acknowledged: dict[str, int] = {}  # answered 0x0000 before a kill: SOP Instance UID -> InstanceNumber
    per_kill: list[int] = []

    def agree(receiver) -> None:
        indexed = {
            sop: (path, sha, size)
            for sop, path, sha, size in rows(receiver, "SELECT sop_instance_uid, path, sha256, size FROM instance")
        }
        lost = [sop for sop in acknowledged if sop not in indexed]
        assert not lost, f"{len(lost)} acknowledged instance(s) lost by the kills: {lost[:3]}"
        for sop, (path, sha, size) in indexed.items():
            stored = storage / path
            assert stored.is_file() and stored.stat().st_size == size and sha256(stored) == sha, sop
            header = dcmread(stored, stop_before_pixels=True)
            assert (
                header.SOPInstanceUID == sop and acknowledged.get(sop, header.InstanceNumber) == header.InstanceNumber
            )
        on_disk = {
            p.relative_to(storage).as_posix()
            for p in storage.rglob("*")
            if p.is_file() and ".tmp" not in p.parts and ".journal" not in p.parts and p.suffix != ".pending"
        }
        assert on_disk == {path for path, _, _ in indexed.values()}, "the index and the disk disagree"
        assert not list(storage.glob("*/*/*.pending")), "a journal entry of a killed receiver was not replayed"
        assert not rows(receiver, "SELECT id FROM association WHERE ended_at IS NULL"), (
            "an association left open by a killed receiver"
        )

    sent = 0
    for kill in range(15):
        target, acked, enough = rng.randint(1, 12), [], threading.Event()
        batch = datasets[sent : sent + target + 8]
        sent += len(batch)

        def send_until_killed(batch=batch, acked=acked, enough=enough, target=target, kill=kill) -> None:
            assoc = associate(port, f"KILL{kill}", timeout=10)
            try:
                for ds in batch:
                    if not assoc.is_established:
                        return
                    status = getattr(assoc.send_c_store(ds), "Status", None)
                    if status is None:  # no answer: the receiver is gone
                        return
                    if status == 0x0000:
                        acked.append((str(ds.SOPInstanceUID), int(ds.InstanceNumber)))
                        if len(acked) == target:
                            enough.set()
            except RuntimeError:  # the association went away between the check and the send
                pass
            finally:
                enough.set()
                if assoc.is_established:
                    assoc.abort()

        sender = threading.Thread(target=send_until_killed, name="sender")
        sender.start()
        assert enough.wait(60), "nothing acknowledged"
        time.sleep(rng.uniform(0, 0.02))  # somewhere in the next transfer: receiving, renaming, indexing
        server.kill()  # SIGKILL while the sender keeps sending
        sender.join(60)
        assert not sender.is_alive()
        assert len(acked) >= target, (kill, len(acked), target)
        acknowledged.update(acked)
        per_kill.append(len(acked))

        if kill == 0:
            stale, fresh = temp / "stale-from-last-week.dcm", temp / "another-receiver-is-writing.dcm"
            stale.write_bytes(b"partial"), fresh.write_bytes(b"partial")
            old = time.time() - 7 * 24 * 3600
            os.utime(stale, (old, old))
        server = receiver_factory(data=data, port=port, stable_after=0.5)
        if kill == 0:
            # abandoned temporary files are removed at start, but not a fresh one: receivers sharing
            # this storage volume may be receiving into .tmp right now
            assert not stale.exists() and fresh.exists()
            fresh.unlink()
        agree(server)

    # the killed receivers' associations: aborted, counting what they acknowledged (and at most the
    # one more that was indexed when the kill came before its answer went out)
    closed = rows(server, "SELECT calling_ae, status, instances_received FROM association ORDER BY id")
    assert [(ae, status) for ae, status, _ in closed] == [(f"KILL{k}", "aborted") for k in range(15)]
    for (_, _, received), acked_count in zip(closed, per_kill, strict=True):
        assert acked_count <= received <= acked_count + 1, (received, acked_count)

    # the sender retries the whole study
    assoc = associate(port, "RETRYING")
    assert assoc.is_established
    try:
        statuses = [assoc.send_c_store(ds).Status for ds in datasets]
    finally:
        assoc.release()
    assert statuses == [0x0000] * 300

    # 300 instances, each once; every indexed file exists with its hash; nothing on disk unindexed
    assert rows(server, "SELECT count(*), count(DISTINCT sop_instance_uid), max(version) FROM instance") == [
        (300, 300, 1)
    ]
    assert {sop for (sop,) in rows(server, "SELECT sop_instance_uid FROM instance")} == {
        str(ds.SOPInstanceUID) for ds in datasets
    }
    assert rows(server, "SELECT instance_count FROM study WHERE study_instance_uid = ?", study) == [(300,)]
    assert rows(server, "SELECT count(*) FROM receipt WHERE NOT duplicate") == [(300,)]
    agree(server)
    # storage/.tmp: only temporary files of transfers the kills cut short (never referenced: every
    # name there is a temporary name, every stored name a derived one); no commit record is left
    assert not [p for p in temp.iterdir() if p.suffix == ".commit"]

    # the study is decided with its 300 instances once stable
    current = "SELECT d.instance_count, s.needs_decision FROM study s JOIN decision d ON d.id = s.current_decision_id"
    wait_for(lambda: rows(server, current) == [(300, 0)], timeout=30)
    assert "Traceback" not in server.log()


# ---------------------------------------------------------------- real-world files through DCMTK
PROPOSE = {
    "1.2.840.10008.1.2.4.50": "-xy",  # JPEG baseline
    "1.2.840.10008.1.2.4.51": "-xx",  # JPEG extended 12 bit
    "1.2.840.10008.1.2.4.70": "-xs",  # JPEG lossless SV1
    "1.2.840.10008.1.2.4.80": "-xt",  # JPEG-LS lossless
    "1.2.840.10008.1.2.4.81": "-xu",  # JPEG-LS near-lossless
    "1.2.840.10008.1.2.4.90": "-xv",  # JPEG 2000 lossless
    "1.2.840.10008.1.2.4.91": "-xw",  # JPEG 2000
    "1.2.840.10008.1.2.5": "-xr",  # RLE
    "1.2.840.10008.1.2.1.99": "-xd",  # deflated
}
"""storescu's proposal flag for a file's transfer syntax; uncompressed files need none."""

STORESCU_REFUSES = {
    "malformed_ct_all_vr_un.dcm": "missing SOP class (or instance)",  # VR UN everywhere: DCMTK cannot find the UIDs
    "malformed_mr_philips_t5_no_meta.dcm": "missing SOP class (or instance)",  # no file meta, no SOP Class UID
    # parse stops at the pixel data
    "malformed_mr_siemens_sempra_xa12_missing_seq_delimiter.dcm": "missing SOP class (or instance)",
    "malformed_philips_viewforum_3d_object_stub.dcm": "unknown storage SOP class",  # private 1.3.46.670589.5.0.1.1
    "malformed_sc_ct_doseinfo_bad_conversiontype.dcm": "missing SOP class (or instance)",  # item parse error
}
"""Files DCMTK itself will not send, with its reason (its own parser gives up, or the class is private)."""


def dataset_offset(path: Path) -> int:
    """Where the data set starts: after the preamble, 'DICM' and the group 0002 elements."""
    with path.open("rb") as fp:
        assert fp.read(132)[128:] == b"DICM", path
        position = 132
        while len(header := fp.read(8)) == 8 and struct.unpack("<H", header[:2])[0] == 0x0002:
            if header[4:6] in (b"OB", b"OW", b"OF", b"SQ", b"UT", b"UN"):
                position += 12 + struct.unpack("<I", fp.read(4))[0]
            else:
                position += 8 + struct.unpack("<H", header[6:8])[0]
            fp.seek(position)
        return position


def data_set(path: Path) -> bytes:
    return path.read_bytes()[dataset_offset(path) :]


@pytest.mark.realworld
@pytest.mark.peer
def test_realworld_files_sent_by_dcmtk_are_stored_as_sent_or_quarantined(receiver_factory, realworld, tmp_path):
    require_peer("storescu", "dcmconv")
    server = receiver_factory()
    outcomes: dict[str, str] = {}
    problems: list[str] = []
    for source in sorted(realworld.glob("*.dcm")):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            header = dcmread(source, stop_before_pixels=True, force=True)
        meta = getattr(header, "file_meta", None)
        syntax = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
        flag = [PROPOSE[syntax]] if syntax in PROPOSE else []
        before = rows(server, "SELECT (SELECT count(*) FROM instance), (SELECT count(*) FROM quarantined)")[0]
        proc = subprocess.run(
            [
                "storescu",
                "-aet",
                "REALWORLD",
                "-aec",
                server.ae_title,
                "-R",
                *flag,
                "127.0.0.1",
                str(server.port),
                str(source),
            ],
            check=False,
            capture_output=True,
            text=True,
            env=peer_env(),
            timeout=120,
        )
        said = proc.stdout + proc.stderr
        after = rows(server, "SELECT (SELECT count(*) FROM instance), (SELECT count(*) FROM quarantined)")[0]
        if source.name in STORESCU_REFUSES:
            if proc.returncode == 0 or STORESCU_REFUSES[source.name] not in said:
                problems.append(
                    f"{source.name}: expected storescu to refuse ({STORESCU_REFUSES[source.name]}), got exit "
                    f"{proc.returncode}: {said[-300:]}"
                )
            elif after != before:
                problems.append(f"{source.name}: storescu refused it, yet the receiver recorded something")
            outcomes[source.name] = f"not sent: {STORESCU_REFUSES[source.name]}"
            continue
        if (after[0] - before[0], after[1] - before[1]) == (1, 0):  # stored: the data set exactly as DCMTK sent it
            assert proc.returncode == 0, said
            sop = str(header.SOPInstanceUID)
            ((path, sha, syntax_stored),) = rows(
                server, "SELECT path, sha256, transfer_syntax_uid FROM instance WHERE sop_instance_uid = ?", sop
            )
            stored = server.data / "storage" / path
            assert sha256(stored) == sha and syntax_stored == syntax, source.name
            received = data_set(stored)
            if received == data_set(source):
                outcomes[source.name] = "stored, data set identical to the file"
            else:
                # DCMTK's DIMSE encoder writes sequences and items with explicit lengths and recomputes
                # group lengths (dcmconv +e +g= writes the same bytes): compare with what it sent
                converted = tmp_path / f"sent-{source.name}"
                subprocess.run(["dcmconv", "+e", "+g=", str(source), str(converted)], check=True, capture_output=True)
                if received == data_set(converted):
                    outcomes[source.name] = "stored, data set identical to what DCMTK sent (explicit lengths)"
                else:
                    problems.append(
                        f"{source.name}: the stored data set differs from the file and from DCMTK's encoding of it"
                    )
        elif (after[0] - before[0], after[1] - before[1]) == (0, 1):
            ((reason, status),) = rows(server, "SELECT reason, status FROM quarantined ORDER BY id DESC LIMIT 1")
            if not reason or not 0xC000 <= status <= 0xCFFF:
                problems.append(f"{source.name}: quarantined without a reason ({status:#06x} {reason!r})")
            outcomes[source.name] = f"quarantined 0x{status:04X}: {reason}"
        else:
            problems.append(
                f"{source.name}: sent (exit {proc.returncode}) but neither stored nor quarantined: {said[-300:]}"
            )
    assert not problems, "\n".join(problems)
    print("\n".join(f"{name}: {what}" for name, what in outcomes.items()))
    assert len(outcomes) == len(list(realworld.glob("*.dcm")))
    assert sum(o.startswith("stored") for o in outcomes.values()) >= 30
    assert "Traceback" not in server.log()


# ---------------------------------------------------------------- a real full disk
def test_full_disk_refuses_with_a700_and_loses_nothing_stored(receiver_factory, tmp_path):
    require_mount_namespace(tmp_path / "probe")
    data = tmp_path / "data"
    storage = data / "storage"
    storage.mkdir(parents=True)
    # the index stays outside the tmpfs, where the test can read it
    server = receiver_factory(
        "--database-url",
        f"sqlite:///{data / 'index.sqlite3'}",
        data=data,
        prefix=tmpfs_prefix(storage, "256k"),
        stable_after=0.5,
    )
    inside = in_namespace(server.proc.pid, storage)
    assert (
        os.statvfs(inside).f_blocks * os.statvfs(inside).f_frsize <= 256 * 1024
    )  # the receiver's storage is the tmpfs
    assert not list(storage.iterdir()), "the tmpfs leaked into the host's mount namespace"

    study, series = generate_uid(), generate_uid()
    acknowledged: list[str] = []
    refusal = None
    assoc = associate(server, "FILLER", timeout=10)
    assert assoc.is_established
    for number in range(1, 2000):
        ds = ct_dataset(study, series, rows=32, InstanceNumber=number)
        status = assoc.send_c_store(ds) if assoc.is_established else None
        code = getattr(status, "Status", None)
        if code == 0x0000:
            acknowledged.append(str(ds.SOPInstanceUID))
            continue
        refusal = code if code is not None else "association aborted"
        refused = str(ds.SOPInstanceUID)
        break
    if assoc.is_established:
        assoc.release()
    assert refusal is not None, "a 256 KB volume never filled up"
    assert len(acknowledged) >= 10, "the volume was full before anything was stored"
    assert refusal in (0xA700, "association aborted"), f"a full disk was answered 0x{refusal:04X}"

    # the receiver keeps running and still answers C-ECHO
    assert server.proc.poll() is None
    echo = associate(server, "ECHO")
    assert echo.is_established and echo.send_c_echo().Status == 0x0000
    echo.release()

    # nothing already stored is lost: every acknowledged instance is indexed and on the full volume
    indexed = {
        sop: (path, sha, size)
        for sop, path, sha, size in rows(server, "SELECT sop_instance_uid, path, sha256, size FROM instance")
    }
    assert set(indexed) == set(acknowledged), (
        "the index holds something not acknowledged, or lost something acknowledged"
    )
    assert refused not in indexed
    for sop, (path, sha, size) in indexed.items():
        stored = inside / path
        assert stored.is_file() and stored.stat().st_size == size and sha256(stored) == sha, sop
    # and the study is still decided with exactly what was stored
    current = "SELECT d.instance_count, s.needs_decision FROM study s JOIN decision d ON d.id = s.current_decision_id"
    wait_for(lambda: rows(server, current) == [(len(acknowledged), 0)], timeout=30)

    assert refusal == 0xA700, f"a full volume was answered {refusal!r}, not 0xA700 (Refused: out of resources)"
    assert not list((inside / ".tmp").iterdir()), "the refused instance's temporary file was left on the full volume"
    assert "Traceback" not in server.log()
