"""Folder-per-patient layout: ``PATIENT/PATIENT_<modality>.nii.gz`` + ``PATIENT/PATIENT_seg.nii.gz``
(the BraTS release format).  The ``PATIENT_`` prefix is optional.

Modality names come from the ``modalities`` argument, else from an optional ``dataset.json``
(``channel_names`` or ``modality``), else are discovered: the names present in more than half of
the patients, sorted.  Labels come from ``dataset.json`` when present, else are discovered from the
label files (see `training.data.loader`).
"""
from __future__ import annotations

import warnings
from collections import Counter
from pathlib import Path

from training.data.errors import DatasetError, DataWarning, PatientError
from training.data.nifti import is_nifti_name, strip_nifti_ending
from training.data.scan import (DATASET_JSON, CaseFiles, LayoutScan, check_unique_case_ids,
                                parse_channel_names, parse_labels, read_dataset_json)

LABEL_SUFFIXES = ("seg", "label", "labels", "mask", "segmentation")


def patient_folders(root: Path) -> list[Path]:
    """Visible sub-folders of ``root`` that contain at least one NIfTI file, sorted by name."""
    return sorted(p for p in root.iterdir()
                  if p.is_dir() and not p.name.startswith(".") and any(is_nifti_name(f.name) for f in p.iterdir()))


def _role_of(folder: Path, file: Path) -> str:
    """``P1/P1_t1.nii.gz -> "t1"``; ``P1/seg.nii.gz -> "seg"``."""
    stem = strip_nifti_ending(file.name)
    prefix = folder.name + "_"
    return stem[len(prefix):] if stem.startswith(prefix) and len(stem) > len(prefix) else stem


def _scan_patient(folder: Path) -> tuple[dict[str, Path], list[Path], PatientError | None]:
    roles: dict[str, Path] = {}
    labels: list[Path] = []
    problem = None
    for file in sorted(f for f in folder.iterdir() if is_nifti_name(f.name)):
        role = _role_of(folder, file)
        if role.lower() in LABEL_SUFFIXES:
            labels.append(file)
        elif role in roles:
            problem = PatientError(folder.name, file, f"modality '{role}' is stored twice ({roles[role].name})")
        else:
            roles[role] = file
    return roles, labels, problem


def _declared(root: Path) -> tuple[list[str] | None, list[int] | None, list[str] | None, list[Path]]:
    if not (root / DATASET_JSON).is_file():
        return None, None, None, []
    json_path = root / DATASET_JSON
    meta = read_dataset_json(root)
    modalities = None
    for key in ("channel_names", "modality"):
        if key in meta:
            modalities = parse_channel_names(meta[key], json_path, key)
            break
    values, names = parse_labels(meta["labels"], json_path) if "labels" in meta else (None, None)
    return modalities, values, names, [json_path]


def scan_folder(root: Path, modalities: list[str] | None = None) -> LayoutScan:
    """One case per patient folder; every patient must hold every modality and one label file."""
    folders = patient_folders(root)
    reserved = [f.name for f in folders if f.name in ("imagesTr", "labelsTr", "imagesTs")]
    if reserved:
        raise DatasetError(root, f"has {reserved[0]}/: an MSD or nnU-Net v2 dataset, not folder-per-patient")
    if not folders:
        raise DatasetError(root, "no patient folders holding NIfTI files (folder-per-patient layout)")
    check_unique_case_ids([f.name for f in folders], root)
    declared_modalities, label_values, label_names, extra_files = _declared(root)
    chosen_by_caller = modalities is not None
    scanned = {folder: _scan_patient(folder) for folder in folders}
    if modalities is None:
        modalities = declared_modalities
    if modalities is None:
        counts = Counter(role for roles, _, _ in scanned.values() for role in roles)
        modalities = sorted(role for role, n in counts.items() if n * 2 > len(folders))
        if not modalities:
            raise DatasetError(root, "cannot discover modality names consistently across patients "
                                     f"(found {dict(counts)})")
    cases: list[CaseFiles] = []
    for folder, (roles, labels, problem) in scanned.items():
        files = [roles.get(m, folder / f"{folder.name}_{m}.nii.gz") for m in modalities]
        case = CaseFiles(folder.name, files, [None] * len(modalities), labels[0] if len(labels) == 1 else None, problem)
        missing = [m for m in modalities if m not in roles]
        if case.problem is None and missing:
            case.problem = PatientError(folder.name, files[modalities.index(missing[0])],
                                        f"missing modality '{missing[0]}'")
        elif case.problem is None and not labels:
            case.problem = PatientError(folder.name, folder / f"{folder.name}_seg.nii.gz",
                                        f"label file is missing (expected one named *_{{{','.join(LABEL_SUFFIXES)}}})")
        elif case.problem is None and len(labels) > 1:
            case.problem = PatientError(folder.name, labels[1],
                                        f"more than one label file ({[p.name for p in labels]})")
        extra = sorted(set(roles) - set(modalities))
        if extra and not chosen_by_caller:
            warnings.warn(f"{folder}: ignoring file(s) of undeclared modalities {extra}", DataWarning, stacklevel=2)
        cases.append(case)
    return LayoutScan(root.name, "folder", list(modalities), label_values, label_names, cases, extra_files)
