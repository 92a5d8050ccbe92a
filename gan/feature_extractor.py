"""Feature extractors for FID/KID on multi-channel medical slices.

A feature extractor is an ``nn.Module`` mapping images ``[N, C, H, W]`` in [-1, 1] (any C: modality
channels and/or one-hot mask channels scaled to [-1, 1]; any H, W >= 16) to features ``[N, D]``.

Two are provided:

* :class:`SliceTextureFeatures` — the offline default. Nothing is downloaded; its weights are drawn
  from a fixed seed in code. It concatenates five groups of features, each designed to respond to a
  failure mode of medical-slice generators:

  1. *random multi-scale convolutional embedding* — a fixed random 2-layer ReLU conv net (He-scaled
     Gaussian weights over all C channels jointly) applied at scales 1, 1/2, 1/4; spatial mean and
     standard deviation of every feature map. Random-weight conv embeddings are a known meaningful
     baseline for FID-like metrics (Naeem et al. 2020, "Reliable Fidelity and Diversity Metrics for
     Generative Models"): they respond to local structure without ImageNet priors, which do not
     transfer to MR/CT anyway.
  2. *intensity histograms* per channel (16 triangular soft bins over [-1, 1], square-rooted, so the
     Euclidean distance between two embeddings is the Hellinger distance of the histograms) —
     contrast, windowing and tissue proportions.
  3. *gradient-magnitude statistics* per channel and scale (Sobel; mean and standard deviation) —
     sharpness and edge density; blur and noise move them in opposite directions.
  4. *Gabor texture energies* per channel and scale (4 orientations, wavelength 4 px at each scale,
     i.e. 4, 8, 16 px in the input) — oriented texture and periodic artefacts (checkerboards).
  5. *cross-channel correlations* (Pearson, per image, at scales 1 and 1/4) — whether modalities agree
     with each other and with the mask channels; empty for C = 1.

  Each group is divided by the square root of its dimension, so every group contributes a comparable
  share of a squared Euclidean distance however many features it has (the random embedding would
  otherwise dominate). Values are therefore *not* comparable with Inception FIDs, only between runs
  using this extractor with the same number of channels.

* :class:`gan.inception.InceptionFeatures` — Inception-v3 pool3 features from a user-given weights
  file (see that module for the expected key layout and how channels are fed).

:func:`load_feature_extractor` picks one; :func:`extract_features` runs one over a large array in
batches.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from gan.image_batches import check_image_batch, take_images
from gan.inception import InceptionConfig, InceptionFeatures


@runtime_checkable
class FeatureExtractor(Protocol):
    """What the metrics need: a module with ``in_channels``, ``feature_dim`` and a forward
    ``images [N, in_channels, H, W] in [-1, 1] -> features [N, feature_dim] float32``."""

    in_channels: int
    feature_dim: int

    def __call__(self, images: torch.Tensor) -> torch.Tensor: ...


@dataclass
class SliceTextureConfig:
    """Settings of the offline default extractor. Changing any of them changes the feature space:
    FIDs are comparable only between runs with identical settings."""

    seed: int = 20250301  # weights of the random conv embedding are drawn from this seed
    num_scales: int = 3  # scales 1, 1/2, 1/4 of the input
    conv_width: int = 32  # feature maps per random conv layer
    histogram_bins: int = 16
    gabor_orientations: int = 4
    gabor_wavelength: float = 4.0  # pixels, at every scale
    feature_scale: float = 10.0  # overall multiplier, so FIDs land in a readable range


def _he_gaussian(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """Gaussian conv weights with He scaling (std = sqrt(2 / fan_in)) from a private generator."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    fan_in = math.prod(shape[1:])
    return torch.randn(shape, generator=generator, dtype=torch.float32) * math.sqrt(2.0 / fan_in)


def _sobel_kernels() -> torch.Tensor:
    """[2, 1, 3, 3] Sobel x and y kernels, divided by 8 so a unit step edge gives magnitude ~1/4."""
    sobel_x = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]) / 8.0
    return torch.stack([sobel_x, sobel_x.t()]).unsqueeze(1)


