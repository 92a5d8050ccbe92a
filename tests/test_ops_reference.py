"""The reference ops against independent maths: scipy's upfirdn, closed-form activations,
naive per-sample modulated convolution, and the unit-variance property of demodulation."""
import logging
import math
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import scipy.signal
import torch
import torch.nn.functional as F

from gan import ops


@pytest.fixture(autouse=True)
def reference_backend():
    previous = ops.get_backend()
    ops.set_backend("ref")
    yield
    ops.set_backend(previous)


def scipy_upfirdn2d(x: np.ndarray, taps: np.ndarray, up: int, down: int) -> np.ndarray:
    """Separable upfirdn applied with scipy along the rows, then the columns, of every [H, W] plane."""
    rows = np.apply_along_axis(lambda r: scipy.signal.upfirdn(taps, r, up, down), -1, x)
    return np.apply_along_axis(lambda c: scipy.signal.upfirdn(taps, c, up, down), -2, rows)


@pytest.mark.parametrize("up,down", [(1, 1), (2, 1), (1, 2), (2, 2), (3, 2), (1, 3)])
@pytest.mark.parametrize("size", [(7, 9), (8, 8)])
def test_upfirdn2d_matches_scipy_upfirdn(up, down, size):
    rng = np.random.default_rng(up * 10 + down)
    x = rng.standard_normal((2, 3, *size))
    # Asymmetric taps, rounded to float32 as setup_filter keeps them.
    taps = rng.standard_normal(5).astype(np.float32).astype(np.float64)
    f = ops.setup_filter(taps, normalize=False, separable=True).double()
    fw = taps.shape[0]
    # Full convolution as scipy computes it: pad (fw - 1) before and (fw - up) after the upsampled signal.
    ours = ops.upfirdn2d(torch.from_numpy(x), f, up=up, down=down, padding=[fw - 1, fw - up, fw - 1, fw - up])
    expected = scipy_upfirdn2d(x, taps, up, down)
    assert ours.shape == expected.shape
    np.testing.assert_allclose(ours.numpy(), expected, atol=1e-10)


def test_upfirdn2d_2d_filter_equals_separable_outer_product():
    x = torch.randn(2, 3, 9, 7, dtype=torch.float64)
    taps = torch.tensor([1.0, 2.0, 5.0, 1.0], dtype=torch.float64)
    sep = ops.upfirdn2d(x, taps, up=2, down=1, padding=[2, 1, 3, 0])
    full = ops.upfirdn2d(x, torch.outer(taps, taps), up=2, down=1, padding=[2, 1, 3, 0])
    torch.testing.assert_close(sep, full)


def test_upfirdn2d_negative_padding_crops():
    x = torch.randn(1, 2, 6, 8)
    out = ops.upfirdn2d(x, None, padding=[-1, -2, 0, -3])
    torch.testing.assert_close(out, x[:, :, 0:3, 1:6])


def test_upfirdn2d_refuses_empty_output_and_bad_padding():
    x = torch.randn(1, 1, 2, 2)
    with pytest.raises(ValueError, match="no output pixels"):
        ops.upfirdn2d(x, ops.setup_filter([1, 3, 3, 1]), padding=-1)
    with pytest.raises(ValueError, match="padding"):
        ops.upfirdn2d(x, None, padding=[1, 2, 3])
    with pytest.raises(ValueError, match=r"\[fh, fw\] filter"):
        ops.upfirdn2d(x, torch.ones(1, 2, 2))


def test_resampling_keeps_the_mean_of_a_constant_image():
    f = ops.setup_filter([1, 3, 3, 1])
    x = torch.full((1, 1, 16, 16), 3.0)
    up = ops.upsample2d(x, f)
    down = ops.downsample2d(x, f)
    assert up.shape == (1, 1, 32, 32) and down.shape == (1, 1, 8, 8)
    torch.testing.assert_close(up[..., 2:-2, 2:-2], torch.full_like(up[..., 2:-2, 2:-2], 3.0))
    torch.testing.assert_close(down[..., 1:-1, 1:-1], torch.full_like(down[..., 1:-1, 1:-1], 3.0))
    assert ops.filter2d(x, f).shape == x.shape


