"""Fused upfirdn2d (upsample, pad/crop, FIR filter, downsample) as a Triton kernel, differentiable
to any order.

One kernel computes a whole upfirdn2d pass without materialising the upsampled or padded image
(and visiting only the taps that land on input pixels, not on inserted zeros): output pixel (oy, ox) is

    y[oy, ox] = sum_{ty, tx} k[ty, tx] * xp[oy * downy + ty, ox * downx + tx]

where k is the filter as a correlation kernel (the flipped taps, unless flip_filter) times the gain,
and xp[v, u] = x[(v - pady0) / upy, (u - padx0) / upx] where both divisions are exact and land
inside x, zero elsewhere. A 1D (separable) filter runs as two such passes: along x, then along y.

upfirdn2d is linear in x, and its adjoint is again an upfirdn2d: the flipped filter with up and
down swapped and the padding

    padx0' = fw - 1 - padx0
    padx1' = W * upx - outW * downx + padx0 - upx + 1

(the same along y), which gives back exactly W columns whatever the rounding of outW. The backward
is therefore the same autograd Function, so gradients of gradients (R1) come to any order.
The filter gets no gradient (it is a fixed resampling filter from setup_filter).

This module imports triton; gan.ops.upfirdn2d imports it only when a fused kernel first runs.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@triton.jit
def _upfirdn2d_kernel(out_ptr, x_ptr, k_ptr, numel, in_h, in_w, out_h, out_w, downx, downy, padx0, pady0,
                      UPX: tl.constexpr, UPY: tl.constexpr, FH: tl.constexpr, FW: tl.constexpr, BLOCK: tl.constexpr):
    """One BLOCK of the flattened output [N*C, out_h, out_w]; k is the [FH, FW] correlation kernel.

    Polyphase: of the taps over the zero-inserted image only every UP-th lands on an input pixel, and
    which ones depends on the output pixel's phase, so each output visits ceil(FH/UPY) x ceil(FW/UPX)
    taps instead of FH x FW.
    """
    offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    valid = offsets < numel
    ox = offsets % out_w
    oy = (offsets // out_w) % out_h
    plane = offsets // (out_w * out_h)  # n * C + c
    x_plane = x_ptr + plane * in_h * in_w
    # Where tap (0, 0) falls in the upsampled, unpadded image, and the first tap on a real pixel
    # ((a % m + m) % m is the non-negative remainder whatever the sign convention of %).
    vy0 = oy * downy - pady0
    vx0 = ox * downx - padx0
    ty0 = (UPY - (vy0 % UPY + UPY) % UPY) % UPY
    tx0 = (UPX - (vx0 % UPX + UPX) % UPX) % UPX
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for jy in tl.static_range((FH + UPY - 1) // UPY):
        ty = ty0 + jy * UPY
        vy = vy0 + ty  # a multiple of UPY, so the division is exact
        iy = vy // UPY
        row_ok = valid & (ty < FH) & (vy >= 0) & (iy < in_h)
        for jx in tl.static_range((FW + UPX - 1) // UPX):
            tx = tx0 + jx * UPX
            vx = vx0 + tx
            ix = vx // UPX
            ok = row_ok & (tx < FW) & (vx >= 0) & (ix < in_w)
            tap = tl.load(k_ptr + tl.where(ok, ty * FW + tx, 0), mask=ok, other=0.0)
            pixel = tl.load(x_plane + tl.where(ok, iy * in_w + ix, 0), mask=ok, other=0.0)
            acc += pixel.to(tl.float32) * tap
    tl.store(out_ptr + offsets, acc.to(out_ptr.dtype.element_ty), mask=valid)


def _block_size(numel: int, device: torch.device) -> int:
    # 256 outputs per program on a GPU; the CPU interpreter pays per program, so one large block there.
    if device.type == "cuda":
        return 256
    return min(triton.next_power_of_2(max(numel, 1)), 1 << 16)


def _upfirdn_pass(x: torch.Tensor, kernel: torch.Tensor, up: tuple[int, int], down: tuple[int, int],
                  pad0: tuple[int, int], out_size: tuple[int, int], out_dtype: torch.dtype) -> torch.Tensor:
    """One kernel launch: x [N, C, H, W] contiguous, kernel [fh, fw] float32 correlation taps,
    up/down/pad0 as (x, y), out_size (out_h, out_w) -> [N, C, out_h, out_w] in out_dtype."""
    N, C, H, W = x.shape
    out_h, out_w = out_size
    out = torch.empty([N, C, out_h, out_w], dtype=out_dtype, device=x.device)
    numel = out.numel()
    if numel == 0:
        return out
    block = _block_size(numel, x.device)
    _upfirdn2d_kernel[(triton.cdiv(numel, block),)](
        out, x, kernel, numel, H, W, out_h, out_w, down[0], down[1], pad0[0], pad0[1],
        UPX=up[0], UPY=up[1], FH=kernel.shape[0], FW=kernel.shape[1], BLOCK=block)
    return out


@dataclass(frozen=True)
class UpFirDnParams:
    """The constant arguments of one upfirdn2d call (per axis: x first, then y)."""

    upx: int
    upy: int
    downx: int
    downy: int
    padx0: int
    padx1: int
    pady0: int
    pady1: int
    flip_filter: bool
    gain: float

    def output_size(self, in_h: int, in_w: int, fh: int, fw: int) -> tuple[int, int]:
        """(out_h, out_w) for an [in_h, in_w] input and an [fh, fw] filter."""
        out_w = (in_w * self.upx + self.padx0 + self.padx1 - fw) // self.downx + 1
        out_h = (in_h * self.upy + self.pady0 + self.pady1 - fh) // self.downy + 1
        return out_h, out_w

    def adjoint(self, in_h: int, in_w: int, fh: int, fw: int) -> "UpFirDnParams":
        """The parameters of the transposed op, which maps the output gradient back to [in_h, in_w]."""
        out_h, out_w = self.output_size(in_h, in_w, fh, fw)
        return UpFirDnParams(
            upx=self.downx, upy=self.downy, downx=self.upx, downy=self.upy,
            padx0=fw - 1 - self.padx0, padx1=in_w * self.upx - out_w * self.downx + self.padx0 - self.upx + 1,
            pady0=fh - 1 - self.pady0, pady1=in_h * self.upy - out_h * self.downy + self.pady0 - self.upy + 1,
            flip_filter=not self.flip_filter, gain=self.gain)


def _filter_dims(f: torch.Tensor) -> tuple[int, int]:
    """(fh, fw) of a [fw] separable or [fh, fw] filter."""
    return (f.shape[0], f.shape[0]) if f.ndim == 1 else (f.shape[0], f.shape[1])


def _correlation_taps(f: torch.Tensor, p: UpFirDnParams) -> torch.Tensor:
    """The filter as the kernel correlates it: flipped unless flip_filter, gain spread over its dims."""
    k = f.float() * (p.gain ** (f.ndim / 2))
    if not p.flip_filter:
        k = k.flip(list(range(f.ndim)))
    return k.contiguous()


def _upfirdn2d_forward(x: torch.Tensor, f: torch.Tensor, p: UpFirDnParams) -> torch.Tensor:
    """upfirdn2d of contiguous x with the parameters p; one pass for a 2D filter, two for a 1D one."""
    N, C, H, W = x.shape
    fh, fw = _filter_dims(f)
    out_h, out_w = p.output_size(H, W, fh, fw)
    k = _correlation_taps(f, p)
    if f.ndim == 2:
        return _upfirdn_pass(x, k, (p.upx, p.upy), (p.downx, p.downy), (p.padx0, p.pady0), (out_h, out_w), x.dtype)
    # Separable: along x (rows keep their height), then along y; the intermediate stays float32.
    rows = _upfirdn_pass(x, k[None, :], (p.upx, 1), (p.downx, 1), (p.padx0, 0), (H, out_w), torch.float32)
    return _upfirdn_pass(rows, k[:, None].contiguous(), (1, p.upy), (1, p.downy), (0, p.pady0), (out_h, out_w),
                         x.dtype)


class _UpFirDn2d(torch.autograd.Function):
    """y = upfirdn2d(x; f, p); the backward is the adjoint upfirdn2d through this same Function."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, f: torch.Tensor, p: UpFirDnParams) -> torch.Tensor:
        ctx.save_for_backward(f)
        ctx.params = p
        ctx.in_hw = x.shape[2], x.shape[3]
        return _upfirdn2d_forward(x.contiguous(), f, p)

    @staticmethod
    def backward(ctx, dy: torch.Tensor):
        (f,) = ctx.saved_tensors
        dx = None
        if ctx.needs_input_grad[0]:
            fh, fw = _filter_dims(f)
            dx = _UpFirDn2d.apply(dy, f, ctx.params.adjoint(*ctx.in_hw, fh, fw))
        return dx, None, None


