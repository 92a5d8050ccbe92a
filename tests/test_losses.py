"""StyleGAN2 losses with tiny stand-in networks: finite values, R1 gradient-of-gradient, PL mean."""
import pytest
import torch
from torch import nn

from gan.augment import MaskAwareAugment
from gan.losses import StyleGAN2Loss

M, L, RES, Z, W, NUM_WS = 2, 3, 8, 6, 5, 4


class TinyMapping(nn.Module):
    def __init__(self, c_dim: int):
        super().__init__()
        self.fc = nn.Linear(Z + c_dim, W)

    def forward(self, z, c, update_emas=False):
        w = torch.nn.functional.leaky_relu(self.fc(torch.cat([z, c], dim=1)), 0.2)
        return w[:, None, :].repeat(1, NUM_WS, 1)             # [N, num_ws, w_dim]


class TinySynthesis(nn.Module):
    def __init__(self, out_channels: int, mask_channels: int):
        super().__init__()
        self.out_channels = out_channels
        self.fc = nn.Linear(NUM_WS * W, out_channels * RES * RES)
        self.mask_conv = nn.Conv2d(mask_channels, out_channels, 1) if mask_channels else None

    def forward(self, ws, mask=None, update_emas=False):
        x = self.fc(ws.flatten(1)).view(-1, self.out_channels, RES, RES)
        if self.mask_conv is not None:
            x = x + self.mask_conv(mask)
        return torch.tanh(x)


class TinyG(nn.Module):
    def __init__(self, variant: str, c_dim: int = 1):
        super().__init__()
        out = {"baseline": M + L, "mask": L, "conditional": M}[variant]
        self.mapping = TinyMapping(c_dim)
        self.synthesis = TinySynthesis(out, L if variant == "conditional" else 0)


class TinyD(nn.Module):
    def __init__(self, in_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 4, 3, padding=1)
        self.fc = nn.Linear(4 * RES * RES + 1, 1)

    def forward(self, x, c):
        h = torch.nn.functional.softplus(self.conv(x))
        return self.fc(torch.cat([h.flatten(1), c], dim=1))


