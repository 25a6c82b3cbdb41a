"""Pixel retention and quarantine expiry: what is removed, when, and the signed record that says so.

A pass (:func:`prune`; ``dicomcheck storage prune``, and the serving process's settle loop every hour
or at once when the storage volume is below ``min_free_space``):

1. Quarantined inputs older than ``quarantine_retention`` are deleted (with their reason sidecar);
   their index rows stay, marked expired.
2. Every study whose current decision (one that saw every instance) is older than ``pixel_retention``
   gets header-only copies of its stored instances (``store.retention``), except the instances a pack
   shows as thumbnails - one per 3D series and one acquisition image, chosen by the very function that
   writes packs (``collect.from_index``), whether or not a pack exists.

Per study, in an order a crash at any point cannot turn into a false verification failure: the
header-only copies are written to ``storage/.tmp`` and fsynced; the **retention record** is written
and fsynced; the copies are renamed over the originals; the index is updated. A record therefore
never lists less than what was removed (a crash before the renames leaves originals a record calls
header-only, which still verify by their original digest; the next pass redoes the study).

A retention record is ``DATA/retention/<h(study)>/<UTC time>-<n>.json`` + ``.sig`` (``h`` the derived
folder name of ``store.files``; expired quarantine: ``DATA/retention/quarantine/...``): JSON listing,
per instance, the Study / Series / SOP Instance UIDs, the storage path, the original SHA-256 and size,
the header-only copy's SHA-256 and size, the removed elements and the time, signed (Ed25519, hex in
``.sig``) by the site key like pack manifests, the public key inside. ``evidence verify`` recognises a
header-only instance by re-hashing it: its SHA-256 is the ``header_sha256`` a record signed by a trusted
key lists for that SOP Instance UID and original SHA-256 (:class:`RetentionLedger`).
"""

from __future__ import annotations

import datetime as dt
import errno
import fcntl
import json
import logging
import os
import threading
import time
import uuid
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import Engine

from .. import __version__, metrics
from ..enums import CitedRole
from ..store.files import derived_name, fsync_dir
from ..store.reads import IndexReader
from ..store.retention import (
    FULL,
    HeaderCopy,
    NotCuttable,
    RetentionInstance,
    budget_for,
    human_bytes,
    mark_header_only,
    mark_quarantine_expired,
    mark_retention_applied,
    replace_original,
    write_header_copy,
)
from .keys import SiteKey, fingerprint, load_public_pem, verify_signature

log = logging.getLogger(__name__)

RECORD_FORMAT = "dicomcheck-retention-record/1"
STUDIES_PER_QUERY = 50
THUMBNAIL_ROLES = (CitedRole.THREE_D, CitedRole.ACQUISITION)


class Layout(Protocol):
    """Where a data folder keeps things (``config.Settings`` is one)."""

    @property
    def data(self) -> Path: ...

    @property
    def storage_dir(self) -> Path: ...

    @property
    def quarantine_dir(self) -> Path: ...


def retention_root(data: Path) -> Path:
    return data / "retention"


def study_records_dir(root: Path, study_uid: str) -> Path:
    """The folder of one study's retention records (a derived name: no UID names a path)."""
    return root / derived_name(study_uid)


# ---------------------------------------------------------------- signed records
def write_record(folder: Path, body: dict[str, Any], key: SiteKey) -> Path:
    """Write ``body`` signed by ``key`` as ``folder/<UTC time>-<n>.json`` + ``.sig``, both fsynced."""
    folder.mkdir(parents=True, exist_ok=True)
    body = {**body, "public_key_fingerprint": key.fingerprint, "public_key_pem": key.public_pem().decode("ascii")}
    data = (json.dumps(body, indent=2, ensure_ascii=False) + "\n").encode("utf-8")
    signature = (key.sign(data).hex() + "\n").encode("ascii")
    stem = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    temps = {}
    try:
        for suffix, content in ((".json", data), (".sig", signature)):
            temp = folder / f".{uuid.uuid4().hex}{suffix}.tmp"
            with temp.open("xb") as fh:
                fh.write(content)
                fh.flush()
                os.fsync(fh.fileno())
            temps[suffix] = temp
        number = 1
        while True:  # the name is claimed by a hard link, which fails if another pass took it
            final = folder / f"{stem}-{number}.json"
            try:
                os.link(temps[".json"], final)
                break
            except FileExistsError:
                number += 1
        os.replace(temps[".sig"], final.with_suffix(".sig"))
        fsync_dir(folder)
        fsync_dir(folder.parent)
    finally:
        for temp in temps.values():
            temp.unlink(missing_ok=True)
    return final


