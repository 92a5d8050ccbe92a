"""The three generator variants, their discriminators and the pair pipeline (16-32 px, few channels)."""
import pytest
import torch

from gan import (NetworkConfig, PairSampler, build_discriminator, build_generator, channels_to_labels,
                 labels_to_channels)

RES = 16


def tiny_cfg(c_dim: int = 0, resolution: int = RES) -> NetworkConfig:
    return NetworkConfig(resolution=resolution, z_dim=16, w_dim=16, c_dim=c_dim, mapping_layers=2,
                         channel_base=256, channel_max=16)


def random_mask(n: int, num_labels: int, res: int = RES) -> torch.Tensor:
    return labels_to_channels(torch.randint(0, num_labels, (n, res, res)), num_labels)


@pytest.mark.parametrize("variant", ["baseline", "mask", "conditional"])
@pytest.mark.parametrize("M,L", [(1, 2), (4, 4)])
@pytest.mark.parametrize("c_dim", [0, 1])
def test_output_shapes_and_ranges(variant, M, L, c_dim):
    torch.manual_seed(0)
    G = build_generator(variant, tiny_cfg(c_dim), image_channels=M, label_channels=L).eval()
    D = build_discriminator(variant, tiny_cfg(c_dim), image_channels=M, label_channels=L)
    out_channels = {"baseline": M + L, "mask": L, "conditional": M}[variant]
    assert (G.variant, G.z_dim, G.c_dim, G.w_dim, G.img_resolution) == (variant, 16, c_dim, 16, RES)
    assert G.out_channels == out_channels
    assert G.mask_channels == (L if variant == "conditional" else 0)
    assert G.num_ws == G.synthesis.num_ws == 2 * 4 - 2
    N = 4
    z, c = torch.randn(N, 16), torch.rand(N, c_dim)
    mask = random_mask(N, L) if variant == "conditional" else None
    with torch.no_grad():
        out = G(z, c, mask=mask, noise_mode="const")
    assert out.shape == (N, out_channels, RES, RES) and out.dtype == torch.float32
    # Untrained StyleGAN2 outputs are unclamped but O(1): finite, not collapsed, not exploding.
    assert torch.isfinite(out).all()
    assert 0.05 < float(out.std()) < 20.0
    assert not torch.allclose(out[0], out[1])
    if variant != "conditional":                                 # mask channels decode to labels
        labels = channels_to_labels(out[:, -L:])
        assert labels.shape == (N, RES, RES) and 0 <= int(labels.min()) and int(labels.max()) < L
    d_in = torch.cat([out, mask], dim=1) if variant == "conditional" else out
    assert d_in.shape[1] == (L if variant == "mask" else M + L)
    with torch.no_grad():
        logits = D(d_in, c)
    assert logits.shape == (N, 1) and torch.isfinite(logits).all()


def test_conditional_needs_its_mask_and_others_refuse_one():
    G = build_generator("conditional", tiny_cfg(), image_channels=2, label_channels=3)
    z = torch.randn(2, 16)
    with pytest.raises(ValueError, match="needs a mask"):
        G(z, None)
    with pytest.raises(ValueError, match=r"mask must have shape \[2, 3, 16, 16\]"):
        G(z, None, mask=random_mask(2, 4))
    with pytest.raises(ValueError, match="takes no mask"):
        build_generator("baseline", tiny_cfg(), 2, 3)(z, None, mask=random_mask(2, 3))


@pytest.mark.parametrize("variant,M,L,message", [
    ("stylegan3", 1, 2, "unknown variant"),
    ("baseline", 0, 2, "image_channels"),
    ("mask", 1, 1, "label_channels"),
])
def test_bad_channel_counts_and_variants(variant, M, L, message):
    with pytest.raises(ValueError, match=message):
        build_generator(variant, tiny_cfg(), image_channels=M, label_channels=L)
    with pytest.raises(ValueError, match=message):
        build_discriminator(variant, tiny_cfg(), image_channels=M, label_channels=L)


def test_discriminator_sees_the_pair():
    """The conditional D takes image ⊕ mask; swapping in a misaligned mask changes its verdict."""
    torch.manual_seed(0)
    D = build_discriminator("conditional", tiny_cfg(), image_channels=2, label_channels=3)
    img = torch.randn(4, 2, RES, RES)
    mask = random_mask(4, 3)
    aligned = D(torch.cat([img, mask], dim=1), None)
    shifted = D(torch.cat([img, mask.roll(5, dims=3)], dim=1), None)
    assert not torch.allclose(aligned, shifted)
    with pytest.raises(ValueError, match=r"images \[N, 5, 16, 16\]"):
        D(img, None)


