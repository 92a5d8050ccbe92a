"""What a study design can detect: the power of the report's primary decision rule, by simulation.

The rule (`segmentation.report.stats.compare_paired_to_control`): for each of m conditions, the exact
two-sided Wilcoxon signed-rank test of its N paired block differences against the baseline, Holm
over the m conditions, reject at alpha.  Its power for one condition whose differences are drawn
from N(effect, 1) -- the effect in units of the between-block standard deviation of the paired
differences -- while the other m - 1 conditions have none, is estimated by simulating exactly that
rule; the minimum detectable effect (MDE) is the smallest effect reaching the target power
(bisection on common random numbers, so the curve is monotone and the answer reproducible).

Multiply the MDE by the observed standard deviation of a condition's paired differences (from a
pilot or the study's own results) to state it in Dice.  A design whose smallest attainable p
(2 / 2^N) is not below alpha / m can never reject anything: `can_reject` says so before any run.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

from segmentation.report.stats import signed_rank_null_distribution, smallest_attainable_p

__all__ = ["DesignPower", "can_reject", "blocks_needed", "simulate_power", "minimum_detectable_effect",
           "describe_design"]

SIMULATIONS = 4000
TARGET_POWER = 0.8
MAX_EFFECT = 20.0  # sd units; beyond this a design is called unable to detect anything


def can_reject(n_blocks: int, n_comparisons: int, alpha: float = 0.05) -> bool:
    """Whether Holm's first step (p < alpha / m) is reachable by the exact test with N blocks."""
    return smallest_attainable_p(n_blocks) < alpha / max(1, n_comparisons)


def blocks_needed(n_comparisons: int, alpha: float = 0.05) -> int:
    """The fewest blocks with which `can_reject` holds for m comparisons."""
    n = 1
    while not can_reject(n, n_comparisons, alpha):
        n += 1
    return n


def _p_value_table(n_blocks: int) -> np.ndarray:
    """Two-sided exact p [N(N+1)/2 + 1] for every value of R+ when the N |d| have no ties."""
    distribution = signed_rank_null_distribution(2 * np.arange(1, n_blocks + 1))[::2]
    lower, upper = np.cumsum(distribution), np.cumsum(distribution[::-1])[::-1]
    return np.minimum(1.0, 2.0 * np.minimum(lower, upper))


def _holm_rejects_first(p: np.ndarray, alpha: float) -> np.ndarray:
    """p [S, m] -> bool [S]: whether Holm's step-down at alpha rejects column 0 in each row."""
    m = p.shape[1]
    order = np.argsort(p, axis=1, kind="stable")
    sorted_p = np.take_along_axis(p, order, axis=1)
    adjusted_sorted = np.maximum.accumulate(np.minimum(1.0, (m - np.arange(m)) * sorted_p), axis=1)
    adjusted = np.empty_like(p)
    np.put_along_axis(adjusted, order, adjusted_sorted, axis=1)
    return adjusted[:, 0] < alpha


class _Simulator:
    """Common random numbers for one design: noise [S, m, N] ~ N(0, 1), reused for every effect."""

    def __init__(self, n_blocks: int, n_comparisons: int, alpha: float, simulations: int, seed: int):
        self.alpha = alpha
        self.noise = np.random.default_rng(seed).standard_normal((simulations, n_comparisons, n_blocks))
        self.p_table = _p_value_table(n_blocks)
        ranks = sps.rankdata(np.abs(self.noise[:, 1:]), axis=2)
        r_plus = np.where(self.noise[:, 1:] > 0, ranks, 0.0).sum(axis=2)
        self.null_p = self.p_table[np.rint(r_plus).astype(np.int64)]  # [S, m - 1]: the null conditions

    def power(self, effect: float) -> float:
        d = self.noise[:, 0] + effect  # [S, N]: the shifted condition
        ranks = sps.rankdata(np.abs(d), axis=1)
        r_plus = np.where(d > 0, ranks, 0.0).sum(axis=1)
        p = np.concatenate([self.p_table[np.rint(r_plus).astype(np.int64)][:, None], self.null_p], axis=1)
        return float(_holm_rejects_first(p, self.alpha).mean())


def simulate_power(n_blocks: int, n_comparisons: int, effect: float, alpha: float = 0.05,
                   simulations: int = SIMULATIONS, seed: int = 0) -> float:
    """Probability that the primary rule declares a condition with paired differences ~ N(effect, 1)
    different from the baseline (effect in sd units), m - 1 other conditions being null."""
    if n_blocks < 1 or n_comparisons < 1:
        raise ValueError(f"need n_blocks >= 1 and n_comparisons >= 1, got {n_blocks}, {n_comparisons}")
    return _Simulator(n_blocks, n_comparisons, alpha, simulations, seed).power(effect)


def minimum_detectable_effect(n_blocks: int, n_comparisons: int, alpha: float = 0.05, power: float = TARGET_POWER,
                              simulations: int = SIMULATIONS, seed: int = 0) -> float:
    """The smallest effect (sd units of the paired differences) detected with ``power``; inf when
    the design cannot reject at all (`can_reject`) or needs more than `MAX_EFFECT`."""
    if not can_reject(n_blocks, n_comparisons, alpha):
        return math.inf
    simulator = _Simulator(n_blocks, n_comparisons, alpha, simulations, seed)
    if simulator.power(MAX_EFFECT) < power:
        return math.inf
    low, high = 0.0, MAX_EFFECT
    while high - low > 0.005:
        middle = (low + high) / 2
        low, high = (low, middle) if simulator.power(middle) >= power else (middle, high)
    return high


@dataclass(frozen=True)
class DesignPower:
    """What a design (N blocks, m comparisons with the baseline, alpha) can detect."""

    n_blocks: int
    n_comparisons: int
    alpha: float
    power: float
    mde_sd: float           # minimum detectable effect, sd units of the paired differences (inf: none)

    @property
    def smallest_p(self) -> float:
        return smallest_attainable_p(self.n_blocks)

    @property
    def can_reject(self) -> bool:
        return can_reject(self.n_blocks, self.n_comparisons, self.alpha)


def describe_design(n_blocks: int, n_comparisons: int, alpha: float = 0.05, power: float = TARGET_POWER
                    ) -> DesignPower:
    """The `DesignPower` of a design (its MDE simulated)."""
    return DesignPower(n_blocks, n_comparisons, alpha, power,
                       minimum_detectable_effect(n_blocks, n_comparisons, alpha, power))
