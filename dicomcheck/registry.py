"""The site device registry and site policies: a TOML file a PACS administrator writes.

```toml
[policy]
pacs_viewer_code = "76376"        # 76376 | 76377 | review
minip_is_3d = true
curved_mpr_is_3d = false

[[device]]
station_name = "3DLAB-01"         # match on any of: station_name, ae_title,
role = "independent_workstation"  #   device_serial_number, manufacturer + model
note = "3D lab PC"
valid_from = 2024-01-01           # optional: the study date picks the entry
valid_to = 2026-06-30
```

An entry matches an instance when any of its keys matches (case-insensitive, surrounding blanks
ignored); ``manufacturer`` and ``model`` only match together. When several entries match, the
most specific key wins (serial, then station, then AE title, then manufacturer + model), then the
first entry in the file. Parsing is pure (text in, objects out); ``load_registry`` reads the file;
``RegistryFile`` follows the live file of a running receiver (a bad edit keeps the last good one).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import re
import threading
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path

from .enums import REGISTRY_ROLES, PacsViewerCode, Role

DEVICE_KEYS = ("station_name", "ae_title", "device_serial_number", "manufacturer", "model")
DEVICE_FIELDS = (*DEVICE_KEYS, "role", "note", "valid_from", "valid_to", "id")
POLICY_FIELDS = ("pacs_viewer_code", "minip_is_3d", "curved_mpr_is_3d")
KEY_SPECIFICITY = ("device_serial_number", "station_name", "ae_title", "manufacturer+model")


_log = logging.getLogger(__name__)


class RegistryError(ValueError):
    """A registry file that cannot be used; the message names the file, line and reason."""


@dataclass(frozen=True, slots=True)
class Policy:
    pacs_viewer_code: PacsViewerCode = PacsViewerCode.CODE_76376
    minip_is_3d: bool = True
    curved_mpr_is_3d: bool = False

    def as_dict(self) -> dict[str, object]:
        return {
            "pacs_viewer_code": self.pacs_viewer_code.value,
            "minip_is_3d": self.minip_is_3d,
            "curved_mpr_is_3d": self.curved_mpr_is_3d,
        }


@dataclass(frozen=True, slots=True)
class Device:
    role: Role
    line: int
    station_name: str | None = None
    ae_title: str | None = None
    device_serial_number: str | None = None
    manufacturer: str | None = None
    model: str | None = None
    note: str | None = None
    valid_from: dt.date | None = None
    valid_to: dt.date | None = None
    id: str | None = None
    source: str | None = None
    """Where the entry is kept, e.g. ``devices.toml:12`` or ``index device #3``."""

    @property
    def label(self) -> str:
        keys = [f"{k}={getattr(self, k)!r}" for k in DEVICE_KEYS if getattr(self, k)]
        return self.id or ", ".join(keys)

    def valid_on(self, date: dt.date | None) -> bool:
        if date is None:
            return True
        if self.valid_from and date < self.valid_from:
            return False
        return not (self.valid_to and date > self.valid_to)


@dataclass(frozen=True, slots=True)
class DeviceMatch:
    device: Device
    key: str
    """Which key matched: one of :data:`KEY_SPECIFICITY`."""
    value: str


@dataclass(frozen=True, slots=True)
class Registry:
    devices: tuple[Device, ...] = ()
    policy: Policy = field(default_factory=Policy)
    path: str | None = None
    error: str | None = None
    """Set when the live file at ``path`` is unusable: this is then its last good version
    (see :class:`RegistryFile`)."""

    def match(
        self,
        *,
        station_name: str | None,
        ae_title: str | None,
        device_serial_number: str | None,
        manufacturer: str | None,
        model: str | None,
        study_date: dt.date | None,
    ) -> DeviceMatch | None:
        """The entry that identifies this equipment on this date, most specific key first."""
        observed = {
            "device_serial_number": _norm(device_serial_number),
            "station_name": _norm(station_name),
            "ae_title": _norm(ae_title),
        }
        pair = (_norm(manufacturer), _norm(model))
        for key in KEY_SPECIFICITY:
            for device in self.devices:
                if not device.valid_on(study_date):
                    continue
                if key == "manufacturer+model":
                    wanted = (_norm(device.manufacturer), _norm(device.model))
                    if all(wanted) and wanted == pair:
                        return DeviceMatch(device, key, f"{manufacturer} / {model}")
                else:
                    wanted_value = _norm(getattr(device, key))
                    if wanted_value and wanted_value == observed[key]:
                        return DeviceMatch(device, key, str(getattr(device, key)))
        return None


