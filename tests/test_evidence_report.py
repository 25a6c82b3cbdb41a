"""Evidence attachments for audits: thumbnails from real pixel data and the PDF report of a study."""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from dicomcheck import __version__
from dicomcheck.decision_record import StudyDecisionUnderPolicy
from dicomcheck.enums import CitedRole, RuleId
from dicomcheck.evidence import report_pdf
from dicomcheck.evidence.model import CitedInstance, EvidenceSource, Receipt
from dicomcheck.evidence.report_pdf import render_pdf
from dicomcheck.evidence.thumbnails import BURNED_IN_NOTE, Thumbnail, thumbnail
from dicomcheck.rules import RULES_VERSION

from .peers import require_peer

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


def _png(thumb: Thumbnail) -> Image.Image:
    assert thumb.png is not None, thumb.note
    assert thumb.png.startswith(b"\x89PNG\r\n\x1a\n")
    image = Image.open(io.BytesIO(thumb.png))
    image.load()
    return image


def _std(image: Image.Image) -> float:
    return float(np.asarray(image, dtype=np.float64).std())


# ------------------------------------------------------------------------- thumbnails: real files

REAL_DECODES = [
    # file, mode, what it exercises
    ("us_ge_logiqe_original.dcm", "RGB", "JPEG 2000 YBR_ICT"),
    ("sc_mevislab_testpattern.dcm", "RGB", "JPEG-LS lossless RGB"),
    ("malformed_ct_siemens_bad_sequence.dcm", "L", "JPEG lossless CT in a file with a malformed sequence"),
    ("ct_siemens_definition_as_mpr_sagittal.dcm", "L", "JPEG lossless CT"),
    ("sc_milvue_ai_result.dcm", "RGB", "RLE lossless, planar configuration 1"),
    ("us_multiframe_hp_via_kinetdx_pacs.dcm", "RGB", "JPEG baseline YBR_FULL_422, 34 frames"),
    ("mr_siemens_vida_xa10_enhanced_original.dcm", "L", "enhanced MR multi-frame, window in functional groups"),
    ("mr_siemens_prisma_mip.dcm", "L", "JPEG 2000 lossless MR"),
    ("ct_ge_brightspeed_original_axial.dcm", "L", "native MONOCHROME2 CT with a header window"),
    ("malformed_ct_all_vr_un.dcm", "L", "JPEG 2000 CT without a window (soft-tissue default)"),
    ("ct_siemens_sensation64_inspace_vrt_sc.dcm", "RGB", "native RGB secondary capture (3D rendering)"),
    ("seg_tcia_ispy1_breast_voi.dcm", "L", "multi-frame segmentation"),
]


@pytest.mark.realworld
@pytest.mark.parametrize(("name", "mode", "_what"), REAL_DECODES, ids=[r[0] for r in REAL_DECODES])
def test_thumbnail_decodes_real_files(realworld: Path, name: str, mode: str, _what: str) -> None:
    thumb = thumbnail(realworld / name)
    image = _png(thumb)
    assert thumb.note is None
    assert image.mode == mode
    assert max(image.size) == 256 and min(image.size) >= 16
    assert _std(image) > 5, "the picture is (nearly) constant"
    assert thumb.window
    assert 1 <= thumb.frame <= thumb.frames


@pytest.mark.realworld
def test_thumbnail_size_is_the_longest_side(realworld: Path) -> None:
    small = _png(thumbnail(realworld / "sc_mevislab_testpattern.dcm", size=96))  # 640 x 400
    assert small.size == (96, 60)
    upscaled = _png(thumbnail(realworld / "mr_philips_eclipse_mra_projection.dcm", size=128))  # 16 x 16
    assert upscaled.size == (128, 128)


