"""The few operations StyleGAN2 spends its time in, each with a pure-PyTorch reference (the
correctness oracle, runs everywhere) and a fused Triton kernel (CUDA, or CPU under
TRITON_INTERPRET=1). `set_backend("auto"|"ref"|"fused")` or $STYLEPAIR_OPS chooses; triton is
imported only when a fused kernel first runs.
"""
from gan.ops.backend import BACKENDS, get_backend, select_impl, set_backend, triton_available
from gan.ops.activations import ACTIVATIONS
from gan.ops.bias_act import bias_act, bias_act_ref
from gan.ops.conv2d_resample import conv2d_resample
from gan.ops.modulated_conv import demodulation_coefficients, modulated_conv2d
from gan.ops.upfirdn2d import (downsample2d, filter2d, parse_padding, parse_scaling, setup_filter, upfirdn2d,
                               upfirdn2d_ref, upsample2d)

__all__ = [
    "ACTIVATIONS", "BACKENDS", "bias_act", "bias_act_ref", "conv2d_resample", "demodulation_coefficients",
    "downsample2d", "filter2d", "get_backend", "modulated_conv2d", "parse_padding", "parse_scaling",
    "select_impl", "set_backend", "setup_filter", "triton_available", "upfirdn2d", "upfirdn2d_ref",
    "upsample2d",
]
