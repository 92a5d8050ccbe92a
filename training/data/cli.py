"""``stylepair-data``: inspect a dataset, write phantom patients, build the slice cache, write splits.

    stylepair-data inspect DATASET [--layout auto] [--on-error skip] [--modalities A,B]
    stylepair-data phantoms OUT --patients 20 --seed 0 --shape 64 64 24 --layout msd
    stylepair-data phantoms OUT --kind radiograph --patients 40 --shape 128 128
    stylepair-data cache DATASET [--config phantom] [--set ct_norm.upper=400] [--resolution 64] [--cache-dir DIR]
    stylepair-data splits DATASET --out splits.json [--folds 5] [--seed 12345] [--test-fraction 0.2]
"""
from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

from training.data.errors import DataError, one_line_errors
from training.data.loader import LAYOUTS, load_dataset
from training.data.phantoms import SHIFTED, STANDARD, write_phantom_dataset
from training.data.phantoms_radiograph import write_radiograph_dataset
from training.data.records import Dataset
from training.data.splits import make_splits
from training.data.summary import patient_table, summarize


def _add_dataset_arguments(parser: argparse.ArgumentParser, on_error: str) -> None:
    parser.add_argument("dataset", type=Path, help="dataset folder (MSD, nnU-Net v2 raw, or folder-per-patient)")
    parser.add_argument("--layout", choices=("auto", *LAYOUTS), default="auto",
                        help="force a layout (default: %(default)s)")
    parser.add_argument("--on-error", choices=("fail", "skip"), default=on_error,
                        help="bad patients: fail, or skip them with a warning (default: %(default)s)")
    parser.add_argument("--modalities", type=lambda s: [m for m in s.split(",") if m], default=None,
                        help="comma-separated modality names/order (default: from dataset.json or discovered)")


