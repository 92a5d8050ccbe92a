"""2D convolution with FIR-filtered up/down-sampling, in the cheapest equivalent order.

Upsampling convolves first with a strided transposed convolution (a quarter of the work of
upsample-then-convolve) and low-pass filters after; downsampling filters first and convolves with
stride 2. Padding follows the conv's `padding` as if it were applied at the output resolution, so
a 3x3 conv with padding 1 maps H -> H*up // down.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from gan.ops.upfirdn2d import Padding, filter_size, parse_padding, upfirdn2d


def _conv(x: torch.Tensor, w: torch.Tensor, stride: int = 1, padding: tuple[int, int] = (0, 0),
          groups: int = 1, transpose: bool = False, flip_weight: bool = True) -> torch.Tensor:
    # conv2d correlates; flip_weight=False asks for a true convolution.
    if not flip_weight and (w.shape[2] > 1 or w.shape[3] > 1):
        w = w.flip([2, 3])
    if transpose:
        return F.conv_transpose2d(x, w, stride=stride, padding=padding, groups=groups)
    return F.conv2d(x, w, stride=stride, padding=padding, groups=groups)


def conv2d_resample(x: torch.Tensor, w: torch.Tensor, f: torch.Tensor | None = None, up: int = 1,
                    down: int = 1, padding: Padding = 0, groups: int = 1, flip_weight: bool = True,
                    flip_filter: bool = False) -> torch.Tensor:
    """Conv2d with optional x`up` upsampling before and x`down` downsampling after, FIR-filtered.

    Args:
        x: [N, C_in, H, W].
        w: [C_out, C_in // groups, kh, kw].
        f: low-pass filter from `setup_filter` (required when up > 1 or down > 1).
        up, down: 1 or an integer factor.
        padding: the convolution's padding (int, [px, py] or [x0, x1, y0, y1]).
        groups: grouped convolution (the fused modulated conv uses one group per sample).
        flip_weight: False for a true convolution (the transposed conv of upsampling flips).
        flip_filter: passed to upfirdn2d.

    Returns:
        [N, C_out, H', W'] with H' = (H*up + py0 + py1 - kh + 1) // down (e.g. H*up//down for a
        3x3 kernel with padding 1).
    """
    if x.ndim != 4 or w.ndim != 4:
        raise ValueError(f"conv2d_resample expects 4D x and w, got {tuple(x.shape)} and {tuple(w.shape)}")
    if w.shape[1] * groups != x.shape[1]:
        raise ValueError(f"conv2d_resample: weight {tuple(w.shape)} with groups={groups} "
                         f"does not take {x.shape[1]} input channels")
    if (up > 1 or down > 1) and f is None:
        raise ValueError("conv2d_resample: up/down-sampling needs a filter f")
    out_channels, in_per_group, kh, kw = w.shape
    fw, fh = filter_size(f)
    px0, px1, py0, py1 = parse_padding(padding)
    if up > 1:
        px0, px1 = px0 + (fw + up - 1) // 2, px1 + (fw - up) // 2
        py0, py1 = py0 + (fh + up - 1) // 2, py1 + (fh - up) // 2
    if down > 1:
        px0, px1 = px0 + (fw - down + 1) // 2, px1 + (fw - down) // 2
        py0, py1 = py0 + (fh - down + 1) // 2, py1 + (fh - down) // 2

    if kh == 1 and kw == 1 and up == 1 and down > 1:
        # 1x1 conv commutes with filtering: decimate first, convolve the small image.
        x = upfirdn2d(x, f, down=down, padding=[px0, px1, py0, py1], flip_filter=flip_filter)
        return _conv(x, w, groups=groups, flip_weight=flip_weight)

    if up == 1 and down > 1:
        x = upfirdn2d(x, f, padding=[px0, px1, py0, py1], flip_filter=flip_filter)
        return _conv(x, w, stride=down, groups=groups, flip_weight=flip_weight)

    if up > 1:
        # Transposed conv wants [C_in, C_out // groups, kh, kw], per group.
        if groups == 1:
            w = w.transpose(0, 1)
        else:
            w = w.reshape(groups, out_channels // groups, in_per_group, kh, kw).transpose(1, 2)
            w = w.reshape(groups * in_per_group, out_channels // groups, kh, kw)
        # The transposed conv already grows each side by (k - 1) and (k - up): take that off the FIR padding.
        px0, px1 = px0 - (kw - 1), px1 - (kw - up)
        py0, py1 = py0 - (kh - 1), py1 - (kh - up)
        pxt, pyt = max(min(-px0, -px1), 0), max(min(-py0, -py1), 0)
        x = _conv(x, w, stride=up, padding=(pyt, pxt), groups=groups, transpose=True, flip_weight=not flip_weight)
        x = upfirdn2d(x, f, padding=[px0 + pxt, px1 + pxt, py0 + pyt, py1 + pyt], gain=up * up,
                      flip_filter=flip_filter)
        if down > 1:
            x = upfirdn2d(x, f, down=down, flip_filter=flip_filter)
        return x

    if px0 == px1 and py0 == py1 and px0 >= 0 and py0 >= 0:
        return _conv(x, w, padding=(py0, px0), groups=groups, flip_weight=flip_weight)
    x = upfirdn2d(x, None, padding=[px0, px1, py0, py1])
    return _conv(x, w, groups=groups, flip_weight=flip_weight)
