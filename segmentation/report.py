"""The comparison report: report.md, report.tex, ranks.csv, pvalues.csv and the two figures.

`make_report` takes a ScoreTable (possibly with missing cells), drops incomplete blocks, runs every
test of `segmentation.stats` and writes the files. Each finding is also stated as one sentence in
plain language, e.g. "adding 50 synthetic patients from the pair generator ranked best, but not
significantly better than real-only: rank difference = -0.80, CD = 1.90 (Bonferroni–Dunn), Holm p = 0.410."
"""
from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from segmentation import plots
from segmentation.score_table import DatasetSummary, ScoreTable, drop_incomplete_blocks, summarize_by_dataset
from segmentation.stats import Comparison, bonferroni_dunn_q_alpha, compare_conditions, nemenyi_q_alpha

__all__ = ["ReportConfig", "ReportFiles", "describe_condition", "findings", "make_report", "write_report"]

VERDICT_SYMBOL = {1: "+", 0: "0", -1: "-"}


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
    latex: Path
    ranks_csv: Path
    pvalues_csv: Path
    cd_png: Path | None
    cd_pdf: Path | None
    score_vs_k_png: Path | None


@dataclass(frozen=True)
class _Context:
    """What every section of the report needs, computed once."""

    table: ScoreTable
    comparison: Comparison
    baseline: int
    labels: list[str]
    summaries: list[DatasetSummary]
    overall: DatasetSummary
    verdict: np.ndarray
    config: ReportConfig


def make_report(table: ScoreTable, out_dir: str | Path, config: ReportConfig = ReportConfig()) -> ReportFiles:
    """Drop incomplete blocks, run the tests and write every report file into `out_dir`.

    Args:
        table: scores [N, k] with NaN for missing cells (from score_table.load_score_table).
        out_dir: created if needed; existing report files are replaced atomically.
    """
    complete = drop_incomplete_blocks(table)
    baseline = complete.condition_index(config.baseline)
    comparison = compare_conditions(complete.scores, control=baseline, alpha=config.alpha,
                                    higher_is_better=complete.higher_is_better,
                                    pairwise_wilcoxon=config.pairwise_wilcoxon)
    return write_report(complete, comparison, baseline, out_dir, config)


def write_report(table: ScoreTable, comparison: Comparison, baseline: int, out_dir: str | Path,
                 config: ReportConfig = ReportConfig()) -> ReportFiles:
    """Write report.md, report.tex, ranks.csv, pvalues.csv (and the figures) for a complete table."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    context = _make_context(table, comparison, baseline, config)
    cd_png = cd_pdf = score_png = None
    if config.plots:
        cd_png, cd_pdf = _draw_cd_diagram(context, out_dir)
        score_png = _draw_score_vs_k(context, out_dir)
    ranks_csv = _atomic_write(out_dir / "ranks.csv", _ranks_csv(context))
    pvalues_csv = _atomic_write(out_dir / "pvalues.csv", _pvalues_csv(context))
    figures = {"cd": cd_png, "score_vs_k": score_png}
    markdown = _atomic_write(out_dir / "report.md", _markdown(context, figures))
    latex = _atomic_write(out_dir / "report.tex", _latex(context))
    return ReportFiles(markdown=markdown, latex=latex, ranks_csv=ranks_csv, pvalues_csv=pvalues_csv,
                       cd_png=cd_png, cd_pdf=cd_pdf, score_vs_k_png=score_png)


def _make_context(table: ScoreTable, comparison: Comparison, baseline: int, config: ReportConfig) -> _Context:
    if comparison.ranks.shape != table.scores.shape:
        raise ValueError(f"comparison of shape {comparison.ranks.shape} does not belong to a table of "
                         f"shape {table.scores.shape}")
    return _Context(table=table, comparison=comparison, baseline=baseline, labels=table.condition_labels,
                    summaries=summarize_by_dataset(table, config.dataset_column),
                    overall=summarize_by_dataset(table, dataset_column=None)[0],
                    verdict=comparison.significant_vs_control(), config=config)


# ---------------------------------------------------------------------------------------------
# Plain-language findings


def describe_condition(table: ScoreTable, index: int, baseline: int) -> str:
    """A condition in words: "real-only" for the real baseline, "adding 50 synthetic patients from
    the pair generator" for (arm, n_synthetic) conditions, else its label."""
    label = table.condition_labels[index]
    columns, values = table.condition_columns, table.conditions[index]
    if index == baseline:
        return "real-only" if label == "real" else label
    if table.k_column in columns and len(columns) == 2:
        k = values[columns.index(table.k_column)]
        source = values[1 - columns.index(table.k_column)]
        return f"adding {k} synthetic patients from the {source} generator"
    return label


