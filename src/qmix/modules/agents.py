"""Agent networks: per-agent utilities ``Q_a(tau_a, .)`` from each agent's own inputs.

The DRQN of the QMIX paper is ``linear -> ReLU -> GRU -> linear``. An agent's input at step t is
``[o_t^a | onehot(u_{t-1}^a) (obs_last_action) | onehot(a) (obs_agent_id)]`` (the layout is an
:class:`InputLayout`). Parameters are shared across agents by default; ``separate`` gives each
agent its own weights, computed for all agents at once with batched matrix products.

Networks take the parts of the input, not the concatenation: the first layer applies its weight
columns for the observation as a matrix product and adds the columns of the two one-hot parts
by lookup, which is the same function without building (and, on big maps, copying hundreds of
megabytes of) one-hot inputs.

Shapes: ``obs [..., n, obs_dim]``, ``last_actions [..., n]`` int (-1 = none yet).
The learner calls ``forward_seq_pair(obs [B, T, n, o], last [B, T, n], target, lengths)`` on whole
episodes; acting calls ``forward_step(obs [B, n, o], last [B, n], hidden [B, n, H])``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from qmix.modules.gru import gru_packed
from qmix.modules.packing import EpisodePacking


@dataclass(frozen=True)
class InputLayout:
    obs_dim: int
    n_actions: int
    n_agents: int
    last_action: bool
    agent_id: bool

    @property
    def dim(self) -> int:
        return self.obs_dim + self.n_actions * self.last_action + self.n_agents * self.agent_id

    def build(self, obs: torch.Tensor, last_actions: torch.Tensor) -> torch.Tensor:
        """The concatenated input ``[..., n, dim]`` (for per-agent weights and references)."""
        parts = [obs.float()]
        if self.last_action:
            parts.append(F.one_hot(last_actions.clamp(min=0), self.n_actions).float()
                         * (last_actions >= 0).unsqueeze(-1))
        if self.agent_id:
            n = obs.shape[-2]
            parts.append(torch.eye(n, device=obs.device).expand(*obs.shape[:-2], n, n))
        return torch.cat(parts, dim=-1) if len(parts) > 1 else parts[0]


def first_layer(layout: InputLayout, fc1: nn.Linear, obs: torch.Tensor, last_actions: torch.Tensor) -> torch.Tensor:
    """``fc1(layout.build(obs, last_actions))`` without building the one-hot parts."""
    w, o, A = fc1.weight, layout.obs_dim, layout.n_actions
    x = F.linear(obs.float(), w[:, :o], fc1.bias)  # [..., n, H]
    col = o
    if layout.last_action:
        # columns of the previous action's one-hot; an all-zero row for "no action yet" (-1)
        table = torch.cat([w[:, col: col + A].t(), w.new_zeros(1, w.shape[0])])  # [A+1, H]
        x = x + F.embedding(torch.where(last_actions < 0, A, last_actions), table)
        col += A
    if layout.agent_id:
        x = x + w[:, col: col + layout.n_agents].t()  # [n, H], broadcast over the leading dims
    return x


class AgentNetwork(nn.Module):
    """Shared-parameter DRQN (``recurrent=True``) or MLP agent."""

    def __init__(self, layout: InputLayout, hidden_dim: int, recurrent: bool = True):
        super().__init__()
        self.layout, self.hidden_dim, self.recurrent = layout, hidden_dim, recurrent
        self.fc1 = nn.Linear(layout.dim, hidden_dim)
        if recurrent:
            self.rnn = nn.GRU(hidden_dim, hidden_dim)
        else:
            self.fc_mid = nn.Linear(hidden_dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, layout.n_actions)

    def initial_hidden(self, batch: int, n_agents: int, device) -> torch.Tensor:
        return torch.zeros(batch, n_agents, self.hidden_dim, device=device)  # [B, n, H]

    def forward_seq(self, obs: torch.Tensor, last_actions: torch.Tensor, lengths=None) -> torch.Tensor:
        """Whole episodes from a zero hidden state -> ``q [B, T, n, n_actions]``."""
        return self.forward_seq_pair(obs, last_actions, None, lengths)[0]

    def forward_seq_pair(self, obs, last_actions, target: "AgentNetwork | None", lengths=None):
        """Utilities of this network and (without gradient) of ``target`` on the same inputs.

        ``lengths [B]``: valid steps of each episode (default: all ``T``); the networks run on
        those steps only (packed, :class:`EpisodePacking`) and utilities past them are 0.
        Returns ``(q [B, T, n, A], q_target [B, T, n, A] or None)``.
        """
        B, T = obs.shape[:2]
        if lengths is None:
            lengths = torch.full((B,), T, device=obs.device)
        packing = EpisodePacking(lengths, T)
        obs, last_actions = packing.pack(obs), packing.pack(last_actions)  # [M, n, .]
        q = packing.unpack(self._packed(obs, last_actions, packing.counts))
        if target is None:
            return q, None
        with torch.no_grad():
            return q, packing.unpack(target._packed(obs, last_actions, packing.counts))

    def _packed(self, obs: torch.Tensor, last_actions: torch.Tensor, counts: list[int]) -> torch.Tensor:
        x = F.relu(first_layer(self.layout, self.fc1, obs, last_actions))  # [M, n, H]
        if self.recurrent:
            rnn = self.rnn
            x = gru_packed(x, counts, rnn.weight_ih_l0, rnn.bias_ih_l0, rnn.weight_hh_l0, rnn.bias_hh_l0)
        else:
            x = F.relu(self.fc_mid(x))
        return self.fc2(x)  # [M, n, A]

    def forward_step(self, obs: torch.Tensor, last_actions: torch.Tensor,
                     hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One step for acting: ``obs [B, n, o]``, ``last_actions [B, n]``, ``hidden [B, n, H]``."""
        x = F.relu(first_layer(self.layout, self.fc1, obs, last_actions))  # [B, n, H]
        if not self.recurrent:
            return self.fc2(F.relu(self.fc_mid(x))), hidden
        B, n, H = x.shape
        h = torch.gru_cell(
            x.reshape(B * n, H), hidden.reshape(B * n, H),
            self.rnn.weight_ih_l0, self.rnn.weight_hh_l0, self.rnn.bias_ih_l0, self.rnn.bias_hh_l0,
        ).reshape(B, n, H)
        return self.fc2(h), h


