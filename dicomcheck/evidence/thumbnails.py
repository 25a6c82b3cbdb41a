"""Thumbnails of cited instances for the evidence report: one windowed frame as a small PNG.

The picture is made from the real pixel data, whatever the transfer syntax pydicom's pixel
decoders can read with the pylibjpeg plugins (JPEG baseline / extended / lossless, JPEG-LS,
JPEG 2000, HTJ2K, RLE) besides native data. Only one frame is decoded: the middle frame of a
multi-frame instance (for a segmentation whose middle frame is empty, the nearest non-empty one).

Windowing, after the Modality LUT (Rescale Slope / Intercept, or the Modality LUT Sequence; for
enhanced multi-frame objects the frame's Pixel Value Transformation):

* a VOI LUT Sequence in the header, else the header's first Window Center / Width (for enhanced
  objects the frame's Frame VOI LUT) — for every monochrome modality;
* no window in the header: CT gets the soft-tissue default W400/L40 (Hounsfield units), every other
  modality a 1st–99th percentile stretch;
* a header window that leaves the picture blank (all one value, or nearly all clipped) falls back
  to the percentile stretch, and :attr:`Thumbnail.window` says so;
* MONOCHROME1 is inverted after windowing; RGB and YBR (converted to RGB by pydicom) stay colour;
  PALETTE COLOR goes through the palette (``apply_color_lut``).

:func:`thumbnail` never raises: anything that stops a picture (no Pixel Data, private compression,
truncated or undecodable data, a frame too large to decode safely, burned-in annotation in a
PHI-minimal pack) gives ``png=None`` and a :attr:`Thumbnail.note` in plain words.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, SupportsIndex, SupportsInt

import numpy as np

if TYPE_CHECKING:  # pydicom is imported where it is used: thumbnails are made only when a pack is written
    from pydicom.dataset import Dataset

__all__ = ["Thumbnail", "thumbnail", "BURNED_IN_NOTE", "CT_DEFAULT_WINDOW", "MAX_FRAME_PIXELS"]

BURNED_IN_NOTE = "burned-in annotation: no thumbnail in a PHI-minimal pack"
CT_DEFAULT_WINDOW = (40.0, 400.0)
"""(center, width) in Hounsfield units: soft tissue, for CT without a window in the header."""
MAX_FRAME_PIXELS = 64 * 1024 * 1024
"""A frame with more pixels (rows x columns) is not decoded: a thumbnail is not worth gigabytes."""
SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
_SEG_SEARCH_LIMIT = 64
"""At most this many frames are decoded looking for a non-empty frame of a segmentation."""
_NON_IMAGE_MODALITIES = {"SR", "KO", "PR", "DOC", "RWV", "REG", "RTPLAN", "RTSTRUCT", "RTRECORD", "PLAN", "FID", "HC"}


@dataclass(frozen=True, slots=True)
class Thumbnail:
    """One frame of an instance as a PNG, or why there is none."""

    png: bytes | None
    note: str | None
    """Why there is no picture (``None`` when ``png`` is set)."""
    frame: int
    """The DICOM frame number shown (1-based; 1 for a single-frame image; 0 when no picture)."""
    window: str | None
    """The windowing / colour handling applied, in plain words (``None`` when no picture)."""
    frames: int = 1
    """Number of frames in the instance (0 when the header could not be read)."""

    @property
    def ok(self) -> bool:
        return self.png is not None


def _fail(note: str, frames: int = 0) -> Thumbnail:
    return Thumbnail(None, note, 0, None, frames)


def thumbnail(path: Path | str, *, size: int = 256, allow_burned_in: bool = True) -> Thumbnail:
    """A PNG of one frame of the instance at ``path``, its longest side ``size`` pixels.

    ``allow_burned_in=False`` (PHI-minimal packs) refuses instances whose Burned In Annotation
    (0028,0301) is YES. Never raises.
    """
    try:
        return _thumbnail(Path(path), int(size), allow_burned_in)
    except Exception as exc:  # noqa: BLE001 - the contract is a note, never an exception
        return _fail(f"pixel data could not be decoded: {_describe(exc)}")


# ---------------------------------------------------------------------------------------- reading


def _describe(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    if len(text) > 240:
        text = text[:237] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _thumbnail(path: Path, size: int, allow_burned_in: bool) -> Thumbnail:
    import pydicom

    if size < 8:
        return _fail(f"invalid thumbnail size {size}: at least 8 pixels")
    if not path.is_file():
        return _fail(f"file not found: {path}")
    try:
        header = pydicom.dcmread(path, stop_before_pixels=True, force=True)
    except Exception as exc:  # noqa: BLE001 - InvalidDicomError, OSError, EOFError, parser errors
        return _fail(f"not a readable DICOM file: {_describe(exc)}")

    if not _looks_like_dicom(header):
        return _fail("not a DICOM file: no DICOM header found")
    frames = _int(header.get("NumberOfFrames"), 1) or 1
    if not allow_burned_in and str(header.get("BurnedInAnnotation", "") or "").strip().upper() == "YES":
        return _fail(BURNED_IN_NOTE, frames)
    why_not = _no_image_reason(header)
    if why_not:
        return _fail(why_not, frames)
    rows, columns = _int(header.get("Rows"), 0), _int(header.get("Columns"), 0)
    if rows * columns > MAX_FRAME_PIXELS:
        return _fail(f"frame of {columns} x {rows} pixels is too large to decode for a thumbnail", frames)

    decoder = _FrameDecoder(path)
    index = frames // 2
    try:
        pixels = decoder.frame(index)
    except Exception as exc:  # noqa: BLE001
        return _fail(_decode_failure(header, exc), frames)
    if str(header.get("SOPClassUID", "")) == SEGMENTATION_STORAGE and frames > 1 and not np.any(pixels):
        index, pixels = _non_empty_segment_frame(decoder, index, frames, pixels)

    image, window = _display(pixels, header, index)
    png = _png(image, size, _aspect(header, index, image.shape[0], image.shape[1]))
    return Thumbnail(png, None, index + 1, window, frames)


def _int(value: object, default: int) -> int:
    if not isinstance(value, str | bytes | bytearray | SupportsInt | SupportsIndex):
        return default  # None, a multi-value, a sequence: what int() refuses with TypeError
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _no_image_reason(header: Dataset) -> str | None:
    """Why an instance has no picture, when the header already tells (no image module)."""
    modality = str(header.get("Modality", "") or "").upper()
    if "Rows" in header and "Columns" in header:
        return None
    private = _private_pixel_creator(header)
    if private:
        return private
    if modality in _NON_IMAGE_MODALITIES:
        return f"no pixel data: modality {modality} is not an image"
    return None  # let the decoder say what is missing


def _private_pixel_creator(header: Dataset) -> str | None:
    """Private pixel storage (e.g. Philips/Elscint ELSCINT1 compression in group 7FDF)."""
    for elem in header:
        group, element = elem.tag.group, elem.tag.element
        if group in (0x7FDF, 0x07A1) and 0x10 <= element <= 0xFF and elem.VR == "LO":
            creator = str(elem.value or "").strip()
            if group == 0x7FDF or creator.upper().startswith("ELSCINT"):
                return (
                    f"no standard Pixel Data: the pixels are in a private compression "
                    f"(private creator {creator!r} in group {group:04X}) that no public decoder reads"
                )
    return None


def _decode_failure(header: Dataset, exc: Exception) -> str:
    text = str(exc)
    lowered = text.lower()
    if "no 'pixel data'" in lowered or "no pixel data" in lowered:
        private = _private_pixel_creator(header)
        if private:
            return private
        return "no Pixel Data element in this instance (header-only copy or a non-image object)"
    ts = _transfer_syntax(header)
    if isinstance(exc, NotImplementedError) or "missing dependencies" in lowered or "is not supported" in lowered:
        return f"no installed decoder reads pixel data in {ts}: {_describe(exc)}"
    if "raised by all available plugins" in lowered:
        return f"the pixel data ({ts}) is corrupt or truncated: every decoder failed ({_describe(exc)})"
    if "less than expected" in lowered:
        return f"the pixel data is truncated: {_describe(exc)}"
    if "'transfer_syntax_uid' is required" in lowered:
        return "no file meta information and no recognisable encoding: the transfer syntax is unknown"
    return f"pixel data could not be decoded: {_describe(exc)}"


_CORE_TAGS = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "Modality", "Rows", "PatientID")


def _looks_like_dicom(header: Dataset) -> bool:
    meta = getattr(header, "file_meta", None)
    if meta is not None and "TransferSyntaxUID" in meta:
        return True
    return any(keyword in header for keyword in _CORE_TAGS)


def _transfer_syntax(header: Dataset) -> str:
    from pydicom.uid import UID

    uid = getattr(header, "file_meta", {}).get("TransferSyntaxUID")
    return f"{UID(uid).name} ({uid})" if uid else "an unknown transfer syntax"


class _FrameDecoder:
    """Decodes one frame at a time: straight from the file (only that frame is read and decoded);
    if pydicom cannot parse the file that way, from a full read of the dataset."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._dataset: Dataset | None = None
        self._direct = True

    def frame(self, index: int) -> np.ndarray:
        from pydicom.pixels import pixel_array

        if self._direct:
            try:
                return pixel_array(self.path, index=index)
            except Exception as exc:  # noqa: BLE001
                if "no 'Pixel Data'" in str(exc):
                    raise
                first = exc
                self._direct = False
                try:
                    return pixel_array(self._full(), index=index)
                except Exception as again:  # noqa: BLE001
                    # the full read gets further (e.g. past a missing file meta) unless it lost the
                    # Pixel Data altogether (pydicom drops a dataset it cannot finish): say the more telling
                    if "no 'Pixel Data'" in str(again):
                        raise first from None
                    raise
        return pixel_array(self._full(), index=index)

    def _full(self) -> Dataset:
        import pydicom
        from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

        if self._dataset is None:
            ds = pydicom.dcmread(self.path, force=True)
            meta = getattr(ds, "file_meta", None)
            if meta is None or "TransferSyntaxUID" not in meta:
                # no file meta (ACR-NEMA style dump): the encoding the parser found is the syntax
                implicit, little = ds.original_encoding
                if implicit is not None and little is not None:
                    ds.ensure_file_meta()
                    ds.file_meta.TransferSyntaxUID = (
                        ImplicitVRLittleEndian
                        if implicit
                        else ExplicitVRLittleEndian
                        if little
                        else ExplicitVRBigEndian
                    )
            self._dataset = ds
        return self._dataset


