"""label-to-image: new images painted on a real label map (domain randomisation, after SynthSeg and
TorchIO's RandomLabelsToImage).

For synthetic patient j, with source = training patient j mod n:

    classes   = source labels, optionally with the named labels split into intensity clusters of
                the real image (k-means: sub-structures such as a necrotic core) and the map
                deformed by a smooth random elastic field (labels move with it)
    image_m   = per class c: N(mean_cm, sd_cm) voxel by voxel, where (mean, sd) are
                random:  U(mean_range), U(std_range) as fractions of the source's body range of m
                fitted:  the source's own class statistics, each scaled by U(1 -+ perturbation)
    image_m  *= exp(bias_strength * smooth field)          (multiplicative bias)
    image_m   = Gaussian blur, sigma per axis ~ U(blur_mm)  (thick slices, partial volume)
    image_m  += N(0, U(noise) * range)
    re-normalised so that its body's 0.5-99.5 percentile range is the source's; air (every
    modality at its minimum in the source) stays at the minimum, as outside a real body.

The labels written are the source's (deformed) labels: the anatomy is real, the contrasts are not.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import ndimage

from procedural.base import LabelSet, VolumePatient, foreground_range
from procedural.config import require
from procedural.geometry import elastic_displacement, smooth_field, warp


@dataclass(frozen=True)
class LabelToImageConfig:
    """Settings of label-to-image (defaults; allowed ranges).

    mode: "random" or "fitted".  mean_range: class means as fractions of the body range
    ((0.1, 0.9); within [0, 1]); std_range: class sds as fractions ((0.01, 0.1); within [0, 0.5]);
    perturbation: fitted mode's relative jitter of each mean and sd (0.1; [0, 1]); split_labels:
    label names split into ``split_clusters`` intensity clusters ((); 2..8 clusters); elastic_mm:
    sd of the elastic displacement (0: none; [0, 20] mm); bias_strength: sd of the log bias field
    (0.3; [0, 1]); blur_mm: Gaussian sigma range per axis ((0, 1.5) mm; within [0, 10]); noise:
    noise sd range as fractions of the body range ((0, 0.05); within [0, 0.5]).
    """

    mode: str = "random"
    mean_range: tuple[float, float] = (0.1, 0.9)
    std_range: tuple[float, float] = (0.01, 0.1)
    perturbation: float = 0.1
    split_labels: tuple[str, ...] = ()
    split_clusters: int = 2
    elastic_mm: float = 0.0
    bias_strength: float = 0.3
    blur_mm: tuple[float, float] = (0.0, 1.5)
    noise: tuple[float, float] = (0.0, 0.05)

    def check(self, where: str) -> None:
        require(self.mode in ("random", "fitted"), where, "mode", f"'random' or 'fitted', got {self.mode!r}")
        require(0 <= self.mean_range[0] and self.mean_range[1] <= 1, where, "mean_range", "must lie within [0, 1]")
        require(0 <= self.std_range[0] and self.std_range[1] <= 0.5, where, "std_range", "must lie within [0, 0.5]")
        require(0 <= self.perturbation <= 1, where, "perturbation", "must lie in [0, 1]")
        require(2 <= self.split_clusters <= 8, where, "split_clusters", "must lie in 2..8")
        require(0 <= self.elastic_mm <= 20, where, "elastic_mm", "must lie in [0, 20] mm")
        require(0 <= self.bias_strength <= 1, where, "bias_strength", "must lie in [0, 1]")
        require(0 <= self.blur_mm[0] and self.blur_mm[1] <= 10, where, "blur_mm", "must lie within [0, 10] mm")
        require(0 <= self.noise[0] and self.noise[1] <= 0.5, where, "noise", "must lie within [0, 0.5]")


def kmeans_clusters(features: np.ndarray, clusters: int, iterations: int = 20) -> np.ndarray:
    """Cluster index int [n] of each row of ``features`` [n, M] (k-means on standardised features,
    started from quantiles of the first feature, so the result is deterministic)."""
    z = (features - features.mean(0)) / (features.std(0) + 1e-8)
    starts = np.quantile(z[:, 0], (np.arange(clusters) + 0.5) / clusters)
    centres = np.array([z[np.argmin(np.abs(z[:, 0] - s))] for s in starts])
    assignment = np.zeros(len(z), dtype=np.int64)
    for _ in range(iterations):
        assignment = np.argmin(((z[:, None, :] - centres[None]) ** 2).sum(-1), axis=1)
        centres = np.array([z[assignment == c].mean(0) if np.any(assignment == c) else centres[c]
                            for c in range(clusters)])
    return assignment


class LabelToImage:
    """label-to-image on the given training patients (see the module docstring)."""

    def __init__(self, config: LabelToImageConfig, patients: Sequence[VolumePatient], labels: LabelSet,
                 modalities: Sequence[str]):
        self.config, self.patients, self.label_set = config, list(patients), labels
        self.split_values = [labels.value(n, "split_labels") for n in config.split_labels]

    def _classes(self, source: VolumePatient) -> np.ndarray:
        """int32 [X, Y, Z]: the source's label values, split labels re-numbered by intensity cluster."""
        classes = source.labels.astype(np.int32).copy()
        next_class = int(classes.max()) + 1
        for value in self.split_values:
            inside = source.labels == value
            if inside.sum() < self.config.split_clusters:
                continue
            assignment = kmeans_clusters(source.images[:, inside].T, self.config.split_clusters)
            classes[inside] = np.where(assignment == 0, value, next_class + assignment - 1)
            next_class += self.config.split_clusters - 1
        return classes

    def _class_stats(self, rng: np.random.Generator, source: VolumePatient, classes: np.ndarray,
                     ranges: np.ndarray, body: np.ndarray) -> dict[int, np.ndarray]:
        """{class: [M, 2] (mean, sd)} in the modality's units (fitted over the class's body voxels)."""
        cfg, stats = self.config, {}
        width = ranges[:, 1] - ranges[:, 0]
        for c in np.unique(classes):
            if cfg.mode == "random":
                mean = ranges[:, 0] + rng.uniform(*cfg.mean_range, size=len(width)) * width
                sd = rng.uniform(*cfg.std_range, size=len(width)) * width
            else:
                inside = (classes == c) & body
                voxels = source.images[:, inside if inside.any() else classes == c]
                jitter = rng.uniform(1 - cfg.perturbation, 1 + cfg.perturbation, size=(2, len(width)))
                mean, sd = voxels.mean(1) * jitter[0], voxels.std(1) * jitter[1]
            stats[int(c)] = np.stack([mean, sd], axis=1)
        return stats

    def make(self, index: int, rng: np.random.Generator) -> VolumePatient:
        cfg = self.config
        source = self.patients[index % len(self.patients)]
        spacing = source.spacing
        ranges = foreground_range(source.images)
        minimum = source.images.reshape(len(source.images), -1).min(1)
        air = np.all(source.images <= minimum[:, None, None, None], axis=0)
        classes, labels = self._classes(source), source.labels.astype(np.int32)
        stats = self._class_stats(rng, source, classes, ranges, ~air)
        if cfg.elastic_mm > 0:
            displacement = elastic_displacement(rng, labels.shape, 1.0)
            displacement *= (cfg.elastic_mm / spacing)[:, None, None, None].astype(np.float32)
            classes, labels = warp(classes, displacement, 0), warp(labels, displacement, 0)
            air = warp(air.astype(np.uint8), displacement, 0).astype(bool)
        images = np.empty(source.images.shape, dtype=np.float32)
        for m in range(len(images)):
            painted = np.zeros(labels.shape, dtype=np.float32)
            for c, values in stats.items():
                inside = classes == c
                painted[inside] = rng.normal(values[m, 0], values[m, 1], size=int(inside.sum()))
            painted *= np.exp(cfg.bias_strength * smooth_field(rng, labels.shape))
            sigma = rng.uniform(*cfg.blur_mm, size=3) / spacing
            painted = ndimage.gaussian_filter(painted, sigma=sigma, mode="nearest")
            width = ranges[m, 1] - ranges[m, 0]
            painted += rng.normal(0, rng.uniform(*cfg.noise) * width, size=painted.shape).astype(np.float32)
            images[m] = self._renormalise(painted, ~air, ranges[m])
            # the body stays above the air level: per-patient normalisation finds the body as "above minimum"
            images[m] = np.maximum(images[m], minimum[m] + 1e-3 * width)
            images[m][air] = minimum[m]
        return VolumePatient(f"l2i_{index:04d}", images, labels, source.affine.copy(), sources=(source.case_id,))

    @staticmethod
    def _renormalise(image: np.ndarray, body: np.ndarray, target: np.ndarray) -> np.ndarray:
        """``image`` mapped linearly so its body's 0.5-99.5 percentiles become ``target`` [2]."""
        inside = image[body] if body.any() else image.reshape(-1)
        low, high = np.percentile(inside, [0.5, 99.5])
        scale = (target[1] - target[0]) / max(high - low, 1e-6)
        return ((image - low) * scale + target[0]).astype(np.float32)
