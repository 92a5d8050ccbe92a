"""From a tidy per-case CSV (the study's `cases.csv`, or any long-format score file) to the
blocks × conditions score matrix the rank statistics work on.

One row of the CSV is one evaluated test case of one training run, or -- for the metrics of a whole
test set (`TEST_SET_METRICS`: COCO's AP) -- a row whose case is `TEST_SET_CASE`. A *block* is an independent unit
(default: dataset × fold), a *condition* is what is compared (default: arm × number of synthetic
patients), and a cell's score is the mean of the metric over the test cases (and repeats) of that
block and condition. Cells without any finished run are missing; `drop_incomplete_blocks` removes
the blocks that lack a condition and records which ones, so that the report can say so.
"""
from __future__ import annotations

import csv
import math
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

__all__ = [
    "LOWER_IS_BETTER_METRICS",
    "TEST_SET_CASE",
    "TEST_SET_METRICS",
    "RowFilter",
    "ScoreTableConfig",
    "ScoreTable",
    "resolve_scores_csv",
    "read_csv_rows",
    "parse_filter",
    "build_score_table",
    "load_score_table",
    "drop_incomplete_blocks",
    "condition_label",
    "natural_key",
    "DatasetSummary",
    "summarize_by_dataset",
]

# Metrics where a smaller value is better; anything else is treated as higher-is-better unless told.
LOWER_IS_BETTER_METRICS = frozenset({"hd95", "hd", "hausdorff", "hausdorff95", "asd", "assd", "masd",
                                     "msd", "rmse", "mae", "mse", "loss", "error", "fid", "kid",
                                     "false_positive", "object_false_positives"})


# The values a metric can take (inclusive); a score outside is an error, not a result.
METRIC_RANGES = {"dice": (0.0, 1.0), "nsd": (0.0, 1.0), "detected": (0.0, 1.0), "false_positive": (0.0, 1.0),
                 "lesion_sensitivity": (0.0, 1.0), "hd95": (0.0, math.inf), "object_sensitivity": (0.0, 1.0),
                 "object_false_positives": (0.0, math.inf), "ap50": (0.0, 1.0), "map": (0.0, 1.0)}

# Metrics of a whole test set (one value per run, not per case), in rows whose case is TEST_SET_CASE;
# the other metrics leave those rows out, these read only them.
TEST_SET_METRICS = ("ap50", "map")
TEST_SET_CASE = "(test set)"


@dataclass(frozen=True)
class RowFilter:
    """Keep rows where `column` equals `value` (or differs from it when negate=True)."""

    column: str
    value: str
    negate: bool = False

    def keeps(self, row: dict[str, str]) -> bool:
        return (row[self.column] == self.value) != self.negate

    def __str__(self) -> str:
        return f"{self.column}{'!=' if self.negate else '='}{self.value}"