def _non_empty_segment_frame(
    decoder: _FrameDecoder, middle: int, frames: int, pixels: np.ndarray
) -> tuple[int, np.ndarray]:
    """The non-empty frame nearest the middle of a segmentation (a blank mask shows nothing)."""
    tried = 0
    for step in range(1, frames):
        for candidate in (middle + step, middle - step):
            if 0 <= candidate < frames:
                tried += 1
                if tried > _SEG_SEARCH_LIMIT:
                    return middle, pixels
                try:
                    arr = decoder.frame(candidate)
                except Exception:  # noqa: BLE001
                    return middle, pixels
                if np.any(arr):
                    return candidate, arr
    return middle, pixels


# ------------------------------------------------------------------------------------- windowing


def _frame_item(header: Dataset, index: int, sequence: str) -> Dataset | None:
    """The first item of a functional-group macro for frame ``index``: per-frame, then shared."""
    for groups, position in (("PerFrameFunctionalGroupsSequence", index), ("SharedFunctionalGroupsSequence", 0)):
        try:
            seq = header.get(groups)
            if seq and len(seq) > position:
                inner = seq[position].get(sequence)
                if inner:
                    item: Dataset = inner[0]
                    return item
        except Exception:  # noqa: BLE001 - a broken functional group is just absent
            continue
    return None


