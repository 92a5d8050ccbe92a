"""StyleGAN2 building blocks: equalised-lr layers, mapping, synthesis, discriminator, masks."""
import math
import os

import pytest
import torch

from gan import (MappingNetwork, NetworkConfig, SynthesisNetwork, build_discriminator, build_generator,
                 channels_to_labels, labels_to_channels, ops)
from gan.config import channels_at
from gan.discriminator import MinibatchStdLayer
from gan.layers import Conv2dLayer, FullyConnectedLayer, ModulatedConvLayer
from gan.mapping import normalize_2nd_moment
from gan.synthesis import fp16_resolutions


def tiny_cfg(**overrides) -> NetworkConfig:
    fields = dict(resolution=16, z_dim=16, w_dim=16, c_dim=0, mapping_layers=2, channel_base=256,
                  channel_max=16)
    fields.update(overrides)
    return NetworkConfig(**fields)


# ---------------------------------------------------------------------------------------------
# equalised-lr layers


def test_fully_connected_equalised_lr_keeps_unit_variance():
    torch.manual_seed(0)
    layer = FullyConnectedLayer(512, 512)
    y = layer(torch.randn(256, 512)).detach()
    assert abs(float(y.std()) - 1.0) < 0.05
    lrelu = FullyConnectedLayer(512, 512, activation="lrelu")
    y = lrelu(torch.randn(256, 512)).detach()
    assert abs(float(y.square().mean().sqrt()) - 1.0) < 0.1     # sqrt(2) gain restores the scale


def test_lr_multiplier_scales_stored_weights_not_outputs():
    torch.manual_seed(0)
    slow = FullyConnectedLayer(64, 64, lr_multiplier=0.01, bias_init=0.5)
    assert abs(float(slow.weight.detach().std()) - 100.0) < 10.0         # stored N(0,1)/lr_mult
    y = slow(torch.zeros(3, 64))
    assert torch.allclose(y, torch.full_like(y, 0.5))            # effective bias = bias_init


def test_conv_layer_resampling_shapes_and_clamp():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 8)
    assert Conv2dLayer(3, 5, 3)(x).shape == (2, 5, 8, 8)
    assert Conv2dLayer(3, 5, 3, down=2)(x).shape == (2, 5, 4, 4)
    assert Conv2dLayer(3, 5, 1, up=2)(x).shape == (2, 5, 16, 16)
    clamped = Conv2dLayer(3, 5, 3, activation="lrelu", conv_clamp=0.1)(x * 100).detach()
    assert float(clamped.abs().max()) <= 0.1 + 1e-6


def test_modulated_layer_styles_start_at_one_and_noise_strength_at_zero():
    torch.manual_seed(0)
    layer = ModulatedConvLayer(4, 6, w_dim=8, resolution=8).requires_grad_(False)
    assert torch.allclose(layer.affine(torch.zeros(1, 8)), torch.ones(1, 4))
    assert float(layer.noise_strength) == 0.0
    x, w = torch.randn(2, 4, 8, 8), torch.randn(2, 8)
    assert torch.equal(layer(x, w, noise_mode="random"), layer(x, w, noise_mode="none"))
    layer.noise_strength.fill_(1.0)
    assert not torch.equal(layer(x, w, noise_mode="random"), layer(x, w, noise_mode="none"))
    assert torch.equal(layer(x, w, noise_mode="const"), layer(x, w, noise_mode="const"))
    with pytest.raises(ValueError, match="noise_mode"):
        layer(x, w, noise_mode="fixed")


def test_demodulation_gives_unit_output_variance():
    torch.manual_seed(0)
    layer = ModulatedConvLayer(64, 64, w_dim=16, resolution=16, activation="linear").requires_grad_(False)
    x = torch.randn(4, 64, 16, 16)
    w = torch.randn(4, 16) * 3                                   # large styles: removed by demod
    y = layer(x, w, noise_mode="none")
    assert abs(float(y[:, :, 1:-1, 1:-1].std()) - 1.0) < 0.1


# ---------------------------------------------------------------------------------------------
# mapping


