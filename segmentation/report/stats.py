"""Rank statistics for comparing k conditions over N blocks (Demšar 2006, JMLR 7).

Everything here is a pure function of a score matrix `scores [N, k]`: row = block (an independent
unit such as a dataset × fold), column = condition (a training arm such as "pair, 50 synthetic
patients"). Ranks are taken within each block, 1 = best, ties share their average rank; whether a
high score is good (Dice) or bad (HD95) is an explicit argument.

The formulas are the ones in Demšar's paper:

    Friedman          chi2_F = 12 N / (k (k + 1)) * [sum_j R_j^2 - k (k + 1)^2 / 4],  df = k - 1
    Iman–Davenport    F_F = (N - 1) chi2_F / (N (k - 1) - chi2_F),  df = (k - 1, (k - 1)(N - 1))
    Nemenyi           CD = q_alpha * sqrt(k (k + 1) / (6 N)),  q_alpha = q_range(1 - alpha; k, inf) / sqrt 2
    vs one control    z = (R_i - R_c) / sqrt(k (k + 1) / (6 N)), Bonferroni–Dunn or Holm step-down

The Friedman statistic is divided by the usual tie correction 1 - sum(t^3 - t) / (N (k^3 - k))
(as R's friedman.test and scipy do); without ties that factor is exactly 1.

Mean ranks make each condition's result depend on every other condition in the matrix: adding
unrelated arms moves the rank scale.  The study's primary verdict is therefore the paired design
(Benavoli et al. 2016): each condition against the baseline alone,

    d_b = score_b(condition) - score_b(baseline) for every block b
    exact Wilcoxon signed-rank test of the d_b (the sign-flip distribution, ties and all), two-sided
    Holm over the k - 1 conditions; effect size = median d_b with a percentile bootstrap CI over blocks

and the rank statistics above stay the paper's all-condition ranking (descriptive next to it).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

__all__ = [
    "FriedmanResult",
    "ControlComparison",
    "WilcoxonResult",
    "Comparison",
    "rank_scores",
    "mean_ranks",
    "rank_standard_error",
    "friedman_test",
    "iman_davenport",
    "nemenyi_q_alpha",
    "nemenyi_critical_difference",
    "nemenyi_pvalues",
    "bonferroni_dunn_q_alpha",
    "bonferroni_dunn_critical_difference",
    "holm_adjust",
    "compare_to_control",
    "wilcoxon_signed_rank",
    "pairwise_wilcoxon_holm",
    "compare_conditions",
    "signed_rank_null_distribution",
    "exact_signed_rank_test",
    "smallest_attainable_p",
    "PairedComparison",
    "paired_differences",
    "compare_paired_to_control",
]


def _check_scores(scores: np.ndarray, min_conditions: int = 2) -> np.ndarray:
    """Validate a score matrix [N, k]: 2-D, finite or +-inf (never NaN), N >= 2, k >= min_conditions."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2:
        raise ValueError(f"scores must be a 2-D blocks x conditions matrix, got shape {scores.shape}")
    n_blocks, n_conditions = scores.shape
    if n_conditions < min_conditions:
        raise ValueError(f"need at least {min_conditions} conditions (columns), got {n_conditions}")
    if n_blocks < 2:
        raise ValueError(f"need at least 2 blocks (rows), got {n_blocks}")
    if np.isnan(scores).any():
        rows = sorted(set(np.nonzero(np.isnan(scores))[0].tolist()))
        raise ValueError(f"scores contain NaN in block rows {rows}; drop incomplete blocks first")
    return scores


def rank_scores(scores: np.ndarray, higher_is_better: bool = True) -> np.ndarray:
    """Rank conditions within each block.

    Args:
        scores: [N, k] float, one row per block, one column per condition; no NaN (+-inf allowed).
        higher_is_better: True for Dice-like scores, False for distances such as HD95.

    Returns:
        ranks [N, k] float in [1, k]; 1 = best in that block, tied scores share their average rank,
        so every row sums to k (k + 1) / 2.
    """
    scores = _check_scores(scores, min_conditions=1)
    oriented = -scores if higher_is_better else scores
    ranks = sps.rankdata(oriented, method="average", axis=1)
    assert ranks.shape == scores.shape
    return ranks


