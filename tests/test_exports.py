"""Billing exports never turn a sender's header value into a live spreadsheet formula (OWASP CSV injection)."""

from __future__ import annotations

import csv
import io
import shutil
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from openpyxl import load_workbook

from dicomcheck.api import create_app
from dicomcheck.api.exports import COLUMNS, neutralise, to_csv, to_xlsx
from dicomcheck.config import Settings
from dicomcheck.ingest import Receiver, StoreStatus
from dicomcheck.store.access import Access
from dicomcheck.store.index import ReceiptInfo

from .dicomfiles import write_ct
from .peers import wait_for

ACCESSION = "=2+5"
DESCRIPTION = '=HYPERLINK("http://evil.invalid/?x","Click")'
STATION = "@SUM(1+1)"


@pytest.fixture()
def hostile(tmp_path: Path):
    """A study whose sender put formulas in the accession, the description and a station name."""
    from pydicom.uid import generate_uid

    study, acq, mip = generate_uid(), generate_uid(), generate_uid()
    common = {"AccessionNumber": ACCESSION, "StudyDescription": DESCRIPTION}
    paths = [
        write_ct(tmp_path / "in" / f"a{i}.dcm", study, acq, SeriesDescription="Abdomen", InstanceNumber=i + 1, **common)
        for i in range(2)
    ]
    paths += [
        write_ct(
            tmp_path / "in" / f"m{i}.dcm",
            study,
            mip,
            "DERIVED\\PRIMARY\\AXIAL\\CT_SOM5 MIP",
            station=STATION,
            SeriesDescription="-MIP cor",
            SeriesNumber=100,
            InstanceNumber=i + 1,
            **common,
        )
        for i in range(2)
    ]
    receiver = Receiver(Settings(data=tmp_path / "data", stable_after=0.01))
    for path in paths:
        temp = receiver.files.new_temp()
        shutil.copyfile(path, temp)
        assert (
            receiver.store_file(temp, ReceiptInfo(None, "PACS1", "DICOMCHECK", "127.0.0.1", None, None, None)).status
            is StoreStatus.SUCCESS
        )
    wait_for(lambda: receiver.settle_once() >= 0 and receiver.index.get_study(study).current_decision_id)
    token = Access(receiver.engine).create_token("billing", "reader")
    with TestClient(create_app(receiver.settings, receiver)) as client:
        yield client, {"Authorization": f"Bearer {token}"}, study
    receiver.engine.dispose()


def test_csv_export_neutralises_formulas_from_the_sender(hostile):
    client, headers, study = hostile
    response = client.get("/exports/decisions", params={"format": "csv"}, headers=headers)
    assert response.status_code == 200
    (row,) = [r for r in csv.DictReader(io.StringIO(response.text)) if r["study_instance_uid"] == study]
    assert row["accession_number"] == "'" + ACCESSION
    assert row["study_description"] == "'" + DESCRIPTION
    assert row["stations"].startswith("'" + STATION)
    assert all(part.startswith("'") for part in row["stations"].split(";") if part.startswith(("'", "@")))
    assert row["instances"] == "4"  # counts stay plain numbers
    for name, value in row.items():
        assert not value.lstrip().startswith(("=", "+", "-", "@", "\t", "\r")), (name, value)


def test_xlsx_export_writes_sender_values_as_strings_never_formulas(hostile):
    client, headers, study = hostile
    response = client.get("/exports/decisions", params={"format": "xlsx"}, headers=headers)
    assert response.status_code == 200
    sheet = load_workbook(io.BytesIO(response.content))["decisions"]
    header = [c.value for c in sheet[1]]
    (row,) = [r for r in sheet.iter_rows(min_row=2) if r[header.index("study_instance_uid")].value == study]
    cells = dict(zip(header, row, strict=True))
    for cell in row:
        assert cell.data_type != "f", (cell.coordinate, cell.value)
    for name in ("accession_number", "study_description", "stations"):
        assert cells[name].data_type == "s" and cells[name].value.startswith("'"), (name, cells[name].value)
    assert cells["accession_number"].value == "'" + ACCESSION
    assert cells["instances"].data_type == "n" and cells["instances"].value == 4
    assert cells["evidence_link"].hyperlink is not None


@pytest.mark.parametrize("value", ["=1+1", "+1", "-1+2", "@SUM(A1)", "\t=1", "\r=1", "  =1+1", "\n@x", "\u00a0=1"])
def test_every_dangerous_leading_character_is_escaped(value: str):
    assert neutralise(value) == "'" + value
    row = {c: None for c in COLUMNS} | {"accession_number": value, "instances": 3}
    (parsed,) = csv.DictReader(io.StringIO(to_csv([row])))
    assert parsed["accession_number"] == "'" + value and parsed["instances"] == "3"
    sheet = load_workbook(io.BytesIO(to_xlsx([{**row, "evidence_link": "http://127.0.0.1/x"}]))).active
    cell = sheet.cell(row=2, column=COLUMNS.index("accession_number") + 1)
    assert (
        cell.data_type == "s"
        and cell.value.startswith("'")
        and cell.value.replace("\n", "\r") == ("'" + value).replace("\n", "\r")
    )  # XML turns CR into LF


@pytest.mark.parametrize("value", ["ACC123", "CT 3D", "1.2.840.113619", "20260105", "", "a=b", "x-1"])
def test_harmless_values_are_unchanged(value: str):
    assert neutralise(value) == value


def test_control_characters_from_a_sender_do_not_break_the_xlsx_export():
    row = {c: None for c in COLUMNS} | {
        "study_description": "Abdomen\x01\x1b[31m",
        "station": None,
        "instances": 1,
        "evidence_link": "http://127.0.0.1/x",
    }
    sheet = load_workbook(io.BytesIO(to_xlsx([row]))).active
    cell = sheet.cell(row=2, column=COLUMNS.index("study_description") + 1)
    assert cell.value.startswith("Abdomen") and "\x01" not in cell.value and "\x1b" not in cell.value
