"""A GRU over whole episodes with a hand-written backward pass (BPTT), for the learner.

``nn.GRU`` on the CPU records every gate of every step in the autograd graph, so its backward
replays hundreds of tiny operations. Here:

- episodes come packed (:mod:`qmix.modules.packing`): step ``t`` is one contiguous block of
  rows, and the block shrinks as episodes end, so no work is spent on padding;
- the input projections of all steps are one matrix product (autograd handles it); the biases
  are not added to that large array but applied per step: those of the r and z gates and b_hn
  as a row of the recurrent weights (for a constant-1 column of h), b_in by one small addition;
- ``tanh(a) = 2 sigmoid(2a) - 1``, with the factor 2 folded into the n gate's weights, because
  ``tanh`` is several times slower than ``sigmoid`` on CPUs without AVX-512;
- the forward loop writes each step's gates into preallocated arrays (one small matrix product
  and seven element-wise operations per step); the backward pass first turns them into gradient
  factors with a few large element-wise operations (in cache-sized blocks of rows), so that its
  sequential part is three operations per step; the recurrent weight gradient is one large
  matrix product.

Same equations and gate layout (r, z, n) as ``nn.GRU``; tests check values and gradients in float64.

Where the native kernel is configured (:mod:`qmix.modules.native`), float32 CPU inputs go through
its C++ loops instead (same layout and results to float rounding): one matrix product and one
fused pass per step, forward and backward.
"""

from __future__ import annotations

import torch

from qmix.modules import native

_BLOCK = 1 << 18  # elements per block of rows in the backward's element-wise pass (about 1 MB)


def _scaled(w_ih, b_ih, w_hh, b_hh):
    """The GRU's weights rearranged for :func:`_forward`, with the n gate's rows doubled (so that
    ``sigmoid`` of the n gate's input is ``(tanh + 1) / 2``).

    Returns ``w_ih [3H, in]`` (the projection has no bias), ``w_rec [H+1, 3H]``: ``W_hh^T`` with a
    last row of biases for a constant-1 column of h (b_ih + b_hh for r and z, b_hn for n), and
    ``b_in [H]``: the n gate's input bias, added per step.
    """
    H = w_hh.shape[1]
    scale = torch.ones(3 * H, dtype=w_hh.dtype, device=w_hh.device)
    scale[2 * H:] = 2
    b_rec = torch.cat([b_ih[: 2 * H] + b_hh[: 2 * H], b_hh[2 * H:]]) * scale
    w_rec = torch.cat([(w_hh * scale.unsqueeze(1)).t(), b_rec.unsqueeze(0)])
    return w_ih * scale.unsqueeze(1), w_rec, b_ih[2 * H:] * 2


def _forward(gi: torch.Tensor, w_rec: torch.Tensor, b_in: torch.Tensor, rows: list[int]):
    """``gi [M, 3H]``: scaled input projections, packed; ``rows``: rows per step.

    Returns ``h [M, H+1]`` (last column 1) and the gates ``rz [M, 2H]``, ``gh [M, 3H]`` (the
    recurrent products with their biases), ``n [M, H]``.
    """
    M, H3 = gi.shape
    H = H3 // 3
    out, rz, gh, n = (gi.new_empty(M, d) for d in (H + 1, 2 * H, H3, H))
    out[:, H] = 1
    # Every array cut into its per-step blocks up front (one call each, not one per step).
    g_rz, g_n = gi[:, : 2 * H].split(rows), gi[:, 2 * H:].split(rows)
    gh_t, gh_rz, gh_n = gh.split(rows), gh[:, : 2 * H].split(rows), gh[:, 2 * H:].split(rows)
    rz_t, r_t, z_t = rz.split(rows), rz[:, :H].split(rows), rz[:, H:].split(rows)
    n_t, out_t, h_t = n.split(rows), out.split(rows), out[:, :H].split(rows)
    neg_one = gi.new_tensor(-1.0)
    h = gi.new_zeros(rows[0], H + 1)
    h[:, H] = 1
    for t, m in enumerate(rows):
        h = h[:m]  # the episodes still running are the first rows of the last step
        torch.mm(h, w_rec, out=gh_t[t])  # W_hh h + biases
        torch.add(g_rz[t], gh_rz[t], out=rz_t[t]).sigmoid_()
        torch.addcmul(g_n[t], r_t[t], gh_n[t], out=n_t[t]).add_(b_in).sigmoid_()
        torch.add(neg_one, n_t[t], alpha=2, out=n_t[t])  # tanh of the n gate's input
        torch.lerp(n_t[t], h[:, :H], z_t[t], out=h_t[t])  # (1 - z) n + z h
        h = out_t[t]
    return out, (rz, gh, n)


