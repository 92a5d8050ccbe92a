"""The comparison report: report.md, report.tex, ranks.csv, pvalues.csv and the two figures.

`make_report` takes a ScoreTable (possibly with missing cells), drops incomplete blocks and states
two things, clearly apart:

1. **The verdict** of every condition against the baseline -- the paired design
   (`segmentation.report.stats.compare_paired_to_control`): an exact Wilcoxon signed-rank test on the
   blocks of those two conditions only, Holm over the conditions, with the median paired
   difference and its bootstrap interval as the effect size, and the smallest difference the
   design detects with 80 % power (`segmentation.report.power`) next to every "no significant
   difference".  Adding or removing other arms never changes a condition's test or effect size.
2. **The all-condition ranking** of the paper (Friedman / Iman–Davenport, Nemenyi CD diagram,
   rank-based Bonferroni–Dunn / Holm; Demšar 2006), labelled descriptive: mean ranks depend on
   every condition in the report.

Built-in control arms (source ``control:oracle|noise|shuffled``) are checked: the oracle should be
better than the baseline, the negative controls not; a warning says when they were not.  Each
finding is one plain-language sentence, e.g. "Adding 6 synthetic patients from the pair generator
is significantly better than real-only: median paired difference +0.041 [+0.020, +0.063], exact
Wilcoxon p = 0.002, Holm p = 0.010 (10 blocks)."
"""
from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from segmentation.report import plots
from segmentation.report.html import markdown_to_html, md_escape
from segmentation.report.power import DesignPower, describe_design
from segmentation.report.score_table import DatasetSummary, ScoreTable, drop_incomplete_blocks, summarize_by_dataset
from segmentation.report.stats import (Comparison, PairedComparison, bonferroni_dunn_q_alpha, compare_conditions,
                                compare_paired_to_control, nemenyi_q_alpha)
from training.data.fsutils import atomic_write_text

__all__ = ["ReportConfig", "ReportFiles", "describe_condition", "findings", "make_report", "write_report"]

VERDICT_SYMBOL = {1: "+", 0: "0", -1: "-"}
CONTROL_PREFIX = "control:"


@dataclass(frozen=True)
class ReportConfig:
    """Report options: significance level, baseline condition (a name accepted by
    ScoreTable.condition_index), optional Holm-corrected pairwise Wilcoxon tests, the block column
    that names a dataset (for per-dataset tables and panels), and whether to draw figures."""

    alpha: float = 0.05
    baseline: str = "real"
    pairwise_wilcoxon: bool = False
    dataset_column: str = "dataset"
    plots: bool = True


@dataclass(frozen=True)
class ReportFiles:
    """Paths of the files written (figures None when not drawn)."""

    markdown: Path
    html: Path
    latex: Path
    ranks_csv: Path
    pvalues_csv: Path
    cd_png: Path | None
    cd_pdf: Path | None
    score_vs_k_png: Path | None


@dataclass(frozen=True)
class _Context:
    """What every section of the report needs, computed once.

    verdict: the paired verdict [k] (the primary one); rank_verdict: the all-condition ranking's.
    detectable [k]: the difference (score units) the design detects with 80 % power for each
    condition, from the MDE in sd units and that condition's spread of paired differences.
    study: the study's settings (its study.json) when the scores come from a study folder.
    """

    table: ScoreTable
    comparison: Comparison
    paired: PairedComparison
    design: DesignPower
    detectable: np.ndarray
    baseline: int
    labels: list[str]
    summaries: list[DatasetSummary]
    overall: DatasetSummary
    verdict: np.ndarray
    rank_verdict: np.ndarray
    config: ReportConfig
    study: dict | None


def make_report(table: ScoreTable, out_dir: str | Path, config: ReportConfig = ReportConfig(),
                study: dict | None = None) -> ReportFiles:
    """Drop incomplete blocks, run the tests and write every report file into `out_dir`.

    Args:
        table: scores [N, k] with NaN for missing cells (from score_table.load_score_table).
        out_dir: created if needed; existing report files are replaced atomically.
        study: the study's settings (study.json), stated in the report's design section.
    """
    complete = drop_incomplete_blocks(table)
    baseline = complete.condition_index(config.baseline)
    comparison = compare_conditions(complete.scores, control=baseline, alpha=config.alpha,
                                    higher_is_better=complete.higher_is_better,
                                    pairwise_wilcoxon=config.pairwise_wilcoxon)
    return write_report(complete, comparison, baseline, out_dir, config, study)


