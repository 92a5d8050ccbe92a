"""GAN metrics: FID, KID, the feature extractors (offline default and Inception-v3 weights files),
mask-image consistency and the snapshot entry point GanMetrics."""
import math
import pathlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gan.consistency import ConsistencyConfig, mask_image_consistency, train_consistency_segmenter
from gan.feature_extractor import SliceTextureFeatures, extract_features, load_feature_extractor
from gan.inception import InceptionConfig, InceptionFeatures, save_inception_weights
from gan.metrics import (
    GanMetrics,
    MetricsConfig,
    compute_metrics,
    frechet_distance,
    kernel_inception_distance,
    validate_metrics,
)

NUM_CLASSES = 3  # background, body, lesion


def ellipse_slices(n: int, channels: int = 2, size: int = 32, seed: int = 0):
    """Phantom slices: a body ellipse (class 1) holding a lesion ellipse (class 2), each channel with
    its own contrast per class, plus pixel noise. Returns images [n, C, size, size] in [-1, 1] and
    label indices [n, size, size]."""
    generator = torch.Generator().manual_seed(seed)
    coords = torch.linspace(-1, 1, size)
    y, x = torch.meshgrid(coords, coords, indexing="ij")

    def ellipse(cx, cy, rx, ry, angle):
        u = (x - cx) * math.cos(angle) + (y - cy) * math.sin(angle)
        v = -(x - cx) * math.sin(angle) + (y - cy) * math.cos(angle)
        return (u / rx) ** 2 + (v / ry) ** 2 <= 1

    images = torch.full((n, channels, size, size), -0.9)
    labels = torch.zeros(n, size, size, dtype=torch.long)
    contrast = torch.linspace(-0.2, 0.6, channels)
    for i in range(n):
        r = torch.rand(8, generator=generator).tolist()
        cx, cy, angle = (r[0] - 0.5) * 0.2, (r[1] - 0.5) * 0.2, r[4] * math.pi
        body = ellipse(cx, cy, 0.55 + 0.3 * r[2], 0.45 + 0.3 * r[3], angle)
        lesion = body & ellipse(cx + (r[5] - 0.5) * 0.4, cy + (r[6] - 0.5) * 0.4,
                                0.12 + 0.15 * r[7], 0.1 + 0.15 * r[7], angle)
        labels[i][body], labels[i][lesion] = 1, 2
        for ch in range(channels):
            images[i, ch][body] = contrast[ch]
            images[i, ch][lesion] = 0.3 - 0.8 * contrast[ch]
    images += 0.08 * torch.randn(images.shape, generator=generator)
    return images.clamp(-1, 1), labels


@pytest.fixture(scope="module")
def real_train():
    return ellipse_slices(160, seed=0)


@pytest.fixture(scope="module")
def real_test():
    return ellipse_slices(96, seed=1)


@pytest.fixture(scope="module")
def segmenter(real_train):
    images, labels = real_train
    config = ConsistencyConfig(steps=60, batch_size=16)  # enough for these easy phantoms, < 1 s
    return train_consistency_segmenter(images, labels, NUM_CLASSES, seed=0, config=config)


# ---------------------------------------------------------------- FID


