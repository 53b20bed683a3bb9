"""Cooperative matrix games: the QMIX paper's two-step game, and the climbing and penalty games.

``matrix:two-step`` (QMIX paper, section 6.1): two agents, two actions (A=0, B=1).
Step 1 (state 1): agent 0's action picks the next state (A -> 2A, B -> 2B), reward 0.
Step 2: state 2A pays 7 for every joint action; state 2B pays ``[[0, 1], [1, 8]]``
(rows agent 0, columns agent 1). The episode then terminates. Obs and state are the one-hot of
the current state (1, 2A, 2B), seen by both agents; the terminal observation is all zeros.

``matrix:climbing`` and ``matrix:penalty`` are one-step games (Claus & Boutilier, 1998) with
three actions per agent; ``penalty`` takes ``k`` (default -100) as its miscoordination penalty.
"""

from __future__ import annotations

import torch

from qmix.envs.base import BatchedEnv, EnvInfo, StepResult
from qmix.envs.registry import check_env_args, register
from qmix.errors import QmixError

TWO_STEP_2B = [[0.0, 1.0], [1.0, 8.0]]
TWO_STEP_2A = 7.0
CLIMBING = [[11.0, -30.0, 0.0], [-30.0, 7.0, 6.0], [0.0, 0.0, 5.0]]


def penalty_matrix(k: float) -> list[list[float]]:
    return [[k, 0.0, 10.0], [0.0, 2.0, 0.0], [10.0, 0.0, k]]


class TwoStepGame(BatchedEnv):
    """The two-step game, batched. Deterministic: the seed changes nothing."""

    def __init__(self, num_envs: int, device: torch.device):
        self.num_envs, self.device = num_envs, device
        self.info = EnvInfo(n_agents=2, n_actions=2, obs_dim=3, state_dim=3, episode_limit=2)
        self._payoff_2b = torch.tensor(TWO_STEP_2B, device=device)
        self._t = torch.zeros(num_envs, dtype=torch.long, device=device)
        self._node = torch.zeros(num_envs, dtype=torch.long, device=device)  # 0=1, 1=2A, 2=2B

    def _observe(self):
        state = torch.nn.functional.one_hot(self._node, 3).float()
        state = state * (self._t < 2).unsqueeze(-1)  # terminal observation: zeros
        obs = state.unsqueeze(1).expand(-1, 2, -1).contiguous()
        avail = torch.ones(self.num_envs, 2, 2, dtype=torch.bool, device=self.device)
        return obs, state, avail

    def reset(self, mask=None):
        if mask is None:
            self._t.zero_()
            self._node.zero_()
        else:
            self._t.masked_fill_(mask, 0)
            self._node.masked_fill_(mask, 0)
        return self._observe()

    def step(self, actions):
        a0, a1 = actions[:, 0], actions[:, 1]
        first = self._t == 0
        reward = torch.where(self._node == 1, torch.full_like(a0, 0, dtype=torch.float32) + TWO_STEP_2A,
                             self._payoff_2b[a0, a1])
        reward = torch.where(first, torch.zeros_like(reward), reward)
        self._node = torch.where(first, 1 + a0, self._node)
        self._t = self._t + 1
        terminated = self._t >= 2
        obs, state, avail = self._observe()
        return StepResult(obs, state, avail, reward, terminated, torch.zeros_like(terminated), {})


class OneStepGame(BatchedEnv):
    """A one-step cooperative matrix game for two agents; the observation is a constant 1."""

    def __init__(self, payoff: list[list[float]], num_envs: int, device: torch.device):
        self.num_envs, self.device = num_envs, device
        self.payoff = torch.tensor(payoff, device=device)
        n_actions = self.payoff.shape[0]
        self.info = EnvInfo(n_agents=2, n_actions=n_actions, obs_dim=1, state_dim=1, episode_limit=1)
        self._done = torch.zeros(num_envs, dtype=torch.bool, device=device)

    def _observe(self):
        state = (~self._done).float().unsqueeze(-1)
        obs = state.unsqueeze(1).expand(-1, 2, -1).contiguous()
        avail = torch.ones(self.num_envs, 2, self.info.n_actions, dtype=torch.bool, device=self.device)
        return obs, state, avail

    def reset(self, mask=None):
        if mask is None:
            self._done.zero_()
        else:
            self._done.masked_fill_(mask, False)
        return self._observe()

    def step(self, actions):
        reward = self.payoff[actions[:, 0], actions[:, 1]]
        self._done = torch.ones_like(self._done)
        obs, state, avail = self._observe()
        return StepResult(obs, state, avail, reward, self._done.clone(), torch.zeros_like(self._done), {})


GAMES = ("two-step", "climbing", "penalty")


def make_matrix(name: str, num_envs: int, seed: int, device: torch.device, **env_args) -> BatchedEnv:
    env_id = f"matrix:{name}"
    if name == "two-step":
        check_env_args(env_id, env_args, {})
        return TwoStepGame(num_envs, device)
    if name == "climbing":
        check_env_args(env_id, env_args, {})
        return OneStepGame(CLIMBING, num_envs, device)
    if name == "penalty":
        args = check_env_args(env_id, env_args, {"k": -100.0})
        return OneStepGame(penalty_matrix(args["k"]), num_envs, device)
    raise QmixError(f"unknown matrix game {name!r}; known: {', '.join(GAMES)}.")


register("matrix", make_matrix, lambda: list(GAMES))
