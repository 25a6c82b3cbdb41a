"""Running the API under uvicorn: bounded connections, and patient IDs kept out of the access log.

Every HTTP peer is hostile. uvicorn alone keeps a connection that never sends a request, or stops
in the middle of its headers or body, open for ever, and accepts sockets without bound: a few
hundred such connections starve the DICOM receiver (same process) of file descriptors. Here:

* each connection has a deadline (``http_idle_timeout``) from the moment it is opened or its last
  response was sent until its next request has fully arrived (headers and body); bytes trickling
  in do not extend it. A connection past its deadline is closed (408 if a request had begun);
* a request's header block may hold ``http_max_header_size`` bytes (431 and close beyond);
* bodies are bounded by the app (FastAPI ``max_body_size``: 413 from Content-Length before the
  body is read, chunked bodies counted while they stream); a connection answered before its body
  was read is closed rather than drained;
* at most ``http_max_connections`` connections are open, and never more than half the process's
  file descriptors (of the soft limit, and of the 1024 that pynetdicom's select() can poll); one
  more is answered 503 and closed at once, so the receiver always has descriptors;
* the soft RLIMIT_NOFILE is raised to the hard limit at start.

With more than one HTTP worker (``http_workers``; 0, the default: one per CPU core on PostgreSQL, one on
SQLite), the main process opens the HTTP
socket and starts that many worker processes (``spawn``) that accept on it, each with its own
connection to the index (``operations_factory``: a read-only receiver, no migration or recovery)
and every limit above, ``http_max_connections`` shared out among them. The DICOM receiver and the
settle loop stay in the main process. A worker that dies is started again; a worker dies with the
main process (``PR_SET_PDEATHSIG``), so a killed server leaves no process holding its port.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import multiprocessing
import os
import re
import resource
import signal
import socket
import threading
from collections.abc import Callable
from urllib.parse import unquote_plus

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from ..config import Settings
from .app import create_app
from .deps import StudyOperations

log = logging.getLogger("dicomcheck.api")

# pynetdicom's transport polls association sockets with select.select, which takes descriptors
# below 1024 only: HTTP connections never hold more than half of those (or of a lower soft limit).
FD_SETSIZE = 1024

# GuardedH11Protocol reads uvicorn's H11Protocol attributes (conn, transport, cycle, connections,
# loop) and overrides its on_response_complete: checked against this exact version.
UVICORN_VERSION = "0.55.0"

# name=value pairs of a query string; the name is compared after percent-decoding
_PAIR = re.compile(r"(?P<lead>^|[?&;])(?P<name>[^=&;\s?]*)=(?P<value>[^&;\s]*)")
_REDACTED_NAMES = {"patient_id"}
_HEAD_END = re.compile(rb"\n\r?\n")  # the blank line ending a request's header block (h11 accepts bare LF)


def redact_query(text: str) -> str:
    """``text`` (a request line or path with query) with every patient_id value masked, however
    its name is spelt (``patient_id``, ``Patient_ID``, ``patient%5Fid``, ``patient%5fid`` ...)."""

    def mask(match: re.Match) -> str:
        if unquote_plus(match["name"]).strip().lower() in _REDACTED_NAMES:
            return f"{match['lead']}{match['name']}=[redacted]"
        return match[0]

    return _PAIR.sub(mask, text) if "=" in text else text


class RedactPatientIds(logging.Filter):
    """uvicorn's access log records the query string; patient IDs in it are masked."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(redact_query(a) if isinstance(a, str) else a for a in record.args)
        if isinstance(record.msg, str):
            record.msg = redact_query(record.msg)
        return True


