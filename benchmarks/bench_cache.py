"""Slice-cache benchmark: build time for a 20-patient phantom dataset, and the time to read 1,000
random 64x64 slices from the cache versus from the NIfTI files directly.

    python benchmarks/bench_cache.py [--patients 20] [--reads 1000] [--resolution 64] [--shape 64 64 24]

"From NIfTI directly" is what a loader without a cache does per slice: open the patient's image
and label volumes, reorient, normalise, take slice k and resize it (`preprocess_patient` on a
one-slice view is not possible, so the whole volume is preprocessed and the slice taken).
Both paths run with a warm page cache (the files were just written).
"""
from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

from training.data import PreprocessConfig, load_dataset, open_slice_cache, preprocess_patient, write_phantom_dataset


def _timed(step):
    started = time.perf_counter()
    result = step()
    return result, time.perf_counter() - started


def _read_from_nifti(dataset, config, rows, cache) -> None:
    for row in rows:
        patient = dataset.patients[int(cache.case_index[row])]
        case = preprocess_patient(patient, dataset.label_values, config)
        k = int(cache.slice_index[row])
        assert case.images[k].shape == (len(dataset.modalities), config.resolution, config.resolution)


def _read_in_batches(cache, rows, batch_size: int) -> None:
    for start in range(0, len(rows), batch_size):
        batch = cache.select(rows[start:start + batch_size])
        assert batch.images.dtype == np.float32


def main(argv: list[str] | None = None) -> None:
    """Print the benchmark table (times in seconds) for a fresh phantom dataset in a temp folder."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--patients", type=int, default=20)
    parser.add_argument("--reads", type=int, default=1000)
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--shape", type=int, nargs=3, default=[64, 64, 24], metavar=("X", "Y", "Z"))
    args = parser.parse_args(argv)
    shape = tuple(args.shape)
    config = PreprocessConfig(resolution=args.resolution)
    rng = np.random.default_rng(0)
    rows_table: list[tuple[str, float, str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        root, seconds = _timed(lambda: write_phantom_dataset(Path(tmp) / "phantoms", args.patients, shape))
        rows_table.append((f"write {args.patients} phantom patients {'x'.join(map(str, shape))}", seconds, ""))
        dataset, seconds = _timed(lambda: load_dataset(root))
        rows_table.append(("load_dataset (headers + voxel checks)", seconds, ""))
        cache, seconds = _timed(lambda: open_slice_cache(dataset, config))
        rows_table.append((f"build cache ({len(cache)} slices, {args.resolution}x{args.resolution})", seconds,
                           f"{cache.images.nbytes / 2**20:.1f} MiB images"))
        _, seconds = _timed(lambda: open_slice_cache(dataset, config))
        rows_table.append(("open the existing cache", seconds, "memory maps, no data read"))
        rows = rng.integers(0, len(cache), size=args.reads)
        for batch_size in (1, 32):
            _, seconds = _timed(lambda: _read_in_batches(cache, rows, batch_size))
            rows_table.append((f"{args.reads:,} random slices from the cache, batch {batch_size}", seconds,
                               f"{args.reads / seconds:,.0f} slices/s"))
        _, seconds = _timed(lambda: _read_from_nifti(dataset, config, rows, cache))
        rows_table.append((f"{args.reads:,} random slices from the NIfTI files", seconds,
                           f"{args.reads / seconds:,.0f} slices/s"))
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rows_table.append(("peak resident memory of this process", float("nan"), f"{peak_mib:,.0f} MiB"))
    width = max(len(name) for name, _, _ in rows_table)
    print(f"{'step'.ljust(width)}  {'seconds':>9}  note")
    for name, seconds, note in rows_table:
        shown = "-" if seconds != seconds else f"{seconds:.4f}"  # NaN: not a timing
        print(f"{name.ljust(width)}  {shown:>9}  {note}")


if __name__ == "__main__":
    main()
