"""Generator forward throughput: our reference ops path against a naive implementation, and the
fused (Triton) path against the reference where it can run.

    python -m benchmarks.bench_generator                       # 64², the CPU configuration
    python -m benchmarks.bench_generator --resolution 128 --batch 8 --repeats 2

Rows (untrained baseline G, 5 output channels, fp32, eval, const noise):
  ref, grouped modconv    gan.ops 'ref' backend; modulated conv as one grouped convolution (the
                          reference's choice for GPU inference)
  ref, scale/conv/scale   gan.ops 'ref' backend; the non-fused modulated conv form (training, and
                          what our synthesis chooses on CPU for batches > 1)
  naive                   the same network written the textbook way: a Python loop over samples,
                          each modulating/demodulating its own weights; upsampling convs as zero
                          insertion + a dense 3x3 conv of the sparse image + FIR filter (the ref
                          path uses a strided transposed conv instead, a quarter of the work);
                          bias/act/clamp as separate ops
  fused                   gan.ops 'fused' backend (Triton); on a GPU at the same size, otherwise under
                          TRITON_INTERPRET=1 on CPU at a tiny size (interpreted kernels are slow:
                          this row shows it runs and agrees, not its speed)
Every row also reports the largest absolute difference of its output from the 'ref' row.
"""
from __future__ import annotations

import argparse
import importlib.util
import math
import os
import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from gan import NetworkConfig, build_generator, ops
from gan.layers import LRELU_GAIN, ModulatedConvLayer, ToOutputLayer
from gan.variants import Generator

OUT_CHANNELS = 5      # e.g. 3 modalities + 2 labels (baseline variant)


@dataclass
class Row:
    path: str
    device: str
    resolution: int
    batch: int
    img_per_s: float
    max_abs_diff: float


# ---------------------------------------------------------------------------------------------
# the naive generator: same parameters, textbook loops


def naive_fir_upsample(x: torch.Tensor, f: torch.Tensor, pad: tuple[int, int]) -> torch.Tensor:
    """Zero insertion (x2), zero padding (pad before, pad after), dense 2D FIR with gain 4."""
    N, C, H, W = x.shape
    up = torch.zeros(N, C, 2 * H, 2 * W, dtype=x.dtype, device=x.device)
    up[:, :, ::2, ::2] = x
    up = F.pad(up, [pad[0], pad[1], pad[0], pad[1]])
    kernel = (f.flip([0, 1]) * 4).to(x.dtype).expand(C, 1, *f.shape)
    return F.conv2d(up, kernel, groups=C)


def naive_bias_act(x: torch.Tensor, b: torch.Tensor, lrelu: bool, clamp: float | None) -> torch.Tensor:
    x = x + b.reshape(1, -1, 1, 1)
    if lrelu:
        x = F.leaky_relu(x, 0.2) * LRELU_GAIN
    return x if clamp is None else x.clamp(-clamp, clamp)


