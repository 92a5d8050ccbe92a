"""The slice cache: contents, reuse, rebuild on change, atomic concurrent builds, views, torch,
bounded memory while building and reading."""
import dataclasses
import json
import multiprocessing
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import training.data.cache as cache_module
from training.data import (PreprocessConfig, SliceDataset, load_dataset, open_slice_cache, preprocess_patient,
                           write_phantom_dataset)

SHAPE = (20, 16, 6)
CONFIG = PreprocessConfig(resolution=16)


@pytest.fixture()
def dataset(tmp_path):
    return load_dataset(write_phantom_dataset(tmp_path / "msd", n_patients=3, shape=SHAPE, seed=5))


def count_builds(monkeypatch, folder):
    """Make every build of this process leave a marker file in ``folder``; returns a counter."""
    build = cache_module.build_slice_cache

    def counting(dataset, preprocess, out):
        (folder / f"built-{os.getpid()}-{out.name}").write_text("")
        build(dataset, preprocess, out)

    monkeypatch.setattr(cache_module, "build_slice_cache", counting)
    return lambda: len(list(folder.glob("built-*")))


def test_cache_holds_every_slice_and_metadata(dataset):
    cache = open_slice_cache(dataset, CONFIG)
    assert cache.path.parent == dataset.root / ".stylepair_cache"
    assert isinstance(cache.images, np.memmap) and isinstance(cache.labels, np.memmap)
    assert cache.images.shape == (3 * SHAPE[2], 4, 16, 16) and cache.labels.dtype == np.uint8
    assert cache.case_ids == dataset.case_ids and cache.slices_per_case == [SHAPE[2]] * 3
    assert cache.modalities == dataset.modalities and cache.label_values == dataset.label_values
    rows = cache.rows_of("phantom_001")
    np.testing.assert_array_equal(rows, np.arange(6, 12))
    expected = preprocess_patient(dataset.patient("phantom_001"), dataset.label_values, CONFIG)
    np.testing.assert_array_equal(cache.images[rows], expected.images)
    np.testing.assert_array_equal(cache.labels[rows], expected.labels)
    np.testing.assert_allclose(cache.position[rows], np.linspace(0.0, 1.0, SHAPE[2]))
    np.testing.assert_array_equal(cache.slice_index[rows], np.arange(SHAPE[2]))
    assert cache.case_info("phantom_001") == dataclasses.replace(expected.info, first_row=6)
    images, labels = cache.volume("phantom_001")
    assert images.shape == (4, 16, 16, SHAPE[2]) and labels.shape == (16, 16, SHAPE[2])
    scale = cache.intensity_scale["T2"]
    windows = [c.intensity_window["T2"] for c in cache.cases]
    assert min(w[0] for w in windows) <= scale.lo <= max(w[0] for w in windows)
    np.testing.assert_allclose(scale.to_intensity(np.array([-1.0, 1.0])), [scale.lo, scale.hi], rtol=1e-6)
    typical = cache.typical_case()
    assert np.asarray(typical.slice_affine).shape == (4, 4) and typical.slice_spacing == cache.cases[0].slice_spacing
    assert cache.typical_case(["phantom_001"]).case_id == "phantom_001"


