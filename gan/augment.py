"""Mask-aware adaptive discriminator augmentation (ADA, Karras et al. 2020), for image ⊕ mask stacks.

The discriminator's inputs are stacks of M image channels followed by L mask channels (either part
may be empty).  Every geometric op draws one transform per sample and applies it to all channels
of that sample at once, so image and mask stay pixel-aligned: image channels are resampled
bilinearly, mask channels with nearest-neighbour sampling so that they stay one-hot (values stay in
{-1, 1} for real masks).  Intensity ops (brightness, contrast) touch the image channels only.
The colour ops of the RGB pipeline (luma flip, hue, saturation) have no meaning for M arbitrary
modalities and are left out.

Each op is applied to each sample with probability p (the two rotations with 1 - sqrt(1 - p) each,
as in StyleGAN2-ADA, so that some rotation happens with probability p).  `AdaController` adapts p:
every `interval` minibatches, p += sign(E[sign D(real)] - target) * batch * interval / (speed_kimg
* 1000), clamped to [0, 1].
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

GEOMETRIC_OPS = ("xflip", "rotate90", "xint", "scale", "rotate", "aniso", "xfrac")
INTENSITY_OPS = ("brightness", "contrast")
ALL_OPS = GEOMETRIC_OPS + INTENSITY_OPS


def _translate(tx: torch.Tensor, ty: torch.Tensor) -> torch.Tensor:
    """Batch of 3x3 translation matrices [N,3,3] (normalised coordinates)."""
    m = torch.eye(3, device=tx.device).repeat(tx.shape[0], 1, 1)
    m[:, 0, 2] = tx
    m[:, 1, 2] = ty
    return m


def _scale(sx: torch.Tensor, sy: torch.Tensor) -> torch.Tensor:
    """Batch of 3x3 scaling matrices [N,3,3]."""
    m = torch.eye(3, device=sx.device).repeat(sx.shape[0], 1, 1)
    m[:, 0, 0] = sx
    m[:, 1, 1] = sy
    return m


def _rotate(theta: torch.Tensor) -> torch.Tensor:
    """Batch of 3x3 rotation matrices [N,3,3] (angle in radians)."""
    m = torch.eye(3, device=theta.device).repeat(theta.shape[0], 1, 1)
    c, s = torch.cos(theta), torch.sin(theta)
    m[:, 0, 0], m[:, 0, 1], m[:, 1, 0], m[:, 1, 1] = c, -s, s, c
    return m


class MaskAwareAugment(nn.Module):
    """Stochastic augmentation of [N, M+L, H, W] stacks (image channels first, then mask channels).

    Args:
        image_channels: M, the channels intensity ops apply to (0 for mask-only inputs).
        label_channels: L, the one-hot mask channels (resampled with nearest neighbour).
        ops: which ops are enabled (subset of ``ALL_OPS``).
        p: initial probability of each op; change it with ``set_p``.
    Strengths follow StyleGAN2-ADA: integer translation up to 1/8 of the size, isotropic and
    anisotropic scale log2-normal with std 0.2, rotation uniform in [-pi, pi], fractional
    translation normal with std 1/8 of the size, brightness N(0, 0.2), contrast log2-normal 0.5.
    """

    def __init__(self, image_channels: int, label_channels: int, ops: Sequence[str] = ALL_OPS,
                 p: float = 0.0, xint_max: float = 0.125, scale_std: float = 0.2,
                 aniso_std: float = 0.2, xfrac_std: float = 0.125, brightness_std: float = 0.2,
                 contrast_std: float = 0.5):
        super().__init__()
        unknown = [op for op in ops if op not in ALL_OPS]
        if unknown:
            raise ValueError(f"unknown augmentation op(s) {unknown}; known: {', '.join(ALL_OPS)}")
        if image_channels < 0 or label_channels < 0 or image_channels + label_channels < 1:
            raise ValueError(f"need at least one channel, got image_channels={image_channels}, "
                             f"label_channels={label_channels}")
        self.image_channels = image_channels
        self.label_channels = label_channels
        self.ops = tuple(ops)
        self.xint_max = xint_max
        self.scale_std = scale_std
        self.aniso_std = aniso_std
        self.xfrac_std = xfrac_std
        self.brightness_std = brightness_std
        self.contrast_std = contrast_std
        self.p = 0.0
        self.set_p(p)

    def set_p(self, p: float) -> None:
        """Set the op probability (clamped to [0, 1])."""
        self.p = float(min(max(p, 0.0), 1.0))

    def _gate(self, n: int, prob: float, device: torch.device) -> torch.Tensor:
        """[N] float, 1 where the op fires for that sample (probability ``prob``)."""
        return (torch.rand(n, device=device) < prob).float()

    def geometric_matrix(self, n: int, size: int, device: torch.device) -> torch.Tensor:
        """Per-sample inverse transforms [N,3,3] mapping output to input normalised coordinates.

        Normalised coordinates span [-1, 1] over the image (align_corners=False), so one pixel
        is 2 / size; integer ops are exact pixel permutations.
        """
        p = self.p
        g_inv = torch.eye(3, device=device).repeat(n, 1, 1)
        pixel = 2.0 / size
        if "xflip" in self.ops:
            flip = torch.randint(2, (n,), device=device).float() * self._gate(n, p, device)
            g_inv = g_inv @ _scale(1 - 2 * flip, torch.ones(n, device=device))
        if "rotate90" in self.ops:
            quarter = torch.randint(4, (n,), device=device).float() * self._gate(n, p, device)
            g_inv = g_inv @ _rotate(-quarter * (math.pi / 2))
        if "xint" in self.ops:
            shift = (torch.rand(n, 2, device=device) * 2 - 1) * self.xint_max
            shift = torch.round(shift * size) * pixel * self._gate(n, p, device)[:, None]
            g_inv = g_inv @ _translate(-shift[:, 0], -shift[:, 1])
        if "scale" in self.ops:
            s = torch.exp2(torch.randn(n, device=device) * self.scale_std * self._gate(n, p, device))
            g_inv = g_inv @ _scale(1 / s, 1 / s)
        p_rot = 1 - math.sqrt(max(1 - p, 0.0))
        if "rotate" in self.ops:
            theta = (torch.rand(n, device=device) * 2 - 1) * math.pi * self._gate(n, p_rot, device)
            g_inv = g_inv @ _rotate(-theta)
        if "aniso" in self.ops:
            s = torch.exp2(torch.randn(n, device=device) * self.aniso_std * self._gate(n, p, device))
            g_inv = g_inv @ _scale(1 / s, s)
        if "rotate" in self.ops:
            theta = (torch.rand(n, device=device) * 2 - 1) * math.pi * self._gate(n, p_rot, device)
            g_inv = g_inv @ _rotate(-theta)
        if "xfrac" in self.ops:
            shift = torch.randn(n, 2, device=device) * self.xfrac_std * 2 * self._gate(n, p, device)[:, None]
            g_inv = g_inv @ _translate(-shift[:, 0], -shift[:, 1])
        return g_inv

    def apply_geometric(self, x: torch.Tensor, g_inv: torch.Tensor) -> torch.Tensor:
        """Resample x [N,M+L,H,W] by g_inv [N,3,3]: bilinear for image, nearest for mask channels.

        Reflection padding outside the field of view, identical for both parts.
        """
        n, channels, h, w = x.shape
        assert g_inv.shape == (n, 3, 3)
        grid = F.affine_grid(g_inv[:, :2, :].to(x.dtype), [n, channels, h, w], align_corners=False)
        m = self.image_channels
        parts = []
        if m > 0:
            parts.append(F.grid_sample(x[:, :m], grid, mode="bilinear", padding_mode="reflection",
                                       align_corners=False))
        if channels > m:
            parts.append(F.grid_sample(x[:, m:], grid, mode="nearest", padding_mode="reflection",
                                       align_corners=False))
        out = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
        assert out.shape == x.shape
        return out

    def apply_intensity(self, x: torch.Tensor) -> torch.Tensor:
        """Brightness and contrast on the image channels only; mask channels pass unchanged."""
        m = self.image_channels
        if m == 0:
            return x
        n = x.shape[0]
        image, mask = x[:, :m], x[:, m:]
        if "brightness" in self.ops:
            offset = torch.randn(n, device=x.device) * self.brightness_std * self._gate(n, self.p, x.device)
            image = image + offset.to(x.dtype)[:, None, None, None]
        if "contrast" in self.ops:
            gain = torch.exp2(torch.randn(n, device=x.device) * self.contrast_std
                              * self._gate(n, self.p, x.device))
            image = image * gain.to(x.dtype)[:, None, None, None]
        return torch.cat([image, mask], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Augment x [N, M+L, H, W] (H == W) with the current p; differentiable w.r.t. x."""
        n, channels, h, w = x.shape
        if channels != self.image_channels + self.label_channels:
            raise ValueError(f"expected {self.image_channels}+{self.label_channels} channels, "
                             f"got {channels}")
        if h != w:
            raise ValueError(f"augmentation expects square images, got {h}x{w}")
        if self.p <= 0:
            return x
        if any(op in self.ops for op in GEOMETRIC_OPS):
            g_inv = self.geometric_matrix(n, h, x.device)
            if not torch.equal(g_inv, torch.eye(3, device=x.device).expand_as(g_inv)):
                x = self.apply_geometric(x, g_inv)
        return self.apply_intensity(x)


