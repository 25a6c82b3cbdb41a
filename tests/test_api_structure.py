"""The shape issue 9 promises: SQL only in ``dicomcheck.store``, the API on a read facade and a narrow
interface (not the receiver, not private registry helpers), and one index connection per request."""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event

from dicomcheck.api import create_app
from dicomcheck.config import Settings
from dicomcheck.ingest import Receiver, StoreStatus
from dicomcheck.store.access import Access
from dicomcheck.store.index import ReceiptInfo

from .conftest import ROOT
from .dicomfiles import write_ct
from .peers import wait_for

PACKAGE = ROOT / "dicomcheck"
QUERY_CONSTRUCTS = {
    "select",
    "update",
    "insert",
    "delete",
    "text",
    "Session",
    "and_",
    "or_",
    "func",
    "exists",
    "case",
    "sessionmaker",
    "dialects",
    "orm",
}
SQL_MODULES = ("sqlalchemy", "sqlmodel")


def _modules(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.py"))


def _sql_constructs(path: Path) -> list[str]:
    """``path:line name`` of every query construct the module takes from sqlalchemy / sqlmodel."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in SQL_MODULES:
            parts = set((node.module or "").split(".")[1:]) | {alias.name for alias in node.names}
            found += [
                f"{path.relative_to(ROOT)}:{node.lineno} {node.module}.{name}"
                for name in sorted(parts & QUERY_CONSTRUCTS)
            ]
        elif isinstance(node, ast.Import):
            found += [
                f"{path.relative_to(ROOT)}:{node.lineno} {alias.name}"
                for alias in node.names
                if alias.name.split(".")[0] in SQL_MODULES and set(alias.name.split(".")[1:]) & QUERY_CONSTRUCTS
            ]
        elif (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in SQL_MODULES
            and node.attr in QUERY_CONSTRUCTS
        ):
            found.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.value.id}.{node.attr}")
    return found


def test_only_the_store_builds_queries():
    outside = [p for p in _modules(PACKAGE) if PACKAGE / "store" not in p.parents]
    assert outside, "no modules found"
    offenders = [hit for path in outside for hit in _sql_constructs(path)]
    assert offenders == [], "SQL outside dicomcheck/store: move it into a store read or write:\n" + "\n".join(offenders)


def test_the_structure_check_sees_sql():
    """The check above is no empty promise: it flags the store's own modules."""
    assert any(_sql_constructs(p) for p in _modules(PACKAGE / "store"))


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module as written, with dots, names) of every ``from ... import`` in ``path``."""
    return [
        ("." * node.level + (node.module or ""), [a.name for a in node.names])
        for node in ast.walk(ast.parse(path.read_text(), str(path)))
        if isinstance(node, ast.ImportFrom)
    ]


def test_api_depends_on_the_read_facade_not_the_receiver_nor_private_helpers():
    for path in _modules(PACKAGE / "api"):
        for module, names in _imports(path):
            assert not module.lstrip(".").startswith("ingest"), (
                f"{path.name} imports {module}: use deps.StudyOperations"
            )
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            assert private == [], f"{path.name} imports private {private} from {module}"


def test_each_route_module_is_one_resource():
    routes = {p.stem for p in (PACKAGE / "api" / "routes").glob("*.py")} - {"__init__"}
    assert routes == {"studies", "sessions", "reports", "evidence", "devices", "audit", "exports", "operations"}


@pytest.fixture()
def decided(tmp_path: Path):
    """An API on a SQLite index holding one decided study, a device, and a reader and an admin token."""
    from pydicom.uid import generate_uid

    study, series = generate_uid(), generate_uid()
    receiver = Receiver(Settings(data=tmp_path / "data", stable_after=0.01))
    for number in range(2):
        temp = receiver.files.new_temp()
        shutil.copyfile(write_ct(tmp_path / "in" / f"{number}.dcm", study, series, InstanceNumber=number + 1), temp)
        assert (
            receiver.store_file(temp, ReceiptInfo(None, "PACS1", "DICOMCHECK", "127.0.0.1", None, None, None)).status
            is StoreStatus.SUCCESS
        )
    wait_for(lambda: receiver.settle_once() >= 0 and receiver.index.get_study(study).current_decision_id)
    access = Access(receiver.engine)
    device = access.save_device({"station_name": "CT1", "role": "scanner_console"}, device_id=None, token_name=None)
    tokens = {role: {"Authorization": f"Bearer {access.create_token(role, role)}"} for role in ("reader", "admin")}
    with TestClient(create_app(receiver.settings, receiver)) as client:
        yield client, receiver.engine, tokens, study, device.id
    receiver.engine.dispose()


def test_each_request_uses_one_index_connection(decided):
    """Token check, lookups, the read record and the audit events share one connection: checked out for the
    request, or, for SQLite lookups, the event loop's own (the evidence pack endpoints are left out: the pack
    writer reads the index itself)."""
    client, engine, tokens, study, device_id = decided
    # SQLite lookups (GET /studies/{uid}, GET /studies, POST /studies/search) run on the event loop, on the
    # loop's own connection (store.reads.ThreadConnections), taken once: after this first one, none checked out
    assert client.get(f"/studies/{study}", headers=tokens["reader"]).status_code == 200
    on_loop = {f"/studies/{study}", "/studies", "/studies/search"} if engine.dialect.name == "sqlite" else set()
    checkouts = []
    event.listen(engine, "checkout", lambda *args: checkouts.append(1))
    requests = [
        ("GET", f"/studies/{study}", "reader"),
        ("GET", f"/studies/{study}/decisions", "reader"),
        ("GET", "/studies", "reader"),
        ("GET", "/devices", "admin"),
        ("GET", f"/devices/{device_id}", "admin"),
        ("GET", "/audit", "admin"),
        ("GET", "/exports/decisions", "reader"),
        ("GET", "/metrics", "reader"),
        ("GET", "/healthz", None),
        ("GET", f"/studies/{study}", None),
        ("POST", "/studies/search", "reader"),
    ]
    for method, url, role in requests:
        checkouts.clear()
        response = client.request(method, url, headers=tokens.get(role, {}), json={} if method == "POST" else None)
        assert response.status_code == (401 if role is None and url != "/healthz" else 200), (url, response.text)
        expected = 0 if url in on_loop else 1
        assert len(checkouts) == expected, f"{method} {url} checked out {len(checkouts)} connections"