def _norm(value: str | None) -> str | None:
    if value is None:
        return None
    value = " ".join(str(value).split()).upper()
    return value or None


def _device_lines(text: str) -> list[int]:
    return [n for n, line in enumerate(text.splitlines(), 1) if re.match(r"\s*\[\[\s*device\s*\]\]", line)]


def _line_of(text: str, header: str) -> int:
    for n, line in enumerate(text.splitlines(), 1):
        if re.match(rf"\s*\[\s*{header}\s*\]", line):
            return n
    return 1


def _line_of_key(text: str, key: str) -> int:
    for n, line in enumerate(text.splitlines(), 1):
        if re.match(rf"\s*{key}\s*=", line):
            return n
    return 1


def _date(value: object, where: str) -> dt.date | None:
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    if isinstance(value, str):
        try:
            return dt.date.fromisoformat(value)
        except ValueError:
            pass
    raise RegistryError(f"{where}: {value!r} is not a date (write 2024-01-31)")


def parse_registry(text: str, name: str = "<registry>") -> Registry:
    """Parse registry TOML text; raise :class:`RegistryError` naming the line and the reason."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RegistryError(f"{name}: {exc}") from exc
    unknown_tables = set(data) - {"device", "policy"}
    if unknown_tables:
        raise RegistryError(f"{name}:1: unknown key(s) {sorted(unknown_tables)}; expected [policy] and [[device]]")
    raw_policy = data.get("policy", {})
    if not isinstance(raw_policy, dict):
        raise RegistryError(f"{name}:{_line_of_key(text, 'policy')}: 'policy' must be a table ([policy])")
    policy = _parse_policy(raw_policy, f"{name}:{_line_of(text, 'policy')}")
    raw_devices = data.get("device", [])
    if not isinstance(raw_devices, list):
        raise RegistryError(f"{name}: 'device' must be an array of tables ([[device]])")
    lines = _device_lines(text)
    devices = []
    for index, row in enumerate(raw_devices):
        line = lines[index] if index < len(lines) else _line_of_key(text, "device")
        if not isinstance(row, dict):
            raise RegistryError(f"{name}:{line}: device #{index + 1} must be a table ([[device]])")
        devices.append(parse_device(row, f"{name}:{line}: device #{index + 1}", line))
    return Registry(tuple(devices), policy, name)


def _parse_policy(raw: dict, where: str) -> Policy:
    unknown = set(raw) - set(POLICY_FIELDS)
    if unknown:
        raise RegistryError(f"{where}: unknown policy {sorted(unknown)}; known: {list(POLICY_FIELDS)}")
    code = str(raw.get("pacs_viewer_code", "76376")).lower()
    try:
        pacs_code = PacsViewerCode(code)
    except ValueError:
        raise RegistryError(f"{where}: pacs_viewer_code must be 76376, 76377 or review, not {code!r}") from None
    for flag in ("minip_is_3d", "curved_mpr_is_3d"):
        if flag in raw and not isinstance(raw[flag], bool):
            raise RegistryError(f"{where}: {flag} must be true or false")
    return Policy(pacs_code, raw.get("minip_is_3d", True), raw.get("curved_mpr_is_3d", False))


def parse_device(row: dict, where: str = "device", line: int = 0) -> Device:
    """One registry entry from a ``[[device]]`` table (or an API body), or :class:`RegistryError`
    naming ``where`` and the rule it breaks: the file and the API apply the same rules."""
    unknown = set(row) - set(DEVICE_FIELDS)
    if unknown:
        raise RegistryError(f"{where}: unknown key(s) {sorted(unknown)}; known: {list(DEVICE_FIELDS)}")
    role_text = row.get("role")
    try:
        role = Role(str(role_text))  # a missing or non-text role is no member either
        if role not in REGISTRY_ROLES:
            raise ValueError
    except ValueError:
        raise RegistryError(
            f"{where}: role must be one of {[r.value for r in REGISTRY_ROLES]}, not {role_text!r}"
        ) from None
    for key in (*DEVICE_KEYS, "note", "id"):
        if key in row and not isinstance(row[key], str):
            raise RegistryError(f"{where}: {key} must be a string")
    has_single = any(row.get(k) for k in ("station_name", "ae_title", "device_serial_number"))
    has_pair = bool(row.get("manufacturer")) and bool(row.get("model"))
    if bool(row.get("manufacturer")) != bool(row.get("model")):
        raise RegistryError(f"{where}: manufacturer and model match only together; give both")
    if not (has_single or has_pair):
        raise RegistryError(
            f"{where}: give at least one of station_name, ae_title, device_serial_number, or manufacturer + model"
        )
    valid_from = _date(row.get("valid_from"), f"{where}: valid_from")
    valid_to = _date(row.get("valid_to"), f"{where}: valid_to")
    if valid_from and valid_to and valid_to < valid_from:
        raise RegistryError(f"{where}: valid_to {valid_to} is before valid_from {valid_from}")
    return Device(
        role=role,
        line=line,
        station_name=row.get("station_name"),
        ae_title=row.get("ae_title"),
        device_serial_number=row.get("device_serial_number"),
        manufacturer=row.get("manufacturer"),
        model=row.get("model"),
        note=row.get("note"),
        valid_from=valid_from,
        valid_to=valid_to,
        id=row.get("id"),
        source=where.split(": device")[0],
    )


def load_registry(path: str | Path) -> Registry:
    """Read and parse a registry file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise RegistryError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise RegistryError(f"{path}: not UTF-8 text: {exc}") from exc
    return parse_registry(text, str(path))


