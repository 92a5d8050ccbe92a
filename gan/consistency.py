"""Mask-image consistency: do generated images show the anatomy their generated masks claim?

A small 2D U-Net (MONAI ``UNet``) is trained briefly on the *real* training slices (images -> label
indices). It then segments the generated images, and its prediction is compared with the generated
masks by Dice. A pair generator whose image ignores its mask scores near chance; one whose images
are faithful to their masks approaches the segmenter's Dice on held-out real slices (the ceiling,
see ``GanMetrics.floor``).

Dice is accumulated over the whole set (2 sum TP / (sum |pred| + sum |target|)) rather than averaged
per slice, so slices where a class is absent from both prediction and mask need no convention.
Training draws from private torch/numpy generators inside ``torch.random.fork_rng``, so it never
changes the global random streams of the caller.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss
from monai.networks.nets import UNet
from torch import nn

from gan.image_batches import ArrayLike, take_images, take_labels


@dataclass
class ConsistencyConfig:
    """The consistency segmenter and its brief training."""

    # Calibrated on the phantom data at 32 px (benchmarks/bench_metrics.py): about 5 s on 2 CPU
    # cores; Dice on held-out real slices ~0.8 (mean over the 5 foreground classes).
    steps: int = 300
    batch_size: int = 32
    learning_rate: float = 1e-2
    channels: tuple[int, ...] = (16, 32, 64)  # U-Net feature maps per level
    num_res_units: int = 1
    flip_augment: bool = True  # random left-right/up-down flips of the training slices
    seed: int = 0


class ConsistencySegmenter(nn.Module):
    """A 2D U-Net mapping images [N, M, H, W] in [-1, 1] to class logits [N, L, H, W].

    Any H, W: inputs are reflect-padded up to a multiple of the U-Net's total stride and the logits
    cropped back.
    """

    def __init__(self, in_channels: int, num_classes: int, config: ConsistencyConfig):
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"ConsistencySegmenter: need num_classes >= 2 (background + 1), got {num_classes}")
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.unet = UNet(
            spatial_dims=2,
            in_channels=in_channels,
            out_channels=num_classes,
            channels=config.channels,
            strides=(2,) * (len(config.channels) - 1),
            num_res_units=config.num_res_units,
        )
        self.multiple = 2 ** (len(config.channels) - 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        n, c, h, w = images.shape
        if c != self.in_channels:
            raise ValueError(f"ConsistencySegmenter: built for {self.in_channels} channels, got {c}")
        pad_h = -h % self.multiple
        pad_w = -w % self.multiple
        padded = F.pad(images, (0, pad_w, 0, pad_h), mode="reflect") if pad_h or pad_w else images
        logits = self.unet(padded)[:, :, :h, :w]
        assert logits.shape == (n, self.num_classes, h, w)
        return logits

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """images [N, M, H, W] in [-1, 1] -> predicted label indices [N, H, W] long."""
        was_training = self.training
        self.eval()
        labels = self(images).argmax(dim=1)
        self.train(was_training)
        return labels


def check_pairs(images: ArrayLike, labels: ArrayLike, num_classes: int, who: str) -> None:
    """ValueError naming ``who`` unless images [N, M, H, W] and labels [N, H, W] with indices in
    0..num_classes-1 match."""
    if images.ndim != 4 or labels.ndim != 3:
        raise ValueError(f"{who}: expected images [N, M, H, W] and labels [N, H, W], got "
                         f"{tuple(images.shape)} and {tuple(labels.shape)}")
    if images.shape[0] != labels.shape[0] or tuple(images.shape[2:]) != tuple(labels.shape[1:]):
        raise ValueError(f"{who}: images {tuple(images.shape)} and labels {tuple(labels.shape)} do not match")
    if images.shape[0] == 0:
        raise ValueError(f"{who}: got an empty set of slices")
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= num_classes:
        raise ValueError(f"{who}: label indices must lie in 0..{num_classes - 1}, got {low}..{high}")


def _random_flips(images: torch.Tensor, labels: torch.Tensor, generator: torch.Generator):
    """Flip each slice left-right and/or up-down with probability 1/2 (images and labels together)."""
    flips = torch.rand(2, images.shape[0], generator=generator) < 0.5
    for axis, flip in zip((-1, -2), flips):
        images = torch.where(flip[:, None, None, None], images.flip(axis), images)
        labels = torch.where(flip[:, None, None], labels.flip(axis), labels)
    return images, labels


def train_consistency_segmenter(
    images: ArrayLike,
    labels: ArrayLike,
    num_classes: int,
    steps: int | None = None,
    seed: int | None = None,
    config: ConsistencyConfig | None = None,
    device: str | torch.device = "cpu",
    rows: np.ndarray | None = None,
) -> ConsistencySegmenter:
    """Train the consistency segmenter briefly on real slices.

    Args:
        images: [N, M, H, W] real images in [-1, 1] (tensor, array or memmap).
        labels: [N, H, W] real label indices in 0..num_classes-1.
        num_classes: L, including background (index 0).
        steps, seed: override ``config.steps`` / ``config.seed``.
        config: :class:`ConsistencyConfig` (defaults otherwise).
        rows: train on these rows of images/labels only (default: all), e.g. the training
            patients' rows of a memory-mapped slice cache; nothing else is read.

    Returns the trained :class:`ConsistencySegmenter` in eval mode. Deterministic for a given seed on
    CPU; the caller's global RNG state is left as it was.
    """
    config = config or ConsistencyConfig()
    steps = config.steps if steps is None else steps
    seed = config.seed if seed is None else seed
    check_pairs(images, labels, num_classes, "train_consistency_segmenter")
    rows = np.arange(images.shape[0]) if rows is None else np.asarray(rows, dtype=np.int64)
    if len(rows) == 0 or rows.min() < 0 or rows.max() >= images.shape[0]:
        raise ValueError(f"train_consistency_segmenter: rows must be a non-empty selection of 0..{images.shape[0] - 1}")
    devices = list(range(torch.cuda.device_count())) if torch.device(device).type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        segmenter = ConsistencySegmenter(images.shape[1], num_classes, config).to(device)
        generator = torch.Generator().manual_seed(seed)
        optimizer = torch.optim.Adam(segmenter.parameters(), lr=config.learning_rate)
        loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
        segmenter.train()
        for _ in range(steps):
            # Sorted rows: memmaps read faster, and a batch's order does not matter.
            picks = torch.randint(0, len(rows), (config.batch_size,), generator=generator).numpy()
            batch_rows = np.sort(rows[picks])
            batch_images, batch_labels = take_images(images, batch_rows), take_labels(labels, batch_rows)
            if config.flip_augment:
                batch_images, batch_labels = _random_flips(batch_images, batch_labels, generator)
            logits = segmenter(batch_images.to(device))
            loss = loss_fn(logits, batch_labels.to(device).unsqueeze(1))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return segmenter.eval()


class DiceAccumulator:
    """Set-level Dice per class, accumulated batch by batch (streams over any number of slices)."""

    def __init__(self, num_classes: int):
        self.num_classes = num_classes
        self.intersection = torch.zeros(num_classes, dtype=torch.float64)
        self.predicted = torch.zeros(num_classes, dtype=torch.float64)
        self.target = torch.zeros(num_classes, dtype=torch.float64)
        self.fg_intersection = 0.0
        self.fg_predicted = 0.0
        self.fg_target = 0.0

    def update(self, predicted: torch.Tensor, target: torch.Tensor) -> None:
        """Add predicted and target label indices, both [N, H, W] long."""
        assert predicted.shape == target.shape, (predicted.shape, target.shape)
        predicted, target = predicted.flatten().cpu(), target.flatten().cpu()
        length = self.num_classes
        self.intersection += torch.bincount(target[predicted == target], minlength=length)[:length].double()
        self.predicted += torch.bincount(predicted, minlength=length)[:length].double()
        self.target += torch.bincount(target, minlength=length)[:length].double()
        self.fg_intersection += float(((predicted > 0) & (target > 0)).sum())
        self.fg_predicted += float((predicted > 0).sum())
        self.fg_target += float((target > 0).sum())

    def result(self) -> dict[str, float]:
        """``dice_class_k`` for k = 1..L-1 (NaN when class k is in neither prediction nor target),
        ``dice_mean`` (mean of the defined foreground classes; NaN if none) and ``dice_foreground``
        (all foreground classes merged)."""
        denominator = self.predicted + self.target
        dice = torch.where(denominator > 0, 2 * self.intersection / denominator.clamp_min(1), torch.nan)
        result = {f"dice_class_{k}": float(dice[k]) for k in range(1, self.num_classes)}
        defined = dice[1:][~torch.isnan(dice[1:])]
        result["dice_mean"] = float(defined.mean()) if len(defined) else math.nan
        fg_denominator = self.fg_predicted + self.fg_target
        result["dice_foreground"] = 2 * self.fg_intersection / fg_denominator if fg_denominator else math.nan
        return result


@torch.no_grad()
def mask_image_consistency(
    segmenter: ConsistencySegmenter,
    images: ArrayLike,
    labels: ArrayLike,
    num_classes: int,
    batch_size: int = 64,
) -> dict[str, float]:
    """Dice between the segmenter's prediction on ``images`` and the masks ``labels``.

    Args:
        segmenter: from :func:`train_consistency_segmenter`.
        images: [N, M, H, W] (generated) images in [-1, 1].
        labels: [N, H, W] (generated) label indices in 0..num_classes-1.

    Returns ``{"dice_class_1": ..., ..., "dice_mean": ..., "dice_foreground": ...}`` in [0, 1]
    (see :meth:`DiceAccumulator.result`).
    """
    check_pairs(images, labels, num_classes, "mask_image_consistency")
    if num_classes != segmenter.num_classes:
        raise ValueError(f"mask_image_consistency: segmenter has {segmenter.num_classes} classes, "
                         f"num_classes is {num_classes}")
    device = next(segmenter.parameters()).device
    accumulator = DiceAccumulator(num_classes)
    for start in range(0, images.shape[0], batch_size):
        rows = slice(start, start + batch_size)
        predicted = segmenter.predict(take_images(images, rows).to(device))
        accumulator.update(predicted, take_labels(labels, rows))
    return accumulator.result()
