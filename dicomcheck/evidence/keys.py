"""The site key that signs evidence manifests (Ed25519, via the `cryptography` package).

The private key stays in ``DATA/keys/`` (mode 0600); the public key travels inside every pack, and
its fingerprint is printed by ``dicomcheck keys show`` so it can be published outside the packs
(an auditor then checks that a pack was signed by that key, not merely by some key).
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

PRIVATE_NAME = "site-ed25519.pem"
PUBLIC_NAME = "site-ed25519.pub.pem"


class KeyError_(ValueError):
    """A site key that is missing, unreadable or not Ed25519."""


class KeyExists(KeyError_):
    """``create_key`` without ``force`` found a key already there."""


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
    """Create the site key; refuses to replace an existing one unless ``force``.

    Without ``force`` the private key is published with a hard link, which fails when a key exists:
    two processes creating the key at once end with one key, never a private / public mismatch."""
    key_dir.mkdir(parents=True, exist_ok=True)
    private_path = key_dir / PRIVATE_NAME
    if private_path.exists() and not force:
        raise KeyExists(
            f"{private_path} exists already; a new key would orphan the packs signed with it (use --force to replace)"
        )
    key = SiteKey(Ed25519PrivateKey.generate())
    pem = key.private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    temp = key_dir / f".{PRIVATE_NAME}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(pem)
            fh.flush()
            os.fsync(fh.fileno())
        if force:
            os.replace(temp, private_path)
        else:
            try:
                os.link(temp, private_path)
            except FileExistsError:
                raise KeyExists(
                    f"{private_path} exists already; a new key would orphan the packs signed with it "
                    "(use --force to replace)"
                ) from None
            except OSError:  # a file system without hard links: exclusive create of the key itself
                try:
                    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                except FileExistsError:
                    raise KeyExists(
                        f"{private_path} exists already; a new key would orphan the packs signed with it "
                        "(use --force to replace)"
                    ) from None
                with os.fdopen(fd, "wb") as fh:
                    fh.write(pem)
                    fh.flush()
                    os.fsync(fh.fileno())
    finally:
        temp.unlink(missing_ok=True)
    public_temp = key_dir / f".{PUBLIC_NAME}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    public_temp.write_bytes(key.public_pem())
    os.replace(public_temp, key_dir / PUBLIC_NAME)
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


FINGERPRINT = re.compile(r"^SHA256:[A-Za-z0-9+/]{43}$")


def check_fingerprint(text: str) -> str:
    """A fingerprint as ``keys show`` prints it, or ValueError saying what is wrong."""
    value = text.strip()
    if not FINGERPRINT.match(value):
        raise ValueError(
            f"{value[:80]!r} is not a key fingerprint "
            "(SHA256: and 43 base64 characters, as `dicomcheck keys show` prints)"
        )
    return value


def read_trusted_fingerprints(path: Path) -> list[str]:
    """A file of trusted fingerprints: one per line, first word of the line; ``#`` starts a comment."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: cannot read the trusted fingerprints ({type(exc).__name__})") from None
    found = []
    for number, line in enumerate(text.splitlines(), 1):
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        try:
            found.append(check_fingerprint(words[0]))
        except ValueError as exc:
            raise ValueError(f"{path} line {number}: {exc}") from None
    if not found:
        raise ValueError(f"{path}: lists no fingerprint")
    return found


def site_fingerprint(key_dir: Path) -> str:
    """The fingerprint of the site key in ``key_dir``: from its private key, else its public part."""
    if (key_dir / PRIVATE_NAME).exists():
        return load_key(key_dir).fingerprint
    try:
        return fingerprint(load_public_pem((key_dir / PUBLIC_NAME).read_bytes()))
    except FileNotFoundError:
        raise KeyError_(f"no site key in {key_dir}") from None
    except (ValueError, TypeError) as exc:
        raise KeyError_(f"{key_dir / PUBLIC_NAME}: not a readable public key ({exc})") from None