def test_normalize_2nd_moment_puts_z_on_the_sphere():
    z = torch.randn(5, 32) * 7
    assert torch.allclose(normalize_2nd_moment(z).square().mean(dim=1), torch.ones(5), atol=1e-5)


def test_mapping_is_scale_invariant_in_z_and_uses_c():
    torch.manual_seed(0)
    mapping = MappingNetwork(z_dim=8, c_dim=2, w_dim=8, num_ws=3, num_layers=2)
    z, c = torch.randn(4, 8), torch.rand(4, 2)
    ws = mapping(z, c)
    assert ws.shape == (4, 3, 8)
    assert torch.allclose(ws, mapping(z * 5, c), atol=1e-5)       # z normalised by 2nd moment
    assert not torch.allclose(ws, mapping(z, c + 1))
    assert torch.equal(ws[:, 0], ws[:, 2])                       # one w broadcast to every layer


def test_w_avg_tracking_and_truncation():
    torch.manual_seed(0)
    mapping = MappingNetwork(z_dim=8, c_dim=0, w_dim=8, num_ws=4, num_layers=2, w_avg_beta=0.995)
    z = torch.randn(16, 8)
    w = mapping(z, None)[:, 0]
    mapping(z, None, update_emas=True)
    assert torch.allclose(mapping.w_avg, 0.005 * w.mean(dim=0), atol=1e-6)   # lerp from 0, beta 0.995
    for _ in range(3):
        mapping(torch.randn(16, 8), None, update_emas=True)
    truncated = mapping(z, None, truncation_psi=0.0)
    assert torch.allclose(truncated, mapping.w_avg.expand_as(truncated))
    half = mapping(z, None, truncation_psi=0.5)
    assert torch.allclose(half, mapping.w_avg + 0.5 * (mapping(z, None) - mapping.w_avg), atol=1e-6)
    cut = mapping(z, None, truncation_psi=0.0, truncation_cutoff=2)
    assert torch.allclose(cut[:, :2], mapping.w_avg.expand(16, 2, 8))
    assert torch.equal(cut[:, 2:], mapping(z, None)[:, 2:])


def test_generator_truncation_psi_zero_gives_w_avg_image():
    torch.manual_seed(0)
    G = build_generator("baseline", tiny_cfg(), image_channels=1, label_channels=2).eval()
    assert not G.mapping.w_avg.any()
    G(torch.randn(32, 16), None, update_emas=True)              # training forward tracks w_avg
    assert G.mapping.w_avg.any()
    a = G(torch.randn(3, 16), None, truncation_psi=0.0, noise_mode="const")
    assert torch.allclose(a[0], a[1], atol=1e-5) and torch.allclose(a[0], a[2], atol=1e-5)
    ws = G.mapping.w_avg.expand(1, G.num_ws, -1)
    assert torch.allclose(a[:1], G.synthesis(ws, noise_mode="const"), atol=1e-5)


def test_mapping_input_errors():
    mapping = MappingNetwork(z_dim=8, c_dim=1, w_dim=8, num_ws=2, num_layers=1)
    with pytest.raises(ValueError, match=r"z of shape \[N, 8\]"):
        mapping(torch.randn(2, 7), torch.rand(2, 1))
    with pytest.raises(ValueError, match=r"c of shape \[N, 1\]"):
        mapping(torch.randn(2, 8), None)
    with pytest.raises(ValueError, match="rows"):
        mapping(torch.randn(2, 8), torch.rand(3, 1))
    unconditioned = MappingNetwork(z_dim=8, c_dim=0, w_dim=8, num_ws=2, num_layers=1)
    assert unconditioned(torch.randn(2, 8), torch.zeros(2, 0)).shape == (2, 2, 8)
    with pytest.raises(ValueError, match="unconditioned"):
        unconditioned(torch.randn(2, 8), torch.rand(2, 1))


# ---------------------------------------------------------------------------------------------
# synthesis


