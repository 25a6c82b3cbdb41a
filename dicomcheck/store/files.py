"""Durable files: temporary files on the storage volume, fsync, atomic rename, quarantine.

Nothing is answered success before its bytes are flushed to disk and renamed into place; the
directory entry is fsynced too, so a power cut or SIGKILL after the answer loses nothing.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import uuid
from pathlib import Path

_SAFE = re.compile(r"[^0-9A-Za-z.\-]")


def safe_name(text: str, limit: int = 64) -> str:
    """A file-system-safe rendering of a UID (UIDs are already safe; anything else is masked)."""
    return _SAFE.sub("_", text)[:limit] or "_"


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sha256_file(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


class FileStore:
    """The storage folder: ``storage/<study>/<series>/<sop>.<sha16>.dcm`` plus ``.tmp/``."""

    def __init__(self, storage_dir: Path, quarantine_dir: Path) -> None:
        self.root = storage_dir
        self.quarantine_root = quarantine_dir
        self.tmp = storage_dir / ".tmp"
        for folder in (self.root, self.tmp, self.quarantine_root):
            folder.mkdir(parents=True, exist_ok=True)

    def relative_path(self, study: str, series: str, sop: str, sha256: str) -> str:
        return f"{safe_name(study)}/{safe_name(series)}/{safe_name(sop)}.{sha256[:16]}.dcm"

    def absolute(self, relative: str) -> Path:
        return self.root / relative

    def commit(self, temp: Path, relative: str) -> Path:
        """Flush ``temp`` and rename it to ``relative`` (same file system: atomic)."""
        final = self.root / relative
        final.parent.mkdir(parents=True, exist_ok=True)
        fsync_file(temp)
        os.replace(temp, final)
        fsync_dir(final.parent)
        return final

    def new_temp(self) -> Path:
        return self.tmp / f"{uuid.uuid4().hex}.part"

    def quarantine(self, temp: Path | None, data: bytes | None, reason: str, details: dict) -> Path:
        """Keep the input with its reason beside it: ``quarantine/<date>/<id>.dcm`` + ``.json``."""
        day = dt.datetime.now(dt.UTC).strftime("%Y%m%d")
        folder = self.quarantine_root / day
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / f"{dt.datetime.now(dt.UTC).strftime('%H%M%S')}-{uuid.uuid4().hex[:12]}.dcm"
        if temp is not None and temp.exists():
            fsync_file(temp)
            os.replace(temp, target)
        else:
            with target.open("wb") as fh:
                fh.write(data or b"")
                fh.flush()
                os.fsync(fh.fileno())
        sidecar = target.with_suffix(".json")
        with sidecar.open("w", encoding="utf-8") as fh:
            json.dump({"reason": reason, **details}, fh, indent=2)
            fh.flush()
            os.fsync(fh.fileno())
        fsync_dir(folder)
        return target
