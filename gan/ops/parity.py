"""How closely a fused op agrees with its reference: forward, gradient and gradient of gradient.

For an op y = op(*inputs) both implementations are differentiated through the same scalar losses

    loss1 = sum(w * y^2)                     (so the gradient depends on y: second order is non-trivial)
    g_i   = d loss1 / d input_i              (create_graph=True, as R1 does)
    loss2 = sum_i sum(v_i * g_i)
    gg_i  = d loss2 / d input_i

with fixed random weights w, v_i. Half-precision runs of the fused op are compared with the
reference in float32 on the same (rounded) input values: the kernels compute in float32 and round
once on store, so that is the answer they should reproduce.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch


@dataclass(frozen=True)
class ParityErrors:
    """Max abs differences fused - reference, and the max abs reference values they compare to."""

    forward: float
    grad: float
    grad2: float
    forward_scale: float
    grad_scale: float
    grad2_scale: float

    def within(self, rtol: float, atol: float) -> bool:
        """Every error <= atol + rtol * (its scale)."""
        return all(err <= atol + rtol * scale for err, scale in
                   ((self.forward, self.forward_scale), (self.grad, self.grad_scale), (self.grad2, self.grad2_scale)))


def derivatives(op: Callable[..., torch.Tensor], inputs: Sequence[torch.Tensor], out_weight: torch.Tensor,
                grad_weights: Sequence[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """(y, [g_i], [gg_i]) of `op` at `inputs` (leaf tensors requiring grad), see the module docstring.

    out_weight is shaped like y, grad_weights[i] like inputs[i]; all are cast to the dtypes they meet.
    """
    y = op(*inputs)
    loss1 = (y.square() * out_weight.to(y.dtype)).sum()
    grads = torch.autograd.grad(loss1, inputs, create_graph=True)
    loss2 = sum((g * v.to(g.dtype)).sum() for g, v in zip(grads, grad_weights))
    grads2 = torch.autograd.grad(loss2, inputs)
    return y.detach(), [g.detach() for g in grads], [gg.detach() for gg in grads2]


def _max_abs(tensors: Sequence[torch.Tensor]) -> float:
    return max(t.float().abs().max().item() for t in tensors)


def _max_abs_diff(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> float:
    return max((s.float() - t.float()).abs().max().item() for s, t in zip(a, b))


def compare(fused: Callable[..., torch.Tensor], reference: Callable[..., torch.Tensor], inputs: Sequence[torch.Tensor],
            seed: int = 0) -> ParityErrors:
    """Parity of `fused` (run on `inputs` as given) against `reference` (run on float32 copies).

    Args:
        fused, reference: the op, taking the inputs positionally.
        inputs: float tensors (any dtype; all differentiated).
        seed: seed of the loss weights.

    Returns:
        ParityErrors over y, the gradients and the gradients of gradients.
    """
    fused_inputs = [t.detach().clone().requires_grad_(True) for t in inputs]
    ref_inputs = [t.detach().float().clone().requires_grad_(True) for t in inputs]
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        out_shape = reference(*ref_inputs).shape
    out_weight = torch.randn(out_shape, generator=generator).to(inputs[0].device)
    grad_weights = [torch.randn(t.shape, generator=generator).to(t.device) for t in inputs]
    y_f, g_f, gg_f = derivatives(fused, fused_inputs, out_weight, grad_weights)
    y_r, g_r, gg_r = derivatives(reference, ref_inputs, out_weight, grad_weights)
    assert y_f.shape == y_r.shape, f"fused output {tuple(y_f.shape)} != reference {tuple(y_r.shape)}"
    assert y_f.dtype == inputs[0].dtype, f"fused output dtype {y_f.dtype} != input dtype {inputs[0].dtype}"
    for g, t in zip(g_f + gg_f, list(inputs) * 2):
        assert g.shape == t.shape, f"gradient {tuple(g.shape)} != input {tuple(t.shape)}"
    return ParityErrors(forward=_max_abs_diff([y_f], [y_r]), grad=_max_abs_diff(g_f, g_r),
                        grad2=_max_abs_diff(gg_f, gg_r), forward_scale=_max_abs([y_r]), grad_scale=_max_abs(g_r),
                        grad2_scale=_max_abs(gg_r))
