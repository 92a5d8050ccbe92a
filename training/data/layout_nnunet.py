"""nnU-Net v2 raw layout: ``imagesTr/CASE_XXXX<ending>`` (one file per channel XXXX; NIfTI, or .png for 2D images),
``labelsTr/CASE<ending>`` and ``dataset.json`` with ``channel_names``, ``labels``, ``file_ending``;
stylepair's synthetic datasets add ``instancesTr/CASE<ending>`` (object ids) with ``instance_labels``,
and ``pixel_spacing`` for PNG cases."""
from __future__ import annotations

import re
import warnings
from pathlib import Path

from training.data.errors import DatasetError, DataWarning, PatientError
from training.data.images2d import PNG_ENDING
from training.data.layout_radiograph import instance_labels, pixel_spacing
from training.data.nifti import NIFTI_ENDINGS
from training.data.scan import (CaseFiles, LayoutScan, check_num_training, check_unique_case_ids,
                                parse_channel_names, parse_labels, read_dataset_json)

_CHANNEL_FILE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


def _files_with_ending(folder: Path, ending: str) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.name.endswith(ending) and not p.name.startswith("."))


def scan_nnunet(root: Path) -> LayoutScan:
    """Read an nnU-Net v2 raw dataset; cases are the label files, channels found by name."""
    meta = read_dataset_json(root)
    json_path = root / "dataset.json"
    names_key = "channel_names" if "channel_names" in meta else "modality"
    if names_key not in meta:
        raise DatasetError(json_path, "nnU-Net dataset.json needs a 'channel_names' mapping")
    if "labels" not in meta:
        raise DatasetError(json_path, "dataset.json needs a 'labels' mapping")
    modalities = parse_channel_names(meta[names_key], json_path, names_key)
    label_values, label_names = parse_labels(meta["labels"], json_path)
    ending = meta.get("file_ending", ".nii.gz")
    if ending not in (*NIFTI_ENDINGS, PNG_ENDING):
        raise DatasetError(json_path, f"file_ending {ending!r} is not supported (NIfTI {list(NIFTI_ENDINGS)}, or "
                                      f"{PNG_ENDING} for 2D images)")
    spacing = pixel_spacing(meta, json_path) if ending == PNG_ENDING else None
    images_dir, labels_dir = root / "imagesTr", root / "labelsTr"
    for folder in (images_dir, labels_dir):
        if not folder.is_dir():
            raise DatasetError(folder, "folder is missing (nnU-Net v2 raw needs imagesTr/ and labelsTr/)")
    label_files = {p.name[: -len(ending)]: p for p in _files_with_ending(labels_dir, ending)}
    channel_files: dict[str, dict[int, Path]] = {}
    for path in _files_with_ending(images_dir, ending):
        match = _CHANNEL_FILE.match(path.name[: -len(ending)])
        if match is None:
            warnings.warn(f"{path}: ignored, not named CASE_XXXX{ending}", DataWarning, stacklevel=2)
            continue
        channel_files.setdefault(match["case"], {})[int(match["channel"])] = path
    check_num_training(meta, len(label_files), json_path, "labelsTr/")
    check_unique_case_ids(sorted(set(label_files) | set(channel_files)), images_dir)
    cases: list[CaseFiles] = []
    for case_id in sorted(set(label_files) | set(channel_files)):
        found = channel_files.get(case_id, {})
        files = [found.get(c, images_dir / f"{case_id}_{c:04d}{ending}") for c in range(len(modalities))]
        objects = root / "instancesTr" / f"{case_id}{ending}"
        case = CaseFiles(case_id, files, [None] * len(modalities), label_files.get(case_id), pixel_spacing=spacing,
                         instance_file=objects if objects.is_file() else None)
        missing = [c for c in range(len(modalities)) if c not in found]
        extra = sorted(c for c in found if c >= len(modalities))
        if missing:
            c = missing[0]
            case.problem = PatientError(case_id, files[c], f"missing modality '{modalities[c]}' (channel {c:04d})")
        elif extra:
            case.problem = PatientError(case_id, found[extra[0]],
                                        f"channel {extra[0]:04d} is not declared in dataset.json "
                                        f"({len(modalities)} channels)")
        elif case.label_file is None:
            case.problem = PatientError(case_id, labels_dir / f"{case_id}{ending}", "label file is missing")
        cases.append(case)
    return LayoutScan(str(meta.get("name", root.name)), "nnunet", modalities, label_values, label_names,
                      cases, [json_path], instance_labels(meta, json_path))
