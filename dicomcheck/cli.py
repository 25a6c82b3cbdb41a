"""The ``dicomcheck`` command line. Thin: parses arguments, calls the core, prints."""

from __future__ import annotations

import functools
import inspect
import json
import logging
import os
import sys
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from types import UnionType
from typing import TYPE_CHECKING, Annotated, Any, Union, cast, get_args, get_origin

import annotated_types
import typer

from . import __version__

# Each command imports what it needs when it runs: `dicomcheck --help`, `--version` and a command's
# `--help` never load pydicom, pynetdicom, fastapi or sqlmodel (tests/test_cli.py keeps it so).
if TYPE_CHECKING:
    from pydantic.fields import FieldInfo

    from .registry import Registry

# typer vendors click; its UsageError is the base of the exported BadParameter.
UsageError: type[Exception] = typer.BadParameter.__mro__[1]

app = typer.Typer(
    help="dicomcheck proves, from DICOM headers, where 3D post-processing of a study was made "
    "(scanner console, PACS viewer or independent workstation) and what that supports: "
    "CPT 76377, 76376, no 3D, bundled, or needs review.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
PROGRESS_THRESHOLD = 200
EXIT_USAGE = 1
EXIT_NOTHING_ANALYSED = 2
EXIT_CANNOT_LISTEN = 3
"""``serve`` could not open its DICOM port (uvicorn exits 3 too when the HTTP port is taken)."""


def _print_version(value: bool) -> None:
    if value:
        print(f"dicomcheck {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    _version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the dicomcheck version and exit."
        ),
    ] = False,
) -> None:
    pass


def _fail(message: str, code: int = EXIT_USAGE) -> typer.Exit:
    """One line on stderr, no traceback; ``raise _fail(...)`` exits with ``code``."""
    sys.stderr.write(f"dicomcheck: {' '.join(message.split())}\n")
    sys.stderr.flush()
    return typer.Exit(code)


class OutputFormat(str, Enum):
    table = "table"
    json = "json"


def _registry(devices: Path | None) -> Registry:
    from .registry import Registry, RegistryError, load_registry

    if devices is None:
        return Registry()
    try:
        return load_registry(devices)
    except RegistryError as exc:
        raise typer.BadParameter(str(exc), param_hint="--devices") from None