def _gabor_kernels(orientations: int, wavelength: float) -> torch.Tensor:
    """[O, 1, k, k] even (cosine) Gabor kernels, zero mean (blind to flat intensity) and unit L1 norm.

    sigma = wavelength / 2 (about one octave of bandwidth), support k = 2 * ceil(1.5 sigma) + 1.
    """
    sigma = wavelength / 2.0
    half = math.ceil(1.5 * sigma)
    coords = torch.arange(-half, half + 1, dtype=torch.float64)
    y, x = torch.meshgrid(coords, coords, indexing="ij")
    kernels = []
    for index in range(orientations):
        theta = math.pi * index / orientations
        along = x * math.cos(theta) + y * math.sin(theta)
        kernel = torch.exp(-(x**2 + y**2) / (2 * sigma**2)) * torch.cos(2 * math.pi * along / wavelength)
        kernel = kernel - kernel.mean()
        kernels.append(kernel / kernel.abs().sum())
    return torch.stack(kernels).unsqueeze(1).float()


def _mean_and_std(maps: torch.Tensor) -> torch.Tensor:
    """[N, K, h, w] -> [N, 2K]: spatial mean and standard deviation of each map."""
    flat = maps.flatten(2)
    return torch.cat([flat.mean(dim=2), flat.std(dim=2, unbiased=False)], dim=1)


