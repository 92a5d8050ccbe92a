"""``python run_study.py configs/study/NAME.yaml``: run (a shard of) an augmentation study."""
from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path

import numpy as np

from segmentation.study.grid import Run, describe_grid, parse_shard, shard
from segmentation.report.power import blocks_needed, describe_design
from segmentation.study.results import check_results_folder, mean_dice_table, read_results
from segmentation.study.runner import resolve_device, run_study, run_study_parallel, torch_threads
from segmentation.report.score_table import ScoreTableConfig, drop_incomplete_blocks, load_score_table
from segmentation.report.stats import compare_paired_to_control
from segmentation.study.study_config import (BASELINE_ARM, StudyConfig, StudyConfigError, load_study_config,
                                       with_synthetic_folders)
from segmentation.study.study_data import StudyDataError, check_folder_arms, plan_runs
from segmentation.study.unet import budget_rule, measure_step_seconds
from training.data import DataError
from training.data.errors import one_line_errors

ALPHA = 0.05  # the level the design is checked at (the report's default)
# A run's training step costs this many times the network's own step: slice sampling, augmentation and
# batching (measured ~1.85x on the demo's runs, see benchmarks/).
DATA_PATH_FACTOR = 1.85

EPILOG = """examples:
  python run_study.py configs/study/micro.yaml --dry-run
  python run_study.py configs/study/phantom_demo.yaml --synthetic pair=synthetic/pair \\
      --synthetic baseline-gan=synthetic/baseline-gan --threads 1
  python run_study.py configs/study/paper.yaml --shard 3/16 --device cuda      # one job of a SLURM array
  python run_study.py configs/study/micro.yaml --set train.iterations=50 --set k='[2, "1x"]'

Shards write disjoint run files; cases.csv in the results folder is rebuilt from all finished runs,
and re-running any shard skips runs already finished.

Before training, the design is checked: blocks (dataset x fold x repeat) and comparisons with the
real-only baseline decide the smallest effect the report's paired test (exact Wilcoxon, Holm) can
detect with 80 % power; a design that can never reach significance is refused unless
--allow-weak-design.  --dry-run prints it (in Dice too when the results folder has finished runs).
""" + textwrap.fill("Default optimisation budget: " + budget_rule(StudyConfig.__dataclass_fields__["train"].default)
                    + ".", width=100)


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
    parser.add_argument("--jobs", metavar="N", type=int, default=1,
                        help="run N worker processes side by side (each with --threads threads, default 1 then); "
                             "the runs and results are those of one process (default: 1)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars (default: bars on a terminal)")
    parser.add_argument("--accept-changed-data", action="store_true",
                        help="go on although patients differ from those earlier runs in the results folder used "
                             "(by content); the report then says that the folder mixes data (default: refuse)")
    parser.add_argument("--allow-weak-design", action="store_true",
                        help="run a design whose paired test can never reach significance (too few blocks for "
                             "its comparisons); by default it is refused with the fix")
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


def estimate_cost(config: StudyConfig, runs: list[Run], datasets: dict, device: str, jobs: int = 1) -> str:
    """Steps, slices and a time estimate from a measured training step of the configured U-Net."""
    steps = len(runs) * config.train.iterations
    per_run = "identical for every arm and k" if config.train.budget == "steps" else "before the epoch budget scales it"
    lines = [f"budget per run: {config.train.iterations} steps x {config.train.batch_size} slices "
             f"({per_run}); total {steps} steps, {steps * config.train.batch_size} slices"]
    torch_device = resolve_device(device)
    seconds = 0.0
    for spec in config.datasets:
        dataset = datasets[spec.name]
        step, per_slice = measure_step_seconds(config.unet, len(dataset.modalities), len(dataset.label_values),
                                               spec.preprocess.resolution, config.train.batch_size, torch_device)
        n_runs = sum(r.dataset == spec.name for r in runs)
        slices = sum(p.shape[2] for p in dataset.patients)
        test_slices = slices * config.splits.test_fraction * (1 + len(config.test_datasets))
        validations = config.train.iterations // config.train.val_every if config.train.validation == "fold" else 0
        val_slices = slices * (1 - config.splits.test_fraction) / config.splits.n_folds
        run_seconds = (DATA_PATH_FACTOR * step * config.train.iterations
                       + per_slice * (validations * val_slices + test_slices))
        seconds += run_seconds * n_runs
        lines.append(f"{spec.name}: {len(dataset.modalities)} channels -> {len(dataset.label_values)} classes at "
                     f"{spec.preprocess.resolution}px, {step:.3f} s/step and {1000 * per_slice:.2f} ms/slice to "
                     f"segment, measured on {torch_device}; ~{run_seconds:.0f} s per run ({validations} validations "
                     f"of ~{val_slices:.0f} slices, ~{test_slices:.0f} test slices), {n_runs} runs")
    side_by_side = f" with {jobs} runs side by side" if jobs > 1 else ""
    lines.append(f"estimated time: {format_duration(seconds / jobs)} on {torch_device}{side_by_side} (training with "
                 f"its data path ~{DATA_PATH_FACTOR:g}x the network's step, validation and testing; not the data "
                 f"preparation)")
    return "\n".join(lines)


