"""micro: availability, damage arithmetic, healing, splash, reward, episode ends, batching."""

import dataclasses

import pytest
import torch

from qmix.envs import make
from qmix.envs.micro import MicroConfig, MicroEnv
from qmix.envs.micro.maps import MAPS, Group
from qmix.envs.micro.units import LOOPS_PER_SECOND, ZERG_REGEN_RATE

STOP = 1


def custom(groups, limit=60, ally_bits=(), enemy_bits=(), terrain="3s_vs_3z", order=(9.0, 16.0), **cfg):
    """A battle on ``terrain``'s open ground with the given groups (spawned far apart)."""
    spec = dataclasses.replace(MAPS[terrain], groups=tuple(groups), episode_limit=limit,
                               ally_bits=ally_bits, enemy_bits=enemy_bits, enemy_order=order)
    return MicroEnv(spec, num_envs=1, seed=0, device=torch.device("cpu"), config=MicroConfig(**cfg))


def place(env, positions):
    env.pos[0] = torch.tensor(positions, dtype=torch.float32)
    return env._observe()


def act(env, *actions):
    return env.step(torch.tensor([list(actions)]))


# ---------------------------------------------------------------- availability
def test_availability_rules():
    env = make("micro:3m", num_envs=1, seed=0)
    env.reset()
    # agent 0 at the west edge (walkable x >= 2), agent 1 at the south edge (y >= 7)
    _, _, avail = place(env, [[2.5, 16], [12, 7.5], [12, 20], [18.4, 20], [18.1, 16], [25, 16]])
    assert avail[0, 0, 5].item() is False and avail[0, 0, 4].item() is True  # west blocked, east ok
    assert avail[0, 1, 3].item() is False and avail[0, 1, 2].item() is True  # south blocked
    # agent 2 at (12, 20) is 6.4 from enemy 0 at (18.4, 20): not attackable
    assert avail[0, 2, 6].item() is False
    env.pos[0, 2] = torch.tensor([12.5, 20.0])  # distance 5.9 to enemy 0
    avail = env.avail_actions()
    assert avail[0, 2, 6].item() is True and avail[0, 2, 7].item() is False
    env.hp[0, 0] = 0.0  # a dead agent may only no-op
    avail = env.avail_actions()
    assert avail[0, 0].tolist() == [True] + [False] * 8
    assert avail[0, 1, 0].item() is False and avail[0, 1, 1].item() is True


def test_dead_agent_obs_is_zero_and_state_last_action_is_noop():
    env = make("micro:3m", num_envs=1, seed=0)
    env.reset()
    env.hp[0, 0] = 0.0
    result = act(env, 0, STOP, STOP)
    assert (result.obs[0, 0] == 0).all()
    last = result.state[0, -27:].reshape(3, 9)
    assert last[0].tolist() == [1.0] + [0.0] * 8 and last[1, 1] == 1.0
    assert (result.state[0, :4] == 0).all()  # the dead agent's state row


# ---------------------------------------------------------------- damage arithmetic
@pytest.mark.parametrize("attacker,victim,distance,hp,shield", [
    ("stalker", "zealot", 6.0, 100.0, 50.0 - (13 - 1)),  # 12 to shields
    ("marauder", "stalker", 6.0, 80.0, 80.0 - (10 + 10 - 1)),  # +10 vs armored, armor 1
    ("marine", "zealot", 5.0, 100.0, 50.0 - (6 - 1)),
    ("hydralisk", "stalker", 5.0, 80.0, 80.0 - (12 - 1)),
    ("zealot", "marine", 1.0, 45.0 - 2 * 8, 0.0),  # two hits of 8
])
def test_one_attack_damage(attacker, victim, distance, hp, shield):
    env = custom([Group("ally", attacker, 1, (9.0, 16.0)), Group("enemy", victim, 1, (20.0, 16.0))])
    place(env, [[10.0, 16.0], [10.0 + distance, 16.0]])
    act(env, 6)  # attack enemy 0: in range, fires at the first loop; cooldowns outlast a step
    assert env.hp[0, 1].item() == pytest.approx(hp)
    assert env.shield[0, 1].item() == pytest.approx(shield)


