"""StyleGAN2 losses for the three variants: non-saturating logistic, lazy R1, path length.

What G produces and what D sees:

=============  ===============================  ==========================================
variant        G output                         D input (real / fake)
=============  ===============================  ==========================================
baseline       image ⊕ mask, M + L channels     real image ⊕ real mask / G output
mask           mask, L channels                 real mask / G output
conditional    image, M channels, given a mask  real image ⊕ its mask / G(mask) ⊕ the same mask
=============  ===============================  ==========================================

For ``conditional`` the masks fed to G are real masks from the data (``gen_mask``), so D judges
pairs and penalises images that do not fit their mask.

Phases (StyleGAN2 lazy regularisation): ``Gmain`` (softplus(-D(G(z)))), ``Greg`` (path length,
weight ``pl_weight``, on batch / ``pl_batch_shrink``), ``Gboth``; ``Dmain`` (softplus(D(G(z))) +
softplus(-D(x))), ``Dreg`` (R1 = gamma/2 * ||grad_x D(x)||^2), ``Dboth``.  The caller multiplies
by ``gain`` (the regularisation interval for lazy phases, divided by gradient-accumulation rounds).

Two choices differ from the NVIDIA code, both for the sake of exact multi-process training:
the path-length mean is updated once per Greg phase from the lengths of all accumulation rounds
and processes (`finish_pl_phase`), and the penalty of a phase uses the mean from before it; and
R1 is the gradient w.r.t. the augmented real input that D actually sees.
"""
from __future__ import annotations

import contextlib
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from gan.variants import variant_spec

PHASES = ("Gmain", "Greg", "Gboth", "Dmain", "Dreg", "Dboth")
MASK_TO_D = ("raw", "softmax", "onehot-st")


