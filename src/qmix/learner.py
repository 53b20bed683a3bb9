"""The learner: TD targets on ``Q_tot``, the masked TD loss, the optimiser and target networks.

One update, on a batch of whole episodes ``[B, T(+1), ...]`` (T = the longest episode sampled):

    q        = agent(inputs)                     # [B, T+1, n, A]   online
    q_target = target_agent(inputs)              # [B, T+1, n, A]
    chosen   = q[:, :-1].gather(actions)         # [B, T, n]
    u*       = argmax_{avail} q[:, 1:]           # double Q: online argmax ...
    next     = q_target[:, 1:].gather(u*)        # ... valued by the target nets
    q_tot    = mixer(chosen, s_t);  next_tot = target_mixer(next, s_{t+1})
    y        = r_t + gamma * (1 - terminated_t) * next_tot     (or n-step / TD(lambda))
    loss     = sum(mask * (q_tot - y)^2) / sum(mask)

With ``mixer = none`` (IQL) every agent has its own TD error against the shared team reward.
No work is spent on padding: the networks, the mixers and the loss see only the valid steps of
each episode, packed into one array (:mod:`qmix.modules.packing`).
"""

from __future__ import annotations

import copy
import dataclasses

import torch
import torch.nn.functional as F

from qmix.buffer import EpisodeBatch
from qmix.controller import UNAVAILABLE
from qmix.modules.agents import forward_packed_pair
from qmix.modules.packing import EpisodePacking
from qmix.optim import FlatAdam, FlatRMSprop


def td_targets(reward: torch.Tensor, terminated: torch.Tensor, filled: torch.Tensor,
               next_value: torch.Tensor, gamma: float, n_step: int = 1, td_lambda: float = 0.0) -> torch.Tensor:
    """Targets for every step of a batch of episodes.

    ``reward``, ``terminated``, ``filled``: ``[B, T]``; ``next_value [B, T, ...]`` is the target
    value of the state reached by step t (trailing dims, e.g. agents for IQL, broadcast).
    A terminated step never bootstraps; the last step of a truncated episode bootstraps from its
    final state. Steps past an episode's end are garbage and must be masked by the caller.
    """
    extra = next_value.dim() - reward.dim()
    shape = reward.shape + (1,) * extra
    r = reward.reshape(shape)
    cont = (~terminated).to(next_value.dtype).reshape(shape)  # 0 where no bootstrap
    valid = filled.to(next_value.dtype).reshape(shape)
    if td_lambda > 0:
        # G_t = r_t + gamma * cont_t * [(1 - lam) V_{t+1} + lam G_{t+1}], with G_{t+1} := V_{t+1}
        # at the last step of an episode (its final state is bootstrapped fully).
        T = reward.shape[1]
        out = torch.empty_like(next_value)
        g_next = next_value[:, -1]
        for t in range(T - 1, -1, -1):
            if t < T - 1:
                nv = valid[:, t + 1]
                g_next = nv * ((1 - td_lambda) * next_value[:, t] + td_lambda * out[:, t + 1]) \
                    + (1 - nv) * next_value[:, t]
            else:
                g_next = next_value[:, t]
            out[:, t] = r[:, t] + gamma * cont[:, t] * g_next
        return out
    if n_step == 1:
        return r + gamma * cont * next_value
    # n-step: sum_{k<K} gamma^k r_{t+k} + gamma^K cont_{t+K-1} V_{t+K-1}, K = steps left (<= n).
    T = reward.shape[1]
    ret = torch.zeros_like(next_value)
    steps_left = torch.zeros_like(valid)
    for k in range(n_step):
        r_k = F.pad(r * valid, (0, 0) * extra + (0, k))[:, k:k + T] if k else r * valid
        v_k = F.pad(valid, (0, 0) * extra + (0, k))[:, k:k + T] if k else valid
        ret = ret + (gamma ** k) * r_k
        steps_left = steps_left + v_k
    last = (torch.arange(T, device=reward.device).view(1, T, *(1,) * extra) + steps_left - 1).clamp(min=0).long()
    last = last.expand_as(next_value)
    boot = (cont.expand_as(next_value) * next_value).gather(1, last)
    return ret + gamma ** steps_left * boot