def _batch(n=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    img = torch.rand(n, M, RES, RES, generator=gen) * 2 - 1
    labels = torch.randint(L, (n, RES, RES), generator=gen)
    mask = torch.nn.functional.one_hot(labels, L).permute(0, 3, 1, 2).float() * 2 - 1
    c = torch.rand(n, 1, generator=gen)
    z = torch.randn(n, Z, generator=gen)
    return img, mask, c, z


@pytest.mark.parametrize("variant", ["baseline", "mask", "conditional"])
@pytest.mark.parametrize("phase", ["Gmain", "Greg", "Dmain", "Dreg", "Gboth", "Dboth"])
def test_every_phase_is_finite_and_reaches_the_right_network(variant, phase):
    torch.manual_seed(0)
    d_in = {"baseline": M + L, "mask": L, "conditional": M + L}[variant]
    G, D = TinyG(variant), TinyD(d_in)
    aug = MaskAwareAugment(M if variant != "mask" else 0, L, p=0.5)
    loss = StyleGAN2Loss(G, D, variant, augment=aug, r1_gamma=1.0)
    img, mask, c, z = _batch()
    stats = loss.accumulate_gradients(phase, img, mask, c, z, c, mask, gain=1.0)
    assert stats and all(torch.isfinite(torch.tensor(v)) for v in stats.values())
    g_grads = [p.grad for p in G.parameters() if p.grad is not None]
    d_grads = [p.grad for p in D.parameters() if p.grad is not None]
    if phase.startswith("G"):
        assert g_grads and all(torch.isfinite(g).all() for g in g_grads)
        assert any(g.abs().sum() > 0 for g in g_grads)
    else:
        assert not g_grads                               # D phases never touch G's weights
        assert d_grads and all(torch.isfinite(g).all() for g in d_grads)


def test_r1_gradient_of_gradient_matches_the_analytic_value():
    # D(x) = <w, x> + b: ||grad_x D||^2 = ||w||^2, so d(gamma/2 ||w||^2)/dw = gamma * w exactly.
    class LinearD(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(L * RES * RES, 1)

        def forward(self, x, c):
            return self.fc(x.flatten(1))

    D = LinearD()
    loss = StyleGAN2Loss(TinyG("mask"), D, "mask", r1_gamma=3.0)
    img, mask, c, z = _batch()
    stats = loss.accumulate_gradients("Dreg", img, mask, c, z, c, None, gain=1.0)
    w = D.fc.weight.detach()
    assert torch.allclose(D.fc.weight.grad, 3.0 * w, rtol=1e-5, atol=1e-7)
    assert stats["loss/r1"] == pytest.approx(1.5 * float(w.square().sum()), rel=1e-5)


def test_conditional_discriminator_sees_the_conditioning_mask():
    seen = []

    class RecordingD(TinyD):
        def forward(self, x, c):
            seen.append(x.detach().clone())
            return super().forward(x, c)

    G, D = TinyG("conditional"), RecordingD(M + L)
    loss = StyleGAN2Loss(G, D, "conditional", style_mixing_prob=0.0)
    img, mask, c, z = _batch()
    loss.accumulate_gradients("Dmain", img, mask, c, z, c, mask, gain=1.0)
    fake, real = seen
    assert torch.equal(fake[:, M:], mask) and torch.equal(real[:, M:], mask)
    assert torch.equal(real[:, :M], img)


def test_path_length_mean_is_tracked():
    torch.manual_seed(0)
    loss = StyleGAN2Loss(TinyG("baseline"), TinyD(M + L), "baseline", pl_decay=0.5)
    img, mask, c, z = _batch()
    stats = loss.accumulate_gradients("Greg", img, mask, c, z, c, None, gain=1.0)
    loss.finish_pl_phase()
    assert loss.pl_mean.item() == pytest.approx(0.5 * stats["pl/lengths"], rel=1e-5)
    assert loss.pl_mean.item() > 0


def test_style_mixing_replaces_a_suffix_of_the_ws():
    torch.manual_seed(0)
    G = TinyG("mask")
    loss = StyleGAN2Loss(G, TinyD(L), "mask", style_mixing_prob=1.0)
    _, _, c, z = _batch()
    _, ws = loss.run_G(z, c, None)
    plain = G.mapping(z, c)
    assert torch.equal(ws[:, 0], plain[:, 0])            # layer 0 always from z
    assert not torch.equal(ws, plain)                    # some suffix comes from another z


def test_unknown_variant_and_phase_are_refused():
    with pytest.raises(ValueError, match="variant"):
        StyleGAN2Loss(TinyG("mask"), TinyD(L), "segmentation")
    loss = StyleGAN2Loss(TinyG("mask"), TinyD(L), "mask")
    img, mask, c, z = _batch()
    with pytest.raises(ValueError, match="phase"):
        loss.accumulate_gradients("Gall", img, mask, c, z, c, None, gain=1.0)


@pytest.mark.parametrize("variant", ["baseline", "mask"])
@pytest.mark.parametrize("mode", ["softmax", "onehot-st"])
def test_generated_masks_reach_d_on_the_one_hot_simplex(variant, mode):
    seen = []

    class RecordingD(TinyD):
        def forward(self, x, c):
            seen.append(x.detach().clone())
            return super().forward(x, c)

    d_in = M + L if variant == "baseline" else L
    G = TinyG(variant)
    loss = StyleGAN2Loss(G, RecordingD(d_in), variant, style_mixing_prob=0.0,
                         label_channels=L, mask_to_d=mode)
    img, mask, c, z = _batch()
    loss.accumulate_gradients("Gmain", img, mask, c, z, c, None, gain=1.0)
    fake_masks = seen[0][:, -L:]
    assert fake_masks.min() >= -1 and fake_masks.max() <= 1
    assert torch.allclose(fake_masks.sum(1), torch.full_like(fake_masks[:, 0], 2.0 - L), atol=1e-5)
    raw = G.synthesis(G.mapping(z, c))                     # same argmax as the raw output
    assert torch.equal(fake_masks.argmax(1), raw[:, -L:].argmax(1))
    if mode == "onehot-st":                                # exactly one-hot, like real masks
        assert set(torch.unique(fake_masks).tolist()) == {-1.0, 1.0}
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in G.parameters())
    if variant == "baseline":
        assert torch.equal(seen[0][:, :M], raw[:, :M])      # image channels pass unchanged