def _previous_rows(counts: list[int], device) -> torch.Tensor:
    """For every packed row of steps 1.., the row of the same episode at the step before."""
    c = torch.tensor(counts, device=device)
    starts = torch.cumsum(c, 0) - c
    step = torch.repeat_interleave(torch.arange(1, len(counts), device=device), c[1:])
    return torch.arange(c[0], int(c.sum()), device=device) - starts[step] + starts[step - 1]


class _GRUNative(torch.autograd.Function):
    """:class:`_GRUPacked` with the loops in C++ (``native_kernels.cpp``)."""

    @staticmethod
    def forward(ctx, gi, w_rec, b_in, rows):
        kernel = native.module()
        out, gates = kernel.gru_forward(gi, w_rec, b_in, rows, True)
        ctx.save_for_backward(w_rec, out, gates)
        ctx.rows, ctx.kernel = rows, kernel
        return out[:, :-1]

    @staticmethod
    def backward(ctx, d_out):
        return (*_native_backward(ctx, d_out), None)


def _native_backward(ctx, d_out):
    """d_gi, d_w_rec, d_b_in from the saved (w_rec, out, gates) of a native forward."""
    w_rec, out, gates = ctx.saved_tensors
    return ctx.kernel.gru_backward(d_out, w_rec, out, gates, ctx.rows)


class _GRUNativePair(torch.autograd.Function):
    """Two recurrences side by side (online with gradients, target without), on two threads."""

    @staticmethod
    def forward(ctx, gi, w_rec, b_in, rows, gi_t, w_rec_t, b_in_t):
        kernel = native.module()
        out, gates, out_t = kernel.gru_forward_pair(gi, w_rec, b_in, True, gi_t, w_rec_t, b_in_t, rows)
        ctx.save_for_backward(w_rec, out, gates)
        ctx.rows, ctx.kernel = rows, kernel
        h_t = out_t[:, :-1]
        ctx.mark_non_differentiable(h_t)
        return out[:, :-1], h_t

    @staticmethod
    def backward(ctx, d_out, _):
        return (*_native_backward(ctx, d_out), None, None, None, None)


class _GRUPacked(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gi, w_rec, b_in, counts):
        out, gates = _forward(gi, w_rec, b_in, counts)
        ctx.save_for_backward(w_rec, out, *gates)
        ctx.counts = counts
        return out[:, :-1]

    @staticmethod
    def backward(ctx, d_out):
        w_rec, out, rz, gh, n = ctx.saved_tensors
        counts = ctx.counts
        M, H = d_out.shape
        first = out.new_zeros(counts[0], H + 1)
        first[:, H] = 1
        h_prev = torch.cat([first, out.index_select(0, _previous_rows(counts, out.device))])  # [M, H+1]
        # Per row: d(gates) = dh * factors, with dh the gradient of that step's output h.
        #   a = n gate's (scaled) input, dn/da = (1 - n^2) / 2    -> fa = (1 - z)(1 - n^2) / 2
        #   d(reset pre-activation)  = dh * fa * hn * r (1 - r)
        #   d(update pre-activation) = dh * (h_prev - n) * z (1 - z)
        #   d(W_hn h + b_hn)         = dh * fa * r;   d(n gate's input) = dh * fa
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
            torch.sub(h_prev[s, :H], n_, out=f_[:, 1]).mul_(z).mul_(one_minus_z)
        dh = d_out.contiguous().clone()  # becomes the gradient of each step's h through all later steps
        w = w_rec[:H].t()  # W_hh [3H, H]
        d_gh = out.new_empty(M, 3, H)
        dh_t, dh3_t, z_t = dh.split(counts), dh.unsqueeze(1).split(counts), rz[:, H:].split(counts)
        d_gh_t, d_gh2_t, f_t = d_gh.split(counts), d_gh.view(M, 3 * H).split(counts), f[:, :3].split(counts)
        for t in range(len(counts) - 2, -1, -1):
            torch.mul(dh3_t[t + 1], f_t[t + 1], out=d_gh_t[t + 1])
            dh_t[t][: counts[t + 1]].addcmul_(dh_t[t + 1], z_t[t + 1]).addmm_(d_gh2_t[t + 1], w)
        torch.mul(dh3_t[0], f_t[0], out=d_gh_t[0])
        d_gh = d_gh.view(M, 3 * H)
        d_w = h_prev.t() @ d_gh  # [H+1, 3H], the bias row included
        d_n = torch.mul(dh, f[:, 3], out=d_gh[:, 2 * H:])  # now the gradient of the input projections
        return d_gh, d_w, d_n.sum(0), None


