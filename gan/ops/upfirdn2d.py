"""upfirdn2d: upsample by zero insertion, pad (or crop), apply a FIR filter, downsample.

The resampling primitive of StyleGAN2. For an input x [N, C, H, W] the output is

    1. insert (up - 1) zeros after every pixel along x and y: [N, C, H*up, W*up]
    2. pad by (padx0, padx1, pady0, pady1) zeros; negative padding crops
    3. correlate with the filter f (convolve, unless flip_filter), each channel on its own
    4. keep every down-th pixel

so the output width is (W*upx + padx0 + padx1 - fw) // downx + 1. A 1D filter is separable
(applied along x, then along y); a 2D filter is [fh, fw]. The filter is scaled by gain ** (ndim/2)
so that the total gain is `gain` in both cases; upsampling passes gain = up**2 to keep the mean.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from gan.ops.backend import select_impl

Padding = int | Sequence[int]


def parse_scaling(scaling: int | Sequence[int]) -> tuple[int, int]:
    """An up/down factor as (sx, sy); an int applies to both axes."""
    if isinstance(scaling, int):
        scaling = [scaling, scaling]
    sx, sy = (int(s) for s in scaling)
    if sx < 1 or sy < 1:
        raise ValueError(f"resampling factors must be >= 1, got {tuple(scaling)}")
    return sx, sy


def parse_padding(padding: Padding) -> tuple[int, int, int, int]:
    """Padding as (x0, x1, y0, y1): an int pads all sides, [px, py] pads symmetrically per axis."""
    if isinstance(padding, int):
        return padding, padding, padding, padding
    padding = [int(p) for p in padding]
    if len(padding) == 2:
        px, py = padding
        return px, px, py, py
    if len(padding) != 4:
        raise ValueError(f"padding must be an int, [px, py] or [x0, x1, y0, y1], got {padding}")
    return padding[0], padding[1], padding[2], padding[3]


def filter_size(f: torch.Tensor | None) -> tuple[int, int]:
    """(fw, fh) of a filter; (1, 1) for None."""
    if f is None:
        return 1, 1
    if f.ndim == 1:
        return f.shape[0], f.shape[0]
    return f.shape[1], f.shape[0]


def setup_filter(f: Sequence[float] | torch.Tensor, normalize: bool = True, flip_filter: bool = False,
                 gain: float = 1.0, separable: bool | None = None,
                 device: torch.device | str = "cpu") -> torch.Tensor:
    """Turn filter taps into the float32 tensor upfirdn2d takes.

    Args:
        f: 1D taps (e.g. [1, 3, 3, 1]) or a 2D [fh, fw] array.
        normalize: scale so that the taps sum to 1.
        flip_filter: flip the taps.
        gain: overall gain, spread over the filter's dimensions.
        separable: keep a 1D filter separable; default: only when it has >= 8 taps (long filters
            are cheaper as two passes, short ones as one 2D pass).

    Returns:
        [fw] (separable) or [fh, fw] float32 tensor.
    """
    f = torch.as_tensor(f, dtype=torch.float32, device=device)
    if f.ndim == 0:
        f = f[None]
    if f.ndim not in (1, 2) or f.numel() == 0:
        raise ValueError(f"filter must be a non-empty 1D or 2D array, got shape {tuple(f.shape)}")
    if separable is None:
        separable = f.ndim == 1 and f.numel() >= 8
    if f.ndim == 1 and not separable:
        f = torch.outer(f, f)
    if normalize:
        f = f / f.sum()
    if flip_filter:
        f = f.flip(list(range(f.ndim)))
    return f * (gain ** (f.ndim / 2))


def upfirdn2d_ref(x: torch.Tensor, f: torch.Tensor | None, up: int | Sequence[int] = 1,
                  down: int | Sequence[int] = 1, padding: Padding = 0, flip_filter: bool = False,
                  gain: float = 1.0) -> torch.Tensor:
    """Reference upfirdn2d in plain PyTorch ops (see the module docstring for the semantics)."""
    upx, upy = parse_scaling(up)
    downx, downy = parse_scaling(down)
    padx0, padx1, pady0, pady1 = parse_padding(padding)
    if f is None:
        f = torch.ones([1, 1], dtype=torch.float32, device=x.device)
    N, C, H, W = x.shape

    # 1. Zero insertion: each pixel is followed by (up - 1) zeros.
    if upx > 1 or upy > 1:
        x = x.reshape(N, C, H, 1, W, 1)
        x = F.pad(x, [0, upx - 1, 0, 0, 0, upy - 1])
        x = x.reshape(N, C, H * upy, W * upx)

    # 2. Pad with zeros, then crop where the padding is negative. Symmetric padding is left to the
    #    convolution below (no padded copy of x).
    if padx0 == padx1 >= 0 and pady0 == pady1 >= 0:
        conv_padding = (pady0, padx0)
    else:
        conv_padding = (0, 0)
        x = F.pad(x, [max(padx0, 0), max(padx1, 0), max(pady0, 0), max(pady1, 0)])
        x = x[:, :, max(-pady0, 0): x.shape[2] - max(-pady1, 0), max(-padx0, 0): x.shape[3] - max(-padx1, 0)]

    # 3. + 4. FIR filter (conv2d correlates, so flip the taps to convolve), evaluated only at the kept
    #    pixels: a stride of `down` computes exactly the decimated full-resolution result.
    f = (f * (gain ** (f.ndim / 2))).to(device=x.device, dtype=x.dtype)
    if not flip_filter:
        f = f.flip(list(range(f.ndim)))
    if f.ndim == 2:
        return F.conv2d(x, f[None, None].expand(C, 1, *f.shape), groups=C, stride=(downy, downx),
                        padding=conv_padding)
    x = F.conv2d(x, f[None, None, None, :].expand(C, 1, 1, f.shape[0]), groups=C, stride=(1, downx),
                 padding=(0, conv_padding[1]))
    return F.conv2d(x, f[None, None, :, None].expand(C, 1, f.shape[0], 1), groups=C, stride=(downy, 1),
                    padding=(conv_padding[0], 0))


def upfirdn2d(x: torch.Tensor, f: torch.Tensor | None, up: int | Sequence[int] = 1,
              down: int | Sequence[int] = 1, padding: Padding = 0, flip_filter: bool = False,
              gain: float = 1.0, impl: str | None = None) -> torch.Tensor:
    """Upsample, pad, FIR-filter and downsample a batch of images.

    Args:
        x: [N, C, H, W] float.
        f: [fw] separable or [fh, fw] filter from `setup_filter`, or None (identity).
        up, down: integer factors, or (x, y) pairs.
        padding: int, [px, py] or [x0, x1, y0, y1], applied after upsampling; negative crops.
        flip_filter: correlate instead of convolve.
        gain: overall signal gain.
        impl: per-call override of the backend ("auto", "ref", "fused").

    Returns:
        [N, C, (H*upy + pady0 + pady1 - fh) // downy + 1, (W*upx + padx0 + padx1 - fw) // downx + 1].
    """
    if x.ndim != 4:
        raise ValueError(f"upfirdn2d expects x of shape [N, C, H, W], got {tuple(x.shape)}")
    if f is not None and (f.ndim not in (1, 2) or f.numel() == 0):
        raise ValueError(f"upfirdn2d expects a non-empty [fw] or [fh, fw] filter, got shape {tuple(f.shape)}")
    upx, upy = parse_scaling(up)
    downx, downy = parse_scaling(down)
    padx0, padx1, pady0, pady1 = parse_padding(padding)
    fw, fh = filter_size(f)
    out_w = (x.shape[3] * upx + padx0 + padx1 - fw) // downx + 1
    out_h = (x.shape[2] * upy + pady0 + pady1 - fh) // downy + 1
    if out_w < 1 or out_h < 1:
        raise ValueError(f"upfirdn2d: input {tuple(x.shape)} with up={up}, down={down}, padding={padding} "
                         f"and a {fh}x{fw} filter leaves no output pixels")
    if select_impl("upfirdn2d", x, impl) == "fused":
        from gan.ops.triton_upfirdn2d import upfirdn2d_triton
        if f is None:  # pad/crop and resample only: the 1x1 identity filter
            f = torch.ones([1, 1], dtype=torch.float32, device=x.device)
        return upfirdn2d_triton(x, f.to(device=x.device, dtype=torch.float32), upx, upy, downx, downy,
                                padx0, padx1, pady0, pady1, flip_filter, float(gain))
    return upfirdn2d_ref(x, f, up=(upx, upy), down=(downx, downy), padding=(padx0, padx1, pady0, pady1),
                         flip_filter=flip_filter, gain=gain)


def upsample2d(x: torch.Tensor, f: torch.Tensor | None, up: int | Sequence[int] = 2, padding: Padding = 0,
               flip_filter: bool = False, gain: float = 1.0, impl: str | None = None) -> torch.Tensor:
    """Upsample [N, C, H, W] -> [N, C, H*up, W*up] with the filter f, keeping the signal's mean."""
    upx, upy = parse_scaling(up)
    padx0, padx1, pady0, pady1 = parse_padding(padding)
    fw, fh = filter_size(f)
    p = [padx0 + (fw + upx - 1) // 2, padx1 + (fw - upx) // 2,
         pady0 + (fh + upy - 1) // 2, pady1 + (fh - upy) // 2]
    return upfirdn2d(x, f, up=(upx, upy), padding=p, flip_filter=flip_filter, gain=gain * upx * upy, impl=impl)


def downsample2d(x: torch.Tensor, f: torch.Tensor | None, down: int | Sequence[int] = 2, padding: Padding = 0,
                 flip_filter: bool = False, gain: float = 1.0, impl: str | None = None) -> torch.Tensor:
    """Low-pass filter with f and downsample [N, C, H, W] -> [N, C, H//down, W//down]."""
    downx, downy = parse_scaling(down)
    padx0, padx1, pady0, pady1 = parse_padding(padding)
    fw, fh = filter_size(f)
    p = [padx0 + (fw - downx + 1) // 2, padx1 + (fw - downx) // 2,
         pady0 + (fh - downy + 1) // 2, pady1 + (fh - downy) // 2]
    return upfirdn2d(x, f, down=(downx, downy), padding=p, flip_filter=flip_filter, gain=gain, impl=impl)


def filter2d(x: torch.Tensor, f: torch.Tensor | None, padding: Padding = 0, flip_filter: bool = False,
             gain: float = 1.0, impl: str | None = None) -> torch.Tensor:
    """Filter [N, C, H, W] with f, keeping the size (plus any extra padding)."""
    padx0, padx1, pady0, pady1 = parse_padding(padding)
    fw, fh = filter_size(f)
    p = [padx0 + fw // 2, padx1 + (fw - 1) // 2, pady0 + fh // 2, pady1 + (fh - 1) // 2]
    return upfirdn2d(x, f, padding=p, flip_filter=flip_filter, gain=gain, impl=impl)