@pytest.mark.realworld
def test_multiframe_shows_the_middle_frame_and_decodes_only_it(
    realworld: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pydicom.pixels

    calls: list[object] = []
    original = pydicom.pixels.pixel_array

    def spy(src, **kwargs):
        calls.append(kwargs.get("index"))
        return original(src, **kwargs)

    monkeypatch.setattr(pydicom.pixels, "pixel_array", spy)
    thumb = thumbnail(realworld / "us_multiframe_hp_via_kinetdx_pacs.dcm")
    assert (thumb.frame, thumb.frames) == (18, 34)  # 1-based frame number of index 17
    assert calls == [17], "one frame decoded, by index"

    enhanced = thumbnail(realworld / "mr_siemens_vida_xa10_enhanced_original.dcm")
    assert (enhanced.frame, enhanced.frames) == (4, 6)
    assert enhanced.window.startswith("header window W")  # Frame VOI LUT of the functional groups


@pytest.mark.realworld
def test_ybr_is_converted_to_rgb(realworld: Path) -> None:
    """Greyscale ultrasound stored as YBR: after conversion R, G and B agree on most pixels
    (unconverted Y/Cb/Cr would put luminance in red and ~128 in green and blue)."""
    for name in ("us_multiframe_hp_via_kinetdx_pacs.dcm", "us_ge_logiqe_original.dcm"):
        thumb = thumbnail(realworld / name)
        rgb = np.asarray(_png(thumb), dtype=np.int16)
        assert np.median(np.abs(rgb[..., 0] - rgb[..., 1])) <= 4, name
        assert np.median(np.abs(rgb[..., 1] - rgb[..., 2])) <= 4, name
        assert "converted to RGB" in thumb.window


@pytest.mark.realworld
def test_ct_windows(realworld: Path) -> None:
    header = thumbnail(realworld / "ct_ge_brightspeed_original_axial.dcm")
    assert header.window.startswith("header window W2000/L350")
    default = thumbnail(realworld / "malformed_ct_all_vr_un.dcm")
    assert default.window.startswith("soft-tissue default W400/L40")


@pytest.mark.realworld
@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("malformed_ct_philips_gemini_elscint_private_compression.dcm", "private compression"),
        ("sc_ge_lightspeed_vct_dose_screensave.dcm", "no Pixel Data"),
        ("malformed_philips_viewforum_3d_object_stub.dcm", "no Pixel Data"),
        ("sr_osirix_annotations.dcm", "not an image"),
        ("pr_softneta_meddream_gsps.dcm", "not an image"),
        ("malformed_mr_philips_t5_no_meta.dcm", "Bits Allocated"),
    ],
)
def test_undecodable_real_files_give_a_note(realworld: Path, name: str, words: str) -> None:
    thumb = thumbnail(realworld / name)
    assert thumb.png is None and thumb.frame == 0 and thumb.window is None
    assert words in thumb.note


