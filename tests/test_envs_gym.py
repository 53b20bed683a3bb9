"""The gym: family and the shared vectorisation (qmix.envs.vector), with the example environment
of docs/environments.md ("Train QMIX on your own environment")."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
import torch

gym = pytest.importorskip("gymnasium")
from gymnasium import spaces  # noqa: E402

import qmix  # noqa: E402
from qmix.errors import QmixError  # noqa: E402
from envcheck import rollout, same  # noqa: E402


# --- the example from docs/environments.md ----------------------------------------------------
class LineGather(gym.Env):
    """``n_agents`` agents on a line of ``size`` cells must all reach the goal cell.

    Actions: 0 stay, 1 left, 2 right (moving off the line is masked out).
    Observation of an agent: one-hot of its own cell and one-hot of the goal cell.
    Rewards (one per agent): -0.1 while the agent is away from the goal; 1 each when all are there,
    which ends the episode.
    """

    def __init__(self, n_agents: int = 2, size: int = 5):
        self.n_agents, self.size = n_agents, size
        self.observation_space = spaces.Tuple(
            [spaces.Box(0.0, 1.0, (2 * size,), np.float32) for _ in range(n_agents)]
        )
        self.action_space = spaces.Tuple([spaces.Discrete(3) for _ in range(n_agents)])

    def _obs(self):
        eye = np.eye(self.size, dtype=np.float32)
        return tuple(np.concatenate([eye[p], eye[self.goal]]) for p in self.pos)

    def _info(self):
        return {"action_mask": [[True, p > 0, p < self.size - 1] for p in self.pos]}

    def get_state(self):  # optional: a global state; otherwise qmix concatenates the observations
        eye = np.eye(self.size, dtype=np.float32)
        return np.concatenate([eye[p] for p in self.pos] + [eye[self.goal]])

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self.goal = int(self.np_random.integers(self.size))
        self.pos = self.np_random.integers(self.size, size=self.n_agents)
        return self._obs(), self._info()

    def step(self, actions):
        moves = np.array([0, -1, 1])[np.asarray(actions)]
        self.pos = np.clip(self.pos + moves, 0, self.size - 1)
        at_goal = self.pos == self.goal
        terminated = bool(at_goal.all())
        rewards = [1.0] * self.n_agents if terminated else [0.0 if g else -0.1 for g in at_goal]
        return self._obs(), rewards, terminated, False, self._info()


gym.register("LineGather-v0", entry_point=LineGather, max_episode_steps=20)
# ----------------------------------------------------------------------------------------------


class Faulty(LineGather):
    """Misbehaves on step ``at`` of copy ``who`` (``mode``: raise, exit, hang)."""

    def __init__(self, mode: str = "raise", at: int = 3, who: int = 1):
        super().__init__()
        self.mode, self.at, self.who, self.t = mode, at, who, 0

    def reset(self, seed=None, options=None):
        if seed is not None:
            self.copy = seed  # seeds are seed + i: the copy index with seed=0
        return super().reset(seed=seed)

    def step(self, actions):
        self.t += 1
        if self.copy == self.who and self.t == self.at:
            if self.mode == "raise":
                raise RuntimeError("boom in copy 1")
            if self.mode == "exit":
                os._exit(7)
            time.sleep(30)
        return super().step(actions)


gym.register("Faulty-v0", entry_point=Faulty, max_episode_steps=20)


def test_shapes_state_avail_and_reward():
    env = qmix.envs.make("gym:LineGather-v0", num_envs=4, seed=0)
    info = env.info
    assert (info.n_agents, info.n_actions, info.obs_dim, info.state_dim, info.episode_limit) == (2, 3, 10, 15, 20)
    obs, state, avail = env.reset()
    assert obs.shape == (4, 2, 10) and obs.dtype == torch.float32
    assert state.shape == (4, 15) and state.dtype == torch.float32
    assert avail.shape == (4, 2, 3) and avail.dtype == torch.bool
    # the mask comes from info["action_mask"]: left is unavailable exactly at cell 0
    pos = obs[..., :5].argmax(-1)
    assert torch.equal(avail[..., 1], pos > 0) and torch.equal(avail[..., 2], pos < 4)
    assert torch.equal(state[:, 10:], obs[:, 0, 5:])  # get_state() is used: goal at the end
    res = env.step(torch.zeros(4, 2, dtype=torch.long))  # stay: -0.1 per agent away from goal
    away = (obs[..., :5].argmax(-1) != obs[..., 5:].argmax(-1)).sum(-1).float()
    expect = torch.where(res.terminated, torch.full_like(away, 2.0), -0.1 * away)
    assert torch.allclose(res.reward, expect)
    env.close()


def test_reward_mean_and_concatenated_state():
    class NoState(LineGather):
        get_state = None

    gym.register("LineGatherNoState-v0", entry_point=NoState, max_episode_steps=20)
    env = qmix.envs.make("gym:LineGatherNoState-v0", num_envs=2, seed=0, reward_aggregation="mean")
    obs, state, _ = env.reset()
    assert torch.equal(state, obs.reshape(2, -1))
    res = env.step(torch.zeros(2, 2, dtype=torch.long))
    away = (obs[..., :5].argmax(-1) != obs[..., 5:].argmax(-1)).sum(-1).float()
    assert torch.allclose(res.reward, torch.where(res.terminated, torch.ones(2), -0.05 * away))
    with pytest.raises(QmixError, match="reward_aggregation"):
        qmix.envs.make("gym:LineGather-v0", reward_aggregation="max")


def test_time_limit_truncates_and_terminal_terminates():
    env = qmix.envs.make("gym:LineGather-v0", num_envs=8, seed=3, time_limit=6)
    env.reset()
    ended_at = torch.zeros(8, dtype=torch.long)
    kinds = torch.zeros(8, dtype=torch.long)  # 1 terminated, 2 truncated
    for t in range(1, 7):
        res = env.step(torch.zeros(8, 2, dtype=torch.long))  # everybody stays
        assert not (res.terminated & res.truncated).any()
        new = (res.terminated | res.truncated) & (ended_at == 0)
        ended_at[new] = t
        kinds[new & res.terminated] = 1
        kinds[new & res.truncated] = 2
    # staying never reaches the goal unless all start on it (terminal at step 1): others hit the limit
    assert ((kinds == 1) == (ended_at == 1)).all()
    assert ((kinds == 2) == (ended_at == 6)).all()
    assert (kinds > 0).all()


class PerAgentFlags(LineGather):
    """Reports its end flags per agent, as a dict (some multi-agent Gymnasium envs do)."""

    def step(self, actions):
        obs, rewards, terminated, truncated, info = super().step(actions)
        return obs, rewards, {i: terminated for i in range(self.n_agents)}, \
            {i: truncated for i in range(self.n_agents)}, info


gym.register("PerAgentFlags-v0", entry_point=PerAgentFlags, max_episode_steps=20)


def test_per_agent_end_flags_end_the_episode_only_when_all_are_set():
    plain = qmix.envs.make("gym:LineGather-v0", num_envs=8, seed=3, time_limit=6)
    flags = qmix.envs.make("gym:PerAgentFlags-v0", num_envs=8, seed=3, time_limit=6)
    plain.reset(), flags.reset()
    for _ in range(6):
        stay = torch.zeros(8, 2, dtype=torch.long)
        a, b = plain.step(stay), flags.step(stay)
        assert torch.equal(a.terminated, b.terminated) and torch.equal(a.truncated, b.truncated)


def test_ended_copies_keep_final_obs_and_reset_mask():
    env = qmix.envs.make("gym:LineGather-v0", num_envs=4, seed=1, time_limit=2)
    env.reset()
    env.step(torch.zeros(4, 2, dtype=torch.long))
    res = env.step(torch.zeros(4, 2, dtype=torch.long))
    assert (res.terminated | res.truncated).all()
    again = env.step(torch.ones(4, 2, dtype=torch.long))  # ended copies are not stepped
    assert torch.equal(again.obs, res.obs) and not again.reward.any()
    mask = torch.tensor([True, False, True, False])
    obs, state, avail = env.reset(mask)
    assert torch.equal(obs[~mask], res.obs[~mask]) and torch.equal(state[~mask], res.state[~mask])
    step = env.step(torch.zeros(4, 2, dtype=torch.long))
    assert torch.equal(step.obs[~mask], res.obs[~mask])  # still frozen


def test_same_seed_same_trajectories_and_copy_seeds():
    a = rollout(qmix.envs.make("gym:LineGather-v0", num_envs=3, seed=5))
    b = rollout(qmix.envs.make("gym:LineGather-v0", num_envs=3, seed=5))
    c = rollout(qmix.envs.make("gym:LineGather-v0", num_envs=3, seed=6))
    assert same(a, b) and not same(a, c)
    # copy i is seeded seed + i: copy 1 of seed 5 starts like copy 0 of seed 6
    assert torch.equal(a[0][1], c[0][0])


@pytest.mark.parametrize("workers", [1, 2, -1])
def test_workers_match_in_process(workers):
    ref = rollout(qmix.envs.make("gym:LineGather-v0", num_envs=3, seed=2))
    with qmix.envs.make("gym:LineGather-v0", num_envs=3, seed=2, workers=workers) as env:
        assert same(ref, rollout(env))


def test_worker_exception_is_reported():
    env = qmix.envs.make("gym:Faulty-v0", num_envs=2, seed=0, workers=2, make_kwargs={"mode": "raise"})
    env.reset()
    with pytest.raises(QmixError, match=r"gym:Faulty-v0: worker 1 .*RuntimeError: boom in copy 1"):
        for _ in range(5):
            env.step(torch.zeros(2, 2, dtype=torch.long))
    env.close()


def test_dead_worker_is_reported():
    env = qmix.envs.make("gym:Faulty-v0", num_envs=2, seed=0, workers=2, make_kwargs={"mode": "exit"})
    env.reset()
    with pytest.raises(QmixError, match=r"worker 1 .*died \(exit code 7\)"):
        for _ in range(5):
            env.step(torch.zeros(2, 2, dtype=torch.long))


def test_hung_worker_times_out():
    env = qmix.envs.make("gym:Faulty-v0", num_envs=2, seed=0, workers=2, worker_timeout=0.5,
                         make_kwargs={"mode": "hang"})
    env.reset()
    t0 = time.monotonic()
    with pytest.raises(QmixError, match="did not answer within 0.5 s"):
        for _ in range(5):
            env.step(torch.zeros(2, 2, dtype=torch.long))
    assert time.monotonic() - t0 < 5


def test_in_process_exception_propagates():
    env = qmix.envs.make("gym:Faulty-v0", num_envs=2, seed=0, make_kwargs={"mode": "raise"})
    env.reset()
    with pytest.raises(RuntimeError, match="boom"):
        for _ in range(5):
            env.step(torch.zeros(2, 2, dtype=torch.long))


def test_errors():
    with pytest.raises(QmixError, match="unknown Gymnasium id 'LineGathr-v0'.*LineGather-v0"):
        qmix.envs.make("gym:LineGathr-v0")
    with pytest.raises(QmixError, match="unknown env_args key 'time_limt'"):
        qmix.envs.make("gym:LineGather-v0", time_limt=3)
    with pytest.raises(QmixError, match="Tuple"):
        qmix.envs.make("gym:CartPole-v1")
    with pytest.raises(QmixError, match="workers"):
        qmix.envs.make("gym:LineGather-v0", workers=-3)


def test_module_prefix_imports_and_registers():
    # gym:<module>:<id> imports the module first (here an already importable one)
    env = qmix.envs.make("gym:gymnasium:LineGather-v0", num_envs=1)
    assert env.info.n_agents == 2