@dataclass(frozen=True, slots=True)
class RecordedRemoval:
    """One header-only copy a signed record lists."""

    record: str
    signer: str
    sop_instance_uid: str
    original_sha256: str
    header_sha256: str
    removed_at: str


@dataclass
class RetentionLedger:
    """The signed retention records of a data folder, read for ``evidence verify`` (per study, lazily)."""

    root: Path
    trusted: frozenset[str]
    notes: list[str] = field(default_factory=list)
    _studies: dict[str, list[RecordedRemoval]] = field(default_factory=dict)

    def removals(self, study_uid: str) -> list[RecordedRemoval]:
        """The removals listed by validly signed records of ``study_uid``, from trusted keys or not
        (``signer`` says whose; the caller decides)."""
        if study_uid not in self._studies:
            self._studies[study_uid] = list(self._read(study_uid))
        return self._studies[study_uid]

    def _read(self, study_uid: str) -> Iterator[RecordedRemoval]:
        folder = study_records_dir(self.root, study_uid)
        try:
            names = sorted(p for p in folder.iterdir() if p.suffix == ".json" and not p.name.startswith("."))
        except OSError:
            return
        for path in names:
            try:
                data = path.read_bytes()
                signature = bytes.fromhex(path.with_suffix(".sig").read_text(encoding="ascii").strip())
                body = json.loads(data)
                key = load_public_pem(str(body["public_key_pem"]).encode("ascii"))
            except (OSError, ValueError, TypeError, KeyError) as exc:
                self.notes.append(f"{path}: retention record unreadable or unsigned ({type(exc).__name__}): ignored")
                continue
            if body.get("format") != RECORD_FORMAT or not verify_signature(key, signature, data):
                self.notes.append(f"{path}: retention record whose signature does not match: ignored")
                continue
            signer = fingerprint(key)
            for entry in body.get("instances", []):
                if not isinstance(entry, dict) or entry.get("study_instance_uid") != study_uid:
                    continue
                yield RecordedRemoval(
                    path.name,
                    signer,
                    str(entry.get("sop_instance_uid")),
                    str(entry.get("original_sha256")),
                    str(entry.get("header_sha256")),
                    str(entry.get("removed_at")),
                )

    def header_only(
        self, study_uid: str, sop_uid: str, original_sha256: str, actual_sha256: str
    ) -> tuple[RecordedRemoval | None, str | None]:
        """``(removal, None)`` when a record signed by a trusted key says the file of SHA-256 ``actual``
        is the header-only copy of the original ``original_sha256``; else ``(None, why not)``."""
        listed = [
            r
            for r in self.removals(study_uid)
            if r.sop_instance_uid == sop_uid and r.original_sha256 == original_sha256
        ]
        matching = [r for r in listed if r.header_sha256 == actual_sha256]
        trusted = [r for r in matching if r.signer in self.trusted]
        if trusted:
            return trusted[0], None
        if matching:
            return (
                None,
                f"a retention record lists this header-only copy, signed by {matching[0].signer}, not a trusted key",
            )
        if listed:
            return None, "a retention record lists this instance with another header-only SHA-256"
        return None, None


# ---------------------------------------------------------------- the pass
@dataclass
class PruneReport:
    studies: int = 0
    """Studies retention went over."""
    header_only: int = 0
    """Instances replaced by header-only copies in this pass."""
    thumbnails_kept: int = 0
    kept_whole: int = 0
    """Instances kept as received: no pixel data, deflated, or not walkable (each logged)."""
    bytes_freed: int = 0
    quarantine_deleted: int = 0
    quarantine_bytes_freed: int = 0
    records: list[Path] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    skipped: str | None = None
    """Why nothing was done (another pass holds the lock)."""


