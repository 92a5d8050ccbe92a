"""MappingNetwork: z (and optional label c) -> intermediate latents w, with truncation.

StyleGAN2 (Karras et al. 2020): z is normalised by its second moment; with c_dim > 0, c is embedded by a
linear layer, normalised the same way and concatenated; an MLP of leaky-ReLU layers (lr multiplier
0.01) produces w.  A running mean w_avg (decay 0.995) is tracked for the truncation trick
w' = w_avg + psi * (w - w_avg).
"""
from __future__ import annotations

import torch
from torch import nn

from gan.layers import FullyConnectedLayer


def normalize_2nd_moment(x: torch.Tensor, dim: int = 1, eps: float = 1e-8) -> torch.Tensor:
    """x / sqrt(mean(x^2) + eps) along ``dim`` (puts z on the unit sphere of radius sqrt(dim))."""
    return x * (x.square().mean(dim=dim, keepdim=True) + eps).rsqrt()


class MappingNetwork(nn.Module):
    """z [N, z_dim], c [N, c_dim] -> w [N, num_ws, w_dim] (or [N, w_dim] when num_ws is None).

    ``z_dim`` may be 0 (D's label mapping: c only); ``c_dim`` may be 0 (unconditioned).
    ``w_avg_beta`` None disables w_avg tracking (and truncation).
    """

    def __init__(self, z_dim: int, c_dim: int, w_dim: int, num_ws: int | None, num_layers: int = 8,
                 lr_multiplier: float = 0.01, w_avg_beta: float | None = 0.995):
        super().__init__()
        if z_dim + c_dim == 0:
            raise ValueError("MappingNetwork needs z_dim > 0 or c_dim > 0")
        if num_layers < 1:
            raise ValueError(f"MappingNetwork needs num_layers >= 1, got {num_layers}")
        self.z_dim = z_dim
        self.c_dim = c_dim
        self.w_dim = w_dim
        self.num_ws = num_ws
        self.w_avg_beta = w_avg_beta
        self.embed = FullyConnectedLayer(c_dim, w_dim) if c_dim > 0 else None
        features = [z_dim + (w_dim if c_dim > 0 else 0)] + [w_dim] * num_layers
        self.layers = nn.ModuleList(
            FullyConnectedLayer(features[i], features[i + 1], activation="lrelu",
                                lr_multiplier=lr_multiplier)
            for i in range(num_layers))
        if w_avg_beta is not None:
            self.register_buffer("w_avg", torch.zeros([w_dim]))

    def check_inputs(self, z: torch.Tensor | None, c: torch.Tensor | None) -> int:
        """Validate shapes of z and c and return the batch size."""
        batch = None
        if self.z_dim > 0:
            if z is None or z.ndim != 2 or z.shape[1] != self.z_dim:
                raise ValueError(f"mapping expects z of shape [N, {self.z_dim}], got "
                                 f"{None if z is None else tuple(z.shape)}")
            batch = z.shape[0]
        if self.c_dim > 0:
            if c is None or c.ndim != 2 or c.shape[1] != self.c_dim:
                raise ValueError(f"mapping expects c of shape [N, {self.c_dim}], got "
                                 f"{None if c is None else tuple(c.shape)}")
            if batch is not None and c.shape[0] != batch:
                raise ValueError(f"z has {batch} rows but c has {c.shape[0]}")
            batch = c.shape[0]
        elif c is not None and c.numel() > 0:
            raise ValueError(f"this mapping is unconditioned (c_dim = 0) but got c {list(c.shape)}")
        return batch

    def forward(self, z: torch.Tensor | None, c: torch.Tensor | None, truncation_psi: float = 1.0,
                truncation_cutoff: int | None = None, update_emas: bool = False) -> torch.Tensor:
        """w for latents z and labels c; truncated towards w_avg in the first ``truncation_cutoff``
        of the num_ws copies (all copies when None).  ``update_emas`` updates w_avg (training)."""
        self.check_inputs(z, c)
        parts = []
        if self.z_dim > 0:
            parts.append(normalize_2nd_moment(z.to(torch.float32)))
        if self.c_dim > 0:
            parts.append(normalize_2nd_moment(self.embed(c.to(torch.float32))))
        x = torch.cat(parts, dim=1)
        for layer in self.layers:
            x = layer(x)                                             # [N, w_dim]
        if update_emas and self.w_avg_beta is not None:
            self.w_avg.copy_(x.detach().float().mean(dim=0).lerp(self.w_avg, self.w_avg_beta))  # fp32 under autocast too
        if self.num_ws is None:
            return x
        x = x.unsqueeze(1).repeat(1, self.num_ws, 1)                 # [N, num_ws, w_dim]
        if truncation_psi != 1:
            if self.w_avg_beta is None:
                raise ValueError("truncation needs w_avg tracking (w_avg_beta is None)")
            cutoff = self.num_ws if truncation_cutoff is None else truncation_cutoff
            x = torch.cat([self.w_avg.lerp(x[:, :cutoff].float(), truncation_psi).to(x.dtype), x[:, cutoff:]], dim=1)
        return x

    def extra_repr(self) -> str:
        return f"z_dim={self.z_dim}, c_dim={self.c_dim}, w_dim={self.w_dim}, num_ws={self.num_ws}"
