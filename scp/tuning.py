"""Receive-path tuning of pynetdicom, measured in bench/README.md ("Receiver").

pynetdicom runs two polling loops per association: the DUL reactor (socket -> PDUs) sleeps 1 ms
whenever its socket has nothing to read, and the association reactor (PDUs -> DIMSE -> C-STORE
handler) sleeps 1 ms before every look at its message queue. On one association each C-STORE
round trip crosses those loops three times (request in, handler, response out): measured, the
sleeps cost ~1 ms an instance and the wake-ups slowed the handler by another ~0.8 ms (GIL); it
also reads every PDU 4 KB at a time. The steps below remove that latency and overhead without
touching what is received, stored or answered:

``quiet``    no per-PDU / per-DIMSE standard log handlers (``_config.LOG_HANDLER_LEVEL = "none"``;
             pynetdicom's logger is at WARNING here anyway, but the handlers still format).
``recv``     read a PDU with ``recv_into`` in chunks of up to 256 KB instead of 4 KB ``recv`` calls.
``reactor``  event-driven reactors: the DUL waits in ``select()`` on its socket and a wake-up pipe
             (written when a primitive is queued for sending or the DUL is stopped) instead of
             sleeping; the association reactor waits on an event the DUL sets when it queued
             something for it (or a sender wants the reactor paused) instead of sleeping 1 ms.
             Timers (ARTIM, network idle) are still checked at least every 50 ms. Acceptors
             only; associations we request keep pynetdicom's loop.
``nodelay``  ``TCP_NODELAY`` on every accepted socket (the response leaves at once).
``context``  copy the ~170 supported presentation contexts for each new association with a
             shallow copy (pynetdicom deep-copies them, re-validating every UID: ~26 ms per
             association here).

All are on by default. ``DICOMCHECK_SCP_TUNING`` selects them for measurements: ``none``, ``all``
or a comma list (e.g. ``quiet,recv``). They change only *when* loops wake up and how bytes are read,
never the state machine or the data.

Whatever the tuning, the same patched reactors also fix what peer input could do to pynetdicom 3.0
(found by tests/test_receiver_fuzz.py):

* an exception from the DUL state machine, or in an association thread (e.g. while negotiating),
  killed the thread: the association was never answered or ended without EVT_ABORTED (its
  provenance row left open, a partial file left). Now it is logged, the association aborted
  (A-ABORT) and EVT_ABORTED triggered;
* a data set file received for a C-STORE-RQ that no storage service handled (a SOP class that is
  not a storage class), or dropped when a second command set arrived before the data set, was left
  in ``storage/.tmp``: it is removed.

and what a peer could do to it by sending slowly (issue 8, tests/test_receiver_limits.py):

* the DUL reads a PDU with blocking ``recv`` calls, each bounded only by the socket timeout: one byte
  a second restarts it forever. The ARTIM timer (``acse_timeout``, PS3.8 §9.1.5) started at the
  connection was only looked at between PDUs, and ``Association.kill`` waits for the DUL thread, so a
  peer dripping its A-ASSOCIATE-RQ kept its thread, socket and association slot without limit. Now
  every PDU has a deadline from its first byte (``pdu_deadline``), and one read while the ARTIM timer
  runs (waiting for the A-ASSOCIATE-RQ, or for the close after a release / rejection) ends when it
  expires; then the connection is shut down (``_read_pdu_data`` / ``_recv``). The deadline holds
  whatever tuning steps are selected.
* ``ACSE`` counts every acceptor thread against ``maximum_associations`` (local-limit-exceeded
  rejection), also connections that have not sent their A-ASSOCIATE-RQ: 24 such connections locked
  every real peer out. ``scp.server.ReceiverAE`` counts associations only (see there).

The patches replace methods of pynetdicom 3.0 classes and are applied only to that version
(checked); with any other version the library runs unpatched and a warning is logged.
"""

from __future__ import annotations

import copy
import logging
import os
import select
import socket
import threading
import time
import weakref
from typing import Any

import pynetdicom
from pynetdicom import _config, evt
from pynetdicom.association import Association
from pynetdicom.dimse_messages import DIMSEMessage
from pynetdicom.dul import DULServiceProvider
from pynetdicom.transport import AssociationSocket

