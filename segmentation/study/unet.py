"""The study's segmentation model and its training: a MONAI 2D U-Net on axial slices.

Model: ``monai.networks.nets.UNet(spatial_dims=2, in_channels=M, out_channels=L, channels,
strides, num_res_units)`` from `UNetConfig`; loss ``monai.losses.DiceCELoss`` (softmax, one-hot
targets); Adam.  Augmentation: whole batches as tensors, each slice drawing its own (flips and
90-degree rotations of image and label, Gaussian noise and intensity scaling of the image only;
`UNetAugmentConfig`, `BatchAugment`) -- per-slice MONAI transforms cost as much CPU as the network.

The optimisation budget (`UNetTrainConfig.budget`, `run_steps`):

    "steps": every run takes ``iterations`` Adam steps on batches of ``batch_size`` slices, so
    synthetic patients change what the network sees, never how many steps or slices it gets;
    "epochs": a run takes ceil(epochs x its training slices / batch_size) steps.

Slices are drawn with replacement: uniformly from the pooled real + synthetic slices, or, with
``real_fraction``, round(real_fraction x batch_size) of every batch from the real slices and the
rest from the synthetic ones (`MixedBatchSampler`).

With validation volumes, the network is validated every ``val_every`` steps (and after the last):
the mean over the reassembled volumes of the mean Dice over the non-background classes (small
structures weigh as much as large ones).  The best validation state is returned for testing; with
``patience`` set, training stops after that many validations without improvement (a run may then
end before the budget, never after it).  Without validation volumes the last state is returned.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from monai.losses import DiceCELoss
from monai.networks.nets import UNet
from torch.utils.data import DataLoader, RandomSampler, Sampler
from torch.utils.data import Dataset as TorchDataset
from torch.utils.data import default_collate
from tqdm.auto import tqdm

from segmentation.study.evaluation import mean_class_dice, predict_volume
from segmentation.study.study_config import UNetAugmentConfig, UNetTrainConfig, UNetConfig


def budget_rule(config: UNetTrainConfig) -> str:
    """The budget, the batch mix and the validation policy of ``config`` in words (stored with each
    run and printed by the study)."""
    if config.budget == "steps":
        budget = (f"every run takes {config.iterations} Adam steps of {config.batch_size} slices whatever was "
                  f"added (synthetic patients change what is seen, never how much)")
    else:
        budget = (f"every run takes ceil({config.epochs:g} x its own training slices / {config.batch_size}) Adam "
                  f"steps: about {config.epochs:g} passes over its data, so larger k costs more steps")
    mix = ("slices drawn uniformly with replacement from the pooled real + synthetic slices (k sets the mix)"
           if config.real_fraction is None else
           f"{config.real_fraction:.0%} of every batch from the real slices, the rest from the synthetic ones")
    validation = {"fold": "the best state on the fold's real validation patients is tested",
                  "own": "the best state on the run's own real training patients is tested (no other labelled "
                         "patient selects the model)",
                  "none": "the last state is tested (no validation)"}[config.validation]
    stop = "; early stopping (patience) may only end a run sooner" if config.patience is not None else ""
    return f"{budget}; {mix}; {validation}{stop}"


def run_steps(config: UNetTrainConfig, n_slices: int) -> int:
    """Optimisation steps of a run with ``n_slices`` training slices under ``config.budget``."""
    if config.budget == "steps":
        return config.iterations
    assert config.epochs is not None
    return max(1, math.ceil(config.epochs * n_slices / config.batch_size))

NORMS = {"instance": "instance", "batch": "batch", "none": None}


def build_unet(config: UNetConfig, in_channels: int, out_channels: int) -> UNet:
    """A 2D MONAI U-Net: images [N, in_channels, H, W] -> logits [N, out_channels, H, W].

    H and W must be divisible by the product of ``config.strides``.
    """
    if config.norm not in NORMS:
        raise ValueError(f"unet.norm must be one of {sorted(NORMS)}, got {config.norm!r}")
    return UNet(spatial_dims=2, in_channels=in_channels, out_channels=out_channels,
                channels=tuple(config.channels), strides=tuple(config.strides),
                num_res_units=config.num_res_units, norm=NORMS[config.norm], dropout=config.dropout)


class BatchAugment:
    """`UNetAugmentConfig` on whole batches: images [B, M, H, W] in [-1, 1], labels [B, 1, H, W] indices
    (H == W when rotations are on).  Every slice draws its own: a flip along each in-plane axis and a
    rotation by k x 90 degrees (k uniform in 1..3) move image and label together; Gaussian noise
    (its std drawn per slice from U(0, ``noise_std``), as MONAI's RandGaussianNoise samples it) and
    scaling by (1 + U(-f, f)) touch the image only.  All draws come from
    ``generator`` (the same numbers whatever is applied), so a seed fixes the augmentation."""

    def __init__(self, config: UNetAugmentConfig, generator: torch.Generator):
        self.config, self.generator = config, generator

    def _chosen(self, probability: float, batch: int) -> torch.Tensor:
        return torch.rand(batch, generator=self.generator) < probability

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B = images.shape[0]
        assert labels.shape[0] == B and labels.shape[1] == 1, (images.shape, labels.shape)
        c = self.config
        for axis in (2, 3):
            flip = self._chosen(c.flip_prob, B)
            if flip.any():
                images = torch.where(flip[:, None, None, None], images.flip(axis), images)
                labels = torch.where(flip[:, None, None, None], labels.flip(axis), labels)
        rotate, turns = self._chosen(c.rotate90_prob, B), torch.randint(1, 4, (B,), generator=self.generator)
        if rotate.any():
            images, labels = images.clone(), labels.clone()
            for k in (1, 2, 3):
                chosen = rotate & (turns == k)
                images[chosen] = torch.rot90(images[chosen], k, (2, 3))
                labels[chosen] = torch.rot90(labels[chosen], k, (2, 3))
        noisy, noise = self._chosen(c.noise_prob, B), torch.randn(images.shape, generator=self.generator)
        std = torch.rand(B, generator=self.generator) * c.noise_std
        scaled = self._chosen(c.scale_prob, B)
        factor = (torch.rand(B, generator=self.generator) * 2 - 1) * c.scale_factor
        images = images + torch.where(noisy[:, None, None, None], noise * std[:, None, None, None], 0.0)
        images = images * (1 + torch.where(scaled, factor, 0.0))[:, None, None, None]
        return images, labels


def collate_slices(items: list) -> tuple[torch.Tensor, torch.Tensor]:
    """Items (image [M, H, W], label [H, W], ...) -> (images float32 [B, M, H, W], labels int64 [B, 1, H, W])."""
    images, labels = default_collate([(item[0], item[1]) for item in items])
    return images.float(), labels.long()[:, None]


@dataclass
class TrainResult:
    """Outcome of `train_unet`: the best validation state (CPU tensors), where it was reached, the
    curve (one entry per validation: iteration, mean training loss since the last one, val_dice =
    the validation score of `validate`)."""

    best_state: dict[str, torch.Tensor]
    best_iteration: int
    best_val_dice: float
    iterations_run: int
    stopped_early: bool
    curve: list[dict] = field(default_factory=list)
    seconds: float = 0.0


class _BestState:
    """Keeps the best validation score and a CPU copy of the weights that reached it."""

    def __init__(self, model: torch.nn.Module):
        self.score, self.iteration, self.stale = -np.inf, 0, 0
        self.state = self._copy(model)

    @staticmethod
    def _copy(model: torch.nn.Module) -> dict[str, torch.Tensor]:
        return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}

    def update(self, score: float, iteration: int, model: torch.nn.Module) -> None:
        # NaN (no validation volume has foreground) never counts as an improvement.
        if score > self.score:
            self.score, self.iteration, self.stale = score, iteration, 0
            self.state = self._copy(model)
        else:
            self.stale += 1


class MixedBatchSampler(Sampler):
    """``steps`` batches of dataset indices: ``n_real`` drawn with replacement from [0, real_count)
    and ``batch_size - n_real`` from [real_count, total) in each batch, then shuffled together."""

    def __init__(self, real_count: int, total: int, batch_size: int, n_real: int, steps: int,
                 generator: torch.Generator):
        if not 0 < real_count < total or not 0 < n_real < batch_size:
            raise ValueError(f"a mixed batch needs real and synthetic slices and 0 < n_real < batch_size, got "
                             f"real_count={real_count}, total={total}, n_real={n_real}, batch_size={batch_size}")
        self.real_count, self.total, self.batch_size, self.n_real = real_count, total, batch_size, n_real
        self.steps, self.generator = steps, generator

    def __len__(self) -> int:
        return self.steps

    def __iter__(self):
        for _ in range(self.steps):
            real = torch.randint(0, self.real_count, (self.n_real,), generator=self.generator)
            synthetic = torch.randint(self.real_count, self.total, (self.batch_size - self.n_real,),
                                      generator=self.generator)
            batch = torch.cat([real, synthetic])
            yield batch[torch.randperm(self.batch_size, generator=self.generator)].tolist()


def make_loader(slices: TorchDataset, config: UNetTrainConfig, seed: int, steps: int | None = None,
                real_count: int | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Augmented batches (images [B, M, H, W], labels [B, 1, H, W]) for exactly ``steps`` (default: the
    config's iterations) x batch_size draws with replacement; the draws and the augmentation are
    seeded by ``seed``.  real_count: the first real_count items are real slices (the rest
    synthetic): with ``config.real_fraction`` set and both kinds present, every batch mixes them in
    that proportion (`MixedBatchSampler`)."""
    steps = config.iterations if steps is None else steps
    generator = torch.Generator().manual_seed(seed)
    augment = BatchAugment(config.augment, torch.Generator().manual_seed(seed + 1))
    total = len(slices)  # type: ignore[arg-type]
    if config.real_fraction is not None and real_count is not None and 0 < real_count < total:
        n_real = min(config.batch_size - 1, max(1, round(config.real_fraction * config.batch_size)))
        batches = MixedBatchSampler(real_count, total, config.batch_size, n_real, steps, generator)
        loader = DataLoader(slices, batch_sampler=batches, num_workers=config.num_workers, generator=generator,
                            collate_fn=collate_slices)
    else:
        sampler = RandomSampler(slices, replacement=True, num_samples=steps * config.batch_size, generator=generator)
        loader = DataLoader(slices, batch_size=config.batch_size, sampler=sampler, num_workers=config.num_workers,
                            generator=generator, drop_last=False, collate_fn=collate_slices)
    for images, labels in loader:
        yield augment(images, labels)


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, loss_fn: DiceCELoss,
               images: torch.Tensor, labels: torch.Tensor) -> float:
    """One Adam step on images [B, M, H, W], labels [B, 1, H, W]; returns the loss."""
    model.train()
    optimizer.zero_grad(set_to_none=True)
    logits = model(images)
    assert logits.shape[0] == images.shape[0] and logits.shape[2:] == images.shape[2:], logits.shape
    loss = loss_fn(logits, labels)
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def validate(model: torch.nn.Module, volumes: Sequence[tuple[np.ndarray, np.ndarray]], n_classes: int,
             batch_size: int, device: torch.device) -> float:
    """Mean over validation volumes (images [M, X, Y, Z], labels [X, Y, Z] indices) of the mean Dice
    over the non-background classes (`mean_class_dice`)."""
    scores = [mean_class_dice(predict_volume(model, images, batch_size, device), labels, n_classes)
              for images, labels in volumes]
    return float(np.mean(scores))


