"""lbf: Level-Based Foraging through the real lbforaging package."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("lbforaging")

import qmix  # noqa: E402
from qmix.errors import QmixError  # noqa: E402
from envcheck import rollout, same  # noqa: E402

ID = "lbf:Foraging-8x8-2p-3f-v3"


def test_shapes_state_and_avail():
    env = qmix.envs.make(ID, num_envs=3, seed=0)
    i = env.info
    assert (i.n_agents, i.n_actions, i.obs_dim, i.state_dim, i.episode_limit) == (2, 6, 15, 30, 50)
    obs, state, avail = env.reset()
    assert obs.shape == (3, 2, 15) and obs.dtype == torch.float32
    assert torch.equal(state, obs.reshape(3, -1))  # state: concatenated observations
    assert avail.shape == (3, 2, 6) and avail[..., 0].all()  # NONE is always valid
    # avail is LBF's own valid moves
    u = env._envs[0].env.unwrapped
    for a, player in enumerate(u.players):
        valid = {int(x.value) for x in u._valid_actions[player]}
        assert {k for k in range(6) if avail[0, a, k]} == valid
    no_masks = qmix.envs.make(ID, num_envs=3, seed=0, avail_masks=False)
    assert no_masks.reset()[2].all()


def test_reward_sum_and_mean_and_terminal():
    # collecting all food is the true terminal; the team reward sums the agents' rewards
    sums, means = qmix.envs.make(ID, num_envs=8, seed=0), qmix.envs.make(ID, num_envs=8, seed=0, reward_aggregation="mean")
    a, b = rollout(sums, steps=50), rollout(means, steps=50)
    rewards_sum = [x for k, x in enumerate(a) if x.dtype == torch.float32 and x.shape == (8,)]
    rewards_mean = [x for k, x in enumerate(b) if x.dtype == torch.float32 and x.shape == (8,)]
    assert torch.allclose(torch.stack(rewards_sum), 2 * torch.stack(rewards_mean))
    assert torch.stack(rewards_sum).sum() > 0


def test_time_limit_truncates():
    env = qmix.envs.make(ID, num_envs=4, seed=0, time_limit=5)
    env.reset()
    for t in range(5):
        res = env.step(torch.zeros(4, 2, dtype=torch.long))  # NONE: nothing ever gets collected
    assert res.truncated.all() and not res.terminated.any()


def test_terminated_when_all_food_collected():
    env = qmix.envs.make(ID, num_envs=1, seed=0, time_limit=50)
    env.reset()
    u = env._envs[0].env.unwrapped
    # leave one food on the field next to a player whose level suffices, then load it
    u.field[:] = 0
    p = u.players[0]
    r, c = p.position
    spot = (r + 1, c) if r + 1 < u.rows and not any(q.position == (r + 1, c) for q in u.players) else (r - 1, c)
    u.field[spot] = 1
    u._gen_valid_moves()
    res = env.step(torch.tensor([[5, 0]]))
    assert res.terminated.all() and not res.truncated.any() and res.reward.item() > 0


def test_reset_mask_seeding_and_workers():
    env = qmix.envs.make(ID, num_envs=3, seed=4)
    obs, _, _ = env.reset()
    for _ in range(3):
        res = env.step(torch.ones(3, 2, dtype=torch.long))
    mask = torch.tensor([False, True, False])
    obs2, _, _ = env.reset(mask)
    assert torch.equal(obs2[~mask], res.obs[~mask])
    ref = rollout(qmix.envs.make(ID, num_envs=3, seed=4))
    assert same(ref, rollout(qmix.envs.make(ID, num_envs=3, seed=4)))
    assert not same(ref, rollout(qmix.envs.make(ID, num_envs=3, seed=5)))
    with qmix.envs.make(ID, num_envs=3, seed=4, workers=2) as env:
        assert same(ref, rollout(env))


def test_unknown_id():
    with pytest.raises(QmixError, match="Foraging-8x8-2p-3f-v3"):
        qmix.envs.make("lbf:Foraging-8x8-2p-3f-v2")
