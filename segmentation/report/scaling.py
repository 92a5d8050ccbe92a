"""Data-scaling curves and annotation efficiency: what k synthetic patients are worth in real ones.

From the tidy per-case scores of a study with several n_real (the number of real training
patients), per condition (arm, k) and n: the block scores (mean metric over the test cases of
each block dataset x fold x repeat), and

    real-only curve    R(n) = mean over blocks of the baseline's block scores, at each studied n > 0
    efficiency         n' = R^-1(mean score of (arm, k) at n): piecewise linear between the studied
                       n, the first n where the curve reaches the score; "<= n_min" when even the
                       smallest n does, "> n_max" when none does (no extrapolation); a percentile
                       interval from resampling the blocks (the same blocks for every condition)
    crossover          the n where the arm's advantage over real-only at the same n (mean over
                       blocks) falls to zero for good, linearly interpolated between studied n;
                       None when it helps at every studied n (or never helps)

n = 0 conditions (synthetic only) have no real-only run of their own: their n' says how many real
patients they are worth ("synthetic-only matches n' real").
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from segmentation.report.score_table import natural_key

BOOTSTRAP_RESAMPLES = 2000


@dataclass(frozen=True)
class ScalingData:
    """Block scores of every (arm, k, n): scores[(arm, k, n)] float [B] (NaN: block missing), blocks
    in a fixed order; baseline = the real-only arm; n_values sorted (0 included when present)."""

    metric: str
    class_name: str | None
    higher_is_better: bool
    baseline: str
    blocks: tuple[tuple[str, ...], ...]
    n_values: tuple[int, ...]
    conditions: tuple[tuple[str, int], ...]
    scores: dict

    def curve(self, arm: str, k: int, block_index: np.ndarray | None = None) -> np.ndarray:
        """Mean score [len(n_values)] of (arm, k) at each n over the blocks (or the resampled
        ``block_index``); NaN where it was not run."""
        out = []
        for n in self.n_values:
            values = self.scores.get((arm, k, n))
            if values is None:
                out.append(math.nan)
                continue
            chosen = values if block_index is None else values[block_index]
            out.append(float(np.nanmean(chosen)) if np.isfinite(chosen).any() else math.nan)
        return np.array(out)

    def standard_error(self, arm: str, k: int) -> np.ndarray:
        """Standard error over blocks [len(n_values)] of (arm, k) at each n."""
        out = []
        for n in self.n_values:
            values = self.scores.get((arm, k, n), np.array([math.nan]))
            values = values[np.isfinite(values)]
            out.append(float(values.std(ddof=1) / np.sqrt(values.size)) if values.size > 1 else math.nan)
        return np.array(out)


def scaling_data(columns: list[str], rows: list[dict[str, str]], metric: str, class_name: str | None,
                 higher_is_better: bool, baseline: str = "real",
                 block_columns: tuple[str, ...] = ("dataset", "fold", "repeat")) -> ScalingData:
    """Collect the block scores of every (arm, n_synthetic, n_real) from tidy rows (cases.csv)."""
    needed = {"arm", "n_synthetic", "n_real", metric, *block_columns}
    missing = sorted(needed - set(columns))
    if missing:
        raise ValueError(f"scaling needs the column(s) {', '.join(missing)}")
    cells: dict[tuple, dict[tuple, list[float]]] = {}
    for row in rows:
        if class_name is not None and row.get("class") != class_name:
            continue
        text = row[metric]
        value = math.nan if text in ("", "nan") else float(text)
        if math.isnan(value):
            continue
        key = (row["arm"], int(row["n_synthetic"]), int(row["n_real"]))
        block = tuple(row[c] for c in block_columns)
        cells.setdefault(key, {}).setdefault(block, []).append(value)
    blocks = tuple(sorted({b for per_block in cells.values() for b in per_block},
                          key=lambda b: tuple(map(natural_key, b))))
    index = {b: i for i, b in enumerate(blocks)}
    scores = {}
    for key, per_block in cells.items():
        values = np.full(len(blocks), math.nan)
        for block, cases in per_block.items():
            values[index[block]] = float(np.mean(cases))
        scores[key] = values
    n_values = tuple(sorted({k[2] for k in scores}))
    conditions = tuple(sorted({(a, k) for a, k, _ in scores if a != baseline}, key=lambda c: (c[0], c[1])))
    if not any(a == baseline for a, _, _ in scores):
        raise ValueError(f"no {baseline!r} (real-only) runs: the scaling curve needs them as the reference")
    return ScalingData(metric, class_name, higher_is_better, baseline, blocks, n_values, conditions, scores)


def equivalent_n(n_values: np.ndarray, curve: np.ndarray, value: float, higher_is_better: bool = True) -> float:
    """The n where the piecewise-linear real-only ``curve`` [len(n_values)] first reaches ``value``;
    -inf when the smallest n already does (<= n_min), +inf when none does (> n_max)."""
    keep = np.isfinite(curve)
    n, r = np.asarray(n_values, float)[keep], np.asarray(curve, float)[keep]
    if not n.size or not math.isfinite(value):
        return math.nan
    if not higher_is_better:
        r, value = -r, -value
    if r[0] >= value:
        return -math.inf
    for i in range(1, n.size):
        if r[i] >= value:
            return float(n[i - 1] + (n[i] - n[i - 1]) * (value - r[i - 1]) / (r[i] - r[i - 1]))
    return math.inf


@dataclass(frozen=True)
class Efficiency:
    """One (arm, k, n): its mean score, the equivalent real n' and its interval (see the module)."""

    arm: str
    k: int
    n: int
    score: float
    n_equivalent: float
    low: float
    high: float


