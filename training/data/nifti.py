"""NIfTI input/output through nibabel, always in the canonical (RAS+) orientation.

Every volume is reoriented with the same transform as ``nibabel.as_closest_canonical`` (axes
permuted/flipped so that voxel axes point Right, Anterior, Superior), so that axial slices are
``volume[..., k]`` along the last spatial axis for every dataset.  Headers are read without loading
voxels; voxels are read on demand.  Every failure becomes a `PatientError` naming the file.
`read_header` and `read_voxels` also take 2D images (PNG, DICOM: `training.data.images2d`) as
one-slice volumes, so every reader above them handles radiographs unchanged.
"""
from __future__ import annotations

import gzip
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel import orientations

from training.data.errors import PatientError
from training.data.fsutils import atomic_write
from training.data.images2d import image2d_affine, image2d_volume, is_image2d_name, read_image2d_info

NIFTI_ENDINGS = (".nii.gz", ".nii")
MAX_VOLUME_ENV = "STYLEPAIR_MAX_VOLUME_GB"  # the largest volume (as float32) a reader will load


def max_volume_bytes() -> int:
    """The largest volume, in float32 bytes, that may be loaded: ``$STYLEPAIR_MAX_VOLUME_GB`` GiB, or
    a quarter of this machine's memory (a volume is copied a few times while it is reoriented and
    resampled)."""
    if os.environ.get(MAX_VOLUME_ENV):
        return int(float(os.environ[MAX_VOLUME_ENV]) * 2**30)
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4


def _stored_voxel_bytes(path: Path, vox_offset: int) -> int | None:
    """Bytes of voxel data the file really holds: its size after the header, or for gzip the
    uncompressed size of the stream (from its trailer, exact below 4 GiB); None when unknown."""
    size = os.path.getsize(path)
    with open(path, "rb") as handle:
        if handle.read(2) != b"\x1f\x8b":
            return max(0, size - vox_offset)
        if size < 18:
            return None
        handle.seek(size - 4)
        uncompressed = int.from_bytes(handle.read(4), "little")  # ISIZE: the size modulo 2^32
    return max(0, uncompressed - vox_offset)


def is_nifti_name(name: str) -> bool:
    """True when ``name`` ends in ``.nii`` or ``.nii.gz`` and is not a hidden/AppleDouble file."""
    return name.endswith(NIFTI_ENDINGS) and not name.startswith(".")


def strip_nifti_ending(name: str) -> str:
    """``"case_0000.nii.gz" -> "case_0000"``."""
    for ending in NIFTI_ENDINGS:
        if name.endswith(ending):
            return name[: -len(ending)]
    return name


