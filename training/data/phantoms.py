"""Procedural multi-modal "phantom patients": the embedded default dataset, needing no download.

Each patient is a 3D head: scalp, skull, CSF (subarachnoid space and ventricles), grey and white
matter with smooth random shape variation, and 0-2 lesions made of a core (enhancing rim, sometimes
a necrotic centre) inside a surrounding oedema.  The tissue map is rendered in four MR-like
contrasts (T1, T1ce, T2, FLAIR), each tissue with its own mean intensity per contrast, with
per-patient intensity jitter, fine texture, partial-volume blur, a smooth multiplicative bias field
and Gaussian noise; air is exactly 0.  Patient i depends only on (seed, i).  A *shifted* acquisition
(`SHIFTED`: other tissue contrasts, a stronger bias field, more noise, thicker slices) renders the
same anatomy as another scanner would: an out-of-distribution test set.  The label map uses
`PHANTOM_LABELS`.  Volumes are written in MSD, nnU-Net v2 or folder-per-patient layout so they go
through exactly the readers real data uses.
"""
from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from scipy import ndimage

from training.data.fsutils import atomic_write_json, build_folder, file_lock, user_cache_root
from training.data.nifti import write_nifti

GENERATOR_VERSION = 3
PHANTOM_MODALITIES = ("T1", "T1ce", "T2", "FLAIR")
PHANTOM_LABELS = ("background", "csf", "grey_matter", "white_matter", "oedema", "core")
FIELD_OF_VIEW_MM = (220.0, 220.0, 150.0)

# Rendering tissues (finer than the labels: scalp/skull are background, the core has two parts).
AIR, SCALP, SKULL, CSF, GREY, WHITE, OEDEMA, RIM, NECROSIS = range(9)
TISSUE_TO_LABEL = np.array([0, 0, 0, 1, 2, 3, 4, 5, 5], dtype=np.uint8)
# Mean intensity of each tissue (columns, order above) in each contrast (rows, PHANTOM_MODALITIES).
TISSUE_MEANS = np.array([
    # air scalp skull  csf  grey white oedema  rim necrosis
    [0.0, 900.0, 120.0, 250.0, 550.0, 760.0, 450.0, 430.0, 240.0],    # T1: fat bright, CSF dark
    [0.0, 900.0, 120.0, 260.0, 570.0, 780.0, 470.0, 1050.0, 250.0],   # T1ce: enhancing rim
    [0.0, 600.0, 80.0, 1000.0, 640.0, 450.0, 860.0, 700.0, 920.0],    # T2: fluid bright
    [0.0, 700.0, 80.0, 110.0, 600.0, 450.0, 960.0, 760.0, 620.0],     # FLAIR: CSF suppressed
], dtype=np.float32)


@dataclass(frozen=True)
class Acquisition:
    """How a phantom is imaged: contrast_shift scales each tissue mean per contrast by a fixed
    factor in [1 - shift, 1 + shift] (one draw for the whole acquisition), bias the sd of the log bias
    field, noise the noise sd as a fraction of the contrast's brightest tissue, slice_blur the
    Gaussian sigma across slices in voxels (thick slices)."""

    name: str = "standard"
    contrast_shift: float = 0.0
    bias: float = 0.12
    noise: float = 0.025
    slice_blur: float = 0.3


STANDARD = Acquisition()
SHIFTED = Acquisition("shifted", contrast_shift=0.25, bias=0.3, noise=0.06, slice_blur=1.2)


@dataclass(frozen=True)
class PhantomPatient:
    """One generated patient: images float32 [4, X, Y, Z] (arbitrary MR units, air = 0), label uint8
    [X, Y, Z] with values indexing `PHANTOM_LABELS`, affine 4x4 (RAS, mm)."""

    images: np.ndarray
    label: np.ndarray
    affine: np.ndarray


def phantom_spacing(shape: tuple[int, int, int]) -> np.ndarray:
    """Voxel size (mm) that fits the fixed field of view into ``shape``: anatomy is size-independent."""
    return np.array(FIELD_OF_VIEW_MM) / np.array(shape, dtype=np.float64)


def _upsampling_matrix(cells: int, size: int) -> np.ndarray:
    """[size, cells] matrix of cubic-spline interpolation from ``cells`` to ``size`` points, corners aligned."""
    if cells == 1:
        return np.ones((size, 1))
    return ndimage.zoom(np.eye(cells), (size / cells, 1.0), order=3, mode="nearest", grid_mode=False)


