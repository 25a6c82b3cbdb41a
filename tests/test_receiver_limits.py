"""Issue 8 §2, the DICOM side: no unauthenticated resource exhaustion of the receiver.

Real `dicomcheck serve` processes on loopback, real pynetdicom peers, raw sockets that drip:

* a Deflated data set is inflated streamed and bounded (``max_inflated_size``): beyond the limit
  0xA700, below it stored, and in neither case held in memory (the receiver's VmHWM);
* a 256 MB private element before Pixel Data is stored without being read into memory;
* an A-ASSOCIATE-RQ dripped a byte at a time ends at the ARTIM timer (``acse_timeout`` from the
  connection), a dripped P-DATA PDU at ``pdu_deadline``, and connections still waiting for their
  request never lock out a real peer (also with ``--processes``, and with default settings).
"""

from __future__ import annotations

import os
import select
import socket
import sqlite3
import struct
import threading
import time
import zlib
from pathlib import Path

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, _config
from pynetdicom.sop_class import CTImageStorage, Verification

from .dicomfiles import ct_dataset
from .peers import nodelay, start_receiver, wait_for

MB = 1 << 20
DRIPPERS = 24


# ---------------------------------------------------------------------------------------------- files
def _preamble_and_meta(ds: Dataset, transfer_syntax: str) -> bytes:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = transfer_syntax
    out = DicomBytesIO()
    out.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(out, meta, enforce_standard=True)
    return out.getvalue()


def _private_blob_parts(ds: Dataset, size: int) -> tuple[bytes, bytes]:
    """The data set's attributes, a private creator and the header of a private OB of ``size``
    bytes (before), and Pixel Data (after): the OB's value goes between them."""
    out = DicomBytesIO()
    out.is_little_endian, out.is_implicit_VR = True, False
    header = Dataset()
    for elem in ds:
        if elem.tag < 0x7FE00000:
            header.add(elem)
    write_dataset(out, header)
    creator = b"DICOMCHECK TEST "
    before = (
        out.getvalue()
        + struct.pack("<HH2sH", 0x0099, 0x0010, b"LO", len(creator))
        + creator
        + struct.pack("<HH2sHL", 0x0099, 0x1000, b"OB", 0, size)
    )
    pixels = bytes(8)
    after = struct.pack("<HH2sHL", 0x7FE0, 0x0010, b"OW", 0, len(pixels)) + pixels
    return before, after


def write_large_private(path: Path, ds: Dataset, size: int) -> Path:
    """A file whose private element of ``size`` zero bytes is a hole: nothing in memory or on disk."""
    before, after = _private_blob_parts(ds, size)
    with path.open("wb") as fh:
        fh.write(_preamble_and_meta(ds, ExplicitVRLittleEndian))
        fh.write(before)
        fh.seek(size, 1)
        fh.write(after)
    return path


def write_deflate_bomb(path: Path, ds: Dataset, inflated: int) -> Path:
    """A Deflated Explicit VR file of a few hundred KB whose data set inflates to ``inflated`` bytes."""
    before, after = _private_blob_parts(ds, inflated)
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    zeros = bytes(MB)
    with path.open("wb") as fh:
        fh.write(_preamble_and_meta(ds, DeflatedExplicitVRLittleEndian))
        fh.write(deflater.compress(before))
        left = inflated
        while left:
            fh.write(deflater.compress(zeros[: min(left, MB)]))
            left -= min(left, MB)
        fh.write(deflater.compress(after) + deflater.flush())
    return path


