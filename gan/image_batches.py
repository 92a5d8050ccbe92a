"""Image and label batches as the GAN metrics read them: rows of tensors, arrays or memory maps, and
the shape check every feature extractor applies (shared by `gan.feature_extractor` and `gan.inception`)."""
from __future__ import annotations

import numpy as np
import torch

MIN_IMAGE_SIZE = 16

ArrayLike = torch.Tensor | np.ndarray  # np.memmap included: slices are read batch by batch


def take_images(images: ArrayLike, rows: slice | np.ndarray) -> torch.Tensor:
    """Rows of images (tensor, array or memmap) as a float32 CPU tensor."""
    if isinstance(images, torch.Tensor):
        return images[rows].detach().float().cpu()
    return torch.as_tensor(np.asarray(images[rows]), dtype=torch.float32)


def take_labels(labels: ArrayLike, rows: slice | np.ndarray) -> torch.Tensor:
    """Rows of label indices (tensor, array or memmap) as a long CPU tensor."""
    if isinstance(labels, torch.Tensor):
        return labels[rows].detach().long().cpu()
    return torch.as_tensor(np.asarray(labels[rows])).long()


def check_image_batch(images: torch.Tensor, in_channels: int, who: str) -> None:
    """Raise a ValueError naming ``who`` unless ``images`` is ``[N, in_channels, H, W]`` with
    H, W >= 16 and a floating dtype."""
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"{who}: expected images [N, C, H, W], got {shape}")
    if images.shape[1] != in_channels:
        raise ValueError(
            f"{who}: built for {in_channels} channels, got images with {images.shape[1]} channels"
        )
    if min(images.shape[2:]) < MIN_IMAGE_SIZE:
        raise ValueError(
            f"{who}: images must be at least {MIN_IMAGE_SIZE}x{MIN_IMAGE_SIZE}, got "
            f"{images.shape[2]}x{images.shape[3]}"
        )
    if not images.is_floating_point():
        raise ValueError(f"{who}: images must be floating point in [-1, 1], got {images.dtype}")