from dicomcheck.store.files import SpoolFile

log = logging.getLogger(__name__)

STEPS = ("quiet", "recv", "reactor", "nodelay", "context")
ENV = "DICOMCHECK_SCP_TUNING"
PATCHED_VERSIONS = ("3.0.",)
"""pynetdicom versions whose reactor code the patches were written against (pyproject pins <3.1)."""

TIMER_CHECK = 0.05
"""Longest wait of a reactor without an event, so ARTIM / idle timers are still checked."""

RECV_CHUNK = 256 * 1024
PYNETDICOM_RECV_CHUNK = 4096
_RECV_CHUNK = [RECV_CHUNK]

PDU_DEADLINE = [60.0]
"""Seconds one PDU may take from its first byte (``Settings.pdu_deadline``, set by :func:`set_limits`)."""

_applied: set[str] = set()
_lock = threading.Lock()
_EVENT_DRIVEN = [False]
"""Whether the patched reactors wait for events ("reactor" step) or sleep like pynetdicom."""


def selected(value: str | None = None) -> set[str]:
    """The steps named by ``DICOMCHECK_SCP_TUNING`` (default: all)."""
    value = os.environ.get(ENV, "all") if value is None else value
    value = value.strip().lower()
    if value in ("", "all"):
        return set(STEPS)
    if value == "none":
        return set()
    steps = {s.strip() for s in value.split(",") if s.strip()}
    unknown = steps - set(STEPS)
    if unknown:
        raise ValueError(f"{ENV}: unknown tuning steps {sorted(unknown)} (known: {', '.join(STEPS)}, all, none)")
    return steps


def apply(steps: set[str] | None = None) -> set[str]:
    """Apply the tuning steps once per process; returns the steps in effect."""
    steps = selected() if steps is None else steps
    with _lock:
        known = pynetdicom.__version__.startswith(PATCHED_VERSIONS)
        if not known:
            log.warning("pynetdicom %s is not %s: receive-path patches not applied", pynetdicom.__version__, PATCHED_VERSIONS)
            steps = steps - {"recv", "reactor", "context"}
        if "quiet" in steps:
            _config.LOG_HANDLER_LEVEL = "none"
        if known:  # the PDU deadline holds whatever the steps; "recv" chooses the read size only
            AssociationSocket.recv = _recv  # type: ignore[method-assign]
            _RECV_CHUNK[0] = RECV_CHUNK if "recv" in steps else PYNETDICOM_RECV_CHUNK
        if known and not _ORIGINAL:
            _patch_reactors()
        if "reactor" in steps:
            _EVENT_DRIVEN[0] = True
        _applied.update(steps)
    return steps


def applied() -> set[str]:
    return set(_applied)


def set_limits(*, pdu_deadline: float) -> None:
    """Process-wide limits of the patched reading (``configure_process`` passes the settings)."""
    PDU_DEADLINE[0] = float(pdu_deadline)


# ---------------------------------------------------------------------------------------------- recv
def _recv(self: AssociationSocket, nr_bytes: int) -> bytearray:
    """``AssociationSocket.recv``: up to ``nr_bytes``, blocking; fewer only if the peer closed.

    Same contract as pynetdicom's, but reads with ``recv_into`` up to 256 KB at a time (``recv``
    step; else pynetdicom's 4 KB) into a reused per-socket buffer. The result grows only as bytes
    arrive, so a PDU header claiming gigabytes allocates nothing until they are actually sent.

    While a PDU is read (``_read_pdu_data`` sets ``_dc_deadline``) no read waits beyond its
    deadline, however often bytes trickle in: then the connection is shut down and the bytes read
    so far returned, which pynetdicom's ``_read_pdu_data`` takes for a connection closed in the
    middle of the PDU (Evt17; logged as an error without a traceback).
    """
    sock = self.socket
    assert sock is not None
    buffer = getattr(self, "_dc_buffer", None)
    size = _RECV_CHUNK[0]
    if buffer is None or len(buffer) != size:
        buffer = self._dc_buffer = memoryview(bytearray(size))  # type: ignore[attr-defined]
    deadline: float | None = getattr(self, "_dc_deadline", None)
    timeout = sock.gettimeout() if deadline is not None else None
    bounded = False
    out = bytearray()
    remaining = nr_bytes
    try:
        while remaining > 0:
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    _deadline_passed(self)
                    return out
                if timeout is None or left < timeout:
                    sock.settimeout(left)
                    bounded = True
            try:
                got = sock.recv_into(buffer, min(remaining, size))
            except TimeoutError:
                if deadline is not None and deadline - time.monotonic() <= 0:
                    _deadline_passed(self)
                    return out
                raise
            if not got:  # connection closed: return what we have (the caller checks the length)
                return out
            out += buffer[:got]
            remaining -= got
    finally:
        if bounded:
            try:
                sock.settimeout(timeout)
            except OSError:  # shut down meanwhile
                pass
    return out


