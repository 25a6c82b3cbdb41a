"""Packs kept beside the decision history: one per decision version (and variant), never rewritten.

Several API or receiver processes may ask for the same pack at once (shared data folder). An
exclusive ``flock`` on a lock file beside the pack makes exactly one of them write it; the others
wait on the lock and then serve the pack that was written. A writer that died mid-way leaves only
its ``.part`` staging folder, which the next writer removes under the lock.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from ..store.access import Access
from .collect import EvidenceError, from_index, pack_report, pack_session
from .keys import PRIVATE_NAME, KeyError_, KeyExists, SiteKey, create_key, load_key
from .pack import PackWriter, pack_dir_name

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from ..registry import Registry

log = logging.getLogger(__name__)
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")


class PackFolders(Protocol):
    """The folders of the settings a pack writer uses (``config.Settings``)."""

    @property
    def data(self) -> Path: ...

    @property
    def storage_dir(self) -> Path: ...

    @property
    def report_wait_seconds(self) -> float | None: ...


class PackSite(Protocol):
    """What :func:`ensure_pack` needs of the receiver (``ingest.Receiver``; the API's ``StudyOperations``)."""

    @property
    def settings(self) -> PackFolders: ...

    @property
    def engine(self) -> Engine: ...

    def effective_registry(self) -> Registry: ...


def site_key(key_dir: Path) -> SiteKey:
    """The site key; created (and its fingerprint logged, once) when none exists.

    ``dicomcheck serve`` calls this at start; the ``evidence`` command never does (it refuses
    without a key and names ``dicomcheck keys create``)."""
    try:
        return load_key(key_dir)
    except KeyError_:
        if (key_dir / PRIVATE_NAME).exists():  # another process published it since the read, or it is unreadable
            return load_key(key_dir)  # (then this raises again, naming the file)
    try:
        key = create_key(key_dir)
    except KeyExists:  # another process created it a moment ago: use that one
        return load_key(key_dir)
    log.warning(
        "created the site key %s, fingerprint %s: publish the fingerprint outside the packs",
        key_dir / PRIVATE_NAME,
        key.fingerprint,
    )
    return key


def evidence_root(data_dir: Path) -> Path:
    return data_dir / "evidence"


@contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    """An exclusive lock between processes (and threads: each call opens its own descriptor)."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def ensure_pack(receiver: PackSite, study_uid: str, *, minimal: bool = False, decision_id: int | None = None) -> Path:
    """The pack of the study's current decision (or ``decision_id``), written on first request.

    Exactly one process writes a given pack; every other caller waits and gets the same folder."""
    if not _UID.match(study_uid) or len(study_uid) > 64:
        raise EvidenceError("not a Study Instance UID")  # it names a folder: never a path from outside
    settings = receiver.settings
    source = from_index(
        receiver.engine,
        settings.storage_dir,
        study_uid,
        decision_id=decision_id,
        registry=receiver.effective_registry(),
    )
    review = pack_review(receiver.engine, study_uid, source.decision_id, current=decision_id is None)
    report = pack_report(receiver.engine, source, report_wait=settings.report_wait_seconds)
    session = pack_session(receiver.engine, source) if decision_id is None else None  # sessions (issue 13)
    name = pack_dir_name(
        source,
        minimal=minimal,
        review_id=review["id"] if review else None,
        report_id=report.get("report_id") if report else None,
        session=session,
    )
    study_dir = evidence_root(settings.data) / study_uid
    folder = study_dir / name
    if (folder / "manifest.json").is_file():
        return folder  # immutable: a decision's pack is written once
    with _exclusive(study_dir / f".{name}.lock"):
        if (folder / "manifest.json").is_file():
            return folder  # written by another process while this one waited
        for stale in study_dir.glob(f"{name}.part*"):  # left by a writer that died; nobody else writes it now
            shutil.rmtree(stale, ignore_errors=True)
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
        PackWriter(site_key(settings.data / "keys")).write(
            source, folder, minimal=minimal, review=review, report=report, session=session
        )
    log.info(
        "evidence pack written for study %s decision %s%s%s",
        study_uid,
        source.decision_id,
        f" review {review['id']}" if review else "",
        " (minimal)" if minimal else "",
    )
    return folder


def pack_review(engine: Engine, study_uid: str, decision_id: int | None, *, current: bool) -> dict[str, Any] | None:
    """The coder's review a pack of this decision carries: the latest one recorded against it, or, for the
    current decision, the latest review no later decision made stale. A review therefore writes a new
    pack (its name carries the review id) beside the decision's own; both are kept, the newer is served."""
    reviews = [
        r
        for r in Access(engine).reviews(study_uid)
        if r.decision_id == decision_id or (current and r.stale_since is None)
    ]
    if not reviews:
        return None
    r = reviews[-1]
    return {
        "id": r.id,
        "decision_id": r.decision_id,
        "outcome": r.outcome,
        "code": r.code,
        "reviewer": r.reviewer,
        "token_name": r.token_name,
        "reason": r.reason,
        "created_at": r.created_at.isoformat(),
    }
