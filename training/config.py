"""Training configuration: typed dataclasses, YAML presets and command-line overrides.

Precedence (lowest first): dataclass defaults < preset ``configs/gan/NAME.yaml`` (``--cfg NAME``)
< ``--set key=value`` overrides (dotted keys reach nested sections, e.g. ``network.channel_base``;
the syntax and checks of `training.data.typed_config`, shared with the study and the preprocessing
presets) < the explicit command-line flags.  Fields left ``None`` are then filled by `resolve_config` with
the StyleGAN2-ADA 'auto' rules (NVIDIA's train.py, cfg_specs), so that a preset only pins what it means to pin.
The resolved configuration is what is saved with the run and compared on resume.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from gan import NetworkConfig
from gan.variants import VARIANTS, variant_spec
from training.data.typed_config import ConfigError, from_mapping, read_yaml_mapping, set_dotted, to_mapping

PRESET_DIR = Path(__file__).resolve().parent.parent / "configs" / "gan"
PRESETS = ("auto", "stylegan2", "paper256", "tiny")
PRECISIONS = ("fp32", "bf16")
CONDITIONS = ("none", "slice-position")
AUGMENT_MODES = ("ada", "fixed", "none")
# Geometric and intensity ops of the mask-aware augmentation pipeline ('bgc' of StyleGAN2-ADA
# without the RGB-only colour ops); see gan.augment.
DEFAULT_AUGMENT_OPS = ("xflip", "rotate90", "xint", "scale", "rotate", "aniso", "xfrac",
                       "brightness", "contrast")


@dataclass
class LossConfig:
    """Loss weights and the lazy-regularisation schedule (StyleGAN2 defaults)."""

    r1_gamma: float | None = None       # None: auto, 0.0002 * resolution^2 / batch
    r1_interval: int = 16               # R1 every 16 D steps (0: R1 off)
    pl_weight: float | None = None      # path-length weight (0: off); None: auto, 2 (0 for masks)
    pl_interval: int = 4                # PL every 4 G steps
    pl_decay: float = 0.01              # running-mean decay of the path length
    pl_batch_shrink: int = 2            # PL evaluated on batch / shrink samples
    style_mixing_prob: float = 0.9
    mask_to_d: str = "onehot-st"        # generated masks as D sees them: raw | softmax | onehot-st


@dataclass
class OptimConfig:
    """Adam settings for G and D (before the lazy-regularisation correction)."""

    g_lr: float | None = None           # None: auto (0.0025; 0.002 at >= 1024^2)
    d_lr: float | None = None
    beta1: float = 0.0
    beta2: float = 0.99
    eps: float = 1e-8


@dataclass
class AugmentConfig:
    """Mask-aware adaptive discriminator augmentation."""

    mode: str = "ada"                   # ada: adaptive p; fixed: constant p; none: off
    p: float = 0.0                      # initial (ada) or constant (fixed) probability
    target: float = 0.6                 # ADA target of E[sign(D(real))]
    interval: int = 4                   # adjust p every 4 minibatches
    speed_kimg: float = 500.0           # p can go 0 -> 1 in this many kimg
    ops: list[str] = field(default_factory=lambda: list(DEFAULT_AUGMENT_OPS))


@dataclass
class TrainConfig:
    """Everything one GAN training run needs; saved (resolved) with every snapshot."""

    variant: str = "conditional"
    data: str = "phantoms"              # dataset folder, or "phantoms" for the embedded default
    exclude_cases: list[str] = field(default_factory=list)  # patients never shown (e.g. a study's test set)
    layout: str = "auto"                # auto | msd | nnunet | folder
    on_error: str = "fail"              # fail | skip: broken patients stop the run, or are left out (listed)
    cond: str = "none"                  # none | slice-position
    preprocess: str | None = None       # a preprocessing preset (configs/data: phantom, brats, ct) or YAML file:
                                        # intensity normalisation and slice selection, the cache stylepair-data
                                        # and the study use; None: MR percentiles / CT windows by modality name
    resolution: int = 128               # slice resolution the data is resampled to
    drop_end_slices: int = 0            # slices dropped at each end of every stack
    drop_empty_slices: bool = False     # leave out all-background slices
    batch: int | None = None            # global batch; None: auto
    batch_gpu: int | None = None        # per-process micro-batch; None: batch / processes
    kimg: float = 25000.0               # training length in thousands of real images shown
    tick_kimg: float = 4.0              # progress report interval
    snap: int = 50                      # snapshot every this many ticks
    keep_last: int = 5                  # snapshots kept (plus the best by track_metric)
    seed: int = 0
    ema_kimg: float | None = None       # None: auto, batch * 10 / 32
    ema_rampup: float | None = 0.05     # EMA horizon at most this fraction of images seen
    metrics: list[str] = field(default_factory=list)   # any of fid, kid, consistency
    metric_samples: int = 1000          # generated samples per metric evaluation
    feature_weights: str | None = None  # Inception-v3 weights file for FID/KID
    track_metric: str | None = None     # None: the first of `metrics`
    deterministic: bool = False         # torch deterministic algorithms (slower on GPU)
    precision: str = "fp32"             # fp32 | bf16 (autocast of every forward pass; CPU or CUDA)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)


# --------------------------------------------------------------------------------------------
# presets and overrides
# --------------------------------------------------------------------------------------------

def preset_path(name: str) -> Path:
    """The YAML file of preset ``name`` (a preset name, or a path to a YAML file)."""
    candidate = Path(name)
    if candidate.suffix in (".yaml", ".yml") and candidate.is_file():
        return candidate
    path = PRESET_DIR / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"{path}: unknown preset '{name}' (known: {', '.join(PRESETS)}, "
                          "or a path to a .yaml file)")
    return path


def load_preset(name: str) -> TrainConfig:
    """Defaults updated by the preset file; fields it leaves out keep their defaults."""
    path = preset_path(name)
    return from_mapping(TrainConfig, read_yaml_mapping(path, "GAN training preset"), str(path))


# Short names accepted by --set for the most-tuned fields.
OVERRIDE_ALIASES = {"lr": ("optim.g_lr", "optim.d_lr"), "gamma": ("loss.r1_gamma",),
                    "glr": ("optim.g_lr",), "dlr": ("optim.d_lr",), "aug": ("augment.mode",),
                    "p": ("augment.p",), "target": ("augment.target",)}


def with_overrides(cfg: TrainConfig, settings: list[tuple[str, Any]], where: str = "command line") -> TrainConfig:
    """A copy of ``cfg`` with each (dotted key, value) set (an OVERRIDE_ALIASES name, e.g. ``lr``,
    sets each of its keys); unknown keys and wrong types raise `ConfigError` naming the key."""
    values = to_mapping(cfg)
    for key, value in settings:
        for target in OVERRIDE_ALIASES.get(key, (key,)):
            set_dotted(values, target, value, where)
    return from_mapping(TrainConfig, values, where)


# --------------------------------------------------------------------------------------------
# resolution ('auto' rules) and validation
# --------------------------------------------------------------------------------------------

def resolve_config(cfg: TrainConfig, num_processes: int = 1) -> TrainConfig:
    """A copy of ``cfg`` with every ``None`` filled and cross-field values made consistent.

    StyleGAN2-ADA 'auto' rules for resolution r on g processes: batch = max(min(g * min(4096 // r,
    32), 64), g); minibatch-std group = min(batch // g, 4); channel_base 16384 (32768 at >= 512);
    lr 0.0025 (0.002 at >= 1024); R1 gamma = 0.0002 r^2 / batch; EMA half-life batch * 10 / 32 kimg;
    path-length weight 2, except 0 for the mask variant (measured, see checkpoints/README.md).
    """
    out = copy.deepcopy(cfg)
    if out.variant not in VARIANTS:
        raise ConfigError(f"variant must be one of {', '.join(VARIANTS)}, got '{out.variant}'")
    r, g = out.resolution, num_processes
    if r < 4 or r & (r - 1):
        raise ConfigError(f"resolution must be a power of two >= 4, got {r}")
    if out.batch is None:
        out.batch = max(min(g * min(4096 // r, 32), 64), g)
    if out.batch_gpu is None:
        out.batch_gpu = out.batch // g
    if out.network.channel_base is None:
        out.network.channel_base = 16384 if r < 512 else 32768
    if out.network.mbstd_group_size is None:
        out.network.mbstd_group_size = min(out.batch_gpu, 4)
    lr = 0.002 if r >= 1024 else 0.0025
    out.optim.g_lr = lr if out.optim.g_lr is None else out.optim.g_lr
    out.optim.d_lr = lr if out.optim.d_lr is None else out.optim.d_lr
    if out.loss.r1_gamma is None:
        out.loss.r1_gamma = 0.0002 * r * r / out.batch
    if out.loss.pl_weight is None:
        # measured on the tiny phantom runs: path length slows the mask generator down (FID 2.3 vs 1.0
        # at 20 kimg, checkpoints/README.md), so it is off for the variant that makes masks only
        out.loss.pl_weight = variant_spec(out.variant).default_pl_weight
    if out.ema_kimg is None:
        out.ema_kimg = out.batch * 10 / 32
    if out.track_metric is None and out.metrics:
        out.track_metric = out.metrics[0]
    out.network.resolution = r
    out.network.c_dim = 1 if out.cond == "slice-position" else 0
    validate_config(out, num_processes)
    return out


def validate_config(cfg: TrainConfig, num_processes: int = 1) -> None:
    """Raise ConfigError naming the first inconsistent field of a resolved config."""
    if cfg.variant not in VARIANTS:
        raise ConfigError(f"variant must be one of {', '.join(VARIANTS)}, got '{cfg.variant}'")
    if cfg.cond not in CONDITIONS:
        raise ConfigError(f"cond must be one of {', '.join(CONDITIONS)}, got '{cfg.cond}'")
    if cfg.precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {cfg.precision!r} (fp16 on CUDA: "
                          f"network.num_fp16_res, the reference's per-block fp16)")
    if cfg.on_error not in ("fail", "skip"):
        raise ConfigError(f"on_error must be 'fail' or 'skip', got {cfg.on_error!r}")
    if cfg.augment.mode not in AUGMENT_MODES:
        raise ConfigError(f"augment.mode must be one of {', '.join(AUGMENT_MODES)}, "
                          f"got '{cfg.augment.mode}'")
    if not 0.0 <= cfg.augment.p <= 1.0:
        raise ConfigError(f"augment.p must be in [0, 1], got {cfg.augment.p}")
    if cfg.batch < 1 or cfg.batch_gpu < 1:
        raise ConfigError(f"batch ({cfg.batch}) and batch_gpu ({cfg.batch_gpu}) must be >= 1")
    if cfg.batch > MAX_BATCH or cfg.metric_samples > MAX_METRIC_SAMPLES or cfg.resolution > 4096:
        raise ConfigError(f"batch ({cfg.batch}), metric_samples ({cfg.metric_samples}) or resolution "
                          f"({cfg.resolution}) above the largest supported ({MAX_BATCH}, {MAX_METRIC_SAMPLES}, 4096)")
    try:
        cfg.network.resolved()  # network sizes within gan.config.SIZE_LIMITS
    except ValueError as err:
        raise ConfigError(str(err)) from None
    if cfg.batch % (cfg.batch_gpu * num_processes):
        raise ConfigError(f"batch ({cfg.batch}) must be a multiple of batch_gpu ({cfg.batch_gpu}) "
                          f"x processes ({num_processes})")
    group = cfg.network.mbstd_group_size
    if group and cfg.batch_gpu % min(group, cfg.batch_gpu):
        raise ConfigError(f"batch_gpu ({cfg.batch_gpu}) must be a multiple of "
                          f"network.mbstd_group_size ({group})")
    if cfg.loss.pl_weight > 0 and cfg.batch_gpu // cfg.loss.pl_batch_shrink < 1:
        raise ConfigError(f"batch_gpu ({cfg.batch_gpu}) too small for loss.pl_batch_shrink "
                          f"({cfg.loss.pl_batch_shrink})")
    known_metrics = ("fid", "kid", "consistency")
    for name in cfg.metrics:
        if name not in known_metrics:
            raise ConfigError(f"unknown metric '{name}' (known: {', '.join(known_metrics)})")
    inapplicable = [name for name in cfg.metrics if name not in variant_spec(cfg.variant).metrics]
    if inapplicable:
        raise ConfigError(f"metric '{inapplicable[0]}' needs images and masks; the {cfg.variant} variant makes "
                          f"masks only (use fid,kid, which compare masks)")
    if cfg.track_metric is not None and cfg.track_metric not in cfg.metrics:
        raise ConfigError(f"track_metric '{cfg.track_metric}' is not among metrics {cfg.metrics}")
    if cfg.kimg <= 0 or cfg.tick_kimg <= 0 or cfg.snap < 1 or cfg.keep_last < 1:
        raise ConfigError("kimg and tick_kimg must be > 0, snap and keep_last >= 1")


MAX_BATCH = 4096             # images per step; StyleGAN2-ADA's largest preset uses 64
MAX_METRIC_SAMPLES = 200_000  # generated samples per metric evaluation (FID uses 50 000)


# Fields that may differ between a run and its resumption (how long, how often, what is logged).
RESUMABLE_FIELDS = ("kimg", "tick_kimg", "snap", "keep_last", "metrics", "metric_samples",
                    "feature_weights", "track_metric", "data", "on_error")  # data: compared by fingerprint


def resume_incompatibilities(saved: dict, current: dict) -> list[str]:
    """Dotted keys whose values differ between two resolved configs and matter for resuming."""
    diffs: list[str] = []

    def walk(a: Any, b: Any, prefix: str) -> None:
        if isinstance(a, dict) and isinstance(b, dict):
            for key in sorted(set(a) | set(b)):
                walk(a.get(key), b.get(key), f"{prefix}{key}.")
        elif a != b and not (isinstance(a, (list, tuple)) and isinstance(b, (list, tuple))
                             and list(a) == list(b)):
            diffs.append(f"{prefix[:-1]}: saved {a!r}, now {b!r}")

    for key in sorted(set(saved) | set(current)):
        if key in RESUMABLE_FIELDS:
            continue
        walk(saved.get(key), current.get(key), f"{key}.")
    return diffs


def config_to_yaml(cfg: TrainConfig) -> str:
    """The config as YAML text (for --dry-run and the run directory)."""
    return yaml.safe_dump(to_mapping(cfg), sort_keys=False)
