"""SynthesisNetwork: ws -> image, StyleGAN2 'skip' architecture with any number of output channels.

Blocks at 4, 8, ..., resolution.  The 4x4 block starts from a learned constant; every later block
upsamples with its first modulated conv (conv0) and refines with a second (conv1).  Each block has
a to-output layer; the outputs are FIR-upsampled and summed ('skip').  Layer i of the network takes
ws[:, i]; a block's to-output shares the w of the next block's conv0, so num_ws = 2*log2(res) - 2.

Optional spatial features (the conditional variant's mask pyramid, see gan.variants.MaskEncoder)
are concatenated to the input of every block's conv1 at that block's resolution.
"""
from __future__ import annotations

import torch
from torch import nn

from gan import ops
from gan.config import channels_at
from gan.layers import ModulatedConvLayer, ToOutputLayer, resample_filter

NOISE_MODES = ("random", "const", "none")


def block_resolutions(resolution: int) -> list[int]:
    """[4, 8, ..., resolution] for a power-of-two resolution."""
    return [2 ** i for i in range(2, resolution.bit_length())]


def fp16_resolutions(resolution: int, num_fp16_res: int) -> set[int]:
    """The block resolutions that run in fp16: the ``num_fp16_res`` highest, never 4x4."""
    lowest = max(2 ** (resolution.bit_length() - num_fp16_res), 8)
    return {r for r in block_resolutions(resolution) if num_fp16_res > 0 and r >= lowest}


