"""NetworkConfig: the hyper-parameters that define a StyleGAN2 generator/discriminator pair.

Defaults follow StyleGAN2-ADA's 'auto' configuration (NVIDIA's train.py, cfg_specs).  Fields left ``None`` are
derived from the resolution by `NetworkConfig.resolved()`, so a YAML preset only pins what it
means to pin and `training.config` can fill the rest with its own rules first.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

MIN_RESOLUTION = 16
MAX_RESOLUTION = 512
# Upper bounds of the network sizes, far above any published configuration (StyleGAN2: z = w = 512,
# 8 mapping layers, channel_base 32768, channel_max 512).
SIZE_LIMITS = {"z_dim": 4096, "w_dim": 4096, "c_dim": 4096, "mapping_layers": 32, "d_mapping_layers": 32,
               "channel_base": 1 << 20, "channel_max": 4096, "mask_channel_base": 1 << 20, "mask_channel_max": 4096,
               "cmap_dim": 4096, "mbstd_group_size": 256, "mbstd_num_channels": 64, "num_fp16_res": 8}


@dataclass
class NetworkConfig:
    """Architecture of G and D (shared by the three variants)."""

    resolution: int = 128                 # output H = W, a power of two in 16...512
    z_dim: int = 512                      # latent z
    w_dim: int = 512                      # intermediate latent w (and style input of every layer)
    c_dim: int = 0                        # conditioning label c (1: slice position; 0: none)
    mapping_layers: int = 2               # FC layers of G's mapping (8 in StyleGAN2, 2 in 'auto')
    mapping_lr_mult: float = 0.01         # learning-rate multiplier of the mapping network
    w_avg_beta: float = 0.995             # decay of the tracked w_avg used by truncation
    channel_base: int | None = None       # ch(r) = min(channel_base // r, channel_max); None: auto
    channel_max: int = 512
    num_fp16_res: int = 4                 # fp16 in the N highest-resolution blocks (CUDA only)
    conv_clamp: float | None = 256.0      # activations clamped to +-conv_clamp (None: no clamp)
    mbstd_group_size: int | None = None   # minibatch-std group; None: 4
    mbstd_num_channels: int = 1           # minibatch-std feature channels
    cmap_dim: int | None = None           # D projection dimension for c; None: ch(4)
    d_mapping_layers: int = 8             # FC layers of D's c mapping (the reference keeps 8)
    mask_channel_base: int | None = None  # conditional mask encoder: e(r) = min(base // r, max);
    mask_channel_max: int | None = None   # None: half of channel_base / channel_max

    def resolved(self) -> "NetworkConfig":
        """A validated copy with every ``None`` replaced by its 'auto' value.

        Raises ValueError naming the first bad field (e.g. a resolution that is not a power of
        two in 16...512, non-positive dimensions).
        """
        cfg = dataclasses.replace(self)
        r = cfg.resolution
        if not isinstance(r, int) or r < MIN_RESOLUTION or r > MAX_RESOLUTION or r & (r - 1):
            raise ValueError(f"NetworkConfig.resolution must be a power of two in "
                             f"{MIN_RESOLUTION}...{MAX_RESOLUTION}, got {r!r}")
        if cfg.channel_base is None:
            cfg.channel_base = 16384 if r < 512 else 32768
        if cfg.mbstd_group_size is None:
            cfg.mbstd_group_size = 4
        if cfg.mask_channel_base is None:
            cfg.mask_channel_base = max(cfg.channel_base // 2, 1)
        if cfg.mask_channel_max is None:
            cfg.mask_channel_max = max(cfg.channel_max // 2, 1)
        positive = ("z_dim", "w_dim", "mapping_layers", "channel_base", "channel_max",
                    "d_mapping_layers", "mask_channel_base", "mask_channel_max")
        for name in positive:
            if getattr(cfg, name) < 1:
                raise ValueError(f"NetworkConfig.{name} must be >= 1, got {getattr(cfg, name)}")
        for name, largest in SIZE_LIMITS.items():  # a forged or mistyped config must not allocate terabytes
            value = getattr(cfg, name)
            if value is not None and value > largest:
                raise ValueError(f"NetworkConfig.{name} = {value} exceeds the largest supported {largest}")
        if cfg.c_dim < 0:
            raise ValueError(f"NetworkConfig.c_dim must be >= 0, got {cfg.c_dim}")
        if cfg.num_fp16_res < 0 or cfg.mbstd_num_channels < 0 or cfg.mbstd_group_size < 0:
            raise ValueError("NetworkConfig.num_fp16_res, mbstd_group_size and mbstd_num_channels "
                             "must be >= 0")
        if cfg.conv_clamp is not None and cfg.conv_clamp <= 0:
            raise ValueError(f"NetworkConfig.conv_clamp must be > 0 or None, got {cfg.conv_clamp}")
        if cfg.cmap_dim is not None and cfg.cmap_dim < 1:
            raise ValueError(f"NetworkConfig.cmap_dim must be >= 1 or None, got {cfg.cmap_dim}")
        if not 0.0 <= cfg.w_avg_beta < 1.0 or cfg.mapping_lr_mult <= 0:
            raise ValueError("NetworkConfig.w_avg_beta must be in [0, 1) and mapping_lr_mult > 0")
        return cfg


def channels_at(resolution: int, channel_base: int, channel_max: int) -> int:
    """Feature channels of the blocks at ``resolution``: min(channel_base // r, channel_max), >= 1."""
    return max(min(channel_base // resolution, channel_max), 1)
