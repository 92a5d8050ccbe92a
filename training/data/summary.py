"""The text summary printed by ``stylepair-data inspect``."""
from __future__ import annotations

from collections import Counter

import numpy as np

from nibabel.orientations import ornt2axcodes
from scipy import ndimage

from training.data.images2d import is_image2d_name, read_image2d_info
from training.data.nifti import read_stored_style
from training.data.records import CT_NAMES, Dataset
from training.data.splits import minimum_patients

# Minimum intensity below which a modality holds air in Hounsfield units (-1000): CT, not MR.
HU_AIR_BELOW = -500.0
ANISOTROPY = 3.0               # slice spacing / pixel size above which voxels are called anisotropic
MAX_SUGGESTED_RESOLUTION = 512 # the generators' largest resolution


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
    if _is_2d(dataset):
        lines += image2d_lines(dataset)
    else:
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
    if patients:
        lines += stored_lines(dataset) + advice_lines(dataset)
    issues = [f"skipped {case}: {reason}" for case, reason in dataset.skipped] + list(problems or [])
    lines.append(f"problems    {len(issues) if issues else 'none'}")
    lines += [f"  - {issue}" for issue in issues]
    return "\n".join(lines)


def stored_lines(dataset: Dataset) -> list[str]:
    """How the files store the volumes (read as RAS+ whatever they say): orientation codes, voxel
    types and qform/sform codes, counted over the patients."""
    styles = [read_stored_style(p.image_files[0], p.label_file, p.case_id) for p in dataset.patients]
    types = Counter(f"images {st.image_dtype}, labels {st.label_dtype}" for st in styles)
    if styles and styles[0].file_format == "png":
        return [f"stored      PNG, {_counted(types, str)} (synthetic images are written back as PNG like this)"]
    orientation = Counter("".join(ornt2axcodes(st.orientation)) for st in styles)
    codes = Counter(f"{st.qform_code}/{st.sform_code}" for st in styles)
    return [f"stored      orientation {_counted(orientation, str)} (read as RAS; synthetic patients are written back "
            f"like this); {_counted(types, str)}; qform/sform codes {_counted(codes, str)}"]


def _is_2d(dataset: Dataset) -> bool:
    return bool(dataset.patients) and is_image2d_name(dataset.patients[0].image_files[0])


def image2d_lines(dataset: Dataset) -> list[str]:
    """Radiographs: bit depth and photometric interpretation of the images, and objects per image of
    each instance class (instance maps where the dataset has them, else connected components)."""
    infos = [read_image2d_info(p.image_files[0], p.case_id) for p in dataset.patients]
    kinds = Counter(f"{i.bits}-bit {i.photometric}" + (f" {i.modality}" if i.modality else "") for i in infos)
    spacing_known = sum(i.spacing is not None for i in infos)
    lines = [f"images      {_counted(kinds, str)}; pixel spacing from the files: {spacing_known}/{len(infos)} "
             f"(else dataset.json's pixel_spacing, else 1 mm)"]
    if not dataset.instance_labels:
        return lines + ["objects     no instance_labels in dataset.json: no class is counted object by object"]
    counts = {name: [] for name in dataset.instance_labels}
    for patient in dataset.patients:
        for name, n in objects_per_class(patient, dataset).items():
            counts[name].append(n)
    rows = [["class", "objects", "per image (mean)", "images with", "max per image"]]
    for name, per_image in counts.items():
        rows.append([name, str(sum(per_image)), f"{np.mean(per_image):.2f}", f"{sum(n > 0 for n in per_image)}/"
                     f"{len(per_image)}", str(max(per_image))])
    source = "instance maps" if all(p.instance_file is not None for p in dataset.patients) else "connected components"
    return lines + [f"objects     per instance class ({source})"] + _table(rows)


def objects_per_class(patient, dataset: Dataset) -> dict[str, int]:
    """Objects of each instance class in one patient: distinct ids of its instance map inside the
    class, else the class's 8-connected components."""
    labels = patient.load_label()
    instances = patient.load_instances()
    counts = {}
    for name in dataset.instance_labels:
        inside = labels == dataset.label_values[dataset.label_names.index(name)]
        if instances is not None:
            counts[name] = len(np.setdiff1d(np.unique(instances[inside]), [0]))
        else:
            counts[name] = int(ndimage.label(inside, structure=np.ones((3, 3, 3)))[1])
    return counts


def suggested_resolution(in_plane_px: float) -> int:
    """The power of two nearest (in log scale) to a slice side in pixels, in 16..MAX_SUGGESTED_RESOLUTION."""
    power = int(np.clip(np.round(np.log2(max(in_plane_px, 1.0))), 4, np.log2(MAX_SUGGESTED_RESOLUTION)))
    return 2 ** power


def advice_lines(dataset: Dataset) -> list[str]:
    """What to start with, from what was measured: a preprocessing preset (CT from the modality names
    or from Hounsfield-like intensities, else MR), a resolution, the voxels' anisotropy, and the
    minimum patient counts of each stage."""
    stats = [p.stats for p in dataset.patients if p.stats is not None]
    named_ct = [m for m in dataset.modalities if m.lower() in CT_NAMES]
    hu_like = [m for m in dataset.modalities if stats and min(s.intensity[m].minimum for s in stats) <= HU_AIR_BELOW]
    if _is_2d(dataset):
        preset = "radiograph (percentiles 0.5-99.5 of the whole image, every image kept)"
    elif named_ct:
        preset = f"ct (windows in HU for {', '.join(named_ct)}, MR percentiles for the rest)"
    elif hu_like:
        preset = (f"ct: {', '.join(hu_like)} reach{'es' if len(hu_like) == 1 else ''} {HU_AIR_BELOW:g} and below, "
                  f"Hounsfield units; name the modality CT (dataset.json channel_names) so the CT window applies")
    else:
        preset = "brats (MR: percentiles 0.5-99.5 inside the foreground)"
    side = float(np.median([max(p.shape[:2]) for p in dataset.patients]))
    resolution = suggested_resolution(side)
    pixel = float(np.median([min(p.spacing[:2]) for p in dataset.patients]))
    slice_gap = float(np.median([p.spacing[2] for p in dataset.patients]))
    lines = [f"suggest     preset {preset}; --resolution {resolution} (median in-plane side {side:g} px, "
             f"{side * pixel:.0f} mm)"]
    if slice_gap / pixel >= ANISOTROPY:
        lines.append(f"            anisotropic voxels: slices {slice_gap:g} mm apart, pixels {pixel:g} mm; 2D slices are "
                     f"the unit stylepair learns from (as here), volumes are stacks of them")
    if resolution >= 128:
        lines.append(f"            at {resolution} px a CPU trains only a narrowed GAN ('auto' picks it); --resolution "
                     f"{resolution // 2} is ~4x cheaper")
    default_study = minimum_patients(5, 0.2, 1)
    lines.append(f"minimum     GAN training 1 patient (2 with --metrics: 20 % are held out as the real-vs-real floor); "
                 f"a study with the default splits (20 % test, 5 folds) {default_study}, with n_real N per fold "
                 f"more (N = 8: {minimum_patients(5, 0.2, 8)}); this dataset has {len(dataset.patients)}")
    return lines
