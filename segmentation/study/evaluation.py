"""Per-patient evaluation on reassembled 3D volumes at the slice-cache resolution.

A test patient's slices are predicted one by one by the 2D U-Net and stacked back into a volume
[X, Y, Z] (the cache's grid: rows x, columns y, slice k along z), then compared with the reference
volume of label indices:

- Dice per class (every non-background class) with ``monai.metrics.DiceMetric``;
- HD95 per class with ``monai.metrics.HausdorffDistanceMetric(percentile=95)`` in millimetres,
  using the voxel spacing of the resampled slices (in-plane pixel size, slice distance);
- NSD (normalised surface Dice, Nikolov et al.) per class with ``monai.metrics.compute_surface_dice``:
  the share of both boundaries within a tolerance (mm, per class; `DEFAULT_NSD_TOLERANCE_MM`);
- detection per class: ``detected`` (reference has the class: 1 when the prediction overlaps it),
  ``false_positive`` (reference lacks it: 1 when the prediction has it) and
  ``lesion_sensitivity`` (share of the reference's 26-connected components the prediction overlaps);
- the same for "foreground": all non-background classes merged.

Empty structures (the same rule for every class and for foreground):

    reference and prediction both empty      Dice 1, HD95 0, NSD 1     (nothing to find, nothing found)
    reference empty, prediction not empty    Dice 0, HD95 NaN, NSD 0   (a false detection; no distance)
    reference not empty, prediction empty    Dice 0, HD95 inf, NSD 0   (a missed structure)
    both not empty                           MONAI's values

so Dice is always defined; an HD95 of NaN is left out of means by the report, inf ranks last.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from monai.metrics import DiceMetric, HausdorffDistanceMetric, compute_surface_dice
from scipy import ndimage

FOREGROUND = "foreground"
DEFAULT_NSD_TOLERANCE_MM = 2.0  # a class without its own tolerance (study config: nsd_tolerance_mm)


@dataclass(frozen=True)
class ClassScore:
    """One class of one case: dice in [0, 1]; hd95 in mm (NaN / inf by the empty-structure rule);
    nsd in [0, 1]; detected / false_positive in {0, 1} (NaN where undefined: detected needs the class
    in the reference, false_positive its absence); lesion_sensitivity in [0, 1] (NaN without a
    reference component).  Metrics not asked for are NaN."""

    name: str
    dice: float
    hd95: float
    nsd: float = math.nan
    detected: float = math.nan
    false_positive: float = math.nan
    lesion_sensitivity: float = math.nan


@torch.no_grad()
def _slice_logits(model: torch.nn.Module, images: np.ndarray, batch_size: int, device: torch.device):
    """Logits [b, C, X, Y] of the slices of images float32 [M, X, Y, Z], ``batch_size`` at a time."""
    model.eval()
    slices = torch.from_numpy(np.ascontiguousarray(images.transpose(3, 0, 1, 2)))  # [Z, M, X, Y]
    for start in range(0, images.shape[3], batch_size):
        yield model(slices[start:start + batch_size].to(device))


def predict_volume(model: torch.nn.Module, images: np.ndarray, batch_size: int, device: torch.device) -> np.ndarray:
    """Label indices uint8 [X, Y, Z] for one volume of images float32 [M, X, Y, Z] in [-1, 1],
    predicted slice by slice (argmax of the logits) in batches of ``batch_size`` slices."""
    batches = _slice_logits(model, images, batch_size, device)
    predicted = [logits.argmax(dim=1).to("cpu", torch.uint8) for logits in batches]
    labels = torch.cat(predicted).permute(1, 2, 0).numpy()
    assert labels.shape == images.shape[1:], labels.shape
    return labels


def predict_probabilities(model: torch.nn.Module, images: np.ndarray, batch_size: int,
                          device: torch.device) -> np.ndarray:
    """Softmax probabilities float32 [C, X, Y, Z] of one volume (as `predict_volume`; its argmax
    over C is `predict_volume`'s prediction)."""
    batches = _slice_logits(model, images, batch_size, device)
    chunks = [torch.softmax(logits.float(), dim=1).to("cpu") for logits in batches]
    probabilities = torch.cat(chunks).permute(1, 2, 3, 0).numpy()
    assert probabilities.shape[1:] == images.shape[1:], probabilities.shape
    return probabilities


def dice_score(prediction: np.ndarray, reference: np.ndarray) -> float:
    """Dice of two boolean volumes [X, Y, Z] with ``monai.metrics.DiceMetric`` (both empty: 1)."""
    metric = DiceMetric(include_background=True, reduction="none", ignore_empty=False)
    value = metric(_as_batch(prediction), _as_batch(reference))
    return float(value.reshape(-1)[0])


def hd95_score(prediction: np.ndarray, reference: np.ndarray, spacing: tuple[float, float, float]) -> float:
    """95th-percentile symmetric Hausdorff distance in mm of two boolean volumes [X, Y, Z] with
    voxel size ``spacing`` (mm); the empty-structure rule of the module docstring applies."""
    has_prediction, has_reference = bool(prediction.any()), bool(reference.any())
    if not has_reference:
        return 0.0 if not has_prediction else math.nan
    if not has_prediction:
        return math.inf
    metric = HausdorffDistanceMetric(include_background=True, percentile=95, reduction="none")
    with warnings.catch_warnings():  # MONAI 1.5+ warns about an argument its own metric passes
        warnings.filterwarnings("ignore", message=".*always_return_as_numpy.*", category=FutureWarning)
        value = metric(_as_batch(prediction), _as_batch(reference), spacing=[float(s) for s in spacing])
    return float(value.reshape(-1)[0])


def nsd_score(prediction: np.ndarray, reference: np.ndarray, spacing: tuple[float, float, float],
              tolerance_mm: float) -> float:
    """Normalised surface Dice of two boolean volumes [X, Y, Z] at ``tolerance_mm`` (MONAI's
    ``compute_surface_dice``); the empty-structure rule of the module docstring applies."""
    has_prediction, has_reference = bool(prediction.any()), bool(reference.any())
    if not has_reference or not has_prediction:
        return 1.0 if has_reference == has_prediction else 0.0
    one_hot = lambda mask: torch.cat([_as_batch(~mask), _as_batch(mask)], dim=1)  # noqa: E731 [1, 2, X, Y, Z]
    with warnings.catch_warnings():  # MONAI 1.5+ warns about an argument its own metric passes
        warnings.filterwarnings("ignore", message=".*always_return_as_numpy.*", category=FutureWarning)
        value = compute_surface_dice(one_hot(prediction), one_hot(reference), class_thresholds=[float(tolerance_mm)],
                                     include_background=False, spacing=[float(s) for s in spacing])
    return float(value.reshape(-1)[0])


def detection_scores(prediction: np.ndarray, reference: np.ndarray) -> tuple[float, float, float]:
    """(detected, false_positive, lesion_sensitivity) of two boolean volumes [X, Y, Z]: see ClassScore."""
    if not reference.any():
        return math.nan, float(prediction.any()), math.nan
    components, count = ndimage.label(reference, structure=np.ones((3, 3, 3)))
    hit = np.unique(components[prediction & reference])
    return float((prediction & reference).any()), math.nan, float(np.count_nonzero(hit)) / count


def _as_batch(mask: np.ndarray) -> torch.Tensor:
    """Boolean [X, Y, Z] -> float [1, 1, X, Y, Z] (MONAI metrics take one-hot batches)."""
    return torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None, None]


