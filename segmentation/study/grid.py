"""The study grid: one `Run` per (dataset, fold, repeat, arm, k, n) with a stable id, and sharding.

The real-only arm ``real`` has k = 0; every synthetic arm gets each k of the config, where a
multiple ("1x") is taken of the run's requested n_real, or -- for n_real null (the whole fold) -- of
the smallest training fold of the dataset, so that every fold gets the same k values and the
report's conditions (arm, k) line up across folds.  Duplicate (arm, k) pairs after resolving
(e.g. k: [4, "1x"] with n = 4) and k = 0 for synthetic arms (that is the baseline) are dropped.
The order is deterministic (dataset, fold, repeat, n, arm, k as written in the config), and a
run's id does not depend on the order or on which other runs exist, so shards and re-runs agree.

Seeds (`SEED_SCHEME` 3): a *block* is one (dataset, fold, repeat); the statistics treat blocks as
independent and compare arms within a block.  So every block derives its own seed from (study
seed, dataset, fold, repeat) -- its initial weights, slice order, augmentation and synthetic
subsets differ from every other block's -- and every arm of a block shares it (paired runs).
Scheme 1 (seed = study seed + repeat, the same in every fold) made the folds of a repeat
correlated, and the tests on them invented effects; scheme 2 drew the augmentation per slice
through MONAI transforms (scheme 3: per batch, `segmentation.study.unet.BatchAugment`).  Results of
another scheme are refused rather than mixed with new runs.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

from segmentation.study.study_config import BASELINE_ARM, StudyConfig, StudyConfigError, resolve_k

SEED_SCHEME = 3


def name_code(name: str) -> int:
    """A stable 32-bit number for a name (dataset, arm) to mix into seeds."""
    return zlib.crc32(name.encode())


def arm_entropy(run: "Run") -> list[int]:
    """The entropy of what arm ``run.arm`` draws or makes in ``run``'s block (a ``default_rng``
    seed): distinct per block and arm, the same for every k of that arm in the block (nested draws)."""
    return [run.seed, name_code(run.arm)]


def arm_seed(run: "Run") -> int:
    """`arm_entropy` as one integer, for code that takes an int seed."""
    return int(np.random.SeedSequence(arm_entropy(run)).generate_state(1)[0])


def block_seed(study_seed: int, dataset: str, fold: int, repeat: int) -> int:
    """The run seed of block (dataset, fold, repeat): in [0, 2^31), distinct blocks get unrelated
    seeds (a hash of all four), and no arm or k enters it."""
    entropy = [study_seed, name_code(dataset), fold, repeat, SEED_SCHEME]
    return int(np.random.SeedSequence(entropy).generate_state(1)[0] & 0x7FFFFFFF)


@dataclass(frozen=True)
class Run:
    """One U-Net training run.

    n_real: real training patients used (after subsampling); n_real_requested: the config entry
    (None = all patients of the fold); n_synthetic: synthetic patients added (0 for ``real``);
    seed: the run's seed, `block_seed` of its (dataset, fold, repeat), shared by all arms of the block.
    """

    dataset: str
    fold: int
    repeat: int
    arm: str
    n_synthetic: int
    n_real: int
    n_real_requested: int | None
    seed: int

    @property
    def block_name(self) -> str:
        """The block and n of the run, e.g. ``phantom-f0-r1-n2`` (``nall`` for whole folds): the
        folder name of what is made per block (procedural patients)."""
        n = "all" if self.n_real_requested is None else str(self.n_real)
        return f"{self.dataset}-f{self.fold}-r{self.repeat}-n{n}"

    @property
    def run_id(self) -> str:
        """Stable, file-name-safe id, e.g. ``phantom-f0-r0-pair-k4-nall``."""
        n = "all" if self.n_real_requested is None else str(self.n_real)
        return f"{self.dataset}-f{self.fold}-r{self.repeat}-{self.arm}-k{self.n_synthetic}-n{n}"


def expand_grid(config: StudyConfig, train_sizes: dict[tuple[str, int], int]) -> list[Run]:
    """All runs of ``config``.  ``train_sizes[(dataset, fold)]`` = real training patients of that
    fold (`make_splits`); a requested n larger than that is a `StudyConfigError` naming the dataset
    and fold."""
    runs: list[Run] = []
    folds = config.splits.fold_indices()
    for dataset in config.datasets:
        smallest_fold = min(train_sizes[(dataset.name, fold)] for fold in folds)
        for fold in folds:
            available = train_sizes[(dataset.name, fold)]
            for repeat in range(config.repeats):
                for requested in config.n_real:
                    if requested is not None and requested > available:
                        raise StudyConfigError(f"study {config.name}: n_real {requested} exceeds the {available} "
                                               f"real training patients of dataset {dataset.name!r} fold {fold}")
                    n_real = available if requested is None else requested
                    k_base = smallest_fold if requested is None else requested
                    runs.extend(_runs_of_cell(config, dataset.name, fold, repeat, n_real, requested, k_base))
    return runs


def _runs_of_cell(config: StudyConfig, dataset: str, fold: int, repeat: int, n_real: int,
                  requested: int | None, k_base: int) -> list[Run]:
    """The runs of one (dataset, fold, repeat, n): the baseline, then each arm x distinct k > 0 (no
    baseline at n = 0: synthetic-only runs are compared with real-only runs at other n; nor arms made
    from the run's real patients)."""
    seed = block_seed(config.seed, dataset, fold, repeat)
    cell = []
    if config.baseline and n_real > 0:
        cell.append(Run(dataset, fold, repeat, BASELINE_ARM, 0, n_real, requested, seed))
    ks = [k for k in dict.fromkeys(resolve_k(k, k_base) for k in config.k) if k > 0]
    for arm in config.arms:
        if n_real == 0 and arm.needs_real_patients:
            continue  # made from the run's real patients: there are none
        cell.extend(Run(dataset, fold, repeat, arm.name, k, n_real, requested, seed) for k in ks)
    return cell


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/n"`` -> (i, n) with 0 <= i < n; ValueError with the expected form otherwise."""
    index, sep, count = text.partition("/")
    try:
        i, n = int(index), int(count)
    except ValueError:
        raise ValueError(f"--shard must look like i/n (e.g. 0/4), got {text!r}") from None
    if not sep or n < 1 or not 0 <= i < n:
        raise ValueError(f"--shard i/n needs 0 <= i < n, got {text!r}")
    return i, n


def shard(runs: list[Run], index: int, count: int) -> list[Run]:
    """Runs ``index``, ``index + count``, ... of the grid: shards are disjoint, cover the grid, and
    mix cheap and expensive runs evenly because neighbouring runs differ in arm and k."""
    return runs[index::count]


def max_synthetic(runs: list[Run], arm: str) -> int:
    """The largest k any run of ``arm`` needs (0 when it has none)."""
    return max((r.n_synthetic for r in runs if r.arm == arm), default=0)


def describe_grid(runs: list[Run]) -> str:
    """The grid as text: one line per run, then the counts per factor."""
    lines = [f"{'run_id':<40} {'dataset':<12} {'fold':>4} {'rep':>3} {'arm':<14} {'k':>4} {'n':>4} {'seed':>10}"]
    lines += [f"{r.run_id:<40} {r.dataset:<12} {r.fold:>4} {r.repeat:>3} {r.arm:<14} {r.n_synthetic:>4} "
              f"{r.n_real:>4} {r.seed:>10}" for r in runs]
    factors = {"datasets": {r.dataset for r in runs}, "folds": {r.fold for r in runs},
               "repeats": {r.repeat for r in runs}, "arms": {r.arm for r in runs},
               "k values": {r.n_synthetic for r in runs}, "n values": {r.n_real for r in runs}}
    lines.append(f"{len(runs)} runs: " + ", ".join(f"{len(v)} {k}" for k, v in factors.items()))
    return "\n".join(lines)
