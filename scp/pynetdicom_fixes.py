"""Fault fixes for pynetdicom 3.0.4: what peer input could do to the library, always on.

Each fix below names the fault it removes and the test that shows it; speed tuning is elsewhere
(``scp/tuning.py``, the ``speed_tuning`` setting). The fixes replace methods of pynetdicom's
internal classes, so they are written against one exact version (:data:`VERIFIED_VERSION`, pinned
``==`` in pyproject.toml): on any other version the receiver refuses to start
(:class:`UnverifiedPynetdicom`) rather than run half-patched.

* **Spool files** (:func:`spool_factory`): pynetdicom receives a C-STORE data set in chunks into
  ``tempfile.NamedTemporaryFile`` with no folder and no way to choose another file type. Ours go to
  the storage volume's ``.tmp`` as :class:`~dicomcheck.store.files.SpoolFile` (a full volume gives
  0xA700 instead of killing the network thread: tests/test_receiver_faults.py).
* **Dropped data set files** (:func:`_decode_msg_cleaned`, :func:`_serve_request_cleaned`,
  :func:`_discard_queued`): a second command set arriving before the data set of the first, a
  C-STORE-RQ whose SOP class is not a storage class, or a message still queued when the
  association ends, left its file in ``storage/.tmp`` (tests/test_receiver_fuzz.py).
* **Exceptions abort** (:func:`_dul_run_reactor`, :func:`_assoc_run_guarded`): an exception from the
  DUL state machine or in an acceptor's association thread killed the thread: the association was
  never answered or ended without EVT_ABORTED (provenance row left open). Now: A-ABORT, socket
  closed, EVT_ABORTED (tests/test_receiver_fuzz.py).
* **PDU deadline** (:func:`_recv`, :func:`_read_pdu_data_bounded`, issue 8): a PDU read with
  blocking ``recv`` calls, each bounded only by the socket timeout, let a peer dripping one byte a
  second keep its thread and association slot forever, and the ARTIM timer (``acse_timeout``, PS3.8
  §9.1.5) was only looked at between PDUs. Now a PDU has a deadline from its first byte
  (``pdu_deadline``) and no later than the ARTIM expiry (tests/test_receiver_limits.py).

The DUL reactor is pynetdicom 3.0.4's loop with the exception handling above; how it waits when
idle is :data:`IDLE` (pynetdicom's sleep, or the event waits of the ``reactor`` tuning step).
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pynetdicom
from pynetdicom import _config, dimse_messages, evt
from pynetdicom.association import Association
from pynetdicom.dimse_messages import DIMSEMessage
from pynetdicom.dul import DULServiceProvider
from pynetdicom.transport import AssociationSocket

from dicomcheck.store.files import SpoolFile

log = logging.getLogger(__name__)

VERIFIED_VERSION = "3.0.4"
"""The pynetdicom release these fixes and scp/tuning.py are written and tested against."""

PYNETDICOM_RECV_CHUNK = 4096
"""pynetdicom's read size; the ``recv`` tuning step raises :data:`LIMITS` ``.recv_chunk``."""


class UnverifiedPynetdicom(RuntimeError):
    """The installed pynetdicom is not the version the receive path is verified with."""


def require_verified_version(version: str | None = None) -> None:
    """Refuse (one line) to run the receiver on a pynetdicom other than :data:`VERIFIED_VERSION`."""
    version = pynetdicom.__version__ if version is None else version
    if version != VERIFIED_VERSION:
        raise UnverifiedPynetdicom(
            f"pynetdicom {version} is installed, but the receiver's fixes are verified with pynetdicom "
            f"{VERIFIED_VERSION} only: install pynetdicom=={VERIFIED_VERSION} (as pyproject.toml pins it)"
        )


@dataclass
class _Limits:
    pdu_deadline: float = 60.0
    recv_chunk: int = PYNETDICOM_RECV_CHUNK


LIMITS = _Limits()
"""Process-wide values of the patched reading (``install`` sets the deadline, tuning the chunk)."""


def _sleep_like_pynetdicom(dul: DULServiceProvider) -> None:
    time.sleep(dul._run_loop_delay)


def _nothing(dul: DULServiceProvider) -> None:
    """No wake-up to give: without event waits the association reactor polls."""


@dataclass
class _IdleHooks:
    """How the DUL reactor waits when idle, and whom it tells; the ``reactor`` tuning step replaces them."""

    wait: Callable[[DULServiceProvider], None] = _sleep_like_pynetdicom
    queued_for_association: Callable[[DULServiceProvider], None] = _nothing
    ended: Callable[[DULServiceProvider], None] = _nothing


IDLE = _IdleHooks()
_ORIGINAL: dict[str, Any] = {}
_lock = threading.Lock()


