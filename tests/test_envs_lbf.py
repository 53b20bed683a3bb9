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


# Variants the benchmark uses and the library's options that change observations: partial sight
# (2s: agents near an edge see farther than their food window), cooperative food, no agent
# levels, penalties, more agents and food than slots seen.
OBS_VARIANTS = [
    ("Foraging-8x8-2p-3f-v3", {}),
    ("Foraging-2s-8x8-2p-2f-coop-v3", {}),
    ("Foraging-2s-10x10-3p-3f-v3", {}),
    ("Foraging-15x15-4p-4f-v3", {}),
    ("Foraging-2s-12x12-5p-4f-v3", {"observe_agent_levels": False}),
    ("Foraging-2s-6x6-4p-2f-v3", {"sight": 1, "penalty": 0.1}),
]


@pytest.mark.parametrize("name,kwargs", OBS_VARIANTS)
def test_observations_are_the_librarys(name, kwargs):
    """qmix's LBF observations equal the library's own function's, state after state."""
    import gymnasium
    import numpy as np

    from qmix.envs.lbf import observations

    env = gymnasium.make(name, disable_env_checker=True, **kwargs).unwrapped
    library = type(env)._make_gym_obs
    rng = np.random.default_rng(0)
    env.reset(seed=3)
    seen_far = 0
    for t in range(3000):
        ours, theirs = observations(env), library(env)
        assert len(ours) == len(theirs)
        for a, b in zip(ours, theirs):
            assert a.dtype == b.dtype and np.array_equal(a, b), (name, t)
        seen_far += _seen_past_window(env)
        _, _, done, _, _ = env.step(tuple(int(x) for x in rng.integers(0, 6, len(env.players))))
        if done or t % 60 == 59:
            env.reset()
    if env.sight < env.rows // 2:
        assert seen_far > 0  # the edge rule was exercised


@pytest.mark.parametrize("name,kwargs", OBS_VARIANTS)
def test_valid_moves_are_the_librarys(name, kwargs):
    """qmix's table of valid moves equals the library's method's, state after state: the same
    actions in the same order for every player (walls, food in the way, food to load)."""
    import gymnasium
    import numpy as np

    from qmix.envs.lbf import valid_moves

    env = gymnasium.make(name, disable_env_checker=True, **kwargs).unwrapped
    rng = np.random.default_rng(1)
    env.reset(seed=4)
    seen = {"load": 0, "food_blocks": 0, "wall": 0}
    for t in range(3000):
        ours = valid_moves(env)
        type(env)._gen_valid_moves(env)
        assert ours == env._valid_actions, (name, t)
        assert list(ours) == list(env.players)
        for p, moves in ours.items():
            names = [a.name for a in moves]
            seen["load"] += "LOAD" in names
            r, c = p.position
            seen["wall"] += r == 0 and "NORTH" not in names
            seen["food_blocks"] += r > 0 and env.field[r - 1, c] > 0 and "NORTH" not in names
        _, _, done, _, _ = env.step(tuple(int(x) for x in rng.integers(0, 6, len(env.players))))
        if done or t % 60 == 59:
            env.reset()
    assert all(v > 0 for v in seen.values()), seen
    # Fields LBF's own spawning never makes (food on the border, next to every side): the same.
    for t in range(500):
        env.field = (rng.random(env.field.shape) < 0.4) * rng.integers(1, 4, env.field.shape).astype(env.field.dtype)
        for p in env.players:
            p.position = tuple(int(x) for x in rng.integers(0, env.field.shape))
        ours = valid_moves(env)
        type(env)._gen_valid_moves(env)
        assert ours == env._valid_actions, (name, "random field", t)


def _seen_past_window(env) -> int:
    """Agents that see another agent outside their food window (LBF's rule near the top/left edge)."""
    s, count = env.sight, 0
    for p in env.players:
        r, c = p.position
        r0, c0 = max(r - s, 0), max(c - s, 0)
        for q in env.players:
            y, x = q.position[0] - r0, q.position[1] - c0
            if 0 <= y <= 2 * s and 0 <= x <= 2 * s and (q.position[0] > r + s or q.position[1] > c + s):
                count += 1
    return count


@pytest.mark.parametrize("workers", [0, 1])
def test_fast_and_library_observations_give_the_same_run(workers):
    """The same seed plays the same episodes with qmix's observations and the library's."""
    fast = qmix.envs.make(ID, num_envs=2, seed=5, workers=workers)
    slow = qmix.envs.make(ID, num_envs=2, seed=5, workers=workers, library_obs=True)
    assert same(rollout(fast, steps=300), rollout(slow, steps=300))
    if workers == 0:
        u = fast._envs[0].env.unwrapped
        assert "observations" in repr(u.__dict__.get("_make_gym_obs"))  # checked, then kept
        assert "_set_valid_moves" in repr(u.__dict__.get("_gen_valid_moves"))  # checked 100 times, then kept
        for name in ("_make_gym_obs", "_gen_valid_moves"):
            assert name not in slow._envs[0].env.unwrapped.__dict__


def test_observations_that_differ_from_the_librarys_fall_back_with_a_warning(monkeypatch):
    import qmix.envs.lbf as lbf

    monkeypatch.setattr(lbf, "observations", lambda env: tuple(o + 1 for o in type(env)._make_gym_obs(env)))
    with pytest.warns(UserWarning, match="observations differ"):
        env = qmix.envs.make(ID, num_envs=1, seed=0)
        obs, _, _ = env.reset()
    monkeypatch.undo()
    reference = qmix.envs.make(ID, num_envs=1, seed=0, library_obs=True)
    assert torch.equal(obs, reference.reset()[0])
    assert "_make_gym_obs" not in env._envs[0].env.unwrapped.__dict__


def test_valid_moves_that_differ_from_the_librarys_fall_back_with_a_warning(monkeypatch):
    import qmix.envs.lbf as lbf

    real = lbf.valid_moves
    monkeypatch.setattr(lbf, "valid_moves", lambda env: {p: m[:1] for p, m in real(env).items()})  # NONE only
    with pytest.warns(UserWarning, match="valid moves differ"):
        env = qmix.envs.make(ID, num_envs=1, seed=0, avail_masks=True)
        _, _, avail = env.reset()
    monkeypatch.undo()
    reference = qmix.envs.make(ID, num_envs=1, seed=0, avail_masks=True, library_obs=True)
    assert torch.equal(avail, reference.reset()[2]) and avail.sum() > avail.shape[1]
    assert "_gen_valid_moves" not in env._envs[0].env.unwrapped.__dict__
