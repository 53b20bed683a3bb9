"""vmas: VMAS's own batch (no per-copy wrapping) through the real vmas package."""

from __future__ import annotations

import warnings

import pytest
import torch

pytest.importorskip("vmas")
warnings.filterwarnings("ignore", module="vmas")

import qmix  # noqa: E402
from qmix.errors import QmixError  # noqa: E402
from envcheck import rollout  # noqa: E402


def test_balance_batch_shapes_and_time_limit():
    env = qmix.envs.make("vmas:balance", num_envs=4, seed=0, time_limit=3)
    i = env.info
    assert (i.n_agents, i.n_actions, i.episode_limit) == (3, 9, 3)
    obs, state, avail = env.reset()
    assert obs.shape == (4, 3, i.obs_dim) and obs.dtype == torch.float32
    assert torch.equal(state, obs.reshape(4, -1)) and avail.all() and avail.shape == (4, 3, 9)
    assert env.env.num_envs == 4  # one VMAS batch, not copies
    for t in range(3):
        res = env.step(torch.zeros(4, 3, dtype=torch.long))
    assert res.truncated.all() and not res.terminated.any()
    frozen = env.step(torch.zeros(4, 3, dtype=torch.long))  # ended copies keep their final obs
    assert torch.equal(frozen.obs, res.obs) and not frozen.reward.any()


def test_reward_sum_mean_and_reset_mask():
    a = qmix.envs.make("vmas:balance", num_envs=2, seed=0)
    b = qmix.envs.make("vmas:balance", num_envs=2, seed=0, reward_aggregation="mean")
    a.reset(), b.reset()
    acts = torch.tensor([[1, 2, 3], [4, 5, 6]])
    ra, rb = a.step(acts).reward, b.step(acts).reward
    assert torch.allclose(ra, 3 * rb)
    res = a.step(acts)
    mask = torch.tensor([True, False])
    obs, state, _ = a.reset(mask)
    assert torch.equal(obs[1], res.obs[1]) and not torch.equal(obs[0], res.obs[0])
    assert a.env.steps.tolist() == [0, 2]


def test_terminated_from_scenario_done():
    env = qmix.envs.make("vmas:balance", num_envs=2, seed=0, time_limit=50)
    env.reset()
    scenario = env.env.scenario
    original = scenario.done
    scenario.done = lambda: torch.tensor([True, False])
    res = env.step(torch.zeros(2, 3, dtype=torch.long))
    scenario.done = original
    assert res.terminated.tolist() == [True, False] and not res.truncated.any()


def test_same_seed_same_trajectories():
    a = rollout(qmix.envs.make("vmas:balance", num_envs=2, seed=3, time_limit=4))
    b = rollout(qmix.envs.make("vmas:balance", num_envs=2, seed=3, time_limit=4))
    c = rollout(qmix.envs.make("vmas:balance", num_envs=2, seed=4, time_limit=4))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, c))


def test_errors():
    with pytest.raises(QmixError, match="balance"):
        qmix.envs.make("vmas:balanc")
    with pytest.raises(QmixError, match="unknown env_args key 'workers'"):
        qmix.envs.make("vmas:balance", workers=2)
