"""The ops on their own: bias_act, upfirdn2d and modulated_conv2d, reference vs fused (Triton) and
reference vs naive.

    python -m benchmarks.bench_ops               # timing tables
    python -m benchmarks.bench_ops --parity      # fused-vs-reference parity table (op x dtype)

Timing rows (best of --repeats rounds in which the paths of a table take turns, forward and
forward + backward to every input; on a CPU shared with other work, --threads 1 avoids thread
oversubscription dominating the small ops):
  ref vs fused   on a GPU at the working size; without one the fused kernels run under
                 TRITON_INTERPRET=1 on CPU at a tiny size: that row shows they run and agree, the
                 interpreter executes every program in Python and is no speed path.
  ref vs naive   on CPU at the working size. naive bias_act walks the channels in Python, one
                 bias + activation + gain + clamp op chain per channel; naive upfirdn2d builds the
                 zero-inserted, padded image explicitly and accumulates one shifted slice per filter
                 tap; naive modulated_conv2d modulates and demodulates each sample's weights in a
                 Python loop and convolves the samples one by one (the reference runs either one
                 grouped conv over the batch or one shared conv between two scalings).
                 Ratio > 1: the reference is that much faster.

--parity runs every activation (with and without clamp) and a sweep of upfirdn2d cases (odd sizes,
up/down 1 and 2, separable and 2D filters, cropping pads, flip), differentiating each as
gan.ops.parity describes, and prints the max abs error of forward / gradient / gradient of gradient
per op and input dtype, fused against the float32 reference.
"""
from __future__ import annotations

import argparse
import importlib.util
import itertools
import math
import os
import time
from dataclasses import dataclass
from functools import partial
from typing import Callable

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is first imported (gan.ops imports it lazily)

from gan import ops  # noqa: E402
from gan.ops.activations import resolve_bias_act_args  # noqa: E402
from gan.ops.parity import ParityErrors, compare  # noqa: E402

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


# ------------------------------------------------------------------------------ naive baselines

def naive_bias_act(x: torch.Tensor, b: torch.Tensor, act: str, alpha: float, gain: float,
                   clamp: float) -> torch.Tensor:
    """bias_act along dim 1 written channel by channel: [N, C, ...] -> [N, C, ...]."""
    func = ops.ACTIVATIONS[act].func
    channels = []
    for c in range(x.shape[1]):
        y = func(x[:, c] + b[c], alpha) * gain
        channels.append(y.clamp(-clamp, clamp) if clamp >= 0 else y)
    return torch.stack(channels, dim=1)


def naive_upfirdn2d(x: torch.Tensor, f: torch.Tensor, up: int, down: int, padding: tuple[int, int, int, int],
                    gain: float) -> torch.Tensor:
    """upfirdn2d with a [fh, fw] filter the textbook way: zero-insert, pad, one shifted slice per tap."""
    N, C, H, W = x.shape
    padx0, padx1, pady0, pady1 = padding
    upsampled = x.new_zeros([N, C, H * up, W * up])
    upsampled[:, :, ::up, ::up] = x
    padded = x.new_zeros([N, C, H * up + pady0 + pady1, W * up + padx0 + padx1])
    padded[:, :, pady0: pady0 + H * up, padx0: padx0 + W * up] = upsampled
    taps = f.flip([0, 1]) * gain  # convolution = correlation with the flipped taps
    fh, fw = taps.shape
    out_h, out_w = padded.shape[2] - fh + 1, padded.shape[3] - fw + 1
    out = x.new_zeros([N, C, out_h, out_w])
    for ty in range(fh):
        for tx in range(fw):
            out += taps[ty, tx] * padded[:, :, ty: ty + out_h, tx: tx + out_w]
    return out[:, :, ::down, ::down]


# ----------------------------------------------------------------------------------- timing

@dataclass(frozen=True)
class Timing:
    """Best seconds of one call, forward only and forward + backward, and the max abs diff to ref."""

    forward_s: float
    train_s: float
    max_abs_diff: float


