"""`StudyConfig`: the augmentation study read from YAML (``configs/study/NAME.yaml``).

A study trains MONAI 2D U-Nets on n real patients plus k synthetic ones and tests them on held-out
real patients.  The YAML has these top-level keys (every one optional except ``datasets``; unknown
keys anywhere are errors naming the key)::

    name: micro                    # default: the file name without .yaml
    seed: 0                        # study seed: each block (dataset, fold, repeat) derives its own
                                   # run seed from it, shared by the arms of the block (paired runs)
    repeats: 1                     # independent repeats of every (dataset, fold, arm, k, n): more blocks
    datasets:                      # real datasets (MSD, nnU-Net v2 or folder-per-patient)
      - name: phantom
        path: phantoms             # a folder, or the word "phantoms" = training.data.default_phantom_dataset
        phantoms: {n_patients: 20, shape: [64, 64, 24], seed: 0}   # only with path: phantoms
        layout: auto
        modalities: null           # optional subset / order of channel names
        preprocess: phantom        # a preset name / YAML path (configs/data) or a mapping of fields
    test_datasets:                 # optional out-of-distribution test sets: every patient of each, with
      - {name: shifted, path: phantoms, phantoms: {n_patients: 16, seed: 2, shifted: true}}
                                   # the training dataset's label names and modalities (matched by name)
                                   # and preprocessing
    splits: {n_folds: 5, folds: null, test_fraction: 0.2, seed: 12345}   # folds: which to run
    baseline: true                 # include the real-only arm "real" (k = 0)
    arms:                          # synthetic sources, each a folder or a GAN run
      - {name: pair, folder: synthetic/pair}
      - {name: gan, gan: checkpoints/run, mask_gan: null, psi: 0.7, patients: null}
      - {name: oracle, control: oracle}   # built-in controls: oracle (phantoms only), noise, shuffled
      - {name: lesions, procedural: lesion-insertion, config: configs/procedural/phantom-lesions.yaml}
      - {name: objects, procedural: shape-insertion, config: configs/procedural/cxr-foreign-objects.yaml,
         raw_material: fold}     # made from all the fold's training images (see `ArmSpec`)
    k: [10, "1x"]                  # synthetic patients added: absolute, or multiples of n ("0.5x"; for
                                   # n_real null, n = the dataset's smallest training fold)
    n_real: [null]                 # real training patients (null = all of the fold): data-scaling curves;
                                   # 0 = synthetic only (absolute k; arms made from the run's real
                                   # patients, shuffled and procedural with raw_material: run, have no
                                   # runs there)
    unet: {channels: [16, 32, 64, 128], strides: [2, 2, 2], num_res_units: 2, norm: instance, dropout: 0.0}
    train: {budget: steps, iterations: 2000, batch_size: 16, validation: fold, ...}   # see `UNetTrainConfig`
    metrics: [dice, hd95]           # also nsd (normalised surface Dice), detection (detected,
                                   # false_positive, lesion_sensitivity per case and class) and map
                                   # (objects one by one: COCO mask AP50 and mAP per test set, object
                                   # sensitivity and false positives per case; `segmentation.study.instances`)
    instance_classes: [wire, device]   # the classes map scores (default: the dataset's instance_labels)
    nsd_tolerance_mm: {default: 2.0, core: 1.0}   # NSD tolerance per class name (default: 2 mm)
    empty_class: exclude           # a class absent from a test patient's reference: exclude | score
    hd95_missed: diagonal          # HD95 of a structure the model missed: the image diagonal in mm | exclude

The preprocessing's slice-selection fields (drop_end_slices, drop_empty_slices, ...) only concern
GAN training: the study trains on every slice of its training patients and tests whole volumes.
Synthetic folders go through the same reader and preprocessing as the real dataset.
Relative paths are taken relative to the current working directory.  `apply_overrides` applies
``key=value`` strings (dotted keys; list items by index or by their ``name``) before validation.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from procedural import ProceduralError, load_synthesiser_config
from training.data import PreprocessConfig, load_preprocess_config, preprocess_config_from_dict, typed_config
from training.data.preprocess import preprocess_preset_values
from training.data.typed_config import ConfigError, from_mapping, read_yaml_mapping

PHANTOMS = "phantoms"
METRICS = ("dice", "hd95", "nsd", "detection", "map")
CONTROLS = ("oracle", "noise", "shuffled")
PHANTOM_KINDS = ("mr", "radiograph")
RAW_MATERIALS = ("run", "fold")
BUDGETS = ("steps", "epochs")
VALIDATIONS = ("fold", "own", "none")
EMPTY_CLASS = ("exclude", "score")
HD95_MISSED = ("diagonal", "exclude")
BASELINE_ARM = "real"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
_MULTIPLE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*x\s*$")


class StudyConfigError(ConfigError):
    """A study YAML (or an override) is invalid; the message names the file and the key."""


@dataclass(frozen=True)
class PhantomSpec:
    """Size of the generated phantom dataset used when a dataset's path is ``phantoms``; shifted:
    imaged with another acquisition (`training.data.phantoms.SHIFTED`, an out-of-distribution set);
    kind: "mr" (multi-modal head volumes) or "radiograph" (2D chest X-rays with foreign objects,
    `training.data.phantoms_radiograph`; shape [rows, columns, 1])."""

    n_patients: int = 20
    shape: tuple[int, int, int] = (64, 64, 24)
    seed: int = 0
    shifted: bool = False
    kind: str = "mr"


@dataclass(frozen=True)
class DatasetSpec:
    """One real dataset: where it is, how it is read and how it is preprocessed into slices."""

    name: str
    path: str
    layout: str = "auto"
    modalities: tuple[str, ...] | None = None
    phantoms: PhantomSpec = PhantomSpec()
    preprocess: PreprocessConfig = PreprocessConfig()


@dataclass(frozen=True)
class ArmSpec:
    """One synthetic source.  Exactly one of ``folder`` (an nnU-Net v2 raw dataset, as
    ``sample_patients.py`` writes), ``gan`` (a GAN run directory sampled with ``psi``),
    ``control`` (a built-in control arm, `segmentation.study.controls`) or ``procedural`` (a synthesiser of
    the `procedural` package with the settings file ``config``, run per block on that block's real
    training patients only -- see raw_material) is set.

    mask_gan: the mask generator run of a two-stage pair (with ``gan`` = the image generator);
    patients: how many patients to sample from a GAN (default: enough for every block to draw its
    own subset); raw_material (procedural arms): "run" makes the patients from the run's real
    training patients (the n it trains on; no runs at n_real 0), "fold" from every training patient
    of the fold, as unlabelled raw material (the foreign-object study: objects inserted into plentiful
    radiographs; runs at n_real 0 are then synthetic-only, and a synthesiser setting such as
    shape-insertion's ``exclude_sources_with`` keeps real objects out); control: "oracle" (fresh
    phantom patients of unseen seeds: the ideal synthetic data; phantom datasets only), "noise" (random images with random label maps) or "shuffled"
    (the run's real training images with another training patient's labels).  The report expects
    the oracle better than real-only and the other two not better, and warns when they are not.
    """

    name: str
    folder: str | None = None
    gan: str | None = None
    mask_gan: str | None = None
    psi: float = 1.0
    patients: int | None = None
    control: str | None = None
    procedural: str | None = None
    config: str | None = None
    raw_material: str = "run"

    @property
    def needs_real_patients(self) -> bool:
        """Whether the arm is made from the run's real training patients (none at n_real 0)."""
        return self.control == "shuffled" or (self.procedural is not None and self.raw_material == "run")

    @property
    def kind(self) -> str:
        """"folder", "gan", "control" or "procedural": where the patients come from."""
        if self.procedural is not None:
            return "procedural"
        if self.control is not None:
            return "control"
        return "folder" if self.folder is not None else "gan"

    @property
    def source(self) -> str:
        """A short description of where the patients come from (the ``source`` column)."""
        if self.control is not None:
            return f"control:{self.control}"
        if self.procedural is not None:
            return f"procedural:{self.procedural}" + (f"@{self.config}" if self.config else "")
        if self.folder is not None:
            return f"folder:{self.folder}"
        return f"gan:{self.gan}" + (f"+mask:{self.mask_gan}" if self.mask_gan else "") + f"@psi={self.psi:g}"


