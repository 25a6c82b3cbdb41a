"""Index rows behind the answer (issue 10): the journal, the batch writer, the settle guarantee.

Real components: a real storage folder and journal, a real SQLite file and a real PostgreSQL index,
``Receiver`` objects as the receiver processes run them. "Holding the writer" pauses the real
index writer thread (``IndexWriter.held``); nothing else is simulated except, in one test, a
journal entry that a power cut brought back after its rows were committed.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
from pathlib import Path

import pytest
from pydicom.uid import generate_uid
from sqlalchemy import text

from dicomcheck.config import Settings
from dicomcheck.ingest import Receiver, StoreStatus
from dicomcheck.store.files import Journal, SpoolFile, derived_name
from dicomcheck.store.index import ReceiptInfo

from .dicomfiles import write_ct

RECEIPT = ReceiptInfo(None, "PACS1", "DICOMCHECK", "127.0.0.1", "1.2.3.4", "TESTSENDER", "1.2.840.10008.1.2.1")


def receiver_for(data: Path, url: str | None = None) -> Receiver:
    return Receiver(Settings(data=data, database_url=url, stable_after=0.001))


def spool(receiver: Receiver, source: Path) -> Path:
    temp = receiver.files.new_temp()
    shutil.copyfile(source, temp)
    return temp


def scalar(receiver: Receiver, sql: str, **params):
    with receiver.engine.connect() as connection:
        return connection.execute(text(sql), params).all()


def entries(receiver: Receiver) -> list[str]:
    return [entry.name for journal in receiver.files.journals() for entry in journal.entries(anyone=True)]


@pytest.fixture()
def files(tmp_path: Path) -> tuple[str, list[Path]]:
    study, series = generate_uid(), generate_uid()
    return study, [write_ct(tmp_path / "in" / f"{i}.dcm", study, series, InstanceNumber=i + 1) for i in range(6)]


def test_rows_queued_while_the_writer_is_held_are_one_batch_with_right_counts(index_url, tmp_path, files):
    study, paths = files
    receiver = receiver_for(tmp_path / "data", index_url)
    try:
        with receiver.writer.held():
            results = [receiver.store_file(spool(receiver, p), RECEIPT, wait=False) for p in paths[:4]]
            again = receiver.store_file(spool(receiver, paths[0]), RECEIPT, wait=False)  # the same content again
            assert [r.status for r in results] == [StoreStatus.SUCCESS] * 4 and not any(r.duplicate for r in results)
            assert again.status is StoreStatus.SUCCESS and again.duplicate  # found by its content address
            # answered: the files and the journal are durable, the index has nothing yet
            assert len(entries(receiver)) == 5
            assert scalar(receiver, "SELECT count(*) FROM instance") == [(0,)]
        assert receiver.flush()
        assert scalar(receiver, "SELECT count(*), max(version) FROM instance") == [(4, 1)]
        assert scalar(receiver, "SELECT instance_count FROM study") == [(4,)]
        assert scalar(receiver, "SELECT instance_count FROM series") == [(4,)]
        assert scalar(receiver, "SELECT duplicate, count(*) FROM receipt GROUP BY duplicate ORDER BY duplicate") == [
            (False, 4),
            (True, 1),
        ]
        assert entries(receiver) == []
        # a later single row: counts go on from the batch's
        assert receiver.store_file(spool(receiver, paths[4]), RECEIPT).status is StoreStatus.SUCCESS
        assert scalar(receiver, "SELECT instance_count FROM study WHERE study_instance_uid = :s", s=study) == [(5,)]
    finally:
        receiver.close()
        receiver.engine.dispose()


def test_a_study_is_not_decided_while_an_answered_instance_is_not_indexed(tmp_path, files):
    """In this process and in another receiver sharing the index and the storage (its journal)."""
    study, paths = files
    data = tmp_path / "data"
    settler, other = receiver_for(data), receiver_for(data)  # e.g. the serving process and a receiver process
    try:
        assert settler.store_file(spool(settler, paths[0]), RECEIPT).status is StoreStatus.SUCCESS  # indexed
        with settler.writer.held():
            assert settler.store_file(spool(settler, paths[1]), RECEIPT, wait=False).status is StoreStatus.SUCCESS
            assert settler.settle_once() == 0  # due (stable_after 1 ms) but held: our own row is not written
            assert scalar(settler, "SELECT current_decision_id FROM study") == [(None,)]
        assert settler.flush()
        with other.writer.held():
            assert other.store_file(spool(other, paths[2]), RECEIPT, wait=False).status is StoreStatus.SUCCESS
            assert derived_name(study) in settler.held_studies()
            assert settler.settle_once() == 0  # the other receiver's row is not written
            assert scalar(settler, "SELECT current_decision_id FROM study") == [(None,)]
        assert other.flush()
        assert settler.settle_once() == 1
        assert scalar(
            settler, "SELECT d.instance_count FROM study s JOIN decision d ON d.id = s.current_decision_id"
        ) == [(3,)]
    finally:
        for receiver in (settler, other):
            receiver.close()
            receiver.engine.dispose()


def test_a_journal_of_a_dead_receiver_is_replayed_once_even_if_its_rows_were_written(tmp_path, files):
    """A power cut can bring back a journal entry whose rows were committed (its removal is not
    fsynced): the replay at start adds no second receipt, and indexes what was not indexed."""
    _, paths = files
    data = tmp_path / "data"
    first = receiver_for(data)
    with first.writer.held():
        assert first.store_file(spool(first, paths[0]), RECEIPT, wait=False).status is StoreStatus.SUCCESS
        (written,) = first.writer.journal.entries()
    assert first.flush() and entries(first) == []  # indexed, its entry removed
    hold = first.writer.held()
    hold.__enter__()  # held for good: this receiver never writes its next row
    assert first.store_file(spool(first, paths[1]), RECEIPT, wait=False).status is StoreStatus.SUCCESS
    (pending,) = first.writer.journal.entries()
    # the process dies here (a power cut): its entries are a dead process's, the removed one back
    dead = Journal.create(first.files.root, f"{os.uname().nodename}/-/999999999/-")
    series = first.files.root / pending.folder
    for entry in (pending, written):
        dead_name = entry.name.replace(first.writer.journal.receiver, dead.receiver)
        if entry is pending:
            os.rename(series / entry.name, series / dead_name)
        else:
            (series / dead_name).touch()
    (dead.folder / pending.folder.replace("/", ".")).touch()
    restarted = receiver_for(data)
    try:
        assert scalar(restarted, "SELECT count(*) FROM instance") == [(2,)]
        assert scalar(restarted, "SELECT count(*), sum(CASE WHEN duplicate THEN 1 ELSE 0 END) FROM receipt") == [(2, 0)]
        assert scalar(restarted, "SELECT instance_count FROM study") == [(2,)]
        assert entries(restarted) == [] and not dead.folder.exists()
    finally:
        restarted.close()
        restarted.engine.dispose()


def test_the_spool_file_hashes_what_streams_in(tmp_path):
    spool_file = SpoolFile(dir=str(tmp_path), suffix=".dcm")
    chunks = [os.urandom(300_000), b"", os.urandom(17), os.urandom(1 << 20)]
    for chunk in chunks:
        spool_file.write(chunk)
    spool_file.close()
    assert SpoolFile.digest(spool_file.name) == (hashlib.sha256(b"".join(chunks)).hexdigest(), sum(map(len, chunks)))
    assert SpoolFile.digest(spool_file.name) is None  # taken once: the file is the store's now
    SpoolFile.discard(spool_file)  # what pynetdicom's request cleanup does after the handler
    assert Path(spool_file.name).exists()  # left to the store that took it (renamed or removed there)
    untaken = SpoolFile(dir=str(tmp_path), suffix=".dcm")
    untaken.write(b"abc")
    SpoolFile.discard(untaken)  # a data set nobody stored: removed
    assert not Path(untaken.name).exists() and SpoolFile.digest(untaken.name) is None


def test_receivers_close_leaves_no_journal(tmp_path, files):
    _, paths = files
    receiver = receiver_for(tmp_path / "data")
    assert receiver.store_file(spool(receiver, paths[0]), RECEIPT, wait=False).status is StoreStatus.SUCCESS
    receiver.close()
    with sqlite3.connect(tmp_path / "data" / "index.sqlite3") as db:
        assert db.execute("SELECT count(*) FROM instance").fetchone() == (1,)
    assert list((tmp_path / "data" / "storage" / ".journal").iterdir()) == []
    receiver.engine.dispose()
