"""A GRU over whole episodes with a hand-written backward pass (BPTT), for the learner.

``nn.GRU`` on the CPU records every gate of every step in the autograd graph, so its backward
replays hundreds of tiny operations. Here:

- episodes come packed (:mod:`qmix.modules.packing`): step ``t`` is one contiguous block of
  rows, and the block shrinks as episodes end, so no work is spent on padding;
- the input projections of all steps are one matrix product, done by the caller (autograd
  handles it), and the reset/update halves of ``b_hh`` are folded into them;
- ``tanh(a) = 2 sigmoid(2a) - 1``, with the factor 2 folded into the n gate's weights, because
  ``tanh`` is several times slower than ``sigmoid`` on CPUs without AVX-512;
- the forward loop writes each step's gates into preallocated arrays (one small matrix product
  and six element-wise operations per step); the backward pass first turns them into gradient
  factors with a few large element-wise operations (in cache-sized blocks of rows), so that its
  sequential part is three operations per step; the recurrent weight gradient is one large
  matrix product.

Same equations and gate layout (r, z, n) as ``nn.GRU``; tests check values and gradients in float64.
"""

from __future__ import annotations

import torch

_BLOCK = 1 << 18  # elements per block of rows in the backward's element-wise pass (about 1 MB)


def _scaled(w_ih, b_ih, w_hh, b_hh):
    """The GRU's weights with b_hh's r and z parts moved into the input bias and the n gate's
    rows doubled (so that ``sigmoid`` of the n gate's input is ``(tanh + 1) / 2``)."""
    H = w_hh.shape[1]
    scale = torch.ones(3 * H, dtype=w_hh.dtype, device=w_hh.device)
    scale[2 * H:] = 2
    b_in = (b_ih + torch.cat([b_hh[: 2 * H], torch.zeros_like(b_hh[2 * H:])])) * scale
    b_rec = torch.cat([torch.zeros_like(b_hh[: 2 * H]), b_hh[2 * H:]]) * scale
    return w_ih * scale.unsqueeze(1), b_in, (w_hh * scale.unsqueeze(1)).t(), b_rec  # w_hh as [H, 3H]


def _forward(gi: torch.Tensor, w_hh_t: torch.Tensor, b_rec: torch.Tensor, rows: list[int]):
    """``gi [M, 3H]``: scaled input projections, packed; ``rows``: rows per step.

    Returns ``h [M, H]`` and the gates ``rz [M, 2H]``, ``gh [M, 3H]`` (the recurrent products),
    ``n [M, H]``.
    """
    M, H3 = gi.shape
    H = H3 // 3
    out, rz, gh, n = (gi.new_empty(M, d) for d in (H, 2 * H, H3, H))
    # Every array cut into its per-step blocks up front (one call each, not one per step).
    g_rz, g_n = gi[:, : 2 * H].split(rows), gi[:, 2 * H:].split(rows)
    gh_t, gh_rz, gh_n = gh.split(rows), gh[:, : 2 * H].split(rows), gh[:, 2 * H:].split(rows)
    rz_t, r_t, z_t = rz.split(rows), rz[:, :H].split(rows), rz[:, H:].split(rows)
    n_t, out_t = n.split(rows), out.split(rows)
    neg_one = gi.new_tensor(-1.0)
    h = gi.new_zeros(rows[0], H)
    for t, m in enumerate(rows):
        h = h[:m]  # the episodes still running are the first rows of the last step
        torch.addmm(b_rec, h, w_hh_t, out=gh_t[t])  # W_hh h (+ b_hn)
        torch.add(g_rz[t], gh_rz[t], out=rz_t[t]).sigmoid_()
        torch.addcmul(g_n[t], r_t[t], gh_n[t], out=n_t[t]).sigmoid_()
        torch.add(neg_one, n_t[t], alpha=2, out=n_t[t])  # tanh of the n gate's input
        h = torch.lerp(n_t[t], h, z_t[t], out=out_t[t])  # (1 - z) n + z h
    return out, (rz, gh, n)


def _previous_rows(counts: list[int], device) -> torch.Tensor:
    """For every packed row of steps 1.., the row of the same episode at the step before."""
    c = torch.tensor(counts, device=device)
    starts = torch.cumsum(c, 0) - c
    step = torch.repeat_interleave(torch.arange(1, len(counts), device=device), c[1:])
    return torch.arange(c[0], int(c.sum()), device=device) - starts[step] + starts[step - 1]


