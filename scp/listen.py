"""The DICOM listener of ``dicomcheck serve``: in this process, or N receiver processes behind one port.

Both run the same start-up (``scp.server.build_server``); this module only chooses, so the imports
go one way: listen -> workers -> server.
"""

from __future__ import annotations

import logging
import os

from dicomcheck.config import Settings
from dicomcheck.ingest import Receiver

from .pynetdicom_fixes import require_verified_version
from .server import start
from .workers import ReceiverProcesses

log = logging.getLogger(__name__)


def start_listening(settings: Settings, receiver: Receiver):
    """Listen on the DICOM port; returns at once with an object that has ``server_address`` and
    ``shutdown()``. ``receiver`` serves the associations in this process when ``processes`` is 1
    (or 0 on one core); with more, each receiver process builds its own. Raises
    ``UnverifiedPynetdicom`` (before any process starts) on a pynetdicom the receive path is not
    verified with, ``OSError`` on a port that cannot be opened."""
    require_verified_version()
    if not settings.allow_callers:
        log.warning("no --allow-caller configured: accepting associations from any calling AE title")
    processes = settings.processes or cores()
    if processes > 1:
        return ReceiverProcesses(settings, processes).start()
    return start(settings, receiver)


def cores() -> int:
    """The cores this process may run on (``processes`` 0)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)
