"""Settings of the ``serve`` command: flags > environment (``DICOMCHECK_*``) > config file > defaults.

Built by the entry point and passed down (``make_ae(settings)``, ``Store(settings)``); nothing reads
settings at import time. pydantic-settings gives the layering and validation. Each setting is declared
once, on its field (name, default, help, flag); the ``serve`` options, the README settings table
(``python -m dicomcheck.config``) and docs/conformance.md are read from there.
"""

from __future__ import annotations

import os
import re
import sys
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, InitSettingsSource, PydanticBaseSettingsSource, SettingsConfigDict

_AE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # printable, no backslash, 1-16 characters
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_SENDER_PART = r"[\x20-\x25\x27-\x5b\x5d\x5f-\x7b\x7d]"  # printable, no HL7 separator |^~\\&
_SENDER = re.compile(rf"^{_SENDER_PART}{{0,64}}(\^{_SENDER_PART}{{1,64}})?$")


@dataclass(frozen=True)
class Flag:
    """How a setting is spelled on ``dicomcheck serve``; declared on the field so the CLI, README and
    conformance statement cannot drift apart. A boolean setting gets ``--x/--no-x``; a list setting
    takes one value per repetition of the flag."""

    name: str

    def spellings(self, annotation: Any) -> tuple[str, ...]:
        if annotation is bool:
            return (self.name, "--no-" + self.name.removeprefix("--"))
        return (self.name,)