def _format_p(p: float) -> str:
    """p-value for a table cell: "< 0.001" or three decimals."""
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def _p_equals(p: float) -> str:
    """p-value for a sentence, after "p": "< 0.001" or "= 0.012"."""
    return "< 0.001" if p < 0.001 else f"= {p:.3f}"


def _claim(context: _Context, j: int, verdict: int, lead: str, joiner: str = ", ") -> str:
    """'<lead><joiner>[but not ]significantly better/worse than <baseline>: rank difference, CD, Holm p.'"""
    comparison, table = context.comparison, context.table
    baseline_text = describe_condition(table, context.baseline, context.baseline)
    direction = "better" if comparison.control.rank_difference[j] < 0 else "worse"
    if verdict != 0:
        relation = f"significantly {direction} than {baseline_text}"
    else:
        relation = f"{'but ' if joiner == ', ' else ''}not significantly {direction} than {baseline_text}"
    difference = comparison.control.rank_difference[j]
    if comparison.friedman is not None:
        evidence = (f"rank difference = {difference:+.2f}, CD = {comparison.control.cd_bonferroni_dunn:.2f} "
                    f"(Bonferroni–Dunn), Holm p {_p_equals(comparison.control.p_holm[j])}")
    else:
        assert comparison.wilcoxon is not None
        evidence = (f"Wilcoxon W = {comparison.wilcoxon.statistic:g}, p {_p_equals(comparison.wilcoxon.p)}, "
                    f"median difference = {comparison.wilcoxon.median_difference:+.4g}")
    return f"{lead}{joiner}{relation}: {evidence}."


def findings(table: ScoreTable, comparison: Comparison, baseline: int) -> list[str]:
    """One plain-language sentence per finding: dropped blocks, the omnibus test, the best and the
    worst condition and every condition significantly different from the baseline (each against
    the baseline, with rank difference, CD and Holm p), and the number of Nemenyi-significant pairs.

    Args:
        table: the complete score table the comparison was computed on.
        comparison: compare_conditions(table.scores, control=baseline, ...).
        baseline: column index of the baseline condition.
    """
    return _findings(_make_context(table, comparison, baseline, ReportConfig(alpha=comparison.alpha)))