@app.command()
def analyze(
    paths: Annotated[
        list[Path],
        typer.Argument(help="DICOM files, folders (recursive), ZIP archives or DICOMDIR files.", show_default=False),
    ],
    devices: Annotated[
        Path | None, typer.Option("--devices", help="Site device registry and policies (TOML).", show_default=False)
    ] = None,
    output_format: Annotated[
        OutputFormat,
        typer.Option("--format", help="table: readable terminal view; json: the machine-readable document."),
    ] = OutputFormat.table,
    workers: Annotated[
        int | None,
        typer.Option("--workers", min=1, help="Processes reading headers (default: one per core).", show_default=False),
    ] = None,
) -> None:
    """Classify every series and decide every study found in PATHS.

    Exit status: 0 when at least one study was analysed, 2 when none was, 1 on a usage error.
    Inputs that cannot be analysed are listed under errors and never stop the run.
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from .analysis import decide_studies
    from .knowledge import builtin_knowledge
    from .model import InstanceFacts
    from .report import analysis_document, render_table
    from .sources import ReadError, discover, read_all

    registry = _registry(devices)
    builtin_knowledge()
    sources, errors = discover(paths)
    facts: list[InstanceFacts] = []
    read_errors: list[ReadError] = list(errors)
    stderr = Console(stderr=True)
    if len(sources) >= PROGRESS_THRESHOLD:
        columns = (TextColumn("reading headers"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
        with Progress(*columns, console=stderr, transient=True) as progress:
            task = progress.add_task("read", total=len(sources))
            for result in read_all(sources, workers=workers, progress=lambda n: progress.advance(task, n)):
                if isinstance(result, InstanceFacts):
                    facts.append(result)
                else:
                    read_errors.append(result)
    else:
        for result in read_all(sources, workers=workers):
            if isinstance(result, InstanceFacts):
                facts.append(result)
            else:
                read_errors.append(result)
    studies = decide_studies(facts, registry=registry)
    if output_format is OutputFormat.json:
        document = analysis_document(studies, read_errors, policy=registry.policy, registry_path=registry.path)
        sys.stdout.write(json.dumps(document, indent=2, ensure_ascii=False) + "\n")
    else:
        stdout = Console()
        render_table(stdout if stdout.is_terminal else Console(width=140), studies, read_errors)
    if not studies:
        raise typer.Exit(EXIT_NOTHING_ANALYSED)


def _setting_option(name: str, field: FieldInfo) -> inspect.Parameter:
    """The ``serve`` option of one Settings field: its flag, its help, and None when not given (so the
    environment and the config file still apply). Values are checked by Settings, with the flag named."""
    from .config import default_text, flag_spellings

    annotation = field.annotation
    shown_default = default_text(name).strip("`")
    help_text = field.description or ""
    if get_origin(annotation) is list:
        help_text += " Repeat the flag for several."
    elif shown_default not in ("not set", "empty"):
        help_text += f" (default: {shown_default})"
    is_union = get_origin(annotation) in (Union, UnionType)
    # A type built at run time from the field's annotation: Any, since no static type describes it.
    value_type: Any = (
        Union[tuple(arg for arg in get_args(annotation) if arg is not type(None))]  # noqa: UP007 - built at run time
        if is_union
        else annotation
    )
    declaration = "/".join(flag_spellings(name))
    minimum: int | float | None = None
    maximum: int | float | None = None
    if value_type is int:  # an integer's inclusive bounds are checked, and shown, by the option itself
        # annotated_types types ge/le as protocols; on an int field pydantic holds ints there.
        minimum = next((cast(int, m.ge) for m in field.metadata if isinstance(m, annotated_types.Ge)), None)
        maximum = next((cast(int, m.le) for m in field.metadata if isinstance(m, annotated_types.Le)), None)
    option = typer.Option(declaration, help=help_text, show_default=False, min=minimum, max=maximum)
    return inspect.Parameter(
        name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[value_type | None, option]
    )


def _settings_options(command: Callable[..., None]) -> Callable[..., None]:
    """Give ``command`` (``config`` and ``**flags``) one option per flagged Settings field, read from the field."""
    from .config import Settings, flag_of

    config = inspect.signature(command, eval_str=True).parameters["config"]
    options = [_setting_option(name, field) for name, field in Settings.model_fields.items() if flag_of(name)]
    command.__signature__ = inspect.Signature([config, *options])  # type: ignore[attr-defined]
    return command


@app.command()
@_settings_options
def serve(
    config: Annotated[
        Path | None,
        typer.Option(
            "--config", help="TOML file of settings (same names as the flags, with underscores).", show_default=False
        ),
    ] = None,
    **flags: Any,
) -> None:
    """Run the DICOM receiver and the HTTP lookup API on one index.

    The receiver stores every instance durably, indexes it and decides each study when stable; the
    API serves the decisions to billing systems (tokens: `dicomcheck token create`). Settings come
    from the flags, then DICOMCHECK_* environment variables, then --config.
    """
    from .config import ConfigError, load_settings
    from .registry import RegistryError, load_registry

    try:
        settings = load_settings(config, **flags)
    except ConfigError as exc:
        raise _fail(f"bad settings: {exc}") from None
    if settings.devices is not None:
        try:
            load_registry(settings.devices)  # a bad registry stops the start, with its line and reason
        except RegistryError as exc:
            raise _fail(f"bad --devices file: {exc}") from None
    from .ingest import Receiver, Settler  # the receive path's libraries, once the settings are known good

    _run_server(settings, Receiver, Settler)


def _run_server(settings, receiver_type, settler_type) -> None:
    if settings.api or settings.evidence_destination:  # API packs and returned KOS / SR are signed by the site key
        from .evidence.keys import KeyError_
        from .evidence.service import site_key

        try:
            site_key(settings.data / "keys")  # created at the first start, its fingerprint logged that once
        except KeyError_ as exc:
            raise typer.BadParameter(str(exc)) from None
    # SIGTERM / SIGINT are caught before anything is announced as listening: a service manager (or a test) that
    # stops the service right after the announcement is never missed (the API's server takes the signals over
    # once it runs, and is stopped by one that came before)
    stop_signals = _StopSignals()
    receiver = receiver_type(settings)
    settler = settler_type(receiver)
    settler.start()
    server = None
    if settings.scp:
        from scp.listen import start_listening
        from scp.pynetdicom_fixes import UnverifiedPynetdicom

        try:
            server = start_listening(settings, receiver)
        except UnverifiedPynetdicom as exc:  # refuse rather than run the receiver half-patched
            settler.stop()
            raise _fail(str(exc)) from None
        except OSError as exc:  # port taken, address not ours, no permission: one line, like a taken HTTP port
            settler.stop()
            reason = os.strerror(exc.errno) if exc.errno else str(exc)
            raise _fail(
                f"cannot listen for DICOM on {settings.bind}:{settings.dicom_port}: {reason}"
                + (f" ({exc.filename})" if exc.filename else ""),
                EXIT_CANNOT_LISTEN,
            ) from None
        print(
            f"dicomcheck {__version__}: {settings.ae_title} listening on {settings.bind}:{server.server_address[1]}, "
            f"data in {settings.data}",
            flush=True,
        )
    hl7 = None
    if settings.hl7_port is not None:
        hl7 = _start_hl7(settings, receiver.engine, server, settler)
    from .session_backfill import backfill_in_background

    # studies decided before sessions were kept get theirs now, not at their next decision (issue 13)
    backfill_thread, backfill_stop = backfill_in_background(receiver.engine, settings)
    try:
        if settings.api:
            from .api.server import run_api

            print(f"dicomcheck {__version__}: API listening on http://{settings.bind}:{settings.http_port}", flush=True)
            # returns on SIGTERM / SIGINT; with several HTTP workers, each opens the index read-only (no migration,
            # recovery or sweep: this process did them) and the receiver and the settle loop stay here
            run_api(
                settings,
                receiver,
                functools.partial(receiver_type, read_only=True, quiet_registry=True),
                stop=stop_signals.event,
            )
        else:
            stop_signals.wait()
    finally:
        stop_signals.close()
        backfill_stop.set()  # between two studies; the next start goes on where it stopped
        if hl7 is not None:
            hl7.shutdown()
        if server is not None:
            server.shutdown()
        settler.stop()
        backfill_thread.join(timeout=30)
        receiver.close()  # index what was answered (else the journal has it for the next start)


def _start_hl7(settings, engine, server, settler):
    """The HL7 MLLP listener for reports (``--hl7-port``), started; a port that cannot be opened stops the start."""
    from .reports_in.mllp import MllpLimits, MllpListener

    limits = MllpLimits(settings.hl7_max_message, settings.hl7_idle_timeout, settings.hl7_max_connections)
    listener = MllpListener(
        engine, host=settings.bind, port=settings.hl7_port, allowed_senders=settings.hl7_allow_senders, limits=limits
    )
    try:
        listener.start()
    except OSError as exc:
        if server is not None:
            server.shutdown()
        settler.stop()
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        raise _fail(
            f"cannot listen for HL7 on {settings.bind}:{settings.hl7_port}: {reason}", EXIT_CANNOT_LISTEN
        ) from None
    print(f"dicomcheck {__version__}: HL7 MLLP listening on {settings.bind}:{listener.server_address[1]}", flush=True)
    return listener


class _StopSignals:
    """SIGTERM and SIGINT, caught from the moment this is made until :meth:`close`; :meth:`wait` returns once one
    came (also one that came before it was called). The kernel gives a process's signal to any of its threads;
    Python runs the handler on the main thread only when that thread next runs, so a main thread asleep on a
    lock would miss a signal caught by a receiver thread (and be killed after the service manager's grace
    period). The wake-up fd, written whichever thread caught the signal, wakes this one."""

    def __init__(self) -> None:
        import signal
        import socket
        import threading

        self.event = threading.Event()
        self._woken, self._wake = socket.socketpair()
        self._wake.setblocking(False)
        self._previous_fd = signal.set_wakeup_fd(self._wake.fileno())
        self._previous = {
            sig: signal.signal(sig, lambda *_: self.event.set()) for sig in (signal.SIGTERM, signal.SIGINT)
        }

    def wait(self) -> None:
        import select

        while not self.event.is_set():
            if select.select([self._woken], [], [], 5.0)[0]:
                self._woken.recv(64)

    def close(self) -> None:
        import signal

        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        signal.set_wakeup_fd(self._previous_fd)
        self._woken.close()
        self._wake.close()


def _index_settings(data: Path | None, database_url: str | None):
    from .config import ConfigError, load_settings

    try:
        return load_settings(None, data=data, database_url=database_url)
    except ConfigError as exc:
        raise _fail(f"bad settings: {exc}") from None


token_app = typer.Typer(help="API tokens: create (shown once, stored hashed), list, revoke.", no_args_is_help=True)
app.add_typer(token_app, name="token")
DataOption = Annotated[
    Path | None,
    typer.Option(
        "--data", help="Data folder of the index (as for serve). (default: dicomcheck-data)", show_default=False
    ),
]
UrlOption = Annotated[
    str | None,
    typer.Option("--database-url", help="Index database URL (env DICOMCHECK_DATABASE_URL).", show_default=False),
]


def _access(data: Path | None, database_url: str | None):
    """The existing index, at the newest schema; never creates one."""
    from .store.access import Access
    from .store.engine import upgrade

    engine = _existing_index(_index_settings(data, database_url))
    upgrade(engine)
    return Access(engine)


def _existing_index(settings):
    """The engine of an existing index; never creates one (a typo in --data must not start an empty index)."""
    import sqlalchemy
    from sqlalchemy.engine import make_url

    from .store.engine import make_engine

    url = make_url(settings.url)
    shown = url.render_as_string(hide_password=True)
    create = (
        "create it with `dicomcheck db upgrade"
        + (" --data " + str(settings.data) if not settings.database_url else " --database-url URL")
        + "` (or start `dicomcheck serve`)"
    )
    if (
        url.get_backend_name() == "sqlite"
        and url.database not in (None, "", ":memory:")
        and not Path(url.database).is_file()
    ):
        raise _fail(f"no index at {url.database}: {create}")
    engine = make_engine(settings.url)
    try:
        if not sqlalchemy.inspect(engine).has_table("alembic_version"):
            raise _fail(f"no dicomcheck index in {shown}: {create}")
    except sqlalchemy.exc.SQLAlchemyError as exc:
        raise _fail(f"cannot use the index at {shown}: {type(exc).__name__}") from None
    return engine


@token_app.command("create")
def token_create(
    name: Annotated[str, typer.Argument(help="Who or what the token is for (unique).")],
    role: Annotated[str, typer.Option("--role", help="reader | admin | auditor | reporter (sends reports only)")],
    expires: Annotated[
        str | None,
        typer.Option(
            "--expires", help="Expiry date (YYYY-MM-DD, end of day UTC); required for auditors.", show_default=False
        ),
    ] = None,
    study: Annotated[
        list[str] | None,
        typer.Option("--study", help="Study Instance UID an auditor may read (repeat).", show_default=False),
    ] = None,
    accession: Annotated[
        list[str] | None,
        typer.Option("--accession", help="Accession Number an auditor may read (repeat).", show_default=False),
    ] = None,
    data: DataOption = None,
    database_url: UrlOption = None,
) -> None:
    """Create a token and print it once; only its SHA-256 is stored."""
    import datetime as dt

    expires_at = None
    if expires:
        try:
            expires_at = dt.datetime.combine(dt.date.fromisoformat(expires), dt.time(23, 59, 59), tzinfo=dt.UTC)
        except ValueError:
            raise typer.BadParameter(f"{expires!r} is not a date (YYYY-MM-DD)", param_hint="--expires") from None
        if expires_at <= dt.datetime.now(dt.UTC):
            raise typer.BadParameter(
                f"{expires} is in the past; a token expires at the end of a day to come (UTC)", param_hint="--expires"
            )
    try:
        token = _access(data, database_url).create_token(
            name, role, expires_at=expires_at, studies=study or [], accessions=accession or []
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    print(token)


@token_app.command("list")
def token_list(data: DataOption = None, database_url: UrlOption = None) -> None:
    """List tokens (names, roles, scopes, expiry; never the tokens)."""
    from rich.console import Console
    from rich.table import Table

    table = Table("name", "role", "prefix", "created", "expires", "revoked", "scope")
    for t in _access(data, database_url).list_tokens():
        scope = ", ".join([*t.studies, *t.accessions]) or "all studies"
        table.add_row(
            t.name,
            t.role,
            t.prefix + "…",
            f"{t.created_at:%Y-%m-%d}",
            f"{t.expires_at:%Y-%m-%d}" if t.expires_at else "-",
            f"{t.revoked_at:%Y-%m-%d}" if t.revoked_at else "-",
            scope,
        )
    Console().print(table)


@token_app.command("revoke")
def token_revoke(
    name: Annotated[str, typer.Argument(help="The token's name.")],
    data: DataOption = None,
    database_url: UrlOption = None,
) -> None:
    """Revoke a token at once."""
    if not _access(data, database_url).revoke_token(name):
        raise typer.BadParameter(f"no active token named {name!r}")
    print(f"revoked {name}")


keys_app = typer.Typer(help="The site key that signs evidence manifests.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
KeyDirOption = Annotated[
    Path | None, typer.Option("--key-dir", help="Folder of the site key (default: DATA/keys).", show_default=False)
]


def _key_dir(data: Path | None, key_dir: Path | None) -> Path:
    return key_dir or _index_settings(data, None).data / "keys"


@keys_app.command("create")
def keys_create(
    data: DataOption = None,
    key_dir: KeyDirOption = None,
    force: Annotated[
        bool,
        typer.Option(
            "--force", help="Replace an existing key (packs signed with it stay verifiable by their fingerprint)."
        ),
    ] = False,
) -> None:
    """Create the site's Ed25519 signing key and print its public fingerprint."""
    from .evidence.keys import KeyError_, create_key

    try:
        key = create_key(_key_dir(data, key_dir), force=force)
    except KeyError_ as exc:
        raise typer.BadParameter(str(exc)) from None
    print(key.fingerprint)


