"""Score table reading and the written report, end to end through the command line."""
import csv
import re

import matplotlib.image
import numpy as np
import pytest

from segmentation.report.cli_report import main
from segmentation.report.report import findings
from segmentation.report.score_table import (ScoreTableConfig, build_score_table, drop_incomplete_blocks,
                                      load_score_table, parse_filter, read_csv_rows, summarize_by_dataset)
from segmentation.report.stats import compare_conditions
from synthetic_scores import DATASETS, K_VALUES, N_FOLDS, SOURCES, write_synthetic_cases

COLUMNS = ["dataset", "fold", "arm", "n_synthetic", "case", "class", "dice", "hd95"]


def rows_of(records):
    return [dict(zip(COLUMNS, map(str, record))) for record in records]


def test_cells_are_means_over_cases_of_the_chosen_class_in_natural_order():
    rows = rows_of([
        ("a", 0, "real", 0, "c1", "foreground", 0.6, 3.0),
        ("a", 0, "real", 0, "c2", "foreground", 0.8, 5.0),
        ("a", 0, "real", 0, "c1", "tumour", 0.1, 9.0),
        ("a", 0, "pair", 10, "c1", "foreground", 0.9, 1.0),
        ("a", 0, "pair", 2, "c1", "foreground", 0.5, 2.0),
    ])
    table = build_score_table(COLUMNS, rows, ScoreTableConfig(block_columns=("dataset", "fold")))
    assert table.condition_labels == ["pair +2", "pair +10", "real"]
    np.testing.assert_allclose(table.scores, [[0.5, 0.9, 0.7]])
    np.testing.assert_array_equal(table.n_values, [[1, 1, 2]])
    assert table.higher_is_better
    assert not build_score_table(COLUMNS, rows, ScoreTableConfig(metric="hd95")).higher_is_better
    assert table.condition_index("real") == 2 and table.condition_index("pair,10") == 1


def test_incomplete_blocks_are_dropped_and_counted():
    records = []
    for fold in range(4):
        for arm, k in (("real", 0), ("pair", 10), ("noise", 10)):
            if fold == 1 and arm == "pair":
                continue  # unfinished run
            records.append(("a", fold, arm, k, "c1", "foreground", 0.5 + 0.1 * fold, 1.0))
    table = build_score_table(COLUMNS, rows_of(records), ScoreTableConfig())
    assert np.isnan(table.scores).sum() == 1
    complete = drop_incomplete_blocks(table)
    assert len(complete.blocks) == 3
    assert complete.dropped_blocks == ((("a", "1"), (("pair", "10"),)),)
    assert not np.isnan(complete.scores).any()


def test_too_few_complete_blocks_names_the_unfinished_condition():
    records = [("a", fold, "real", 0, "c1", "foreground", 0.5, 1.0) for fold in range(3)]
    records += [("a", 0, "pair", 10, "c1", "foreground", 0.5, 1.0)]
    table = build_score_table(COLUMNS, rows_of(records), ScoreTableConfig(), source="x.csv")
    with pytest.raises(ValueError, match=r"x.csv: only 1 of 3 blocks.*pair \+10: 1"):
        drop_incomplete_blocks(table)


def test_nan_metric_values_are_left_out_and_counted():
    rows = rows_of([("a", 0, "real", 0, "c1", "foreground", 0.6, "nan"),
                    ("a", 0, "real", 0, "c2", "foreground", 0.8, 4.0)])
    table = build_score_table(COLUMNS, rows, ScoreTableConfig(metric="hd95"))
    assert table.scores[0, 0] == 4.0 and table.n_missing_values == 1


def test_bad_tables_give_clear_errors(tmp_path):
    rows = rows_of([("a", 0, "real", 0, "c1", "foreground", "oops", 1.0)])
    with pytest.raises(ValueError, match=r"f.csv, line 2: dice = 'oops' is not a number"):
        build_score_table(COLUMNS, rows, ScoreTableConfig(), source="f.csv")
    with pytest.raises(ValueError, match="missing column.*fold"):
        build_score_table([c for c in COLUMNS if c != "fold"], rows, ScoreTableConfig(), source="f.csv")
    # the same case twice in one cell: something else (here n_real) varies and would be averaged
    duplicated = rows_of([("a", 0, "real", 0, "c1", "foreground", 0.5, 1.0)] * 2)
    with pytest.raises(ValueError, match="lines 2 and 3: two rows"):
        build_score_table(COLUMNS, duplicated, ScoreTableConfig(), source="f.csv")
    ragged = tmp_path / "ragged.csv"
    ragged.write_text("dataset,fold,dice\na,0\n")
    with pytest.raises(ValueError, match="ragged.csv, line 2: fewer fields"):
        read_csv_rows(ragged)
    with pytest.raises(FileNotFoundError, match="without cases.csv"):
        load_score_table(tmp_path, ScoreTableConfig())
    with pytest.raises(ValueError, match="COLUMN=VALUE"):
        parse_filter("arm")