def _findings(context: _Context) -> list[str]:
    table, comparison = context.table, context.comparison
    k, n_blocks = len(table.conditions), len(table.blocks)
    sentences = []
    if table.dropped_blocks:
        total = n_blocks + len(table.dropped_blocks)
        sentences.append(f"{len(table.dropped_blocks)} of {total} blocks were dropped because some condition "
                         f"has no score there (unfinished runs); the tests use the {n_blocks} complete blocks.")
    significant = comparison.omnibus_p < comparison.alpha
    if comparison.friedman is not None:
        friedman = comparison.friedman
        outcome = "differ significantly" if significant else "show no significant difference"
        sentence = (f"Over {n_blocks} blocks the {k} conditions {outcome} (Iman–Davenport F = {friedman.f:.2f}, "
                    f"p {_p_equals(friedman.p_f)}; Friedman χ² = {friedman.chi2:.2f}, p {_p_equals(friedman.p)})")
        if not significant:
            sentence += (f", so no condition is declared better or worse than "
                         f"{describe_condition(table, context.baseline, context.baseline)}; the post-hoc "
                         "numbers below are descriptive")
        sentences.append(sentence + ".")
    order = list(np.argsort(comparison.mean_rank, kind="stable"))
    best, worst = order[0], order[-1]
    mentioned = {context.baseline}
    baseline_rank = comparison.mean_rank[context.baseline]
    if np.isclose(baseline_rank, comparison.mean_rank[best]):  # the baseline is best, alone or tied
        tied = [j for j in order if j != context.baseline and np.isclose(comparison.mean_rank[j], baseline_rank)]
        with_ = "".join(f", tied with {describe_condition(table, j, context.baseline)}" for j in tied)
        sentences.append(f"{describe_condition(table, context.baseline, context.baseline)} ranked best "
                         f"(mean rank {baseline_rank:.2f}){with_}: no synthetic condition improved on it.")
        mentioned.update(tied)
    else:
        lead = (f"{describe_condition(table, best, context.baseline)} ranked best "
                f"(mean rank {comparison.mean_rank[best]:.2f})")
        sentences.append(_claim(context, best, int(context.verdict[best]), lead))
        mentioned.add(best)
    for j in order:
        if context.verdict[j] != 0 and j not in mentioned:
            lead = f"{describe_condition(table, j, context.baseline)} (mean rank {comparison.mean_rank[j]:.2f}) ranked"
            sentences.append(_claim(context, j, int(context.verdict[j]), lead, joiner=" "))
            mentioned.add(j)
    if worst not in mentioned:
        lead = (f"{describe_condition(table, worst, context.baseline)} ranked worst "
                f"(mean rank {comparison.mean_rank[worst]:.2f})")
        sentences.append(_claim(context, worst, int(context.verdict[worst]), lead))
    if k >= 3:
        upper = np.triu_indices(k, 1)
        n_pairs = upper[0].size
        n_different = int((comparison.nemenyi_p[upper] < comparison.alpha).sum())
        sentences.append(f"{n_different} of {n_pairs} pairs of conditions differ significantly by the Nemenyi "
                         f"test (CD = {comparison.cd_nemenyi:.2f} mean-rank units at α = {comparison.alpha:g}).")
    return [s[0].upper() + s[1:] for s in sentences]


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
    """One row per condition, best first: ranks, tests vs the baseline, verdict, scores."""
    table, comparison = context.table, context.comparison
    header = (["condition", *table.condition_columns, "mean_rank", "rank_difference_vs_baseline",
               "p_nemenyi_vs_baseline", "p_bonferroni_dunn", "p_holm", "vs_baseline", "mean", "standard_error"]
              + [f"{name}[{s.dataset}]" for s in context.summaries for name in ("mean", "standard_error")])
    rows = []
    for j in np.argsort(comparison.mean_rank, kind="stable"):
        per_dataset = [v for s in context.summaries for v in (s.mean[j], s.standard_error[j])]
        rows.append([context.labels[j], *table.conditions[j], comparison.mean_rank[j],
                     comparison.control.rank_difference[j], comparison.nemenyi_p[j, context.baseline],
                     comparison.control.p_bonferroni[j], comparison.control.p_holm[j],
                     VERDICT_SYMBOL[int(context.verdict[j])], context.overall.mean[j],
                     context.overall.standard_error[j], *per_dataset])
    return _csv_text(header, rows)


def _pvalues_csv(context: _Context) -> str:
    """Tidy p-values: one row per test and pair (condition_b empty for omnibus tests)."""
    comparison, labels = context.comparison, context.labels
    k = len(labels)
    header = ["test", "condition_a", "condition_b", "statistic", "p", "p_adjusted"]
    rows = []
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
        rows.append(["holm", labels[j], labels[context.baseline], control.z[j], control.p[j], control.p_holm[j]])
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
    lines += ["## Findings", ""] + [f"- {s}" for s in _findings(context)] + [""]
    lines += _markdown_tests(context)
    if figures["cd"] is not None:
        lines += ["![Critical-difference diagram](cd_diagram.png)", ""]
    lines += ["## Mean ranks and tests against the baseline", ""]
    lines += _markdown_rank_table(context)
    lines += ["## Scores per dataset (mean ± standard error over blocks)", ""]
    lines += _markdown_score_table(context)
    if figures["score_vs_k"] is not None:
        lines += ["![Score against number of synthetic patients](score_vs_k.png)", ""]
    if table.dropped_blocks:
        lines += ["## Dropped blocks (incomplete)", ""]
        label_of = dict(zip(table.conditions, table.condition_labels))
        lines += [f"- {' / '.join(block)}: missing {', '.join(label_of[c] for c in missing)}"
                  for block, missing in table.dropped_blocks] + [""]
    if comparison.pairwise_wilcoxon_p is not None:
        lines += _markdown_pairwise_wilcoxon(context)
    return "\n".join(lines)


