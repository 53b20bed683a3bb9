"""GRUs over whole sequences with a hand-written backward pass (BPTT), for the learner.

``nn.GRU`` on the CPU records every gate of every step in the autograd graph, so its backward
replays hundreds of tiny operations. Here:

- the input projections of all steps are one matrix product, done by the caller (autograd
  handles it);
- several independent GRUs of the same size (the online and the target agent network) run in the
  same loop as one batched matrix product per step (``G`` = number of GRUs);
- the forward loop does one batched product and four element-wise operations per step;
- the backward loop (only for the GRUs that need gradients) does four operations per step, with
  every step-independent factor precomputed for all steps at once and the weight gradient gathered
  in one large matrix product at the end.

Same equations and gate layout (r, z, n) as ``nn.GRU``; a test checks values and gradients.
"""

from __future__ import annotations

import torch


def _tanh(x: torch.Tensor) -> torch.Tensor:
    # tanh(x) = 2 sigmoid(2x) - 1: the same function, but several times faster than torch.tanh
    # on CPUs without AVX-512 (measured on AMD EPYC), where tanh is the loop's slowest step.
    return torch.sigmoid(x * 2).mul_(2).sub_(1)


def _forward(gi: torch.Tensor, w_hh_t: torch.Tensor, b_hh: torch.Tensor, n_keep: int):
    """``gi [T, G, N, 3H]``, ``w_hh_t [G, H, 3H]``, ``b_hh [G, 1, 3H]``, zero initial states.

    Returns the hidden states ``[T, G, N, H]`` and, for the first ``n_keep`` GRUs, what the
    backward pass needs (time-major, contiguous).
    """
    T, G, N, H3 = gi.shape
    H = H3 // 3
    h = gi.new_zeros(G, N, H)
    outs, rzs, hns, ns = [], [], [], []
    for t in range(T):
        gh = torch.baddbmm(b_hh, h, w_hh_t)  # [G, N, 3H]
        g = gi[t]
        rz = torch.sigmoid(g[..., : 2 * H] + gh[..., : 2 * H])
        hn = gh[..., 2 * H:]
        n = _tanh(torch.addcmul(g[..., 2 * H:], rz[..., :H], hn))
        h = torch.lerp(n, h, rz[..., H:])  # (1 - z) * n + z * h
        outs.append(h)
        if n_keep:
            rzs.append(rz[:n_keep])
            hns.append(hn[:n_keep])
            ns.append(n[:n_keep])
    out = torch.stack(outs)  # [T, G, N, H]
    if not n_keep:
        return out, None
    return out, (torch.stack(rzs), torch.stack(hns), torch.stack(ns))


class _PairedGRU(torch.autograd.Function):
    """Forward for all G GRUs; gradients for the first ``n_grad`` of them only."""

    @staticmethod
    def forward(ctx, gi, w_hh_t, b_hh, n_grad: int):
        out, (rz, hn, n) = _forward(gi, w_hh_t, b_hh, n_keep=n_grad)
        k = n_grad
        ctx.n_grad, ctx.G = k, gi.shape[1]
        ctx.save_for_backward(w_hh_t[:k], out[:, :k], rz, hn, n)
        return out

    @staticmethod
    def backward(ctx, d_out):
        w_hh_t, out, rz, hn, n = ctx.saved_tensors  # time-major [T, k, N, *]
        k, G = ctx.n_grad, ctx.G
        d_out = d_out[:, :k]
        T, _, N, H = out.shape
        r, z = rz[..., :H], rz[..., H:]
        h_prev = torch.cat([torch.zeros_like(out[:1]), out[:-1]])  # [T, k, N, H]
        a = (1 - z) * (1 - n * n)  # d n_pre / d h through n
        # d(gh)/d(h) factors of the three gate chunks: r (through n), z, and W_hn h (through n).
        k3 = torch.stack([a * hn * r * (1 - r), (h_prev - n) * z * (1 - z), a * r], 3)  # [T, k, N, 3, H]
        w_hh = w_hh_t.transpose(1, 2)  # [k, 3H, H]
        dh = torch.zeros_like(out[0])  # [k, N, H]
        dhs, dghs = [None] * T, [None] * T
        for t in range(T - 1, -1, -1):
            dh = dh + d_out[t]
            dhs[t] = dh
            d_gh = (dh.unsqueeze(2) * k3[t]).view(k, N, 3 * H)  # [k, N, 3H]
            dghs[t] = d_gh
            dh = torch.baddbmm(dh * z[t], d_gh, w_hh)
        d_gh = torch.stack(dghs)  # [T, k, N, 3H]
        d_gi = torch.cat([d_gh[..., : 2 * H], torch.stack(dhs) * a], -1)  # n's input skips the reset gate
        hp = h_prev.transpose(0, 1).reshape(k, T * N, H)
        d_w_hh_t = torch.bmm(hp.transpose(1, 2), d_gh.transpose(0, 1).reshape(k, T * N, 3 * H))
        d_b_hh = d_gh.sum((0, 2)).unsqueeze(1)
        if k < G:  # no gradient for the rest (target networks)
            d_gi = torch.cat([d_gi, d_gi.new_zeros(T, G - k, N, 3 * H)], 1)
            d_w_hh_t = torch.cat([d_w_hh_t, d_w_hh_t.new_zeros(G - k, H, 3 * H)])
            d_b_hh = torch.cat([d_b_hh, d_b_hh.new_zeros(G - k, 1, 3 * H)])
        return d_gi, d_w_hh_t, d_b_hh, None


def gru_sequences(gi: torch.Tensor, w_hh_t: torch.Tensor, b_hh: torch.Tensor, n_grad: int = 1) -> torch.Tensor:
    """Hidden states of ``G`` GRUs from zero initial states, time-major.

    ``gi [T, G, N, 3H]`` (= x W_ih^T + b_ih per GRU), ``w_hh_t [G, H, 3H]`` (W_hh transposed),
    ``b_hh [G, 1, 3H]`` -> ``[T, G, N, H]``. Gradients flow to the first ``n_grad`` GRUs only.
    """
    if torch.is_grad_enabled() and n_grad > 0 and (gi.requires_grad or w_hh_t.requires_grad):
        return _PairedGRU.apply(gi, w_hh_t, b_hh, n_grad)
    return _forward(gi, w_hh_t, b_hh, n_keep=0)[0]