def _kernel_for(x: torch.Tensor):
    """The native kernel if it is configured and ``x`` is a float32 CPU tensor, else None."""
    kernel = native.module()
    return kernel if kernel is not None and x.dtype == torch.float32 and x.device.type == "cpu" else None


def _inputs(x: torch.Tensor, counts: list[int], weights: tuple):
    """The input products of all steps at once ``gi [M, 3H]``, the scaled recurrent weights and
    n-gate bias (:func:`_scaled`), and the rows per step, for packed ``x [M, ..., in]``."""
    w_ih, w_rec, b_in = _scaled(*weights)
    gi = torch.nn.functional.linear(x, w_ih).reshape(-1, w_ih.shape[0])
    rows_per_episode = x[0].numel() // x.shape[-1]
    return gi, w_rec, b_in, [c * rows_per_episode for c in counts]


def gru_packed(x: torch.Tensor, counts: list[int], w_ih: torch.Tensor, b_ih: torch.Tensor,
               w_hh: torch.Tensor, b_hh: torch.Tensor) -> torch.Tensor:
    """Hidden states of packed episodes from a zero initial state.

    ``x [M, ..., in]`` packed as :class:`~qmix.modules.packing.EpisodePacking` does (any middle
    dims, e.g. agents, are rows of the same step), ``counts``: episodes per step, and the weights
    of an ``nn.GRU`` layer -> ``[M, ..., H]``.
    """
    gi, w_rec, b_in, rows = _inputs(x, counts, (w_ih, b_ih, w_hh, b_hh))
    grad = torch.is_grad_enabled() and (gi.requires_grad or w_rec.requires_grad)
    kernel = _kernel_for(gi)
    if kernel is not None:
        gi, w_rec, b_in = gi.contiguous(), w_rec.contiguous(), b_in.contiguous()
        if grad:
            out = _GRUNative.apply(gi, w_rec, b_in, rows)
        else:
            out = kernel.gru_forward(gi, w_rec, b_in, rows, False)[0][:, :-1]
    elif grad:
        out = _GRUPacked.apply(gi, w_rec, b_in, rows)
    else:
        out = _forward(gi, w_rec, b_in, rows)[0][:, :-1]
    return out.view(*x.shape[:-1], -1)


def gru_packed_pair(x: torch.Tensor, x_target: torch.Tensor, counts: list[int], weights: tuple,
                    target_weights: tuple) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`gru_packed` of two networks on inputs packed alike: the online one (``x``,
    ``weights`` = ``(w_ih, b_ih, w_hh, b_hh)``, with gradients) and the target one (no gradients).

    With the native kernel on float32 CPU tensors both recurrences run at once, one per thread;
    otherwise this is two calls of :func:`gru_packed`.
    """
    if _kernel_for(x) is None:
        h = gru_packed(x, counts, *weights)
        with torch.no_grad():
            return h, gru_packed(x_target, counts, *target_weights)
    gi, w_rec, b_in, rows = _inputs(x, counts, weights)
    with torch.no_grad():
        gi_t, w_rec_t, b_in_t, _ = _inputs(x_target, counts, target_weights)
    h, h_t = _GRUNativePair.apply(gi, w_rec.contiguous(), b_in.contiguous(), rows, gi_t, w_rec_t.contiguous(),
                                  b_in_t.contiguous())
    return h.view(*x.shape[:-1], -1), h_t.view(*x.shape[:-1], -1)


def gru_sequence(x: torch.Tensor, w_ih: torch.Tensor, b_ih: torch.Tensor, w_hh: torch.Tensor,
                 b_hh: torch.Tensor) -> torch.Tensor:
    """One GRU over ``x [T, N, in]`` (time-major, all of length T) -> ``[T, N, H]``."""
    T, N = x.shape[:2]
    return gru_packed(x.reshape(T * N, -1), [N] * T, w_ih, b_ih, w_hh, b_hh).view(T, N, -1)
