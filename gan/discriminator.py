"""Discriminator: StyleGAN2 ResNet architecture with minibatch std and projection conditioning.

Blocks from the image resolution down to 8 (each halves the resolution), then a 4x4 epilogue:
minibatch standard deviation, 3x3 conv, fully connected, output.  With c_dim > 0 the output is
projected onto a mapping of c: logit = <features, cmap(c)> / sqrt(cmap_dim) (Miyato & Koyama 2018).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from gan.config import channels_at
from gan.layers import Conv2dLayer, FullyConnectedLayer
from gan.mapping import MappingNetwork
from gan.synthesis import fp16_resolutions

RESNET_GAIN = math.sqrt(0.5)   # skip + main branch summed keep unit variance


class DiscriminatorBlock(nn.Module):
    """One ResNet block at resolution ``res``: x [N, in, res, res] -> [N, out_channels, res/2, res/2].

    The first block (``img_channels`` > 0) starts with a 1x1 from-image conv on img
    [N, img_channels, res, res].  Main branch: conv0 3x3, conv1 3x3 downsampling; skip branch: 1x1
    downsampling conv without bias; both scaled by sqrt(0.5).
    """

    def __init__(self, channels: int, out_channels: int, resolution: int, img_channels: int = 0,
                 use_fp16: bool = False, conv_clamp: float | None = None):
        super().__init__()
        self.channels = channels
        self.out_channels = out_channels
        self.resolution = resolution
        self.img_channels = img_channels
        self.use_fp16 = use_fp16
        self.from_image = (Conv2dLayer(img_channels, channels, 1, activation="lrelu", conv_clamp=conv_clamp)
                           if img_channels > 0 else None)
        self.conv0 = Conv2dLayer(channels, channels, 3, activation="lrelu", conv_clamp=conv_clamp)
        self.conv1 = Conv2dLayer(channels, out_channels, 3, activation="lrelu", down=2, conv_clamp=conv_clamp)
        self.skip = Conv2dLayer(channels, out_channels, 1, bias=False, down=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        res = self.resolution
        dtype = torch.float16 if self.use_fp16 and x.device.type == "cuda" else torch.float32
        x = x.to(dtype)
        if self.from_image is not None:
            assert x.shape[1:] == (self.img_channels, res, res)
            x = self.from_image(x)
        assert x.shape[1:] == (self.channels, res, res)
        y = self.skip(x, gain=RESNET_GAIN)
        x = self.conv0(x)
        x = self.conv1(x, gain=RESNET_GAIN)
        x = y + x
        assert x.shape[1:] == (self.out_channels, res // 2, res // 2)
        return x


class MinibatchStdLayer(nn.Module):
    """Append the mean std over groups of samples: x [N, C, H, W] -> [N, C + num_channels, H, W].

    Samples n, n + N/G, n + 2N/G, ... form a group of G = min(group_size, N) (group_size 0: the
    whole batch); the C channels are split into ``num_channels`` parts, each summarised by the
    average over its channels and pixels of the per-group standard deviation.
    """

    def __init__(self, group_size: int, num_channels: int = 1):
        super().__init__()
        self.group_size = group_size
        self.num_channels = num_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        N, C, H, W = x.shape
        G = min(self.group_size, N) if self.group_size else N
        F = self.num_channels
        if N % G:
            raise ValueError(f"minibatch std: batch size {N} is not a multiple of the group size {G}")
        if C % F:
            raise ValueError(f"minibatch std: {C} channels are not divisible into {F} groups")
        y = x.reshape(G, -1, F, C // F, H, W)                  # [G, N/G, F, C/F, H, W]
        y = y - y.mean(dim=0)                                  # deviation from the group mean
        y = (y.square().mean(dim=0) + 1e-8).sqrt()             # [N/G, F, C/F, H, W] std
        y = y.mean(dim=[2, 3, 4])                              # [N/G, F]
        y = y.reshape(-1, F, 1, 1).repeat(G, 1, H, W)          # [N, F, H, W]
        return torch.cat([x, y], dim=1)


class DiscriminatorEpilogue(nn.Module):
    """4x4 head: x [N, C, 4, 4] -> logits [N, 1] (or projection onto cmap [N, cmap_dim])."""

    def __init__(self, channels: int, cmap_dim: int, resolution: int = 4, mbstd_group_size: int = 4,
                 mbstd_num_channels: int = 1, conv_clamp: float | None = None):
        super().__init__()
        self.channels = channels
        self.cmap_dim = cmap_dim
        self.resolution = resolution
        self.mbstd = (MinibatchStdLayer(mbstd_group_size, mbstd_num_channels)
                      if mbstd_num_channels > 0 else None)
        self.conv = Conv2dLayer(channels + mbstd_num_channels, channels, 3, activation="lrelu",
                                conv_clamp=conv_clamp)
        self.fc = FullyConnectedLayer(channels * resolution * resolution, channels, activation="lrelu")
        self.out = FullyConnectedLayer(channels, 1 if cmap_dim == 0 else cmap_dim)

    def forward(self, x: torch.Tensor, cmap: torch.Tensor | None) -> torch.Tensor:
        assert x.shape[1:] == (self.channels, self.resolution, self.resolution)
        x = x.to(torch.float32)
        if self.mbstd is not None:
            x = self.mbstd(x)
        x = self.conv(x)
        x = self.fc(x.flatten(1))
        x = self.out(x)                                        # [N, 1] or [N, cmap_dim]
        if self.cmap_dim > 0:
            x = (x * cmap).sum(dim=1, keepdim=True) * (1.0 / math.sqrt(self.cmap_dim))
        return x


class Discriminator(nn.Module):
    """img [N, img_channels, res, res] in [-1, 1], c [N, c_dim] -> logits [N, 1] (real: high)."""

    def __init__(self, img_channels: int, resolution: int, c_dim: int, channel_base: int,
                 channel_max: int, num_fp16_res: int = 0, conv_clamp: float | None = None,
                 cmap_dim: int | None = None, mbstd_group_size: int = 4, mbstd_num_channels: int = 1,
                 mapping_layers: int = 8, mapping_lr_mult: float = 0.01):
        super().__init__()
        if resolution < 8 or resolution & (resolution - 1):
            raise ValueError(f"discriminator resolution must be a power of two >= 8, got {resolution}")
        if img_channels < 1:
            raise ValueError(f"discriminator needs img_channels >= 1, got {img_channels}")
        self.img_channels = img_channels
        self.img_resolution = resolution
        self.c_dim = c_dim
        resolutions = [2 ** i for i in range(resolution.bit_length() - 1, 2, -1)]   # res ... 8
        channels = {r: channels_at(r, channel_base, channel_max) for r in resolutions + [4]}
        fp16_res = fp16_resolutions(resolution, num_fp16_res)
        self.blocks = nn.ModuleList(
            DiscriminatorBlock(channels[r], channels[r // 2], r,
                               img_channels=img_channels if r == resolution else 0,
                               use_fp16=r in fp16_res, conv_clamp=conv_clamp)
            for r in resolutions)
        self.cmap_dim = 0 if c_dim == 0 else (channels[4] if cmap_dim is None else cmap_dim)
        self.mapping = (MappingNetwork(0, c_dim, self.cmap_dim, num_ws=None, num_layers=mapping_layers,
                                       lr_multiplier=mapping_lr_mult, w_avg_beta=None)
                        if c_dim > 0 else None)
        self.epilogue = DiscriminatorEpilogue(channels[4], self.cmap_dim, mbstd_group_size=mbstd_group_size,
                                              mbstd_num_channels=mbstd_num_channels, conv_clamp=conv_clamp)

    def forward(self, img: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [N, 1].  ``c`` [N, c_dim] is required when c_dim > 0; an unconditioned D accepts
        None or an empty [N, 0] tensor."""
        expected = (self.img_channels, self.img_resolution, self.img_resolution)
        if img.ndim != 4 or tuple(img.shape[1:]) != expected:
            raise ValueError(f"discriminator expects images [N, {', '.join(map(str, expected))}], "
                             f"got {list(img.shape)}")
        if self.c_dim > 0:
            if c is None or c.shape != (img.shape[0], self.c_dim):
                raise ValueError(f"discriminator expects c [N, {self.c_dim}] with N = {img.shape[0]}, "
                                 f"got {None if c is None else list(c.shape)}")
        elif c is not None and c.numel() > 0:
            raise ValueError(f"this discriminator is unconditioned (c_dim = 0) but got c {list(c.shape)}")
        x = img
        for block in self.blocks:
            x = block(x)
        cmap = self.mapping(None, c) if self.mapping is not None else None
        return self.epilogue(x, cmap)

    def extra_repr(self) -> str:
        return (f"img_channels={self.img_channels}, img_resolution={self.img_resolution}, "
                f"c_dim={self.c_dim}, cmap_dim={self.cmap_dim}")