@dataclass(frozen=True)
class ScoreTableConfig:
    """How the tidy CSV maps onto blocks × conditions.

    metric: the score column (e.g. "dice", "hd95"). higher_is_better: None infers it from the
    metric name (LOWER_IS_BETTER_METRICS). class_name/class_column: keep only rows of this class
    (None: no class filtering). block_columns / condition_columns: the columns whose values make a
    block / a condition. repeats_as_blocks: when the file has ``repeat_column``, each repeat is its
    own block (added to the block columns) -- True by default, since repeats are independent
    replications; False averages repeats inside a cell. replicate_columns: columns that may vary
    inside one cell and are averaged over (test cases); any other duplication inside a cell is an
    error, because it means two different experiments would be averaged silently. k_column: number of added synthetic
    patients inside the condition columns (used for labels and the score-vs-k plot).
    """

    metric: str = "dice"
    higher_is_better: bool | None = None
    class_name: str | None = "foreground"
    class_column: str = "class"
    block_columns: tuple[str, ...] = ("dataset", "fold")
    condition_columns: tuple[str, ...] = ("arm", "n_synthetic")
    replicate_columns: tuple[str, ...] = ("case",)
    k_column: str = "n_synthetic"
    filters: tuple[RowFilter, ...] = ()
    repeats_as_blocks: bool = True
    repeat_column: str = "repeat"

    def resolved(self, columns: list[str]) -> "ScoreTableConfig":
        """The configuration for a file with ``columns``: the repeat column added to the blocks (or
        to the replicates) when the file has it and no other role was given to it."""
        if self.repeat_column not in columns or self.repeat_column in (*self.block_columns, *self.condition_columns,
                                                                       *self.replicate_columns):
            return self
        if self.repeats_as_blocks:
            return replace(self, block_columns=(*self.block_columns, self.repeat_column))
        return replace(self, replicate_columns=(*self.replicate_columns, self.repeat_column))

    def direction(self) -> bool:
        """True when a higher metric value is better."""
        if self.higher_is_better is not None:
            return self.higher_is_better
        return self.metric.lower() not in LOWER_IS_BETTER_METRICS


@dataclass(frozen=True)
class ScoreTable:
    """Per-block, per-condition scores.

    scores [N, k] float (NaN = missing cell; +-inf kept, e.g. an HD95 of an empty prediction);
    n_values [N, k] int: case values averaged in each cell. blocks / conditions: the value tuples of
    the block / condition columns, in sorted (natural) order. n_missing_values: case rows whose
    metric was empty or NaN and was left out of the cell means; n_absent_values: those of them
    whose class was absent from the patient's reference (``in_reference`` = 0: excluded by the
    study's empty-class convention). sources [k]: the ``source`` column's value of each condition
    ("" when the file has none or it varies), e.g. "control:oracle". dropped_blocks: (block, missing
    conditions) for every block removed by drop_incomplete_blocks. class_name: the class the rows
    were restricted to (None: all rows).
    """

    source: str
    metric: str
    higher_is_better: bool
    block_columns: tuple[str, ...]
    condition_columns: tuple[str, ...]
    k_column: str
    blocks: tuple[tuple[str, ...], ...]
    conditions: tuple[tuple[str, ...], ...]
    scores: np.ndarray
    n_values: np.ndarray
    n_rows: int
    n_missing_values: int
    filters: tuple[RowFilter, ...] = ()
    class_name: str | None = None
    dropped_blocks: tuple[tuple[tuple[str, ...], tuple[tuple[str, ...], ...]], ...] = field(default=())
    n_absent_values: int = 0
    sources: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        assert self.scores.shape == (len(self.blocks), len(self.conditions)), self.scores.shape
        assert self.n_values.shape == self.scores.shape

    @property
    def condition_labels(self) -> list[str]:
        """Short unique display names of the conditions, e.g. "real", "pair +50"."""
        labels = [condition_label(self.condition_columns, c, self.k_column) for c in self.conditions]
        if len(set(labels)) == len(labels):
            return labels
        return [", ".join(f"{col}={v}" for col, v in zip(self.condition_columns, c)) for c in self.conditions]

    @property
    def block_labels(self) -> list[str]:
        return [" / ".join(b) for b in self.blocks]

    def condition_index(self, name: str) -> int:
        """Column index of the condition called `name`: its label (e.g. "real", "pair +50"), its
        values joined by commas ("pair,50"), or the value of its first condition column when that
        value names exactly one condition (e.g. "real" for arm = real)."""
        labels = self.condition_labels
        for candidates in (labels, [",".join(c) for c in self.conditions]):
            if name in candidates:
                return candidates.index(name)
        first = [i for i, c in enumerate(self.conditions) if c[0] == name]
        if len(first) == 1:
            return first[0]
        if len(first) > 1:
            raise ValueError(f"baseline {name!r} names {len(first)} conditions "
                             f"({', '.join(labels[i] for i in first)}) in {self.source}; name one")
        raise ValueError(f"no condition called {name!r} in {self.source}; conditions are: {', '.join(labels)}")