def _out_channels(model: torch.nn.Module) -> int:
    """Number of classes L a segmentation network predicts (its ``out_channels``)."""
    n = getattr(model, "out_channels", None)
    if n is None:
        raise ValueError(f"{type(model).__name__} has no out_channels attribute: cannot tell its number of classes")
    return int(n)


def train_unet(model: torch.nn.Module, slices: TorchDataset, val_volumes: Sequence[tuple[np.ndarray, np.ndarray]],
               config: UNetTrainConfig, seed: int, device: torch.device,
               log: Callable[[str, float, int], None] | None = None, progress: bool = False,
               steps: int | None = None, real_count: int | None = None) -> TrainResult:
    """Train ``model`` (already on ``device``) for ``steps`` (default: the config's iterations; see
    `run_steps`) under ``config`` (see module doc).

    slices: training items (image [M, H, W] in [-1, 1], label [H, W] indices, position), the first
    ``real_count`` of them real (for ``config.real_fraction``); val_volumes: validation patients
    as (images [M, X, Y, Z], labels [X, Y, Z]) (any sequence; empty: no validation, the last state
    is returned); log(tag, value, iteration): optional scalar logger (TensorBoard); progress: a
    tqdm bar over the steps (shown on a terminal only).
    """
    steps = config.iterations if steps is None else steps
    if not val_volumes and config.patience is not None:
        raise ValueError("early stopping (patience) needs at least one validation patient")
    started = time.time()
    n_classes = _out_channels(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    best = _BestState(model)
    curve: list[dict] = []
    losses: list[float] = []
    iteration, stopped_early = 0, False
    bar = tqdm(total=steps, desc="training", unit="step", leave=False, disable=None if progress else True)
    with bar:
        for images, labels in make_loader(slices, config, seed, steps, real_count):
            bar.update(1)
            iteration += 1
            losses.append(train_step(model, optimizer, loss_fn, images.to(device), labels.to(device)))
            if log is not None:
                log("train/loss", losses[-1], iteration)
            if iteration % config.val_every and iteration != steps:
                continue
            if not val_volumes:  # no validation: the last state is the one tested
                curve.append({"iteration": iteration, "train_loss": float(np.mean(losses)), "val_dice": None})
                losses = []
                continue
            score = validate(model, val_volumes, n_classes, config.batch_size, device)
            best.update(score, iteration, model)
            curve.append({"iteration": iteration, "train_loss": float(np.mean(losses)), "val_dice": score})
            bar.set_postfix(val_dice=f"{score:.3f}", best=f"{best.score:.3f}")
            if log is not None:
                log("val/mean_class_dice", score, iteration)
            losses = []
            if config.patience is not None and best.stale >= config.patience:
                stopped_early = True
                break
    if not val_volumes:
        return TrainResult(_BestState(model).state, iteration, math.nan, iteration, False, curve,
                           time.time() - started)
    return TrainResult(best.state, best.iteration, float(best.score), iteration, stopped_early, curve,
                       time.time() - started)


def measure_step_seconds(unet: UNetConfig, in_channels: int, out_channels: int, resolution: int, batch_size: int,
                         device: torch.device, steps: int = 3) -> tuple[float, float]:
    """(seconds per training step, seconds per slice of inference) of this U-Net on random slices
    [batch_size, in_channels, R, R] (means of ``steps`` after one warm-up): the units of `--dry-run`'s
    cost estimate (training, then validation and testing, which segment whole volumes)."""
    model = build_unet(unet, in_channels, out_channels).to(device)
    optimizer = torch.optim.Adam(model.parameters())
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    images = torch.rand(batch_size, in_channels, resolution, resolution, device=device) * 2 - 1
    labels = torch.randint(0, out_channels, (batch_size, 1, resolution, resolution), device=device)

    def timed(work) -> float:
        work()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        for _ in range(steps):
            work()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return (time.perf_counter() - started) / steps

    step = timed(lambda: train_step(model, optimizer, loss_fn, images, labels))
    model.eval()
    with torch.no_grad():
        inference = timed(lambda: model(images)) / batch_size
    return step, inference