def _depthwise(x: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """Apply the same [K, 1, k, k] kernels to every channel of x [N, C, h, w] with reflect padding.

    Returns [N, C, K, h, w].
    """
    n, c, h, w = x.shape
    pad = kernels.shape[-1] // 2
    padded = F.pad(x.reshape(n * c, 1, h, w), (pad, pad, pad, pad), mode="reflect")
    out = F.conv2d(padded, kernels)
    return out.reshape(n, c, kernels.shape[0], h, w)


def _channel_correlations(x: torch.Tensor) -> torch.Tensor:
    """[N, C, h, w] -> [N, C(C-1)/2]: Pearson correlation of every channel pair within each image
    (0 where a channel is constant)."""
    n, c = x.shape[:2]
    flat = x.flatten(2)
    centred = flat - flat.mean(dim=2, keepdim=True)
    norm = centred.norm(dim=2, keepdim=True).clamp_min(1e-6)
    unit = centred / norm
    corr = unit @ unit.transpose(1, 2)  # [N, C, C]
    rows, cols = torch.triu_indices(c, c, offset=1)
    return corr[:, rows, cols]


class SliceTextureFeatures(nn.Module):
    """Offline default feature extractor (see the module docstring for the five feature groups).

    Args:
        in_channels: C, the number of channels of the images it will see (modalities and/or masks).
        config: :class:`SliceTextureConfig`.

    Forward: images ``[N, C, H, W]`` in [-1, 1] (H, W >= 16) -> features ``[N, feature_dim]`` float32.
    Deterministic: the same images always give the same features (weights fixed by ``config.seed``;
    bit-identical on CPU).
    """

    def __init__(self, in_channels: int, config: SliceTextureConfig | None = None):
        super().__init__()
        if in_channels < 1:
            raise ValueError(f"SliceTextureFeatures: in_channels must be >= 1, got {in_channels}")
        self.config = config or SliceTextureConfig()
        self.in_channels = in_channels
        cfg = self.config
        width = cfg.conv_width
        # Buffers, not parameters: nothing here is trained, and nothing needs saving (non-persistent).
        self.register_buffer("conv1", _he_gaussian((width, in_channels, 3, 3), cfg.seed), persistent=False)
        self.register_buffer("conv2", _he_gaussian((width, width, 3, 3), cfg.seed + 1), persistent=False)
        self.register_buffer("sobel", _sobel_kernels(), persistent=False)
        self.register_buffer(
            "gabor", _gabor_kernels(cfg.gabor_orientations, cfg.gabor_wavelength), persistent=False
        )
        self.group_dims = {
            "random_conv": cfg.num_scales * 4 * width,
            "histogram": in_channels * cfg.histogram_bins,
            "gradient": cfg.num_scales * in_channels * 2,
            "gabor": cfg.num_scales * in_channels * cfg.gabor_orientations,
            "correlation": 2 * in_channels * (in_channels - 1) // 2,
        }
        self.feature_dim = sum(self.group_dims.values())

    def _pyramid(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Scales 1, 1/2, ... of the images by 2x2 average pooling."""
        levels = [images]
        for _ in range(self.config.num_scales - 1):
            levels.append(F.avg_pool2d(levels[-1], 2))
        return levels

    def _random_conv(self, level: torch.Tensor) -> torch.Tensor:
        """[N, C, h, w] -> [N, 4 * width]: mean/std of both layers of the fixed random ReLU net."""
        hidden1 = F.relu(F.conv2d(F.pad(level, (1, 1, 1, 1), mode="reflect"), self.conv1))
        hidden2 = F.relu(F.conv2d(F.pad(hidden1, (1, 1, 1, 1), mode="reflect"), self.conv2, stride=2))
        return torch.cat([_mean_and_std(hidden1), _mean_and_std(hidden2)], dim=1)

    def _histogram(self, images: torch.Tensor) -> torch.Tensor:
        """[N, C, H, W] -> [N, C * bins]: square root of triangular soft-binned intensity histograms.

        Triangular binning = linear interpolation of each value between its two nearest bin centres.
        """
        bins = self.config.histogram_bins
        n, c = images.shape[:2]
        position = (images.clamp(-1.0, 1.0).flatten(2) + 1.0) * ((bins - 1) / 2.0)  # [N, C, HW] in [0, B-1]
        lower = position.floor().clamp(max=bins - 2)
        upper_weight = position - lower
        counts = torch.zeros(n, c, bins, dtype=images.dtype, device=images.device)
        counts.scatter_add_(2, lower.long(), 1.0 - upper_weight)
        counts.scatter_add_(2, lower.long() + 1, upper_weight)
        return (counts / position.shape[2]).sqrt().flatten(1)

    def _gradient(self, level: torch.Tensor) -> torch.Tensor:
        """[N, C, h, w] -> [N, 2C]: mean and std of the Sobel gradient magnitude per channel."""
        grads = _depthwise(level, self.sobel)  # [N, C, 2, h, w]
        magnitude = torch.sqrt((grads**2).sum(dim=2) + 1e-12)
        return _mean_and_std(magnitude)

    def _gabor(self, level: torch.Tensor) -> torch.Tensor:
        """[N, C, h, w] -> [N, C * O]: mean absolute Gabor response per channel and orientation."""
        return _depthwise(level, self.gabor).abs().flatten(3).mean(dim=3).flatten(1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        check_image_batch(images, self.in_channels, type(self).__name__)
        images = images.float()
        levels = self._pyramid(images)
        groups = {
            "random_conv": torch.cat([self._random_conv(level) for level in levels], dim=1),
            "histogram": self._histogram(images),
            "gradient": torch.cat([self._gradient(level) for level in levels], dim=1),
            "gabor": torch.cat([self._gabor(level) for level in levels], dim=1),
            "correlation": torch.cat(
                [_channel_correlations(levels[0]), _channel_correlations(levels[-1])], dim=1
            ),
        }
        scaled = []
        for name, features in groups.items():
            assert features.shape == (images.shape[0], self.group_dims[name]), (name, features.shape)
            if features.shape[1] > 0:
                scaled.append(features * (self.config.feature_scale / math.sqrt(features.shape[1])))
        out = torch.cat(scaled, dim=1)
        assert out.shape == (images.shape[0], self.feature_dim)
        return out


def load_feature_extractor(
    weights_path: str | Path | None = None,
    in_channels: int = 1,
    device: str | torch.device = "cpu",
    inception_config: InceptionConfig | None = None,
) -> nn.Module:
    """The feature extractor for FID/KID, in eval mode on ``device``.

    Args:
        weights_path: an Inception-v3 weights file (safetensors, or a plain torch state dict loaded
            with ``torch.load(weights_only=True)``; layout in :mod:`gan.inception`), or None for the
            offline default :class:`SliceTextureFeatures`.
        in_channels: C, the channels of the images it will see.
        inception_config: how channels are fed to Inception-v3 (``gan.inception.InceptionConfig``:
            block variant, channel reduction); ignored without ``weights_path``.

    Returns an ``nn.Module`` following :class:`FeatureExtractor`.
    """
    if weights_path is None:
        extractor: nn.Module = SliceTextureFeatures(in_channels)
    else:

        extractor = InceptionFeatures.from_weights_file(weights_path, in_channels, inception_config)
    return extractor.eval().to(device)


def module_device(module: nn.Module) -> torch.device:
    """The device of a module's first parameter or buffer (CPU for a module with neither)."""
    for tensor in (*module.parameters(), *module.buffers()):
        return tensor.device
    return torch.device("cpu")


@torch.no_grad()
def extract_features(
    extractor: nn.Module, images: torch.Tensor | np.ndarray, batch_size: int = 64
) -> np.ndarray:
    """Run ``extractor`` over ``images [N, C, H, W]`` in [-1, 1] (tensor, array or memmap) in batches.

    Returns float64 features ``[N, D]`` (float64 because FID/KID accumulate them in float64).
    """
    if len(images) == 0:
        raise ValueError("extract_features: got an empty set of images")
    device = module_device(extractor)
    chunks = []
    for start in range(0, len(images), batch_size):
        batch = take_images(images, slice(start, start + batch_size))
        chunks.append(extractor(batch.to(device)).double().cpu().numpy())
    return np.concatenate(chunks, axis=0)
