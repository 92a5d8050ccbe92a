"""NIfTI input/output through nibabel, always in the canonical (RAS+) orientation.

Every volume is reoriented with the same transform as ``nibabel.as_closest_canonical`` (axes
permuted/flipped so that voxel axes point Right, Anterior, Superior), so that axial slices are
``volume[..., k]`` along the last spatial axis for every dataset.  Headers are read without loading
voxels; voxels are read on demand.  Every failure becomes a `PatientError` naming the file.
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


def read_header(path: Path, case_id: str) -> VolumeHeader:
    """Read the geometry of ``path`` (3D, or 4D with channels last) without loading voxels.

    Raises `PatientError` when the file is missing, empty, not NIfTI, or not 3D/4D.
    """
    path = Path(path)
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


def write_nifti(path: Path, array: np.ndarray, affine: np.ndarray) -> None:
    """Write ``array`` ([X, Y, Z] or [X, Y, Z, C]) with ``affine`` to ``path`` atomically.

    The temporary file sits next to the target and is renamed over it, so readers never see a
    half-written volume.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(array, np.asarray(affine, dtype=np.float64))
    img.set_qform(img.affine, code=1)
    img.set_sform(img.affine, code=1)
    ending = ".nii.gz" if path.name.endswith(".nii.gz") else ".nii"
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp{ending}")
    try:
        nib.save(img, str(tmp))
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
