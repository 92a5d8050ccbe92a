"""Speed and calibration of the GAN metrics on the embedded phantom data.

    python -m benchmarks.bench_metrics [--resolution 32] [--patients 20] [--steps 300]

Splits the phantom patients 80/20 (patient level), then reports:
  * seconds per 1000 slices of the offline feature extractor, and of FID/KID on them;
  * seconds to train the consistency segmenter;
  * the floor (real-train vs real-test FID/KID; consistency Dice on real test slices = its ceiling);
  * the same metrics for degraded "generators" made from the test slices (blurred, noised, masks
    shuffled between slices), which a useful metric must rank worse than the floor.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
import torch.nn.functional as F

from gan.consistency import ConsistencyConfig
from gan.feature_extractor import extract_features, load_feature_extractor
from gan.metrics import GanMetrics, MetricsConfig, frechet_distance, kernel_inception_distance
from training.data import default_phantom_dataset, load_dataset, make_splits, open_slice_cache, PreprocessConfig


def phantom_slices(resolution: int, n_patients: int) -> tuple:
    """(train images, train labels, test images, test labels, num_classes) of the phantom dataset."""
    dataset = load_dataset(default_phantom_dataset(n_patients=n_patients))
    cache = open_slice_cache(dataset, PreprocessConfig(resolution=resolution))
    splits = make_splits(cache.case_ids, n_folds=2, seed=12345, test_fraction=0.2)
    train = cache.select(cache.training_rows([c for c in cache.case_ids if c not in splits.test]))
    test = cache.select(cache.training_rows(list(splits.test)))
    return train.images, train.labels, test.images, test.labels, len(cache.label_values)


def degraded(images: np.ndarray, labels: np.ndarray, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    """A fake 'generator output' made from real slices: blurred, noised, or with shuffled masks."""
    images_t, labels_t = torch.from_numpy(images), torch.from_numpy(labels)
    if kind == "blur":
        images_t = F.avg_pool2d(F.pad(images_t, (1, 1, 1, 1), mode="reflect"), 3, stride=1)
    elif kind == "noise":
        noise = torch.randn(images_t.shape, generator=torch.Generator().manual_seed(0))
        images_t = (images_t + 0.2 * noise).clamp(-1, 1)
    elif kind == "shuffled-masks":
        labels_t = labels_t.roll(len(labels_t) // 2, dims=0)
    return images_t, labels_t


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--patients", type=int, default=20)
    parser.add_argument("--steps", type=int, default=300, help="consistency segmenter training steps")
    args = parser.parse_args(argv)

    train_images, train_labels, test_images, test_labels, num_classes = phantom_slices(args.resolution, args.patients)
    report: dict = {"resolution": args.resolution, "train_slices": len(train_images),
                    "test_slices": len(test_images), "channels": int(train_images.shape[1]),
                    "num_classes": num_classes}

    extractor = load_feature_extractor(None, in_channels=train_images.shape[1])
    extract_features(extractor, train_images[:8])  # warm-up: first-call allocations, thread pool
    start = time.perf_counter()
    feats = extract_features(extractor, train_images)
    report["extractor_s_per_1000"] = (time.perf_counter() - start) / len(train_images) * 1000
    report["feature_dim"] = int(feats.shape[1])
    start = time.perf_counter()
    frechet_distance(feats, feats[::-1])
    report["fid_s"] = time.perf_counter() - start
    start = time.perf_counter()
    kernel_inception_distance(feats, feats[::-1])
    report["kid_s"] = time.perf_counter() - start

    config = MetricsConfig(consistency=ConsistencyConfig(steps=args.steps))
    metrics = GanMetrics(train_images, train_labels, num_classes, config)
    start = time.perf_counter()
    metrics.segmenter
    report["segmenter_train_s"] = time.perf_counter() - start
    report["floor"] = metrics.floor(test_images, test_labels)
    for kind in ("blur", "noise", "shuffled-masks"):
        report[kind] = metrics.evaluate_set(*degraded(test_images, test_labels, kind))
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
