"""The multi-agent controller: builds each agent's input and picks actions.

An agent's input at step t is ``[o_t^a | onehot(u_{t-1}^a) (obs_last_action) | onehot(a) (obs_agent_id)]``.
The same builder serves acting (one step, ``[B, n, ...]``) and learning (whole episodes,
``[B, T, n, ...]``), so the two can never disagree.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Large negative utility for unavailable actions (finite, so 0 * it is still 0 in masked sums).
UNAVAILABLE = -1e10


def agent_input_dim(cfg, obs_dim: int, n_agents: int, n_actions: int) -> int:
    return obs_dim + (n_actions if cfg.obs_last_action else 0) + (n_agents if cfg.obs_agent_id else 0)


def build_inputs(cfg, obs: torch.Tensor, last_actions: torch.Tensor | None, n_actions: int) -> torch.Tensor:
    """``obs [..., n, obs_dim]``, ``last_actions [..., n]`` (int, -1 = none yet) -> ``[..., n, in]``."""
    parts = [obs.float()]
    if cfg.obs_last_action:
        # -1 (no previous action) maps to an all-zero one-hot.
        parts.append(F.one_hot(last_actions.clamp(min=0), n_actions).to(parts[0].dtype)
                     * (last_actions >= 0).unsqueeze(-1))
    if cfg.obs_agent_id:
        n = obs.shape[-2]
        eye = torch.eye(n, device=obs.device, dtype=parts[0].dtype)
        parts.append(eye.expand(*obs.shape[:-2], n, n))
    return torch.cat(parts, dim=-1) if len(parts) > 1 else parts[0]


def masked_argmax(q: torch.Tensor, avail: torch.Tensor) -> torch.Tensor:
    """Greedy action among the available ones: ``q [..., A]``, ``avail [..., A]`` bool -> ``[...]``."""
    return q.masked_fill(~avail, UNAVAILABLE).argmax(-1)


def epsilon_greedy(q: torch.Tensor, avail: torch.Tensor, epsilon: float, generator: torch.Generator | None) -> torch.Tensor:
    """Per agent: a uniformly random available action with probability epsilon, else greedy.

    ``q [B, n, A]``, ``avail [B, n, A]`` bool -> actions ``[B, n]`` int64. Unavailable actions are
    never chosen. Draws its randomness from ``generator`` only (resumable).
    """
    greedy = masked_argmax(q, avail)
    if epsilon <= 0.0:
        return greedy
    noise = torch.rand(q.shape, device=q.device, generator=generator)  # [B, n, A]
    random_action = noise.masked_fill(~avail, -1.0).argmax(-1)  # uniform over available actions
    explore = torch.rand(q.shape[:-1], device=q.device, generator=generator) < epsilon
    return torch.where(explore, random_action, greedy)


class EpsilonSchedule:
    """Linear annealing over environment steps (pymarl's DecayThenFlatSchedule, linear)."""

    def __init__(self, start: float, finish: float, anneal_steps: int):
        self.start, self.finish, self.anneal_steps = start, finish, anneal_steps

    def __call__(self, t_env: int) -> float:
        if self.anneal_steps <= 0:
            return self.finish
        frac = min(1.0, t_env / self.anneal_steps)
        return self.start + frac * (self.finish - self.start)