def _raw_response(status: int, reason: str, text: str) -> bytes:
    body = text.encode("ascii")
    return (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: text/plain; charset=utf-8\r\nconnection: close\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    ).encode("ascii") + body


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a per-connection request deadline, a header-size check and a
    connection cap (class attributes set by :func:`guarded_protocol`)."""

    idle_timeout: float = 5.0
    max_header_size: int = 16384
    max_connections: int = 200

    _deadline = None
    _refused = False

    # -------------------------------------------------------------- asyncio Protocol interface
    def connection_made(self, transport) -> None:
        if len(self.connections) >= self.max_connections:
            self._refused = True
            self.transport = transport
            transport.write(_raw_response(503, "Service Unavailable", "too many open HTTP connections"))
            transport.close()
            return
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if self.conn.their_state is h11.IDLE and self._headers_too_large(data):
            self._disarm()
            log.warning(
                "HTTP request from %s refused: header block larger than %d bytes", self._peer(), self.max_header_size
            )
            self._close(_raw_response(431, "Request Header Fields Too Large", "request header fields too large"))
            return
        super().data_received(data)
        self._track()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._refused:
            return
        self._disarm()
        super().connection_lost(exc)

    def _headers_too_large(self, data: bytes) -> bool:
        """More than max_header_size bytes of a request's head are here without its blank line."""
        buffered = self.conn.trailing_data[0]
        limit = self.max_header_size
        if len(buffered) + len(data) <= limit:
            return False
        head = bytes(buffered[: limit + 4]) + data[: limit + 4]
        return _HEAD_END.search(head, 0, limit + 4) is None

    def pause_writing(self) -> None:
        if not self._refused:
            super().pause_writing()

    def resume_writing(self) -> None:
        if not self._refused:
            super().resume_writing()

    # -------------------------------------------------------------- uvicorn hooks
    def on_response_complete(self) -> None:
        self._disarm()
        if not self.transport.is_closing() and self.conn.their_state is h11.SEND_BODY:
            # answered before the request body was read (e.g. 413 from Content-Length): never drain it
            self._close(b"")
            return
        super().on_response_complete()
        self._track()

    # -------------------------------------------------------------- the deadline
    def _track(self) -> None:
        """Armed while a request is awaited or arriving; disarmed once it has fully arrived."""
        if self.transport.is_closing():
            self._disarm()
        elif self.conn.their_state in (h11.IDLE, h11.SEND_BODY):
            self._arm()
        else:
            self._disarm()

    def _arm(self) -> None:
        if self._deadline is None and not self.transport.is_closing():
            self._deadline = self.loop.call_later(self.idle_timeout, self._expire)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expire(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        begun = self.conn.their_state is h11.SEND_BODY or bool(self.conn.trailing_data[0])
        answered = self.cycle is not None and self.cycle.response_started and not self.cycle.response_complete
        if begun and not answered:
            log.warning(
                "HTTP request from %s not complete within %.1f s: connection closed", self._peer(), self.idle_timeout
            )
            self._close(_raw_response(408, "Request Timeout", "request not complete in time"))
        else:
            self._close(b"")

    def _close(self, last_words: bytes) -> None:
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.disconnected = True  # the app's receive() answers http.disconnect
            self.cycle.message_event.set()
        if last_words:
            self.transport.write(last_words)
        self.transport.close()

    def _peer(self) -> str:
        if self.client is None:
            return "?"
        host, port = self.client
        return f"{host}:{port:d}"


def guarded_protocol(settings: Settings, nofile_soft: int | None = None) -> type[GuardedH11Protocol]:
    """The protocol class for these settings; the connection cap keeps half the descriptors free."""
    if uvicorn.__version__ != UVICORN_VERSION:
        raise RuntimeError(
            f"dicomcheck's HTTP connection limits are written for uvicorn {UVICORN_VERSION}, "
            f"not {uvicorn.__version__}: install uvicorn=={UVICORN_VERSION}"
        )
    soft = nofile_soft if nofile_soft is not None else resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    budget = FD_SETSIZE if soft == resource.RLIM_INFINITY else min(soft, FD_SETSIZE)
    cap = max(1, min(settings.http_max_connections, budget // 2))
    return type(
        "GuardedH11Protocol",
        (GuardedH11Protocol,),
        {
            "idle_timeout": settings.http_idle_timeout,
            "max_header_size": settings.http_max_header_size,
            "max_connections": cap,
        },
    )


def raise_nofile_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):  # e.g. an unlimited hard limit the kernel does not take
            pass
    return soft


def worker_count(settings: Settings) -> int:
    """How many HTTP processes serve the API: ``http_workers``; when it is 0, one per CPU core, on SQLite as on
    PostgreSQL. One process serialises its requests' Python on one GIL, and Poisson bursts queue behind it: at
    100 lookups/s on 100,000 studies one worker missed p99 < 20 ms for lists and UID reads, two passed every
    repeat (bench/README.md, issue 14). On SQLite each worker's requests share their commits
    (``store.access.GroupCommit``); the workers' writers take SQLite's lock in turn."""
    if settings.http_workers:
        return settings.http_workers
    return os.cpu_count() or 1


def run_api(
    settings: Settings,
    receiver: StudyOperations,
    operations_factory: Callable[[Settings], StudyOperations] | None = None,
    *,
    stop: threading.Event | None = None,
) -> None:
    """Serve until SIGTERM / SIGINT: in this process (one worker, or no ``operations_factory`` to open the
    index in a worker), or in ``worker_count`` worker processes. ``stop``: set by the caller's own handlers of
    those signals, installed before start-up (one that came before uvicorn's or the workers' handlers took
    over still stops the service)."""
    workers = worker_count(settings)
    if workers > 1 and operations_factory is not None:
        run_workers(settings, workers, operations_factory, stop=stop)
        return
    _serve(settings, receiver, sockets=None, stop=stop)


def accept_burst(max_connections: int) -> int:
    """The listen backlog, which is also how many connections asyncio accepts in one pass of its loop
    before the connections over the cap are answered 503 and closed (a pass later). uvicorn's 2048 let a
    burst of connections take every descriptor for that moment, and the DICOM receiver in the same
    process then failed to accept (EMFILE); a quarter of the cap bounds the burst, the rest wait in the
    kernel's queue (or the client retries its SYN) without holding a descriptor here."""
    return max(16, min(2048, max_connections // 4))


def _serve(
    settings: Settings,
    operations: StudyOperations,
    *,
    sockets: list[socket.socket] | None,
    stop: threading.Event | None = None,
) -> None:
    """uvicorn with the guarded protocol, on its own port or on ``sockets`` (a worker); ``stop`` set (before
    uvicorn has its own signal handlers, or after) ends it as its own SIGTERM handling does."""
    soft = raise_nofile_limit()
    protocol = guarded_protocol(settings, soft)
    app = create_app(settings, operations)
    config = uvicorn.Config(
        app,
        host=settings.bind,
        port=settings.http_port,
        log_level="info",
        # X-Forwarded-Proto / -For only from the TLS-terminating proxies named (ui.web.own_origin); none by default
        proxy_headers=bool(settings.forwarded_allow_ips),
        forwarded_allow_ips=settings.forwarded_allow_ips or None,
        http=protocol,
        # uvicorn annotates int but only hands it to loop.call_later, which takes fractional seconds
        timeout_keep_alive=settings.http_idle_timeout,  # type: ignore[arg-type]
        h11_max_incomplete_event_size=settings.http_max_header_size,
        backlog=accept_burst(protocol.max_connections),
    )
    server = uvicorn.Server(config)
    config.load()
    freeze_startup_objects()
    logging.getLogger("uvicorn.access").addFilter(RedactPatientIds())
    log.info(
        "HTTP limits: %d connections, idle / request deadline %.1f s, headers %d bytes, body %d bytes",
        protocol.max_connections,
        settings.http_idle_timeout,
        settings.http_max_header_size,
        settings.http_max_body,
    )
    if stop is not None:

        def exit_on_stop() -> None:
            stop.wait()
            server.should_exit = True

        threading.Thread(target=exit_on_stop, name="stop-signal", daemon=True).start()
    server.run(sockets=sockets)


def freeze_startup_objects() -> None:
    """Move every object that exists once the app is loaded (modules, models, compiled statements, ...) out of
    the cyclic garbage collector's reach: the collections that requests' allocations trigger then scan only
    what requests made. Measured at 100 lookups/s (bench/README.md, issue 14): UID p99 25–27 ms with it
    against 52–116 ms without, the full collections of the start-up heap being the tail."""
    gc.collect()
    gc.freeze()


def http_socket(settings: Settings) -> socket.socket:
    """The API's listening socket, opened by the main process and shared by the workers."""
    family = socket.AF_INET6 if ":" in settings.bind else socket.AF_INET
    # proto named: asyncio sets TCP_NODELAY on accepted sockets only when it is IPPROTO_TCP (with 0, every
    # response would wait on Nagle and the client's delayed ACK, 40 ms)
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((settings.bind, settings.http_port))
    except OSError:
        sock.close()
        raise
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def run_workers(
    settings: Settings,
    workers: int,
    operations_factory: Callable[[Settings], StudyOperations],
    *,
    stop: threading.Event | None = None,
) -> None:
    """Start ``workers`` HTTP processes on one socket; start again any that dies; stop them on SIGTERM / SIGINT."""
    try:
        sock = http_socket(settings)
    except OSError as exc:
        log.error("cannot listen for HTTP on %s:%d: %s", settings.bind, settings.http_port, exc.strerror or exc)
        raise SystemExit(3) from None  # as uvicorn exits when its port is taken
    # a plain Settings (the one from a --config file is a local subclass, which cannot be pickled to a worker)
    shared = Settings.model_validate(
        {**settings.model_dump(), "http_max_connections": max(1, settings.http_max_connections // workers)}
    )
    context = multiprocessing.get_context("spawn")
    parent = os.getpid()

    def start(n: int) -> multiprocessing.process.BaseProcess:
        process = context.Process(
            target=_worker, args=(shared, sock, parent, operations_factory), name=f"dicomcheck-http-{n}", daemon=False
        )
        process.start()
        return process

    stopped = stop if stop is not None else threading.Event()  # the caller's, which may be set already
    previous = {sig: signal.signal(sig, lambda *_: stopped.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    processes = [start(n) for n in range(workers)]
    log.info("HTTP: %d worker processes on %s:%d", workers, settings.bind, sock.getsockname()[1])
    try:
        while not stopped.wait(0.5):
            for n, process in enumerate(processes):
                if not process.is_alive() and not stopped.is_set():
                    log.warning(
                        "HTTP worker %d (pid %s) exited with %s: started again", n, process.pid, process.exitcode
                    )
                    processes[n] = start(n)
    finally:
        for process in processes:
            if process.is_alive() and process.pid is not None:
                os.kill(process.pid, signal.SIGTERM)
        for process in processes:
            process.join(timeout=15)
            if process.is_alive():
                process.kill()
                process.join()
        sock.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _worker(
    settings: Settings,
    sock: socket.socket,
    parent: int,
    operations_factory: Callable[[Settings], StudyOperations],
) -> None:  # pragma: no cover - runs in a worker process (tests/test_api_scale.py)
    _die_with(parent)
    _serve(settings, operations_factory(settings), sockets=[sock])


def _die_with(parent: int) -> None:
    """Be killed when the main process ends, however it ends (Linux ``PR_SET_PDEATHSIG``); elsewhere,
    and for a parent that ended before this call, a thread watching the parent process id."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        pass

    def watch() -> None:
        while os.getppid() == parent:
            threading.Event().wait(1.0)
        os._exit(1)

    if os.getppid() != parent:
        os._exit(1)
    threading.Thread(target=watch, name="parent-watch", daemon=True).start()
