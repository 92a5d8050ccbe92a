"""The on-disk slice cache shared by GAN training and the U-Net study.

Layout of one cache (a folder ``slices-<root>-<config>-<source>`` under the cache location)::

    images.npy         float32/float16 [N, M, R, R] in [-1, 1]   (memory-mapped on open)
    labels.npy         uint8 [N, R, R] label indices 0..L-1       (memory-mapped on open)
    case_index.npy     int32 [N]     row -> case number
    slice_index.npy    int32 [N]     row -> axial slice index k in its case
    position.npy       float32 [N]   k / (Z - 1): relative position in the full stack, in [0, 1]
    label_fraction.npy float32 [N]   fraction of non-background pixels of the row's label
    index.json         dataset description, preprocessing config, per-case `CaseInfo`, scales

Every slice of every case is kept, in case order then slice order; slice selection for GAN
training (`SliceCache.training_rows`) is a view.  The folder name hashes the dataset root, the
preprocessing fields that change the arrays, and the source files' (path, size, mtime): touching a
file or changing the config gives a new cache, and the stale one of the same config is removed.
A cache is built in a hidden temporary folder and renamed into place (atomic); an fcntl lock per
(dataset, config) makes concurrent processes wait for one builder instead of racing.

Default location (first that applies): ``cache_dir`` argument; ``$STYLEPAIR_CACHE_DIR/slices/``;
``<dataset root>/.stylepair_cache/`` when the dataset folder is writable;
``~/.cache/stylepair/slices/``.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from training.data.errors import DataWarning
from training.data.fsutils import atomic_write_json, default_cache_location, file_lock
from training.data.preprocess import (CaseInfo, PreprocessConfig, normalise, preprocess_config_from_dict,
                                      preprocess_patient)
from training.data.records import Dataset

CACHE_FORMAT = 1
_ROW_ARRAYS = ("case_index", "slice_index", "position", "label_fraction")


@dataclass(frozen=True)
class IntensityScale:
    """A linear map between [-1, 1] and intensities: -1 <-> lo, +1 <-> hi."""

    lo: float
    hi: float

    def to_intensity(self, x: np.ndarray) -> np.ndarray:
        """[-1, 1] -> intensities (same shape)."""
        return (np.asarray(x, dtype=np.float32) + 1.0) * 0.5 * (self.hi - self.lo) + self.lo

    def to_unit(self, intensity: np.ndarray) -> np.ndarray:
        """Intensities -> [-1, 1] (clipped; same shape)."""
        return normalise(np.asarray(intensity), (self.lo, self.hi))


@dataclass(frozen=True)
class SliceBatch:
    """Slices read into memory: images float32 [n, M, R, R] in [-1, 1], labels int64 [n, R, R]
    label indices, position float32 [n] in [0, 1], case_index/slice_index int64 [n], rows int64 [n]."""

    images: np.ndarray
    labels: np.ndarray
    position: np.ndarray
    case_index: np.ndarray
    slice_index: np.ndarray
    rows: np.ndarray


class SliceCache:
    """A built cache opened read-only; arrays are memory maps, so opening costs no RAM.

    Attributes: images [N, M, R, R], labels [N, R, R] uint8, case_index/slice_index/position/
    label_fraction [N]; case_ids, cases (list of `CaseInfo`), modalities, label_values, label_names,
    resolution, intensity_scale (modality -> `IntensityScale`, the median window over cases),
    preprocess (the caller's `PreprocessConfig`: its selection fields drive `training_rows`), path.
    """

    def __init__(self, path: Path, preprocess: PreprocessConfig | None = None):
        self.path = Path(path)
        index = json.loads((self.path / "index.json").read_text())
        if index.get("format") != CACHE_FORMAT:
            raise ValueError(f"{self.path}: cache format {index.get('format')} is not {CACHE_FORMAT}; delete it")
        self.index = index
        self.dataset_name: str = index["dataset"]["name"]
        self.dataset_root = Path(index["dataset"]["root"])
        self.fingerprint: str = index["dataset"]["fingerprint"]
        self.modalities: list[str] = list(index["dataset"]["modalities"])
        self.label_values: list[int] = list(index["dataset"]["label_values"])
        self.label_names: list[str] = list(index["dataset"]["label_names"])
        self.cases: list[CaseInfo] = [CaseInfo.from_dict(c) for c in index["cases"]]
        self.case_ids: list[str] = [c.case_id for c in self.cases]
        self.intensity_scale = {m: IntensityScale(*v) for m, v in index["intensity_scale"].items()}
        self.preprocess = preprocess if preprocess is not None else preprocess_config_from_dict(index["preprocess"])
        self.resolution: int = int(index["preprocess"]["resolution"])
        self._open_arrays()

    def _open_arrays(self) -> None:
        self.images = np.load(self.path / "images.npy", mmap_mode="r", allow_pickle=False)
        self.labels = np.load(self.path / "labels.npy", mmap_mode="r", allow_pickle=False)
        for name in _ROW_ARRAYS:
            setattr(self, name, np.load(self.path / f"{name}.npy", allow_pickle=False))
        n = len(self.case_index)
        if self.images.shape != (n, len(self.modalities), self.resolution, self.resolution) \
                or self.labels.shape != (n, self.resolution, self.resolution):
            raise ValueError(f"{self.path}: arrays {self.images.shape} / {self.labels.shape} disagree with the index")

    # Worker processes (DataLoader with spawn) receive the path and re-map the arrays, never a copy.
    def __getstate__(self) -> dict:
        return {"path": str(self.path), "preprocess": self.preprocess.to_dict()}

    def __setstate__(self, state: dict) -> None:
        self.__init__(Path(state["path"]), preprocess_config_from_dict(state["preprocess"]))

    def __len__(self) -> int:
        return len(self.case_index)

    @property
    def slices_per_case(self) -> list[int]:
        """Number of slices (Z) of each case, in case order."""
        return [c.n_slices for c in self.cases]

    def case_info(self, case_id: str) -> CaseInfo:
        """The `CaseInfo` of ``case_id`` (KeyError if absent)."""
        try:
            return self.cases[self.case_ids.index(case_id)]
        except ValueError:
            raise KeyError(f"case {case_id!r} is not in the cache {self.path}") from None

    def rows_of(self, case_id: str) -> np.ndarray:
        """Row indices int64 [Z] of ``case_id``, ordered by slice index."""
        info = self.case_info(case_id)
        return np.arange(info.first_row, info.first_row + info.n_slices, dtype=np.int64)

    def select(self, rows: np.ndarray | list[int]) -> SliceBatch:
        """Read the given rows (any order, repeats allowed) into memory as a `SliceBatch`.

        Reads in sorted row order (sequential on disk) and returns in the requested order.
        """
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        if rows.size and (rows.min() < 0 or rows.max() >= len(self)):
            raise IndexError(f"rows must lie in [0, {len(self)}), got {rows.min()}..{rows.max()}")
        if np.all(rows[1:] > rows[:-1]):  # already sorted and unique: one copy
            images, labels = np.asarray(self.images[rows], dtype=np.float32), self.labels[rows].astype(np.int64)
        else:
            unique, inverse = np.unique(rows, return_inverse=True)
            images = np.asarray(self.images[unique], dtype=np.float32)[inverse]
            labels = self.labels[unique].astype(np.int64)[inverse]
        return SliceBatch(images, labels, self.position[rows].astype(np.float32),
                          self.case_index[rows].astype(np.int64), self.slice_index[rows].astype(np.int64), rows)

    def volume(self, case_id: str) -> tuple[np.ndarray, np.ndarray]:
        """One case re-stacked: images float32 [M, R, R, Z] in [-1, 1], labels uint8 [R, R, Z] indices.

        Its header is ``case_info(case_id).slice_affine`` with spacing ``slice_spacing``.
        """
        batch = self.select(self.rows_of(case_id))
        return batch.images.transpose(1, 2, 3, 0), batch.labels.astype(np.uint8).transpose(1, 2, 0)

    def training_rows(self, case_ids: list[str] | None = None, drop_end_slices: int | None = None,
                      drop_empty_slices: bool | None = None, min_label_fraction: float | None = None) -> np.ndarray:
        """Rows for GAN training: int64 [n], sorted.  Arguments left None use ``self.preprocess``.

        case_ids: restrict to these cases (e.g. a split's training patients); drop_end_slices: drop
        that many slices at each end of every stack; drop_empty_slices: drop all-background
        slices; min_label_fraction: drop slices with a smaller non-background fraction.
        """
        drop = self.preprocess.drop_end_slices if drop_end_slices is None else drop_end_slices
        empty = self.preprocess.drop_empty_slices if drop_empty_slices is None else drop_empty_slices
        fraction = self.preprocess.min_label_fraction if min_label_fraction is None else min_label_fraction
        if case_ids is None:
            keep = np.ones(len(self), dtype=bool)
        else:
            number_of = {case_id: n for n, case_id in enumerate(self.case_ids)}
            missing = [c for c in case_ids if c not in number_of]
            if missing:
                raise KeyError(f"cases {missing} are not in the cache {self.path}")
            keep = np.isin(self.case_index, [number_of[c] for c in case_ids])
        n_slices = np.array(self.slices_per_case)[self.case_index]
        keep &= (self.slice_index >= drop) & (self.slice_index < n_slices - drop)
        if empty:
            keep &= self.label_fraction > 0
        if fraction > 0:
            keep &= self.label_fraction >= fraction
        return np.flatnonzero(keep).astype(np.int64)

    def typical_case(self, case_ids: list[str] | None = None) -> CaseInfo:
        """The case (among ``case_ids``, default all) with the median slice spacing: a sensible header
        and grid for synthetic volumes built from slices of this cache."""
        cases = [c for c in self.cases if case_ids is None or c.case_id in set(case_ids)]
        spacing = np.array([c.slice_spacing for c in cases])
        distance = np.abs(spacing - np.median(spacing, axis=0)).sum(axis=1)
        return cases[int(np.argmin(distance))]


def cache_location(dataset: Dataset, cache_dir: str | Path | None = None) -> Path:
    """Folder holding the caches of ``dataset`` (see `default_cache_location` for the order)."""
    return default_cache_location(dataset.root, cache_dir)


def _cache_names(dataset: Dataset, preprocess: PreprocessConfig) -> tuple[str, str]:
    root_key = hashlib.sha256(str(dataset.root.resolve()).encode()).hexdigest()[:8]
    family = f"slices-{root_key}-{preprocess.cache_key(dataset.modalities)[:10]}"
    return family, f"{family}-{dataset.fingerprint()[:12]}"


class _NpyRowWriter:
    """Appends rows to a preallocated ``.npy`` file with plain writes.

    Plain writes instead of a writable memory map keep the builder's resident memory at one case:
    dirty pages of a mapping would count against the process until unmapped.
    """

    def __init__(self, path: Path, dtype: str | np.dtype, shape: tuple[int, ...]):
        header = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)  # header + sized file
        self.offset, self.dtype = header.offset, np.dtype(dtype)
        self.row_bytes = int(np.prod(shape[1:])) * self.dtype.itemsize
        del header
        self.handle = open(path, "r+b")

    def write(self, first_row: int, rows: np.ndarray) -> None:
        self.handle.seek(self.offset + first_row * self.row_bytes)
        self.handle.write(np.ascontiguousarray(rows, dtype=self.dtype).tobytes())

    def close(self) -> None:
        self.handle.flush()
        os.fsync(self.handle.fileno())
        self.handle.close()


def _write_arrays(dataset: Dataset, preprocess: PreprocessConfig, out: Path) -> list[CaseInfo]:
    n_rows = sum(p.shape[2] for p in dataset.patients)
    r, m = preprocess.resolution, len(dataset.modalities)
    images = _NpyRowWriter(out / "images.npy", preprocess.cache_dtype, (n_rows, m, r, r))
    labels = _NpyRowWriter(out / "labels.npy", np.uint8, (n_rows, r, r))
    rows = {name: np.zeros(n_rows, dtype=np.float32 if name in ("position", "label_fraction") else np.int32)
            for name in _ROW_ARRAYS}
    infos: list[CaseInfo] = []
    first = 0
    try:
        for number, patient in enumerate(tqdm(dataset.patients, desc=f"caching {dataset.name} at {r}px",
                                              unit="patient", disable=None)):
            case = preprocess_patient(patient, dataset.label_values, preprocess, first_row=first)
            z = case.info.n_slices
            if z != patient.shape[2]:
                raise ValueError(f"{patient.case_id}: {z} slices, header said {patient.shape[2]}")
            images.write(first, case.images)
            labels.write(first, case.labels)
            rows["case_index"][first:first + z] = number
            rows["slice_index"][first:first + z] = np.arange(z)
            rows["position"][first:first + z] = np.arange(z) / max(z - 1, 1)
            rows["label_fraction"][first:first + z] = (case.labels > 0).mean(axis=(1, 2))
            infos.append(case.info)
            first += z
    finally:
        images.close()
        labels.close()
    for name, values in rows.items():
        np.save(out / f"{name}.npy", values, allow_pickle=False)
    return infos


def build_slice_cache(dataset: Dataset, preprocess: PreprocessConfig, out: Path) -> None:
    """Preprocess every patient of ``dataset`` into the cache folder ``out`` (must not exist)."""
    out.mkdir(parents=True)
    started = time.time()
    infos = _write_arrays(dataset, preprocess, out)
    windows = {m: np.median([info.intensity_window[m] for info in infos], axis=0).tolist() for m in dataset.modalities}
    index = {
        "format": CACHE_FORMAT,
        "dataset": {"name": dataset.name, "root": str(dataset.root.resolve()), "layout": dataset.layout,
                    "modalities": dataset.modalities, "label_values": dataset.label_values,
                    "label_names": dataset.label_names, "fingerprint": dataset.fingerprint(),
                    "skipped": [list(s) for s in dataset.skipped]},
        "preprocess": preprocess.to_dict(),
        "cases": [dataclasses.asdict(info) for info in infos],
        "intensity_scale": windows,
        "build_seconds": round(time.time() - started, 3),
    }
    atomic_write_json(out / "index.json", index)


def _open_existing(path: Path, preprocess: PreprocessConfig) -> SliceCache | None:
    """The cache at ``path``, or None when there is none or it cannot be read (then it is rebuilt)."""
    if not (path / "index.json").is_file():
        return None
    try:
        return SliceCache(path, preprocess)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        warnings.warn(f"{path}: unreadable slice cache, rebuilding it ({exc})", DataWarning, stacklevel=3)
        return None


def open_slice_cache(dataset: Dataset, preprocess: PreprocessConfig | None = None,
                     cache_dir: str | Path | None = None) -> SliceCache:
    """Open the slice cache of (dataset, preprocess), building it first if missing, stale or unreadable.

    Safe to call from several processes at once: one builds (under an fcntl lock, into a temporary
    folder renamed into place), the others wait and then open the result.
    """
    preprocess = preprocess if preprocess is not None else PreprocessConfig()
    location = cache_location(dataset, cache_dir)
    family, name = _cache_names(dataset, preprocess)
    final = location / name
    cache = _open_existing(final, preprocess)
    if cache is not None:
        return cache
    with file_lock(location / f".{family}.lock"):
        cache = _open_existing(final, preprocess)
        if cache is not None:
            return cache
        for stale in list(location.glob(f"{family}-*")) + list(location.glob(f".tmp-{family}-*")):
            shutil.rmtree(stale, ignore_errors=True)  # other sources, an unreadable copy, or a crashed build
        tmp = location / f".tmp-{name}-{os.getpid()}"
        try:
            build_slice_cache(dataset, preprocess, tmp)
            os.rename(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return SliceCache(final, preprocess)
