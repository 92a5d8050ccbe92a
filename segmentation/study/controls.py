"""Built-in control arms: synthetic data whose effect on segmentation is known in advance.

A study that cannot see the ideal synthetic data help, or that sees garbage help, cannot be
trusted on GAN-made patients either.  Three controls, each an arm kind (``control:`` in the YAML):

- ``oracle``: fresh phantom patients from a population seed the real dataset does not use --
  perfect synthetic data (phantom datasets only); expected: better than real-only.
- ``noise``: images uniform in [-1, 1] with random blocky label maps; expected: not better.
- ``shuffled``: the run's own real training images, each with the labels of *another* of the
  run's training patients (slice matched by relative position); expected: not better.

Noise and shuffled patients are made per run from the block's seed (no file, no pool shared by
blocks); oracle patients are phantoms written once per study into the phantom cache.  None of
them ever reads a validation or test patient.
"""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset as TorchDataset

from training.data import SliceCache

ORACLE_SEED_OFFSET = 1_000_003  # phantom population of the oracle = dataset's phantom seed + this
NOISE_LABEL_CELL = 4            # pixels per side of one random label cell (blobs, not salt-and-pepper)


def oracle_seed(dataset_phantom_seed: int) -> int:
    """The phantom population seed of the oracle arm: never the dataset's own."""
    return dataset_phantom_seed + ORACLE_SEED_OFFSET


class NoiseSlices(TorchDataset):
    """``n_patients`` x ``slices_per_patient`` noise slices, item i -> (image float32 [M, R, R]
    uniform in [-1, 1], label int64 [R, R] random label indices in cells of `NOISE_LABEL_CELL`
    pixels, position float32 0-d in [0, 1]); item i depends only on (seed, i), so patient j is the
    same for every k of a block (nested subsets)."""

    def __init__(self, n_patients: int, slices_per_patient: int, in_channels: int, resolution: int,
                 n_classes: int, seed: int):
        self.n_patients, self.slices_per_patient = n_patients, slices_per_patient
        self.in_channels, self.resolution, self.n_classes, self.seed = in_channels, resolution, n_classes, seed

    def __len__(self) -> int:
        return self.n_patients * self.slices_per_patient

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if not 0 <= index < len(self):
            raise IndexError(index)
        rng = np.random.default_rng([self.seed, index])
        r = self.resolution
        image = rng.uniform(-1.0, 1.0, size=(self.in_channels, r, r)).astype(np.float32)
        cells = -(-r // NOISE_LABEL_CELL)
        coarse = rng.integers(0, self.n_classes, size=(cells, cells))
        label = np.repeat(np.repeat(coarse, NOISE_LABEL_CELL, 0), NOISE_LABEL_CELL, 1)[:r, :r]
        position = (index % self.slices_per_patient) / max(1, self.slices_per_patient - 1)
        return (torch.from_numpy(image), torch.from_numpy(label.astype(np.int64)),
                torch.tensor(position, dtype=torch.float32))


def shuffled_pairs(case_ids: list[str], count: int, seed: int) -> list[tuple[str, str]]:
    """``count`` (image case, label case) pairs of distinct cases from ``case_ids`` (>= 2): a seeded
    order, then pair j takes the image of case j mod n and the labels of the case 1 + (j // n) mod
    (n - 1) places after it, so no pair keeps its own labels and the first count pairs are nested."""
    n = len(case_ids)
    if n < 2:
        raise ValueError(f"the shuffled control needs at least 2 real training patients, got {n}")
    order = [case_ids[i] for i in np.random.default_rng(seed).permutation(n)]
    pairs = []
    for j in range(count):
        a = j % n
        b = (a + 1 + (j // n) % (n - 1)) % n
        pairs.append((order[a], order[b]))
    return pairs


def matched_label_rows(cache: SliceCache, image_case: str, label_case: str) -> tuple[np.ndarray, np.ndarray]:
    """Rows int64 [Z] of ``image_case`` and, for each, the row of ``label_case`` nearest in relative
    slice position (the two cases may have different slice counts)."""
    image_rows, label_rows = cache.rows_of(image_case), cache.rows_of(label_case)
    relative = np.linspace(0.0, 1.0, image_rows.size)
    nearest = np.rint(relative * (label_rows.size - 1)).astype(np.int64)
    return image_rows, label_rows[nearest]


class ShuffledLabelSlices(TorchDataset):
    """Item i -> (image float32 [M, R, R] of one case, label int64 [R, R] of another, position):
    the slices of every (image case, label case) pair of `shuffled_pairs`."""

    def __init__(self, cache: SliceCache, pairs: list[tuple[str, str]]):
        self.cache = cache
        rows = [matched_label_rows(cache, a, b) for a, b in pairs]
        self.image_rows = np.concatenate([r[0] for r in rows]) if rows else np.zeros(0, np.int64)
        self.label_rows = np.concatenate([r[1] for r in rows]) if rows else np.zeros(0, np.int64)

    def __len__(self) -> int:
        return int(self.image_rows.size)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: list[int]) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        index = np.asarray(indices, dtype=np.int64)
        images = self.cache.select(self.image_rows[index])
        labels = self.cache.select(self.label_rows[index])
        return [(torch.from_numpy(images.images[i]), torch.from_numpy(labels.labels[i]),
                 torch.tensor(images.position[i])) for i in range(index.size)]