CLOSED_FORMS = {
    "linear": (lambda v: v, 1.0),
    "relu": (lambda v: np.maximum(v, 0), math.sqrt(2)),
    "lrelu": (lambda v: np.where(v > 0, v, 0.2 * v), math.sqrt(2)),
    "tanh": (np.tanh, 1.0),
    "sigmoid": (lambda v: 1 / (1 + np.exp(-v)), 1.0),
    "elu": (lambda v: np.where(v > 0, v, np.expm1(v)), 1.0),
    "selu": (lambda v: 1.0507009873554805 * np.where(v > 0, v, 1.6732632423543772 * np.expm1(v)), 1.0),
    "softplus": (lambda v: np.log1p(np.exp(v)), 1.0),
    "swish": (lambda v: v / (1 + np.exp(-v)), math.sqrt(2)),
}


@pytest.mark.parametrize("act", sorted(CLOSED_FORMS))
def test_bias_act_closed_forms_with_default_gain(act):
    x = torch.randn(4, 5, 3, dtype=torch.float64)
    b = torch.randn(5, dtype=torch.float64)
    func, gain = CLOSED_FORMS[act]
    expected = func((x + b[None, :, None]).numpy()) * gain
    np.testing.assert_allclose(ops.bias_act(x, b, dim=1, act=act).numpy(), expected, rtol=1e-7, atol=1e-9)


def test_bias_act_alpha_gain_clamp_and_dim():
    x = torch.linspace(-10, 10, 21, dtype=torch.float64).reshape(3, 7)
    b = torch.arange(7, dtype=torch.float64)
    y = ops.bias_act(x.t(), b, dim=0, act="lrelu", alpha=0.1, gain=2.0, clamp=5.0).t()
    v = x + b
    expected = np.clip(np.where(v > 0, v, 0.1 * v) * 2.0, -5, 5)
    np.testing.assert_allclose(y.numpy(), expected)
    y_last = ops.bias_act(x, b, dim=-1, act="lrelu", alpha=0.1, gain=2.0, clamp=5.0)
    np.testing.assert_allclose(y_last.numpy(), expected)


@pytest.mark.parametrize("act,use_bias", [("linear", False), ("linear", True), ("lrelu", False), ("tanh", True)])
def test_bias_act_without_autograd_gives_the_same_and_leaves_its_input_alone(act, use_bias):
    x = torch.randn(2, 3, 5)
    b = torch.randn(3) if use_bias else None
    x_before = x.clone()
    with torch.no_grad():
        y = ops.bias_act(x, b, act=act, gain=1.5, clamp=0.7)
    torch.testing.assert_close(x, x_before, rtol=0, atol=0)
    xg = x.clone().requires_grad_()
    torch.testing.assert_close(y, ops.bias_act(xg, b, act=act, gain=1.5, clamp=0.7).detach())


def test_bias_act_rejects_unknown_activation_and_bad_bias():
    with pytest.raises(ValueError, match="unknown activation"):
        ops.bias_act(torch.zeros(2, 3), act="gelu2")
    with pytest.raises(ValueError, match="does not match"):
        ops.bias_act(torch.zeros(2, 3), torch.zeros(4))
    with pytest.raises(ValueError, match="out of range"):
        ops.bias_act(torch.zeros(2, 3), torch.zeros(3), dim=2)


