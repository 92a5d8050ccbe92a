"""Per-patient checks: geometry from headers (cheap) and voxel contents (reads the volumes)."""
from __future__ import annotations

import dataclasses

import numpy as np

from training.data.errors import PatientError
from training.data.images2d import is_image2d_name
from training.data.nifti import VolumeHeader, read_header
from training.data.records import IntensityStats, Patient, PatientStats
from training.data.scan import CaseFiles

# Affines may differ by float noise between files written by different tools (float32 sform vs
# float64 qform); anything above this fraction of a voxel is a real disagreement.
AFFINE_TOLERANCE_VOXELS = 1e-3
PERCENTILES = (0.5, 50.0, 99.5)


def _same_grid(reference: VolumeHeader, other: VolumeHeader, case_id: str) -> None:
    if other.shape != reference.shape:
        raise PatientError(case_id, other.path,
                           f"shape {other.shape} disagrees with {reference.path.name} {reference.shape} "
                           "(canonical orientation)")
    tolerance = max(1e-4, AFFINE_TOLERANCE_VOXELS * min(reference.spacing))
    difference = float(np.max(np.abs(other.affine - reference.affine)))
    if difference > tolerance:
        raise PatientError(case_id, other.path,
                           f"affine disagrees with {reference.path.name} by up to {difference:.4g} mm "
                           f"(tolerance {tolerance:.2g} mm)")


def build_patient(case: CaseFiles, modalities: list[str]) -> Patient:
    """Read the headers of a case's files and check they describe one grid; returns the `Patient`.

    Raises `PatientError` naming the file for: a problem found while scanning, unreadable or
    non-NIfTI files, a wrong number of channels, or shapes/affines that disagree.
    """
    if case.problem is not None:
        raise case.problem
    assert case.label_file is not None
    headers: dict = {}
    for path in dict.fromkeys(case.image_files):
        headers[path] = read_header(path, case.case_id, case.pixel_spacing)
    for path, header in headers.items():
        if header.n_channels != case.file_channels:
            what = f"{case.file_channels} modalities along the 4th axis" if case.file_channels > 1 else "a 3D volume"
            raise PatientError(case.case_id, path, f"expected {what}, found {header.n_channels} channel(s)")
    reference = headers[case.image_files[0]]
    label = read_header(case.label_file, case.case_id, case.pixel_spacing)
    if label.n_channels != 1:
        raise PatientError(case.case_id, case.label_file, f"label volume must be 3D, found {label.n_channels} channels")
    label = _with_affine_of(label, reference)
    others = [label]
    if case.instance_file is not None:
        others.append(_with_affine_of(read_header(case.instance_file, case.case_id, case.pixel_spacing), reference))
    for header in [*headers.values(), *others]:
        _same_grid(reference, header, case.case_id)
    return Patient(case_id=case.case_id, image_files=list(case.image_files), label_file=case.label_file,
                   affine=reference.affine, spacing=reference.spacing, shape=reference.shape,
                   modalities=list(modalities), image_channels=list(case.image_channels),
                   instance_file=case.instance_file)


def _with_affine_of(header: VolumeHeader, image: VolumeHeader) -> VolumeHeader:
    """A 2D mask (PNG) takes the spacing of its DICOM image: a PNG cannot store one."""
    if is_image2d_name(header.path) and is_image2d_name(image.path):
        return dataclasses.replace(header, affine=image.affine)
    return header


def intensity_stats(volume: np.ndarray) -> IntensityStats:
    """Summary of a volume over its foreground (voxels above the volume minimum; all if none)."""
    foreground = volume[volume > volume.min()]
    values = foreground if foreground.size else volume.ravel()
    p_low, median, p_high = np.percentile(values, PERCENTILES)
    return IntensityStats(float(values.min()), float(values.max()), float(p_low), float(median), float(p_high))


def check_voxels(patient: Patient, label_values: list[int] | None) -> PatientStats:
    """Read every volume of ``patient``; check finite images, integer labels within ``label_values``.

    label_values None skips the membership check (labels being discovered).  Returns the label
    voxel counts and per-modality intensity statistics.  Raises `PatientError` naming the file.
    """
    images = patient.load_images()
    label = patient.load_label()
    values, counts = np.unique(label, return_counts=True)
    if label_values is not None:
        undeclared = sorted(set(values.tolist()) - set(label_values))
        if undeclared:
            raise PatientError(patient.case_id, patient.label_file,
                               f"label values {undeclared} are not declared (declared: {label_values})")
    intensity = {name: intensity_stats(images[m]) for m, name in enumerate(patient.modalities)}
    return PatientStats({int(v): int(c) for v, c in zip(values, counts)}, intensity)