@keys_app.command("show")
def keys_show(data: DataOption = None, key_dir: KeyDirOption = None) -> None:
    """Print the public key fingerprint (publish it outside the packs) and the public key."""
    from .evidence.keys import KeyError_, load_key

    try:
        key = load_key(_key_dir(data, key_dir))
    except KeyError_ as exc:
        raise typer.BadParameter(str(exc)) from None
    print(key.fingerprint)
    print(key.public_pem().decode(), end="")


@app.command()
def evidence(
    target: Annotated[
        str,
        typer.Argument(
            help="A folder / file of DICOM instances, a Study Instance UID in the index, or the word `verify` or "
            "`returns`.",
            show_default=False,
        ),
    ],
    pack: Annotated[
        Path | None, typer.Argument(help="With `verify`: the pack folder or ZIP.", show_default=False)
    ] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Where to write the pack(s).", show_default=False)] = None,
    minimal: Annotated[
        bool,
        typer.Option(
            "--minimal",
            help="PHI-minimal variant: patient IDs hashed, names removed, burned-in SCs without thumbnails.",
        ),
    ] = False,
    study: Annotated[
        str | None, typer.Option("--study", help="With a folder: only this Study Instance UID.", show_default=False)
    ] = None,
    devices: Annotated[
        Path | None, typer.Option("--devices", help="Site device registry (folder mode).", show_default=False)
    ] = None,
    storage: Annotated[
        Path | None,
        typer.Option(
            "--storage",
            help="With verify: the storage folder holding the cited instances "
            "(default: DATA/storage with --data, else where they were).",
            show_default=False,
        ),
    ] = None,
    fingerprint: Annotated[
        list[str] | None,
        typer.Option(
            "--fingerprint",
            help="With verify: a published fingerprint the signing key must have (trust anchor; repeat for several).",
            show_default=False,
        ),
    ] = None,
    trusted_keys: Annotated[
        Path | None,
        typer.Option(
            "--trusted-keys",
            help="With verify: a file of trusted fingerprints, one per line, # comments (trust anchor).",
            show_default=False,
        ),
    ] = None,
    retention: Annotated[
        Path | None,
        typer.Option(
            "--retention",
            help="With verify: the folder of signed retention records, to recognise cited instances whose pixel "
            "data retention removed (default: the retention folder beside the storage folder).",
            show_default=False,
        ),
    ] = None,
    retry: Annotated[
        bool,
        typer.Option(
            "--retry",
            help="With returns: queue every failed evidence return to the PACS again, due now (attempts and age "
            "counted afresh).",
        ),
    ] = False,
    pack_only: Annotated[
        bool,
        typer.Option(
            "--pack-only",
            help="With verify: check only the pack (every file, the signature, the re-derivation), "
            "not the stored instances it cites.",
        ),
    ] = False,
    data: DataOption = None,
    database_url: UrlOption = None,
    key_dir: KeyDirOption = None,
) -> None:
    """Write a self-verifying evidence pack, or check one.

    dicomcheck evidence PATH-or-STUDY_UID --out DIR [--minimal]   write pack(s) (needs the site key: `dicomcheck keys create`)
    dicomcheck evidence verify PACK (--fingerprint FP | --data DIR | --trusted-keys FILE) [--storage DIR] [--pack-only]   exit 0 when intact
    dicomcheck evidence returns [--retry] (--data DIR | --database-url URL)   the returns to the PACS waiting or failed; --retry sends the failed ones again
    """  # noqa: E501 - the three usage lines are shown verbatim by --help (rich markup keeps line breaks)
    if target == "returns":
        _evidence_returns(_index_settings(data, database_url), retry=retry)
        return
    if target == "verify":
        if pack is None:
            raise typer.BadParameter("name the pack folder or ZIP to verify")
        if storage is None and data is not None and not pack_only:
            storage = _index_settings(data, None).storage_dir
        _verify(
            pack,
            storage,
            _trust_anchors(fingerprint or [], trusted_keys, data, key_dir),
            pack_only=pack_only,
            retention=retention,
        )
        return
    if out is None:
        raise typer.BadParameter("--out DIR is required to write a pack")
    import re

    from .evidence.collect import EvidenceError, from_folder
    from .evidence.keys import PRIVATE_NAME, KeyError_, load_key
    from .evidence.pack import PackError, PackWriter, pack_dir_name

    settings = _index_settings(data, database_url)
    folder_of_keys = _key_dir(data, key_dir)
    if not (folder_of_keys / PRIVATE_NAME).exists():
        create = (
            f"dicomcheck keys create --key-dir {key_dir}"
            if key_dir
            else f"dicomcheck keys create --data {settings.data}"
        )
        raise typer.BadParameter(
            f"no site key in {folder_of_keys}: packs are signed by the site key; create it once with "
            f"`{create}` and publish the fingerprint it prints"
        )
    try:
        key = load_key(folder_of_keys)
    except KeyError_ as exc:
        raise typer.BadParameter(str(exc)) from None
    report = None  # the radiology report a pack of a stored decision cites (issue 12)
    try:
        if Path(target).exists():
            sources = from_folder([target], study, registry=_registry(devices))
        else:
            from .evidence.collect import from_index, pack_report
            from .ingest import Receiver

            _existing_index(settings)
            receiver = Receiver(settings, read_only=True)  # reads the index: no migration, recovery or sweep
            sources = [
                from_index(receiver.engine, settings.storage_dir, target, registry=receiver.effective_registry())
            ]
            report = pack_report(receiver.engine, sources[0], report_wait=settings.report_wait_seconds)
        if not sources:
            raise EvidenceError(f"no study found in {target}")
        writer = PackWriter(key)
        report_id = report.get("report_id") if report else None
        for source in sources:
            if (
                not re.fullmatch(r"[0-9]+(\.[0-9]+)*", source.study_instance_uid or "")
                or len(source.study_instance_uid) > 64
            ):
                print(
                    f"skipped a study whose Study Instance UID is not a UID: {source.study_instance_uid[:64]!r}",
                    file=sys.stderr,
                )
                continue  # the UID names the pack's folder: never a path from a file
            name = pack_dir_name(source, minimal=minimal, report_id=report_id)
            folder = writer.write(source, out / source.study_instance_uid / name, minimal=minimal, report=report)
            print(f"{source.study_instance_uid}: {source.decision.outcome.value} -> {folder}")
    except (EvidenceError, PackError) as exc:
        raise typer.BadParameter(str(exc)) from None


