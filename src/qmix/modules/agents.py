"""Agent networks: per-agent utilities ``Q_a(tau_a, .)`` from each agent's own inputs.

The DRQN of the QMIX paper is ``linear -> ReLU -> GRU -> linear``. Parameters are shared across
agents by default (the agent's one-hot id is part of its input); ``separate=True`` gives each
agent its own weights, computed for all agents at once with batched matrix products.

Shapes: the learner calls ``forward_seq(inputs [B, T, n, in]) -> q [B, T, n, n_actions]`` on whole
episodes (the recurrence over T is one fused ``nn.GRU`` call when parameters are shared); acting
calls ``forward_step(inputs [B, n, in], hidden) -> (q [B, n, n_actions], hidden)``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class AgentNetwork(nn.Module):
    """Shared-parameter DRQN (``recurrent=True``) or MLP agent."""

    def __init__(self, input_dim: int, n_actions: int, hidden_dim: int, recurrent: bool = True):
        super().__init__()
        self.hidden_dim, self.recurrent = hidden_dim, recurrent
        self.fc1 = nn.Linear(input_dim, hidden_dim)
        if recurrent:
            self.rnn = nn.GRU(hidden_dim, hidden_dim, batch_first=True)
        else:
            self.fc_mid = nn.Linear(hidden_dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, n_actions)

    def initial_hidden(self, batch: int, n_agents: int, device) -> torch.Tensor:
        return torch.zeros(batch, n_agents, self.hidden_dim, device=device)  # [B, n, H]

    def forward_seq(self, inputs: torch.Tensor) -> torch.Tensor:
        """``inputs [B, T, n, in]`` from a zero hidden state -> ``q [B, T, n, n_actions]``."""
        B, T, n, _ = inputs.shape
        x = F.relu(self.fc1(inputs))  # [B, T, n, H]
        if self.recurrent:
            x = x.transpose(1, 2).reshape(B * n, T, self.hidden_dim)  # one sequence per agent
            x, _ = self.rnn(x)  # [B*n, T, H]
            x = x.reshape(B, n, T, self.hidden_dim).transpose(1, 2)  # [B, T, n, H]
        else:
            x = F.relu(self.fc_mid(x))
        return self.fc2(x)

    def forward_step(self, inputs: torch.Tensor, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One step for acting: ``inputs [B, n, in]``, ``hidden [B, n, H]``."""
        B, n, _ = inputs.shape
        x = F.relu(self.fc1(inputs))  # [B, n, H]
        if self.recurrent:
            h = torch.gru_cell(
                x.reshape(B * n, -1), hidden.reshape(B * n, -1),
                self.rnn.weight_ih_l0, self.rnn.weight_hh_l0, self.rnn.bias_ih_l0, self.rnn.bias_hh_l0,
            ).reshape(B, n, -1)
            return self.fc2(h), h
        return self.fc2(F.relu(self.fc_mid(x))), hidden


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

    def __init__(self, n_agents: int, input_dim: int, n_actions: int, hidden_dim: int, recurrent: bool = True):
        super().__init__()
        self.hidden_dim, self.recurrent = hidden_dim, recurrent
        self.fc1 = _PerAgentLinear(n_agents, input_dim, hidden_dim)
        if recurrent:
            self.w_ih = _PerAgentLinear(n_agents, hidden_dim, 3 * hidden_dim)
            self.w_hh = _PerAgentLinear(n_agents, hidden_dim, 3 * hidden_dim)
        else:
            self.fc_mid = _PerAgentLinear(n_agents, hidden_dim, hidden_dim)
        self.fc2 = _PerAgentLinear(n_agents, hidden_dim, n_actions)

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

    def forward_seq(self, inputs: torch.Tensor) -> torch.Tensor:
        B, T, n, _ = inputs.shape
        x = F.relu(self.fc1(inputs))  # [B, T, n, H]
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

    def forward_step(self, inputs, hidden):
        x = F.relu(self.fc1(inputs))
        if self.recurrent:
            h = self._gru(self.w_ih(x), hidden)
            return self.fc2(h), h
        return self.fc2(F.relu(self.fc_mid(x))), hidden


def build_agent(cfg, input_dim: int, n_agents: int, n_actions: int) -> nn.Module:
    recurrent = cfg.agent == "rnn"
    if cfg.separate_agent_params:
        return SeparateAgentNetwork(n_agents, input_dim, n_actions, cfg.rnn_hidden_dim, recurrent)
    return AgentNetwork(input_dim, n_actions, cfg.rnn_hidden_dim, recurrent)
