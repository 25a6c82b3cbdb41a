"""The site key that signs evidence manifests (Ed25519, via the `cryptography` package).

The private key stays in ``DATA/keys/`` (mode 0600); the public key travels inside every pack, and
its fingerprint is printed by ``dicomcheck keys show`` so it can be published outside the packs
(an auditor then checks that a pack was signed by that key, not merely by some key).
"""

from __future__ import annotations

import base64
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

PRIVATE_NAME = "site-ed25519.pem"
PUBLIC_NAME = "site-ed25519.pub.pem"


class KeyError_(ValueError):
    """A site key that is missing, unreadable or not Ed25519."""


@dataclass(frozen=True, slots=True)
class SiteKey:
    private: Ed25519PrivateKey

    @property
    def public(self) -> Ed25519PublicKey:
        return self.private.public_key()

    def sign(self, data: bytes) -> bytes:
        return self.private.sign(data)

    def public_pem(self) -> bytes:
        return public_pem(self.public)

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.public)


def public_pem(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def fingerprint(key: Ed25519PublicKey) -> str:
    """SHA-256 of the raw public key, as ``SHA256:`` + base64 (the OpenSSH convention)."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "SHA256:" + base64.b64encode(hashlib.sha256(raw).digest()).decode().rstrip("=")


def load_public_pem(data: bytes) -> Ed25519PublicKey:
    key = serialization.load_pem_public_key(data)
    if not isinstance(key, Ed25519PublicKey):
        raise KeyError_("the pack's public key is not an Ed25519 key")
    return key


def verify_signature(key: Ed25519PublicKey, signature: bytes, data: bytes) -> bool:
    try:
        key.verify(signature, data)
        return True
    except InvalidSignature:
        return False


def create_key(key_dir: Path, *, force: bool = False) -> SiteKey:
    """Create the site key; refuses to replace an existing one unless ``force``."""
    key_dir.mkdir(parents=True, exist_ok=True)
    private_path = key_dir / PRIVATE_NAME
    if private_path.exists() and not force:
        raise KeyError_(f"{private_path} exists already; a new key would orphan the packs signed with it (use --force to replace)")
    key = SiteKey(Ed25519PrivateKey.generate())
    pem = key.private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    temp = private_path.with_suffix(".tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(temp, private_path)
    (key_dir / PUBLIC_NAME).write_bytes(key.public_pem())
    return key


def load_key(key_dir: Path) -> SiteKey:
    path = key_dir / PRIVATE_NAME
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except FileNotFoundError:
        raise KeyError_(f"no site key in {key_dir}: run `dicomcheck keys create`") from None
    except (ValueError, TypeError) as exc:
        raise KeyError_(f"{path}: not a readable private key ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyError_(f"{path}: not an Ed25519 key")
    return SiteKey(key)
