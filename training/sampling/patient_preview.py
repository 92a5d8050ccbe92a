"""Preview montages of patients: modalities and mask overlay, a few axial slices per patient."""
from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from training.data.fsutils import atomic_write_bytes
from training.data.images2d import PNG_ENDING, image2d_volume
from training.sampling.nnunet_writer import FILE_ENDING


@dataclass
class PreviewCase:
    """One patient of a preview: images [M, X, Y, Z] (any units), labels [X, Y, Z] real values,
    spacing (mm, 3) so that anisotropic voxels are drawn with their true aspect (None: square)."""

    name: str
    images: np.ndarray
    labels: np.ndarray
    spacing: tuple[float, float, float] | None = None
    instances: np.ndarray | None = None   # object ids [X, Y, Z] (0 = none), drawn one colour per object


def read_case(root: Path, case_id: str, n_modalities: int) -> PreviewCase:
    """Read back one case of an nnU-Net raw dataset written by NnUNetRawWriter (arrays as stored;
    a PNG case as the one-slice volume [rows, columns, 1])."""
    root = Path(root)
    if (root / "labelsTr" / f"{case_id}{PNG_ENDING}").is_file():
        images = np.stack([image2d_volume(root / "imagesTr" / f"{case_id}_{m:04d}{PNG_ENDING}", case_id)
                           for m in range(n_modalities)])
        objects = root / "instancesTr" / f"{case_id}{PNG_ENDING}"
        return PreviewCase(case_id, images, image2d_volume(root / "labelsTr" / f"{case_id}{PNG_ENDING}", case_id),
                           instances=image2d_volume(objects, case_id).astype(np.int64) if objects.is_file() else None)
    images = np.stack([np.asarray(nib.load(root / "imagesTr" / f"{case_id}_{m:04d}{FILE_ENDING}").dataobj,
                                  dtype=np.float32) for m in range(n_modalities)])
    label_image = nib.load(root / "labelsTr" / f"{case_id}{FILE_ENDING}")
    spacing = tuple(float(z) for z in label_image.header.get_zooms()[:3])
    return PreviewCase(case_id, images, np.asarray(label_image.dataobj), spacing)


