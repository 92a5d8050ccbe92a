"""The report's figures: Demšar's critical-difference diagram and the score-vs-k curves.

Figures are built on `matplotlib.figure.Figure` objects (no pyplot state) and saved atomically.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from segmentation.report.score_table import DatasetSummary, natural_key
from training.data.fsutils import atomic_write

__all__ = [
    "CDDiagramStyle",
    "nonsignificant_groups",
    "cd_diagram",
    "score_vs_k_figure",
    "scaling_figure",
    "save_figure",
]


@dataclass(frozen=True)
class CDDiagramStyle:
    """Sizes of the CD diagram, in inches and points."""

    width: float = 11.0
    font_size: float = 9.0
    row_height: float = 0.24  # vertical step between two condition labels
    group_row_height: float = 0.11  # vertical step between two rows of group bars
    char_width: float = 0.58  # average character width as a fraction of the font size


def nonsignificant_groups(mean_rank: np.ndarray, pvalues: np.ndarray, alpha: float) -> list[tuple[int, int]]:
    """Maximal runs of conditions, in rank order, that no test separates.

    Args:
        mean_rank: [k] mean ranks.
        pvalues: [k, k] pairwise p-values (Nemenyi), symmetric.
        alpha: significance level.

    Returns:
        (first, last) positions in the rank-sorted order (argsort of mean_rank), first < last, such
        that every pair inside is non-significant (p >= alpha) and the run cannot be extended; runs
        contained in an earlier one are left out. Nemenyi p-values fall with the rank distance, so a
        run is non-significant as soon as its two ends are.
    """
    order = np.argsort(mean_rank, kind="stable")
    k = order.size
    groups: list[tuple[int, int]] = []
    last_end = -1
    for first in range(k):
        last = first
        while last + 1 < k and all(pvalues[order[i], order[last + 1]] >= alpha for i in range(first, last + 1)):
            last += 1
        if last > first and last > last_end:
            groups.append((first, last))
            last_end = last
    return groups


def _pack_rows(groups: list[tuple[int, int]], mean_sorted: np.ndarray, gap: float) -> list[int]:
    """Row index for each group bar so that bars in one row keep `gap` rank units apart."""
    row_ends: list[float] = []
    rows = []
    for first, last in groups:
        start, end = mean_sorted[first], mean_sorted[last]
        for row, row_end in enumerate(row_ends):
            if start > row_end + gap:
                row_ends[row] = end
                rows.append(row)
                break
        else:
            row_ends.append(end)
            rows.append(len(row_ends) - 1)
    return rows


def cd_diagram(labels: list[str], mean_rank: np.ndarray, pvalues: np.ndarray, cd: float, alpha: float,
               title: str = "", highlight: int | None = None, style: CDDiagramStyle = CDDiagramStyle()) -> Figure:
    """Demšar's critical-difference diagram.

    A rank axis (1 = best, on the left); every condition is a line from its mean rank down to its
    label (better half on the left, worse half on the right); thick bars join the conditions that
    are not significantly different (`pvalues` >= alpha); the CD is drawn as a bar above the axis.

    Args:
        labels: k condition names. mean_rank: [k] in [1, k]. pvalues: [k, k] pairwise (Nemenyi).
        cd: critical difference in rank units. highlight: index of the condition printed in bold
        (the baseline).
    """
    mean_rank = np.asarray(mean_rank, dtype=np.float64)
    k = len(labels)
    assert mean_rank.shape == (k,) and pvalues.shape == (k, k)
    order = np.argsort(mean_rank, kind="stable")
    mean_sorted = mean_rank[order]
    groups = nonsignificant_groups(mean_rank, pvalues, alpha)
    n_left = math.ceil(k / 2)
    texts = [f"{labels[j]} ({mean_rank[j]:.2f})" for j in order]

    # Horizontal layout in inches: labels take the margins, the rank axis the middle.
    label_inches = max(len(t) for t in texts) * style.char_width * style.font_size / 72.0 + 0.35
    # about a third of an inch per rank, within what the labels leave of the width, at least 3 inches
    axis_inches = max(min(style.width - 2 * label_inches, 0.35 * k), 3.0)
    width = axis_inches + 2 * label_inches
    lowest, highest = 1.0, float(max(k, 2))
    per_inch = (highest - lowest) / axis_inches  # rank units per inch
    x_min, x_max = lowest - label_inches * per_inch, highest + label_inches * per_inch

    # Vertical layout in inches from the top: title, CD bar, axis, group bars, label rows.
    top = 0.35 + (0.3 if title else 0.0)
    cd_y = top + 0.15
    axis_y = cd_y + 0.45
    bar_rows = _pack_rows(groups, mean_sorted, gap=0.4 * per_inch)  # bars sharing a row stay apart
    n_bar_rows = max(bar_rows, default=-1) + 1
    first_label_y = axis_y + 0.25 + n_bar_rows * style.group_row_height + 0.1
    height = first_label_y + (n_left - 1) * style.row_height + 0.3

    figure = Figure(figsize=(width, height))
    ax = figure.add_axes((0.0, 0.0, 1.0, 1.0))
    ax.set_xlim(x_min, x_max)
    ax.set_ylim(height, 0.0)  # y grows downwards, in inches
    ax.axis("off")
    if title:
        ax.text((x_min + x_max) / 2, 0.3, title, ha="center", va="center", fontsize=style.font_size + 2)

    # Rank axis with ticks and tick labels above it.
    ax.plot([lowest, highest], [axis_y, axis_y], color="black", linewidth=1.0)
    tick_step = 1 if k <= 15 else 2
    for tick in range(1, k + 1):
        major = (tick - 1) % tick_step == 0
        ax.plot([tick, tick], [axis_y, axis_y - (0.08 if major else 0.04)], color="black", linewidth=0.8)
        if major:
            ax.text(tick, axis_y - 0.12, str(tick), ha="center", va="bottom", fontsize=style.font_size)

    # Critical difference above the axis, starting at rank 1.
    ax.plot([lowest, lowest + cd], [cd_y, cd_y], color="black", linewidth=1.5)
    for end in (lowest, lowest + cd):
        ax.plot([end, end], [cd_y - 0.05, cd_y + 0.05], color="black", linewidth=1.0)
    ax.text(lowest + cd / 2, cd_y - 0.08, f"CD = {cd:.2f}", ha="center", va="bottom", fontsize=style.font_size)

    # Bars joining conditions that are not significantly different.
    overhang = 0.05 * per_inch  # bars reach a little past their end conditions
    for (first, last), row in zip(groups, bar_rows):
        y = axis_y + 0.25 + row * style.group_row_height
        ax.plot([mean_sorted[first] - overhang, mean_sorted[last] + overhang], [y, y],
                color="black", linewidth=3.0, solid_capstyle="round")

    # Condition lines and labels: best half to the left margin, worst half to the right margin.
    for position, j in enumerate(order):
        on_left = position < n_left
        row = position if on_left else k - 1 - position
        y = first_label_y + row * style.row_height
        x_end = lowest - 0.15 * per_inch if on_left else highest + 0.15 * per_inch
        ax.plot([mean_rank[j], mean_rank[j], x_end], [axis_y, y, y], color="0.35", linewidth=0.8)
        ax.text(x_end - 0.05 * per_inch if on_left else x_end + 0.05 * per_inch, y, texts[position],
                ha="right" if on_left else "left", va="center", fontsize=style.font_size,
                fontweight="bold" if j == highlight else "normal")
    return figure


def score_vs_k_figure(summaries: list[DatasetSummary], conditions: list[tuple[str, ...]],
                      condition_columns: tuple[str, ...], k_column: str, baseline: int,
                      metric_label: str, panel_size: tuple[float, float] = (4.6, 3.4)) -> Figure:
    """Score ± standard error against the number of added synthetic patients, one panel per dataset.

    One line per synthetic source (the condition columns other than `k_column`), the baseline as a
    horizontal band (mean ± s.e.). Log x-axis when the k values span a factor of 20 or more.

    Args:
        summaries: per-dataset means and standard errors over the conditions (k entries each).
        conditions: the k condition value tuples; condition_columns must include k_column.
        baseline: index of the baseline condition.
    """
    if k_column not in condition_columns:
        raise ValueError(f"score-vs-k needs {k_column!r} among the condition columns {condition_columns}")
    k_position = condition_columns.index(k_column)
    try:
        k_values = [float(c[k_position]) for c in conditions]
    except ValueError as error:
        raise ValueError(f"{k_column} values must be numbers: {error}") from None
    def source_of(c: tuple[str, ...]) -> str:
        return " ".join(v for i, v in enumerate(c) if i != k_position)
    sources = sorted({source_of(c) for i, c in enumerate(conditions) if i != baseline}, key=natural_key)
    positive_k = sorted({k for i, k in enumerate(k_values) if i != baseline and k > 0})
    log_x = bool(positive_k) and positive_k[-1] / positive_k[0] >= 20 and all(
        k > 0 for i, k in enumerate(k_values) if i != baseline)

    n_panels = len(summaries)
    n_cols = min(3, n_panels)
    n_rows = math.ceil(n_panels / n_cols)
    figure = Figure(figsize=(panel_size[0] * n_cols, panel_size[1] * n_rows + 0.6 + 0.22 * len(sources) / n_cols),
                    layout="constrained")
    axes = figure.subplots(n_rows, n_cols, squeeze=False)
    colours = [f"C{i % 10}" for i in range(len(sources))]
    markers = "osD^v<>ph*"
    baseline_name = source_of(conditions[baseline]) or "baseline"
    handles = {}
    for panel, summary in enumerate(summaries):
        ax = axes[panel // n_cols][panel % n_cols]
        base_mean, base_se = summary.mean[baseline], np.nan_to_num(summary.standard_error[baseline])
        band = ax.axhspan(base_mean - base_se, base_mean + base_se, color="0.8", alpha=0.7, linewidth=0)
        line = ax.axhline(base_mean, color="0.3", linestyle="--", linewidth=1.0)
        handles[f"{baseline_name} (baseline, mean ± s.e.)"] = (band, line)
        for s, source in enumerate(sources):
            columns = sorted((j for j, c in enumerate(conditions) if j != baseline and source_of(c) == source),
                             key=lambda j: k_values[j])
            x = np.array([k_values[j] for j in columns])
            y = summary.mean[columns]
            error = np.nan_to_num(summary.standard_error[columns])
            shown = ~np.isnan(y)
            container = ax.errorbar(x[shown], y[shown], yerr=error[shown], color=colours[s],
                                    marker=markers[s % len(markers)], markersize=4, capsize=3, linewidth=1.3)
            handles[source] = container
        if log_x:
            ax.set_xscale("log")
        ax.set_xticks(positive_k if log_x else sorted({k for i, k in enumerate(k_values) if i != baseline}))
        ax.set_xticklabels([f"{k:g}" for k in ax.get_xticks()])
        ax.minorticks_off()
        ax.set_title(f"{summary.dataset} ({summary.n_blocks} blocks)", fontsize=10)
        ax.set_xlabel("synthetic patients added")
        ax.set_ylabel(metric_label)
        ax.grid(True, color="0.9", linewidth=0.6)
    for panel in range(n_panels, n_rows * n_cols):
        axes[panel // n_cols][panel % n_cols].set_visible(False)
    figure.legend(list(handles.values()), list(handles.keys()), loc="outside lower center",
                  ncols=min(len(handles), 4), fontsize=9, frameon=False)
    return figure


def scaling_figure(n_values: list[int], curves: dict[str, tuple[np.ndarray, np.ndarray]], baseline: str,
                   ylabel: str, title: str) -> Figure:
    """Score against the number of real training patients: one line per condition label, mean
    [len(n_values)] with standard-error bars [len(n_values)] (NaN points are left out); the real-only
    ``baseline`` drawn black and thick as the reference; n = 0 (synthetic only) at x = 0."""
    figure = Figure(figsize=(7.5, 4.8))
    axes = figure.subplots()
    x = np.asarray(n_values, dtype=float)
    for label, (mean, error) in curves.items():
        keep = np.isfinite(mean)
        if not keep.any():
            continue
        style = dict(color="black", linewidth=2.5, zorder=3) if label == baseline else dict(linewidth=1.3, alpha=0.9)
        axes.errorbar(x[keep], mean[keep], yerr=np.nan_to_num(error[keep]), marker="o", markersize=4, capsize=3,
                      label=label, **style)
    axes.set_xlabel("real training patients (n)")
    axes.set_ylabel(ylabel)
    axes.set_xticks(x)
    axes.set_title(title, fontsize=10)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    figure.tight_layout()
    return figure


def save_figure(figure: Figure, path: str | Path, dpi: int = 150) -> Path:
    """Save `figure` atomically (temporary file in the same directory, then rename); format from the suffix."""
    path = Path(path)
    return atomic_write(path, lambda temporary: figure.savefig(temporary, format=path.suffix.lstrip("."), dpi=dpi))
