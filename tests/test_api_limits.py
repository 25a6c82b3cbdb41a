"""Issue 8 §2 (HTTP): a real `dicomcheck serve` process and raw sockets. Stalled connections are
closed, large bodies refused before they are read, and hundreds of idle HTTP connections never
starve the DICOM receiver in the same process of file descriptors."""

from __future__ import annotations

import os
import select
import socket
import time

import httpx
import pytest
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage

from .dicomfiles import ct_dataset
from .peers import free_port, wait_for


def serve(receiver_factory, **settings: str):
    """`dicomcheck serve` with the API on a free port; HTTP settings through DICOMCHECK_* variables."""
    http_port = free_port()
    env = {**os.environ, **{f"DICOMCHECK_{k.upper()}": v for k, v in settings.pop("env", {}).items()}}
    server = receiver_factory("--http-port", str(http_port), env=env, **settings)

    def healthy() -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{http_port}/healthz", timeout=5).status_code == 200
        except httpx.TransportError:
            return False

    wait_for(healthy, timeout=60)
    return server, http_port


@pytest.fixture(scope="module")
def default_api(module_receiver_factory):
    """One `dicomcheck serve` with the default HTTP settings, shared by the tests that need no others."""
    return serve(module_receiver_factory)


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def read_until_closed(sock: socket.socket, within: float = 30.0) -> bytes:
    """Everything the server sends until it closes the connection; fails if it stays open."""
    deadline = time.monotonic() + within
    data = b""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([sock], [], [], 0.5)
        if ready:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                return data
            if not chunk:
                return data
            data += chunk
    raise AssertionError(f"the server kept the connection open for {within} s (received {data[:200]!r})")


def test_idle_and_stalled_connections_are_closed(receiver_factory):
    _, port = serve(receiver_factory, env={"http_idle_timeout": "1"})
    idle = connect(port)  # never sends a byte
    headers = connect(port)
    headers.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
    body = connect(port)
    body.sendall(
        b'POST /studies/search HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"a'
    )
    keep_alive = connect(port)  # one request answered, then silence
    keep_alive.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert read_until_closed(idle) == b""
    assert read_until_closed(headers).startswith(b"HTTP/1.1 408 ")
    assert read_until_closed(body).startswith(b"HTTP/1.1 408 ")
    assert read_until_closed(keep_alive).startswith(b"HTTP/1.1 200 ")
    # bytes trickling in do not extend the deadline: headers sent one byte every 0.2 s
    trickle = connect(port)
    trickle.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: ")
    started, closed = time.monotonic(), False
    while not closed and time.monotonic() - started < 30:
        try:
            trickle.sendall(b"a")
            if select.select([trickle], [], [], 0.2)[0]:
                closed = trickle.recv(65536).startswith(b"HTTP/1.1 408 ") or True
        except (BrokenPipeError, ConnectionResetError):
            closed = True
    assert closed, "a connection trickling header bytes was kept open for 30 s"
    for sock in (idle, headers, body, keep_alive, trickle):
        sock.close()


def test_a_large_body_gets_413_before_it_is_read(default_api):
    _, port = default_api
    # 200 MB announced, no token, no byte of the body sent: answered at once from Content-Length
    sock = connect(port)
    sock.sendall(
        b"POST /studies/search HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 200000000\r\n\r\n"
    )
    answer = read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]
    sock.close()
    # a chunked body is counted while it streams: refused once it passes http_max_body (1 MiB)
    sock = connect(port)
    sock.sendall(
        b"POST /studies/search HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )
    chunk = b"%x\r\n%s\r\n" % (65536, b" " * 65536)
    answer = b""
    for _ in range(64):  # 4 MiB at most
        try:
            sock.sendall(chunk)
        except (BrokenPipeError, ConnectionResetError):
            break
        ready, _, _ = select.select([sock], [], [], 0)
        if ready:
            break
    answer = read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]
    sock.close()
    # a body within the limit is still served
    assert httpx.post(f"http://127.0.0.1:{port}/studies/search", json={"limit": 5}, timeout=30).status_code == 401


