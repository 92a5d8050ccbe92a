"""The study's U-Net training: the fixed budget, paired augmentation of image and label, learning,
best-state selection and early stopping on validation patients."""
import dataclasses

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from segmentation.study.runner import torch_threads
from segmentation.study.study_config import UNetAugmentConfig, UNetTrainConfig, UNetConfig
from segmentation.study.unet import BatchAugment, build_unet, make_loader, train_unet

@pytest.fixture(autouse=True)
def one_thread():
    """Tiny networks train fastest on one thread, above all on a busy machine."""
    with torch_threads(1):
        yield


NO_AUGMENT = UNetAugmentConfig(flip_prob=0.0, rotate90_prob=0.0, noise_prob=0.0, scale_prob=0.0)
TINY = UNetConfig(channels=(4, 8), strides=(2,), num_res_units=0)


def squares(n: int, size: int = 16, seed: int = 0) -> TensorDataset:
    """Slices with one bright square on noise: image [2, S, S] in [-1, 1], label [S, S] = the square."""
    rng = np.random.default_rng(seed)
    images = rng.uniform(-1, -0.5, size=(n, 2, size, size)).astype(np.float32)
    labels = np.zeros((n, size, size), dtype=np.int64)
    for i in range(n):
        x, y = rng.integers(1, size - 6, size=2)
        images[i, :, x:x + 5, y:y + 5] = 0.8
        labels[i, x:x + 5, y:y + 5] = 1
    return TensorDataset(torch.from_numpy(images), torch.from_numpy(labels), torch.zeros(n))


def as_volumes(data: TensorDataset) -> list[tuple[np.ndarray, np.ndarray]]:
    images, labels, _ = data.tensors
    return [(images.numpy().transpose(1, 2, 3, 0), labels.numpy().astype(np.uint8).transpose(1, 2, 0))]


def test_budget_is_the_same_whatever_the_pool_size():
    config = UNetTrainConfig(iterations=5, batch_size=3, augment=NO_AUGMENT)
    for pool in (2, 40):
        batches = [images.shape for images, _ in make_loader(squares(pool), config, seed=0)]
        assert batches == [(3, 2, 16, 16)] * 5


def batch_of(data: TensorDataset) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels, _ = data.tensors
    return images.clone(), labels[:, None].clone()


def test_augmentation_moves_image_and_label_together():
    config = UNetAugmentConfig(flip_prob=0.5, rotate90_prob=0.5, noise_prob=0.0, scale_prob=0.0)
    source_images, source_labels = batch_of(squares(64))
    images, labels = BatchAugment(config, torch.Generator().manual_seed(3))(source_images, source_labels)
    assert images.shape == (64, 2, 16, 16) and labels.shape == (64, 1, 16, 16) and labels.dtype == torch.long
    np.testing.assert_array_equal(labels[:, 0].numpy(), (images[:, 0] > 0).numpy().astype(np.int64))
    # each slice draws its own: some moved, some not; every result is one of the 16 flip/rotation images
    moved = [not torch.equal(labels[i], source_labels[i]) for i in range(64)]
    assert 0 < sum(moved) < 64
    for i in range(64):
        variants = [torch.rot90(v, k, (1, 2)) for v in (source_labels[i], source_labels[i].flip(1),
                                                       source_labels[i].flip(2), source_labels[i].flip(1).flip(2))
                    for k in range(4)]
        assert any(torch.equal(labels[i], v) for v in variants)


def test_image_only_transforms_leave_the_label_and_follow_their_settings():
    config = UNetAugmentConfig(flip_prob=0.0, rotate90_prob=0.0, noise_prob=1.0, noise_std=0.3, scale_prob=0.0)
    source_images, source_labels = batch_of(squares(32))
    images, labels = BatchAugment(config, torch.Generator().manual_seed(0))(source_images, source_labels)
    assert torch.equal(labels, source_labels)
    per_slice = (images - source_images).flatten(1).std(dim=1)              # each slice's own std ~ U(0, 0.3)
    assert float(per_slice.max()) <= 0.3 * 1.1 and float(per_slice.min()) < 0.1
    assert float(per_slice.mean()) == pytest.approx(0.15, abs=0.05)
    scaling = UNetAugmentConfig(flip_prob=0.0, rotate90_prob=0.0, noise_prob=0.0, scale_prob=1.0, scale_factor=0.1)
    images, _ = BatchAugment(scaling, torch.Generator().manual_seed(0))(source_images, source_labels)
    ratio = (images / source_images).flatten(1)
    assert torch.allclose(ratio, ratio[:, :1], atol=1e-5)           # one factor per slice ...
    assert 0.9 <= float(ratio.min()) and float(ratio.max()) <= 1.1 and float(ratio[:, 0].std()) > 0.02  # ... in 1 +- 0.1