def _evidence_returns(settings, *, retry: bool) -> None:
    """Print the evidence returns waiting or failed (failed first) and the counts; ``retry``: queue the failed again."""
    from .store.returns import EvidenceReturns, ReturnState

    returns = EvidenceReturns(_existing_index(settings))
    if retry:
        print(f"queued again: {returns.retry_failed()} failed evidence return(s), due now")
    for item in returns.listing(limit=1000):
        next_attempt = (
            "-" if item.state is ReturnState.FAILED else item.next_attempt_at.strftime("%Y-%m-%d %H:%M:%S UTC")
        )
        print(
            f"{item.state.value:<8} {item.study_instance_uid} decision {item.decision_id} -> {item.destination}: "
            f"{item.attempts} attempt(s), next {next_attempt}, last error: {item.last_error or '-'}"
        )
    counts = returns.counts()
    print(
        f"evidence returns: {counts[ReturnState.PENDING]} waiting, {counts[ReturnState.FAILED]} failed, "
        f"{counts[ReturnState.SENT]} sent, {counts[ReturnState.SUPERSEDED]} superseded"
    )


def _trust_anchors(
    fingerprints: list[str], trusted_keys: Path | None, data: Path | None, key_dir: Path | None
) -> list[str]:
    """The fingerprints a pack's signer may have: --fingerprint, --trusted-keys, the site key of --data / --key-dir."""
    from .evidence.keys import KeyError_, check_fingerprint, read_trusted_fingerprints, site_fingerprint

    anchors = []
    for value in fingerprints:
        try:
            anchors.append(check_fingerprint(value))
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--fingerprint") from None
    if trusted_keys is not None:
        try:
            anchors.extend(read_trusted_fingerprints(trusted_keys))
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--trusted-keys") from None
    if data is not None or key_dir is not None:
        try:
            anchors.append(site_fingerprint(_key_dir(data, key_dir)))
        except KeyError_ as exc:
            raise typer.BadParameter(str(exc), param_hint="--key-dir" if key_dir else "--data") from None
    return anchors