def test_shield_spill_and_armor():
    env = custom([Group("ally", "stalker", 1, (9.0, 16.0)), Group("enemy", "zealot", 1, (20.0, 16.0))])
    place(env, [[10.0, 16.0], [16.0, 16.0]])
    env.shield[0, 1] = 5.0
    act(env, 6)
    # 12 damage: 5 to the shield, 7 to HP (armor already taken off the hit)
    assert env.shield[0, 1].item() == 0.0 and env.hp[0, 1].item() == pytest.approx(93.0)


def test_spine_crawler_hits_stalker():
    env = make("micro:2s_vs_1sc", num_envs=1, seed=0)
    env.reset()
    place(env, [[13.9, 14.0], [20.0, 10.0], [13.92, 20.04]])  # stalker 0 within the spine's reach
    act(env, STOP, STOP)
    assert env.shield[0, 0].item() == pytest.approx(80.0 - (25 + 5 - 1))  # +5 armored, stalker armor 1
    assert env.shield[0, 1].item() == 80.0


def test_medivac_heals_and_spends_energy():
    env = make("micro:MMM", num_envs=1, seed=0)
    env.reset()
    marine = 2
    env.hp[0, marine] = 20.0
    actions = [STOP] * 10
    actions[9] = 6 + marine  # the medivac (agent 9) heals ally 2
    act(env, *actions)
    per_step = 12.6 / LOOPS_PER_SECOND * 8
    assert env.hp[0, marine].item() == pytest.approx(20.0 + per_step, abs=1e-4)
    assert env.energy[0, 9].item() == pytest.approx(50.0 - per_step / 3 + 0.7875 * 8 / LOOPS_PER_SECOND, abs=1e-4)
    # a medivac cannot heal another medivac, and may not attack
    avail = env.avail_actions()
    assert avail[0, 9, 6 + 9].item() is False and avail[0, 9, 6 + marine].item() is True


def test_colossus_lance_splash_spares_own_side():
    env = custom([Group("ally", "colossus", 1, (9.0, 16.0)), Group("ally", "zergling", 1, (9.0, 20.0)),
                  Group("enemy", "zergling", 3, (22.0, 16.0))], ally_bits=("colossus", "zergling"))
    # colossus aims east at enemy 0 (17, 16); enemy 1 is on the lance line (0.8 south), enemy 2 is
    # off it (behind the target); the allied zergling stands on the line, out of melee reach
    regen = ZERG_REGEN_RATE / LOOPS_PER_SECOND * 8
    # exact damage: our zergling far away; both enemies on the line keep 1 HP of 31
    place(env, [[10.0, 16.2], [10.0, 25.0], [17.0, 16.2], [17.0, 15.4], [21.0, 16.0]])
    env.hp[0, 2:4] = 31.0
    act(env, 6, STOP)
    assert env.hp[0, 2].item() == pytest.approx(1.0 + regen, abs=1e-3)
    assert env.hp[0, 3].item() == pytest.approx(1.0 + regen, abs=1e-3)
    assert env.hp[0, 4].item() == 35.0
    # own side: our zergling stands on the line; the lance kills both enemies there
    env.reset()
    place(env, [[10.0, 16.2], [17.0, 17.5], [17.0, 16.2], [17.0, 15.4], [21.0, 16.0]])
    env.hp[0, 2:4] = 30.0
    act(env, 6, STOP)
    assert (env.hp[0, 2:4] == 0).all()
    assert env.hp[0, 1].item() == 35.0  # own side never hurt