def _markdown_setup(context: _Context) -> list[str]:
    table, config = context.table, context.config
    direction = "higher is better" if table.higher_is_better else "lower is better"
    n_total = len(table.blocks) + len(table.dropped_blocks)
    lines = [
        f"- Source: `{table.source}` ({table.n_rows} rows used"
        + (f", filters: {', '.join(map(str, table.filters))}" if table.filters else "") + ")",
        f"- Score: mean `{table.metric}` per cell ({direction})"
        + (f", class `{table.class_name}`" if table.class_name else ""),
        f"- Blocks ({', '.join(table.block_columns)}): {len(table.blocks)} complete of {n_total}",
        f"- Conditions ({', '.join(table.condition_columns)}): {len(table.conditions)}; "
        f"baseline: {context.labels[context.baseline]}",
        f"- α = {config.alpha:g}; ranks: 1 = best, ties averaged",
    ]
    if table.n_missing_values:
        lines.append(f"- {table.n_missing_values} case values were empty/NaN and left out of the cell means")
    return lines + [""]


def _markdown_tests(context: _Context) -> list[str]:
    comparison = context.comparison
    k, n_blocks = len(context.labels), len(context.table.blocks)
    lines = ["## Omnibus test", ""]
    if comparison.friedman is not None:
        f = comparison.friedman
        lines += [f"- Friedman: χ² = {f.chi2:.4f}, df = {f.df}, p {_p_equals(f.p)}",
                  f"- Iman–Davenport: F = {f.f:.4f}, df = ({f.df1}, {f.df2}), p {_p_equals(f.p_f)}", ""]
    else:
        w = comparison.wilcoxon
        lines += [f"- k = 2: Wilcoxon signed-rank W = {w.statistic:g}, p {_p_equals(w.p)}, "
                  f"median difference = {w.median_difference:+.4g} over {w.n_blocks} blocks", ""]
    lines += ["## Critical differences", "",
              f"- Nemenyi (all pairs): q_α = {nemenyi_q_alpha(k, comparison.alpha):.3f}, "
              f"CD = {comparison.cd_nemenyi:.3f} (k = {k}, N = {n_blocks})",
              f"- Bonferroni–Dunn (vs baseline): q_α = {bonferroni_dunn_q_alpha(k, comparison.alpha):.3f}, "
              f"CD = {comparison.control.cd_bonferroni_dunn:.3f}", ""]
    return lines


def _markdown_rank_table(context: _Context) -> list[str]:
    comparison = context.comparison
    header = ("| condition | mean rank | Δ rank vs baseline | Nemenyi p | Bonferroni–Dunn p | Holm p "
              "| vs baseline |\n|---|---:|---:|---:|---:|---:|:---:|")
    rows = [header]
    for j in np.argsort(comparison.mean_rank, kind="stable"):
        name = f"**{context.labels[j]}**" if j == context.baseline else context.labels[j]
        rows.append(f"| {name} | {comparison.mean_rank[j]:.2f} | {comparison.control.rank_difference[j]:+.2f} | "
                    f"{_format_p(comparison.nemenyi_p[j, context.baseline])} | "
                    f"{_format_p(comparison.control.p_bonferroni[j])} | {_format_p(comparison.control.p_holm[j])} | "
                    f"{'baseline' if j == context.baseline else VERDICT_SYMBOL[int(context.verdict[j])]} |")
    note = ("+ / − : significantly better / worse than the baseline (Holm at α after a significant "
            "Iman–Davenport test; Wilcoxon for k = 2); 0: no significant difference.")
    return rows + ["", note, ""]


