"""The overview of a study with several n_real or test sets: one report per group, and above them
what only the whole grid shows.

    OUT/report.md (+ .html)      data-scaling figure and annotation-efficiency table per test set,
                                 the crossover n of each arm, the verdicts of every group side by side
                                 (in- and out-of-distribution next to each other), links to the groups
    OUT/scaling-TESTSET.png      the score against n, one line per arm and k, real-only in black
    OUT/efficiency.csv           arm, k, n, test set, score, equivalent real n and its interval
    OUT/TESTSET/nN/              the full report of one group (`segmentation.report.make_report`);
                                 n = 0 (synthetic only) has no real-only baseline of its own and
                                 appears in the overview only

A group is one value of each grouping column the file has with more than one value: ``test_set``
(in-distribution first) and ``n_real``.
"""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass, replace
from pathlib import Path

from segmentation.report import plots
from segmentation.report.html import markdown_to_html, md_escape
from segmentation.report.report import ReportConfig, make_report
from segmentation.report.scaling import advantages, annotation_efficiency, crossover, describe_n, scaling_data
from segmentation.report.score_table import RowFilter, ScoreTableConfig, build_score_table, natural_key

GROUP_COLUMNS = ("test_set", "n_real")
IN_DISTRIBUTION = "in-distribution"


@dataclass(frozen=True)
class Group:
    """One report of the overview: its values of the grouping columns and its folder."""

    values: dict[str, str]
    folder: str

    @property
    def label(self) -> str:
        parts = [self.values[c] for c in GROUP_COLUMNS[:1] if c in self.values]
        parts += [f"n = {self.values['n_real']}"] if "n_real" in self.values else []
        return ", ".join(parts)


def _ordered(values: set[str], column: str) -> list[str]:
    if column == "test_set":
        return sorted(values, key=lambda v: (v != IN_DISTRIBUTION, v))
    return sorted(values, key=natural_key)


def groups_of(columns: list[str], rows: list[dict[str, str]], config: ScoreTableConfig) -> list[Group]:
    """The groups of a file (empty: it needs one report only): the grouping columns that the file has
    with several values among the rows the filters keep, and that no other role or filter uses."""
    used = {*config.block_columns, *config.condition_columns, *config.replicate_columns,
            *(f.column for f in config.filters)}
    kept = [r for r in rows if all(f.keeps(r) for f in config.filters)]
    axes = {c: _ordered({r[c] for r in kept}, c) for c in GROUP_COLUMNS if c in columns and c not in used}
    axes = {c: v for c, v in axes.items() if len(v) > 1}
    if not axes:
        return []
    combos: list[dict[str, str]] = [{}]
    for column, values in axes.items():
        combos = [{**c, column: v} for c in combos for v in values]
    present = {tuple(r[c] for c in axes) for r in kept}
    return [Group(c, "/".join(f"n{v}" if k == "n_real" else v for k, v in c.items()))
            for c in combos if tuple(c.values()) in present]


def write_overview(csv_path: Path, columns: list[str], rows: list[dict[str, str]], config: ScoreTableConfig,
                   report_config: ReportConfig, groups: list[Group], out: Path, study: dict | None) -> Path:
    """Write every group's report and the overview (see the module docstring); returns OUT/report.md."""
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    for group in groups:
        if group.values.get("n_real") == "0":
            continue  # synthetic only: no real-only runs at n = 0 to compare with
        filters = config.filters + tuple(RowFilter(c, v) for c, v in group.values.items())
        table = build_score_table(columns, rows, replace(config, filters=filters), source=str(csv_path))
        written[group.folder] = make_report(table, out / group.folder, report_config, study).markdown
    metric_label = f"{config.metric}" + (f" ({config.class_name})" if config.class_name else "")
    lines = [f"# Study overview: {metric_label}", "", f"- Source: `{csv_path}`",
             f"- {len(written)} group reports (one per {' × '.join(c for c in GROUP_COLUMNS if any(c in g.values for g in groups))}); "
             f"each has the paired verdicts against real-only, the controls' check and the all-condition ranking", ""]
    efficiency_rows = []
    if "n_real" in columns and len({r["n_real"] for r in rows if all(f.keeps(r) for f in config.filters)}) > 1:
        test_sets = _ordered({r.get("test_set", IN_DISTRIBUTION) for r in rows}, "test_set")
        for test_set in test_sets:
            lines += _scaling_section(columns, rows, config, report_config, test_set, out, efficiency_rows)
    lines += _verdict_section(groups, written, out)
    lines += ["## Group reports", ""] + [f"- [{md_escape(g.label)}]({path.relative_to(out)})" for g in groups
                                          for f, path in written.items() if f == g.folder] + [""]
    if efficiency_rows:
        _write_csv(out / "efficiency.csv", efficiency_rows)
    text = "\n".join(lines)
    (out / "report.md").write_text(text)
    (out / "report.html").write_text(markdown_to_html(text, out, f"stylepair overview: {metric_label}"))
    return out / "report.md"


