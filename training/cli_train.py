"""``train_gan.py`` / ``stylepair-train-gan``: train one generator variant on a dataset.

    python train_gan.py --variant conditional --data DATASET --out checkpoints/RUN [--cfg tiny]
    torchrun --nproc_per_node 4 train_gan.py ...            (multi-GPU / multi-node)
    python train_gan.py --resume checkpoints/RUN --kimg 2000   (continue, exactly)

Configuration precedence: built-in defaults < ``--cfg`` preset (or, when resuming without
``--cfg``, the saved config) < ``--set KEY=VALUE`` < explicit flags; then the 'auto' rules fill
what is still unset.  ``--dry-run`` prints the resolved config and exits.
"""
from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

import torch

from gan.variants import variant_spec
from training import checkpoint as ckpt
from training.config import (AUGMENT_MODES, CONDITIONS, PRECISIONS, PRESETS, VARIANTS, ConfigError, TrainConfig,
                             config_to_yaml, load_preset, resolve_config, with_overrides)
from training.cost import CPU_AUTO_S_PER_KIMG, estimate_training_cost, fit_auto_to_cpu
from training.data.errors import one_line_errors
from training.data.fsutils import atomic_write_json
from training.data.loader import LAYOUTS
from training.data.typed_config import from_mapping, parse_override

# Allowed values of the flags with a fixed set of choices.
FLAG_CHOICES = {"variant": VARIANTS, "cond": CONDITIONS, "augment.mode": AUGMENT_MODES,
                "layout": ("auto", *LAYOUTS), "on_error": ("fail", "skip"), "precision": PRECISIONS}
# (flag, config key, type, help) of the flags that set one config field.
CONFIG_FLAGS = (
    ("--variant", "variant", str, f"generator variant: {', '.join(VARIANTS)}"),
    ("--data", "data", str, "dataset folder (MSD, nnU-Net v2 raw or folder-per-patient), or "
                            "'phantoms' for the embedded phantom patients"),
    ("--layout", "layout", str, f"dataset layout: auto, {', '.join(LAYOUTS)}"),
    ("--on-error", "on_error", str, "broken patients: fail (stop, listing them) or skip (train without them)"),
    ("--cond", "cond", str, f"label conditioning: {', '.join(CONDITIONS)}"),
    ("--preprocess", "preprocess", str, "preprocessing preset (phantom, brats, ct) or YAML file, as for "
                                        "stylepair-data cache --config: CT windows, MR percentiles, slice selection; "
                                        "its resolution and dropped slices unless given"),
    ("--resolution", "resolution", int, "slice resolution (power of two)"),
    ("--drop-end-slices", "drop_end_slices", int, "slices dropped at each end of every stack"),
    ("--batch", "batch", int, "global batch size (None: auto)"),
    ("--batch-gpu", "batch_gpu", int, "micro-batch per process; batch / (batch_gpu x processes) "
                                      "gradient-accumulation rounds (None: no accumulation)"),
    ("--kimg", "kimg", float, "training length in thousands of real images shown"),
    ("--tick", "tick_kimg", float, "progress report interval in kimg"),
    ("--snap", "snap", int, "snapshot (and grid, metrics) every this many ticks"),
    ("--keep", "keep_last", int, "snapshots kept besides the best by --track-metric"),
    ("--seed", "seed", int, "random seed"),
    ("--precision", "precision", str, "fp32, or bf16: every forward pass autocast to bfloat16 (see README)"),
    ("--aug", "augment.mode", str, f"augmentation: {', '.join(AUGMENT_MODES)}"),
    ("--p", "augment.p", float, "augmentation probability (initial for ada, constant for fixed)"),
    ("--target", "augment.target", float, "ADA target for E[sign D(real)]"),
    ("--gamma", "loss.r1_gamma", float, "R1 weight gamma (None: auto 0.0002 r^2 / batch)"),
    ("--pl-weight", "loss.pl_weight", float, "path-length regularisation weight (0: off; None: auto = 2, 0 for the mask variant)"),
    ("--glr", "optim.g_lr", float, "G learning rate (None: auto)"),
    ("--dlr", "optim.d_lr", float, "D learning rate (None: auto)"),
    ("--metrics", "metrics", str, "metrics at snapshots, comma-separated: fid,kid,consistency "
                                  "(or none)"),
    ("--metric-samples", "metric_samples", int, "generated slices per metric evaluation"),
    ("--feature-weights", "feature_weights", str, "Inception-v3 weights file for FID/KID "
                                                  "(default: the offline slice-texture extractor)"),
    ("--track-metric", "track_metric", str, "metric whose best snapshot is always kept"),
)


