"""Parameter counts equal the reference StyleGAN2 architecture (the layer inventory of NVIDIA's training/networks.py).

The expected counts are derived here, independently of the network code, from the inventory:
mapping = [embed c_dim -> w_dim] + `layers` FC layers with bias; synthesis = 4x4 const + conv1 +
to-output, then per resolution conv0 (up) + conv1 + to-output; modulated conv = affine (w_dim -> in,
with bias) + weight [out, in, 3, 3] + bias [out] + 1 noise strength; to-output = affine + weight
[C, in, 1, 1] + bias [C]; D block = [from-image 1x1, first only] + conv0 + conv1 (down) + skip
(1x1, no bias); epilogue = conv (ch4 + 1 -> ch4) + fc (16 ch4 -> ch4) + out (-> 1 or cmap_dim),
plus, when conditioned, D's 8-layer mapping of c.
"""
import pytest

from gan import NetworkConfig, build_discriminator, build_generator


def ch(r: int, base: int, cmax: int) -> int:
    return min(base // r, cmax)


def fc(n_in: int, n_out: int, bias: bool = True) -> int:
    return n_in * n_out + (n_out if bias else 0)


def conv(n_in: int, n_out: int, k: int, bias: bool = True) -> int:
    return n_in * n_out * k * k + (n_out if bias else 0)


def modconv(w_dim: int, n_in: int, n_out: int) -> int:
    return fc(w_dim, n_in) + conv(n_in, n_out, 3) + 1          # affine + conv + noise strength


def to_output(w_dim: int, n_in: int, n_out: int) -> int:
    return fc(w_dim, n_in) + conv(n_in, n_out, 1)


def mapping_params(z_dim: int, c_dim: int, w_dim: int, layers: int) -> int:
    embed = fc(c_dim, w_dim) if c_dim else 0
    first_in = z_dim + (w_dim if c_dim else 0)
    return embed + fc(first_in, w_dim) + (layers - 1) * fc(w_dim, w_dim)


def reference_generator_params(res, z_dim, w_dim, c_dim, layers, base, cmax, out_channels, extra_in=None):
    """Reference StyleGAN2 G; ``extra_in`` {r: e(r)} widens conv1's input (conditional variant)."""
    extra_in = extra_in or {}
    c4 = ch(4, base, cmax)
    total = mapping_params(z_dim, c_dim, w_dim, layers)
    total += c4 * 4 * 4 + modconv(w_dim, c4 + extra_in.get(4, 0), c4) + to_output(w_dim, c4, out_channels)
    r = 8
    while r <= res:
        cr, cprev = ch(r, base, cmax), ch(r // 2, base, cmax)
        total += modconv(w_dim, cprev, cr) + modconv(w_dim, cr + extra_in.get(r, 0), cr)
        total += to_output(w_dim, cr, out_channels)
        r *= 2
    return total


def reference_discriminator_params(res, in_channels, c_dim, base, cmax, cmap_dim=None, mbstd_channels=1):
    c4 = ch(4, base, cmax)
    total = conv(in_channels, ch(res, base, cmax), 1)              # from-image, first block only
    r = res
    while r >= 8:
        cr, cnext = ch(r, base, cmax), ch(r // 2, base, cmax)
        total += conv(cr, cr, 3) + conv(cr, cnext, 3) + conv(cr, cnext, 1, bias=False)
        r //= 2
    cmap = 0 if c_dim == 0 else (cmap_dim or c4)
    total += conv(c4 + mbstd_channels, c4, 3) + fc(c4 * 16, c4) + fc(c4, cmap or 1)
    if c_dim:
        total += mapping_params(0, c_dim, cmap, 8)
    return total


def mask_encoder_params(res, num_labels, base, cmax):
    """Our conditional variant's encoder: 1x1 from-mask, per resolution a 3x3 conv, 3x3 down convs."""
    e = {r: min(base // r, cmax) for r in [2 ** i for i in range(2, res.bit_length())]}
    total = conv(num_labels, e[res], 1)
    total += sum(conv(e[r], e[r], 3) for r in e)
    total += sum(conv(e[r], e[r // 2], 3) for r in e if r > 4)
    return total, e


def count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_closing_note_config_matches_reference():
    """z = w = 512, 8 mapping layers, channel_base 32768, channel_max 512, 5 channels, 64x64."""
    cfg = NetworkConfig(resolution=64, z_dim=512, w_dim=512, c_dim=0, mapping_layers=8,
                        channel_base=32768, channel_max=512)
    G = build_generator("baseline", cfg, image_channels=3, label_channels=2)     # M + L = 5 out
    D = build_discriminator("baseline", cfg, image_channels=3, label_channels=2)
    expected_G = reference_generator_params(64, 512, 512, 0, 8, 32768, 512, 5)
    expected_D = reference_discriminator_params(64, 5, 0, 32768, 512)
    assert count(G) == expected_G
    assert count(D) == expected_D
    print(f"\nG params {count(G):,}  D params {count(D):,}")


@pytest.mark.parametrize("variant", ["baseline", "mask", "conditional"])
@pytest.mark.parametrize("res,z,w,c_dim,layers,base,cmax,M,L", [
    (16, 32, 24, 0, 2, 256, 32, 1, 2),
    (32, 16, 16, 1, 2, 512, 16, 4, 4),
    (64, 8, 12, 3, 1, 1024, 64, 2, 3),
])
def test_small_configs_match_reference(variant, res, z, w, c_dim, layers, base, cmax, M, L):
    cfg = NetworkConfig(resolution=res, z_dim=z, w_dim=w, c_dim=c_dim, mapping_layers=layers,
                        channel_base=base, channel_max=cmax)
    G = build_generator(variant, cfg, image_channels=M, label_channels=L)
    D = build_discriminator(variant, cfg, image_channels=M, label_channels=L)
    g_out = {"baseline": M + L, "mask": L, "conditional": M}[variant]
    d_in = L if variant == "mask" else M + L
    extra_in, encoder = {}, 0
    if variant == "conditional":
        encoder, extra_in = mask_encoder_params(res, L, base // 2, cmax // 2)
        assert count(G.synthesis.mask_encoder) == encoder
    expected_G = reference_generator_params(res, z, w, c_dim, layers, base, cmax, g_out, extra_in) + encoder
    assert count(G) == expected_G
    assert count(D) == reference_discriminator_params(res, d_in, c_dim, base, cmax)


def test_cmap_dim_and_mbstd_channels_change_the_head():
    cfg = NetworkConfig(resolution=16, z_dim=8, w_dim=8, c_dim=2, mapping_layers=2, channel_base=128,
                        channel_max=16, cmap_dim=5, mbstd_num_channels=2)
    D = build_discriminator("mask", cfg, image_channels=1, label_channels=3)
    assert count(D) == reference_discriminator_params(16, 3, 2, 128, 16, cmap_dim=5, mbstd_channels=2)