def _verify(
    pack: Path, storage: Path | None, anchors: list[str], *, pack_only: bool = False, retention: Path | None = None
) -> None:
    from .evidence.pack import PackError, verify_pack

    try:
        result = verify_pack(
            pack, storage_root=storage, trusted=anchors, check_instances=not pack_only, retention_root=retention
        )
    except PackError as exc:
        print(f"FAIL {exc}")
        raise typer.Exit(1) from None
    for problem in result.problems:
        print(f"FAIL {problem}")
    for difference in result.differences:
        print(f"DIFF {difference}")
    for note in result.notes:
        print(f"note {note}")
    manifest = result.manifest
    if result.ok:
        instances = (
            f"{len(manifest.get('cited_instances', []))} cited instances intact"
            + (f" ({len(result.header_only)} of them header-only after pixel retention)" if result.header_only else "")
            if result.instances_checked
            else "the stored instances were NOT checked (pack-only)"
        )
        decision_id = manifest.get("decision_id")
        which = f"decision {decision_id}" if decision_id is not None else "offline analysis"
        print(
            f"OK {manifest.get('study_instance_uid')} {which}: "
            f"{manifest.get('outcome')}, "
            f"{len(manifest.get('files', []))} files intact, {instances}, signed by the trusted key {result.signer}"
        )
        return
    raise typer.Exit(1)