def write_report(table: ScoreTable, comparison: Comparison, baseline: int, out_dir: str | Path,
                 config: ReportConfig = ReportConfig(), study: dict | None = None) -> ReportFiles:
    """Write report.md, report.tex, ranks.csv, pvalues.csv (and the figures) for a complete table."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    context = _make_context(table, comparison, baseline, config, study)
    cd_png = cd_pdf = score_png = None
    if config.plots:
        cd_png, cd_pdf = _draw_cd_diagram(context, out_dir)
        score_png = _draw_score_vs_k(context, out_dir)
    ranks_csv = atomic_write_text(out_dir / "ranks.csv", _ranks_csv(context))
    pvalues_csv = atomic_write_text(out_dir / "pvalues.csv", _pvalues_csv(context))
    figures = {"cd": cd_png, "score_vs_k": score_png}
    text = _markdown(context, figures)
    markdown = atomic_write_text(out_dir / "report.md", text)
    page = atomic_write_text(out_dir / "report.html", markdown_to_html(text, out_dir, f"stylepair: {_metric_label(table)}"))
    latex = atomic_write_text(out_dir / "report.tex", _latex(context))
    return ReportFiles(markdown=markdown, html=page, latex=latex, ranks_csv=ranks_csv, pvalues_csv=pvalues_csv,
                       cd_png=cd_png, cd_pdf=cd_pdf, score_vs_k_png=score_png)


def _make_context(table: ScoreTable, comparison: Comparison, baseline: int, config: ReportConfig,
                  study: dict | None = None) -> _Context:
    if comparison.ranks.shape != table.scores.shape:
        raise ValueError(f"comparison of shape {comparison.ranks.shape} does not belong to a table of "
                         f"shape {table.scores.shape}")
    n_blocks, k = table.scores.shape
    paired = compare_paired_to_control(table.scores, baseline, comparison.alpha, table.higher_is_better)
    design = describe_design(n_blocks, k - 1, comparison.alpha)
    with np.errstate(invalid="ignore"):
        detectable = design.mde_sd * paired.difference_sd
    return _Context(table=table, comparison=comparison, paired=paired, design=design, detectable=detectable,
                    baseline=baseline, labels=table.condition_labels,
                    summaries=summarize_by_dataset(table, config.dataset_column),
                    overall=summarize_by_dataset(table, dataset_column=None)[0],
                    verdict=paired.verdict(), rank_verdict=comparison.significant_vs_control(), config=config,
                    study=study)


# ---------------------------------------------------------------------------------------------
# Plain-language findings


def _control_kind(table: ScoreTable, index: int) -> str | None:
    """"oracle", "noise", "shuffled" for a built-in control condition, else None."""
    source = table.sources[index] if table.sources else ""
    return source[len(CONTROL_PREFIX):] if source.startswith(CONTROL_PREFIX) else None


def describe_condition(table: ScoreTable, index: int, baseline: int) -> str:
    """A condition in words: "real-only" for the real baseline, "adding 50 synthetic patients from
    the pair generator" for (arm, n_synthetic) conditions, "adding 6 patients of the oracle
    control" for control arms, "adding 8 patients made by the lesions synthesiser" for procedural
    arms, else its label."""
    label = table.condition_labels[index]
    columns, values = table.condition_columns, table.conditions[index]
    if index == baseline:
        return "real-only" if label == "real" else label
    if table.k_column in columns and len(columns) == 2:
        k = values[columns.index(table.k_column)]
        source = values[1 - columns.index(table.k_column)]
        if _control_kind(table, index) is not None:
            return f"adding {k} patients of the {source} control"
        if table.sources and table.sources[index].startswith("procedural:"):
            return f"adding {k} patients made by the {source} synthesiser"
        return f"adding {k} synthetic patients from the {source} generator"
    return label


def _format_p(p: float) -> str:
    """p-value for a table cell: "< 0.001" or three decimals."""
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def _p_equals(p: float) -> str:
    """p-value for a sentence, after "p": "< 0.001" or "= 0.012"."""
    return "< 0.001" if p < 0.001 else f"= {p:.3f}"


def _number(value: float) -> str:
    """A score difference for text: signed, 3 decimals (Dice, mm), no "-0.000"."""
    if not math.isfinite(value):
        return "+inf" if value > 0 else "-inf" if value < 0 else "nan"
    text = f"{value:+.3f}"
    return "+0.000" if text == "-0.000" else text


def _detectable_text(context: _Context, j: int | None = None) -> str:
    """'this design detects >= X <metric> with 80 % power' for condition j (None: the median over
    the conditions), or why it detects nothing."""
    design, table = context.design, context.table
    if not design.can_reject:
        return (f"with {design.n_blocks} blocks and {design.n_comparisons} comparisons this design cannot reach "
                f"significance at all (smallest attainable p {design.smallest_p:.3g})")
    others = [i for i in range(len(context.labels)) if i != context.baseline]
    values = context.detectable[others] if j is None else context.detectable[[j]]
    values = values[np.isfinite(values)]
    if not values.size:
        return f"this design detects effects >= {design.mde_sd:.2f} sd of the paired differences with 80 % power"
    return (f"this design detects differences >= {float(np.median(values)):.3f} {table.metric} with "
            f"{design.power:.0%} power ({design.mde_sd:.2f} sd of the paired differences)")


def _paired_claim(context: _Context, j: int) -> str:
    """'<condition> is significantly better/worse than <baseline>: median paired difference, CI, p, Holm p.'"""
    paired, table = context.paired, context.table
    relation = "better" if context.verdict[j] > 0 else "worse"
    return (f"{describe_condition(table, j, context.baseline)} is significantly {relation} than "
            f"{describe_condition(table, context.baseline, context.baseline)}: median paired difference "
            f"{_number(paired.difference[j])} [{_number(paired.ci_low[j])}, {_number(paired.ci_high[j])}], exact "
            f"Wilcoxon p {_p_equals(paired.p[j])}, Holm p {_p_equals(paired.p_holm[j])} ({paired.n_blocks} blocks).")


def findings(table: ScoreTable, comparison: Comparison, baseline: int) -> list[str]:
    """One plain-language sentence per finding: dropped blocks, the primary paired verdicts (every
    significant condition, then the others with what the design could have detected), the control
    arms, and the all-condition ranking (descriptive).

    Args:
        table: the complete score table the comparison was computed on.
        comparison: compare_conditions(table.scores, control=baseline, ...).
        baseline: column index of the baseline condition.
    """
    return _findings(_make_context(table, comparison, baseline, ReportConfig(alpha=comparison.alpha)))


def _findings(context: _Context) -> list[str]:
    table = context.table
    n_blocks = len(table.blocks)
    sentences = []
    if table.dropped_blocks:
        total = n_blocks + len(table.dropped_blocks)
        sentences.append(f"{len(table.dropped_blocks)} of {total} blocks were dropped because some condition "
                         f"has no score there (unfinished runs); the tests use the {n_blocks} complete blocks.")
    others = [j for j in range(len(context.labels)) if j != context.baseline]
    sentences += [_paired_claim(context, j) for j in others if context.verdict[j] != 0]
    quiet = [j for j in others if context.verdict[j] == 0]
    if quiet:
        names = ", ".join(context.labels[j] for j in sorted(quiet))
        differences = context.paired.difference[quiet]
        spread = (f"median paired difference {_number(float(differences[0]))}" if len(quiet) == 1 else
                  f"median paired differences from {_number(float(differences.min()))} to "
                  f"{_number(float(differences.max()))}")
        sentences.append(f"No significant difference from {describe_condition(table, context.baseline, context.baseline)}"
                         f" for {names} ({spread}); {_detectable_text(context)}.")
    sentences += _control_findings(context)
    sentences.append(_ranking_sentence(context))
    return [s[0].upper() + s[1:] for s in sentences]


def _control_findings(context: _Context) -> list[str]:
    """Whether the built-in controls behaved: the oracle better, noise and shuffled not better."""
    table, sentences, behaved = context.table, [], []
    baseline_text = describe_condition(table, context.baseline, context.baseline)
    for j in range(len(context.labels)):
        kind = _control_kind(table, j)
        if kind is None:
            continue
        if kind == "oracle" and context.verdict[j] != 1:
            sentences.append(f"WARNING: the positive control {context.labels[j]} (ideal synthetic patients) was not "
                             f"found better than {baseline_text} (median paired difference "
                             f"{_number(context.paired.difference[j])}): either even ideal extra patients do not "
                             f"help at this n and budget, or the design cannot see their gain "
                             f"({_detectable_text(context, j)}); read every 'no significant difference' in this "
                             f"report as 'not detectable', not as 'no effect'.")
        elif kind != "oracle" and context.verdict[j] == 1:
            sentences.append(f"WARNING: the negative control {context.labels[j]} ({kind}) was reported better than "
                             f"{baseline_text}: something other than useful data drives the verdicts (a weak "
                             f"baseline budget, leakage or a bug); do not trust this report's gains.")
        else:
            behaved.append(f"{context.labels[j]} {'better' if kind == 'oracle' else 'not better'}")
    if behaved:
        sentences.append(f"Controls behaved as expected: {', '.join(behaved)} than {baseline_text}.")
    return sentences


def _ranking_sentence(context: _Context) -> str:
    """The all-condition ranking in one sentence, labelled descriptive."""
    comparison, table = context.comparison, context.table
    k, n_blocks = len(table.conditions), len(table.blocks)
    best = [j for j in np.argsort(comparison.mean_rank, kind="stable")
            if np.isclose(comparison.mean_rank[j], comparison.mean_rank.min())]
    if context.baseline in best:  # name the baseline first when it shares the best rank
        best = [context.baseline] + [j for j in best if j != context.baseline]
    tied = "".join(f", tied with {context.labels[j]}" for j in best[1:])
    lead = ("all-condition ranking (descriptive; mean ranks depend on every condition in the report): "
            f"{context.labels[best[0]]} ranked best (mean rank {comparison.mean_rank[best[0]]:.2f}){tied}")
    if comparison.friedman is None:
        return lead + "; with two conditions the ranking is the paired test above."
    friedman = comparison.friedman
    outcome = "differ" if comparison.omnibus_p < comparison.alpha else "show no significant difference"
    upper = np.triu_indices(k, 1)
    n_different = int((comparison.nemenyi_p[upper] < comparison.alpha).sum())
    return (f"{lead}; over {n_blocks} blocks the {k} conditions {outcome} by the Iman–Davenport test "
            f"(F = {friedman.f:.2f}, p {_p_equals(friedman.p_f)}); {n_different} of {upper[0].size} pairs differ "
            f"by the Nemenyi test (CD = {comparison.cd_nemenyi:.2f} mean-rank units at α = {comparison.alpha:g}).")


# ---------------------------------------------------------------------------------------------
# Figures


def _draw_cd_diagram(context: _Context, out_dir: Path) -> tuple[Path, Path]:
    comparison = context.comparison
    title = (f"{_metric_label(context.table)}: mean ranks over {len(context.table.blocks)} blocks "
             f"(Nemenyi, α = {comparison.alpha:g})")
    figure = plots.cd_diagram(context.labels, comparison.mean_rank, comparison.nemenyi_p, comparison.cd_nemenyi,
                              comparison.alpha, title=title, highlight=context.baseline)
    return plots.save_figure(figure, out_dir / "cd_diagram.png"), plots.save_figure(figure, out_dir / "cd_diagram.pdf")


def _draw_score_vs_k(context: _Context, out_dir: Path) -> Path | None:
    table = context.table
    if table.k_column not in table.condition_columns or len(table.conditions) < 2:
        return None
    figure = plots.score_vs_k_figure(context.summaries, list(table.conditions), table.condition_columns,
                                     table.k_column, context.baseline, _metric_label(table))
    return plots.save_figure(figure, out_dir / "score_vs_k.png")


def _metric_label(table: ScoreTable) -> str:
    suffix = f" ({table.class_name})" if table.class_name else ""
    return f"mean {table.metric}{suffix}"


# ---------------------------------------------------------------------------------------------
# CSV files


def _csv_text(header: list[str], rows: list[list]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows([[_csv_value(v) for v in row] for row in rows])
    return buffer.getvalue()


def _csv_value(value) -> str:
    if isinstance(value, (float, np.floating)):
        return repr(float(value))
    return str(value)


def _ranks_csv(context: _Context) -> str:
    """One row per condition, best mean rank first: the paired verdict against the baseline (the
    primary one: median difference, CI, exact Wilcoxon and Holm p, detectable difference,
    vs_baseline), then the all-condition ranking (mean rank, rank tests, vs_baseline_ranks), scores."""
    table, comparison, paired = context.table, context.comparison, context.paired
    header = (["condition", *table.condition_columns, "source", "median_difference", "ci_low", "ci_high",
               "p_wilcoxon", "p_wilcoxon_holm", "detectable_difference", "vs_baseline", "mean_rank",
               "rank_difference_vs_baseline", "p_nemenyi_vs_baseline", "p_bonferroni_dunn", "p_holm_ranks",
               "vs_baseline_ranks", "mean", "standard_error"]
              + [f"{name}[{s.dataset}]" for s in context.summaries for name in ("mean", "standard_error")])
    rows = []
    for j in np.argsort(comparison.mean_rank, kind="stable"):
        per_dataset = [v for s in context.summaries for v in (s.mean[j], s.standard_error[j])]
        source = table.sources[j] if table.sources else ""
        rows.append([context.labels[j], *table.conditions[j], source, paired.difference[j], paired.ci_low[j],
                     paired.ci_high[j], paired.p[j], paired.p_holm[j], context.detectable[j],
                     "baseline" if j == context.baseline else VERDICT_SYMBOL[int(context.verdict[j])],
                     comparison.mean_rank[j], comparison.control.rank_difference[j],
                     comparison.nemenyi_p[j, context.baseline], comparison.control.p_bonferroni[j],
                     comparison.control.p_holm[j], VERDICT_SYMBOL[int(context.rank_verdict[j])],
                     context.overall.mean[j], context.overall.standard_error[j], *per_dataset])
    return _csv_text(header, rows)


def _pvalues_csv(context: _Context) -> str:
    """Tidy p-values: one row per test and pair (condition_b empty for omnibus tests).  Tests:
    wilcoxon_vs_baseline (the primary, paired; p_adjusted = Holm), friedman, iman_davenport,
    wilcoxon (k = 2), nemenyi, bonferroni_dunn, holm_ranks (rank-based against the baseline),
    wilcoxon_pairwise_holm (when asked for)."""
    comparison, labels, paired = context.comparison, context.labels, context.paired
    k = len(labels)
    header = ["test", "condition_a", "condition_b", "statistic", "p", "p_adjusted"]
    rows = [["wilcoxon_vs_baseline", labels[j], labels[context.baseline], paired.signed_rank_sum[j], paired.p[j],
             paired.p_holm[j]] for j in range(k) if j != context.baseline]
    if comparison.friedman is not None:
        f = comparison.friedman
        rows.append(["friedman", "all", "", f.chi2, f.p, f.p])
        rows.append(["iman_davenport", "all", "", f.f, f.p_f, f.p_f])
    if comparison.wilcoxon is not None:
        other = 1 - context.baseline
        rows.append(["wilcoxon", labels[other], labels[context.baseline], comparison.wilcoxon.statistic,
                     comparison.wilcoxon.p, comparison.wilcoxon.p])
    for i, j in zip(*np.triu_indices(k, 1)):
        difference = abs(comparison.mean_rank[i] - comparison.mean_rank[j])
        p = comparison.nemenyi_p[i, j]
        rows.append(["nemenyi", labels[i], labels[j], difference, p, p])
    control = comparison.control
    for j in range(k):
        if j == context.baseline:
            continue
        rows.append(["bonferroni_dunn", labels[j], labels[context.baseline], control.z[j], control.p[j],
                     control.p_bonferroni[j]])
        rows.append(["holm_ranks", labels[j], labels[context.baseline], control.z[j], control.p[j],
                     control.p_holm[j]])
    if comparison.pairwise_wilcoxon_p is not None:
        for i, j in zip(*np.triu_indices(k, 1)):
            rows.append(["wilcoxon_pairwise_holm", labels[i], labels[j], "", comparison.pairwise_wilcoxon_p[i, j],
                         comparison.pairwise_wilcoxon_p_holm[i, j]])
    return _csv_text(header, rows)


# ---------------------------------------------------------------------------------------------
# report.md


def _markdown(context: _Context, figures: dict[str, Path | None]) -> str:
    table, comparison = context.table, context.comparison
    lines = [f"# Comparison report: {_metric_label(table)}", ""]
    lines += _markdown_setup(context)
    lines += ["## Findings", ""] + [f"- {md_escape(s)}" for s in _findings(context)] + [""]
    lines += ["## Each condition against the baseline (the verdict)", ""]
    lines += _markdown_paired_table(context)
    lines += ["## Scores per dataset (mean ± standard error over blocks)", ""]
    lines += _markdown_score_table(context)
    if figures["score_vs_k"] is not None:
        lines += ["![Score against number of synthetic patients](score_vs_k.png)", ""]
    lines += ["## All-condition ranking (Friedman + Nemenyi; descriptive)", "",
              "Mean ranks over every condition of this report, as in Vu et al. and Demšar (2006). A condition's "
              "mean rank, and so the rank-based tests below, change when other conditions are added or removed; "
              "the verdict above does not. The CD diagram joins conditions the Nemenyi test does not separate.", ""]
    lines += _markdown_tests(context)
    if figures["cd"] is not None:
        lines += ["![Critical-difference diagram](cd_diagram.png)", ""]
    lines += _markdown_rank_table(context)
    if table.dropped_blocks:
        lines += ["## Dropped blocks (incomplete)", ""]
        label_of = dict(zip(table.conditions, table.condition_labels))
        lines += [f"- {md_escape(' / '.join(block))}: missing {md_escape(', '.join(label_of[c] for c in missing))}"
                  for block, missing in table.dropped_blocks] + [""]
    if comparison.pairwise_wilcoxon_p is not None:
        lines += _markdown_pairwise_wilcoxon(context)
    return "\n".join(lines)


def _study_lines(study: dict) -> list[str]:
    """The study settings that decide what a verdict means: budget, batch mix, model selection,
    empty classes, blocks."""
    train = study.get("train", {})
    if train.get("budget", "steps") == "epochs":
        budget = f"{train.get('epochs')} epochs over each run's own data (larger k: more steps)"
    else:
        budget = f"{train.get('iterations')} steps of {train.get('batch_size')} slices for every run (larger k: fewer passes per patient)"
    fraction = train.get("real_fraction")
    mix = "uniform over the pooled real + synthetic slices (k sets the mix)" if fraction is None else \
        f"{fraction:.0%} real slices in every batch"
    selection = {"fold": "best state on the fold's real validation patients (labelled patients outside n_real)",
                 "own": "best state on the run's own real training patients",
                 "none": "last state of the fixed budget (no validation)"}.get(train.get("validation", "fold"), "?")
    empty = {"exclude": "a test patient without a class is left out of that class's scores",
             "score": "a test patient without a class scores 1 (nothing predicted) or 0 (a false detection)"
             }.get(study.get("empty_class", "score"), "?")
    missed = {"diagonal": "HD95 of a missed structure = the test volume's diagonal in mm",
              "exclude": "HD95 of a missed structure left out (counted as empty values)"}.get(
                  study.get("hd95_missed", ""), "HD95 of a missed structure = inf (ranks last)")
    return [f"- Study `{study.get('name', '?')}`: budget {budget}; batches {mix}; tested model: {selection}; "
            f"{empty}; {missed}; {study.get('repeats', 1)} repeat(s), each block (dataset × fold × repeat) with its "
            f"own seed"]


def _markdown_setup(context: _Context) -> list[str]:
    table, config, design = context.table, context.config, context.design
    direction = "higher is better" if table.higher_is_better else "lower is better"
    n_total = len(table.blocks) + len(table.dropped_blocks)
    lines = [
        f"- Source: `{table.source}` ({table.n_rows} rows used"
        + (f", filters: {', '.join(map(str, table.filters))}" if table.filters else "") + ")",
        f"- Score: mean `{table.metric}` per cell ({direction})"
        + (f", class `{table.class_name}`" if table.class_name else ""),
        f"- Blocks ({', '.join(table.block_columns)}): {len(table.blocks)} complete of {n_total}",
        f"- Conditions ({', '.join(table.condition_columns)}): {len(table.conditions)}; "
        f"baseline: {md_escape(context.labels[context.baseline])}",
        f"- Verdict: each condition against the baseline by the exact Wilcoxon signed-rank test on its "
        f"{design.n_blocks} paired blocks, Holm over {design.n_comparisons} comparisons, α = {config.alpha:g} "
        f"(smallest attainable p {design.smallest_p:.3g}); effect = median paired difference with a 95 % "
        f"bootstrap interval over blocks; power: {_detectable_text(context)}",
        "- Ranks (descriptive section): 1 = best, ties averaged",
    ]
    if context.study is not None:
        lines += _study_lines(context.study)
        for change in context.study.get("accepted_data_changes", []):
            lines.append(f"- WARNING: this results folder mixes runs on changed data: {change['source']} cases "
                         f"{', '.join(change['cases'][:5])} changed and were accepted on {change['when']} "
                         f"(--accept-changed-data); runs before and after saw different patients")
    if table.n_missing_values:
        absent = (f" ({table.n_absent_values} because the class is absent from the patient's reference, excluded "
                  f"by the study's convention)" if table.n_absent_values else "")
        lines.append(f"- {table.n_missing_values} case values were empty/NaN and left out of the cell means{absent}")
    return lines + [""]


def _markdown_paired_table(context: _Context) -> list[str]:
    paired, table = context.paired, context.table
    rows = [f"| condition | median Δ {table.metric} | 95 % CI | exact Wilcoxon p | Holm p | detectable Δ "
            f"(80 % power) | verdict |", "|---|---:|---|---:|---:|---:|:---:|"]
    for j in range(len(context.labels)):
        if j == context.baseline:
            continue
        control = _control_kind(table, j)
        name = md_escape(context.labels[j]) + (f" *(control: {control})*" if control else "")
        rows.append(f"| {name} | {_number(paired.difference[j])} | [{_number(paired.ci_low[j])}, "
                    f"{_number(paired.ci_high[j])}] | {_format_p(paired.p[j])} | {_format_p(paired.p_holm[j])} | "
                    f"{context.detectable[j]:.3f} | {VERDICT_SYMBOL[int(context.verdict[j])]} |")
    note = (f"Δ = condition − {md_escape(context.labels[context.baseline])} per block; + / − : significantly better / worse "
            f"(Holm-adjusted exact Wilcoxon p < {context.config.alpha:g}); 0: no significant difference — the "
            f"design would have detected a difference of the size in the 'detectable' column with 80 % power.")
    return rows + ["", note, ""]


def _markdown_tests(context: _Context) -> list[str]:
    comparison = context.comparison
    k, n_blocks = len(context.labels), len(context.table.blocks)
    lines = []
    if comparison.friedman is not None:
        f = comparison.friedman
        lines += [f"- Friedman: χ² = {f.chi2:.4f}, df = {f.df}, p {_p_equals(f.p)}",
                  f"- Iman–Davenport: F = {f.f:.4f}, df = ({f.df1}, {f.df2}), p {_p_equals(f.p_f)}"]
    else:
        w = comparison.wilcoxon
        lines += [f"- k = 2: Wilcoxon signed-rank W = {w.statistic:g}, p {_p_equals(w.p)}, "
                  f"median difference = {w.median_difference:+.4g} over {w.n_blocks} blocks"]
    lines += [f"- Nemenyi (all pairs): q_α = {nemenyi_q_alpha(k, comparison.alpha):.3f}, "
              f"CD = {comparison.cd_nemenyi:.3f} (k = {k}, N = {n_blocks})",
              f"- Bonferroni–Dunn (vs baseline): q_α = {bonferroni_dunn_q_alpha(k, comparison.alpha):.3f}, "
              f"CD = {comparison.control.cd_bonferroni_dunn:.3f}", ""]
    return lines


def _markdown_rank_table(context: _Context) -> list[str]:
    comparison = context.comparison
    header = ("| condition | mean rank | Δ rank vs baseline | Nemenyi p | Bonferroni–Dunn p | Holm p (ranks) "
              "| rank-based vs baseline |\n|---|---:|---:|---:|---:|---:|:---:|")
    rows = [header]
    for j in np.argsort(comparison.mean_rank, kind="stable"):
        name = f"**{md_escape(context.labels[j])}**" if j == context.baseline else md_escape(context.labels[j])
        rows.append(f"| {name} | {comparison.mean_rank[j]:.2f} | {comparison.control.rank_difference[j]:+.2f} | "
                    f"{_format_p(comparison.nemenyi_p[j, context.baseline])} | "
                    f"{_format_p(comparison.control.p_bonferroni[j])} | {_format_p(comparison.control.p_holm[j])} | "
                    f"{'baseline' if j == context.baseline else VERDICT_SYMBOL[int(context.rank_verdict[j])]} |")
    note = ("Rank-based + / − : Holm on mean-rank differences after a significant Iman–Davenport test (Wilcoxon "
            "for k = 2), Demšar's protocol. Descriptive: it depends on the other conditions; the verdict is the "
            "paired table above.")
    return rows + ["", note, ""]


def _mean_se(mean: float, se: float) -> str:
    if np.isnan(se):
        return f"{mean:.4f}"
    return f"{mean:.4f} ± {se:.4f}"


def _markdown_score_table(context: _Context) -> list[str]:
    summaries = context.summaries
    header = "| condition | " + " | ".join(f"{md_escape(s.dataset)} (n = {s.n_blocks})" for s in summaries) + " |"
    rows = [header, "|---|" + "---:|" * len(summaries)]
    others = [j for j in range(len(context.labels)) if j != context.baseline]
    for j in [context.baseline, *others]:
        label = f"**{md_escape(context.labels[j])}**" if j == context.baseline else md_escape(context.labels[j])
        rows.append(f"| {label} | " + " | ".join(_mean_se(s.mean[j], s.standard_error[j]) for s in summaries) + " |")
    return rows + [""]


def _markdown_pairwise_wilcoxon(context: _Context) -> list[str]:
    comparison, labels = context.comparison, context.labels
    k = len(labels)
    lines = ["## Pairwise Wilcoxon signed-rank tests (Holm-corrected over all pairs)", "",
             "| condition A | condition B | p | Holm p |", "|---|---|---:|---:|"]
    for i, j in zip(*np.triu_indices(k, 1)):
        lines.append(f"| {md_escape(labels[i])} | {md_escape(labels[j])} | {_format_p(comparison.pairwise_wilcoxon_p[i, j])} | "
                     f"{_format_p(comparison.pairwise_wilcoxon_p_holm[i, j])} |")
    return lines + [""]


# ---------------------------------------------------------------------------------------------
# report.tex


def _tex_escape(text: str) -> str:
    replacements = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}
    return "".join(replacements.get(ch, ch) for ch in text)


def _latex(context: _Context) -> str:
    """A standalone-includable LaTeX fragment: the omnibus test, CD, and a booktabs table."""
    table, comparison = context.table, context.comparison
    k = len(context.labels)
    summaries = context.summaries
    symbol = {1: "$+$", 0: "$0$", -1: "$-$"}
    paired = context.paired
    lines = ["% Comparison report generated by stylepair (segmentation.report); needs \\usepackage{booktabs}"]
    if comparison.friedman is not None:
        f = comparison.friedman
        lines.append(f"% Friedman chi2 = {f.chi2:.4f} (df {f.df}, p = {f.p:.4g}); "
                     f"Iman-Davenport F = {f.f:.4f} (df {f.df1}, {f.df2}; p = {f.p_f:.4g})")
    lines += ["\\begin{table}[t]", "\\centering", "\\small",
              "\\begin{tabular}{l r " + "r " * len(summaries) + "r c}", "\\toprule",
              "Condition & Mean rank & " + " & ".join(_tex_escape(s.dataset) for s in summaries)
              + " & Median $\\Delta$ & vs.\\ baseline \\\\",
              "\\midrule"]
    for j in np.argsort(comparison.mean_rank, kind="stable"):
        name = _tex_escape(context.labels[j])
        name = f"\\textbf{{{name}}}" if j == context.baseline else name
        cells = [f"${s.mean[j]:.3f}$" if np.isnan(s.standard_error[j])
                 else f"${s.mean[j]:.3f} \\pm {s.standard_error[j]:.3f}$" for s in summaries]
        verdict = "baseline" if j == context.baseline else symbol[int(context.verdict[j])]
        delta = "" if j == context.baseline else f"${paired.difference[j]:+.3f}$"
        lines.append(f"{name} & ${comparison.mean_rank[j]:.2f}$ & " + " & ".join(cells)
                     + f" & {delta} & {verdict} \\\\")
    omnibus = (f"Iman--Davenport $F = {comparison.friedman.f:.2f}$, $p {_p_equals(comparison.friedman.p_f)}$"
               if comparison.friedman is not None else f"Wilcoxon $p {_p_equals(comparison.wilcoxon.p)}$")
    caption = (f"Mean {_tex_escape(table.metric)} $\\pm$ standard error over blocks and mean rank over "
               f"{len(table.blocks)} blocks ($k = {k}$). {omnibus}; Nemenyi CD $= {comparison.cd_nemenyi:.2f}$ "
               f"at $\\alpha = {comparison.alpha:g}$ (descriptive ranking). Median $\\Delta$: median paired difference "
               f"with the baseline over blocks; $+$/$-$: significantly better/worse than the baseline by the exact "
               f"Wilcoxon signed-rank test on the paired blocks, Holm over the conditions.")
    lines += ["\\bottomrule", "\\end{tabular}", f"\\caption{{{caption}}}", "\\label{tab:comparison}",
              "\\end{table}", ""]
    return "\n".join(lines)


