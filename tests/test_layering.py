"""The core's import direction and the read-only receiver (issue 9 point 6).

received file -> facts -> rules -> typed decision -> store -> API / evidence / CLI: the store and the
ingest service never reach up into evidence or presentation, and a command that only reads the
index never changes it or the storage volume."""

from __future__ import annotations

import ast
import os
import time
from pathlib import Path

import sqlalchemy

import dicomcheck
from dicomcheck.config import Settings
from dicomcheck.ingest import Receiver, temp_grace

PACKAGE = Path(dicomcheck.__file__).parent


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, absolute (``dicomcheck.x.y``), at any depth of the file."""
    package = ("dicomcheck." + ".".join(path.relative_to(PACKAGE).with_suffix("").parts)).split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *(node.module.split(".") if node.module else [])])
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def test_store_never_imports_evidence_or_presentation():
    for path in (PACKAGE / "store").glob("*.py"):
        bad = {
            m
            for m in imported_modules(path)
            if m.startswith(("dicomcheck.evidence", "dicomcheck.report", "dicomcheck.api"))
        }
        assert not bad, f"{path.name} imports {sorted(bad)}"


def test_ingest_decides_without_the_presentation_module():
    bad = {
        m
        for m in imported_modules(PACKAGE / "ingest.py")
        if m == "dicomcheck.report" or m.startswith("dicomcheck.report.")  # the presentation module, not reports_in
    }
    assert not bad, f"ingest.py imports {sorted(bad)}"


def test_own_object_detection_is_core_and_still_exported_by_evidence():
    from dicomcheck import own_objects
    from dicomcheck.evidence import model

    assert model.is_own_object is own_objects.is_own_object
    assert model.OWN_SOP_CLASSES is own_objects.OWN_SOP_CLASSES
    assert not {m for m in imported_modules(PACKAGE / "own_objects.py") if m.startswith("dicomcheck")}


def test_report_keeps_the_document_conversion_it_always_exported():
    from dicomcheck import decision_document, report

    assert report.study_dict is decision_document.study_dict


def _old_temp_file(settings: Settings) -> Path:
    abandoned = settings.storage_dir / ".tmp" / "abandoned.part"
    abandoned.parent.mkdir(parents=True, exist_ok=True)
    abandoned.write_bytes(b"left by a killed transfer")
    old = time.time() - 2 * temp_grace(settings)
    os.utime(abandoned, (old, old))
    return abandoned


def test_read_only_receiver_neither_migrates_nor_sweeps(tmp_path: Path):
    settings = Settings(data=tmp_path / "data")
    abandoned = _old_temp_file(settings)

    reader = Receiver(settings, read_only=True)
    assert abandoned.exists(), "a read-only command swept storage/.tmp"
    assert not sqlalchemy.inspect(reader.engine).has_table("alembic_version"), "a read-only command migrated the index"
    reader.engine.dispose()

    serving = Receiver(settings)  # what serve builds: migrates and sweeps
    assert not abandoned.exists()
    assert sqlalchemy.inspect(serving.engine).has_table("alembic_version")
    serving.engine.dispose()