def _deadline_passed(self: AssociationSocket) -> None:
    log.warning("a PDU from %s did not arrive within its deadline: closing the connection", _peer_address(self))
    try:
        self.socket.shutdown(socket.SHUT_RDWR)  # type: ignore[union-attr]  # later reads end at once
    except OSError:
        pass


def _peer_address(self: AssociationSocket) -> str:
    try:
        return str(self.socket.getpeername()[0])  # type: ignore[union-attr]
    except Exception:  # noqa: BLE001
        return "?"


def _read_pdu_data_bounded(self: DULServiceProvider) -> None:
    """``DULServiceProvider._read_pdu_data`` with a deadline for the whole PDU: ``pdu_deadline``
    from now (the reactor calls it when the PDU's first bytes are readable), and no later than
    the ARTIM timer's expiry while it runs (an acceptor waiting for the A-ASSOCIATE-RQ: PS3.8
    §9.1.5, ``acse_timeout`` from the TCP connection; or for the close after release/rejection)."""
    wrapped = self.socket
    if wrapped is None:
        return _ORIGINAL["read_pdu_data"](self)
    deadline = time.monotonic() + PDU_DEADLINE[0]
    artim = self.artim_timer
    if artim._start_time is not None and artim._end_time is None and artim.timeout is not None:
        deadline = min(deadline, time.monotonic() + max(0.0, artim.remaining))
    wrapped._dc_deadline = deadline  # type: ignore[attr-defined]
    try:
        return _ORIGINAL["read_pdu_data"](self)
    finally:
        wrapped._dc_deadline = None  # type: ignore[attr-defined]


# ---------------------------------------------------------------------------------------------- reactors
def _patch_reactors() -> None:
    original_dul_init = DULServiceProvider.__init__
    original_assoc_init = Association.__init__
    original_send_pdu = DULServiceProvider.send_pdu
    original_kill_dul = DULServiceProvider.kill_dul

    def dul_init(self: DULServiceProvider, assoc: Any) -> None:
        original_dul_init(self, assoc)
        pipe = self._dc_pipe = _WakePipe()  # type: ignore[attr-defined]
        weakref.finalize(self, pipe.close)  # a DUL whose reactor never ran

    def assoc_init(self: Association, ae: Any, mode: str) -> None:
        wake = self._dc_wake = threading.Event()  # type: ignore[attr-defined]
        original_assoc_init(self, ae, mode)
        # A thread that wants to send on this association clears the checkpoint and waits until the
        # reactor pauses there: wake the reactor so it gets there at once.
        self._reactor_checkpoint = _Checkpoint(wake)

    def send_pdu(self: DULServiceProvider, primitive: Any) -> None:
        original_send_pdu(self, primitive)
        _wake_dul(self)

    def kill_dul(self: DULServiceProvider) -> None:
        original_kill_dul(self)
        _wake_dul(self)

    def stop_dul(self: DULServiceProvider) -> bool:
        if self.state_machine.current_state == "Sta1":
            self._kill_thread = True
            _wake_dul(self)
            while self.is_alive():
                time.sleep(0.0005)
            return True
        return False

    DULServiceProvider.__init__ = dul_init  # type: ignore[method-assign]
    Association.__init__ = assoc_init  # type: ignore[method-assign]
    DULServiceProvider.send_pdu = send_pdu  # type: ignore[method-assign]
    DULServiceProvider.kill_dul = kill_dul  # type: ignore[method-assign]
    DULServiceProvider.stop_dul = stop_dul  # type: ignore[method-assign]
    DULServiceProvider.run_reactor = _dul_run_reactor  # type: ignore[method-assign]
    _ORIGINAL["assoc_run_reactor"] = Association._run_reactor
    Association._run_reactor = _assoc_run_reactor  # type: ignore[method-assign]
    _ORIGINAL["run_reactor"] = Association.run_reactor
    Association.run_reactor = _assoc_run_guarded  # type: ignore[method-assign]
    _ORIGINAL["serve_request"] = Association._serve_request
    Association._serve_request = _serve_request_cleaned  # type: ignore[method-assign]
    _ORIGINAL["decode_msg"] = DIMSEMessage.decode_msg
    DIMSEMessage.decode_msg = _decode_msg_cleaned  # type: ignore[method-assign]
    _ORIGINAL["read_pdu_data"] = DULServiceProvider._read_pdu_data
    DULServiceProvider._read_pdu_data = _read_pdu_data_bounded  # type: ignore[method-assign]