def test_conditional_output_follows_the_mask_locally():
    """Perturbing one region of the mask changes the image most there (spatial injection)."""
    res, L = 32, 3
    torch.manual_seed(0)
    G = build_generator("conditional", tiny_cfg(resolution=res), image_channels=2, label_channels=L).eval()
    z = torch.randn(4, 16)
    labels = torch.zeros(4, res, res, dtype=torch.long)
    labels[:, res // 2:] = 1                                     # two-class anatomy
    perturbed = labels.clone()
    perturbed[:, 4:12, 4:12] = 2                                 # a new lesion top-left
    with torch.no_grad():
        base = G(z, None, mask=labels_to_channels(labels, L), noise_mode="const")
        moved = G(z, None, mask=labels_to_channels(perturbed, L), noise_mode="const")
    diff = (moved - base).abs().mean(dim=(0, 1))                 # [res, res]
    inside = float(diff[4:12, 4:12].mean())
    far = float(diff[20:, 20:].mean())                           # >= 8 px from the lesion
    assert inside > 0
    assert inside > 4 * far, f"change inside {inside:.4f} vs far away {far:.4f}"


def test_pair_sampler_returns_aligned_pairs():
    torch.manual_seed(0)
    M, L = 2, 4
    mask_G = build_generator("mask", tiny_cfg(c_dim=1), image_channels=M, label_channels=L).eval()
    image_G = build_generator("conditional", tiny_cfg(c_dim=1), image_channels=M, label_channels=L).eval()
    sampler = PairSampler(mask_G, image_G)
    z_mask, z_image, c = torch.randn(3, 16), torch.randn(3, 16), torch.rand(3, 1)
    images, labels = sampler(z_mask, z_image, c, truncation_psi=0.7)
    assert images.shape == (3, M, RES, RES) and labels.shape == (3, RES, RES)
    assert labels.dtype == torch.long and 0 <= int(labels.min()) and int(labels.max()) < L
    expected_labels = channels_to_labels(mask_G(z_mask, c, truncation_psi=0.7, noise_mode="const"))
    assert torch.equal(labels, expected_labels)
    expected_images = image_G(z_image, c, mask=labels_to_channels(labels, L), truncation_psi=0.7,
                              noise_mode="const")
    assert torch.allclose(images, expected_images)
    a, _ = sampler(z_mask, z_image, c)
    b, _ = sampler(z_mask, z_image, c)
    assert torch.equal(a, b)                                     # const noise: reproducible


def test_pair_sampler_checks_its_generators():
    mask_G = build_generator("mask", tiny_cfg(), 2, 4)
    with pytest.raises(ValueError, match="'mask' generator first"):
        PairSampler(build_generator("baseline", tiny_cfg(), 2, 4), mask_G)
    with pytest.raises(ValueError, match="expects 3"):
        PairSampler(mask_G, build_generator("conditional", tiny_cfg(), 2, 3))
    with pytest.raises(ValueError, match="resolutions differ"):
        PairSampler(mask_G, build_generator("conditional", tiny_cfg(resolution=32), 2, 4))
    with pytest.raises(ValueError, match="c_dim differs"):
        PairSampler(mask_G, build_generator("conditional", tiny_cfg(c_dim=1), 2, 4))


@pytest.mark.parametrize("name, out_channels, d_channels, takes_mask", [
    ("baseline", 3 + 4, 3 + 4, False), ("mask", 4, 4, False), ("conditional", 3, 3 + 4, True)])
def test_the_variant_table_is_what_the_networks_are(name, out_channels, d_channels, takes_mask):
    from gan.variants import variant_spec

    M, L = 3, 4       # the module docstring's table, for M modalities and L classes
    spec = variant_spec(name)
    cfg = NetworkConfig(resolution=16, z_dim=8, w_dim=8, channel_base=64, channel_max=8)
    G, D = build_generator(name, cfg, M, L), build_discriminator(name, cfg, M, L)
    assert spec.out_channels(M, L) == G.out_channels == out_channels
    assert spec.d_channels(M, L) == d_channels and spec.needs_mask == takes_mask == (G.mask_channels == L)
    D(torch.zeros(2, d_channels, 16, 16), torch.zeros(2, 0))
    out = torch.randn(2, out_channels, 16, 16) * 2
    given = torch.randint(0, L, (2, 16, 16))
    images, labels = spec.split(out, M, given)
    assert (images is None) == (not spec.makes_images) and (images is None or images.abs().max() <= 1)
    expected = given if not spec.makes_masks else channels_to_labels(out[:, -L:])
    assert torch.equal(labels, expected)
    assert ("consistency" in spec.metrics) == spec.makes_images
    with pytest.raises(ValueError, match="unknown variant 'pair'; choose one of baseline, mask, conditional"):
        variant_spec("pair")
