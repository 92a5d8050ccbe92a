"""The three generator variants behind one factory, and their discriminators.

==============  ============================  ============================
variant         G                             D input
==============  ============================  ============================
baseline        z, c -> M + L channels        image ⊕ mask (M + L)
mask            z, c -> L mask channels       mask (L)
conditional     z, c, mask -> M channels      image ⊕ mask (M + L)
==============  ============================  ============================

Conditional injection.  A `MaskEncoder` turns the mask into a feature pyramid with one map per
synthesis resolution (4 ... res), and every synthesis block concatenates the map of its resolution
to the input of its second modulated conv.  We chose concatenation over spatially-varying
(SPADE-like) modulation because it leaves the modulated convolution exactly as in StyleGAN2: styles
stay per sample, so weight demodulation (normalising each output filter by sqrt(sum w'^2)) remains
exact and the grouped/fused ops and their kernels apply unchanged; per-pixel styles would make the
demodulation factor spatially varying and rule out the grouped-conv form.  The mask still reaches
every scale pixel-aligned (the finest map enters at the output resolution, through a 3x3 receptive
field), which is what makes the generated image fit its mask.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from gan.config import NetworkConfig, channels_at
from gan.discriminator import Discriminator
from gan.layers import Conv2dLayer
from gan.mapping import MappingNetwork
from gan.masks import channels_to_labels
from gan.synthesis import SynthesisNetwork, block_resolutions


@dataclass(frozen=True)
class Variant:
    """What a variant is -- the one place the loss, the loop, sampling, the config and the CLI read.

    makes_images / makes_masks: G outputs the M image channels / the L mask channels (images first);
    needs_mask: G takes a mask (and D sees G's output with that mask); d_sees_image: D's input holds
    the M image channels besides the L mask channels; default_pl_weight: the path-length weight of
    'auto' (0 for masks only: measured to slow the mask generator down, checkpoints/README.md);
    metrics: the snapshot metrics that apply (consistency needs images and the masks that go with them).
    """

    name: str
    makes_images: bool
    makes_masks: bool
    needs_mask: bool
    d_sees_image: bool
    default_pl_weight: float
    metrics: tuple[str, ...]

    def out_channels(self, image_channels: int, label_channels: int) -> int:
        """G's output channels: M if it makes images, + L if it makes masks."""
        return image_channels * self.makes_images + label_channels * self.makes_masks

    def d_channels(self, image_channels: int, label_channels: int) -> int:
        """D's input channels: M if it sees images, + the L mask channels."""
        return image_channels * self.d_sees_image + label_channels

    def split(self, out: torch.Tensor, image_channels: int, given_labels: torch.Tensor | None = None
              ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """G output [N, out_channels, H, W] -> (images [N, M, H, W] clamped to [-1, 1], or None; labels
        [N, H, W] long: decoded from the mask channels, or ``given_labels`` for a variant that takes a mask)."""
        images = out[:, :image_channels].clamp(-1, 1) if self.makes_images else None
        if not self.makes_masks:
            return images, given_labels
        return images, channels_to_labels(out[:, image_channels * self.makes_images:])


VARIANT_TABLE = {
    "baseline": Variant("baseline", makes_images=True, makes_masks=True, needs_mask=False, d_sees_image=True,
                        default_pl_weight=2.0, metrics=("fid", "kid", "consistency")),
    "mask": Variant("mask", makes_images=False, makes_masks=True, needs_mask=False, d_sees_image=False,
                    default_pl_weight=0.0, metrics=("fid", "kid")),
    "conditional": Variant("conditional", makes_images=True, makes_masks=False, needs_mask=True, d_sees_image=True,
                           default_pl_weight=2.0, metrics=("fid", "kid", "consistency")),
}
VARIANTS = tuple(VARIANT_TABLE)


def variant_spec(name: str) -> Variant:
    """The `Variant` called ``name`` (ValueError naming the known ones otherwise)."""
    if name not in VARIANT_TABLE:
        raise ValueError(f"unknown variant {name!r}; choose one of {', '.join(VARIANTS)}")
    return VARIANT_TABLE[name]


class MaskEncoder(nn.Module):
    """mask [N, L, res, res] in [-1, 1] -> {r: features [N, e(r), r, r]} for r = res, ..., 4.

    e(r) = min(channel_base // r, channel_max).  A 1x1 from-mask conv, then per resolution a 3x3
    conv whose output is the feature map of that resolution and (above 4x4) a 3x3 FIR-downsampling
    conv to the next resolution; all leaky ReLU, equalised lr.
    """

    def __init__(self, in_channels: int, resolution: int, channel_base: int, channel_max: int,
                 conv_clamp: float | None = None):
        super().__init__()
        self.in_channels = in_channels
        self.resolution = resolution
        self.resolutions = block_resolutions(resolution)[::-1]       # res, ..., 4
        self.feature_channels = {r: channels_at(r, channel_base, channel_max) for r in self.resolutions}
        e = self.feature_channels
        self.from_mask = Conv2dLayer(in_channels, e[resolution], 1, activation="lrelu", conv_clamp=conv_clamp)
        self.refine = nn.ModuleList(
            Conv2dLayer(e[r], e[r], 3, activation="lrelu", conv_clamp=conv_clamp) for r in self.resolutions)
        self.down = nn.ModuleList(
            Conv2dLayer(e[r], e[r // 2], 3, activation="lrelu", down=2, conv_clamp=conv_clamp)
            for r in self.resolutions[:-1])

    def forward(self, mask: torch.Tensor) -> dict[int, torch.Tensor]:
        N = mask.shape[0]
        assert mask.shape == (N, self.in_channels, self.resolution, self.resolution)
        x = self.from_mask(mask)
        features = {}
        for i, r in enumerate(self.resolutions):
            x = self.refine[i](x)
            features[r] = x                                          # [N, e(r), r, r]
            if i < len(self.down):
                x = self.down[i](x)
        return features


class Generator(nn.Module):
    """z [N, z_dim], c [N, c_dim] (+ mask [N, L, H, W] for 'conditional') -> [N, out_channels, H, W].

    Attributes: variant, z_dim, c_dim, w_dim, num_ws, img_resolution, out_channels, mask_channels,
    image_channels, label_channels, mapping (MappingNetwork), synthesis (SynthesisNetwork).
    """

    def __init__(self, variant: str, cfg: NetworkConfig, image_channels: int, label_channels: int):
        super().__init__()
        check_variant_inputs(variant, image_channels, label_channels)
        cfg = cfg.resolved()
        self.variant = variant
        self.image_channels = image_channels
        self.label_channels = label_channels
        self.z_dim, self.c_dim, self.w_dim = cfg.z_dim, cfg.c_dim, cfg.w_dim
        self.img_resolution = cfg.resolution
        spec = variant_spec(variant)
        self.out_channels = spec.out_channels(image_channels, label_channels)
        self.mask_channels = label_channels if spec.needs_mask else 0
        encoder = (MaskEncoder(label_channels, cfg.resolution, cfg.mask_channel_base, cfg.mask_channel_max,
                               conv_clamp=cfg.conv_clamp)
                   if spec.needs_mask else None)
        self.synthesis = SynthesisNetwork(cfg.w_dim, cfg.resolution, self.out_channels, cfg.channel_base,
                                          cfg.channel_max, num_fp16_res=cfg.num_fp16_res,
                                          conv_clamp=cfg.conv_clamp, mask_encoder=encoder)
        self.num_ws = self.synthesis.num_ws
        self.mapping = MappingNetwork(cfg.z_dim, cfg.c_dim, cfg.w_dim, num_ws=self.num_ws,
                                      num_layers=cfg.mapping_layers, lr_multiplier=cfg.mapping_lr_mult,
                                      w_avg_beta=cfg.w_avg_beta)

    def forward(self, z: torch.Tensor, c: torch.Tensor | None, mask: torch.Tensor | None = None,
                truncation_psi: float = 1.0, truncation_cutoff: int | None = None,
                noise_mode: str = "random", update_emas: bool = False) -> torch.Tensor:
        """Generated channels [N, out_channels, H, W] (unclamped; ~[-1, 1] once trained).

        ``mask`` [N, L, H, W] in [-1, 1]: required by 'conditional', refused by the others.
        ``truncation_psi`` / ``truncation_cutoff``: truncation trick (see MappingNetwork);
        ``noise_mode``: random | const | none; ``update_emas`` updates w_avg (training only).
        """
        ws = self.mapping(z, c, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff,
                          update_emas=update_emas)
        img = self.synthesis(ws, mask=mask, noise_mode=noise_mode, update_emas=update_emas)
        assert img.shape == (ws.shape[0], self.out_channels, self.img_resolution, self.img_resolution)
        return img

    def extra_repr(self) -> str:
        return (f"variant={self.variant!r}, out_channels={self.out_channels}, "
                f"mask_channels={self.mask_channels}, img_resolution={self.img_resolution}")


def check_variant_inputs(variant: str, image_channels: int, label_channels: int) -> None:
    """Raise ValueError for an unknown variant, M < 1 or L < 2."""
    variant_spec(variant)
    if not isinstance(image_channels, int) or image_channels < 1:
        raise ValueError(f"image_channels (M modalities) must be an integer >= 1, got {image_channels!r}")
    if not isinstance(label_channels, int) or label_channels < 2:
        raise ValueError(f"label_channels (L classes incl. background) must be an integer >= 2, "
                         f"got {label_channels!r}")


def build_generator(variant: str, cfg: NetworkConfig, image_channels: int, label_channels: int) -> Generator:
    """The generator of ``variant`` ('baseline' | 'mask' | 'conditional') for M image channels and
    L label classes; out_channels: baseline M + L, mask L, conditional M (given an L-channel mask)."""
    return Generator(variant, cfg, image_channels, label_channels)


def discriminator_channels(variant: str, image_channels: int, label_channels: int) -> int:
    """Channels D sees: baseline and conditional M + L (image ⊕ mask), mask L."""
    check_variant_inputs(variant, image_channels, label_channels)
    return variant_spec(variant).d_channels(image_channels, label_channels)


def build_discriminator(variant: str, cfg: NetworkConfig, image_channels: int,
                        label_channels: int) -> Discriminator:
    """The discriminator for ``variant``: D(img [N, C_D, H, W], c [N, c_dim]) -> logits [N, 1] with
    C_D = discriminator_channels(variant, M, L)."""
    in_channels = discriminator_channels(variant, image_channels, label_channels)
    cfg = cfg.resolved()
    return Discriminator(in_channels, cfg.resolution, cfg.c_dim, cfg.channel_base, cfg.channel_max,
                         num_fp16_res=cfg.num_fp16_res, conv_clamp=cfg.conv_clamp, cmap_dim=cfg.cmap_dim,
                         mbstd_group_size=cfg.mbstd_group_size, mbstd_num_channels=cfg.mbstd_num_channels,
                         mapping_layers=cfg.d_mapping_layers, mapping_lr_mult=cfg.mapping_lr_mult)
