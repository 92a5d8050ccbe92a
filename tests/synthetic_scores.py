"""A synthetic study result with a known planted effect, for the report tests and the demo figures.

Three datasets × six folds = 18 blocks; conditions = the real-only baseline + 5 synthetic sources ×
5 numbers of added patients = 26 conditions (the size of the Vu et al. comparison). Planted:
"pair" helps (+0.06 Dice at 50 patients, less at the extremes), "noise" harms more the more is
added, the other sources are indistinguishable from the baseline.
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

DATASETS = ("brats", "pelvis", "prostate")
N_FOLDS = 6
SOURCES = ("baseline-gan", "mask-only", "noise", "pair", "traditional-aug")
K_VALUES = (10, 20, 50, 100, 200)
CASES_PER_FOLD = 4
CASES_COLUMNS = ["dataset", "fold", "repeat", "arm", "source", "n_synthetic", "n_real", "run_id",
                 "case", "class", "dice", "hd95"]


def planted_effect(source: str, k: int) -> float:
    """Dice change of a condition over the real-only baseline (the known truth)."""
    if source == "pair":
        return {10: 0.02, 20: 0.04, 50: 0.06, 100: 0.05, 200: 0.03}[k]
    if source == "noise":
        return -0.01 * np.log2(k / 5.0) * 2.0
    return 0.0


def write_synthetic_cases(path: Path, seed: int = 0, drop_runs: tuple[tuple[str, int, str, int], ...] = (),
                          effect_scale: float = 1.0, datasets: tuple[str, ...] = DATASETS) -> Path:
    """Write a cases.csv (the study contract's columns) with the planted effect times `effect_scale`
    (0: every condition equals the baseline).

    drop_runs: (dataset, fold, arm, n_synthetic) runs left out, as if unfinished.
    """
    rng = np.random.default_rng(seed)
    conditions = [("real", 0)] + [(s, k) for s in SOURCES for k in K_VALUES]
    rows = []
    for d, dataset in enumerate(datasets):
        for fold in range(N_FOLDS):
            fold_level = 0.70 + 0.05 * (d % 3) + rng.normal(0.0, 0.03)
            case_level = rng.normal(0.0, 0.05, size=CASES_PER_FOLD)
            for arm, k in conditions:
                if (dataset, fold, arm, k) in drop_runs:
                    continue
                run_id = f"{dataset}-f{fold}-{arm}-{k}"
                for c in range(CASES_PER_FOLD):
                    dice = fold_level + case_level[c] + effect_scale * planted_effect(arm, k) + rng.normal(0.0, 0.012)
                    dice = float(np.clip(dice, 0.0, 1.0))
                    hd95 = float(max(0.5, 30.0 * (1.0 - dice) + rng.normal(0.0, 0.5)))
                    for label, scale in (("foreground", 1.0), ("tumour", 0.9)):
                        case = f"{dataset}_{fold:02d}{c:02d}"
                        rows.append([dataset, fold, 0, arm, "" if arm == "real" else arm, k, 20, run_id,
                                     case, label, f"{dice * scale:.6f}", f"{hd95 / scale:.4f}"])
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(CASES_COLUMNS)
        writer.writerows(rows)
    return path
