"""Running the API under uvicorn, with patient IDs kept out of the access log."""

from __future__ import annotations

import logging
import re

import uvicorn

from ..config import Settings
from ..ingest import Receiver
from .app import create_app

_PATIENT_ID = re.compile(r"(?i)(patient_id=)[^&\s]*")


class RedactPatientIds(logging.Filter):
    """uvicorn's access log records the query string; patient IDs in it are masked."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(_PATIENT_ID.sub(r"\1[redacted]", a) if isinstance(a, str) else a for a in record.args)
        if isinstance(record.msg, str):
            record.msg = _PATIENT_ID.sub(r"\1[redacted]", record.msg)
        return True


def run_api(settings: Settings, receiver: Receiver) -> None:
    """Serve until SIGTERM / SIGINT (uvicorn installs the signal handlers)."""
    app = create_app(receiver)
    config = uvicorn.Config(app, host=settings.bind, port=settings.http_port, log_level="info", proxy_headers=False)
    server = uvicorn.Server(config)
    config.load()
    logging.getLogger("uvicorn.access").addFilter(RedactPatientIds())
    server.run()