def mean_ranks(ranks: np.ndarray) -> np.ndarray:
    """Mean rank R_j of each condition over blocks: ranks [N, k] -> [k] in [1, k]."""
    ranks = np.asarray(ranks, dtype=np.float64)
    if ranks.ndim != 2:
        raise ValueError(f"ranks must be [N, k], got shape {ranks.shape}")
    return ranks.mean(axis=0)


def rank_standard_error(n_blocks: int, n_conditions: int) -> float:
    """Standard error of a difference of two mean ranks under H0: sqrt(k (k + 1) / (6 N))."""
    if n_blocks < 1 or n_conditions < 2:
        raise ValueError(f"need N >= 1 and k >= 2, got N={n_blocks}, k={n_conditions}")
    return float(np.sqrt(n_conditions * (n_conditions + 1) / (6.0 * n_blocks)))


@dataclass(frozen=True)
class FriedmanResult:
    """Omnibus tests of 'all k conditions are equivalent' over N blocks.

    chi2 (Friedman, tie-corrected) with df = k - 1 and p-value p; Iman–Davenport's F with
    (df1, df2) = (k - 1, (k - 1)(N - 1)) and p-value p_f (Demšar's preferred, less conservative form).
    """

    n_blocks: int
    n_conditions: int
    chi2: float
    df: int
    p: float
    f: float
    df1: int
    df2: int
    p_f: float


def friedman_test(ranks: np.ndarray) -> FriedmanResult:
    """Friedman chi-square and Iman–Davenport F from within-block ranks [N, k] (k >= 3).

    Demšar's formula divided by the tie correction C = 1 - sum over blocks and tie groups of
    (t^3 - t) / (N (k^3 - k)); C = 1 without ties.
    """
    ranks = np.asarray(ranks, dtype=np.float64)
    if ranks.ndim != 2:
        raise ValueError(f"ranks must be [N, k], got shape {ranks.shape}")
    n_blocks, k = ranks.shape
    if k < 3:
        raise ValueError(f"the Friedman test needs k >= 3 conditions, got k={k}; "
                         "use wilcoxon_signed_rank for two conditions")
    if n_blocks < 2:
        raise ValueError(f"the Friedman test needs at least 2 blocks, got {n_blocks}")
    r = mean_ranks(ranks)
    chi2_uncorrected = 12.0 * n_blocks / (k * (k + 1)) * (np.sum(r**2) - k * (k + 1) ** 2 / 4.0)
    tie_sum = 0.0
    for row in ranks:
        _, counts = np.unique(row, return_counts=True)
        tie_sum += float(np.sum(counts.astype(np.float64) ** 3 - counts))
    correction = 1.0 - tie_sum / (n_blocks * (k**3 - k))
    # All conditions tied in every block: no evidence of any difference.
    chi2 = float(chi2_uncorrected / correction) if correction > 0 else 0.0
    df = k - 1
    p = float(sps.chi2.sf(chi2, df))
    f, df1, df2, p_f = iman_davenport(chi2, n_blocks, k)
    return FriedmanResult(n_blocks=n_blocks, n_conditions=k, chi2=chi2, df=df, p=p,
                          f=f, df1=df1, df2=df2, p_f=p_f)


def iman_davenport(chi2: float, n_blocks: int, n_conditions: int) -> tuple[float, int, int, float]:
    """Iman–Davenport F_F = (N - 1) chi2 / (N (k - 1) - chi2) -> (F, df1, df2, p).

    chi2 reaches its maximum N (k - 1) when every block ranks the conditions identically; F is then
    infinite and p = 0.
    """
    k = n_conditions
    df1, df2 = k - 1, (k - 1) * (n_blocks - 1)
    denominator = n_blocks * (k - 1) - chi2
    if denominator <= 1e-12 * max(1.0, n_blocks * (k - 1)):
        return float("inf"), df1, df2, 0.0
    f = (n_blocks - 1) * chi2 / denominator
    return float(f), df1, df2, float(sps.f.sf(f, df1, df2))