def test_synthesis_num_ws_and_every_w_is_used():
    torch.manual_seed(0)
    net = SynthesisNetwork(w_dim=8, resolution=32, img_channels=3, channel_base=256, channel_max=16)
    assert net.num_ws == 2 * 5 - 2                               # 2 log2(res) - 2
    ws = torch.randn(2, net.num_ws, 8, requires_grad=True)
    net(ws, noise_mode="const").square().sum().backward()
    assert (ws.grad.abs().sum(dim=(0, 2)) > 0).all()


def test_style_mixing_uses_the_second_latent_after_the_crossover():
    torch.manual_seed(0)
    G = build_generator("mask", tiny_cfg(), image_channels=1, label_channels=3).eval()
    z1, z2 = torch.randn(2, 16), torch.randn(2, 16)
    ws1, ws2 = G.mapping(z1, None), G.mapping(z2, None)
    crossover = 3
    mixed = torch.cat([ws1[:, :crossover], ws2[:, crossover:]], dim=1)
    img1 = G.synthesis(ws1, noise_mode="const")
    img2 = G.synthesis(ws2, noise_mode="const")
    img_mixed = G.synthesis(mixed, noise_mode="const")
    assert not torch.allclose(img_mixed, img1) and not torch.allclose(img_mixed, img2)
    assert torch.allclose(G(z1, None, noise_mode="const"), img1, atol=1e-6)


def test_modulated_conv_forms_agree_and_cpu_uses_scale_conv_scale():
    torch.manual_seed(0)
    G = build_generator("baseline", tiny_cfg(), image_channels=2, label_channels=2).eval()
    ws = G.mapping(torch.randn(3, 16), None)
    grouped = G.synthesis(ws, noise_mode="const", fused_modconv=True)
    scaled = G.synthesis(ws, noise_mode="const", fused_modconv=False)
    assert torch.allclose(grouped, scaled, atol=1e-5)
    assert torch.equal(G.synthesis(ws, noise_mode="const"), scaled)     # the CPU choice, batch > 1
    block = G.synthesis.blocks[-1]
    assert block.choose_fused_modconv(1, torch.device("cpu"), torch.float32)
    assert block.choose_fused_modconv(8, torch.device("cuda"), torch.float32)
    assert not block.choose_fused_modconv(8, torch.device("cuda"), torch.float16)


def test_fp16_blocks_are_the_highest_resolutions_and_stay_fp32_on_cpu():
    assert fp16_resolutions(256, 4) == {32, 64, 128, 256}
    assert fp16_resolutions(16, 4) == {8, 16}                    # never the 4x4 block
    assert fp16_resolutions(64, 0) == set()
    torch.manual_seed(0)
    G16 = build_generator("baseline", tiny_cfg(num_fp16_res=2), 2, 2).eval()
    G32 = build_generator("baseline", tiny_cfg(num_fp16_res=0), 2, 2).eval()
    G32.load_state_dict(G16.state_dict())
    z = torch.randn(2, 16)
    out = G16(z, None, noise_mode="const")
    assert out.dtype == torch.float32
    assert torch.equal(out, G32(z, None, noise_mode="const"))


# ---------------------------------------------------------------------------------------------
# discriminator


def test_minibatch_std_matches_the_formula():
    torch.manual_seed(0)
    x = torch.randn(8, 6, 4, 4)
    y = MinibatchStdLayer(group_size=4, num_channels=2)(x)
    assert y.shape == (8, 8, 4, 4)
    # Sample n is grouped with n + 2, n + 4, n + 6 (N / G = 2 groups interleaved).
    group = x[[1, 3, 5, 7]]
    std = (group.var(dim=0, unbiased=False) + 1e-8).sqrt()       # [6, 4, 4]
    expected = torch.stack([std[:3].mean(), std[3:].mean()])
    assert torch.allclose(y[3, 6:, 0, 0], expected, atol=1e-6)
    assert torch.equal(y[:, :6], x)
    with pytest.raises(ValueError, match="multiple of the group size"):
        MinibatchStdLayer(group_size=4)(torch.randn(6, 2, 4, 4))


