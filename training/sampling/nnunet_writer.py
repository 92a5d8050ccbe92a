"""Writing the nnU-Net v2 raw layout the way the real dataset stores its own files.

    DIR/imagesTr/SYN_0000_0000.nii.gz ...   one file per modality (channel suffix _000m); .png for 2D
    DIR/labelsTr/SYN_0000.nii.gz            real label values
    DIR/instancesTr/SYN_0000.nii.gz         object ids (0: none), for synthesisers that insert objects
    DIR/dataset.json                        channel_names, labels (name -> int), numTraining, file_ending
                                            (and pixel_spacing, instance_labels for 2D / object datasets)

A case is written file by file to temporary names and renamed, the label file last.  Before a file is
written, its name and SHA-256 go into DIR/.stylepair-writes.json: `NnUNetRawWriter.owns` tells the
writer's own files from anything else in the folder.
"""
from __future__ import annotations

import gzip
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np

from training.data.fsutils import atomic_write_bytes, atomic_write_json
from training.data.images2d import PNG_ENDING, png_bytes
from training.data.nifti import StoredStyle, cast_voxels, stored_nifti

FILE_ENDING = ".nii.gz"
PARTIAL_SUFFIX = ".partial"
WRITES_RECORD = ".stylepair-writes.json"  # name -> SHA-256 of every file the writer wrote


def _nifti_gz_bytes(image: nib.Nifti1Image) -> bytes:
    """A gzipped single-file NIfTI-1; byte-identical for identical inputs."""
    return gzip.compress(image.to_bytes(), compresslevel=1, mtime=0)  # nibabel's default level


