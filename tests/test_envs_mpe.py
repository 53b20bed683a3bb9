"""mpe: PettingZoo's Multi-Particle Environments through the real mpe2 package."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("mpe2")

import qmix  # noqa: E402
from qmix.errors import QmixError  # noqa: E402
from envcheck import rollout, same  # noqa: E402


def test_simple_spread_shapes_state_time_limit():
    env = qmix.envs.make("mpe:simple_spread_v3", num_envs=2, seed=0)
    i = env.info
    assert (i.n_agents, i.n_actions, i.obs_dim, i.state_dim, i.episode_limit) == (3, 5, 18, 54, 25)
    obs, state, avail = env.reset()
    assert obs.shape == (2, 3, 18) and state.shape == (2, 54) and avail.all()
    assert torch.equal(state, obs.reshape(2, -1))  # mpe2's state() is the concatenated observations
    for t in range(25):
        res = env.step(torch.zeros(2, 3, dtype=torch.long))
        assert res.truncated.all() == (t == 24) and not res.terminated.any()


def test_reward_sum_and_mean():
    a = qmix.envs.make("mpe:simple_spread_v3", num_envs=2, seed=0)
    b = qmix.envs.make("mpe:simple_spread_v3", num_envs=2, seed=0, reward_aggregation="mean")
    a.reset(), b.reset()
    acts = torch.tensor([[1, 2, 3], [4, 0, 1]])
    ra, rb = a.step(acts).reward, b.step(acts).reward
    assert torch.allclose(ra, 3 * rb)
    # the same as summing the library's per-agent rewards
    from mpe2 import simple_spread_v3

    raw = simple_spread_v3.parallel_env(max_cycles=26, continuous_actions=False)
    raw.reset(seed=0)
    _, rewards, *_ = raw.step({ag: int(acts[0, k]) for k, ag in enumerate(raw.possible_agents)})
    assert ra[0].item() == pytest.approx(sum(rewards.values()), rel=1e-5)


def test_heterogeneous_agents_padded_and_masked():
    env = qmix.envs.make("mpe:simple_speaker_listener_v4", num_envs=2, seed=0)
    assert (env.info.n_agents, env.info.n_actions, env.info.obs_dim) == (2, 5, 11)
    obs, state, avail = env.reset()
    assert avail[:, 0].tolist() == [[True, True, True, False, False]] * 2  # speaker: 3 actions
    assert avail[:, 1].all()
    assert (obs[:, 0, 3:] == 0).all()  # speaker's 3 features, zero-padded


def test_reset_mask_seeding_workers():
    env = qmix.envs.make("mpe:simple_spread_v3", num_envs=3, seed=0, time_limit=10)
    env.reset()
    res = env.step(torch.ones(3, 3, dtype=torch.long))
    mask = torch.tensor([False, True, True])
    obs, _, _ = env.reset(mask)
    assert torch.equal(obs[~mask], res.obs[~mask]) and not torch.equal(obs[mask], res.obs[mask])
    ref = rollout(qmix.envs.make("mpe:simple_spread_v3", num_envs=3, seed=0, time_limit=10))
    assert same(ref, rollout(qmix.envs.make("mpe:simple_spread_v3", num_envs=3, seed=0, time_limit=10)))
    assert not same(ref, rollout(qmix.envs.make("mpe:simple_spread_v3", num_envs=3, seed=1, time_limit=10)))
    with qmix.envs.make("mpe:simple_spread_v3", num_envs=3, seed=0, time_limit=10, workers=2) as env:
        assert same(ref, rollout(env))


def test_terminated_on_success():
    env = qmix.envs.make("mpe:simple_spread_v3", num_envs=1, seed=0, env_kwargs={"terminate_on_success": True})
    env.reset()
    world = env._envs[0].env.unwrapped.world
    for agent, landmark in zip(world.agents, world.landmarks):  # put every agent on a landmark
        agent.state.p_pos = landmark.state.p_pos.copy()
        agent.state.p_vel[:] = 0
    res = env.step(torch.zeros(1, 3, dtype=torch.long))
    assert res.terminated.all() and not res.truncated.any()


def test_errors():
    with pytest.raises(QmixError, match="competitive"):
        qmix.envs.make("mpe:simple_tag_v3")
    with pytest.raises(QmixError, match="simple_spread_v3"):
        qmix.envs.make("mpe:simple_spred_v3")
    with pytest.raises(QmixError, match="env_kwargs"):
        qmix.envs.make("mpe:simple_spread_v3", env_kwargs={"bogus": 1})
