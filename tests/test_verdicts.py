"""The study's verdict: the exact paired test, its independence of other arms, its calibration under
the null, its stated power (against a closed form), and the built-in controls in the report."""
import csv
import itertools

import numpy as np
import pytest
from scipy import stats as sps

from segmentation.report import power, stats
from segmentation.report.cli_report import main as report_main
from segmentation.report.score_table import ScoreTableConfig, build_score_table, drop_incomplete_blocks

COLUMNS = ["dataset", "fold", "repeat", "arm", "source", "n_synthetic", "case", "class", "dice"]


def brute_force_signed_rank_p(d):
    """Two-sided p by enumerating all 2^n sign flips of the average ranks (zeros dropped)."""
    d = np.asarray(d, float)
    d = d[d != 0]
    ranks = sps.rankdata(np.abs(d))
    observed = ranks[d > 0].sum()
    sums = np.array([sum(r for r, s in zip(ranks, signs) if s) for signs in itertools.product([0, 1], repeat=d.size)])
    return min(1.0, 2 * min(np.mean(sums <= observed + 1e-9), np.mean(sums >= observed - 1e-9)))


def test_exact_signed_rank_matches_scipy_without_ties_and_enumeration_with_ties():
    rng = np.random.default_rng(0)
    for n in (3, 6, 9, 12):
        d = rng.normal(size=n)
        assert stats.exact_signed_rank_test(d)[1] == pytest.approx(sps.wilcoxon(d, method="exact").pvalue, abs=1e-12)
    for _ in range(10):
        d = rng.integers(-3, 4, size=int(rng.integers(4, 11))).astype(float)  # ties and zeros
        assert stats.exact_signed_rank_test(d)[1] == pytest.approx(brute_force_signed_rank_p(d), abs=1e-12)
    assert stats.exact_signed_rank_test(np.zeros(5)) == (0.0, 1.0)
    assert stats.exact_signed_rank_test(np.ones(5))[1] == stats.smallest_attainable_p(5) == 0.0625


def test_power_simulation_matches_the_closed_form_of_six_blocks():
    # N = 6, one comparison: only "all six differences of one sign" (p = 2/64) rejects at 0.05,
    # so the power is Phi(delta)^6 + Phi(-delta)^6 exactly.
    for delta in (0.0, 0.5, 1.0, 2.0):
        expected = sps.norm.cdf(delta) ** 6 + sps.norm.cdf(-delta) ** 6
        assert power.simulate_power(6, 1, delta, simulations=20000, seed=1) == pytest.approx(expected, abs=0.012)


def test_minimum_detectable_effect_and_designs_that_cannot_reject():
    assert not power.can_reject(5, 1) and power.minimum_detectable_effect(5, 1) == np.inf
    assert power.blocks_needed(1) == 6 and power.blocks_needed(16) == 10
    mde_10, mde_20 = power.minimum_detectable_effect(10, 4), power.minimum_detectable_effect(20, 4)
    assert np.isfinite(mde_10) and mde_20 < mde_10  # more blocks detect smaller effects
    assert power.simulate_power(10, 4, mde_10) >= 0.8 > power.simulate_power(10, 4, mde_10 - 0.05)
    assert power.minimum_detectable_effect(10, 15) > mde_10  # more comparisons cost power (Holm)


def test_two_conditions_that_differ_only_by_seed_are_called_different_at_most_alpha_of_the_time():
    # Independent blocks (what the study's block seeds give): block effect + independent run noise
    # for two conditions with no true difference; the paired verdict's false-claim rate stays <= alpha.
    rng = np.random.default_rng(3)
    claims = 0
    replications = 1000
    for _ in range(replications):
        block = rng.normal(0.6, 0.1, size=(10, 1))
        scores = block + rng.normal(0.0, 0.03, size=(10, 3))  # baseline + two seed-only "arms"
        claims += int(np.any(stats.compare_paired_to_control(scores, control=0).verdict() != 0))
    assert claims / replications <= 0.05 + 3 * np.sqrt(0.05 * 0.95 / replications)