def _scaling_section(columns, rows, config: ScoreTableConfig, report_config: ReportConfig, test_set: str, out: Path,
                     efficiency_rows: list[dict]) -> list[str]:
    """Figure, efficiency table and crossovers of one test set."""
    kept = [r for r in rows if r.get("test_set", IN_DISTRIBUTION) == test_set and all(f.keeps(r) for f in config.filters)]
    data = scaling_data(columns, kept, config.metric, config.class_name, config.direction(), report_config.baseline)
    name = f"scaling-{test_set}.png"
    if report_config.plots:
        curves = {report_config.baseline: (data.curve(data.baseline, 0), data.standard_error(data.baseline, 0))}
        curves.update({f"{a} +{k}": (data.curve(a, k), data.standard_error(a, k)) for a, k in data.conditions})
        figure = plots.scaling_figure(list(data.n_values), curves, report_config.baseline,
                                      f"mean {config.metric}" + (f" ({config.class_name})" if config.class_name else ""),
                                      f"{test_set}: score against real training patients (mean ± s.e. over blocks)")
        plots.save_figure(figure, out / name)
    lines = [f"## Data scaling — {md_escape(test_set)}", ""]
    if report_config.plots:
        lines += [f"![Score against the number of real patients]({name})", ""]
    lines += ["Each arm at n real patients is worth n' real patients alone: the n where the real-only curve reaches "
              "its mean score (linear between the studied n; 95 % interval from resampling the blocks).", "",
              f"| condition | n real | mean {config.metric} | ≈ real patients alone | 95 % interval |",
              "|---|---:|---:|---:|---|"]
    for e in annotation_efficiency(data):
        lead = "synthetic only" if e.n == 0 else f"{e.n} real"
        lines.append(f"| {md_escape(e.arm)} +{e.k} | {e.n} | {e.score:.3f} | {describe_n(e.n_equivalent, data.n_values)} | "
                     f"[{describe_n(e.low, data.n_values)}, {describe_n(e.high, data.n_values)}] |")
        efficiency_rows.append({"test_set": test_set, "arm": e.arm, "k": e.k, "n_real": e.n, "score": e.score,
                                "equivalent_n": e.n_equivalent, "low": e.low, "high": e.high,
                                "sentence": f"{lead} + {e.k} {e.arm} ≈ {describe_n(e.n_equivalent, data.n_values)} "
                                            f"real alone [{describe_n(e.low, data.n_values)}, "
                                            f"{describe_n(e.high, data.n_values)}]"})
    lines += ["", "Crossover (the n beyond which an arm no longer beats real-only at the same n):", ""]
    for arm, k in data.conditions:
        n = crossover(data, arm, k)
        helps = [advantage > 0 for _, advantage in advantages(data, arm, k)]
        if n is not None:
            text = f"stops helping at n ≈ {n:.1f}"
        elif helps and all(helps):
            text = "helps at every studied n"
        elif helps and not any(helps):
            text = "does not help at any studied n"
        else:
            text = ("no single crossover (helps and hurts alternately)" if helps
                    else "synthetic only (n = 0): its equivalent real n is in the table above")
        lines.append(f"- {md_escape(arm)} +{k}: {text}")
    return lines + [""]


def _verdict_section(groups: list[Group], written: dict[str, Path], out: Path) -> list[str]:
    """The paired verdict of every condition in every group report, side by side."""
    verdicts: dict[str, dict[str, str]] = {}
    labels = []
    for group in groups:
        if group.folder not in written:
            continue
        labels.append(group.label)
        with open(out / group.folder / "ranks.csv", newline="") as handle:
            for row in csv.DictReader(handle):
                if row["vs_baseline"] == "baseline":
                    continue
                cell = (f"{float(row['median_difference']):+.3f} [{float(row['ci_low']):+.3f}, "
                        f"{float(row['ci_high']):+.3f}] {row['vs_baseline']}")
                verdicts.setdefault(row["condition"], {})[group.label] = cell
    if not labels:
        return []
    lines = ["## Verdicts against real-only, group by group", "",
             "Median paired difference with real-only [95 % bootstrap interval] and the verdict (+ / 0 / −: Holm-"
             "adjusted exact Wilcoxon); in- and out-of-distribution test sets side by side.", "",
             "| condition | " + " | ".join(md_escape(label) for label in labels) + " |", "|---|" + "---|" * len(labels)]
    for condition in sorted(verdicts, key=natural_key):
        lines.append(f"| {md_escape(condition)} | " + " | ".join(verdicts[condition].get(label, "–") for label in labels)
                     + " |")
    return lines + [""]


def _write_csv(path: Path, rows: list[dict]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: (repr(v) if isinstance(v, float) else v) for k, v in row.items()} for row in rows)
    path.write_text(buffer.getvalue())
