"""``python run_study.py configs/study/NAME.yaml``: run (a shard of) an augmentation study."""
from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path

from segmentation.grid import Run, describe_grid, parse_shard, shard
from segmentation.runner import (StudyDataError, mean_dice_table, plan_runs, read_results, resolve_device,
                                 run_study, torch_threads)
from segmentation.study_config import StudyConfig, StudyConfigError, load_study_config, with_synthetic_folders
from segmentation.unet import BUDGET_RULE, measure_step_seconds
from training.data import DataError

EPILOG = """examples:
  python run_study.py configs/study/micro.yaml --dry-run
  python run_study.py configs/study/phantom_demo.yaml --synthetic pair=synthetic/pair \\
      --synthetic baseline-gan=synthetic/baseline-gan --threads 1
  python run_study.py configs/study/paper.yaml --shard 3/16 --device cuda      # one job of a SLURM array
  python run_study.py configs/study/micro.yaml --set train.iterations=50 --set k='[2, "1x"]'

Shards write disjoint run files; cases.csv in the results folder is rebuilt from all finished runs,
and re-running any shard skips runs already finished.

""" + textwrap.fill("Optimisation budget: " + BUDGET_RULE + ".", width=100)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="run_study.py", description="Train MONAI 2D U-Nets on real + k synthetic patients and test them per\n"
                                         "patient on held-out real volumes (one run per grid point).",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="study YAML, e.g. configs/study/micro.yaml")
    parser.add_argument("--results", metavar="DIR", default=None,
                        help="results folder (default: results/NAME, NAME = the study's name)")
    parser.add_argument("--shard", metavar="I/N", default="0/1",
                        help="run only shard I of N (0-based) of the grid (default: 0/1 = everything)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the grid, its size and an estimated cost; train nothing, write nothing")
    parser.add_argument("--device", default="auto", help="auto (cuda if available, else cpu), cpu, cuda, cuda:1 "
                                                         "(default: auto)")
    parser.add_argument("--set", metavar="KEY=VALUE", action="append", default=[], dest="overrides",
                        help="override a config key (dotted; list items by index or name, value as YAML), e.g. "
                             "train.iterations=100 or arms.pair.psi=0.7; repeatable (default: none)")
    parser.add_argument("--synthetic", metavar="NAME=FOLDER", action="append", default=[],
                        help="add a synthetic arm NAME from an nnU-Net v2 folder (as sample_patients.py writes); "
                             "replaces the folder of an arm of that name; repeatable (default: none)")
    parser.add_argument("--threads", metavar="N", type=int, default=None,
                        help="torch CPU threads (default: torch's choice, usually all cores; 1 is often "
                             "faster for small U-Nets on a shared machine)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars (default: bars on a terminal)")
    return parser


def load_config(args: argparse.Namespace) -> StudyConfig:
    """The study config of the command line: the YAML with --set overrides, then --synthetic arms."""
    config = load_study_config(args.config, args.overrides)
    folders = {}
    for pair in args.synthetic:
        name, sep, folder = pair.partition("=")
        if not sep or not name or not folder:
            raise StudyConfigError(f"--synthetic {pair!r}: expected NAME=FOLDER")
        folders[name] = folder
    return with_synthetic_folders(config, folders) if folders else config


def format_duration(seconds: float) -> str:
    """Seconds as a readable duration: "42 s", "12.5 min" or "3.2 h"."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def estimate_cost(config: StudyConfig, runs: list[Run], datasets: dict, device: str) -> str:
    """Steps, slices and a time estimate from a measured training step of the configured U-Net."""
    steps = len(runs) * config.train.iterations
    lines = [f"budget per run: {config.train.iterations} steps x {config.train.batch_size} slices "
             f"(identical for every arm and k); total {steps} steps, {steps * config.train.batch_size} slices"]
    torch_device = resolve_device(device)
    seconds = 0.0
    for spec in config.datasets:
        dataset = datasets[spec.name]
        step = measure_step_seconds(config.unet, len(dataset.modalities), len(dataset.label_values),
                                    spec.preprocess.resolution, config.train.batch_size, torch_device)
        n_runs = sum(r.dataset == spec.name for r in runs)
        seconds += step * n_runs * config.train.iterations
        lines.append(f"{spec.name}: {len(dataset.modalities)} channels -> {len(dataset.label_values)} classes at "
                     f"{spec.preprocess.resolution}px, {step:.3f} s/step measured on {torch_device}, {n_runs} runs")
    lines.append(f"estimated training time: {format_duration(seconds)} on {torch_device} "
                 f"(+ validation every {config.train.val_every} steps and testing)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Entry point of run_study.py; returns the exit status (errors in the input exit with 2)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    try:
        config = load_config(args)
        index, count = parse_shard(args.shard)
        resolve_device(args.device)
    except ValueError as exc:  # StudyConfigError, or a malformed --shard
        parser.exit(2, f"run_study.py: error: {exc}\n")
    results = Path(args.results) if args.results else Path("results") / config.name
    try:
        if args.dry_run:
            runs, datasets = plan_runs(config, results)
            mine = shard(runs, index, count)
            print(describe_grid(mine))
            if count > 1:
                print(f"shard {index}/{count}: {len(mine)} of {len(runs)} runs")
            with torch_threads(args.threads):
                print(estimate_cost(config, mine, datasets, args.device))
            return 0
        summary = run_study(config, results, index, count, args.device, progress=not args.quiet, threads=args.threads)
    except (DataError, StudyConfigError, StudyDataError, FileNotFoundError) as exc:
        parser.exit(2, f"run_study.py: error: {exc}\n")
    print(mean_dice_table(read_results(summary.results)))
    print(f"{len(summary.ran)} runs finished, {len(summary.skipped)} already done, in {summary.seconds:.1f} s; "
          f"results in {summary.results} (cases: {summary.cases_csv})", file=sys.stderr)
    return 0