@dataclass(frozen=True)
class SplitSpec:
    """Patient-level splits (`training.data.make_splits`): a hold-out test set and n_folds folds.

    folds: the fold indices to run (None: all).
    """

    n_folds: int = 5
    folds: tuple[int, ...] | None = None
    test_fraction: float = 0.2
    seed: int = 12345

    def fold_indices(self) -> tuple[int, ...]:
        """The folds the study runs, in order."""
        return tuple(range(self.n_folds)) if self.folds is None else self.folds


@dataclass(frozen=True)
class UNetConfig:
    """`monai.networks.nets.UNet` (spatial_dims=2): channels per level, strides between levels
    (len(strides) == len(channels) - 1), residual units per block, normalisation, dropout."""

    channels: tuple[int, ...] = (16, 32, 64, 128)
    strides: tuple[int, ...] = (2, 2, 2)
    num_res_units: int = 2
    norm: str = "instance"
    dropout: float = 0.0


@dataclass(frozen=True)
class UNetAugmentConfig:
    """The training slices' augmentation (`segmentation.study.unet.BatchAugment`: whole batches, each slice
    drawing its own; the transforms of MONAI's RandFlipd, RandRotate90d, RandGaussianNoised and
    RandScaleIntensityd).

    flip_prob: a flip along each in-plane axis (image + label); rotate90_prob: a rotation by k x 90
    degrees, k in 1..3 (image + label); noise_prob / noise_std: Gaussian noise (image only, its std
    drawn from U(0, noise_std) in [-1, 1] units, as MONAI samples it); scale_prob / scale_factor:
    intensity x (1 + U(-f, f)) (image only).
    """

    flip_prob: float = 0.5
    rotate90_prob: float = 0.5
    noise_prob: float = 0.2
    noise_std: float = 0.05
    scale_prob: float = 0.2
    scale_factor: float = 0.1


