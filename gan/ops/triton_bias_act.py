"""Fused bias + activation + gain + clamp as Triton kernels, differentiable to second order.

    z = x + b                      (b broadcast along `dim`)
    y = clamp(gain * act(z), -clamp, clamp)

One elementwise kernel computes, in float32 whatever the storage dtype, one of three things:

    forward        y
    first order    dx  = dy * gain * act'(z) * inside(z)
    second order   ddx = g * dy * gain * act''(z) * inside(z)

where inside(z) = |gain * act(z)| <= clamp is where the clamp lets the gradient through (always 1
without a clamp; torch.clamp passes the gradient at the bounds too). The bias gradient is dx summed
over every axis but `dim`. The first-order gradient is itself an autograd Function whose backward
uses the kernel again, so R1 (a gradient penalty on D's input gradient) can differentiate through
it; a third derivative raises a clear error instead of silently returning a wrong one.

This module imports triton, so the dispatcher in gan.ops.bias_act imports it only when a fused
kernel first runs; on CPU the kernels run under TRITON_INTERPRET=1 only.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from gan.ops.activations import ACTIVATIONS

# Kernel code of each activation in gan.ops.bias_act.ACTIVATIONS (a test checks both tables agree).
ACTIVATION_CODES: dict[str, int] = {
    "linear": 0, "relu": 1, "lrelu": 2, "tanh": 3, "sigmoid": 4, "elu": 5, "selu": 6, "softplus": 7, "swish": 8,
}
SELU_SCALE = tl.constexpr(1.0507009873554804934193349852946)
SELU_ALPHA = tl.constexpr(1.6732632423543772848170429916717)
SOFTPLUS_THRESHOLD = tl.constexpr(20.0)  # torch's default: softplus(z) = z above it

MODE_FORWARD, MODE_GRAD, MODE_GRAD2 = 0, 1, 2
SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@triton.jit
def _sigmoid(z):
    return 1.0 / (1.0 + tl.exp(-z))


@triton.jit
def _activation(z, alpha, ACT: tl.constexpr):
    """act(z) in float32."""
    if ACT == 0:
        y = z
    elif ACT == 1:
        y = tl.where(z > 0, z, 0.0)
    elif ACT == 2:
        y = tl.where(z > 0, z, z * alpha)
    elif ACT == 3:
        y = 1.0 - 2.0 / (tl.exp(2.0 * z) + 1.0)  # tanh, saturating cleanly at +-1
    elif ACT == 4:
        y = _sigmoid(z)
    elif ACT == 5:
        y = tl.where(z > 0, z, tl.exp(tl.minimum(z, 0.0)) - 1.0)
    elif ACT == 6:
        y = SELU_SCALE * tl.where(z > 0, z, SELU_ALPHA * (tl.exp(tl.minimum(z, 0.0)) - 1.0))
    elif ACT == 7:
        # log(1 + e^z) = max(z, 0) + log(1 + e^-|z|), which never overflows.
        y = tl.where(z > SOFTPLUS_THRESHOLD, z, tl.maximum(z, 0.0) + tl.log(1.0 + tl.exp(-tl.abs(z))))
    else:
        y = z * _sigmoid(z)
    return y


@triton.jit
def _activation_d1(z, alpha, ACT: tl.constexpr):
    """act'(z) in float32, with torch's choice at the kinks (relu'(0) = 0, lrelu'(0) = alpha)."""
    if ACT == 0:
        d = tl.full(z.shape, 1.0, tl.float32)
    elif ACT == 1:
        d = tl.where(z > 0, 1.0, 0.0)
    elif ACT == 2:
        d = tl.where(z > 0, 1.0, alpha)
    elif ACT == 3:
        t = 1.0 - 2.0 / (tl.exp(2.0 * z) + 1.0)
        d = 1.0 - t * t
    elif ACT == 4:
        s = _sigmoid(z)
        d = s * (1.0 - s)
    elif ACT == 5:
        d = tl.where(z > 0, 1.0, tl.exp(tl.minimum(z, 0.0)))
    elif ACT == 6:
        d = SELU_SCALE * tl.where(z > 0, 1.0, SELU_ALPHA * tl.exp(tl.minimum(z, 0.0)))
    elif ACT == 7:
        d = tl.where(z > SOFTPLUS_THRESHOLD, 1.0, _sigmoid(z))
    else:
        s = _sigmoid(z)
        d = s * (1.0 + z * (1.0 - s))
    return d


@triton.jit
def _activation_d2(z, alpha, ACT: tl.constexpr):
    """act''(z) in float32 (zero for the piecewise-linear activations)."""
    if ACT == 0 or ACT == 1 or ACT == 2:
        d = tl.zeros(z.shape, tl.float32)
    elif ACT == 3:
        t = 1.0 - 2.0 / (tl.exp(2.0 * z) + 1.0)
        d = -2.0 * t * (1.0 - t * t)
    elif ACT == 4:
        s = _sigmoid(z)
        d = s * (1.0 - s) * (1.0 - 2.0 * s)
    elif ACT == 5:
        d = tl.where(z > 0, 0.0, tl.exp(tl.minimum(z, 0.0)))
    elif ACT == 6:
        d = SELU_SCALE * tl.where(z > 0, 0.0, SELU_ALPHA * tl.exp(tl.minimum(z, 0.0)))
    elif ACT == 7:
        s = _sigmoid(z)
        d = tl.where(z > SOFTPLUS_THRESHOLD, 0.0, s * (1.0 - s))
    else:
        s = _sigmoid(z)
        d = s * (1.0 - s) * (2.0 + z * (1.0 - 2.0 * s))
    return d


@triton.jit
def _bias_act_kernel(out_ptr, x_ptr, b_ptr, g_ptr, h_ptr, numel, channels, inner, alpha, gain, clamp,
                     ACT: tl.constexpr, MODE: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_CLAMP: tl.constexpr,
                     BLOCK: tl.constexpr):
    """One BLOCK of the flattened tensor; element i sits in channel (i // inner) % channels.

    MODE 0: out = clamp(gain * act(z)); MODE 1: out = g * gain * act'(z) * inside(z);
    MODE 2: out = g * h * gain * act''(z) * inside(z).
    """
    offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    valid = offsets < numel
    z = tl.load(x_ptr + offsets, mask=valid, other=0.0).to(tl.float32)
    if HAS_BIAS:
        channel = (offsets // inner) % channels
        z += tl.load(b_ptr + channel, mask=valid, other=0.0).to(tl.float32)

    if MODE == 0:
        out = _activation(z, alpha, ACT) * gain
        if HAS_CLAMP:
            out = tl.minimum(tl.maximum(out, -clamp), clamp)
    else:
        if MODE == 1:
            out = gain * _activation_d1(z, alpha, ACT)
        else:
            out = gain * _activation_d2(z, alpha, ACT) * tl.load(h_ptr + offsets, mask=valid, other=0.0).to(tl.float32)
        out *= tl.load(g_ptr + offsets, mask=valid, other=0.0).to(tl.float32)
        if HAS_CLAMP:
            y = gain * _activation(z, alpha, ACT)
            out = tl.where((y >= -clamp) & (y <= clamp), out, 0.0)
    tl.store(out_ptr + offsets, out.to(out_ptr.dtype.element_ty), mask=valid)


def _block_size(numel: int, device: torch.device) -> int:
    # On a GPU a block of 1024 keeps every SM busy; the CPU interpreter pays per program, so one
    # large block runs fastest there.
    if device.type == "cuda":
        return 1024
    return min(triton.next_power_of_2(max(numel, 1)), 1 << 16)


@dataclass(frozen=True)
class BiasActSpec:
    """The constant arguments of one bias_act call: activation, slope, gain, clamp and layout."""

    act: str
    alpha: float
    gain: float
    clamp: float  # < 0: no clamp
    dim: int  # the bias axis, in 0..len(shape) - 1
    shape: tuple[int, ...]

    @property
    def channels(self) -> int:
        return self.shape[self.dim]

    @property
    def inner(self) -> int:
        """Elements per channel step in a contiguous tensor: the product of the axes after `dim`."""
        return math.prod(self.shape[self.dim + 1:])

    @property
    def reduce_dims(self) -> list[int]:
        return [i for i in range(len(self.shape)) if i != self.dim]

    def launch(self, mode: int, x: torch.Tensor, b: torch.Tensor | None, g: torch.Tensor | None = None,
               h: torch.Tensor | None = None) -> torch.Tensor:
        """Run the kernel in `mode` over contiguous x (and g, h shaped like x); out has x's dtype."""
        out = torch.empty_like(x)
        numel = x.numel()
        if numel == 0:
            return out
        block = _block_size(numel, x.device)
        _bias_act_kernel[(triton.cdiv(numel, block),)](
            out, x, b if b is not None else x, g if g is not None else x, h if h is not None else x,
            numel, self.channels, self.inner, self.alpha, self.gain, self.clamp,
            ACT=ACTIVATION_CODES[self.act], MODE=mode, HAS_BIAS=b is not None, HAS_CLAMP=self.clamp >= 0, BLOCK=block)
        return out

    def bias_grad(self, dx: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """d(loss)/db: dx summed over every axis but `dim`, accumulated in float32, in `dtype`."""
        if not self.reduce_dims:  # x is the bias' own shape (sum over an empty dim list would sum all)
            return dx.to(dtype)
        return dx.float().sum(dim=self.reduce_dims).to(dtype)


class _BiasAct(torch.autograd.Function):
    """y = clamp(gain * act(x + b)); backward through _BiasActGrad."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, b: torch.Tensor | None, spec: BiasActSpec) -> torch.Tensor:
        ctx.spec = spec
        ctx.save_for_backward(x, b)
        return spec.launch(MODE_FORWARD, x, b)

    @staticmethod
    def backward(ctx, dy: torch.Tensor):
        x, b = ctx.saved_tensors
        spec: BiasActSpec = ctx.spec
        dx = db = None
        if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
            dx = _BiasActGrad.apply(dy.contiguous(), x, b, spec)
            if ctx.needs_input_grad[1]:
                db = spec.bias_grad(dx, b.dtype)
        return dx, db, None


class _BiasActGrad(torch.autograd.Function):
    """dx = dy * gain * act'(x + b) * inside, differentiable once more (in dy, x and b)."""

    @staticmethod
    def forward(ctx, dy: torch.Tensor, x: torch.Tensor, b: torch.Tensor | None, spec: BiasActSpec) -> torch.Tensor:
        ctx.spec = spec
        ctx.save_for_backward(dy, x, b)
        return spec.launch(MODE_GRAD, x, b, g=dy)

    @staticmethod
    def backward(ctx, ddx: torch.Tensor):
        dy, x, b = ctx.saved_tensors
        spec: BiasActSpec = ctx.spec
        d_dy = d_x = d_b = None
        if ctx.needs_input_grad[0]:
            # dx is linear in dy: its derivative along ddx is the first-order op applied to ddx.
            d_dy = _BiasActGrad.apply(ddx.contiguous(), x, b, spec)
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            d_x = _BiasActGrad2.apply(ddx.contiguous(), dy, x, b, spec)
            if ctx.needs_input_grad[2]:
                d_b = spec.bias_grad(d_x, b.dtype)
        return d_dy, d_x, d_b, None


class _BiasActGrad2(torch.autograd.Function):
    """ddx * dy * gain * act''(x + b) * inside: the second-order term, the last order implemented."""

    @staticmethod
    def forward(ctx, ddx: torch.Tensor, dy: torch.Tensor, x: torch.Tensor, b: torch.Tensor | None,
                spec: BiasActSpec) -> torch.Tensor:
        return spec.launch(MODE_GRAD2, x, b, g=ddx, h=dy)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        raise RuntimeError("bias_act (fused Triton path): derivatives beyond the second order are not implemented; "
                           "run bias_act with impl='ref' for third and higher derivatives")


def bias_act_triton(x: torch.Tensor, b: torch.Tensor | None, dim: int, act: str, alpha: float, gain: float,
                    clamp: float) -> torch.Tensor:
    """Fused bias_act with resolved arguments; the same result as gan.ops.bias_act_ref.

    Args:
        x: any shape, float32 / float16 / bfloat16, on CUDA (or CPU under TRITON_INTERPRET=1).
        b: [x.shape[dim]] bias (cast to x's dtype like the reference), or None.
        dim: the axis of x that b runs along.
        act: a name in gan.ops.ACTIVATIONS.
        alpha, gain: the activation's slope and output scale.
        clamp: clamp the output to [-clamp, clamp]; < 0 for no clamping.

    Returns:
        Contiguous tensor shaped like x, x's dtype (computed in float32); differentiable to second order.
    """
    if act not in ACTIVATION_CODES or act not in ACTIVATIONS:
        raise ValueError(f"bias_act_triton: no fused kernel for activation {act!r}; "
                         f"kernels exist for {sorted(ACTIVATION_CODES)}")
    if x.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"bias_act_triton: x must be float32, float16 or bfloat16, got {x.dtype}")
    if not -x.ndim <= dim < x.ndim:
        raise ValueError(f"bias_act_triton: dim {dim} out of range for x of shape {tuple(x.shape)}")
    dim %= x.ndim
    if b is not None and (b.ndim != 1 or b.shape[0] != x.shape[dim]):
        raise ValueError(f"bias_act_triton: bias of shape {tuple(b.shape)} does not match "
                         f"x.shape[{dim}] = {x.shape[dim]}")
    if b is not None and b.device != x.device:
        raise ValueError(f"bias_act_triton: bias on {b.device} but x on {x.device}")
    spec = BiasActSpec(act, float(alpha), float(gain), float(clamp), dim, tuple(x.shape))
    # Layout and dtype changes happen here, outside the Functions, so that autograd records them and the
    # tensors the Functions save are the graph's own (second-order terms in x, b and dy stay connected).
    x = x.contiguous()
    if b is not None:
        b = b.to(x.dtype).contiguous()
    return _BiasAct.apply(x, b, spec)