class Settings(BaseSettings):
    """Everything ``dicomcheck serve`` needs; each field is the one declaration of its name, default, help and flag."""

    model_config = SettingsConfigDict(env_prefix="DICOMCHECK_", extra="forbid")

    data: Annotated[Path, Flag("--data")] = Field(
        Path("dicomcheck-data"), description="Data folder: storage/, quarantine/ and the SQLite index."
    )
    database_url: Annotated[str | None, Flag("--database-url")] = Field(
        None, description="SQLAlchemy URL of the index; default sqlite:///DATA/index.sqlite3."
    )
    ae_title: Annotated[str, Flag("--ae-title")] = Field("DICOMCHECK", description="Our AE title.")
    dicom_port: Annotated[int, Flag("--dicom-port")] = Field(
        11112, ge=0, le=65535, description="TCP port of the DICOM listener."
    )
    bind: Annotated[str, Flag("--bind")] = Field(
        "0.0.0.0", description="Address the DICOM listener and the HTTP API bind to."
    )
    allow_callers: Annotated[list[str], Flag("--allow-caller")] = Field(
        default_factory=list, description="Calling AE titles allowed; empty accepts all (with a warning)."
    )
    require_called_ae: bool = Field(True, description="Reject associations whose called AE title is not ours.")
    devices: Annotated[Path | None, Flag("--devices")] = Field(
        None, description="Site device registry and policies (TOML); re-read when it changes."
    )
    stable_after: Annotated[float, Flag("--stable-after")] = Field(
        60.0, gt=0, description="Seconds without a new instance before a study is decided."
    )
    settle_interval: float | None = Field(
        None,
        gt=0,
        description="How often the settler looks for stable studies (default: stable_after / 4, at most 5 s).",
    )
    max_associations: Annotated[int, Flag("--max-associations")] = Field(
        16,
        ge=1,
        le=1000,
        description="Concurrent associations accepted (in total; shared out between receiver processes).",
    )
    max_pdu: int = Field(262144, ge=0, description="Maximum PDU size we receive (0 = unlimited).")
    acse_timeout: float = Field(
        30.0, gt=0, description="Seconds to wait for association messages (A-ASSOCIATE, A-RELEASE)."
    )
    dimse_timeout: float = Field(60.0, gt=0, description="Seconds to wait for DIMSE messages.")
    network_timeout: float = Field(
        60.0, gt=0, description="Seconds of network inactivity before the association is aborted."
    )
    private_sop_classes: Annotated[list[str], Flag("--private-sop-class")] = Field(
        default_factory=list, description="Extra (private) storage SOP class UIDs to accept."
    )
    tls_cert: Annotated[Path | None, Flag("--tls-cert")] = Field(
        None, description="Certificate (PEM): enables DICOM TLS on the DICOM port."
    )
    tls_key: Annotated[Path | None, Flag("--tls-key")] = Field(
        None, description="Private key (PEM) of the certificate."
    )
    tls_ca: Annotated[Path | None, Flag("--tls-ca")] = Field(
        None, description="CA bundle used to verify client certificates."
    )
    tls_require_client_cert: Annotated[bool, Flag("--tls-require-client-cert")] = Field(
        False, description="Require a client certificate signed by `tls_ca` (mutual TLS)."
    )
    node_name: str | None = Field(None, description="Name of this receiver in a shared index (default host:pid).")
    evidence_destination: Annotated[str | None, Flag("--evidence-destination")] = Field(
        None, description="AE@host:port of a PACS that receives each decision's evidence KOS and SR (C-STORE)."
    )
    evidence_retry_base: float = Field(
        30.0,
        gt=0,
        description="Seconds before the first retry of an evidence return the PACS did not take (unreachable, "
        "association rejected, a failure status); each later retry waits twice as long, with up to 20 % jitter.",
    )
    evidence_retry_max_delay: float = Field(
        3600.0, gt=0, description="Longest wait in seconds between two attempts of an evidence return."
    )
    evidence_retry_max_attempts: int = Field(
        30,
        ge=1,
        description="Attempts of an evidence return before it is given up as failed (`dicomcheck evidence returns "
        "--retry` queues failed ones again).",
    )
    evidence_retry_max_age: str = Field(
        "24h",
        description="How long an evidence return is retried, from its first attempt, before it is given up as "
        "failed. A duration (`90s`, `12h`, `2d`); `off` retries until evidence_retry_max_attempts.",
    )
    forwarded_allow_ips: Annotated[list[str], Flag("--forwarded-allow-ip")] = Field(
        default_factory=list,
        description="Addresses or networks (CIDR) of TLS-terminating reverse proxies whose X-Forwarded-Proto / "
        "X-Forwarded-For are trusted (the pages' Origin check, the Secure cookie, the audited client address); "
        "empty trusts no proxy header.",
    )
    processes: Annotated[int, Flag("--processes")] = Field(
        1,
        ge=0,
        le=64,
        description="DICOM receiver processes behind the one port (pynetdicom is bound to one core each); 0 = one "
        "per core available; 1 = in the serving process (measured fastest on 2 cores, bench/README.md).",
    )
    max_inflated_size: int = Field(
        1 << 30,
        ge=1 << 20,
        description="Largest size in bytes a Deflated Explicit VR data set may inflate to; beyond it the C-STORE is "
        "refused with 0xA700.",
    )
    pdu_deadline: float = Field(
        60.0,
        gt=0,
        description="Seconds one PDU may take to arrive in full; bytes trickling in do not reset it (the connection "
        "is aborted).",
    )
    speed_tuning: bool = Field(
        True,
        description="pynetdicom receive-path speed tuning (scp/tuning.py: event-driven reactors, larger reads, "
        "TCP_NODELAY, shared contexts), only on the pynetdicom version it is tested with; the fault fixes stay on "
        "either way.",
    )
    http_port: Annotated[int, Flag("--http-port")] = Field(
        8080, ge=0, le=65535, description="HTTP port of the lookup API."
    )
    http_idle_timeout: float = Field(
        5.0,
        gt=0,
        description="Seconds an HTTP connection may sit idle, or take to send a request's headers or body, before it "
        "is closed.",
    )
    http_max_body: int = Field(
        1 << 20, ge=1024, description="Largest HTTP request body in bytes; larger ones get 413 before they are read."
    )
    http_max_header_size: int = Field(
        16384,
        ge=1024,
        description="Largest HTTP request header block in bytes; larger ones get 431 / the connection is closed.",
    )
    http_max_connections: int = Field(
        200,
        ge=1,
        description="Open HTTP connections at most; beyond it new connections wait or are refused, so the API never "
        "starves the DICOM receiver of file descriptors.",
    )
    http_workers: int = Field(
        0,
        ge=0,
        le=64,
        description="HTTP worker processes of the lookup API, sharing its port. 0: one per CPU core (SQLite and "
        "PostgreSQL). The DICOM receiver and the settle loop stay in the main process; every worker applies the HTTP "
        "limits, http_max_connections shared out among them.",
    )
    auditor_full_pack: bool = Field(
        False, description="Serve auditor tokens the full evidence pack; by default they get the PHI-minimal pack."
    )
    api: Annotated[bool, Flag("--api")] = Field(
        True, description="Serve the HTTP API (`--no-api`: the DICOM receiver only)."
    )
    scp: Annotated[bool, Flag("--scp")] = Field(
        True, description="Run the DICOM receiver (`--no-scp`: the HTTP API only, on a shared index)."
    )
    pixel_retention: Annotated[str, Flag("--pixel-retention")] = Field(
        "30d",
        description="How long after a study's current decision its instances keep their pixel data; then each is "
        "replaced by a header-only copy (every other element byte-exact; the instances a pack shows as thumbnails "
        "are kept whole) and a signed retention record says what was removed. A duration (`90s`, `12h`, `30d`, "
        "`2w`); `0` or `off` keeps every pixel.",
    )
    quarantine_retention: Annotated[str, Flag("--quarantine-retention")] = Field(
        "90d",
        description="How long a quarantined input is kept before it is deleted (its index row stays, marked "
        "expired). A duration; `0` or `off` keeps them all.",
    )
    min_free_space: Annotated[str, Flag("--min-free-space")] = Field(
        "5%",
        description="Free space the storage volume keeps: below it new instances are refused with 0xA700 (before the "
        "disk is full), /healthz says degraded, and retention and quarantine expiry run at once. A share of the "
        "volume (`5%`) or a size (`2GiB`, `500MB`); `0` turns the check off.",
    )
    hl7_port: Annotated[int | None, Flag("--hl7-port")] = Field(
        None,
        ge=0,
        le=65535,
        description="TCP port of the HL7 v2 MLLP listener for radiology reports (ORU^R01); not set: no listener.",
    )
    hl7_allow_senders: Annotated[list[str], Flag("--hl7-allow-sender")] = Field(
        default_factory=list,
        description="Sending applications / facilities allowed to send reports: `APP` (MSH-3), `APP^FACILITY` "
        "(MSH-3 and MSH-4) or `^FACILITY`; others are answered AR. Empty accepts all (with a warning).",
    )
    hl7_max_message: int = Field(
        2 << 20,
        ge=1024,
        description="Largest HL7 message in bytes (between the MLLP start and end bytes); a larger one is answered "
        "AR and its connection closed.",
    )
    hl7_idle_timeout: float = Field(
        120.0,
        gt=0,
        description="Seconds an MLLP connection may take to send its next complete message (idle or trickling) "
        "before it is closed.",
    )
    hl7_max_connections: int = Field(
        16, ge=1, le=1000, description="Open MLLP connections at most; one more is closed at once."
    )
    report_wait: Annotated[str, Flag("--report-wait")] = Field(
        "7d",
        description="How long after a study supporting 76376 / 76377 is decided a final report may take before "
        "`report_missing` is raised. A duration (`0` at once, `12h`, `7d`); `off` never raises it.",
    )
    made_later_days: Annotated[int, Flag("--made-later-days")] = Field(
        1,
        ge=0,
        le=3650,
        description="3D series dated more than this many days after their Study Date are flagged `3d_made_later` "
        "(the outcome is unchanged; the evidence names the dates).",
    )
    session_secret: SecretStr | None = Field(
        None,
        description="Site secret keying the session id hash (issue 13); receivers sharing an index must share it. "
        "Without it the id is pseudonymous only.",
    )

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

    @field_validator("forwarded_allow_ips")
    @classmethod
    def _proxies(cls, value: list[str]) -> list[str]:
        import ipaddress

        cleaned = [v.strip() for v in value if v.strip()]
        bad = []
        for item in cleaned:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                bad.append(item)
        if bad:
            raise ValueError(f"not IP addresses or networks (a proxy is named by its address, never '*'): {bad}")
        return cleaned

    @field_validator("private_sop_classes")
    @classmethod
    def _uids(cls, value: list[str]) -> list[str]:
        bad = [v for v in value if not _UID.match(v) or len(v) > 64]
        if bad:
            raise ValueError(f"not UIDs: {bad}")
        return value

    @field_validator("pixel_retention", "quarantine_retention", "evidence_retry_max_age")
    @classmethod
    def _duration(cls, value: str) -> str:
        parse_duration(value)  # raises ValueError with the reason
        return value.strip()

    @field_validator("report_wait")
    @classmethod
    def _report_wait(cls, value: str) -> str:
        if value.strip().lower() not in ("off", "never"):
            parse_duration_allowing_zero(value)  # raises ValueError with the reason
        return value.strip()

    @field_validator("hl7_allow_senders")
    @classmethod
    def _senders(cls, value: list[str]) -> list[str]:
        cleaned = [v.strip() for v in value if v.strip()]
        bad = [v for v in cleaned if not _SENDER.match(v)]
        if bad:
            raise ValueError(f"not APP, APP^FACILITY or ^FACILITY: {bad}")
        return cleaned

    @field_validator("min_free_space")
    @classmethod
    def _free_space(cls, value: str) -> str:
        parse_free_space(value)  # raises ValueError with the reason
        return value.strip()

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
    def session_hash_key(self) -> bytes:
        """``session_secret`` as the key of the session id hash (empty: none)."""
        return self.session_secret.get_secret_value().encode("utf-8") if self.session_secret else b""

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

    @property
    def pixel_retention_seconds(self) -> float | None:
        """``pixel_retention`` in seconds; None when pixels are kept for ever."""
        return parse_duration(self.pixel_retention)

    @property
    def min_free_space_budget(self) -> tuple[float, int] | None:
        """``min_free_space`` as ``(share of the volume, bytes)``; None when there is no budget."""
        return parse_free_space(self.min_free_space)

    @property
    def report_wait_seconds(self) -> float | None:
        """``report_wait`` in seconds; None when ``report_missing`` is never raised."""
        if self.report_wait.lower() in ("off", "never"):
            return None
        return parse_duration_allowing_zero(self.report_wait)

    @property
    def evidence_retry_max_age_seconds(self) -> float | None:
        """``evidence_retry_max_age`` in seconds; None when only the number of attempts limits the retries."""
        return parse_duration(self.evidence_retry_max_age)

    @property
    def quarantine_retention_seconds(self) -> float | None:
        """``quarantine_retention`` in seconds; None when quarantined inputs are kept for ever."""
        return parse_duration(self.quarantine_retention)


