"""Per-patient evaluation: Dice / HD95 against hand-computed volumes, the empty-structure rule, and
the slice-by-slice prediction reassembled into the volume's orientation."""
import math

import numpy as np
import pytest
import torch

from segmentation.study.evaluation import (FOREGROUND, dice_score, evaluate_case, foreground_dice, hd95_score,
                                     predict_volume)


def _volume(shape=(6, 6, 8), voxels=()):
    out = np.zeros(shape, dtype=bool)
    for v in voxels:
        out[v] = True
    return out


def test_dice_matches_hand_count():
    reference = _volume(voxels=[(1, 1, 1), (1, 2, 1), (2, 1, 1), (2, 2, 1)])
    prediction = _volume(voxels=[(1, 1, 1), (1, 2, 1), (4, 4, 4)])
    assert dice_score(prediction, reference) == pytest.approx(2 * 2 / (4 + 3))


def test_hd95_single_voxels_uses_anisotropic_spacing():
    reference = _volume(voxels=[(2, 2, 2)])
    prediction = _volume(voxels=[(3, 2, 5)])
    spacing = (0.5, 0.7, 3.0)
    expected = math.hypot(1 * 0.5, 3 * 3.0)
    assert hd95_score(prediction, reference, spacing) == pytest.approx(expected, rel=1e-5)
    # The same voxel offset along the in-plane axis is short, along the slice axis long.
    assert hd95_score(_volume(voxels=[(2, 3, 2)]), reference, spacing) == pytest.approx(0.7, rel=1e-5)


def test_hd95_is_the_95th_percentile_of_surface_distances():
    # prediction -> reference distances {0, 9 mm}, reference -> prediction {0}: max(p95) = p95([0, 9]).
    reference = _volume(voxels=[(2, 2, 2)])
    prediction = _volume(voxels=[(2, 2, 2), (2, 2, 5)])
    assert hd95_score(prediction, reference, (1.0, 1.0, 3.0)) == pytest.approx(np.percentile([0.0, 9.0], 95),
                                                                              rel=1e-5)


@pytest.mark.parametrize("prediction_voxels, reference_voxels, dice, hd95", [
    ([], [], 1.0, 0.0),                          # nothing to find, nothing found
    ([(1, 1, 1)], [], 0.0, math.nan),            # a false detection
    ([], [(1, 1, 1)], 0.0, math.inf),            # a missed structure
])
def test_empty_structure_rule(prediction_voxels, reference_voxels, dice, hd95):
    prediction, reference = _volume(voxels=prediction_voxels), _volume(voxels=reference_voxels)
    assert dice_score(prediction, reference) == dice
    got = hd95_score(prediction, reference, (1.0, 1.0, 2.0))
    assert (math.isnan(got) and math.isnan(hd95)) or got == hd95


def test_evaluate_case_per_class_and_foreground():
    names = ["background", "a", "b", "c"]
    reference = np.zeros((6, 6, 4), dtype=np.uint8)
    reference[1:3, 1:3, 1] = 1           # a: 4 voxels
    reference[4, 4, 2] = 2               # b: 1 voxel; c absent
    prediction = np.zeros_like(reference)
    prediction[1:3, 1:3, 1] = 1          # a exact
    prediction[4, 4, 2] = 1              # b predicted as a
    scores = {s.name: s for s in evaluate_case(prediction, reference, names, (1.0, 1.0, 2.0))}
    assert list(scores) == ["a", "b", "c", FOREGROUND]
    assert scores["a"].dice == pytest.approx(2 * 4 / (4 + 5))
    assert scores["b"].dice == 0.0 and scores["b"].hd95 == math.inf
    assert scores["c"].dice == 1.0 and scores["c"].hd95 == 0.0
    assert scores[FOREGROUND].dice == 1.0 and scores[FOREGROUND].hd95 == 0.0
    assert foreground_dice(prediction, reference) == 1.0
    with pytest.raises(ValueError, match="differ in shape"):
        evaluate_case(prediction[:5], reference, names, (1.0, 1.0, 1.0))


