"""A record of patients whose voxels already passed validation, so a dataset is read once, not at
every start of every stage.

The record (``voxel-checks-<root hash>.json`` in the dataset's cache location) maps a key made of
the patient's files' (path, size, mtime_ns), its modality list and the declared label values to
the `PatientStats` found.  Touching any file changes the key, so the patient is checked again.
Only successful checks are recorded.  A missing, unreadable or unwritable record just means the
voxels are read again.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from training.data.fsutils import atomic_write_json, default_cache_location
from training.data.records import IntensityStats, Patient, PatientStats

MEMO_FORMAT = 1


def _patient_key(patient: Patient, label_values: list[int] | None) -> str:
    files = [[str(Path(f).resolve()), f.stat().st_size, f.stat().st_mtime_ns] for f in patient.source_files()]
    payload = [files, patient.image_channels, patient.modalities, label_values]
    return hashlib.sha256(json.dumps(payload).encode()).hexdigest()


def _stats_to_json(stats: PatientStats) -> dict:
    return {"label_voxels": {str(v): n for v, n in stats.label_voxels.items()},
            "intensity": {m: list(vars(s).values()) for m, s in stats.intensity.items()}}


def _stats_from_json(values: dict) -> PatientStats:
    return PatientStats({int(v): int(n) for v, n in values["label_voxels"].items()},
                        {m: IntensityStats(*s) for m, s in values["intensity"].items()})


class VoxelCheckMemo:
    """Successful voxel checks of one dataset root, kept in a JSON file."""

    def __init__(self, root: Path, cache_dir: str | Path | None = None):
        root_key = hashlib.sha256(str(Path(root).resolve()).encode()).hexdigest()[:8]
        self.path = default_cache_location(Path(root), cache_dir) / f"voxel-checks-{root_key}.json"
        self.entries: dict[str, dict] = {}
        self.changed = False
        try:
            values = json.loads(self.path.read_text())
            if values.get("format") == MEMO_FORMAT:
                self.entries = dict(values["patients"])
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            self.entries = {}

    def lookup(self, patient: Patient, label_values: list[int] | None) -> PatientStats | None:
        """The recorded stats of ``patient`` if its files are unchanged since the check, else None."""
        entry = self.entries.get(_patient_key(patient, label_values))
        try:
            return None if entry is None else _stats_from_json(entry)
        except (KeyError, TypeError, ValueError):
            return None

    def record(self, patient: Patient, label_values: list[int] | None, stats: PatientStats) -> None:
        """Remember that ``patient`` passed with ``stats`` (written by `save`)."""
        self.entries[_patient_key(patient, label_values)] = _stats_to_json(stats)
        self.changed = True

    def save(self) -> None:
        """Write the record atomically if it changed; best effort (read-only places are fine)."""
        if not self.changed:
            return
        try:
            atomic_write_json(self.path, {"format": MEMO_FORMAT, "patients": self.entries})
        except OSError:
            pass
