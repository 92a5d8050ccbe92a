"""`nemenyi_report.py RESULTS_DIR` / `stylepair-report`: the comparison report from study results.

Reads RESULTS_DIR/cases.csv (or any tidy CSV of scores), builds the blocks × conditions matrix,
runs Friedman / Iman–Davenport / Nemenyi / Bonferroni–Dunn / Holm (Wilcoxon for two conditions)
and writes report.md, report.tex, ranks.csv, pvalues.csv, cd_diagram.png/.pdf and score_vs_k.png.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from segmentation.report.report import ReportConfig, make_report
from segmentation.report.overview import groups_of, write_overview
from segmentation.study.provenance import accepted_changes
from segmentation.report.score_table import (ScoreTableConfig, build_score_table, parse_filter, read_csv_rows,
                                      resolve_scores_csv)
from training.data.errors import one_line_errors

__all__ = ["build_parser", "main"]


def _columns(text: str) -> tuple[str, ...]:
    columns = tuple(c.strip() for c in text.split(",") if c.strip())
    if not columns:
        raise argparse.ArgumentTypeError(f"expected comma-separated column names, got {text!r}")
    return columns


def _alpha(text: str) -> float:
    value = float(text)
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"alpha must lie in (0, 1), got {text}")
    return value


def _filter(text: str):
    try:
        return parse_filter(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows '(default: …)' only where a default means something: not for flags, None or empty lists."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.nargs == 0 or action.default is None or action.default == []:
            return action.help or ""
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    """The report's argument parser (every option with its default in --help)."""
    parser = argparse.ArgumentParser(
        prog="nemenyi_report.py",
        description=("Compare training conditions over independent blocks with rank statistics "
                     "(Demšar 2006): Friedman and Iman–Davenport omnibus tests, Nemenyi critical "
                     "difference and pairwise p-values, Bonferroni–Dunn and Holm against the baseline, "
                     "the Wilcoxon signed-rank test for two conditions, and optionally Holm-corrected "
                     "pairwise Wilcoxon tests. Blocks with a missing condition (unfinished runs) are "
                     "dropped and counted."),
        epilog=("Writes report.md, report.tex, ranks.csv, pvalues.csv, cd_diagram.png/.pdf and "
                "score_vs_k.png into --out. Example: nemenyi_report.py results/ --metric hd95 "
                "--class tumour --filter n_real=20"),
        formatter_class=_HelpFormatter)
    parser.add_argument("results", type=Path,
                        help="study results directory (containing cases.csv) or a tidy CSV file of scores")
    parser.add_argument("--metric", default="dice", help="score column to compare")
    direction = parser.add_mutually_exclusive_group()
    direction.add_argument("--lower-is-better", dest="higher_is_better", action="store_false", default=None,
                           help="rank small scores best (default: inferred from the metric name; hd95 and "
                                "other distances are lower-is-better)")
    direction.add_argument("--higher-is-better", dest="higher_is_better", action="store_true", default=None,
                           help="rank large scores best (default: inferred from the metric name)")
    parser.add_argument("--class", dest="class_name", default="foreground",
                        help="keep only rows of this class (label name); 'all' keeps every row")
    parser.add_argument("--class-column", default="class", help="column holding the class name")
    parser.add_argument("--block", type=_columns, default="dataset,fold",
                        help="comma-separated columns whose values make one block (independent unit); a "
                             "'repeat' column is added (see --repeats)")
    parser.add_argument("--condition", type=_columns, default="arm,n_synthetic",
                        help="comma-separated columns whose values make one condition")
    parser.add_argument("--replicate", type=_columns, default="case",
                        help="columns averaged over inside one block × condition cell")
    parser.add_argument("--repeats", choices=("blocks", "average"), default="blocks",
                        help="a 'repeat' column in the file: each repeat its own block (independent seeds), "
                             "or averaged inside a cell")
    parser.add_argument("--k-column", default="n_synthetic",
                        help="condition column holding the number of added synthetic patients (x of score_vs_k)")
    parser.add_argument("--dataset-column", default="dataset",
                        help="block column naming the dataset (per-dataset tables and panels)")
    parser.add_argument("--filter", dest="filters", type=_filter, action="append", default=[],
                        metavar="COLUMN=VALUE",
                        help="keep only rows with COLUMN=VALUE (or drop them with COLUMN!=VALUE); repeatable")
    parser.add_argument("--baseline", default="real",
                        help="baseline condition: its label (e.g. 'real', 'pair +50'), its values "
                             "joined by commas, or a first-column value naming one condition")
    parser.add_argument("--alpha", type=_alpha, default=0.05, help="significance level")
    parser.add_argument("--pairwise-wilcoxon", action="store_true",
                        help="also run Holm-corrected Wilcoxon signed-rank tests for every pair (Benavoli et al. 2016)")
    parser.add_argument("--no-plots", dest="plots", action="store_false", help="skip the figures (drawn by default)")
    parser.add_argument("--out", type=Path, default=None,
                        help="output directory (default: RESULTS/report for a directory, "
                             "<csv name>_report next to a CSV file)")
    return parser


def _study_settings(results: Path) -> dict | None:
    """The study's settings (RESULTS/study.json written by run_study.py), None for a plain CSV."""
    folder = results if results.is_dir() else results.parent
    path = folder / "study.json"
    if not path.is_file():
        return None
    try:
        settings = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: unreadable study settings ({error})") from None
    if not isinstance(settings, dict):
        return None
    return {**settings, "accepted_data_changes": accepted_changes(folder)}


def _default_out(results: Path) -> Path:
    return results / "report" if results.is_dir() else results.with_name(f"{results.stem}_report")


@one_line_errors("nemenyi_report.py")
def main(argv: list[str] | None = None) -> int:
    """Parse arguments, build the score table, write the report; returns the exit status."""
    args = build_parser().parse_args(argv)
    table_config = ScoreTableConfig(
        metric=args.metric, higher_is_better=args.higher_is_better,
        class_name=None if args.class_name == "all" else args.class_name, class_column=args.class_column,
        block_columns=args.block, condition_columns=args.condition, replicate_columns=args.replicate,
        k_column=args.k_column, filters=tuple(args.filters), repeats_as_blocks=args.repeats == "blocks")
    report_config = ReportConfig(alpha=args.alpha, baseline=args.baseline, pairwise_wilcoxon=args.pairwise_wilcoxon,
                                 dataset_column=args.dataset_column, plots=args.plots)
    out = args.out if args.out is not None else _default_out(args.results)
    try:
        csv_path = resolve_scores_csv(args.results)
        columns, rows = read_csv_rows(csv_path)
        groups = groups_of(columns, rows, table_config)
        if groups:  # several n_real or test sets: one report each, and the overview
            overview = write_overview(csv_path, columns, rows, table_config, report_config, groups, out,
                                      _study_settings(args.results))
            print(f"overview written to {overview} (and report.html), with {len(groups)} groups:")
            for group in groups:
                print(f"  {group.folder}/")
            return 0
        table = build_score_table(columns, rows, table_config, source=str(csv_path))
        files = make_report(table, out, report_config, study=_study_settings(args.results))
    except (FileNotFoundError, ValueError) as error:
        print(f"nemenyi_report: error: {error}", file=sys.stderr)
        return 2
    print(f"report written to {files.markdown.parent}:")
    for path in (files.markdown, files.html, files.latex, files.ranks_csv, files.pvalues_csv, files.cd_png,
                 files.cd_pdf, files.score_vs_k_png):
        if path is not None:
            print(f"  {path.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
