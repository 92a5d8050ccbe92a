"""The GAN training loop, split into named steps (StyleGAN2-ADA's schedule, exact resume).

One iteration (`GanTrainer.train_step`) runs the phases G main, G reg (every ``pl_interval``
iterations), D main, D reg (every ``r1_interval``), each as: zero grads -> `accumulate_gradients`
over this process's micro-batches -> `sync_and_step` (average over processes, zero non-finite
entries, Adam step); then `update_ema` (EMA generator with ramp-up) and `adjust_ada`.  Every
``tick_kimg`` `end_tick` logs; every ``snap`` ticks, at the end and on SIGINT/SIGTERM `snapshot`.

Stopping: a first SIGINT/SIGTERM is honoured at the next micro-batch, phase or metric batch (one
process; with several, at the end of the step they all reach).  Stopped before the step's first
optimizer update, nothing has changed since the last step and that state is saved (without the
metrics, which take long); stopped later, the step is dropped and the newest snapshot stays the
exact place to resume.  A second signal stops at once.

Exact resumption: every random draw of an iteration comes from generators seeded by (seed,
iteration, phase, global micro-batch index) -- the real and generated rows, the latents, and the
global torch RNG (noise inputs, style mixing, augmentation) is re-seeded before every micro-batch.
The state that evolves (weights, Adam moments, EMA, ADA p and its partial statistics, the
path-length mean, counters) is in every snapshot, so a resumed run computes exactly what an
uninterrupted one would, and the split of the global batch over processes does not change which
samples are drawn.
"""
from __future__ import annotations

import copy
import math
import signal
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from gan import build_discriminator, build_generator
from gan.augment import AdaController, MaskAwareAugment
from gan.losses import StyleGAN2Loss
from gan.variants import variant_spec
from training import checkpoint as ckpt
from training.config import TrainConfig, config_to_yaml, resume_incompatibilities
from training.data.typed_config import from_mapping, to_mapping
from training.data.fsutils import atomic_write_text
from training.distributed import DistContext
from training.monitor import TrainingMonitor, peak_memory_gb
from training.training_data import TrainingData

# Snapshot metric keys of the --metrics names (what track_metric compares).
METRIC_KEYS = {"fid": "fid", "kid": "kid_mean", "consistency": "consistency_dice_mean"}
GRID_SAMPLES = 16
# Streams of the per-iteration seeds.
STREAM_REAL, STREAM_PHASE, STREAM_ROUND, STREAM_GRID, STREAM_METRICS = range(5)


class ResumeError(RuntimeError):
    """Resuming would not continue the same training (different config or data)."""


class StopRequested(Exception):
    """A signal asked the training to stop; raised between micro-batches, phases and metric batches."""