def _load(args: argparse.Namespace) -> tuple[Dataset, list[str]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dataset = load_dataset(args.dataset, layout=args.layout, on_error=args.on_error, modalities=args.modalities)
    skipped = {reason for _, reason in dataset.skipped}
    other = [str(w.message) for w in caught if not any(reason in str(w.message) for reason in skipped)]
    return dataset, other


def _inspect(args: argparse.Namespace) -> int:
    dataset, problems = _load(args)
    print(summarize(dataset, problems))
    if args.per_patient:
        print(patient_table(dataset))
    return 0


def _phantoms(args: argparse.Namespace) -> int:
    started = time.time()
    default = (128, 128) if args.kind == "radiograph" else (64, 64, 24)
    shape = default if args.shape is None else tuple(args.shape)
    if len(shape) != len(default):
        raise ValueError(f"--shape takes {len(default)} sizes for --kind {args.kind}, got {list(shape)}")
    if args.kind == "radiograph":
        out = write_radiograph_dataset(args.out, n_images=args.patients, shape=shape, seed=args.seed,
                                       object_fraction=args.object_fraction)
        print(f"wrote {args.patients} phantom chest radiographs ({shape[0]}x{shape[1]}, foreign objects in "
              f"{args.object_fraction:.0%} of them) to {out} in {time.time() - started:.1f} s")
        return 0
    acquisition = SHIFTED if args.shifted else STANDARD
    out = write_phantom_dataset(args.out, n_patients=args.patients, shape=shape, seed=args.seed,
                                layout=args.layout, acquisition=acquisition)
    print(f"wrote {args.patients} phantom patients ({args.layout}, {'x'.join(map(str, shape))}, "
          f"{acquisition.name} acquisition) to {out} in {time.time() - started:.1f} s")
    return 0


def _cache(args: argparse.Namespace) -> int:
    from training.data.cache import open_slice_cache  # torch: only for this command
    from training.data.preprocess import load_preprocess_config

    preprocess = load_preprocess_config(args.config, args.overrides, resolution=args.resolution)
    dataset, problems = _load(args)
    for problem in problems:
        print(f"warning: {problem}", file=sys.stderr)
    started = time.time()
    cache = open_slice_cache(dataset, preprocess, cache_dir=args.cache_dir)
    rows = cache.training_rows()
    print(f"cache       {cache.path}")
    print(f"slices      {len(cache)} from {len(cache.case_ids)} patients, {cache.resolution}x{cache.resolution}, "
          f"{len(cache.modalities)} modalities, {cache.images.dtype}")
    print(f"training    {len(rows)} slices after drop_end_slices={preprocess.drop_end_slices}, "
          f"drop_empty_slices={preprocess.drop_empty_slices}, min_label_fraction={preprocess.min_label_fraction}")
    print(f"time        {time.time() - started:.2f} s (built in {cache.index['build_seconds']:.2f} s)")
    return 0


def _splits(args: argparse.Namespace) -> int:
    dataset, _ = _load(args)
    out = Path(args.out).resolve()
    owned = {Path(f).resolve() for f in dataset.extra_files} | {Path(f).resolve() for p in dataset.patients
                                                                 for f in p.source_files()}
    if out in owned or out.is_dir():
        raise ValueError(f"--out {args.out}: is {'a folder' if out.is_dir() else 'a file of the dataset itself'}; "
                         f"write the splits elsewhere (e.g. splits.json)")
    splits = make_splits(dataset.case_ids, n_folds=args.folds, seed=args.seed, test_fraction=args.test_fraction)
    splits.save(args.out)
    print(f"wrote {args.out}: {len(splits.test)} test patients, {splits.n_folds} folds over "
          f"{len(dataset.case_ids) - len(splits.test)} patients (seed {args.seed})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``stylepair-data`` (sub-commands inspect, phantoms, cache, splits)."""
    parser = argparse.ArgumentParser(
        prog="stylepair-data", description="Inspect a NIfTI dataset, write phantom patients, build the slice cache, "
                                           "write patient-level splits.",
        epilog="examples:\n" + "\n".join(__doc__.strip().splitlines()[2:]),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    inspect = commands.add_parser("inspect", help="print what a dataset holds and every problem found")
    _add_dataset_arguments(inspect, on_error="skip")
    inspect.add_argument("--per-patient", action="store_true", help="also print one line per patient")
    inspect.set_defaults(run=_inspect)
    phantoms = commands.add_parser("phantoms", help="write a phantom-patient dataset")
    phantoms.add_argument("out", type=Path, help="output folder (must not exist or be empty)")
    phantoms.add_argument("--patients", type=int, default=20, help="number of patients (default: %(default)s)")
    phantoms.add_argument("--seed", type=int, default=0, help="population seed (default: %(default)s)")
    phantoms.add_argument("--kind", choices=("mr", "radiograph"), default="mr",
                          help="mr: multi-modal head volumes; radiograph: 2D chest X-rays with anatomy labels and "
                               "foreign objects, in the radiograph layout (default: %(default)s)")
    phantoms.add_argument("--shape", type=int, nargs="+", default=None, metavar="N",
                          help="volume size X Y Z (default: 64 64 24), or image size ROWS COLUMNS for radiographs "
                               "(default: 128 128)")
    phantoms.add_argument("--object-fraction", type=float, default=0.5,
                          help="radiographs: the share of images with foreign objects (default: %(default)s)")
    phantoms.add_argument("--layout", choices=LAYOUTS, default="msd", help="layout to write (default: %(default)s)")
    phantoms.add_argument("--shifted", action="store_true",
                          help="image them as another scanner would (other contrasts, stronger bias field, more "
                               "noise, thicker slices): an out-of-distribution test set")
    phantoms.set_defaults(run=_phantoms)
    cache = commands.add_parser("cache", help="build (or reuse) the slice cache of a dataset")
    _add_dataset_arguments(cache, on_error="fail")
    cache.add_argument("--config", default=None,
                       help="preprocessing preset in configs/data/ (phantom, brats, ct) or a YAML path "
                            "(default: PreprocessConfig defaults, 64 px, MR percentiles 0.5-99.5 %%, "
                            "CT -1000..2000 HU)")
    cache.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="change a field of the preset (dotted keys, YAML values; repeatable), e.g. "
                            "--set ct_norm.upper=400 --set modality_norm.T2.upper=900")
    cache.add_argument("--resolution", type=int, default=None, help="slice size in pixels, overriding the config")
    cache.add_argument("--cache-dir", type=Path, default=None,
                       help="cache location (default: $STYLEPAIR_CACHE_DIR, DATASET/.stylepair_cache, "
                            "~/.cache/stylepair)")
    cache.set_defaults(run=_cache)
    splits = commands.add_parser("splits", help="write patient-level test + k-fold splits as JSON")
    _add_dataset_arguments(splits, on_error="fail")
    splits.add_argument("--out", type=Path, required=True, help="splits JSON to write")
    splits.add_argument("--folds", type=int, default=5, help="number of cross-validation folds (default: %(default)s)")
    splits.add_argument("--seed", type=int, default=12345, help="split seed (default: %(default)s, nnU-Net's)")
    splits.add_argument("--test-fraction", type=float, default=0.2,
                        help="fraction of patients held out for testing (default: %(default)s)")
    splits.set_defaults(run=_splits)
    return parser


@one_line_errors("stylepair-data")
def main(argv: list[str] | None = None) -> int:
    """Entry point of ``stylepair-data``; returns the exit status (1 on a data error)."""
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (DataError, FileExistsError, FileNotFoundError, ValueError) as err:
        print(f"stylepair-data {args.command}: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