def nemenyi_q_alpha(n_conditions: int, alpha: float = 0.05) -> float:
    """Nemenyi's q_alpha = studentized range quantile (1 - alpha; k, inf) / sqrt(2).

    k = 4, alpha = 0.05 -> 2.569 (Demšar's table).
    """
    if n_conditions < 2:
        raise ValueError(f"q_alpha needs k >= 2, got {n_conditions}")
    _check_alpha(alpha)
    return float(sps.studentized_range.ppf(1.0 - alpha, n_conditions, np.inf) / np.sqrt(2.0))


def nemenyi_critical_difference(n_blocks: int, n_conditions: int, alpha: float = 0.05) -> float:
    """Critical difference of mean ranks, CD = q_alpha sqrt(k (k + 1) / (6 N)).

    k = 4, N = 14, alpha = 0.05 -> 1.25 (Demšar's worked example).
    """
    return nemenyi_q_alpha(n_conditions, alpha) * rank_standard_error(n_blocks, n_conditions)


def nemenyi_pvalues(ranks: np.ndarray) -> np.ndarray:
    """All pairwise Nemenyi p-values from ranks [N, k] -> [k, k] in [0, 1], diagonal 1, symmetric.

    p_ij = P(studentized range(k, inf) > sqrt(2) |R_i - R_j| / sqrt(k (k + 1) / (6 N))); the family
    of all k (k - 1) / 2 comparisons is protected by construction, no further adjustment.
    """
    ranks = np.asarray(ranks, dtype=np.float64)
    n_blocks, k = ranks.shape
    r = mean_ranks(ranks)
    q = np.abs(r[:, None] - r[None, :]) / rank_standard_error(n_blocks, k)
    p = sps.studentized_range.sf(q * np.sqrt(2.0), k, np.inf)
    p = np.clip(p, 0.0, 1.0)
    np.fill_diagonal(p, 1.0)
    assert p.shape == (k, k)
    return p


def bonferroni_dunn_q_alpha(n_conditions: int, alpha: float = 0.05) -> float:
    """Bonferroni–Dunn's q_alpha = z_{1 - alpha / (2 (k - 1))} for k - 1 comparisons with a control."""
    if n_conditions < 2:
        raise ValueError(f"q_alpha needs k >= 2, got {n_conditions}")
    _check_alpha(alpha)
    return float(sps.norm.ppf(1.0 - alpha / (2.0 * (n_conditions - 1))))


def bonferroni_dunn_critical_difference(n_blocks: int, n_conditions: int, alpha: float = 0.05) -> float:
    """Critical difference against one control: z_{1 - alpha / (2 (k - 1))} sqrt(k (k + 1) / (6 N))."""
    return bonferroni_dunn_q_alpha(n_conditions, alpha) * rank_standard_error(n_blocks, n_conditions)


def holm_adjust(pvalues: np.ndarray) -> np.ndarray:
    """Holm's step-down adjusted p-values [m] -> [m] in [0, 1].

    Sorted ascending p_(1) <= ... <= p_(m): adjusted p_(i) = max_{j <= i} min(1, (m - j + 1) p_(j)).
    Rejecting where adjusted p < alpha is exactly Holm's procedure at level alpha.
    """
    p = np.asarray(pvalues, dtype=np.float64)
    if p.ndim != 1:
        raise ValueError(f"p-values must be 1-D, got shape {p.shape}")
    m = p.size
    if m == 0:
        return p.copy()
    order = np.argsort(p, kind="stable")
    scaled = np.minimum(1.0, (m - np.arange(m)) * p[order])
    adjusted_sorted = np.maximum.accumulate(scaled)
    adjusted = np.empty(m)
    adjusted[order] = adjusted_sorted
    return adjusted


@dataclass(frozen=True)
class ControlComparison:
    """Each condition against one control (the baseline), from mean ranks.

    Arrays are [k] in condition order; the control's own entries are rank_difference 0, z 0, p 1.
    rank_difference = R_i - R_control (negative: condition i ranks better than the control).
    p: unadjusted two-sided normal p-value of z; p_bonferroni = min(1, (k - 1) p) (Bonferroni–Dunn);
    p_holm: Holm step-down over the k - 1 comparisons. cd_bonferroni_dunn is the matching critical
    difference of mean ranks.
    """

    control: int
    rank_difference: np.ndarray
    z: np.ndarray
    p: np.ndarray
    p_bonferroni: np.ndarray
    p_holm: np.ndarray
    cd_bonferroni_dunn: float