_ORIGINAL: dict[str, Any] = {}


class _Checkpoint(threading.Event):
    """``Association._reactor_checkpoint`` (set: run; cleared: pause) that wakes the reactor when cleared."""

    def __init__(self, wake: threading.Event) -> None:
        super().__init__()
        self._wake = wake
        self.set()

    def clear(self) -> None:
        super().clear()
        self._wake.set()


class _WakePipe:
    """A non-blocking pipe that wakes a DUL reactor's ``select()``; closed exactly once, and never
    written after closing (a closed descriptor number may already belong to another file)."""

    def __init__(self) -> None:
        self.read, self.write = os.pipe()
        os.set_blocking(self.read, False)
        os.set_blocking(self.write, False)
        self.lock = threading.Lock()
        self.open = True

    def wake(self) -> None:
        with self.lock:
            if self.open:
                try:
                    os.write(self.write, b"!")
                except BlockingIOError:  # full: the reactor has plenty of wake-ups to read
                    pass

    def drain(self) -> None:
        with self.lock:
            if self.open:
                try:
                    while os.read(self.read, 4096):
                        pass
                except BlockingIOError:
                    pass

    def close(self) -> None:
        with self.lock:
            if self.open:
                self.open = False
                os.close(self.read)
                os.close(self.write)


def _wake_dul(dul: DULServiceProvider) -> None:
    pipe = getattr(dul, "_dc_pipe", None)
    if pipe is not None:
        pipe.wake()


def _wake_assoc(dul: DULServiceProvider) -> None:
    wake = getattr(dul.assoc, "_dc_wake", None)
    if wake is not None:
        wake.set()


def _dul_wait(self: DULServiceProvider) -> None:
    """Sleep until the socket is readable, a primitive is queued, or TIMER_CHECK passes."""
    if not _EVENT_DRIVEN[0]:  # pynetdicom's own timing
        time.sleep(self._run_loop_delay)
        return
    if self.to_provider_queue.qsize() or self.event_queue.qsize() or self._kill_thread:
        return
    pipe: _WakePipe = self._dc_pipe  # type: ignore[attr-defined]
    if not pipe.open:
        time.sleep(self._run_loop_delay)
        return
    wrapped = self.socket
    sock = wrapped.socket if wrapped is not None and wrapped._is_connected else None
    watch: list[Any] = [pipe.read]
    if sock is not None:
        pending = getattr(sock, "pending", None)
        if pending is not None and pending():  # TLS: bytes already decrypted in the SSL buffer
            return
        watch.append(sock)
    timeout = TIMER_CHECK if sock is not None else self._run_loop_delay
    try:
        ready, _, _ = select.select(watch, [], [], timeout)
    except (OSError, ValueError):  # socket closed meanwhile: let the reactor find out
        return
    if pipe.read in ready:
        pipe.drain()