_DURATION = re.compile(
    r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|secs|seconds?|m|min|mins|minutes?|h|hours?|d|days?|w|weeks?)?\s*$"
)
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(?:([kmgtp])(i?))?b?\s*$", re.IGNORECASE)


def parse_duration(text: str) -> float | None:
    """Seconds of a duration setting (``90s``, ``15m``, ``12h``, ``30d``, ``2w``; a bare number is seconds);
    None for ``off`` or ``0`` (no limit). ValueError names what is wrong."""
    value = str(text).strip().lower()
    if value in ("off", "none", "never"):
        return None
    match = _DURATION.match(value)
    if not match:
        raise ValueError(f"{text!r} is not a duration (a number and s, m, h, d or w, e.g. 30d; or off)")
    seconds = float(match.group(1)) * _DURATION_UNITS[(match.group(2) or "s")[0]]
    return seconds or None


def parse_duration_allowing_zero(text: str) -> float:
    """Seconds of a duration where ``0`` means now (``storage prune --older-than 0s``), not off."""
    value = str(text).strip().lower()
    match = _DURATION.match(value)
    if not match:
        raise ValueError(f"{text!r} is not a duration (a number and s, m, h, d or w, e.g. 30d)")
    return float(match.group(1)) * _DURATION_UNITS[(match.group(2) or "s")[0]]