def best_seconds(calls: dict[str, Callable[[], object]], repeats: int, sync: bool) -> dict[str, float]:
    """Best wall seconds of each call. The calls take turns in every round, so that other work on a
    shared CPU and the allocator's state (big tensors page-fault afresh when the heap was trimmed)
    weigh on all of them alike."""
    for fn in calls.values():
        fn()  # warm-up: compilation, allocations
    best = {name: math.inf for name in calls}
    for _ in range(repeats):
        for name, fn in calls.items():
            if sync:
                torch.cuda.synchronize()
            start = time.perf_counter()
            fn()
            if sync:
                torch.cuda.synchronize()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def time_paths(paths: dict[str, Callable[..., torch.Tensor]], inputs: list[torch.Tensor],
               repeats: int) -> dict[str, Timing]:
    """Forward and forward + backward (to every input) of each path, and its max abs difference to the
    first path's output."""
    sync = inputs[0].device.type == "cuda"
    grad_inputs = [t.detach().clone().requires_grad_(True) for t in inputs]

    def train_step(op: Callable[..., torch.Tensor]) -> Callable[[], object]:
        return lambda: torch.autograd.grad(op(*grad_inputs).square().sum(), grad_inputs)

    def forward(op: Callable[..., torch.Tensor]) -> Callable[[], object]:
        return lambda: op(*inputs)
    with torch.no_grad():
        outputs = {name: op(*inputs).float() for name, op in paths.items()}
        forward_s = best_seconds({name: forward(op) for name, op in paths.items()}, repeats, sync)
    train_s = best_seconds({name: train_step(op) for name, op in paths.items()}, repeats, sync)
    reference = next(iter(outputs.values()))
    return {name: Timing(forward_s[name], train_s[name], float((out - reference).abs().max()))
            for name, out in outputs.items()}


def print_rows(title: str, size: str, timings: dict[str, Timing]) -> None:
    """One table: per path, its times and how many times slower than the first path it is."""
    baseline, base = next(iter(timings.items()))
    print(title)
    ratio = max(12, len("f+b / " + baseline))  # column width of the ratios
    print(f"  {'path':<22} {'size':<18} {'fwd ms':>9} {'fwd+bwd ms':>11} {'fwd / ' + baseline:>{ratio}} "
          f"{'f+b / ' + baseline:>{ratio}} {'max|diff|':>10}")
    for name, t in timings.items():
        print(f"  {name:<22} {size:<18} {t.forward_s * 1e3:>9.3f} {t.train_s * 1e3:>11.3f} "
              f"{t.forward_s / base.forward_s:>{ratio - 1}.2f}x {t.train_s / base.train_s:>{ratio - 1}.2f}x "
              f"{t.max_abs_diff:>10.2e}")


def fused_unavailable() -> str | None:
    """Why the fused path cannot run here, or None when it can."""
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed"
    if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
        return "no GPU and TRITON_INTERPRET is not 1"
    return None


def bench_ref_vs_fused(repeats: int) -> None:
    reason = fused_unavailable()
    if reason is not None:
        print(f"ref vs fused: skipped ({reason})")
        return
    on_gpu = torch.cuda.is_available()
    device = "cuda" if on_gpu else "cpu"
    shape = [8, 256, 64, 64] if on_gpu else [2, 8, 16, 16]
    where = "cuda" if on_gpu else "cpu, fused = Triton interpreter (TRITON_INTERPRET=1, correctness only)"
    x = torch.randn(shape, device=device)
    b = torch.randn(shape[1], device=device)
    f = ops.setup_filter([1, 3, 3, 1], device=device)
    size = "x".join(map(str, shape))
    cases = {
        "bias_act lrelu": lambda impl: lambda t: ops.bias_act(t, b, act="lrelu", clamp=256, impl=impl),
        "upsample2d [1,3,3,1]": lambda impl: lambda t: ops.upsample2d(t, f, impl=impl),
        "downsample2d [1,3,3,1]": lambda impl: lambda t: ops.downsample2d(t, f, impl=impl),
    }
    for name, make in cases.items():
        timings = time_paths({impl: make(impl) for impl in ("ref", "fused")}, [x], repeats)
        print_rows(f"{name}: ref vs fused ({where})", size, timings)