@dataclass(frozen=True)
class UNetTrainConfig:
    """The optimisation budget, the batch mix and the validation policy of every run.

    budget "steps": every run takes ``iterations`` steps of ``batch_size`` slices, so adding
    synthetic patients changes what is seen, never how much (large k then gets fewer passes over
    each patient); "epochs": a run takes ceil(epochs x its own training slices / batch_size) steps,
    so every slice is seen about ``epochs`` times (large k then costs more steps).
    real_fraction: None draws every slice uniformly from the pooled real + synthetic slices (k sets
    the mix); a number in (0, 1) fixes the share of real slices in every batch of a run that has
    synthetic patients (the mix and k become separate choices).
    validation: "fold" scores the fold's real validation patients every ``val_every`` steps and
    tests the best state (those patients are labelled data that the run does not train on);
    "own" scores the run's own real training patients instead (no extra labelled patient selects
    the model); "none" tests the last weights of the fixed budget.  patience: validations without
    improvement before stopping early (None: run the whole budget; needs validation).
    """

    budget: str = "steps"
    epochs: float | None = None
    real_fraction: float | None = None
    validation: str = "fold"
    iterations: int = 2000
    batch_size: int = 16
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    val_every: int = 100
    patience: int | None = None
    num_workers: int = 0
    augment: UNetAugmentConfig = UNetAugmentConfig()


