"""GAN metrics at snapshots: FID, KID and mask-image consistency.

* :func:`frechet_distance` — FID between two feature sets (Heusel et al. 2017):
  ``||mu_a - mu_b||^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2))``, in float64.
* :func:`kernel_inception_distance` — KID (Binkowski et al. 2018): the unbiased estimate of the
  squared MMD with the cubic polynomial kernel ``k(x, y) = (x.y / D + 1)^3``, averaged over random
  subsets; returns (mean, std over subsets).
* :mod:`gan.consistency` — a small segmenter trained on real slices segments generated images; Dice
  against the generated masks (re-exported here).
* :class:`GanMetrics` — what the training loop calls at every snapshot: real features (and the
  consistency segmenter) are computed once and cached; each call draws ``num_gen`` fake pairs from a
  callable and returns a flat ``{name: float}`` dict ready for TensorBoard / stats.jsonl.
  :meth:`GanMetrics.floor` gives the same metrics for real-train vs real-test (the floor a perfect
  generator would reach with the same sample sizes).

Every random choice uses private generators (numpy ``default_rng`` / forked torch RNG), so computing
metrics never changes the global random streams of a training run (exact resume depends on that).
"""
from __future__ import annotations

import logging
import sys
import warnings
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import scipy.linalg
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from gan.consistency import (
    ConsistencyConfig,
    ConsistencySegmenter,
    DiceAccumulator,
    check_pairs,
    mask_image_consistency,
    train_consistency_segmenter,
)
from gan.feature_extractor import load_feature_extractor
from gan.image_batches import take_images, take_labels

__all__ = [
    "frechet_distance",
    "kernel_inception_distance",
    "train_consistency_segmenter",
    "mask_image_consistency",
    "MetricsConfig",
    "GanMetrics",
    "compute_metrics",
    "validate_metrics",
    "KNOWN_METRICS",
]

logger = logging.getLogger(__name__)

KNOWN_METRICS = ("fid", "kid", "consistency")
INPUT_KINDS = ("images", "masks", "pairs")
# A fake batch: images [B, M, H, W] in [-1, 1] (None for a mask-only generator) and label indices
# [B, H, W] long (None for an image-only generator).
FakeBatch = tuple[torch.Tensor | None, torch.Tensor | None]


def _as_feature_matrix(feats: np.ndarray | torch.Tensor, name: str) -> np.ndarray:
    """Features as a float64 [N, D] array, with N >= 2 and finite values, or a ValueError."""
    if isinstance(feats, torch.Tensor):
        feats = feats.detach().cpu().numpy()
    feats = np.asarray(feats, dtype=np.float64)
    if feats.ndim != 2 or feats.shape[0] < 2:
        raise ValueError(f"{name}: expected features [N >= 2, D], got shape {feats.shape}")
    if not np.all(np.isfinite(feats)):
        raise ValueError(f"{name}: features contain NaN or infinity")
    return feats


def _trace_sqrt_product(sigma_a: np.ndarray, sigma_b: np.ndarray, eps: float) -> float:
    """tr((S_a S_b)^(1/2)) by scipy.linalg.sqrtm, handled the usual way (as in the reference FID code).

    * If sqrtm is not finite (singular product), both covariances get ``eps * I`` and it is retried.
    * A complex result from round-off is accepted when the imaginary part of its diagonal is below
      1e-3 and the real part is used.
    * A larger imaginary part (rank-deficient covariances when N < D) falls back, with a warning, to
      the exact symmetric form tr((S_a^(1/2) S_b S_a^(1/2))^(1/2)), whose eigenvalues are those of
      S_a S_b and are real and non-negative.
    """
    with warnings.catch_warnings():
        # With fewer samples than dimensions the covariances are singular by construction; sqrtm
        # warns, yet its trace stays accurate (checked against the eigenvalue form), and the
        # failure modes it warns about are caught below.
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
        covmean = scipy.linalg.sqrtm(sigma_a @ sigma_b)
        if not np.all(np.isfinite(covmean)):
            offset = np.eye(sigma_a.shape[0]) * eps
            covmean = scipy.linalg.sqrtm((sigma_a + offset) @ (sigma_b + offset))
    if np.iscomplexobj(covmean):
        if np.allclose(np.diagonal(covmean).imag, 0.0, atol=1e-3):
            covmean = covmean.real
        else:
            logger.warning(
                "frechet_distance: sqrtm(S_a S_b) has a large imaginary part (max %.3g); using the "
                "symmetric eigenvalue form instead",
                float(np.abs(covmean.imag).max()),
            )
            evals_a, evecs_a = np.linalg.eigh(sigma_a)
            sqrt_a = (evecs_a * np.sqrt(np.clip(evals_a, 0.0, None))) @ evecs_a.T
            evals = np.linalg.eigvalsh(sqrt_a @ sigma_b @ sqrt_a)
            return float(np.sqrt(np.clip(evals, 0.0, None)).sum())
    return float(np.trace(covmean))