class StyleGAN2Loss:
    """Gradient accumulation for one variant's G and D (see module docstring).

    Args:
        G, D: the generator and discriminator (G with ``mapping`` and ``synthesis``).
        variant: "baseline" | "mask" | "conditional".
        augment: optional callable applied to every D input (real and fake), e.g. MaskAwareAugment.
        on_real_logits: optional callback receiving D's logits on reals (the ADA statistics).
        r1_gamma, style_mixing_prob, pl_weight, pl_batch_shrink, pl_decay: StyleGAN2 settings.
    """

    def __init__(self, G: nn.Module, D: nn.Module, variant: str,
                 augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 on_real_logits: Callable[[torch.Tensor], None] | None = None,
                 r1_gamma: float = 10.0, style_mixing_prob: float = 0.9, pl_weight: float = 2.0,
                 pl_batch_shrink: int = 2, pl_decay: float = 0.01, label_channels: int = 0,
                 mask_to_d: str = "raw", autocast_dtype: torch.dtype | None = None):
        self.spec = variant_spec(variant)
        self.G = G
        self.D = D
        self.variant = variant
        self.label_channels = label_channels
        if mask_to_d not in MASK_TO_D:
            raise ValueError(f"mask_to_d must be one of {MASK_TO_D}, got {mask_to_d!r}")
        if mask_to_d != "raw" and self.spec.makes_masks and label_channels < 2:
            raise ValueError(f"mask_to_d={mask_to_d!r} needs label_channels >= 2")
        self.mask_to_d = mask_to_d
        self.augment = augment
        self.on_real_logits = on_real_logits
        self.r1_gamma = r1_gamma
        self.style_mixing_prob = style_mixing_prob
        self.pl_weight = pl_weight
        self.pl_batch_shrink = pl_batch_shrink
        self.pl_decay = pl_decay
        self.autocast_dtype = autocast_dtype
        self.pl_mean = torch.zeros([], dtype=torch.float32)
        self._pl_sum = 0.0
        self._pl_count = 0

    # ----------------------------------------------------------------------------------------
    # forward passes
    # ----------------------------------------------------------------------------------------

    def autocast(self, device: torch.device):
        """The forward passes' mixed precision: autocast to ``autocast_dtype`` (None: fp32 throughout).
        Backward passes run outside it, in the dtypes the forward chose; losses are taken in fp32."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=self.autocast_dtype)

    def run_G(self, z: torch.Tensor, c: torch.Tensor, mask: torch.Tensor | None,
              update_emas: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """G output [N,C_G,H,W] (fp32) and the (style-mixed) ws [N,num_ws,w_dim] it was made from."""
        with self.autocast(z.device):
            img, ws = self._forward_G(z, c, mask, update_emas)
        return img.float(), ws

    def _forward_G(self, z: torch.Tensor, c: torch.Tensor, mask: torch.Tensor | None,
                   update_emas: bool) -> tuple[torch.Tensor, torch.Tensor]:
        ws = self.G.mapping(z, c, update_emas=update_emas)
        if self.style_mixing_prob > 0:
            num_ws = ws.shape[1]
            cutoff = int(torch.randint(1, num_ws, ())) if num_ws > 1 else num_ws
            if float(torch.rand(())) >= self.style_mixing_prob:
                cutoff = num_ws
            if cutoff < num_ws:
                mixed = self.G.mapping(torch.randn_like(z), c, update_emas=False)
                ws = torch.cat([ws[:, :cutoff], mixed[:, cutoff:]], dim=1)
        if self.spec.needs_mask:
            img = self.G.synthesis(ws, mask=mask, update_emas=update_emas)
        else:
            img = self.G.synthesis(ws, update_emas=update_emas)
        return img, ws

    def fake_pair(self, gen_out: torch.Tensor, gen_mask: torch.Tensor | None) -> torch.Tensor:
        """What D sees for a fake: G's output, ⊕ the conditioning mask for ``conditional``.

        Real masks are exactly one-hot in {-1, 1}; shown raw, generated channels let D tell
        real from fake by their values alone, D wins and the mask-producing variants collapse.
        ``mask_to_d`` picks what D sees of the L generated mask channels:
        "raw"; "softmax" (softmax * 2 - 1: on the simplex, approaching one-hot); "onehot-st"
        (straight-through: the one-hot of the argmax in the forward pass, exactly like a real
        mask, with the softmax's gradient in the backward pass).  The decoded mask (argmax) is
        the same in all three.
        """
        if self.spec.needs_mask:
            return torch.cat([gen_out, gen_mask], dim=1)
        if self.mask_to_d == "raw":
            return gen_out
        split = gen_out.shape[1] - self.label_channels
        probs = torch.softmax(gen_out[:, split:], dim=1)
        if self.mask_to_d == "onehot-st":
            onehot = F.one_hot(probs.argmax(1), self.label_channels).permute(0, 3, 1, 2).to(probs.dtype)
            probs = onehot + (probs - probs.detach())     # exactly one-hot forward, softmax backward
        return torch.cat([gen_out[:, :split], probs * 2 - 1], dim=1)

    def real_pair(self, img: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """What D sees for a real: image ⊕ mask (baseline, conditional) or the mask (mask)."""
        if not self.spec.d_sees_image:
            return mask
        return torch.cat([img, mask], dim=1)

    def run_D(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """Logits [N,1] (fp32) of D on the augmented input."""
        if self.augment is not None:
            x = self.augment(x)
        return self.forward_D(x, c)

    def forward_D(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """Logits [N,1] (fp32) of D on ``x`` as given."""
        with self.autocast(x.device):
            return self.D(x, c).float()

    # ----------------------------------------------------------------------------------------
    # phases
    # ----------------------------------------------------------------------------------------

    def accumulate_gradients(self, phase: str, real_img: torch.Tensor, real_mask: torch.Tensor,
                             real_c: torch.Tensor, gen_z: torch.Tensor, gen_c: torch.Tensor,
                             gen_mask: torch.Tensor | None, gain: float) -> dict[str, float]:
        """Backpropagate one phase's loss × gain for one micro-batch; returns scalar statistics.

        Shapes: real_img [N,M,H,W], real_mask [N,L,H,W] (one-hot in {-1,1}), real_c / gen_c
        [N,c_dim], gen_z [N,z_dim], gen_mask [N,L,H,W] (used by ``conditional`` only).
        """
        if phase not in PHASES:
            raise ValueError(f"phase must be one of {PHASES}, got {phase!r}")
        do_Gmain = phase in ("Gmain", "Gboth")
        do_Dmain = phase in ("Dmain", "Dboth")
        do_Gpl = phase in ("Greg", "Gboth") and self.pl_weight != 0
        do_Dr1 = phase in ("Dreg", "Dboth") and self.r1_gamma != 0
        stats: dict[str, float] = {}

        if do_Gmain:
            gen_out, _ = self.run_G(gen_z, gen_c, gen_mask)
            logits = self.run_D(self.fake_pair(gen_out, gen_mask), gen_c)
            loss_G = F.softplus(-logits)          # -log(sigmoid(D(G(z))))
            (loss_G.mean() * gain).backward()
            stats["loss/G"] = float(loss_G.detach().mean())
            stats["scores/fake"] = float(logits.detach().mean())

        if do_Gpl:
            n = max(gen_z.shape[0] // self.pl_batch_shrink, 1)
            mask = gen_mask[:n] if gen_mask is not None else None
            gen_out, ws = self.run_G(gen_z[:n], gen_c[:n], mask)
            h, w = gen_out.shape[2], gen_out.shape[3]
            pl_noise = torch.randn_like(gen_out) / (h * w) ** 0.5
            (pl_grads,) = torch.autograd.grad((gen_out * pl_noise).sum(), ws, create_graph=True)
            pl_lengths = pl_grads.float().square().sum(2).mean(1).sqrt()  # [n]
            penalty = (pl_lengths - self.pl_mean.to(pl_lengths.device)).square()
            loss_pl = penalty * self.pl_weight
            (loss_pl.mean() * gain).backward()
            self._pl_sum += float(pl_lengths.detach().sum())
            self._pl_count += n
            stats["loss/pl"] = float(loss_pl.detach().mean())
            stats["pl/lengths"] = float(pl_lengths.detach().mean())

        if do_Dmain:
            with torch.no_grad():
                gen_out, _ = self.run_G(gen_z, gen_c, gen_mask, update_emas=True)
            logits_fake = self.run_D(self.fake_pair(gen_out, gen_mask), gen_c)
            loss_Dgen = F.softplus(logits_fake)   # -log(1 - sigmoid(D(G(z))))
            (loss_Dgen.mean() * gain).backward()
            stats["scores/fake"] = float(logits_fake.detach().mean())
            stats["loss/D_fake"] = float(loss_Dgen.detach().mean())

        if do_Dmain or do_Dr1:
            real = self.real_pair(real_img, real_mask).detach()
            if self.augment is not None:
                real = self.augment(real)
            real = real.detach().requires_grad_(do_Dr1)
            logits_real = self.forward_D(real, real_c)
            loss = torch.zeros_like(logits_real)
            if do_Dmain:
                loss_Dreal = F.softplus(-logits_real)   # -log(sigmoid(D(x)))
                loss = loss + loss_Dreal
                stats["scores/real"] = float(logits_real.detach().mean())
                stats["loss/D_real"] = float(loss_Dreal.detach().mean())
                if self.on_real_logits is not None:
                    self.on_real_logits(logits_real.detach())
            if do_Dr1:
                (r1_grads,) = torch.autograd.grad(logits_real.sum(), real, create_graph=True)
                r1_penalty = r1_grads.square().sum(dim=[1, 2, 3])             # [N]
                loss = loss + (r1_penalty * (self.r1_gamma / 2))[:, None]
                stats["loss/r1"] = float(r1_penalty.detach().mean() * (self.r1_gamma / 2))
            (loss.mean() * gain).backward()
        if "loss/D_fake" in stats and "loss/D_real" in stats:
            stats["loss/D"] = stats["loss/D_fake"] + stats["loss/D_real"]
        return stats

    def finish_pl_phase(self, reduce: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        """Update the path-length running mean from the lengths of the phase just finished.

        ``reduce`` sums [sum, count] over processes, so that every process keeps the same mean.
        """
        stats = torch.tensor([self._pl_sum, float(self._pl_count)], dtype=torch.float64)
        if reduce is not None:
            stats = reduce(stats)
        self._pl_sum, self._pl_count = 0.0, 0
        if stats[1] > 0:
            mean = (stats[0] / stats[1]).float()
            if torch.isfinite(mean):
                self.pl_mean = self.pl_mean + self.pl_decay * (mean - self.pl_mean)