class SynthesisBlock(nn.Module):
    """One resolution: (const | conv0 up) -> [concat features] -> conv1 -> to-output.

    x [N, in_channels, res/2, res/2] (None for the 4x4 block), img [N, C_out, res/2, res/2] (None
    for the 4x4 block), ws [N, num_conv + 1, w_dim] -> (x [N, out_channels, res, res],
    img [N, C_out, res, res]).
    """

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int,
                 img_channels: int, feature_channels: int = 0, use_fp16: bool = False,
                 conv_clamp: float | None = None):
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.resolution = resolution
        self.img_channels = img_channels
        self.feature_channels = feature_channels
        self.use_fp16 = use_fp16
        if in_channels == 0:
            self.const = nn.Parameter(torch.randn(out_channels, resolution, resolution))
            self.conv0 = None
        else:
            self.conv0 = ModulatedConvLayer(in_channels, out_channels, w_dim, resolution, up=2,
                                            conv_clamp=conv_clamp)
        self.conv1 = ModulatedConvLayer(out_channels + feature_channels, out_channels, w_dim,
                                        resolution, conv_clamp=conv_clamp)
        self.to_output = ToOutputLayer(out_channels, img_channels, w_dim, conv_clamp=conv_clamp)
        self.num_conv = 1 if self.conv0 is None else 2
        self.register_buffer("resample_filter", resample_filter(in_channels > 0), persistent=False)

    def compute_dtype(self, device: torch.device) -> torch.dtype:
        """fp16 only for fp16 blocks on CUDA (CPU fp16 convolutions are ~90x slower)."""
        if self.use_fp16 and device.type == "cuda":
            return torch.float16
        return torch.float32

    def choose_fused_modconv(self, batch: int, device: torch.device, dtype: torch.dtype) -> bool:
        """Grouped ("fused") vs scale/conv/scale modulated conv.

        The reference uses the grouped form for fp32 inference on GPU and for a batch of one, the
        scale/conv/scale form in training and fp16.  On CPU the scale/conv/scale form measured
        1.2-2x faster for batches > 1 (benchmarks/bench_generator.py), so it runs there.
        """
        if batch == 1:
            return True
        return device.type == "cuda" and not self.training and dtype == torch.float32

    def forward(self, x: torch.Tensor | None, img: torch.Tensor | None, ws: torch.Tensor,
                features: torch.Tensor | None = None, noise_mode: str = "random",
                fused_modconv: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        N, res = ws.shape[0], self.resolution
        assert ws.shape[1] == self.num_conv + 1, f"block {res} expects {self.num_conv + 1} ws"
        dtype = self.compute_dtype(ws.device)
        if fused_modconv is None:
            fused_modconv = self.choose_fused_modconv(N, ws.device, dtype)
        if self.conv0 is None:
            x = self.const.to(dtype).unsqueeze(0).repeat(N, 1, 1, 1)      # [N, C, 4, 4]
        else:
            assert x.shape == (N, self.in_channels, res // 2, res // 2)
            x = self.conv0(x.to(dtype), ws[:, 0], noise_mode=noise_mode, fused_modconv=fused_modconv)
        if self.feature_channels:
            assert features is not None and features.shape == (N, self.feature_channels, res, res), \
                f"block {res} expects features [N, {self.feature_channels}, {res}, {res}]"
            x = torch.cat([x, features.to(dtype)], dim=1)
        x = self.conv1(x, ws[:, self.num_conv - 1], noise_mode=noise_mode, fused_modconv=fused_modconv)
        y = self.to_output(x, ws[:, self.num_conv], fused_modconv=fused_modconv).to(torch.float32)
        img = y if img is None else ops.upsample2d(img, self.resample_filter) + y
        assert x.shape == (N, self.out_channels, res, res) and img.shape == (N, self.img_channels, res, res)
        return x, img


class SynthesisNetwork(nn.Module):
    """ws [N, num_ws, w_dim] (+ a mask) -> image [N, img_channels, res, res].

    The output is not clamped: after training it lies approximately in [-1, 1].
    ``mask_encoder`` (the conditional variant; see gan.variants.MaskEncoder) is an nn.Module with
    attributes ``in_channels`` (L) and ``feature_channels`` {r: e(r)}, mapping a mask
    [N, L, res, res] to {r: features [N, e(r), r, r]}; the network owns it, and block r
    concatenates features[r] to its conv1 input.
    """

    def __init__(self, w_dim: int, resolution: int, img_channels: int, channel_base: int,
                 channel_max: int, num_fp16_res: int = 0, conv_clamp: float | None = None,
                 mask_encoder: nn.Module | None = None):
        super().__init__()
        if resolution < 4 or resolution & (resolution - 1):
            raise ValueError(f"synthesis resolution must be a power of two >= 4, got {resolution}")
        if img_channels < 1:
            raise ValueError(f"synthesis needs img_channels >= 1, got {img_channels}")
        self.w_dim = w_dim
        self.img_resolution = resolution
        self.img_channels = img_channels
        self.mask_encoder = mask_encoder
        self.mask_channels = 0 if mask_encoder is None else mask_encoder.in_channels
        feature_channels = {} if mask_encoder is None else mask_encoder.feature_channels
        fp16_res = fp16_resolutions(resolution, num_fp16_res)
        self.resolutions = block_resolutions(resolution)
        channels = {r: channels_at(r, channel_base, channel_max) for r in self.resolutions}
        self.blocks = nn.ModuleList()
        for r in self.resolutions:
            self.blocks.append(SynthesisBlock(
                in_channels=channels[r // 2] if r > 4 else 0, out_channels=channels[r], w_dim=w_dim,
                resolution=r, img_channels=img_channels, feature_channels=feature_channels.get(r, 0),
                use_fp16=r in fp16_res, conv_clamp=conv_clamp))
        self.num_ws = sum(block.num_conv for block in self.blocks) + 1

    def split_ws(self, ws: torch.Tensor) -> list[torch.Tensor]:
        """Per block, its slice of ws: conv ws plus the to-output w (shared with the next conv0)."""
        slices, start = [], 0
        for block in self.blocks:
            slices.append(ws[:, start:start + block.num_conv + 1])
            start += block.num_conv
        return slices

    def forward(self, ws: torch.Tensor, mask: torch.Tensor | None = None, noise_mode: str = "random",
                update_emas: bool = False, fused_modconv: bool | None = None) -> torch.Tensor:
        """Image [N, img_channels, res, res] from ws [N, num_ws, w_dim].

        ``mask`` [N, mask_channels, res, res] in [-1, 1] is required by (and only accepted by) a
        network with a mask encoder.  ``noise_mode``: random | const | none.  ``update_emas`` is
        accepted for interface symmetry with the mapping (synthesis tracks no running averages).
        ``fused_modconv`` forces the grouped (True) or scale/conv/scale (False) form of the
        modulated convolutions; None chooses per block (see SynthesisBlock.choose_fused_modconv).
        """
        del update_emas
        if noise_mode not in NOISE_MODES:
            raise ValueError(f"noise_mode must be one of {NOISE_MODES}, got {noise_mode!r}")
        if ws.ndim != 3 or ws.shape[1:] != (self.num_ws, self.w_dim):
            raise ValueError(f"synthesis expects ws [N, {self.num_ws}, {self.w_dim}], got {tuple(ws.shape)}")
        features = self.encode_mask(mask, ws.shape[0])
        x = img = None
        for block, block_ws in zip(self.blocks, self.split_ws(ws.to(torch.float32))):
            x, img = block(x, img, block_ws, features.get(block.resolution), noise_mode=noise_mode,
                           fused_modconv=fused_modconv)
        return img

    def encode_mask(self, mask: torch.Tensor | None, batch: int) -> dict[int, torch.Tensor]:
        """The mask encoder's feature pyramid {res: [N, e(res), res, res]}, or {} without encoder."""
        if self.mask_encoder is None:
            if mask is not None:
                raise ValueError("this generator takes no mask (only the 'conditional' variant does)")
            return {}
        expected = (batch, self.mask_channels, self.img_resolution, self.img_resolution)
        if mask is None:
            raise ValueError(f"the conditional generator needs a mask of shape {list(expected)} "
                             f"(L one-hot channels in [-1, 1])")
        if tuple(mask.shape) != expected:
            raise ValueError(f"mask must have shape {list(expected)} (N, L, H, W), got {list(mask.shape)}")
        return self.mask_encoder(mask.to(torch.float32))

    def extra_repr(self) -> str:
        return (f"w_dim={self.w_dim}, num_ws={self.num_ws}, img_resolution={self.img_resolution}, "
                f"img_channels={self.img_channels}, mask_channels={self.mask_channels}")