@dataclass(frozen=True)
class VolumeHeader:
    """Geometry of one NIfTI file after canonical reorientation (no voxels read).

    shape: spatial shape (X, Y, Z) in canonical orientation; n_channels: size of the 4th axis
    (1 for a 3D file); affine: 4x4 voxel-to-world (mm) matrix of the canonical array.
    """

    path: Path
    shape: tuple[int, int, int]
    n_channels: int
    affine: np.ndarray
    orientation: np.ndarray  # nibabel ornt array that takes the stored array to canonical

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along the canonical axes (column norms of the affine)."""
        return tuple(float(v) for v in np.linalg.norm(self.affine[:3, :3], axis=0))


def _gzip_problem(path: Path) -> str | None:
    """Why a gzip-compressed file cannot be decompressed (None if it decompresses or is not gzip)."""
    with open(path, "rb") as handle:
        if handle.read(2) != b"\x1f\x8b":
            return None
    try:
        with gzip.open(path, "rb") as stream:
            while stream.read(1 << 20):
                pass
    except (EOFError, OSError, zlib.error) as exc:
        return f"truncated or corrupt gzip file ({exc})"
    return None


def _load(path: Path, case_id: str) -> nib.Nifti1Image:
    if not path.is_file():
        raise PatientError(case_id, path, "file is missing")
    if os.path.getsize(path) == 0:
        raise PatientError(case_id, path, "file is empty (0 bytes)")
    try:
        img = nib.load(str(path))
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise PatientError(case_id, path, f"truncated or corrupt gzip file ({exc})") from exc
    except Exception as exc:  # nibabel raises many types for non-NIfTI content
        gzip_problem = _gzip_problem(path)
        if gzip_problem is not None:
            raise PatientError(case_id, path, gzip_problem) from exc
        reason = str(exc).replace(f"File {path}", "the file").replace(f'"{path}"', "the file")
        reason = reason.replace(str(path), "the file")  # the path already starts the message
        raise PatientError(case_id, path, f"not a readable NIfTI file ({type(exc).__name__}: {reason})") from exc
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise PatientError(case_id, path, f"not a NIfTI file (nibabel read it as {type(img).__name__})")
    return img


def read_header(path: Path, case_id: str, spacing_2d: tuple[float, float] | None = None) -> VolumeHeader:
    """Read the geometry of ``path`` (3D, or 4D with channels last) without loading voxels.

    Raises `PatientError` when the file is missing, empty, not NIfTI, or not 3D/4D.  A PNG or DICOM
    image is the volume [rows, columns, 1]; ``spacing_2d`` is its pixel spacing when the file does
    not say (a dataset's ``pixel_spacing``).
    """
    path = Path(path)
    if is_image2d_name(path):
        info = read_image2d_info(path, case_id)
        return VolumeHeader(path=path, shape=(info.rows, info.columns, 1), n_channels=1,
                            affine=image2d_affine(info, spacing_2d), orientation=np.array(CANONICAL_ORNT))
    img = _load(path, case_id)
    shape = tuple(int(s) for s in img.shape)
    if len(shape) == 5 and shape[3] == 1:  # some writers store vector data as (X, Y, Z, 1, C)
        shape = shape[:3] + shape[4:]
    if len(shape) not in (3, 4):
        raise PatientError(case_id, path, f"expected a 3D or 4D volume, found shape {shape}")
    if min(shape) < 1:
        raise PatientError(case_id, path, f"volume has an empty axis, shape {shape}")
    _check_declared_size(img, shape, path, case_id)
    affine = img.affine
    if affine is None or not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise PatientError(case_id, path, "affine is missing, singular or not finite")
    ornt = orientations.io_orientation(affine)
    canonical_affine = affine @ orientations.inv_ornt_aff(ornt, shape[:3])
    canonical_shape = tuple(int(shape[int(axis)]) for axis in ornt[:, 0])
    return VolumeHeader(
        path=path,
        shape=canonical_shape,  # type: ignore[arg-type]
        n_channels=shape[3] if len(shape) == 4 else 1,
        affine=np.asarray(canonical_affine, dtype=np.float64),
        orientation=ornt,
    )


def _check_declared_size(img: nib.Nifti1Image, shape: tuple[int, ...], path: Path, case_id: str) -> None:
    """`PatientError` before any voxel is read when the header declares a volume larger than the
    memory limit (`max_volume_bytes`) or larger than the data the file holds (a forged header)."""
    voxels = int(np.prod(np.array(shape, dtype=np.float64)))
    limit = max_volume_bytes()
    if voxels * 4 > limit:
        raise PatientError(case_id, path, f"header declares a volume of shape {shape} ({voxels * 4 / 2**30:.1f} GiB "
                                          f"as float32), above the limit of {limit / 2**30:.1f} GiB "
                                          f"(${MAX_VOLUME_ENV} sets it)")
    declared = voxels * img.header.get_data_dtype().itemsize
    header = img.header  # a single-file NIfTI's data starts after its header even when vox_offset says 0
    offset = max(int(header.get("vox_offset", 0)), int(getattr(header, "single_vox_offset", 352)))
    stored = _stored_voxel_bytes(path, offset)
    if stored is not None and declared < 2**32 and stored < declared:
        raise PatientError(case_id, path, f"header declares shape {shape} ({declared} bytes of voxel data) but the "
                                          f"file holds only {stored} bytes: truncated, or a forged header")


def read_voxels(header: VolumeHeader, case_id: str) -> np.ndarray:
    """Load the voxels of ``header.path`` reoriented to canonical: float32 [X, Y, Z] or [X, Y, Z, C]
    (C > 1; a singleton 4th axis is dropped).

    Scaling (scl_slope/inter) is applied.  Raises `PatientError` for truncated/corrupt data.
    """
    if is_image2d_name(header.path):
        return image2d_volume(header.path, case_id)
    img = _load(header.path, case_id)
    try:
        data = np.asarray(img.get_fdata(dtype=np.float32))
    except MemoryError:
        raise PatientError(case_id, header.path, f"not enough memory to load a volume of shape {header.shape} "
                                                 f"(${MAX_VOLUME_ENV} bounds what is tried)") from None
    except (EOFError, zlib.error, OSError, ValueError) as exc:
        raise PatientError(case_id, header.path,
                           f"truncated or corrupt voxel data ({type(exc).__name__}: {exc})") from exc
    if data.ndim == 5 and data.shape[3] == 1:
        data = data[:, :, :, 0, :]
    if data.ndim == 4 and data.shape[3] == 1:  # a 3D volume stored with a singleton 4th axis
        data = data[..., 0]
    return np.ascontiguousarray(orientations.apply_orientation(data, header.orientation))


# ----------------------------------------------------------------------------------------------
# Writing volumes the way a dataset stores its own

CANONICAL_ORNT = ((0, 1), (1, 1), (2, 1))
NIFTI_CODES = range(5)     # 0 unknown, 1 scanner, 2 aligned, 3 Talairach, 4 MNI
DESCRIP_BYTES = 80         # the NIfTI-1 descrip field


@dataclass(frozen=True)
class StoredStyle:
    """How a dataset stores its volumes, so that volumes written for it look like its own.

    orientation: nibabel ornt [(axis, flip)] x 3 of the stored voxel axes in RAS+ (what
    ``io_orientation`` of the stored affine says; CANONICAL_ORNT is RAS); image_dtype / label_dtype:
    numpy names of the stored voxel types (images stored with a scale factor count as float32: their
    values are not integers); qform_code / sform_code: the NIfTI codes of the stored header;
    file_format: "nifti", or "png" for 2D images (PNG or DICOM radiographs are written back as PNG).
    """

    orientation: tuple[tuple[int, int], ...] = CANONICAL_ORNT
    image_dtype: str = "float32"
    label_dtype: str = "uint8"
    qform_code: int = 1
    sform_code: int = 1
    file_format: str = "nifti"

    def to_dict(self) -> dict:
        return {"orientation": [list(a) for a in self.orientation], "image_dtype": self.image_dtype,
                "label_dtype": self.label_dtype, "qform_code": self.qform_code, "sform_code": self.sform_code,
                "file_format": self.file_format}

    @staticmethod
    def from_dict(raw: object, where: str) -> "StoredStyle":
        """The style recorded by `to_dict`; ValueError naming ``where`` for anything else."""
        try:
            ornt = tuple((int(axis), int(flip)) for axis, flip in raw["orientation"])
            style = StoredStyle(ornt, str(raw["image_dtype"]), str(raw["label_dtype"]),
                                int(raw["qform_code"]), int(raw["sform_code"]), str(raw.get("file_format", "nifti")))
            ok = (sorted(a for a, _ in ornt) == [0, 1, 2] and all(f in (-1, 1) for _, f in ornt)
                  and np.dtype(style.image_dtype).kind in "iuf" and np.dtype(style.label_dtype).kind in "iu"
                  and style.qform_code in NIFTI_CODES and style.sform_code in NIFTI_CODES
                  and style.file_format in ("nifti", "png"))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{where}: not a stored-volume style ({type(exc).__name__}: {exc})") from None
        if not ok:
            raise ValueError(f"{where}: not a stored-volume style: {raw!r}")
        return style


def read_stored_style(image_file: Path, label_file: Path, case_id: str) -> StoredStyle:
    """The `StoredStyle` of one patient's files (headers only)."""
    if is_image2d_name(image_file):
        bits = max(read_image2d_info(Path(image_file), case_id).bits, 8)
        label_bits = read_image2d_info(Path(label_file), case_id).bits
        return StoredStyle(image_dtype="uint8" if bits <= 8 else "uint16",
                           label_dtype="uint8" if label_bits <= 8 else "uint16", file_format="png")
    image, label = _load(Path(image_file), case_id), _load(Path(label_file), case_id)
    slope, inter = image.dataobj.slope, image.dataobj.inter
    scaled = not (slope in (1.0, 0.0) or not np.isfinite(slope)) or (np.isfinite(inter) and inter != 0.0)
    image_dtype = np.dtype(image.get_data_dtype())
    label_dtype = np.dtype(label.get_data_dtype())
    ornt = orientations.io_orientation(image.affine)
    return StoredStyle(
        orientation=tuple((int(axis), int(flip)) for axis, flip in ornt),
        image_dtype="float32" if scaled or image_dtype.kind not in "iuf" else image_dtype.name,
        label_dtype=label_dtype.name if label_dtype.kind in "iu" else "uint8",
        qform_code=int(image.header["qform_code"]), sform_code=int(image.header["sform_code"]))


def cast_voxels(array: np.ndarray, dtype: str) -> np.ndarray:
    """``array`` as ``dtype``: integers rounded and clipped to the type's range (HU stays HU)."""
    target = np.dtype(dtype)
    if target.kind in "iu":
        info = np.iinfo(target)
        return np.clip(np.rint(array), info.min, info.max).astype(target)
    return array.astype(target, copy=False)


def stored_nifti(array: np.ndarray, affine: np.ndarray, style: StoredStyle, dtype: str,
                 descrip: str = "") -> nib.Nifti1Image:
    """A NIfTI-1 image of the canonical (RAS+) ``array`` [X, Y, Z] with canonical ``affine``, stored
    the way ``style`` says: voxel axes reoriented back, voxels as ``dtype``, the qform/sform codes, and
    ``descrip`` (ASCII, cut to 80 bytes)."""
    to_stored = orientations.ornt_transform(np.array(CANONICAL_ORNT), np.array(style.orientation))
    data = orientations.apply_orientation(array, to_stored)
    stored_affine = np.asarray(affine, dtype=np.float64) @ orientations.inv_ornt_aff(to_stored, array.shape)
    image = nib.Nifti1Image(cast_voxels(np.ascontiguousarray(data), dtype), stored_affine)
    image.header.set_xyzt_units("mm")
    image.set_qform(stored_affine, code=style.qform_code)
    image.set_sform(stored_affine, code=style.sform_code)
    image.header["descrip"] = descrip.encode("ascii", "replace")[:DESCRIP_BYTES]
    return image


def write_nifti(path: Path, array: np.ndarray, affine: np.ndarray) -> None:
    """Write ``array`` ([X, Y, Z] or [X, Y, Z, C]) with ``affine`` to ``path`` atomically.

    The temporary file sits next to the target and is renamed over it, so readers never see a
    half-written volume.
    """
    img = nib.Nifti1Image(array, np.asarray(affine, dtype=np.float64))
    img.set_qform(img.affine, code=1)
    img.set_sform(img.affine, code=1)
    atomic_write(Path(path), lambda temporary: nib.save(img, str(temporary)))
