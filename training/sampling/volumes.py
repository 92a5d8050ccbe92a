"""Volumes in the real data's units: what a synthetic dataset inherits from the real one
(`SourceDataset`) and the slices -> volumes conversion (`to_volumes`)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from training.data.cache import IntensityScale
from training.data.preprocess import RealGrid


# ----------------------------------------------------------------------------------------------
# What the synthetic dataset inherits from the real one


@dataclass
class SourceDataset:
    """The real training data as far as synthetic patients must imitate it.

    modalities: channel names (M); label_values: real label values, sorted, 0 first (L);
    label_names: one per label value; resolution: slice side H = W; intensity: one range per
    modality; affine: 4x4 voxel -> mm of a generated volume (slice grid i, j; slice index k);
    slices_per_patient: full stack lengths of the training patients, drawn from for each patient;
    drop_end_slices: slices training left out at each end of a stack (not generated).
    """

    modalities: list[str]
    label_values: list[int]
    label_names: list[str]
    resolution: int
    intensity: list[IntensityScale]
    affine: np.ndarray
    slices_per_patient: list[int]
    drop_end_slices: int = 0
    real_grid: RealGrid | None = None   # None: a run trained before the real grid was recorded

    def __post_init__(self) -> None:
        if len(self.intensity) != len(self.modalities):
            raise ValueError(
                f"{len(self.intensity)} intensity ranges for {len(self.modalities)} modalities "
                f"{self.modalities}")
        if len(self.label_names) != len(self.label_values) or len(self.label_values) < 2:
            raise ValueError(
                f"need >= 2 labels with one name each, got values {self.label_values} and names "
                f"{self.label_names}")
        if self.label_values[0] != 0 or sorted(self.label_values) != list(self.label_values):
            raise ValueError(f"label values must be sorted with background 0 first: {self.label_values}")
        if np.asarray(self.affine).shape != (4, 4):
            raise ValueError(f"affine must be 4x4, got shape {np.asarray(self.affine).shape}")
        if not self.slices_per_patient or min(self.slices_per_patient) < 1:
            raise ValueError(f"slices_per_patient must be non-empty positive counts: {self.slices_per_patient}")


# ----------------------------------------------------------------------------------------------
# Conversion to volumes


# Real slices are exactly -1 in every modality outside the body (the preprocessing clips all that
# lies below the window to -1); on the phantom slices no labelled voxel is below -0.9 in every
# modality, while the generators only approach -1 there (-0.99 .. -0.95).
BACKGROUND_LEVEL = -0.9


def background_intensity(scale: IntensityScale) -> float:
    """What the writer puts outside the body: 0 (the MR convention) or, for windows reaching below
    0 (CT), the window's low end."""
    return min(0.0, scale.lo)


def to_volumes(images: torch.Tensor, labels: torch.Tensor, source: SourceDataset
               ) -> tuple[np.ndarray, np.ndarray]:
    """Stack slices into volumes in the real dataset's units.

    images [S, M, H, W] ~[-1, 1] -> float32 [M, H, W, S] in each modality's intensity range,
    clamped to [-1, 1] first: the range the training slices were clipped to, so values beyond it
    are the generator's overshoot, not intensities it learned.  Background-labelled voxels below
    `BACKGROUND_LEVEL` in every modality are outside the body: they get `background_intensity`,
    as in the real volumes.  Without this, readers that normalise over "voxels above the volume
    minimum" or "non-zero voxels" (ours, nnU-Net) count the generator's near -1 background as
    tissue and shift every synthetic intensity (by +0.2 on the phantoms' white matter).
    labels [S, H, W] indices in [0, L) -> [H, W, S] real label values (uint8, or int16 above 255).
    Slice k becomes the axial plane [..., k], the last (canonical RAS superior) axis.
    """
    S, M, H, W = images.shape
    assert labels.shape == (S, H, W) and M == len(source.modalities)
    stacked = images.clamp(-1.0, 1.0).permute(1, 2, 3, 0).numpy()  # [M, H, W, S]
    outside = (stacked.max(axis=0) <= BACKGROUND_LEVEL) & (labels.permute(1, 2, 0).numpy() == 0)  # [H, W, S]
    volume = np.stack([np.where(outside, background_intensity(source.intensity[m]),
                                source.intensity[m].to_intensity(stacked[m])) for m in range(M)])
    dtype = np.uint8 if max(source.label_values) <= 255 else np.int16
    lookup = np.asarray(source.label_values, dtype=dtype)
    label_volume = lookup[labels.permute(1, 2, 0).numpy()]  # [H, W, S]
    return volume, label_volume