@dataclass(frozen=True)
class StudyConfig:
    """A whole study; see the module docstring for the YAML.

    nsd_tolerance_mm: NSD tolerance in mm per class name, "default" for the rest (None: 2 mm for all).
    instance_classes: the classes metric ``map`` scores object by object (None: the dataset's
    ``instance_labels``).
    hd95_missed: the HD95 of a structure the reference has and the prediction misses: "diagonal"
    (the test volume's diagonal in mm, the largest distance there is -- a number every statistic can
    use, as several challenges score it) or "exclude" (left out; the report counts empty values).
    empty_class: how a test patient whose reference lacks a class scores for that class: "exclude"
    (no Dice / HD95 for that patient and class; the report counts them) or "score" (Dice 1 when
    nothing is predicted either, 0 for a false detection; `segmentation.study.evaluation`).
    """

    name: str
    datasets: tuple[DatasetSpec, ...]
    arms: tuple[ArmSpec, ...] = ()
    test_datasets: tuple[DatasetSpec, ...] = ()
    baseline: bool = True
    k: tuple[int | str, ...] = ()
    n_real: tuple[int | None, ...] = (None,)
    splits: SplitSpec = SplitSpec()
    repeats: int = 1
    seed: int = 0
    unet: UNetConfig = UNetConfig()
    train: UNetTrainConfig = UNetTrainConfig()
    metrics: tuple[str, ...] = ("dice", "hd95")
    instance_classes: tuple[str, ...] | None = None
    nsd_tolerance_mm: dict | None = None
    empty_class: str = "exclude"
    hd95_missed: str = "diagonal"

    def dataset(self, name: str) -> DatasetSpec:
        """The dataset called ``name`` (KeyError when absent)."""
        for spec in self.datasets:
            if spec.name == name:
                return spec
        raise KeyError(f"no dataset {name!r} in study {self.name}")

    def arm(self, name: str) -> ArmSpec:
        """The synthetic arm called ``name`` (KeyError when absent)."""
        for spec in self.arms:
            if spec.name == name:
                return spec
        raise KeyError(f"no arm {name!r} in study {self.name}")

    def to_dict(self) -> dict:
        """JSON-ready dict (the preprocessing configs as their field dicts)."""
        return json.loads(json.dumps(dataclasses.asdict(self), default=list))


def resolve_k(k: int | str, n_real: int) -> int:
    """Number of synthetic patients for a k entry: an int as is, ``"2x"`` = 2 * n_real rounded
    half up (``"0.5x"`` of 13 = 7)."""
    if isinstance(k, int):
        return k
    return math.floor(float(_MULTIPLE.match(k).group(1)) * n_real + 0.5)  # type: ignore[union-attr]


def fingerprint(obj: Any) -> str:
    """Short sha256 of the canonical JSON of ``obj`` (dataclasses allowed)."""
    if dataclasses.is_dataclass(obj):
        obj = dataclasses.asdict(obj)
    text = json.dumps(obj, sort_keys=True, default=list)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------------------------
# Reading: a mapping -> the dataclasses (`training.data.typed_config`), then the study's own rules


def _fail(where: str, key: str, problem: str) -> StudyConfigError:
    return StudyConfigError(f"{where}: {key}: {problem}")


def _preprocess_reader(value: Any, where: str, key: str) -> PreprocessConfig:
    """A dataset's ``preprocess``: a preset's name / YAML path, or a mapping of fields."""
    if isinstance(value, str):
        try:
            return load_preprocess_config(value)
        except (FileNotFoundError, ConfigError) as exc:
            raise ConfigError(f"{where}: {key}: {exc}") from None
    return preprocess_config_from_dict(value, where, key)


def _with_default_names(items: Any) -> Any:
    """Dataset entries with ``name`` defaulted to the folder's name ("phantoms" for the phantoms)."""
    if not isinstance(items, list):
        return items
    return [{"name": _default_dataset_name(item), **item} if isinstance(item, dict) else item for item in items]


def _default_dataset_name(values: dict) -> str:
    path = str(values.get("path", "dataset"))
    return PHANTOMS if path == PHANTOMS else Path(path).name


