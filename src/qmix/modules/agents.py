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
The learner calls ``forward_packed(obs [M, n, o], last [M, n], packing)`` on whole episodes
packed without padding (:class:`EpisodePacking`); acting calls
``forward_step(obs [B, n, o], last [B, n], hidden [B, n, H])``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from qmix.modules.gru import gru_packed, gru_packed_pair
from qmix.modules.linear import linear
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
    """``fc1(layout.build(obs, last_actions))`` without building the one-hot parts.

    The one-hot columns (previous action, agent id) and the bias are summed into one table row
    per (previous action, agent) pair; the observation's product accumulates onto the looked-up
    rows in the same matrix product. With the agent id alone (no previous action) the table has
    one row per agent, added by broadcasting.
    """
    w, o, A, H = fc1.weight, layout.obs_dim, layout.n_actions, fc1.weight.shape[0]
    if not (layout.last_action or layout.agent_id):
        return linear(obs.float(), w, fc1.bias)
    table, index, col = fc1.bias.view(1, 1, H), 0, o
    if layout.last_action:
        # rows for actions 0..A-1 and an all-zero row for "no action yet" (-1)
        table = table + torch.cat([w[:, col: col + A].t(), w.new_zeros(1, H)]).unsqueeze(1)  # [A+1, 1, H]
        index = torch.where(last_actions < 0, A, last_actions)
        col += A
    if layout.agent_id:
        n = layout.n_agents
        if not layout.last_action:  # one row per agent: broadcast additions, no lookup
            return _agent_id_only(obs, w[:, :o], w[:, col: col + n].t(), fc1.bias)
        table = table + w[:, col: col + n].t().unsqueeze(0)  # [., n, H]
        index = index * n + torch.arange(n, device=obs.device)
    rows = F.embedding(index.expand(obs.shape[:-1]), table.reshape(-1, H))  # [..., n, H]
    x = linear(obs.reshape(-1, o).float(), w[:, :o], rows.view(-1, H))
    return x.view(rows.shape)