db_app = typer.Typer(help="Index maintenance.", no_args_is_help=True)
app.add_typer(db_app, name="db")


@db_app.command("upgrade")
def db_upgrade(data: DataOption = None, database_url: UrlOption = None) -> None:
    """Apply the index schema migrations (serve does this at start too)."""
    from .store.engine import make_engine, upgrade

    settings = _index_settings(data, database_url)
    upgrade(make_engine(settings.url))
    print(f"index at the newest schema: {make_engine(settings.url).url.render_as_string(hide_password=True)}")


sessions_app = typer.Typer(
    help="Sessions (one patient, one day): give studies decided before sessions were kept theirs, or recompute all.",
    no_args_is_help=True,
)
app.add_typer(sessions_app, name="sessions")
ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        help="The serve TOML settings file (session_secret, made_later_days must be the receivers').",
        show_default=False,
    ),
]


def _sessions_index(config: Path | None, data: Path | None, database_url: str | None):
    from .config import ConfigError, load_settings
    from .store.engine import upgrade

    try:
        settings = load_settings(config, data=data, database_url=database_url)
    except ConfigError as exc:
        raise _fail(f"bad settings: {exc}") from None
    engine = _existing_index(settings)
    upgrade(engine)
    return settings, engine


@sessions_app.command("backfill")
def sessions_backfill(config: ConfigOption = None, data: DataOption = None, database_url: UrlOption = None) -> None:
    """Give every decided study without a session its session (serve does this at start, in the background).
    Idempotent; outcomes never change (no study is decided again)."""
    from .session_backfill import backfill

    settings, engine = _sessions_index(config, data, database_url)
    result = backfill(engine, settings)
    print(f"sessions: {result.written} study(ies) given their session, {result.skipped} skipped")


