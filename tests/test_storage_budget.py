"""The free-space budget (issue 10 part 2): below ``min_free_space`` new instances are refused with 0xA700
before the volume is full (a real small tmpfs), with one log line, a metric and /healthz saying so, and
retention runs at once."""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import time

import pytest
from fastapi.testclient import TestClient
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage

from dicomcheck import metrics
from dicomcheck.api import create_app
from dicomcheck.config import ConfigError, Settings, load_settings, parse_free_space
from dicomcheck.evidence.keys import create_key
from dicomcheck.evidence.retention import retention_tick
from dicomcheck.ingest import Receiver, StoreStatus
from dicomcheck.store.index import ReceiptInfo
from dicomcheck.store.reads import IndexReader
from dicomcheck.store.retention import FreeSpaceBudget, volume_space

from .dicomfiles import ct_dataset, write_study
from .peers import in_namespace, nodelay, require_mount_namespace, tmpfs_prefix, wait_for

RECEIPT = ReceiptInfo(None, "PACS1", "DICOMCHECK", "127.0.0.1", "1.2.3.4", "TESTSENDER", "1.2.840.10008.1.2.1")
LARGER_THAN_ANY_VOLUME = "1000000TiB"


def test_min_free_space_spellings():
    assert parse_free_space("5%") == (0.05, 0)
    assert parse_free_space("2GiB") == (0.0, 2 << 30)
    assert parse_free_space("500MB") == (0.0, 500_000_000)
    assert parse_free_space("0") is None and parse_free_space("off") is None
    for bad in ("5 percent", "-1GB", "100%", "2 GB of disk"):
        with pytest.raises(ConfigError, match="--min-free-space"):
            load_settings(None, min_free_space=bad)
    with pytest.raises(ConfigError, match="--pixel-retention"):
        load_settings(None, pixel_retention="a month")
    assert Settings().min_free_space_budget == (0.05, 0) and Settings().pixel_retention_seconds == 30 * 86400


def test_budget_reports_a_transition_once_and_sets_the_metric(tmp_path, caplog):
    space = volume_space(tmp_path, None)
    below = FreeSpaceBudget(tmp_path, (0.0, space.total * 2))
    with caplog.at_level(logging.WARNING, logger="dicomcheck.store.retention"):
        assert below.refusal() == "storage below min_free_space"
        assert below.refusal() == "storage below min_free_space"  # cached, and not logged again
    assert [r.getMessage() for r in caplog.records].count(caplog.records[0].getMessage()) == 1
    assert "below min_free_space" in caplog.records[0].getMessage()
    assert metrics.STORAGE_BELOW_MIN_FREE._value.get() == 1
    above = FreeSpaceBudget(tmp_path, (0.0, 1))
    assert above.refusal() is None and metrics.STORAGE_BELOW_MIN_FREE._value.get() == 0
    assert FreeSpaceBudget(tmp_path, None).refusal() is None