def naive_modulated_layer(layer: ModulatedConvLayer, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """One synthesis layer, one sample at a time (const noise)."""
    styles = layer.affine(w)                                          # [N, in]
    outputs = []
    for i in range(x.shape[0]):
        weight = layer.weight * styles[i].reshape(1, -1, 1, 1)        # modulate
        weight = weight / (weight.square().sum(dim=[1, 2, 3], keepdim=True) + 1e-8).sqrt()  # demodulate
        xi = x[i:i + 1]
        if layer.up == 2:
            # Zero insertion to 2H-1, a dense 3x3 convolution of the sparse image (full padding:
            # 2H+1), then the FIR filter with gain 4 back to 2H.
            H, W = xi.shape[2:]
            sparse = torch.zeros(1, xi.shape[1], 2 * H - 1, 2 * W - 1, dtype=xi.dtype)
            sparse[:, :, ::2, ::2] = xi
            yi = F.conv2d(sparse, weight.flip([2, 3]), padding=2)
            yi = F.conv2d(F.pad(yi, [1, 1, 1, 1]),
                          (layer.resample_filter * 4).expand(yi.shape[1], 1, 4, 4), groups=yi.shape[1])
        else:
            yi = F.conv2d(xi, weight, padding=layer.padding)
        outputs.append(yi)
    y = torch.cat(outputs) + layer.noise_const * layer.noise_strength
    return naive_bias_act(y, layer.bias, lrelu=True, clamp=layer.conv_clamp)


def naive_to_output(layer: ToOutputLayer, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    styles = layer.affine(w) * layer.weight_gain
    y = torch.cat([F.conv2d(x[i:i + 1], layer.weight * styles[i].reshape(1, -1, 1, 1))
                   for i in range(x.shape[0])])
    return naive_bias_act(y, layer.bias, lrelu=False, clamp=layer.conv_clamp)


def naive_generator(G: Generator, z: torch.Tensor) -> torch.Tensor:
    """G(z, noise_mode='const') for an unconditioned, non-conditional generator, naively."""
    ws = G.mapping(z, None)
    x = img = None
    for block, block_ws in zip(G.synthesis.blocks, G.synthesis.split_ws(ws)):
        if block.conv0 is None:
            x = block.const.unsqueeze(0).repeat(z.shape[0], 1, 1, 1)
        else:
            x = naive_modulated_layer(block.conv0, x, block_ws[:, 0])
        x = naive_modulated_layer(block.conv1, x, block_ws[:, block.num_conv - 1])
        y = naive_to_output(block.to_output, x, block_ws[:, block.num_conv])
        img = y if img is None else naive_fir_upsample(img, block.resample_filter, (2, 1)) + y
    return img


# ---------------------------------------------------------------------------------------------
# timing


def measure(paths: dict[str, Callable[[], torch.Tensor]], reference: str, batch: int, repeats: int,
            device: str, resolution: int) -> list[Row]:
    """One row per path: best-of-``repeats`` img/s and max |output - reference output|.

    The paths take turns within every round, so load changes on a shared machine hit all alike.
    """
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    outputs = {name: forward() for name, forward in paths.items()}        # also the warm-up call
    best = dict.fromkeys(paths, math.inf)
    for _ in range(repeats):
        for name, forward in paths.items():
            start = time.perf_counter()
            forward()
            sync()
            best[name] = min(best[name], time.perf_counter() - start)
    return [Row(name, device, resolution, batch, batch / best[name],
                float((outputs[name] - outputs[reference]).abs().max())) for name in paths]


def make_generator(args: argparse.Namespace, resolution: int, channel_base: int,
                   channel_max: int) -> Generator:
    """An untrained baseline G (fp32) with non-zero noise strengths, in eval mode."""
    cfg = NetworkConfig(resolution=resolution, z_dim=args.z_dim, w_dim=args.z_dim, mapping_layers=2,
                        channel_base=channel_base, channel_max=channel_max, num_fp16_res=0)
    torch.manual_seed(0)
    G = build_generator("baseline", cfg, image_channels=OUT_CHANNELS - 2, label_channels=2)
    with torch.no_grad():                                             # non-zero noise: exercised
        for name, p in G.named_parameters():
            if name.endswith("noise_strength"):
                p.fill_(0.1)
    return G.eval().requires_grad_(False)


def run_path(G: Generator, z: torch.Tensor, backend: str, fused_modconv: bool | None) -> torch.Tensor:
    """G's forward (const noise) on one ops backend and modulated-conv form (None: G's choice)."""
    ops.set_backend(backend)
    return G.synthesis(G.mapping(z, None), noise_mode="const", fused_modconv=fused_modconv)


def run_naive(G: Generator, z: torch.Tensor) -> torch.Tensor:
    """The naive generator (its mapping network runs on the 'ref' ops)."""
    ops.set_backend("ref")
    return naive_generator(G, z)


def cpu_rows(args: argparse.Namespace) -> list[Row]:
    """ref (both modulated-conv forms) vs naive at the benchmark size on CPU."""
    G = make_generator(args, args.resolution, args.channel_base, args.channel_max)
    z = torch.randn(args.batch, args.z_dim)
    paths = {
        "ref, grouped modconv": lambda: run_path(G, z, "ref", fused_modconv=True),
        "ref, scale/conv/scale": lambda: run_path(G, z, "ref", fused_modconv=False),
        "naive": lambda: run_naive(G, z),
    }
    with torch.no_grad():
        return measure(paths, "ref, grouped modconv", args.batch, args.repeats, "cpu", args.resolution)


def fused_rows(args: argparse.Namespace) -> tuple[list[Row], str]:
    """Fused vs ref on CUDA at the benchmark size, else under the Triton interpreter at 16² tiny."""
    if importlib.util.find_spec("triton") is None:
        return [], "fused: skipped (triton is not installed)"
    on_gpu = torch.cuda.is_available()
    if not on_gpu:
        os.environ.setdefault("TRITON_INTERPRET", "1")    # must precede the first triton import
        if os.environ["TRITON_INTERPRET"] != "1":
            return [], "fused: skipped (no GPU and TRITON_INTERPRET is not 1)"
    if on_gpu:
        G = make_generator(args, args.resolution, args.channel_base, args.channel_max).to("cuda")
        res, batch, repeats, device, fused_name = args.resolution, args.batch, args.repeats, "cuda", "fused"
    else:
        G = make_generator(args, 16, 128, 16)
        res, batch, repeats, device, fused_name = 16, 2, 3, "cpu", "fused (interpreter)"
    z = torch.randn(batch, args.z_dim, device=device)
    paths = {"ref": lambda: run_path(G, z, "ref", fused_modconv=None),
             fused_name: lambda: run_path(G, z, "fused", fused_modconv=None)}
    with torch.no_grad():
        rows = measure(paths, "ref", batch, repeats, device, res)
    ops.set_backend("auto")
    return rows, ""


def print_table(title: str, rows: list[Row], baseline: str) -> None:
    base = next(r.img_per_s for r in rows if r.path == baseline)
    print(title)
    print(f"  {'path':<24} {'device':<6} {'res':>5} {'batch':>5} {'img/s':>10} "
          f"{'vs ' + baseline:>14} {'max|diff|':>10}")
    for r in rows:
        print(f"  {r.path:<24} {r.device:<6} {r.resolution:>5} {r.batch:>5} {r.img_per_s:>10.2f} "
              f"{r.img_per_s / base:>13.3g}x {r.max_abs_diff:>10.2e}")


def main(argv: list[str] | None = None) -> None:
    """Print G forward img/s: ref (both modconv forms) vs naive on CPU, and fused vs ref."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--resolution", type=int, default=64, help="output size (default: %(default)s)")
    parser.add_argument("--batch", type=int, default=8, help="images per forward (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="timed rounds, best kept (default: %(default)s)")
    parser.add_argument("--z-dim", type=int, default=256, help="z = w dimension (default: %(default)s)")
    parser.add_argument("--channel-base", type=int, default=16384, help="(default: %(default)s)")
    parser.add_argument("--channel-max", type=int, default=256, help="(default: %(default)s)")
    parser.add_argument("--no-fused", action="store_true", help="skip the fused-vs-ref rows")
    args = parser.parse_args(argv)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; untrained baseline G, "
          f"{OUT_CHANNELS} channels, z=w={args.z_dim}, channel_base {args.channel_base}, "
          f"channel_max {args.channel_max}, 2 mapping layers, fp32, const noise")
    print_table("G forward, reference ops vs naive:", cpu_rows(args), baseline="naive")
    if not args.no_fused:
        rows, note = fused_rows(args)
        if rows:
            print_table("G forward, fused vs reference ops:", rows, baseline="ref")
        else:
            print(note)


if __name__ == "__main__":
    main()