def test_baneling_explodes_on_attack_and_when_killed():
    env = custom([Group("ally", "baneling", 1, (9.0, 16.0)), Group("ally", "zergling", 1, (9.0, 20.0)),
                  Group("enemy", "zergling", 2, (22.0, 16.0)), Group("enemy", "marine", 1, (22.0, 20.0))],
                 ally_bits=("baneling", "zergling"))
    # baneling next to enemy zergling 0; enemy zergling 1 inside 2.2 of it, the marine outside;
    # the allied zergling is inside the blast radius too
    place(env, [[14.0, 16.0], [13.0, 17.0], [14.8, 16.0], [15.5, 17.2], [20.0, 16.0]])
    env.hp[0, 4] = 45.0
    act(env, 6, STOP)
    assert env.hp[0, 0].item() == 0.0  # the baneling is spent
    assert env.hp[0, 2].item() == 0.0 and env.hp[0, 3].item() == 0.0  # 16 +19 light = 35
    assert env.hp[0, 1].item() == 35.0  # own zergling untouched
    assert env.hp[0, 4].item() == 45.0  # the marine is out of the blast

    # an enemy baneling killed by our zerglings explodes on them
    env = custom([Group("ally", "zergling", 2, (9.0, 16.0)), Group("enemy", "baneling", 1, (22.0, 16.0))])
    place(env, [[14.0, 16.0], [14.0, 17.0], [14.8, 16.6]])
    env.hp[0, 2] = 1.0
    act(env, 6, 6)
    assert env.hp[0, 2].item() == 0.0
    assert (env.hp[0, :2] == 0).all()  # 35 damage each, zerglings have 35 HP


# ---------------------------------------------------------------- reward and episode ends
def test_reward_of_a_kill_and_win():
    env = make("micro:3m", num_envs=1, seed=0)
    env.reset()
    scale = 365.0 / 20.0  # max_reward / 20 on 3m
    place(env, [[15, 15], [15, 16], [15, 17], [19, 15], [19, 16], [19, 17]])
    env.hp[0, 3] = 6.0  # one marine shot
    r = act(env, 6, 6, 6)  # all three shoot enemy 0; the extra shots are wasted
    assert r.reward.item() == pytest.approx((6.0 + 10.0) / scale)
    assert not r.terminated.item()
    env.hp[0, 4:] = 1.0
    env.cooldown[0, :3] = 0.0  # ready to fire again: the next step kills the last two
    hp_before = env.hp[0, 4:].sum().item()
    r = act(env, 7, 8, 7)
    assert r.terminated.item() and r.info["battle_won"].item() == 1.0
    assert r.info["dead_enemies"].item() == 3.0
    assert r.reward.item() == pytest.approx((hp_before + 2 * 10.0 + 200.0) / scale)


def test_win_reward_hand_computed():
    env = make("micro:3m", num_envs=1, seed=0)
    env.reset()
    place(env, [[15, 15], [15, 16], [15, 17], [19, 15], [19, 16], [19, 17]])
    env.hp[0, 3:] = 1.0
    r = act(env, 6, 7, 8)
    assert r.terminated.item() and not r.truncated.item()
    assert r.info["battle_won"].item() == 1.0 and r.info["draw"].item() == 0.0
    assert r.reward.item() == pytest.approx((3 * 1.0 + 3 * 10.0 + 200.0) / 18.25)


def test_reward_not_only_positive():
    env = make("micro:3m", num_envs=1, seed=0, reward_only_positive=False)
    env.reset()
    place(env, [[15, 15], [15, 16], [15, 17], [19, 15], [19, 16], [19, 17]])
    hp0 = env.hp.clone()
    r = act(env, STOP, STOP, STOP)  # enemies shoot at us
    ally_loss = (hp0[0, :3] - env.hp[0, :3]).sum().item()
    deaths = (env.hp[0, :3] == 0).sum().item()
    assert ally_loss > 0
    assert r.reward.item() == pytest.approx((-0.5 * ally_loss - 5.0 * deaths) / 18.25)