def upfirdn2d_triton(x: torch.Tensor, f: torch.Tensor, upx: int, upy: int, downx: int, downy: int, padx0: int,
                     padx1: int, pady0: int, pady1: int, flip_filter: bool, gain: float) -> torch.Tensor:
    """Fused upfirdn2d with parsed arguments; the same result as gan.ops.upfirdn2d_ref.

    Args:
        x: [N, C, H, W] float32 / float16 / bfloat16 on CUDA (or CPU under TRITON_INTERPRET=1).
        f: float32 filter on x's device: [fw] separable (along x, then y) or [fh, fw].
        upx, upy, downx, downy: integer factors >= 1.
        padx0, padx1, pady0, pady1: padding of the upsampled image; negative crops.
        flip_filter: correlate with f instead of convolving.
        gain: overall gain (the filter is scaled by gain ** (f.ndim / 2)).

    Returns:
        [N, C, (H*upy + pady0 + pady1 - fh) // downy + 1, (W*upx + padx0 + padx1 - fw) // downx + 1],
        x's dtype (accumulated in float32); differentiable in x to any order.
    """
    if x.ndim != 4:
        raise ValueError(f"upfirdn2d_triton: x must be [N, C, H, W], got shape {tuple(x.shape)}")
    if x.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"upfirdn2d_triton: x must be float32, float16 or bfloat16, got {x.dtype}")
    if f.ndim not in (1, 2) or f.numel() == 0:
        raise ValueError(f"upfirdn2d_triton: filter must be a non-empty [fw] or [fh, fw] tensor, got {tuple(f.shape)}")
    if f.device != x.device:
        raise ValueError(f"upfirdn2d_triton: filter on {f.device} but x on {x.device}")
    if min(upx, upy, downx, downy) < 1:
        raise ValueError(f"upfirdn2d_triton: up/down factors must be >= 1, got up=({upx}, {upy}), "
                         f"down=({downx}, {downy})")
    p = UpFirDnParams(int(upx), int(upy), int(downx), int(downy), int(padx0), int(padx1), int(pady0), int(pady1),
                      bool(flip_filter), float(gain))
    fh, fw = _filter_dims(f)
    out_h, out_w = p.output_size(x.shape[2], x.shape[3], fh, fw)
    if out_h < 1 or out_w < 1:
        raise ValueError(f"upfirdn2d_triton: input {tuple(x.shape)} with {p} and a {fh}x{fw} filter "
                         "leaves no output pixels")
    return _UpFirDn2d.apply(x, f.detach(), p)
