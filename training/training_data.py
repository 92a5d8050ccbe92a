"""The slices a GAN trains on: a dataset's slice cache, the rows kept, and rows -> network inputs.

`open_training_data` reads the dataset (the embedded phantoms for ``data: phantoms``), opens or
builds its slice cache with the run's preprocessing (the preset ``stylepair-data cache --config``
and the study use, with the run's resolution and slice selection), leaves out ``exclude_cases`` and
describes the result once, as the `DatasetInfo` saved with every snapshot (what sampling, the
writer and the study later read: labels, intensity windows, the real grid, a fingerprint).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from gan import labels_to_channels
from training import checkpoint as ckpt
from training.config import TrainConfig


@dataclass
class TrainingData:
    """The training slices of a slice cache and how to turn rows into network inputs.

    ``cache`` is a training.data.SliceCache; ``rows`` the cache rows used for training;
    ``info`` the description saved with every snapshot.
    """

    cache: object
    rows: np.ndarray
    info: ckpt.DatasetInfo
    cond: str

    @property
    def image_channels(self) -> int:
        return len(self.info.modalities)

    @property
    def label_channels(self) -> int:
        return len(self.info.label_values)

    def __len__(self) -> int:
        return len(self.rows)

    def load(self, index: torch.Tensor, device: torch.device
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Inputs for positions ``index`` [n] into ``rows``: image [n,M,H,W] in [-1,1], mask
        [n,L,H,W] one-hot in {-1,1}, c [n,c_dim] (slice position or empty), labels [n,H,W] long."""
        batch = self.cache.select(self.rows[index.numpy()])
        labels = torch.from_numpy(batch.labels).to(device)
        images = torch.from_numpy(batch.images).to(device)
        masks = labels_to_channels(labels, self.label_channels)
        position = torch.from_numpy(batch.position).to(device)[:, None]
        c = position if self.cond == "slice-position" else position[:, :0]
        return images, masks, c, labels


def open_training_data(cfg: TrainConfig) -> TrainingData:
    """Load the dataset (``phantoms``: the embedded default), build/open its slice cache."""
    from training.data import (default_phantom_dataset, load_dataset, load_preprocess_config,
                               open_slice_cache)
    from training.data.nifti import read_stored_style
    from training.data.preprocess import RealGrid

    root = default_phantom_dataset() if cfg.data == "phantoms" else Path(cfg.data)
    dataset = load_dataset(root, layout=cfg.layout, on_error=cfg.on_error)
    slices = dict(resolution=cfg.resolution, drop_end_slices=cfg.drop_end_slices, drop_empty_slices=cfg.drop_empty_slices)
    preprocess = load_preprocess_config(cfg.preprocess, **slices)
    cache = open_slice_cache(dataset, preprocess)
    unknown = sorted(set(cfg.exclude_cases) - set(cache.case_ids))
    if unknown:
        raise ValueError(f"{root}: exclude_cases names patients the dataset does not have: {unknown[:5]}")
    kept = [c for c in cache.case_ids if c not in set(cfg.exclude_cases)]
    if not kept:
        raise ValueError(f"{root}: exclude_cases leaves no patient to train on")
    rows = cache.training_rows(case_ids=kept)
    if len(rows) == 0:
        raise ValueError(f"{root}: no training slices left after the slice selection")
    typical = cache.typical_case(kept)
    patient = dataset.patient(typical.case_id)
    real_grid = RealGrid(typical.original_shape, np.asarray(typical.original_affine),
                         read_stored_style(patient.image_files[0], patient.label_file, patient.case_id))
    row_digest = hashlib.sha256(np.ascontiguousarray(rows).tobytes()).hexdigest()
    fingerprint = hashlib.sha256(json.dumps({
        "source": cache.fingerprint, "preprocess": preprocess.cache_key(cache.modalities),
        "rows": row_digest}, sort_keys=True).encode()).hexdigest()
    info = ckpt.DatasetInfo(
        name=cache.dataset_name, root=str(root), fingerprint=fingerprint,
        modalities=list(cache.modalities), label_values=[int(v) for v in cache.label_values],
        label_names=list(cache.label_names), resolution=int(cache.resolution),
        intensity=[{"modality": m, "lo": cache.intensity_scale[m].lo, "hi": cache.intensity_scale[m].hi}
                   for m in cache.modalities],
        affine=typical.slice_affine, spacing=[float(s) for s in typical.slice_spacing], real_grid=real_grid.to_dict(),
        slices_per_patient=[int(n) for n in cache.slices_per_case], case_ids=kept,
        num_slices=int(len(rows)), excluded_case_ids=sorted(cfg.exclude_cases),
        case_label_sha256={c: ckpt.sha256_of(dataset.patient(c).label_file) for c in kept})
    return TrainingData(cache=cache, rows=rows, info=info, cond=cfg.cond)