@pytest.mark.realworld
@pytest.mark.filterwarnings("ignore:End of file reached before delimiter")
def test_truncated_pixel_data_gives_a_note(realworld: Path, tmp_path: Path) -> None:
    for name in (
        "ct_ge_brightspeed_original_axial.dcm",
        "us_ge_logiqe_original.dcm",
        "us_multiframe_hp_via_kinetdx_pacs.dcm",
    ):
        data = (realworld / name).read_bytes()
        cut = tmp_path / name
        cut.write_bytes(data[: len(data) // 2])
        thumb = thumbnail(cut)
        assert thumb.png is None
        assert "truncated" in thumb.note or "corrupt" in thumb.note, thumb.note


@pytest.mark.realworld
def test_burned_in_annotation_is_withheld_only_when_asked(realworld: Path) -> None:
    path = realworld / "sc_neusoft_neuviz_no_manufacturer.dcm"  # Burned In Annotation YES
    assert thumbnail(path).png is not None
    refused = thumbnail(path, allow_burned_in=False)
    assert refused.png is None and refused.note == BURNED_IN_NOTE
    assert thumbnail(realworld / "ct_ge_brightspeed_original_axial.dcm", allow_burned_in=False).png is not None


# --------------------------------------------------------------------- thumbnails: synthetic files


def _write(path: Path, pixels: np.ndarray, photometric: str, **attributes: object) -> Path:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = attributes.pop("SOPClassUID", SecondaryCaptureImageStorage)
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = attributes.pop("Modality", "OT")
    bits = attributes.pop("BitsStored", pixels.dtype.itemsize * 8)
    ds.set_pixel_data(pixels, photometric, bits)
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    ds.save_as(path, enforce_file_format=True)
    return path


def _ramp(rows: int = 64, columns: int = 96, dtype: str = "uint16", top: int = 4000) -> np.ndarray:
    return np.tile(np.linspace(0, top, columns), (rows, 1)).astype(dtype)


def test_monochrome1_is_inverted(tmp_path: Path) -> None:
    two = thumbnail(_write(tmp_path / "m2.dcm", _ramp(), "MONOCHROME2", Modality="CR"))
    one = thumbnail(_write(tmp_path / "m1.dcm", _ramp(), "MONOCHROME1", Modality="CR"))
    a, b = (np.asarray(_png(t), dtype=np.int16) for t in (two, one))
    assert "percentile" in two.window and "inverted (MONOCHROME1)" in one.window
    assert np.abs(a + b - 255).max() <= 1
    assert b[:, 0].mean() > 200 and b[:, -1].mean() < 55  # low values are white in MONOCHROME1


def test_ct_default_window_after_rescale(tmp_path: Path) -> None:
    hu = np.tile(np.linspace(-1000, 1000, 200), (50, 1))
    stored = (hu + 1024).astype("uint16")
    thumb = thumbnail(
        _write(
            tmp_path / "ct.dcm",
            stored,
            "MONOCHROME2",
            Modality="CT",
            SOPClassUID=CT_IMAGE_STORAGE,
            RescaleSlope=1,
            RescaleIntercept=-1024,
            BitsStored=12,
        )
    )
    assert thumb.window == "soft-tissue default W400/L40 (no window in the header)"
    row = np.asarray(_png(thumb), dtype=np.int16)[25]
    columns = np.linspace(-1000, 1000, row.size)
    assert row[columns < -170].max() == 0 and row[columns > 250].min() == 255  # outside W400/L40: clipped
    assert 100 < row[np.argmin(np.abs(columns - 40))] < 155  # the centre is mid-grey


def test_header_window_that_blanks_the_picture_falls_back(tmp_path: Path) -> None:
    thumb = thumbnail(
        _write(tmp_path / "mr.dcm", _ramp(), "MONOCHROME2", Modality="MR", WindowCenter=90000, WindowWidth=10)
    )
    assert "left the picture blank" in thumb.window and "percentile" in thumb.window
    assert _std(_png(thumb)) > 20


def test_palette_colour(tmp_path: Path) -> None:
    index = _ramp(32, 256, "uint8", 255)
    ramp = np.arange(256, dtype="<u2") * 257
    path = _write(
        tmp_path / "palette.dcm",
        index,
        "PALETTE COLOR",
        Modality="US",
        RedPaletteColorLookupTableDescriptor=[256, 0, 16],
        GreenPaletteColorLookupTableDescriptor=[256, 0, 16],
        BluePaletteColorLookupTableDescriptor=[256, 0, 16],
        RedPaletteColorLookupTableData=ramp.tobytes(),
        GreenPaletteColorLookupTableData=np.zeros(256, "<u2").tobytes(),
        BluePaletteColorLookupTableData=ramp[::-1].copy().tobytes(),
    )
    thumb = thumbnail(path)
    rgb = np.asarray(_png(thumb), dtype=np.int16)
    assert _png(thumb).mode == "RGB" and thumb.window.startswith("palette colour")
    assert rgb[..., 1].max() == 0
    assert rgb[:, 0, 0].mean() < 10 and rgb[:, -1, 0].mean() > 245  # red follows the index
    assert rgb[:, 0, 2].mean() > 245  # blue runs the other way


def test_native_ybr_full_becomes_rgb(tmp_path: Path) -> None:
    from pydicom.pixels import convert_color_space

    rgb = np.zeros((40, 60, 3), dtype=np.uint8)
    rgb[..., 0] = 200  # orange-ish
    rgb[..., 1] = 120
    rgb[:, 30:, 2] = 250
    ybr = convert_color_space(rgb, "RGB", "YBR_FULL")
    thumb = thumbnail(_write(tmp_path / "ybr.dcm", ybr, "YBR_FULL", BitsStored=8), size=60)
    out = np.asarray(_png(thumb), dtype=np.int16)
    assert np.abs(out[5, 5] - rgb[5, 5]).max() <= 4 and np.abs(out[5, 55] - rgb[5, 55]).max() <= 4


def test_segmentation_shows_a_non_empty_frame(tmp_path: Path) -> None:
    frames = np.zeros((9, 32, 32), dtype=np.uint8)
    frames[1, 10:20, 10:20] = 1
    path = _write(
        tmp_path / "seg.dcm",
        frames,
        "MONOCHROME2",
        Modality="SEG",
        BitsStored=8,
        SOPClassUID="1.2.840.10008.5.1.4.1.1.66.4",
    )
    thumb = thumbnail(path)
    assert (thumb.frame, thumb.frames) == (2, 9)  # frame 5 (the middle) is empty
    assert _std(_png(thumb)) > 50


def test_failures_never_raise(tmp_path: Path) -> None:
    assert "file not found" in thumbnail(tmp_path / "absent.dcm").note
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not dicom at all " * 50)
    assert thumbnail(junk).png is None and thumbnail(junk).note
    empty = tmp_path / "empty.dcm"
    empty.write_bytes(b"")
    assert thumbnail(empty).png is None
    huge = Dataset()  # a header announcing a frame far too large to decode for a thumbnail
    huge.file_meta = FileMetaDataset()
    huge.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    huge.SOPClassUID, huge.SOPInstanceUID, huge.Modality = SecondaryCaptureImageStorage, generate_uid(), "OT"
    huge.Rows = huge.Columns = 65535
    huge.SamplesPerPixel, huge.BitsAllocated, huge.BitsStored, huge.HighBit, huge.PixelRepresentation = 1, 16, 16, 15, 0
    huge.PhotometricInterpretation = "MONOCHROME2"
    huge.PixelData = b"\0\0" * 16
    huge.save_as(tmp_path / "huge.dcm", enforce_file_format=True)
    assert "too large" in thumbnail(tmp_path / "huge.dcm").note


def test_decoders_for_compressed_transfer_syntaxes_are_installed() -> None:
    """The pixel handlers the thumbnails rely on (pylibjpeg + libjpeg / openjpeg / rle plugins)."""
    from pydicom.pixels import get_decoder

    wanted = [
        "1.2.840.10008.1.2.4.50",
        "1.2.840.10008.1.2.4.51",
        "1.2.840.10008.1.2.4.57",
        "1.2.840.10008.1.2.4.70",
        "1.2.840.10008.1.2.4.80",
        "1.2.840.10008.1.2.4.81",
        "1.2.840.10008.1.2.4.90",
        "1.2.840.10008.1.2.4.91",
        "1.2.840.10008.1.2.4.201",
        "1.2.840.10008.1.2.4.202",
        "1.2.840.10008.1.2.4.203",
        "1.2.840.10008.1.2.5",
    ]
    missing = [UID(uid).name for uid in wanted if not get_decoder(UID(uid)).is_available]
    assert not missing, f"no decoder for: {missing}"


# --------------------------------------------------------------------------------------- the PDF


def _pdftotext(pdf: Path, page: int | None = None) -> str:
    pages = ["-f", str(page), "-l", str(page)] if page else []
    out = subprocess.run(
        [require_peer("pdftotext"), *pages, str(pdf), "-"], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    return " ".join(out.split())


def _image_count(pdf: Path) -> int:
    out = subprocess.run(
        [require_peer("pdfimages"), "-list", str(pdf)], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    return sum(1 for line in out.splitlines()[2:] if line.split()[2:3] == ["image"])


def _pages(pdf: Path, out: Path) -> list[Path]:
    subprocess.run([require_peer("pdftoppm"), "-r", "50", "-png", str(pdf), str(out / "page")], check=True, timeout=120)
    return sorted(out.glob("page-*.png"))


def _render(
    source: EvidenceSource,
    tmp_path: Path,
    *,
    minimal: bool = False,
    thumbs: dict | None = None,
    name: str = "report.pdf",
) -> Path:
    if thumbs is None:
        thumbs = {
            i.sop_instance_uid: thumbnail(i.path, allow_burned_in=not minimal)
            for i in source.instances
            if i.role in ("3d", "acquisition")
        }
    pdf = render_pdf(source, thumbs, minimal=minimal)
    assert pdf.startswith(b"%PDF-") and pdf.rstrip().endswith(b"%%EOF")
    path = tmp_path / name
    path.write_bytes(pdf)
    return path


PDF_STUDIES = [
    "ct_workstation_vr_sc",
    "both_console_and_workstation",
    "segmentation",
    "us_3d",
    "originals_only",
    "pacs_viewer_3d_policy_76377",
    "cardiac_cta",
    "unknown_station_3d",
]


@pytest.mark.parametrize("name", PDF_STUDIES)
def test_pdf_report_of_a_fixture_study(fixture_source, tmp_path: Path, name: str) -> None:
    source = fixture_source(name)
    document = source.decision.document()
    pdf = _render(source, tmp_path)

    pages = _pages(pdf, tmp_path)
    assert pages, "pdftoppm rendered no page"
    for page in pages:
        grey = np.asarray(Image.open(page).convert("L"), dtype=np.float64)
        assert grey.std() > 10 and (grey < 200).mean() > 0.01, f"{page.name} looks blank"

    text = _pdftotext(pdf)
    assert document["outcome"] in text
    if document["code"]:
        assert f"CPT {document['code']}" in text
    else:
        assert "no 3D code" in text
    for reason in document["reasons"]:
        assert reason["rule"] in text
    for item in (reason for r in document["reasons"] for reason in r["evidence"]):
        assert item["keyword"] in text
    assert "What this evidence cannot show" in text
    assert "Concurrent physician supervision" in text and "Medical necessity" in text and "written 3D report" in text
    assert f"dicomcheck {__version__}" in text and f"rules {RULES_VERSION}" in text
    assert "Receipt provenance" in text and "analysed from files, no network receipt" in text
    assert document["patient_id"] in text
    for series in document["series"]:
        if series["series_description"]:
            assert series["series_description"] in text

    three_d = [s for s in document["series"] if s["is_3d"]]
    acquisition = any(s["kind"] == "acquisition" for s in document["series"])
    assert len(source.by_role(CitedRole.THREE_D)) == len(three_d)
    assert len(source.by_role(CitedRole.ACQUISITION)) == int(acquisition)
    assert _image_count(pdf) == len(three_d) + int(acquisition)

    total = len(pages)
    for number in range(1, total + 1):
        page_text = _pdftotext(pdf, number)
        assert f"page {number} of {total}" in page_text
        assert f"rules {RULES_VERSION}" in page_text and "Generated " in page_text


def test_pdf_policy_that_decided_is_shown(fixture_source, tmp_path: Path) -> None:
    source = fixture_source("pacs_viewer_3d_policy_76377")
    assert any(r.rule is RuleId.POLICY_PACS_VIEWER_CODE for r in source.decision.reasons)
    text = _pdftotext(_render(source, tmp_path))
    assert "Site policies" in text and "pacs_viewer_code" in text and "76377" in text
    plain = _pdftotext(_render(fixture_source("originals_only"), tmp_path, name="plain.pdf"))
    assert "No site policy decided anything in this study" in plain


def test_pdf_minimal_withholds_the_patient_and_burned_in_pictures(
    realworld: Path, fixture_source, tmp_path: Path
) -> None:
    source = fixture_source("ct_workstation_vr_sc")
    text = _pdftotext(_render(source, tmp_path, minimal=True))
    assert source.decision.patient_id not in text and "withheld" in text

    # a 3D image whose header says Burned In Annotation YES: the picture stays out of a minimal
    # pack even when the caller made the thumbnail with allow_burned_in=True
    path = realworld / "sc_neusoft_neuviz_no_manufacturer.dcm"
    series_uid = source.decision.series[1].series_instance_uid
    burned = CitedInstance("1.2.3.4.5", SecondaryCaptureImageStorage, series_uid, path, "0" * 64, CitedRole.THREE_D)
    others = tuple(i for i in source.instances if i.role != "3d")
    minimal_source = dataclasses.replace(source, instances=(burned, *others))
    thumbs = {
        i.sop_instance_uid: thumbnail(i.path) for i in minimal_source.instances if i.role in ("3d", "acquisition")
    }
    assert thumbs["1.2.3.4.5"].png is not None
    minimal = _render(minimal_source, tmp_path, minimal=True, thumbs=thumbs, name="minimal.pdf")
    assert _image_count(minimal) == 1  # the acquisition only
    assert BURNED_IN_NOTE in _pdftotext(minimal)
    full = _render(minimal_source, tmp_path, thumbs=thumbs, name="full.pdf")
    assert _image_count(full) == 2


def test_pdf_failed_thumbnail_shows_the_note(fixture_source, tmp_path: Path) -> None:
    source = fixture_source("both_console_and_workstation")
    thumbs = {i.sop_instance_uid: thumbnail(i.path) for i in source.instances if i.role in ("3d", "acquisition")}
    first = source.by_role(CitedRole.THREE_D)[0].sop_instance_uid
    thumbs[first] = Thumbnail(None, "no standard Pixel Data: private compression ELSCINT1", 0, None, 1)
    del thumbs[source.by_role(CitedRole.ACQUISITION)[0].sop_instance_uid]
    pdf = _render(source, tmp_path, thumbs=thumbs)
    text = _pdftotext(pdf)
    assert "private compression ELSCINT1" in text and "no thumbnail was made" in text
    assert _image_count(pdf) == len(source.by_role(CitedRole.THREE_D)) - 1


def test_pdf_non_ascii_receipts_decision_and_long_tables(fixture_source, tmp_path: Path) -> None:
    source = fixture_source("ct_workstation_vr_sc")
    document = source.decision.document()
    document["study_description"] = "Tête et cou, Müller Łódź Ωmega"
    document["series"][0]["series_description"] = "Tête 2.5 mm"
    reason = document["reasons"][0]
    reason["evidence"] = [dict(item, value=f"{item['value']} #{n}") for n in range(40) for item in reason["evidence"]]
    receipt = Receipt(
        dt.datetime(2026, 1, 5, 10, 22, 31, tzinfo=dt.UTC),
        "CT_CONSOLE_7",
        "DICOMCHECK",
        "10.20.30.40:40412",
        "1.2.840.10008.1.2.4.70",
        "1.3.12.2.1107.5.2",
        "SIEMENS_SWF",
        duplicate=False,
    )
    instances = tuple(dataclasses.replace(i, receipts=(receipt,)) if i.role == "3d" else i for i in source.instances)
    decided = dataclasses.replace(
        source,
        decision=StudyDecisionUnderPolicy.model_validate(document),
        instances=instances,
        decision_id=42,
        decided_at=dt.datetime(2026, 1, 5, 10, 23, tzinfo=dt.UTC),
        generated_at=dt.datetime(2026, 1, 6, 8, 0, tzinfo=dt.UTC),
    )
    pdf = _render(decided, tmp_path)
    text = _pdftotext(pdf)
    assert "Tête et cou, Müller" in text and "Tête 2.5 mm" in text  # Latin-1: in every font used
    if report_pdf._fonts().regular == "DejaVuSans":  # the system's DejaVu also covers Latin Extended and Greek
        assert "Tête et cou, Müller Łódź Ωmega" in text
    assert "decision #42 decided 2026-01-05T10:23:00Z" in text and "Generated 2026-01-06T08:00:00Z" in text
    assert "CT_CONSOLE_7" in text and "10.20.30.40:40412" in text and "SIEMENS_SWF" in text
    assert "JPEG Lossless" in text and "2026-01-05 10:22:31Z" in text
    assert "analysed from files, no network receipt" in text  # the acquisition image has no receipt
    # the 80-row evidence table splits across pages and repeats its header row
    total = int(re.search(r"page 1 of (\d+)", text).group(1))
    assert total >= 3
    continued = _pdftotext(pdf, 2)
    assert "Tag Keyword Value SOP Instance UID" in continued and "#39" in text
    # the font is embedded, and the output is deterministic
    fonts = subprocess.run([require_peer("pdffonts"), str(pdf)], capture_output=True, text=True, check=True).stdout
    assert all(line.split()[-5] == "yes" for line in fonts.splitlines()[2:]), fonts
    again = render_pdf(
        decided, {i.sop_instance_uid: thumbnail(i.path) for i in instances if i.role in ("3d", "acquisition")}
    )
    assert again == pdf.read_bytes()


def test_pdf_without_system_fonts_uses_the_fonts_bundled_with_reportlab(
    fixture_source, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = fixture_source("us_3d")
    decision = source.decision.model_copy(update={"study_description": "Échographie tête Łódź"})
    monkeypatch.setattr(report_pdf, "_find", lambda name: None)
    report_pdf._fonts.cache_clear()
    try:
        pdf = _render(dataclasses.replace(source, decision=decision), tmp_path)
    finally:
        report_pdf._fonts.cache_clear()
    fonts = subprocess.run([require_peer("pdffonts"), str(pdf)], capture_output=True, text=True, check=True).stdout
    names = [line.split()[0] for line in fonts.splitlines()[2:]]
    assert names and all("Vera" in name for name in names), fonts
    assert "Échographie tête Łódz" in _pdftotext(pdf)  # Vera has no ź: it loses its accent rather than vanish