def design_groups(runs: list[Run]) -> dict[int | None, tuple[int, int]]:
    """Per requested n_real: (blocks = distinct dataset x fold x repeat, comparisons with the
    baseline = distinct arm x k); only for grids with the real-only baseline."""
    groups: dict[int | None, tuple[int, int]] = {}
    for n in dict.fromkeys(r.n_real_requested for r in runs):
        cell = [r for r in runs if r.n_real_requested == n]
        if not any(r.arm == BASELINE_ARM for r in cell):
            continue
        blocks = {(r.dataset, r.fold, r.repeat) for r in cell}
        comparisons = {(r.arm, r.n_synthetic) for r in cell if r.arm != BASELINE_ARM}
        if comparisons:
            groups[n] = (len(blocks), len(comparisons))
    return groups


def observed_spread(results: Path) -> float | None:
    """Median over conditions of the between-block sd of paired foreground-Dice differences with
    the baseline, from a results folder's finished runs (None when there are too few)."""
    try:
        table = drop_incomplete_blocks(load_score_table(results, ScoreTableConfig()))
        paired = compare_paired_to_control(table.scores, table.condition_index(BASELINE_ARM))
    except (FileNotFoundError, ValueError):
        return None
    spreads = np.delete(paired.difference_sd, paired.control)
    spreads = spreads[np.isfinite(spreads)]
    return float(np.median(spreads)) if spreads.size else None


def check_design(runs: list[Run], results: Path | None = None) -> tuple[str, str | None]:
    """(a description of what the design can detect, a refusal message or None)."""
    lines, refusal = [], None
    spread = observed_spread(results) if results is not None else None
    for n, (n_blocks, m) in design_groups(runs).items():
        design = describe_design(n_blocks, m, ALPHA)
        which = "all real patients" if n is None else f"n_real {n}"
        if not design.can_reject:
            need = blocks_needed(m, ALPHA)
            refusal = (f"the design cannot find any difference ({which}: {n_blocks} blocks, {m} comparisons with "
                       f"real-only): the smallest p of the exact paired test is {design.smallest_p:.3g}, not below "
                       f"alpha/m = {ALPHA / m:.3g}.  Use at least {need} blocks (blocks = datasets x folds x repeats: "
                       f"raise 'repeats' or splits.n_folds), or compare fewer arms/k; --allow-weak-design runs it anyway")
            lines.append(f"design ({which}): {n_blocks} blocks x {m} comparisons: can never reach p < {ALPHA:g} "
                         f"after Holm (needs >= {need} blocks)")
            continue
        dice = f" = {design.mde_sd * spread:.3f} foreground Dice (spread of {results})" if spread else ""
        lines.append(f"design ({which}): {n_blocks} blocks x {m} comparisons with real-only; the paired test "
                     f"(exact Wilcoxon, Holm, alpha {ALPHA:g}) detects an effect of >= {design.mde_sd:.2f} sd of the "
                     f"paired differences with 80% power{dice}")
    return "\n".join(lines), refusal


@one_line_errors("run_study.py")
def main(argv: list[str] | None = None) -> int:
    """Entry point of run_study.py; returns the exit status (errors in the input exit with 2)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    if args.jobs < 1:
        parser.error(f"--jobs must be >= 1, got {args.jobs}")
    try:
        config = load_config(args)
        index, count = parse_shard(args.shard)
        resolve_device(args.device)
    except ValueError as exc:  # StudyConfigError, or a malformed --shard
        parser.exit(2, f"run_study.py: error: {exc}\n")
    results = Path(args.results) if args.results else Path("results") / config.name
    try:
        check_results_folder(results)
        runs, datasets = plan_runs(config, results)
        design, refusal = check_design(runs, results if args.dry_run else None)
        if args.dry_run:
            check_folder_arms(config, datasets)  # what the real run would refuse, the dry run refuses too
            mine = shard(runs, index, count)
            print(describe_grid(mine))
            if count > 1:
                print(f"shard {index}/{count}: {len(mine)} of {len(runs)} runs")
            print(f"training: {budget_rule(config.train)}")
            if design:
                print(design)
            with torch_threads(args.threads):
                print(estimate_cost(config, mine, datasets, args.device, args.jobs))
        if refusal is not None and not args.allow_weak_design:
            parser.exit(2, f"run_study.py: error: {refusal}\n")
        if args.dry_run:
            return 0
        if args.jobs > 1:
            summary = run_study_parallel(config, results, args.jobs, index, count, args.device, args.threads or 1,
                                         args.accept_changed_data)
        else:
            summary = run_study(config, results, index, count, args.device, progress=not args.quiet,
                                threads=args.threads, accept_changed_data=args.accept_changed_data)
    except (DataError, StudyConfigError, StudyDataError, FileNotFoundError) as exc:
        parser.exit(2, f"run_study.py: error: {exc}\n")
    print(mean_dice_table(read_results(summary.results)))
    print(f"{len(summary.ran)} runs finished, {len(summary.skipped)} already done, in {summary.seconds:.1f} s; "
          f"results in {summary.results} (cases: {summary.cases_csv})", file=sys.stderr)
    return 0
