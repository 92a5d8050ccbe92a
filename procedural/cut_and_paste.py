"""cut-and-paste: real objects (lesions, devices) copied with their masks from one training patient
into a plausible place of another.

The objects are the connected components (26-connected, 3D) of the named ``objects`` labels in the
training patients, each kept as a box of images and labels around it.  For synthetic patient j
(recipient = training patient j mod n), ``count`` times: an object of another patient (of any
patient when only the recipient has objects) is scaled by U(scale) and rotated in-plane by
U(-rotate_deg, rotate_deg), its intensities are matched to the recipient (per modality, the ratio
of the tissue around the object to the tissue around the paste point), and it is pasted centred on
a voxel of the ``into`` region chosen so that at least ``min_inside`` of it lies there; blended by
blend_mm.  Labels copy the object's own labels; instances number the pasted objects.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import ndimage

from procedural.base import LabelSet, ProceduralError, VolumePatient, body_mask
from procedural.config import require, require_count_range
from procedural.geometry import random_voxel, soft_mask

PLACEMENT_TRIES = 50
MARGIN_VOXELS = 3  # tissue kept around each object: its surround for intensity matching and blending


@dataclass(frozen=True)
class CutAndPasteConfig:
    """Settings of cut-and-paste (defaults; allowed ranges).

    objects: label names whose connected components are copied (required); into: label names the
    pasted object must lie in (required); count: objects per patient ((1, 2); whole numbers >= 0);
    scale: size factor ((0.9, 1.1); within [0.25, 4]); rotate_deg: largest in-plane rotation
    (15; [0, 180]); min_inside: share of the object inside ``into`` (0.9; (0, 1]); blend_mm: sigma
    of the blended edge (1 mm; [0, 10]); min_voxels: smaller components are ignored (5; >= 1).
    """

    objects: tuple[str, ...] = ()
    into: tuple[str, ...] = ()
    count: tuple[float, float] = (1, 2)
    scale: tuple[float, float] = (0.9, 1.1)
    rotate_deg: float = 15.0
    min_inside: float = 0.9
    blend_mm: float = 1.0
    min_voxels: int = 5

    def check(self, where: str) -> None:
        require(len(self.objects) > 0, where, "objects", "name the labels to copy, e.g. [oedema, core]")
        require(len(self.into) > 0, where, "into", "name the labels objects may be pasted into")
        require_count_range(self.count, where, "count")
        require(0.25 <= self.scale[0] and self.scale[1] <= 4, where, "scale", "must lie within [0.25, 4]")
        require(0 <= self.rotate_deg <= 180, where, "rotate_deg", "must lie in [0, 180]")
        require(0 < self.min_inside <= 1, where, "min_inside", "must lie in (0, 1]")
        require(0 <= self.blend_mm <= 10, where, "blend_mm", "must lie in [0, 10] mm")
        require(self.min_voxels >= 1, where, "min_voxels", "must be >= 1")


@dataclass
class RealObject:
    """One object cut from a training patient: images [M, x, y, z] and labels [x, y, z] of its box
    (MARGIN_VOXELS of tissue around it), mask [x, y, z] of the object, its donor's case id."""

    donor: str
    images: np.ndarray
    labels: np.ndarray
    mask: np.ndarray


def cut_objects(patients: Sequence[VolumePatient], values: list[int], min_voxels: int) -> list[RealObject]:
    """Every connected component of ``values`` of at least ``min_voxels`` voxels, with its box."""
    objects = []
    for patient in patients:
        components, count = ndimage.label(np.isin(patient.labels, values), structure=np.ones((3, 3, 3)))
        for index, box in enumerate(ndimage.find_objects(components), start=1):
            mask = components[box] == index
            if mask.sum() < min_voxels:
                continue
            grown = tuple(slice(max(0, s.start - MARGIN_VOXELS), min(n, s.stop + MARGIN_VOXELS))
                          for s, n in zip(box, patient.labels.shape))
            objects.append(RealObject(patient.case_id, patient.images[(slice(None), *grown)].copy(),
                                      patient.labels[grown].copy(), components[grown] == index))
    return objects