class RegistryFile:
    """The live ``--devices`` file of a running receiver: re-read when it changes on disk.

    A version that cannot be used (TOML typo, unknown role, file removed ...) never stops the
    decisions: :meth:`current` keeps returning the last good registry, with ``error`` set to the
    file's line and reason, and the error is logged once per change of the file, not on every call.
    When the file is fixed, the next call uses it. Thread-safe (settle loop and API threads).
    """

    def __init__(self, path: str | Path, *, reports: bool = True) -> None:
        self.path = Path(path)
        self.reports = reports
        """Log the file's changes of state; False in the HTTP worker processes, which watch the same file as
        the receiver that decides with it (one log line per change, not one per process)."""
        self._lock = threading.Lock()
        self._signature: tuple | None = None
        self._good: Registry | None = None
        self._current = Registry(path=str(self.path))

    def _stat(self) -> tuple:
        try:
            st = os.stat(self.path)
        except OSError as exc:
            return ("unreadable", exc.errno)
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def current(self) -> Registry:
        """The registry to decide with now (``error`` set while the file is unusable)."""
        signature = self._stat()
        with self._lock:
            if signature == self._signature:
                return self._current
            self._signature = signature
            try:
                good = load_registry(self.path)
            except RegistryError as exc:
                reason = " ".join(str(exc).split())
                fallback = self._good or Registry(path=str(self.path))
                self._current = replace(fallback, error=reason)
                (_log.error if self.reports else _log.debug)(
                    "device registry %s is unusable, %s: %s",
                    self.path,
                    "deciding with its last good version" if self._good else "deciding without it",
                    reason,
                )
                return self._current
            if self._current.error:
                (_log.warning if self.reports else _log.debug)(
                    "device registry %s is valid again: deciding with it", self.path
                )
            self._good = self._current = good
            return good


def registry_to_dict(registry: Registry) -> dict:
    """A JSON-ready copy of the registry and policy (kept in evidence packs for re-derivation)."""
    return {
        "path": registry.path,
        "policy": registry.policy.as_dict(),
        "devices": [
            {
                "role": d.role.value,
                "station_name": d.station_name,
                "ae_title": d.ae_title,
                "device_serial_number": d.device_serial_number,
                "manufacturer": d.manufacturer,
                "model": d.model,
                "note": d.note,
                "valid_from": d.valid_from.isoformat() if d.valid_from else None,
                "valid_to": d.valid_to.isoformat() if d.valid_to else None,
                "id": d.id,
                "source": d.source,
            }
            for d in registry.devices
        ],
    }


def registry_from_dict(data: dict) -> Registry:
    policy = data.get("policy") or {}
    devices = tuple(
        Device(
            role=Role(d["role"]),
            line=0,
            station_name=d.get("station_name"),
            ae_title=d.get("ae_title"),
            device_serial_number=d.get("device_serial_number"),
            manufacturer=d.get("manufacturer"),
            model=d.get("model"),
            note=d.get("note"),
            valid_from=dt.date.fromisoformat(d["valid_from"]) if d.get("valid_from") else None,
            valid_to=dt.date.fromisoformat(d["valid_to"]) if d.get("valid_to") else None,
            id=d.get("id"),
            source=d.get("source"),
        )
        for d in data.get("devices", [])
    )
    return Registry(
        devices,
        Policy(
            PacsViewerCode(policy.get("pacs_viewer_code", "76376")),
            policy.get("minip_is_3d", True),
            policy.get("curved_mpr_is_3d", False),
        ),
        data.get("path"),
    )