def naive_modulated_conv(x, weight, styles, demodulate, up, down, f):
    """One sample at a time, weights modulated explicitly, resampling by upsample/conv/downsample."""
    outs = []
    for n in range(x.shape[0]):
        w = weight * styles[n].reshape(1, -1, 1, 1)
        if demodulate:
            w = w / torch.sqrt(w.square().sum(dim=[1, 2, 3], keepdim=True) + 1e-8)
        xn = x[n:n + 1]
        if up > 1:
            xn = ops.upsample2d(xn, f, up=up)
        y = F.conv2d(xn, w, padding=weight.shape[-1] // 2)
        if down > 1:
            y = ops.downsample2d(y, f, down=down)
        outs.append(y)
    return torch.cat(outs)


@pytest.mark.parametrize("demodulate", [True, False])
@pytest.mark.parametrize("up,down", [(1, 1), (2, 1), (1, 2)])
def test_modulated_conv_fused_equals_nonfused_equals_naive(demodulate, up, down):
    torch.manual_seed(0)
    x = torch.randn(3, 4, 16, 16, dtype=torch.float64)
    weight = torch.randn(6, 4, 3, 3, dtype=torch.float64)
    styles = torch.randn(3, 4, dtype=torch.float64)
    noise = torch.randn(3, 1, 16 * up // down, 16 * up // down, dtype=torch.float64)
    f = ops.setup_filter([1, 3, 3, 1]).double()
    kwargs = dict(up=up, down=down, padding=1, resample_filter=f, demodulate=demodulate)
    fused = ops.modulated_conv2d(x, weight, styles, noise=noise, fused_modconv=True, **kwargs)
    nonfused = ops.modulated_conv2d(x, weight, styles, noise=noise, fused_modconv=False, **kwargs)
    assert fused.shape == (3, 6, 16 * up // down, 16 * up // down)
    torch.testing.assert_close(fused, nonfused)
    naive = naive_modulated_conv(x, weight, styles, demodulate, up, down, f) + noise
    # Resampling order differs from the naive form only at the border (zero padding applied at another stage).
    inner = slice(2, -2)
    torch.testing.assert_close(fused[..., inner, inner], naive[..., inner, inner])


def test_demodulation_gives_unit_output_variance():
    torch.manual_seed(1)
    x = torch.randn(8, 64, 24, 24)
    weight = torch.randn(32, 64, 3, 3)
    styles = torch.rand(8, 64) * 3 + 0.1  # strongly non-uniform styles: demodulation must undo them
    y = ops.modulated_conv2d(x, weight, styles, padding=1)
    per_sample_var = y[..., 1:-1, 1:-1].var(dim=[1, 2, 3])
    assert torch.all((per_sample_var - 1).abs() < 0.1), per_sample_var
    undemod = ops.modulated_conv2d(x, weight, styles, padding=1, demodulate=False)
    assert undemod.var() > 10


def test_backend_setting_is_validated(monkeypatch):
    with pytest.raises(ValueError, match="unknown ops backend"):
        ops.set_backend("fast")
    ops.set_backend("fused")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="needs a CUDA GPU, or TRITON_INTERPRET=1"):
        ops.bias_act(torch.zeros(2, 3), act="lrelu")
    assert ops.select_impl("bias_act", torch.zeros(1), impl="ref") == "ref"
    assert ops.select_impl("bias_act", torch.zeros(1), impl="auto") == "ref"  # CPU tensors run the reference


def test_backend_choice_is_logged_once_and_a_missing_triton_is_never_silent(monkeypatch, caplog):
    from gan.ops import backend
    monkeypatch.setattr(backend, "_logged", set())
    on_cuda = SimpleNamespace(device=torch.device("cuda"))  # select_impl only reads the device
    with caplog.at_level(logging.INFO, logger="stylepair.ops"):
        assert ops.select_impl("bias_act", torch.zeros(1), impl="auto") == "ref"
        assert ops.select_impl("bias_act", torch.zeros(1), impl="auto") == "ref"
        monkeypatch.setattr(backend, "triton_available", lambda: False)
        assert ops.select_impl("upfirdn2d", on_cuda, impl="auto") == "ref"
        assert ops.select_impl("upfirdn2d", on_cuda, impl="auto") == "ref"
        with pytest.raises(RuntimeError, match="needs triton"):
            ops.select_impl("upfirdn2d", on_cuda, impl="fused")
    messages = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert messages == [
        (logging.INFO, "bias_act: reference PyTorch path on cpu (backend 'auto')"),
        (logging.WARNING, "upfirdn2d: triton is not installed, so the reference PyTorch path runs on cuda "
                          "(pip install triton for the fused kernels)"),
    ]


def test_importing_the_ops_and_running_the_reference_never_imports_triton():
    script = ("import sys, torch; from gan import ops; "
              "ops.bias_act(torch.ones(1, 2, 3), act='lrelu'); "
              "ops.upsample2d(torch.ones(1, 1, 4, 4), ops.setup_filter([1, 3, 3, 1])); "
              "print('triton' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