def transform_object(obj: RealObject, scale: float, angle_deg: float) -> RealObject:
    """``obj`` scaled by ``scale`` (all axes) and rotated by ``angle_deg`` about the z axis, on a box
    large enough to hold it (images linear, labels and mask nearest)."""
    if scale == 1.0 and angle_deg == 0.0:
        return obj
    angle = np.deg2rad(angle_deg)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    forward = rotation * scale
    shape_in = np.array(obj.mask.shape, dtype=float)
    corners = np.array(np.meshgrid(*[[0, s - 1] for s in shape_in], indexing="ij")).reshape(3, -1)
    centre_in = (shape_in - 1) / 2
    extent = np.abs(forward @ (corners - centre_in[:, None])).max(axis=1)
    shape_out = np.maximum(1, np.ceil(2 * extent + 1)).astype(int)
    shape_out[2] = max(1, int(np.ceil(shape_in[2] * scale)))
    centre_out = (shape_out - 1) / 2
    inverse = np.linalg.inv(forward)
    offset = centre_in - inverse @ centre_out

    def resample(volume: np.ndarray, order: int) -> np.ndarray:
        return ndimage.affine_transform(volume, inverse, offset=offset, output_shape=tuple(shape_out), order=order,
                                        mode="nearest")
    images = np.stack([resample(m, 1) for m in obj.images])
    return RealObject(obj.donor, images, resample(obj.labels, 0), resample(obj.mask.astype(np.uint8), 0) > 0)


class CutAndPaste:
    """cut-and-paste on the given training patients (see the module docstring)."""

    def __init__(self, config: CutAndPasteConfig, patients: Sequence[VolumePatient], labels: LabelSet,
                 modalities: Sequence[str]):
        self.config, self.patients = config, list(patients)
        values = [labels.value(n, "objects") for n in config.objects]
        self.into = [labels.value(n, "into") for n in config.into]
        self.objects = cut_objects(self.patients, values, config.min_voxels)
        if not self.objects:
            raise ProceduralError(f"cut-and-paste: the {len(self.patients)} training patients have no object of "
                                  f"{list(config.objects)} with at least {config.min_voxels} voxels to cut")

    def _place(self, rng: np.random.Generator, obj: RealObject, region: np.ndarray) -> tuple[slice, ...] | None:
        """The box of the recipient where ``obj`` goes: centred on a region voxel, inside the volume,
        with at least min_inside of the object in the region (None after PLACEMENT_TRIES)."""
        size = np.array(obj.mask.shape)
        if np.any(size > region.shape):
            return None
        for _ in range(PLACEMENT_TRIES):
            centre = random_voxel(rng, region)
            if centre is None:
                return None
            start = np.clip(np.rint(centre - (size - 1) / 2).astype(int), 0, np.array(region.shape) - size)
            box = tuple(slice(a, a + s) for a, s in zip(start, size))
            if region[box][obj.mask].mean() >= self.config.min_inside:
                return box
        return None

    def make(self, index: int, rng: np.random.Generator) -> VolumePatient:
        cfg = self.config
        recipient = self.patients[index % len(self.patients)]
        donors = [o for o in self.objects if o.donor != recipient.case_id] or self.objects
        images, labels = recipient.images.copy(), recipient.labels.astype(np.int32).copy()
        instances = np.zeros(labels.shape, dtype=np.int32)
        region = np.isin(labels, self.into) & body_mask(images)  # never into air
        objects, sources = [], [recipient.case_id]
        for _ in range(int(rng.integers(int(cfg.count[0]), int(cfg.count[1]) + 1))):
            chosen = donors[int(rng.integers(len(donors)))]
            obj = transform_object(chosen, float(rng.uniform(*cfg.scale)),
                                   float(rng.uniform(-cfg.rotate_deg, cfg.rotate_deg)))
            box = self._place(rng, obj, region)
            if box is None:
                continue
            surround_donor, surround_here = ~obj.mask, ~obj.mask & region[box]
            if surround_here.sum() < 5 or surround_donor.sum() < 5:
                surround_here = surround_donor = np.ones_like(obj.mask)
            gain = (images[(slice(None), *box)][:, surround_here].mean(1)
                    / np.maximum(obj.images[:, surround_donor].mean(1), 1e-6))
            alpha = np.zeros(labels.shape, dtype=np.float32)
            alpha[box] = soft_mask(obj.mask, cfg.blend_mm, recipient.spacing)
            pasted = images.copy()
            pasted[(slice(None), *box)] = obj.images * gain[:, None, None, None]
            images = images * (1 - alpha) + pasted * alpha
            target = labels[box]
            target[obj.mask] = obj.labels[obj.mask]
            instances[box][obj.mask] = len(objects) + 1
            region[box] &= ~obj.mask
            objects.append({"id": len(objects) + 1, "label": ",".join(cfg.objects), "kind": "cut-and-paste",
                            "donor": chosen.donor, "voxels": int(obj.mask.sum())})
            sources.append(chosen.donor)
        return VolumePatient(f"paste_{index:04d}", images.astype(np.float32), labels, recipient.affine.copy(),
                             instances=instances, sources=tuple(dict.fromkeys(sources)), objects=objects)
