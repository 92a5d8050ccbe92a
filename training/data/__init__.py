"""Data in: dataset readers (MSD, nnU-Net v2 raw, folder-per-patient), validation, preprocessing,
the on-disk slice cache, patient-level splits and the embedded phantom patients.

Typical use::

    from training.data import (PreprocessConfig, SliceDataset, default_phantom_dataset, load_dataset,
                               make_splits, open_slice_cache)

    dataset = load_dataset(default_phantom_dataset())          # or any MSD / nnU-Net / folder dataset
    cache = open_slice_cache(dataset, PreprocessConfig(resolution=64, drop_end_slices=2))
    splits = make_splits(dataset.case_ids)                     # hold-out test + 5 folds
    train = SliceDataset(cache, cache.training_rows(case_ids=splits.fold(0).train))
    image, label, position = train[0]                          # [M,64,64] in [-1,1], [64,64], 0-d

Conventions: volumes are reoriented to RAS; axial slices run along the last axis and a slice's
rows/columns index x/y; labels inside the project are indices 0..L-1 into ``label_values``.
Bad data raises `DatasetError` (dataset-level, always) or `PatientError`/`PatientErrors`
(one patient; ``on_error="skip"`` leaves it out with a `DataWarning`).
"""
import importlib

# Where each public name lives.  Modules are imported on first use (PEP 562), so that a command that
# only reads headers (``stylepair-data inspect``) does not pay for torch, which the cache needs.
_HOMES = {
    "training.data.cache": ("IntensityScale", "SliceBatch", "SliceCache", "cache_location", "open_slice_cache"),
    "training.data.errors": ("DataError", "DatasetError", "DataWarning", "PatientError", "PatientErrors"),
    "training.data.loader": ("LAYOUTS", "detect_layout", "load_dataset"),
    "training.data.phantoms": ("PHANTOM_LABELS", "PHANTOM_MODALITIES", "default_phantom_dataset",
                               "generate_phantom_patient", "write_phantom_dataset"),
    "training.data.preprocess": ("CaseInfo", "IntensityNorm", "PreprocessConfig", "PreprocessedCase",
                                 "load_preprocess_config", "preprocess_config_from_dict", "preprocess_patient",
                                 "restore_labels"),
    "training.data.records": ("Dataset", "IntensityStats", "Patient", "PatientStats"),
    "training.data.splits": ("Fold", "Splits", "load_or_make_splits", "make_splits"),
    "training.data.torch_dataset": ("SliceDataset",),
}
_MODULE_OF = {name: module for module, names in _HOMES.items() for name in names}


def __getattr__(name: str):
    if name not in _MODULE_OF:
        raise AttributeError(f"module 'training.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(_MODULE_OF[name]), name)
    globals()[name] = value  # later look-ups are plain attribute reads
    return value


__all__ = [
    "CaseInfo", "DataError", "DataWarning", "Dataset", "DatasetError", "Fold", "IntensityNorm", "IntensityScale",
    "IntensityStats", "LAYOUTS", "PHANTOM_LABELS", "PHANTOM_MODALITIES", "Patient", "PatientError",
    "PatientErrors", "PatientStats", "PreprocessConfig", "PreprocessedCase", "SliceBatch", "SliceCache",
    "SliceDataset", "Splits", "cache_location", "default_phantom_dataset", "detect_layout",
    "generate_phantom_patient", "load_dataset", "load_or_make_splits", "load_preprocess_config", "make_splits",
    "open_slice_cache", "preprocess_config_from_dict", "preprocess_patient", "restore_labels", "write_phantom_dataset",
]
