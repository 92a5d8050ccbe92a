"""Medical Segmentation Decathlon layout: 4D ``imagesTr/CASE.nii.gz`` (x, y, z, modality),
``labelsTr/CASE.nii.gz`` and ``dataset.json`` with ``modality``, ``labels`` and ``training``."""
from __future__ import annotations

import os
from pathlib import Path

from training.data.errors import DatasetError
from training.data.nifti import strip_nifti_ending
from training.data.scan import (CaseFiles, LayoutScan, check_num_training, check_unique_case_ids,
                                parse_channel_names, parse_labels, read_dataset_json)


FOLLOW_LINKS_ENV = "STYLEPAIR_FOLLOW_LINKS"  # allow symbolic links out of a dataset folder


def _resolve(root: Path, relative: object, json_path: Path, index: int, key: str) -> Path:
    """The file ``relative`` names, which must lie inside the dataset folder: an absolute path or a
    ``..`` leading out of it is refused (a dataset.json must not make the reader open other files
    of the machine), and so is a symbolic link out of it unless ``$STYLEPAIR_FOLLOW_LINKS`` is set."""
    if not isinstance(relative, str) or not relative:
        raise DatasetError(json_path, f"training[{index}] has no '{key}' path")
    if os.path.isabs(relative):
        raise DatasetError(json_path, f"training[{index}].{key} = {relative!r} is an absolute path; paths must be "
                                      f"relative to the dataset folder")
    path = Path(os.path.normpath(root / relative))
    if root.resolve() not in path.parent.resolve().parents and path.parent.resolve() != root.resolve():
        raise DatasetError(json_path, f"training[{index}].{key} = {relative!r} leads outside the dataset folder "
                                      f"{root}")
    if root.resolve() not in path.resolve().parents and not os.environ.get(FOLLOW_LINKS_ENV):
        raise DatasetError(json_path, f"training[{index}].{key} = {relative!r} is a link that leads outside the "
                                      f"dataset folder {root} (set {FOLLOW_LINKS_ENV}=1 to follow such links)")
    return path


def scan_msd(root: Path) -> LayoutScan:
    """Read an MSD ``dataset.json``; one case per ``training`` entry, modality m = channel m."""
    meta = read_dataset_json(root)
    json_path = root / "dataset.json"
    if "modality" not in meta:
        raise DatasetError(json_path, "MSD dataset.json needs a 'modality' mapping")
    if "labels" not in meta:
        raise DatasetError(json_path, "dataset.json needs a 'labels' mapping")
    modalities = parse_channel_names(meta["modality"], json_path, "modality")
    label_values, label_names = parse_labels(meta["labels"], json_path)
    training = meta.get("training")
    if not isinstance(training, list) or not training:
        raise DatasetError(json_path, "MSD dataset.json needs a non-empty 'training' list of {image, label}")
    check_num_training(meta, len(training), json_path, "the 'training' list")
    cases: list[CaseFiles] = []
    for index, entry in enumerate(training):
        if not isinstance(entry, dict):
            raise DatasetError(json_path, f"training[{index}] must be an object with 'image' and 'label'")
        image = _resolve(root, entry.get("image"), json_path, index, "image")
        label = _resolve(root, entry.get("label"), json_path, index, "label")
        channels: list[int | None] = list(range(len(modalities))) if len(modalities) > 1 else [None]
        cases.append(CaseFiles(strip_nifti_ending(image.name), [image] * len(modalities), channels, label,
                               file_channels=len(modalities)))
    check_unique_case_ids([c.case_id for c in cases], json_path)
    cases.sort(key=lambda c: c.case_id)
    return LayoutScan(str(meta.get("name", root.name)), "msd", modalities, label_values, label_names,
                      cases, [json_path])
