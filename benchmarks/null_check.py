"""The null check of the study's verdict: runs that differ only in their seed must not be called
different.  Not a speed benchmark (minutes of U-Net training), so `make bench` does not run it.

A real-only study on phantoms (n_real 2, 8 folds x 6 repeats, the demo's U-Net settings) is run
twice: with the old seeding (seed = study seed + repeat, the same in every fold: the folds of a
repeat share initial weights, slice order and augmentation) and with block seeds (each fold x
repeat its own seed).  Each repeat is then read as a "condition" -- six conditions that differ only
by seed -- over the 8 folds as blocks, and every sub-report of 3 or 4 of them (35 subsets, the
first one the baseline) is judged by the old rule (Holm on mean ranks after Iman-Davenport) and by
the paired rule (exact Wilcoxon per condition vs the baseline, Holm).  A report "claims" when any
condition is declared different.  Ideal: about alpha (5 %) on average; the 35 sub-reports share
conditions, so the rate of one study scatters widely -- the last column gives the 95th percentile
of the paired rule's rate over relabellings that make the repeats exchangeable by construction.

    python -m benchmarks.null_check --out /tmp/null --scheme old &    # two processes, one core each
    python -m benchmarks.null_check --out /tmp/null --scheme new &
    wait; python -m benchmarks.null_check --out /tmp/null --analyse
"""
from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import numpy as np

from segmentation.study import grid
from segmentation.study.runner import run_study
from segmentation.report.score_table import ScoreTableConfig, drop_incomplete_blocks, load_score_table
from segmentation.report.stats import compare_conditions, compare_paired_to_control
from segmentation.study.study_config import load_study_config

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


RELABELLINGS = 200


def claim_rates(scores: np.ndarray, alpha: float = 0.05) -> tuple[float, float]:
    """(old-rule, paired-rule) share of the sub-reports of 3 or 4 of the columns of ``scores`` [N, k]
    (the first column of each the baseline) that declare any difference."""
    old = paired = total = 0
    for size in (3, 4):
        for subset in itertools.combinations(range(scores.shape[1]), size):
            part = scores[:, subset]
            old += bool(compare_conditions(part, control=0, alpha=alpha).significant_vs_control().any())
            paired += bool(compare_paired_to_control(part, control=0, alpha=alpha).verdict().any())
            total += 1
    return old / total, paired / total


def relabelled_quantile(scores: np.ndarray, quantile: float = 0.95) -> float:
    """The ``quantile`` of the paired rule's claim rate when the repeats are shuffled within each
    block (exchangeable by construction): sub-reports overlap, so even a valid rule has a wide spread."""
    rng = np.random.default_rng(0)
    rates = [claim_rates(np.array([row[rng.permutation(row.size)] for row in scores]))[1]
             for _ in range(RELABELLINGS)]
    return float(np.quantile(rates, quantile))


def analyse(out: Path) -> None:
    print("| seeding | class | sub-reports | claims, rank rule | claims, paired rule | paired rule, 95th pct of "
          "relabelled nulls |")
    print("|---|---|---:|---:|---:|---:|")
    roles = dict(block_columns=("dataset", "fold"), condition_columns=("repeat",), repeats_as_blocks=False)
    for scheme in ("old", "new"):
        if not (out / scheme / "cases.csv").is_file():
            continue
        for class_name in CLASSES:
            table = drop_incomplete_blocks(load_score_table(out / scheme, ScoreTableConfig(class_name=class_name,
                                                                                           **roles)))
            old, paired = claim_rates(table.scores)
            print(f"| {scheme} | {class_name} | 35 | {old:.0%} | {paired:.0%} | {relabelled_quantile(table.scores):.0%} |")


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
