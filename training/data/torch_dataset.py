"""`SliceDataset`: a torch map-style dataset over rows of a `SliceCache`."""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset as TorchDataset

from training.data.cache import SliceCache


class SliceDataset(TorchDataset):
    """Item i -> (image float32 [M, R, R] in [-1, 1], label int64 [R, R] indices, position in [0, 1]).

    position is a 0-d float32 tensor, so the default collate gives a float32 [N] batch.

    rows: cache rows to expose (default: all; e.g. ``cache.training_rows(case_ids=fold.train)``).
    Batched reads go through ``__getitems__`` (one sorted read of the memory map per batch).
    """

    def __init__(self, cache: SliceCache, rows: np.ndarray | list[int] | None = None):
        self.cache = cache
        self.rows = np.arange(len(cache), dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: list[int]) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        batch = self.cache.select(self.rows[np.asarray(indices, dtype=np.int64)])
        images, labels = torch.from_numpy(batch.images), torch.from_numpy(batch.labels)
        positions = torch.from_numpy(batch.position)
        return [(images[i], labels[i], positions[i]) for i in range(len(indices))]