def frechet_distance(
    feats_a: np.ndarray | torch.Tensor, feats_b: np.ndarray | torch.Tensor, eps: float = 1e-6
) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (FID when the features are
    Inception pool3 features).

    Args:
        feats_a: [N, D] features (N >= 2), e.g. of real images.
        feats_b: [M, D] features (M >= 2), e.g. of generated images.
        eps: diagonal offset used only when sqrtm of the covariance product is not finite.

    Returns ``||mu_a - mu_b||^2 + tr(S_a) + tr(S_b) - 2 tr((S_a S_b)^(1/2))`` >= 0 (float64 maths;
    covariances unbiased, ``np.cov``). Biased upwards for small N, so compare FIDs at equal N.
    """
    feats_a = _as_feature_matrix(feats_a, "frechet_distance: feats_a")
    feats_b = _as_feature_matrix(feats_b, "frechet_distance: feats_b")
    if feats_a.shape[1] != feats_b.shape[1]:
        raise ValueError(
            f"frechet_distance: feature dimensions differ ({feats_a.shape[1]} vs {feats_b.shape[1]})"
        )
    mu_a, mu_b = feats_a.mean(axis=0), feats_b.mean(axis=0)
    sigma_a = np.atleast_2d(np.cov(feats_a, rowvar=False))
    sigma_b = np.atleast_2d(np.cov(feats_b, rowvar=False))
    diff = mu_a - mu_b
    distance = diff @ diff + np.trace(sigma_a) + np.trace(sigma_b) - 2.0 * _trace_sqrt_product(sigma_a, sigma_b, eps)
    # Round-off can make identical sets come out at -1e-12; a distance is never negative.
    return float(max(distance, 0.0))


def kernel_inception_distance(
    feats_a: np.ndarray | torch.Tensor,
    feats_b: np.ndarray | torch.Tensor,
    num_subsets: int = 100,
    max_subset_size: int = 1000,
    seed: int = 0,
) -> tuple[float, float]:
    """Kernel Inception Distance: unbiased squared MMD with the polynomial kernel
    ``k(x, y) = (x . y / D + 1)^3`` (degree 3, gamma 1/D, coef 1), over random subsets.

    Args:
        feats_a: [N, D] features; feats_b: [M, D] features (N, M >= 2).
        num_subsets: number of random subsets; each draws m = min(N, M, max_subset_size) rows of
            each set without replacement.
        seed: seed of the private subset generator (the global RNG is not touched).

    Returns (mean, std) of the per-subset estimates
    ``sum_{i != j} [k(a_i, a_j) + k(b_i, b_j)] / (m (m - 1)) - 2 sum_{i, j} k(a_i, b_j) / m^2``.
    The mean is ~0 (and can be slightly negative) when both sets come from one distribution.
    """
    feats_a = _as_feature_matrix(feats_a, "kernel_inception_distance: feats_a")
    feats_b = _as_feature_matrix(feats_b, "kernel_inception_distance: feats_b")
    if feats_a.shape[1] != feats_b.shape[1]:
        raise ValueError(
            "kernel_inception_distance: feature dimensions differ "
            f"({feats_a.shape[1]} vs {feats_b.shape[1]})"
        )
    if num_subsets < 1 or max_subset_size < 2:
        raise ValueError("kernel_inception_distance: need num_subsets >= 1 and max_subset_size >= 2")
    dim = feats_a.shape[1]
    m = min(feats_a.shape[0], feats_b.shape[0], max_subset_size)
    rng = np.random.default_rng(seed)
    estimates = np.empty(num_subsets)
    for index in range(num_subsets):
        a = feats_a[rng.choice(feats_a.shape[0], m, replace=False)]
        b = feats_b[rng.choice(feats_b.shape[0], m, replace=False)]
        k_aa = (a @ a.T / dim + 1.0) ** 3
        k_bb = (b @ b.T / dim + 1.0) ** 3
        k_ab = (a @ b.T / dim + 1.0) ** 3
        within = (k_aa.sum() - np.trace(k_aa) + k_bb.sum() - np.trace(k_bb)) / (m * (m - 1))
        estimates[index] = within - 2.0 * k_ab.sum() / (m * m)
    return float(estimates.mean()), float(estimates.std())


def validate_metrics(
    metrics: str | Sequence[str], produces_images: bool, produces_labels: bool, inputs: str = "images"
) -> tuple[str, ...]:
    """Parse and check a metric selection before training starts, so that a bad ``--metrics`` fails
    at start-up rather than at the first snapshot.

    Args:
        metrics: ``"fid,kid,consistency"`` or a sequence of names from ``KNOWN_METRICS``; ``""`` or
            ``"none"`` selects nothing.
        produces_images / produces_labels: whether the evaluated generator yields images / masks.
        inputs: what FID/KID see, ``"images"``, ``"masks"`` or ``"pairs"`` (see :class:`MetricsConfig`).

    Returns the names as a tuple, in the given order, without duplicates.
    """
    if isinstance(metrics, str):
        metrics = [] if metrics.strip().lower() in ("", "none") else metrics.split(",")
    names = tuple(dict.fromkeys(name.strip().lower() for name in metrics))
    unknown = [name for name in names if name not in KNOWN_METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; choose from {list(KNOWN_METRICS)}")
    if inputs not in INPUT_KINDS:
        raise ValueError(f"metric inputs must be one of {list(INPUT_KINDS)}, got {inputs!r}")
    needed = {"images": ["images"], "masks": ["masks"], "pairs": ["images", "masks"]}[inputs]
    produced = [kind for kind, yes in (("images", produces_images), ("masks", produces_labels)) if yes]
    if {"fid", "kid"} & set(names) and not set(needed) <= set(produced):
        raise ValueError(
            f"FID/KID on {inputs!r} need a generator producing {' and '.join(needed)}; this one "
            f"produces {' and '.join(produced) or 'nothing'} (choose the metric inputs accordingly)"
        )
    if "consistency" in names and not (produces_images and produces_labels):
        raise ValueError(
            "the consistency metric needs a generator producing both images and masks (baseline or "
            "mask -> conditional pair pipeline)"
        )
    return names


@dataclass
class MetricsConfig:
    """What :class:`GanMetrics` computes at a snapshot."""

    metrics: tuple[str, ...] = KNOWN_METRICS
    # What FID/KID see: "images" (the M modality channels: comparable across all image-producing
    # generators), "masks" (the L one-hot mask channels in [-1, 1]: for the mask generator) or
    # "pairs" (M + L channels, image then mask: also penalises images that do not fit their masks).
    inputs: str = "images"
    num_gen: int = 1000  # generated slices per evaluation
    batch_size: int = 64
    max_real: int | None = None  # real slices used for the reference features (None: all)
    kid_num_subsets: int = 100
    kid_max_subset_size: int = 1000
    seed: int = 0  # KID subsets and real-slice subsampling
    consistency: ConsistencyConfig = field(default_factory=ConsistencyConfig)


def _labels_to_channels(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Label indices [N, H, W] -> one-hot channels [N, L, H, W] scaled to {-1, 1} (project convention)."""
    return F.one_hot(labels, num_classes).permute(0, 3, 1, 2).float() * 2.0 - 1.0


