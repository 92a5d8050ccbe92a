"""Preprocessing of one patient into 2D axial slices: intensity normalisation and in-plane resizing.

Per modality the intensities are mapped linearly so that a window ``[lo, hi]`` becomes [-1, 1]
(values outside clipped): a fixed window for CT (Hounsfield units, e.g. -1000..2000), or the
``lower``/``upper`` percentiles of the patient's foreground for MR (e.g. 0.5..99.5 %).  The (lo, hi)
used for each patient is recorded so that [-1, 1] maps back to intensities.

Each axial slice (X, Y) is resized so that its physical extent fits ``resolution`` pixels along the
longer side (square pixels, aspect preserved) and is centred in a ``resolution`` x ``resolution``
frame by padding (images with -1, labels with background).  Images use area averaging when shrinking
(bilinear when growing, or when ``image_interpolation="bilinear"``); labels use nearest neighbour.
Slice rows index the canonical x axis and columns the y axis: ``slice[i, j] = volume[x, y, k]``.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from training.data.errors import PatientError
from training.data.nifti import StoredStyle
from training.data.records import CT_NAMES, Patient
from training.data.typed_config import apply_overrides, from_mapping, read_yaml_mapping, to_mapping

MAX_RESOLUTION = 4096  # cached slices are resolution^2 floats per channel: 65536^2 would be 16 GiB



@dataclass(frozen=True)
class IntensityNorm:
    """How one modality is scaled to [-1, 1].

    method "percentile": lo/hi = the ``lower``/``upper`` percentiles (in %) of the patient's
    voxels (only the foreground -- voxels above the volume minimum -- if ``foreground_only``).
    method "window": lo/hi = ``lower``/``upper`` as fixed intensities (e.g. CT in HU).
    """

    method: str = "percentile"
    lower: float = 0.5
    upper: float = 99.5
    foreground_only: bool = True

    def __post_init__(self) -> None:
        if self.method not in ("percentile", "window"):
            raise ValueError(f"IntensityNorm.method must be 'percentile' or 'window', got {self.method!r}")
        if not self.lower < self.upper:
            raise ValueError(f"IntensityNorm needs lower < upper, got {self.lower} and {self.upper}")
        if self.method == "percentile" and not (0.0 <= self.lower and self.upper <= 100.0):
            raise ValueError(f"percentiles must lie in [0, 100], got {self.lower} and {self.upper}")


@dataclass(frozen=True)
class PreprocessConfig:
    """Everything that turns a patient into cached slices, plus the slice selection for GAN training.

    resolution: output slices are resolution x resolution.  modality_norm: per-modality-name
    overrides; other modalities use ``ct_norm`` if named CT (case-insensitive) else ``mr_norm``.
    image_interpolation: "area" (area averaging when shrinking) or "bilinear" (antialiased).
    cache_dtype: "float32" or "float16" storage of the cached images.

    The selection fields do not change the cache (it keeps every slice of every case; the U-Net
    study evaluates whole volumes); `SliceCache.training_rows` applies them as a view:
    drop_end_slices: slices dropped at each end of every stack; drop_empty_slices: drop slices
    whose label is all background; min_label_fraction: drop slices with a smaller fraction of
    non-background pixels.
    """

    resolution: int = 64
    mr_norm: IntensityNorm = IntensityNorm("percentile", 0.5, 99.5, True)
    ct_norm: IntensityNorm = IntensityNorm("window", -1000.0, 2000.0, False)
    modality_norm: dict[str, IntensityNorm] = field(default_factory=dict)
    image_interpolation: str = "area"
    cache_dtype: str = "float32"
    drop_end_slices: int = 0
    drop_empty_slices: bool = False
    min_label_fraction: float = 0.0

    def __post_init__(self) -> None:
        if not 4 <= self.resolution <= MAX_RESOLUTION:
            raise ValueError(f"resolution must lie in 4..{MAX_RESOLUTION} pixels, got {self.resolution}")
        if self.image_interpolation not in ("area", "bilinear"):
            raise ValueError(f"image_interpolation must be 'area' or 'bilinear', got {self.image_interpolation!r}")
        if self.cache_dtype not in ("float32", "float16"):
            raise ValueError(f"cache_dtype must be 'float32' or 'float16', got {self.cache_dtype!r}")
        if self.drop_end_slices < 0 or not 0.0 <= self.min_label_fraction <= 1.0:
            raise ValueError("drop_end_slices must be >= 0 and min_label_fraction in [0, 1]")

    def norm_for(self, modality: str) -> IntensityNorm:
        """The `IntensityNorm` applied to ``modality``."""
        if modality in self.modality_norm:
            return self.modality_norm[modality]
        return self.ct_norm if modality.lower() in CT_NAMES else self.mr_norm

    def cache_key(self, modalities: list[str]) -> str:
        """Hash of the fields that change cached arrays (not the slice selection)."""
        payload = {"resolution": self.resolution, "interp": self.image_interpolation, "dtype": self.cache_dtype,
                   "norms": {m: dataclasses.asdict(self.norm_for(m)) for m in modalities}}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()

    def to_dict(self) -> dict:
        """JSON/YAML-ready dict (inverse of `preprocess_config_from_dict`)."""
        return dataclasses.asdict(self)


def preprocess_config_from_dict(values: dict, where: str = "preprocessing config", key: str = "") -> PreprocessConfig:
    """Build a `PreprocessConfig` from a mapping (YAML); `ConfigError` names ``where`` and the key path."""
    return _numbers_as_written(from_mapping(PreprocessConfig, values, where, key, readers=_READERS), values)


def _numbers_as_written(built, values: dict):
    """``built`` with its float fields holding whole numbers as written (2000, not 2000.0): slice caches,
    GAN runs and study results made before the typed reader keyed their preprocessing that way."""
    kept = {f.name: values[f.name] for f in dataclasses.fields(built)
            if isinstance(getattr(built, f.name), float) and type(values.get(f.name)) is int}
    return dataclasses.replace(built, **kept) if kept else built


def _read_norm(value: dict, where: str, key: str) -> IntensityNorm:
    return _numbers_as_written(from_mapping(IntensityNorm, value, where, key), value)


_READERS = {IntensityNorm: _read_norm}


CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs" / "data"


def load_preprocess_config(name_or_path: str | Path | None, overrides: Sequence[str] = (),
                           **fields: object) -> PreprocessConfig:
    """Read a YAML preset: a path, or a name in ``configs/data/`` ("phantom", "brats", "ct"); None:
    the `PreprocessConfig` defaults.

    ``overrides``: ``KEY=VALUE`` strings (``--set ct_norm.upper=400``, `typed_config`); ``fields``
    replace whole fields after them, None leaving the preset's (``resolution=128`` from a CLI flag).
    """
    preset = to_mapping(PreprocessConfig()) if name_or_path is None else preprocess_preset_values(name_or_path)
    values = apply_overrides(preset, overrides)
    values.update({k: v for k, v in fields.items() if v is not None})
    where = "preprocessing defaults" if name_or_path is None else str(preset_file(name_or_path))
    return preprocess_config_from_dict(values, where + (" + --set" if overrides else ""))


def preset_file(name_or_path: str | Path) -> Path:
    """The file of a preprocessing preset: a path, or a name in ``configs/data/``."""
    path = Path(name_or_path)
    return CONFIG_DIR / f"{name_or_path}.yaml" if not path.suffix else path


def preprocess_preset_values(name_or_path: str | Path) -> dict:
    """The mapping a preset file holds (a path, or a name in ``configs/data/``), not yet validated."""
    path = preset_file(name_or_path)
    if not path.is_file():
        presets = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
        raise FileNotFoundError(f"{path}: no such preprocessing config (presets: {presets})")
    return read_yaml_mapping(path, "preprocessing config")


@dataclass(frozen=True)
class SliceGeometry:
    """How a case's (X, Y) slices map into the resolution x resolution frame.

    resized: (nx, ny) size after resizing; pad: (px, py) offset of the resized slice in the frame;
    pixel_mm: in-plane pixel size after resizing (square).
    """

    resized: tuple[int, int]
    pad: tuple[int, int]
    pixel_mm: float


def slice_geometry(shape_xy: tuple[int, int], spacing_xy: tuple[float, float], resolution: int) -> SliceGeometry:
    """Fit the physical extent of an (X, Y) slice into ``resolution`` pixels, keeping its aspect."""
    extent = np.array(shape_xy, dtype=np.float64) * np.array(spacing_xy, dtype=np.float64)
    pixel_mm = float(extent.max() / resolution)
    resized = tuple(int(min(resolution, max(1, round(e / pixel_mm)))) for e in extent)
    pad = tuple((resolution - n) // 2 for n in resized)
    return SliceGeometry(resized, pad, pixel_mm)  # type: ignore[arg-type]


def frame_affine(affine: np.ndarray, shape: tuple[int, int, int], geometry: SliceGeometry) -> np.ndarray:
    """4x4 affine of the resized/padded stack [R, R, Z] (frame voxel -> world mm).

    Frame pixel i maps to original index x = (i - pad + 0.5) * X / nx - 0.5 (pixel centres).
    """
    to_original = np.eye(4)
    for axis in range(2):
        step = shape[axis] / geometry.resized[axis]
        to_original[axis, axis] = step
        to_original[axis, 3] = (0.5 - geometry.pad[axis]) * step - 0.5
    return np.asarray(affine, dtype=np.float64) @ to_original


@dataclass(frozen=True)
class CaseInfo:
    """Per-case metadata kept in the cache index (JSON-serialisable).

    original_shape/affine/spacing: the canonical grid of the source volumes; slice_affine: affine
    of the stacked slices [R, R, Z]; slice_spacing: (pixel_mm, pixel_mm, z spacing) of that stack;
    intensity_window: per modality the (lo, hi) mapped to (-1, 1).
    """

    case_id: str
    n_slices: int
    first_row: int
    original_shape: tuple[int, int, int]
    original_affine: list[list[float]]
    original_spacing: tuple[float, float, float]
    resized: tuple[int, int]
    pad: tuple[int, int]
    slice_affine: list[list[float]]
    slice_spacing: tuple[float, float, float]
    intensity_window: dict[str, tuple[float, float]]

    @staticmethod
    def from_dict(values: dict) -> "CaseInfo":
        """Inverse of ``dataclasses.asdict`` after a JSON round trip."""
        v = dict(values)
        for key in ("original_shape", "original_spacing", "resized", "pad", "slice_spacing"):
            v[key] = tuple(v[key])
        v["intensity_window"] = {m: tuple(w) for m, w in v["intensity_window"].items()}
        return CaseInfo(**v)


@dataclass(frozen=True)
class PreprocessedCase:
    """images float32 [Z, M, R, R] in [-1, 1]; labels uint8 [Z, R, R] label indices; info."""

    images: np.ndarray
    labels: np.ndarray
    info: CaseInfo


def intensity_window(volume: np.ndarray, norm: IntensityNorm) -> tuple[float, float]:
    """(lo, hi) that ``norm`` maps to (-1, 1) for ``volume`` (any shape, original intensities)."""
    if norm.method == "window":
        return float(norm.lower), float(norm.upper)
    values = volume[volume > volume.min()] if norm.foreground_only else volume.ravel()
    if values.size == 0:
        values = volume.ravel()
    lo, hi = np.percentile(values, [norm.lower, norm.upper])
    if hi - lo < 1e-6:  # a constant volume: map it to the middle rather than dividing by zero
        hi = lo + 1.0
    return float(lo), float(hi)


def normalise(volume: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    """Map ``window`` linearly to [-1, 1] and clip: float32, same shape as ``volume``."""
    lo, hi = window
    scaled = (volume.astype(np.float32) - lo) / (hi - lo) * 2.0 - 1.0
    return np.clip(scaled, -1.0, 1.0)


def label_indices(label: np.ndarray, label_values: list[int]) -> np.ndarray:
    """Real label values -> indices 0..L-1 (uint8) by position in sorted ``label_values``."""
    values = np.asarray(label_values)
    index = np.searchsorted(values, label)
    index = np.clip(index, 0, len(values) - 1)
    if not np.array_equal(values[index], label):
        bad = sorted(set(np.unique(label).tolist()) - set(label_values))
        raise ValueError(f"label values {bad} are not among {label_values}")
    return index.astype(np.uint8)


def _resize_images(stack: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """stack [Z, M, X, Y] -> [Z, M, nx, ny]."""
    if tuple(stack.shape[-2:]) == size:
        return stack
    shrinking = size[0] <= stack.shape[-2] and size[1] <= stack.shape[-1]
    if mode == "area" and shrinking:
        return F.interpolate(stack, size=size, mode="area")
    return F.interpolate(stack, size=size, mode="bilinear", align_corners=False, antialias=shrinking)


def _pad_to_frame(stack: torch.Tensor, geometry: SliceGeometry, resolution: int, value: float) -> torch.Tensor:
    px, py = geometry.pad
    nx, ny = geometry.resized
    return F.pad(stack, (py, resolution - ny - py, px, resolution - nx - px), value=value)


def preprocess_patient(patient: Patient, label_values: list[int], config: PreprocessConfig,
                       first_row: int = 0) -> PreprocessedCase:
    """Load, normalise and resize every axial slice of ``patient``.

    Returns images float32 [Z, M, R, R] in [-1, 1] (modalities in ``patient.modalities`` order),
    labels uint8 [Z, R, R] (indices into ``label_values``) and the `CaseInfo` needed to put slices
    back into a volume.  ``first_row`` is the row of slice 0 in a cache (recorded in the info).
    """
    images = patient.load_images()  # [M, X, Y, Z]
    try:
        label = label_indices(patient.load_label(), label_values)  # [X, Y, Z]
    except ValueError as exc:
        raise PatientError(patient.case_id, patient.label_file, str(exc)) from exc
    m, x, y, z = images.shape
    resolution = config.resolution
    windows = {name: intensity_window(images[i], config.norm_for(name)) for i, name in enumerate(patient.modalities)}
    normalised = np.stack([normalise(images[i], windows[name]) for i, name in enumerate(patient.modalities)])
    geometry = slice_geometry((x, y), patient.spacing[:2], resolution)
    image_stack = torch.from_numpy(np.ascontiguousarray(normalised.transpose(3, 0, 1, 2)))  # [Z, M, X, Y]
    image_stack = _resize_images(image_stack, geometry.resized, config.image_interpolation)
    image_stack = _pad_to_frame(image_stack, geometry, resolution, -1.0).clamp_(-1.0, 1.0)
    label_stack = torch.from_numpy(np.ascontiguousarray(label.transpose(2, 0, 1)))[:, None].float()  # [Z, 1, X, Y]
    if tuple(label_stack.shape[-2:]) != geometry.resized:
        label_stack = F.interpolate(label_stack, size=geometry.resized, mode="nearest-exact")
    label_stack = _pad_to_frame(label_stack, geometry, resolution, 0.0)[:, 0]
    assert image_stack.shape == (z, m, resolution, resolution)
    assert label_stack.shape == (z, resolution, resolution)
    slice_affine = frame_affine(patient.affine, patient.shape, geometry)
    info = CaseInfo(
        case_id=patient.case_id, n_slices=z, first_row=first_row, original_shape=tuple(patient.shape),
        original_affine=np.asarray(patient.affine).tolist(), original_spacing=tuple(patient.spacing),
        resized=geometry.resized, pad=geometry.pad, slice_affine=slice_affine.tolist(),
        slice_spacing=(geometry.pixel_mm, geometry.pixel_mm, float(patient.spacing[2])),
        intensity_window=windows)
    return PreprocessedCase(image_stack.numpy(), label_stack.round().to(torch.uint8).numpy(), info)


def restore_frame(stack: np.ndarray, geometry: SliceGeometry, shape_xy: tuple[int, int], labels: bool) -> np.ndarray:
    """Inverse of the in-plane resize and pad: [C, R, R, S] on the slice frame -> [C, X, Y, S] on the
    original in-plane grid (bilinear for images, nearest neighbour for label indices or values)."""
    C, R, _, S = stack.shape
    (px, py), (nx, ny) = geometry.pad, geometry.resized
    cropped = torch.from_numpy(np.ascontiguousarray(stack[:, px:px + nx, py:py + ny].transpose(3, 0, 1, 2)))
    if labels:
        restored = F.interpolate(cropped.float(), size=tuple(shape_xy), mode="nearest-exact").round()
    else:
        restored = _resize_images(cropped.float(), tuple(shape_xy), "bilinear")
    assert restored.shape == (S, C, *shape_xy)
    return restored.numpy().transpose(1, 2, 3, 0).astype(stack.dtype)


def restore_labels(slices: np.ndarray, info: CaseInfo) -> np.ndarray:
    """Inverse of the resize for labels: [Z, R, R] label indices -> [X, Y, Z] on the original grid.

    Crops the padding and resizes back with nearest neighbour (e.g. to evaluate a U-Net in the
    patient's original space).
    """
    z, r, _ = slices.shape
    assert z == info.n_slices, f"expected {info.n_slices} slices, got {z}"
    geometry = SliceGeometry(info.resized, info.pad, 0.0)
    return restore_frame(slices.transpose(1, 2, 0)[None], geometry, info.original_shape[:2], labels=True)[0]


@dataclass(frozen=True)
class RealGrid:
    """The real patients' grid that generated slices are written back onto: the canonical shape
    (X, Y, Z) and affine of the typical training patient and how its files are stored."""

    shape: tuple[int, int, int]
    affine: np.ndarray
    style: StoredStyle

    def to_dict(self) -> dict:
        return {"shape": list(self.shape), "affine": np.asarray(self.affine).tolist(), "style": self.style.to_dict()}

    @staticmethod
    def from_dict(raw: object, where: str) -> "RealGrid":
        """The grid recorded by `to_dict`; ValueError naming ``where`` for anything else."""
        try:
            shape = tuple(int(n) for n in raw["shape"])
            affine = np.asarray(raw["affine"], dtype=np.float64)
            style = StoredStyle.from_dict(raw["style"], where)
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{where}: not a real-grid record ({exc})") from None
        if len(shape) != 3 or not all(1 <= n <= MAX_GRID_SIDE for n in shape) or affine.shape != (4, 4) \
                or not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
            raise ValueError(f"{where}: not a real-grid record (shape {shape}, affine {affine.shape})")
        return RealGrid(shape, affine, style)  # type: ignore[arg-type]

    def restore(self, images: np.ndarray, labels: np.ndarray, first_slice: int = 0
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Generated volumes on the slice frame -> the real in-plane grid.

        images [M, R, R, S] intensities, labels [R, R, S] real values -> images [M, X, Y, S] (bilinear),
        labels [X, Y, S] (nearest) and their canonical affine: the real one, its origin moved to slice
        ``first_slice`` (the first one training kept).
        """
        R = images.shape[1]
        spacing = np.linalg.norm(self.affine[:3, :3], axis=0)
        geometry = slice_geometry(self.shape[:2], (float(spacing[0]), float(spacing[1])), R)
        affine = np.array(self.affine, dtype=np.float64)
        affine[:3, 3] += first_slice * affine[:3, 2]
        return (restore_frame(images, geometry, self.shape[:2], labels=False),
                restore_frame(labels[None], geometry, self.shape[:2], labels=True)[0], affine)


MAX_GRID_SIDE = 65536
