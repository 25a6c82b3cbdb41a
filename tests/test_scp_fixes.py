"""The receive path's promises about pynetdicom: fault fixes and speed tuning on one verified
version only (refusal otherwise), speed tuning a setting, one start-up and imports one way.

Everything that patches pynetdicom runs in a subprocess: this test process keeps the library as it is.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pynetdicom
import pytest

from scp import tuning
from scp.pynetdicom_fixes import VERIFIED_VERSION, UnverifiedPynetdicom, require_verified_version

from .peers import free_port

ROOT = Path(__file__).resolve().parents[1]


def run_python(code: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=ROOT, timeout=timeout
    )


def test_the_installed_and_pinned_pynetdicom_is_the_verified_one():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    pins = [d for d in project["project"]["dependencies"] if re.match(r"pynetdicom\b", d)]
    assert pins == [f"pynetdicom=={VERIFIED_VERSION}"]
    assert pynetdicom.__version__ == VERIFIED_VERSION
    require_verified_version()


@pytest.mark.parametrize("version", ["3.0.5", "3.1.0", "3.0", "3.0.4.post1"])
def test_any_other_pynetdicom_version_is_refused_in_one_line(version):
    with pytest.raises(UnverifiedPynetdicom) as refused:
        require_verified_version(version)
    message = str(refused.value)
    assert "\n" not in message and version in message and f"pynetdicom=={VERIFIED_VERSION}" in message


def test_serve_refuses_to_start_on_an_unverified_pynetdicom(tmp_path):
    """`dicomcheck serve` with a pynetdicom it is not verified with: one line, exit 1, nothing listens."""
    port = free_port()
    proc = run_python(
        "import sys, pynetdicom; pynetdicom.__version__ = '3.0.99'; from dicomcheck.cli import main; "
        "main(sys.argv[1:])",
        "serve",
        "--no-api",
        "--data",
        str(tmp_path / "data"),
        "--bind",
        "127.0.0.1",
        "--dicom-port",
        str(port),
    )
    assert proc.returncode == 1, proc.stderr
    refusal = [line for line in proc.stderr.splitlines() if line.startswith("dicomcheck:")]
    assert (
        len(refusal) == 1 and "pynetdicom 3.0.99" in refusal[0] and f"pynetdicom=={VERIFIED_VERSION}" in refusal[0]
    ), proc.stderr
    assert "Traceback" not in proc.stderr and "listening on" not in proc.stdout


def test_speed_tuning_is_the_setting_and_the_bench_variable_selects_steps(monkeypatch):
    from dicomcheck.config import Settings

    monkeypatch.delenv(tuning.ENV, raising=False)
    assert tuning.steps_for(Settings()) == set(tuning.STEPS)
    assert tuning.steps_for(Settings(speed_tuning=False)) == set()
    monkeypatch.setenv(tuning.ENV, "quiet,recv")
    assert tuning.steps_for(Settings()) == {"quiet", "recv"}
    assert tuning.steps_for(Settings(speed_tuning=False)) == set()
    monkeypatch.setenv(tuning.ENV, "quiet,warp")
    with pytest.raises(ValueError, match="warp"):
        tuning.steps_for(Settings())


PATCHED = """
import sys, pynetdicom
from pathlib import Path
from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider
originals = {"assoc_loop": Association._run_reactor, "dul_init": DULServiceProvider.__init__}
from dicomcheck.config import Settings
from scp.server import configure_process
steps = configure_process(Settings(data=Path(sys.argv[1]), speed_tuning=sys.argv[2] == "on"))
from scp import pynetdicom_fixes as fixes, tuning
print(sorted(steps))
print(DULServiceProvider.run_reactor is fixes._dul_run_reactor, Association.run_reactor is fixes._assoc_run_guarded)
print(Association._run_reactor is originals["assoc_loop"], DULServiceProvider.__init__ is originals["dul_init"])
print(fixes.IDLE.wait is fixes._sleep_like_pynetdicom, fixes.LIMITS.recv_chunk)
from pynetdicom.dimse import DIMSEServiceProvider
print(DIMSEServiceProvider.send_msg is tuning._ORIGINAL.get("send_msg", DIMSEServiceProvider.send_msg))
print(sys.getswitchinterval())
"""


def test_fault_fixes_stay_on_and_speed_tuning_off_leaves_pynetdicom_s_reactors(tmp_path):
    off = run_python(PATCHED, str(tmp_path / "off"), "off")
    assert off.returncode == 0, off.stderr
    assert off.stdout.split("\n")[:6] == ["[]", "True True", "True True", "True 4096", "True", "0.005"]
    on = run_python(PATCHED, str(tmp_path / "on"), "on")
    assert on.returncode == 0, on.stderr
    assert on.stdout.split("\n")[:6] == [
        str(sorted(tuning.STEPS)),
        "True True",
        "False False",
        f"False {tuning.RECV_CHUNK}",
        "False",  # the C-STORE-RSP template
        str(tuning.SWITCH_INTERVAL),
    ]


def test_received_data_sets_spool_on_the_storage_volume(tmp_path):
    """pynetdicom's data set files are SpoolFiles in storage/.tmp (the factory names the folder)."""
    code = (
        "import sys; from pathlib import Path; from dicomcheck.config import Settings; from scp.server import "
        "configure_process\n"
        "from pynetdicom import dimse_messages\n"
        "configure_process(Settings(data=Path(sys.argv[1])))\n"
        "spool = dimse_messages.NamedTemporaryFile(delete=False, mode='wb', suffix='.dcm')\n"
        "print(type(spool).__name__, Path(spool.name).parent)"
    )
    proc = run_python(code, str(tmp_path / "data"))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["SpoolFile", str(tmp_path / "data" / "storage" / ".tmp")]