# ---------------------------------------------------------------------------------------------- peers
def high_water_mark(pid: int) -> int:
    """Peak resident memory of a process (bytes), /proc/PID/status VmHWM."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def storage_ae() -> AE:
    ae = AE(ae_title="LIMITS")
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    ae.add_requested_context(CTImageStorage, DeflatedExplicitVRLittleEndian)
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
    return ae


def send_files(port: int, *paths: Path) -> list[int]:
    """C-STORE each file from disk in chunks (the test process never holds the data set)."""
    chunked = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        assoc = nodelay(storage_ae().associate("127.0.0.1", port, ae_title="DICOMCHECK"))
        assert assoc.is_established
        try:
            statuses = []
            for path in paths:
                response = assoc.send_c_store(path)
                statuses.append(int(response.Status) if "Status" in response else -1)
            return statuses
        finally:
            assoc.release()
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = chunked


def echo(port: int) -> int | None:
    """One C-ECHO on a new association: its status, or None when the association is refused."""
    ae = AE(ae_title="REALPEER")
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    assoc = ae.associate("127.0.0.1", port, ae_title="DICOMCHECK")
    if not assoc.is_established:
        return None
    try:
        response = assoc.send_c_echo()
        return int(response.Status) if "Status" in response else None
    finally:
        assoc.release()


class Drippers:
    """Raw TCP connections that send a PDU header, then one byte of its body every ``interval``
    seconds; notes when the receiver closes each of them."""

    def __init__(
        self, port: int, count: int, *, pdu_type: int = 0x01, length: int = 400, interval: float = 0.5
    ) -> None:
        self.socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(count)]
        self.opened = time.monotonic()
        self.closed: dict[int, float] = {}
        for sock in self.socks:
            sock.sendall(struct.pack(">BBL", pdu_type, 0, length))
            sock.setblocking(False)
        self.interval = interval
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._drip, daemon=True)
        self.thread.start()

    def _drip(self) -> None:
        while not self.stop.is_set():
            for index, sock in enumerate(self.socks):
                if index in self.closed:
                    continue
                try:
                    readable, _, _ = select.select([sock], [], [], 0)
                    if readable and not sock.recv(4096):
                        raise ConnectionResetError
                    sock.send(b"\0")
                except OSError:
                    self.closed[index] = time.monotonic()
            self.stop.wait(self.interval)

    def all_closed(self) -> bool:
        return len(self.closed) == len(self.socks)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=10)
        for sock in self.socks:
            sock.close()


@pytest.fixture()
def drippers():
    made: list[Drippers] = []

    def make(*args, **kwargs) -> Drippers:
        made.append(Drippers(*args, **kwargs))
        return made[-1]

    yield make
    for d in made:
        d.close()


def strict_env(tmp_path: Path, speed_tuning: bool = True) -> dict[str, str]:
    return {
        **os.environ,
        "DICOMCHECK_ACSE_TIMEOUT": "2",
        "DICOMCHECK_PDU_DEADLINE": "2",
        "DICOMCHECK_MAX_ASSOCIATIONS": "4",
        "DICOMCHECK_SPEED_TUNING": str(speed_tuning).lower(),
    }


ALSO_UNTUNED = pytest.mark.parametrize("speed_tuning", [True, False], ids=["tuned", "untuned"])
"""The deadlines are fault fixes: they hold with speed tuning off (pynetdicom's own reactors) too.
Only the two drip tests of one process run twice; the others share their code path."""


def _server_sockets(port: int) -> list[tuple[str, int]]:
    """(TCP state, receive queue) of every socket whose local port is ``port`` (/proc/net/tcp*); for
    the listening socket the receive queue is its accept queue."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port:
                found.append((fields[3], int(fields[4].split(":")[1], 16)))
    return found


def being_read(port: int, connections: int) -> bool:
    """Every connection to ``port`` accepted (empty accept queue) and each of at least
    ``connections`` read up to its last byte by the receiver: each has its thread on it."""
    sockets = _server_sockets(port)
    backlog = [queued for state, queued in sockets if state == "0A"]
    established = [queued for state, queued in sockets if state == "01"]
    return backlog == [0] and len(established) >= connections and not any(established)


# ---------------------------------------------------------------------------------------------- sizes
@pytest.fixture()
def limited(tmp_path):
    """A receiver of its own for each memory test (VmHWM is a peak): a 128 MiB inflated-size limit."""
    server = start_receiver(tmp_path / "data", env={**os.environ, "DICOMCHECK_MAX_INFLATED_SIZE": str(128 * MB)})
    files = tmp_path / "files"
    files.mkdir()
    warm = ct_dataset(generate_uid(), generate_uid())
    warm.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    warm_path = files / "warm.dcm"
    warm.save_as(warm_path, enforce_file_format=True)
    assert send_files(server.port, warm_path) == [0]  # libraries loaded, index open: the baseline
    yield server, files
    server.stop()


def instances(server, sop_uid: str) -> list:
    with sqlite3.connect(server.db) as db:
        return db.execute("SELECT path FROM instance WHERE sop_instance_uid = ?", (sop_uid,)).fetchall()


def test_deflated_data_set_beyond_the_inflated_limit_is_refused_0xA700_without_inflating_it_in_memory(limited):
    server, files = limited
    ds = ct_dataset(generate_uid(), generate_uid())
    bomb = write_deflate_bomb(files / "bomb.dcm", ds, 512 * MB)  # ~0.5 MB that inflates to 512 MB
    before = high_water_mark(server.proc.pid)
    assert send_files(server.port, bomb) == [0xA700]
    assert high_water_mark(server.proc.pid) - before < 48 * MB
    assert not instances(server, ds.SOPInstanceUID)
    assert not any((server.data / "storage" / ".tmp").iterdir())  # nothing left behind
    assert echo(server.port) == 0


def test_deflated_data_set_below_the_limit_is_stored_without_being_held_in_memory(limited):
    server, files = limited
    ds = ct_dataset(generate_uid(), generate_uid())
    bomb = write_deflate_bomb(files / "inflates-96mb.dcm", ds, 96 * MB)
    before = high_water_mark(server.proc.pid)
    assert send_files(server.port, bomb) == [0]
    assert high_water_mark(server.proc.pid) - before < 48 * MB
    assert len(instances(server, ds.SOPInstanceUID)) == 1


def test_256_mb_private_element_is_stored_without_being_read_into_memory(limited):
    server, files = limited
    ds = ct_dataset(generate_uid(), generate_uid())
    large = write_large_private(files / "private-256mb.dcm", ds, 256 * MB)
    before = high_water_mark(server.proc.pid)
    assert send_files(server.port, large) == [0]
    assert high_water_mark(server.proc.pid) - before < 48 * MB
    ((path,),) = instances(server, ds.SOPInstanceUID)
    assert (server.data / "storage" / path).stat().st_size > 256 * MB  # stored as received


# ---------------------------------------------------------------------------------------------- time
@ALSO_UNTUNED
def test_dripped_association_requests_end_at_the_acse_timeout_and_never_lock_out_a_real_peer(
    tmp_path, drippers, speed_tuning
):
    server = start_receiver(
        tmp_path / "data", env=strict_env(tmp_path, speed_tuning)
    )  # acse_timeout 2 s, 4 associations
    try:
        dripping = drippers(server.port, DRIPPERS)
        wait_for(
            lambda: being_read(server.port, DRIPPERS), interval=0.02
        )  # every dripper has its thread on the receiver
        assert echo(server.port) == 0  # 24 connections waiting for their request are not associations
        # each would take 200 s to send its request; the ARTIM timer ends them
        assert wait_for(dripping.all_closed, timeout=30), f"{len(dripping.closed)} of {DRIPPERS} closed"
        assert echo(server.port) == 0
    finally:
        server.stop()
    assert "Traceback" not in server.log()


@ALSO_UNTUNED
def test_a_dripped_p_data_pdu_ends_at_the_pdu_deadline(tmp_path, speed_tuning):
    server = start_receiver(tmp_path / "data", env=strict_env(tmp_path, speed_tuning))  # pdu_deadline 2 s
    try:
        assoc = nodelay(storage_ae().associate("127.0.0.1", server.port, ae_title="DICOMCHECK"))
        assert assoc.is_established
        raw = assoc.dul.socket.socket
        raw.sendall(struct.pack(">BBL", 0x04, 0, 1000))  # a P-DATA-TF of 1000 bytes ...

        def dripped_until_closed() -> bool:
            try:
                raw.send(b"\0")  # ... arriving one byte at a time
            except OSError:
                return True
            return not assoc.is_established

        assert wait_for(dripped_until_closed, timeout=30, interval=0.5)  # the drip would last 500 s
        assert echo(server.port) == 0
    finally:
        server.stop()


def test_with_processes_dripping_connections_end_and_never_lock_out_a_real_peer(tmp_path, drippers):
    server = start_receiver(tmp_path / "data", "--processes", "2", env=strict_env(tmp_path))
    try:
        dripping = drippers(server.port, DRIPPERS)
        wait_for(lambda: being_read(server.port, DRIPPERS), interval=0.02)
        assert echo(server.port) == 0
        assert wait_for(dripping.all_closed, timeout=30), f"{len(dripping.closed)} of {DRIPPERS} closed"
        assert echo(server.port) == 0
    finally:
        server.stop()


@pytest.mark.slow
def test_default_settings_a_new_peer_gets_through_24_dripping_association_requests_within_45_s(tmp_path, drippers):
    server = start_receiver(tmp_path / "data")  # default acse_timeout, pdu_deadline, max_associations
    try:
        dripping = drippers(server.port, DRIPPERS, interval=1.0)  # one byte a second
        wait_for(lambda: being_read(server.port, DRIPPERS), interval=0.02)
        started = time.monotonic()
        status = None
        while status != 0 and time.monotonic() - started < 45:
            status = echo(server.port)
            if status != 0:
                time.sleep(1)
        assert status == 0, "a real peer was locked out for 45 s"
        dripping.close()
    finally:
        server.stop()


# ---------------------------------------------------------------------------------------------- TLS
def _self_signed_certificate(folder: Path) -> tuple[Path, Path]:
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "server.pem", folder / "server.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


@pytest.mark.parametrize("processes", ["1", "2"])
def test_a_peer_that_never_starts_its_tls_handshake_does_not_block_other_peers(tmp_path, processes):
    """The TLS handshake used to run on the listener thread without a timeout: one connection that
    never sent a ClientHello blocked every later connection for good."""
    import ssl

    cert, key = _self_signed_certificate(tmp_path)
    env = {**os.environ, "DICOMCHECK_TLS_CERT": str(cert), "DICOMCHECK_TLS_KEY": str(key)}
    server = start_receiver(tmp_path / "data", "--processes", processes, env=env)
    silent = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(3)]
    try:
        wait_for(
            lambda: being_read(server.port, len(silent)), interval=0.02
        )  # the silent connections are accepted first
        client = ssl.create_default_context(cafile=str(cert))
        ae = AE(ae_title="TLSPEER")
        ae.add_requested_context(Verification)
        ae.acse_timeout = ae.network_timeout = ae.connection_timeout = 15
        answer: list[int] = []

        def echo_over_tls() -> None:  # in a thread: a blocked handshake must fail the test, not hang it
            assoc = ae.associate("127.0.0.1", server.port, ae_title="DICOMCHECK", tls_args=(client, "localhost"))
            if assoc.is_established:
                answer.append(int(assoc.send_c_echo().Status))
                assoc.release()

        peer = threading.Thread(target=echo_over_tls, daemon=True)
        peer.start()
        peer.join(30)
        assert answer == [0], "a TLS peer was blocked by connections that never started their handshake"
    finally:
        for sock in silent:
            sock.close()
        server.stop()