def compare_to_control(ranks: np.ndarray, control: int, alpha: float = 0.05) -> ControlComparison:
    """Bonferroni–Dunn and Holm tests of every condition against `control` (a column index).

    z_i = (R_i - R_c) / sqrt(k (k + 1) / (6 N)), p_i = 2 (1 - Phi(|z_i|)) (Demšar 2006, §3.2.2).
    """
    ranks = np.asarray(ranks, dtype=np.float64)
    n_blocks, k = ranks.shape
    if not 0 <= control < k:
        raise ValueError(f"control index {control} out of range for {k} conditions")
    r = mean_ranks(ranks)
    difference = r - r[control]
    z = difference / rank_standard_error(n_blocks, k)
    p = 2.0 * sps.norm.sf(np.abs(z))
    others = np.arange(k) != control
    p_bonferroni = np.ones(k)
    p_bonferroni[others] = np.minimum(1.0, (k - 1) * p[others])
    p_holm = np.ones(k)
    p_holm[others] = holm_adjust(p[others])
    p[control] = 1.0
    return ControlComparison(
        control=control, rank_difference=difference, z=z, p=p, p_bonferroni=p_bonferroni,
        p_holm=p_holm, cd_bonferroni_dunn=bonferroni_dunn_critical_difference(n_blocks, k, alpha))


@dataclass(frozen=True)
class WilcoxonResult:
    """Wilcoxon signed-rank test of paired scores a vs b over N blocks.

    statistic: scipy's W (the smaller of the signed-rank sums, two-sided); p: two-sided p-value
    (1.0 when all differences are zero); signed_rank_sum: R+ - R- of the non-zero differences a - b
    (positive: a tends to be larger); median_difference: median of a - b.
    """

    statistic: float
    p: float
    signed_rank_sum: float
    median_difference: float
    n_blocks: int


def wilcoxon_signed_rank(a: np.ndarray, b: np.ndarray) -> WilcoxonResult:
    """Two-sided Wilcoxon signed-rank test of paired per-block scores a [N] vs b [N].

    Zero differences are dropped (Wilcoxon's convention); the test for k = 2 conditions, where the
    Friedman test does not apply. Exact p-values for small N without ties (scipy's 'auto').
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired scores must be two 1-D arrays of equal length, got {a.shape} and {b.shape}")
    if np.isnan(a).any() or np.isnan(b).any():
        raise ValueError("paired scores contain NaN; drop incomplete blocks first")
    difference = a - b
    median = float(np.median(difference))
    if np.all(difference == 0):
        return WilcoxonResult(statistic=0.0, p=1.0, signed_rank_sum=0.0, median_difference=median,
                              n_blocks=a.size)
    nonzero = difference[difference != 0]
    signed_rank_sum = float(np.sum(np.sign(nonzero) * sps.rankdata(np.abs(nonzero))))
    result = sps.wilcoxon(a, b, zero_method="wilcox", alternative="two-sided")
    return WilcoxonResult(statistic=float(result.statistic), p=float(result.pvalue),
                          signed_rank_sum=signed_rank_sum, median_difference=median, n_blocks=a.size)


def pairwise_wilcoxon_holm(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Wilcoxon signed-rank test for every pair of conditions, Holm-corrected (Benavoli et al. 2016).

    Args:
        scores: [N, k] per-block scores (the direction does not matter: the test is two-sided).

    Returns:
        (p, p_holm): two [k, k] symmetric matrices with diagonal 1; p unadjusted, p_holm adjusted
        over all k (k - 1) / 2 pairs at once.
    """
    scores = _check_scores(scores)
    k = scores.shape[1]
    rows, cols = np.triu_indices(k, 1)
    p_pairs = np.array([wilcoxon_signed_rank(scores[:, i], scores[:, j]).p for i, j in zip(rows, cols)])
    p = np.ones((k, k))
    p_holm = np.ones((k, k))
    p[rows, cols] = p[cols, rows] = p_pairs
    adjusted = holm_adjust(p_pairs)
    p_holm[rows, cols] = p_holm[cols, rows] = adjusted
    return p, p_holm