def _agent_id_only(obs: torch.Tensor, obs_cols: torch.Tensor, id_rows: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """The first layer when the agent id is the only one-hot part: ``obs [..., n, o]`` times the
    observation columns, plus each agent's id column (``id_rows [n, H]``) and the bias."""
    return linear(obs.float(), obs_cols).add_(id_rows + bias)


class _StepWeights(NamedTuple):
    key: tuple
    obs_cols: torch.Tensor | None  # fc1's observation columns (agent-id-only input)
    id_rows: torch.Tensor | None  # fc1's agent-id columns as rows [n, H]
    b1: torch.Tensor
    mid_w: torch.Tensor | None
    mid_b: torch.Tensor | None
    gru: tuple | None
    out_w: torch.Tensor
    out_b: torch.Tensor

    @staticmethod
    def of(net: "AgentNetwork", key: tuple) -> "_StepWeights":
        layout, fc1 = net.layout, net.fc1
        obs_cols = id_rows = None
        if layout.agent_id and not layout.last_action:
            o, n = layout.obs_dim, layout.n_agents
            obs_cols, id_rows = fc1.weight[:, :o], fc1.weight[:, o: o + n].t()
        mid = getattr(net, "fc_mid", None)
        rnn = getattr(net, "rnn", None)
        gru = (rnn.weight_ih_l0, rnn.weight_hh_l0, rnn.bias_ih_l0, rnn.bias_hh_l0) if rnn is not None else None
        return _StepWeights(key, obs_cols, id_rows, fc1.bias, mid.weight if mid is not None else None,
                            mid.bias if mid is not None else None, gru, net.fc2.weight, net.fc2.bias)


class _StepArrays(NamedTuple):
    key: tuple
    obs_cols: np.ndarray  # [o, H]: fc1's observation columns, transposed
    action_rows: np.ndarray | None  # [A, H]: fc1's previous-action columns as rows
    id_rows: np.ndarray | None  # [n, H]: fc1's agent-id columns as rows
    b1: np.ndarray
    mid: tuple | None  # (weight^T, bias) of the MLP's middle layer
    gru: tuple | None  # (W_ih^T, W_hh^T, b_ih, b_hh)
    out: tuple  # (weight^T, bias) of the output layer

    @staticmethod
    def of(net: "AgentNetwork", key: tuple) -> "_StepArrays":
        def a(p: torch.Tensor) -> np.ndarray:
            return p.detach().numpy()

        layout, w1 = net.layout, a(net.fc1.weight)
        o, col = layout.obs_dim, layout.obs_dim
        action_rows = id_rows = None
        if layout.last_action:
            action_rows, col = w1[:, col: col + layout.n_actions].T, col + layout.n_actions
        if layout.agent_id:
            id_rows = w1[:, col: col + layout.n_agents].T
        mid = (a(net.fc_mid.weight).T, a(net.fc_mid.bias)) if not net.recurrent else None
        rnn = getattr(net, "rnn", None)
        gru = (a(rnn.weight_ih_l0).T, a(rnn.weight_hh_l0).T, a(rnn.bias_ih_l0), a(rnn.bias_hh_l0)) if rnn is not None else None
        return _StepArrays(key, w1[:, :o].T, action_rows, id_rows, a(net.fc1.bias), mid, gru,
                           (a(net.fc2.weight).T, a(net.fc2.bias)))


# Acting on the CPU runs in NumPy while (env copies x agents) x the largest weight matrix stays
# within this many multiply-adds: products small enough that a BLAS library runs them on the
# calling thread (OpenBLAS starts its threads above 4 x 65,536; started, they spin beside torch's).
NUMPY_WORK = 2**17


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
        self._largest = max(p.numel() for p in self.parameters())  # the largest weight matrix

    def initial_hidden(self, batch: int, n_agents: int, device) -> torch.Tensor:
        return torch.zeros(batch, n_agents, self.hidden_dim, device=device)  # [B, n, H]

    def forward_seq(self, obs: torch.Tensor, last_actions: torch.Tensor, lengths=None) -> torch.Tensor:
        """Whole episodes from a zero hidden state -> ``q [B, T, n, n_actions]``.

        ``lengths [B]``: valid steps of each episode (default: all ``T``); utilities past them are 0.
        """
        B, T = obs.shape[:2]
        packing = EpisodePacking(torch.full((B,), T, device=obs.device) if lengths is None else lengths, T)
        return packing.unpack(self.forward_packed(packing.pack(obs), packing.pack(last_actions), packing))

    def forward_packed(self, obs: torch.Tensor, last_actions: torch.Tensor, packing: EpisodePacking) -> torch.Tensor:
        """Episodes packed by ``packing`` (``obs [M, n, o]``, ``last_actions [M, n]``) -> ``q [M, n, A]``."""
        x = F.relu(first_layer(self.layout, self.fc1, obs, last_actions), inplace=True)  # [M, n, H]
        if self.recurrent:
            rnn = self.rnn
            x = gru_packed(x, packing.counts, rnn.weight_ih_l0, rnn.bias_ih_l0, rnn.weight_hh_l0, rnn.bias_hh_l0)
        else:
            x = F.relu(linear(x, self.fc_mid.weight, self.fc_mid.bias), inplace=True)
        return linear(x, self.fc2.weight, self.fc2.bias)

    def forward_step(self, obs: torch.Tensor, last_actions: torch.Tensor,
                     hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One step for acting: ``obs [B, n, o]``, ``last_actions [B, n]``, ``hidden [B, n, H]``."""
        if torch.is_grad_enabled():
            w = _StepWeights.of(self, ())
        elif self.steps_in_numpy(obs):
            q, h = self.step_arrays(obs.numpy(), last_actions.numpy(), hidden.numpy())
            return torch.from_numpy(q), (hidden if h is None else torch.from_numpy(h))
        else:
            # Functional calls on the weights, whose attribute lookups and slices are done once
            # (cached only without gradients: the views were taken without them).
            w = self._step_weights()
        if w.id_rows is not None:  # agent id, no previous action: the rows added by broadcasting
            x = _agent_id_only(obs, w.obs_cols, w.id_rows, w.b1).relu_()
        else:
            x = first_layer(self.layout, self.fc1, obs, last_actions).relu_()  # [B, n, H]
        if not self.recurrent:
            return F.linear(F.linear(x, w.mid_w, w.mid_b).relu_(), w.out_w, w.out_b), hidden
        B, n, H = x.shape
        h = torch.gru_cell(x.view(B * n, H), hidden.reshape(B * n, H), *w.gru).view(B, n, H)
        return F.linear(h, w.out_w, w.out_b), h

    def steps_in_numpy(self, obs: torch.Tensor) -> bool:
        """Whether an acting step on ``obs [B, n, o]`` (without gradients) runs in NumPy
        (:meth:`step_arrays`): a few agents on the CPU, products within ``NUMPY_WORK``."""
        return obs.device.type == "cpu" and obs.shape[0] * obs.shape[1] * self._largest <= NUMPY_WORK \
            and obs.dtype == torch.float32 and self.fc1.weight.dtype == torch.float32

    def step_arrays(self, obs: np.ndarray, last_actions: np.ndarray,
                    hidden: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """``forward_step`` in NumPy on views of the parameters, for a few agents on the CPU, where
        each torch call's fixed cost is most of the work: the same function (products, ReLU, the
        GRU's gates as ``torch.nn.GRU`` defines them), rounded as NumPy's products round.
        ``obs [B, n, o]`` float32, ``last_actions [B, n]``, ``hidden [B, n, H]`` -> ``q [B, n, A]``
        and the new hidden state (None for the MLP agent, whose state is unused)."""
        w = self._step_arrays()
        B, n, o = obs.shape
        x = obs.reshape(B * n, o) @ w.obs_cols  # [B n, H]
        x += w.b1
        if w.action_rows is not None:  # the previous action's column; none before the first action
            last = last_actions.reshape(-1)
            took = last >= 0
            if took.all():
                x += w.action_rows[last]
            elif took.any():
                x[took] += w.action_rows[last[took]]
        if w.id_rows is not None:
            x = x.reshape(B, n, -1)
            x += w.id_rows
            x = x.reshape(B * n, -1)
        np.maximum(x, 0.0, out=x)
        if w.gru is None:
            x = x @ w.mid[0]
            x += w.mid[1]
            np.maximum(x, 0.0, out=x)
        else:
            w_ih, w_hh, b_ih, b_hh = w.gru
            H = x.shape[1]
            h = hidden.reshape(B * n, H)
            gi = x @ w_ih
            gi += b_ih
            gh = h @ w_hh
            gh += b_hh
            rz = gi[:, : 2 * H] + gh[:, : 2 * H]  # reset and update gates: sigmoid(v) = (tanh(v/2)+1)/2
            rz *= 0.5
            np.tanh(rz, out=rz)
            rz *= 0.5
            rz += 0.5
            cand = gh[:, 2 * H:] * rz[:, :H]
            cand += gi[:, 2 * H:]
            np.tanh(cand, out=cand)
            x = h - cand  # h' = (1 - z) * cand + z * h = cand + z * (h - cand)
            x *= rz[:, H:]
            x += cand
            hidden = x.reshape(B, n, H)
        q = x @ w.out[0]
        q += w.out[1]
        return q.reshape(B, n, -1), (hidden if w.gru is not None else None)

    def _step_arrays(self) -> "_StepArrays":
        """NumPy views of the parameters for :meth:`step_arrays`, rebuilt when their storage moves
        (they share it, so they follow every in-place update)."""
        key = (self.fc1.weight.data_ptr(), self.fc2.weight.data_ptr())
        cached = self.__dict__.get("_numpy_cache")
        if cached is None or cached.key != key:
            cached = _StepArrays.of(self, key)
            object.__setattr__(self, "_numpy_cache", cached)  # a plain attribute: not in state_dict
        return cached

    def __getstate__(self):  # copies and pickles rebuild the caches from their own parameters
        state = dict(super().__getstate__())
        state.pop("_numpy_cache", None)
        state.pop("_step_cache", None)
        return state

    def _step_weights(self) -> "_StepWeights":
        """The acting step's weights (parameters and views of them), rebuilt when the parameters'
        storage moves (flattening into one buffer, ``.to``); views follow every in-place update.
        The cached views hold the old storage, so its address cannot be reused while cached."""
        key = (self.fc1.weight.data_ptr(), self.fc2.weight.data_ptr())
        cached = self.__dict__.get("_step_cache")
        if cached is None or cached.key != key:
            with torch.no_grad():
                cached = _StepWeights.of(self, key)
            object.__setattr__(self, "_step_cache", cached)  # a plain attribute: not in state_dict
        return cached


def forward_packed_pair(online: nn.Module, target: nn.Module, obs: torch.Tensor, last_actions: torch.Tensor,
                        packing: EpisodePacking) -> tuple[torch.Tensor, torch.Tensor]:
    """``online.forward_packed`` (with gradients) and ``target.forward_packed`` (without) on the
    same inputs. For two shared-parameter DRQNs the two recurrences run side by side
    (:func:`~qmix.modules.gru.gru_packed_pair`); any other pair is two plain calls."""
    if not (type(online) is AgentNetwork and type(target) is AgentNetwork and online.recurrent):
        q = online.forward_packed(obs, last_actions, packing)
        with torch.no_grad():
            return q, target.forward_packed(obs, last_actions, packing)
    x = F.relu(first_layer(online.layout, online.fc1, obs, last_actions), inplace=True)
    with torch.no_grad():
        x_t = F.relu(first_layer(target.layout, target.fc1, obs, last_actions), inplace=True)
    weights = [(n.rnn.weight_ih_l0, n.rnn.bias_ih_l0, n.rnn.weight_hh_l0, n.rnn.bias_hh_l0) for n in (online, target)]
    h, h_t = gru_packed_pair(x, x_t, packing.counts, *weights)
    with torch.no_grad():
        q_t = linear(h_t, target.fc2.weight, target.fc2.bias)
    return linear(h, online.fc2.weight, online.fc2.bias), q_t


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

    def forward_packed(self, obs, last_actions, packing: EpisodePacking) -> torch.Tensor:
        x = F.relu(self.fc1(self.layout.build(obs, last_actions)))  # [M, n, H]
        if self.recurrent:
            gi = self.w_ih(x).split(packing.counts)  # input projections for all steps at once
            h, outs = x.new_zeros(packing.counts[0], *x.shape[1:]), []
            for g in gi:  # the recurrence itself is sequential; running episodes come first
                h = self._gru(g, h[: g.shape[0]])
                outs.append(h)
            x = torch.cat(outs)
        else:
            x = F.relu(self.fc_mid(x))
        return self.fc2(x)

    forward_seq = AgentNetwork.forward_seq

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