def parse_free_space(text: str) -> tuple[float, int] | None:
    """``min_free_space`` as ``(share of the volume, bytes)``, one of them 0; None for ``0`` / ``off``.

    ``5%`` is a share; ``2GiB`` (powers of 1024 with ``i``), ``500MB`` / ``500M`` (powers of 1000) and a bare
    number of bytes are sizes."""
    value = str(text).strip()
    if value.lower() in ("off", "none"):
        return None
    if value.endswith("%"):
        try:
            share = float(value[:-1])
        except ValueError:
            raise ValueError(f"{text!r} is not a share of the volume (e.g. 5%)") from None
        if not 0 <= share < 100:
            raise ValueError(f"{text!r}: a share of the volume is from 0% to below 100%")
        return (share / 100, 0) if share else None
    match = _SIZE.match(value)
    if not match:
        raise ValueError(f"{text!r} is not a free-space size (e.g. 5%, 2GiB, 500MB, or 0)")
    prefix, binary = (match.group(2) or "").lower(), match.group(3)
    size = int(float(match.group(1)) * (1024 if binary else 1000) ** (" kmgtp".index(prefix) if prefix else 0))
    return (0.0, size) if size else None


def flag_of(field: str) -> Flag | None:
    """The ``serve`` flag declared on a Settings field, or None for a setting with no flag (KeyError: no such field)."""
    return next((m for m in Settings.model_fields[field].metadata if isinstance(m, Flag)), None)


