"""Mixers: combine the agents' chosen utilities ``[..., n]`` into ``Q_tot [...]``.

QMIX (Rashid et al. 2018): a two-layer feed-forward net whose weights come from hypernetworks of
the global state, made non-negative by ``abs`` so that ``dQ_tot/dQ_a >= 0`` (monotonicity, hence
IGM). Biases are unconstrained; the final bias is ``V(s)``, a two-layer hypernet with a ReLU.
The state never enters the monotonic path directly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from qmix.modules import native
from qmix.modules.linear import linear


def _hypernet(state_dim: int, out_dim: int, layers: int, embed: int) -> nn.Module:
    if layers == 1:
        return nn.Linear(state_dim, out_dim)
    return nn.Sequential(nn.Linear(state_dim, embed), nn.ReLU(), nn.Linear(embed, out_dim))


class QMixer(nn.Module):
    def __init__(self, n_agents: int, state_dim: int, embed_dim: int = 32, hypernet_layers: int = 1,
                 hypernet_embed: int = 64):
        super().__init__()
        self.n_agents, self.embed_dim = n_agents, embed_dim
        self.hyper_w1 = _hypernet(state_dim, n_agents * embed_dim, hypernet_layers, hypernet_embed)
        self.hyper_w_final = _hypernet(state_dim, embed_dim, hypernet_layers, hypernet_embed)
        self.hyper_b1 = nn.Linear(state_dim, embed_dim)
        self.hyper_v = nn.Sequential(nn.Linear(state_dim, embed_dim), nn.ReLU(), nn.Linear(embed_dim, 1))

    def hypernets(self, state: torch.Tensor) -> list[torch.Tensor]:
        """Outputs of hyper_w1, hyper_w_final, hyper_b1, hyper_v for ``state [N, S]``.

        The four first layers read the same state: they run as one matrix product.
        """
        nets = (self.hyper_w1, self.hyper_w_final, self.hyper_b1, self.hyper_v)
        firsts = [net[0] if isinstance(net, nn.Sequential) else net for net in nets]
        weight = torch.cat([layer.weight for layer in firsts])
        bias = torch.cat([layer.bias for layer in firsts])
        outs = linear(state, weight, bias).split([layer.out_features for layer in firsts], -1)
        return [net[1:](x) if isinstance(net, nn.Sequential) else x for net, x in zip(nets, outs)]

    def forward(self, agent_qs: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        """``agent_qs [..., n]``, ``state [..., state_dim]`` -> ``q_tot [...]``."""
        lead = agent_qs.shape[:-1]
        qs = agent_qs.reshape(-1, self.n_agents, 1)  # [N, n, 1]
        w1, w_final, b1, v = self.hypernets(state.reshape(-1, state.shape[-1]))
        kernel = native.module()
        if kernel is not None and qs.dtype == torch.float32 and qs.device.type == "cpu":
            # The same function in one pass forward and one backward (qmix.modules.native).
            return _NativeMixing.apply(qs.view(-1, self.n_agents), w1, b1, w_final, v, kernel).view(lead)
        w1 = w1.abs().view(-1, self.n_agents, self.embed_dim)  # [N, n, E], >= 0
        # (1 x n) @ (n x E) per row, as a broadcast product: far faster than bmm at these sizes.
        hidden = F.elu((qs * w1).sum(1) + b1)  # [N, E]
        # w_final >= 0; v: V(s)
        return ((hidden * w_final.abs()).sum(-1) + v.squeeze(-1)).view(lead)


class _NativeMixing(torch.autograd.Function):
    """``sum_e |w_final| elu(sum_a q_a |w1_ae| + b1) + v`` per row, by the native kernels."""

    @staticmethod
    def forward(ctx, qs, w1, b1, w_final, v, kernel):
        qs, w1, b1, w_final, v = (x if x.stride(-1) == 1 else x.contiguous() for x in (qs, w1, b1, w_final, v))
        ctx.save_for_backward(qs, w1, b1, w_final)
        ctx.kernel = kernel
        return kernel.mix_forward(qs, w1, b1, w_final, v)

    @staticmethod
    def backward(ctx, g):
        d_qs, d_w1, d_b1, d_w_final = ctx.kernel.mix_backward(g.contiguous(), *ctx.saved_tensors)
        return d_qs, d_w1, d_b1, d_w_final, g.unsqueeze(-1), None


class VDNMixer(nn.Module):
    """VDN (Sunehag et al. 2018): ``Q_tot = sum_a Q_a``."""

    def forward(self, agent_qs: torch.Tensor, state: torch.Tensor | None = None) -> torch.Tensor:
        return agent_qs.sum(-1)


def build_mixer(cfg, n_agents: int, state_dim: int) -> nn.Module | None:
    """The mixer named by ``cfg.mixer``; ``None`` for IQL (independent per-agent losses)."""
    if cfg.mixer == "qmix":
        return QMixer(n_agents, state_dim, cfg.mixing_embed_dim, cfg.hypernet_layers, cfg.hypernet_embed)
    if cfg.mixer == "vdn":
        return VDNMixer()
    return None