def _frame_value(header: Dataset, index: int, keyword: str, sequence: str) -> Any:
    """A value from the top level (classic images) or the frame's functional groups (enhanced)."""
    try:
        if keyword in header and header[keyword].value not in (None, ""):
            return header[keyword].value
    except Exception:  # noqa: BLE001
        pass
    item = _frame_item(header, index, sequence)
    if item is not None:
        try:
            value = item.get(keyword)
            if value not in (None, ""):
                return value
        except Exception:  # noqa: BLE001
            pass
    return None


def _floats(value: Any) -> list[float]:
    if value is None:
        return []
    values = [value] if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__") else list(value)
    out = []
    for v in values:
        try:
            f = float(v)
        except (TypeError, ValueError):
            return []
        if not math.isfinite(f):
            return []
        out.append(f)
    return out


def _display(pixels: np.ndarray, header: Dataset, index: int) -> tuple[np.ndarray, str]:
    """8-bit greyscale (H, W) or RGB (H, W, 3) for display, and the windowing used in words."""
    photometric = str(header.get("PhotometricInterpretation", "") or "MONOCHROME2").strip().upper()
    if pixels.ndim == 3 and pixels.shape[-1] in (3, 4):
        return _colour(pixels[..., :3], header, photometric)
    if photometric == "PALETTE COLOR":
        from pydicom.pixels.processing import apply_color_lut

        rgb = apply_color_lut(pixels, header)[..., :3]
        return _to_uint8_colour(rgb), "palette colour lookup table (PALETTE COLOR)"
    if pixels.ndim != 2:
        raise ValueError(f"unexpected decoded shape {pixels.shape}")

    pixels = _decimate(pixels)
    values = _modality(pixels, header, index)
    image, window = _voi(values, header, index)
    if photometric == "MONOCHROME1":
        image = 255 - image
        window += "; inverted (MONOCHROME1)"
    return image, window