@sessions_app.command("rebuild")
def sessions_rebuild(config: ConfigOption = None, data: DataOption = None, database_url: UrlOption = None) -> None:
    """Recompute the session of every decided study, its regions read anew from the indexed headers with this
    version's regions.toml (after a change of it). Outcomes never change; coders' carrier choices are kept."""
    from .session_backfill import rebuild

    settings, engine = _sessions_index(config, data, database_url)
    result = rebuild(engine, settings)
    print(f"sessions: {result.written} study(ies) recomputed, {result.skipped} skipped (decided again meanwhile)")


storage_app = typer.Typer(
    help="Storage that lasts: pixel retention, quarantine expiry, bytes by state.", no_args_is_help=True
)
app.add_typer(storage_app, name="storage")


def _storage_index(data: Path | None, database_url: str | None):
    """Settings and the engine of the existing index, at the newest schema."""
    from .store.engine import upgrade

    settings = _index_settings(data, database_url)
    engine = _existing_index(settings)
    upgrade(engine)
    return settings, engine


@storage_app.command("prune")
def storage_prune(
    data: DataOption = None,
    database_url: UrlOption = None,
    older_than: Annotated[
        str | None,
        typer.Option(
            "--older-than",
            help="Remove the pixel data of studies decided longer ago than this (e.g. 0s, 12h, 30d); "
            "default: the pixel_retention setting.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Apply pixel retention and quarantine expiry now (what `serve` does every hour).

    Instances of studies decided longer ago than the retention become header-only copies (the
    thumbnail instances of a pack are kept whole); a signed retention record in DATA/retention says
    what was removed. Quarantined inputs older than quarantine_retention are deleted.
    """
    from .config import parse_duration_allowing_zero
    from .evidence.keys import KeyError_
    from .evidence.retention import prune
    from .evidence.service import site_key
    from .store.retention import human_bytes

    seconds = None
    if older_than is not None:
        try:
            seconds = parse_duration_allowing_zero(older_than)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--older-than") from None
    settings, engine = _storage_index(data, database_url)
    try:
        key = site_key(settings.data / "keys")
    except KeyError_ as exc:
        raise _fail(str(exc)) from None
    report = prune(
        settings,
        engine,
        key,
        older_than=seconds if older_than is not None else settings.pixel_retention_seconds,
        quarantine_older_than=settings.quarantine_retention_seconds,
        node=settings.node_name or "cli",
    )
    if report.skipped:
        raise _fail(report.skipped)
    for problem in report.problems:
        print(f"problem: {problem}", file=sys.stderr)
    print(
        f"{report.studies} studies: {report.header_only} instances now header-only, "
        f"{report.thumbnails_kept} thumbnail instances kept whole, {report.kept_whole} kept as received; "
        f"{report.quarantine_deleted} quarantined inputs deleted; "
        f"{human_bytes(report.bytes_freed + report.quarantine_bytes_freed)} freed"
    )
    for record in report.records:
        print(f"retention record: {record}")


@storage_app.command("status")
def storage_status_command(data: DataOption = None, database_url: UrlOption = None) -> None:
    """Print the bytes by state (full, header-only, quarantine, evidence, retention records) and the free space."""
    import datetime as dt

    from .evidence.retention import storage_status
    from .store.retention import human_bytes

    settings, engine = _storage_index(data, database_url)
    status = storage_status(settings, engine, settings.min_free_space_budget)
    for state, count in status.bytes_by_state.items():
        print(f"{state:<12} {count:>16,d} bytes  {human_bytes(count)}")
    if status.free is not None and status.total is not None:
        print(f"{'free':<12} {status.free:>16,d} bytes  {human_bytes(status.free)} of {human_bytes(status.total)}")
        wanted = (
            f"{human_bytes(status.min_free)} (min_free_space {settings.min_free_space})" if status.min_free else "off"
        )
        print(
            f"{'min free':<12} {wanted}"
            + ("  BELOW: new instances are refused (0xA700)" if status.below_min_free else "")
        )
    if status.oldest_unpruned is not None:
        age = dt.datetime.now(dt.UTC) - status.oldest_unpruned
        print(
            f"oldest study decided and not pruned yet: {age.days} d {age.seconds // 3600} h ago "
            f"(pixel_retention {settings.pixel_retention})"
        )


@app.command()
def rules() -> None:
    """List every rule id with what it means (the rule set of this version)."""
    from rich.console import Console

    from .rules import RULES, RULES_VERSION

    console = Console()
    console.print(f"rules version {RULES_VERSION}", style="bold")
    for rule_id, text in RULES.items():
        console.print(f"[bold]{rule_id}[/bold]  {text}", highlight=False)


@app.command()
def version() -> None:
    """Print the dicomcheck and rules versions."""
    from .rules import RULES_VERSION

    print(f"dicomcheck {__version__} (rules {RULES_VERSION})")


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: usage errors exit 1, per the documented exit statuses."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # pydicom logs invalid values verbatim; header values may be PHI, so only errors get through.
    logging.getLogger("pydicom").setLevel(logging.ERROR)
    try:
        code = app(args=argv, standalone_mode=False)
    except UsageError as exc:
        exc.show()  # type: ignore[attr-defined]
        sys.exit(EXIT_USAGE)
    except typer.Abort:
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