def _smooth_field(rng: np.random.Generator, shape: tuple[int, int, int], cells: tuple[int, int, int]) -> np.ndarray:
    """Smooth random field of unit standard deviation: cubic interpolation of a coarse noise grid."""
    coarse = rng.standard_normal(cells)
    # Cubic-spline upsampling is linear and separable: one small [size, cells] matrix per axis.
    wx, wy, wz = (_upsampling_matrix(c, s) for c, s in zip(cells, shape))
    field = np.einsum("ia,jb,kc,abc->ijk", wx, wy, wz, coarse, optimize=True)
    return ((field - field.mean()) / (field.std() + 1e-8)).astype(np.float32)


def _coordinates_mm(shape: tuple[int, int, int]) -> list[np.ndarray]:
    spacing = phantom_spacing(shape)
    axes = [(np.arange(s) - (s - 1) / 2.0) * d for s, d in zip(shape, spacing)]
    return [a.astype(np.float32) for a in np.meshgrid(*axes, indexing="ij")]


def _anatomy(rng: np.random.Generator, shape: tuple[int, int, int]) -> np.ndarray:
    """Tissue map [X, Y, Z] of a head with randomly varying shape, cortex and ventricles."""
    x, y, z = _coordinates_mm(shape)
    semi_axes = np.array([72.0, 92.0, 68.0]) * rng.uniform(0.92, 1.06, size=3)
    radius = np.sqrt((x / semi_axes[0]) ** 2 + (y / semi_axes[1]) ** 2 + ((z + 4.0) / semi_axes[2]) ** 2)
    radius = radius / (1.0 + 0.05 * _smooth_field(rng, shape, (5, 5, 4)))  # lumpy skull outline
    tissue = np.full(shape, AIR, dtype=np.uint8)
    tissue[radius < 1.0] = SCALP
    tissue[radius < 0.93 - 0.01 * rng.random()] = SKULL
    tissue[radius < 0.86] = CSF
    brain = radius < 0.82 - 0.03 * rng.random()
    tissue[brain] = GREY
    # Folded grey/white boundary: a coarse lobe-scale and a finer gyrus-scale undulation.
    gyri = 0.06 * _smooth_field(rng, shape, (9, 9, 5)) + 0.05 * _smooth_field(rng, shape, (17, 17, 8))
    tissue[brain & (radius < rng.uniform(0.60, 0.68) + gyri)] = WHITE
    sulci = _smooth_field(rng, shape, (17, 17, 8)) > 1.2  # CSF reaching into the cortex
    tissue[brain & (radius > 0.70) & sulci] = CSF
    for side in (-1.0, 1.0):  # deep grey nuclei (thalamus / basal ganglia) beside the ventricles
        nucleus = ((x - side * rng.uniform(14.0, 20.0)) / 9.0) ** 2 + ((y - rng.uniform(-8.0, 4.0)) / 13.0) ** 2 \
            + ((z - 2.0) / 10.0) ** 2
        tissue[brain & (nucleus < rng.uniform(0.6, 1.1))] = GREY
    ventricle_size = rng.uniform(0.6, 1.5)  # atrophy varies between patients
    offset = rng.uniform(7.0, 12.0)
    for side in (-1.0, 1.0):
        v = ((x - side * offset) / (5.0 * ventricle_size)) ** 2 + ((y - rng.uniform(-6, 6)) / 22.0) ** 2 \
            + ((z - 8.0) / (9.0 * ventricle_size)) ** 2
        tissue[brain & (v < 1.0)] = CSF
    return tissue


