"""The fused Triton kernels against the pure-PyTorch reference ops: forward, gradient and gradient of
gradient, float32 and float16 inputs, odd sizes, up/down 1 and 2, separable and 2D filters, cropping
pads, every activation, clamping. On a machine without CUDA they run under TRITON_INTERPRET=1 (set
by conftest.py), so the tensors stay tiny; the full sweep is marked slow."""
import itertools
import json
import math
import os
import subprocess
import sys

import pytest
import torch

from gan import ops
from gan.ops.activations import resolve_bias_act_args
from gan.ops.parity import compare

triton = pytest.importorskip("triton")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if DEVICE == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("no CUDA and TRITON_INTERPRET is not 1: the fused kernels cannot run", allow_module_level=True)

from gan.ops.triton_bias_act import ACTIVATION_CODES, bias_act_triton  # noqa: E402  (needs TRITON_INTERPRET)
from gan.ops.triton_upfirdn2d import UpFirDnParams, upfirdn2d_triton  # noqa: E402

# Half-precision results are rounded once to 11 (fp16) or 8 (bf16) significant bits; the gradients
# pass through one more rounding of y (and dy) and, for bias, a sum.
TOLERANCE = {torch.float32: (2e-5, 1e-6), torch.float16: (4e-3, 2e-3), torch.bfloat16: (3e-2, 2e-2)}


def tiny(*shape: int, dtype: torch.dtype = torch.float32, seed: int = 0, scale: float = 1.0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=generator) * scale).to(device=DEVICE, dtype=dtype)


@pytest.fixture
def fused_backend():
    previous = ops.get_backend()
    ops.set_backend("fused")
    yield
    ops.set_backend(previous)


# ---------------------------------------------------------------------------------------- bias_act

def test_every_activation_has_a_kernel():
    assert set(ACTIVATION_CODES) == set(ops.ACTIVATIONS)


def bias_act_case(dtype: torch.dtype, act: str, clamp: float | None, alpha: float | None = None):
    """(fused, reference, inputs) for bias_act on a [2, 3, 7, 9] tensor with a bias along dim 1."""
    _, alpha, gain, clamp = resolve_bias_act_args(act, alpha, None, clamp)
    x = tiny(2, 3, 7, 9, dtype=dtype, seed=1, scale=2.0)
    b = tiny(3, dtype=dtype, seed=2)  # in x's dtype, so the float32 reference sees the same values

    def fused(x, b):
        return bias_act_triton(x, b, 1, act, alpha, gain, clamp)

    def reference(x, b):
        return ops.bias_act_ref(x, b, 1, act, alpha, gain, clamp)
    return fused, reference, [x, b]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("clamp", [None, 0.6], ids=["noclamp", "clamp"])
@pytest.mark.parametrize("act", sorted(ACTIVATION_CODES))
def test_bias_act_fused_matches_reference(act, clamp, dtype):
    fused, reference, inputs = bias_act_case(dtype, act, clamp)
    errors = compare(fused, reference, inputs)
    rtol, atol = TOLERANCE[dtype]
    assert errors.within(rtol, atol), errors


@pytest.mark.parametrize("shape,dim", [((5, 6), 1), ((2, 4, 3, 5), 2), ((7,), 0)])
def test_bias_act_other_layouts_and_explicit_alpha(shape, dim):
    x = tiny(*shape, seed=3)
    b = tiny(shape[dim], seed=4)
    errors = compare(lambda x, b: bias_act_triton(x, b, dim, "lrelu", 0.1, 1.5, 1.0),
                     lambda x, b: ops.bias_act_ref(x, b, dim, "lrelu", 0.1, 1.5, 1.0), [x, b])
    assert errors.within(*TOLERANCE[torch.float32]), errors
    errors = compare(lambda x: bias_act_triton(x, None, dim, "swish", 0.0, 2.0, -1.0),
                     lambda x: ops.bias_act_ref(x, None, dim, "swish", 0.0, 2.0, -1.0), [x])
    assert errors.within(*TOLERANCE[torch.float32]), errors


