"""Where one C-STORE's wall time goes on the receiver (a measuring aid for bench/README.md).

Off unless ``DICOMCHECK_SCP_TRACE=/path/trace.json`` is set when the receiver starts
(``configure_process`` calls :func:`install`). Then every C-STORE on the process is cut into:

``receive``   first P-DATA PDU of the request read -> message complete (PDUs read, temp file written)
``dispatch``  message complete -> C-STORE handler starts (association reactor latency)
``handler``   the handler (``Receiver.store_file``: parse, facts, fsync, rename, journal entry)
``respond``   handler returned -> response PDU written to the socket (DUL reactor latency)
``sender``    response written -> first PDU of the next request read (the sender and the network)

and the handler's own parts (``parse``, ``facts``, ``sha256`` when the file is hashed again,
``fsync_file``, ``fsync_dir``), and the index writer's batches behind the answers (``add_instances``,
one call per batch). Totals and per-instance medians (ms) are written as JSON at
exit. Timing wrappers cost a few microseconds; single association only (one timeline).
"""

from __future__ import annotations

import atexit
import json
import os
import statistics
import threading
import time
from collections import defaultdict
from pathlib import Path

ENV = "DICOMCHECK_SCP_TRACE"

_lock = threading.Lock()
_phases: dict[str, list[float]] = defaultdict(list)
_parts: dict[str, list[float]] = defaultdict(list)
_state: dict[str, float | None] = {"first_pdu": None, "complete": None, "handler_end": None, "sent": None}
_installed = False


def install() -> bool:
    """Wrap the receive path with timers if ``DICOMCHECK_SCP_TRACE`` names an output file."""
    global _installed
    target = os.environ.get(ENV)
    if not target or _installed:
        return _installed
    _installed = True
    from pynetdicom.dimse import DIMSEServiceProvider
    from pynetdicom.dul import DULServiceProvider
    from pynetdicom.transport import AssociationSocket

    import dicomcheck.ingest as ingest
    import dicomcheck.store.files as files
    from dicomcheck.store.index import Index

    from . import handlers

    read_pdu = DULServiceProvider._read_pdu_data

    def traced_read_pdu(self):
        before = self._recv_pdu.qsize()
        read_pdu(self)
        now = time.perf_counter()
        if self._recv_pdu.qsize() > before and _state["first_pdu"] is None and _state["sent"] is not None:
            _record("sender", now - _state["sent"])
        if _state["first_pdu"] is None:
            _state["first_pdu"] = now

    receive = DIMSEServiceProvider.receive_primitive

    def traced_receive(self, primitive):
        before = self.msg_queue.qsize()
        receive(self, primitive)
        if self.msg_queue.qsize() > before and _state["first_pdu"] is not None:
            now = time.perf_counter()
            _record("receive", now - _state["first_pdu"])
            _state["complete"] = now

    send = AssociationSocket.send

    def traced_send(self, data):
        send(self, data)
        if _state["handler_end"] is not None:
            now = time.perf_counter()
            _record("respond", now - _state["handler_end"])
            _state["handler_end"] = None
            _state["sent"] = now
            _state["first_pdu"] = None

    on_store = handlers.Handlers.on_store

    def traced_on_store(self, event):
        start = time.perf_counter()
        if _state["complete"] is not None:
            _record("dispatch", start - _state["complete"])
            _state["complete"] = None
        try:
            return on_store(self, event)
        finally:
            end = time.perf_counter()
            _record("handler", end - start)
            _state["handler_end"] = end

    DULServiceProvider._read_pdu_data = traced_read_pdu  # type: ignore[method-assign]
    DIMSEServiceProvider.receive_primitive = traced_receive  # type: ignore[method-assign]
    AssociationSocket.send = traced_send  # type: ignore[method-assign]
    handlers.Handlers.on_store = traced_on_store  # type: ignore[method-assign]
    for module, name, label in (
        (ingest, "read_file_header", "parse"),
        (ingest, "extract_facts", "facts"),
        (ingest, "sha256_file", "sha256"),
        (files, "fsync_file", "fsync_file"),
        (files, "fsync_dir", "fsync_dir"),
    ):
        setattr(module, name, _timed(getattr(module, name), label))
    Index.add_instances = _timed(Index.add_instances, "add_instances")  # type: ignore[method-assign]
    atexit.register(write, Path(target))
    return True


def _timed(function, label: str):
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            with _lock:
                _parts[label].append(time.perf_counter() - start)

    wrapper.__wrapped__ = function  # type: ignore[attr-defined]
    return wrapper


def _record(phase: str, seconds: float) -> None:
    with _lock:
        _phases[phase].append(seconds)


def summary() -> dict:
    def stats(values: list[float]) -> dict:
        return {
            "n": len(values),
            "median_ms": round(1000 * statistics.median(values), 3),
            "mean_ms": round(1000 * statistics.fmean(values), 3),
            "total_s": round(sum(values), 3),
        }

    with _lock:
        return {
            "phases": {k: stats(v) for k, v in _phases.items() if v},
            "handler_parts": {k: stats(v) for k, v in _parts.items() if v},
        }


def write(path: Path) -> None:
    path.write_text(json.dumps(summary(), indent=2))
