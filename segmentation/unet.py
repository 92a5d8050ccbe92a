"""The study's segmentation model and its training: a MONAI 2D U-Net on axial slices.

Model: ``monai.networks.nets.UNet(spatial_dims=2, in_channels=M, out_channels=L, channels,
strides, num_res_units)`` from `UNetConfig`; loss ``monai.losses.DiceCELoss`` (softmax, one-hot
targets); Adam.  Augmentation: MONAI dictionary transforms per slice (flips and 90-degree rotations
of image and label, Gaussian noise and intensity scaling of the image only; `AugmentConfig`).

The optimisation budget is the same for every run of a study, whatever was added:

    every run takes ``iterations`` Adam steps on batches of ``batch_size`` slices drawn uniformly
    with replacement from the pooled training slices (real + synthetic patients), so synthetic
    patients change what the network sees, never how many steps or slices it gets.

The network is validated every ``val_every`` steps (and after the last) on the fold's real
validation patients only: the mean over their reassembled volumes of the mean Dice over the
non-background classes (small structures weigh as much as large ones).  The best validation state
is returned for testing; with ``patience`` set, training stops after that many validations
without improvement (a run may then end before the budget, never after it).
"""
from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from monai.data import DataLoader, get_track_meta, set_track_meta
from monai.losses import DiceCELoss
from monai.networks.nets import UNet
from monai.transforms import Compose, RandFlipd, RandGaussianNoised, RandRotate90d, RandScaleIntensityd
from monai.utils import convert_to_tensor
from torch.utils.data import Dataset as TorchDataset
from torch.utils.data import RandomSampler
from tqdm.auto import tqdm

from segmentation.evaluation import mean_class_dice, predict_volume
from segmentation.study_config import AugmentConfig, TrainConfig, UNetConfig

BUDGET_RULE = ("every run takes `iterations` Adam steps on batches of `batch_size` slices drawn uniformly with "
               "replacement from the pooled real + synthetic training slices: synthetic patients change what is "
               "seen, never how many steps or slices; early stopping (patience) may only end a run sooner")

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


def build_augmentation(config: AugmentConfig) -> Compose:
    """Dictionary transforms on {"image": [M, H, W] in [-1, 1], "label": [1, H, W] indices}."""
    both = ["image", "label"]
    return Compose([
        RandFlipd(keys=both, prob=config.flip_prob, spatial_axis=0),
        RandFlipd(keys=both, prob=config.flip_prob, spatial_axis=1),
        RandRotate90d(keys=both, prob=config.rotate90_prob, max_k=3, spatial_axes=(0, 1)),
        RandGaussianNoised(keys=["image"], prob=config.noise_prob, mean=0.0, std=config.noise_std),
        RandScaleIntensityd(keys=["image"], factors=config.scale_factor, prob=config.scale_prob),
    ])


class AugmentedSlices(TorchDataset):
    """Wraps a dataset of (image [M, H, W], label [H, W], position) items: item i -> (image float32
    [M, H, W], label int64 [1, H, W]) after ``transform`` (None: unchanged)."""

    def __init__(self, slices: TorchDataset, transform: Compose | None):
        self.slices = slices
        self.transform = transform

    def __len__(self) -> int:
        return len(self.slices)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, label, _ = self.slices[index]
        item = {"image": image, "label": label[None]}
        if self.transform is not None:
            item = self.transform(item)
        # Plain tensors even where meta tracking is on: a MetaTensor slows every later torch call.
        image = convert_to_tensor(item["image"], dtype=torch.float32, track_meta=False).contiguous()
        label = convert_to_tensor(item["label"], dtype=torch.long, track_meta=False).contiguous()
        return image, label


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


@contextlib.contextmanager
def plain_tensors() -> Iterator[None]:
    """MONAI transforms return plain tensors inside the block (no MetaTensor bookkeeping, about 4x
    faster per slice); the previous setting is restored after."""
    previous = get_track_meta()
    set_track_meta(False)
    try:
        yield
    finally:
        set_track_meta(previous)


def make_loader(slices: TorchDataset, config: TrainConfig, seed: int) -> DataLoader:
    """Batches (images [B, M, H, W], labels [B, 1, H, W]) for exactly iterations x batch_size draws
    with replacement; the draws and the augmentation are seeded by ``seed``."""
    transform = build_augmentation(config.augment)
    transform.set_random_state(seed=seed)
    data = AugmentedSlices(slices, transform)
    generator = torch.Generator().manual_seed(seed)
    sampler = RandomSampler(data, replacement=True, num_samples=config.iterations * config.batch_size,
                            generator=generator)
    return DataLoader(data, batch_size=config.batch_size, sampler=sampler, num_workers=config.num_workers,
                      generator=generator, drop_last=False)


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
               config: TrainConfig, seed: int, device: torch.device,
               log: Callable[[str, float, int], None] | None = None, progress: bool = False) -> TrainResult:
    """Train ``model`` (already on ``device``) under the fixed budget of ``config`` (see module doc).

    slices: training items (image [M, H, W] in [-1, 1], label [H, W] indices, position);
    val_volumes: the real validation patients as (images [M, X, Y, Z], labels [X, Y, Z]) (any sequence);
    log(tag, value, iteration): optional scalar logger (TensorBoard); progress: a tqdm bar over the
    steps (shown on a terminal only).
    """
    if not val_volumes:
        raise ValueError("training needs at least one real validation patient")
    started = time.time()
    n_classes = _out_channels(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    best = _BestState(model)
    curve: list[dict] = []
    losses: list[float] = []
    iteration, stopped_early = 0, False
    bar = tqdm(total=config.iterations, desc="training", unit="step", leave=False, disable=None if progress else True)
    with plain_tensors(), bar:
        for images, labels in make_loader(slices, config, seed):
            bar.update(1)
            iteration += 1
            losses.append(train_step(model, optimizer, loss_fn, images.to(device), labels.to(device)))
            if log is not None:
                log("train/loss", losses[-1], iteration)
            if iteration % config.val_every and iteration != config.iterations:
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
    return TrainResult(best.state, best.iteration, float(best.score), iteration, stopped_early, curve,
                       time.time() - started)


def measure_step_seconds(unet: UNetConfig, in_channels: int, out_channels: int, resolution: int, batch_size: int,
                         device: torch.device, steps: int = 3) -> float:
    """Seconds per training step of this U-Net on random slices [batch_size, in_channels, R, R]
    (mean of ``steps`` after one warm-up): the unit of `--dry-run`'s cost estimate."""
    model = build_unet(unet, in_channels, out_channels).to(device)
    optimizer = torch.optim.Adam(model.parameters())
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    images = torch.rand(batch_size, in_channels, resolution, resolution, device=device) * 2 - 1
    labels = torch.randint(0, out_channels, (batch_size, 1, resolution, resolution), device=device)
    train_step(model, optimizer, loss_fn, images, labels)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    for _ in range(steps):
        train_step(model, optimizer, loss_fn, images, labels)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - started) / steps