def study_config_from_dict(values: Any, where: str = "study", name: str = "study") -> StudyConfig:
    """Validate a mapping (a parsed YAML) into a `StudyConfig`; errors name ``where`` and the key."""
    if not isinstance(values, dict):
        raise StudyConfigError(f"{where}: expected a mapping of study settings, got {type(values).__name__}")
    values = {"name": name, **values}
    if "datasets" not in values:
        raise _fail(where, "datasets", "missing: list at least one real dataset")
    for key in ("datasets", "test_datasets"):
        if key in values:
            values[key] = _with_default_names(values[key])
    for i, item in enumerate(values.get("test_datasets") or []):
        if isinstance(item, dict) and "preprocess" in item:
            raise _fail(where, f"test_datasets[{i}].preprocess", "a test dataset is preprocessed like the dataset "
                                                                 "the models trained on; leave preprocess out")
    for key in ("arms", "test_datasets"):
        if values.get(key) is None:
            values.pop(key, None)
    try:
        config = from_mapping(StudyConfig, values, where, readers={PreprocessConfig: _preprocess_reader})
    except ConfigError as exc:
        raise StudyConfigError(str(exc)) from None
    config = dataclasses.replace(config, k=tuple(_k_value(k, f"k[{i}]", where) for i, k in enumerate(config.k)))
    _check(config, where)
    return config


def _k_value(value: int | str, key: str, where: str) -> int | str:
    if isinstance(value, int) and value >= 0:
        return value
    if isinstance(value, str) and _MULTIPLE.match(value):
        return value.strip().replace(" ", "")
    raise _fail(where, key, f"a k value is a number of patients >= 0 or a multiple of n like '1x', got {value!r}")


def _check_name(name: str, key: str, where: str) -> None:
    if not _NAME.match(name):
        raise _fail(where, key, f"{name!r} is not a usable name (letters, digits, '_', '.', '+', '-')")


def _check_dataset(spec: DatasetSpec, key: str, where: str) -> None:
    _check_name(spec.name, f"{key}.name", where)
    if spec.phantoms != PhantomSpec() and spec.path != PHANTOMS:
        raise _fail(where, f"{key}.phantoms", f"only allowed with path: {PHANTOMS}")
    if spec.phantoms.n_patients < 1:
        raise _fail(where, f"{key}.phantoms.n_patients", f"must be >= 1, got {spec.phantoms.n_patients}")
    if spec.phantoms.kind not in PHANTOM_KINDS:
        raise _fail(where, f"{key}.phantoms.kind", f"choose from {list(PHANTOM_KINDS)}, got {spec.phantoms.kind!r}")
    if spec.phantoms.kind == "radiograph" and (spec.phantoms.shape[2] != 1 or spec.phantoms.shifted):
        raise _fail(where, f"{key}.phantoms", "radiographs are 2D: shape [rows, columns, 1], not shifted")


def _check_arm(spec: ArmSpec, key: str, where: str) -> None:
    _check_name(spec.name, f"{key}.name", where)
    if spec.name == BASELINE_ARM:
        raise _fail(where, f"{key}.name", f"{BASELINE_ARM!r} is the real-only baseline; give the source another name")
    if sum(x is not None for x in (spec.folder, spec.gan, spec.control, spec.procedural)) != 1:
        raise _fail(where, key, f"arm {spec.name!r} needs exactly one of 'folder', 'gan', 'control' or 'procedural'")
    if spec.raw_material not in RAW_MATERIALS or (spec.raw_material != "run" and spec.procedural is None):
        raise _fail(where, f"{key}.raw_material", f"one of {list(RAW_MATERIALS)}, for procedural arms only; got "
                                                  f"{spec.raw_material!r}")
    if spec.config is not None and spec.procedural is None:
        raise _fail(where, f"{key}.config", f"arm {spec.name!r}: config only applies to a 'procedural' source")
    if spec.procedural is not None:
        try:
            load_synthesiser_config(spec.procedural, spec.config)
        except ProceduralError as exc:
            raise _fail(where, key, f"arm {spec.name!r}: {exc}") from None
    if spec.gan is None and (spec.mask_gan is not None or spec.patients is not None):
        raise _fail(where, key, f"arm {spec.name!r}: mask_gan / patients only apply to a 'gan' source")
    if spec.control is not None and spec.control not in CONTROLS:
        raise _fail(where, f"{key}.control", f"unknown control {spec.control!r}; choose from {list(CONTROLS)}")
    if not 0.0 <= spec.psi <= 2.0:
        raise _fail(where, f"{key}.psi", f"truncation psi must lie in [0, 2], got {spec.psi}")


