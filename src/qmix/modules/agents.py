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

from qmix.modules.gru import gru_sequences


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
        return self.forward_seq_pair(inputs, None)[0]

    def forward_seq_pair(self, inputs: torch.Tensor, target: "AgentNetwork | None"):
        """Utilities of this network and (without gradient) of ``target`` on the same inputs.

        The two recurrences run in one loop, one batched matrix product per step; the large
        input and output layers of all steps are single matrix products.
        Returns ``(q [B, T, n, A], q_target [B, T, n, A] or None)``.
        """
        B, T, n, _ = inputs.shape
        if not self.recurrent:
            q = self.fc2(F.relu(self.fc_mid(F.relu(self.fc1(inputs)))))
            if target is None:
                return q, None
            with torch.no_grad():
                return q, target.fc2(F.relu(target.fc_mid(F.relu(target.fc1(inputs)))))
        x = inputs.transpose(0, 1)  # [T, B, n, in], time-major for the recurrence
        nets = [self] if target is None else [self, target]
        gis = []
        for i, net in enumerate(nets):
            with torch.set_grad_enabled(torch.is_grad_enabled() and i == 0):
                hidden = F.relu(net.fc1(x))
                gis.append(F.linear(hidden, net.rnn.weight_ih_l0, net.rnn.bias_ih_l0).view(T, B * n, -1))
        gi = torch.stack(gis, 1)  # [T, G, B*n, 3H]
        w_hh_t = torch.stack([net.rnn.weight_hh_l0.t() for net in nets])  # [G, H, 3H]
        b_hh = torch.stack([net.rnn.bias_hh_l0 for net in nets]).unsqueeze(1)  # [G, 1, 3H]
        h = gru_sequences(gi, w_hh_t, b_hh, n_grad=1).view(T, len(nets), B, n, -1)
        q = self.fc2(h[:, 0]).transpose(0, 1)  # [B, T, n, A]
        if target is None:
            return q, None
        with torch.no_grad():
            return q, target.fc2(h[:, 1]).transpose(0, 1)

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

    def forward_seq_pair(self, inputs, target):
        q = self.forward_seq(inputs)
        if target is None:
            return q, None
        with torch.no_grad():
            return q, target.forward_seq(inputs)

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
