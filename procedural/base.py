"""The shared interface of the procedural synthesisers: real training patients + a seed -> synthetic
patients, on 3D volumes with any number of modalities and any label set.

    patients = [VolumePatient(case_id, images [M, X, Y, Z] float32 (real units), labels [X, Y, Z]
                int32 (real label values), affine 4x4), ...]        # the training patients only
    synthesiser = build_synthesiser("lesion-insertion", config, patients, LabelSet(names, values), modalities)
    synthetic = [synthesiser.make(j, np.random.default_rng([seed, j])) for j in range(count)]

Patient j depends only on (the training patients, the config, seed, j), so the first k of a larger
run are the k of a smaller one.  Anatomy in configs is named by label *name*; `LabelSet.value`
turns a name into the dataset's value and refuses unknown names with the valid ones listed.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, Sequence

import numpy as np


class ProceduralError(ValueError):
    """A procedural synthesiser cannot work with this config or these patients (the message says why)."""


@dataclass(frozen=True)
class LabelSet:
    """The dataset's labels: names[i] has value values[i]; background (value 0) first."""

    names: tuple[str, ...]
    values: tuple[int, ...]

    def value(self, name: str, key: str = "label") -> int:
        """The value of label ``name``; `ProceduralError` naming ``key`` and the valid names otherwise."""
        if name not in self.names:
            raise ProceduralError(f"{key}: the dataset has no label {name!r}; its labels are {list(self.names)}")
        return self.values[self.names.index(name)]

    def mask(self, labels: np.ndarray, names: Sequence[str], key: str) -> np.ndarray:
        """bool [X, Y, Z]: voxels of ``labels`` that carry any of the named labels."""
        return np.isin(labels, [self.value(n, key) for n in names])


@dataclass
class VolumePatient:
    """One patient on its canonical grid.

    images float32 [M, X, Y, Z] in the modality's own units; labels int32 [X, Y, Z] real label
    values; affine 4x4 voxel -> mm; instances int32 [X, Y, Z] object ids (0: none) for synthesisers
    that insert objects, else None; sources: case ids of the real patients it was made from;
    objects: one record per inserted object (id, label, kind, voxels).
    """

    case_id: str
    images: np.ndarray
    labels: np.ndarray
    affine: np.ndarray
    instances: np.ndarray | None = None
    sources: tuple[str, ...] = ()
    objects: list[dict] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or self.images.shape[1:] != self.labels.shape:
            raise ProceduralError(f"patient {self.case_id}: images {self.images.shape} and labels "
                                  f"{self.labels.shape} do not match [M, X, Y, Z] and [X, Y, Z]")

    @property
    def spacing(self) -> np.ndarray:
        """Voxel size in mm [3] (column norms of the affine)."""
        return np.linalg.norm(self.affine[:3, :3], axis=0)


class Synthesiser(Protocol):
    """Makes synthetic patient ``index`` with ``rng`` from the training patients it was built with."""

    def make(self, index: int, rng: np.random.Generator) -> VolumePatient:
        ...


def foreground_range(images: np.ndarray) -> np.ndarray:
    """[M, 2]: the 0.5th and 99.5th percentile of each modality over voxels above its minimum (the
    body), the intensity scale that random contrasts are drawn in."""
    ranges = []
    for volume in images:
        body = volume[volume > volume.min()]
        body = body if body.size else volume.reshape(-1)
        low, high = np.percentile(body, [0.5, 99.5])
        ranges.append((float(low), float(max(high, low + 1e-6))))
    return np.array(ranges)


def body_mask(images: np.ndarray) -> np.ndarray:
    """bool [X, Y, Z]: voxels where some modality is above its minimum (not air outside the body)."""
    minimum = images.reshape(len(images), -1).min(1)
    return np.any(images > minimum[:, None, None, None], axis=0)