def foreground_dice(prediction: np.ndarray, reference: np.ndarray) -> float:
    """Dice of all non-background labels merged; prediction and reference are index volumes [X, Y, Z]."""
    return dice_score(prediction > 0, reference > 0)


def mean_class_dice(prediction: np.ndarray, reference: np.ndarray, n_classes: int) -> float:
    """Mean Dice over the non-background classes 1..n_classes-1 of index volumes [X, Y, Z] (each
    class by the empty-structure rule): the validation score, so small structures count as much
    as large ones."""
    if n_classes < 2:
        raise ValueError(f"need at least one non-background class, got n_classes={n_classes}")
    return float(np.mean([dice_score(prediction == c, reference == c) for c in range(1, n_classes)]))


def evaluate_case(prediction: np.ndarray, reference: np.ndarray, label_names: list[str],
                  spacing: tuple[float, float, float], hd95: bool = True,
                  nsd_tolerance_mm: dict[str, float] | None = None, detection: bool = False) -> list[ClassScore]:
    """Scores of one case: every non-background class (by name, in label order), then "foreground".

    prediction, reference: label indices [X, Y, Z] (0 = background, < len(label_names));
    spacing: voxel size in mm of that grid; hd95 False leaves HD95 as NaN (not computed);
    nsd_tolerance_mm: tolerance per class name ("default" for the others; None: no NSD);
    detection: compute detected / false_positive / lesion_sensitivity.
    """
    if prediction.shape != reference.shape:
        raise ValueError(f"prediction {prediction.shape} and reference {reference.shape} differ in shape")
    masks = [(name, prediction == index, reference == index) for index, name in enumerate(label_names) if index > 0]
    masks.append((FOREGROUND, prediction > 0, reference > 0))
    scores = []
    for name, pred, ref in masks:
        nsd = math.nan
        if nsd_tolerance_mm is not None:
            tolerance = nsd_tolerance_mm.get(name, nsd_tolerance_mm.get("default", DEFAULT_NSD_TOLERANCE_MM))
            nsd = nsd_score(pred, ref, spacing, tolerance)
        found = detection_scores(pred, ref) if detection else (math.nan, math.nan, math.nan)
        scores.append(ClassScore(name, dice_score(pred, ref), hd95_score(pred, ref, spacing) if hd95 else math.nan,
                                 nsd, *found))
    return scores
