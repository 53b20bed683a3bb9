"""A linear layer whose CPU matrix products take the faster of two equivalent orientations.

The learner's layers are thin: 15-50 inputs (observations, states) into 64-192 units, or 64 units
into 6-12 actions, over a few thousand rows. For such shapes the BLAS library's speed depends on
how a product is laid out, not only on its size, and PyTorch's default orientation is the slow one
in two places (AMD EPYC with AVX-512, MKL, one thread; `docs/speed.md`):

- the weight gradient of a layer with fewer inputs than outputs, ``g^T x`` ``[out, M] @ [M, in]``,
  is 1.8-2.6x faster computed as ``(x^T g)^T`` (e.g. 3,264 rows, 15 -> 64: 102 us against 268);
- the forward product of a layer with a few outputs (2-12), ``x W^T``, is about 1.5x faster
  computed as ``(W x^T)^T`` and copied back to rows (3,264 rows, 64 -> 6: 151 us against 233).

Same products, same values up to the rounding of a sum's order. Elsewhere (CUDA, other dtypes,
other shapes) this is ``F.linear``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

FEW_OUTPUTS = (2, 12)  # outputs for which the forward product runs feature-major


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` (``x [..., in]``, ``weight [out, in]``); ``bias`` may also be
    ``[..., out]`` (added row by row, as ``addmm``'s input)."""
    if x.device.type != "cpu" or x.dtype != torch.float32 or weight.dtype != torch.float32 or x.dim() < 2:
        return F.linear(x, weight, bias) if bias is None or bias.dim() == 1 else F.linear(x, weight) + bias
    return _Linear.apply(x, weight, bias)


class _Linear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias):
        out_features, in_features = weight.shape
        x2 = x.reshape(-1, in_features)
        y = x2.new_empty(*x.shape[:-1], out_features)  # the output itself, not a view (ReLU may follow in place)
        rows = y.view(-1, out_features)
        if bias is not None and bias.dim() > 1:
            torch.addmm(bias.reshape(-1, out_features), x2, weight.t(), out=rows)
        elif FEW_OUTPUTS[0] <= out_features <= FEW_OUTPUTS[1]:  # [out, M], then back to rows
            rows.copy_((torch.mm(weight, x2.t()) if bias is None else
                        torch.addmm(bias.unsqueeze(1), weight, x2.t())).t())
        elif bias is None:
            torch.mm(x2, weight.t(), out=rows)
        else:
            torch.addmm(bias, x2, weight.t(), out=rows)
        ctx.save_for_backward(x2, weight)
        ctx.bias_shape = None if bias is None else bias.shape
        ctx.lead = x.shape[:-1]
        return y

    @staticmethod
    def backward(ctx, g):
        x2, weight = ctx.saved_tensors
        out_features, in_features = weight.shape
        g2 = g.reshape(-1, out_features)
        d_x = d_w = d_b = None
        if ctx.needs_input_grad[0]:
            d_x = torch.mm(g2, weight).view(*ctx.lead, in_features)
        if ctx.needs_input_grad[1]:
            d_w = torch.mm(x2.t(), g2).t() if in_features < out_features else torch.mm(g2.t(), x2)
        if ctx.needs_input_grad[2]:
            d_b = g2.sum(0) if len(ctx.bias_shape) == 1 else g.reshape(ctx.bias_shape)
        return d_x, d_w, d_b