class _PerAgentLinear(nn.Module):
    """``n`` independent linear layers applied to ``x [..., n, in]`` in one batched product."""

    def __init__(self, n_agents: int, in_dim: int, out_dim: int):
        super().__init__()
        bound = 1.0 / math.sqrt(in_dim)  # nn.Linear's default init, per agent
        self.weight = nn.Parameter(torch.empty(n_agents, in_dim, out_dim).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(n_agents, out_dim).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("...ni,nio->...no", x, self.weight) + self.bias


class SeparateAgentNetwork(nn.Module):
    """One DRQN (or MLP) per agent, all agents computed together (no loop over agents)."""

    def __init__(self, layout: InputLayout, hidden_dim: int, recurrent: bool = True):
        super().__init__()
        self.layout, self.hidden_dim, self.recurrent = layout, hidden_dim, recurrent
        n = layout.n_agents
        self.fc1 = _PerAgentLinear(n, layout.dim, hidden_dim)
        if recurrent:
            self.w_ih = _PerAgentLinear(n, hidden_dim, 3 * hidden_dim)
            self.w_hh = _PerAgentLinear(n, hidden_dim, 3 * hidden_dim)
        else:
            self.fc_mid = _PerAgentLinear(n, hidden_dim, hidden_dim)
        self.fc2 = _PerAgentLinear(n, hidden_dim, layout.n_actions)

    initial_hidden = AgentNetwork.initial_hidden

    def _gru(self, gi: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        # Same gate equations as nn.GRU: r, z, n with the reset gate applied to W_hn h + b_hn.
        gh = self.w_hh(h)
        i_r, i_z, i_n = gi.chunk(3, -1)
        h_r, h_z, h_n = gh.chunk(3, -1)
        r = torch.sigmoid(i_r + h_r)
        z = torch.sigmoid(i_z + h_z)
        cand = torch.tanh(i_n + r * h_n)
        return (1 - z) * cand + z * h

    def forward_seq(self, obs, last_actions) -> torch.Tensor:
        x = F.relu(self.fc1(self.layout.build(obs, last_actions)))  # [B, T, n, H]
        B, T, n, _ = x.shape
        if self.recurrent:
            gi = self.w_ih(x)  # [B, T, n, 3H], input projections for all steps at once
            h = x.new_zeros(B, n, self.hidden_dim)
            outs = []
            for t in range(T):  # the recurrence itself is sequential
                h = self._gru(gi[:, t], h)
                outs.append(h)
            x = torch.stack(outs, dim=1)
        else:
            x = F.relu(self.fc_mid(x))
        return self.fc2(x)

    def forward_seq_pair(self, obs, last_actions, target, lengths=None):
        # Per-agent weights run on whole padded episodes (``lengths`` is not used); the learner
        # masks the padded steps.
        q = self.forward_seq(obs, last_actions)
        if target is None:
            return q, None
        with torch.no_grad():
            return q, target.forward_seq(obs, last_actions)

    def forward_step(self, obs, last_actions, hidden):
        x = F.relu(self.fc1(self.layout.build(obs, last_actions)))
        if self.recurrent:
            h = self._gru(self.w_ih(x), hidden)
            return self.fc2(h), h
        return self.fc2(F.relu(self.fc_mid(x))), hidden


def input_layout(cfg, obs_dim: int, n_agents: int, n_actions: int) -> InputLayout:
    return InputLayout(obs_dim, n_actions, n_agents, cfg.obs_last_action, cfg.obs_agent_id)


def build_agent(cfg, obs_dim: int, n_agents: int, n_actions: int) -> nn.Module:
    layout = input_layout(cfg, obs_dim, n_agents, n_actions)
    recurrent = cfg.agent == "rnn"
    if cfg.separate_agent_params:
        return SeparateAgentNetwork(layout, cfg.rnn_hidden_dim, recurrent)
    return AgentNetwork(layout, cfg.rnn_hidden_dim, recurrent)