def test_imports_go_one_way_listen_workers_server():
    """One start-up (``build_server``) and no server <-> workers cycle."""
    code = (
        "import sys; import scp.server; assert 'scp.workers' not in sys.modules and 'scp.listen' not in sys.modules\n"
        "import scp.workers; assert 'scp.listen' not in sys.modules\n"
        "from scp import listen, server, workers; assert workers.build_server is server.build_server"
    )
    proc = run_python(code)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize(
    ("status", "sop_class", "sop_instance"),
    [
        (0x0000, "1.2.840.10008.5.1.4.1.1.2", "1.2.826.0.1.3680043.8.498.12345678901234567890123456789012345678"),
        (0xA700, "1.2.840.10008.5.1.4.1.1.2", "1.2.3"),  # odd lengths: padded with NUL
        (0xC000, "1.2.840.10008.5.1.4.1.1.20", "1.23"),
        (0x0000, "", ""),
    ],
)
def test_the_templated_c_store_response_is_what_pynetdicom_encodes(status, sop_class, sop_instance):
    """The ``response`` tuning step writes these bytes instead of pynetdicom's encoding of a
    C-STORE-RSP (its data set type, element order and padding); sending them is tested through
    every receiver test that runs tuned (tests/test_receiver.py runs each tuned and untuned)."""
    from pynetdicom.dimse_messages import C_STORE_RSP
    from pynetdicom.dimse_primitives import C_STORE

    primitive = C_STORE()
    primitive.MessageIDBeingRespondedTo = 65535
    primitive.Status = status
    primitive.AffectedSOPClassUID = sop_class or None
    primitive.AffectedSOPInstanceUID = sop_instance or None
    message = C_STORE_RSP()
    message.primitive_to_message(primitive)
    (pdata,) = list(message.encode_msg(1, 16384))
    ((context_id, fragment),) = pdata.presentation_data_value_list
    assert (context_id, fragment) == (
        1,
        b"\x03" + tuning.store_response_command(65535, status, sop_class or None, sop_instance or None),
    )


@pytest.mark.parametrize(
    ("sop_class", "sop_instance", "syntax"),
    [
        ("1.2.840.10008.5.1.4.1.1.2", "1.2.3.4", "1.2.840.10008.1.2.1"),
        (
            "1.2.840.10008.5.1.4.1.1.20",
            "1.2.826.0.1.3680043.8.498.1234567890123456789012345678901234567",
            "1.2.840.10008.1.2",
        ),
        ("1.2.840.10008.5.1.4.1.1.7", "1.23", "1.2.840.10008.1.2.4.50"),
    ],
)
def test_the_templated_file_meta_is_what_pynetdicom_writes(sop_class, sop_instance, syntax):
    """The ``meta`` tuning step writes these bytes at the head of each received file instead of
    pynetdicom's ``write_file_meta_info(create_file_meta(...))``; a UID that is not digits and dots
    goes pynetdicom's way."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_file_meta_info
    from pynetdicom.dsutils import create_file_meta

    written = DicomBytesIO()
    written.is_little_endian, written.is_implicit_VR = True, False
    write_file_meta_info(
        written, create_file_meta(sop_class_uid=sop_class, sop_instance_uid=sop_instance, transfer_syntax=syntax)
    )
    assert written.getvalue() == tuning.file_meta_bytes(sop_class, sop_instance, syntax)
    assert not isinstance(
        tuning._file_meta(sop_class_uid=sop_class, sop_instance_uid="1.2.é", transfer_syntax=syntax), bytes
    )
