"""The null check of the study's verdict: runs that differ only in their seed must not be called
different.  Not a speed benchmark (minutes of U-Net training), so `make bench` does not run it.

A real-only study on phantoms (n_real 2, 8 folds x 6 repeats, the demo's U-Net settings) is run
twice: with the old seeding (seed = study seed + repeat, the same in every fold: the folds of a
repeat share initial weights, slice order and augmentation) and with block seeds (each fold x
repeat its own seed).  Each repeat is then read as a "condition" -- six conditions that differ only
by seed -- over the 8 folds as blocks, and every sub-report of 3 or 4 of them (35 subsets, the
first one the baseline) is judged by the old rule (Holm on mean ranks after Iman-Davenport) and by
the paired rule (exact Wilcoxon per condition vs the baseline, Holm).  A report "claims" when any
condition is declared different.  Ideal: at most alpha (5 %) of the sub-reports.

    python -m benchmarks.null_check --out /tmp/null --scheme old &    # two processes, one core each
    python -m benchmarks.null_check --out /tmp/null --scheme new &
    wait; python -m benchmarks.null_check --out /tmp/null --analyse
"""
from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import numpy as np

from segmentation import grid
from segmentation.runner import run_study
from segmentation.score_table import ScoreTableConfig, drop_incomplete_blocks, load_score_table
from segmentation.stats import compare_conditions, compare_paired_to_control
from segmentation.study_config import load_study_config

ROOT = Path(__file__).resolve().parents[1]
REPEATS, FOLDS = 6, 8
CLASSES = ("foreground", "oedema", "core")


def seed_only_config():
    """The demo study's data and U-Net, real-only, n_real 2, 8 folds x 6 repeats."""
    return load_study_config(ROOT / "configs" / "study" / "phantom_demo.yaml", [
        "name=null_check", "arms=[]", "k=[]", "n_real=[2]", f"repeats={REPEATS}", f"splits.n_folds={FOLDS}"])


def old_seed(study_seed: int, dataset: str, fold: int, repeat: int) -> int:
    """The seeding before block seeds: one seed per repeat, shared by every fold."""
    return study_seed + repeat


def run(out: Path, scheme: str) -> None:
    if scheme == "old":
        grid.block_seed = old_seed  # the grid reads it at expansion time
    run_study(seed_only_config(), out / scheme, device="cpu", progress=False, threads=1)


def claim_rates(results: Path, class_name: str, alpha: float = 0.05) -> tuple[float, float, int]:
    """(old-rule claim rate, paired-rule claim rate, number of sub-reports) of one class."""
    config = ScoreTableConfig(class_name=class_name, block_columns=("dataset", "fold"),
                              condition_columns=("repeat",), repeats_as_blocks=False)
    table = drop_incomplete_blocks(load_score_table(results, config))
    old = paired = total = 0
    for size in (3, 4):
        for subset in itertools.combinations(range(table.scores.shape[1]), size):
            scores = table.scores[:, subset]
            old += bool(compare_conditions(scores, control=0, alpha=alpha).significant_vs_control().any())
            paired += bool(compare_paired_to_control(scores, control=0, alpha=alpha).verdict().any())
            total += 1
    return old / total, paired / total, total


def analyse(out: Path) -> None:
    print("| seeding | class | sub-reports | claims, rank rule (before) | claims, paired rule (after) |")
    print("|---|---|---:|---:|---:|")
    for scheme in ("old", "new"):
        if not (out / scheme / "cases.csv").is_file():
            continue
        for class_name in CLASSES:
            old, paired, total = claim_rates(out / scheme, class_name)
            print(f"| {scheme} | {class_name} | {total} | {old:.0%} | {paired:.0%} |")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the two studies")
    parser.add_argument("--scheme", choices=("old", "new"), help="run the seed-only study with this seeding")
    parser.add_argument("--analyse", action="store_true", help="print the claim-rate table")
    args = parser.parse_args(argv)
    if args.scheme:
        run(args.out, args.scheme)
    if args.analyse:
        analyse(args.out)


if __name__ == "__main__":
    main()
