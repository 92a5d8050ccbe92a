"""Sampling throughput: slices/s of an untrained baseline generator (4 modalities + 6 labels,
slice-position conditioned) through `PatientSampler`, batched versus one slice per network call.

    python -m benchmarks.bench_sampling                 # the `tiny` preset and the `auto` preset at 128²
    python -m benchmarks.bench_sampling --configs tiny --slices 64

Network time dominates at 128², so the batched/one-at-a-time ratio there shows what batching buys
the convolutions; at `tiny` it also shows that the per-patient bookkeeping costs nothing per slice.
On a CPU, glibc's malloc returning large buffers to the kernel costs a lot of system time; for
steadier figures start the process with MALLOC_MMAP_THRESHOLD_=17179869184
MALLOC_TRIM_THRESHOLD_=17179869184 MALLOC_TOP_PAD_=1073741824 (SCIENCE.md §6).
"""
from __future__ import annotations

import argparse
import time

import torch

from gan import build_generator
from training.config import load_preset, resolve_config
from training.sampling import BaselineSlices, PatientSampler

MODALITIES, LABELS = 4, 6
CONFIGS = {"tiny": ("tiny", None), "128": ("auto", 128)}


def make_slices(config: str) -> BaselineSlices:
    """An untrained baseline slice generator for a named benchmark configuration."""
    preset, resolution = CONFIGS[config]
    cfg = load_preset(preset)
    cfg.variant, cfg.cond = "baseline", "slice-position"
    if resolution is not None:
        cfg.resolution = resolution
    cfg = resolve_config(cfg)
    torch.manual_seed(0)
    G = build_generator("baseline", cfg.network, image_channels=MODALITIES, label_channels=LABELS)
    return BaselineSlices(G.eval().requires_grad_(False), MODALITIES, LABELS)


def slices_per_second(slices: BaselineSlices, n_slices: int, slices_per_patient: int, batch: int) -> float:
    """Generate patients of `slices_per_patient` slices until n_slices are done; slices/s after a
    warm-up call."""
    sampler = PatientSampler(slices, [slices_per_patient], seed=0, batch=batch)
    next(iter(sampler.candidates(count=1)))  # warm-up: allocations, first-call dispatch
    patients = -(-n_slices // slices_per_patient)
    start = time.perf_counter()
    done = sum(p.plan.n_slices for p in sampler.candidates(first=1, count=patients))
    return done / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
    """Print slices/s per configuration, batched and one slice per call, and their ratio."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", default="tiny,128", help="comma-separated: tiny, 128 (default: %(default)s)")
    parser.add_argument("--batch", type=int, default=16, help="slices per call when batched (default: %(default)s)")
    parser.add_argument("--patient-slices", type=int, default=24, help="slices per patient (default: %(default)s)")
    parser.add_argument("--slices", type=int, default=None,
                        help="slices timed per measurement (default: 192 for tiny, 48 for 128)")
    args = parser.parse_args(argv)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; untrained baseline generator, "
          f"{MODALITIES} modalities + {LABELS} labels, {args.patient_slices} slices per patient")
    print(f"{'config':>8} {'res':>5} {'batched, b=%d' % args.batch:>15} {'one per call':>14} {'ratio':>7}   (slices/s)")
    for config in args.configs.split(","):
        slices = make_slices(config)
        n = args.slices or (192 if config == "tiny" else 48)
        batched = slices_per_second(slices, n, args.patient_slices, args.batch)
        single = slices_per_second(slices, max(n // 2, args.patient_slices), args.patient_slices, 1)
        print(f"{config:>8} {slices.resolution:>4}² {batched:>15.1f} {single:>14.1f} {batched / single:>6.2f}x")


if __name__ == "__main__":
    main()
