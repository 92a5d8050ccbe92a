"""The text summary printed by ``stylepair-data inspect``."""
from __future__ import annotations

from collections import Counter

import numpy as np

from training.data.records import Dataset


def _table(rows: list[list[str]], text_columns: tuple[int, ...] = (0,), indent: str = "  ") -> list[str]:
    """Aligned columns: text columns left-justified, numbers right-justified."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return [indent + "  ".join(cell.ljust(w) if i in text_columns else cell.rjust(w)
                               for i, (cell, w) in enumerate(zip(r, widths))).rstrip()
            for r in rows]


def _counted(counter: Counter, fmt, limit: int = 4) -> str:
    parts = [f"{fmt(value)} ({n})" for value, n in counter.most_common(limit)]
    if len(counter) > limit:
        parts.append(f"... {len(counter) - limit} more")
    return ", ".join(parts)


def patient_table(dataset: Dataset) -> str:
    """One line per usable patient: case id, shape, spacing and voxel count of each label."""
    rows = [["case", "shape", "spacing (mm)", *dataset.label_names]]
    for p in dataset.patients:
        counts = p.stats.label_voxels if p.stats is not None else {}
        rows.append([p.case_id, "x".join(map(str, p.shape)), "x".join(f"{v:.3g}" for v in p.spacing),
                     *(f"{counts.get(v, 0):,}" for v in dataset.label_values)])
    return "\n".join(_table(rows, text_columns=(0, 1, 2)))


def summarize(dataset: Dataset, problems: list[str] | None = None) -> str:
    """Multi-line summary: layout, patients, modalities, labels with voxel counts, shapes, spacings,
    intensity ranges per modality, skipped patients and other ``problems`` (e.g. warnings).

    Needs the per-patient statistics gathered by ``load_dataset(..., check_voxels=True)``.
    """
    patients = dataset.patients
    lines = [f"dataset     {dataset.name}", f"root        {dataset.root}", f"layout      {dataset.layout}",
             f"patients    {len(patients)} usable, {len(dataset.skipped)} skipped",
             f"modalities  {len(dataset.modalities)}: {', '.join(dataset.modalities)}"]
    stats = [p.stats for p in patients if p.stats is not None]
    total = Counter()
    present = Counter()
    for s in stats:
        total.update(s.label_voxels)
        present.update(v for v, n in s.label_voxels.items() if n > 0)
    all_voxels = max(sum(total.values()), 1)
    lines.append(f"labels      {len(dataset.label_values)} classes (index = position in sorted values)")
    rows = [["index", "value", "name", "voxels", "fraction", "patients"]]
    for index, (value, name) in enumerate(zip(dataset.label_values, dataset.label_names)):
        rows.append([str(index), str(value), name, f"{total[value]:,}", f"{100.0 * total[value] / all_voxels:.2f}%",
                     f"{present[value]}/{len(stats)}"])
    lines += _table(rows, text_columns=(2,))
    shapes = Counter(tuple(p.shape) for p in patients)
    spacings = Counter(tuple(round(s, 2) for s in p.spacing) for p in patients)
    slices = [p.shape[2] for p in patients]
    lines.append(f"shapes      {_counted(shapes, lambda s: 'x'.join(map(str, s)))}")
    lines.append(f"spacings    {_counted(spacings, lambda s: 'x'.join(f'{v:g}' for v in s) + ' mm')}")
    lines.append(f"slices      {sum(slices)} axial slices, {min(slices)}..{max(slices)} per patient")
    if stats:
        lines.append("intensity   per modality over each patient's foreground (voxels above its minimum)")
        rows = [["modality", "min", "p0.5 (median)", "median", "p99.5 (median)", "max"]]
        for m in dataset.modalities:
            values = [s.intensity[m] for s in stats]
            rows.append([m, f"{min(v.minimum for v in values):.4g}", f"{np.median([v.p_low for v in values]):.4g}",
                         f"{np.median([v.median for v in values]):.4g}", f"{np.median([v.p_high for v in values]):.4g}",
                         f"{max(v.maximum for v in values):.4g}"])
        lines += _table(rows)
    issues = [f"skipped {case}: {reason}" for case, reason in dataset.skipped] + list(problems or [])
    lines.append(f"problems    {len(issues) if issues else 'none'}")
    lines += [f"  - {issue}" for issue in issues]
    return "\n".join(lines)