def test_cache_reused_then_rebuilt_when_sources_or_config_change(dataset, monkeypatch, tmp_path):
    builds = count_builds(monkeypatch, tmp_path)
    first = open_slice_cache(dataset, CONFIG)
    assert open_slice_cache(dataset, CONFIG).path == first.path and builds() == 1
    other_resolution = open_slice_cache(dataset, PreprocessConfig(resolution=8))
    assert other_resolution.path != first.path and first.path.exists() and builds() == 2
    selection_only = PreprocessConfig(resolution=16, drop_end_slices=2, min_label_fraction=0.1)
    assert open_slice_cache(dataset, selection_only).path == first.path and builds() == 2
    label = dataset.patients[0].label_file
    stat = label.stat()
    os.utime(label, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    rebuilt = open_slice_cache(load_dataset(dataset.root), CONFIG)
    assert rebuilt.path != first.path and builds() == 3
    assert not first.path.exists() and other_resolution.path.exists()  # stale cache of that config removed


def test_crashed_build_leftovers_are_removed(dataset):
    location = dataset.root / ".stylepair_cache"
    family = cache_module._cache_names(dataset, CONFIG)[0]
    (location / f".tmp-{family}-deadbeef-99999").mkdir(parents=True)
    cache = open_slice_cache(dataset, CONFIG)
    assert [p.name for p in location.iterdir() if p.is_dir()] == [cache.path.name]


def _open_in_child(root, marker_folder, barrier, queue):
    count_builds(pytest.MonkeyPatch(), marker_folder)
    dataset = load_dataset(root)
    barrier.wait()
    cache = open_slice_cache(dataset, CONFIG)
    queue.put((str(cache.path), float(np.asarray(cache.images[3]).sum())))


def test_concurrent_processes_build_once(dataset, tmp_path):
    # spawn, not fork: a forked child of a process that already ran torch's OpenMP pool can hang.
    context = multiprocessing.get_context("spawn")
    barrier, queue = context.Barrier(2), context.Queue()
    workers = [context.Process(target=_open_in_child, args=(dataset.root, tmp_path, barrier, queue)) for _ in range(2)]
    for worker in workers:
        worker.start()
    results = [queue.get(timeout=120) for _ in workers]
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    assert results[0] == results[1]
    assert len(list(tmp_path.glob("built-*"))) == 1
    assert not list((dataset.root / ".stylepair_cache").glob(".tmp-*"))


def test_training_rows_is_a_view(dataset):
    cache = open_slice_cache(dataset, PreprocessConfig(resolution=16, drop_end_slices=1))
    rows = cache.training_rows()
    assert len(rows) == 3 * (SHAPE[2] - 2) and set(cache.slice_index[rows]) == {1, 2, 3, 4}
    assert len(cache.training_rows(drop_end_slices=0)) == len(cache)
    nonempty = cache.training_rows(drop_end_slices=0, drop_empty_slices=True)
    assert np.all(cache.labels[nonempty].reshape(len(nonempty), -1).max(axis=1) > 0)
    dense = cache.training_rows(drop_end_slices=0, min_label_fraction=0.2)
    assert np.all(cache.label_fraction[dense] >= 0.2) and len(dense) < len(cache)
    only = cache.training_rows(case_ids=["phantom_002"], drop_end_slices=0)
    np.testing.assert_array_equal(only, cache.rows_of("phantom_002"))
    with pytest.raises(KeyError, match="phantom_404"):
        cache.training_rows(case_ids=["phantom_404"])


def test_select_random_rows_and_pickling_keeps_the_memory_map(dataset):
    cache = open_slice_cache(dataset, CONFIG)
    rows = np.array([11, 2, 2, 17, 0])
    batch = cache.select(rows)
    assert batch.images.dtype == np.float32 and batch.labels.dtype == np.int64
    np.testing.assert_array_equal(batch.images, np.asarray(cache.images)[rows])
    np.testing.assert_array_equal(batch.labels, np.asarray(cache.labels)[rows])
    np.testing.assert_array_equal(batch.position, cache.position[rows])
    with pytest.raises(IndexError):
        cache.select([len(cache)])
    payload = pickle.dumps(cache)
    assert len(payload) < cache.images.nbytes / 4  # the path travels, not the arrays
    clone = pickle.loads(payload)
    assert isinstance(clone.images, np.memmap) and clone.path == cache.path


def test_slice_dataset_batches(dataset):
    cache = open_slice_cache(dataset, CONFIG)
    data = SliceDataset(cache, cache.training_rows(case_ids=["phantom_000", "phantom_002"]))
    assert len(data) == 2 * SHAPE[2]
    image, label, position = data[SHAPE[2] + 1]
    assert image.shape == (4, 16, 16) and label.shape == (16, 16) and float(position) == pytest.approx(0.2)
    images, labels, positions = next(iter(torch.utils.data.DataLoader(data, batch_size=4, shuffle=True)))
    assert images.shape == (4, 4, 16, 16) and images.dtype == torch.float32
    assert labels.dtype == torch.int64 and positions.dtype == torch.float32 and positions.shape == (4,)
    assert int(labels.max()) < len(cache.label_values)


def test_cache_location_environment(dataset, tmp_path, monkeypatch):
    monkeypatch.setenv("STYLEPAIR_CACHE_DIR", str(tmp_path / "shared"))
    assert open_slice_cache(dataset, CONFIG).path.parent == tmp_path / "shared" / "slices"
    assert open_slice_cache(dataset, CONFIG, cache_dir=tmp_path / "mine").path.parent == tmp_path / "mine"


def test_float16_cache_matches_float32(dataset):
    full = open_slice_cache(dataset, CONFIG)
    half = open_slice_cache(dataset, PreprocessConfig(resolution=16, cache_dtype="float16"))
    assert half.path != full.path and half.images.dtype == np.float16
    rows = np.arange(len(full))
    np.testing.assert_allclose(half.select(rows).images, full.select(rows).images, atol=1e-3)
    np.testing.assert_array_equal(half.labels, full.labels)


def test_unreadable_cache_is_rebuilt(dataset):
    cache = open_slice_cache(dataset, CONFIG)
    expected = np.asarray(cache.images).copy()
    (cache.path / "index.json").write_text("{broken")
    with pytest.warns(UserWarning, match="unreadable slice cache, rebuilding"):
        again = open_slice_cache(dataset, CONFIG)
    assert again.path == cache.path
    np.testing.assert_array_equal(again.images, expected)


# Runs in a fresh interpreter so that ru_maxrss (peak resident KiB on Linux) starts low: the deltas
# measure what building and reading add, not what earlier tests left behind.
_MEMORY_PROBE = textwrap.dedent("""
    import json, resource, sys
    from pathlib import Path
    import numpy as np
    from training.data import PreprocessConfig, load_dataset, open_slice_cache, preprocess_patient

    def peak_mib():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    root, cache_dir = Path(sys.argv[1]), Path(sys.argv[2])
    dataset = load_dataset(root)
    config = PreprocessConfig(resolution=256)
    preprocess_patient(dataset.patients[0], dataset.label_values, config)  # warm up torch's kernels
    before_build = peak_mib()
    cache = open_slice_cache(dataset, config, cache_dir=cache_dir)
    after_build = peak_mib()
    rng = np.random.default_rng(0)
    for _ in range(4):
        cache.select(rng.integers(0, len(cache), 4))
    after_read = peak_mib()
    print(json.dumps({"cache_mib": cache.images.nbytes / 2**20, "build_mib": after_build - before_build,
                      "read_mib": after_read - after_build, "rows": len(cache)}))
""")


@pytest.mark.slow  # writes a 192 MiB cache and starts a fresh interpreter
@pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss is in KiB only on Linux")
def test_building_and_reading_do_not_hold_the_whole_dataset_in_memory(tmp_path):
    # 24 patients x 8 slices x 4 modalities at 256^2 float32: 192 MiB of images, 8 MiB per patient.
    root = write_phantom_dataset(tmp_path / "msd", n_patients=24, shape=(32, 32, 8), seed=0)
    result = subprocess.run([sys.executable, "-c", _MEMORY_PROBE, str(root), str(tmp_path / "cache")],
                            capture_output=True, text=True, timeout=300, check=True,
                            cwd=Path(__file__).resolve().parents[1])
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    assert measured["rows"] == 24 * 8 and measured["cache_mib"] == pytest.approx(192.0)
    # The builder keeps one patient at a time (plain writes, no dirty memory map): ~45 MiB, whereas
    # holding every patient would add at least the 192 MiB of the cache.
    assert measured["build_mib"] < measured["cache_mib"] / 2, measured
    # Four batches of 4 random rows map at most 16 of 192 rows (~45 MiB with the batch copies);
    # reading the whole images array would add at least 192 MiB.
    assert measured["read_mib"] < measured["cache_mib"] / 2, measured
