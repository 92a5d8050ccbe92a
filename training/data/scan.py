"""What a layout reader finds on disk before any volume is opened, and ``dataset.json`` parsing.

Each layout module turns a folder into a `LayoutScan`: modality names, declared labels and, per
case, the files that hold its modalities and label.  Problems confined to one case are attached
to that case (`CaseFiles.problem`) so that ``on_error="skip"`` can leave it out; problems with the
dataset as a whole raise `DatasetError` at once.
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from training.data.errors import DatasetError, PatientError

DATASET_JSON = "dataset.json"


@dataclass
class CaseFiles:
    """Files of one case: image_files[m] holds modality m (channel image_channels[m] of a 4D file,
    or None for a 3D file); label_file is the segmentation; file_channels: channels every image
    file must hold (1 = 3D files); pixel_spacing: the spacing (mm) of 2D images whose files do not
    say; instance_file: object ids (0 = none) of a layout that has them."""

    case_id: str
    image_files: list[Path]
    image_channels: list[int | None]
    label_file: Path | None
    problem: PatientError | None = None
    file_channels: int = 1
    pixel_spacing: tuple[float, float] | None = None
    instance_file: Path | None = None


@dataclass
class LayoutScan:
    """A dataset folder as a layout reader sees it.  label_values None = discover from the label files."""

    name: str
    layout: str
    modalities: list[str]
    label_values: list[int] | None
    label_names: list[str] | None
    cases: list[CaseFiles]
    extra_files: list[Path] = field(default_factory=list)
    instance_labels: list[str] = field(default_factory=list)


def read_dataset_json(root: Path) -> dict:
    """Parse ``root/dataset.json``; DatasetError when it is missing, not JSON, or not an object."""
    path = root / DATASET_JSON
    if not path.is_file():
        raise DatasetError(path, "dataset.json is missing (MSD and nnU-Net v2 layouts need one)")
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetError(path, f"dataset.json is not valid JSON ({exc})") from exc
    if not isinstance(meta, dict):
        raise DatasetError(path, "dataset.json must hold a JSON object")
    return meta


def parse_channel_names(entry: object, path: Path, key: str) -> list[str]:
    """``{"0": "T1", "1": "T2"}`` -> ``["T1", "T2"]``; keys must be the integers 0..M-1."""
    if not isinstance(entry, dict) or not entry:
        raise DatasetError(path, f"'{key}' must be a non-empty mapping like {{\"0\": \"T1\"}}")
    try:
        indexed = {int(k): str(v) for k, v in entry.items()}
    except ValueError as exc:
        raise DatasetError(path, f"'{key}' keys must be channel numbers 0..M-1, found {list(entry)}") from exc
    if sorted(indexed) != list(range(len(indexed))):
        raise DatasetError(path, f"'{key}' keys must be 0..{len(indexed) - 1} without gaps, found {sorted(indexed)}")
    names = [indexed[i] for i in range(len(indexed))]
    duplicates = [n for n, c in Counter(names).items() if c > 1]
    if duplicates:
        raise DatasetError(path, f"'{key}' names a modality twice: {duplicates}")
    return names


def parse_labels(entry: object, path: Path) -> tuple[list[int], list[str]]:
    """Label map in MSD form ``{"0": "background"}`` or nnU-Net form ``{"background": 0}``.

    Returns (values sorted ascending, names in the same order).  Value 0 must be present
    (background); region-based nnU-Net labels (lists of values) are rejected.
    """
    if not isinstance(entry, dict) or not entry:
        raise DatasetError(path, "'labels' must be a non-empty mapping")
    pairs: list[tuple[int, str]] = []
    for key, value in entry.items():
        if isinstance(value, (list, tuple)):
            raise DatasetError(path, f"label {key!r} is region-based ({value}); "
                                     "only plain integer labels are supported")
        if isinstance(value, bool):
            raise DatasetError(path, f"label {key!r} has a non-integer value {value!r}")
        if isinstance(value, int):  # nnU-Net v2: name -> value
            pairs.append((value, str(key)))
            continue
        try:  # MSD: "value" -> name
            pairs.append((int(key), str(value)))
        except ValueError as exc:
            raise DatasetError(path, f"cannot read label entry {key!r}: {value!r} "
                                     "(expected \"0\": \"name\" or \"name\": 0)") from exc
    values = [v for v, _ in pairs]
    duplicates = sorted(v for v, c in Counter(values).items() if c > 1)
    if duplicates:
        raise DatasetError(path, f"'labels' declares value(s) {duplicates} more than once")
    if 0 not in values:
        raise DatasetError(path, f"'labels' must declare the background value 0, found {sorted(values)}")
    if min(values) < 0:
        raise DatasetError(path, f"'labels' values must be >= 0, found {sorted(values)}")
    if len(values) > 255:
        raise DatasetError(path, f"at most 255 label classes are supported, found {len(values)}")
    pairs.sort()
    return [v for v, _ in pairs], [n for _, n in pairs]


def check_unique_case_ids(case_ids: list[str], where: Path) -> None:
    """DatasetError listing duplicate case ids (compared case-insensitively: file systems differ)."""
    counts = Counter(c.lower() for c in case_ids)
    duplicates = sorted(c for c in case_ids if counts[c.lower()] > 1)
    if duplicates:
        raise DatasetError(where, f"duplicate case ids: {sorted(set(duplicates))}")


def check_num_training(meta: dict, found: int, path: Path, what: str) -> None:
    """DatasetError when dataset.json's numTraining disagrees with the number of cases found."""
    declared = meta.get("numTraining")
    if declared is None:
        return
    if not isinstance(declared, int) or declared != found:
        raise DatasetError(path, f"dataset.json says numTraining={declared!r} but {what} has {found} case(s)")