def _decimate(arr: np.ndarray, target: int = 1024) -> np.ndarray:
    """Every n-th pixel of a very large frame, to keep the float arrays of windowing small."""
    step = max(1, max(arr.shape[:2]) // target)
    return arr[::step, ::step] if step > 1 else arr


def _colour(rgb: np.ndarray, header: Dataset, photometric: str) -> tuple[np.ndarray, str]:
    rgb = _decimate(rgb)
    if photometric in ("RGB", "ARGB"):
        words = "none (RGB colour image)"
    elif photometric.startswith("YBR"):
        words = f"none (colour image, {photometric} converted to RGB)"
    else:
        words = f"none (colour image, {photometric or 'no photometric interpretation'})"
    bits = _int(header.get("BitsStored"), 8)
    if rgb.dtype != np.uint8:
        peak = float(2 ** min(max(bits, 1), 16) - 1)
        rgb = np.clip(rgb.astype(np.float64) / peak * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(rgb), words


def _to_uint8_colour(rgb: np.ndarray) -> np.ndarray:
    if rgb.dtype == np.uint8:
        return np.ascontiguousarray(rgb)
    if rgb.size and int(rgb.max()) > 255:
        return np.ascontiguousarray((rgb.astype(np.uint32) >> 8).astype(np.uint8))
    return np.ascontiguousarray(rgb.astype(np.uint8))


def _modality(pixels: np.ndarray, header: Dataset, index: int) -> np.ndarray:
    """Stored values -> modality values (Hounsfield units for CT) as float64."""
    from pydicom.dataset import Dataset
    from pydicom.pixels.processing import apply_modality_lut

    if header.get("ModalityLUTSequence"):
        try:
            return np.asarray(apply_modality_lut(pixels, header), dtype=np.float64)
        except Exception:  # noqa: BLE001 - a broken LUT: fall back to rescale / identity
            pass
    flat = Dataset()
    slope = _floats(_frame_value(header, index, "RescaleSlope", "PixelValueTransformationSequence"))
    intercept = _floats(_frame_value(header, index, "RescaleIntercept", "PixelValueTransformationSequence"))
    if slope and intercept and slope[0] != 0:
        flat.RescaleSlope = slope[0]
        flat.RescaleIntercept = intercept[0]
    return np.asarray(apply_modality_lut(pixels, flat), dtype=np.float64)


def _voi(values: np.ndarray, header: Dataset, index: int) -> tuple[np.ndarray, str]:
    modality = str(header.get("Modality", "") or "").strip().upper()
    attempt: tuple[np.ndarray, str] | None = None
    if header.get("VOILUTSequence"):
        attempt = _voi_lut(values, header)
    if attempt is None:
        centers = _floats(_frame_value(header, index, "WindowCenter", "FrameVOILUTSequence"))
        widths = _floats(_frame_value(header, index, "WindowWidth", "FrameVOILUTSequence"))
        if centers and widths and widths[0] >= 1:
            function = (
                str(_frame_value(header, index, "VOILUTFunction", "FrameVOILUTSequence") or "LINEAR").strip().upper()
            )
            explanation = _frame_value(header, index, "WindowCenterWidthExplanation", "FrameVOILUTSequence")
            if explanation is not None and not isinstance(explanation, str) and hasattr(explanation, "__iter__"):
                explanation = next(iter(explanation), None)  # one explanation per window: the first
            words = f"header window W{widths[0]:g}/L{centers[0]:g}"
            extras = [
                s
                for s in (str(explanation).strip() if explanation else "", function if function != "LINEAR" else "")
                if s
            ]
            if len(centers) > 1:
                extras.append(f"first of {len(centers)}")
            if extras:
                words += f" ({', '.join(extras)})"
            attempt = (_window(values, centers[0], widths[0], function), words)
        elif modality == "CT":
            center, width = CT_DEFAULT_WINDOW
            attempt = (
                _window(values, center, width, "LINEAR"),
                f"soft-tissue default W{width:g}/L{center:g} (no window in the header)",
            )
    if attempt is not None:
        image, words = attempt
        if not _blank(image):
            return image, words
        image, stretch = _percentile(values)
        return image, f"{words} left the picture blank; {stretch} instead"
    return _percentile(values)


def _window(values: np.ndarray, center: float, width: float, function: str) -> np.ndarray:
    """pydicom's windowing into an 8-bit output range (the values are already modality values)."""
    from pydicom.dataset import Dataset
    from pydicom.pixels.processing import apply_windowing

    display = Dataset()
    display.PhotometricInterpretation = "MONOCHROME2"
    display.BitsStored = 8  # output range 0..255 ...
    display.PixelRepresentation = 0  # ... unsigned, and no rescale here: already applied
    display.WindowCenter = center
    display.WindowWidth = width
    display.VOILUTFunction = function if function in ("LINEAR", "LINEAR_EXACT", "SIGMOID") else "LINEAR"
    out = np.asarray(apply_windowing(values.copy(), display), dtype=np.float64)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _voi_lut(values: np.ndarray, header: Dataset) -> tuple[np.ndarray, str] | None:
    from pydicom.pixels.processing import apply_voi

    try:
        item = header.VOILUTSequence[0]
        descriptor = [int(v) for v in item.LUTDescriptor]
        entries = descriptor[0] or 65536
        first = descriptor[1]
        table = apply_voi(np.arange(first, first + entries, dtype=np.int64), header)
        low, high = float(table.min()), float(table.max())
        if high <= low:
            return None
        out = apply_voi(np.rint(values).astype(np.int64), header).astype(np.float64)
        image = np.clip(np.rint((out - low) / (high - low) * 255.0), 0, 255).astype(np.uint8)
        explanation = str(item.get("LUTExplanation", "") or "").strip()
        return image, "header VOI LUT" + (f" ({explanation})" if explanation else "")
    except Exception:  # noqa: BLE001 - a broken VOI LUT: use the window instead
        return None


def _blank(image: np.ndarray) -> bool:
    """All one value, or (nearly) everything clipped to black or white."""
    if image.size == 0 or int(image.min()) == int(image.max()):
        return True
    clipped = max(float(np.mean(image == 0)), float(np.mean(image == 255)))
    return clipped >= 0.995


def _percentile(values: np.ndarray) -> tuple[np.ndarray, str]:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return np.zeros(values.shape, dtype=np.uint8), "none (no finite pixel values)"
    low, high = (float(v) for v in np.percentile(finite, [1, 99]))
    words = f"1–99 percentile stretch ({low:g} to {high:g})"
    if high <= low:
        low, high = float(finite.min()), float(finite.max())
        words = f"min–max stretch ({low:g} to {high:g}; 1st and 99th percentiles equal)"
    if high <= low:
        return np.full(values.shape, 128 if low else 0, dtype=np.uint8), f"none (every pixel is {low:g})"
    out = (np.nan_to_num(values, nan=low) - low) / (high - low) * 255.0
    return np.clip(np.rint(out), 0, 255).astype(np.uint8), words


# ------------------------------------------------------------------------------------------- PNG


def _aspect(header: Dataset, index: int, rows: int, columns: int) -> float:
    """Displayed height / width, honouring non-square pixels (Pixel Spacing or Pixel Aspect Ratio)."""
    ratio = 1.0
    spacing = _floats(_frame_value(header, index, "PixelSpacing", "PixelMeasuresSequence"))
    aspect = _floats(header.get("PixelAspectRatio"))
    if len(spacing) >= 2 and spacing[0] > 0 and spacing[1] > 0:
        ratio = spacing[0] / spacing[1]
    elif len(aspect) >= 2 and aspect[0] > 0 and aspect[1] > 0:
        ratio = aspect[0] / aspect[1]
    if not 0.2 <= ratio <= 5:  # implausible: ignore rather than squash the picture
        ratio = 1.0
    return rows * ratio / max(columns, 1)


def _png(image: np.ndarray, size: int, aspect: float) -> bytes:
    from PIL import Image

    picture = Image.fromarray(np.ascontiguousarray(image), "RGB" if image.ndim == 3 else "L")
    if aspect >= 1:
        height, width = size, max(1, round(size / aspect))
    else:
        width, height = size, max(1, round(size * aspect))
    if (width, height) != picture.size:
        shrinking = width < picture.size[0] or height < picture.size[1]
        picture = picture.resize((width, height), Image.Resampling.LANCZOS if shrinking else Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", optimize=False, compress_level=6)
    return buffer.getvalue()