def test_discriminator_projection_conditioning():
    torch.manual_seed(0)
    D = build_discriminator("mask", tiny_cfg(c_dim=1), image_channels=1, label_channels=3)
    x = torch.randn(4, 3, 16, 16)
    a, b = D(x, torch.zeros(4, 1)), D(x, torch.ones(4, 1))
    assert a.shape == (4, 1) and not torch.allclose(a, b)
    with pytest.raises(ValueError, match=r"c \[N, 1\]"):
        D(x, None)
    with pytest.raises(ValueError, match=r"images \[N, 3, 16, 16\]"):
        D(torch.randn(4, 2, 16, 16), torch.zeros(4, 1))


@pytest.mark.parametrize("variant", ["baseline", "mask", "conditional"])
def test_gradients_reach_every_parameter(variant):
    torch.manual_seed(0)
    cfg = tiny_cfg(c_dim=1)
    G = build_generator(variant, cfg, image_channels=2, label_channels=3).train()
    D = build_discriminator(variant, cfg, image_channels=2, label_channels=3).train()
    with torch.no_grad():                                        # noise strengths start at 0
        for name, p in G.named_parameters():
            if name.endswith("noise_strength"):
                p.fill_(0.1)
    z, c = torch.randn(4, 16), torch.rand(4, 1)
    mask = labels_to_channels(torch.randint(0, 3, (4, 16, 16)), 3)
    out = G(z, c, mask=mask if variant == "conditional" else None)
    d_in = torch.cat([out, mask], dim=1) if variant == "conditional" else out
    D(d_in, c).sum().backward()
    for module in (G, D):
        missing = [n for n, p in module.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
        assert not missing, f"no gradient for {missing}"
    if variant == "conditional":
        assert any(n.startswith("synthesis.mask_encoder.") for n, _ in G.named_parameters())


def test_second_order_gradients_for_r1_and_path_length():
    """R1 differentiates D's input gradient; path-length regularisation G's ws gradient."""
    torch.manual_seed(0)
    cfg = tiny_cfg(c_dim=1)
    G = build_generator("baseline", cfg, image_channels=1, label_channels=2).train()
    D = build_discriminator("baseline", cfg, image_channels=1, label_channels=2).train()
    real = torch.randn(4, 3, 16, 16, requires_grad=True)
    (grad_real,) = torch.autograd.grad(D(real, torch.rand(4, 1)).sum(), real, create_graph=True)
    grad_real.square().sum().backward()                          # R1 penalty
    assert all(torch.isfinite(p.grad).all() for p in D.parameters() if p.grad is not None)
    assert D.blocks[0].conv0.weight.grad.abs().sum() > 0
    ws = G.mapping(torch.randn(2, 16), torch.rand(2, 1))
    img = G.synthesis(ws)
    (grad_ws,) = torch.autograd.grad((img * torch.randn_like(img)).sum(), ws, create_graph=True)
    grad_ws.square().sum().backward()                            # path-length penalty
    assert G.synthesis.blocks[-1].conv1.weight.grad.abs().sum() > 0
    assert G.mapping.layers[0].weight.grad.abs().sum() > 0


def fused_ops_runnable() -> bool:
    on_gpu = torch.cuda.is_available()
    return ops.triton_available() and (on_gpu or os.environ.get("TRITON_INTERPRET") == "1")


@pytest.mark.skipif(not fused_ops_runnable(), reason="needs triton and a GPU or TRITON_INTERPRET=1")
def test_fused_ops_path_matches_reference_for_g_and_d():
    """The whole conditional G + D, forward and backward, on the fused (Triton) ops: on CPU this
    runs the kernels under the interpreter, so the networks are tiny."""
    cfg = NetworkConfig(resolution=16, z_dim=8, w_dim=8, c_dim=1, mapping_layers=1, channel_base=64,
                        channel_max=8, d_mapping_layers=1)
    torch.manual_seed(0)
    G = build_generator("conditional", cfg, image_channels=1, label_channels=2).train()
    D = build_discriminator("conditional", cfg, image_channels=1, label_channels=2).train()
    z, c = torch.randn(2, 8), torch.rand(2, 1)
    mask = labels_to_channels(torch.randint(0, 2, (2, 16, 16)), 2)
    results = {}
    previous = ops.get_backend()
    try:
        for backend in ("ref", "fused"):
            ops.set_backend(backend)
            G.zero_grad()
            D.zero_grad()
            img = G(z, c, mask=mask, noise_mode="const")
            logits = D(torch.cat([img, mask], dim=1), c)
            logits.sum().backward()
            grads = torch.cat([p.grad.flatten() for p in [*G.parameters(), *D.parameters()]])
            results[backend] = (img.detach(), logits.detach(), grads)
    finally:
        ops.set_backend(previous)
    for ref, fused in zip(results["ref"], results["fused"]):
        assert torch.allclose(ref, fused, rtol=1e-4, atol=1e-5)


def test_determinism_for_a_fixed_seed():
    def run():
        torch.manual_seed(123)
        G = build_generator("conditional", tiny_cfg(c_dim=1), 2, 3)
        D = build_discriminator("conditional", tiny_cfg(c_dim=1), 2, 3)
        z, c = torch.randn(2, 16), torch.rand(2, 1)
        mask = labels_to_channels(torch.randint(0, 3, (2, 16, 16)), 3)
        img = G(z, c, mask=mask, noise_mode="random")
        return img, D(torch.cat([img, mask], dim=1), c)
    (img_a, logit_a), (img_b, logit_b) = run(), run()
    assert torch.equal(img_a, img_b) and torch.equal(logit_a, logit_b)


# ---------------------------------------------------------------------------------------------
# masks and configs


def test_labels_channels_round_trip_and_errors():
    labels = torch.randint(0, 4, (2, 5, 6))
    channels = labels_to_channels(labels, 4)
    assert channels.shape == (2, 4, 5, 6) and set(channels.unique().tolist()) == {-1.0, 1.0}
    assert torch.equal((channels > 0).sum(dim=1), torch.ones(2, 5, 6, dtype=torch.long))
    assert torch.equal(channels_to_labels(channels), labels)
    with pytest.raises(ValueError, match="0..3"):
        labels_to_channels(torch.full((1, 2, 2), 4), 4)
    with pytest.raises(ValueError, match="integer"):
        labels_to_channels(labels.float(), 4)
    with pytest.raises(ValueError, match="at least 2"):
        labels_to_channels(labels, 1)
    with pytest.raises(ValueError, match=r"\[N, L >= 2, H, W\]"):
        channels_to_labels(torch.randn(2, 5, 6))


@pytest.mark.parametrize("resolution", [16, 512])
def test_resolution_range_ends_build_and_run(resolution):
    torch.manual_seed(0)
    cfg = tiny_cfg(resolution=resolution, channel_base=512, channel_max=8)   # 1 channel at 512
    G = build_generator("conditional", cfg, image_channels=1, label_channels=2).eval()
    D = build_discriminator("conditional", cfg, image_channels=1, label_channels=2)
    mask = labels_to_channels(torch.zeros(1, resolution, resolution, dtype=torch.long), 2)
    with torch.no_grad():
        img = G(torch.randn(1, 16), None, mask=mask, noise_mode="none")
        logits = D(torch.cat([img, mask], dim=1), None)
    assert img.shape == (1, 1, resolution, resolution) and logits.shape == (1, 1)
    assert G.num_ws == 2 * int(math.log2(resolution)) - 2


@pytest.mark.parametrize("resolution", [8, 24, 1024, 100])
def test_bad_resolution_is_refused(resolution):
    with pytest.raises(ValueError, match="power of two in 16...512"):
        build_generator("baseline", tiny_cfg(resolution=resolution), 1, 2)
    with pytest.raises(ValueError, match="power of two in 16...512"):
        build_discriminator("baseline", tiny_cfg(resolution=resolution), 1, 2)


def test_auto_channel_base_follows_resolution():
    assert NetworkConfig(resolution=256).resolved().channel_base == 16384
    assert NetworkConfig(resolution=512).resolved().channel_base == 32768
    assert channels_at(64, 32768, 512) == 512 and channels_at(256, 16384, 512) == 64
    assert channels_at(512, 128, 16) == 1                         # never zero channels
    assert math.isclose(NetworkConfig().resolved().mapping_lr_mult, 0.01)
