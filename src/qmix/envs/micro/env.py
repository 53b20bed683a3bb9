"""The batched battle simulator: ``MicroEnv`` steps ``num_envs`` SMAC battles at once.

Units live on one axis ``U = n_agents + n_enemies`` (agents first, sorted by (type, x, y) as
SMAC does; then enemies in spawn order). Every per-unit array is ``[B, U]`` (positions
``[B, U, 2]``); per-map constants (stats, damage table, reach table, grids, path tables) are
built once in ``__init__``. A step applies the agents' orders and runs 8 game loops
("ticks", dt = 1/22.4 s) of: enemy target acquisition, movement with path following, pushing
overlapping units apart, staying on walkable cells, firing, splash, healing and regeneration.
There is no Python loop over copies or units, and no host synchronisation inside ``step``.

Randomness (weapon cooldown jitter, 2m_vs_1z's attack point) is a counter-based hash of
``(seed + env index, episode number, step, tick, unit)``: copy ``i`` of a batch seeded ``s`` plays
exactly like a single copy seeded ``s + i``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from qmix.envs.base import BatchedEnv, EnvInfo, StepResult
from qmix.envs.micro import terrain
from qmix.envs.micro.maps import MapSpec
from qmix.envs.micro.units import (
    LOOPS_PER_SECOND,
    MIN_HIT_DAMAGE,
    SHIELD_REGEN_DELAY_LOOPS,
    SHIELD_REGEN_RATE,
    STEP_MUL,
    UNIT_TYPES,
    ZERG_REGEN_RATE,
)
from qmix.system import compile_methods

SHOOT_RANGE = 6.0  # SMAC's attack/heal availability range (centre distance)
SIGHT_RANGE = 9.0  # SMAC's observation range (every unit)
MOVE_AMOUNT = 2.0  # a move order targets the point this far away
SCAN_RANGE = 5.0  # SC2's minimum target-acquisition range (plus radii)
RANGE_SLOP = 1.0  # a target is kept until it gets this much beyond acquisition range
LANCE_WIDTH = 0.3  # half width of the colossus lance line, added to the victim's radius
FOLLOW_DISTANCE = 1.5  # an idle enemy healer stays this close to its nearest fighter
INF = float("inf")
MOVE_DIRS = ((0.0, 1.0), (0.0, -1.0), (1.0, 0.0), (-1.0, 0.0))  # north, south, east, west

IDLE, MOVE, TARGET = 0, 1, 2  # order kinds; an enemy's MOVE is an attack-move
_COMPILED = ("_begin", "_tick", "_outcome", "_observe")  # the step's parts env_args.compile compiles


@dataclass(frozen=True)
class MicroConfig:
    """Env args (SMAC's names and defaults, plus ``timeout_terminal``)."""

    reward_only_positive: bool = True
    reward_sparse: bool = False
    reward_scale: bool = True
    reward_scale_rate: float = 20.0
    reward_win: float = 200.0
    reward_defeat: float = 0.0
    reward_death_value: float = 10.0
    reward_negative_scale: float = 0.5
    state_last_action: bool = True
    obs_last_action: bool = False
    # False: the time limit is a truncation (bootstrap); True: SMAC/pymarl's terminal timeout.
    timeout_terminal: bool = False
    # Run the step (orders, game loops, outcome, observations) through torch.compile (see docs/micro.md).
    compile: bool = False


def _hash32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer mixer (lowbias32) on int64 tensors holding values in [0, 2**32)."""
    mask = 0xFFFFFFFF
    x = x & mask
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & mask
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & mask
    return x ^ (x >> 16)


class MicroEnv(BatchedEnv):
    """``num_envs`` copies of one SMAC map (see docs/micro.md)."""

    can_render = True

    def __init__(self, spec: MapSpec, num_envs: int, seed: int, device: torch.device,
                 config: MicroConfig = MicroConfig()):
        self.spec, self.config, self.num_envs, self.device = spec, config, num_envs, device
        self.seed = int(seed)
        self._build_units()
        self._build_tables()
        self.info = EnvInfo(
            n_agents=self.n_agents, n_actions=self.n_actions, obs_dim=self.obs_dim,
            state_dim=self.state_dim, episode_limit=spec.episode_limit,
            info_keys=("battle_won", "battle_lost", "draw", "timeout", "dead_allies", "dead_enemies"),
        )
        self._alloc_state()
        self._episode.fill_(-1)
        self.reset()
        if config.compile:  # compiled at their first call, i.e. the first step
            compile_methods(self, _COMPILED, f"micro:{spec.name} (env_args.compile)")

    # ------------------------------------------------------------------ construction
    def _build_units(self) -> None:
        spec = self.spec
        raw_seeds = tuple(g.at for g in spec.groups)
        taken: list[tuple[float, float]] = []
        units: list[tuple[str, str, tuple[float, float]]] = []  # (side, type, spawn)
        ground_grid = terrain.walk_grid(spec.name, "ground", raw_seeds)
        for side in ("ally", "enemy"):
            groups = [g for g in spec.groups if g.side == side]
            spacing = max(2 * UNIT_TYPES[g.unit].radius for g in groups) + 0.1
            for g in groups:
                pts = terrain.pack_positions(ground_grid, g.at, g.count, spacing, taken)
                taken += pts
                units += [(side, g.unit, p) for p in pts]
        ally_bits = spec.ally_bits or (spec.side_units("ally")[0],)
        agents = sorted((u for u in units if u[0] == "ally"),
                        key=lambda u: (ally_bits.index(u[1]), u[2][0], u[2][1]))
        enemies = [u for u in units if u[0] == "enemy"]
        self.units = agents + enemies
        self.unit_types = [UNIT_TYPES[u[1]] for u in self.units]
        self.n_agents, self.n_enemies = len(agents), len(enemies)
        self.n_units = len(self.units)
        self.n_actions = 6 + self.n_enemies
        self.ally_shield = int(spec.side_race("ally") == "P")
        self.enemy_shield = int(spec.side_race("enemy") == "P")
        self.n_bits = len(spec.ally_bits)
        f_en = 5 + self.enemy_shield + self.n_bits
        f_al = 5 + self.ally_shield + self.n_bits + (self.n_actions if self.config.obs_last_action else 0)
        f_own = 1 + self.ally_shield + self.n_bits
        self.obs_dim = 4 + self.n_enemies * f_en + (self.n_agents - 1) * f_al + f_own
        self.state_dim = (self.n_agents * (4 + self.ally_shield + self.n_bits)
                          + self.n_enemies * (3 + self.enemy_shield + self.n_bits)
                          + (self.n_agents * self.n_actions if self.config.state_last_action else 0))
        self._seeds = raw_seeds

    def _build_tables(self) -> None:
        dev, A, U = self.device, self.n_agents, self.n_units
        types = self.unit_types
        f32 = dict(dtype=torch.float32, device=dev)

        def per_unit(fn, dtype=torch.float32):
            return torch.tensor([fn(i, t) for i, t in enumerate(types)], dtype=dtype, device=dev)

        is_agent = [i < A for i in range(U)]
        self.is_enemy = per_unit(lambda i, t: not is_agent[i], torch.bool)  # [U]
        self.max_hp = per_unit(lambda i, t: t.hp)
        self.max_shield = per_unit(lambda i, t: t.shield)
        self.shield_norm = self.max_shield.clamp(min=1.0)
        self.radius = per_unit(lambda i, t: t.radius)
        speed = [(t.agent_speed or t.speed) if is_agent[i] else t.speed for i, t in enumerate(types)]
        self.speed_per_loop = torch.tensor(speed, **f32) / LOOPS_PER_SECOND
        self.cooldown_loops = per_unit(lambda i, t: t.cooldown * LOOPS_PER_SECOND)
        self.cooldown_norm = per_unit(lambda i, t: t.cooldown_norm)
        self.is_healer = per_unit(lambda i, t: t.heal_rate > 0, torch.bool)
        self.has_weapon = per_unit(lambda i, t: t.damage > 0 and t.splash != "blast", torch.bool)
        self.is_bane = per_unit(lambda i, t: t.splash == "blast", torch.bool)
        self.is_lance = per_unit(lambda i, t: t.splash == "line", torch.bool)
        self.splash_size = per_unit(lambda i, t: t.splash_size)
        self.mobile = per_unit(lambda i, t: not t.static, torch.bool)
        self.is_protoss = per_unit(lambda i, t: t.race == "P", torch.bool)
        self.is_zerg = per_unit(lambda i, t: t.race == "Z", torch.bool)
        self.heal_per_loop = per_unit(lambda i, t: t.heal_rate / LOOPS_PER_SECOND)
        self.energy_per_hp = per_unit(lambda i, t: t.heal_energy_per_hp)
        self.energy_start = per_unit(lambda i, t: t.energy_start)
        self.energy_max = per_unit(lambda i, t: t.energy_max)
        self.energy_regen = per_unit(lambda i, t: t.energy_regen / LOOPS_PER_SECOND)
        self.spawn = torch.tensor([u[2] for u in self.units], **f32)  # [U, 2]
        self.has_healers = any(t.heal_rate > 0 for t in types)
        self.has_enemy_healers = any(t.heal_rate > 0 for t in types[A:])
        self.has_lances = any(t.splash == "line" for t in types)
        self.has_banes = any(t.splash == "blast" for t in types)
        self.has_protoss = any(t.race == "P" for t in types)
        self.has_zerg = any(t.race == "Z" for t in types)

        # pair tables [U(actor), U(other)]
        def pair(fn, dtype=torch.float32):
            return torch.tensor([[fn(i, a, j, b) for j, b in enumerate(types)] for i, a in enumerate(types)],
                                dtype=dtype, device=dev)

        def hit_damage(a, b):
            if a.damage <= 0:
                return 0.0
            bonus = a.bonus if a.bonus_vs in b.attributes else 0.0
            return a.hits * max(a.damage + bonus - b.armor, MIN_HIT_DAMAGE)

        def can_hit(a, b):
            return (b.air and a.hits_air) or (not b.air and a.hits_ground)

        opposite = lambda i, j: is_agent[i] != is_agent[j]  # noqa: E731
        self.hit_damage = pair(lambda i, a, j, b: hit_damage(a, b) if opposite(i, j) else 0.0)
        # who may be ordered at / acquire whom: weapons hit the other side, healers heal own bio
        self.can_target = pair(lambda i, a, j, b: (
            (a.heal_rate > 0 and not opposite(i, j) and "bio" in b.attributes and b.heal_rate == 0)
            or (a.heal_rate == 0 and a.damage > 0 and opposite(i, j) and can_hit(a, b))), torch.bool)
        self.reach = pair(lambda i, a, j, b: a.range + a.radius + b.radius)
        self.acquire = pair(lambda i, a, j, b: (a.range if a.static else max(SCAN_RANGE, a.range))
                            + a.radius + b.radius)
        self.splash_ok = pair(lambda i, a, j, b: opposite(i, j) and not b.air, torch.bool)
        self.collide = pair(lambda i, a, j, b: i != j and not a.air and not b.air
                            and a.cliff_walker == b.cliff_walker, torch.bool)
        self.radius_sum = self.radius[:, None] + self.radius[None, :]
        self.half_collide = self.collide.float() * 0.5
        # dead units are parked here, far from the map and from each other, so that distance
        # tests (acquisition, collisions, splash, sight) need no extra "alive" masks
        u = torch.arange(U, device=dev, dtype=torch.float32)
        self.graveyard = torch.stack([-1000.0 - 10.0 * u, torch.full_like(u, -1000.0)], -1)  # [U, 2]

        # enemy AI priorities over agents: 0 = the agent can fire back, 2 = cannot
        self.fire_back = self.can_target[:A, A:].T.contiguous()  # [E, A]: agent a can hit enemy e
        self.enemy_can_target = self.can_target[A:, :A]  # [E, A]
        self.enemy_acquire = self.acquire[A:, :A]
        self.enemy_heal_ok = self.can_target[A:, A:]  # [E, E]
        self.enemy_priority = torch.where(self.fire_back, 0.0, 2000.0)  # [E, A]

        # observation constants
        ally_bits, enemy_bits = self.spec.ally_bits, self.spec.enemy_bits
        bits = torch.zeros(U, self.n_bits, **f32)
        for i, u in enumerate(self.units):
            order = ally_bits if i < A else enemy_bits
            if order:
                bits[i, order.index(u[1])] = 1.0
        self.type_bits = bits  # [U, n_bits]
        others = [[j for j in range(A) if j != i] for i in range(A)]
        self.other_allies = torch.tensor(others, dtype=torch.long, device=dev).reshape(A, max(A - 1, 0))
        self.move_dirs = torch.tensor(MOVE_DIRS, **f32)  # [4, 2]
        self.arange_u = torch.arange(U, device=dev)
        self.agent_is_healer = self.is_healer[:A]

        # terrain: SMAC's raw grid for move availability; movement grids and path tables
        raw = terrain.raw_walkable(self.spec.name)
        self.smac_grid = torch.tensor(raw.reshape(-1), dtype=torch.bool, device=dev)  # [1024]
        movement = ["cliff" if t.cliff_walker else "ground" for t in types]
        classes = sorted(set(movement))
        self.move_class_offset = torch.tensor([classes.index(m) * terrain.N_CELLS for m in movement],
                                              dtype=torch.long, device=dev)  # [U]
        grids = [terrain.walk_grid(self.spec.name, c, self._seeds).reshape(-1) for c in classes]
        self.walk_grid = torch.tensor(np.concatenate(grids), dtype=torch.bool, device=dev)
        tables = [terrain.path_table(self.spec.name, c, self._seeds) for c in classes]
        self.has_paths = any(t is not None for t in tables)
        if self.has_paths:
            ident = np.repeat(np.arange(terrain.N_CELLS, dtype=np.int16)[None, :], terrain.N_CELLS, 0)
            full = [t if t is not None else ident for t in tables]
            self.path_via = torch.tensor(np.concatenate([f.reshape(-1) for f in full]).astype(np.int32),
                                         device=dev)  # [n_classes * 1024 * 1024]
        # enemy orders
        order = self.spec.enemy_order
        self.enemy_has_order = order is not None
        if order is None:
            seg = ((0.0, 0.0), (0.0, 0.0))
        elif isinstance(order[0], (tuple, list)):
            seg = order
        else:
            seg = (order, order)
        self.order_segment = torch.tensor(seg, **f32)  # [2, 2]
        self.max_reward = (self.config.reward_death_value * self.n_enemies + self.config.reward_win
                           + sum(t.hp + t.shield for t in types[A:]))

    def _alloc_state(self) -> None:
        B, U, A, dev = self.num_envs, self.n_units, self.n_agents, self.device
        z = lambda *s, dtype=torch.float32: torch.zeros(*s, dtype=dtype, device=dev)  # noqa: E731
        self.pos = z(B, U, 2)
        self.hp, self.shield, self.energy, self.cooldown = z(B, U), z(B, U), z(B, U), z(B, U)
        self.since_damage = z(B, U)  # game loops since the unit last took damage
        self.order_kind = z(B, U, dtype=torch.long)
        self.order_point = z(B, U, 2)
        self.target = z(B, U, dtype=torch.long) - 1  # unit index, -1 = none
        self.pending_blast = z(B, U, dtype=torch.bool)  # banelings killed last tick explode now
        self.last_action = z(B, A, dtype=torch.long) - 1  # -1: no action yet (zeros in the state)
        self.steps = z(B, dtype=torch.long)
        self._episode = z(B, dtype=torch.long)
        self.outcome = z(B, dtype=torch.long)  # 0 running, 1 won, 2 lost, 3 draw, 4 timeout
        self._stream = (self.seed + torch.arange(B, device=dev)) & 0xFFFFFFFF  # [B] per-copy stream
        self._last_fire = z(B, U, dtype=torch.bool)  # for rendering attack lines

    # ------------------------------------------------------------------ randomness
    def _random_bits(self, *counters: torch.Tensor) -> torch.Tensor:
        """Hash of the per-copy stream and the counters (each ``[B, ...]``); int64 in [0, 2**32)."""
        h = _hash32(self._stream)  # [B]
        for c in counters:
            h = h.reshape(h.shape + (1,) * (c.dim() - h.dim()))
            h = _hash32(h ^ (c & 0xFFFFFFFF))
        return h

    # ------------------------------------------------------------------ reset
    def reset(self, mask: torch.Tensor | None = None):
        B, U = self.num_envs, self.n_units
        if mask is None:
            mask = torch.ones(B, dtype=torch.bool, device=self.device)
        m1, m2 = mask[:, None], mask[:, None, None]
        self._episode = torch.where(mask, self._episode + 1, self._episode)
        self.pos = torch.where(m2, self.spawn.expand(B, U, 2), self.pos)
        self.hp = torch.where(m1, self.max_hp.expand(B, U), self.hp)
        self.shield = torch.where(m1, self.max_shield.expand(B, U), self.shield)
        self.energy = torch.where(m1, self.energy_start.expand(B, U), self.energy)
        self.cooldown = torch.where(m1, 0.0, self.cooldown)
        self.since_damage = torch.where(m1, float(SHIELD_REGEN_DELAY_LOOPS), self.since_damage)
        enemy_kind = MOVE if self.enemy_has_order else IDLE
        kind0 = torch.where(self.is_enemy, enemy_kind, IDLE).expand(B, U)
        self.order_kind = torch.where(m1, kind0, self.order_kind)
        # enemies' attack-move point: a uniform point on the order segment, drawn per episode
        u = self._random_bits(self._episode, torch.full_like(self._episode, 0x5EED)).float() / 2.0 ** 32
        seg = self.order_segment
        point = seg[0] + u[:, None] * (seg[1] - seg[0])  # [B, 2]
        order_point = torch.where(self.is_enemy[None, :, None], point[:, None, :], self.spawn[None])
        self.order_point = torch.where(m2, order_point, self.order_point)
        self.target = torch.where(m1, -1, self.target)
        self.pending_blast = self.pending_blast & ~m1
        self._last_fire = self._last_fire & ~m1
        self.last_action = torch.where(m1, -1, self.last_action)
        self.steps = torch.where(mask, 0, self.steps)
        self.outcome = torch.where(mask, 0, self.outcome)
        obs, state, avail = self._observe()
        return obs, state, avail

    # ------------------------------------------------------------------ step
    def step(self, actions: torch.Tensor) -> StepResult:
        actions = actions.to(self.device, torch.long)
        alive0, health0, jitter = self._begin(actions)
        for tick in range(STEP_MUL):
            self._tick(jitter[:, tick])
        reward, terminated, truncated, info = self._outcome(alive0, health0)
        obs, state, avail = self._observe()
        return StepResult(obs, state, avail, reward, terminated, truncated, info)

    def _begin(self, actions: torch.Tensor):
        """Orders from ``actions [B, A]``; returns the units' alive flags and health before the
        step, and the cooldown jitter of SC2 (-1..+2 loops), one draw per (tick, unit): ``[B, 8, U]``."""
        alive0 = self.hp > 0  # [B, U]
        health0 = self.hp + self.shield  # [B, U]
        self._apply_orders(actions)
        self.last_action = actions
        counter = (self.steps[:, None, None] * (STEP_MUL * 4096)
                   + torch.arange(STEP_MUL, device=self.device)[None, :, None] * 4096 + self.arange_u)
        jitter = (self._random_bits(self._episode[:, None, None], counter) % 4 - 1).float()  # [B, 8, U]
        return alive0, health0, jitter

    def _outcome(self, alive0: torch.Tensor, health0: torch.Tensor):
        """After the step's game loops: reward, terminated, truncated and info (SMAC's rules)."""
        cfg, A = self.config, self.n_agents
        self.steps = self.steps + 1
        alive = self.hp > 0
        health = self.hp + self.shield
        died = alive0 & ~alive  # [B, U]
        lost_health = torch.where(alive0, health0 - health, 0.0)  # negative when healed
        delta_enemy = lost_health[:, A:].sum(1)
        deaths_enemy = died[:, A:].sum(1).float()
        deaths_ally = died[:, :A].sum(1).float()
        delta_deaths = cfg.reward_death_value * deaths_enemy
        if cfg.reward_only_positive:
            reward = (delta_enemy + delta_deaths).abs()
        else:
            delta_ally = cfg.reward_negative_scale * lost_health[:, :A].sum(1)
            reward = delta_enemy + delta_deaths - delta_ally - cfg.reward_death_value * cfg.reward_negative_scale * deaths_ally

        fighters = alive & ~self.is_healer if self.has_healers else alive
        allies_left, enemies_left = fighters[:, :A].any(1), fighters[:, A:].any(1)
        if self.has_healers:  # SMAC's MMM rule: only medivacs left loses; loss checked first
            lost = ~allies_left
            draw = torch.zeros_like(lost)
        else:
            lost = ~allies_left & enemies_left
            draw = ~allies_left & ~enemies_left
        won = allies_left & ~enemies_left
        timeout = ~(won | lost | draw) & (self.steps >= self.spec.episode_limit)
        if cfg.reward_sparse:
            reward = won.float() - lost.float()
        else:
            reward = reward + cfg.reward_win * won.float() + cfg.reward_defeat * lost.float()
        if cfg.reward_scale:
            reward = reward / (self.max_reward / cfg.reward_scale_rate)
        if cfg.timeout_terminal:
            terminated, truncated = won | lost | draw | timeout, torch.zeros_like(timeout)
        else:
            terminated, truncated = won | lost | draw, timeout
        self.outcome = torch.where(won, 1, torch.where(lost, 2, torch.where(draw, 3, torch.where(timeout, 4, 0))))
        dead = ~alive
        info = {
            "battle_won": won.float(),
            "battle_lost": lost.float(),
            "draw": draw.float(),
            "timeout": timeout.float(),
            "dead_allies": dead[:, :A].sum(1).float(),
            "dead_enemies": dead[:, A:].sum(1).float(),
        }
        return reward.float(), terminated, truncated, info

    def _apply_orders(self, actions: torch.Tensor) -> None:
        """Turn the agents' actions ``[B, A]`` into orders (SMAC's raw commands)."""
        A, U = self.n_agents, self.n_units
        pos_a = self.pos[:, :A]
        is_stop = actions == 1
        is_move = (actions >= 2) & (actions <= 5)
        is_target = actions >= 6
        slot = (actions - 6).clamp(min=0)
        target = torch.where(self.agent_is_healer, slot, slot + A).clamp(max=U - 1)  # [B, A]
        # an order the unit cannot carry out (a marauder at a medivac) is ignored, as SC2 does
        valid = is_target & self.can_target[torch.arange(A, device=self.device), target]
        direction = self.move_dirs[(actions - 2).clamp(0, 3)]  # [B, A, 2]
        point = torch.where(is_move[..., None], pos_a + MOVE_AMOUNT * direction, self.order_point[:, :A])
        kind = self.order_kind[:, :A]
        kind = torch.where(is_stop, IDLE, torch.where(is_move, MOVE, torch.where(valid, TARGET, kind)))
        tgt = torch.where(is_stop | is_move, -1, torch.where(valid, target, self.target[:, :A]))
        self.order_kind = torch.cat([kind, self.order_kind[:, A:]], 1)
        self.order_point = torch.cat([point, self.order_point[:, A:]], 1)
        self.target = torch.cat([tgt, self.target[:, A:]], 1)

    # ------------------------------------------------------------------ one game loop
    def _enemy_targets(self, alive, dist, target):
        """SC2-like acquisition for the enemy AI: returns the enemies' targets ``[B, E]``."""
        A = self.n_agents
        d_ea = dist[:, A:, :A]  # [B, E, A]
        cur = target[:, A:]  # [B, E] (agent index or -1; healers: unit index)
        agent_target = target[:, :A] - A  # [B, A] enemy index an agent is attacking/healing
        attacking = (agent_target[:, None, :] == torch.arange(self.n_enemies, device=self.device)[None, :, None])
        attacking = attacking & ~self.agent_is_healer[None, None, :]  # [B, E, A]
        # dead agents lie in the graveyard, far beyond any acquisition range
        cand = self.enemy_can_target & ((d_ea <= self.enemy_acquire) | attacking)
        if self.has_healers:
            healing = self.agent_is_healer & (self.order_kind[:, :A] == TARGET)  # [B, A]
            prio = torch.where(self.fire_back, 0.0, torch.where(healing[:, None, :], 1000.0, 2000.0))
        else:
            prio = self.enemy_priority  # [E, A]
        score = torch.where(cand, prio + d_ea, INF)
        best_score, best = score.min(-1)  # [B, E]
        new = torch.where(best_score < INF, best, -1)
        ci = cur.clamp(0, A - 1)
        keep = ((cur >= 0) & (cur < A) & alive[:, :A].gather(1, ci)
                & (self._keep_range(d_ea, ci) | attacking.gather(2, ci[..., None])[..., 0]))
        chosen = torch.where(keep, cur, new)
        if self.has_enemy_healers:
            chosen = torch.where(self.is_healer[A:], self._enemy_heal_targets(alive, dist, cur), chosen)
        return chosen

    def _keep_range(self, d_ea, ci):
        acquire = self.enemy_acquire.expand(d_ea.shape[0], -1, -1).gather(2, ci[..., None])[..., 0]
        return d_ea.gather(2, ci[..., None])[..., 0] <= acquire + RANGE_SLOP

    def _enemy_heal_targets(self, alive, dist, cur):
        """Enemy medivacs heal the most damaged friendly bio unit near them (unit indices)."""
        A = self.n_agents
        missing = (self.max_hp - self.hp)[:, A:]  # [B, E]
        d_ee = dist[:, A:, A:]
        cand = self.enemy_heal_ok & (missing[:, None, :] > 0) & (d_ee <= SHOOT_RANGE + 2.0)
        score = torch.where(cand, -missing[:, None, :], INF)
        best_score, best = score.min(-1)
        new = torch.where(best_score < INF, best + A, -1)
        ci = (cur - A).clamp(0, self.n_enemies - 1)
        keep = (cur >= A) & alive[:, A:].gather(1, ci) & (missing.gather(1, ci) > 0)
        return torch.where(keep, cur, new)

    def _tick(self, jitter: torch.Tensor) -> None:
        B, A, U = self.num_envs, self.n_agents, self.n_units
        pos, hp = self.pos, self.hp
        alive = hp > 0  # [B, U]
        px, py = pos[..., 0], pos[..., 1]  # [B, U]
        dx = px[:, None, :] - px[:, :, None]  # [B, U, U]: x_j - x_i
        dy = py[:, None, :] - py[:, :, None]
        dist = (dx * dx + dy * dy).sqrt()  # [B, U, U]

        target = self.target
        if self.n_enemies:
            enemy_t = self._enemy_targets(alive, dist, target)
            target = torch.cat([target[:, :A], enemy_t], 1)
        has_t = target >= 0
        ti = target.clamp(min=0)  # [B, U]
        t_alive = has_t & alive.gather(1, ti)
        t_dist = dist.gather(2, ti[..., None])[..., 0]  # [B, U]
        t_reach = self.reach[self.arange_u, ti]  # [B, U]
        in_range = t_alive & (t_dist <= t_reach)
        t_pos = pos.gather(1, ti[..., None].expand(B, U, 2))  # [B, U, 2]
        # agents whose target died go idle; the enemy AI re-acquires on its own
        agent_lost = (self.order_kind == TARGET) & ~t_alive & ~self.is_enemy
        kind = torch.where(agent_lost, IDLE, self.order_kind)
        target = torch.where(t_alive, target, -1)

        # ---- movement goal: chase a target out of range, else walk to the order point
        chase = t_alive & ~in_range
        point = self.order_point
        stop_at = torch.zeros_like(hp)
        if self.has_enemy_healers:  # an idle enemy medivac follows its nearest fighter
            idle_healer = self.is_healer & self.is_enemy & ~t_alive
            friend = alive & ~self.is_healer & self.is_enemy  # [B, U]
            d_friend = torch.where(friend[:, None, :], dist, INF)
            nearest = d_friend.argmin(-1)  # [B, U]
            follow = pos.gather(1, nearest[..., None].expand(B, U, 2))
            point = torch.where(idle_healer[..., None], follow, point)
            stop_at = torch.where(idle_healer, FOLLOW_DISTANCE, stop_at)
        goal = torch.where(chase[..., None], t_pos, point)  # [B, U, 2]
        stop_at = torch.where(chase, t_reach - 0.05, stop_at)
        moving = alive & self.mobile & (chase | ((kind == MOVE) & ~t_alive))
        to_goal = goal - pos
        goal_dist = to_goal.norm(dim=-1)  # [B, U]
        if self.has_paths:
            cell = pos.floor().clamp(0, 31).long()
            gcell = goal.floor().clamp(0, 31).long()
            from_cell = cell[..., 0] * 32 + cell[..., 1]
            to_cell = gcell[..., 0] * 32 + gcell[..., 1]
            via = self.path_via[(self.move_class_offset * terrain.N_CELLS + from_cell * terrain.N_CELLS
                                 + to_cell)].long()
            via_point = torch.stack([via // 32, via % 32], -1).float() + 0.5
            waypoint = torch.where((via == to_cell)[..., None], goal, via_point)
            to_way = waypoint - pos
            way_dist = to_way.norm(dim=-1)
            direction = to_way / way_dist.clamp(min=1e-6)[..., None]
            step_len = torch.minimum(self.speed_per_loop, torch.minimum(way_dist, (goal_dist - stop_at).clamp(min=0)))
        else:
            direction = to_goal / goal_dist.clamp(min=1e-6)[..., None]
            step_len = torch.minimum(self.speed_per_loop, (goal_dist - stop_at).clamp(min=0))
        step_len = torch.where(moving, step_len, 0.0)
        arrived = (kind == MOVE) & ~self.is_enemy & (goal_dist <= self.speed_per_loop)
        self.order_kind = torch.where(arrived, IDLE, kind)
        new_pos = pos + direction * step_len[..., None]

        # ---- push overlapping ground units apart (overlaps measured at the start of the loop)
        # dead units lie in the graveyard, apart from each other and from the battle
        weight = (self.radius_sum - dist).clamp(min=0) * self.half_collide / dist.clamp(min=1e-6)
        push = -torch.stack([(weight * dx).sum(2), (weight * dy).sum(2)], -1)  # [B, U, 2]
        new_pos = new_pos + push * (self.mobile & alive)[..., None]

        # ---- stay on walkable cells (slide along walls)
        new_pos = self._clamp_walkable(pos, new_pos)
        self.pos = new_pos

        # ---- attacks (positions at the start of the loop decide ranges)
        ready = self.cooldown <= 0
        fire = alive & in_range & ready & self.has_weapon  # [B, U]
        # direct hits: damages are multiples of 0.5, so scatter sums are exact in any order
        direct = torch.where(fire, self.hit_damage[self.arange_u, ti], 0.0)  # [B, U] per attacker
        damage = torch.zeros_like(hp).scatter_add_(1, ti, direct)  # [B, U] per victim
        hits = None
        blast = None
        if self.has_lances:
            lance = fire & self.is_lance  # [B, U]
            aim = t_pos - pos
            aim = aim / aim.norm(dim=-1, keepdim=True).clamp(min=1e-6)  # [B, U, 2]
            rel = pos[:, None, :, :] - t_pos[:, :, None, :]  # [B, U(att), U(victim), 2]
            along = (rel * aim[:, :, None, :]).sum(-1).abs()
            across = (rel[..., 0] * aim[:, :, None, 1] - rel[..., 1] * aim[:, :, None, 0]).abs()
            line = (across <= self.splash_size[None, :, None]) & (along <= self.radius[None, None, :] + LANCE_WIDTH)
            hits = lance[..., None] & line & self.splash_ok & (ti[..., None] != self.arange_u)
        if self.has_banes:
            blast = self.is_bane & ((alive & in_range) | self.pending_blast)  # [B, U]
            area = dist <= self.splash_size[None, :, None] + self.radius[None, None, :]
            blast_hits = blast[..., None] & area & self.splash_ok
            hits = blast_hits if hits is None else hits | blast_hits
        if hits is not None:  # splash: [B, U(attacker), U(victim)]
            damage = damage + torch.where(hits, self.hit_damage, 0.0).sum(1)
        to_shield = torch.minimum(self.shield, damage)
        self.shield = self.shield - to_shield
        hp = (hp - (damage - to_shield)).clamp(min=0)
        self.since_damage = torch.where(damage > 0, 0.0, self.since_damage + 1)
        self.cooldown = torch.where(fire, self.cooldown_loops + jitter, (self.cooldown - 1).clamp(min=0))
        self._last_fire = fire | (self.is_healer & in_range) if blast is None else fire | blast
        if blast is not None:
            killed = alive & (hp <= 0) & self.is_bane & ~blast
            hp = torch.where(blast, 0.0, hp)
            self.pending_blast = killed

        # ---- healing (medivacs), energy and regeneration
        if self.has_healers:
            missing_t = (self.max_hp - hp).gather(1, ti)
            # a unit killed on this game loop stays dead: heal only survivors
            heal = self.is_healer & alive & in_range & (self.energy > 0) & (missing_t > 0) & (hp.gather(1, ti) > 0)
            amount = torch.minimum(torch.minimum(self.heal_per_loop.expand(B, U), missing_t),
                                   self.energy / self.energy_per_hp.clamp(min=1e-6))
            amount = torch.where(heal, amount, 0.0)
            hp = hp.scatter_add(1, ti, amount)
            self.energy = (self.energy - amount * self.energy_per_hp + self.energy_regen).clamp(max=self.energy_max)
        now_alive = hp > 0
        if self.has_protoss:
            regen = self.is_protoss & now_alive & (self.since_damage >= SHIELD_REGEN_DELAY_LOOPS)
            self.shield = torch.where(regen, (self.shield + SHIELD_REGEN_RATE / LOOPS_PER_SECOND)
                                      .clamp(max=self.max_shield), self.shield)
        if self.has_zerg:
            regen = self.is_zerg & now_alive
            hp = torch.where(regen, (hp + ZERG_REGEN_RATE / LOOPS_PER_SECOND).clamp(max=self.max_hp), hp)
        self.hp = hp
        self.target = torch.where(now_alive, target, -1)
        self.pos = torch.where(now_alive[..., None], self.pos, self.graveyard)

    def _clamp_walkable(self, old: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
        """Keep each unit's centre on a cell its movement class may stand on; slide along walls."""
        off = self.move_class_offset
        oc = old.floor().clamp(0, 31).long()
        nc = new.floor().clamp(0, 31).long()
        ok_new = self.walk_grid[off + nc[..., 0] * 32 + nc[..., 1]]
        ok_x = self.walk_grid[off + nc[..., 0] * 32 + oc[..., 1]]
        ok_y = self.walk_grid[off + oc[..., 0] * 32 + nc[..., 1]]
        slide_x = torch.stack([new[..., 0], old[..., 1]], -1)
        slide_y = torch.stack([old[..., 0], new[..., 1]], -1)
        return torch.where(ok_new[..., None], new, torch.where(ok_x[..., None], slide_x,
                                                                 torch.where(ok_y[..., None], slide_y, old)))

    # ------------------------------------------------------------------ observations
    def avail_actions(self, alive: torch.Tensor | None = None, dist_au: torch.Tensor | None = None) -> torch.Tensor:
        """``[B, n_agents, n_actions]`` bool, SMAC's rules (see docs/micro.md, Actions)."""
        A, E = self.n_agents, self.n_enemies
        if alive is None:
            alive = self.hp > 0
        pos_a = self.pos[:, :A]
        if dist_au is None:
            rel = self.pos[:, None, :, :] - pos_a[:, :, None, :]
            dist_au = (rel[..., 0] ** 2 + rel[..., 1] ** 2).sqrt()
        alive_a = alive[:, :A]
        probe = pos_a[:, :, None, :] + self.move_dirs  # [B, A, 4, 2], one unit away
        inside = ((probe >= 0) & (probe < 32)).all(-1)
        cell = probe.floor().clamp(0, 31).long()
        can_move = inside & self.smac_grid[cell[..., 0] * 32 + cell[..., 1]] & alive_a[..., None]
        in_shoot = dist_au <= SHOOT_RANGE  # [B, A, U]
        attack = in_shoot[:, :, A:] & alive[:, None, A:]  # [B, A, E]
        if self.has_healers:
            heal = torch.zeros_like(attack)
            k = min(A, E)
            heal_ok = in_shoot[:, :, :k] & alive[:, None, :k] & ~self.is_healer[:k]
            heal[:, :, :k] = heal_ok
            attack = torch.where(self.agent_is_healer[None, :, None], heal, attack)
        attack = attack & alive_a[..., None]
        noop = ~alive_a
        return torch.cat([noop[..., None], alive_a[..., None], can_move, attack], -1)

    def _observe(self):
        B, A, E, U = self.num_envs, self.n_agents, self.n_enemies, self.n_units
        alive = self.hp > 0
        alive_f = alive.float()
        pos = self.pos
        rel = pos[:, None, :, :] - pos[:, :A, None, :]  # [B, A, U, 2]: other - self
        dist = (rel[..., 0] ** 2 + rel[..., 1] ** 2).sqrt()  # [B, A, U]
        avail = self.avail_actions(alive, dist)
        alive_a = alive[:, :A]
        health = self.hp / self.max_hp  # [B, U]
        shield = self.shield / self.shield_norm
        visible = (dist < SIGHT_RANGE) & alive[:, None, :] & alive_a[..., None]  # [B, A, U]
        common = [dist[..., None] / SIGHT_RANGE, rel / SIGHT_RANGE]

        def unit_feats(first, sl, with_shield):
            feats = [first] + [c[:, :, sl] for c in common] + [health[:, None, sl, None].expand(B, A, -1, 1)]
            if with_shield:
                feats.append(shield[:, None, sl, None].expand(B, A, -1, 1))
            if self.n_bits:
                feats.append(self.type_bits[sl].expand(B, A, -1, -1))
            return torch.cat(feats, -1)

        en = unit_feats(avail[:, :, 6:, None].float(), slice(A, U), self.enemy_shield)
        en = en * visible[:, :, A:, None]
        parts = [avail[:, :, 2:6].float(), en.reshape(B, A, -1)]
        if A > 1:
            al = unit_feats(torch.ones(B, A, A, 1, device=self.device), slice(0, A), self.ally_shield)
            if self.config.obs_last_action:
                al = torch.cat([al, self._last_action_onehot()[:, None].expand(B, A, A, -1)], -1)
            al = al * visible[:, :, :A, None]
            idx = self.other_allies[None, :, :, None].expand(B, A, A - 1, al.shape[-1])
            parts.append(al.gather(2, idx).reshape(B, A, -1))
        own = [health[:, :A, None]]
        if self.ally_shield:
            own.append(shield[:, :A, None])
        if self.n_bits:
            own.append(self.type_bits[:A].expand(B, A, -1))
        parts += own
        obs = torch.cat(parts, -1) * alive_a[..., None]  # [B, A, obs_dim]

        xy = (pos - 16.0) / 32.0
        cd = torch.where(self.is_healer, self.energy / 200.0, self.cooldown / self.cooldown_norm)
        ally = [health[:, :A, None], cd[:, :A, None], xy[:, :A]]
        enemy = [health[:, A:, None], xy[:, A:]]
        if self.ally_shield:
            ally.append(shield[:, :A, None])
        if self.enemy_shield:
            enemy.append(shield[:, A:, None])
        if self.n_bits:
            ally.append(self.type_bits[:A].expand(B, A, -1))
            enemy.append(self.type_bits[A:].expand(B, E, -1))
        state = [(torch.cat(ally, -1) * alive_f[:, :A, None]).reshape(B, -1),
                 (torch.cat(enemy, -1) * alive_f[:, A:, None]).reshape(B, -1)]
        if self.config.state_last_action:
            state.append(self._last_action_onehot().reshape(B, -1))
        return obs, torch.cat(state, -1), avail

    def _last_action_onehot(self) -> torch.Tensor:
        """``[B, A, n_actions]``; zeros before the first step of an episode."""
        la = self.last_action
        onehot = torch.nn.functional.one_hot(la.clamp(min=0), self.n_actions).float()
        return onehot * (la >= 0)[..., None]

    # ------------------------------------------------------------------ rendering
    def render_frame(self, index: int = 0) -> dict:
        """A numpy snapshot of copy ``index`` for :meth:`write_animation`."""
        from qmix.envs.micro.render import snapshot

        return snapshot(self, index)

    def write_animation(self, frames: list, path: str) -> None:
        from qmix.envs.micro.render import write_gif

        write_gif(frames, path, self.spec.name)
