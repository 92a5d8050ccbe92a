"""Procedural synthesis speed: seconds per synthetic patient of each synthesiser on phantom patients
(64 x 64 x 24, 4 modalities, the configs/procedural/phantom-*.yaml settings), one thread.  The
reference is reading one real patient from its NIfTI files, what any study does per patient anyway.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from procedural import LabelSet, VolumePatient, build_synthesiser
from training.data import PHANTOM_LABELS, PHANTOM_MODALITIES, generate_phantom_patient, load_dataset, write_phantom_dataset

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {"label-to-image": "phantom-label-to-image", "lesion-insertion": "phantom-lesions",
           "shape-insertion": "phantom-shapes", "cut-and-paste": "phantom-cut-and-paste"}
PATIENTS, REPEATS = 6, 6


def main() -> None:
    torch.set_num_threads(1)
    shape = (64, 64, 24)
    sources = []
    for i in range(PATIENTS):
        p = generate_phantom_patient(0, i, shape)
        sources.append(VolumePatient(f"p{i}", p.images, p.label.astype(np.int32), p.affine))
    labels = LabelSet(PHANTOM_LABELS, tuple(range(len(PHANTOM_LABELS))))
    with tempfile.TemporaryDirectory() as tmp:
        dataset = load_dataset(write_phantom_dataset(Path(tmp) / "ph", n_patients=2, shape=shape))
        started = time.perf_counter()
        for _ in range(REPEATS):
            dataset.patients[0].load_images(), dataset.patients[0].load_label()
        read = (time.perf_counter() - started) / REPEATS
    print(f"{'synthesiser':<18} {'s / patient':>12} {'vs reading one patient':>24}")
    print(f"{'(read NIfTI)':<18} {read:>12.3f} {1.0:>23.2f}x")
    for name, config in CONFIGS.items():
        synthesiser = build_synthesiser(name, ROOT / "configs" / "procedural" / f"{config}.yaml", sources, labels,
                                        PHANTOM_MODALITIES)
        started = time.perf_counter()
        for j in range(REPEATS):
            synthesiser.make(j, np.random.default_rng([0, j]))
        seconds = (time.perf_counter() - started) / REPEATS
        print(f"{name:<18} {seconds:>12.3f} {seconds / read:>23.2f}x")


if __name__ == "__main__":
    main()