def _with_exact_moments(n: int, mean: np.ndarray, variance: np.ndarray, seed: int) -> np.ndarray:
    """[n, D] samples whose sample mean and (unbiased) sample covariance are exactly mean, diag(variance)."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, len(mean)))
    z -= z.mean(axis=0)
    z = z @ np.linalg.inv(np.linalg.cholesky(np.atleast_2d(np.cov(z, rowvar=False)))).T  # sample covariance = I
    return z * np.sqrt(variance) + mean


def test_fid_of_identical_sets_is_zero_and_grows_with_mean_shift():
    feats = np.random.default_rng(0).standard_normal((500, 16))
    assert frechet_distance(feats, feats) == pytest.approx(0.0, abs=1e-6)
    shifts = [0.0, 0.5, 1.0, 2.0]
    fids = [frechet_distance(feats, feats + shift) for shift in shifts]
    # A pure shift of the mean by s in every dimension adds exactly D s^2.
    assert fids == pytest.approx([16 * s**2 for s in shifts], abs=1e-6)


@pytest.mark.parametrize("dim", [1, 6])
def test_fid_matches_closed_form_for_diagonal_gaussians(dim):
    rng = np.random.default_rng(dim)
    mu1, mu2 = rng.normal(size=dim), rng.normal(size=dim)
    s1, s2 = rng.uniform(0.2, 3.0, dim), rng.uniform(0.2, 3.0, dim)
    feats_a = _with_exact_moments(400, mu1, s1, seed=1)
    feats_b = _with_exact_moments(300, mu2, s2, seed=2)
    closed_form = np.sum((mu1 - mu2) ** 2) + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))
    assert frechet_distance(feats_a, feats_b) == pytest.approx(closed_form, rel=1e-7)
    assert frechet_distance(torch.from_numpy(feats_a), torch.from_numpy(feats_b)) == pytest.approx(closed_form, rel=1e-7)


def test_fid_with_fewer_samples_than_dimensions_is_finite_and_symmetric():
    rng = np.random.default_rng(3)
    feats_a, feats_b = rng.standard_normal((40, 100)), rng.standard_normal((50, 100)) + 0.3
    fid = frechet_distance(feats_a, feats_b)
    assert np.isfinite(fid) and fid > 0
    assert frechet_distance(feats_b, feats_a) == pytest.approx(fid, rel=1e-6)


def test_fid_falls_back_to_the_eigenvalue_form_when_sqrtm_goes_complex(monkeypatch):
    rng = np.random.default_rng(4)
    s1, s2 = rng.uniform(0.2, 3.0, 5), rng.uniform(0.2, 3.0, 5)
    feats_a = _with_exact_moments(100, np.zeros(5), s1, seed=1)
    feats_b = _with_exact_moments(100, np.ones(5), s2, seed=2)
    closed_form = 5 + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))
    monkeypatch.setattr("scipy.linalg.sqrtm", lambda matrix: np.full(matrix.shape, 0.5 + 1j))
    assert frechet_distance(feats_a, feats_b) == pytest.approx(closed_form, rel=1e-7)


def test_fid_rejects_bad_features():
    with pytest.raises(ValueError, match="feature dimensions differ"):
        frechet_distance(np.zeros((5, 3)), np.zeros((5, 4)))
    with pytest.raises(ValueError, match="N >= 2"):
        frechet_distance(np.zeros((1, 3)), np.zeros((5, 3)))
    with pytest.raises(ValueError, match="NaN"):
        frechet_distance(np.full((5, 3), np.nan), np.zeros((5, 3)))


# ---------------------------------------------------------------- KID


def test_kid_single_subset_matches_direct_unbiased_mmd():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((12, 5)), rng.standard_normal((12, 5)) + 0.4
    kernel = lambda x, y: (x @ y / 5 + 1) ** 3  # noqa: E731
    m = 12
    k_aa = sum(kernel(a[i], a[j]) for i in range(m) for j in range(m) if i != j)
    k_bb = sum(kernel(b[i], b[j]) for i in range(m) for j in range(m) if i != j)
    k_ab = sum(kernel(a[i], b[j]) for i in range(m) for j in range(m))
    expected = (k_aa + k_bb) / (m * (m - 1)) - 2 * k_ab / m**2
    mean, std = kernel_inception_distance(a, b, num_subsets=1, max_subset_size=m)
    assert mean == pytest.approx(expected, rel=1e-10)
    assert std == 0.0


def test_kid_near_zero_for_one_distribution_and_positive_for_two():
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((400, 8)), rng.standard_normal((400, 8))
    same_mean, same_std = kernel_inception_distance(a, b, num_subsets=20, max_subset_size=200, seed=0)
    diff_mean, diff_std = kernel_inception_distance(a, b * 1.5 + 0.5, num_subsets=20, max_subset_size=200, seed=0)
    assert abs(same_mean) < 0.05 * diff_mean
    assert diff_mean > 5 * diff_std > 0
    # Seeded: the same seed gives the same subsets, and the global RNG is not used.
    assert kernel_inception_distance(a, b, num_subsets=5, max_subset_size=50, seed=3) == \
        kernel_inception_distance(a, b, num_subsets=5, max_subset_size=50, seed=3)


# ---------------------------------------------------------------- default extractor


@pytest.mark.parametrize("channels,size", [(1, 16), (3, 24), (5, 32), (9, 64)])
def test_default_extractor_accepts_any_channels_and_size_and_is_deterministic(channels, size):
    images = torch.rand(4, channels, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1
    first, second = SliceTextureFeatures(channels), load_feature_extractor(None, in_channels=channels)
    features = first(images)
    assert features.shape == (4, first.feature_dim)
    assert torch.isfinite(features).all()
    assert torch.equal(features, second(images))  # weights come from a fixed seed, not the global RNG
    assert not torch.allclose(features[0], features[1])


def test_default_extractor_feature_space_is_pinned():
    """FIDs of different runs are comparable only while the feature space stays the same: changing the
    extractor (weights seed, groups, scaling) must be a deliberate act that updates these values."""
    coords = torch.linspace(-1, 1, 24)
    y, x = torch.meshgrid(coords, coords, indexing="ij")
    disc = ((x**2 + y**2) < 0.5).float() * 2 - 1
    images = torch.stack([torch.sin(5 * x + 2 * y), (x * y).tanh(), disc])[None]
    features = SliceTextureFeatures(3)(images)[0]
    assert features.shape == (492,)
    assert features.sum().item() == pytest.approx(107.6582, rel=1e-4)
    assert features.norm().item() == pytest.approx(6.099957, rel=1e-4)
    assert features[:3].tolist() == pytest.approx([0.1065621, 0.0840240, 0.2037150], rel=1e-4)


def test_default_extractor_rejects_wrong_channels_and_tiny_images():
    extractor = SliceTextureFeatures(2)
    with pytest.raises(ValueError, match="built for 2 channels"):
        extractor(torch.zeros(1, 3, 32, 32))
    with pytest.raises(ValueError, match="at least 16x16"):
        extractor(torch.zeros(1, 2, 8, 8))


def test_default_extractor_ranks_degraded_sets_farther_than_held_out_real(real_train, real_test):
    train_images, _ = real_train
    test_images, _ = real_test
    blurred = F.avg_pool2d(F.pad(test_images, (1, 1, 1, 1), mode="reflect"), 3, stride=1)
    noised = (test_images + 0.25 * torch.randn(test_images.shape, generator=torch.Generator().manual_seed(7))).clamp(-1, 1)
    extractor = load_feature_extractor(None, in_channels=2)
    real = extract_features(extractor, train_images.numpy(), batch_size=50)  # arrays work as well
    held_out = extract_features(extractor, test_images, batch_size=50)
    floor_fid = frechet_distance(real, held_out)
    floor_kid, _ = kernel_inception_distance(real, held_out, num_subsets=10, max_subset_size=96)
    for degraded in (blurred, noised):
        feats = extract_features(extractor, degraded)
        assert frechet_distance(real, feats) > 5 * floor_fid
        assert kernel_inception_distance(real, feats, num_subsets=10, max_subset_size=96)[0] > 10 * abs(floor_kid)


# ---------------------------------------------------------------- Inception-v3 weights files


def _random_inception(in_channels: int, config=None) -> InceptionFeatures:
    """An Inception with He-normal conv weights and random BN statistics, so features are O(1)."""
    model = InceptionFeatures(in_channels, config)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, tensor in model.network.state_dict().items():
            if name.endswith("conv.weight"):
                fan_in = tensor[0].numel()
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * math.sqrt(2 / fan_in))
            elif name.endswith("bn.bias") or name.endswith("running_mean"):
                tensor.copy_(0.1 * torch.randn(tensor.shape, generator=generator))
    return model.eval()


def test_inception_weights_round_trip_through_safetensors_and_torch_state_dict(tmp_path):
    model = _random_inception(1)
    images = torch.rand(1, 1, 20, 20, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        expected = model(images)  # at the standard 299 x 299
        assert expected.shape == (1, 2048) and expected.abs().mean() > 1e-3
        from_safetensors = load_feature_extractor(save_inception_weights(model, tmp_path / "inception.safetensors"), in_channels=1)
        assert torch.equal(from_safetensors(images), expected)
        # A torch state dict carrying a classifier head (as torchvision's does) loads too; the head is ignored.
        state = dict(model.network.state_dict(), **{"fc.weight": torch.zeros(1000, 2048), "fc.bias": torch.zeros(1000)})
        torch.save(state, tmp_path / "inception.pth")
        assert torch.equal(load_feature_extractor(tmp_path / "inception.pth", in_channels=1)(images), expected)


def test_inception_channel_reductions(tmp_path):
    # 75 x 75 is the smallest input Inception-v3 takes; it keeps this test cheap.
    concat = _random_inception(2, InceptionConfig(channel_reduction="concat", resize=75))
    path = save_inception_weights(concat, tmp_path / "inception.safetensors")
    mean = load_feature_extractor(path, in_channels=2, inception_config=InceptionConfig(resize=75))
    images = torch.rand(1, 2, 16, 16, generator=torch.Generator().manual_seed(2)) * 2 - 1
    with torch.no_grad():
        features = concat(images)
        grey = F.interpolate(images[:, 1:2], size=(75, 75), mode="bilinear").expand(-1, 3, -1, -1)
        single = concat.network(grey)
        averaged = mean(images)
    assert features.shape == (1, 4096) and averaged.shape == (1, 2048)
    assert torch.allclose(features[:, 2048:], single, atol=1e-5)
    assert torch.allclose(averaged, (features[:, :2048] + features[:, 2048:]) / 2, atol=1e-5)


class _RunsCodeWhenUnpickled:
    def __init__(self, marker: pathlib.Path):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def test_inception_refuses_a_pickle_that_would_run_code(tmp_path):
    marker = tmp_path / "code_ran"
    torch.save({"Conv2d_1a_3x3.conv.weight": _RunsCodeWhenUnpickled(marker)}, tmp_path / "evil.pth")
    with pytest.raises(ValueError, match="evil.pth.*cannot be loaded safely"):
        load_feature_extractor(tmp_path / "evil.pth", in_channels=1)
    assert not marker.exists()


def test_inception_rejects_files_with_the_wrong_layout(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_feature_extractor(tmp_path / "absent.safetensors", in_channels=1)
    torch.save({"encoder.weight": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="other.pt does not match the Inception-v3 layout"):
        load_feature_extractor(tmp_path / "other.pt", in_channels=1)
    (tmp_path / "garbage.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(ValueError, match="garbage.safetensors is not a valid safetensors file"):
        load_feature_extractor(tmp_path / "garbage.safetensors", in_channels=1)


# ---------------------------------------------------------------- consistency


def test_consistency_is_high_for_matching_masks_and_low_for_shuffled(segmenter, real_test):
    images, labels = real_test
    matched = mask_image_consistency(segmenter, images, labels, NUM_CLASSES)
    shuffled = mask_image_consistency(segmenter, images, labels.roll(1, dims=0), NUM_CLASSES)
    assert set(matched) == {"dice_class_1", "dice_class_2", "dice_mean", "dice_foreground"}
    assert matched["dice_mean"] > 0.9 and matched["dice_class_2"] > 0.8
    assert shuffled["dice_class_2"] < 0.5
    assert shuffled["dice_mean"] < matched["dice_mean"] - 0.3


def test_consistency_segmenter_is_seeded_and_leaves_the_global_rng_alone(real_train):
    images, labels = real_train
    torch.manual_seed(123)
    before = torch.get_rng_state()
    first = train_consistency_segmenter(images[:32], labels[:32], NUM_CLASSES, steps=3, seed=4)
    assert torch.equal(torch.get_rng_state(), before)
    second = train_consistency_segmenter(images[:32], labels[:32], NUM_CLASSES, steps=3, seed=4)
    for (name, a), b in zip(first.state_dict().items(), second.state_dict().values()):
        assert torch.equal(a, b), name


def test_consistency_rejects_mismatched_inputs(segmenter, real_test):
    images, labels = real_test
    with pytest.raises(ValueError, match="label indices must lie in 0..2"):
        mask_image_consistency(segmenter, images, labels + 1, NUM_CLASSES)
    with pytest.raises(ValueError, match="do not match"):
        mask_image_consistency(segmenter, images[:4], labels[:5], NUM_CLASSES)


# ---------------------------------------------------------------- GanMetrics


class _CountingExtractor(torch.nn.Module):
    """The default extractor, counting how many images it has seen."""

    def __init__(self, in_channels):
        super().__init__()
        self.inner = SliceTextureFeatures(in_channels)
        self.in_channels, self.feature_dim, self.seen = in_channels, self.inner.feature_dim, 0

    def forward(self, images):
        self.seen += len(images)
        return self.inner(images)


def test_gan_metrics_caches_real_data_and_separates_good_from_bad_generators(real_train, real_test, segmenter):
    train_images, train_labels = real_train
    extractor = _CountingExtractor(2)
    config = MetricsConfig(num_gen=96, batch_size=40, kid_num_subsets=10)
    metrics = GanMetrics(train_images, train_labels.numpy().astype(np.uint8), NUM_CLASSES, config, extractor)
    metrics._segmenter = segmenter  # trained above with the same data; saves the test a training run
    calls = []

    def faithful(batch_index, batch_size):
        calls.append((batch_index, batch_size))
        return ellipse_slices(batch_size, seed=100 + batch_index)

    def unfaithful(batch_index, batch_size):
        images, labels = ellipse_slices(batch_size, seed=200 + batch_index)
        blurred = F.avg_pool2d(F.pad(images, (2, 2, 2, 2), mode="reflect"), 5, stride=1)
        return blurred, labels.flip(0)

    good = metrics(faithful)
    assert calls == [(0, 40), (1, 40), (2, 16)]
    assert extractor.seen == len(train_images) + 96
    bad = metrics(unfaithful)
    assert extractor.seen == len(train_images) + 2 * 96  # real features were not recomputed
    assert set(good) == {"fid", "kid_mean", "kid_std", "consistency_dice_class_1", "consistency_dice_class_2",
                         "consistency_dice_mean", "consistency_dice_foreground"}
    assert bad["fid"] > 5 * good["fid"]
    assert bad["kid_mean"] > good["kid_mean"]
    assert bad["consistency_dice_mean"] < good["consistency_dice_mean"] - 0.3

    floor = metrics.floor(*real_test)
    assert floor["fid"] < bad["fid"] / 5
    assert floor["consistency_dice_mean"] > 0.9


def test_gan_metrics_reads_only_the_selected_rows_of_a_memory_mapped_cache(real_train, tmp_path):
    images, labels = real_train
    np.save(tmp_path / "images.npy", images.numpy())
    np.save(tmp_path / "labels.npy", labels.numpy().astype(np.uint8))
    cached_images = np.load(tmp_path / "images.npy", mmap_mode="r")
    cached_labels = np.load(tmp_path / "labels.npy", mmap_mode="r")
    rows = np.arange(10, 130, 3)
    metrics = GanMetrics(cached_images, cached_labels, NUM_CLASSES, MetricsConfig(metrics=("fid",)), real_rows=rows)
    expected = extract_features(SliceTextureFeatures(2), images[rows])
    np.testing.assert_allclose(metrics.real_features, expected, rtol=1e-6, atol=1e-9)
    subsampled = GanMetrics(cached_images, cached_labels, NUM_CLASSES, MetricsConfig(metrics=("fid",), max_real=16),
                            real_rows=rows)
    assert subsampled.real_features.shape == (16, expected.shape[1])
    assert all(any(np.allclose(row, other, atol=1e-9) for other in expected) for row in subsampled.real_features)
    segmenter = train_consistency_segmenter(cached_images, cached_labels, NUM_CLASSES, steps=2, rows=rows)
    assert segmenter.in_channels == 2
    with pytest.raises(ValueError, match="real_rows must select"):
        GanMetrics(cached_images, cached_labels, NUM_CLASSES, real_rows=np.array([5, 500]))


def test_compute_metrics_on_masks_of_a_mask_only_generator(real_train):
    images, labels = real_train

    def masks_only(batch_index, batch_size):
        return None, ellipse_slices(batch_size, seed=300 + batch_index)[1]

    results = compute_metrics(masks_only, images, labels, NUM_CLASSES, metrics="fid,kid", num_gen=64, inputs="masks")
    assert set(results) == {"fid", "kid_mean", "kid_std"}
    assert np.isfinite(results["fid"]) and results["fid"] >= 0


def test_fid_on_pairs_sees_images_that_do_not_fit_their_masks(real_train):
    images, labels = real_train

    def pairs(shuffle):
        def generate(batch_index, batch_size):
            fake_images, fake_labels = ellipse_slices(batch_size, seed=400 + batch_index)
            return fake_images, fake_labels.roll(1, dims=0) if shuffle else fake_labels
        return generate

    config = MetricsConfig(metrics=("fid",), inputs="pairs", num_gen=96)
    metrics = GanMetrics(images, labels, NUM_CLASSES, config)
    assert metrics.extractor.in_channels == 2 + NUM_CLASSES
    assert metrics(pairs(shuffle=True))["fid"] > 10 * metrics(pairs(shuffle=False))["fid"]


def test_validate_metrics_fails_early_with_clear_messages():
    assert validate_metrics("fid, KID", True, True) == ("fid", "kid")
    assert validate_metrics("none", False, True) == ()
    with pytest.raises(ValueError, match="unknown metric"):
        validate_metrics("fid,is", True, True)
    with pytest.raises(ValueError, match="consistency metric needs a generator producing both"):
        validate_metrics("consistency", False, True, inputs="masks")
    with pytest.raises(ValueError, match="FID/KID on .images. need a generator producing images; this one produces masks"):
        validate_metrics("fid", False, True)
