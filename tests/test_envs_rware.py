"""rware: the Multi-Robot Warehouse through the real rware package."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("rware")

import qmix  # noqa: E402
from qmix.errors import QmixError  # noqa: E402
from envcheck import rollout, same  # noqa: E402

ID = "rware:rware-tiny-2ag-v2"


def test_shapes_state_avail():
    env = qmix.envs.make(ID, num_envs=2, seed=0)
    i = env.info
    assert (i.n_agents, i.n_actions, i.episode_limit) == (2, 5, 500)
    obs, state, avail = env.reset()
    assert obs.shape == (2, 2, i.obs_dim) and obs.dtype == torch.float32
    assert torch.equal(state, obs.reshape(2, -1))  # concatenated observations
    assert avail.all()  # RWARE has no masks


def test_time_limit_truncates_never_terminates():
    env = qmix.envs.make(ID, num_envs=2, seed=0, time_limit=7)
    env.reset()
    for t in range(7):
        res = env.step(torch.zeros(2, 2, dtype=torch.long))
        assert not res.terminated.any()
    assert res.truncated.all()


def test_reward_is_sum_of_deliveries():
    env = qmix.envs.make(ID, num_envs=1, seed=0)
    env.reset()
    copy = env._envs[0]
    rewards = []
    orig = copy.env.step

    def spy(actions):
        out = orig(actions)
        rewards.append(sum(out[1]))
        return out

    copy.env.step = spy
    total = sum(env.step(torch.randint(0, 5, (1, 2))).reward.item() for _ in range(20))
    assert total == pytest.approx(sum(rewards))


def test_reset_mask_seeding_workers():
    env = qmix.envs.make(ID, num_envs=3, seed=1)
    env.reset()
    res = env.step(torch.ones(3, 2, dtype=torch.long))
    mask = torch.tensor([True, False, False])
    obs, _, _ = env.reset(mask)
    assert torch.equal(obs[~mask], res.obs[~mask])
    ref = rollout(qmix.envs.make(ID, num_envs=3, seed=1, time_limit=10))
    assert same(ref, rollout(qmix.envs.make(ID, num_envs=3, seed=1, time_limit=10)))
    with qmix.envs.make(ID, num_envs=3, seed=1, time_limit=10, workers=2) as env:
        assert same(ref, rollout(env))


def test_unknown_id():
    with pytest.raises(QmixError, match="rware-tiny-2ag-v2"):
        qmix.envs.make("rware:rware-tiny-2ag-v1")
