"""Rank statistics against published numbers (Demšar 2006), scipy and scikit-posthocs."""
import numpy as np
import pytest
import scikit_posthocs as sp
from scipy import stats as sps

from segmentation.report import stats

# Demšar (2006), Table 5: q_alpha for the Nemenyi test, k = 2 … 10.
Q_005 = [1.960, 2.344, 2.569, 2.728, 2.850, 2.948, 3.031, 3.102, 3.164]
Q_010 = [1.645, 2.052, 2.291, 2.460, 2.589, 2.693, 2.780, 2.855, 2.920]


def random_matrices(seed=0, count=20):
    """Random blocks × conditions matrices of assorted shapes: continuous ones and tied integer ones."""
    rng = np.random.default_rng(seed)
    for index in range(count):
        n_blocks, k = int(rng.integers(4, 25)), int(rng.integers(3, 12))
        if index % 2:
            yield rng.integers(0, 4, size=(n_blocks, k)).astype(float)  # many ties
        else:
            yield rng.normal(size=(n_blocks, k)) + np.linspace(0, 1, k)


@pytest.mark.parametrize("alpha, table", [(0.05, Q_005), (0.10, Q_010)])
def test_q_alpha_matches_demsar_table(alpha, table):
    computed = [stats.nemenyi_q_alpha(k, alpha) for k in range(2, 11)]
    assert np.max(np.abs(np.array(computed) - table)) < 6e-4


def test_critical_difference_worked_examples():
    # Demšar's worked example: k = 4, N = 14, alpha = 0.05 -> CD = 2.569 * sqrt(20 / 84) = 1.25.
    assert round(stats.nemenyi_critical_difference(14, 4, 0.05), 2) == 1.25
    # Vu et al.: 26 models over 18 data sets -> CD ≈ 9.4.
    assert round(stats.nemenyi_critical_difference(18, 26, 0.05), 1) == 9.4
    # Bonferroni–Dunn for k = 4: q_0.05 = z(1 - 0.05/6) = 2.394 (Demšar, Table 5b).
    assert stats.bonferroni_dunn_q_alpha(4, 0.05) == pytest.approx(2.394, abs=6e-4)


def test_ranks_with_ties_by_hand_both_directions():
    scores = np.array([[0.9, 0.8, 0.8, 0.7],
                       [0.5, 0.5, 0.5, 0.6]])
    np.testing.assert_array_equal(stats.rank_scores(scores, higher_is_better=True),
                                  [[1, 2.5, 2.5, 4], [3, 3, 3, 1]])
    np.testing.assert_array_equal(stats.rank_scores(scores, higher_is_better=False),
                                  [[4, 2.5, 2.5, 1], [2, 2, 2, 4]])


def test_friedman_small_tied_case_by_hand():
    # ranks [[1,2,3],[1,2,3],[1.5,1.5,3]]: chi2 = 3 * (123.5/9 - 12) = 31/6 before the tie correction
    # C = 1 - 6 / (3 * 24) = 11/12, so chi2 = 62/11 and F = 2 chi2 / (6 - chi2) = 31.
    scores = np.array([[3.0, 2.0, 1.0], [3.0, 2.0, 1.0], [2.0, 2.0, 1.0]])
    result = stats.friedman_test(stats.rank_scores(scores))
    assert result.chi2 == pytest.approx(62 / 11, abs=1e-12)
    assert result.f == pytest.approx(31.0, abs=1e-9)
    assert (result.df, result.df1, result.df2) == (2, 2, 4)
    assert result.p_f == pytest.approx(sps.f.sf(31.0, 2, 4), abs=1e-12)


def test_friedman_matches_scipy():
    worst = 0.0
    for scores in random_matrices(seed=1):
        ours = stats.friedman_test(stats.rank_scores(scores))
        reference = sps.friedmanchisquare(*scores.T)
        worst = max(worst, abs(ours.chi2 - reference.statistic), abs(ours.p - reference.pvalue))
    assert worst < 1e-12


def test_friedman_4x4_matches_scipy_to_1e12():
    scores = np.random.default_rng(7).random((4, 4))
    ours = stats.friedman_test(stats.rank_scores(scores))
    assert abs(ours.chi2 - sps.friedmanchisquare(*scores.T).statistic) < 1e-12


def test_perfect_agreement_gives_infinite_f():
    scores = np.tile(np.arange(5.0), (6, 1))
    result = stats.friedman_test(stats.rank_scores(scores))
    assert result.chi2 == pytest.approx(6 * 4)
    assert result.f == np.inf and result.p_f == 0.0


def test_nemenyi_pvalues_match_scikit_posthocs():
    worst = 0.0
    for scores in random_matrices(seed=2):
        ours = stats.nemenyi_pvalues(stats.rank_scores(scores))
        reference = sp.posthoc_nemenyi_friedman(scores).to_numpy()
        worst = max(worst, float(np.max(np.abs(ours - reference))))
    assert worst < 1e-12