def _default_of(key: str) -> object:
    obj: object = TrainConfig()
    for part in key.split("."):
        obj = getattr(obj, part)
    return obj


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (every flag documented, with its config key and built-in default)."""
    parser = argparse.ArgumentParser(
        prog="train_gan.py", description=__doc__.replace("``", ""),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Examples:\n"
               "  python train_gan.py --variant mask --data phantoms --cond slice-position "
               "--cfg tiny --out checkpoints/mask\n"
               "  python train_gan.py --variant conditional --data /data/Task01_BrainTumour "
               "--out checkpoints/brats --set network.channel_max=256 --kimg 5000\n"
               "  python train_gan.py --resume checkpoints/brats --kimg 10000\n"
               "  torchrun --nproc_per_node 2 train_gan.py --variant baseline --data DATA --out OUT")
    run = parser.add_argument_group("run")
    run.add_argument("--out", type=Path, default=None,
                     help="run directory (snapshots, logs, grids); default when resuming: the "
                          "resumed run's directory")
    run.add_argument("--cfg", default=None,
                     help=f"config preset: {', '.join(PRESETS)} or a YAML file (default: auto; "
                          "when resuming: the saved config)")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override any config field, dotted for sections, repeatable, e.g. "
                          "--set network.channel_base=4096 --set loss.r1_gamma=0.8; short names: "
                          "lr (both learning rates), glr, dlr, gamma, aug, p, target")
    run.add_argument("--resume", type=Path, default=None, metavar="RUN_OR_SNAPSHOT",
                     help="continue a run exactly from its newest good snapshot (or this one)")
    run.add_argument("--force-resume", action="store_true",
                     help="resume even if the config or the dataset differ from the snapshot's")
    leave_out = run.add_mutually_exclusive_group()
    leave_out.add_argument("--exclude-cases", type=Path, default=None, metavar="FILE",
                           help="never train on these patients: a text file of case ids, one per line "
                                "(config: exclude_cases)")
    leave_out.add_argument("--splits", type=Path, default=None, metavar="SPLITS_JSON",
                           help="never train on the test patients of these splits (stylepair-data splits, or a "
                                "study's RESULTS/splits/DATASET.json), so the study's test set stays unseen")
    run.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    run.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                     help="where to train (default: auto = CUDA if available)")
    run.add_argument("--threads", type=int, default=None,
                     help="torch CPU threads per process (default: torch's choice)")
    run.add_argument("--no-tensorboard", action="store_true", help="do not write TensorBoard logs")
    run.add_argument("--deterministic", action="store_true", default=None,
                     help="use deterministic torch algorithms (config: deterministic)")
    fields = parser.add_argument_group("config fields (override the preset)")
    for flag, key, kind, text in CONFIG_FLAGS:
        fields.add_argument(flag, dest=key.replace(".", "__"), type=kind, default=None,
                            choices=FLAG_CHOICES.get(key), metavar=key.split(".")[-1].upper(),
                            help=f"{text} [config: {key}; built-in default: {_default_of(key)}]")
    return parser


def build_config(args: argparse.Namespace, num_processes: int,
                 saved_config: dict | None = None) -> TrainConfig:
    """The resolved TrainConfig from parsed arguments (see the module docstring for precedence)."""
    if saved_config is not None and args.cfg is None:
        cfg = from_mapping(TrainConfig, saved_config, "the saved config.json")
    else:
        cfg = load_preset(args.cfg or "auto")
    settings = [parse_override(text) for text in args.overrides]
    for _, key, _, _ in CONFIG_FLAGS:
        value = getattr(args, key.replace(".", "__"))
        if value is None:
            continue
        if key == "metrics":
            value = [] if value.strip().lower() in ("", "none") else [v.strip() for v in value.split(",")]
        settings.append((key, value))
    cfg = with_overrides(cfg, settings)
    if cfg.preprocess is not None:
        _take_preset_slices(cfg, args)
    if args.deterministic:
        cfg.deterministic = True
    if args.exclude_cases is not None or args.splits is not None:
        cfg.exclude_cases = _excluded_cases(args)
    return resolve_config(cfg, num_processes)


# Fields of a training config that a preprocessing preset also sets: the preset's values apply unless
# the user set the field (flag or --set).
PRESET_SLICE_FIELDS = ("resolution", "drop_end_slices", "drop_empty_slices")


def _given_keys(args: argparse.Namespace) -> set[str]:
    """The config keys the user set on the command line (``--set KEY=…`` or a flag)."""
    given = {parse_override(text)[0] for text in args.overrides}
    return given | {key for _, key, _, _ in CONFIG_FLAGS if getattr(args, key.replace(".", "__")) is not None}


def _take_preset_slices(cfg: TrainConfig, args: argparse.Namespace) -> None:
    """Copy resolution and slice selection from the ``preprocess`` preset into ``cfg`` where the user
    did not set them, so the GAN trains on the cache `stylepair-data cache --config PRESET` builds."""
    from training.data.preprocess import load_preprocess_config

    try:
        preset = load_preprocess_config(cfg.preprocess)
    except (OSError, ValueError) as err:
        raise ConfigError(f"--preprocess {cfg.preprocess}: {err}") from None
    given = _given_keys(args)
    for key in PRESET_SLICE_FIELDS:
        if key not in given:
            setattr(cfg, key, getattr(preset, key))


def _excluded_cases(args: argparse.Namespace) -> list[str]:
    """Case ids from --exclude-cases (one per line, '#' comments) or the test set of --splits."""
    from training.data.splits import Splits, read_case_ids

    if args.splits is not None:
        try:
            return sorted(Splits.load(args.splits).test)
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ConfigError(f"--splits {args.splits}: not a splits file ({err})") from None
    try:
        return sorted(read_case_ids(args.exclude_cases, "--exclude-cases"))
    except ValueError as err:
        raise ConfigError(str(err)) from None


def build_metrics(cfg: TrainConfig, data, device: torch.device):
    """GanMetrics against the real training slices (None without --metrics), and the floor.

    FID/KID compare images (masks for the mask variant) with a reference of the first ~80 % of the
    training patients; the other patients' slices give the real-vs-real floor.
    """
    if not cfg.metrics:
        return None, {}
    import numpy as np

    from gan.feature_extractor import load_feature_extractor
    from gan.metrics import GanMetrics, MetricsConfig, validate_metrics

    makes_images = variant_spec(cfg.variant).makes_images
    inputs = "images" if makes_images else "masks"
    names = validate_metrics(cfg.metrics, produces_images=makes_images,
                             produces_labels=True, inputs=inputs)
    cases = data.cache.case_index[data.rows]
    unique = np.unique(cases)
    held_out = unique[int(round(len(unique) * 0.8)):] if len(unique) >= 2 else unique[:0]
    reference_rows = data.rows[~np.isin(cases, held_out)]
    test_rows = data.rows[np.isin(cases, held_out)]
    reference = data.cache.select(reference_rows)
    channels = data.label_channels if inputs == "masks" else data.image_channels
    extractor = (load_feature_extractor(cfg.feature_weights, in_channels=channels, device=device)
                 if cfg.feature_weights else None)
    metrics = GanMetrics(reference.images, reference.labels, data.label_channels,
                         MetricsConfig(metrics=names, inputs=inputs, num_gen=cfg.metric_samples),
                         extractor=extractor, device=device)
    floor = {}
    if len(test_rows) >= 2:
        test = data.cache.select(test_rows)
        floor = {k: float(v) for k, v in metrics.floor(test.images, test.labels).items()}
        floor["num_test_slices"] = float(len(test_rows))
    return metrics, floor


def _cpu_auto(args: argparse.Namespace, ctx) -> bool:
    """Whether 'auto' may choose the network for a CPU: a new run of the 'auto' preset on a CPU whose
    network width and micro-batch the user did not pin."""
    pinned = any(key.startswith(("network.channel", "batch_gpu")) for key in _given_keys(args))
    return (ctx.device.type == "cpu" and args.resume is None and args.cfg in (None, "auto")
            and not pinned)


def _resolve_run_dir(args: argparse.Namespace, resumed: ckpt.VerifiedSnapshot | None) -> Path:
    if args.out is not None:
        return args.out
    if resumed is not None:
        return resumed.parent if ckpt.SNAPSHOT_PATTERN.match(resumed.name) else resumed.path
    raise ConfigError("--out RUN_DIR is required (or --resume RUN)")


@one_line_errors("train_gan.py")
def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status (0 done, 130 stopped by a signal after a snapshot)."""
    from training.distributed import init_distributed, shutdown_distributed

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        ctx = init_distributed(args.device)
    except RuntimeError as err:
        parser.error(str(err))
    try:
        saved, resumed = None, None
        try:
            if args.resume is not None:  # resolved and verified once: reading it later hashes nothing again
                resumed = ckpt.latest_good_snapshot(args.resume)
                saved = ckpt.read_json(resumed / "config.json")
            cfg = build_config(args, ctx.world_size, saved)
            run_dir = _resolve_run_dir(args, resumed)
        except (ConfigError, ckpt.CheckpointError) as err:
            parser.error(str(err))
        if args.dry_run:
            if ctx.is_main:
                print(config_to_yaml(cfg), end="")
                if _cpu_auto(args, ctx):
                    print(f"# on this CPU 'auto' narrows the network (channel_max) to the widest that trains within "
                          f"{CPU_AUTO_S_PER_KIMG:.0f} s/kimg once the data is read; the run prints its choice")
            return 0
        if (args.resume is None and ckpt.list_snapshots(run_dir)):
            parser.error(f"{run_dir}: already holds snapshots; use --resume {run_dir} to continue "
                         "it or choose another --out")
        if cfg.deterministic:
            torch.use_deterministic_algorithms(True)
        from training.data import DataError
        from training.sampling.synthetic_dataset import OutputDirError, exclusive_output
        try:
            # one training per run directory: a second one would replace the first one's snapshots
            with exclusive_output(run_dir, "training") if ctx.is_main else contextlib.nullcontext():
                return _train(cfg, run_dir, args, ctx, resumed)
        except (DataError, ckpt.CheckpointError, OutputDirError, ConfigError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
    finally:
        shutdown_distributed(ctx)


def _train(cfg: TrainConfig, run_dir: Path, args: argparse.Namespace, ctx,
           resumed: ckpt.VerifiedSnapshot | None) -> int:
    from training.loop import GanTrainer, ResumeError
    from training.training_data import open_training_data

    if ctx.is_main:
        ckpt.remove_snapshot_debris(run_dir)  # of a snapshot write that was killed (we hold run_dir now)
    data = open_training_data(cfg)
    if _cpu_auto(args, ctx):
        try:
            cfg, cost = fit_auto_to_cpu(cfg, data.image_channels, data.label_channels, ctx.device)
        except ValueError as err:
            raise ConfigError(str(err)) from None
        if ctx.is_main:
            print(f"'auto' on this CPU: channel_max {cfg.network.channel_max}, channel_base "
                  f"{cfg.network.channel_base}, micro-batch {cfg.batch_gpu}", file=sys.stderr)
    else:
        cost = estimate_training_cost(cfg, data.image_channels, data.label_channels, ctx.device)
    if ctx.is_main:
        print(cost.describe(), file=sys.stderr)
    metrics, floor = build_metrics(cfg, data, ctx.device) if ctx.is_main else (None, {})
    trainer = GanTrainer(cfg, run_dir, data, ctx, metrics=metrics,
                         tensorboard=not args.no_tensorboard)
    if resumed is not None:
        try:
            used = trainer.resume(resumed, force=args.force_resume)
        except ResumeError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        if ctx.is_main:
            print(f"resuming from {used} at {trainer.progress.nimg / 1000:.3f} kimg", file=sys.stderr)
    if ctx.is_main and floor:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(run_dir / "metrics_floor.json", floor)
    result = trainer.train()
    if ctx.is_main:
        where = f"; snapshot {result.snapshot}" if result.snapshot is not None else " (nothing left to train)"
        if result.dropped_step:
            where = (f"; the step in progress was dropped (part of its updates had run), resume continues exactly "
                     f"from {result.snapshot or 'the start: no snapshot yet'}")
        print(f"{'stopped' if result.interrupted else 'finished'} at {result.nimg / 1000:.3f} kimg{where}",
              file=sys.stderr)
    return 130 if result.interrupted else 0
