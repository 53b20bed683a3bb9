"""smac/smacv2: the adapter to StarCraft II SMAC, tested against a stand-in module that mimics
SMAC's documented API (StarCraft II cannot run here). The stand-in lives in this file only."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest
import torch

import qmix
from qmix.errors import QmixError

N_AGENTS, N_ACTIONS, OBS, STATE, LIMIT = 3, 9, 7, 11, 6


class FakeStarCraft2Env:
    """Mimics smac.env.StarCraft2Env: a battle that is won when the agents' actions sum to 12
    (or lost when they are all 0), times out at the episode limit, and reports like SMAC does."""

    instances: list = []

    def __init__(self, map_name="8m", seed=None, continuing_episode=False, crash_at=None, **kwargs):
        if map_name != "3m" and not map_name.startswith("10gen_"):
            raise KeyError(map_name)
        self.map_name, self.seed, self.kwargs = map_name, seed, kwargs
        self.continuing_episode, self.crash_at = continuing_episode, crash_at
        self.episode_limit = LIMIT
        self.rng = np.random.default_rng(seed)
        self.launched = False
        self.resets = []
        FakeStarCraft2Env.instances.append(self)

    def get_env_info(self):
        return {"state_shape": STATE, "obs_shape": OBS, "n_actions": N_ACTIONS, "n_agents": N_AGENTS,
                "episode_limit": self.episode_limit}

    def reset(self, reset_config=None):
        self.launched = True
        self.resets.append(reset_config)
        self.t = 0
        self.x = self.rng.normal(size=OBS * N_AGENTS).astype(np.float32)
        return self.get_obs(), self.get_state()

    def get_obs(self):
        return [self.x[i * OBS:(i + 1) * OBS] + self.t for i in range(N_AGENTS)]

    def get_state(self):
        return np.full(STATE, self.t, np.float32)

    def get_avail_actions(self):
        return [[1] * (N_ACTIONS - 1 - i) + [0] * (i + 1) for i in range(N_AGENTS)]

    def step(self, actions):
        actions = [int(a) for a in actions]
        if self.crash_at is not None and self.seed == 1 and self.t + 1 == self.crash_at:
            raise ConnectionError("SC2 went away")
        self.t += 1
        info = {"battle_won": False, "dead_allies": 0, "dead_enemies": 1}
        terminated = False
        if sum(actions) == 12:
            terminated, info["battle_won"], info["dead_enemies"] = True, True, 3
            reward = 10.0
        elif sum(actions) == 0:
            terminated, info["dead_allies"] = True, N_AGENTS
            reward = 0.0
        else:
            reward = 0.5
            if self.t >= self.episode_limit:
                terminated = True
                if self.continuing_episode:
                    info["episode_limit"] = True
        return reward, terminated, info

    def close(self):
        self.launched = False


class FakeCapabilityWrapper:
    """Mimics smacv2.env.StarCraftCapabilityEnvWrapper (draws a reset config per episode)."""

    def __init__(self, **kwargs):
        self.capability_config = kwargs["capability_config"]
        self.env = FakeStarCraft2Env(**{k: v for k, v in kwargs.items() if k != "capability_config"})

    def reset(self):
        return self.env.reset({"team_gen": self.capability_config["team_gen"]["unit_types"][:1]})

    def __getattr__(self, name):
        return getattr(self.env, name)


@pytest.fixture
def fake_smac(monkeypatch, tmp_path):
    smac, env = types.ModuleType("smac"), types.ModuleType("smac.env")
    env.StarCraft2Env = FakeStarCraft2Env
    smac.env = env
    smacv2, env2 = types.ModuleType("smacv2"), types.ModuleType("smacv2.env")
    env2.StarCraftCapabilityEnvWrapper = FakeCapabilityWrapper
    smacv2.env = env2
    for name, mod in [("smac", smac), ("smac.env", env), ("smacv2", smacv2), ("smacv2.env", env2)]:
        monkeypatch.setitem(sys.modules, name, mod)
    (tmp_path / "Maps" / "SMAC_Maps").mkdir(parents=True)
    monkeypatch.setenv("SC2PATH", str(tmp_path))
    FakeStarCraft2Env.instances = []
    return tmp_path


def acts(*rows):
    return torch.tensor(rows, dtype=torch.long)


def test_shapes_state_avail_reward(fake_smac):
    env = qmix.envs.make("smac:3m", num_envs=2, seed=0, workers=0)
    i = env.info
    assert (i.n_agents, i.n_actions, i.obs_dim, i.state_dim, i.episode_limit) == (3, 9, 7, 11, 6)
    assert set(i.info_keys) >= {"battle_won"}
    obs, state, avail = env.reset()
    assert obs.shape == (2, 3, 7) and state.shape == (2, 11) and avail.shape == (2, 3, 9)
    assert avail.dtype == torch.bool and avail[:, 0, :8].all() and not avail[:, 2, 6:].any()
    res = env.step(acts([1, 1, 1], [1, 2, 3]))
    assert res.reward.tolist() == [0.5, 0.5]  # SMAC's reward is already the team reward
    assert (res.state == 1).all()


def test_won_lost_and_timeout(fake_smac):
    env = qmix.envs.make("smac:3m", num_envs=3, seed=0, workers=0)
    env.reset()
    res = env.step(acts([4, 4, 4], [0, 0, 0], [1, 1, 1]))
    assert res.terminated.tolist() == [True, True, False] and not res.truncated.any()
    assert res.info["battle_won"].tolist() == [1.0, 0.0, 0.0]
    assert res.info["dead_allies"].tolist() == [0.0, 3.0, 0.0]
    for t in range(LIMIT - 1):
        res = env.step(acts([1, 1, 1], [1, 1, 1], [1, 1, 1]))
    # SMAC says terminated at the episode limit; qmix makes it a truncation (bootstrap)
    assert res.truncated.tolist() == [False, False, True] and not res.terminated.any()


def test_timeout_with_continuing_episode_flag(fake_smac):
    env = qmix.envs.make("smac:3m", num_envs=1, seed=0, workers=0, env_kwargs={"continuing_episode": True})
    env.reset()
    for _ in range(LIMIT):
        res = env.step(acts([1, 1, 1]))
    assert res.truncated.all() and not res.terminated.any()


def test_seeds_reset_mask_and_kwargs(fake_smac):
    env = qmix.envs.make("smac:3m", num_envs=3, seed=10, workers=0, env_kwargs={"difficulty": "7"})
    seeds = sorted(e.seed for e in FakeStarCraft2Env.instances)
    assert seeds == [10, 11, 12]
    assert all(e.kwargs == {"difficulty": "7"} for e in FakeStarCraft2Env.instances)
    obs, _, _ = env.reset()
    res = env.step(acts([1, 1, 1], [1, 1, 1], [1, 1, 1]))
    mask = torch.tensor([False, True, False])
    obs2, state2, _ = env.reset(mask)
    assert torch.equal(obs2[~mask], res.obs[~mask]) and (state2[1] == 0).all() and (state2[0] == 1).all()
    again = qmix.envs.make("smac:3m", num_envs=3, seed=10, workers=0)
    assert torch.equal(again.reset()[0], obs)
    env.close()
    assert not any(e.launched for e in FakeStarCraft2Env.instances[:3])


def test_workers_match_in_process_and_crash_is_reported(fake_smac):
    ref = qmix.envs.make("smac:3m", num_envs=2, seed=0, workers=0)
    with qmix.envs.make("smac:3m", num_envs=2, seed=0) as env:  # default: one worker per copy
        assert len(env._workers) == 2
        a, b = ref.reset(), env.reset()
        assert all(torch.equal(x, y) for x, y in zip(a, b))
        for row in ([1, 1, 1], [4, 4, 4]):
            ra, rb = ref.step(acts(row, row)), env.step(acts(row, row))
            assert all(torch.equal(x, y) for x, y in zip(ra[:6], rb[:6]))
    env = qmix.envs.make("smac:3m", num_envs=2, seed=0, env_kwargs={"crash_at": 2})
    env.reset()
    env.step(acts([1, 1, 1], [1, 1, 1]))
    with pytest.raises(QmixError, match=r"smac:3m: worker 1 .*ConnectionError: SC2 went away"):
        env.step(acts([1, 1, 1], [1, 1, 1]))


def test_smacv2_capability_config(fake_smac):
    env = qmix.envs.make("smacv2:terran_5_vs_6", num_envs=1, seed=0, workers=0)
    fake = FakeStarCraft2Env.instances[-1]
    assert fake.map_name == "10gen_terran"
    assert fake.kwargs == {"obs_own_pos": True, "use_unit_ranges": True}
    wrapper_env = env._envs[0].env
    cfg = wrapper_env.capability_config
    assert (cfg["n_units"], cfg["n_enemies"]) == (5, 6)
    assert cfg["team_gen"]["unit_types"] == ["marine", "marauder", "medivac"]
    assert cfg["start_positions"]["dist_type"] == "surrounded_and_reflect"
    env.reset()
    assert fake.resets == [{"team_gen": ["marine"]}]  # the wrapper drew this episode's teams


def test_missing_package_and_starcraft(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "smac", None)  # import smac fails
    monkeypatch.setitem(sys.modules, "smac.env", None)
    with pytest.raises(QmixError, match=r"pip install git\+https://github.com/oxwhirl/smac.git"):
        qmix.envs.make("smac:3m")
    with pytest.raises(QmixError, match="unknown SMACv2 scenario"):
        qmix.envs.make("smacv2:protos_5_vs_5")


def test_missing_starcraft_says_what_to_install(fake_smac, monkeypatch, tmp_path):
    monkeypatch.setenv("SC2PATH", str(tmp_path / "nowhere"))
    with pytest.raises(QmixError, match="StarCraft II was not found.*SC2PATH"):
        qmix.envs.make("smac:3m")
    empty = tmp_path / "sc2"
    empty.mkdir()
    monkeypatch.setenv("SC2PATH", str(empty))
    with pytest.raises(QmixError, match="SMAC maps are missing"):
        qmix.envs.make("smac:3m")