class NnUNetRawWriter:
    """Writes cases of an nnU-Net v2 raw dataset: imagesTr/CASE_000m.nii.gz (one file per channel),
    labelsTr/CASE.nii.gz and dataset.json (channel_names, labels name -> int, numTraining,
    file_ending); .png files for a 2D style.  instance_labels: the classes an instancesTr/ folder
    numbers object by object (recorded in dataset.json)."""

    def __init__(self, root: Path, modalities: Sequence[str], label_values: Sequence[int],
                 label_names: Sequence[str], style: StoredStyle = StoredStyle(), descrip: str = "stylepair",
                 instance_labels: Sequence[str] = ()):
        self.root = Path(root)
        self.modalities = list(modalities)
        self.label_values = list(label_values)
        self.label_names = list(label_names)
        self.style, self.descrip = style, descrip
        # 2D sources (PNG or DICOM radiographs) are written as PNG, nnU-Net v2's format for 2D images
        self.file_ending = PNG_ENDING if style.file_format == "png" else FILE_ENDING
        self.pixel_spacing: list[float] | None = None  # a PNG cannot hold it: dataset.json does
        self.instance_labels = list(instance_labels)
        fits = np.iinfo(np.dtype(style.label_dtype))
        values = self.label_values or [0]
        self.label_dtype = (style.label_dtype if fits.min <= min(values) and max(values) <= fits.max
                            else "uint8" if max(values) <= 255 else "int16")
        if len(set(self.label_names)) != len(self.label_names):
            raise ValueError(f"nnU-Net needs unique label names, got {self.label_names}")

    @property
    def images_dir(self) -> Path:
        return self.root / "imagesTr"

    @property
    def labels_dir(self) -> Path:
        return self.root / "labelsTr"

    def case_files(self, case_id: str) -> list[Path]:
        """The files of one case: one image per modality, then the label file (written last)."""
        images = [self.images_dir / f"{case_id}_{m:04d}{self.file_ending}" for m in range(len(self.modalities))]
        return images + [self.labels_dir / f"{case_id}{self.file_ending}"]

    def write_case(self, case_id: str, images: np.ndarray, labels: np.ndarray, affine: np.ndarray) -> None:
        """images [M, X, Y, Z] float32, labels [X, Y, Z] real label values, both canonical (RAS+), affine
        4x4 voxel -> mm; stored in the writer's `StoredStyle` (orientation, dtypes, codes) with its descrip.

        Each file is written to a temporary name and renamed, the label file last, so a case with
        a label file has all its images.
        """
        M = len(self.modalities)
        if images.shape[0] != M or images.shape[1:] != labels.shape or labels.ndim != 3:
            raise ValueError(f"case {case_id}: images {images.shape} and labels {labels.shape} do not "
                             f"match [{M}, X, Y, Z] and [X, Y, Z]")
        self.images_dir.mkdir(parents=True, exist_ok=True)
        self.labels_dir.mkdir(parents=True, exist_ok=True)
        *image_paths, label_path = self.case_files(case_id)
        if self.file_ending == PNG_ENDING:
            self.pixel_spacing = [float(v) for v in np.linalg.norm(np.asarray(affine)[:3, :2], axis=0)]
        contents = [(path, self.encode(images[m], affine, self.style.image_dtype)) for m, path in enumerate(image_paths)]
        contents.append((label_path, self.encode(labels, affine, self.label_dtype)))
        self._remember(contents)
        for path, data in contents:
            self._write(path, data)

    def encode(self, volume: np.ndarray, affine: np.ndarray, dtype: str) -> bytes:
        """The file bytes of a canonical volume [X, Y, Z] stored in this writer's style as ``dtype``:
        gzipped NIfTI, or a PNG of the one slice of a 2D image (integers rounded and clipped to ``dtype``)."""
        if self.file_ending == PNG_ENDING:
            if volume.ndim != 3 or volume.shape[2] != 1:
                raise ValueError(f"a PNG holds one 2D image, got a volume of shape {volume.shape}")
            return png_bytes(cast_voxels(volume[:, :, 0], dtype if np.dtype(dtype).kind in "iu" else "uint16"))
        return _nifti_gz_bytes(stored_nifti(volume, affine, self.style, dtype, self.descrip))

    def _written(self) -> dict[str, str]:
        path = self.root / WRITES_RECORD
        try:
            record = json.loads(path.read_text()) if path.is_file() else {}
        except json.JSONDecodeError:
            return {}  # an unreadable record proves nothing: no file counts as ours
        return record if isinstance(record, dict) else {}

    def _remember(self, contents: list[tuple[Path, bytes]]) -> None:
        """Record the names and content hashes of files about to be written (write-ahead)."""
        record = self._written()
        record.update({str(path.relative_to(self.root)): hashlib.sha256(data).hexdigest() for path, data in contents})
        atomic_write_json(self.root / WRITES_RECORD, record)

    def write_file(self, path: Path, data: bytes) -> None:
        """Record ``path``'s name and content hash, then write it atomically."""
        self._remember([(path, data)])
        self._write(path, data)

    @staticmethod
    def _write(path: Path, data: bytes) -> None:
        # the temporary name ends in PARTIAL_SUFFIX: an interrupted write is found and removed on resume
        atomic_write_bytes(path, data, temporary=path.with_name(path.name + PARTIAL_SUFFIX))

    def owns(self, path: Path) -> bool:
        """Whether this writer wrote ``path`` with its present content (name and SHA-256 recorded)."""
        expected = self._written().get(str(Path(path).relative_to(self.root)))
        return expected is not None and path.is_file() and hashlib.sha256(path.read_bytes()).hexdigest() == expected

    def foreign_files(self, case_ids: set[str]) -> list[Path]:
        """Files of ``case_ids`` present on disk that this writer did not write (a user's files)."""
        return [path for case_id in sorted(case_ids) for path in self.case_files(case_id)
                if path.exists() and not self.owns(path)]

    def remove_case(self, case_id: str) -> None:
        """Delete the files of ``case_id`` that this writer wrote (`owns`); others are left alone."""
        for path in self.case_files(case_id):
            if self.owns(path):
                path.unlink()

    def existing_case_ids(self) -> set[str]:
        """Case ids with at least one file in imagesTr or labelsTr."""
        ids = set()
        for path in list(self.labels_dir.glob(f"*{self.file_ending}")) + list(self.images_dir.glob(f"*{self.file_ending}")):
            name = path.name[: -len(self.file_ending)]
            ids.add(name[:-5] if path.parent == self.images_dir and name[-5:-4] == "_" else name)
        return ids

    def remove_partial_files(self) -> None:
        """Delete temporary files left by an interrupted write."""
        for folder in (self.images_dir, self.labels_dir, self.root):
            for path in folder.glob(f"*{PARTIAL_SUFFIX}"):
                path.unlink()

    def dataset_json(self, num_training: int, description: str) -> dict:
        return {
            "channel_names": {str(m): name for m, name in enumerate(self.modalities)},
            "labels": {name: int(value) for name, value in zip(self.label_names, self.label_values)},
            "numTraining": int(num_training),
            "file_ending": self.file_ending,
            "name": self.root.name,
            "description": description,
            **({"pixel_spacing": self.pixel_spacing} if self.pixel_spacing is not None else {}),
            **({"instance_labels": self.instance_labels} if self.instance_labels else {}),
        }

    def write_dataset_json(self, num_training: int, description: str) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.root / "dataset.json", self.dataset_json(num_training, description))
