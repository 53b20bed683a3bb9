"""The maps table: SMAC's 23 scenarios as data (groups of units, spawn points, enemy orders).

Sizes (obs/state/actions) are not stored: they follow from the units and the SMAC feature
layout, and the tests check them against SMAC's sizes (the table in docs/micro.md).
"""

from __future__ import annotations

from dataclasses import dataclass

from qmix.envs.micro.units import UNIT_TYPES


@dataclass(frozen=True)
class Group:
    """``count`` units of one type spawned packed around ``at`` (map coordinates)."""

    side: str  # "ally" (the agents) or "enemy" (the scripted AI)
    unit: str
    count: int
    at: tuple[float, float]


@dataclass(frozen=True)
class MapSpec:
    name: str
    episode_limit: int
    groups: tuple[Group, ...]  # enemies keep this order; agents are sorted by (type, x, y)
    # Unit-type one-hot orders (SMAC's), empty when the map has one type per side.
    ally_bits: tuple[str, ...] = ()
    enemy_bits: tuple[str, ...] = ()
    # Where the enemies attack-move: a point, a segment ((x0, y0), (x1, y1)) from which each
    # episode draws a uniform point, or None (no order: static defence).
    enemy_order: tuple | None = None

    @property
    def n_agents(self) -> int:
        return sum(g.count for g in self.groups if g.side == "ally")

    @property
    def n_enemies(self) -> int:
        return sum(g.count for g in self.groups if g.side == "enemy")

    @property
    def n_actions(self) -> int:
        return 6 + self.n_enemies

    def side_units(self, side: str) -> list[str]:
        return [g.unit for g in self.groups if g.side == side for _ in range(g.count)]

    def side_race(self, side: str) -> str:
        return UNIT_TYPES[self.side_units(side)[0]].race


ALLY_SPAWN, ENEMY_SPAWN = (9.0, 16.0), (23.0, 16.0)
SZ_ALLY, SZ_ENEMY = ("stalker", "zealot"), ("zealot", "stalker")  # SMAC's quirk, kept on purpose
MMM_BITS = ("marauder", "marine", "medivac")
CSZ_BITS = ("colossus", "stalker", "zealot")
BANE_BITS = ("baneling", "zergling")


def _standard(name: str, limit: int, allies: list[tuple[str, int]], enemies: list[tuple[str, int]],
              ally_bits=(), enemy_bits=()) -> MapSpec:
    groups = tuple(Group("ally", u, n, ALLY_SPAWN) for u, n in allies) + tuple(
        Group("enemy", u, n, ENEMY_SPAWN) for u, n in enemies)
    return MapSpec(name, limit, groups, tuple(ally_bits), tuple(enemy_bits), ALLY_SPAWN)


def _marines(name: str, limit: int, n_ally: int, n_enemy: int) -> MapSpec:
    return _standard(name, limit, [("marine", n_ally)], [("marine", n_enemy)])


_CORRIDOR_ENEMY, _CORRIDOR_TARGET = (27.91, 28.24), (4.47, 4.33)

MAPS: dict[str, MapSpec] = {
    m.name: m
    for m in [
        _marines("3m", 60, 3, 3),
        _marines("8m", 120, 8, 8),
        _marines("25m", 150, 25, 25),
        _marines("5m_vs_6m", 70, 5, 6),
        _marines("8m_vs_9m", 120, 8, 9),
        _marines("10m_vs_11m", 150, 10, 11),
        _marines("27m_vs_30m", 180, 27, 30),
        _standard("MMM", 150, [("marauder", 2), ("marine", 7), ("medivac", 1)],
                  [("marauder", 2), ("marine", 7), ("medivac", 1)], MMM_BITS, MMM_BITS),
        _standard("MMM2", 180, [("marauder", 2), ("marine", 7), ("medivac", 1)],
                  [("marauder", 3), ("marine", 8), ("medivac", 1)], MMM_BITS, MMM_BITS),
        _standard("2s3z", 120, [("stalker", 2), ("zealot", 3)], [("stalker", 2), ("zealot", 3)],
                  SZ_ALLY, SZ_ENEMY),
        _standard("3s5z", 150, [("stalker", 3), ("zealot", 5)], [("stalker", 3), ("zealot", 5)],
                  SZ_ALLY, SZ_ENEMY),
        _standard("3s5z_vs_3s6z", 170, [("stalker", 3), ("zealot", 5)],
                  [("stalker", 3), ("zealot", 6)], SZ_ALLY, SZ_ENEMY),
        _standard("3s_vs_3z", 150, [("stalker", 3)], [("zealot", 3)]),
        _standard("3s_vs_4z", 200, [("stalker", 3)], [("zealot", 4)]),
        _standard("3s_vs_5z", 250, [("stalker", 3)], [("zealot", 5)]),
        _standard("1c3s5z", 180, [("colossus", 1), ("stalker", 3), ("zealot", 5)],
                  [("colossus", 1), ("stalker", 3), ("zealot", 5)], CSZ_BITS, CSZ_BITS),
        MapSpec("2m_vs_1z", 150, (Group("ally", "marine", 1, (13.0, 12.0)),
                                  Group("ally", "marine", 1, (19.0, 12.0)),
                                  Group("enemy", "zealot", 1, (16.0, 19.0))),
                enemy_order=((13.0, 12.0), (19.0, 12.0))),
        MapSpec("corridor", 400, (Group("ally", "zealot", 6, (19.04, 19.12)),
                                  Group("enemy", "zergling", 24, _CORRIDOR_ENEMY)),
                enemy_order=_CORRIDOR_TARGET),
        MapSpec("6h_vs_8z", 150, (Group("ally", "hydralisk", 6, (14.60, 9.49)),
                                  Group("enemy", "zealot", 8, (14.41, 16.76))),
                enemy_order=(14.60, 9.49)),
        MapSpec("2s_vs_1sc", 300, (Group("ally", "stalker", 1, (11.12, 10.34)),
                                   Group("ally", "stalker", 1, (16.98, 10.37)),
                                   Group("enemy", "spine_crawler", 1, (13.92, 20.04))),
                enemy_order=None),
        MapSpec("so_many_baneling", 100, (Group("ally", "zealot", 7, (11.47, 12.02)),
                                          Group("enemy", "baneling", 32, _CORRIDOR_ENEMY)),
                enemy_order=_CORRIDOR_TARGET),
        MapSpec("bane_vs_bane", 200, (Group("ally", "zergling", 20, (16.0, 11.0)),
                                      Group("ally", "baneling", 4, (16.0, 8.0)),
                                      Group("enemy", "zergling", 20, (16.0, 21.0)),
                                      Group("enemy", "baneling", 4, (16.0, 24.0))),
                BANE_BITS, BANE_BITS, enemy_order=(16.0, 8.0)),
        MapSpec("2c_vs_64zg", 400, (Group("ally", "colossus", 2, (16.0, 16.0)),
                                    Group("enemy", "zergling", 64, (16.0, 9.0))),
                enemy_order=(16.0, 16.0)),
    ]
}