def test_a_condition_s_verdict_does_not_depend_on_unrelated_arms():
    rng = np.random.default_rng(4)
    block = rng.normal(0.6, 0.1, size=(12, 1))
    base, oracle = block + rng.normal(0, 0.01, (12, 1)), block + 0.05 + rng.normal(0, 0.01, (12, 1))
    unrelated = block + rng.normal(0.0, 0.2, size=(12, 14))  # noisy arms that reshuffle every mean rank
    small = stats.compare_paired_to_control(np.hstack([base, oracle]), control=0)
    large = stats.compare_paired_to_control(np.hstack([base, oracle, unrelated]), control=0)
    assert small.p[1] == large.p[1] and small.difference[1] == large.difference[1]
    assert (small.ci_low[1], small.ci_high[1]) == (large.ci_low[1], large.ci_high[1])
    assert small.verdict()[1] == large.verdict()[1] == 1
    # the rank-based verdict of the same condition moves with the other arms
    ranks_small = stats.compare_conditions(np.hstack([base, oracle, unrelated[:, :1]]), control=0)
    ranks_large = stats.compare_conditions(np.hstack([base, oracle, unrelated]), control=0)
    assert ranks_small.control.p_holm[1] != ranks_large.control.p_holm[1]


def write_cases(path, effects, n_blocks=10, seed=0):
    """cases.csv with a real baseline and arms {name: (source, k, effect)} over n_blocks blocks."""
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(COLUMNS)
        for b in range(n_blocks):
            level = rng.normal(0.6, 0.05)
            for arm, (source, k, effect) in {"real": ("real", 0, 0.0), **effects}.items():
                for case in range(3):
                    value = level + effect + rng.normal(0, 0.01)
                    writer.writerow(["d", b % 5, b // 5, arm, source, k, f"c{case}", "core", f"{value:.5f}"])
    return path


def test_report_checks_the_controls_and_warns_when_they_misbehave(tmp_path):
    good = write_cases(tmp_path / "good" / "cases.csv", {
        "oracle": ("control:oracle", 8, 0.1), "noise": ("control:noise", 8, -0.1),
        "shuffled": ("control:shuffled", 8, -0.05), "pair": ("folder:x", 8, 0.0)}).parent
    assert report_main([str(good), "--class", "core", "--no-plots"]) == 0
    report = (good / "report" / "report.md").read_text()
    assert "Controls behaved as expected: noise +8 not better, oracle +8 better, shuffled +8 not better" in report
    assert "Blocks (dataset, fold, repeat): 10 complete of 10" in report  # repeats are blocks
    assert "*(control: oracle)*" in report and "WARNING" not in report
    bad = write_cases(tmp_path / "bad" / "cases.csv", {
        "oracle": ("control:oracle", 8, 0.0), "noise": ("control:noise", 8, 0.1)}).parent
    assert report_main([str(bad), "--class", "core", "--no-plots"]) == 0
    report = (bad / "report" / "report.md").read_text()
    assert "WARNING: the positive control oracle +8 (ideal synthetic patients) was not found better" in report
    assert "WARNING: the negative control noise +8 (noise) was reported better than real-only" in report


def test_repeats_can_be_averaged_instead_of_blocks(tmp_path):
    path = write_cases(tmp_path / "cases.csv", {"pair": ("folder:x", 4, 0.02)})
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    as_blocks = build_score_table(COLUMNS, rows, ScoreTableConfig(class_name="core"))
    averaged = build_score_table(COLUMNS, rows, ScoreTableConfig(class_name="core", repeats_as_blocks=False))
    assert as_blocks.block_columns == ("dataset", "fold", "repeat") and len(as_blocks.blocks) == 10
    assert averaged.block_columns == ("dataset", "fold") and len(averaged.blocks) == 5
    assert drop_incomplete_blocks(as_blocks).sources == ("folder:x", "real")
