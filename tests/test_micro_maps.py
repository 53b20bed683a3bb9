"""micro: the maps table (sizes vs SMAC's), terrain data, registry errors and env args."""

import pytest
import torch

from qmix.envs import list_env_ids, make
from qmix.envs.micro import map_table, terrain
from qmix.envs.micro.maps import MAPS
from qmix.errors import QmixError

# SMAC's sizes per map: map -> (agents, enemies, limit, n_actions, obs, state)
SPEC_TABLE = {
    "3m": (3, 3, 60, 9, 30, 48), "8m": (8, 8, 120, 14, 80, 168), "25m": (25, 25, 150, 31, 250, 950),
    "5m_vs_6m": (5, 6, 70, 12, 55, 98), "8m_vs_9m": (8, 9, 120, 15, 85, 179),
    "10m_vs_11m": (10, 11, 150, 17, 105, 243), "27m_vs_30m": (27, 30, 180, 36, 285, 1170),
    "MMM": (10, 10, 150, 16, 160, 290), "MMM2": (10, 12, 180, 18, 176, 322),
    "2s3z": (5, 5, 120, 11, 80, 120), "3s5z": (8, 8, 150, 14, 128, 216),
    "3s5z_vs_3s6z": (8, 9, 170, 15, 136, 230), "3s_vs_3z": (3, 3, 150, 9, 36, 54),
    "3s_vs_4z": (3, 4, 200, 10, 42, 61), "3s_vs_5z": (3, 5, 250, 11, 48, 68),
    "1c3s5z": (9, 9, 180, 15, 162, 270), "2m_vs_1z": (2, 1, 150, 7, 16, 26),
    "corridor": (6, 24, 400, 30, 156, 282), "6h_vs_8z": (6, 8, 150, 14, 78, 140),
    "2s_vs_1sc": (2, 1, 300, 7, 17, 27), "so_many_baneling": (7, 32, 100, 38, 202, 397),
    "bane_vs_bane": (24, 24, 200, 30, 336, 984), "2c_vs_64zg": (2, 64, 400, 70, 332, 342),
}


def test_all_23_maps_listed():
    assert set(MAPS) == set(SPEC_TABLE)
    assert sorted(list_env_ids("micro")) == sorted(f"micro:{m}" for m in SPEC_TABLE)


def test_map_table_sizes_match_spec():
    rows = {r["name"]: r for r in map_table()}
    for name, (n_ag, n_en, limit, n_act, obs, state) in SPEC_TABLE.items():
        r = rows[name]
        got = (r["n_agents"], r["n_enemies"], r["episode_limit"], r["n_actions"], r["obs_dim"], r["state_dim"])
        assert got == (n_ag, n_en, limit, n_act, obs, state), name


@pytest.mark.parametrize("name", ["3m", "MMM2", "2s3z", "1c3s5z", "corridor", "2c_vs_64zg", "bane_vs_bane"])
def test_tensor_shapes_and_spawns(name):
    n_ag, n_en, limit, n_act, obs_dim, state_dim = SPEC_TABLE[name]
    env = make(f"micro:{name}", num_envs=3, seed=0)
    obs, state, avail = env.reset()
    assert obs.shape == (3, n_ag, obs_dim) and obs.dtype == torch.float32
    assert state.shape == (3, state_dim) and avail.shape == (3, n_ag, n_act) and avail.dtype == torch.bool
    grid = terrain.raw_walkable(name)
    for x, y in env.spawn.tolist():  # every unit starts on walkable ground, none overlapping
        assert grid[int(x), int(y)]
    d = torch.cdist(env.spawn, env.spawn) + torch.eye(env.n_units) * 99
    ground = ~torch.tensor([t.air for t in env.unit_types])
    assert (d[ground][:, ground] >= (env.radius[ground][:, None] + env.radius[ground][None, :]) - 1e-4).all()


def test_agent_order_sorted_by_type_then_position():
    env = make("micro:MMM", num_envs=1, seed=0)
    names = [t.name for t in env.unit_types[:10]]
    assert names == ["marauder"] * 2 + ["marine"] * 7 + ["medivac"]
    env = make("micro:1c3s5z", num_envs=1, seed=0)
    assert env.unit_types[0].name == "colossus"
    xs = env.spawn[1:4].tolist()
    assert xs == sorted(xs)  # the stalkers sorted by (x, y)


def test_sz_one_hot_quirk():
    env = make("micro:2s3z", num_envs=1, seed=0)
    # allies: [stalker, zealot]; enemies: [zealot, stalker]
    assert env.type_bits[0].tolist() == [1.0, 0.0] and env.unit_types[0].name == "stalker"
    enemy_stalker = [i for i in range(5, 10) if env.unit_types[i].name == "stalker"][0]
    assert env.type_bits[enemy_stalker].tolist() == [0.0, 1.0]


def test_cliff_levels_meet_only_through_ramps():
    levels = terrain._cliff_levels("2c_vs_64zg")
    walk = terrain.raw_walkable("2c_vs_64zg")
    for x in range(1, 31):
        for y in range(1, 31):
            if not walk[x, y] or levels[x, y] < 0:
                continue
            for dx in (-1, 0, 1):
                for dy in (-1, 0, 1):
                    n = levels[x + dx, y + dy]
                    if walk[x + dx, y + dy] and n >= 0:
                        assert n == levels[x, y], (x, y, dx, dy)
    cliff = terrain.walk_grid("2c_vs_64zg", "cliff", ((16.0, 16.0),))
    assert cliff[16, 12] and not walk[16, 12]  # colossi may stand on the cliff face


def test_unknown_map_and_bad_args():
    with pytest.raises(QmixError, match="did you mean 3m"):
        make("micro:3mm")
    with pytest.raises(QmixError, match="reward_sparse"):
        make("micro:3m", reward_sparce=True)
    with pytest.raises(QmixError, match="must be bool"):
        make("micro:3m", reward_sparse="yes")


def test_state_last_action_option():
    env = make("micro:3m", num_envs=1, state_last_action=False)
    assert env.info.state_dim == 21  # epymarl's setting
    env = make("micro:3m", num_envs=1, obs_last_action=True)
    assert env.info.obs_dim == 30 + 2 * 9
