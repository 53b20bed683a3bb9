"""A reference QMIX update written the plain pymarl way, to measure ours against.

The agent is ``fc -> GRUCell -> fc`` stepped in a Python loop over the T+1 time steps, once for
the online and once for the target network; the mixer is pymarl's (each hypernetwork applied to
the states on its own, the mixing as two batched products, :func:`plain_mix`); double-Q target,
masked TD loss, RMSprop, gradient-norm clipping, float32. It computes the same loss and gradients
as :class:`qmix.learner.Learner` (a test checks this), only the way of computing differs.

:class:`PlainLearner` is our :class:`~qmix.learner.Learner` with only its loss computed this plain
way, on the same modules, for training runs that compare learning curves.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from qmix.buffer import EpisodeBatch
from qmix.controller import UNAVAILABLE
from qmix.learner import Learner, masked_td_loss
from qmix.modules.agents import AgentNetwork
from qmix.modules.mixers import QMixer


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


def plain_mix(mixer: nn.Module, agent_qs: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
    """pymarl's ``QMixer.forward`` on the parameters of ``mixer`` (a :class:`QMixer`; any other
    mixer is called as it is): ``agent_qs [..., n]``, ``states [..., S]`` -> ``q_tot [...]``."""
    if not isinstance(mixer, QMixer):
        return mixer(agent_qs, states)
    n, E = mixer.n_agents, mixer.embed_dim
    lead = agent_qs.shape[:-1]
    states = states.reshape(-1, states.shape[-1])
    qs = agent_qs.reshape(-1, 1, n)
    w1 = torch.abs(mixer.hyper_w1(states)).view(-1, n, E)
    b1 = mixer.hyper_b1(states).view(-1, 1, E)
    hidden = F.elu(torch.bmm(qs, w1) + b1)
    w_final = torch.abs(mixer.hyper_w_final(states)).view(-1, E, 1)
    v = mixer.hyper_v(states).view(-1, 1, 1)
    return (torch.bmm(hidden, w_final) + v).view(lead)


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
            next_tot = plain_mix(self.target_mixer, target_max, batch.state[:, 1:])
            y = batch.reward + cfg.gamma * (~batch.terminated).float() * next_tot
        q_tot = plain_mix(self.mixer, chosen, batch.state[:, :-1])
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


class PlainLearner(Learner):
    """:class:`Learner` whose loss is computed the plain pymarl way, on the same modules.

    Optimiser, target networks, ``update`` and ``state_dict`` are the Learner's. The loss works on
    padded ``[B, T+1]`` episodes: concatenated one-hot inputs through the full ``fc1``, the GRU
    cell (or ``fc_mid``) stepped in a Python loop over every step, padding included, pymarl's mixer
    (:func:`plain_mix`) on all ``[B, T]`` rows, 1-step targets, and the Learner's mask. Shared-parameter agents only.
    """

    def __init__(self, cfg, agent: torch.nn.Module, mixer: torch.nn.Module | None, n_actions: int):
        if not isinstance(agent, AgentNetwork):
            raise ValueError(f"PlainLearner needs a shared-parameter AgentNetwork, got {type(agent).__name__} "
                             "(separate_agent_params=true is not supported).")
        if cfg.n_step != 1 or cfg.td_lambda > 0:
            raise ValueError(f"PlainLearner computes 1-step targets only; got n_step={cfg.n_step}, "
                             f"td_lambda={cfg.td_lambda}.")
        super().__init__(cfg, agent, mixer, n_actions)

    @staticmethod
    def _unroll(net: AgentNetwork, obs: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
        """``obs [B, T+1, n, o]``, ``last [B, T+1, n]`` -> ``q [B, T+1, n, A]``, one step at a time."""
        B, T1, n, _ = obs.shape
        h = obs.new_zeros(B * n, net.hidden_dim)
        outs = []
        for t in range(T1):
            x = F.relu(net.fc1(net.layout.build(obs[:, t], last[:, t]))).reshape(B * n, -1)
            if net.recurrent:
                rnn = net.rnn
                x = h = torch.gru_cell(x, h, rnn.weight_ih_l0, rnn.weight_hh_l0, rnn.bias_ih_l0, rnn.bias_hh_l0)
            else:
                x = F.relu(net.fc_mid(x))
            outs.append(net.fc2(x).view(B, n, -1))
        return torch.stack(outs, dim=1)

    def loss(self, batch: EpisodeBatch) -> tuple[torch.Tensor, dict]:
        cfg = self.cfg
        last = torch.cat([torch.full_like(batch.actions[:, :1], -1), batch.actions], dim=1)  # [B, T+1, n]
        q = self._unroll(self.agent, batch.obs, last)  # [B, T+1, n, A]
        chosen = q[:, :-1].gather(3, batch.actions.unsqueeze(3)).squeeze(3)  # [B, T, n]
        with torch.no_grad():
            q_target = self._unroll(self.target_agent, batch.obs, last)[:, 1:]
            avail = batch.avail[:, 1:]
            if cfg.double_q:
                best = q[:, 1:].detach().masked_fill(~avail, UNAVAILABLE).argmax(3, keepdim=True)
                next_q = q_target.gather(3, best).squeeze(3)
            else:
                next_q = q_target.masked_fill(~avail, UNAVAILABLE).max(3).values
            next_q = next_q * avail.any(-1)  # [B, T, n]
        if self.mixer is not None:
            q_tot = plain_mix(self.mixer, chosen, batch.state[:, :-1])  # [B, T]
            with torch.no_grad():
                next_tot = plain_mix(self.target_mixer, next_q, batch.state[:, 1:])
        else:
            q_tot, next_tot = chosen, next_q  # IQL: [B, T, n]
        mask = batch.filled.clone()
        mask[:, 1:] &= ~batch.terminated[:, :-1]
        reward, cont, mask = batch.reward, (~batch.terminated).float(), mask.float()
        if q_tot.dim() == 3:
            reward, cont, mask = reward.unsqueeze(-1), cont.unsqueeze(-1), mask.unsqueeze(-1).expand_as(q_tot)
        y = reward + cfg.gamma * cont * next_tot
        return masked_td_loss(q_tot, y, mask)