def derived_seed(*keys: int) -> int:
    """A 63-bit seed from integer keys (numpy SeedSequence mixing: distinct keys, unrelated seeds)."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(2, np.uint64)[0] >> 1)


def seeded_generator(*keys: int) -> torch.Generator:
    """A CPU torch.Generator seeded with `derived_seed` of ``keys``."""
    return torch.Generator().manual_seed(derived_seed(*keys))


# --------------------------------------------------------------------------------------------
# phases and optimizers
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Phase:
    """One optimizer step kind: loss phase name, which network it trains, how often it runs."""

    name: str          # Gmain, Greg, Gboth, Dmain, Dreg, Dboth
    network: str       # "G" or "D"
    interval: int      # runs when iteration % interval == 0; also its loss gain


def build_phases(cfg: TrainConfig) -> list[Phase]:
    """G main, G reg (path length, lazy), D main, D reg (R1, lazy); 'both' when not lazy."""
    loss = cfg.loss
    phases = []
    if loss.pl_weight > 0 and loss.pl_interval > 0:
        phases += [Phase("Gmain", "G", 1), Phase("Greg", "G", loss.pl_interval)]
    else:
        phases += [Phase("Gboth", "G", 1)]
    if loss.r1_gamma > 0 and loss.r1_interval > 0:
        phases += [Phase("Dmain", "D", 1), Phase("Dreg", "D", loss.r1_interval)]
    else:
        phases += [Phase("Dboth", "D", 1)]
    return phases


def build_optimizer(params, lr: float, cfg: TrainConfig, reg_interval: int) -> torch.optim.Adam:
    """Adam with the lazy-regularisation correction: lr and betas scaled by k / (k + 1)."""
    ratio = reg_interval / (reg_interval + 1) if reg_interval > 0 else 1.0
    return torch.optim.Adam(params, lr=lr * ratio,
                            betas=(cfg.optim.beta1 ** ratio, cfg.optim.beta2 ** ratio),
                            eps=cfg.optim.eps)


# --------------------------------------------------------------------------------------------
# the trainer
# --------------------------------------------------------------------------------------------

@dataclass
class Progress:
    """Counters saved with every snapshot."""

    nimg: int = 0
    batch_idx: int = 0
    tick: int = 0


@dataclass
class TrainResult:
    """How `GanTrainer.train` ended: the last snapshot and whether a signal stopped it."""

    snapshot: Path | None
    interrupted: bool = False
    dropped_step: bool = False     # stopped after part of a step's updates: not saved
    snapshot_nimg: int = -1        # progress at ``snapshot`` when this run wrote it
    nimg: int = 0
    stats: list[dict] = field(default_factory=list)


class GanTrainer:
    """Trains one variant's G and D on `TrainingData` (see the module docstring).

    Args:
        cfg: a resolved TrainConfig (`training.config.resolve_config`).
        run_dir: where snapshots, logs and grids go (written by the main process only).
        data: `TrainingData`.
        ctx: this process's `DistContext`.
        metrics: optional callable ``metrics(generate) -> dict`` (e.g. gan.metrics.GanMetrics).
        tensorboard: write TensorBoard event files.
    """

    def __init__(self, cfg: TrainConfig, run_dir: Path, data: TrainingData,
                 ctx: DistContext | None = None, metrics: Callable | None = None,
                 tensorboard: bool = True):
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.data = data
        self.ctx = ctx or DistContext()
        self.metrics = metrics
        self.device = self.ctx.device
        self.rounds = cfg.batch // (cfg.batch_gpu * self.ctx.world_size)
        self.progress = Progress()
        self.stop_requested = False
        self.step_updated = False     # an optimizer step of the current iteration has run
        self.tensorboard = tensorboard
        self._build_networks()
        self._build_training()
        self.phases = build_phases(cfg)
        self.tick_stats: dict[str, list[float]] = {}

    # ---- construction ---------------------------------------------------------------------

    def _build_networks(self) -> None:
        cfg = self.cfg
        image_channels, label_channels = self.data.image_channels, self.data.label_channels
        torch.manual_seed(cfg.seed)              # identical initial weights on every process
        self.G = build_generator(cfg.variant, cfg.network, image_channels=image_channels,
                                 label_channels=label_channels)
        self.D = build_discriminator(cfg.variant, cfg.network, image_channels=image_channels,
                                     label_channels=label_channels)
        self.G.to(self.device).train().requires_grad_(False)
        self.D.to(self.device).train().requires_grad_(False)
        self.ctx.broadcast_module(self.G)
        self.ctx.broadcast_module(self.D)
        self.G_ema = copy.deepcopy(self.G).eval()

    def _build_training(self) -> None:
        cfg = self.cfg
        g_reg = cfg.loss.pl_interval if cfg.loss.pl_weight > 0 else 0
        d_reg = cfg.loss.r1_interval if cfg.loss.r1_gamma > 0 else 0
        self.opt = {"G": build_optimizer(self.G.parameters(), cfg.optim.g_lr, cfg, g_reg),
                    "D": build_optimizer(self.D.parameters(), cfg.optim.d_lr, cfg, d_reg)}
        d_image = self.data.image_channels if variant_spec(cfg.variant).d_sees_image else 0
        self.augment = None
        self.ada = None
        if cfg.augment.mode != "none":
            self.augment = MaskAwareAugment(d_image, self.data.label_channels, ops=cfg.augment.ops,
                                            p=cfg.augment.p)
            if cfg.augment.mode == "ada":
                self.ada = AdaController(self.augment, cfg.batch, cfg.augment.target,
                                         cfg.augment.interval, cfg.augment.speed_kimg)
        self.loss = StyleGAN2Loss(self.G, self.D, cfg.variant, augment=self.augment,
                                  on_real_logits=self.ada.accumulate if self.ada else None,
                                  r1_gamma=cfg.loss.r1_gamma,
                                  style_mixing_prob=cfg.loss.style_mixing_prob,
                                  pl_weight=cfg.loss.pl_weight,
                                  pl_batch_shrink=cfg.loss.pl_batch_shrink,
                                  pl_decay=cfg.loss.pl_decay,
                                  label_channels=self.data.label_channels,
                                  mask_to_d=cfg.loss.mask_to_d,
                                  autocast_dtype=torch.bfloat16 if cfg.precision == "bf16" else None)

    def modules(self) -> dict[str, nn.Module]:
        return {"G": self.G, "G_ema": self.G_ema, "D": self.D}

    # ---- one iteration ---------------------------------------------------------------------

    def local_slice(self) -> slice:
        """This process's share of the global batch."""
        per_rank = self.cfg.batch // self.ctx.world_size
        return slice(self.ctx.rank * per_rank, (self.ctx.rank + 1) * per_rank)

    def draw_real_rows(self) -> torch.Tensor:
        """Global batch [batch] of positions into the training rows (same on every process)."""
        gen = seeded_generator(self.cfg.seed, STREAM_REAL, self.progress.batch_idx)
        return torch.randint(len(self.data), (self.cfg.batch,), generator=gen)

    def draw_phase_inputs(self, phase_index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Global (z [batch,z_dim], rows [batch]) of one phase; rows give gen c (and gen masks)."""
        gen = seeded_generator(self.cfg.seed, STREAM_PHASE, self.progress.batch_idx, phase_index)
        z = torch.randn(self.cfg.batch, self.G.z_dim, generator=gen)
        return z, torch.randint(len(self.data), (self.cfg.batch,), generator=gen)

    def accumulate_gradients(self, phase_index: int, phase: Phase, real_rows: torch.Tensor) -> dict:
        """Backpropagate ``phase`` over this process's micro-batches; returns averaged stats."""
        gen_z, gen_rows = self.draw_phase_inputs(phase_index)
        local = self.local_slice()
        stats: dict[str, float] = {}
        bg = self.cfg.batch_gpu
        for r in range(self.rounds):
            self.raise_if_stopping()
            part = slice(local.start + r * bg, local.start + (r + 1) * bg)
            global_round = part.start // bg
            torch.manual_seed(derived_seed(self.cfg.seed, STREAM_ROUND, self.progress.batch_idx,
                                           phase_index, global_round))
            real_img, real_mask, real_c, _ = self.data.load(real_rows[part], self.device)
            _, gen_mask, gen_c, _ = self.data.load(gen_rows[part], self.device)
            round_stats = self.loss.accumulate_gradients(
                phase.name, real_img, real_mask, real_c, gen_z[part].to(self.device), gen_c,
                gen_mask, gain=phase.interval / self.rounds)
            for key, value in round_stats.items():
                stats[key] = stats.get(key, 0.0) + value / self.rounds
        if phase.name in ("Greg", "Gboth"):
            self.loss.finish_pl_phase(reduce=self.ctx.all_reduce_sum)
        return stats

    def sync_and_step(self, network: str) -> None:
        """Average gradients over processes, zero non-finite entries, take the Adam step."""
        module = self.G if network == "G" else self.D
        self.ctx.sync_gradients(module.parameters())
        self.step_updated = True
        self.opt[network].step()

    def run_phase(self, phase_index: int, phase: Phase, real_rows: torch.Tensor) -> dict:
        """zero_grad -> accumulate_gradients -> sync_and_step for one phase."""
        module = self.G if phase.network == "G" else self.D
        self.opt[phase.network].zero_grad(set_to_none=True)
        module.requires_grad_(True)
        stats = self.accumulate_gradients(phase_index, phase, real_rows)
        module.requires_grad_(False)
        self.sync_and_step(phase.network)
        return stats

    @torch.no_grad()
    def update_ema(self) -> None:
        """G_ema <- lerp(G, G_ema, beta), beta = 0.5^(batch / ema_nimg), horizon ramped up."""
        cfg = self.cfg
        ema_nimg = cfg.ema_kimg * 1000
        if cfg.ema_rampup is not None:
            ema_nimg = min(ema_nimg, self.progress.nimg * cfg.ema_rampup)
        beta = 0.5 ** (cfg.batch / max(ema_nimg, 1e-8))
        for p_ema, p in zip(self.G_ema.parameters(), self.G.parameters()):
            p_ema.copy_(p.lerp(p_ema, beta))
        for b_ema, b in zip(self.G_ema.buffers(), self.G.buffers()):
            b_ema.copy_(b)

    def adjust_ada(self) -> None:
        """Every ``augment.interval`` iterations move p towards the target sign statistic."""
        if self.ada is not None and self.progress.batch_idx % self.cfg.augment.interval == 0:
            self.ada.update(reduce=self.ctx.all_reduce_sum)

    def train_step(self) -> dict:
        """One iteration: every due phase, EMA, counters, ADA. Returns the iteration's stats."""
        real_rows = self.draw_real_rows()
        stats: dict[str, float] = {}
        self.step_updated = False
        for index, phase in enumerate(self.phases):
            self.raise_if_stopping()
            if self.progress.batch_idx % phase.interval == 0:
                stats.update(self.run_phase(index, phase, real_rows))
        self.update_ema()
        self.progress.nimg += self.cfg.batch
        self.progress.batch_idx += 1
        self.adjust_ada()
        return stats

    # ---- ticks, samples, metrics, snapshots -------------------------------------------------

    def collect(self, stats: dict) -> None:
        for key, value in stats.items():
            self.tick_stats.setdefault(key, []).append(value)

    def tick_summary(self, tick_seconds: float, tick_nimg: int) -> dict[str, float]:
        """Averages of the tick's losses plus progress, timing, augmentation and memory."""
        summary = {k: float(np.mean(v)) for k, v in self.tick_stats.items()}
        self.tick_stats = {}
        summary.update({
            "progress/kimg": self.progress.nimg / 1000.0,
            "progress/tick": float(self.progress.tick),
            "timing/sec_per_tick": tick_seconds,
            "timing/sec_per_kimg": tick_seconds / max(tick_nimg / 1000.0, 1e-9),
            "augment/p": self.augment.p if self.augment is not None else 0.0,
            "loss/pl_mean": float(self.loss.pl_mean),
            "resources/peak_memory_gb": peak_memory_gb(self.device),
        })
        if self.ada is not None and math.isfinite(self.ada.last_signs):
            summary["augment/signs_real"] = self.ada.last_signs
        return summary

    def grid_inputs(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Fixed (z, c, masks, labels) for the sample grids: seeded latents, evenly spaced rows."""
        gen = seeded_generator(self.cfg.seed, STREAM_GRID)
        z = torch.randn(GRID_SAMPLES, self.G.z_dim, generator=gen)
        index = torch.linspace(0, len(self.data) - 1, GRID_SAMPLES).round().long()
        _, masks, c, labels = self.data.load(index, self.device)
        return z.to(self.device), c, masks, labels

    @torch.no_grad()
    def generate(self, z: torch.Tensor, c: torch.Tensor, masks: torch.Tensor,
                 labels: torch.Tensor, generator: nn.Module | None = None
                 ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """G_ema samples (constant noise) as (images, labels) in chunks of batch_gpu."""
        generator = generator or self.G_ema
        images_out, labels_out = [], []
        for start in range(0, len(z), self.cfg.batch_gpu):
            part = slice(start, start + self.cfg.batch_gpu)
            mask = masks[part] if variant_spec(self.cfg.variant).needs_mask else None
            out = generator(z[part], c[part], mask=mask, noise_mode="const")
            images, lab = variant_spec(self.cfg.variant).split(out, self.data.image_channels, labels[part])
            images_out.append(images)
            labels_out.append(lab)
        images = None if images_out[0] is None else torch.cat(images_out)
        return images, torch.cat(labels_out)

    def save_reals_grid(self, monitor: TrainingMonitor) -> Path | None:
        """Write the grid of the real slices whose positions/masks condition the sample grid."""
        index = torch.linspace(0, len(self.data) - 1, GRID_SAMPLES).round().long()
        images, _, _, labels = self.data.load(index, self.device)
        return monitor.log_samples(images.cpu().numpy(), labels.cpu().numpy(),
                                   self.data.info.modalities, 0, tag="reals")

    def save_grid(self, monitor: TrainingMonitor) -> Path | None:
        """Write the fixed-seed sample grid of G_ema (PNG + TensorBoard)."""
        images, labels = self.generate(*self.grid_inputs())
        return monitor.log_samples(None if images is None else images.cpu().numpy(),
                                   labels.cpu().numpy(), self.data.info.modalities,
                                   self.progress.nimg)

    def metric_generate(self, batch_index: int, size: int
                        ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Samples for the metrics: batch ``batch_index`` is the same at every snapshot."""
        self.raise_if_stopping()
        gen = seeded_generator(self.cfg.seed, STREAM_METRICS, batch_index)
        z = torch.randn(size, self.G.z_dim, generator=gen).to(self.device)
        index = torch.randint(len(self.data), (size,), generator=gen)
        _, masks, c, labels = self.data.load(index, self.device)
        images, lab = self.generate(z, c, masks, labels)
        return (None if images is None else images.cpu()), lab.cpu()

    def evaluate_metrics(self) -> dict[str, float]:
        """Metrics of G_ema (empty without --metrics)."""
        if self.metrics is None:
            return {}
        return {k: float(v) for k, v in self.metrics(self.metric_generate).items()}

    def snapshot_content(self, metrics: dict) -> ckpt.SnapshotContent:
        """Everything needed to continue exactly, plus what load_generator needs."""
        content = ckpt.SnapshotContent()
        for name, module in self.modules().items():
            content.tensors[name] = dict(module.state_dict())
        for name, opt in self.opt.items():
            tensors, doc = ckpt.optimizer_state_to_files(opt)
            content.tensors[f"optim_{name}"] = tensors
            content.documents[f"optim_{name}"] = doc
        rng_tensors, rng_doc = ckpt.capture_rng_state()
        content.tensors["rng"] = rng_tensors
        content.documents["rng"] = rng_doc
        content.documents["progress"] = {
            "nimg": self.progress.nimg, "batch_idx": self.progress.batch_idx,
            "tick": self.progress.tick, "pl_mean": float(self.loss.pl_mean),
            "augment_p": self.augment.p if self.augment is not None else 0.0,
            "ada": self.ada.state_dict() if self.ada is not None else None,
            "world_size": self.ctx.world_size}
        content.documents["config"] = to_mapping(self.cfg)
        content.documents["dataset"] = ckpt.dataset_info_to_dict(self.data.info)
        content.documents["metrics"] = metrics
        return content

    def snapshot(self, metrics: dict) -> Path | None:
        """Write a snapshot (main process), prune old ones; all processes wait for it."""
        path = None
        if self.ctx.is_main:
            path = ckpt.write_snapshot(self.run_dir, self.progress.nimg, self.snapshot_content(metrics))
            key = METRIC_KEYS.get(self.cfg.track_metric) if self.cfg.track_metric else None
            ckpt.prune_snapshots(self.run_dir, self.cfg.keep_last, key,
                                 lower_is_better=self.cfg.track_metric != "consistency")
        self.ctx.barrier()
        return path

    # ---- resume ----------------------------------------------------------------------------

    def check_resume(self, snapshot: Path, force: bool) -> list[str]:
        """Problems that make ``snapshot`` a different training; ResumeError unless ``force``."""
        # through the config type: fields added since the snapshot was written compare as their defaults
        saved_config = to_mapping(from_mapping(TrainConfig, ckpt.read_json(snapshot / "config.json"), str(snapshot / "config.json")))
        saved_data = ckpt.read_json(snapshot / "dataset.json")
        problems = resume_incompatibilities(saved_config, to_mapping(self.cfg))
        if saved_data.get("fingerprint") != self.data.info.fingerprint:
            problems.append(f"dataset: saved {saved_data.get('root')} (fingerprint "
                            f"{str(saved_data.get('fingerprint'))[:12]}), now {self.data.info.root} "
                            f"(fingerprint {self.data.info.fingerprint[:12]})")
        if problems and not force:
            raise ResumeError(f"{snapshot}: cannot resume, the run differs from the snapshot:\n  "
                              + "\n  ".join(problems)
                              + "\nUse --force-resume to continue anyway (no longer exact).")
        return problems

    def resume(self, path: Path | ckpt.VerifiedSnapshot, force: bool = False) -> ckpt.VerifiedSnapshot:
        """Load the newest good snapshot under ``path`` (a `VerifiedSnapshot` as it is: not hashed again);
        returns the snapshot used."""
        snapshot = ckpt.latest_good_snapshot(path)
        problems = self.check_resume(snapshot, force)
        for problem in problems:
            warnings.warn(f"--force-resume: {problem}", stacklevel=2)
        content = ckpt.read_snapshot(snapshot)
        missing = [name for name in (*self.modules(), "optim_G", "optim_D", "rng")
                   if name not in content.tensors]
        if missing:
            raise ResumeError(f"{snapshot}: lacks {', '.join(missing)} (a generator-only export?); "
                              "training can only resume from a full snapshot")
        for name, module in self.modules().items():
            module.load_state_dict(content.tensors[name], strict=True)
        for name, opt in self.opt.items():
            opt.load_state_dict(ckpt.optimizer_state_from_files(content.tensors[f"optim_{name}"],
                                                                 content.documents[f"optim_{name}"]))
        saved = content.documents["progress"]
        counters = [saved.get(k) if isinstance(saved, dict) else None for k in ("nimg", "batch_idx", "tick")]
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in counters):
            raise ResumeError(f"{snapshot}: progress.json holds {counters} for nimg, batch_idx, tick; a resumable "
                              f"snapshot has counters >= 0")
        ckpt.restore_rng_state(content.tensors["rng"], content.documents["rng"])
        self.progress = Progress(nimg=saved["nimg"], batch_idx=saved["batch_idx"], tick=saved["tick"])
        self.loss.pl_mean = torch.tensor(saved["pl_mean"], dtype=torch.float32)
        if self.ada is not None and saved.get("ada"):
            self.ada.load_state_dict(saved["ada"])
        elif self.augment is not None:
            self.augment.set_p(saved.get("augment_p", self.cfg.augment.p))
        return snapshot

    # ---- the loop --------------------------------------------------------------------------

    def raise_if_stopping(self) -> None:
        """StopRequested when a signal arrived (one process only: several must agree, which
        `_stop_everywhere` does at the end of a step)."""
        if self.stop_requested and self.ctx.world_size == 1:
            raise StopRequested

    def _install_signal_handlers(self) -> dict:
        def request_stop(signum, frame):
            if self.stop_requested:
                raise KeyboardInterrupt   # the second signal: at once, nothing more written
            self.stop_requested = True
            if self.ctx.is_main:
                print(f"{signal.Signals(signum).name}: stopping at the next micro-batch and saving what is "
                      "exact; send it again to stop at once", file=sys.stderr, flush=True)
        previous = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                previous[sig] = signal.signal(sig, request_stop)
            except ValueError:          # not the main thread: signals stay with the caller
                pass
        return previous

    def _stop_everywhere(self) -> bool:
        flag = torch.tensor([1.0 if self.stop_requested else 0.0])
        return bool(self.ctx.all_reduce_sum(flag)[0] > 0)

    def write_run_config(self) -> None:
        """The resolved config as config.yaml in the run directory (main process)."""
        if self.ctx.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.run_dir / "config.yaml", config_to_yaml(self.cfg))

    def train(self) -> TrainResult:
        """Run until ``kimg`` thousand real images have been shown, or a signal arrives."""
        cfg = self.cfg
        total_nimg = int(round(cfg.kimg * 1000))
        self.write_run_config()
        monitor = TrainingMonitor(self.run_dir, cfg.kimg, self.progress.nimg / 1000.0,
                                  enabled=self.ctx.is_main, tensorboard=self.tensorboard)
        monitor.forget_ticks_after(self.progress.nimg)  # ticks after the snapshot resumed from come again
        previous = self._install_signal_handlers()
        result = TrainResult(snapshot=None, nimg=self.progress.nimg)
        try:
            if self.progress.nimg == 0:
                self.save_reals_grid(monitor)
                self.save_grid(monitor)
            tick_start_nimg, tick_start_time = self.progress.nimg, time.time()
            while self.progress.nimg < total_nimg:
                try:
                    self.collect(self.train_step())
                except StopRequested:
                    # nothing updated and not saved yet: this state is exact, saved below as the stop
                    if self.step_updated or result.snapshot_nimg == self.progress.nimg:
                        newest = ckpt.list_snapshots(self.run_dir) if self.ctx.is_main else []
                        result.snapshot = newest[-1] if newest else None
                        result.interrupted, result.dropped_step = True, self.step_updated
                        break
                monitor.advance(self.progress.nimg / 1000.0)
                stop = self._stop_everywhere()
                done = self.progress.nimg >= total_nimg
                if not (done or stop or self.progress.nimg >= tick_start_nimg + cfg.tick_kimg * 1000):
                    continue
                self.progress.tick += 1
                summary = self.tick_summary(time.time() - tick_start_time,
                                            self.progress.nimg - tick_start_nimg)
                if done or stop or self.progress.tick % cfg.snap == 0:
                    metrics = {}
                    try:
                        self.raise_if_stopping()
                        self.save_grid(monitor)
                        metrics = self.evaluate_metrics() if self.ctx.is_main else {}
                    except StopRequested:
                        stop = True
                    summary.update({f"metrics/{k}": v for k, v in metrics.items()})
                    result.snapshot, result.snapshot_nimg = self.snapshot(metrics), self.progress.nimg
                if self.progress.nimg > tick_start_nimg:     # not the empty tick of a stop before any step
                    monitor.log_tick(summary, self.progress.nimg)
                    result.stats.append(summary)
                if stop:
                    monitor.message(f"stopped by signal at {self.progress.nimg / 1000:.2f} kimg; "
                                    f"snapshot {result.snapshot}")
                    result.interrupted = True
                    break
                tick_start_nimg, tick_start_time = self.progress.nimg, time.time()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            monitor.close()
        result.nimg = self.progress.nimg
        return result
