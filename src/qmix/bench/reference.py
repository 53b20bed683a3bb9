"""A reference QMIX update written the plain pymarl way, to measure ours against.

The agent is ``fc -> GRUCell -> fc`` stepped in a Python loop over the T+1 time steps, once for
the online and once for the target network; the mixer is applied per batch; double-Q target,
masked TD loss, RMSprop, gradient-norm clipping, float32. It computes the same loss and gradients
as :class:`qmix.learner.Learner` (a test checks this), only the way of computing differs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from qmix.buffer import EpisodeBatch
from qmix.controller import UNAVAILABLE


class CellAgent(nn.Module):
    """pymarl's RNNAgent: fc1 -> ReLU -> GRUCell -> fc2, one step at a time."""

    def __init__(self, input_dim: int, n_actions: int, hidden_dim: int):
        super().__init__()
        self.hidden_dim = hidden_dim
        self.fc1 = nn.Linear(input_dim, hidden_dim)
        self.rnn = nn.GRUCell(hidden_dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, n_actions)

    def forward(self, inputs, hidden):
        x = F.relu(self.fc1(inputs))
        h = self.rnn(x, hidden)
        return self.fc2(h), h

    def load_from(self, agent) -> "CellAgent":
        """Copy the weights of a shared :class:`qmix.modules.agents.AgentNetwork` (GRU layer)."""
        with torch.no_grad():
            self.fc1.load_state_dict(agent.fc1.state_dict())
            self.fc2.load_state_dict(agent.fc2.state_dict())
            self.rnn.weight_ih.copy_(agent.rnn.weight_ih_l0)
            self.rnn.weight_hh.copy_(agent.rnn.weight_hh_l0)
            self.rnn.bias_ih.copy_(agent.rnn.bias_ih_l0)
            self.rnn.bias_hh.copy_(agent.rnn.bias_hh_l0)
        return self


class ReferenceLearner:
    def __init__(self, cfg, layout, agent: CellAgent, target_agent: CellAgent, mixer, target_mixer):
        self.cfg, self.layout = cfg, layout
        self.agent, self.target_agent, self.mixer, self.target_mixer = agent, target_agent, mixer, target_mixer
        self.params = list(agent.parameters()) + list(mixer.parameters())
        self.optimizer = torch.optim.RMSprop(self.params, lr=cfg.lr, alpha=cfg.optim_alpha, eps=cfg.optim_eps)

    def _unroll(self, net: CellAgent, batch: EpisodeBatch) -> torch.Tensor:
        B, T1, n, _ = batch.obs.shape
        last = torch.cat([torch.full_like(batch.actions[:, :1], -1), batch.actions], dim=1)
        h = torch.zeros(B * n, net.hidden_dim, device=batch.obs.device)
        outs = []
        for t in range(T1):  # pymarl's mac.forward(batch, t) loop
            inputs = self.layout.build(batch.obs[:, t], last[:, t])  # [B, n, in]
            q, h = net(inputs.reshape(B * n, -1), h)
            outs.append(q.view(B, n, -1))
        return torch.stack(outs, dim=1)  # [B, T+1, n, A]

    def loss(self, batch: EpisodeBatch) -> torch.Tensor:
        cfg = self.cfg
        q = self._unroll(self.agent, batch)
        chosen = q[:, :-1].gather(3, batch.actions.unsqueeze(3)).squeeze(3)
        with torch.no_grad():
            q_target = self._unroll(self.target_agent, batch)[:, 1:]
            avail = batch.avail[:, 1:]
            best = q[:, 1:].detach().masked_fill(~avail, UNAVAILABLE).argmax(3, keepdim=True)
            target_max = q_target.gather(3, best).squeeze(3) * avail.any(-1)
            next_tot = self.target_mixer(target_max, batch.state[:, 1:])
            y = batch.reward + cfg.gamma * (~batch.terminated).float() * next_tot
        q_tot = self.mixer(chosen, batch.state[:, :-1])
        mask = batch.filled.clone()
        mask[:, 1:] &= ~batch.terminated[:, :-1]
        mask = mask.float()
        td = (q_tot - y) * mask
        return (td ** 2).sum() / mask.sum()

    def update(self, batch: EpisodeBatch) -> torch.Tensor:
        loss = self.loss(batch)
        self.optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, self.cfg.grad_norm_clip)
        self.optimizer.step()
        return loss.detach()