def test_oversized_headers_get_431(default_api):
    _, port = default_api
    sock = connect(port)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n")
    assert read_until_closed(sock).startswith(b"HTTP/1.1 431 ")
    sock.close()
    assert httpx.get(f"http://127.0.0.1:{port}/healthz", headers={"X-Ok": "a" * 8000}, timeout=30).status_code == 200


def test_a_c_store_succeeds_with_260_idle_http_connections_open(receiver_factory):
    """Receiver and API in one process limited to 256 descriptors; 260 idle HTTP connections are
    open (their idle timeout is long): the API holds at most half the descriptors, refuses the
    rest with 503, and a C-STORE is still stored."""
    # one process on purpose (HTTP workers are one per core by default): the receiver and the API share its
    # descriptors, which is what the cap protects
    server, port = serve(
        receiver_factory, env={"http_idle_timeout": "120", "http_workers": "1"}, prefix=["prlimit", "--nofile=256:256"]
    )
    sockets = [connect(port) for _ in range(260)]
    try:
        refused = []

        def refusals_seen() -> bool:
            for sock in sockets:
                if sock not in refused and select.select([sock], [], [], 0)[0]:
                    refused.append(sock)
            return len(refused) >= 260 - 128

        def settled() -> bool:
            """Every connection was either refused (503, closed) or taken by the server, or the
            server ran out of descriptors trying (as it did before the cap)."""
            return refusals_seen() or len(os.listdir(f"/proc/{server.proc.pid}/fd")) >= 250

        wait_for(settled, timeout=60)
        ae = AE(ae_title="MODALITY")
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
        ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
        assoc = ae.associate("127.0.0.1", server.port, ae_title="DICOMCHECK")
        assert assoc.is_established, server.log()[-3000:]
        status = assoc.send_c_store(ct_dataset(generate_uid(), generate_uid()))
        assoc.release()
        assert status and status.Status == 0x0000
        wait_for(refusals_seen, timeout=60)  # a loaded machine may still be closing the refused ones
        assert refused[0].recv(1024).startswith(b"HTTP/1.1 503 ")
    finally:
        for sock in sockets:
            sock.close()
    # the idle connections gone, the API answers again
    wait_for(lambda: httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10).status_code == 200, timeout=60)


def test_patient_ids_are_redacted_from_the_access_log_however_encoded(default_api):
    server, port = default_api
    for n, name in enumerate(
        ["patient_id", "patient%5Fid", "patient%5fid", "PATIENT_ID", "%70atient_id", "patient_%69d"]
    ):
        response = httpx.get(f"http://127.0.0.1:{port}/studies?limit={n + 1}&{name}=PATSECRET4711", timeout=30)
        assert response.status_code == 401
        wait_for(lambda n=n: f"/studies?limit={n + 1}&" in server.log(), timeout=30)
    assert "PATSECRET4711" not in server.log()


def test_connection_cap_and_the_uvicorn_version_guard(monkeypatch):
    """The cap keeps half the descriptors (of the soft limit, and of select()'s 1024) for the
    receiver; the protocol, written against uvicorn internals, refuses another uvicorn version."""
    import uvicorn

    from dicomcheck.api.server import accept_burst, guarded_protocol
    from dicomcheck.config import Settings

    assert guarded_protocol(Settings(), 256).max_connections == 128
    # asyncio accepts up to the backlog in one pass before refusals close: the burst stays well inside the reserve
    assert accept_burst(128) == 32 and accept_burst(200) == 50 and accept_burst(20) == 16
    assert 128 + accept_burst(128) < 256 - 64
    assert guarded_protocol(Settings(), 100_000).max_connections == 200
    assert guarded_protocol(Settings(http_max_connections=5000), 100_000).max_connections == 512
    monkeypatch.setattr(uvicorn, "__version__", "0.56.0")
    with pytest.raises(RuntimeError, match="uvicorn"):
        guarded_protocol(Settings(), 256)
