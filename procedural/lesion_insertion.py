"""lesion-insertion: synthetic lesions grown inside healthy anatomy (after the synthetic-tumour work:
an elastically deformed ellipsoid, textured, with the contrast of real lesions, blended in).

For synthetic patient j (source = training patient j mod n; with or without lesions of its own):

    count    ~ U{lesions}; per lesion: radius r ~ U(radius_mm), semi-axes r * U(0.75, 1.25), a random
               rotation, centre drawn where a ball of 0.75 r fits inside ``region`` (the named
               labels, inside the body: "background" in data that labels only lesions, never air)
    shape    = the ellipsoid warped by a smooth field of sd elastic * r, cut to the region; inner
               ``layers`` (e.g. core inside oedema) share centre, rotation and warp, scaled by
               their ``scale``
    contrast = per layer label and modality, the ratio lesion / surrounding tissue estimated from
               the training patients' real lesions (mean, sd over patients), drawn ~ N(mean,
               contrast_spread * sd) per lesion; or U(fixed_contrast) when contrast: fixed
    image    = image * (1 - a) + image * ratio * (1 + texture * filtered noise) * a, with a = the
               lesion blurred by blend_mm (1 inside, bounded support, 0 outside the region)
    labels   = the layer labels, outer first; instances = one id per lesion

Only voxels where a > 0 change, and only there can labels change.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import ndimage

from procedural.base import LabelSet, ProceduralError, VolumePatient, body_mask
from procedural.config import require, require_count_range
from procedural.geometry import (elastic_displacement, ellipsoid, filtered_noise, fits, random_rotation,
                                 random_voxel, soft_mask, warp)

PLACEMENT_TRIES = 4          # halve the radius this many times before giving up on a region
SURROUND_MM = 4.0            # shell around a real lesion that its contrast is measured against


@dataclass(frozen=True)
class LesionInsertionConfig:
    """Settings of lesion-insertion (defaults; allowed ranges).

    region: label names lesions may occupy (required); layers: [{label: NAME, scale: s}, ...]
    outer first, scale in (0, 1] relative to the outer layer (required; the first scale is 1);
    lesions: lesions per patient ((1, 2); integers >= 0); radius_mm: outer radius ((6, 15) mm; > 0);
    elastic: warp sd as a fraction of the radius (0.25; [0, 1]); texture: sd of the multiplicative
    texture (0.05; [0, 0.5]); texture_mm: its correlation length (2 mm; (0, 20]); blend_mm: sigma
    of the blending edge (1 mm; [0, 10]); contrast: "estimate" (from real lesions) or "fixed";
    fixed_contrast: ratio range for "fixed" ((1.2, 1.6); > 0); contrast_spread: factor on the
    estimated between-patient sd (1; [0, 5]).
    """

    region: tuple[str, ...] = ()
    layers: tuple = ()
    lesions: tuple[float, float] = (1, 2)
    radius_mm: tuple[float, float] = (6.0, 15.0)
    elastic: float = 0.25
    texture: float = 0.05
    texture_mm: float = 2.0
    blend_mm: float = 1.0
    contrast: str = "estimate"
    fixed_contrast: tuple[float, float] = (1.2, 1.6)
    contrast_spread: float = 1.0

    def check(self, where: str) -> None:
        require(len(self.region) > 0, where, "region", "name the labels lesions may occupy, e.g. [white_matter]")
        require(len(self.layers) > 0, where, "layers", "give the lesion labels outer first, e.g. "
                                                       "[{label: oedema, scale: 1.0}, {label: core, scale: 0.5}]")
        for i, layer in enumerate(self.layers):
            require(isinstance(layer, dict) and set(layer) <= {"label", "scale"} and "label" in layer,
                    where, f"layers[{i}]", f"expected {{label: NAME, scale: S}}, got {layer!r}")
            scale = layer.get("scale", 1.0)
            require(isinstance(scale, (int, float)) and 0 < scale <= 1, where, f"layers[{i}].scale",
                    f"must lie in (0, 1], got {scale!r}")
        require(float(self.layers[0].get("scale", 1.0)) == 1.0, where, "layers[0].scale", "the outer layer has scale 1")
        require_count_range(self.lesions, where, "lesions")
        require(self.radius_mm[0] > 0, where, "radius_mm", "must be > 0")
        require(0 <= self.elastic <= 1, where, "elastic", "must lie in [0, 1]")
        require(0 <= self.texture <= 0.5, where, "texture", "must lie in [0, 0.5]")
        require(0 < self.texture_mm <= 20, where, "texture_mm", "must lie in (0, 20] mm")
        require(0 <= self.blend_mm <= 10, where, "blend_mm", "must lie in [0, 10] mm")
        require(self.contrast in ("estimate", "fixed"), where, "contrast", f"'estimate' or 'fixed', got {self.contrast!r}")
        require(self.fixed_contrast[0] > 0, where, "fixed_contrast", "ratios must be > 0")
        require(0 <= self.contrast_spread <= 5, where, "contrast_spread", "must lie in [0, 5]")


def estimate_contrast(patients: Sequence[VolumePatient], layer_values: list[int], region_values: list[int]
                      ) -> dict[int, np.ndarray]:
    """{layer value: [M, 2] (mean, sd over patients) of mean(lesion voxels) / mean(surrounding tissue)}
    for every layer label some patient has; the surround is a SURROUND_MM shell (at least one voxel)
    around all its lesion voxels, inside the region where the region has voxels there."""
    ratios: dict[int, list[np.ndarray]] = {v: [] for v in layer_values}
    for patient in patients:
        lesion = np.isin(patient.labels, layer_values)
        if not lesion.any():
            continue
        distance = ndimage.distance_transform_edt(~lesion, sampling=patient.spacing)
        shell = (distance > 0) & (distance <= max(SURROUND_MM, 1.01 * float(patient.spacing.max())))
        in_region = shell & np.isin(patient.labels, region_values)
        surround = in_region if in_region.sum() >= 10 else shell & (patient.labels != 0)
        if surround.sum() < 10:
            continue
        reference = patient.images[:, surround].mean(1)
        for value in layer_values:
            inside = patient.labels == value
            if inside.any():
                ratios[value].append(patient.images[:, inside].mean(1) / np.maximum(reference, 1e-6))
    return {v: np.stack([np.mean(r, 0), np.std(r, 0)], axis=1) for v, r in ratios.items() if r}


class LesionInsertion:
    """lesion-insertion on the given training patients (see the module docstring)."""

    def __init__(self, config: LesionInsertionConfig, patients: Sequence[VolumePatient], labels: LabelSet,
                 modalities: Sequence[str]):
        self.config, self.patients, self.label_set = config, list(patients), labels
        self.region_values = [labels.value(n, "region") for n in config.region]
        self.layers = [(labels.value(layer["label"], f"layers[{i}].label"), float(layer.get("scale", 1.0)))
                       for i, layer in enumerate(config.layers)]
        self.n_modalities = len(modalities)
        self.contrast: dict[int, np.ndarray] = {}
        if config.contrast == "estimate":
            self.contrast = estimate_contrast(self.patients, [v for v, _ in self.layers], self.region_values)
            missing = [labels.names[labels.values.index(v)] for v, _ in self.layers if v not in self.contrast]
            if missing:
                raise ProceduralError(f"lesion-insertion: no real lesions of {missing} in the "
                                      f"{len(self.patients)} training patients to estimate the contrast from; "
                                      f"set contrast: fixed (with fixed_contrast: [low, high])")

    def _ratio(self, rng: np.random.Generator, value: int) -> np.ndarray:
        """[M] lesion / tissue intensity ratios of one layer of one lesion."""
        if self.config.contrast == "fixed":
            return rng.uniform(*self.config.fixed_contrast, size=self.n_modalities)
        mean, sd = self.contrast[value][:, 0], self.contrast[value][:, 1]
        return np.clip(rng.normal(mean, self.config.contrast_spread * sd), 0.05, 20.0)

    def _shape(self, rng: np.random.Generator, region: np.ndarray, spacing: np.ndarray, case_id: str
               ) -> list[np.ndarray]:
        """Masks [X, Y, Z] of each layer of one lesion, outer first, inside ``region``."""
        cfg = self.config
        radius = rng.uniform(*cfg.radius_mm)
        for _ in range(PLACEMENT_TRIES):
            centre = random_voxel(rng, fits(region, 0.75 * radius, spacing))
            if centre is not None:
                break
            radius /= 2
        else:
            raise ProceduralError(f"lesion-insertion: patient {case_id}: region {list(cfg.region)} is too small for "
                                  f"a lesion of radius {radius:.2g} mm; choose a larger region or smaller radius_mm")
        radii = radius * rng.uniform(0.75, 1.25, size=3)
        rotation = random_rotation(rng)
        displacement = elastic_displacement(rng, region.shape, 1.0)
        displacement *= (cfg.elastic * radius / spacing)[:, None, None, None].astype(np.float32)
        masks = []
        for _, scale in self.layers:
            shape = ellipsoid(region.shape, centre, radii * scale, spacing, rotation)
            shape = warp(shape.astype(np.uint8), displacement, 0).astype(bool) & region
            masks.append(shape & masks[0] if masks else shape)
        return masks

    def make(self, index: int, rng: np.random.Generator) -> VolumePatient:
        cfg = self.config
        source = self.patients[index % len(self.patients)]
        spacing = source.spacing
        images, labels = source.images.copy(), source.labels.astype(np.int32).copy()
        instances = np.zeros(labels.shape, dtype=np.int32)
        region = np.isin(labels, self.region_values) & body_mask(images)  # never into air
        objects = []
        count = int(rng.integers(int(cfg.lesions[0]), int(cfg.lesions[1]) + 1))
        for lesion_id in range(1, count + 1):
            masks = self._shape(rng, region, spacing, source.case_id)
            if not masks[0].any():
                continue
            # the outer layer's contrast wherever the blend reaches, each inner layer's inside it
            outer = self._ratio(rng, self.layers[0][0]).astype(np.float32)
            ratio = np.repeat(outer[:, None], labels.size, axis=1).reshape(self.n_modalities, *labels.shape)
            for (value, _), mask in zip(self.layers[1:], masks[1:]):
                ratio[:, mask] = self._ratio(rng, value)[:, None]
            texture = 1 + cfg.texture * filtered_noise(rng, labels.shape, cfg.texture_mm / float(spacing.mean()))
            alpha = soft_mask(masks[0], cfg.blend_mm, spacing, limit=region)
            images = images * (1 - alpha) + images * ratio * texture * alpha
            for (value, _), mask in zip(self.layers, masks):
                labels[mask] = value
            instances[masks[0]] = lesion_id
            region &= ~masks[0]  # the next lesion does not overlap this one
            objects.append({"id": lesion_id, "label": cfg.layers[0]["label"], "kind": "lesion",
                            "voxels": int(masks[0].sum())})
        return VolumePatient(f"lesion_{index:04d}", images.astype(np.float32), labels, source.affine.copy(),
                             instances=instances, sources=(source.case_id,), objects=objects)
