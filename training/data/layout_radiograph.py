"""Radiograph layout: 2D images with label maps (and optionally instance maps), one image = one patient.

    DATASET/images/CASE.png | CASE.dcm    the radiograph (8/16-bit greyscale PNG, or DICOM)
    DATASET/masks/CASE.png                label map: every pixel a label value of dataset.json
    DATASET/instances/CASE.png            optional: object ids (0 = none; 16-bit for > 255 objects)
    DATASET/dataset.json                  optional: {"name", "modality": "CXR",
                                          "labels": {"0": "background", "1": "lung", ...},
                                          "instance_labels": ["wire", "device"], "pixel_spacing": [0.7, 0.7]}

Without ``labels`` the label values are discovered from the masks; ``instance_labels`` names the
classes whose objects are counted and evaluated one by one (instance segmentation).  Pixel spacing
(mm, rows and columns) comes from DICOM (PixelSpacing / ImagerPixelSpacing), else ``pixel_spacing``,
else 1 mm.  Internally an image is the volume [rows, columns, 1] (`training.data.images2d`).
"""
from __future__ import annotations

import warnings
from pathlib import Path

from training.data.errors import DatasetError, DataWarning, PatientError
from training.data.images2d import DICOM_ENDING, IMAGE2D_ENDINGS, PNG_ENDING
from training.data.scan import (DATASET_JSON, CaseFiles, LayoutScan, check_num_training, check_unique_case_ids,
                                parse_labels, read_dataset_json)

IMAGES, MASKS, INSTANCES = "images", "masks", "instances"
DEFAULT_MODALITY = "XR"


def is_radiograph_dataset(root: Path) -> bool:
    """Whether ``root`` has the ``images/`` and ``masks/`` folders of this layout."""
    return (root / IMAGES).is_dir() and (root / MASKS).is_dir()


def _stem(path: Path) -> str:
    return path.name[: -len(Path(path.name).suffix)]


def _visible(folder: Path, endings: tuple[str, ...]) -> dict[str, Path]:
    files: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith("."):
            continue
        if not path.name.lower().endswith(endings):
            warnings.warn(f"{path}: ignored, not a {' or '.join(endings)} file", DataWarning, stacklevel=3)
            continue
        files[_stem(path)] = path
    return files


def pixel_spacing(meta: dict, json_path: Path) -> tuple[float, float] | None:
    """dataset.json's ``pixel_spacing`` [rows_mm, columns_mm] (None when absent)."""
    spacing = meta.get("pixel_spacing")
    if spacing is not None and not (isinstance(spacing, list) and len(spacing) == 2 and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in spacing)):
        raise DatasetError(json_path, f"pixel_spacing must be [rows_mm, columns_mm] > 0, got {spacing!r}")
    return None if spacing is None else (float(spacing[0]), float(spacing[1]))


def instance_labels(meta: dict, json_path: Path) -> list[str]:
    """dataset.json's ``instance_labels``: the label names whose objects are instances ([] when absent)."""
    names = meta.get("instance_labels", [])
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise DatasetError(json_path, f"instance_labels must be a list of label names, got {names!r}")
    return list(names)


def read_radiograph_meta(root: Path) -> dict:
    """dataset.json of a radiograph dataset ({} when there is none), its fields checked."""
    if not (root / DATASET_JSON).is_file():
        return {}
    meta = read_dataset_json(root)
    json_path = root / DATASET_JSON
    pixel_spacing(meta, json_path)
    instance_labels(meta, json_path)
    if not isinstance(meta.get("modality", DEFAULT_MODALITY), str):
        raise DatasetError(json_path, f"modality must be a name such as 'CXR', got {meta['modality']!r}")
    return meta


def scan_radiograph(root: Path) -> LayoutScan:
    """Pair ``images/`` with ``masks/`` (and ``instances/``) by file name; one case per image."""
    meta = read_radiograph_meta(root)
    json_path = root / DATASET_JSON
    label_values = label_names = None
    if "labels" in meta:
        label_values, label_names = parse_labels(meta["labels"], json_path)
        unknown = sorted(set(meta.get("instance_labels", [])) - set(label_names))
        if unknown:
            raise DatasetError(json_path, f"instance_labels {unknown} are not among the labels {label_names}")
    spacing = pixel_spacing(meta, json_path)
    images = _visible(root / IMAGES, IMAGE2D_ENDINGS)
    masks = _visible(root / MASKS, (PNG_ENDING,))
    instances = _visible(root / INSTANCES, (PNG_ENDING,)) if (root / INSTANCES).is_dir() else {}
    check_unique_case_ids(sorted(images), root / IMAGES)
    check_num_training(meta, len(images), json_path, f"{IMAGES}/")
    if not images:
        raise DatasetError(root / IMAGES, f"no images ({PNG_ENDING} or {DICOM_ENDING})")
    for case_id in sorted(set(masks) - set(images)):
        warnings.warn(f"{masks[case_id]}: ignored, no image {case_id} in {IMAGES}/", DataWarning, stacklevel=2)
    cases = []
    for case_id, image in images.items():
        case = CaseFiles(case_id, [image], [None], masks.get(case_id), pixel_spacing=spacing,
                         instance_file=instances.get(case_id))
        if case.label_file is None:
            case.problem = PatientError(case_id, root / MASKS / f"{case_id}{PNG_ENDING}", "mask is missing")
        cases.append(case)
    modality = meta.get("modality", DEFAULT_MODALITY)
    extra = [json_path] if json_path.is_file() else []
    return LayoutScan(str(meta.get("name", root.name)), "radiograph", [modality], label_values, label_names,
                      cases, extra, instance_labels(meta, json_path))
