"""HL7 v2 ORU^R01 reports over MLLP (issue 12 §1): real frames over loopback, with python-hl7's MLLP client
and with raw bytes; every message gets the right ACK; what was ACKed AA survives a SIGKILL of `serve`."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import socket
import sqlite3
import threading
from pathlib import Path

import hl7
import pytest
from hl7.mllp import open_hl7_connection
from hypothesis import given, settings
from hypothesis import strategies as st

from dicomcheck.config import Settings
from dicomcheck.ingest import Receiver
from dicomcheck.reports_in.hl7_message import read_header, read_message
from dicomcheck.reports_in.mllp import MllpLimits, MllpListener
from dicomcheck.store.access import Access
from dicomcheck.store.reports import Reports

from .peers import wait_for
from .test_api import ingest_case, settle_all
from .test_report_api import COMPLETE_76377, patient_of

VT, FS_CR = b"\x0b", b"\x1c\x0d"
CASE = "ct_workstation_vr_sc"


def oru(
    control: str = "MSG1",
    *,
    patient: str = "PAT1",
    study_uid: str | None = "1.2.3.4.5",
    accession: str = "ACC1",
    status: str = "F",
    text: str = "3D volume rendering was performed.",
    value_type: str = "TX",
    message_type: str = "ORU^R01^ORU_R01",
    sender: str = "RIS^HOSP",
    charset: str = "UNICODE UTF-8",
    radiologist: str = "1234&Smith&Jane",
    extra_segments: tuple[str, ...] = (),
) -> str:
    """An ORU^R01 as a reporting system sends it (IHE RAD: ZDS-1 Study Instance UID, OBR-18 accession)."""
    app, facility = sender.split("^")
    msh = [
        "MSH",
        "^~\\&",
        app,
        facility,
        "DICOMCHECK",
        "SITE",
        "20261206101500",
        "",
        message_type,
        control,
        "P",
        "2.5.1",
    ]
    msh += [""] * 5 + [charset]
    obr = ["OBR", "1", "PLACER1", "FILLER1^RIS", "CTA^CT angiography"] + [""] * 13 + [accession]
    obr += [""] * 3 + ["20261206101000+0100"] + [""] * 2 + [status] + [""] * 6 + [radiologist]
    obx = ["OBX", "1", value_type, "GDT^Report", "", text, "", "", "", "", "", status, "", "", "20261206100000"]
    segments = ["|".join(msh), f"PID|1||{patient}^^^HOSP^MR||Doe^John", "ORC|RE|PLACER1|FILLER1", "|".join(obr)]
    segments += ["|".join(obx), *extra_segments]
    if study_uid:
        segments.append(f"ZDS|{study_uid}^RAD^Application^DICOM")
    return "\r".join(segments) + "\r"


def frame(message: str | bytes) -> bytes:
    return VT + (message.encode() if isinstance(message, str) else message) + FS_CR


def exchange(port: int, payload: bytes) -> bytes:
    """Send raw bytes, return the raw answer (one MLLP block, or b"" when the server closed)."""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(payload)
        received = b""
        while FS_CR not in received:
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
        return received


def msa(answer: bytes) -> list[str]:
    """MSA fields of an ACK block: [code, control id, text]."""
    assert answer.startswith(VT) and answer.endswith(FS_CR), answer[:80]
    segments = answer[1:-2].decode("ascii").split("\r")
    assert segments[0].startswith("MSH|^~\\&|DICOMCHECK|") and "|ACK^" in segments[0]
    (line,) = [s for s in segments if s.startswith("MSA|")]
    return (line.split("|")[1:] + ["", ""])[:3]


@pytest.fixture()
def listener(tmp_path: Path, fixtures_output: Path):
    """An MLLP listener on an ephemeral port, on an index holding one fixture study."""
    receiver = Receiver(Settings(data=tmp_path / "data", stable_after=0.01))
    ingest_case(receiver, fixtures_output / CASE)
    settle_all(receiver)
    want = json.loads((fixtures_output / CASE / "expected.json").read_text())
    study = {"uid": want["study_instance_uid"], "accession": want["accession_number"]}
    study["patient"] = patient_of(CASE, fixtures_output)
    started = MllpListener(
        receiver.engine,
        host="127.0.0.1",
        port=0,
        allowed_senders=("RIS", "^TRUSTED"),
        limits=MllpLimits(max_message=2 << 20, idle_timeout=5.0, max_connections=4),
    ).start()
    yield started, receiver, study
    started.shutdown()
    receiver.close()


async def _send_with_library(port: int, messages: list[str]) -> list[hl7.Message]:
    reader, writer = await open_hl7_connection("127.0.0.1", port, encoding="utf-8")
    answers = []
    for message in messages:
        writer.writemessage(hl7.parse(message))
        await writer.drain()
        answers.append(await asyncio.wait_for(reader.readmessage(), 20))
    writer.close()
    await writer.wait_closed()
    return answers


def test_library_client_reports_are_stored_before_aa_and_matched(listener):
    server, receiver, study = listener
    port = server.server_address[1]
    complete = COMPLETE_76377.replace("\n\n", "\\.br\\\\.br\\").replace("\n", "\\.br\\")
    messages = [
        oru("A1", patient=study["patient"], study_uid=study["uid"], status="P", text="Preliminary."),
        oru(
            "A2", patient=study["patient"], study_uid=None, accession=study["accession"], text=complete, value_type="FT"
        ),
    ]
    answers = asyncio.run(_send_with_library(port, messages))
    assert [(str(a.segment("MSA")(1)), str(a.segment("MSA")(2))) for a in answers] == [("AA", "A1"), ("AA", "A2")]
    matched = Reports(receiver.engine).for_study(study["uid"], study["accession"], study["patient"])
    assert [m.report.message_control_id for m in matched.history] == ["A1", "A2"]
    current = matched.current
    assert current is not None and current.report.status == "F" and current.matched_by == "accession_number"
    assert current.report.sender == "RIS^HOSP" and current.report.radiologist == "Jane Smith (1234)"
    assert "independent workstation for surgical planning" in current.report.text.replace("\n", " ")
    assert current.report.report_time is not None and current.report.report_time.hour == 9  # +0100 -> UTC
    assert matched.history[0].report.superseded_by == current.report.id
    events = Access(receiver.engine).audit_events(event="Procedure Record")
    assert {e.detail.get("control_id") for e in events if e.endpoint == "hl7"} >= {"A1", "A2"}


def test_every_message_gets_the_right_ack(listener, caplog):
    caplog.set_level("INFO", logger="dicomcheck")
    server, receiver, study = listener
    port = server.server_address[1]
    unknown = exchange(port, frame(oru("U1", study_uid="1.2.999.1")))
    assert msa(unknown)[:2] == ["AA", "U1"], "a report before its images is kept and waits"
    wrong = msa(exchange(port, frame(oru("W1", patient="SOMEONE-ELSE", study_uid=study["uid"]))))
    assert wrong[:2] == ["AE", "W1"] and "another patient" in wrong[2]
    wrong_by_accession = msa(
        exchange(port, frame(oru("W2", patient="X", study_uid=None, accession=study["accession"])))
    )
    assert wrong_by_accession[0] == "AE"
    adt = msa(exchange(port, frame(oru("T1", message_type="ADT^A08"))))
    assert adt[:2] == ["AE", "T1"] and "not ORU" in adt[2]
    orm = msa(exchange(port, frame(oru("T2", message_type="ORU^R30"))))
    assert orm[0] == "AE" and "not R01" in orm[2]
    no_text = msa(exchange(port, frame(oru("N1", value_type="NM", text="42"))))
    assert no_text[:2] == ["AE", "N1"] and "no report text" in no_text[2]
    no_ids = msa(exchange(port, frame(oru("N2", study_uid=None, accession="").replace("FILLER1", ""))))
    assert no_ids[0] == "AE" and "no study identifier" in no_ids[2]
    bad_uid = msa(exchange(port, frame(oru("N3", study_uid="1.2.abc"))))
    assert bad_uid[0] == "AE" and "ZDS-1" in bad_uid[2]
    long_id = msa(exchange(port, frame(oru("N4", patient="P" * 65))))
    assert long_id[0] == "AE" and "PID-3" in long_id[2]
    bad_status = msa(exchange(port, frame(oru("N5", status="X"))))
    assert bad_status[0] == "AE" and "not P, F or C" in bad_status[2]
    garbage = msa(exchange(port, frame(b"this is not HL7 at all")))
    assert garbage[0] == "AE" and garbage[1] == ""
    no_msh = msa(exchange(port, frame(b"PID|1||X\rOBX|1|TX|||t\r")))
    assert no_msh[0] == "AE" and "MSH" in no_msh[2]
    not_allowed = msa(exchange(port, frame(oru("S1", sender="OTHER^HOSP"))))
    assert not_allowed[:2] == ["AR", "S1"] and "not allowed" in not_allowed[2]
    by_facility = msa(exchange(port, frame(oru("S2", sender="OTHER^TRUSTED"))))
    assert by_facility[:2] == ["AA", "S2"]
    alerts = Access(receiver.engine).audit_events(event="Security Alert")
    assert any(e.detail.get("control_id") == "S1" and e.endpoint == "hl7" for e in alerts)
    stored = {
        m.report.message_control_id for m in Reports(receiver.engine).for_study("1.2.999.1", None, "PAT1").history
    }
    assert stored == {"U1"}
    resend = msa(exchange(port, frame(oru("U1", study_uid="1.2.999.1"))))
    assert resend[:2] == ["AA", "U1"] and "already stored" in resend[2]
    assert len(Reports(receiver.engine).for_study("1.2.999.1", None, "PAT1").history) == 1
    logged = caplog.text
    assert "U1" in logged and "W1" in logged, "control IDs are logged"
    for phi in ("PAT1", "SOMEONE-ELSE", "Doe", "Smith", "3D volume rendering", study["patient"]):
        assert phi not in logged, f"{phi!r} reached the log"


def test_framing_truncation_and_size(listener):
    server, receiver, _ = listener
    port = server.server_address[1]
    unframed = msa(exchange(port, oru("F1").encode() + FS_CR))
    assert unframed[:2] == ["AR", "F1"] and "start byte" in unframed[2]
    # a message cut off and followed by a whole one: the whole one is answered
    cut = VT + oru("F2").encode()[:60]
    assert msa(exchange(port, cut + frame(oru("F3"))))[:2] == ["AA", "F3"]
    # a connection closed in the middle of a message: nothing stored, the listener goes on
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(VT + oru("F4").encode()[:100])
    assert msa(exchange(port, frame(oru("F5"))))[:2] == ["AA", "F5"]
    megabyte = "Findings line of a long report. " * (1 << 15)  # 1 MiB of text passes
    big = msa(exchange(port, frame(oru("B1", text=megabyte))))
    assert big[:2] == ["AA", "B1"]
    too_big = msa(exchange(port, frame(oru("B2", text="x" * (2 << 20)))))
    assert too_big[:2] == ["AR", "B2"] and "larger than" in too_big[2]
    ids = {m.report.message_control_id for m in Reports(receiver.engine).for_study("1.2.3.4.5", None, "PAT1").history}
    assert ids == {"F3", "F5", "B1"}
    (big_report,) = [
        m.report
        for m in Reports(receiver.engine).for_study("1.2.3.4.5", None, "PAT1").history
        if m.report.message_control_id == "B1"
    ]
    assert big_report.text == megabyte.strip()


def test_several_messages_on_one_connection_and_the_connection_cap(listener):
    server, _, _ = listener
    port = server.server_address[1]
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(frame(oru("M1")) + frame(oru("M2", message_type="ADT^A01")) + frame(oru("M3")))
        received = b""
        while received.count(FS_CR) < 3:
            chunk = sock.recv(65536)
            assert chunk, "the listener closed before answering every message"
            received += chunk
    answers = [msa(VT + part + FS_CR) for part in received.split(FS_CR)[:3] for part in [part.lstrip(VT)]]
    assert [a[:2] for a in answers] == [["AA", "M1"], ["AE", "M2"], ["AA", "M3"]]
    wait_for(lambda: not server._connections, timeout=10)  # the connection above is gone
    held = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(4)]
    try:
        wait_for(lambda: len(server._connections) == 4, timeout=10, describe=lambda: len(server._connections))
        with socket.create_connection(("127.0.0.1", port), timeout=10) as extra:
            extra.settimeout(10)
            try:
                closed = extra.recv(10) == b""
            except ConnectionResetError:
                closed = True
            assert closed, "a connection beyond hl7_max_connections is closed at once"
    finally:
        for sock in held:
            sock.close()


def test_character_sets_and_escapes(listener):
    server, receiver, _ = listener
    port = server.server_address[1]
    latin = oru("C1", study_uid="1.2.7", charset="8859/1", text="Caf\u00e9 \\F\\ pipe \\S\\ caret \\T\\ amp").encode(
        "latin-1"
    )
    assert msa(exchange(port, frame(latin)))[:2] == ["AA", "C1"]
    utf8 = oru("C2", study_uid="1.2.8", text="R\u00f6ntgen \u2013 3D \\X0A\\next \\.sp2\\end", value_type="FT")
    assert msa(exchange(port, frame(utf8)))[:2] == ["AA", "C2"]
    undecodable = oru("C3", study_uid="1.2.9", charset="ASCII", text="x").encode().replace(b"|x|", b"|\xff\xfe|")
    bad = msa(exchange(port, frame(undecodable)))
    assert bad[:2] == ["AE", "C3"] and "not ASCII" in bad[2]
    bad_utf8 = oru("C4", study_uid="1.2.9", text="x").encode().replace(b"|x|", b"|\xc3\x28|")
    assert msa(exchange(port, frame(bad_utf8)))[0] == "AE"
    unknown_set = msa(exchange(port, frame(oru("C5", study_uid="1.2.9", charset="ISO IR87"))))
    assert unknown_set[0] == "AE" and "not supported" in unknown_set[2]
    no_set = oru("C6", study_uid="1.2.10", charset="", text="na\u00efve").encode("utf-8")  # no MSH-18: UTF-8 read
    assert msa(exchange(port, frame(no_set)))[:2] == ["AA", "C6"]
    texts = {
        uid: Reports(receiver.engine).for_study(uid, None, "PAT1").history[0].report.text
        for uid in ("1.2.7", "1.2.8", "1.2.10")
    }
    assert texts["1.2.7"] == "Caf\u00e9 | pipe ^ caret & amp"
    assert texts["1.2.8"] == "R\u00f6ntgen \u2013 3D \nnext \n\nend"
    assert texts["1.2.10"] == "na\u00efve"


def test_parser_never_raises_on_hostile_bytes():
    """Every prefix and a byte-flipped copy of a message is either read or refused (AE / AR), never a crash."""
    from dicomcheck.reports_in.hl7_message import Refused, check_header

    message = oru("H1", text="a \\X41\\ b \\.in+4\\ c \\Zfoo\\ d \\unterminated").encode()
    for cut in range(0, len(message), 7):
        for block in (message[:cut], bytes(b ^ 0x55 if i == cut else b for i, b in enumerate(message))):
            header = read_header(block)
            if header is None:
                continue
            try:
                check_header(header)
                read_message(block, header)
            except Refused as refusal:
                assert refusal.code in ("AE", "AR") and refusal.reason
    header = read_header(message)
    assert header is not None
    assert read_message(message, header).text == "a A b  c  d \\unterminated"
    longest = read_header(oru("C" * 199).encode())
    assert longest is not None and len(longest.control_id) == 199
    check_header(longest)  # HL7 v2.7 allows 199 characters
    over = read_header(oru("C" * 200).encode())
    assert over is not None
    with pytest.raises(Refused, match="longer than 199"):
        check_header(over)


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=200), at=st.integers(min_value=0, max_value=400))
def test_random_bytes_inside_a_message_are_read_or_refused(data: bytes, at: int):
    from dicomcheck.reports_in.hl7_message import Refused, check_header

    message = oru("R1").encode()
    block = message[:at] + data + message[at:]
    header = read_header(block)
    if header is None:
        return
    try:
        check_header(header)
        read_message(block, header)
    except Refused as refusal:
        assert refusal.code in ("AE", "AR") and refusal.reason


def test_idle_connections_are_closed(tmp_path: Path):
    receiver = Receiver(Settings(data=tmp_path / "data"))
    server = MllpListener(receiver.engine, host="127.0.0.1", port=0, limits=MllpLimits(idle_timeout=0.2)).start()
    try:
        with socket.create_connection(("127.0.0.1", server.server_address[1]), timeout=20) as sock:
            sock.sendall(VT + b"MSH|^~\\&|")  # starts a message, never ends it
            assert sock.recv(100) == b"", "an idle connection is closed without an answer"
    finally:
        server.shutdown()
        receiver.close()


def test_nothing_acked_is_lost_across_sigkill(receiver_factory):
    server = receiver_factory("--hl7-port", "0", "--hl7-allow-sender", "RIS")
    wait_for(lambda: "HL7 MLLP listening" in server.log(), timeout=30)
    port = int(re.search(r"HL7 MLLP listening on [0-9.]+:(\d+)", server.log()).group(1))
    acked: list[str] = []
    stop = threading.Event()

    def send() -> None:
        number = 0
        try:
            while not stop.is_set():
                number += 1
                control = f"K{number}"
                answer = exchange(port, frame(oru(control, study_uid=f"1.2.3.{number}")))
                if answer and msa(answer)[:2] == ["AA", control]:
                    acked.append(control)
        except OSError:
            return

    sender = threading.Thread(target=send)
    sender.start()
    wait_for(lambda: len(acked) >= 25, timeout=60)
    server.proc.kill()
    server.proc.wait(timeout=30)
    stop.set()
    sender.join(timeout=30)
    copy = server.data.parent / "after-kill"
    shutil.copytree(server.data, copy)  # read as the next start would find it
    with sqlite3.connect(copy / "index.sqlite3") as db:
        stored = {row[0] for row in db.execute("SELECT message_control_id FROM report")}
    assert set(acked) <= stored, f"ACKed AA but lost: {sorted(set(acked) - stored)}"
    restarted = receiver_factory("--hl7-port", "0", data=server.data)
    wait_for(lambda: "HL7 MLLP listening" in restarted.log(), timeout=30)