def test_predict_volume_reassembles_slices_in_volume_order():
    model = torch.nn.Conv2d(1, 2, kernel_size=1)
    with torch.no_grad():  # logit of class 1 = x, of class 0 = 0: prediction = (x > 0)
        model.weight.copy_(torch.tensor([0.0, 1.0]).reshape(2, 1, 1, 1))
        model.bias.zero_()
    images = np.random.default_rng(0).uniform(-1, 1, size=(1, 5, 7, 9)).astype(np.float32)
    labels = predict_volume(model, images, batch_size=4, device=torch.device("cpu"))
    assert labels.shape == (5, 7, 9) and labels.dtype == np.uint8
    np.testing.assert_array_equal(labels, (images[0] > 0).astype(np.uint8))


def test_mean_class_dice_weighs_every_class_alike():
    from segmentation.study.evaluation import mean_class_dice

    reference = np.zeros((6, 6, 2), dtype=np.uint8)
    reference[:, :3] = 1                 # a large class, found
    reference[5, 5, 1] = 2               # a one-voxel class, missed
    prediction = np.where(reference == 2, 1, reference).astype(np.uint8)
    assert foreground_dice(prediction, reference) == 1.0
    assert mean_class_dice(prediction, reference, n_classes=3) == pytest.approx((2 * 36 / (36 + 37) + 0.0) / 2)


def sphere(shape, centre, radius):
    grid = np.indices(shape)
    return sum((g - c) ** 2 for g, c in zip(grid, centre)) <= radius ** 2


def test_nsd_of_a_shifted_sphere_depends_on_the_tolerance():
    from segmentation.study.evaluation import nsd_score

    reference = sphere((40, 40, 40), (20, 20, 20), 8)
    shifted = sphere((40, 40, 40), (22, 20, 20), 8)  # 2 voxels of 1.5 mm = 3 mm along x
    assert nsd_score(reference, reference, (1.5, 1.5, 1.5), 0.5) == 1.0
    assert nsd_score(shifted, reference, (1.5, 1.5, 1.5), 3.0) == pytest.approx(1.0)
    partial = nsd_score(shifted, reference, (1.5, 1.5, 1.5), 1.0)
    assert 0.2 < partial < 0.9  # the sides along y and z stay within 1 mm, the poles along x do not
    assert nsd_score(shifted, reference, (3.0, 1.5, 1.5), 3.0) < 1.0  # 2 voxels are now 6 mm
    assert nsd_score(np.zeros_like(reference), reference, (1, 1, 1), 2.0) == 0.0
    assert nsd_score(np.zeros_like(reference), np.zeros_like(reference), (1, 1, 1), 2.0) == 1.0


def test_detection_counts_missed_lesions_and_false_positive_blobs():
    from segmentation.study.evaluation import detection_scores, evaluate_case

    reference = np.zeros((30, 30, 30), dtype=np.uint8)
    reference[sphere(reference.shape, (8, 8, 8), 3)] = 1
    reference[sphere(reference.shape, (22, 22, 22), 3)] = 1  # two lesions of class 1
    prediction = np.zeros_like(reference)
    prediction[sphere(reference.shape, (8, 8, 9), 3)] = 1    # finds the first, misses the second
    prediction[sphere(reference.shape, (22, 8, 8), 2)] = 2   # a class-2 blob where the reference has none
    detected, false_positive, lesion_sensitivity = detection_scores(prediction == 1, reference == 1)
    assert (detected, lesion_sensitivity) == (1.0, 0.5) and np.isnan(false_positive)
    detected, false_positive, lesion_sensitivity = detection_scores(prediction == 2, reference == 2)
    assert false_positive == 1.0 and np.isnan(detected) and np.isnan(lesion_sensitivity)
    assert detection_scores(prediction == 3, reference == 2)[1] == 0.0
    scores = {s.name: s for s in evaluate_case(prediction, reference, ["bg", "lesion", "blob"], (1, 1, 1),
                                               hd95=False, nsd_tolerance_mm={"default": 2.0, "lesion": 1.0},
                                               detection=True)}
    assert scores["lesion"].lesion_sensitivity == 0.5 and scores["blob"].false_positive == 1.0
    assert 0 < scores["lesion"].nsd < 1 and scores["blob"].nsd == 0.0