def test_filters_and_per_dataset_summary(tmp_path):
    path = write_synthetic_cases(tmp_path / "cases.csv")
    config = ScoreTableConfig(filters=(parse_filter("arm!=noise"), parse_filter("dataset=brats")))
    table = load_score_table(tmp_path, config)
    assert len(table.blocks) == N_FOLDS and len(table.conditions) == 1 + (len(SOURCES) - 1) * len(K_VALUES)
    (summary,) = summarize_by_dataset(table)
    expected = table.scores.std(axis=0, ddof=1) / np.sqrt(N_FOLDS)
    np.testing.assert_allclose(summary.standard_error, expected)
    assert path.exists()


def read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_end_to_end_report_recovers_the_planted_effect(tmp_path):
    results = tmp_path / "results"
    write_synthetic_cases(results / "cases.csv", drop_runs=(("pelvis", 2, "pair", 50), ("brats", 0, "noise", 10)))
    out = tmp_path / "report"
    assert main([str(results), "--out", str(out), "--pairwise-wilcoxon"]) == 0
    for name in ("report.md", "report.tex", "ranks.csv", "pvalues.csv", "cd_diagram.png", "cd_diagram.pdf",
                 "score_vs_k.png"):
        assert (out / name).stat().st_size > 0, name
    assert not list(out.glob(".*.tmp"))

    k = 1 + len(SOURCES) * len(K_VALUES)
    ranks = read_csv(out / "ranks.csv")
    assert len(ranks) == k
    mean_ranks = np.array([float(r["mean_rank"]) for r in ranks])
    assert mean_ranks.sum() == pytest.approx(k * (k + 1) / 2)
    assert np.all(np.diff(mean_ranks) >= 0)  # best first
    verdict = {r["condition"]: r["vs_baseline"] for r in ranks}
    assert verdict["pair +50"] == "+" and verdict["noise +200"] == "-"
    assert all(verdict[f"mask-only +{n}"] == "0" for n in K_VALUES)
    assert {f"mean[{d}]" for d in DATASETS} <= set(ranks[0])

    pvalues = read_csv(out / "pvalues.csv")
    tests = [r["test"] for r in pvalues]
    assert tests.count("nemenyi") == k * (k - 1) // 2
    assert tests.count("wilcoxon_pairwise_holm") == k * (k - 1) // 2
    assert tests.count("holm_ranks") == tests.count("bonferroni_dunn") == tests.count("wilcoxon_vs_baseline") == k - 1
    assert all(0.0 <= float(r["p"]) <= float(r["p_adjusted"]) + 1e-15 <= 1.0 + 1e-15 for r in pvalues)

    report = (out / "report.md").read_text()
    assert "2 of 18 blocks were dropped" in report
    assert ("Adding 50 synthetic patients from the pair generator is significantly better than real-only: "
            "median paired difference +0.059") in report
    assert "Adding 200 synthetic patients from the noise generator is significantly worse than real-only" in report
    assert "All-condition ranking (descriptive" in report and "pair +50 ranked best" in report
    assert "![Critical-difference diagram](cd_diagram.png)" in report
    tex = (out / "report.tex").read_text()
    assert tex.count("\\begin{tabular}") == tex.count("\\end{tabular}") == 1
    assert tex.count("\\\\") == k + 1  # header + one row per condition
    for figure in ("cd_diagram.png", "score_vs_k.png"):
        image = matplotlib.image.imread(out / figure)
        assert image.ndim == 3 and min(image.shape[:2]) > 300