def masked_td_loss(q_tot: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """Mean squared TD error over the valid entries (``mask`` 1) and the logged statistics."""
    td_error = (q_tot - y) * mask
    n_valid = mask.sum().clamp(min=1)
    loss = (td_error ** 2).sum() / n_valid
    stats = {
        "loss": loss.detach(),
        "td_error_abs": td_error.abs().sum().detach() / n_valid,
        "q_taken_mean": (q_tot * mask).sum().detach() / n_valid,
        "target_mean": (y * mask).sum().detach() / n_valid,
    }
    return loss, stats


def make_optimizer(cfg, params: list):
    """RMSprop or Adam as configured. On one flat parameter (the usual case, see
    :func:`flatten_parameters`) qmix's own steps (:mod:`qmix.optim`: torch's arithmetic, without
    loading torch's compiler front end); otherwise ``torch.optim``'s, Adam's fused kernel where
    this torch has it (CPU and CUDA, torch >= 2.4), RMSprop's multi-tensor one."""
    if len(params) == 1:
        if cfg.optimizer == "adam":
            return FlatAdam(params[0], lr=cfg.lr, eps=cfg.optim_eps)
        return FlatRMSprop(params[0], lr=cfg.lr, alpha=cfg.optim_alpha, eps=cfg.optim_eps)
    if cfg.optimizer == "adam":
        try:
            return torch.optim.Adam(params, lr=cfg.lr, eps=cfg.optim_eps, fused=True)
        except (RuntimeError, TypeError, ValueError):
            return torch.optim.Adam(params, lr=cfg.lr, eps=cfg.optim_eps, foreach=True)
    return torch.optim.RMSprop(params, lr=cfg.lr, alpha=cfg.optim_alpha, eps=cfg.optim_eps, foreach=True)


class RewardStats:
    """Running mean and variance of the rewards of every sampled batch (Chan et al.'s parallel
    update), as epymarl's ``standardise_rewards``: each batch updates the statistics with all its
    ``B x T`` entries (steps past an episode's end, reward 0, included), then its rewards become
    ``(r - mean) / sqrt(var)``. Kept as tensors on the rewards' device (no host sync)."""

    def __init__(self):
        self.mean, self.var, self.count = torch.zeros(()), torch.ones(()), 1e-4

    def update(self, reward: torch.Tensor) -> None:
        flat = reward.detach().reshape(-1).double()
        n = flat.numel()
        mean, var = self.mean.to(flat), self.var.to(flat)
        batch_var = flat.var() if n > 1 else torch.zeros_like(mean)  # unbiased, as torch.var
        delta, total = flat.mean() - mean, self.count + n
        m2 = var * self.count + batch_var * n + delta.square() * (self.count * n / total)
        self.mean, self.var, self.count = mean + delta * (n / total), m2 / total, total

    def standardise(self, reward: torch.Tensor) -> torch.Tensor:
        mean, var = self.mean.to(reward), self.var.to(reward)
        return (reward - mean) / var.clamp(min=1e-12).sqrt()

    def state_dict(self) -> dict:
        return {"mean": float(self.mean), "var": float(self.var), "count": self.count}

    def load_state_dict(self, data: dict) -> None:
        self.mean = torch.tensor(data["mean"], dtype=torch.float64)
        self.var = torch.tensor(data["var"], dtype=torch.float64)
        self.count = data["count"]


def flatten_parameters(params: list[torch.nn.Parameter]) -> torch.nn.Parameter | None:
    """Move ``params`` and their gradients into one contiguous buffer each (the parameters become
    views of it), so that zeroing, clipping and the optimiser step are a few operations on one
    tensor instead of a few per parameter. Returns the flat parameter (its ``.grad`` is the flat
    gradient, which backward accumulates into in place), or None if the parameters do not share a
    device and dtype. Modules must not be moved (``.to``) afterwards."""
    if not params or len({(p.device, p.dtype) for p in params}) != 1:
        return None
    flat = torch.nn.Parameter(torch.cat([p.detach().reshape(-1) for p in params]))
    flat.grad = torch.zeros_like(flat)
    offset = 0
    for p in params:
        n = p.numel()
        p.data = flat.data[offset:offset + n].view_as(p)
        p.grad = flat.grad[offset:offset + n].view_as(p)
        offset += n
    return flat


def _flat_optimizer_state(saved: dict, params: list) -> dict:
    """An optimiser state saved per parameter (checkpoints of earlier versions) as the state of
    the flat parameter: each per-parameter tensor (RMSprop's square_avg, Adam's moments)
    concatenated in parameter order, the step count taken from the first."""
    if len(saved["param_groups"][0]["params"]) == 1:
        return saved
    per_param = [saved["state"].get(i, {}) for i in range(len(params))]
    flat = {}
    for k, first in (per_param[0] if per_param else {}).items():
        if k != "step" and isinstance(first, torch.Tensor):
            flat[k] = torch.cat([st[k].reshape(-1).to(p) if k in st else torch.zeros(p.numel()).to(p)
                                 for st, p in zip(per_param, params)])
        else:
            flat[k] = first
    group = {**saved["param_groups"][0], "params": [0]}
    return {"state": {0: flat} if flat else {}, "param_groups": [group]}


def _copy_state(state: dict) -> dict:
    """An optimiser's per-parameter state, its tensors cloned."""
    return {k: v.clone() if isinstance(v, torch.Tensor) else copy.deepcopy(v) for k, v in state.items()}


class Learner:
    """Owns the online and target networks and the optimiser."""

    def __init__(self, cfg, agent: torch.nn.Module, mixer: torch.nn.Module | None, n_actions: int):
        self.cfg, self.agent, self.mixer, self.n_actions = cfg, agent, mixer, n_actions
        self.target_agent = copy.deepcopy(agent).requires_grad_(False)
        self.target_mixer = copy.deepcopy(mixer).requires_grad_(False) if mixer is not None else None
        self.params = list(agent.parameters()) + (list(mixer.parameters()) if mixer is not None else [])
        self.flat = flatten_parameters(self.params)
        self.trained = [self.flat] if self.flat is not None else self.params  # what clipping and the optimiser see
        # Built on first use (a process that only holds these networks, the main process beside
        # a learner process, never needs it).
        self._optimizer = None
        self._optimizer_state: dict | None = None  # loaded before the optimiser was built
        self.updates = 0
        self.reward_stats = RewardStats() if cfg.standardise_rewards else None

    @property
    def optimizer(self):
        return self.build_optimizer()

    def build_optimizer(self):
        """The optimiser, built now if it was not yet (with any state loaded before)."""
        if self._optimizer is None:
            self._optimizer = make_optimizer(self.cfg, self.trained)
            if self._optimizer_state is not None:
                self._optimizer.load_state_dict(self._optimizer_state)
                self._optimizer_state = None
        return self._optimizer

    def loss(self, batch: EpisodeBatch) -> tuple[torch.Tensor, dict]:
        cfg = self.cfg
        lengths = batch.filled.sum(1)
        # Observations 0..L of each episode (L + 1 of them) go through the agent networks; the
        # TD errors, the mixers and the loss work on transitions 0..L-1. Both packed: [M, ...].
        full = bool((lengths == batch.filled.shape[1]).all())  # every episode fills the batch: packing by slicing
        inputs = EpisodePacking(lengths + 1, batch.obs.shape[1], uniform=full)
        steps = EpisodePacking(lengths, batch.filled.shape[1], uniform=full)
        # The agent's previous action at step t is actions[t-1]; none (-1) at t = 0 (not built for
        # agents whose input has no previous action).
        layout = getattr(self.agent, "layout", None)
        last = None
        if layout is None or layout.last_action:
            last = inputs.pack(torch.cat([torch.full_like(batch.actions[:, :1], -1), batch.actions], dim=1))
        obs = inputs.pack(batch.obs)
        # Online [M', n, A] with gradients and target without (their recurrences run side by side).
        q, q_target = forward_packed_pair(self.agent, self.target_agent, obs, last, inputs)
        with torch.no_grad():
            q_target = inputs.take(q_target, steps, shift=1)  # [M, n, A] at s_{t+1} for each transition
            avail_next = steps.pack(batch.avail, shift=1)  # [M, n, A]
            if cfg.double_q:
                best = inputs.take(q.detach(), steps, shift=1).masked_fill(~avail_next, UNAVAILABLE).argmax(-1, keepdim=True)
                next_q = q_target.gather(-1, best).squeeze(-1)  # [M, n]
            else:
                next_q = q_target.masked_fill(~avail_next, UNAVAILABLE).max(-1).values
            # A dead or finished agent can have no available action at all: value it 0, not -1e10.
            next_q = next_q * avail_next.any(-1)
        chosen = inputs.take(q, steps).gather(-1, steps.pack(batch.actions).unsqueeze(-1)).squeeze(-1)  # [M, n]

        if self.mixer is not None:
            q_tot = self.mixer(chosen, steps.pack(batch.state))  # [M]
            with torch.no_grad():
                next_tot = self.target_mixer(next_q, steps.pack(batch.state, shift=1))  # [M]
        else:
            q_tot, next_tot = chosen, next_q  # IQL: [M, n]

        with torch.no_grad():
            y = td_targets(batch.reward, batch.terminated, batch.filled, steps.unpack(next_tot),
                           cfg.gamma, cfg.n_step, cfg.td_lambda)
            y = steps.pack(y)
        # No step after a termination (pymarl's mask[:, 1:] *= 1 - terminated[:, :-1]).
        mask = batch.filled.clone()
        mask[:, 1:] &= ~batch.terminated[:, :-1]
        mask = steps.pack(mask).to(q_tot.dtype)
        if q_tot.dim() == 2:
            mask = mask.unsqueeze(-1).expand_as(q_tot)
        return masked_td_loss(q_tot, y, mask)

    def update(self, batch: EpisodeBatch) -> dict:
        if self.reward_stats is not None:
            self.reward_stats.update(batch.reward)
            batch = dataclasses.replace(batch, reward=self.reward_stats.standardise(batch.reward))
        loss, stats = self.loss(batch)
        if self.flat is not None:
            self.flat.grad.zero_()  # the parameters' .grad are views of it: never set them to None
        else:
            self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        norm = self._clip_gradients()
        stats["grad_norm"] = norm
        # An inf/NaN loss or gradient is never applied: the networks and the optimiser's state stay
        # as they were, and ``nonfinite_updates`` (1) is logged. (One host sync per update.)
        finite = bool(torch.isfinite(norm))
        stats["nonfinite_updates"] = torch.tensor(0.0 if finite else 1.0)
        if not finite:
            return stats
        self.optimizer.step()
        self.updates += 1
        if self.cfg.target_update_tau > 0:
            self.soft_update_targets(self.cfg.target_update_tau)
        return stats

    @torch.no_grad()
    def _clip_gradients(self) -> torch.Tensor:
        """Scale the gradients to norm at most ``grad_norm_clip``; returns the norm before.
        ``clip_grad_norm_``'s arithmetic; on the flat gradient, two operations instead of its
        per-call bookkeeping."""
        if self.flat is None:
            return torch.nn.utils.clip_grad_norm_(self.trained, self.cfg.grad_norm_clip).detach()
        grad = self.flat.grad
        norm = torch.linalg.vector_norm(grad)
        grad.mul_((self.cfg.grad_norm_clip / (norm + 1e-6)).clamp_(max=1.0))
        return norm

    @torch.no_grad()
    def snapshot(self) -> dict:
        """A copy of everything an update changes (trained parameters, soft-updated targets,
        optimiser state, reward statistics, update count), for :meth:`restore`: cheap on the flat
        parameter (a few tensor copies), unlike :meth:`state_dict` plus a deep copy."""
        return {
            "trained": [p.detach().clone() for p in self.trained],
            "targets": [p.clone() for p in self._target_parameters()] if self.cfg.target_update_tau > 0 else None,
            "optimizer": {p: _copy_state(self.optimizer.state[p]) for p in self.trained if p in self.optimizer.state},
            "reward_stats": self.reward_stats.state_dict() if self.reward_stats is not None else None,
            "updates": self.updates,
        }

    @torch.no_grad()
    def restore(self, snap: dict) -> None:
        for p, saved in zip(self.trained, snap["trained"]):
            p.copy_(saved)
        if snap["targets"] is not None:
            for p, saved in zip(self._target_parameters(), snap["targets"]):
                p.copy_(saved)
        self.optimizer.state.clear()
        for p, state in snap["optimizer"].items():
            self.optimizer.state[p] = _copy_state(state)
        if self.reward_stats is not None:
            self.reward_stats.load_state_dict(snap["reward_stats"])
        self.updates = snap["updates"]

    def _target_parameters(self) -> list[torch.Tensor]:
        nets = [self.target_agent] + ([self.target_mixer] if self.target_mixer is not None else [])
        return [p for net in nets for p in net.parameters()]

    @torch.no_grad()
    def hard_update_targets(self) -> None:
        self.target_agent.load_state_dict(self.agent.state_dict())
        if self.mixer is not None:
            self.target_mixer.load_state_dict(self.mixer.state_dict())

    @torch.no_grad()
    def soft_update_targets(self, tau: float) -> None:
        pairs = [(self.target_agent, self.agent)]
        if self.mixer is not None:
            pairs.append((self.target_mixer, self.mixer))
        for target, online in pairs:
            for tp, p in zip(target.parameters(), online.parameters()):
                tp.lerp_(p, tau)

    def state_dict(self) -> dict:
        return {
            "agent": self.agent.state_dict(),
            "target_agent": self.target_agent.state_dict(),
            "mixer": self.mixer.state_dict() if self.mixer is not None else None,
            "target_mixer": self.target_mixer.state_dict() if self.mixer is not None else None,
            # None: a fresh optimiser (never built, nothing loaded)
            "optimizer": self._optimizer.state_dict() if self._optimizer is not None else self._optimizer_state,
            "updates": self.updates,
            "reward_stats": self.reward_stats.state_dict() if self.reward_stats is not None else None,
        }

    def load_state_dict(self, data: dict) -> None:
        self.agent.load_state_dict(data["agent"])
        self.target_agent.load_state_dict(data["target_agent"])
        if self.mixer is not None:
            self.mixer.load_state_dict(data["mixer"])
            self.target_mixer.load_state_dict(data["target_mixer"])
        optimizer = data["optimizer"]
        if optimizer is not None and self.flat is not None:
            optimizer = _flat_optimizer_state(optimizer, self.params)
        if self._optimizer is not None and optimizer is not None:
            self._optimizer.load_state_dict(optimizer)
        else:  # built (fresh, or from this state) on first use
            self._optimizer, self._optimizer_state = None, optimizer
        self.updates = data["updates"]
        if self.reward_stats is not None and data.get("reward_stats") is not None:
            self.reward_stats.load_state_dict(data["reward_stats"])
