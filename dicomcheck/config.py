"""Settings of the ``serve`` command: flags > environment (``DICOMCHECK_*``) > config file > defaults.

Built by the entry point and passed down (``make_ae(settings)``, ``Store(settings)``); nothing reads
settings at import time. pydantic-settings gives the layering and validation.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, InitSettingsSource, PydanticBaseSettingsSource, SettingsConfigDict

_AE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # printable, no backslash, 1-16 characters
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")


class Settings(BaseSettings):
    """Everything ``dicomcheck serve`` needs; see README "Configuration"."""

    model_config = SettingsConfigDict(env_prefix="DICOMCHECK_", extra="forbid")

    data: Path = Field(Path("dicomcheck-data"), description="Data folder: storage/, quarantine/ and the SQLite index.")
    database_url: str | None = Field(None, description="SQLAlchemy URL of the index; default sqlite:///DATA/index.sqlite3.")
    ae_title: str = Field("DICOMCHECK", description="Our AE title.")
    dicom_port: int = Field(11112, ge=0, le=65535)
    bind: str = Field("0.0.0.0", description="Address the DICOM listener binds to.")
    allow_callers: list[str] = Field(default_factory=list, description="Calling AE titles allowed; empty accepts all (with a warning).")
    require_called_ae: bool = Field(True, description="Reject associations whose called AE title is not ours.")
    devices: Path | None = Field(None, description="Site device registry and policies (TOML).")
    stable_after: float = Field(60.0, gt=0, description="Seconds without a new instance before a study is decided.")
    settle_interval: float | None = Field(None, gt=0, description="How often the settler looks for stable studies (default: stable_after / 4, at most 5 s).")
    max_associations: int = Field(16, ge=1, le=1000)
    max_pdu: int = Field(262144, ge=0, description="Maximum PDU size we receive (0 = unlimited).")
    acse_timeout: float = Field(30.0, gt=0)
    dimse_timeout: float = Field(60.0, gt=0)
    network_timeout: float = Field(60.0, gt=0)
    private_sop_classes: list[str] = Field(default_factory=list, description="Extra (private) storage SOP class UIDs to accept.")
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None
    tls_require_client_cert: bool = False
    node_name: str | None = Field(None, description="Name of this receiver in a shared index (default host:pid).")
    evidence_destination: str | None = Field(None, description="AE@host:port of a PACS that receives each decision's evidence KOS and SR (C-STORE).")
    processes: int = Field(1, ge=1, le=64, description="DICOM receiver processes behind the one port (pynetdicom is bound to one core each).")
    max_inflated_size: int = Field(1 << 30, ge=1 << 20, description="Largest size in bytes a Deflated Explicit VR data set may inflate to; beyond it the C-STORE is refused with 0xA700.")
    pdu_deadline: float = Field(60.0, gt=0, description="Seconds one PDU may take to arrive in full; bytes trickling in do not reset it (the connection is aborted).")
    speed_tuning: bool = Field(True, description="pynetdicom receive-path speed tuning (scp/tuning.py: event-driven reactors, larger reads, TCP_NODELAY, shared contexts), only on the pynetdicom version it is tested with; the fault fixes stay on either way.")
    http_port: int = Field(8080, ge=0, le=65535, description="HTTP port of the lookup API.")
    http_idle_timeout: float = Field(5.0, gt=0, description="Seconds an HTTP connection may sit idle, or take to send a request's headers or body, before it is closed.")
    http_max_body: int = Field(1 << 20, ge=1024, description="Largest HTTP request body in bytes; larger ones get 413 before they are read.")
    http_max_header_size: int = Field(16384, ge=1024, description="Largest HTTP request header block in bytes; larger ones get 431 / the connection is closed.")
    http_max_connections: int = Field(200, ge=1, description="Open HTTP connections at most; beyond it new connections wait or are refused, so the API never starves the DICOM receiver of file descriptors.")
    auditor_full_pack: bool = Field(False, description="Serve auditor tokens the full evidence pack; by default they get the PHI-minimal pack.")
    api: bool = Field(True, description="Serve the HTTP API.")
    scp: bool = Field(True, description="Run the DICOM receiver.")

    @field_validator("ae_title")
    @classmethod
    def _ae_title(cls, value: str) -> str:
        value = value.strip()
        if not _AE.match(value):
            raise ValueError("an AE title has 1-16 printable characters and no backslash")
        return value

    @field_validator("allow_callers")
    @classmethod
    def _callers(cls, value: list[str]) -> list[str]:
        cleaned = [v.strip() for v in value if v.strip()]
        bad = [v for v in cleaned if not _AE.match(v)]
        if bad:
            raise ValueError(f"not AE titles: {bad}")
        return cleaned

    @field_validator("evidence_destination")
    @classmethod
    def _destination(cls, value: str | None) -> str | None:
        if value:
            from .evidence.send import PacsDestination

            PacsDestination.parse(value)  # raises ValueError with the reason
        return value or None

    @field_validator("private_sop_classes")
    @classmethod
    def _uids(cls, value: list[str]) -> list[str]:
        bad = [v for v in value if not _UID.match(v) or len(v) > 64]
        if bad:
            raise ValueError(f"not UIDs: {bad}")
        return value

    @model_validator(mode="after")
    def _tls(self) -> Settings:
        if not (self.api or self.scp):
            raise ValueError("--no-api and --no-scp together leave nothing to run")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("TLS needs both tls_cert and tls_key")
        if self.tls_require_client_cert and not self.tls_ca:
            raise ValueError("tls_require_client_cert needs tls_ca to verify clients")
        return self

    @property
    def storage_dir(self) -> Path:
        return self.data / "storage"

    @property
    def quarantine_dir(self) -> Path:
        return self.data / "quarantine"

    @property
    def url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data / 'index.sqlite3').resolve()}"

    @property
    def settle_every(self) -> float:
        return self.settle_interval or min(5.0, max(0.2, self.stable_after / 4))


class ConfigError(ValueError):
    """Settings that cannot be used; the one-line message names the file (and line) or flag, and the field."""


def _read_config(config_file: Path) -> dict[str, Any]:
    path = Path(config_file)
    if not path.is_file():
        raise ConfigError(f"{config_file}: no such config file")
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise ConfigError(f"{config_file}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{config_file}: not UTF-8 text (byte {exc.start})") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        at = re.search(r"\(at line (\d+), column \d+\)", str(exc))
        line = int(at.group(1)) if at else max(1, len(text.splitlines()))  # else "(at end of document)"
        reason = re.sub(r"\s*\((at line \d+, column \d+|at end of document)\)", "", str(exc))
        raise ConfigError(f"{config_file}:{line}: TOML syntax error: {reason}") from None


def _origin(field: str, explicit: dict[str, Any], config_file: Path | None, file_data: dict[str, Any]) -> str:
    """Where a setting's value came from, as the user wrote it: the flag, the variable or the file."""
    if field in explicit:
        return f"--{field.replace('_', '-')}"
    env = f"DICOMCHECK_{field.upper()}"
    if any(k.upper() == env for k in os.environ):
        return env
    if config_file is not None and field in file_data:
        return f"{config_file}: {field}"
    if config_file is not None and field not in Settings.model_fields:
        return f"{config_file}: {field}"
    return field


