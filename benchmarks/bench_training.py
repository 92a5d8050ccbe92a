"""The GAN training iteration: what it costs and what the levers buy, in one run.

    python -m benchmarks.bench_training [--iterations 8] [--threads 1]

Three configurations on the phantom slices, batch 8: tiny 32² (the tests' and the demo's preset), and
small 64² and 128² (the 'auto' network narrowed to channel_max 128, as a CPU gets it). For each, the four
combinations of two levers:
  allocator  glibc's default malloc, or `training.runtime.keep_freed_memory` (big freed buffers kept in
             the process); process-wide, so each allocator runs in its own subprocess;
  precision  fp32, or bf16 autocast of every forward pass (`--precision bf16`); the two alternate
             iteration by iteration inside one process.
Columns: CPU milliseconds per iteration (median after one warm-up; CPU time, so other work on a shared
machine counts less), speed relative to fp32 with the default malloc, GFLOP/s achieved (FLOPs from the
networks' forward passes, `training.cost`) and their share of this machine's 3x3-convolution rate
measured in the same run, and the process's peak resident memory.

--reference PATH (your own checkout of NVIDIA's stylegan2-ada-pytorch; never vendored here) adds a row
per configuration: their G and D of the same sizes (the baseline variant: M + L channels in and out,
no conditioning) through their StyleGAN2Loss and the same four phases, reference ops on a CPU, fp32,
default malloc, in a subprocess of its own; "ours" is our baseline variant in the same process.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path

CONFIGS = {"tiny 32²": ("tiny", 32, None), "small 64²": ("auto", 64, 128), "small 128²": ("auto", 128, 128)}
PRECISIONS = ("fp32", "bf16")


def build_trainer(preset: str, resolution: int, channel_max: int | None, run_dir: Path, variant: str = "conditional"):
    """A GanTrainer of ``variant`` on the default phantoms, batch 8, no metrics."""
    from training.config import load_preset, resolve_config
    from training.loop import GanTrainer
    from training.training_data import open_training_data

    cfg = load_preset(preset)
    cfg.resolution, cfg.data, cfg.metrics, cfg.batch, cfg.batch_gpu = resolution, "phantoms", [], 8, 8
    cfg.variant = variant
    if channel_max is not None:
        cfg.network.channel_max, cfg.network.channel_base, cfg.network.num_fp16_res = channel_max, 32 * channel_max, 0
    cfg = resolve_config(cfg)
    return GanTrainer(cfg, run_dir, open_training_data(cfg), tensorboard=False)


def reference_worker(path: str, config: str, iterations: int, threads: int) -> dict:
    """Our baseline variant and NVIDIA's G/D of the same sizes, iterations alternating; seconds each."""
    import importlib.util

    import torch

    sys.path.insert(0, path)  # their torch_utils and dnnlib; their modules load under other names
    # dnnlib.util imports requests for downloads only; this environment need not have it
    sys.modules.setdefault("requests", types.ModuleType("requests"))
    modules = {}
    for name in ("networks", "loss"):
        spec = importlib.util.spec_from_file_location(f"nvidia_{name}", Path(path) / "training" / f"{name}.py")
        modules[name] = sys.modules[spec.name] = importlib.util.module_from_spec(spec)  # their @persistent_class asks
        spec.loader.exec_module(modules[name])
    torch.set_num_threads(threads)
    preset, resolution, channel_max = CONFIGS[config]
    ours = build_trainer(preset, resolution, channel_max, Path(f"/tmp/bench_training_{os.getpid()}"), "baseline")
    cfg, channels = ours.cfg, ours.data.image_channels + ours.data.label_channels
    net = cfg.network
    G = modules["networks"].Generator(z_dim=net.z_dim, c_dim=0, w_dim=net.w_dim, img_resolution=resolution,
                                      img_channels=channels, mapping_kwargs={"num_layers": net.mapping_layers},
                                      synthesis_kwargs={"channel_base": net.channel_base, "channel_max": net.channel_max,
                                                        "num_fp16_res": 0, "conv_clamp": net.conv_clamp})
    D = modules["networks"].Discriminator(c_dim=0, img_resolution=resolution, img_channels=channels,
                                          channel_base=net.channel_base, channel_max=net.channel_max, num_fp16_res=0,
                                          conv_clamp=net.conv_clamp,
                                          epilogue_kwargs={"mbstd_group_size": net.mbstd_group_size})
    G.train().requires_grad_(False)
    D.train().requires_grad_(False)
    loss = modules["loss"].StyleGAN2Loss(torch.device("cpu"), G.mapping, G.synthesis, D, r1_gamma=cfg.loss.r1_gamma,
                                         pl_weight=cfg.loss.pl_weight)
    opt = {"G": torch.optim.Adam(G.parameters(), lr=cfg.optim.g_lr, betas=(0.0, 0.99)),
           "D": torch.optim.Adam(D.parameters(), lr=cfg.optim.d_lr, betas=(0.0, 0.99))}
    phases = [("Gmain", G, "G", 1), ("Greg", G, "G", cfg.loss.pl_interval), ("Dmain", D, "D", 1),
              ("Dreg", D, "D", cfg.loss.r1_interval)]
    real = ours.data.load(torch.arange(cfg.batch), torch.device("cpu"))
    real_img, real_c = torch.cat([real[0], real[1]], dim=1), torch.zeros(cfg.batch, 0)

    def nvidia_step(index: int) -> None:
        for name, module, key, interval in phases:
            if index % interval:
                continue
            opt[key].zero_grad(set_to_none=True)
            module.requires_grad_(True)
            loss.accumulate_gradients(phase=name, real_img=real_img, real_c=real_c,
                                      gen_z=torch.randn(cfg.batch, net.z_dim), gen_c=real_c, sync=True, gain=interval)
            module.requires_grad_(False)
            opt[key].step()

    seconds: dict[str, list[float]] = {"ours": [], "NVIDIA": []}
    for i in range(iterations + 1):
        for name in (("ours", "NVIDIA") if i % 2 else ("NVIDIA", "ours")):
            start = time.process_time()
            ours.train_step() if name == "ours" else nvidia_step(i)
            if i:
                seconds[name].append(time.process_time() - start)
    return {name: statistics.median(values) for name, values in seconds.items()}


