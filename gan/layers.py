"""Equalised-learning-rate layers of StyleGAN2 (Karras et al. 2020).

Every weight is stored as N(0, 1) / lr_mult and scaled at run time by lr_mult / sqrt(fan_in), so
that Adam's per-parameter step sizes act on the same scale for every layer ("equalised lr").
Activations go through `gan.ops.bias_act` (bias + act + gain + clamp in one op), resampling through
`gan.ops` upfirdn2d with the [1, 3, 3, 1] FIR filter.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from gan import ops

LRELU_GAIN = math.sqrt(2.0)   # leaky ReLU 0.2 keeps unit variance with gain sqrt(2)
RESAMPLE_FILTER = (1, 3, 3, 1)


def activation_gain(activation: str) -> float:
    """The gain that keeps unit output variance for unit-variance input (sqrt(2) for (l)relu)."""
    return LRELU_GAIN if activation in ("relu", "lrelu") else 1.0


def resample_filter(needed: bool) -> torch.Tensor | None:
    """The normalised 2D [1, 3, 3, 1] FIR filter for layers that resample, None for the others."""
    return ops.setup_filter(list(RESAMPLE_FILTER)) if needed else None


def _clamp(conv_clamp: float | None, gain: float) -> float | None:
    return None if conv_clamp is None else conv_clamp * gain


class FullyConnectedLayer(nn.Module):
    """Equalised-lr dense layer: x [N, in_features] -> [N, out_features].

    ``bias_init`` is the effective initial bias; ``lr_multiplier`` scales both the weight's and the
    bias's effective learning rate (0.01 in the mapping network).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 activation: str = "linear", lr_multiplier: float = 1.0, bias_init: float = 0.0):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.activation = activation
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_multiplier)
        self.bias = nn.Parameter(torch.full([out_features], bias_init / lr_multiplier)) if bias else None
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.ndim == 2 and x.shape[1] == self.in_features, \
            f"expected [N, {self.in_features}], got {tuple(x.shape)}"
        w = self.weight.to(x.dtype) * self.weight_gain
        b = None if self.bias is None else self.bias.to(x.dtype) * self.bias_gain
        if self.activation == "linear" and b is not None:
            return torch.addmm(b.unsqueeze(0), x, w.t())
        x = x.matmul(w.t())
        return ops.bias_act(x, b, act=self.activation)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"activation={self.activation}")