def test_below_budget_refuses_with_a700_healthz_degraded_and_retention_runs_at_once(tmp_path):
    data = tmp_path / "data"
    accepting = Receiver(Settings(data=data, stable_after=0.01, pixel_retention="1s"))
    create_key(data / "keys")
    study, paths = write_study(tmp_path / "study", acquisition=3, mip=2, rows=64)
    try:
        for path in paths:
            temp = accepting.files.new_temp()
            shutil.copyfile(path, temp)
            assert accepting.store_file(temp, RECEIPT).status is StoreStatus.SUCCESS
        wait_for(lambda: accepting.settle_once() >= 0 and accepting.index.get_study(study).status == "decided")
    finally:
        getattr(accepting, "close", lambda: None)()
        accepting.engine.dispose()

    full = Receiver(Settings(data=data, stable_after=0.01, pixel_retention="1s", min_free_space=LARGER_THAN_ANY_VOLUME))
    try:
        temp = full.files.new_temp()
        shutil.copyfile(paths[0], temp)
        refused = full.store_file(temp, RECEIPT)
        assert refused.status is StoreStatus.OUT_OF_RESOURCES and refused.comment == "storage below min_free_space"
        assert not temp.exists(), "the refused data set was left on the volume"

        with TestClient(create_app(full.settings, full)) as client:
            health = client.get("/healthz")
        assert health.status_code == 200, "below the budget the node still serves lookups"
        assert health.json()["status"] == "degraded" and health.json()["storage"] == "below min_free_space"
        assert "0xA700" in health.json()["reason"]

        time.sleep(1.1)  # the decision must be older than pixel_retention (1 s); the tick does not wait for the hour
        thread = retention_tick(full)
        assert thread is not None, "below min_free_space the settle loop starts a retention pass at once"
        thread.join(timeout=60)
        states = {r.pixel_state for r in IndexReader(full.engine).retention_instances(study)}
        assert states == {"full", "header_only"}
        assert retention_tick(full) is None, "below the budget a pass runs at most once a minute"
        assert metrics.STORAGE_BYTES.labels("header_only")._value.get() > 0
    finally:
        getattr(full, "close", lambda: None)()
        full.engine.dispose()


def test_tmpfs_senders_get_a700_before_the_volume_is_full_and_nothing_acknowledged_is_lost(receiver_factory, tmp_path):
    """Issue 10 acceptance: a 2 MB tmpfs as the storage volume, min_free_space 50 %: senders get 0xA700
    while half the volume is still free, and every instance answered Success is indexed and on disk."""
    require_mount_namespace(tmp_path / "probe")
    data = tmp_path / "data"
    storage = data / "storage"
    storage.mkdir(parents=True)
    server = receiver_factory(
        "--database-url",
        f"sqlite:///{data / 'index.sqlite3'}",
        "--min-free-space",
        "50%",
        data=data,
        prefix=tmpfs_prefix(storage, "2m"),
        stable_after=0.5,
    )
    inside = in_namespace(server.proc.pid, storage)
    assert os.statvfs(inside).f_blocks * os.statvfs(inside).f_frsize <= 2 << 20

    ae = AE(ae_title="FILLER")
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = nodelay(ae.associate("127.0.0.1", server.port, ae_title="DICOMCHECK"))
    assert assoc.is_established
    study, series = generate_uid(), generate_uid()
    acknowledged, refusal = [], None
    for number in range(1, 5000):
        ds = ct_dataset(study, series, rows=32, InstanceNumber=number)
        status = assoc.send_c_store(ds)
        code = getattr(status, "Status", None)
        if code == 0x0000:
            acknowledged.append(str(ds.SOPInstanceUID))
            continue
        refusal = code
        comment = getattr(status, "ErrorComment", None)
        break
    stats = os.statvfs(inside)
    free_at_refusal = stats.f_bavail * stats.f_frsize
    assoc.release()
    assert refusal == 0xA700, f"answered {refusal!r}"
    assert comment == "storage below min_free_space"
    assert len(acknowledged) >= 20
    assert free_at_refusal > (2 << 20) * 0.3, f"only {free_at_refusal} bytes free: the budget did not hold"

    # nothing acknowledged is lost: every Success is indexed (the index may follow the answer) and on disk
    def indexed():
        with sqlite3.connect(data / "index.sqlite3") as db:
            return {
                sop: (path, size) for sop, path, size in db.execute("SELECT sop_instance_uid, path, size FROM instance")
            }

    rows = wait_for(lambda: r if set(r := indexed()) == set(acknowledged) else None, timeout=30, describe=indexed)
    for sop, (path, size) in rows.items():
        assert (inside / path).stat().st_size == size, sop
    log = server.log()
    assert log.count("storage volume below min_free_space") == 1, "the transition is logged once, not per instance"
    assert "storage full" not in log and "Traceback" not in log
    assert server.proc.poll() is None
