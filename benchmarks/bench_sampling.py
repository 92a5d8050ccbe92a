"""Sampling throughput: slices/s of an untrained baseline generator (4 modalities + 6 labels,
slice-position conditioned) through `PatientSampler`, batched versus one slice per network call.

    python -m benchmarks.bench_sampling                 # the `tiny` preset and the `auto` preset at 128²
    python -m benchmarks.bench_sampling --configs tiny --slices 64

At `tiny` batching pays (per-call overhead dominates small convolutions: ~3x); at 128² the
convolutions are compute-bound per slice already, so batching gains little on a CPU -- and with
glibc's default malloc settings batch 16 runs at about half the speed of batch 1, because large
activation buffers are returned to the kernel and faulted in again on every call.
Like sample_patients.py on a CPU, the benchmark therefore keeps freed memory in the process
(`training.runtime.keep_freed_memory`); --default-malloc measures without it.
slices/CPU-s counts this process's CPU time (all threads): steadier than wall-clock slices/s when
other processes compete for the cores (with 2 threads on a busy machine, also try --threads 1).
"""
from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import torch

from gan import build_generator
from training.config import load_preset, resolve_config
from training.runtime import keep_freed_memory
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


@dataclass(frozen=True)
class Throughput:
    """Slices per wall-clock second, and per CPU second of this process (all its threads): the
    second is steadier when other processes compete for the cores."""

    wall: float
    cpu: float


def measure(slices: BaselineSlices, n_slices: int, slices_per_patient: int, batch: int) -> Throughput:
    """Generate patients of `slices_per_patient` slices until n_slices are done, after a warm-up."""
    sampler = PatientSampler(slices, [slices_per_patient], seed=0, batch=batch)
    next(iter(sampler.candidates(count=1)))  # warm-up: allocations, first-call dispatch
    patients = -(-n_slices // slices_per_patient)
    wall, cpu = time.perf_counter(), time.process_time()
    done = sum(p.plan.n_slices for p in sampler.candidates(first=1, count=patients))
    return Throughput(done / (time.perf_counter() - wall), done / (time.process_time() - cpu))


def main(argv: list[str] | None = None) -> None:
    """Print slices/s (wall clock and CPU time) per configuration, batched and one slice per call,
    and their ratios."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", default="tiny,128", help="comma-separated: tiny, 128 (default: %(default)s)")
    parser.add_argument("--batch", type=int, default=16, help="slices per call when batched (default: %(default)s)")
    parser.add_argument("--patient-slices", type=int, default=24, help="slices per patient (default: %(default)s)")
    parser.add_argument("--slices", type=int, default=None,
                        help="slices timed per measurement (default: 192 for tiny, 48 for 128)")
    parser.add_argument("--default-malloc", action="store_true",
                        help="leave glibc's malloc settings alone (sample_patients.py changes them on a CPU)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's choice); 1 is steadier on a busy machine")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    kept = False if args.default_malloc else keep_freed_memory()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{'freed memory kept' if kept else 'default malloc'}; untrained baseline generator, "
          f"{MODALITIES} modalities + {LABELS} labels, {args.patient_slices} slices per patient")
    print(f"{'config':>8} {'res':>5} {'mode':>14} {'slices/s':>10} {'slices/CPU-s':>13}")
    for config in args.configs.split(","):
        slices = make_slices(config)
        n = args.slices or (192 if config == "tiny" else 48)
        batched = measure(slices, n, args.patient_slices, args.batch)
        single = measure(slices, max(n // 2, args.patient_slices), args.patient_slices, 1)
        res = f"{slices.resolution}²"
        print(f"{config:>8} {res:>5} {'batched b=%d' % args.batch:>14} {batched.wall:>10.1f} {batched.cpu:>13.1f}")
        print(f"{config:>8} {res:>5} {'one per call':>14} {single.wall:>10.1f} {single.cpu:>13.1f}")
        print(f"{'':>8} {'':>5} {'ratio':>14} {batched.wall / single.wall:>9.2f}x {batched.cpu / single.cpu:>12.2f}x")

if __name__ == "__main__":
    main()