def naive_modulated_conv2d(x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor) -> torch.Tensor:
    """Modulated, demodulated 3x3 conv one sample at a time: [N, I, H, W] -> [N, O, H, W]."""
    outputs = []
    for n in range(x.shape[0]):
        w = weight * styles[n].reshape(1, -1, 1, 1)                          # modulate: [O, I, 3, 3]
        w = w / (w.square().sum(dim=[1, 2, 3], keepdim=True) + 1e-8).sqrt()  # demodulate
        outputs.append(torch.nn.functional.conv2d(x[n:n + 1], w, padding=1))
    return torch.cat(outputs)


def bench_ref_vs_naive(repeats: int) -> None:
    shape = [4, 64, 64, 64]
    x = torch.randn(shape)
    b = torch.randn(shape[1])
    size = "x".join(map(str, shape))
    _, alpha, gain, clamp = resolve_bias_act_args("lrelu", None, None, 256)
    f2d = ops.setup_filter([1, 3, 3, 1])  # 4 taps: [4, 4] (not separable)
    up_pad = (2, 1, 2, 1)
    down_pad = (1, 1, 1, 1)
    cases = {
        "bias_act lrelu": (lambda t: ops.bias_act_ref(t, b, 1, "lrelu", alpha, gain, clamp),
                           lambda t: naive_bias_act(t, b, "lrelu", alpha, gain, clamp)),
        "upfirdn2d up 2": (lambda t: ops.upfirdn2d_ref(t, f2d, 2, 1, up_pad, False, 4.0),
                           lambda t: naive_upfirdn2d(t, f2d, 2, 1, up_pad, 4.0)),
        "upfirdn2d down 2": (lambda t: ops.upfirdn2d_ref(t, f2d, 1, 2, down_pad, False, 1.0),
                             lambda t: naive_upfirdn2d(t, f2d, 1, 2, down_pad, 1.0)),
    }
    for name, (ref_op, naive_op) in cases.items():
        print_rows(f"{name}: ref vs naive (cpu)", size, time_paths({"ref": ref_op, "naive": naive_op}, [x], repeats))

    # Modulated conv of a 64-channel 3x3 layer with per-sample styles, in its two reference forms.
    batch, channels, res = 8, 64, 32
    x = torch.randn(batch, channels, res, res)
    weight = torch.randn(channels, channels, 3, 3)
    styles = torch.randn(batch, channels)
    paths = {
        "ref grouped": partial(ops.modulated_conv2d, padding=1, fused_modconv=True),
        "ref scale/conv/scale": partial(ops.modulated_conv2d, padding=1, fused_modconv=False),
        "naive per-sample": naive_modulated_conv2d,
    }
    timings = time_paths(paths, [x, weight, styles], repeats)
    print_rows("modulated_conv2d 3x3, demodulated: ref vs naive (cpu)", f"{batch}x{channels}x{res}x{res}", timings)


# ----------------------------------------------------------------------------------- parity

def bias_act_parity_cases(dtype: torch.dtype, device: str):
    """(fused, reference, inputs) for every activation, without and with clamp, bias on dim 1."""
    generator = torch.Generator().manual_seed(0)
    x = (torch.randn([2, 3, 7, 9], generator=generator) * 2).to(device=device, dtype=dtype)
    b = torch.randn([3], generator=generator).to(device=device, dtype=dtype)
    for act, clamp in itertools.product(sorted(ops.ACTIVATIONS), [None, 0.6]):
        yield (partial(ops.bias_act, dim=1, act=act, clamp=clamp, impl="fused"),
               partial(ops.bias_act, dim=1, act=act, clamp=clamp, impl="ref"), [x, b])