def _dul_run_reactor(self: DULServiceProvider) -> None:
    """pynetdicom 3.0 ``DULServiceProvider.run_reactor`` with the idle sleep made a ``select()``.

    The same control flow, except: ``time.sleep(self._run_loop_delay)`` -> ``_dul_wait``; the
    association reactor is woken when the state machine queued something for it and when the loop
    ends; and an exception from the state machine aborts the association like one from the
    transport does (pynetdicom let it kill the thread), with EVT_ABORTED in both cases.
    """
    self._idle_timer.start()
    sleep = False
    try:
        while True:
            if not self.assoc._dul_ready.is_set():
                self.assoc._dul_ready.set()
                sleep = True

            if sleep:
                _dul_wait(self)

            if self._kill_thread:
                break

            if self.artim_timer.expired:
                self.event_queue.put("Evt18")

            try:
                if self._process_recv_primitive():
                    pass
                elif self._is_transport_event():
                    self._idle_timer.restart()
            except Exception as exc:
                _dul_abort(self, exc, "Exception in DUL.run(), aborting association")
                return

            try:
                event = self.event_queue.get(block=False)
            except Exception:  # queue.Empty
                sleep = True
                continue

            try:
                self.state_machine.do_action(event)
            except Exception as exc:
                _dul_abort(self, exc, "Exception in the DUL state machine, aborting association")
                return
            if self.to_user_queue.qsize() or self.assoc.dimse.msg_queue.qsize():
                _wake_assoc(self)  # only when there is something for it (not per data PDU)
            sleep = False
    finally:
        _wake_assoc(self)
        self._dc_pipe.close()  # type: ignore[attr-defined]


def _dul_abort(self: DULServiceProvider, exc: Exception, message: str) -> None:
    """Abort the association from the DUL thread: A-ABORT to the peer, close, EVT_ABORTED."""
    from pynetdicom.dul import LOGGER
    from pynetdicom.pdu import A_ABORT_RQ

    LOGGER.error(message)
    LOGGER.exception(exc)
    abort_pdu = A_ABORT_RQ()
    abort_pdu.source = 0x02
    abort_pdu.reason_diagnostic = 0x00
    sock = self.socket
    try:
        if sock is not None:
            sock.send(abort_pdu.encode())
    except Exception:  # noqa: BLE001 - the peer may be gone already
        pass
    assoc = self.assoc
    was_open = not (assoc.is_aborted or assoc.is_released or assoc.is_rejected)
    assoc.is_aborted = True
    assoc.is_established = False
    assoc._kill = True
    self._kill_thread = True
    try:
        if sock is not None:
            sock.close()
    except Exception:  # noqa: BLE001
        pass
    if was_open:
        evt.trigger(assoc, evt.EVT_ABORTED, {})


def _assoc_run_guarded(self: Association) -> None:
    """``Association.run_reactor``: an exception in an acceptor's thread (e.g. while negotiating a
    request pynetdicom cannot handle) aborts the association instead of killing the thread silently;
    messages still queued when the association ends (a C-STORE-RQ followed at once by an A-ABORT)
    have their data set files removed."""
    from pynetdicom.association import LOGGER

    try:
        _ORIGINAL["run_reactor"](self)
        if self.is_acceptor:
            _discard_queued(self)
    except Exception as exc:
        if not self.is_acceptor:
            raise
        LOGGER.error("Exception in the association thread, aborting association")
        LOGGER.exception(exc)
        try:
            self.abort()  # A-ABORT to the peer, EVT_ABORTED, stops the DUL
        except Exception:  # noqa: BLE001
            self.kill()
            evt.trigger(self, evt.EVT_ABORTED, {})
        sock = self.dul.socket
        if self._server is not None and sock is not None and sock.socket is not None:
            self._server.shutdown_request(sock.socket)
        _discard_queued(self)


def _discard_queued(assoc: Association) -> None:
    while True:
        try:
            _, msg = assoc.dimse.msg_queue.get(block=False)
        except Exception:  # queue.Empty
            return
        SpoolFile.discard(getattr(msg, "_dataset_file", None))


def _serve_request_cleaned(self: Association, msg: Any, context_id: int) -> None:
    """``Association._serve_request``, then remove a received data set file nobody consumed.

    pynetdicom's storage service removes it after the C-STORE handler (which has already moved it
    into storage); a C-STORE-RQ whose SOP class is not a storage class never reaches that service.
    """
    try:
        _ORIGINAL["serve_request"](self, msg, context_id)
    finally:
        SpoolFile.discard(getattr(msg, "_dataset_file", None))


