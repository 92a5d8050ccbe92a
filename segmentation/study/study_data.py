"""The data of a study: real datasets and their splits, out-of-distribution test sets, synthetic
sources (folders, GAN samples, the oracle), their checks before any training -- compatibility,
resolution, content fingerprints (`segmentation.study.provenance`) and leakage of test patients into
generators or synthetic folders -- and the grid they imply (`plan_runs`).

`segmentation.study.runner` runs the study on what `prepare_data` returns.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from segmentation.study.controls import oracle_seed
from segmentation.study.grid import Run, expand_grid, max_synthetic
from segmentation.study.provenance import ChangedDataError, cache_fingerprints, check_and_record
from segmentation.study.study_config import PHANTOMS, ArmSpec, DatasetSpec, PhantomSpec, StudyConfig
from training import checkpoint as ckpt
from training.checkpoint import CheckpointError
from training.data import (Dataset, SliceCache, Splits, default_phantom_dataset, load_dataset, load_or_make_splits,
                           make_splits, open_slice_cache)
from training.data.records import meaning_differences
from training.data.splits import minimum_patients
from training.data.fsutils import file_lock
from training.data.phantoms import SHIFTED, STANDARD, default_phantom_spec
from training.data.phantoms_radiograph import default_radiograph_dataset
from training.sampling import QualityGateError, load_source, sample_to_directory
from training.sampling.synthetic_dataset import SamplingSettings, SynthesisLog


class StudyDataError(ValueError):
    """A dataset or synthetic source cannot be used in the study (the message names the folder)."""


@dataclass
class RealData:
    """A real dataset as the study uses it: the validated `Dataset`, its slice cache and splits."""

    spec: DatasetSpec
    dataset: Dataset
    cache: SliceCache
    splits: Splits


@dataclass
class SyntheticData:
    """One synthetic source for one real dataset: its folder, `Dataset` and slice cache."""

    arm: ArmSpec
    folder: Path
    dataset: Dataset
    cache: SliceCache


@dataclass
class TestSet:
    """An out-of-distribution test set for one training dataset: its `Dataset` (channels in the
    training dataset's order), slice cache (the training dataset's preprocessing) and label_map
    int [L_test]: its label index -> the training dataset's index of the same name."""

    spec: DatasetSpec
    dataset: Dataset
    cache: SliceCache
    label_map: np.ndarray


IN_DISTRIBUTION = "in-distribution"  # the test_set value of the held-out patients of the training dataset


def load_test_set(spec: DatasetSpec, real: RealData) -> TestSet:
    """``spec`` as a test set of models trained on ``real``; `StudyDataError` when its label names or
    channel names differ from the training dataset's (values and order may differ)."""
    train = real.dataset
    dataset = load_dataset(dataset_root(spec), layout=spec.layout)
    if sorted(dataset.modalities) != sorted(train.modalities):
        raise StudyDataError(f"test dataset {spec.name!r}: channels {dataset.modalities} differ from dataset "
                             f"{real.spec.name!r}'s "
                             f"{train.modalities} (matched by name, in any order)")
    if sorted(dataset.label_names) != sorted(train.label_names):
        raise StudyDataError(f"test dataset {spec.name!r}: label names {dataset.label_names} differ from dataset "
                             f"{real.spec.name!r}'s {train.label_names}: the classes would not mean the same structures")
    if list(dataset.modalities) != list(train.modalities):
        dataset = load_dataset(dataset_root(spec), layout=spec.layout, modalities=list(train.modalities))
    label_map = np.array([train.label_names.index(name) for name in dataset.label_names], dtype=np.int64)
    return TestSet(spec, dataset, open_slice_cache(dataset, real.spec.preprocess), label_map)


@dataclass
class StudyData:
    """Everything the runs read: real data per dataset name, synthetic data per (dataset, arm), and
    for procedural arms the patients each block makes (the largest k of the arm per (dataset, n))."""

    real: dict[str, RealData]
    synthetic: dict[tuple[str, str], SyntheticData] = field(default_factory=dict)
    test_sets: dict[str, list[TestSet]] = field(default_factory=dict)
    accept_changed_data: bool = False
    fingerprints: dict[str, dict[str, str]] = field(default_factory=dict)
    procedural_blocks: dict[str, tuple[SyntheticData, dict[str, list[str]]]] = field(default_factory=dict)
    procedural_patients: dict[tuple[str, str, int | None], int] = field(default_factory=dict)


