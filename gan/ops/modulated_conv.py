"""The modulated (and demodulated) convolution of StyleGAN2.

With per-sample styles s [N, C_in] the weight becomes w'_{n,o,i,k} = w_{o,i,k} * s_{n,i}, and
demodulation divides each output filter by sigma_{n,o} = sqrt(sum_{i,k} w'^2 + 1e-8), so a
unit-variance input gives a unit-variance output. Two equivalent forms:

- fused (fused_modconv=True): build the N per-sample weights and run one grouped conv with
  groups = N (the batch folded into channels).
- non-fused: scale the activations by s, run one conv with the shared weight, scale the outputs
  by 1 / sigma (the demodulation epilogue, fused with the noise addition).
"""
from __future__ import annotations

import torch

from gan.ops.conv2d_resample import conv2d_resample
from gan.ops.upfirdn2d import Padding


def demodulation_coefficients(weight: torch.Tensor, styles: torch.Tensor) -> torch.Tensor:
    """1 / sqrt(sum over (in, kh, kw) of (w * s)^2 + 1e-8): [O, I, kh, kw] x [N, I] -> [N, O].

    The sum factorises as sum_i s[n, i]^2 * sum_(kh, kw) w[o, i]^2, a [N, I] x [I, O] product:
    no per-sample [N, O, I, kh, kw] weight is built.
    """
    assert weight.ndim == 4 and styles.shape == (styles.shape[0], weight.shape[1])
    return (styles.square() @ weight.square().sum(dim=[2, 3]).T + 1e-8).rsqrt()


def modulated_conv2d(x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor,
                     noise: torch.Tensor | None = None, up: int = 1, down: int = 1, padding: Padding = 0,
                     resample_filter: torch.Tensor | None = None, demodulate: bool = True,
                     flip_weight: bool = True, fused_modconv: bool = True) -> torch.Tensor:
    """Modulated convolution with optional demodulation, up/down-sampling and additive noise.

    Args:
        x: [N, I, H, W] activations.
        weight: [O, I, kh, kw] shared weight (already scaled by the equalised-lr gain).
        styles: [N, I] per-sample input-channel scales.
        noise: None, or a tensor broadcastable to the output [N, O, H', W'] (added after demodulation).
        up, down: resampling factors (1 or 2), FIR-filtered with `resample_filter`.
        padding: conv padding; 1 for a 3x3 kernel keeps H' = H * up // down.
        resample_filter: filter from `setup_filter` (needed when up or down > 1).
        demodulate: divide each output filter by its per-sample norm.
        flip_weight: False for a true convolution (see conv2d_resample).
        fused_modconv: grouped-conv form (True) or scale/conv/scale form (False).

    Returns:
        [N, O, H', W'].
    """
    N, I, H, W = x.shape
    O, I_w, kh, kw = weight.shape
    assert I_w == I, f"weight takes {I_w} input channels, x has {I}"
    assert styles.shape == (N, I), f"styles {tuple(styles.shape)} should be {(N, I)}"

    # fp16 overflows on large w*s products: rescale both, demodulation removes the scale again.
    if x.dtype == torch.float16 and demodulate:
        weight = weight * (1 / (I * kh * kw) ** 0.5 / weight.norm(float("inf"), dim=[1, 2, 3], keepdim=True))
        styles = styles / styles.norm(float("inf"), dim=1, keepdim=True)

    if not fused_modconv:
        x = x * styles.to(x.dtype).reshape(N, I, 1, 1)
        x = conv2d_resample(x, weight.to(x.dtype), f=resample_filter, up=up, down=down, padding=padding,
                            flip_weight=flip_weight)
        if demodulate:
            dcoefs = demodulation_coefficients(weight, styles).to(x.dtype).reshape(N, O, 1, 1)
            x = x * dcoefs if noise is None else torch.addcmul(noise.to(x.dtype), x, dcoefs)
        elif noise is not None:
            x = x + noise.to(x.dtype)
        return x

    w = weight.unsqueeze(0) * styles.reshape(N, 1, I, 1, 1)  # [N, O, I, kh, kw]
    if demodulate:
        w = w * (w.square().sum(dim=[2, 3, 4], keepdim=True) + 1e-8).rsqrt()
    x = x.reshape(1, N * I, H, W)
    x = conv2d_resample(x, w.reshape(N * O, I, kh, kw).to(x.dtype), f=resample_filter, up=up, down=down,
                        padding=padding, groups=N, flip_weight=flip_weight)
    x = x.reshape(N, O, *x.shape[2:])
    if noise is not None:
        x = x + noise.to(x.dtype)
    return x
