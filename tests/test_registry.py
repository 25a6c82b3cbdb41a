"""The site device registry: parsing, validation with line numbers, matching."""

from __future__ import annotations

import datetime as dt

import pytest

from dicomcheck.enums import PacsViewerCode, Role
from dicomcheck.registry import RegistryError, RegistryFile, load_registry, parse_registry

GOOD = """
[policy]
pacs_viewer_code = "review"
minip_is_3d = false

[[device]]
station_name = "3DLAB-01"
role = "independent_workstation"
note = "3D lab PC"

[[device]]
device_serial_number = "54023"
station_name = "CT-OLD"
role = "scanner_console"
valid_from = 2020-01-01
valid_to = 2025-12-31

[[device]]
manufacturer = "Acme"
model = "Render 9"
role = "pacs_viewer"
"""


def test_parses_devices_and_policy():
    registry = parse_registry(GOOD, "devices.toml")
    assert registry.policy.pacs_viewer_code is PacsViewerCode.REVIEW
    assert registry.policy.minip_is_3d is False and registry.policy.curved_mpr_is_3d is False
    assert [d.role for d in registry.devices] == [Role.INDEPENDENT_WORKSTATION, Role.SCANNER_CONSOLE, Role.PACS_VIEWER]
    assert [d.line for d in registry.devices] == [6, 11, 18]


def test_match_any_key_most_specific_first_case_insensitive():
    registry = parse_registry(GOOD)
    kwargs = dict(
        station_name=None,
        ae_title=None,
        device_serial_number=None,
        manufacturer=None,
        model=None,
        study_date=dt.date(2024, 1, 1),
    )
    assert registry.match(**{**kwargs, "station_name": " 3dlab-01 "}).device.note == "3D lab PC"
    match = registry.match(**{**kwargs, "device_serial_number": "54023", "station_name": "3DLAB-01"})
    assert match.key == "device_serial_number" and match.device.role is Role.SCANNER_CONSOLE
    assert registry.match(**{**kwargs, "manufacturer": "ACME", "model": "render 9"}).device.role is Role.PACS_VIEWER
    assert registry.match(**{**kwargs, "manufacturer": "ACME"}) is None


def test_validity_window():
    registry = parse_registry(GOOD)
    kwargs = dict(station_name="CT-OLD", ae_title=None, device_serial_number=None, manufacturer=None, model=None)
    assert registry.match(**kwargs, study_date=dt.date(2025, 12, 31)) is not None
    assert registry.match(**kwargs, study_date=dt.date(2026, 1, 1)) is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[[device]]\nstation_name = "X"\nrole = "workstation"\n', "devices.toml:1: device #1: role must be one of"),
        (
            '[[device]]\nstation_name = "A"\nrole = "pacs_viewer"\n\n[[device]]\nrole = "pacs_viewer"\n',
            "devices.toml:5: device #2: give at least one of",
        ),
        ('[[device]]\nmanufacturer = "GE"\nrole = "pacs_viewer"\n', "manufacturer and model match only together"),
        ('[[device]]\nstation_name = "A"\nrole = "pacs_viewer"\ncolour = "red"\n', "unknown key(s) ['colour']"),
        ('[[device]]\nstation_name = "A"\nrole = "pacs_viewer"\nvalid_from = "yesterday"\n', "is not a date"),
        (
            '[[device]]\nstation_name = "A"\nrole = "pacs_viewer"\nvalid_from = 2025-01-01\nvalid_to = 2024-01-01\n',
            "is before valid_from",
        ),
        ('[policy]\npacs_viewer_code = "99999"\n', "devices.toml:1: pacs_viewer_code must be"),
        ('[policy]\nminip_is_3d = "yes"\n', "minip_is_3d must be true or false"),
        ('[[device]\nstation_name = "A"\n', "devices.toml: "),
        ("[devices]\nx = 1\n", "unknown key(s) ['devices']"),
        ('policy = "76377"\n', "devices.toml:1: 'policy' must be a table ([policy])"),
        ('\ndevice = ["3DLAB-01"]\n', "devices.toml:2: device #1 must be a table ([[device]])"),
    ],
)
def test_bad_registry_names_line_and_reason(text, message):
    with pytest.raises(RegistryError) as info:
        parse_registry(text, "devices.toml")
    assert message in str(info.value)


def test_toml_syntax_error_carries_line(tmp_path):
    path = tmp_path / "devices.toml"
    path.write_text('[[device]]\nstation_name = "A"\nrole = pacs_viewer\n')
    with pytest.raises(RegistryError, match=r"line 3"):
        load_registry(path)


def test_missing_file(tmp_path):
    with pytest.raises(RegistryError, match="cannot read"):
        load_registry(tmp_path / "nope.toml")


def _rewrite(path, text: str) -> None:
    """Write ``text`` so that the change is seen even within one tick of the file system clock."""
    import os

    before = path.stat().st_mtime_ns if path.exists() else 0
    path.write_text(text)
    os.utime(path, ns=(before + 1_000_000_000, before + 1_000_000_000))


def test_live_file_keeps_its_last_good_version_logs_once_and_recovers(tmp_path, caplog):
    path = tmp_path / "devices.toml"
    path.write_text(GOOD)
    live = RegistryFile(path)
    good = live.current()
    assert good.error is None and len(good.devices) == 3
    _rewrite(path, GOOD.replace('role = "pacs_viewer"', 'role = "pacs-viewer"'))  # a typo in the third entry
    with caplog.at_level("ERROR", logger="dicomcheck.registry"):
        for _ in range(5):  # every settle pass and API request asks
            degraded = live.current()
    assert degraded.devices == good.devices and degraded.policy == good.policy  # the last good version decides
    assert degraded.error is not None and "devices.toml:18: device #3: role must be one of" in degraded.error
    assert [r.levelname for r in caplog.records] == ["ERROR"]  # once per change of the file, not every call
    _rewrite(path, GOOD.replace("3DLAB-01", "3DLAB-02"))
    fixed = live.current()
    assert fixed.error is None and fixed.devices[0].station_name == "3DLAB-02"


def test_live_file_removed_keeps_its_last_good_version(tmp_path):
    path = tmp_path / "devices.toml"
    path.write_text(GOOD)
    live = RegistryFile(path)
    live.current()
    path.unlink()
    gone = live.current()
    assert "cannot read" in gone.error and len(gone.devices) == 3
    path.write_text(GOOD)
    assert live.current().error is None