def dataset_root(spec: DatasetSpec) -> Path:
    """The folder of ``spec``: its path, or the generated phantom dataset for ``phantoms``."""
    if spec.path == PHANTOMS:
        return phantom_root(spec.phantoms, spec.phantoms.n_patients, spec.phantoms.seed)
    return Path(spec.path)


def phantom_root(p: PhantomSpec, n_patients: int, seed: int) -> Path:
    """The cached phantom dataset of ``p``'s kind and shape with ``n_patients`` of population ``seed``."""
    if p.kind == "radiograph":
        return default_radiograph_dataset(n_images=n_patients, shape=tuple(p.shape[:2]), seed=seed)
    return default_phantom_dataset(n_patients=n_patients, shape=tuple(p.shape), seed=seed,
                                   acquisition=SHIFTED if p.shifted else STANDARD)


def read_real(spec: DatasetSpec, config: StudyConfig, results: Path, full_check: bool = True
              ) -> tuple[Dataset, Splits]:
    """Read a real dataset and its splits.  ``full_check``: validate every voxel and make / reuse the
    splits file ``results/splits/DATASET.json``; False (planning, dry runs): headers only, and splits
    that are not saved when no file exists yet."""
    modalities = list(spec.modalities) if spec.modalities is not None else None
    dataset = load_dataset(dataset_root(spec), layout=spec.layout, modalities=modalities, check_voxels=full_check)
    s, path = config.splits, results / "splits" / f"{spec.name}.json"
    check_patient_count(spec.name, len(dataset.case_ids), config)
    if "map" in config.metrics:
        instance_classes(config, dataset)
    try:
        expected = make_splits(dataset.case_ids, s.n_folds, s.seed, s.test_fraction)
        splits = load_or_make_splits(path, dataset.case_ids, s.n_folds, s.seed, s.test_fraction) \
            if full_check or path.is_file() else expected
    except ValueError as exc:  # too few patients for the folds, or a stored file for other patients
        raise StudyDataError(f"dataset {spec.name!r}: {exc}") from None
    if splits != expected:
        # finished runs in this folder were tested on the stored splits: mixing them would be silent nonsense
        raise StudyDataError(f"{path}: stored splits differ from those of the config (splits: n_folds "
                             f"{s.n_folds}, seed {s.seed}, test_fraction {s.test_fraction}); use another "
                             f"--results folder, or restore the settings the folder was made with")
    return dataset, splits


def check_patient_count(name: str, patients: int, config: StudyConfig) -> None:
    """StudyDataError, before anything else fails on it, when dataset ``name`` has fewer patients than
    the design needs: >= 1 test patient, and per fold >= 1 validation patient and as many training
    patients as the largest n_real (2 for the shuffled control, which swaps labels between them)."""
    s = config.splits
    per_fold = max([1] + [n for n in config.n_real if n is not None]
                   + [2 for arm in config.arms if arm.control == "shuffled"])
    need = minimum_patients(s.n_folds, s.test_fraction, per_fold)
    if patients < need:
        raise StudyDataError(
            f"dataset {name!r}: {patients} usable patients; this design needs at least {need} "
            f"(a {s.test_fraction:g} share as test patients, then {s.n_folds} folds each with a validation "
            f"patient and {per_fold} training patient{'s' if per_fold > 1 else ''}); add patients, or lower "
            f"splits.n_folds (>= 2) / n_real")


def instance_classes(config: StudyConfig, dataset: Dataset) -> list[str]:
    """The classes scored object by object (metric ``map``): the study's ``instance_classes``, else
    the dataset's ``instance_labels``; `StudyDataError` when there are none or one is not a label."""
    classes = list(config.instance_classes) if config.instance_classes is not None else list(dataset.instance_labels)
    if not classes:
        raise StudyDataError(f"dataset {dataset.name!r}: metric map scores objects one by one, but no class is an "
                             f"instance class: set instance_classes in the study (e.g. [wire, device]) or "
                             f"instance_labels in the dataset's dataset.json")
    unknown = [c for c in classes if c not in dataset.label_names[1:]]
    if unknown:
        raise StudyDataError(f"dataset {dataset.name!r}: instance classes {unknown} are not among its labels "
                             f"{dataset.label_names[1:]}")
    return classes