def write_preview(path: Path, groups: Sequence[tuple[str, Sequence[PreviewCase]]], modalities: Sequence[str],
                  label_values: Sequence[int], label_names: Sequence[str], slices_per_case: int = 3) -> Path:
    """A PNG montage: one row per case (grouped, each row titled with its group), for each of
    `slices_per_case` evenly spaced axial slices the M modalities (1st-99th percentile window per
    case and modality) followed by the first modality with the mask overlaid (one colour per label,
    legend below). Written atomically; returns path."""
    # matplotlib is imported here, not at module level: sampling without --preview never needs it.
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    cases = [(group, case) for group, members in groups for case in members]
    if not cases:
        raise ValueError("a preview needs at least one case")
    for _, case in cases:
        if case.images.shape[0] != len(modalities) or case.images.shape[1:] != case.labels.shape:
            raise ValueError(f"preview case {case.name}: images {case.images.shape} and labels {case.labels.shape} "
                             f"do not match [{len(modalities)}, X, Y, Z] and [X, Y, Z]")
    colours = [colormaps["tab10"].colors[i % 10] for i in range(len(label_values))]
    if all(case.labels.shape[2] == 1 for _, case in cases):
        slices_per_case = 1  # 2D images
    with_objects = any(case.instances is not None for _, case in cases)
    columns = slices_per_case * (len(modalities) + 1) + with_objects
    legend_columns = max(1, min(len(label_values) - 1, columns, 8))
    legend_rows = -(-max(1, len(label_values) - 1) // legend_columns)  # wrapped: 116 atlas labels fit too
    height = 1.3 * len(cases) + 0.25 + 0.2 * legend_rows
    figure = Figure(figsize=(1.25 * columns, height), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.subplots(len(cases), columns, squeeze=False)
    for row, (group, case) in enumerate(cases):
        _draw_case(axes[row], f"{group}\n{case.name}", case, modalities, np.asarray(label_values),
                   ListedColormap(colours), slices_per_case, long_titles=row == 0)
        if with_objects:
            _draw_objects(axes[row][-1], case, long_titles=row == 0)
    handles = [Patch(color=colours[i], label=f"{value}: {name}")
               for i, (value, name) in enumerate(zip(label_values, label_names)) if i > 0]
    figure.legend(handles=handles, loc="lower center", ncol=legend_columns, fontsize=7, frameon=False)
    figure.tight_layout(rect=(0, (0.1 + 0.2 * legend_rows) / height, 1, 1))
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    atomic_write_bytes(Path(path), buffer.getvalue())
    return Path(path)


def _plane(volume: np.ndarray, k: int) -> tuple[np.ndarray, str]:
    """Slice k of [X, Y, Z] as drawn, with its imshow origin: a 2D image (Z = 1) as it is displayed
    (rows x down), a volume's axial slice with x to the right and y (anterior) up."""
    return (volume[:, :, k], "upper") if volume.shape[2] == 1 else (volume[:, :, k].T, "lower")


def _draw_objects(ax, case: PreviewCase, long_titles: bool) -> None:
    """The middle slice of modality 0 with every object (instance id) in its own colour."""
    from matplotlib import colormaps

    ax.set_xticks([])
    ax.set_yticks([])
    if case.instances is None:
        ax.set_axis_off()
        return
    k = case.labels.shape[2] // 2
    image, origin = _plane(case.images[0], k)
    objects, _ = _plane(case.instances, k)
    low, high = np.percentile(case.images[0], [1, 99])
    ax.imshow(image, cmap="gray", vmin=low, vmax=max(high, low + 1e-6), origin=origin)
    ids = objects.astype(np.int64)
    coloured = np.ma.masked_equal(np.where(ids > 0, (ids - 1) % 20 + 1, 0), 0)
    ax.imshow(coloured, cmap=colormaps["tab20"], vmin=1, vmax=20, origin=origin, interpolation="nearest")
    count = len(np.setdiff1d(np.unique(ids), [0]))
    ax.set_title(f"objects\n{count}" if long_titles else f"{count} objects", fontsize=7 if long_titles else 6)


def _draw_case(axes: Sequence, title: str, case: PreviewCase, modalities: Sequence[str], label_values: np.ndarray,
               label_cmap, slices_per_case: int, long_titles: bool) -> None:
    """One montage row: per chosen slice k, the modalities then modality 0 with the mask overlaid.
    Slices are drawn with x to the right and y (anterior) up: plane.T with origin "lower" (a 2D image
    as it is displayed)."""
    M, depth = len(modalities), case.labels.shape[2]
    windows = [np.percentile(case.images[m], [1, 99]) for m in range(M)]
    indices = np.searchsorted(label_values, case.labels).clip(0, len(label_values) - 1)  # value -> colour
    indices[label_values[indices] != case.labels] = 0  # values outside the label list are not drawn
    for s in range(slices_per_case):
        k = min(depth - 1, (s + 1) * depth // (slices_per_case + 1))
        for m in range(M + 1):
            ax = axes[s * (M + 1) + m]
            ax.set_xticks([])
            ax.set_yticks([])
            shown = min(m, M - 1)
            low, high = windows[shown]
            aspect = 1.0 if case.spacing is None else case.spacing[1] / case.spacing[0]  # drawn rows are y
            plane, origin = _plane(case.images[shown], k)
            if origin == "upper":
                aspect = 1.0 / aspect  # drawn rows are x
            ax.imshow(plane, cmap="gray", vmin=low, vmax=max(high, low + 1e-6), origin=origin, aspect=aspect)
            if m == M:
                overlay = np.ma.masked_equal(_plane(indices, k)[0], 0)
                ax.imshow(overlay, cmap=label_cmap, vmin=0, vmax=len(label_values) - 1, alpha=0.55,
                          origin=origin, interpolation="nearest", aspect=aspect)
            name = modalities[m] if m < M else "mask"
            ax.set_title(f"{name}\nz {k + 1}/{depth}" if long_titles else f"z {k + 1}/{depth}",
                         fontsize=7 if long_titles else 6)
        if s == 0:
            axes[0].set_ylabel(title, fontsize=7)