class _GRUPacked(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gi, w_hh_t, b_rec, counts):
        out, gates = _forward(gi, w_hh_t, b_rec, counts)
        ctx.save_for_backward(w_hh_t, out, *gates)
        ctx.counts = counts
        return out

    @staticmethod
    def backward(ctx, d_out):
        w_hh_t, out, rz, gh, n = ctx.saved_tensors
        counts = ctx.counts
        M, H = out.shape
        h_prev = torch.cat([out.new_zeros(counts[0], H), out.index_select(0, _previous_rows(counts, out.device))])
        # Per row: d(gates) = dh * factors, with dh the gradient of that step's output h.
        #   a = n gate's (scaled) input, dn/da = (1 - n^2) / 2    -> fa = (1 - z)(1 - n^2) / 2
        #   d(reset pre-activation)  = dh * fa * hn * r (1 - r)
        #   d(update pre-activation) = dh * (h_prev - n) * z (1 - z)
        #   d(W_hn h + b_hn)         = dh * fa * r;   d(n gate's input projection) = dh * fa
        f = out.new_empty(M, 4, H)  # [reset, update, hn, n-input] factors
        one = out.new_tensor(1.0)
        block = max(1, _BLOCK // H)
        for a in range(0, M, block):
            s = slice(a, a + block)
            r, z, n_, f_ = rz[s, :H], rz[s, H:], n[s], f[s]
            one_minus_z = 1 - z
            fa = torch.addcmul(one, n_, n_, value=-1, out=f_[:, 3]).mul_(one_minus_z).mul_(0.5)
            torch.mul(fa, r, out=f_[:, 2])
            torch.mul(f_[:, 2], gh[s, 2 * H:], out=f_[:, 0]).mul_(1 - r)
            torch.sub(h_prev[s], n_, out=f_[:, 1]).mul_(z).mul_(one_minus_z)
        dh = d_out.contiguous().clone()  # becomes the gradient of each step's h through all later steps
        w = w_hh_t.t()  # [3H, H]
        d_gh = out.new_empty(M, 3, H)
        dh_t, dh3_t, z_t = dh.split(counts), dh.unsqueeze(1).split(counts), rz[:, H:].split(counts)
        d_gh_t, d_gh2_t, f_t = d_gh.split(counts), d_gh.view(M, 3 * H).split(counts), f[:, :3].split(counts)
        for t in range(len(counts) - 2, -1, -1):
            torch.mul(dh3_t[t + 1], f_t[t + 1], out=d_gh_t[t + 1])
            dh_t[t][: counts[t + 1]].addcmul_(dh_t[t + 1], z_t[t + 1]).addmm_(d_gh2_t[t + 1], w)
        torch.mul(dh3_t[0], f_t[0], out=d_gh_t[0])
        d_gh = d_gh.view(M, 3 * H)
        d_w = h_prev.t() @ d_gh  # [H, 3H]
        d_b = d_gh.sum(0)
        torch.mul(dh, f[:, 3], out=d_gh[:, 2 * H:])  # now the gradient of the input projections
        return d_gh, d_w, d_b, None


def gru_packed(x: torch.Tensor, counts: list[int], w_ih: torch.Tensor, b_ih: torch.Tensor,
               w_hh: torch.Tensor, b_hh: torch.Tensor) -> torch.Tensor:
    """Hidden states of packed episodes from a zero initial state.

    ``x [M, ..., in]`` packed as :class:`~qmix.modules.packing.EpisodePacking` does (any middle
    dims, e.g. agents, are rows of the same step), ``counts``: episodes per step, and the weights
    of an ``nn.GRU`` layer -> ``[M, ..., H]``.
    """
    rows_per_episode = x[0].numel() // x.shape[-1]
    w_ih, b_in, w_hh_t, b_rec = _scaled(w_ih, b_ih, w_hh, b_hh)
    gi = torch.nn.functional.linear(x, w_ih, b_in).reshape(-1, w_ih.shape[0])  # all steps at once
    rows = [c * rows_per_episode for c in counts]
    if torch.is_grad_enabled() and (gi.requires_grad or w_hh_t.requires_grad):
        out = _GRUPacked.apply(gi, w_hh_t, b_rec, rows)
    else:
        out = _forward(gi, w_hh_t, b_rec, rows)[0]
    return out.view(*x.shape[:-1], -1)


def gru_sequence(x: torch.Tensor, w_ih: torch.Tensor, b_ih: torch.Tensor, w_hh: torch.Tensor,
                 b_hh: torch.Tensor) -> torch.Tensor:
    """One GRU over ``x [T, N, in]`` (time-major, all of length T) -> ``[T, N, H]``."""
    T, N = x.shape[:2]
    return gru_packed(x.reshape(T * N, -1), [N] * T, w_ih, b_ih, w_hh, b_hh).view(T, N, -1)