def load_real(spec: DatasetSpec, config: StudyConfig, results: Path) -> RealData:
    """A real dataset, fully validated, with its saved splits and its slice cache."""
    dataset, splits = read_real(spec, config, results)
    return RealData(spec, dataset, open_slice_cache(dataset, spec.preprocess), splits)


def check_compatible(real: Dataset, synthetic: Dataset, folder: Path) -> None:
    """StudyDataError naming ``folder`` when its channels, label values or label names differ from the real
    data (`meaning_differences`: same numbers with other meanings would make per-class Dice compare
    different structures)."""
    differences = meaning_differences(real, synthetic)
    if differences:
        raise StudyDataError(f"{folder}: the synthetic patients have {'; '.join(differences)} of the real dataset "
                             f"{real.name!r} (names and order must match)")


def check_folder_arms(config: StudyConfig, datasets: dict[str, Dataset]) -> None:
    """What the real run checks of every folder arm, from headers only (for ``--dry-run``): the
    folder exists and its channels and labels are the real dataset's (`check_compatible`)."""
    for arm in config.arms:
        if arm.folder is None:
            continue
        folder = Path(arm.folder)
        if not folder.is_dir():
            raise StudyDataError(f"{folder}: synthetic dataset folder of arm {arm.name!r} does not exist")
        synthetic = load_dataset(folder, layout="auto", check_voxels=False)
        for real in datasets.values():
            check_compatible(real, synthetic, folder)


def load_synthetic(arm: ArmSpec, folder: Path, real: RealData, needed: int, cache_dir: Path | None = None
                   ) -> SyntheticData:
    """Read a synthetic nnU-Net folder, check it against the real data and that it holds at least
    ``needed`` patients, and cache its slices with the real dataset's preprocessing."""
    if not folder.is_dir():
        raise StudyDataError(f"{folder}: synthetic dataset folder of arm {arm.name!r} does not exist")
    dataset = load_dataset(folder, layout="auto")
    check_compatible(real.dataset, dataset, folder)
    if len(dataset.patients) < needed:
        raise StudyDataError(f"{folder}: arm {arm.name!r} needs {needed} synthetic patients, the folder holds "
                             f"{len(dataset.patients)}")
    warning = resolution_warning(arm.name, dataset, real.spec.preprocess.resolution)
    if warning:
        print(warning, file=sys.stderr)
    return SyntheticData(arm, folder, dataset, open_slice_cache(dataset, real.spec.preprocess, cache_dir))


def resolution_warning(arm: str, synthetic: Dataset, resolution: int) -> str | None:
    """A warning when a synthetic arm's patients hold less in-plane detail than the study's slices (a
    32-px generator in a 256-px study): their pixels, or the generator frame they were sampled on
    (synthesis.json; on the real grid they are upsampled already), are resampled up to the study's
    resolution, so they train the U-Net on blurred anatomy.  None when they are as fine or finer."""
    in_plane = min(max(p.shape[:2]) for p in synthetic.patients)
    try:
        generated = SynthesisLog.load(synthetic.root / "synthesis.json").resolution
    except (OSError, ValueError):    # not sampled from generators (procedural, or the user's own)
        generated = in_plane
    detail = min(in_plane, generated)
    if detail >= resolution:
        return None
    made = f"were generated at {detail} px" if detail < in_plane else f"are {detail} px in-plane"
    return (f"warning: arm {arm!r}: its patients {made} and the study trains at {resolution} px: they are "
            f"upsampled {resolution / detail:.1f}x (blurred); train the generators at {resolution} px, or study at "
            f"{detail} px")

def sample_gan_arm(arm: ArmSpec, patients: int, out_dir: Path, seed: int, device: str, progress: bool) -> Path:
    """Sample ``patients`` patients from the GAN run(s) of ``arm`` (truncation ``arm.psi``) into
    ``out_dir`` (nnU-Net v2 raw) with `training.sampling`; a complete folder is reused as is."""
    with file_lock(out_dir.parent / f".{out_dir.name}.lock"):  # shards wait for one sampler
        try:
            if arm.mask_gan is None:
                source = load_source(gan=arm.gan, device=device)
            else:
                source = load_source(mask_gan=arm.mask_gan, image_gan=arm.gan, device=device)
            settings = SamplingSettings(pipeline=source.pipeline, generators=source.generators, patients=patients,
                                        seed=seed, truncation_psi=arm.psi)
            sample_to_directory(source, settings, out_dir, device=device, progress=progress)
        except (CheckpointError, QualityGateError, ValueError, FileNotFoundError) as exc:
            # unusable runs, a generator whose patients the quality gate rejects, a folder sampled otherwise
            raise StudyDataError(f"arm {arm.name!r} (sampling into {out_dir}): {exc}") from exc
    return out_dir