@dataclass(frozen=True)
class Comparison:
    """Everything the report states about k conditions over N complete blocks.

    ranks [N, k]; mean_rank [k]; friedman is None when k = 2 (then `wilcoxon` holds the test of the
    two conditions); nemenyi_p [k, k]; cd_nemenyi; control: tests of each condition vs the baseline;
    pairwise_wilcoxon_p / _holm [k, k] only when requested.
    """

    alpha: float
    higher_is_better: bool
    ranks: np.ndarray
    mean_rank: np.ndarray
    friedman: FriedmanResult | None
    wilcoxon: WilcoxonResult | None
    cd_nemenyi: float
    nemenyi_p: np.ndarray
    control: ControlComparison
    pairwise_wilcoxon_p: np.ndarray | None
    pairwise_wilcoxon_p_holm: np.ndarray | None

    @property
    def omnibus_p(self) -> float:
        """p-value of the omnibus test: Iman–Davenport for k >= 3, Wilcoxon for k = 2."""
        if self.friedman is not None:
            return self.friedman.p_f
        assert self.wilcoxon is not None
        return self.wilcoxon.p

    def significant_vs_control(self) -> np.ndarray:
        """[k] int in {+1, 0, -1}: significantly better / no evidence / significantly worse than the
        baseline at level alpha.

        k >= 3: Holm's step-down on the rank z-statistics, applied only when the omnibus
        Iman–Davenport test rejects (Demšar's protocol: post-hoc tests follow a significant omnibus
        test); direction from the mean ranks. k = 2: the Wilcoxon signed-rank test, direction from
        its signed-rank sum.
        """
        k = self.mean_rank.size
        verdict = np.zeros(k, dtype=int)
        if self.omnibus_p >= self.alpha:
            return verdict
        if self.friedman is not None:
            p = self.control.p_holm
            better = self.control.rank_difference < 0
        else:
            assert self.wilcoxon is not None
            p = np.where(np.arange(k) == self.control.control, 1.0, self.wilcoxon.p)
            # the Wilcoxon test ran on (other - control); positive sums favour `other` when high is good
            oriented = self.wilcoxon.signed_rank_sum * (1.0 if self.higher_is_better else -1.0)
            better = np.full(k, oriented > 0)
        significant = p < self.alpha
        verdict[significant & better] = 1
        verdict[significant & ~better] = -1
        return verdict


def compare_conditions(scores: np.ndarray, control: int, alpha: float = 0.05,
                       higher_is_better: bool = True, pairwise_wilcoxon: bool = False) -> Comparison:
    """Run every test of the report on a complete score matrix.

    Args:
        scores: [N, k] per-block scores, N >= 2 complete blocks, k >= 2 conditions, no NaN.
        control: column index of the baseline condition.
        alpha: significance level in (0, 1).
        higher_is_better: score direction (False for HD95 and other distances).
        pairwise_wilcoxon: also run the Holm-corrected Wilcoxon test of every pair.
    """
    scores = _check_scores(scores)
    _check_alpha(alpha)
    n_blocks, k = scores.shape
    ranks = rank_scores(scores, higher_is_better)
    friedman = friedman_test(ranks) if k >= 3 else None
    wilcoxon = None
    if k == 2:
        other = 1 - control
        wilcoxon = wilcoxon_signed_rank(scores[:, other], scores[:, control])
    p_pairs = p_pairs_holm = None
    if pairwise_wilcoxon:
        p_pairs, p_pairs_holm = pairwise_wilcoxon_holm(scores)
    return Comparison(
        alpha=alpha, higher_is_better=higher_is_better, ranks=ranks, mean_rank=mean_ranks(ranks),
        friedman=friedman, wilcoxon=wilcoxon,
        cd_nemenyi=nemenyi_critical_difference(n_blocks, k, alpha), nemenyi_p=nemenyi_pvalues(ranks),
        control=compare_to_control(ranks, control, alpha),
        pairwise_wilcoxon_p=p_pairs, pairwise_wilcoxon_p_holm=p_pairs_holm)