def _check(config: StudyConfig, where: str) -> None:
    """Cross-field checks: non-empty grid, unique names, sane sizes."""
    _check_name(config.name, "name", where)
    for i, dataset in enumerate(config.datasets):
        _check_dataset(dataset, f"datasets[{i}]", where)
    for i, dataset in enumerate(config.test_datasets):
        _check_dataset(dataset, f"test_datasets[{i}]", where)
    for i, arm in enumerate(config.arms):
        _check_arm(arm, f"arms[{i}]", where)
    if not config.datasets:
        raise _fail(where, "datasets", "list at least one real dataset")
    for key, names in (("datasets", [d.name for d in config.datasets]), ("arms", [a.name for a in config.arms]),
                       ("test_datasets", [d.name for d in config.test_datasets])):
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise _fail(where, key, f"names must be unique, repeated: {duplicates}")
    if not config.baseline and not config.arms:
        raise _fail(where, "arms", "no arms: set baseline: true or list synthetic sources")
    if config.arms and not [k for k in config.k if k != 0]:
        raise _fail(where, "k", "synthetic arms need at least one k > 0 (number of synthetic patients, or '1x')")
    if any(n is not None and n < 0 for n in config.n_real):
        raise _fail(where, "n_real", f"entries are numbers of real patients >= 0 or null (all), got {list(config.n_real)}")
    if 0 in config.n_real:
        if not config.arms or not [k for k in config.k if isinstance(k, int) and k > 0]:
            raise _fail(where, "n_real", "n_real 0 trains on synthetic patients only: it needs synthetic arms and an "
                                      "absolute k > 0 (a multiple of n is 0)")
        if all(a.needs_real_patients for a in config.arms):
            raise _fail(where, "n_real", "n_real 0 leaves no real patient for the arms, which are all made from the "
                                      "run's real training patients (shuffled, procedural with raw_material: run); "
                                      "add another arm, give a procedural arm raw_material: fold, or drop 0")
    if config.repeats < 1:
        raise _fail(where, "repeats", f"must be >= 1, got {config.repeats}")
    splits = config.splits
    if splits.n_folds < 2:
        raise _fail(where, "splits.n_folds", f"must be >= 2, got {splits.n_folds}")
    if not 0.0 < splits.test_fraction < 1.0:
        raise _fail(where, "splits.test_fraction", f"must lie in (0, 1): the study tests on held-out real patients, "
                                                f"got {splits.test_fraction}")
    bad = [f for f in splits.fold_indices() if not 0 <= f < splits.n_folds]
    if bad or not splits.fold_indices():
        raise _fail(where, "splits.folds", f"fold indices must lie in 0..{splits.n_folds - 1}, got {splits.folds}")
    unet = config.unet
    if len(unet.channels) < 2 or len(unet.strides) != len(unet.channels) - 1:
        raise _fail(where, "unet.strides", f"needs len(channels) - 1 = {len(unet.channels) - 1} entries "
                                        f"for channels {list(unet.channels)}, got {list(unet.strides)}")
    downsampling = math.prod(unet.strides)
    for i, spec in enumerate(config.datasets):
        if spec.preprocess.resolution % downsampling:
            raise _fail(where, f"datasets[{i}].preprocess.resolution",
                            f"{spec.preprocess.resolution} px is not divisible by {downsampling}, the product of "
                            f"unet.strides {list(unet.strides)}")
    train = config.train
    if train.iterations < 1 or train.batch_size < 1 or train.val_every < 1 or train.learning_rate <= 0:
        raise _fail(where, "train", "iterations, batch_size, val_every must be >= 1 and learning_rate > 0")
    for key, value, allowed in (("train.budget", train.budget, BUDGETS), ("train.validation", train.validation,
                                VALIDATIONS), ("empty_class", config.empty_class, EMPTY_CLASS),
                               ("hd95_missed", config.hd95_missed, HD95_MISSED)):
        if value not in allowed:
            raise _fail(where, key, f"choose from {list(allowed)}, got {value!r}")
    if (train.budget == "epochs") != (train.epochs is not None):
        raise _fail(where, "train.epochs", "set epochs (> 0) exactly when budget is 'epochs'")
    if train.epochs is not None and train.epochs <= 0:
        raise _fail(where, "train.epochs", f"must be > 0, got {train.epochs}")
    if train.real_fraction is not None and not 0.0 < train.real_fraction < 1.0:
        raise _fail(where, "train.real_fraction", f"must lie in (0, 1) or be null, got {train.real_fraction}")
    if train.validation == "none" and train.patience is not None:
        raise _fail(where, "train.patience", "early stopping needs validation (train.validation: fold or own)")
    if any(arm.control == "oracle" for arm in config.arms):
        not_phantoms = [d.name for d in config.datasets if d.path != PHANTOMS]
        if not_phantoms:
            raise _fail(where, "arms", f"control: oracle draws fresh phantom patients, so every dataset must be "
                                    f"path: {PHANTOMS}; not so for {not_phantoms}")
    if config.seed < 0:
        raise _fail(where, "seed", f"must be >= 0, got {config.seed}")
    tolerances = config.nsd_tolerance_mm
    if tolerances is not None and (not isinstance(tolerances, dict) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in tolerances.values())):
        raise _fail(where, "nsd_tolerance_mm", f"a mapping of class name (or 'default') to a tolerance > 0 mm, "
                                            f"got {tolerances!r}")
    unknown = sorted(set(config.metrics) - set(METRICS))
    if unknown or "dice" not in config.metrics:
        raise _fail(where, "metrics", f"choose from {list(METRICS)} (dice always), got {list(config.metrics)}")