def pool_size(runs: list[Run], arm: str) -> int:
    """Patients to make for a generated arm so that every block can draw its own k: the largest k
    times the number of blocks (dataset, fold, repeat) of ``runs``."""
    blocks = {(r.dataset, r.fold, r.repeat) for r in runs if r.arm == arm}
    return max_synthetic(runs, arm) * len(blocks)


def prepare_data(config: StudyConfig, grid: list[Run], results: Path, device: str = "cpu",
                 progress: bool = True, accept_changed_data: bool = False) -> StudyData:
    """Load every real dataset and every synthetic source of the study ``grid`` (the whole grid, not
    a shard: every shard then checks, samples and reads the same patients), failing before any
    training on unusable data.  GAN arms are sampled first into ``results/synthetic/ARM``; oracle
    controls are fresh phantom populations; noise and shuffled controls are made per run.  Every
    patient's content is checked against (and added to) the folder's record (`check_and_record`)."""
    real = {spec.name: load_real(spec, config, results) for spec in config.datasets}
    data = StudyData(real, test_sets={name: [load_test_set(t, data) for t in config.test_datasets]
                                      for name, data in real.items()}, accept_changed_data=accept_changed_data)
    for spec in config.datasets:
        runs = [r for r in grid if r.dataset == spec.name]
        for arm in config.arms:
            needed = max_synthetic(runs, arm.name)
            if arm.procedural is not None:
                for n in {r.n_real_requested for r in runs}:
                    data.procedural_patients[(spec.name, arm.name, n)] = max_synthetic(
                        [r for r in runs if r.n_real_requested == n], arm.name)
                continue
            if needed == 0 or arm.control in ("noise", "shuffled"):
                continue
            cache_dir = results / "synthetic" / ".slice_cache"
            if arm.folder is not None:
                folder, cache_dir = Path(arm.folder), None
                for run in _generator_runs(folder):
                    _refuse_gan_trained_on_test(run, real[spec.name], arm.name)
            elif arm.control == "oracle":
                folder = phantom_root(spec.phantoms, pool_size(runs, arm.name), oracle_seed(spec.phantoms.seed))
            else:
                for run in (arm.gan, arm.mask_gan):
                    if run is not None:
                        _refuse_gan_trained_on_test(Path(run), real[spec.name], arm.name)
                folder = results / "synthetic" / (arm.name if len(config.datasets) == 1 else f"{spec.name}-{arm.name}")
                sample_gan_arm(arm, arm.patients or pool_size(grid, arm.name), folder, config.seed, device,
                               progress)
            data.synthetic[(spec.name, arm.name)] = load_synthetic(arm, folder, real[spec.name], needed, cache_dir)
    sources = {f"real/{name}": cache_fingerprints(r.cache) for name, r in real.items()}
    sources.update({f"test/{t.spec.name}": cache_fingerprints(t.cache) for sets in data.test_sets.values() for t in sets})
    sources.update({f"synthetic/{d}/{a}": cache_fingerprints(s.cache) for (d, a), s in data.synthetic.items()})
    for (dataset, arm), synthetic in data.synthetic.items():
        _refuse_test_patients(sources[f"synthetic/{dataset}/{arm}"], sources[f"real/{dataset}"],
                              real[dataset].splits.test, synthetic.folder, arm)
    record_data(results, sources, data)
    return data


def _generator_runs(folder: Path) -> list[Path]:
    """The generator runs a synthetic folder's synthesis.json says it was sampled from (GAN sampling;
    none for other folders).  Relative run paths are taken from the working directory, as written."""
    path = folder / "synthesis.json"
    try:
        record = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, json.JSONDecodeError):
        return []
    sessions = record.get("sessions", []) if isinstance(record, dict) else []
    runs = [g.get("run") for s in sessions if isinstance(s, dict)
            for g in s.get("settings", {}).get("generators", []) if isinstance(g, dict)]
    return [Path(r) for r in dict.fromkeys(runs) if isinstance(r, str)]