def annotation_efficiency(data: ScalingData, confidence: float = 0.95, seed: int = 0) -> list[Efficiency]:
    """`Efficiency` of every studied (arm, k, n); the interval resamples the blocks."""
    real_n = np.array([n for n in data.n_values if n > 0])
    positive = np.array([data.n_values.index(n) for n in real_n])
    rng = np.random.default_rng(seed)
    resamples = rng.integers(0, len(data.blocks), size=(BOOTSTRAP_RESAMPLES, len(data.blocks)))
    real_curves = np.array([data.curve(data.baseline, 0, r)[positive] for r in resamples])
    real_curve = data.curve(data.baseline, 0)[positive]
    tail = (1 - confidence) / 2
    out = []
    for arm, k in data.conditions:
        curve = data.curve(arm, k)
        boot = np.array([data.curve(arm, k, r) for r in resamples])
        for i, n in enumerate(data.n_values):
            if not math.isfinite(curve[i]):
                continue
            estimate = equivalent_n(real_n, real_curve, curve[i], data.higher_is_better)
            draws = np.array([equivalent_n(real_n, rc, b, data.higher_is_better)
                              for rc, b in zip(real_curves, boot[:, i])])
            draws = draws[~np.isnan(draws)]
            # inverted_cdf picks draws without interpolating, so "<= n_min" / "> n_max" (+-inf) stay what they are
            low, high = (np.quantile(draws, [tail, 1 - tail], method="inverted_cdf") if draws.size
                         else (math.nan, math.nan))
            out.append(Efficiency(arm, k, n, float(curve[i]), estimate, float(low), float(high)))
    return out


def advantages(data: ScalingData, arm: str, k: int) -> list[tuple[int, float]]:
    """(n, how much better (arm, k) scores than real-only at n) for every studied n > 0 both have;
    positive = better, whatever the score's direction."""
    real, curve = data.curve(data.baseline, 0), data.curve(arm, k)
    sign = 1.0 if data.higher_is_better else -1.0
    return [(n, sign * (c - r)) for n, c, r in zip(data.n_values, curve, real)
            if n > 0 and math.isfinite(c) and math.isfinite(r)]


def crossover(data: ScalingData, arm: str, k: int) -> float | None:
    """The n beyond which (arm, k) stops helping (see the module docstring), or None."""
    points = advantages(data, arm, k)
    if len(points) < 2 or points[0][1] <= 0:
        return None
    for (n0, a0), (n1, a1) in zip(points[:-1], points[1:]):
        if a0 > 0 >= a1 and all(a <= 0 for _, a in points[points.index((n1, a1)):]):
            return float(n0 + (n1 - n0) * a0 / (a0 - a1))
    return None


def describe_n(value: float, n_values: tuple[int, ...]) -> str:
    """An equivalent n in words: "9.3", "<= 2" (the smallest real n already scores as well), "> 16"
    (no studied real n does), "?" (undefined)."""
    real = [n for n in n_values if n > 0]
    if math.isnan(value):
        return "?"
    if value == -math.inf:
        return f"<= {real[0]}"
    if value == math.inf:
        return f"> {real[-1]}"
    return f"{value:.1f}"