_created = threading.local()


def tracked(factory: Any) -> Any:
    """The data set file factory for ``pynetdicom.dimse_messages.NamedTemporaryFile``: ``factory``,
    with the files created while a P-DATA primitive is decoded noted (see ``_decode_msg_cleaned``)."""

    def create(*args: Any, **kwargs: Any) -> Any:
        spool = factory(*args, **kwargs)
        files = getattr(_created, "files", None)
        if files is not None:
            files.append(spool)
        return spool

    return create


def _decode_msg_cleaned(self: DIMSEMessage, primitive: Any, assoc: Any = None) -> bool:
    """``DIMSEMessage.decode_msg``; a second command set arriving before the data set of the first
    (even in the same P-DATA) replaces the first's data set file without closing it: remove it."""
    before = getattr(self, "_data_set_file", None)
    _created.files = []
    try:
        return _ORIGINAL["decode_msg"](self, primitive, assoc)
    finally:
        created, _created.files = _created.files, None
        current = getattr(self, "_data_set_file", None)
        for spool in ([before] if before is not None else []) + created:
            if spool is not current:
                SpoolFile.discard(spool)


def _assoc_run_reactor(self: Association) -> None:
    """pynetdicom 3.0 ``Association._run_reactor`` with the 1 ms sleep made an event wait.

    Acceptors only (the receiver); an association we request (e.g. sending evidence) keeps
    pynetdicom's own loop.
    """
    from pynetdicom.association import LOGGER

    if not self.is_acceptor:
        return _ORIGINAL["assoc_run_reactor"](self)

    wake: threading.Event = self._dc_wake  # type: ignore[attr-defined]
    self._is_paused = False
    while not self._kill:
        if not _EVENT_DRIVEN[0]:
            time.sleep(0.001)  # pynetdicom's own timing
        elif not (self.dimse.msg_queue.qsize() or self.dul.to_user_queue.qsize()):
            wake.wait(TIMER_CHECK)
        wake.clear()

        self._is_paused = True
        self._reactor_checkpoint.wait()
        self._is_paused = False

        context_id, msg = self.dimse.get_msg(block=False)
        if msg:
            self._serve_request(msg, context_id)  # type: ignore[arg-type]

        if self.is_established and self.acse.is_release_requested():
            self.acse.send_release(is_response=True)
            LOGGER.info("Association Released")
            self.is_released = True
            self.is_established = False
            evt.trigger(self, evt.EVT_RELEASED, {})
            self.kill()
            return

        if self.acse.is_aborted():
            log_msg = "Association Aborted"
            if self.acse.is_aborted("a-p-abort"):
                log_msg += " (A-P-ABORT)"
            LOGGER.info(log_msg)
            self.dul.receive_pdu(wait=False)
            self.is_aborted = True
            self.is_established = False
            evt.trigger(self, evt.EVT_ABORTED, {})
            self.kill()
            return

        if not self.dul.is_alive():
            self.kill()
            return

        if self.dul.idle_timer_expired():
            LOGGER.error("Network timeout reached")
            if self.network_timeout_response == "A-RELEASE":
                self._is_paused = True
                self._reactor_checkpoint.wait()
                self.release()
                self._is_paused = False
            else:
                self.abort()
            self.kill()
            return


# ---------------------------------------------------------------------------------------------- accepted sockets
def prepare_accepted(sock: socket.socket, steps: set[str]) -> None:
    """Per-connection socket options for an accepted association."""
    if "nodelay" in steps:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:  # not TCP (tests) or already closed
            pass


def share_contexts(contexts: list, steps: set[str]) -> list:
    """The server's supported contexts, cheap to copy per association when tuned."""
    return _SharedContexts(contexts) if "context" in steps else contexts


class _SharedContexts(list):
    """pynetdicom deep-copies the server's contexts for each association (``RequestHandler.
    _create_association``); this list copies each context shallowly instead, with its own list of
    transfer syntaxes (UIDs are immutable strings, the rest are scalars)."""

    def __deepcopy__(self, memo: dict) -> list:
        out = []
        for context in self:
            clone = copy.copy(context)
            clone._transfer_syntax = list(context._transfer_syntax)
            out.append(clone)
        return out