def _refuse_gan_trained_on_test(run: Path, real: RealData, arm: str) -> None:
    """`StudyDataError` when generator ``run`` trained on a test patient of ``real``: by the content
    of their label files (recorded by training since this check exists), else -- older runs -- by
    case id when it trained on this very dataset folder.  A run that can no longer be read, or that
    recorded neither, is reported as unchecked on stderr."""
    try:
        info = ckpt.read_json(ckpt.latest_good_snapshot(run, files=["dataset.json"]) / "dataset.json")
    except CheckpointError:
        print(f"warning: arm {arm!r}: generator run {run} cannot be read; whether it saw the test patients is "
              f"unchecked", file=sys.stderr)
        return
    test = list(real.splits.test)
    hashes = info.get("case_label_sha256") if isinstance(info, dict) else None
    if not hashes and isinstance(info, dict):
        hashes = _embedded_phantom_hashes(str(info.get("root", "")), info.get("case_ids", []))
    if hashes:
        test_hashes = {ckpt.sha256_of(real.dataset.patient(c).label_file): c for c in test}
        seen = sorted(test_hashes[h] for h in hashes.values() if h in test_hashes)
    elif isinstance(info, dict) and Path(str(info.get("root", ""))).resolve() == real.dataset.root.resolve():
        seen = sorted(set(info.get("case_ids", [])) & set(test))
    else:
        print(f"warning: arm {arm!r}: generator run {run} was trained on {info.get('root', '?')!r} and records no "
              f"patient hashes; whether it saw the test patients is unchecked (train it with --splits)",
              file=sys.stderr)
        return
    if seen:
        raise StudyDataError(f"arm {arm!r}: generator run {run} was trained on {len(seen)} of this study's test "
                             f"patients ({', '.join(seen[:5])}): its patients would carry the test set into "
                             f"training; retrain it with `train_gan.py --splits RESULTS/splits/"
                             f"{real.spec.name}.json`")


def _embedded_phantom_hashes(root: str, case_ids: list) -> dict[str, str] | None:
    """Label-file hashes of the embedded phantom patients a run trained on (its root is a
    `default_phantom_dataset` folder): they are regenerated here, bit for bit, so that runs trained
    before hashes were recorded are checked by content too.  None for any other dataset."""
    spec = default_phantom_spec(root)
    if spec is None:
        return None
    dataset = load_dataset(default_phantom_dataset(**spec), check_voxels=False)
    return {c: ckpt.sha256_of(dataset.patient(c).label_file) for c in case_ids if c in dataset.case_ids}


def _refuse_test_patients(synthetic: dict[str, str], real: dict[str, str], test_ids: list[str], folder: Path,
                          arm: str) -> None:
    """`StudyDataError` when a synthetic patient has exactly the content of a test patient (a real
    dataset, or a copy of test patients, given as a synthetic arm would train on the test set)."""
    test = {real[c]: c for c in test_ids if c in real}
    leaked = [(case, test[fp]) for case, fp in synthetic.items() if fp in test]
    if leaked:
        pairs = ", ".join(f"{s} = {t}" for s, t in leaked[:5])
        raise StudyDataError(f"{folder}: arm {arm!r} holds {len(leaked)} test patient(s) of the study ({pairs}; same "
                             f"content): its runs would train on the patients they are tested on; remove them or give "
                             f"another folder")


def record_data(results: Path, sources: dict[str, dict[str, str]], data: StudyData) -> None:
    """`check_and_record` with the study's error type; the fingerprints are kept for the run records."""
    try:
        check_and_record(results, sources, data.accept_changed_data)
    except ChangedDataError as exc:
        raise StudyDataError(str(exc)) from None
    data.fingerprints.update(sources)


def plan_runs(config: StudyConfig, results: Path) -> tuple[list[Run], dict[str, Dataset]]:
    """The study grid and the real datasets (headers read): their splits resolve n and "1x" k."""
    sizes, datasets = {}, {}
    for spec in config.datasets:
        datasets[spec.name], splits = read_real(spec, config, results, full_check=False)
        for fold in config.splits.fold_indices():
            sizes[(spec.name, fold)] = len(splits.fold(fold).train)
    return expand_grid(config, sizes), datasets