def _check_alpha(alpha: float) -> None:
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}")


# ---------------------------------------------------------------------------------------------
# The paired design: each condition against the baseline, on the blocks, with no other condition


def signed_rank_null_distribution(doubled_ranks: np.ndarray) -> np.ndarray:
    """Exact null distribution of the doubled signed-rank sum T2 = sum of 2 * rank over positive d.

    Args:
        doubled_ranks: int [n] = 2 x the (average, so possibly half-integer) ranks of |d|.

    Returns:
        probabilities float64 [sum(doubled_ranks) + 1]: P(T2 = t) when every sign is +/- with
        probability 1/2 independently (the permutation distribution, exact also with ties).
    """
    ranks = np.asarray(doubled_ranks, dtype=np.int64)
    total = int(ranks.sum())
    distribution = np.zeros(total + 1)
    distribution[0] = 1.0
    for r in ranks:  # adding one rank: T2 keeps its value (sign -) or grows by r (sign +)
        shifted = np.zeros_like(distribution)
        shifted[r:] = distribution[:total + 1 - r]
        distribution = 0.5 * (distribution + shifted)
    return distribution


EXACT_SIGNED_RANK_MAX_N = 400  # above this the normal approximation (tie-corrected) is used


def exact_signed_rank_test(differences: np.ndarray) -> tuple[float, float]:
    """Two-sided Wilcoxon signed-rank test of paired differences d [N] -> (R+ - R-, p).

    Zero differences are dropped (Wilcoxon's convention); ties among |d| get average ranks and the
    p-value comes from their exact sign-flip distribution (`signed_rank_null_distribution`), so it
    is exact for every N up to `EXACT_SIGNED_RANK_MAX_N` whatever the ties.  p = 1 when every
    difference is zero; R+ - R- > 0 means the differences tend to be positive.
    """
    d = np.asarray(differences, dtype=np.float64)
    if d.ndim != 1 or np.isnan(d).any():
        raise ValueError(f"differences must be a 1-D array without NaN, got shape {d.shape}")
    d = d[d != 0]
    if d.size == 0:
        return 0.0, 1.0
    ranks = sps.rankdata(np.abs(d))
    signed_sum = float(np.sum(np.sign(d) * ranks))
    if d.size > EXACT_SIGNED_RANK_MAX_N:
        _, counts = np.unique(ranks, return_counts=True)
        variance = d.size * (d.size + 1) * (2 * d.size + 1) / 6.0 - float(np.sum(counts ** 3 - counts)) / 12.0
        z = (float(ranks[d > 0].sum()) - d.size * (d.size + 1) / 4.0) / np.sqrt(variance)
        return signed_sum, float(min(1.0, 2.0 * sps.norm.sf(abs(z))))
    doubled = np.rint(2 * ranks).astype(np.int64)
    distribution = signed_rank_null_distribution(doubled)
    observed = int(doubled[d > 0].sum())
    lower, upper = distribution[:observed + 1].sum(), distribution[observed:].sum()
    return signed_sum, float(min(1.0, 2.0 * min(lower, upper)))


def smallest_attainable_p(n_blocks: int) -> float:
    """The smallest two-sided p the exact signed-rank test can give with n_blocks pairs: 2 / 2^N
    (every difference of one sign).  N = 5 -> 0.0625: such a design can never reject at 0.05."""
    if n_blocks < 1:
        return 1.0
    return min(1.0, 2.0 ** (1 - n_blocks))


BOOTSTRAP_RESAMPLES = 4000


