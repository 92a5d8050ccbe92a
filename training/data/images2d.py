"""2D images (radiographs): PNG through Pillow, DICOM through pydicom, as one-slice volumes.

A 2D image of R rows and C columns is the volume [X, Y, Z] = [R, C, 1]: ``volume[x, y, 0]`` is the
pixel of row x, column y, so a slice of it is the picture as it is displayed.  The affine holds the
pixel spacing in mm (rows, columns; DICOM ``PixelSpacing``, else ``ImagerPixelSpacing``, else the
dataset's ``pixel_spacing``, else 1 mm) and 1 mm along the one slice.

Grey values are the stored ones: 8- or 16-bit PNG (mode L, I;16), palette PNGs as their indices
(label maps), DICOM with its modality LUT (RescaleSlope/Intercept).  MONOCHROME1 DICOM (white =
low values) is inverted to MONOCHROME2: ``2**BitsStored - 1 - value`` (``max + min - value`` after a
modality LUT), so bone is bright in every image.  Colour images are refused: a radiograph is grey.
The size an image declares is checked against the memory limit before its pixels are read; every
failure is a `PatientError` naming the file.
"""
from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from training.data.errors import PatientError
from training.data.fsutils import atomic_write_bytes

PNG_ENDING, DICOM_ENDING = ".png", ".dcm"
IMAGE2D_ENDINGS = (PNG_ENDING, DICOM_ENDING)
GREY_PNG_MODES = {"L": 8, "I;16": 16, "I;16B": 16, "I;16L": 16, "I": 32, "P": 8, "1": 1}
DEFAULT_SPACING_MM = 1.0


def is_image2d_name(name: str | Path) -> bool:
    """Whether a file name is a 2D image this module reads (``.png``, ``.dcm``)."""
    return str(name).lower().endswith(IMAGE2D_ENDINGS)


@dataclass(frozen=True)
class Image2DInfo:
    """What a 2D image's header says: rows x columns, bits per pixel, photometric interpretation
    (PNG: "MONOCHROME2", or "PALETTE" for a palette PNG), pixel spacing in mm (rows, columns; None
    when the file does not say) and, for DICOM, the modality tag (e.g. "CR", "DX")."""

    path: Path
    rows: int
    columns: int
    bits: int
    photometric: str
    spacing: tuple[float, float] | None
    modality: str = ""


def _max_pixels() -> int:
    from training.data.nifti import max_volume_bytes  # the one memory limit of every reader

    return max_volume_bytes() // 4


def _check_size(rows: int, columns: int, path: Path, case_id: str) -> None:
    if rows < 1 or columns < 1:
        raise PatientError(case_id, path, f"image has no pixels ({rows} x {columns})")
    if rows * columns > _max_pixels():
        raise PatientError(case_id, path, f"image declares {rows} x {columns} pixels, above the limit of "
                                          f"{_max_pixels():,} (STYLEPAIR_MAX_VOLUME_GB sets it)")


def _open_png(path: Path, case_id: str):
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        raise PatientError(case_id, path, "file is missing")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(path)
    except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombWarning,
            Image.DecompressionBombError) as exc:
        raise PatientError(case_id, path, f"not a readable PNG file ({type(exc).__name__}: {exc})") from None
    if image.format != "PNG":
        raise PatientError(case_id, path, f"not a PNG file (the content is {image.format})")
    return image


def _read_dicom(path: Path, case_id: str, pixels: bool):
    import pydicom
    from pydicom.errors import InvalidDicomError

    if not path.is_file():
        raise PatientError(case_id, path, "file is missing")
    try:
        return pydicom.dcmread(path, stop_before_pixels=not pixels)
    except (InvalidDicomError, OSError, ValueError, EOFError, AttributeError) as exc:
        raise PatientError(case_id, path, f"not a readable DICOM file ({type(exc).__name__}: {exc})") from None


def _dicom_spacing(ds) -> tuple[float, float] | None:
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        value = ds.get(keyword)
        if value is not None and len(value) == 2 and all(float(v) > 0 for v in value):
            return float(value[0]), float(value[1])
    return None


def read_image2d_info(path: Path, case_id: str) -> Image2DInfo:
    """The header of a PNG or DICOM image (no pixels read); `PatientError` for a corrupt, colour or
    oversized image."""
    path = Path(path)
    if path.name.lower().endswith(PNG_ENDING):
        with _open_png(path, case_id) as image:
            return _png_info(image, path, case_id)
    return _dicom_info(_read_dicom(path, case_id, pixels=False), path, case_id)


def _png_info(image, path: Path, case_id: str) -> Image2DInfo:
    mode, (columns, rows) = image.mode, image.size
    if mode not in GREY_PNG_MODES:
        raise PatientError(case_id, path, f"colour PNG (mode {mode}); radiographs and masks are grey: "
                                          f"save it as 8- or 16-bit greyscale")
    _check_size(rows, columns, path, case_id)
    photometric = "PALETTE" if mode == "P" else "MONOCHROME2"
    return Image2DInfo(path, rows, columns, GREY_PNG_MODES[mode], photometric, None)