def install(*, spool_dir: Path, pdu_deadline: float) -> None:
    """Apply the fault fixes in this process (once; later calls only update the values)."""
    require_verified_version()
    LIMITS.pdu_deadline = float(pdu_deadline)
    spool_dir.mkdir(parents=True, exist_ok=True)
    _config.STORE_RECV_CHUNKED_DATASET = True  # data sets stream to a file, never into memory
    dimse_messages.NamedTemporaryFile = spool_factory(spool_dir)  # type: ignore[assignment]
    with _lock:
        if _ORIGINAL:
            return
        _ORIGINAL.update(
            read_pdu_data=DULServiceProvider._read_pdu_data,
            run_reactor=Association.run_reactor,
            serve_request=Association._serve_request,
            decode_msg=DIMSEMessage.decode_msg,
        )
        AssociationSocket.recv = _recv  # type: ignore[method-assign]
        DULServiceProvider._read_pdu_data = _read_pdu_data_bounded  # type: ignore[method-assign]
        DULServiceProvider.run_reactor = _dul_run_reactor  # type: ignore[method-assign]
        Association.run_reactor = _assoc_run_guarded  # type: ignore[method-assign]
        Association._serve_request = _serve_request_cleaned  # type: ignore[method-assign]
        DIMSEMessage.decode_msg = _decode_msg_cleaned  # type: ignore[method-assign]


# ---------------------------------------------------------------------------------------------- PDU deadline
def _recv(self: AssociationSocket, nr_bytes: int) -> bytearray:
    """``AssociationSocket.recv``: up to ``nr_bytes``, blocking; fewer only if the peer closed.

    While a PDU is read (``_read_pdu_data`` sets ``_dc_deadline``) no read waits beyond its
    deadline, however often bytes trickle in: then the connection is shut down and the bytes read
    so far returned, which pynetdicom takes for a connection closed in the middle of the PDU (Evt17).
    Reads with ``recv_into`` into a reused buffer of :data:`LIMITS` ``.recv_chunk``; the result grows
    only as bytes arrive, so a PDU header claiming gigabytes allocates nothing until they are sent.
    """
    sock = self.socket
    assert sock is not None
    size = LIMITS.recv_chunk
    buffer = getattr(self, "_dc_buffer", None)
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
    try:
        peer = str(self.socket.getpeername()[0])  # type: ignore[union-attr]
    except Exception:  # noqa: BLE001
        peer = "?"
    log.warning("a PDU from %s did not arrive within its deadline: closing the connection", peer)
    try:
        self.socket.shutdown(socket.SHUT_RDWR)  # type: ignore[union-attr]  # later reads end at once
    except OSError:
        pass


def _read_pdu_data_bounded(self: DULServiceProvider) -> None:
    """``DULServiceProvider._read_pdu_data`` with a deadline for the whole PDU: ``pdu_deadline``
    from now (the reactor calls it when the PDU's first bytes are readable), and no later than
    the ARTIM timer's expiry while it runs (an acceptor waiting for the A-ASSOCIATE-RQ, or for the
    close after a release / rejection)."""
    wrapped = self.socket
    if wrapped is None:
        return _ORIGINAL["read_pdu_data"](self)
    deadline = time.monotonic() + LIMITS.pdu_deadline
    artim = self.artim_timer
    if artim._start_time is not None and artim._end_time is None and artim.timeout is not None:
        deadline = min(deadline, time.monotonic() + max(0.0, artim.remaining))
    wrapped._dc_deadline = deadline  # type: ignore[attr-defined]
    try:
        return _ORIGINAL["read_pdu_data"](self)
    finally:
        wrapped._dc_deadline = None  # type: ignore[attr-defined]


# ---------------------------------------------------------------------------------------------- exceptions abort
def _dul_run_reactor(self: DULServiceProvider) -> None:
    """pynetdicom 3.0.4 ``DULServiceProvider.run_reactor``, except that an exception from the state
    machine aborts the association like one from the transport does (pynetdicom let it kill the
    thread), with the socket closed and EVT_ABORTED in both cases; idle waits are :data:`IDLE`'s."""
    self._idle_timer.start()
    sleep = False
    try:
        while True:
            if not self.assoc._dul_ready.is_set():
                self.assoc._dul_ready.set()
                sleep = True
            if sleep:
                IDLE.wait(self)
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
                IDLE.queued_for_association(self)
            sleep = False
    finally:
        IDLE.queued_for_association(self)
        IDLE.ended(self)


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
    messages still queued when the association ends have their data set files removed."""
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


# ---------------------------------------------------------------------------------------------- data set files
def _discard_queued(assoc: Association) -> None:
    while True:
        try:
            _, msg = assoc.dimse.msg_queue.get(block=False)
        except Exception:  # queue.Empty
            return
        SpoolFile.discard(getattr(msg, "_dataset_file", None))


def _serve_request_cleaned(self: Association, msg: Any, context_id: int) -> None:
    """``Association._serve_request``, then remove a received data set file nobody consumed
    (a C-STORE-RQ whose SOP class is not a storage class never reaches the storage service, which
    is what removes it otherwise)."""
    try:
        _ORIGINAL["serve_request"](self, msg, context_id)
    finally:
        SpoolFile.discard(getattr(msg, "_dataset_file", None))


_created = threading.local()


def spool_factory(spool_dir: Path) -> Callable[..., SpoolFile]:
    """``pynetdicom.dimse_messages.NamedTemporaryFile``: a :class:`SpoolFile` in ``spool_dir``, noted
    while a P-DATA primitive is decoded (see :func:`_decode_msg_cleaned`)."""
    folder = str(spool_dir)

    def create(*args: Any, **kwargs: Any) -> SpoolFile:
        spool = SpoolFile(*args, **{**kwargs, "dir": folder})
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