def with_synthetic_folders(config: StudyConfig, folders: dict[str, str | Path]) -> StudyConfig:
    """``config`` with folder arms: each NAME -> FOLDER replaces the source of the arm NAME (keeping
    its place) or is appended as a new arm.  Folders are made absolute; the result is re-checked."""
    arms = list(config.arms)
    names = [arm.name for arm in arms]
    for name, folder in folders.items():
        arm = ArmSpec(name=name, folder=str(Path(folder).expanduser().resolve()))
        where = f"synthetic folder {name}={folder}"
        _check_name(name, "name", where)
        if name == BASELINE_ARM:
            raise _fail(where, "name", f"{BASELINE_ARM!r} is the real-only baseline; give the source another name")
        if name in names:
            arms[names.index(name)] = arm
        else:
            arms.append(arm)
            names.append(name)
    updated = dataclasses.replace(config, arms=tuple(arms))
    _check(updated, f"study {config.name}")
    return updated


# ----------------------------------------------------------------------------------------------
# Files and overrides


def load_study_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> StudyConfig:
    """Read ``path`` (YAML), apply ``key=value`` overrides, validate; `StudyConfigError` on problems."""
    try:
        values = read_yaml_mapping(path, "study config")
    except ConfigError as exc:
        raise StudyConfigError(str(exc)) from None
    for key in ("datasets", "test_datasets"):  # so that an override can name a dataset by its default name
        if key in values:
            values[key] = _with_default_names(values[key])
    values = apply_overrides(values, overrides, str(path))
    return study_config_from_dict(values, where=str(path), name=Path(path).stem)


def apply_overrides(values: dict, overrides: list[str] | tuple[str, ...], where: str = "study") -> dict:
    """A copy of ``values`` with each ``"a.b.c=value"`` applied (`training.data.typed_config`): list
    items by index (``arms.0.folder``) or by their name (``arms.pair.folder``); a key inside a
    dataset's named preprocessing preset (``datasets.ct.preprocess.resolution``) changes that preset."""
    try:
        return typed_config.apply_overrides(values, overrides, where, expand={"preprocess": preprocess_preset_values})
    except ConfigError as exc:
        raise StudyConfigError(str(exc)) from None