@dataclass(frozen=True)
class PairedComparison:
    """Each condition against the baseline (column `control`) by a test of those two alone.

    Arrays are [k] in condition order; the control's own entries are difference 0, p 1.
    difference: median over blocks of d = score(condition) - score(baseline) (raw score units);
    ci_low / ci_high: percentile bootstrap interval (level `confidence`) of that median, resampling
    blocks; difference_sd: standard deviation of d over blocks (the spread the power is stated in);
    signed_rank_sum: R+ - R- of d; p: exact two-sided Wilcoxon signed-rank p; p_holm: Holm over the
    k - 1 conditions.
    """

    control: int
    n_blocks: int
    alpha: float
    higher_is_better: bool
    confidence: float
    difference: np.ndarray
    ci_low: np.ndarray
    ci_high: np.ndarray
    difference_sd: np.ndarray
    signed_rank_sum: np.ndarray
    p: np.ndarray
    p_holm: np.ndarray

    @property
    def smallest_p(self) -> float:
        """The smallest p the design can reach (`smallest_attainable_p` of the block count)."""
        return smallest_attainable_p(self.n_blocks)

    def verdict(self) -> np.ndarray:
        """[k] int in {+1, 0, -1}: significantly better / no evidence / significantly worse than the
        baseline (Holm-adjusted exact Wilcoxon p < alpha; direction from the signed-rank sum and
        the score direction)."""
        oriented = self.signed_rank_sum * (1.0 if self.higher_is_better else -1.0)
        significant = self.p_holm < self.alpha
        verdict = np.zeros(self.p.size, dtype=int)
        verdict[significant & (oriented > 0)] = 1
        verdict[significant & (oriented < 0)] = -1
        verdict[self.control] = 0
        return verdict


def paired_differences(scores: np.ndarray, control: int) -> np.ndarray:
    """d [N, k] = scores[:, j] - scores[:, control]; equal scores (also two infinite HD95s) give 0."""
    scores = np.asarray(scores, dtype=np.float64)
    base = scores[:, [control]]
    with np.errstate(invalid="ignore"):
        return np.where(scores == base, 0.0, scores - base)


def _bootstrap_median_interval(d: np.ndarray, confidence: float, rng: np.random.Generator
                               ) -> tuple[float, float]:
    """Percentile bootstrap interval of median(d) resampling the N blocks with replacement."""
    resampled = d[rng.integers(0, d.size, size=(BOOTSTRAP_RESAMPLES, d.size))]
    medians = np.median(resampled, axis=1)
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(medians, [tail, 1.0 - tail])
    return float(low), float(high)


def compare_paired_to_control(scores: np.ndarray, control: int, alpha: float = 0.05,
                              higher_is_better: bool = True, confidence: float = 0.95,
                              seed: int = 0) -> PairedComparison:
    """The primary verdict of every condition against the baseline (see the module docstring).

    Args:
        scores: [N, k] per-block scores, complete (no NaN; +-inf allowed, e.g. HD95 of a miss).
        control: column of the baseline; alpha: level of the Holm-adjusted tests; confidence:
        level of the bootstrap interval (resampling seeded by ``seed``: reports are reproducible).

    Condition j's p-value, effect size and interval use only columns j and ``control``; only Holm's
    correction knows how many conditions there are.
    """
    scores = _check_scores(scores)
    _check_alpha(alpha)
    n_blocks, k = scores.shape
    if not 0 <= control < k:
        raise ValueError(f"control index {control} out of range for {k} conditions")
    d_all = paired_differences(scores, control)
    rng = np.random.default_rng(seed)
    difference, low, high, sd = np.zeros(k), np.zeros(k), np.zeros(k), np.zeros(k)
    signed, p = np.zeros(k), np.ones(k)
    for j in range(k):
        if j == control:
            continue
        d = d_all[:, j]
        difference[j] = float(np.median(d))
        low[j], high[j] = _bootstrap_median_interval(d, confidence, rng)
        with np.errstate(invalid="ignore"):
            sd[j] = float(np.std(d, ddof=1))
        signed[j], p[j] = exact_signed_rank_test(d)
    others = np.arange(k) != control
    p_holm = np.ones(k)
    p_holm[others] = holm_adjust(p[others])
    return PairedComparison(control=control, n_blocks=n_blocks, alpha=alpha, higher_is_better=higher_is_better,
                            confidence=confidence, difference=difference, ci_low=low, ci_high=high,
                            difference_sd=sd, signed_rank_sum=signed, p=p, p_holm=p_holm)
