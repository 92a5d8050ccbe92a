"""Typed records for a dataset on disk: `Patient`, `Dataset` and per-patient voxel statistics."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from training.data.errors import PatientError
from training.data.nifti import read_header, read_voxels


CT_NAMES = ("ct",)  # modality names (lower case) that mean CT: Hounsfield units, windowed not percentiled


@dataclass(frozen=True)
class IntensityStats:
    """Intensity summary of one modality of one patient, over its foreground (voxels > minimum)."""

    minimum: float
    maximum: float
    p_low: float  # 0.5th percentile
    median: float
    p_high: float  # 99.5th percentile


@dataclass(frozen=True)
class PatientStats:
    """What the voxel check learned: label voxel counts (by real value) and intensities per modality."""

    label_voxels: dict[int, int]
    intensity: dict[str, IntensityStats]


@dataclass
class Patient:
    """One patient: M modality volumes and a label volume that share one canonical (RAS) grid.

    image_files[m] holds modality m; for 4D files (MSD) the same file appears for every modality and
    image_channels[m] is the index along its 4th axis (None for a 3D file).  affine (4x4), spacing
    (mm, 3) and shape (X, Y, Z) describe the canonical grid; axial slices run along the last axis.
    """

    case_id: str
    image_files: list[Path]
    label_file: Path
    affine: np.ndarray
    spacing: tuple[float, float, float]
    shape: tuple[int, int, int]
    modalities: list[str]
    image_channels: list[int | None]
    stats: PatientStats | None = None
    instance_file: Path | None = None   # object ids (0 = none), in layouts that store them

    def load_images(self) -> np.ndarray:
        """All modalities as float32 [M, X, Y, Z] in canonical orientation, original intensities.

        Raises `PatientError` naming the file if a volume holds NaN or infinite voxels.
        """
        volumes: list[np.ndarray] = []
        loaded: dict[Path, np.ndarray] = {}
        for path, channel in zip(self.image_files, self.image_channels):
            if path not in loaded:
                loaded[path] = read_voxels(read_header(path, self.case_id), self.case_id)
            data = loaded[path]
            volume = data if channel is None else data[..., channel]
            if volume.shape != tuple(self.shape):
                raise PatientError(self.case_id, path,
                                   f"voxel array has shape {volume.shape}, expected {tuple(self.shape)}")
            bad = ~np.isfinite(volume)
            if bad.any():
                where = tuple(int(i) for i in np.argwhere(bad)[0])
                raise PatientError(self.case_id, path, f"{int(bad.sum())} NaN/inf voxel(s), first at voxel {where}")
            volumes.append(volume)
        images = np.stack(volumes, axis=0).astype(np.float32, copy=False)
        assert images.shape == (len(self.modalities), *self.shape)
        return images

    def load_label(self) -> np.ndarray:
        """The label volume as int32 [X, Y, Z] of the dataset's real label values (canonical orientation).

        Raises `PatientError` naming the file for NaN/inf or non-integer label voxels.
        """
        data = read_voxels(read_header(self.label_file, self.case_id), self.case_id)
        if data.ndim != 3:
            raise PatientError(self.case_id, self.label_file, f"label volume must be 3D, found shape {data.shape}")
        if not np.all(np.isfinite(data)):
            raise PatientError(self.case_id, self.label_file, "label volume holds NaN/inf voxels")
        rounded = np.rint(data)
        off = np.abs(data - rounded) > 1e-3
        if off.any():
            examples = ", ".join(f"{v:g}" for v in np.unique(data[off])[:3])
            raise PatientError(self.case_id, self.label_file, f"non-integer label values (e.g. {examples})")
        return rounded.astype(np.int32)

    def load_instances(self) -> np.ndarray | None:
        """Object ids int32 [X, Y, Z] (0 = no object), or None when the layout stores none."""
        if self.instance_file is None:
            return None
        return np.rint(read_voxels(read_header(self.instance_file, self.case_id), self.case_id)).astype(np.int32)

    def source_files(self) -> list[Path]:
        """The distinct files this patient is read from (images first, then the label, the instances)."""
        extra = [] if self.instance_file is None else [self.instance_file]
        return list(dict.fromkeys([*self.image_files, self.label_file, *extra]))


@dataclass
class Dataset:
    """A validated dataset: modality names, label values/names and the usable patients.

    label_values are the real values in the label files, sorted, background (0) first; label index
    i inside the project means label_values[i].  skipped lists (case_id, reason) for patients left
    out with ``on_error="skip"``.  extra_files are dataset-level files (e.g. dataset.json) that are
    part of the fingerprint.  instance_labels: the label names whose objects are instances, counted
    and evaluated one by one (radiograph layout: dataset.json's ``instance_labels``).
    """

    name: str
    root: Path
    layout: str
    modalities: list[str]
    label_values: list[int]
    label_names: list[str]
    patients: list[Patient]
    skipped: list[tuple[str, str]] = field(default_factory=list)
    extra_files: list[Path] = field(default_factory=list)
    instance_labels: list[str] = field(default_factory=list)

    @property
    def case_ids(self) -> list[str]:
        """Case ids of the usable patients, in dataset order (sorted)."""
        return [p.case_id for p in self.patients]

    def patient(self, case_id: str) -> Patient:
        """The patient with ``case_id`` (KeyError when absent or skipped)."""
        for p in self.patients:
            if p.case_id == case_id:
                return p
        raise KeyError(f"no patient {case_id!r} in dataset {self.name} ({self.root})")

    def fingerprint(self) -> str:
        """sha256 over (relative path, size, mtime_ns) of every source file, plus modality/label meaning.

        Changes whenever a file is touched, added or removed, or patients are skipped differently.
        """
        entries = []
        files = [*self.extra_files] + [f for p in self.patients for f in p.source_files()]
        for path in dict.fromkeys(files):
            st = Path(path).stat()
            try:
                rel = str(Path(path).resolve().relative_to(self.root.resolve()))
            except ValueError:
                rel = str(Path(path).resolve())
            entries.append([rel, st.st_size, st.st_mtime_ns])
        payload = {
            "files": entries,
            "cases": [[p.case_id, [str(f) for f in p.image_files], p.image_channels] for p in self.patients],
            "modalities": self.modalities,
            "label_values": self.label_values,
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


MEANING_FIELDS = (("modalities", "channels"), ("label_values", "label values"), ("label_names", "label names"))


def meaning_differences(expected: object, found: object) -> list[str]:
    """How ``found`` differs from ``expected`` in what its channels and labels mean -- names and order of
    the channels, label values, label names -- as phrases ("channels ['t1'] instead of ['T1']"); empty
    when they mean the same.  Both are anything with ``modalities``, ``label_values`` and
    ``label_names``: a `Dataset`, a snapshot's `DatasetInfo`, a synthesis log.  The one check between
    real data and synthetic data, used by sampling, the synthetic writer and the study."""
    return [f"{what} {list(getattr(found, field))} instead of {list(getattr(expected, field))}"
            for field, what in MEANING_FIELDS if list(getattr(found, field)) != list(getattr(expected, field))]
