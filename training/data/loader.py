"""`load_dataset`: detect the layout, scan, validate every patient, and return a `Dataset`."""
from __future__ import annotations

import warnings
from pathlib import Path

from tqdm.auto import tqdm

from training.data.errors import DatasetError, DataWarning, PatientError, PatientErrors
from training.data.layout_folder import patient_folders, scan_folder
from training.data.layout_msd import scan_msd
from training.data.layout_nnunet import scan_nnunet
from training.data.layout_radiograph import is_radiograph_dataset, scan_radiograph
from training.data.records import Dataset, Patient
from training.data.scan import DATASET_JSON, LayoutScan, read_dataset_json
from training.data import validation
from training.data.check_memo import VoxelCheckMemo

LAYOUTS = ("msd", "nnunet", "folder", "radiograph")


def detect_layout(root: Path) -> str:
    """Name the layout of ``root``: "msd", "nnunet" or "folder"; DatasetError when none fits.

    With an ``imagesTr/`` folder, dataset.json decides: ``channel_names`` means nnU-Net v2,
    ``modality`` with a ``training`` list means MSD.  Without one, patient sub-folders holding
    NIfTI files mean folder-per-patient, and ``images/`` with ``masks/`` 2D radiographs.
    """
    root = Path(root)
    if is_radiograph_dataset(root):
        return "radiograph"
    json_path = root / DATASET_JSON
    if (root / "imagesTr").is_dir():
        if not json_path.is_file():
            raise DatasetError(json_path, "dataset.json is missing (imagesTr/ found: MSD and nnU-Net v2 need one)")
        meta = read_dataset_json(root)
        if "channel_names" in meta:
            return "nnunet"
        if "modality" in meta:
            return "msd" if isinstance(meta.get("training"), list) else "nnunet"
        raise DatasetError(json_path, "unknown layout: dataset.json has neither 'channel_names' (nnU-Net v2) "
                                      "nor 'modality' (MSD)")
    if patient_folders(root):
        return "folder"
    shown = sorted(p.name for p in root.iterdir() if not p.name.startswith("."))[:5]
    raise DatasetError(root, f"unknown layout: no imagesTr/ (MSD, nnU-Net v2), no patient folders with "
                             f"NIfTI files and no images/ + masks/ (radiographs) (found {shown})")


def _scan(root: Path, layout: str, modalities: list[str] | None) -> LayoutScan:
    if layout == "folder":
        return scan_folder(root, modalities)
    if layout == "radiograph":
        return scan_radiograph(root)
    scan = scan_msd(root) if layout == "msd" else scan_nnunet(root)
    if modalities is not None:
        unknown = [m for m in modalities if m not in scan.modalities]
        if unknown:
            raise DatasetError(root / DATASET_JSON, f"modalities {unknown} not in the dataset ({scan.modalities})")
        keep = [scan.modalities.index(m) for m in modalities]
        for case in scan.cases:
            case.image_files = [case.image_files[i] for i in keep]
            case.image_channels = [case.image_channels[i] for i in keep]
        scan.modalities = list(modalities)
    return scan


def _discovered_labels(patients: list[Patient], root: Path) -> tuple[list[int], list[str]]:
    values = sorted({0} | {v for p in patients if p.stats for v in p.stats.label_voxels})
    if values[0] < 0 or values[-1] > 255 or len(values) > 255:
        raise DatasetError(root, f"label values must be 0..255 (at most 255 classes), found {values}")
    return values, ["background" if v == 0 else f"label_{v}" for v in values]


def _check_patients(scan: LayoutScan, check_voxels: bool, memo: VoxelCheckMemo,
                    name: str) -> tuple[list[Patient], list[PatientError]]:
    """Validate every scanned case: headers always, voxels when asked (or labels are undeclared)."""
    patients: list[Patient] = []
    errors: list[PatientError] = []
    for case in tqdm(scan.cases, desc=f"checking {name}", unit="patient", disable=None, leave=False):
        try:
            patient = validation.build_patient(case, scan.modalities)
            if check_voxels or scan.label_values is None:
                patient.stats = memo.lookup(patient, scan.label_values)
                if patient.stats is None:
                    patient.stats = validation.check_voxels(patient, scan.label_values)
                    memo.record(patient, scan.label_values, patient.stats)
            patients.append(patient)
        except PatientError as err:
            errors.append(err)
    memo.save()
    return patients, errors


def load_dataset(root: str | Path, layout: str = "auto", on_error: str = "fail",
                 modalities: list[str] | None = None, check_voxels: bool = True,
                 cache_dir: str | Path | None = None) -> Dataset:
    """Read and validate the dataset at ``root``.

    layout: "auto" (detect), "msd", "nnunet", "folder" or "radiograph".  on_error: "fail" raises `PatientErrors`
    listing every bad patient; "skip" leaves them out with a `DataWarning` and records
    (case_id, reason) in ``Dataset.skipped``.  Dataset-level problems always raise `DatasetError`.
    modalities: optional subset/order of modality names (required order for channel stacking).
    check_voxels: read every volume to check NaN/inf, integer labels and declared label values
    (and gather the statistics `stylepair-data inspect` prints); False checks headers only.
    Patients whose files are unchanged since they last passed are not read again (see
    `training.data.check_memo`; the record lives in the cache location, ``cache_dir`` if given).
    """
    root = Path(root)
    if on_error not in ("fail", "skip"):
        raise ValueError(f"on_error must be 'fail' or 'skip', got {on_error!r}")
    if not root.exists():
        raise DatasetError(root, "dataset folder does not exist")
    if not root.is_dir():
        raise DatasetError(root, "dataset path is not a folder")
    if not any(not p.name.startswith(".") for p in root.iterdir()):
        raise DatasetError(root, "dataset folder is empty")
    if layout == "auto":
        layout = detect_layout(root)
    if layout not in LAYOUTS:
        raise DatasetError(root, f"unknown layout {layout!r}; choose one of {LAYOUTS} or 'auto'")
    scan = _scan(root, layout, modalities)
    patients, errors = _check_patients(scan, check_voxels, VoxelCheckMemo(root, cache_dir), root.name)
    if errors and on_error == "fail":
        raise PatientErrors(errors)
    for err in errors:
        warnings.warn(f"skipping patient {err.case_id}: {err}", DataWarning, stacklevel=2)
    if not patients:
        reasons = "; ".join(str(err) for err in errors[:3]) + ("; …" if len(errors) > 3 else "")
        raise DatasetError(root, f"no usable patients ({len(errors)} skipped: {reasons})")
    label_values, label_names = scan.label_values, scan.label_names
    if label_values is None:
        label_values, label_names = _discovered_labels(patients, root)
    return Dataset(name=scan.name, root=root, layout=layout, modalities=list(scan.modalities),
                   label_values=list(label_values), label_names=list(label_names), patients=patients,
                   skipped=[(err.case_id, str(err)) for err in errors], extra_files=list(scan.extra_files),
                   instance_labels=list(scan.instance_labels))