class Conv2dLayer(nn.Module):
    """Equalised-lr convolution with optional FIR up/down-sampling by 2.

    x [N, in_channels, H, W] -> [N, out_channels, H*up/down, W*up/down] (kernel_size odd, 'same'
    padding).  ``gain`` in forward scales the output (sqrt(0.5) for the ResNet branches of D).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, bias: bool = True,
                 activation: str = "linear", up: int = 1, down: int = 1,
                 conv_clamp: float | None = None):
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.activation = activation
        self.up = up
        self.down = down
        self.padding = kernel_size // 2
        self.conv_clamp = conv_clamp
        self.weight_gain = 1.0 / math.sqrt(in_channels * kernel_size * kernel_size)
        self.act_gain = activation_gain(activation)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.register_buffer("resample_filter", resample_filter(up > 1 or down > 1), persistent=False)

    def forward(self, x: torch.Tensor, gain: float = 1.0) -> torch.Tensor:
        assert x.ndim == 4 and x.shape[1] == self.in_channels, \
            f"expected [N, {self.in_channels}, H, W], got {tuple(x.shape)}"
        w = self.weight.to(x.dtype) * self.weight_gain
        b = None if self.bias is None else self.bias.to(x.dtype)
        # Transposed convolution (up=2) uses the unflipped kernel, matching modulated_conv2d.
        x = ops.conv2d_resample(x, w, f=self.resample_filter, up=self.up, down=self.down,
                                padding=self.padding, flip_weight=(self.up == 1))
        act_gain = self.act_gain * gain
        return ops.bias_act(x, b, act=self.activation, gain=act_gain,
                            clamp=_clamp(self.conv_clamp, gain))

    def extra_repr(self) -> str:
        return (f"in_channels={self.in_channels}, out_channels={self.out_channels}, "
                f"activation={self.activation}, up={self.up}, down={self.down}")


class ModulatedConvLayer(nn.Module):
    """StyleGAN2 synthesis layer: style-modulated, demodulated 3x3 conv + noise + bias + lrelu.

    x [N, in_channels, H, W], w [N, w_dim] -> [N, out_channels, H*up, W*up] with H*up = resolution.
    Style s = affine(w) (bias initialised to 1, so every input channel starts unscaled); noise is a
    per-pixel N(0, 1) map times a learned strength (initialised to 0).
    """

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int,
                 kernel_size: int = 3, up: int = 1, use_noise: bool = True,
                 activation: str = "lrelu", conv_clamp: float | None = None):
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.resolution = resolution
        self.up = up
        self.use_noise = use_noise
        self.activation = activation
        self.conv_clamp = conv_clamp
        self.padding = kernel_size // 2
        self.act_gain = activation_gain(activation)
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.register_buffer("resample_filter", resample_filter(up > 1), persistent=False)
        if use_noise:
            self.register_buffer("noise_const", torch.randn(resolution, resolution))
            self.noise_strength = nn.Parameter(torch.zeros([]))

    def make_noise(self, x: torch.Tensor, noise_mode: str) -> torch.Tensor | None:
        """Per-pixel noise [N, 1, res, res] (random), the fixed map (const), or None (none)."""
        if not self.use_noise or noise_mode == "none":
            return None
        if noise_mode == "random":
            return torch.randn([x.shape[0], 1, self.resolution, self.resolution],
                               device=x.device, dtype=x.dtype) * self.noise_strength.to(x.dtype)
        if noise_mode == "const":
            return (self.noise_const * self.noise_strength).to(x.dtype)
        raise ValueError(f"noise_mode must be 'random', 'const' or 'none', got {noise_mode!r}")

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise_mode: str = "random",
                fused_modconv: bool = True, gain: float = 1.0) -> torch.Tensor:
        N = x.shape[0]
        assert x.shape == (N, self.in_channels, self.resolution // self.up, self.resolution // self.up), \
            f"expected [N, {self.in_channels}, {self.resolution // self.up}, ...], got {tuple(x.shape)}"
        styles = self.affine(w)                                      # [N, in_channels]
        noise = self.make_noise(x, noise_mode)
        # Weights and styles stay fp32: modulated_conv2d demodulates in fp32 before casting to x's dtype.
        x = ops.modulated_conv2d(x, self.weight, styles, noise=noise,
                                 up=self.up, padding=self.padding,
                                 resample_filter=self.resample_filter,
                                 flip_weight=(self.up == 1), fused_modconv=fused_modconv)
        act_gain = self.act_gain * gain
        x = ops.bias_act(x, self.bias.to(x.dtype), act=self.activation, gain=act_gain,
                         clamp=_clamp(self.conv_clamp, gain))
        assert x.shape == (N, self.out_channels, self.resolution, self.resolution)
        return x

    def extra_repr(self) -> str:
        return (f"in_channels={self.in_channels}, out_channels={self.out_channels}, "
                f"resolution={self.resolution}, up={self.up}")


class ToOutputLayer(nn.Module):
    """The skip-architecture 'toRGB' with any number of output channels.

    x [N, in_channels, H, W], w [N, w_dim] -> [N, out_channels, H, W]: a modulated 1x1 conv without
    demodulation (the output scale is learned) and without noise, plus bias, linear.
    """

    def __init__(self, in_channels: int, out_channels: int, w_dim: int,
                 conv_clamp: float | None = None):
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.conv_clamp = conv_clamp
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, 1, 1))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.weight_gain = 1.0 / math.sqrt(in_channels)

    def forward(self, x: torch.Tensor, w: torch.Tensor, fused_modconv: bool = True) -> torch.Tensor:
        assert x.ndim == 4 and x.shape[1] == self.in_channels
        styles = self.affine(w) * self.weight_gain                   # equalised lr via the styles
        x = ops.modulated_conv2d(x, self.weight, styles, demodulate=False,
                                 fused_modconv=fused_modconv)
        return ops.bias_act(x, self.bias.to(x.dtype), clamp=self.conv_clamp)

    def extra_repr(self) -> str:
        return f"in_channels={self.in_channels}, out_channels={self.out_channels}"