def test_sparse_reward():
    env = make("micro:3m", num_envs=1, seed=0, reward_sparse=True, reward_scale=False)
    env.reset()
    place(env, [[15, 15], [15, 16], [15, 17], [19, 15], [19, 16], [19, 17]])
    env.hp[0, 3:] = 1.0
    assert act(env, 6, 7, 8).reward.item() == 1.0


def test_loss_and_draw():
    env = make("micro:3m", num_envs=1, seed=0)
    env.reset()
    place(env, [[15, 15], [15, 16], [15, 17], [19, 15], [19, 16], [19, 17]])
    env.hp[0, :3] = 1.0
    for _ in range(5):
        r = act(env, *[STOP if env.hp[0, i] > 0 else 0 for i in range(3)])
        if r.terminated.item():
            break
    assert r.info["battle_lost"].item() == 1.0 and r.info["dead_allies"].item() == 3.0
    assert r.reward.item() >= 0  # only-positive reward ignores our losses

    env = custom([Group("ally", "marine", 1, (9.0, 16.0)), Group("enemy", "marine", 1, (22.0, 16.0))])
    place(env, [[10.0, 16.0], [14.0, 16.0]])
    env.hp[0] = 1.0
    r = act(env, 6)  # both fire at the same game loop
    assert r.terminated.item() and r.info["draw"].item() == 1.0 and r.info["battle_won"].item() == 0.0


def test_mmm_only_medivac_left_is_a_loss():
    env = make("micro:MMM", num_envs=1, seed=0)
    env.reset()
    env.hp[0, :9] = 0.0  # only our medivac lives
    r = act(env, *([0] * 9 + [STOP]))
    assert r.terminated.item() and r.info["battle_lost"].item() == 1.0


@pytest.mark.parametrize("timeout_terminal", [False, True])
def test_timeout(timeout_terminal):
    env = custom([Group("ally", "marine", 3, (9.0, 16.0)), Group("enemy", "marine", 3, (23.0, 16.0))],
                 limit=3, timeout_terminal=timeout_terminal)
    for step in range(3):
        r = act(env, STOP, STOP, STOP)
    assert r.info["timeout"].item() == 1.0 and r.info["battle_won"].item() == 0.0
    assert r.terminated.item() is timeout_terminal
    assert r.truncated.item() is (not timeout_terminal)


# ---------------------------------------------------------------- batching
def _rollout(env, steps, generators):
    obs, state, avail = env.reset()
    trace = [obs.clone()]
    for _ in range(steps):
        actions = torch.stack([torch.multinomial(avail[i].float(), 1, generator=g)[:, 0]
                               for i, g in enumerate(generators)])
        r = env.step(actions)
        trace += [r.obs.clone(), r.reward.clone()]
        ended = r.terminated | r.truncated
        _, _, avail = env.reset(ended)
    return trace


def test_copy_in_batch_equals_copy_alone():
    steps = 40
    batch = make("micro:2s3z", num_envs=8, seed=5)
    gens = [torch.Generator().manual_seed(100 + i) for i in range(8)]
    batched = _rollout(batch, steps, gens)
    for i in (0, 3, 7):
        alone = make("micro:2s3z", num_envs=1, seed=5 + i)
        single = _rollout(alone, steps, [torch.Generator().manual_seed(100 + i)])
        for a, b in zip(batched, single):
            assert torch.equal(a[i:i + 1], b)
    # different copies do differ
    assert not torch.equal(batched[-2][0], batched[-2][1])


def test_reset_mask_only_resets_masked_copies():
    env = make("micro:3m", num_envs=3, seed=0)
    obs0, _, _ = env.reset()
    for _ in range(5):
        r = env.step(torch.full((3, 3), 4))  # everyone walks east
    before = r.obs.clone()
    obs, state, avail = env.reset(torch.tensor([False, True, False]))
    assert torch.equal(obs[1], obs0[1])
    assert torch.equal(obs[0], before[0]) and torch.equal(obs[2], before[2])
    assert not torch.equal(obs[0], obs0[0])
    assert env.steps.tolist() == [5, 0, 5]