@contextmanager
def _pass_lock(root: Path) -> Iterator[bool]:
    """One pass at a time per data folder (receivers sharing it, a CLI prune): True when this one may run."""
    root.mkdir(parents=True, exist_ok=True)
    fd = os.open(root / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


def prune(
    layout: Layout,
    engine: Engine,
    key: SiteKey,
    *,
    older_than: float | None,
    quarantine_older_than: float | None,
    node: str = "",
    now: dt.datetime | None = None,
) -> PruneReport:
    """Apply quarantine expiry and pixel retention now (``None``: that part is off); see the module doc."""
    report = PruneReport()
    now = now or dt.datetime.now(dt.UTC)
    root = retention_root(layout.data)
    with _pass_lock(root) as mine:
        if not mine:
            report.skipped = "another retention pass is running on this data folder"
            return report
        if quarantine_older_than is not None:
            _expire_quarantine(layout, engine, key, now - dt.timedelta(seconds=quarantine_older_than), node, report)
        if older_than is not None:
            cutoff = now - dt.timedelta(seconds=older_than)
            done: set[str] = set()
            while True:
                due = [
                    uid
                    for uid in IndexReader(engine).studies_due_for_retention(cutoff, limit=STUDIES_PER_QUERY)
                    if uid not in done
                ]
                if not due:
                    break
                for study_uid in due:
                    done.add(study_uid)
                    try:
                        _prune_study(layout, engine, key, study_uid, node, report)
                    except OSError as exc:  # e.g. no room even for a header copy: stop, try again next pass
                        report.problems.append(f"study {study_uid}: {exc.strerror or exc}; stopped this pass")
                        log.error("retention of study %s stopped: %s", study_uid, exc.strerror or exc)
                        return report
    return report


def _prune_study(layout: Layout, engine: Engine, key: SiteKey, study_uid: str, node: str, report: PruneReport) -> None:
    from .collect import EvidenceError, from_index

    try:  # the thumbnails a pack of the current decision shows, by the function that writes packs
        source = from_index(engine, layout.storage_dir, study_uid)
    except EvidenceError as exc:
        report.problems.append(f"study {study_uid}: kept whole, its decision cannot be read for thumbnails ({exc})")
        mark_retention_applied(engine, study_uid, when_now())
        return
    kept = {(c.sop_instance_uid, c.sha256) for c in source.instances if c.role in THUMBNAIL_ROLES}
    planned: list[tuple[RetentionInstance, HeaderCopy]] = []
    try:
        _plan_study(layout, engine, key, study_uid, kept, planned, report)
        if planned:
            when = when_now()
            record = write_record(
                study_records_dir(retention_root(layout.data), study_uid),
                {
                    "format": RECORD_FORMAT,
                    "created_at": when.isoformat(),
                    "node": node,
                    "dicomcheck_version": __version__,
                    "study_instance_uid": study_uid,
                    "decision_id": source.decision_id,
                    "decided_at": source.decided_at.isoformat() if source.decided_at else None,
                    "instances": [_entry(row, copy, when) for row, copy in planned],
                },
                key,
            )
            report.records.append(record)
            for row, copy in planned:  # recorded first: a crash from here on leaves nothing unrecorded
                replace_original(copy, layout.storage_dir / row.path)
                report.bytes_freed += copy.original_size - copy.header_size
                if mark_header_only(engine, row.id, copy, when):
                    report.header_only += 1
    finally:
        for _, copy in planned:
            copy.temp.unlink(missing_ok=True)  # renamed already, unless a failure stopped the study
    mark_retention_applied(engine, study_uid, when_now())
    report.studies += 1
    if planned:
        log.info("retention: study %s, %d instance(s) now header-only", study_uid, len(planned))


def _plan_study(
    layout: Layout,
    engine: Engine,
    key: SiteKey,
    study_uid: str,
    kept: set[tuple[str, str]],
    planned: list[tuple[RetentionInstance, HeaderCopy]],
    report: PruneReport,
) -> None:
    """Write the header-only copy of every instance of the study to remove into ``storage/.tmp`` (``planned``)."""
    ledger = RetentionLedger(retention_root(layout.data), frozenset({key.fingerprint}))
    tmp = layout.storage_dir / ".tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    for row in IndexReader(engine).retention_instances(study_uid):
        if row.pixel_state != FULL:
            continue
        if (row.sop_instance_uid, row.sha256) in kept:
            report.thumbnails_kept += 1
            continue
        try:
            copy = write_header_copy(layout.storage_dir / row.path, tmp)
        except NotCuttable as exc:
            report.kept_whole += 1
            log.info("instance %s kept whole: %s", row.sop_instance_uid, exc)
            continue
        except FileNotFoundError:
            report.problems.append(f"instance {row.sop_instance_uid}: stored file {row.path} is missing")
            continue
        if copy.original_sha256 == row.sha256 and copy.removed:
            planned.append((row, copy))
            continue
        copy.temp.unlink(missing_ok=True)
        if copy.original_sha256 == row.sha256:  # no pixel data: nothing to remove
            report.kept_whole += 1
        elif ledger.header_only(study_uid, row.sop_instance_uid, row.sha256, copy.original_sha256)[0]:
            # the header-only copy of a pass interrupted after its record and rename: the index follows
            mark_header_only(
                engine,
                row.id,
                replace(copy, header_sha256=copy.original_sha256, header_size=copy.original_size),
                when_now(),
            )
            report.header_only += 1
        else:
            report.problems.append(
                f"instance {row.sop_instance_uid}: {row.path} differs from its index entry; left as it is"
            )


def when_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _entry(row: RetentionInstance, copy: HeaderCopy, when: dt.datetime) -> dict[str, Any]:
    return {
        "study_instance_uid": row.study_instance_uid,
        "series_instance_uid": row.series_instance_uid,
        "sop_instance_uid": row.sop_instance_uid,
        "version": row.version,
        "storage_path": row.path,
        "original_sha256": row.sha256,
        "original_size": row.size,
        "header_sha256": copy.header_sha256,
        "header_size": copy.header_size,
        "removed_elements": list(copy.removed) or "removed by an earlier, interrupted pass",
        "removed_at": when.isoformat(),
    }


def _expire_quarantine(
    layout: Layout, engine: Engine, key: SiteKey, cutoff: dt.datetime, node: str, report: PruneReport
) -> None:
    root = layout.quarantine_dir
    limit = cutoff.timestamp()
    expired: list[tuple[Path, int, float]] = []
    try:
        days = sorted(p for p in root.iterdir() if p.is_dir() and p.name.isdigit())
    except OSError:
        return
    for day in days:
        for entry in os.scandir(day):
            try:
                stat = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            if entry.is_file(follow_symlinks=False) and entry.name.endswith(".dcm") and stat.st_mtime < limit:
                expired.append((Path(entry.path), stat.st_size, stat.st_mtime))
    if not expired:
        return
    relative = [p.relative_to(root).as_posix() for p, _, _ in expired]
    rows = IndexReader(engine).quarantine_rows(relative)
    when = dt.datetime.now(dt.UTC)
    entries = []
    for (_, size, mtime), name in zip(expired, relative, strict=True):
        row = rows.get(name)
        entries.append(
            {
                "quarantine_path": name,
                "sha256": row.sha256 if row else None,
                "size": size,
                "received_at": (row.received_at if row else dt.datetime.fromtimestamp(mtime, dt.UTC)).isoformat(),
                "deleted_at": when.isoformat(),
            }
        )
    record = write_record(
        retention_root(layout.data) / "quarantine",
        {
            "format": RECORD_FORMAT,
            "created_at": when.isoformat(),
            "node": node,
            "dicomcheck_version": __version__,
            "quarantine_deleted": entries,
        },
        key,
    )
    report.records.append(record)
    folders = set()
    for path, size, _ in expired:
        path.unlink(missing_ok=True)
        path.with_suffix(".json").unlink(missing_ok=True)
        folders.add(path.parent)
        report.quarantine_deleted += 1
        report.quarantine_bytes_freed += size
    for folder in folders:
        fsync_dir(folder)
        try:
            folder.rmdir()  # only when empty
        except OSError:
            pass
    mark_quarantine_expired(engine, relative, when)
    log.info("quarantine expiry: %d input(s) deleted (%s)", len(expired), human_bytes(report.quarantine_bytes_freed))


# ---------------------------------------------------------------- status and metrics
def _folder_bytes(folder: Path) -> int:
    total = 0
    for dirpath, _, names in os.walk(folder):
        for name in names:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                continue
    return total


@dataclass(frozen=True, slots=True)
class StorageStatus:
    bytes_by_state: dict[str, int]
    """full, header_only, quarantine, evidence, retention."""
    free: int | None
    total: int | None
    min_free: int
    oldest_unpruned: dt.datetime | None

    @property
    def below_min_free(self) -> bool:
        return self.free is not None and self.min_free > 0 and self.free < self.min_free


def storage_status(layout: Layout, engine: Engine, min_free: tuple[float, int] | None) -> StorageStatus:
    reader = IndexReader(engine)
    states = reader.stored_bytes_by_pixel_state()
    states["quarantine"] = _folder_bytes(layout.quarantine_dir)
    states["evidence"] = _folder_bytes(layout.data / "evidence")
    states["retention"] = _folder_bytes(retention_root(layout.data))
    space = budget_for(layout.storage_dir, min_free).space()
    return StorageStatus(
        states,
        space.free if space else None,
        space.total if space else None,
        space.wanted if space else 0,
        reader.oldest_unpruned_decision(),
    )


def publish_metrics(status: StorageStatus) -> None:
    for state, count in status.bytes_by_state.items():
        metrics.STORAGE_BYTES.labels(state).set(count)
    age = (dt.datetime.now(dt.UTC) - status.oldest_unpruned).total_seconds() if status.oldest_unpruned else 0.0
    metrics.OLDEST_UNPRUNED_STUDY.set(max(0.0, age))


# ---------------------------------------------------------------- the schedule of the serving process
PRUNE_EVERY = 3600.0
"""Seconds between retention passes of the serving process."""
FIRST_PRUNE_AFTER = 60.0
"""Seconds after the start before the first pass (the start itself stays quick)."""
LOW_SPACE_RETRY = 60.0
"""Below ``min_free_space``, seconds between passes that try to free space."""


class _Schedule:
    def __init__(self) -> None:
        self.next_at = time.monotonic() + FIRST_PRUNE_AFTER
        self.low_space_at = -1e18
        self.thread: threading.Thread | None = None


_schedules: weakref.WeakKeyDictionary[Any, _Schedule] = weakref.WeakKeyDictionary()


def retention_tick(receiver: Any) -> threading.Thread | None:
    """Called by the settle loop each turn: starts a pass in a thread every :data:`PRUNE_EVERY` seconds,
    or at once when the storage volume is below ``min_free_space``; the thread started, or None."""
    schedule = _schedules.get(receiver)
    if schedule is None:
        schedule = _schedules[receiver] = _Schedule()
    if schedule.thread is not None and schedule.thread.is_alive():
        return None
    settings = receiver.settings
    now = time.monotonic()
    space = budget_for(settings.storage_dir, settings.min_free_space_budget).space()
    if space is not None and space.below and now - schedule.low_space_at >= LOW_SPACE_RETRY:
        schedule.low_space_at = now
        reason = "storage below min_free_space"
    elif now >= schedule.next_at:
        schedule.next_at = now + PRUNE_EVERY
        reason = "hourly"
    else:
        return None
    schedule.thread = threading.Thread(
        target=run_pass, args=(receiver, reason), name="dicomcheck-retention", daemon=True
    )
    schedule.thread.start()
    return schedule.thread


def run_pass(receiver: Any, reason: str, *, older_than: float | None = None) -> PruneReport | None:
    """One pass with the receiver's settings (``older_than`` overrides ``pixel_retention``); never raises."""
    from .service import site_key

    settings = receiver.settings
    try:
        report = prune(
            settings,
            receiver.engine,
            site_key(settings.data / "keys"),
            older_than=settings.pixel_retention_seconds if older_than is None else older_than,
            quarantine_older_than=settings.quarantine_retention_seconds,
            node=receiver.node,
        )
        for problem in report.problems:
            log.warning("retention: %s", problem)
        if report.header_only or report.quarantine_deleted:
            log.warning(
                "retention pass (%s): %d instance(s) now header-only, %d quarantined input(s) deleted, %s freed",
                reason,
                report.header_only,
                report.quarantine_deleted,
                human_bytes(report.bytes_freed + report.quarantine_bytes_freed),
            )
        publish_metrics(storage_status(settings, receiver.engine, settings.min_free_space_budget))
        return report
    except Exception as exc:  # noqa: BLE001 - e.g. the index briefly unreachable: the next pass retries
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            log.error("retention pass (%s) stopped: storage full", reason)
        else:
            log.exception("retention pass (%s) failed", reason)
        return None
