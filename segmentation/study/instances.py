"""Instance-level evaluation: the objects of the instance classes (wires, devices, lesions) one by one.

A semantic prediction becomes instances per class: each connected component (8-connected in a 2D
image, 26-connected in a volume) of the predicted class is one object, scored by the mean softmax
probability of that class over it.  The reference's objects are the connected components of the
class in the reference label map at the same grid.  Matching and average precision are COCO's
(``pycocotools``, mask IoU; a volume's mask is flattened to 2D, which keeps its IoU): for one test
set and one class,

- ``ap50``: AP at IoU 0.5 (101-point interpolated precision, up to 100 detections per image);
- ``map``: AP averaged over IoU 0.50:0.05:0.95 (COCO's mAP);
- per test case, ``object_sensitivity``: the share of the reference's objects matched at IoU 0.5
  (NaN without one), and ``object_false_positives``: predicted objects matched to none.

The class "foreground" of ap50 / map is their mean over the instance classes that have reference
objects in the test set (COCO's mean over categories).  A class without reference objects in the
test set has no AP (NaN).
"""
from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
from pycocotools import mask as coco_mask
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from scipy import ndimage

from segmentation.report.score_table import TEST_SET_CASE, TEST_SET_METRICS
from segmentation.study.evaluation import FOREGROUND

__all__ = ["InstanceEvaluation", "TEST_SET_CASE", "TEST_SET_METRICS", "components"]

IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
MAX_DETECTIONS = 100


def components(mask: np.ndarray) -> Iterator[np.ndarray]:
    """The connected components (full connectivity: 8 in 2D slices, 26 in volumes) of a boolean
    volume [X, Y, Z], each as a boolean volume, in label order -- one at a time, so a noisy prediction
    with thousands of specks never holds thousands of volumes."""
    labelled, _ = ndimage.label(mask, structure=np.ones((3,) * mask.ndim))
    for index, box in enumerate(ndimage.find_objects(labelled), start=1):
        component = np.zeros(mask.shape, dtype=bool)
        component[box] = labelled[box] == index
        yield component


def _rle(mask: np.ndarray) -> dict:
    """COCO RLE of a boolean volume [X, Y, Z] flattened to 2D [X, Y * Z] (the IoU is unchanged)."""
    flat = np.asfortranarray(mask.reshape(mask.shape[0], -1).astype(np.uint8))
    return coco_mask.encode(flat)


@dataclass
class InstanceEvaluation:
    """Collects the objects of one test set, case by case, then scores them with COCO's matcher.

    class_names: the instance classes, by name; their label indices are class_indices.
    """

    class_names: list[str]
    class_indices: list[int]
    _images: list[dict] = field(default_factory=list)
    _truth: list[dict] = field(default_factory=list)
    _detections: list[dict] = field(default_factory=list)
    _cases: list[str] = field(default_factory=list)

    def add_case(self, case: str, probabilities: np.ndarray, reference: np.ndarray) -> None:
        """One test case: softmax probabilities float [C, X, Y, Z] and reference label indices [X, Y, Z]."""
        assert probabilities.shape[1:] == reference.shape, (probabilities.shape, reference.shape)
        image_id = len(self._images) + 1
        height, width = reference.shape[0], int(np.prod(reference.shape[1:]))
        self._images.append({"id": image_id, "height": height, "width": width})
        self._cases.append(case)
        prediction = probabilities.argmax(axis=0)
        for category, index in enumerate(self.class_indices, start=1):
            for obj in components(reference == index):
                rle = _rle(obj)
                self._truth.append({"id": len(self._truth) + 1, "image_id": image_id, "category_id": category,
                                    "segmentation": rle, "area": float(obj.sum()), "iscrowd": 0,
                                    "bbox": list(coco_mask.toBbox(rle))})
            for obj in components(prediction == index):
                self._detections.append({"image_id": image_id, "category_id": category, "segmentation": _rle(obj),
                                         "score": float(probabilities[index][obj].mean())})

    def scores(self) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, dict[str, float]]]]:
        """(test-set scores {class or "foreground": {ap50, map}}, per-case scores {case: {class:
        {object_sensitivity, object_false_positives}}})."""
        per_class = {name: {"ap50": math.nan, "map": math.nan} for name in self.class_names}
        per_case = {case: {name: {"object_sensitivity": math.nan, "object_false_positives": 0.0}
                           for name in self.class_names} for case in self._cases}
        if self._truth or self._detections:
            evaluation = self._evaluate()
            precision = evaluation.eval["precision"]  # [T, R, K, A, M]: IoU, recall, class, area, max dets
            for k, name in enumerate(self.class_names):
                curve = precision[:, :, k, 0, -1]
                if (curve > -1).any():
                    per_class[name] = {"ap50": float(np.mean(curve[0][curve[0] > -1])),
                                       "map": float(np.mean(curve[curve > -1]))}
            self._per_case(evaluation, per_case)
        have_truth = [per_class[name] for name in self.class_names if not math.isnan(per_class[name]["map"])]
        per_class[FOREGROUND] = {metric: float(np.mean([s[metric] for s in have_truth])) if have_truth else math.nan
                                 for metric in ("ap50", "map")}
        return per_class, per_case

    def _evaluate(self) -> COCOeval:
        truth = COCO()
        truth.dataset = {"images": self._images, "annotations": self._truth,
                         "categories": [{"id": k, "name": n} for k, n in enumerate(self.class_names, start=1)]}
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
            truth.createIndex()
            detections = truth.loadRes(self._detections) if self._detections else COCO()
            if not self._detections:
                detections.dataset = {"images": self._images, "annotations": [],
                                      "categories": truth.dataset["categories"]}
                detections.createIndex()
            evaluation = COCOeval(truth, detections, iouType="segm")
            evaluation.params.iouThrs = IOU_THRESHOLDS
            evaluation.params.maxDets = [1, 10, MAX_DETECTIONS]
            evaluation.evaluate()
            evaluation.accumulate()
        return evaluation

    def _per_case(self, evaluation: COCOeval, per_case: dict) -> None:
        """Matches at IoU 0.5 over all object sizes, from COCO's per-image records."""
        area_all = evaluation.params.areaRng[0]
        for record in evaluation.evalImgs:
            if record is None or record["aRng"] != area_all:
                continue
            case = self._cases[record["image_id"] - 1]
            name = self.class_names[record["category_id"] - 1]
            truth_matched = np.asarray(record["gtMatches"])[0] > 0 if len(record["gtIds"]) else np.zeros(0, bool)
            detection_matched = np.asarray(record["dtMatches"])[0] > 0 if len(record["dtIds"]) else np.zeros(0, bool)
            per_case[case][name] = {
                "object_sensitivity": float(truth_matched.mean()) if truth_matched.size else math.nan,
                "object_false_positives": float((~detection_matched).sum())}