class AdaController:
    """Adapts the augmentation probability from the sign of D's outputs on real images.

    ``accumulate`` the real logits of every D main step; every ``interval`` minibatches ``update``
    moves p by sign(E[sign D(real)] - target) * batch * interval / (speed_kimg * 1000).  The
    statistics are summed across processes through ``reduce`` (e.g. an all-reduce) when given.
    """

    def __init__(self, augment: MaskAwareAugment, batch_size: int, target: float = 0.6,
                 interval: int = 4, speed_kimg: float = 500.0):
        self.augment = augment
        self.batch_size = batch_size
        self.target = target
        self.interval = interval
        self.speed_kimg = speed_kimg
        self.sign_sum = 0.0
        self.count = 0.0
        self.last_signs = float("nan")

    @property
    def p(self) -> float:
        return self.augment.p

    def accumulate(self, real_logits: torch.Tensor) -> None:
        """Add the signs of D's logits on (augmented) real images [N,1] to the running stats."""
        signs = torch.sign(real_logits.detach().double())
        self.sign_sum += float(signs.sum())
        self.count += float(signs.numel())

    def update(self, reduce: Callable[[torch.Tensor], torch.Tensor] | None = None) -> float:
        """Adjust p from the stats gathered since the last update; returns the new p."""
        stats = torch.tensor([self.sign_sum, self.count], dtype=torch.float64)
        if reduce is not None:
            stats = reduce(stats)
        self.sign_sum, self.count = 0.0, 0.0
        if stats[1] <= 0:
            return self.p
        self.last_signs = float(stats[0] / stats[1])
        step = self.batch_size * self.interval / (self.speed_kimg * 1000.0)
        direction = math.copysign(1.0, self.last_signs - self.target) if self.last_signs != self.target else 0.0
        self.augment.set_p(self.p + direction * step)
        return self.p

    def state_dict(self) -> dict:
        """JSON-able state (p and the partial statistics of the current interval)."""
        return {"p": self.p, "sign_sum": self.sign_sum, "count": self.count,
                "last_signs": self.last_signs}

    def load_state_dict(self, state: dict) -> None:
        """Restore `state_dict` output."""
        self.augment.set_p(state["p"])
        self.sign_sum = float(state["sign_sum"])
        self.count = float(state["count"])
        self.last_signs = float(state.get("last_signs", float("nan")))