def natural_key(value: str) -> tuple:
    """Sort key that orders "2" before "10" and numbers before words."""
    try:
        return (0, float(value), "")
    except ValueError:
        return (1, 0.0, value)


def condition_label(columns: tuple[str, ...], values: tuple[str, ...], k_column: str = "n_synthetic") -> str:
    """Display name of a condition: the non-k values joined by spaces, then "+k" when k != 0.

    ("arm", "n_synthetic"), ("pair", "50") -> "pair +50"; ("real", "0") -> "real".
    """
    parts = [v for col, v in zip(columns, values) if col != k_column]
    name = " ".join(parts)
    if k_column in columns:
        k = values[columns.index(k_column)]
        if natural_key(k) != (0, 0.0, ""):
            name = f"{name} +{k}" if name else f"+{k}"
    return name or ",".join(values)


def resolve_scores_csv(path: str | Path) -> Path:
    """A results directory (holding cases.csv) or a CSV file -> the CSV's path; clear error otherwise."""
    path = Path(path)
    if path.is_dir():
        candidate = path / "cases.csv"
        if not candidate.is_file():
            raise FileNotFoundError(f"{path} is a directory without cases.csv: give a study results "
                                    "directory or a tidy CSV file of scores")
        return candidate
    if not path.is_file():
        raise FileNotFoundError(f"no such results directory or CSV file: {path}")
    return path


def read_csv_rows(path: str | Path) -> tuple[list[str], list[dict[str, str]]]:
    """Read a CSV with a header row -> (column names, rows as dicts of stripped strings)."""
    path = Path(path)
    with open(path, newline="", encoding="utf-8-sig") as handle:  # -sig: spreadsheets write a BOM
        reader = csv.DictReader(handle)
        if reader.fieldnames is None:
            raise ValueError(f"{path}: empty file, expected a CSV header row")
        columns = [c.strip() for c in reader.fieldnames]
        if len(set(columns)) != len(columns):
            raise ValueError(f"{path}: duplicate column names in header {columns}")
        rows = []
        for line_number, raw in enumerate(reader, start=2):
            if None in raw:
                raise ValueError(f"{path}, line {line_number}: more fields than header columns")
            if any(v is None for v in raw.values()):
                raise ValueError(f"{path}, line {line_number}: fewer fields than header columns")
            row = {c.strip(): v.strip() for c, v in raw.items()}
            rows.append(row)
    return columns, rows


def parse_filter(text: str) -> RowFilter:
    """"COLUMN=VALUE" or "COLUMN!=VALUE" -> RowFilter."""
    match = re.fullmatch(r"\s*([^=!]+?)\s*(!?=)\s*(.*?)\s*", text)
    if match is None:
        raise ValueError(f"filter {text!r} is not of the form COLUMN=VALUE or COLUMN!=VALUE")
    return RowFilter(column=match.group(1), value=match.group(3), negate=match.group(2) == "!=")


def _parse_metric(text: str, source: str, line_number: int, metric: str) -> float:
    """Metric text -> float; empty / "nan" -> NaN (a missing value), "inf" kept, anything else an
    error; so is a value outside the metric's range (`METRIC_RANGES`: a Dice of 1.2 or inf, a
    negative HD95) -- a broken score must not turn into a significant difference."""
    if text == "" or text.lower() in ("nan", "na", "none"):
        return math.nan
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{source}, line {line_number}: {metric} = {text!r} is not a number") from None
    low, high = METRIC_RANGES.get(metric, (-math.inf, math.inf))
    if not low <= value <= high and not (math.isinf(value) and math.isinf(high) and value > 0):
        raise ValueError(f"{source}, line {line_number}: {metric} = {text} lies outside its range [{low:g}, {high:g}]")
    return value