def _one_line(exc: ValidationError, explicit: dict[str, Any], config_file: Path | None, file_data: dict[str, Any]) -> str:
    problems = []
    for error in exc.errors(include_url=False):
        loc = [str(part) for part in error.get("loc", ())]
        message = error.get("msg", "invalid").removeprefix("Value error, ")
        if error.get("type") == "extra_forbidden":
            message = "unknown setting"
        if loc:
            where = _origin(loc[0], explicit, config_file, file_data) + "".join(f"[{part}]" for part in loc[1:])
            given = error.get("input")
            shown = f" (got {given!r})" if isinstance(given, str | int | float | bool) and error.get("type") != "extra_forbidden" else ""
            problems.append(f"{where}: {message}{shown}")
        else:
            problems.append(f"{config_file}: {message}" if config_file is not None else message)
    return "; ".join(" ".join(p.split()) for p in problems)


def load_settings(config_file: Path | None = None, **flags: Any) -> Settings:
    """Settings from flags (those not None), the environment and an optional TOML config file.

    Raises :class:`ConfigError` with one line naming the file (with the line of a TOML syntax error)
    or the flag / variable, and the field, for anything that cannot be used.
    """
    explicit = {k: v for k, v in flags.items() if v is not None and v != [] and v != ()}
    file_data = _read_config(config_file) if config_file is not None else {}

    class _FileSettings(Settings):
        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
            if config_file is not None:  # read and checked above, so its errors name the file and line
                sources.append(InitSettingsSource(settings_cls, init_kwargs=file_data))
            return tuple(sources)

    try:
        return _FileSettings(**explicit)
    except ValidationError as exc:
        raise ConfigError(_one_line(exc, explicit, config_file, file_data)) from None
