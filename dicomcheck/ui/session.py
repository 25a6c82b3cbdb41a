"""Web page sessions: a signed, expiring cookie naming an API token by its row id (never the token), and
the CSRF token every form but sign-in carries, bound to that session.

The signing secret is a random key in the data folder (``ui-session.key``, created 0600 on first use);
deleting it ends every session. A session ends at its own expiry, at the token's expiry, or as soon
as the token is revoked (the token is checked on every request, like a bearer token).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

COOKIE = "dicomcheck_session"
SESSION_SECONDS = 8 * 3600
"""A session lasts one working shift at most (and never beyond its token's expiry)."""
SECRET_NAME = "ui-session.key"


def session_secret(data_dir: Path) -> bytes:
    """The signing key of the data folder, created (0600, exclusively) on first use."""
    path = data_dir / SECRET_NAME
    try:
        return bytes.fromhex(path.read_text().strip())
    except FileNotFoundError:
        pass
    data_dir.mkdir(parents=True, exist_ok=True)
    key = secrets.token_bytes(32)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process created it a moment ago: use that one
        return bytes.fromhex(path.read_text().strip())
    with os.fdopen(fd, "w") as fh:
        fh.write(key.hex() + "\n")
    return key


@dataclass(frozen=True, slots=True)
class PageSession:
    """What the cookie says: the token's row id, when the session ends, and its CSRF nonce."""

    token_id: int
    expires: int
    """Unix time."""
    nonce: str

    def csrf(self, secret: bytes) -> str:
        """The CSRF token of this session (forms carry it; it changes with every sign-in)."""
        return hmac.new(secret, f"csrf:{self.token_id}:{self.nonce}".encode(), hashlib.sha256).hexdigest()

    def csrf_ok(self, secret: bytes, given: str | None) -> bool:
        return bool(given) and hmac.compare_digest(self.csrf(secret), given or "")


def new_session(token_id: int, token_expires: float | None) -> PageSession:
    expires = int(time.time()) + SESSION_SECONDS
    if token_expires is not None:
        expires = min(expires, int(token_expires))
    return PageSession(token_id, expires, secrets.token_urlsafe(16))


def encode(session: PageSession, secret: bytes) -> str:
    payload = base64.urlsafe_b64encode(
        json.dumps([session.token_id, session.expires, session.nonce], separators=(",", ":")).encode()
    ).decode()
    return f"{payload}.{_sign(payload, secret)}"


def decode(cookie: str | None, secret: bytes) -> PageSession | None:
    """The session of a cookie whose signature holds and that has not expired, else None."""
    if not cookie or len(cookie) > 512 or cookie.count(".") != 1:
        return None
    payload, signature = cookie.split(".")
    if not hmac.compare_digest(_sign(payload, secret), signature):
        return None
    try:
        token_id, expires, nonce = json.loads(base64.urlsafe_b64decode(payload.encode()))
    except (ValueError, TypeError):
        return None
    if not isinstance(token_id, int) or not isinstance(expires, int) or not isinstance(nonce, str):
        return None
    if expires <= time.time():
        return None
    return PageSession(token_id, expires, nonce)


def _sign(payload: str, secret: bytes) -> str:
    return hmac.new(secret, b"session:" + payload.encode(), hashlib.sha256).hexdigest()