def _add_lesions(rng: np.random.Generator, tissue: np.ndarray) -> None:
    """Paint 0-2 lesions (oedema around a core with an enhancing rim) into the brain, in place."""
    shape = tissue.shape
    x, y, z = _coordinates_mm(shape)
    brain = np.isin(tissue, (GREY, WHITE))  # parenchyma: lesions spare CSF spaces and the skull
    inner = np.argwhere(ndimage.binary_erosion(brain, iterations=max(1, shape[0] // 16)))
    n_lesions = int(rng.choice([0, 1, 1, 1, 2]))
    if inner.size == 0:
        return
    for _ in range(n_lesions):
        centre = inner[rng.integers(len(inner))]
        cx, cy, cz = x[tuple(centre)], y[tuple(centre)], z[tuple(centre)]
        stretch = rng.uniform(0.75, 1.3, size=3)
        distance = np.sqrt(((x - cx) / stretch[0]) ** 2 + ((y - cy) / stretch[1]) ** 2 + ((z - cz) / stretch[2]) ** 2)
        distance = distance / (1.0 + 0.25 * _smooth_field(rng, shape, (6, 6, 4)))  # irregular margins
        core_radius = rng.uniform(8.0, 20.0)
        oedema = brain & (distance < core_radius * rng.uniform(1.5, 2.4))
        core = brain & (distance < core_radius)
        tissue[oedema & ~np.isin(tissue, (RIM, NECROSIS))] = OEDEMA
        tissue[core] = RIM
        if rng.random() < 0.6:
            tissue[core & (distance < core_radius * rng.uniform(0.3, 0.65))] = NECROSIS


def _render(rng: np.random.Generator, tissue: np.ndarray, acquisition: Acquisition = STANDARD) -> np.ndarray:
    """Four contrasts [4, X, Y, Z] from the tissue map: jittered means, texture, blur, bias, noise."""
    shape = tissue.shape
    head = tissue != AIR
    images = np.empty((len(PHANTOM_MODALITIES), *shape), dtype=np.float32)
    scale = rng.uniform(0.8, 1.25)  # scanner gain differs between patients
    # one fixed contrast change for the whole acquisition (the same for every patient of it)
    shift = np.random.default_rng(len(acquisition.name)).uniform(-1, 1, TISSUE_MEANS.shape)
    tissue_means = TISSUE_MEANS * (1.0 + acquisition.contrast_shift * shift)
    for c in range(len(PHANTOM_MODALITIES)):
        means = tissue_means[c] * scale * (1.0 + 0.05 * rng.standard_normal(TISSUE_MEANS.shape[1]))
        volume = means[tissue] * (1.0 + 0.05 * _smooth_field(rng, shape, (16, 16, 8)))
        volume = ndimage.gaussian_filter(volume, sigma=(0.6, 0.6, acquisition.slice_blur))  # partial volume
        bias = np.exp(acquisition.bias * _smooth_field(rng, shape, (3, 3, 2)))
        noise = rng.standard_normal(shape).astype(np.float32) * (acquisition.noise * float(TISSUE_MEANS[c].max()) * scale)
        volume = np.clip(volume * bias + noise, 0.0, None)
        images[c] = np.where(head, volume, 0.0)
    return images


def generate_phantom_patient(seed: int, index: int, shape: tuple[int, int, int] = (64, 64, 24),
                             acquisition: Acquisition = STANDARD) -> PhantomPatient:
    """Patient ``index`` of the phantom population ``seed`` at ``shape`` (X, Y, Z >= 4 each), imaged
    with ``acquisition`` (the anatomy does not depend on it).

    Deterministic: the same (seed, index, shape, acquisition) always gives the same arrays.
    """
    shape = tuple(int(s) for s in shape)  # type: ignore[assignment]
    if len(shape) != 3 or min(shape) < 4:
        raise ValueError(f"phantom shape must be 3 sizes >= 4, got {shape}")
    rng = np.random.default_rng([seed, index, GENERATOR_VERSION])
    tissue = _anatomy(rng, shape)
    _add_lesions(rng, tissue)
    images = _render(rng, tissue, acquisition)
    spacing = phantom_spacing(shape)
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = -(np.array(shape) - 1) / 2.0 * spacing
    return PhantomPatient(images, TISSUE_TO_LABEL[tissue], affine)


def _write_patient(out: Path, layout: str, case_id: str, patient: PhantomPatient) -> dict:
    if layout == "msd":
        write_nifti(out / "imagesTr" / f"{case_id}.nii.gz", np.moveaxis(patient.images, 0, -1), patient.affine)
        write_nifti(out / "labelsTr" / f"{case_id}.nii.gz", patient.label, patient.affine)
        return {"image": f"./imagesTr/{case_id}.nii.gz", "label": f"./labelsTr/{case_id}.nii.gz"}
    if layout == "nnunet":
        for c in range(len(PHANTOM_MODALITIES)):
            write_nifti(out / "imagesTr" / f"{case_id}_{c:04d}.nii.gz", patient.images[c], patient.affine)
        write_nifti(out / "labelsTr" / f"{case_id}.nii.gz", patient.label, patient.affine)
        return {}
    for c, name in enumerate(PHANTOM_MODALITIES):
        write_nifti(out / case_id / f"{case_id}_{name}.nii.gz", patient.images[c], patient.affine)
    write_nifti(out / case_id / f"{case_id}_seg.nii.gz", patient.label, patient.affine)
    return {}


def _dataset_json(layout: str, n_patients: int, training: list[dict], shape: tuple, seed: int,
                  acquisition: Acquisition = STANDARD) -> dict:
    description = f"stylepair phantom patients v{GENERATOR_VERSION}, seed {seed}, shape {list(shape)}"
    if acquisition != STANDARD:
        description += f", {acquisition.name} acquisition"
    if layout == "msd":
        return {"name": "Phantom", "description": description, "tensorImageSize": "4D",
                "modality": {str(i): m for i, m in enumerate(PHANTOM_MODALITIES)},
                "labels": {str(i): n for i, n in enumerate(PHANTOM_LABELS)},
                "numTraining": n_patients, "numTest": 0, "training": training, "test": []}
    return {"name": "Phantom", "description": description,
            "channel_names": {str(i): m for i, m in enumerate(PHANTOM_MODALITIES)},
            "labels": {n: i for i, n in enumerate(PHANTOM_LABELS)},
            "numTraining": n_patients, "file_ending": ".nii.gz"}


def write_phantom_dataset(out_dir: str | Path, n_patients: int = 20, shape: tuple[int, int, int] = (64, 64, 24),
                          seed: int = 0, layout: str = "msd", acquisition: Acquisition = STANDARD) -> Path:
    """Write ``n_patients`` phantom patients to ``out_dir`` in ``layout`` ("msd", "nnunet", "folder"),
    imaged with ``acquisition`` (`SHIFTED`: an out-of-distribution test set).

    Case ids are ``phantom_000``...; the folder is built next to ``out_dir`` and renamed into place,
    so it appears complete or not at all.  Raises FileExistsError if ``out_dir`` is a non-empty
    folder.  Returns ``out_dir``.
    """
    if layout not in ("msd", "nnunet", "folder"):
        raise ValueError(f"layout must be 'msd', 'nnunet' or 'folder', got {layout!r}")
    if n_patients < 1:
        raise ValueError(f"n_patients must be >= 1, got {n_patients}")

    def fill(tmp: Path) -> None:
        training = [_write_patient(tmp, layout, f"phantom_{i:03d}",
                                   generate_phantom_patient(seed, i, shape, acquisition))
                    for i in range(n_patients)]
        if layout == "folder":
            labels = {"labels": {n: i for i, n in enumerate(PHANTOM_LABELS)},
                      "channel_names": {str(i): m for i, m in enumerate(PHANTOM_MODALITIES)}}
            atomic_write_json(tmp / "dataset.json", labels)
        else:
            atomic_write_json(tmp / "dataset.json", _dataset_json(layout, n_patients, training, shape, seed,
                                                                  acquisition))

    return build_folder(out_dir, fill)


_DEFAULT_NAME = re.compile(r"^(msd|nnunet|folder)_n(\d+)_s(\d+)_(\d+)x(\d+)x(\d+)_v(\d+)(?:_(\w+))?$")


def default_phantom_name(n_patients: int, shape: tuple[int, int, int], seed: int, layout: str = "msd",
                         acquisition: Acquisition = STANDARD) -> str:
    """The folder name `default_phantom_dataset` gives these phantoms (read back by
    `default_phantom_spec`)."""
    name = f"{layout}_n{n_patients}_s{seed}_{'x'.join(str(s) for s in shape)}_v{GENERATOR_VERSION}"
    return name if acquisition == STANDARD else f"{name}_{acquisition.name}"


def default_phantom_spec(folder: str | Path) -> dict | None:
    """The `default_phantom_dataset` arguments that made ``folder`` (by its name), so the same patients
    can be regenerated bit for bit; None for any other folder or another generator version."""
    match = _DEFAULT_NAME.match(Path(folder).name)
    if match is None or int(match.group(7)) != GENERATOR_VERSION:
        return None
    acquisitions = {a.name: a for a in (STANDARD, SHIFTED)}
    if (match.group(8) or STANDARD.name) not in acquisitions:
        return None
    n, seed, x, y, z = map(int, match.groups()[1:6])
    return {"n_patients": n, "shape": (x, y, z), "seed": seed, "layout": match.group(1),
            "acquisition": acquisitions[match.group(8) or STANDARD.name]}


def default_phantom_dataset(n_patients: int = 20, shape: tuple[int, int, int] = (64, 64, 24), seed: int = 0,
                            layout: str = "msd", cache_dir: str | Path | None = None,
                            acquisition: Acquisition = STANDARD) -> Path:
    """The demo dataset: generated once into ``<cache>/phantoms/...`` (see `user_cache_root`), reused after.

    Safe when several processes ask at once (file lock).  Returns the dataset folder.
    """
    name = default_phantom_name(n_patients, shape, seed, layout, acquisition)
    return cached_phantoms(name, lambda out: write_phantom_dataset(out, n_patients, shape, seed, layout, acquisition),
                           cache_dir)


def cached_phantoms(name: str, write: Callable[[Path], object], cache_dir: str | Path | None = None) -> Path:
    """``<cache>/phantoms/NAME``, made once by ``write(folder)`` and reused after (a folder holding a
    dataset.json is complete: the writers rename it into place).  Safe when several processes ask at
    once (file lock)."""
    root = Path(cache_dir) if cache_dir is not None else user_cache_root()
    out = root / "phantoms" / name
    marker = out / "dataset.json"
    if marker.is_file():
        return out
    with file_lock(root / "phantoms" / f".{name}.lock"):
        if not marker.is_file():
            if out.exists():  # left over from an interrupted run before the rename (cannot be complete)
                shutil.rmtree(out)
            write(out)
    json.loads(marker.read_text())
    return out
