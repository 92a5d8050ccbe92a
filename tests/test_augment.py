"""Mask-aware ADA: image and mask move together, intensity ops spare masks, p adapts correctly."""
import math

import pytest
import torch

from gan.augment import GEOMETRIC_OPS, INTENSITY_OPS, AdaController, MaskAwareAugment


def _blobs(n: int = 8, size: int = 32, seed: int = 0) -> torch.Tensor:
    """Images [N,1,S,S] of a few bright rectangles on a dark background, in [-1, 1]."""
    gen = torch.Generator().manual_seed(seed)
    img = -torch.ones(n, 1, size, size)
    for i in range(n):
        for _ in range(3):
            y0, x0 = torch.randint(0, size - 8, (2,), generator=gen).tolist()
            h, w = torch.randint(4, 10, (2,), generator=gen).tolist()
            img[i, 0, y0:y0 + h, x0:x0 + w] = 0.8
    return img


def _stack_with_mask(img: torch.Tensor) -> torch.Tensor:
    """Image ⊕ two-class one-hot mask (in {-1, 1}) equal to thresholding the image at 0."""
    fg = (img > 0).float()
    mask = torch.cat([1 - fg, fg], dim=1) * 2 - 1
    return torch.cat([img, mask], dim=1)


@pytest.mark.parametrize("ops", [("xflip", "rotate90", "xint"), GEOMETRIC_OPS])
def test_geometric_ops_move_image_and_mask_together(ops):
    torch.manual_seed(1)
    x = _stack_with_mask(_blobs())
    aug = MaskAwareAugment(image_channels=1, label_channels=2, ops=ops, p=1.0)
    y = aug(x)
    assert y.shape == x.shape
    assert not torch.equal(y, x)                       # something happened
    mask = y[:, 1:]
    assert set(torch.unique(mask).tolist()) <= {-1.0, 1.0}   # nearest resampling keeps one-hot
    assert torch.all(mask.sum(1) == 0)                  # exactly one class per pixel: (+1) + (-1)
    agree = ((y[:, :1] > 0) == (mask[:, 1:2] > 0)).float().mean().item()
    if set(ops) <= {"xflip", "rotate90", "xint"}:
        assert agree == 1.0                             # integer ops: exact pixel permutations
    else:
        assert agree > 0.97                             # bilinear vs nearest differ only at edges


def test_geometric_ops_exact_for_integer_transforms():
    torch.manual_seed(3)
    img = torch.randn(16, 2, 16, 16)
    aug = MaskAwareAugment(image_channels=1, label_channels=1, ops=("xflip", "rotate90"), p=1.0)
    out = aug(img)
    # every output sample is one of the 8 dihedral transforms of its input, same for both channels
    for i in range(16):
        candidates = []
        for k in range(4):
            r = torch.rot90(img[i], k, dims=(1, 2))
            candidates += [r, torch.flip(r, dims=(2,))]
        assert any(torch.allclose(out[i], c, atol=1e-5) for c in candidates)


def test_intensity_ops_leave_mask_channels_untouched():
    torch.manual_seed(0)
    x = _stack_with_mask(_blobs())
    aug = MaskAwareAugment(image_channels=1, label_channels=2, ops=INTENSITY_OPS, p=1.0)
    y = aug(x)
    assert torch.equal(y[:, 1:], x[:, 1:])
    assert not torch.allclose(y[:, :1], x[:, :1])


def test_mask_only_input_and_p_zero_is_identity():
    x = _stack_with_mask(_blobs())[:, 1:]
    aug = MaskAwareAugment(image_channels=0, label_channels=2, p=0.0)
    assert aug(x) is x
    aug.set_p(1.0)
    y = aug(x)
    assert set(torch.unique(y).tolist()) <= {-1.0, 1.0}


def test_augment_is_differentiable():
    x = _stack_with_mask(_blobs(4)).requires_grad_(True)
    aug = MaskAwareAugment(image_channels=1, label_channels=2, p=1.0)
    aug(x).square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="unknown augmentation op"):
        MaskAwareAugment(1, 2, ops=("hue",))
    aug = MaskAwareAugment(1, 2, p=0.5)
    with pytest.raises(ValueError, match="channels"):
        aug(torch.zeros(2, 4, 8, 8))


def test_ada_p_adapts_in_the_right_direction():
    aug = MaskAwareAugment(1, 2, p=0.2)
    ada = AdaController(aug, batch_size=16, target=0.6, interval=4, speed_kimg=1.0)
    step = 16 * 4 / 1000.0
    ada.accumulate(torch.ones(64, 1))                   # D overconfident on reals: sign mean 1
    assert math.isclose(ada.update(), 0.2 + step)
    ada.accumulate(-torch.ones(64, 1))                  # D wrong on reals: sign mean -1
    ada.accumulate(torch.ones(16, 1))
    assert math.isclose(ada.update(), 0.2)
    for _ in range(10):                                 # p never goes below 0
        ada.accumulate(-torch.ones(8, 1))
        ada.update()
    assert ada.p == 0.0
    state = ada.state_dict()
    other = AdaController(MaskAwareAugment(1, 2), batch_size=16)
    other.load_state_dict(state)
    assert other.p == ada.p