def test_control_pvalues_match_scikit_posthocs_demsar():
    worst = 0.0
    for scores in random_matrices(seed=3):
        k = scores.shape[1]
        control = int(np.random.default_rng(k).integers(0, k))
        ours = stats.compare_to_control(stats.rank_scores(scores), control)
        reference = sp.posthoc_demsar(scores, control=control).to_numpy()
        others = np.arange(k) != control
        worst = max(worst, float(np.max(np.abs(ours.p[others] - reference[control, others]))))
        # Bonferroni–Dunn: the same p-values times the k - 1 comparisons.
        np.testing.assert_allclose(ours.p_bonferroni[others], np.minimum(1, (k - 1) * ours.p[others]))
    assert worst < 1e-12


def test_holm_adjust_by_hand():
    # sorted 0.005, 0.01, 0.03, 0.04 -> x4, x3, x2, x1 = 0.02, 0.03, 0.06, 0.04 -> running max.
    adjusted = stats.holm_adjust(np.array([0.01, 0.04, 0.03, 0.005]))
    np.testing.assert_allclose(adjusted, [0.03, 0.06, 0.06, 0.02])
    assert stats.holm_adjust(np.array([0.5, 0.9])).max() == 1.0


def test_holm_vs_control_rejects_only_the_planted_difference():
    rng = np.random.default_rng(4)
    scores = rng.normal(size=(30, 5)) * 0.01
    scores[:, 3] += 0.05  # condition 3 is clearly better than the others
    comparison = stats.compare_conditions(scores, control=0)
    assert comparison.friedman.p_f < 0.05
    verdict = comparison.significant_vs_control()
    assert verdict[3] == 1 and verdict[0] == 0
    assert np.all(verdict[[1, 2, 4]] == 0)
    assert np.all(comparison.control.p_holm <= comparison.control.p_bonferroni + 1e-15)


def test_lower_is_better_flips_the_ranking():
    scores = np.array([[1.0, 5.0, 9.0]] * 6) + np.random.default_rng(5).normal(size=(6, 3)) * 0.1
    higher = stats.compare_conditions(scores, control=1, higher_is_better=True)
    lower = stats.compare_conditions(scores, control=1, higher_is_better=False)
    np.testing.assert_allclose(higher.mean_rank, [3, 2, 1])
    np.testing.assert_allclose(lower.mean_rank, [1, 2, 3])
    assert higher.friedman.chi2 == pytest.approx(lower.friedman.chi2)


def test_two_conditions_use_wilcoxon():
    rng = np.random.default_rng(6)
    control_scores = rng.normal(0.7, 0.05, size=12)
    better = control_scores + 0.02 + rng.normal(0, 0.005, size=12)
    comparison = stats.compare_conditions(np.stack([control_scores, better], axis=1), control=0)
    assert comparison.friedman is None
    reference = sps.wilcoxon(better, control_scores)
    assert comparison.wilcoxon.p == pytest.approx(reference.pvalue, abs=1e-12)
    assert comparison.wilcoxon.statistic == reference.statistic
    np.testing.assert_array_equal(comparison.significant_vs_control(), [0, 1])
    # lower-is-better: the same numbers mean condition 1 is worse
    flipped = stats.compare_conditions(np.stack([control_scores, better], axis=1), control=0, higher_is_better=False)
    np.testing.assert_array_equal(flipped.significant_vs_control(), [0, -1])
    with pytest.raises(ValueError, match="k >= 3"):
        stats.friedman_test(comparison.ranks)


def test_wilcoxon_all_zero_differences_is_not_significant():
    result = stats.wilcoxon_signed_rank(np.ones(6), np.ones(6))
    assert result.p == 1.0 and result.signed_rank_sum == 0.0


def test_pairwise_wilcoxon_holm_matches_scipy_then_holm():
    scores = np.random.default_rng(8).normal(size=(15, 4)) + np.array([0.0, 0.2, 0.8, 1.5])
    p, p_holm = stats.pairwise_wilcoxon_holm(scores)
    rows, cols = np.triu_indices(4, 1)
    expected = np.array([sps.wilcoxon(scores[:, i], scores[:, j]).pvalue for i, j in zip(rows, cols)])
    np.testing.assert_allclose(p[rows, cols], expected, atol=1e-12)
    np.testing.assert_allclose(p_holm[rows, cols], stats.holm_adjust(expected), atol=1e-12)
    np.testing.assert_array_equal(p_holm, p_holm.T)
    assert np.all(np.diag(p_holm) == 1)


def test_bad_input_is_rejected_clearly():
    with pytest.raises(ValueError, match="NaN"):
        stats.compare_conditions(np.array([[1.0, np.nan, 2.0], [1.0, 2.0, 3.0]]), control=0)
    with pytest.raises(ValueError, match="2-D"):
        stats.rank_scores(np.zeros(4))
    with pytest.raises(ValueError, match="alpha"):
        stats.nemenyi_q_alpha(4, alpha=1.5)
    with pytest.raises(ValueError, match="control index"):
        stats.compare_to_control(np.ones((3, 3)), control=3)