def flag_spellings(field: str) -> tuple[str, ...]:
    """Every spelling of the field's flag (``--x``, ``--no-x`` for a boolean); empty when it has none."""
    flag = flag_of(field)
    return flag.spellings(Settings.model_fields[field].annotation) if flag else ()


def flag_markdown(field: str) -> str:
    """The field's flag spellings as documentation shows them, or ``(no flag)``."""
    return " / ".join(f"`{spelling}`" for spelling in flag_spellings(field)) or "(no flag)"


def default_text(field: str) -> str:
    """The field's default as documentation shows it: ``not set``, ``empty``, ``yes`` / ``no`` or the value."""
    value = Settings.model_fields[field].get_default(call_default_factory=True)
    if value is None:
        return "not set"
    if value == []:
        return "empty"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return f"`{value}`"


def settings_table_markdown(fields: Iterable[str] | None = None) -> str:
    """The Markdown table of settings (all, or ``fields`` in that order): flag, variable, default, meaning.

    README's table between the ``settings-table`` markers is this output (``python -m dicomcheck.config``).
    """
    names = list(Settings.model_fields) if fields is None else list(fields)
    unknown = [name for name in names if name not in Settings.model_fields]
    if unknown:
        raise KeyError(f"not Settings fields: {unknown}")
    lines = ["| Setting | Flag | Environment | Default | Meaning |", "|---|---|---|---|---|"]
    for name in names:
        meaning = Settings.model_fields[name].description
        lines.append(
            f"| `{name}` | {flag_markdown(name)} | `DICOMCHECK_{name.upper()}` | {default_text(name)} | {meaning} |"
        )
    return "\n".join(lines) + "\n"


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
        flag = flag_of(field) if field in Settings.model_fields else None
        return flag.name if flag else f"--{field.replace('_', '-')}"
    env = f"DICOMCHECK_{field.upper()}"
    if any(k.upper() == env for k in os.environ):
        return env
    if config_file is not None and field in file_data:
        return f"{config_file}: {field}"
    if config_file is not None and field not in Settings.model_fields:
        return f"{config_file}: {field}"
    return field


def _one_line(
    exc: ValidationError, explicit: dict[str, Any], config_file: Path | None, file_data: dict[str, Any]
) -> str:
    problems = []
    for error in exc.errors(include_url=False):
        loc = [str(part) for part in error.get("loc", ())]
        message = error.get("msg", "invalid").removeprefix("Value error, ")
        if error.get("type") == "extra_forbidden":
            message = "unknown setting"
        if loc:
            where = _origin(loc[0], explicit, config_file, file_data) + "".join(f"[{part}]" for part in loc[1:])
            given = error.get("input")
            shown = (
                f" (got {given!r})"
                if isinstance(given, str | int | float | bool) and error.get("type") != "extra_forbidden"
                else ""
            )
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


if __name__ == "__main__":
    sys.stdout.write(settings_table_markdown())