def build_score_table(columns: list[str], rows: list[dict[str, str]], config: ScoreTableConfig,
                      source: str = "<rows>") -> ScoreTable:
    """Aggregate tidy rows into the blocks × conditions mean-score matrix (see ScoreTable).

    Rows are filtered by class and config.filters; each cell is the mean of the metric over its
    rows (NaN metric values left out and counted). Raises ValueError naming `source` for missing
    columns, non-numeric metric values, or two rows of one cell with the same replicate values.
    """
    config = config.resolved(columns)
    needed = set(config.block_columns) | set(config.condition_columns) | {config.metric}
    needed |= {f.column for f in config.filters}
    if config.class_name is not None:
        needed.add(config.class_column)
    missing = sorted(needed - set(columns))
    if missing:
        raise ValueError(f"{source}: missing column(s) {', '.join(missing)}; the file has {', '.join(columns)}")
    if not config.block_columns or not config.condition_columns:
        raise ValueError("need at least one block column and one condition column")
    overlap = set(config.block_columns) & set(config.condition_columns)
    if overlap:
        raise ValueError(f"column(s) {', '.join(sorted(overlap))} cannot be both block and condition")
    replicate_columns = [c for c in config.replicate_columns if c in columns]

    cells: dict[tuple[tuple[str, ...], tuple[str, ...]], list[float]] = {}
    seen_replicates: dict[tuple, int] = {}
    n_rows = 0
    n_missing = n_absent = 0
    condition_sources: dict[tuple[str, ...], set[str]] = {}
    for line_number, row in enumerate(rows, start=2):
        if config.class_name is not None and row[config.class_column] != config.class_name:
            continue
        if not all(f.keeps(row) for f in config.filters):
            continue
        if "case" in row and (row["case"] == TEST_SET_CASE) != (config.metric in TEST_SET_METRICS):
            continue
        n_rows += 1
        block = tuple(row[c] for c in config.block_columns)
        condition = tuple(row[c] for c in config.condition_columns)
        if replicate_columns:
            replicate_key = (block, condition, tuple(row[c] for c in replicate_columns))
            if replicate_key in seen_replicates:
                raise ValueError(
                    f"{source}, lines {seen_replicates[replicate_key]} and {line_number}: two rows for "
                    f"block {block}, condition {condition}, {dict(zip(replicate_columns, replicate_key[2]))}; "
                    "another column varies within a cell: add it to the block or condition columns, "
                    "or select one value with a filter")
            seen_replicates[replicate_key] = line_number
        value = _parse_metric(row[config.metric], source, line_number, config.metric)
        values = cells.setdefault((block, condition), [])
        condition_sources.setdefault(condition, set()).add(row.get("source", ""))
        if math.isnan(value):
            n_missing += 1
            n_absent += row.get("in_reference") == "0"
        else:
            values.append(value)
    if n_rows == 0:
        chosen = f" of class {config.class_name!r}" if config.class_name is not None else ""
        filters = f" matching {', '.join(map(str, config.filters))}" if config.filters else ""
        classes = sorted({row[config.class_column] for row in rows}, key=natural_key) \
            if config.class_name is not None else []
        known = f" (classes in the file: {', '.join(classes)})" if classes else ""
        raise ValueError(f"{source}: no rows{chosen}{filters}{known}")

    blocks = tuple(sorted({b for b, _ in cells}, key=lambda t: tuple(map(natural_key, t))))
    conditions = tuple(sorted({c for _, c in cells}, key=lambda t: tuple(map(natural_key, t))))
    block_index = {b: i for i, b in enumerate(blocks)}
    condition_index = {c: j for j, c in enumerate(conditions)}
    scores = np.full((len(blocks), len(conditions)), np.nan)
    n_values = np.zeros(scores.shape, dtype=np.int64)
    for (block, condition), values in cells.items():
        i, j = block_index[block], condition_index[condition]
        n_values[i, j] = len(values)
        if values:
            scores[i, j] = float(np.mean(values))
    return ScoreTable(source=source, metric=config.metric, higher_is_better=config.direction(),
                      block_columns=tuple(config.block_columns),
                      condition_columns=tuple(config.condition_columns), k_column=config.k_column,
                      blocks=blocks, conditions=conditions, scores=scores, n_values=n_values,
                      n_rows=n_rows, n_missing_values=n_missing, filters=tuple(config.filters),
                      class_name=config.class_name, n_absent_values=n_absent,
                      sources=tuple(next(iter(condition_sources[c])) if len(condition_sources[c]) == 1 else ""
                                    for c in conditions))