def test_augmentation_is_fixed_by_its_seed():
    config = UNetAugmentConfig()
    first = BatchAugment(config, torch.Generator().manual_seed(5))(*batch_of(squares(8)))
    again = BatchAugment(config, torch.Generator().manual_seed(5))(*batch_of(squares(8)))
    other = BatchAugment(config, torch.Generator().manual_seed(6))(*batch_of(squares(8)))
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not torch.equal(first[0], other[0])


def test_training_learns_and_keeps_the_best_validation_state():
    torch.manual_seed(0)
    model = build_unet(TINY, in_channels=2, out_channels=2)
    config = UNetTrainConfig(iterations=30, batch_size=8, learning_rate=0.02, val_every=10, augment=NO_AUGMENT)
    result = train_unet(model, squares(32), as_volumes(squares(8, seed=1)), config, seed=0,
                        device=torch.device("cpu"))
    assert [c["iteration"] for c in result.curve] == [10, 20, 30]
    assert result.iterations_run == 30 and not result.stopped_early
    assert result.best_val_dice == max(c["val_dice"] for c in result.curve) > 0.8
    assert result.curve[-1]["train_loss"] < result.curve[0]["train_loss"]
    best = next(c for c in result.curve if c["val_dice"] == result.best_val_dice)
    assert result.best_iteration == best["iteration"]
    assert set(result.best_state) == set(model.state_dict())


def test_patience_stops_when_validation_does_not_improve():
    torch.manual_seed(0)
    model = build_unet(TINY, in_channels=2, out_channels=2)
    frozen = UNetTrainConfig(iterations=20, batch_size=4, learning_rate=1e-12, val_every=2, patience=2,
                         augment=NO_AUGMENT)  # weights do not move: no validation improves on the first
    result = train_unet(model, squares(8), as_volumes(squares(4, seed=1)), frozen, seed=0, device=torch.device("cpu"))
    assert result.stopped_early and result.iterations_run == 6 and result.best_iteration == 2
    with pytest.raises(ValueError, match="validation patient"):
        train_unet(model, squares(8), [], frozen, 0, torch.device("cpu"))


def test_without_validation_the_last_state_of_the_budget_is_returned():
    torch.manual_seed(0)
    model = build_unet(TINY, in_channels=2, out_channels=2)
    config = UNetTrainConfig(iterations=6, batch_size=4, learning_rate=1e-2, val_every=2, augment=NO_AUGMENT)
    result = train_unet(model, squares(8), [], config, seed=0, device=torch.device("cpu"))
    assert result.iterations_run == result.best_iteration == 6 and np.isnan(result.best_val_dice)
    assert all(torch.equal(result.best_state[k], v) for k, v in model.state_dict().items())
    assert [c["iteration"] for c in result.curve] == [2, 4, 6]


def test_real_fraction_fixes_the_share_of_real_slices_in_every_batch():
    config = UNetTrainConfig(iterations=7, batch_size=8, real_fraction=0.25, augment=NO_AUGMENT)
    real, synthetic = squares(5), squares(40, seed=2)
    pool = torch.utils.data.ConcatDataset([real, synthetic])
    loader = make_loader(IndexedItems(pool), config, seed=0, steps=7, real_count=len(real))
    batches = [indices for _, indices in loader]
    assert len(batches) == 7
    assert all(int((b < len(real)).sum()) == 2 and b.numel() == 8 for b in batches)
    uniform = make_loader(IndexedItems(pool), dataclasses.replace(config, real_fraction=None), seed=0, steps=7,
                          real_count=len(real))
    assert sum(b.numel() for _, b in uniform) == 56


class IndexedItems(torch.utils.data.Dataset):
    """(image, label) items whose label is the item's index, so a batch shows where it was drawn."""

    def __init__(self, pool):
        self.pool = pool

    def __len__(self):
        return len(self.pool)

    def __getitem__(self, index):
        image, _ = self.pool[index][:2]
        return image, torch.full((1, 1), index, dtype=torch.long), torch.tensor(0.0)


def test_epoch_budget_scales_steps_with_the_run_s_own_data():
    from segmentation.study.unet import run_steps

    steps = UNetTrainConfig(iterations=300, batch_size=16)
    epochs = UNetTrainConfig(budget="epochs", epochs=10, batch_size=16)
    assert run_steps(steps, 48) == run_steps(steps, 480) == 300
    assert run_steps(epochs, 48) == 30 and run_steps(epochs, 50) == 32 and run_steps(epochs, 480) == 300