def _dicom_info(ds, path: Path, case_id: str) -> Image2DInfo:
    try:
        rows, columns = int(ds.Rows), int(ds.Columns)
        bits = int(ds.get("BitsStored", ds.BitsAllocated))
    except AttributeError as exc:
        raise PatientError(case_id, path, f"DICOM without image attributes ({exc})") from None
    samples = int(ds.get("SamplesPerPixel", 1))
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    if samples != 1 or photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise PatientError(case_id, path, f"colour DICOM ({photometric}, {samples} samples per pixel); "
                                          f"radiographs are MONOCHROME1 or MONOCHROME2")
    if frames != 1:
        raise PatientError(case_id, path, f"multi-frame DICOM ({frames} frames); one radiograph per file")
    _check_size(rows, columns, path, case_id)
    return Image2DInfo(path, rows, columns, bits, photometric, _dicom_spacing(ds), str(ds.get("Modality", "")))


def read_image2d(path: Path, case_id: str) -> np.ndarray:
    """The pixels of a PNG or DICOM image as float32 [rows, columns] (see the module docstring)."""
    path = Path(path)
    try:  # one read of the file: its header is checked before the pixels are decoded
        if path.name.lower().endswith(PNG_ENDING):
            with _open_png(path, case_id) as image:
                info = _png_info(image, path, case_id)
                image.load()
                pixels = np.asarray(image)
        else:
            ds = _read_dicom(path, case_id, pixels=True)
            info = _dicom_info(ds, path, case_id)
            pixels = _dicom_pixels(ds, info)
    except PatientError:
        raise
    except (OSError, ValueError, SyntaxError, AttributeError, RuntimeError) as exc:
        raise PatientError(case_id, path, f"truncated or corrupt pixel data ({type(exc).__name__}: {exc})") from None
    if pixels.shape != (info.rows, info.columns):
        raise PatientError(case_id, path, f"pixel array has shape {pixels.shape}, the header says "
                                          f"{(info.rows, info.columns)}")
    return pixels.astype(np.float32)


def _dicom_pixels(ds, info: Image2DInfo) -> np.ndarray:
    from pydicom.pixels import apply_modality_lut

    values = np.asarray(apply_modality_lut(ds.pixel_array, ds), dtype=np.float64)
    if info.photometric == "MONOCHROME1":
        rescaled = float(ds.get("RescaleSlope", 1) or 1) != 1 or float(ds.get("RescaleIntercept", 0) or 0) != 0
        if rescaled:  # the stored range no longer bounds the values
            return values.max() + values.min() - values
        signed = int(ds.get("PixelRepresentation", 0)) == 1
        top = 2 ** (info.bits - 1) - 1 if signed else 2 ** info.bits - 1
        bottom = -(2 ** (info.bits - 1)) if signed else 0
        return top + bottom - values
    return values


def image2d_volume(path: Path, case_id: str) -> np.ndarray:
    """The image as the one-slice volume float32 [rows, columns, 1]."""
    return read_image2d(path, case_id)[:, :, None]


def image2d_affine(info: Image2DInfo, spacing: tuple[float, float] | None) -> np.ndarray:
    """4x4 affine of the one-slice volume: the file's spacing, else ``spacing``, else 1 mm."""
    rows_mm, columns_mm = info.spacing or spacing or (DEFAULT_SPACING_MM, DEFAULT_SPACING_MM)
    return np.diag([rows_mm, columns_mm, 1.0, 1.0])


def png_bytes(pixels: np.ndarray) -> bytes:
    """A greyscale PNG of integer pixels [rows, columns]: 8-bit when they fit in 0..255, else 16-bit
    (values outside 0..65535 are an error, not clipped silently)."""
    from PIL import Image

    pixels = np.asarray(pixels)
    if pixels.ndim != 2 or pixels.dtype.kind not in "iub":
        raise ValueError(f"a PNG holds integer pixels [rows, columns], got {pixels.dtype} {pixels.shape}")
    low, high = (int(pixels.min()), int(pixels.max())) if pixels.size else (0, 0)
    if low < 0 or high > 65535:
        raise ValueError(f"pixel values {low}..{high} do not fit a 16-bit PNG")
    if high <= 255:
        image = Image.fromarray(pixels.astype(np.uint8), mode="L")
    else:
        image = Image.fromarray(pixels.astype(np.uint16))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def write_png(path: Path, pixels: np.ndarray) -> None:
    """Write ``pixels`` (see `png_bytes`) to ``path`` atomically."""
    atomic_write_bytes(Path(path), png_bytes(pixels))