class GanMetrics:
    """FID, KID and mask-image consistency of a generator against cached real data.

    Build it once per training run; call it at every snapshot. The real features and the consistency
    segmenter are computed on first use and kept.

    Args:
        real_images: [N, M, H, W] real training slices in [-1, 1] (tensor, array or memmap).
        real_labels: [N, H, W] their label indices in 0..num_classes-1 (may be None when neither
            consistency nor mask inputs are used).
        num_classes: L, including background.
        config: :class:`MetricsConfig`.
        extractor: a feature extractor (``gan.feature_extractor.FeatureExtractor``); default: the
            offline :class:`~gan.feature_extractor.SliceTextureFeatures` for the right channel count.
        device: where the extractor and the segmenter run.
        real_rows: use only these rows of real_images/real_labels (default: all). With a
            memory-mapped slice cache this avoids reading the training slices into memory: only the
            rows in use are read, batch by batch.
    """

    def __init__(
        self,
        real_images: torch.Tensor | np.ndarray,
        real_labels: torch.Tensor | np.ndarray | None,
        num_classes: int,
        config: MetricsConfig | None = None,
        extractor: nn.Module | None = None,
        device: str | torch.device = "cpu",
        real_rows: np.ndarray | None = None,
    ):
        self.config = config or MetricsConfig()
        self.metrics = validate_metrics(self.config.metrics, True, True, self.config.inputs)
        self.real_images = real_images
        self.real_labels = real_labels
        self.num_classes = num_classes
        self.device = torch.device(device)
        if real_images.ndim != 4:
            raise ValueError(f"GanMetrics: real_images must be [N, M, H, W], got {tuple(real_images.shape)}")
        if real_labels is not None:
            check_pairs(real_images, real_labels, num_classes, "GanMetrics (real data)")
        elif "consistency" in self.metrics or self.config.inputs != "images":
            raise ValueError(f"GanMetrics: real_labels are needed for {self.metrics} on {self.config.inputs!r}")
        self.real_rows = np.arange(len(real_images)) if real_rows is None else np.sort(np.asarray(real_rows, dtype=np.int64))
        if len(self.real_rows) < 2 or self.real_rows[0] < 0 or self.real_rows[-1] >= len(real_images):
            raise ValueError(f"GanMetrics: real_rows must select at least 2 of the {len(real_images)} real slices")
        self.image_channels = int(real_images.shape[1])
        feature_channels = {
            "images": self.image_channels,
            "masks": num_classes,
            "pairs": self.image_channels + num_classes,
        }[self.config.inputs]
        self.extractor = (extractor or load_feature_extractor(None, in_channels=feature_channels)).to(self.device).eval()
        if getattr(self.extractor, "in_channels", feature_channels) != feature_channels:
            raise ValueError(
                f"GanMetrics: the extractor takes {self.extractor.in_channels} channels but FID on "
                f"{self.config.inputs!r} needs {feature_channels}"
            )
        self._real_features: np.ndarray | None = None
        self._segmenter: ConsistencySegmenter | None = None

    def _feature_inputs(self, images: torch.Tensor | None, labels: torch.Tensor | None) -> torch.Tensor:
        """What the extractor sees for one batch, per ``config.inputs``: [B, C, H, W] in [-1, 1] on
        the metrics device."""
        if self.config.inputs == "images":
            return images.to(self.device, torch.float32)
        masks = _labels_to_channels(labels.to(self.device), self.num_classes)
        if self.config.inputs == "masks":
            return masks
        return torch.cat([images.to(self.device, torch.float32), masks], dim=1)

    def _real_batches(self, images, labels, rows: np.ndarray) -> Iterator[FakeBatch]:
        """Batches of the given rows of a real set, as (images, labels) CPU tensors."""
        for start in range(0, len(rows), self.config.batch_size):
            chunk = rows[start : start + self.config.batch_size]
            yield take_images(images, chunk), None if labels is None else take_labels(labels, chunk)

    @property
    def real_features(self) -> np.ndarray:
        """Features [N_real, D] of the real training slices (at most ``config.max_real``, a seeded
        random subset), computed once."""
        if self._real_features is None:
            rows = self.real_rows
            if self.config.max_real is not None and self.config.max_real < len(rows):
                rows = np.sort(np.random.default_rng(self.config.seed).choice(rows, self.config.max_real, replace=False))
            batches = self._real_batches(self.real_images, self.real_labels, rows)
            self._real_features = np.concatenate([self._features(*batch) for batch in batches])
        return self._real_features

    @property
    def segmenter(self) -> ConsistencySegmenter:
        """The consistency segmenter, trained on the real training slices on first use."""
        if self._segmenter is None:
            self._segmenter = train_consistency_segmenter(
                self.real_images, self.real_labels, self.num_classes,
                config=self.config.consistency, device=self.device, rows=self.real_rows,
            )
        return self._segmenter

    @torch.no_grad()
    def _features(self, images: torch.Tensor | None, labels: torch.Tensor | None) -> np.ndarray:
        return self.extractor(self._feature_inputs(images, labels)).double().cpu().numpy()

    def _evaluate_batches(self, batches: Iterable[FakeBatch], total: int, desc: str) -> dict[str, float]:
        """Stream (images, labels) batches: features for FID/KID, Dice counts for consistency."""
        wants_features = bool({"fid", "kid"} & set(self.metrics))
        wants_consistency = "consistency" in self.metrics
        segmenter = self.segmenter if wants_consistency else None
        real_features = self.real_features if wants_features else None
        features, dice = [], DiceAccumulator(self.num_classes)
        with tqdm(total=total, desc=desc, unit="img", leave=False, disable=not sys.stderr.isatty()) as bar:
            for images, labels in batches:
                self._check_batch(images, labels)
                if wants_features:
                    features.append(self._features(images, labels))
                if segmenter is not None:
                    dice.update(segmenter.predict(images.to(self.device, torch.float32)), labels.cpu())
                bar.update(len(images if images is not None else labels))
        results: dict[str, float] = {}
        if wants_features:
            fake_features = np.concatenate(features)
            if "fid" in self.metrics:
                results["fid"] = frechet_distance(real_features, fake_features)
            if "kid" in self.metrics:
                results["kid_mean"], results["kid_std"] = kernel_inception_distance(
                    real_features, fake_features, self.config.kid_num_subsets,
                    self.config.kid_max_subset_size, seed=self.config.seed,
                )
        if wants_consistency:
            results.update({f"consistency_{name}": value for name, value in dice.result().items()})
        return results

    def _check_batch(self, images: torch.Tensor | None, labels: torch.Tensor | None) -> None:
        """ValueError unless a generated batch carries what the selected metrics need, shaped right."""
        needs_images = "consistency" in self.metrics or self.config.inputs in ("images", "pairs")
        needs_labels = "consistency" in self.metrics or self.config.inputs in ("masks", "pairs")
        if needs_images and images is None or needs_labels and labels is None:
            raise ValueError(f"GanMetrics: {self.metrics} on {self.config.inputs!r} need generated "
                             f"{'images' if images is None else 'masks'}, the generator returned None")
        if images is not None and (images.ndim != 4 or images.shape[1] != self.image_channels):
            raise ValueError(f"GanMetrics: generated images must be [B, {self.image_channels}, H, W], "
                             f"got {tuple(images.shape)}")
        if labels is not None and (labels.ndim != 3 or labels.dtype != torch.long):
            raise ValueError(f"GanMetrics: generated masks must be label indices [B, H, W] long, "
                             f"got {tuple(labels.shape)} {labels.dtype}")
        size = (images if images is not None else labels).shape[-2:]
        if tuple(size) != tuple(self.real_images.shape[2:]):
            raise ValueError(f"GanMetrics: generated slices are {tuple(size)}, the real slices "
                             f"{tuple(self.real_images.shape[2:])}")
        if labels is not None and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
            raise ValueError(f"GanMetrics: generated label indices must lie in 0..{self.num_classes - 1}, "
                             f"got {int(labels.min())}..{int(labels.max())}")

    def __call__(
        self, generate: Callable[[int, int], FakeBatch], num_gen: int | None = None
    ) -> dict[str, float]:
        """Metrics of a generator against the real training slices.

        Args:
            generate: ``generate(batch_index, batch_size) -> (images, labels)``: images
                [B, M, H, W] in [-1, 1] or None (mask-only generator), labels [B, H, W] long label
                indices or None (image-only generator). Called with batch_index 0, 1, ... until
                ``num_gen`` slices are collected (the last batch is cut); it owns its randomness
                (e.g. seeds derived from batch_index make snapshots comparable).
            num_gen: overrides ``config.num_gen``.

        Returns a flat dict: ``fid``; ``kid_mean``, ``kid_std``; ``consistency_dice_mean``,
        ``consistency_dice_foreground``, ``consistency_dice_class_k`` (k = 1..L-1) — only those of
        the selected metrics.
        """
        if not self.metrics:
            return {}
        num_gen = self.config.num_gen if num_gen is None else num_gen
        if num_gen < 2:
            raise ValueError(f"GanMetrics: num_gen must be >= 2, got {num_gen}")

        def batches() -> Iterator[FakeBatch]:
            produced, batch_index = 0, 0
            while produced < num_gen:
                size = min(self.config.batch_size, num_gen - produced)
                with torch.no_grad():
                    images, labels = generate(batch_index, size)
                images = None if images is None else images[:size].detach().float()
                labels = None if labels is None else labels[:size].detach()
                got = len(images if images is not None else labels)
                if got == 0:
                    raise ValueError(f"GanMetrics: generate({batch_index}, {size}) returned an empty batch")
                yield images, labels
                produced, batch_index = produced + got, batch_index + 1

        return self._evaluate_batches(batches(), num_gen, "metrics")

    def evaluate_set(
        self, images: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray | None
    ) -> dict[str, float]:
        """The same metrics for a fixed set of slices (e.g. saved samples, or real test slices):
        images [N, M, H, W] in [-1, 1], labels [N, H, W] label indices (or None)."""
        if labels is not None:
            check_pairs(images, labels, self.num_classes, "GanMetrics.evaluate_set")
        rows = np.arange(len(images))
        return self._evaluate_batches(self._real_batches(images, labels, rows), len(rows), "metrics")

    def floor(self, test_images: torch.Tensor | np.ndarray, test_labels: torch.Tensor | np.ndarray | None) -> dict[str, float]:
        """Real-train vs real-test: the FID/KID a perfect generator would get with this many test
        slices, and the consistency segmenter's Dice on real test slices (its ceiling).

        FID is biased upwards at small sample sizes: compare a generator's FID with the floor at a
        similar ``num_gen`` to the number of test slices.
        """
        return self.evaluate_set(test_images, test_labels)


def compute_metrics(
    generate: Callable[[int, int], FakeBatch],
    real_images: torch.Tensor | np.ndarray,
    real_labels: torch.Tensor | np.ndarray | None,
    num_classes: int,
    metrics: Sequence[str] | str = KNOWN_METRICS,
    num_gen: int = 1000,
    inputs: str = "images",
    extractor: nn.Module | None = None,
    device: str | torch.device = "cpu",
) -> dict[str, float]:
    """One-shot :class:`GanMetrics`: metrics of ``generate`` (see :meth:`GanMetrics.__call__`)
    against ``real_images [N, M, H, W]`` / ``real_labels [N, H, W]``. Nothing is cached; for
    repeated evaluation build a :class:`GanMetrics` once."""
    names = validate_metrics(metrics, True, True, inputs)
    config = MetricsConfig(metrics=names, inputs=inputs, num_gen=num_gen)
    return GanMetrics(real_images, real_labels, num_classes, config, extractor, device)(generate)