def worker(config: str, allocator: bool, iterations: int, threads: int) -> dict:
    """Time `iterations` training steps per precision in this process; a dict of the results."""
    import torch

    from training.cost import TRAINING_FLOPS_PER_FORWARD, forward_counts, measure_conv_gflops
    from training.runtime import keep_freed_memory

    torch.set_num_threads(threads)
    if allocator:
        keep_freed_memory()
    preset, resolution, channel_max = CONFIGS[config]
    trainer = build_trainer(preset, resolution, channel_max, Path(f"/tmp/bench_training_{os.getpid()}"))
    dtypes = {"fp32": None, "bf16": torch.bfloat16}
    seconds: dict[str, list[float]] = {p: [] for p in PRECISIONS}
    for i in range(iterations + 1):
        for precision in (PRECISIONS if i % 2 else PRECISIONS[::-1]):
            trainer.loss.autocast_dtype = dtypes[precision]
            start = time.process_time()
            trainer.train_step()
            if i:   # the first round warms up both paths
                seconds[precision].append(time.process_time() - start)
    counts = forward_counts(trainer.cfg.variant, trainer.cfg.network, trainer.data.image_channels,
                            trainer.data.label_channels)
    flops = sum(TRAINING_FLOPS_PER_FORWARD[k] * counts[k][1] for k in counts) * trainer.cfg.batch
    return {"seconds": {p: statistics.median(s) for p, s in seconds.items()}, "flops": flops,
            "peak_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
            "conv_gflops": measure_conv_gflops(torch.device("cpu"))}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=8, help="timed iterations per path")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--reference", metavar="PATH", default=None,
                        help="a checkout of NVIDIA's stylegan2-ada-pytorch to compare with")
    parser.add_argument("--worker", nargs=2, metavar=("CONFIG", "ALLOCATOR"), help=argparse.SUPPRESS)
    args = parser.parse_args([] if argv is None and __name__ != "__main__" else argv)
    if args.worker and args.reference:
        print(json.dumps(reference_worker(args.reference, args.worker[0], args.iterations, args.threads)))
        return
    if args.worker:
        print(json.dumps(worker(args.worker[0], args.worker[1] == "on", args.iterations, args.threads)))
        return
    print(f"GAN training iteration, batch 8, {args.threads} thread(s), CPU time per iteration (median of "
          f"{args.iterations})")
    print(f"{'config':<10} {'allocator':<9} {'precision':<9} {'ms/iter':>8} {'speed-up':>8} {'GFLOP/s':>8} "
          f"{'of peak':>7} {'peak RSS':>8}")
    for config in CONFIGS:
        results = {}
        for allocator in ("default", "kept"):
            command = [sys.executable, "-m", "benchmarks.bench_training", "--iterations", str(args.iterations),
                       "--threads", str(args.threads), "--worker", config, "on" if allocator == "kept" else "off"]
            results[allocator] = json.loads(subprocess.run(command, check=True, capture_output=True,
                                                           text=True).stdout.splitlines()[-1])
        reference = results["default"]["seconds"]["fp32"]
        for allocator, result in results.items():
            for precision in PRECISIONS:
                seconds = result["seconds"][precision]
                gflops = result["flops"] / seconds / 1e9
                print(f"{config:<10} {allocator:<9} {precision:<9} {1000 * seconds:>8.0f} {reference / seconds:>7.2f}x "
                      f"{gflops:>8.1f} {100 * gflops / result['conv_gflops']:>6.0f}% {result['peak_gb']:>6.2f} GB")
        print(f"{'':<10} 3x3-conv rate measured: {results['kept']['conv_gflops']:.0f} GFLOP/s; "
              f"{results['kept']['flops'] / 8e9:.2f} GFLOP per training image")
        if args.reference:
            command = [sys.executable, "-m", "benchmarks.bench_training", "--iterations", str(args.iterations),
                       "--threads", str(args.threads), "--reference", args.reference, "--worker", config, "off"]
            versus = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
            print(f"{'':<10} baseline variant, fp32, default malloc: ours {1000 * versus['ours']:.0f} ms, NVIDIA "
                  f"{1000 * versus['NVIDIA']:.0f} ms per iteration: ours {versus['NVIDIA'] / versus['ours']:.2f}x faster")


if __name__ == "__main__":
    main()
