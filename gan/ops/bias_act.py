"""Bias + activation + gain + clamp, the elementwise epilogue of every StyleGAN2 layer.

y = clamp(act(x + b) * gain, -clamp, clamp). Each activation carries its default slope `alpha`
and its default `gain`, chosen (as in StyleGAN2) so that the output of a unit-variance input keeps
roughly unit variance: sqrt(2) for the rectifiers.
"""
from __future__ import annotations

import torch

from gan.ops.activations import ACTIVATIONS, resolve_bias_act_args
from gan.ops.backend import select_impl


def bias_act_ref(x: torch.Tensor, b: torch.Tensor | None, dim: int, act: str, alpha: float,
                 gain: float, clamp: float) -> torch.Tensor:
    """Reference bias_act with resolved arguments (clamp < 0: no clamping)."""
    spec = ACTIVATIONS[act]
    y = x
    if b is not None:
        y = y + b.reshape([-1 if i == dim else 1 for i in range(x.ndim)]).to(x.dtype)
    y = spec.func(y, alpha)
    # When autograd records nothing, scale and clamp the activation's own output in place: one big
    # temporary fewer per step (on CPU each costs a pass over memory and fresh page faults).
    in_place = y is not x and not (torch.is_grad_enabled() and y.requires_grad)
    if gain != 1:
        y = y.mul_(gain) if in_place else y * gain
    if clamp >= 0:
        y = y.clamp_(-clamp, clamp) if in_place else y.clamp(-clamp, clamp)
    return y


def bias_act(x: torch.Tensor, b: torch.Tensor | None = None, dim: int = 1, act: str = "linear",
             alpha: float | None = None, gain: float | None = None, clamp: float | None = None,
             impl: str | None = None) -> torch.Tensor:
    """Add a bias along `dim`, apply an activation, scale by `gain`, clamp to [-clamp, clamp].

    Args:
        x: any shape, float (fp32/fp16/bf16).
        b: [x.shape[dim]] bias, or None.
        dim: the channel axis of x that b runs along.
        act: one of ACTIVATIONS ("linear", "relu", "lrelu", "tanh", "sigmoid", "elu", "selu",
            "softplus", "swish").
        alpha: slope for lrelu (default 0.2); unused by the others.
        gain: output scale (default: the activation's, e.g. sqrt(2) for lrelu).
        clamp: clamp the output to [-clamp, clamp]; None for no clamping.
        impl: per-call override of the backend ("auto", "ref", "fused").

    Returns:
        Tensor shaped like x, same dtype; differentiable to second order on both paths.
    """
    spec, alpha, gain, clamp = resolve_bias_act_args(act, alpha, gain, clamp)
    if not -x.ndim <= dim < x.ndim:
        raise ValueError(f"bias_act: dim {dim} out of range for x of shape {tuple(x.shape)}")
    dim %= x.ndim
    if b is not None and (b.ndim != 1 or b.shape[0] != x.shape[dim]):
        raise ValueError(f"bias_act: bias of shape {tuple(b.shape)} does not match x.shape[{dim}] = {x.shape[dim]}")
    if select_impl("bias_act", x, impl) == "fused":
        from gan.ops.triton_bias_act import bias_act_triton
        return bias_act_triton(x, b, dim, act, alpha, gain, clamp)
    return bias_act_ref(x, b, dim, act, alpha, gain, clamp)