def test_bias_act_fp32_bias_on_fp16_input_and_strided_input():
    # The mixed-precision layer case (fp32 bias parameter, fp16 activations) and a non-contiguous x:
    # the second-order terms must stay connected to the caller's tensors through the casts and copies.
    x = tiny(2, 3, 9, 7, dtype=torch.float16, seed=5).transpose(2, 3)
    b = tiny(3, seed=6).half().float()  # float32 holding fp16-representable values, as the kernel sees them
    assert not x.is_contiguous()
    errors = compare(lambda x, b: bias_act_triton(x, b, 1, "swish", 0.0, math.sqrt(2), 1.5),
                     lambda x, b: ops.bias_act_ref(x, b, 1, "swish", 0.0, math.sqrt(2), 1.5), [x, b])
    assert errors.within(*TOLERANCE[torch.float16]), errors
    x, b = x.clone().requires_grad_(), b.clone().requires_grad_()
    dx, db = torch.autograd.grad(bias_act_triton(x, b, 1, "lrelu", 0.2, 1.0, -1.0).float().sum(), [x, b])
    assert dx.dtype == torch.float16 and db.dtype == torch.float32


def test_bias_act_third_derivative_raises_instead_of_lying():
    x = tiny(2, 3, seed=7).requires_grad_()
    y = bias_act_triton(x, None, 1, "tanh", 0.0, 1.0, -1.0)
    (g,) = torch.autograd.grad(y.sum(), x, create_graph=True)
    (gg,) = torch.autograd.grad(g.sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="beyond the second order"):
        torch.autograd.grad(gg.sum(), x)


def test_bias_act_rejects_integer_input():
    with pytest.raises(TypeError, match="float32, float16 or bfloat16"):
        bias_act_triton(torch.ones(2, 3, dtype=torch.int32, device=DEVICE), None, 1, "relu", 0.0, 1.0, -1.0)


# --------------------------------------------------------------------------------------- upfirdn2d

def upfirdn2d_case(dtype: torch.dtype, size: tuple[int, int], up, down, padding, separable: bool,
                   flip_filter: bool = False, gain: float = 1.0, seed: int = 0):
    """(fused, reference, inputs) for upfirdn2d on a [2, 3, *size] input with an asymmetric filter."""
    upx, upy = ops.parse_scaling(up)
    downx, downy = ops.parse_scaling(down)
    padding = ops.parse_padding(padding)
    taps = [1.0, 3.0, 2.5, 0.5] if separable else [[1.0, 2.0, 1.5], [0.5, 3.0, 1.0], [2.0, 0.5, 1.0]]
    f = ops.setup_filter(taps, separable=separable, device=DEVICE)
    x = tiny(2, 3, *size, dtype=dtype, seed=seed)

    def fused(x):
        return upfirdn2d_triton(x, f, upx, upy, downx, downy, *padding, flip_filter, gain)

    def reference(x):
        return ops.upfirdn2d_ref(x, f, (upx, upy), (downx, downy), padding, flip_filter, gain)
    return fused, reference, [x]


