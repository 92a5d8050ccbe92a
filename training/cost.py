"""What a GAN training configuration costs on this machine, known before the first step.

The networks are built on the ``meta`` device (no memory, no arithmetic) and run once under
torch's FLOP counter; one timed 3x3 convolution measures what this machine does per second.
One training image costs, over StyleGAN2's phases (lazy regularisation included):

    G main   G forward + backward (3 F_G), D forward + backward to its input (2 F_D)
    D main   G forward (F_G), D forward + backward on the fake and on the real image (6 F_D)
    G reg    every 4th step on half the batch: G forward + double backward (~5 F_G / 8)
    D reg    every 16th step: D forward + double backward on the real image (~5 F_D / 16)

so ~4.6 F_G + 8.3 F_D per image.  The estimate divides that by the measured convolution rate
times an efficiency measured on this project's own runs (the rest of a step -- bias, activation,
FIR filters, Adam -- does not run at the convolution peak).  Memory: the weights of G, G_ema, D
with their gradients and Adam moments, plus the activations one micro-batch keeps for backward.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

TRAINING_FLOPS_PER_FORWARD = {"G": 4.6, "D": 8.3}
# Share of the convolution peak a whole training step reaches (measured on a 2-core CPU: tiny 32^2
# and 'auto' at 64^2 and 128^2 with channel_max 64-128, the estimate within ~25 % of the measured
# sec/kimg; memory within ~15 % there, above it for 512-channel networks).
STEP_EFFICIENCY = {"cpu": 0.4, "cuda": 0.4}
# Per-image time that does not scale with FLOPs (data loading, many small kernels): what makes tiny
# networks slower than their FLOPs say (measured: tiny 32^2 ~13 s/kimg for 0.5 GFLOP per image).
OVERHEAD_S_PER_IMAGE = {"cpu": 0.005, "cuda": 0.0005}
# Bytes kept for backward per element an operator returns in one forward (the count includes views
# and transients; measured: peak RSS above the idle process / count ~ 3 B at 64^2 and 128^2).
ACTIVATION_BYTES = 3
# CPU 'auto' aims at a network that trains at most this many seconds per kimg (100 kimg overnight).
CPU_AUTO_S_PER_KIMG = 300.0
CPU_AUTO_CHANNEL_MAX = (512, 256, 128, 64, 32)
CPU_AUTO_MICRO_BATCH = 8   # micro-batches short enough that Ctrl-C is honoured within seconds


@dataclass(frozen=True)
class TrainingCost:
    """The estimated cost of training one configuration on one machine."""

    resolution: int
    g_params: int
    d_params: int
    gflop_per_image: float      # one training image over all phases
    machine_gflops: float       # measured 3x3-convolution rate of this process
    s_per_kimg: float
    memory_gb: float

    def describe(self) -> str:
        return (f"{self.resolution}x{self.resolution}, G {self.g_params / 1e6:.3g} M and D "
                f"{self.d_params / 1e6:.3g} M parameters, {self.gflop_per_image:.1f} GFLOP per training image: "
                f"estimated ~{self.s_per_kimg:,.0f} s/kimg and ~{self.memory_gb:.1f} GB "
                f"(this machine: {self.machine_gflops:.0f} GFLOP/s in a 3x3 convolution)")


def measure_conv_gflops(device: torch.device, repeats: int = 3) -> float:
    """GFLOP/s of a 3x3 convolution (batch 8, 128 -> 128 channels, 32x32) on ``device``; best of
    ``repeats`` after one warm-up."""
    x = torch.randn(8, 128, 32, 32, device=device)
    w = torch.randn(128, 128, 3, 3, device=device)
    flops = 2 * 8 * 128 * 128 * 9 * 32 * 32
    best = float("inf")
    for i in range(repeats + 1):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        torch.nn.functional.conv2d(x, w, padding=1)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i:
            best = min(best, time.perf_counter() - start)
    return flops / best / 1e9


class _ActivationCounter(torch.utils._python_dispatch.TorchDispatchMode):
    """Counts the elements of every tensor an operator returns."""

    def __init__(self):
        super().__init__()
        self.elements = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for item in (out if isinstance(out, (tuple, list)) else (out,)):
            if isinstance(item, torch.Tensor):
                self.elements += item.numel()
        return out


def forward_counts(variant: str, network, image_channels: int, label_channels: int
                   ) -> dict[str, tuple[int, float, int]]:
    """Per network ("G", "D"): (parameters, FLOPs of one image's forward, activation elements)."""
    from gan import build_discriminator, build_generator
    from gan.variants import discriminator_channels, variant_spec

    r = network.resolution
    with torch.device("meta"):
        G = build_generator(variant, network, image_channels=image_channels, label_channels=label_channels)
        D = build_discriminator(variant, network, image_channels=image_channels, label_channels=label_channels)
        z = torch.zeros(1, G.z_dim)
        c = torch.zeros(1, network.c_dim)
        mask = torch.zeros(1, label_channels, r, r) if variant_spec(variant).needs_mask else None
        x = torch.zeros(1, discriminator_channels(variant, image_channels, label_channels), r, r)
    counts = {}
    for name, run in (("G", lambda: G(z, c, mask=mask)), ("D", lambda: D(x, c))):
        activations = _ActivationCounter()
        with FlopCounterMode(display=False) as flops, activations:
            run()
        module = G if name == "G" else D
        counts[name] = (sum(p.numel() for p in module.parameters()), float(flops.get_total_flops()),
                        activations.elements)
    return counts


def estimate_training_cost(cfg, image_channels: int, label_channels: int, device: torch.device,
                           machine_gflops: float | None = None) -> TrainingCost:
    """`TrainingCost` of the resolved TrainConfig ``cfg`` for a dataset of M image channels and L
    label classes on ``device`` (``machine_gflops``: a rate measured before, else measured now)."""
    counts = forward_counts(cfg.variant, cfg.network, image_channels, label_channels)
    rate = machine_gflops if machine_gflops is not None else measure_conv_gflops(device)
    flops = sum(TRAINING_FLOPS_PER_FORWARD[k] * counts[k][1] for k in counts)
    seconds_per_image = flops / (rate * 1e9 * STEP_EFFICIENCY[device.type]) + OVERHEAD_S_PER_IMAGE[device.type]
    params = counts["G"][0] * 2 + counts["D"][0]            # G, G_ema, D
    weight_bytes = 4 * (params + 3 * (counts["G"][0] + counts["D"][0]))   # + grads, Adam m and v
    activation_bytes = ACTIVATION_BYTES * cfg.batch_gpu * (counts["G"][2] + counts["D"][2])
    return TrainingCost(resolution=cfg.resolution, g_params=counts["G"][0], d_params=counts["D"][0],
                        gflop_per_image=flops / 1e9, machine_gflops=rate,
                        s_per_kimg=1000 * seconds_per_image,
                        memory_gb=(weight_bytes + activation_bytes) / 2**30 + 0.5)   # + torch itself


def fit_auto_to_cpu(cfg, image_channels: int, label_channels: int, device: torch.device
                    ) -> tuple[object, TrainingCost]:
    """The 'auto' config narrowed for a CPU: the widest ``channel_max`` (channel_base = 32 x it, the
    'auto' ratio) whose estimate is within CPU_AUTO_S_PER_KIMG, micro-batches of at most
    CPU_AUTO_MICRO_BATCH.  Raises ValueError with the estimate and smaller choices when even the
    narrowest is slower."""
    from training.config import resolve_config

    rate = measure_conv_gflops(device)
    batch_gpu = max(b for b in range(1, min(cfg.batch_gpu, CPU_AUTO_MICRO_BATCH) + 1) if cfg.batch_gpu % b == 0)
    fitted, cost = cfg, None
    for channel_max in CPU_AUTO_CHANNEL_MAX:
        network = dataclasses.replace(cfg.network, channel_max=channel_max, channel_base=channel_max * 32,
                                      mbstd_group_size=min(cfg.network.mbstd_group_size, batch_gpu))
        fitted = resolve_config(dataclasses.replace(cfg, network=network, batch_gpu=batch_gpu))
        cost = estimate_training_cost(fitted, image_channels, label_channels, device, rate)
        if cost.s_per_kimg <= CPU_AUTO_S_PER_KIMG:
            return fitted, cost
    smaller = cfg.resolution // 2
    raise ValueError(
        f"'auto' at {cfg.resolution}x{cfg.resolution} is too slow for this CPU: even with channel_max "
        f"{CPU_AUTO_CHANNEL_MAX[-1]} it needs ~{cost.s_per_kimg:,.0f} s/kimg (aim: {CPU_AUTO_S_PER_KIMG:.0f}); "
        f"train at a lower resolution (--resolution {smaller}), use --cfg tiny (32x32), a GPU, or "
        f"pin the network yourself (--set network.channel_max=32) to train anyway")