def upfirdn2d_parity_cases(dtype: torch.dtype, device: str):
    """(fused, reference, inputs) over odd sizes, up/down 1 and 2 (also per axis), crops, both filter
    kinds and flip_filter."""
    generator = torch.Generator().manual_seed(0)
    filters = {"separable": ops.setup_filter([1, 3, 2.5, 0.5], separable=True, device=device),
               "2d": ops.setup_filter([[1, 2, 1.5], [0.5, 3, 1], [2, 0.5, 1]], device=device)}
    factors = [(1, 1), (2, 1), (1, 2), (2, 2), ((2, 1), (1, 2))]
    paddings = [(0, 0, 0, 0), (2, 1, 1, 2), (-1, 2, 3, -2)]
    for size, (up, down), padding, kind, flip in itertools.product(
            [(7, 9), (8, 5)], factors, paddings, filters, [False, True]):
        x = torch.randn([2, 3, *size], generator=generator).to(device=device, dtype=dtype)
        upx, upy = ops.parse_scaling(up)
        settings = dict(f=filters[kind], up=up, down=down, padding=padding, flip_filter=flip, gain=float(upx * upy))
        yield partial(ops.upfirdn2d, **settings, impl="fused"), partial(ops.upfirdn2d, **settings, impl="ref"), [x]


def worst(errors: list[ParityErrors]) -> dict[str, float]:
    """The largest error of each kind over the cases, absolute and relative to the reference's scale."""
    return {
        "forward": max(e.forward for e in errors), "grad": max(e.grad for e in errors),
        "grad2": max(e.grad2 for e in errors),
        "relative": max(max(e.forward / e.forward_scale, e.grad / e.grad_scale, e.grad2 / max(e.grad2_scale, 1e-30))
                        for e in errors),
    }


def parity_table(dtypes: list[str]) -> None:
    reason = fused_unavailable()
    if reason is not None:
        print(f"parity: skipped ({reason})")
        return
    device = "cuda" if torch.cuda.is_available() else "cpu"
    where = "cuda" if device == "cuda" else "cpu, Triton interpreter (TRITON_INTERPRET=1)"
    print(f"Fused vs reference parity ({where}): max abs error over all cases of the output, the gradients\n"
          "and the gradients of gradients; max rel = the largest error / max |reference| of its quantity.\n"
          "Half-precision inputs are compared with the float32 reference on the same values.")
    print(f"  {'op':<10} {'dtype':<6} {'cases':>5} {'forward':>10} {'grad':>10} {'grad-of-grad':>13} {'max rel':>9}")
    for op_name, make_cases in (("bias_act", bias_act_parity_cases), ("upfirdn2d", upfirdn2d_parity_cases)):
        for dtype_name in dtypes:
            errors = [compare(fused, reference, inputs)
                      for fused, reference, inputs in make_cases(DTYPES[dtype_name], device)]
            w = worst(errors)
            print(f"  {op_name:<10} {dtype_name:<6} {len(errors):>5} {w['forward']:>10.2e} {w['grad']:>10.2e} "
                  f"{w['grad2']:>13.2e} {w['relative']:>9.2e}")


def main(argv: list[str] | None = None) -> None:
    """Print ref-vs-fused and ref-vs-naive timing tables, or with --parity the parity table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parity", action="store_true", help="print the fused-vs-reference parity table instead")
    parser.add_argument("--dtypes", default="fp32,fp16,bf16", help="parity dtypes (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=20,
                        help="timed calls per row, best kept: more on a busy CPU (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's setting)")
    args = parser.parse_args(argv)
    dtypes = args.dtypes.split(",")
    unknown = sorted(set(dtypes) - set(DTYPES))
    if unknown:
        parser.error(f"unknown dtypes {unknown}; choose from {sorted(DTYPES)}")
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(args.threads or previous_threads)
    try:
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
        if args.parity:
            parity_table(dtypes)
        else:
            bench_ref_vs_fused(args.repeats)
            bench_ref_vs_naive(args.repeats)
    finally:
        torch.set_num_threads(previous_threads)  # run_all runs the other benchmarks in this process


if __name__ == "__main__":
    main()