def _mean_se(mean: float, se: float) -> str:
    if np.isnan(se):
        return f"{mean:.4f}"
    return f"{mean:.4f} ± {se:.4f}"


def _markdown_score_table(context: _Context) -> list[str]:
    summaries = context.summaries
    header = "| condition | " + " | ".join(f"{s.dataset} (n = {s.n_blocks})" for s in summaries) + " |"
    rows = [header, "|---|" + "---:|" * len(summaries)]
    others = [j for j in range(len(context.labels)) if j != context.baseline]
    for j in [context.baseline, *others]:
        label = f"**{context.labels[j]}**" if j == context.baseline else context.labels[j]
        rows.append(f"| {label} | " + " | ".join(_mean_se(s.mean[j], s.standard_error[j]) for s in summaries) + " |")
    return rows + [""]


def _markdown_pairwise_wilcoxon(context: _Context) -> list[str]:
    comparison, labels = context.comparison, context.labels
    k = len(labels)
    lines = ["## Pairwise Wilcoxon signed-rank tests (Holm-corrected over all pairs)", "",
             "| condition A | condition B | p | Holm p |", "|---|---|---:|---:|"]
    for i, j in zip(*np.triu_indices(k, 1)):
        lines.append(f"| {labels[i]} | {labels[j]} | {_format_p(comparison.pairwise_wilcoxon_p[i, j])} | "
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
    lines = ["% Comparison report generated by stylepair (segmentation.report); needs \\usepackage{booktabs}"]
    if comparison.friedman is not None:
        f = comparison.friedman
        lines.append(f"% Friedman chi2 = {f.chi2:.4f} (df {f.df}, p = {f.p:.4g}); "
                     f"Iman-Davenport F = {f.f:.4f} (df {f.df1}, {f.df2}; p = {f.p_f:.4g})")
    lines += ["\\begin{table}[t]", "\\centering", "\\small",
              "\\begin{tabular}{l r " + "r " * len(summaries) + "c}", "\\toprule",
              "Condition & Mean rank & " + " & ".join(_tex_escape(s.dataset) for s in summaries)
              + " & vs.\\ baseline \\\\",
              "\\midrule"]
    for j in np.argsort(comparison.mean_rank, kind="stable"):
        name = _tex_escape(context.labels[j])
        name = f"\\textbf{{{name}}}" if j == context.baseline else name
        cells = [f"${s.mean[j]:.3f}$" if np.isnan(s.standard_error[j])
                 else f"${s.mean[j]:.3f} \\pm {s.standard_error[j]:.3f}$" for s in summaries]
        verdict = "baseline" if j == context.baseline else symbol[int(context.verdict[j])]
        lines.append(f"{name} & ${comparison.mean_rank[j]:.2f}$ & " + " & ".join(cells) + f" & {verdict} \\\\")
    omnibus = (f"Iman--Davenport $F = {comparison.friedman.f:.2f}$, $p {_p_equals(comparison.friedman.p_f)}$"
               if comparison.friedman is not None else f"Wilcoxon $p {_p_equals(comparison.wilcoxon.p)}$")
    caption = (f"Mean {_tex_escape(table.metric)} $\\pm$ standard error over blocks and mean rank over "
               f"{len(table.blocks)} blocks ($k = {k}$). {omnibus}; Nemenyi CD $= {comparison.cd_nemenyi:.2f}$ "
               f"at $\\alpha = {comparison.alpha:g}$. $+$/$-$: significantly better/worse than the baseline (Holm).")
    lines += ["\\bottomrule", "\\end{tabular}", f"\\caption{{{caption}}}", "\\label{tab:comparison}",
              "\\end{table}", ""]
    return "\n".join(lines)


def _atomic_write(path: Path, text: str) -> Path:
    """Write text to path via a temporary file in the same directory and a rename."""
    temporary = path.with_name(f".{path.name}.tmp")
    with open(temporary, "w", encoding="utf-8", newline="") as handle:
        handle.write(text)
    os.replace(temporary, path)
    return path