def test_lower_is_better_metric_from_a_tidy_csv_with_two_conditions(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "scores.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["site", "seed", "method", "error"])
        for site in range(10):
            base = rng.uniform(1, 2)
            writer.writerow([site, 0, "old", f"{base + 0.5:.4f}"])
            writer.writerow([site, 0, "new", f"{base + rng.normal(0, 0.05):.4f}"])
    assert main([str(path), "--block", "site,seed", "--condition", "method", "--metric", "error",
                 "--class", "all", "--baseline", "old"]) == 0
    out = tmp_path / "scores_report"
    report = (out / "report.md").read_text()
    assert "Wilcoxon signed-rank" in report and "lower is better" in report
    assert "New is significantly better than old: median paired difference -0.5" in report
    assert "with two conditions the ranking is the paired test above" in report
    assert not (out / "score_vs_k.png").exists()  # no k column among the conditions


def test_cli_reports_bad_input_without_a_traceback(tmp_path, capsys):
    assert main([str(tmp_path / "missing")]) == 2
    assert "no such results directory" in capsys.readouterr().err
    write_synthetic_cases(tmp_path / "cases.csv")
    assert main([str(tmp_path), "--baseline", "nothing", "--no-plots"]) == 2
    assert "no condition called 'nothing'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([str(tmp_path), "--alpha", "2"])


def test_findings_sentence_for_a_best_condition_that_is_not_significant(tmp_path):
    write_synthetic_cases(tmp_path / "cases.csv", effect_scale=0.0)
    table = drop_incomplete_blocks(load_score_table(tmp_path, ScoreTableConfig()))
    baseline = table.condition_index("real")
    comparison = compare_conditions(table.scores, control=baseline)
    sentences = findings(table, comparison, baseline)
    assert sentences[0].startswith("No significant difference from real-only for baseline-gan +10, ")
    assert "this design detects differences >= 0.0" in sentences[0] and "dice with 80% power" in sentences[0]
    best = int(np.argmin(comparison.mean_rank))
    assert f"{table.condition_labels[best]} ranked best (mean rank " in sentences[1]
    assert "show no significant difference by the Iman–Davenport test" in sentences[1]
    assert not comparison.significant_vs_control().any()


def test_findings_sentence_for_a_condition_tied_with_the_best_baseline():
    scores = {"real": [0.9, 0.5, 0.8, 0.7], "pair +6": [0.8, 0.9, 0.7, 0.8], "pair +24": [0.1, 0.2, 0.3, 0.2]}
    rows = rows_of([(f"d{b}", 0, label.split(" +")[0], int(label.split(" +")[1]) if " +" in label else 0,
                     "c1", "foreground", value, 1.0)
                    for label, values in scores.items() for b, value in enumerate(values)])
    table = drop_incomplete_blocks(build_score_table(COLUMNS, rows, ScoreTableConfig()))
    baseline = table.condition_index("real")
    comparison = compare_conditions(table.scores, control=baseline)
    assert dict(zip(table.condition_labels, comparison.mean_rank)) == {"real": 1.5, "pair +6": 1.5, "pair +24": 3.0}
    sentences = findings(table, comparison, baseline)
    assert any("real ranked best (mean rank 1.50), tied with pair +6;" in s for s in sentences)
    # 4 blocks: the exact paired test cannot reject, and the report says so instead of "no difference"
    assert "this design cannot reach significance at all (smallest attainable p 0.125)" in sentences[0]


def test_infinite_distances_rank_last_for_lower_is_better():
    rows = rows_of([(f"d{b}", 0, arm, k, "c1", "foreground", 0.5, value)
                    for b in range(4) for arm, k, value in (("real", 0, 5.0), ("pair", 10, 2.0), ("noise", 10, "inf"))])
    table = drop_incomplete_blocks(build_score_table(COLUMNS, rows, ScoreTableConfig(metric="hd95")))
    comparison = compare_conditions(table.scores, control=table.condition_index("real"), higher_is_better=False)
    ranks = dict(zip(table.condition_labels, comparison.mean_rank))
    assert ranks == {"noise +10": 3.0, "pair +10": 1.0, "real": 2.0}


def test_scores_outside_the_metric_range_are_refused_with_the_line():
    for dice in ("inf", "1.2", "-1e308"):
        rows = rows_of([("a", 0, "real", 0, "c1", "foreground", 0.5, 1.0),
                        ("a", 0, "pair", 10, "c1", "foreground", dice, 1.0)])
        with pytest.raises(ValueError, match=rf"f.csv, line 3: dice = {dice} lies outside its range \[0, 1\]"):
            build_score_table(COLUMNS, rows, ScoreTableConfig(), source="f.csv")
    rows = rows_of([("a", 0, "real", 0, "c1", "foreground", 0.5, "-3")])
    with pytest.raises(ValueError, match=r"hd95 = -3 lies outside its range \[0, inf\]"):
        build_score_table(COLUMNS, rows, ScoreTableConfig(metric="hd95"), source="f.csv")
    assert build_score_table(COLUMNS, rows_of([("a", 0, "real", 0, "c1", "foreground", 0.5, "inf")]),
                             ScoreTableConfig(metric="hd95")).scores[0, 0] == np.inf


def test_arm_names_cannot_break_the_markdown_or_inject_html(tmp_path):
    rows = [(f"d{b}", 0, arm, 4 if arm != "real" else 0, "c1", "foreground", value, 1.0)
            for b in range(6) for arm, value in (("real", 0.5 + 0.01 * b), ("a|b<script>", 0.6 + 0.01 * b))]
    path = tmp_path / "cases.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(COLUMNS)
        writer.writerows(rows)
    assert main([str(path), "--no-plots"]) == 0
    report = (tmp_path / "cases_report" / "report.md").read_text().splitlines()
    cells = lambda line: re.split(r"(?<!\\)\|", line)  # noqa: E731 (a cell ends at an unescaped |)
    header = next(line for line in report if line.startswith("| condition | median"))
    row = next(line for line in report if line.startswith("| a\\|b"))
    assert len(cells(row)) == len(cells(header))  # the | in the name stays inside its cell
    assert not any("<script>" in line for line in report)
    page = (tmp_path / "cases_report" / "report.html").read_text()
    assert "a|b&lt;script&gt;" in page and "<script>x" not in page and page.count("<script>") == 1  # the sort script


def test_an_unknown_class_lists_the_valid_ones(tmp_path, capsys):
    write_synthetic_cases(tmp_path / "cases.csv")
    assert main([str(tmp_path), "--class", "tumor", "--no-plots"]) == 2
    assert "no rows of class 'tumor' (classes in the file: foreground, tumour)" in capsys.readouterr().err