def load_score_table(path: str | Path, config: ScoreTableConfig) -> ScoreTable:
    """Results directory (…/cases.csv) or tidy CSV -> ScoreTable (incomplete blocks still in)."""
    csv_path = resolve_scores_csv(path)
    columns, rows = read_csv_rows(csv_path)
    return build_score_table(columns, rows, config, source=str(csv_path))


def drop_incomplete_blocks(table: ScoreTable) -> ScoreTable:
    """Remove every block with a missing cell; the result records them in `dropped_blocks`.

    Raises ValueError when fewer than 2 complete blocks remain, with each condition's block count so
    that the user can see which condition is unfinished.
    """
    complete = ~np.isnan(table.scores).any(axis=1)
    dropped = tuple(
        (table.blocks[i], tuple(table.conditions[j] for j in np.nonzero(np.isnan(table.scores[i]))[0]))
        for i in np.nonzero(~complete)[0])
    if complete.sum() < 2:
        present = (~np.isnan(table.scores)).sum(axis=0)
        counts = ", ".join(f"{label}: {n}" for label, n in zip(table.condition_labels, present))
        raise ValueError(f"{table.source}: only {int(complete.sum())} of {len(table.blocks)} blocks have "
                         f"a score for every condition (need 2); blocks per condition: {counts}. "
                         "Exclude unfinished conditions with a filter such as arm!=NAME.")
    keep = np.nonzero(complete)[0]
    return replace(table, blocks=tuple(table.blocks[i] for i in keep), scores=table.scores[keep],
                   n_values=table.n_values[keep], dropped_blocks=table.dropped_blocks + dropped)


@dataclass(frozen=True)
class DatasetSummary:
    """Per-condition mean and standard error of the block scores of one dataset.

    mean [k], standard_error [k] (sample s.d. / sqrt(n_blocks); NaN with a single block).
    """

    dataset: str
    n_blocks: int
    mean: np.ndarray
    standard_error: np.ndarray


def summarize_by_dataset(table: ScoreTable, dataset_column: str | None = "dataset") -> list[DatasetSummary]:
    """Mean ± standard error over the blocks of each dataset (all blocks as one group, called "all",
    when `dataset_column` is None or not a block column). Missing cells are ignored per condition."""
    if dataset_column is not None and dataset_column in table.block_columns:
        position = table.block_columns.index(dataset_column)
        names = sorted({b[position] for b in table.blocks}, key=natural_key)
        groups = [(name, [i for i, b in enumerate(table.blocks) if b[position] == name]) for name in names]
    else:
        groups = [("all", list(range(len(table.blocks))))]
    summaries = []
    for name, rows in groups:
        columns = [col[~np.isnan(col)] for col in table.scores[rows].T]
        mean = np.array([col.mean() if col.size else np.nan for col in columns])
        with np.errstate(invalid="ignore"):  # an infinite score (HD95 of an empty mask) has no s.e.
            standard_error = np.array([col.std(ddof=1) / np.sqrt(col.size) if col.size > 1 else np.nan
                                       for col in columns])
        summaries.append(DatasetSummary(dataset=name, n_blocks=len(rows), mean=mean,
                                        standard_error=standard_error))
    return summaries