# (size, up, down, padding, separable, flip_filter, gain): odd sizes where down does not divide evenly,
# crops (negative padding), per-axis factors, both filter kinds.
UPFIRDN_CASES = [
    ((7, 9), 1, 1, 0, False, False, 1.0),
    ((7, 9), 2, 1, [2, 1, 2, 1], True, False, 4.0),
    ((7, 9), 2, 1, [2, 1, 1, 2], False, True, 4.0),
    ((7, 9), 1, 2, [1, 1, 1, 1], True, False, 1.0),
    ((9, 7), 1, 2, [1, 0, 0, 1], False, False, 1.0),
    ((7, 9), 2, 2, [-1, 2, 3, -2], True, True, 2.0),
    ((5, 8), [2, 1], [1, 2], [1, -2, -1, 0], False, False, 1.0),
    ((6, 5), 1, 1, [-1, 2, 1, -1], True, False, 1.0),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("case", UPFIRDN_CASES, ids=[f"case{i}" for i in range(len(UPFIRDN_CASES))])
def test_upfirdn2d_fused_matches_reference(case, dtype):
    size, up, down, padding, separable, flip_filter, gain = case
    fused, reference, inputs = upfirdn2d_case(dtype, size, up, down, padding, separable, flip_filter, gain)
    errors = compare(fused, reference, inputs)
    assert errors.within(*TOLERANCE[dtype]), errors


@pytest.mark.parametrize("in_size", range(4, 10))
@pytest.mark.parametrize("down", [2, 3])
def test_upfirdn2d_adjoint_padding_gives_back_the_input_size(in_size, down):
    # The transposed op must map any output back to exactly the input size, rounding included.
    for fw, pad0, pad1, up in itertools.product([1, 3, 4], [-1, 0, 2], [-1, 1], [1, 2]):
        p = UpFirDnParams(up, up, down, down, pad0, pad1, pad0, pad1, False, 1.0)
        out_h, out_w = p.output_size(in_size, in_size, fw, fw)
        if out_h < 1:
            continue
        adj = p.adjoint(in_size, in_size, fw, fw)
        assert adj.output_size(out_h, out_w, fw, fw) == (in_size, in_size), (p, adj)


def test_upfirdn2d_third_derivative_matches_reference():
    # Linear op: every derivative order is the adjoint upfirdn2d again.
    fused, reference, (x,) = upfirdn2d_case(torch.float32, (5, 7), 2, 1, [2, 1, 2, 1], True)
    results = []
    for op in (fused, reference):
        xr = x.clone().requires_grad_()
        (g,) = torch.autograd.grad(op(xr).pow(3).sum(), xr, create_graph=True)
        (gg,) = torch.autograd.grad(g.square().sum(), xr, create_graph=True)
        (ggg,) = torch.autograd.grad(gg.sin().sum(), xr)
        results.append(ggg)
    torch.testing.assert_close(results[0], results[1], rtol=1e-4, atol=1e-5)


def test_upfirdn2d_rejects_bad_input():
    f = ops.setup_filter([1, 3, 3, 1], device=DEVICE)
    with pytest.raises(ValueError, match=r"\[N, C, H, W\]"):
        upfirdn2d_triton(tiny(3, 5, 5), f, 1, 1, 1, 1, 0, 0, 0, 0, False, 1.0)
    with pytest.raises(ValueError, match="no output pixels"):
        upfirdn2d_triton(tiny(1, 1, 2, 2), f, 1, 1, 1, 1, -1, -1, 0, 0, False, 1.0)


# ------------------------------------------------------------------------------ public dispatchers

def test_fused_backend_reaches_the_kernels(fused_backend, monkeypatch):
    import gan.ops.triton_bias_act as tba
    import gan.ops.triton_upfirdn2d as tud
    calls = {"bias_act": 0, "upfirdn2d": 0}

    def counting(name, fn):
        def wrapper(*args):
            calls[name] += 1
            return fn(*args)
        return wrapper
    monkeypatch.setattr(tba, "bias_act_triton", counting("bias_act", tba.bias_act_triton))
    monkeypatch.setattr(tud, "upfirdn2d_triton", counting("upfirdn2d", tud.upfirdn2d_triton))

    x = tiny(2, 3, 7, 9, seed=8)
    b = tiny(3, seed=9)
    f = ops.setup_filter([1, 3, 3, 1], device=DEVICE)

    def every_op():
        return {
            "bias_act": ops.bias_act(x, b, act="lrelu", clamp=256),
            "upsample2d": ops.upsample2d(x, f),
            "downsample2d": ops.downsample2d(x, f),
            "filter2d": ops.filter2d(x, f),
            "crop and pad": ops.upfirdn2d(x, None, padding=[-1, 2, 1, -2]),
        }

    results = every_op()
    assert calls == {"bias_act": 1, "upfirdn2d": 4}
    ops.set_backend("ref")
    expected = every_op()
    assert calls == {"bias_act": 1, "upfirdn2d": 4}
    for name, y in results.items():
        torch.testing.assert_close(y, expected[name], rtol=1e-5, atol=1e-6, msg=name)
    assert results["upsample2d"].shape == (2, 3, 14, 18) and results["downsample2d"].shape == (2, 3, 3, 4)


@pytest.mark.parametrize("up,down,fused_modconv", [(2, 1, True), (1, 2, False)])
def test_modulated_conv2d_on_fused_backend_matches_reference(up, down, fused_modconv, fused_backend):
    # The resampling FIR of the modulated conv runs on the upfirdn2d kernel; its second-order terms
    # (in x, the weight and the styles) must match the reference's.
    f = ops.setup_filter([1, 3, 3, 1], device=DEVICE)

    def on(backend):
        def op(x, weight, styles):
            ops.set_backend(backend)
            return ops.modulated_conv2d(x, weight, styles, up=up, down=down, padding=1, resample_filter=f,
                                        fused_modconv=fused_modconv)
        return op
    inputs = [tiny(2, 3, 7, 9, seed=12), tiny(4, 3, 3, 3, seed=13), tiny(2, 3, seed=14) + 1.5]
    errors = compare(on("fused"), on("ref"), inputs)
    assert errors.within(*TOLERANCE[torch.float32]), errors


def test_fused_backend_generator_and_r1_through_discriminator():
    # End to end: G's forward, and R1 (the gradient of D's input gradient w.r.t. D's parameters),
    # on the fused kernels against the reference.
    from gan import NetworkConfig, build_discriminator, build_generator
    cfg = NetworkConfig(resolution=16, z_dim=8, w_dim=8, channel_base=64, channel_max=8, mapping_layers=2,
                        d_mapping_layers=2)
    torch.manual_seed(0)
    G = build_generator("baseline", cfg, image_channels=1, label_channels=2).to(DEVICE)
    D = build_discriminator("baseline", cfg, image_channels=1, label_channels=2).to(DEVICE)
    z, c = tiny(2, 8, seed=10), torch.zeros(2, 0, device=DEVICE)
    real = tiny(2, 3, 16, 16, seed=11)  # one D input for both paths: lrelu kinks make R1 sensitive to it
    previous = ops.get_backend()
    results = {}
    try:
        for backend in ("ref", "fused"):
            ops.set_backend(backend)
            img = G(z, c, noise_mode="const").detach()
            x = real.clone().requires_grad_()
            (input_grad,) = torch.autograd.grad(D(x, c).sum(), x, create_graph=True)
            r1_grads = torch.autograd.grad(input_grad.square().sum(), list(D.parameters()), allow_unused=True)
            results[backend] = [img, input_grad.detach()] + [g for g in r1_grads if g is not None]
    finally:
        ops.set_backend(previous)
    assert len(results["ref"]) == len(results["fused"]) > 2
    for ref, fused in zip(results["ref"], results["fused"]):
        torch.testing.assert_close(fused, ref, rtol=1e-4, atol=1e-5 * ref.abs().max().item() + 1e-9)


# ------------------------------------------------------------------------- compiled GPU code

# Compiles kernels ahead of time for an NVIDIA target (no GPU needed: triton ships ptxas), in a fresh
# process without TRITON_INTERPRET, so code the interpreter accepts but the compiler rejects fails
# here too. argv: target arch, then JSON [[kernel, {arg: pointer dtype}, {constexpr: value}], ...].
AOT_SCRIPT = """
import json, sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from gan.ops.triton_bias_act import _bias_act_kernel
from gan.ops.triton_upfirdn2d import _upfirdn2d_kernel
kernels = {"bias_act": _bias_act_kernel, "upfirdn2d": _upfirdn2d_kernel}
FLOAT_SCALARS = {"alpha", "gain", "clamp"}
target = GPUTarget("cuda", int(sys.argv[1]), 32)
for name, pointers, constexprs in json.loads(sys.argv[2]):
    kernel = kernels[name]
    signature = {arg: "constexpr" if arg in constexprs else "*" + pointers[arg] if arg in pointers
                 else "fp32" if arg in FLOAT_SCALARS else "i64" if arg == "numel" else "i32"
                 for arg in kernel.arg_names}
    compiled = triton.compile(ASTSource(fn=kernel, signature=signature, constexprs=constexprs), target=target)
    assert compiled.asm["cubin"], name
    print(name, "ok")
"""


def bias_act_variant(dtype: str, act: str, mode: int) -> list:
    pointers = {arg: dtype for arg in ("out_ptr", "x_ptr", "b_ptr", "g_ptr", "h_ptr")}
    return ["bias_act", pointers, {"ACT": ACTIVATION_CODES[act], "MODE": mode, "HAS_BIAS": True, "HAS_CLAMP": True,
                                   "BLOCK": 1024}]


def upfirdn2d_variant(dtype: str, up: tuple[int, int], filter_shape: tuple[int, int]) -> list:
    return ["upfirdn2d", {"out_ptr": dtype, "x_ptr": dtype, "k_ptr": "fp32"},
            {"UPX": up[0], "UPY": up[1], "FH": filter_shape[0], "FW": filter_shape[1], "BLOCK": 256}]


def compile_for_gpu(variants: list, tmp_path, arch: int = 90) -> None:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path / "triton-cache")
    result = subprocess.run([sys.executable, "-c", AOT_SCRIPT, str(arch), json.dumps(variants)], env=env,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count(" ok") == len(variants)


def test_kernels_compile_for_an_nvidia_gpu(tmp_path):
    compile_for_gpu([bias_act_variant("fp16", "swish", 2), bias_act_variant("bf16", "tanh", 1),
                     upfirdn2d_variant("fp16", (2, 2), (4, 4))], tmp_path)


@pytest.mark.slow
def test_every_kernel_variant_compiles_for_an_nvidia_gpu(tmp_path):
    variants = [bias_act_variant(dtype, act, mode) for dtype, act, mode in
                itertools.product(["fp32", "fp16", "bf16"], sorted(ACTIVATION_CODES), range(3))]
    variants += [upfirdn2d_variant(dtype, up, shape) for dtype, up, shape in
                 itertools.product(["fp32", "fp16", "bf16"], [(1, 1), (2, 2), (2, 1)], [(4, 4), (1, 4), (4, 1)])]
    compile_for_gpu(variants, tmp_path)


# ------------------------------------------------------------------------------------- slow sweep

@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=["fp32", "fp16", "bf16"])
def test_upfirdn2d_full_sweep(dtype):
    sizes = [(7, 9), (8, 5)]
    factors = [1, 2]
    paddings = [0, [2, 1, 1, 2], [-1, 2, 3, -2]]
    for size, upx, upy, downx, downy, padding, separable, flip in itertools.product(
            sizes, factors, factors, factors, factors, paddings, [True, False], [False, True]):
        fused, reference, inputs = upfirdn2d_case(dtype, size, (upx, upy), (downx, downy), padding, separable,
                                                  flip, gain=float(upx * upy))
        errors = compare(fused, reference, inputs)
        assert errors.within(*TOLERANCE[dtype]), (size, upx, upy, downx, downy, padding, separable, flip, errors)


@pytest.mark.slow
@pytest.mark.parametrize("act", sorted(ACTIVATION_CODES))
def test_bias_act_bf16_and_wide_inputs(act):
    for dtype, clamp in itertools.product([torch.bfloat16, torch.float32], [None, 0.3, 4.0]):
        fused, reference, inputs = bias_act_case(dtype, act, clamp)
        inputs[0] = inputs[0] * 8  # reaches the saturating tails and softplus' linear branch
        errors = compare(fused, reference, inputs)
        assert errors.within(*TOLERANCE[dtype]), (dtype, clamp, errors)
